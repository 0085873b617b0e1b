//! Traffic mirroring: a copy of a share of a route's requests (body included up to a cap) is
//! sent to a shadow upstream, fire and forget. The shadow's answer is read and dropped; it never
//! delays or changes the client's answer (the copy runs on its own task, bounded by the shadow's
//! timeouts). At most `max_in_flight` copies run at once: above it, copies are dropped and
//! counted, so a hanging shadow cannot pile up work.

use super::UpstreamGroup;
use crate::common::issue::Issue;
use crate::upstream::config::MirrorConfig;
use bytes::BytesMut;
use pingora::http::RequestHeader;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

pub struct Mirror {
    group: Arc<UpstreamGroup>,
    percent: f64,
    pub max_body: usize,
    max_in_flight: usize,
    in_flight: Arc<AtomicUsize>,
    client: reqwest::Client,
    route: Arc<str>,
    metrics: crate::observability::metrics::Metrics,
}

/// A request being copied: its head, and its body as it streams (main requests only).
pub struct Capture {
    head: RequestHeader,
    client_ip: Option<IpAddr>,
    body: BytesMut,
    over: bool,
}

impl Mirror {
    pub fn new(
        path: &str,
        c: &MirrorConfig,
        group: Arc<UpstreamGroup>,
        route: Arc<str>,
        metrics: &crate::observability::metrics::Metrics,
    ) -> Result<Mirror, Vec<Issue>> {
        let mut issues = Vec::new();
        if !(c.percent > 0.0 && c.percent <= 100.0) {
            issues.push(Issue::new(
                format!("{path}.percent"),
                format!("must be in (0, 100], got {}", c.percent),
            ));
        }
        if c.max_in_flight == 0 {
            issues.push(Issue::new(
                format!("{path}.max_in_flight"),
                "must be at least 1",
            ));
        }
        crate::common::http_client_ready();
        let t = &group.peer.timeouts;
        let client = reqwest::Client::builder()
            .connect_timeout(t.connect.0)
            .timeout(t.connect.0 + t.read.0)
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(!group.peer.verify)
            .build()
            .map_err(|e| issues.push(Issue::new(path, format!("HTTP client: {e}"))))
            .ok();
        match (issues.is_empty(), client) {
            (true, Some(client)) => Ok(Mirror {
                group,
                percent: c.percent,
                max_body: c.max_body.0 as usize,
                max_in_flight: c.max_in_flight,
                in_flight: Arc::new(AtomicUsize::new(0)),
                client,
                route,
                metrics: metrics.clone(),
            }),
            _ => Err(issues),
        }
    }

    /// Whether this request is copied (the route's `percent`).
    pub fn draw(&self) -> bool {
        self.percent >= 100.0 || rand::random::<f64>() * 100.0 < self.percent
    }

    /// `head`: the request as the upstream would get it (path rewritten, forwarding fields).
    pub fn capture(&self, head: RequestHeader, client_ip: Option<IpAddr>) -> Capture {
        Capture {
            head,
            client_ip,
            body: BytesMut::new(),
            over: false,
        }
    }

    /// Adds a chunk of the request body; past `max_body` the copy is abandoned.
    pub fn add(&self, c: &mut Capture, chunk: &[u8]) {
        if c.over {
            return;
        }
        if c.body.len() + chunk.len() > self.max_body {
            c.over = true;
            c.body = BytesMut::new();
            return;
        }
        c.body.extend_from_slice(chunk);
    }

    /// Sends the copy on a task of its own (or drops it: body over the cap, too many in flight,
    /// no healthy shadow target).
    pub fn send(&self, c: Capture) {
        if c.over {
            return count(&self.metrics, &self.route, "too_large");
        }
        if self.in_flight.fetch_add(1, Relaxed) >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Relaxed);
            return count(&self.metrics, &self.route, "dropped");
        }
        let Ok(target) = self.group.select(&c.head, c.client_ip, &[]) else {
            self.in_flight.fetch_sub(1, Relaxed);
            return count(&self.metrics, &self.route, "no_healthy_target");
        };
        let scheme = if self.group.peer.tls { "https" } else { "http" };
        let pq = c
            .head
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let url = format!("{scheme}://{}{pq}", target.addr);
        let mut req = self.client.request(c.head.method.clone(), url);
        for (k, v) in c.head.headers.iter() {
            if !HOP_BY_HOP.contains(&k.as_str()) {
                req = req.header(k, v);
            }
        }
        let body = c.body.freeze();
        if !body.is_empty() {
            req = req.body(body);
        }
        let (in_flight, route) = (self.in_flight.clone(), self.route.clone());
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let result = match req.send().await {
                Ok(r) => {
                    // Read the answer to the end so the connection can be reused.
                    let _ = r.bytes().await;
                    "sent"
                }
                Err(e) => {
                    log::debug!("route {route}: mirror copy failed: {e}");
                    "failed"
                }
            };
            in_flight.fetch_sub(1, Relaxed);
            count(&metrics, &route, result);
        });
    }
}

/// Fields of the client's connection, not of the request (the copy has its own framing).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

fn count(metrics: &crate::observability::metrics::Metrics, route: &str, result: &str) {
    crate::observability::metrics::mirror(metrics, route, result);
}
