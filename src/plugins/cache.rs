//! `cache`: store this route's responses in the shared HTTP cache (top-level `cache` section)
//! with RFC 9111 semantics and the route's overrides.
//!
//! ```yaml
//! plugins:
//!   - cache:
//!       ttl: 60s                      # when the origin gives no freshness (none: not stored)
//!       max_ttl: 1h                   # cap on what the origin asks for
//!       # force_ttl: 30s              # ignore the origin's freshness
//!       # statuses: [200, 404]        # default: any status with explicit freshness, the
//!                                     # RFC 9110 heuristic list with `ttl`
//!       targeted: [cdn-cache-control] # RFC 9213 fields read before Cache-Control, in order
//!       key: { host: true, query: all, headers: [accept-language], consumer: false }
//!       bypass: { headers: [x-no-cache], cookies: [session] }
//!       stale_while_revalidate: 30s   # unless the origin says otherwise
//!       stale_if_error: 5m
//!       store_set_cookie: false
//!       x_cache: true                 # X-Cache: HIT | MISS | STALE | EXPIRED | REVALIDATED | BYPASS
//! ```

use super::{header_names, BuildCtx, Flow, Plugin, Reply};
use crate::cache::{CachePolicy, QueryKey};
use crate::common::issue::Issue;
use crate::common::types::Dur;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "cache")]
pub struct Config {
    /// Freshness when the origin sends none (no `max-age`, `s-maxage` or `Expires`).
    #[serde(default)]
    pub ttl: Option<Dur>,
    #[serde(default = "default_max_ttl")]
    pub max_ttl: Dur,
    /// Freshness regardless of the origin (still never for `private` or authorized answers).
    #[serde(default)]
    pub force_ttl: Option<Dur>,
    /// Statuses that may be stored. Unset: any final status whose response carries explicit
    /// freshness (`s-maxage`, `max-age`, `Expires`), except 206 and 304; with only the route's
    /// `ttl`, the statuses RFC 9110 §15.1 calls heuristically cacheable.
    #[serde(default)]
    pub statuses: Option<Vec<u16>>,
    /// Targeted cache-control fields (RFC 9213), in precedence order: the first one present
    /// replaces `Cache-Control` for Postern's cache. `[]` reads only `Cache-Control`.
    #[serde(default = "default_targeted")]
    pub targeted: Vec<String>,
    #[serde(default)]
    pub key: KeyConfig,
    #[serde(default)]
    pub bypass: BypassConfig,
    #[serde(default)]
    pub stale_while_revalidate: Option<Dur>,
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
    /// Store responses that set cookies (they are personal more often than not).
    #[serde(default)]
    pub store_set_cookie: bool,
    #[serde(default)]
    pub x_cache: bool,
    /// The `PURGE` method on this route's URLs.
    #[serde(default)]
    pub purge: PurgeMethod,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeMethod {
    #[serde(default)]
    pub enabled: bool,
    /// Client addresses or CIDR blocks allowed to purge.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Or a bearer token (use `${ENV}`).
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "CacheKey")]
pub struct KeyConfig {
    #[serde(default = "yes")]
    pub host: bool,
    /// `all` (sorted), `none`, or a list of parameter names.
    #[serde(default)]
    pub query: QueryConfig,
    /// Request headers that are part of the key (beyond what `Vary` asks for).
    #[serde(default)]
    pub headers: Vec<String>,
    /// One entry per consumer (for personalised answers behind authentication).
    #[serde(default)]
    pub consumer: bool,
}

impl Default for KeyConfig {
    fn default() -> Self {
        KeyConfig {
            host: true,
            query: QueryConfig::default(),
            headers: Vec::new(),
            consumer: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema, PartialEq)]
#[serde(untagged)]
#[schemars(rename = "CacheQuery")]
pub enum QueryConfig {
    Mode(String),
    Only(Vec<String>),
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig::Mode("all".into())
    }
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BypassConfig {
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub cookies: Vec<String>,
}

fn yes() -> bool {
    true
}
fn default_max_ttl() -> Dur {
    Dur::secs(86_400)
}
fn default_targeted() -> Vec<String> {
    vec!["cdn-cache-control".into()]
}

pub struct Cache {
    policy: Arc<CachePolicy>,
    purge: Option<(Vec<ipnet::IpNet>, Option<String>)>,
    /// The server's shared state: its HTTP cache answers PURGE.
    shared: Arc<crate::shared::Shared>,
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        let c = Cache::new(self, b)?;
        Ok(Built::Cache {
            policy: c.policy.clone(),
            purge: Arc::new(c),
        })
    }
}

