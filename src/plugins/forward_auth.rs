//! `forward_auth`: ask an external authorization service whether a request may pass (Traefik's
//! ForwardAuth, nginx `auth_request`). The service receives the request's method, URI, host,
//! protocol and client address as `X-Forwarded-*` headers plus the chosen request headers. A 2xx
//! answer lets the request through and copies the chosen answer headers onto it; any other
//! answer goes back to the client as it is (status, body, `WWW-Authenticate`, `Location`, ...).
//!
//! ```yaml
//! plugins:
//!   - forward_auth:
//!       url: http://127.0.0.1:9000/check
//!       request_headers: [authorization, cookie]
//!       response_headers: [x-user, x-user-groups]
//!       consumer_header: x-user          # names the consumer (for rate limits and logs)
//!       timeout: 500ms
//!       cache_ttl: 30s                   # decisions cached by the request headers sent
//!       on_error: deny                   # deny (503) | allow
//! ```

use super::{header_names, BuildCtx, Flow, Plugin, Reply};
use crate::auth::sha256;
use crate::common::issue::Issue;
use crate::common::types::OnError;
use crate::common::types::Dur;
use crate::context::{Consumer, RequestCtx};
use crate::error::GatewayError;
use crate::auth::AuthMetrics;
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cached decisions per route.
const CACHE_MAX: usize = 10_000;
/// Largest body of a refusal passed back to the client.
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "forward_auth")]
pub struct Config {
    /// The authorization endpoint (http or https).
    pub url: String,
    /// Request headers sent to the service.
    #[serde(default = "default_request_headers")]
    pub request_headers: Vec<String>,
    /// Headers of a 2xx answer copied onto the request sent upstream.
    #[serde(default)]
    pub response_headers: Vec<String>,
    /// A header of the 2xx answer naming the consumer.
    #[serde(default)]
    pub consumer_header: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// How long decisions are reused for requests with the same `request_headers` (0s: never).
    #[serde(default = "default_ttl")]
    pub cache_ttl: Dur,
    /// When the service cannot be reached or times out.
    #[serde(default = "default_on_error")]
    pub on_error: OnError,
}

fn default_request_headers() -> Vec<String> {
    vec!["authorization".into(), "cookie".into()]
}
fn default_timeout() -> Dur {
    Dur::millis(1000)
}
fn default_ttl() -> Dur {
    Dur::secs(0)
}
fn default_on_error() -> OnError {
    OnError::Deny
}

#[derive(Clone)]
pub(super) enum Decision {
    Allow {
        headers: Vec<(HeaderName, HeaderValue)>,
        consumer: Option<String>,
    },
    Refuse(Reply),
}

pub struct ForwardAuth {
    url: String,
    request_headers: Vec<HeaderName>,
    response_headers: Vec<HeaderName>,
    consumer_header: Option<HeaderName>,
    timeout: Duration,
    ttl: Duration,
    on_error: OnError,
    client: reqwest::Client,
    cache: Mutex<HashMap<[u8; 32], (Instant, Decision)>>,
    consumers: Arc<crate::auth::Consumers>,
    metrics: AuthMetrics,
}

/// Headers of a refusal worth passing back to the client.
const PASS_BACK: &[&str] = &[
    "content-type",
    "www-authenticate",
    "location",
    "retry-after",
    "set-cookie",
    "cache-control",
];

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(ForwardAuth::new(self, b)?))
    }
}

