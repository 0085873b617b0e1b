//! `fault`: rehearse failure. Delays a share of requests before they are proxied and/or
//! aborts a share with a given status, optionally only for requests that carry a header.
//! Off unless configured; every injected fault is named in the access log (`fault`) and counted.
//!
//! ```yaml
//! plugins:
//!   - fault:
//!       delay: { duration: 2s, percent: 10 }
//!       abort: { status: 503, percent: 5 }
//!       when_header: x-postern-fault      # only requests with this field
//!       seed: 42                          # reproducible draws (tests, rehearsals)
//! ```

use super::{BuildCtx, Flow, Plugin, Reply};
use crate::common::issue::Issue;
use crate::common::types::Dur;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use pingora::http::RequestHeader;
use rand::{Rng, SeedableRng};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "fault")]
pub struct Config {
    /// Hold a share of requests before proxying them.
    #[serde(default)]
    pub delay: Option<DelayConfig>,
    /// Answer a share of requests with an error status instead of proxying them.
    #[serde(default)]
    pub abort: Option<AbortConfig>,
    /// Only requests carrying this header field are subject to faults.
    #[serde(default)]
    pub when_header: Option<String>,
    /// Seed of the random draws: the same sequence of decisions on every start.
    #[serde(default)]
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DelayConfig {
    pub duration: Dur,
    /// Share of requests delayed, 0 to 100.
    pub percent: f64,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AbortConfig {
    /// 4xx or 5xx.
    pub status: u16,
    /// Share of requests aborted, 0 to 100.
    pub percent: f64,
}

/// What the plugin did to a request, for the access log.
#[derive(Debug, Clone, Copy)]
pub struct Injected(pub &'static str);

pub struct Fault {
    delay: Option<(std::time::Duration, f64)>,
    abort: Option<(u16, f64)>,
    when_header: Option<HeaderName>,
    rng: Option<Mutex<rand::rngs::StdRng>>,
    route: String,
    metrics: crate::observability::metrics::Metrics,
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(Fault::new(self, b)?))
    }
}

impl Fault {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<Fault, Vec<Issue>> {
        let mut issues = Vec::new();
        let pct = |p: f64, at: &str, issues: &mut Vec<Issue>| {
            if !(0.0..=100.0).contains(&p) {
                issues.push(Issue::new(
                    format!("{}.{at}.percent", b.path),
                    format!("must be between 0 and 100, got {p}"),
                ));
            }
        };
        if let Some(d) = &c.delay {
            pct(d.percent, "delay", &mut issues);
            if d.duration.0 > std::time::Duration::from_secs(300) {
                issues.push(Issue::new(
                    format!("{}.delay.duration", b.path),
                    "must be at most 5m",
                ));
            }
        }
        if let Some(a) = &c.abort {
            pct(a.percent, "abort", &mut issues);
            if !(400..=599).contains(&a.status) {
                issues.push(Issue::new(
                    format!("{}.abort.status", b.path),
                    format!("must be a 4xx or 5xx status, got {}", a.status),
                ));
            }
        }
        if c.delay.is_none() && c.abort.is_none() {
            issues.push(Issue::new(
                b.path.clone(),
                "set delay, abort or both (a fault plugin without either does nothing)",
            ));
        }
        let when_header = match &c.when_header {
            Some(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => Some(n),
                Err(_) => {
                    issues.push(Issue::new(
                        format!("{}.when_header", b.path),
                        format!("\"{h}\" is not a header field name"),
                    ));
                    None
                }
            },
            None => None,
        };
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Fault {
            delay: c.delay.as_ref().map(|d| (d.duration.0, d.percent)),
            abort: c.abort.as_ref().map(|a| (a.status, a.percent)),
            when_header,
            rng: c
                .seed
                .map(|s| Mutex::new(rand::rngs::StdRng::seed_from_u64(s))),
            route: b.route.to_string(),
            metrics: b.shared.metrics().clone(),
        })
    }

    /// True with probability `percent` / 100.
    fn draw(&self, percent: f64) -> bool {
        if percent <= 0.0 {
            return false;
        }
        let x: f64 = match &self.rng {
            Some(r) => r.lock().random(),
            None => rand::random(),
        };
        x * 100.0 < percent
    }
}

#[async_trait]
impl Plugin for Fault {
    fn phases(&self) -> super::Phases {
        super::Phases::REQUEST
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        if let Some(h) = &self.when_header {
            if !req.headers.contains_key(h) {
                return Ok(Flow::Continue);
            }
        }
        let delayed = self.delay.filter(|(_, p)| self.draw(*p));
        let aborted = self.abort.filter(|(_, p)| self.draw(*p));
        let what = match (delayed.is_some(), aborted.is_some()) {
            (false, false) => return Ok(Flow::Continue),
            (true, false) => "delay",
            (false, true) => "abort",
            (true, true) => "delay+abort",
        };
        ctx.ext.insert(Injected(what));
        crate::observability::metrics::fault(&self.metrics, &self.route, what);
        if let Some((d, _)) = delayed {
            tokio::time::sleep(d).await;
        }
        let Some((status, _)) = aborted else {
            return Ok(Flow::Continue);
        };
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let body = serde_json::json!({
            "type": "urn:postern:problem:fault-injected",
            "title": reason,
            "status": status,
            "detail": "This error was injected by the gateway's fault plugin.",
            "request_id": ctx.request_id.as_str(),
        });
        Ok(Flow::Respond(Reply {
            status,
            headers: vec![
                (
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/problem+json"),
                ),
                (
                    http::header::CACHE_CONTROL,
                    HeaderValue::from_static("no-store"),
                ),
            ],
            body: Bytes::from(body.to_string()),
        }))
    }
}
