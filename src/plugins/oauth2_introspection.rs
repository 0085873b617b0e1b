//! `oauth2_introspection`: opaque bearer tokens checked with the authorization server's token
//! introspection endpoint (RFC 7662). Active answers are cached until the token's `exp` (at most
//! `cache_max_ttl`), inactive ones for `negative_ttl`, in a bounded cache, so a busy client costs
//! one call per token, not per request.
//!
//! ```yaml
//! plugins:
//!   - oauth2_introspection:
//!       url: https://auth.example.com/oauth2/introspect
//!       client_id: gateway
//!       client_secret: "${INTROSPECTION_SECRET}"
//!       scopes_any: [ "orders:read" ]
//!       consumer_claim: sub                # or client_id
//!       forward_claims: { sub: x-user-id, client_id: x-client-id }
//! ```

use super::{BuildCtx, Flow, Plugin};
use crate::auth::claims::ClaimRules;
use crate::auth::{failure, sha256, AuthFail, Consumers};
use crate::common::issue::Issue;
use crate::common::types::Dur;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::auth::AuthMetrics;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

type Claims = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "oauth2_introspection")]
pub struct Config {
    pub url: String,
    pub client_id: String,
    /// Use `${ENV}`.
    pub client_secret: String,
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// Longest time an active answer is reused (the token's `exp` may end it sooner).
    #[serde(default = "default_max_ttl")]
    pub cache_max_ttl: Dur,
    /// How long an inactive answer is reused.
    #[serde(default = "default_negative_ttl")]
    pub negative_ttl: Dur,
    /// Tokens remembered.
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    #[serde(default)]
    pub scopes_any: Vec<String>,
    #[serde(default)]
    pub scopes_all: Vec<String>,
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Remove the token from the request sent upstream.
    #[serde(default)]
    pub strip_token: bool,
}

fn default_timeout() -> Dur {
    Dur::millis(1000)
}
fn default_max_ttl() -> Dur {
    Dur::secs(300)
}
fn default_negative_ttl() -> Dur {
    Dur::secs(10)
}
fn default_cache_size() -> usize {
    10_000
}
fn default_consumer_claim() -> String {
    "sub".into()
}

#[derive(Clone)]
pub(super) enum Answer {
    Active(Arc<Claims>),
    Inactive,
}

pub struct Introspection {
    url: String,
    client_id: String,
    client_secret: String,
    timeout: Duration,
    max_ttl: Duration,
    negative_ttl: Duration,
    cache_size: usize,
    rules: ClaimRules,
    strip: bool,
    client: reqwest::Client,
    cache: Mutex<HashMap<[u8; 32], (Instant, Answer)>>,
    consumers: Arc<Consumers>,
    metrics: AuthMetrics,
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(Introspection::new(self, b)?))
    }
}

impl Introspection {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<Introspection, Vec<Issue>> {
        let path = &b.path;
        let mut issues = Vec::new();
        if c.cache_size == 0 {
            issues.push(Issue::new(
                format!("{path}.cache_size"),
                "must be at least 1",
            ));
        }
        let rules = ClaimRules::new(
            &c.scopes_any,
            &c.scopes_all,
            &c.consumer_claim,
            &c.forward_claims,
            path,
            &mut issues,
        );
        let client = crate::auth::service_client(&c.url, c.timeout.0, path, &mut issues);
        let (Some(client), true) = (client, issues.is_empty()) else {
            return Err(issues);
        };
        Ok(Introspection {
            url: c.url.clone(),
            client_id: c.client_id.clone(),
            client_secret: c.client_secret.clone(),
            timeout: c.timeout.0,
            max_ttl: c.cache_max_ttl.0,
            negative_ttl: c.negative_ttl.0,
            cache_size: c.cache_size,
            rules,
            strip: c.strip_token,
            client,
            cache: Mutex::new(HashMap::new()),
            consumers: b.consumers.clone(),
            metrics: AuthMetrics::new(b.shared.metrics(), b.route, "oauth2_introspection"),
        })
    }

    /// Asks the endpoint; the answer and how long it may be reused.
    async fn introspect(&self, token: &str) -> Result<(Answer, Duration), String> {
        let resp = self
            .client
            .post(&self.url)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .header("accept", "application/json")
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let claims: Claims = resp
            .json()
            .await
            .map_err(|e| format!("invalid answer: {e}"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(self.answer(claims, now))
    }

    /// What an endpoint's answer means at `now` (Unix seconds), and how long it may be reused:
    /// active until its `exp` (at most `max_ttl`); inactive, expired or without `active: true`
    /// for `negative_ttl`.
    pub(super) fn answer(&self, claims: Claims, now: u64) -> (Answer, Duration) {
        if claims.get("active") != Some(&serde_json::Value::Bool(true)) {
            return (Answer::Inactive, self.negative_ttl);
        }
        let ttl = match claims.get("exp").and_then(serde_json::Value::as_u64) {
            Some(exp) if exp <= now => return (Answer::Inactive, self.negative_ttl),
            Some(exp) => Duration::from_secs(exp - now).min(self.max_ttl),
            None => self.max_ttl,
        };
        (Answer::Active(Arc::new(claims)), ttl)
    }

    fn fail(&self, ctx: &mut RequestCtx, why: AuthFail) -> Result<Flow, GatewayError> {
        self.metrics.failed(why);
        Ok(Flow::Respond(failure(ctx, why, "Bearer", "postern")))
    }
}

fn bearer(req: &RequestHeader) -> Option<String> {
    let v = req
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, t) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

#[async_trait]
impl Plugin for Introspection {
    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let Some(token) = bearer(req) else {
            return self.fail(ctx, AuthFail::Missing);
        };
        let key = sha256(token.as_bytes());
        let cached = {
            let mut c = self.cache.lock();
            match c.get(&key) {
                Some((until, a)) if Instant::now() < *until => Some(a.clone()),
                Some(_) => {
                    c.remove(&key);
                    None
                }
                None => None,
            }
        };
        let answer = match cached {
            Some(a) => a,
            None => match tokio::time::timeout(self.timeout, self.introspect(&token)).await {
                Ok(Ok((a, ttl))) => {
                    let mut c = self.cache.lock();
                    if c.len() >= self.cache_size {
                        let now = Instant::now();
                        c.retain(|_, (until, _)| *until > now);
                        if c.len() >= self.cache_size {
                            c.clear();
                        }
                    }
                    c.insert(key, (Instant::now() + ttl, a.clone()));
                    a
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e,
                        _ => format!("no answer within {:?}", self.timeout),
                    };
                    log::warn!("token introspection at {} failed: {why}", self.url);
                    return Ok(Flow::Respond(
                        GatewayError::Unavailable(
                            "The token introspection service is unavailable.",
                        )
                        .reply(&ctx.request_id),
                    ));
                }
            },
        };
        self.accept(answer, req, ctx)
    }
}

impl Introspection {
    /// Lets a request through on an active answer with the scopes asked for: the consumer it
    /// names, its claims forwarded as headers.
    pub(super) fn accept(
        &self,
        answer: Answer,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let Answer::Active(claims) = answer else {
            return self.fail(ctx, AuthFail::Invalid);
        };
        match self.rules.accept(&claims, req, &self.consumers, false) {
            Ok(Some(c)) => ctx.consumer = Some(c),
            Ok(None) => {}
            Err(why) => return self.fail(ctx, why),
        }
        if self.strip {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        ctx.claims = Some(claims);
        Ok(Flow::Continue)
    }
}
