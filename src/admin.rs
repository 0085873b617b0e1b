//! The admin listener (loopback by default): liveness, readiness and upstream health as JSON.
//! Metrics, reload and purge endpoints come with their features.

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
    pub started: Instant,
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
                            "healthy": t.is_healthy(now),
                            "active_check": if t.active_up() { "up" } else { "down" },
                            "ejected": t.ejected(now),
                            "in_flight": t.inflight(),
                        })
                    })
                    .collect();
                (
                    name.clone(),
                    json!({ "balance": g.balance, "targets": targets }),
                )
            })
            .collect();
        json!({ "upstreams": ups })
    }
}

fn reply(status: u16, v: serde_json::Value) -> Response<Vec<u8>> {
    let body = v.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET {
            return reply(405, json!({ "title": "Method Not Allowed", "status": 405 }));
        }
        match req.uri.path() {
            "/status" => reply(
                200,
                json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION"), "uptime_seconds": self.started.elapsed().as_secs() }),
            ),
            "/status/ready" => reply(200, json!({ "ready": true })),
            "/upstreams" => reply(200, self.upstreams()),
            _ => reply(
                404,
                json!({ "title": "Not Found", "status": 404, "detail": "admin endpoints: /status, /status/ready, /upstreams" }),
            ),
        }
    }
}