/// The query part of the key: `all`, `none` or a list of parameter names.
fn query_key(c: &Config, path: &str, issues: &mut Vec<Issue>) -> QueryKey {
    match &c.key.query {
        QueryConfig::Mode(m) if m == "all" => QueryKey::All,
        QueryConfig::Mode(m) if m == "none" => QueryKey::None,
        QueryConfig::Mode(m) => {
            issues.push(Issue::new(
                format!("{path}.key.query"),
                format!("invalid value \"{m}\": use all, none or a list of parameter names"),
            ));
            QueryKey::All
        }
        QueryConfig::Only(v) => QueryKey::Only(v.clone()),
    }
}

/// Who may `PURGE`: addresses or a bearer token, at least one of them.
fn purge_rule(
    c: &Config,
    path: &str,
    issues: &mut Vec<Issue>,
) -> Option<(Vec<ipnet::IpNet>, Option<String>)> {
    if !c.purge.enabled {
        return None;
    }
    let nets = c
        .purge
        .allow
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            super::ip_filter::parse_net(s)
                .map_err(|e| issues.push(Issue::new(format!("{path}.purge.allow[{i}]"), e)))
                .ok()
        })
        .collect::<Vec<_>>();
    let token = c.purge.token.clone().filter(|t| !t.is_empty());
    if nets.is_empty() && token.is_none() {
        issues.push(Issue::new(
            format!("{path}.purge"),
            "restrict PURGE with `allow` (addresses) or `token`",
        ));
    }
    Some((nets, token))
}

impl Cache {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<Cache, Vec<Issue>> {
        let path = &b.path;
        let mut issues = Vec::new();
        let query = query_key(c, path, &mut issues);
        for (i, s) in c.statuses.iter().flatten().enumerate() {
            if !(200..600).contains(s) || matches!(s, 206 | 304) {
                issues.push(Issue::new(
                    format!("{path}.statuses[{i}]"),
                    "not a status a cache stores (a final status other than 206 and 304)",
                ));
            }
        }
        let targeted = header_names(&c.targeted, &format!("{path}.targeted"), &mut issues);
        if targeted.contains(&http::header::CACHE_CONTROL) {
            issues.push(Issue::new(
                format!("{path}.targeted"),
                "Cache-Control is always read last; list only targeted fields",
            ));
        }
        let headers = header_names(&c.key.headers, &format!("{path}.key.headers"), &mut issues);
        let bypass_headers = header_names(
            &c.bypass.headers,
            &format!("{path}.bypass.headers"),
            &mut issues,
        );
        if c.ttl.is_some_and(|t| t.0 > c.max_ttl.0) {
            issues.push(Issue::new(format!("{path}.ttl"), "ttl is above max_ttl"));
        }
        let purge = purge_rule(c, path, &mut issues);
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Cache {
            purge,
            shared: b.shared.clone(),
            policy: Arc::new(CachePolicy {
                ttl: c.ttl.map(|d| d.0),
                max_ttl: c.max_ttl.0,
                force_ttl: c.force_ttl.map(|d| d.0),
                statuses: c.statuses.clone(),
                targeted,
                host_in_key: c.key.host,
                query,
                headers,
                consumer_in_key: c.key.consumer,
                bypass_headers,
                bypass_cookies: c.bypass.cookies.clone(),
                stale_while_revalidate: c
                    .stale_while_revalidate
                    .map_or_else(Default::default, |d| d.0),
                stale_if_error: c.stale_if_error.map_or_else(Default::default, |d| d.0),
                store_set_cookie: c.store_set_cookie,
                x_cache: c.x_cache,
            }),
        })
    }
}

#[async_trait::async_trait]
impl Plugin for Cache {
    /// `PURGE` of a URL (every variant, on every node with `cluster.redis`).
    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let (Some((nets, token)), "PURGE") = (&self.purge, req.method.as_str()) else {
            return Ok(Flow::Continue);
        };
        let by_ip = ctx.client_ip.is_some_and(|ip| {
            let ip = crate::auth::canonical_ip(ip);
            nets.iter().any(|n| n.contains(&ip))
        });
        let by_token = token.as_ref().is_some_and(|t| {
            use subtle::ConstantTimeEq;
            req.headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|p| {
                    crate::auth::sha256(p.as_bytes())
                        .ct_eq(&crate::auth::sha256(t.as_bytes()))
                        .into()
                })
        });
        if !by_ip && !by_token {
            return Ok(Flow::Respond(
                GatewayError::Forbidden("Purging is not allowed from here.").reply(&ctx.request_id),
            ));
        }
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.host())
            .map(String::from);
        let url = crate::cache::url(&self.policy, req, host.as_deref());
        let purged = self.shared.http_cache().map_or(0, |c| {
            c.purge(crate::cache::PurgeKind::Url, &url, false).entries
        });
        let body = serde_json::json!({ "purged": purged, "url": url }).to_string();
        Ok(Flow::Respond(Reply {
            status: 200,
            headers: vec![(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            )],
            body: bytes::Bytes::from(body),
        }))
    }
}