impl ForwardAuth {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<ForwardAuth, Vec<Issue>> {
        let path = &b.path;
        let mut issues = Vec::new();
        let request_headers = header_names(
            &c.request_headers,
            &format!("{path}.request_headers"),
            &mut issues,
        );
        let response_headers = header_names(
            &c.response_headers,
            &format!("{path}.response_headers"),
            &mut issues,
        );
        let consumer_header = c.consumer_header.as_ref().and_then(|h| {
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| {
                    issues.push(Issue::new(
                        format!("{path}.consumer_header"),
                        "invalid header name",
                    ))
                })
                .ok()
        });
        let client = crate::auth::service_client(&c.url, c.timeout.0, path, &mut issues);
        let (Some(client), true) = (client, issues.is_empty()) else {
            return Err(issues);
        };
        Ok(ForwardAuth {
            url: c.url.clone(),
            request_headers,
            response_headers,
            consumer_header,
            timeout: c.timeout.0,
            ttl: c.cache_ttl.0,
            on_error: c.on_error,
            client,
            cache: Mutex::new(HashMap::new()),
            consumers: b.consumers.clone(),
            metrics: AuthMetrics::new(b.shared.metrics(), b.route, "forward_auth"),
        })
    }

    pub(super) fn cache_key(&self, req: &RequestHeader) -> [u8; 32] {
        let mut material = Vec::new();
        for n in &self.request_headers {
            for v in req.headers.get_all(n) {
                material.extend_from_slice(n.as_str().as_bytes());
                material.push(b':');
                material.extend_from_slice(v.as_bytes());
                material.push(b'\n');
            }
        }
        sha256(&material)
    }

    async fn ask(&self, req: &RequestHeader, ctx: &RequestCtx) -> Result<Decision, String> {
        let mut call = self.client.get(&self.url);
        let uri = req
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        call = call
            .header("x-forwarded-method", req.method.as_str())
            .header("x-forwarded-uri", uri)
            .header(
                "x-forwarded-proto",
                if ctx.conn.tls { "https" } else { "http" },
            );
        if let Some(h) = req.headers.get(http::header::HOST) {
            call = call.header("x-forwarded-host", h.as_bytes());
        } else if let Some(a) = req.uri.authority() {
            call = call.header("x-forwarded-host", a.as_str());
        }
        if let Some(ip) = ctx.client_ip {
            call = call.header("x-forwarded-for", ip.to_string());
        }
        for n in &self.request_headers {
            for v in req.headers.get_all(n) {
                call = call.header(n.as_str(), v.as_bytes());
            }
        }
        let resp = call.send().await.map_err(|e| e.to_string())?;
        let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
        let body = match (200..300).contains(&status) {
            true => Bytes::new(),
            false => read_limited(resp).await,
        };
        Ok(self.decide(status, &headers, body))
    }

    /// The decision an answer of the service gives: a 2xx lets the request through (with the
    /// copied headers and the consumer it names), anything else is passed back to the client
    /// (a status outside 3xx-5xx as 403), with only the headers a refusal needs.
    pub(super) fn decide(&self, status: u16, answer: &http::HeaderMap, body: Bytes) -> Decision {
        if (200..300).contains(&status) {
            let mut copy = Vec::new();
            for n in &self.response_headers {
                copy.extend(answer.get_all(n).iter().map(|v| (n.clone(), v.clone())));
            }
            let consumer = self
                .consumer_header
                .as_ref()
                .and_then(|n| answer.get(n))
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(String::from);
            return Decision::Allow {
                headers: copy,
                consumer,
            };
        }
        let mut headers = Vec::new();
        for n in PASS_BACK {
            let n = HeaderName::from_static(n);
            headers.extend(answer.get_all(&n).iter().map(|v| (n.clone(), v.clone())));
        }
        Decision::Refuse(Reply {
            status: if (300..600).contains(&status) {
                status
            } else {
                403
            },
            headers,
            body,
        })
    }

    /// Carries out a decision on the request.
    pub(super) fn apply(&self, decision: Decision, req: &mut RequestHeader, ctx: &mut RequestCtx) -> Flow {
        match decision {
            Decision::Allow { headers, consumer } => {
                // Client-sent copies of the copied headers could impersonate the answer.
                for n in &self.response_headers {
                    req.remove_header(n);
                }
                for (n, v) in headers {
                    let _ = req.append_header(n, v);
                }
                if let Some(name) = consumer {
                    ctx.consumer = Some(match self.consumers.by_name(&name) {
                        Some(c) => c.clone(),
                        None => Arc::new(Consumer {
                            name,
                            groups: Vec::new(),
                        }),
                    });
                }
                Flow::Continue
            }
            Decision::Refuse(reply) => {
                self.metrics.failed(crate::auth::AuthFail::Denied);
                Flow::Respond(reply)
            }
        }
    }
}

async fn read_limited(mut resp: reqwest::Response) -> Bytes {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        if out.len() + chunk.len() > MAX_BODY {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Bytes::from(out)
}

#[async_trait]
impl Plugin for ForwardAuth {
    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let key = (!self.ttl.is_zero()).then(|| self.cache_key(req));
        let cached = key.and_then(|k| {
            let mut c = self.cache.lock();
            match c.get(&k) {
                Some((t, d)) if t.elapsed() < self.ttl => Some(d.clone()),
                Some(_) => {
                    c.remove(&k);
                    None
                }
                None => None,
            }
        });
        let decision = match cached {
            Some(d) => d,
            None => match tokio::time::timeout(self.timeout, self.ask(req, ctx)).await {
                Ok(Ok(d)) => {
                    if let Some(k) = key {
                        let mut c = self.cache.lock();
                        if c.len() >= CACHE_MAX {
                            let ttl = self.ttl;
                            c.retain(|_, (t, _)| t.elapsed() < ttl);
                            if c.len() >= CACHE_MAX {
                                c.clear();
                            }
                        }
                        c.insert(k, (Instant::now(), d.clone()));
                    }
                    d
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e,
                        _ => format!("no answer within {:?}", self.timeout),
                    };
                    log::warn!("forward_auth {}: {why}", self.url);
                    match self.on_error {
                        OnError::Allow => Decision::Allow {
                            headers: Vec::new(),
                            consumer: None,
                        },
                        OnError::Deny => {
                            self.metrics.failed(crate::auth::AuthFail::Invalid);
                            return Ok(Flow::Respond(
                                GatewayError::Unavailable(
                                    "The authorization service is unavailable.",
                                )
                                .reply(&ctx.request_id),
                            ));
                        }
                    }
                }
            },
        };
        Ok(self.apply(decision, req, ctx))
    }
}
