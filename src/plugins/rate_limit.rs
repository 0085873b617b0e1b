//! `rate_limit`: requests per key and window, exact (GCRA), on this node or across every node
//! sharing a Redis.
//!
//! ```yaml
//! plugins:
//!   - rate_limit:
//!       name: per-client             # policy name in headers and metrics (default: the key)
//!       key: client_ip               # or [consumer, header:x-tenant]
//!       limits:                      # every limit must pass
//!         - { requests: 10, per: 1s, burst: 20 }
//!         - { requests: 1000, per: 1h }
//!       action: reject               # reject (429) | delay (hold up to max_delay, then 429)
//!       max_delay: 500ms
//!       scope: local                 # local | cluster (needs cluster.redis)
//!       missing_key: skip            # skip | shared (one bucket for requests without the key)
//!       max_keys: 100000             # memory bound of the local state
//!       headers: ietf                # ietf | legacy | both | none
//! ```
//! Accuracy: a limit of `requests` per `per` with `burst` (default: `requests`) admits at most
//! `burst + t * requests / per` requests in any interval `t`, and exactly `burst` at once: GCRA
//! is a continuously refilling token bucket, there are no window edges to game. Cluster rules run
//! the same algorithm in Redis with the Redis server's clock.

use super::key::{self, Key, KeyConfig, MissingKey};
use super::{retry_after, BuildCtx, Flow, Plugin};
use crate::common::issue::Issue;
use crate::common::types::OnError;
use crate::common::types::Dur;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::observability::metrics::LimitMetrics;
use crate::ratelimit::cluster::DenyCache;
use crate::ratelimit::gcra::{Cell, LocalGcra};
use crate::ratelimit::{Outcome, Quota};
use crate::redis::Redis;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Most limits in one rule.
const MAX_LIMITS: usize = 8;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "rate_limit")]
pub struct Config {
    /// Names the rule in `RateLimit` headers and metrics; letters, digits and `_.:+-`.
    #[serde(default)]
    pub name: Option<String>,
    /// What is counted: one part or a list of parts that together make the key.
    #[serde(default)]
    pub key: KeyConfig,
    /// Every limit must pass; a rejected request is charged to none of them.
    pub limits: Vec<LimitConfig>,
    #[serde(default)]
    pub action: Action,
    /// With `action: delay`: the longest a request is held before it is rejected instead.
    #[serde(default)]
    pub max_delay: Option<Dur>,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub missing_key: MissingKey,
    /// Keys remembered on this node; past it, idle keys (then the least used) are forgotten.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    #[serde(default)]
    pub headers: HeaderProfile,
    /// Cluster scope: overrides `cluster.redis.on_error` for this rule.
    #[serde(default)]
    pub on_error: Option<OnError>,
}

fn default_max_keys() -> usize {
    100_000
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    pub requests: u64,
    /// The window, from 1s to 1d.
    pub per: Dur,
    /// Requests allowed at once (default: `requests`).
    #[serde(default)]
    pub burst: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    #[default]
    Reject,
    Delay,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    #[default]
    Local,
    Cluster,
}

/// Which rate-limit response headers are sent.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum HeaderProfile {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    Both,
    None,
}

struct ClusterRule {
    redis: Arc<Redis>,
    deny: DenyCache,
    prefix: String,
    on_error: OnError,
}

pub struct RateLimit {
    key: Key,
    missing: MissingKey,
    quotas: Vec<Quota>,
    cells: Vec<Cell>,
    max_delay: Duration,
    local: Arc<LocalGcra>,
    cluster: Option<ClusterRule>,
    profile: HeaderProfile,
    policy: HeaderValue,
    items: Vec<String>,
    metrics: LimitMetrics,
}

/// Outcomes of the rate-limit rules a request went through, for the response headers.
#[derive(Clone, Default)]
struct Results(Vec<(usize, Outcome)>);

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

fn ceil_secs(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000_000) as u64
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(RateLimit::new(self, b)?))
    }
}

/// The rule's name in headers and metrics (default: its key).
fn rule_name(c: &Config, path: &str, issues: &mut Vec<Issue>) -> String {
    let name = c.name.clone().unwrap_or_else(|| match &c.key {
        KeyConfig::One(s) => s.clone(),
        KeyConfig::All(v) => v.join("+"),
    });
    let ok = |ch: char| ch.is_ascii_alphanumeric() || "_.:+-".contains(ch);
    if name.is_empty() || !name.chars().all(ok) {
        issues.push(Issue::new(
            format!("{path}.name"),
            format!("invalid rule name \"{name}\": use letters, digits and _.:+-"),
        ));
    }
    name
}

