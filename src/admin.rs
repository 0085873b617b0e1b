//! The admin listener (loopback by default): liveness, readiness and upstream health as JSON.
//! Metrics, reload and purge endpoints come with their features.

use crate::observability::metrics;
use crate::reload::Reloader;
use crate::snapshot::Snapshot;
use crate::upstream::target::now_ms;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

pub struct Admin {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub reloader: Arc<Reloader>,
    /// Bearer token required by write endpoints; empty: writes are refused.
    pub token: String,
    /// Serve `GET /metrics`.
    pub metrics: bool,
    pub started: Instant,
    /// The gateway's listeners (name, address to connect to), checked by `/ready`.
    pub listeners: Vec<(String, std::net::SocketAddr)>,
}

impl Admin {
    fn upstreams(&self) -> serde_json::Value {
        let snap = self.snapshot.load();
        let now = now_ms();
        let ups: serde_json::Map<String, serde_json::Value> = snap
            .upstreams
            .iter()
            .map(|(name, g)| {
                let targets: Vec<_> = g
                    .targets()
                    .iter()
                    .map(|t| {
                        json!({
                            "addr": t.addr.to_string(),
                            "host": t.host.as_deref(),
                            "weight": t.weight,
                            "backup": t.backup,
                            "healthy": t.is_healthy(now),
                            "active_check": if t.active_up() { "up" } else { "down" },
                            "ejected": t.ejected(now),
                            "in_flight": t.inflight(),
                        })
                    })
                    .collect();
                let mut v = json!({ "balance": g.balance, "targets": targets });
                if let Some(b) = &g.breaker {
                    v["circuit"] = json!({
                        "state": b.refresh(now).name(),
                        "retry_after_ms": b.retry_after_ms(now),
                    });
                }
                (name.clone(), v)
            })
            .collect();
        json!({ "upstreams": ups })
    }
}

impl Admin {
    /// Write endpoints need `Authorization: Bearer <admin.token>` (compared in constant time).
    /// Returns the rejection to send, or None when the request may proceed.
    fn reject_unauthorized(&self, req: &pingora::http::RequestHeader) -> Option<Response<Vec<u8>>> {
        if self.token.is_empty() {
            return Some(problem(
                403,
                "forbidden",
                "set admin.token to enable write endpoints",
            ));
        }
        let presented = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let (a, b) = (presented.as_bytes(), self.token.as_bytes());
        let same =
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        (!same).then(|| problem(401, "unauthorized", "a valid bearer token is required"))
    }
}

impl Admin {
    /// Listeners that do not accept a connection (not bound, or their service died).
    async fn listeners_down(&self) -> Vec<&str> {
        let mut down = Vec::new();
        for (name, addr) in &self.listeners {
            let probe = tokio::time::timeout(
                std::time::Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            );
            if !matches!(probe.await, Ok(Ok(_))) {
                down.push(name.as_str());
            }
        }
        down
    }

    /// Ready when every listener accepts connections and every upstream that a route uses has
    /// at least one healthy target.
    async fn ready(&self) -> Response<Vec<u8>> {
        let listeners_down = self.listeners_down().await;
        if !listeners_down.is_empty() {
            return reply(
                503,
                json!({ "ready": false, "listeners_not_serving": listeners_down }),
            );
        }
        let snap = self.snapshot.load();
        let now = now_ms();
        let used: std::collections::BTreeSet<&str> = snap
            .config
            .routes
            .iter()
            .flat_map(|r| {
                let calls = r.aggregate.iter().flat_map(|a| a.calls.values());
                r.upstream
                    .iter()
                    .map(String::as_str)
                    .chain(calls.map(|c| c.upstream.as_str()))
            })
            .collect();
        let down: Vec<&str> = used
            .into_iter()
            .filter(|u| {
                snap.upstreams
                    .get(*u)
                    .is_none_or(|g| !g.targets().iter().any(|t| t.is_healthy(now)))
            })
            .collect();
        if down.is_empty() {
            reply(200, json!({ "ready": true }))
        } else {
            reply(
                503,
                json!({ "ready": false, "upstreams_without_healthy_target": down }),
            )
        }
    }

    /// The running configuration (after `${VAR}` expansion and defaults) with secrets redacted,
    /// and a hash of it that changes whenever the effective configuration does.
    fn config(&self) -> Response<Vec<u8>> {
        let snap = self.snapshot.load();
        let mut v = serde_json::to_value(&snap.config).unwrap_or_default();
        redact(&mut v);
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            serde_json::to_string(&snap.config)
                .unwrap_or_default()
                .hash(&mut h);
            format!("{:016x}", h.finish())
        };
        reply(
            200,
            json!({ "hash": hash, "generation": self.reloader.generation.load(std::sync::atomic::Ordering::SeqCst), "config": v }),
        )
    }

    /// Prometheus text; target health gauges are refreshed from the registry first.
    fn metrics_text(&self) -> Response<Vec<u8>> {
        let snap = self.snapshot.load();
        if let Some(m) = &snap.metrics {
            let now = now_ms();
            for (name, g) in &snap.upstreams {
                if let Some(b) = &g.breaker {
                    b.refresh(now);
                }
                for t in g.targets() {
                    m.target_up
                        .with_label_values(&[name.as_str(), &t.addr.to_string()])
                        .set(i64::from(t.is_healthy(now)));
                }
            }
            m.config_generation.set(
                self.reloader
                    .generation
                    .load(std::sync::atomic::Ordering::SeqCst) as i64,
            );
        }
        let body = metrics::render(&snap.metrics).into_bytes();
        Response::builder()
            .status(200)
            .header("content-type", "text/plain; version=0.0.4")
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}

