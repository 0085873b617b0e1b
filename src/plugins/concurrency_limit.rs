//! `concurrency_limit`: at most `max` requests in flight per key. A slot is taken before the
//! request goes upstream and given back when the request ends, whether the response completed,
//! failed, or the client went away.
//!
//! ```yaml
//! plugins:
//!   - concurrency_limit: { key: client_ip, max: 10, status: 429 }   # status: 429 | 503
//! ```

use super::key::{self, Key, KeyConfig, MissingKey};
use super::{retry_after, BuildCtx, Flow, Plugin};
use crate::common::issue::Issue;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::observability::metrics::LimitMetrics;
use crate::ratelimit::concurrency::{Concurrency, Permit};
use async_trait::async_trait;
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "concurrency_limit")]
pub struct Config {
    /// Names the rule in metrics (default: the key).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub key: KeyConfig,
    /// Requests in flight per key.
    pub max: u32,
    /// Status when over the limit: 429 or 503.
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default)]
    pub missing_key: MissingKey,
}

fn default_status() -> u16 {
    429
}

pub struct ConcurrencyLimit {
    key: Key,
    missing: MissingKey,
    engine: Arc<Concurrency>,
    status: u16,
    metrics: LimitMetrics,
}

/// The slots a request holds; dropped with the request context.
#[derive(Clone, Default)]
struct Permits(Vec<Arc<Permit>>);

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(ConcurrencyLimit::new(self, b)?))
    }
}

impl ConcurrencyLimit {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<ConcurrencyLimit, Vec<Issue>> {
        let path = &b.path;
        let mut issues = Vec::new();
        let key = Key::parse(&c.key)
            .map_err(|e| issues.push(Issue::new(format!("{path}.key"), e)))
            .ok();
        if c.max == 0 {
            issues.push(Issue::new(format!("{path}.max"), "must be at least 1"));
        }
        if c.status != 429 && c.status != 503 {
            issues.push(Issue::new(format!("{path}.status"), "use 429 or 503"));
        }
        let (Some(key), true) = (key, issues.is_empty()) else {
            return Err(issues);
        };
        let name = c.name.clone().unwrap_or_else(|| match &c.key {
            KeyConfig::One(s) => s.clone(),
            KeyConfig::All(v) => v.join("+"),
        });
        let id = format!("{}\n{}\n{}", b.route, b.index, c.max);
        Ok(ConcurrencyLimit {
            key,
            missing: c.missing_key,
            engine: b.shared.limits.concurrency(&id, || Concurrency::new(c.max)),
            status: c.status,
            metrics: LimitMetrics::new(b.shared.metrics(), b.route, &name),
        })
    }
}

#[async_trait]
impl Plugin for ConcurrencyLimit {
    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let mut buf = String::with_capacity(48);
        if !self.key.material(req, ctx, self.missing, &mut buf) {
            return Ok(Flow::Continue);
        }
        match self.engine.acquire(key::hash(&buf)) {
            Some((permit, _left)) => {
                self.metrics.allowed();
                ctx.ext
                    .get_or_insert_default::<Permits>()
                    .0
                    .push(Arc::new(permit));
                Ok(Flow::Continue)
            }
            None => {
                self.metrics.rejected();
                let why = "Too many requests of this client are in progress.";
                let e = if self.status == 503 {
                    GatewayError::Unavailable(why)
                } else {
                    GatewayError::TooManyRequests(why)
                };
                let mut r = e.reply(&ctx.request_id);
                r.headers.push(retry_after(Duration::from_secs(1)));
                Ok(Flow::Respond(r))
            }
        }
    }
}