/// The limits, each a window of 1 s to 1 d with at least one request.
fn quotas(c: &Config, path: &str, issues: &mut Vec<Issue>) -> Vec<Quota> {
    if c.limits.is_empty() || c.limits.len() > MAX_LIMITS {
        issues.push(Issue::new(
            format!("{path}.limits"),
            format!("give between 1 and {MAX_LIMITS} limits"),
        ));
    }
    let mut quotas = Vec::new();
    for (i, l) in c.limits.iter().enumerate() {
        let p = format!("{path}.limits[{i}]");
        if l.requests == 0 {
            issues.push(Issue::new(format!("{p}.requests"), "must be at least 1"));
        }
        if l.per.0 < Duration::from_secs(1) || l.per.0 > Duration::from_secs(86_400) {
            issues.push(Issue::new(
                format!("{p}.per"),
                format!("window {} is outside 1s..1d", l.per),
            ));
        }
        if l.burst == Some(0) {
            issues.push(Issue::new(format!("{p}.burst"), "must be at least 1"));
        }
        quotas.push(Quota {
            requests: l.requests.max(1),
            per: l.per.0,
            burst: l.burst.unwrap_or(l.requests).max(1),
        });
    }
    quotas
}

/// How long a request may be held (`action: delay`); zero for `reject`.
fn max_delay(c: &Config, path: &str, issues: &mut Vec<Issue>) -> Duration {
    match (c.action, c.max_delay) {
        (Action::Reject, None) => Duration::ZERO,
        (Action::Reject, Some(_)) => {
            issues.push(Issue::new(
                format!("{path}.max_delay"),
                "max_delay needs `action: delay`",
            ));
            Duration::ZERO
        }
        (Action::Delay, d) => {
            let d = d.map_or(Duration::from_secs(1), |d| d.0);
            if d.is_zero() || d > Duration::from_secs(60) {
                issues.push(Issue::new(
                    format!("{path}.max_delay"),
                    "max_delay must be between 1ms and 60s",
                ));
            }
            d
        }
    }
}

/// The cluster-wide state of a `scope: cluster` rule (it needs `cluster.redis`).
fn cluster_rule(
    c: &Config,
    b: &BuildCtx,
    name: &str,
    issues: &mut Vec<Issue>,
) -> Option<ClusterRule> {
    let path = &b.path;
    let rule = match (c.scope, b.redis) {
        (Scope::Local, _) => None,
        (Scope::Cluster, None) => {
            issues.push(
                Issue::new(
                    format!("{path}.scope"),
                    "scope: cluster needs a `cluster.redis` section",
                )
                .hint("add `cluster: { redis: { url: \"redis://127.0.0.1:6379\" } }`"),
            );
            None
        }
        (Scope::Cluster, Some((redis, on_error))) => Some(ClusterRule {
            prefix: format!("{}:rl:{}:{}:", redis.prefix, b.route, name),
            redis: redis.clone(),
            deny: DenyCache::default(),
            on_error: c.on_error.unwrap_or(on_error),
        }),
    };
    if c.on_error.is_some() && c.scope == Scope::Local {
        issues.push(Issue::new(
            format!("{path}.on_error"),
            "on_error applies to `scope: cluster` rules only",
        ));
    }
    rule
}

/// The name of each limit in the `RateLimit` field and the `RateLimit-Policy` field listing
/// them (`None` when the name cannot be a field value).
fn policy_header(name: &str, quotas: &[Quota]) -> Option<(Vec<String>, HeaderValue)> {
    let items: Vec<String> = if quotas.len() == 1 {
        vec![name.to_string()]
    } else {
        quotas
            .iter()
            .map(|q| format!("{name}-{}", Dur(q.per)).replace(' ', ""))
            .collect()
    };
    let policy = items
        .iter()
        .zip(quotas)
        .map(|(n, q)| format!("\"{n}\";q={};w={}", q.requests, ceil_secs(q.per)))
        .collect::<Vec<_>>()
        .join(", ");
    let policy = HeaderValue::from_str(&policy).ok()?;
    Some((items, policy))
}