/// A JSON answer, ending with a newline (as `curl` users expect of a text answer).
fn reply(status: u16, v: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = v.to_string().into_bytes();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

/// What the 404 and 405 answers list: the documented endpoints.
const ENDPOINTS: &str = "admin endpoints: GET /health, GET /ready, GET /config, GET /upstreams, \
GET /metrics, POST /reload, DELETE /cache";

/// An RFC 9457 problem answer, the same shape as the gateway's own errors.
fn problem(status: u16, kind: &str, detail: &str) -> Response<Vec<u8>> {
    problem_with(status, kind, detail, serde_json::Value::Null)
}

/// [`problem`] with an `errors` member (omitted when null).
fn problem_with(
    status: u16,
    kind: &str,
    detail: &str,
    errors: serde_json::Value,
) -> Response<Vec<u8>> {
    let title = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut v = json!({
        "type": format!("urn:postern:problem:{kind}"),
        "title": title,
        "status": status,
        "detail": detail,
    });
    if !errors.is_null() {
        v["errors"] = errors;
    }
    let mut r = reply(status, v);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/problem+json"),
    );
    r
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method == http::Method::POST && req.uri.path() == "/reload" {
            if let Some(rejection) = self.reject_unauthorized(req) {
                return rejection;
            }
            return match self.reloader.reload().await {
                Ok(outcome) => reply(200, outcome.to_json()),
                Err(e) => problem_with(
                    422,
                    "reload-failed",
                    "the running configuration is kept",
                    json!(e.lines().collect::<Vec<_>>()),
                ),
            };
        }
        if req.method == http::Method::DELETE && req.uri.path() == "/cache" {
            if let Some(rejection) = self.reject_unauthorized(req) {
                return rejection;
            }
            return purge(&self.snapshot.load().shared, req.uri.query());
        }
        if req.method != http::Method::GET {
            return problem(405, "method-not-allowed", ENDPOINTS);
        }
        match req.uri.path() {
            "/health" => reply(200, json!({ "status": "up" })),
            "/ready" => self.ready().await,
            "/config" => self.config(),
            "/status" => reply(
                200,
                json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION"), "uptime_seconds": self.started.elapsed().as_secs() }),
            ),
            "/status/ready" => self.ready().await,
            "/upstreams" => reply(200, self.upstreams()),
            "/metrics" if self.metrics => self.metrics_text(),
            _ => problem(404, "not-found", ENDPOINTS),
        }
    }
}

/// `DELETE /cache?url=host/path?q` (every variant of one URL), `?prefix=host/path/`, or
/// `?tag=name` (`Surrogate-Key` / `Cache-Tag` of the responses); `&soft=true` marks entries stale
/// (URL only) instead of removing them.
fn purge(shared: &crate::shared::Shared, query: Option<&str>) -> Response<Vec<u8>> {
    use crate::cache::PurgeKind;
    let params: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), crate::router::path::form_decode(v)))
        .collect();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let soft = get("soft") == Some("true");
    let (kind, value) = match (get("url"), get("prefix"), get("tag")) {
        (Some(u), None, None) => (PurgeKind::Url, u),
        (None, Some(p), None) if !p.is_empty() => (PurgeKind::Prefix, p),
        (None, None, Some(t)) => (PurgeKind::Tag, t),
        _ => {
            return problem(
                400,
                "bad-request",
                "give exactly one of url, prefix (non-empty) or tag",
            )
        }
    };
    match shared.http_cache().map(|c| c.purge(kind, value, soft)) {
        Some(purged) => reply(
            200,
            json!({ "purged": purged.entries, kind.as_str(): value, "soft": soft }),
        ),
        None => problem(404, "not-found", "no route has a cache"),
    }
}

/// Field names whose values are secrets wherever they appear in the configuration.
const SECRET_FIELDS: &[&str] = &[
    "token",
    "password",
    "secret",
    "client_secret",
    "password_hash",
];

/// Replaces secrets in the configuration document: values of [`SECRET_FIELDS`] and the password
/// of URLs with credentials (`redis://user:password@host`).
pub fn redact(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Object(m) => {
            for (k, val) in m.iter_mut() {
                if SECRET_FIELDS.contains(&k.as_str())
                    && val.as_str().is_some_and(|s| !s.is_empty())
                {
                    *val = json!("REDACTED");
                } else if k == "api_keys" {
                    // Plain keys of consumers (digests stay: they identify, they do not open).
                    for entry in val.as_array_mut().into_iter().flatten() {
                        if let Some(key) = entry.get_mut("key").filter(|k| k.is_string()) {
                            *key = json!("REDACTED");
                        }
                    }
                } else {
                    redact(val);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(redact),
        Value::String(s) => {
            if let Some((scheme, rest)) = s.split_once("://") {
                if let Some((creds, host)) = rest.split_once('@') {
                    if let Some((user, _)) = creds.split_once(':') {
                        *s = format!("{scheme}://{user}:REDACTED@{host}");
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn secrets_are_redacted_anywhere() {
        let mut v = serde_json::json!({
            "admin": { "token": "t0p" },
            "cluster": { "redis": { "url": "redis://app:s3cret@10.0.0.1:6379/0" } },
            "other": [ { "password": "x" }, "plain" ],
            "consumers": [ { "api_keys": [ { "key": "k3y" } ], "basic": { "password_hash": "$2b$h" } } ],
        });
        super::redact(&mut v);
        let s = v.to_string();
        assert!(
            !s.contains("t0p") && !s.contains("s3cret") && !s.contains("\"x\""),
            "{s}"
        );
        assert!(!s.contains("k3y") && !s.contains("$2b$h"), "{s}");
        assert!(s.contains("redis://app:REDACTED@10.0.0.1:6379/0"));
    }
}
