//! Span export over OTLP/HTTP (JSON encoding, `POST {endpoint}`), for traces that are sampled:
//! by the caller's `traceparent` flag, or for traces Postern starts, with `sample_ratio`.
//!
//! Each request gives a SERVER span (the gateway's own, child of the caller's span) and one
//! CLIENT span per upstream attempt (the span named in the `traceparent` sent upstream). Spans go
//! through a bounded queue to a background task that sends batches; a full queue drops spans
//! (counted), a collector that is down or slow costs requests nothing (the call has a timeout
//! and runs off the request path; failures are logged once per outage).

use crate::observability::trace::hex_id;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Spans waiting for export.
const QUEUE: usize = 8192;
/// Spans per request to the collector.
const BATCH: usize = 512;

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent: Option<[u8; 8]>,
    pub name: String,
    /// 2 = SERVER, 3 = CLIENT (OTLP `SpanKind`).
    pub kind: u8,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, Value)>,
    pub error: bool,
}

impl Span {
    fn to_json(&self) -> Value {
        let attrs: Vec<Value> = self
            .attributes
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::Number(n) if n.is_i64() || n.is_u64() => {
                        json!({ "intValue": n.to_string() })
                    }
                    Value::String(s) => json!({ "stringValue": s }),
                    other => json!({ "stringValue": other.to_string() }),
                };
                json!({ "key": k, "value": value })
            })
            .collect();
        let mut s = json!({
            "traceId": hex_id(&self.trace_id),
            "spanId": hex_id(&self.span_id),
            "name": self.name,
            "kind": self.kind,
            "startTimeUnixNano": self.start_unix_nanos.to_string(),
            "endTimeUnixNano": self.end_unix_nanos.to_string(),
            "attributes": attrs,
            "status": { "code": if self.error { 2 } else { 0 } },
        });
        if let Some(p) = self.parent {
            s["parentSpanId"] = json!(hex_id(&p));
        }
        s
    }
}

/// The request-path side: hands spans to the export task without waiting.
#[derive(Clone)]
pub struct Exporter {
    tx: mpsc::Sender<Span>,
    pub sample_ratio: f64,
    metrics: super::metrics::Metrics,
}

impl Exporter {
    pub fn send(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            crate::observability::metrics::spans_dropped(&self.metrics);
        }
    }

    /// Whether a trace started here is sampled.
    pub fn sample(&self) -> bool {
        self.sample_ratio >= 1.0
            || (self.sample_ratio > 0.0 && rand::random::<f64>() < self.sample_ratio)
    }
}

/// The export task's side.
pub struct Sender {
    rx: tokio::sync::Mutex<mpsc::Receiver<Span>>,
    endpoint: String,
    service: String,
    client: reqwest::Client,
    down: AtomicBool,
    metrics: super::metrics::Metrics,
}

pub fn channel(
    endpoint: &str,
    sample_ratio: f64,
    timeout: Duration,
    service: &str,
    metrics: &super::metrics::Metrics,
) -> Result<(Exporter, Sender), String> {
    crate::common::http_client_ready();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(QUEUE);
    Ok((
        Exporter {
            tx,
            sample_ratio,
            metrics: metrics.clone(),
        },
        Sender {
            rx: tokio::sync::Mutex::new(rx),
            endpoint: endpoint.to_string(),
            service: service.to_string(),
            client,
            down: AtomicBool::new(false),
            metrics: metrics.clone(),
        },
    ))
}

impl Sender {
    /// Sends batches until the queue closes.
    pub async fn run(&self) {
        let mut rx = self.rx.lock().await;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let n = rx.recv_many(&mut batch, BATCH).await;
            if n == 0 {
                return;
            }
            self.post(&batch).await;
            batch.clear();
        }
    }

    async fn post(&self, spans: &[Span]) {
        let body = json!({
            "resourceSpans": [{
                "resource": { "attributes": [
                    { "key": "service.name", "value": { "stringValue": self.service } }
                ] },
                "scopeSpans": [{
                    "scope": { "name": "postern", "version": env!("CARGO_PKG_VERSION") },
                    "spans": spans.iter().map(Span::to_json).collect::<Vec<_>>(),
                }],
            }],
        });
        let sent = self
            .client
            .post(&self.endpoint)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let failure = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("status {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        match failure {
            None => {
                if self.down.swap(false, Ordering::Relaxed) {
                    log::info!("span export to {} works again", self.endpoint);
                }
            }
            Some(why) => {
                crate::observability::metrics::span_export_failed(&self.metrics, spans.len());
                if !self.down.swap(true, Ordering::Relaxed) {
                    log::warn!(
                        "span export to {} failed ({why}); spans are dropped until it answers",
                        self.endpoint
                    );
                }
            }
        }
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