impl RateLimit {
    /// Checks the rule (every problem at its path), then builds it from the checked parts.
    pub fn new(c: &Config, b: &BuildCtx) -> Result<RateLimit, Vec<Issue>> {
        let path = &b.path;
        let mut issues = Vec::new();
        let key = Key::parse(&c.key)
            .map_err(|e| issues.push(Issue::new(format!("{path}.key"), e)))
            .ok();
        let name = rule_name(c, path, &mut issues);
        let quotas = quotas(c, path, &mut issues);
        let max_delay = max_delay(c, path, &mut issues);
        if c.max_keys < 64 {
            issues.push(Issue::new(
                format!("{path}.max_keys"),
                "must be at least 64",
            ));
        }
        let cluster = cluster_rule(c, b, &name, &mut issues);
        let Some(key) = key.filter(|_| issues.is_empty()) else {
            return Err(issues);
        };
        let (items, policy) = policy_header(&name, &quotas)
            .ok_or_else(|| vec![Issue::new(format!("{path}.name"), "invalid rule name")])?;
        let id = format!(
            "{}\n{}\n{:?}\n{:?}\n{}",
            b.route, b.index, quotas, max_delay, c.max_keys
        );
        let local = b
            .shared
            .limits
            .gcra(&id, || LocalGcra::new(&quotas, max_delay, c.max_keys));
        Ok(RateLimit {
            key,
            missing: c.missing_key,
            cells: quotas.iter().map(Cell::new).collect(),
            quotas,
            max_delay,
            local,
            cluster,
            profile: c.headers,
            policy,
            items,
            metrics: LimitMetrics::new(b.shared.metrics(), b.route, &name),
        })
    }

    fn id(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// The decision for this key; `None` when the cluster store is down and the rule denies.
    async fn outcome(&self, hash: u64, key: &str) -> Option<Outcome> {
        let Some(c) = &self.cluster else {
            return Some(self.local.check(hash));
        };
        if let Some(wait) = c.deny.blocked(hash) {
            return Some(Outcome {
                allowed: false,
                retry_after: wait,
                reset: wait,
                ..Outcome::default()
            });
        }
        let rkey = format!("{}{key}", c.prefix);
        match crate::ratelimit::cluster::check(&c.redis, &rkey, &self.cells, self.max_delay).await {
            Ok(o) => {
                if !o.allowed {
                    c.deny.block(hash, o.retry_after);
                }
                Some(o)
            }
            Err(e) => {
                log::debug!("cluster rate limit unavailable: {e:?}");
                match c.on_error {
                    OnError::Allow => Some(self.local.check(hash)),
                    OnError::Deny => None,
                }
            }
        }
    }
}

#[async_trait]
impl Plugin for RateLimit {
    fn phases(&self) -> super::Phases {
        super::Phases::REQUEST.and(super::Phases::RESPONSE)
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let mut buf = String::with_capacity(48);
        if !self.key.material(req, ctx, self.missing, &mut buf) {
            return Ok(Flow::Continue);
        }
        let hash = key::hash(&buf);
        let outcome = match self.outcome(hash, &buf).await {
            Some(o) => o,
            None => {
                self.metrics.rejected();
                let mut r = GatewayError::Unavailable("The rate-limit service is unavailable.")
                    .reply(&ctx.request_id);
                r.headers.push(retry_after(Duration::from_secs(1)));
                return Ok(Flow::Respond(r));
            }
        };
        ctx.ext
            .get_or_insert_default::<Results>()
            .0
            .push((self.id(), outcome));
        if !outcome.allowed {
            self.metrics.rejected();
            let mut r =
                GatewayError::TooManyRequests("The rate limit of this client was exceeded.")
                    .reply(&ctx.request_id);
            r.headers.push(retry_after(outcome.retry_after));
            return Ok(Flow::Respond(r));
        }
        if outcome.delay.is_zero() {
            self.metrics.allowed();
        } else {
            self.metrics.delayed();
            tokio::time::sleep(outcome.delay).await;
        }
        Ok(Flow::Continue)
    }

    fn on_response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        if self.profile == HeaderProfile::None {
            return Ok(());
        }
        let Some(o) = ctx
            .ext
            .get::<Results>()
            .and_then(|r| r.0.iter().find(|(id, _)| *id == self.id()).map(|(_, o)| *o))
        else {
            return Ok(());
        };
        let i = o.limit.min(self.quotas.len() - 1);
        let reset = ceil_secs(o.reset);
        if matches!(self.profile, HeaderProfile::Ietf | HeaderProfile::Both) {
            let now = format!("\"{}\";r={};t={reset}", self.items[i], o.remaining);
            if let Ok(v) = HeaderValue::from_str(&now) {
                let _ = resp.append_header(RATELIMIT_POLICY.clone(), self.policy.clone());
                let _ = resp.append_header(RATELIMIT.clone(), v);
            }
        }
        if matches!(self.profile, HeaderProfile::Legacy | HeaderProfile::Both) {
            let _ = resp.insert_header(X_LIMIT.clone(), self.quotas[i].requests);
            let _ = resp.insert_header(X_REMAINING.clone(), o.remaining);
            let _ = resp.insert_header(X_RESET.clone(), reset);
        }
        Ok(())
    }
}
