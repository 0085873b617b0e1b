//! Prometheus metrics, served by the admin listener at `GET /metrics`. Handles are bound when a
//! snapshot is compiled (per route and per upstream), so the request path only increments.
//! Names follow Prometheus conventions: `_total` counters, seconds, bytes.
//!
//! The families live in a registry of their own, made by the server ([`Families::new`]) and
//! handed down as [`Metrics`] (`None` when `observability.metrics.enabled` is off: nothing is
//! recorded): through `Shared` to snapshot compilation and plugins, through the snapshot to the
//! request path. Two servers in one process count apart.

use pingora_prometheus::prometheus::{
    self, register_histogram_vec_with_registry, register_int_counter_vec_with_registry,
    register_int_gauge_vec_with_registry, register_int_gauge_with_registry, Histogram,
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};
use std::sync::Arc;

/// The metrics of one server; `None`: metrics are off.
pub type Metrics = Option<Arc<Families>>;

/// Request and upstream latency buckets, 1 ms to 60 s.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Status classes; `client_closed` is a request whose client went away before any response
/// (status 0 inside Postern, nginx's 499), not an informational answer.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "client_closed"];

/// Index of a status in [`CLASSES`].
fn class_index(status: u16) -> usize {
    match status {
        0 => 5,
        s => (s / 100).clamp(1, 5) as usize - 1,
    }
}
const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];

pub struct Families {
    registry: Registry,
    /// `by_method` bound once per method and status class.
    by_method_handles: Vec<IntCounter>,
    /// Live breakers per upstream label: a reload builds the new breaker before the old one
    /// is dropped, so the gauge series goes only when the last breaker of that upstream does.
    live_breakers: parking_lot::Mutex<std::collections::HashMap<String, usize>>,
    requests: IntCounterVec,
    duration: HistogramVec,
    bytes: IntCounterVec,
    upstream_duration: HistogramVec,
    retries: IntCounterVec,
    pub in_flight: IntGauge,
    pub target_up: IntGaugeVec,
    pub reloads: IntCounterVec,
    pub config_generation: IntGauge,
    pub access_log_dropped: IntCounter,
    ratelimit: IntCounterVec,
    pub redis_up: IntGauge,
    pub redis_errors: IntCounter,
    auth_failures: IntCounterVec,
    cache_requests: IntCounterVec,
    cache_evictions: IntCounter,
    cache_stored_bytes: IntCounter,
    cache_disk_bytes: IntGauge,
    spans_dropped: IntCounter,
    transform_errors: IntCounterVec,
    body_buffered: IntCounter,
    aggregate_calls: IntCounterVec,
    aggregate_call_duration: HistogramVec,
    circuit_state: IntGaugeVec,
    circuit_transitions: IntCounterVec,
    retry_results: IntCounterVec,
    fallbacks: IntCounterVec,
    faults: IntCounterVec,
    mirrors: IntCounterVec,
}

impl Families {
    /// The metrics of a server, or `None` when they are off (or could not be registered,
    /// which is logged).
    pub fn new(enabled: bool) -> Metrics {
        if !enabled {
            return None;
        }
        match Families::register(Registry::new()) {
            Ok(f) => Some(Arc::new(f)),
            Err(e) => {
                log::error!("metrics disabled: {e}");
                None
            }
        }
    }

    fn register(r: Registry) -> Result<Families, prometheus::Error> {
        let by_method = register_int_counter_vec_with_registry!(
            "postern_http_requests_by_method_total",
            "Requests answered, by method and status class.",
            &["method", "status_class"],
            r
        )?;
        let by_method_handles = METHODS
            .iter()
            .flat_map(|meth| CLASSES.map(|c| by_method.with_label_values(&[*meth, c])))
            .collect();
        Ok(Families {
        by_method_handles,
        live_breakers: Default::default(),
        requests: register_int_counter_vec_with_registry!(
            "postern_http_requests_total",
            "Requests answered, by route and status class.",
            &["route", "status_class"],
            r
        )?,
        duration: register_histogram_vec_with_registry!(
            "postern_http_request_duration_seconds",
            "Time from the request header to the end of the response, by route.",
            &["route"],
            BUCKETS.to_vec(),
            r
        )?,
        bytes: register_int_counter_vec_with_registry!(
            "postern_http_body_bytes_total",
            "Body bytes received from clients (in) and sent to them (out), by route.",
            &["route", "direction"],
            r
        )?,
        upstream_duration: register_histogram_vec_with_registry!(
            "postern_upstream_response_seconds",
            "Time from choosing a target to its response header, by upstream.",
            &["upstream"],
            BUCKETS.to_vec(),
            r
        )?,
        retries: register_int_counter_vec_with_registry!(
            "postern_upstream_retries_total",
            "Requests sent to another target after a failure, by upstream.",
            &["upstream"],
            r
        )?,
        in_flight: register_int_gauge_with_registry!(
            "postern_http_requests_in_flight",
            "Requests being processed.",
            r
        )?,
        target_up: register_int_gauge_vec_with_registry!(
            "postern_upstream_target_up",
            "1 when a target receives traffic (healthy and not ejected), else 0.",
            &["upstream", "target"],
            r
        )?,
        reloads: register_int_counter_vec_with_registry!(
            "postern_config_reloads_total",
            "Configuration reloads, by result.",
            &["result"],
            r
        )?,
        config_generation: register_int_gauge_with_registry!(
            "postern_config_generation",
            "Generation of the running configuration (1 at start, +1 per reload).",
            r
        )?,
        access_log_dropped: IntCounter::new(
            "postern_access_log_dropped_total",
            "Access log records dropped: the writer fell behind or the file could not be written.",
        )
        .and_then(|c| r.register(Box::new(c.clone())).map(|_| c))?,
        ratelimit: register_int_counter_vec_with_registry!(
            "postern_ratelimit_requests_total",
            "Requests checked by rate and concurrency limits, by route, rule and result \
             (allowed, delayed, rejected).",
            &["route", "rule", "result"],
            r
        )?,
        redis_up: register_int_gauge_with_registry!(
            "postern_redis_up",
            "1 while the Redis of cluster-wide rate limits answers, else 0.",
            r
        )?,
        auth_failures: register_int_counter_vec_with_registry!(
            "postern_auth_failures_total",
            "Requests refused by authentication and authorization plugins, by route, plugin and \
             reason.",
            &["route", "plugin", "reason"],
            r
        )?,
        cache_requests: register_int_counter_vec_with_registry!(
            "postern_cache_requests_total",
            "Requests of cached routes by how the cache answered (hit, miss, stale, expired, \
             revalidated, bypass).",
            &["route", "result"],
            r
        )?,
        cache_evictions: IntCounter::new(
            "postern_cache_evictions_total",
            "Cached responses evicted to stay within the memory budget.",
        )
        .and_then(|c| r.register(Box::new(c.clone())).map(|_| c))?,
        cache_stored_bytes: IntCounter::new(
            "postern_cache_stored_bytes_total",
            "Bytes of responses stored in the cache (headers and bodies).",
        )
        .and_then(|c| r.register(Box::new(c.clone())).map(|_| c))?,
        aggregate_calls: register_int_counter_vec_with_registry!(
            "postern_aggregate_calls_total",
            "Calls made by composite routes, by route, call and result (ok or the failure reason).",
            &["route", "call", "result"],
            r
        )?,
        aggregate_call_duration: register_histogram_vec_with_registry!(
            "postern_aggregate_call_duration_seconds",
            "Time of a composite's call, from its start to its complete answer, by route and call.",
            &["route", "call"],
            BUCKETS.to_vec(),
            r
        )?,
        circuit_state: register_int_gauge_vec_with_registry!(
            "postern_circuit_state",
            "Circuit breaker state of an upstream on this node: 0 closed, 1 half-open, 2 open.",
            &["upstream"],
            r
        )?,
        circuit_transitions: register_int_counter_vec_with_registry!(
            "postern_circuit_transitions_total",
            "Circuit breaker transitions, by upstream and the state entered.",
            &["upstream", "to"],
            r
        )?,
        retry_results: register_int_counter_vec_with_registry!(
            "postern_retries_total",
            "Retry decisions after a failed try, by upstream and result (retried, \
             budget_exhausted).",
            &["upstream", "result"],
            r
        )?,
        fallbacks: register_int_counter_vec_with_registry!(
            "postern_fallbacks_total",
            "Requests answered by a route's static fallback, by route and reason.",
            &["route", "reason"],
            r
        )?,
        mirrors: register_int_counter_vec_with_registry!(
            "postern_mirror_requests_total",
            "Request copies sent to a route's shadow upstream, by route and result (sent, failed, \
             dropped, too_large, no_healthy_target).",
            &["route", "result"],
            r
        )?,
        faults: register_int_counter_vec_with_registry!(
            "postern_faults_injected_total",
            "Requests the fault plugin delayed or aborted, by route and fault.",
            &["route", "fault"],
            r
        )?,
        transform_errors: register_int_counter_vec_with_registry!(
            "postern_transform_errors_total",
            "Bodies a body plugin left untransformed or failed on, by route, phase and reason.",
            &["route", "phase", "reason"],
            r
        )?,
        body_buffered: IntCounter::new(
            "postern_body_buffered_bytes_total",
            "Body bytes buffered whole for body plugins.",
        )
        .and_then(|c| r.register(Box::new(c.clone())).map(|_| c))?,
        spans_dropped: IntCounter::new(
            "postern_trace_spans_dropped_total",
            "Spans not exported: the export queue was full or the collector failed.",
        )
        .and_then(|c| r.register(Box::new(c.clone())).map(|_| c))?,
        cache_disk_bytes: register_int_gauge_with_registry!(
            "postern_cache_disk_bytes",
            "Bytes held by the cache's disk tier.",
            r
        )?,
        redis_errors: IntCounter::new(
            "postern_redis_errors_total",
            "Redis calls of cluster-wide rate limits that failed or timed out.",
        )
        .and_then(|c| r.register(Box::new(c.clone())).map(|_| c))?,
        registry: r,
        })
    }
}

/// Counters of one rate-limit rule on one route: allowed, delayed, rejected.
#[derive(Clone, Default)]
pub struct LimitMetrics(Option<[IntCounter; 3]>);

impl LimitMetrics {
    pub fn new(metrics: &Metrics, route: &str, rule: &str) -> LimitMetrics {
        LimitMetrics(metrics.as_ref().map(|m| {
            ["allowed", "delayed", "rejected"]
                .map(|r| m.ratelimit.with_label_values(&[route, rule, r]))
        }))
    }
    pub fn allowed(&self) {
        if let Some(c) = &self.0 {
            c[0].inc();
        }
    }
    pub fn delayed(&self) {
        if let Some(c) = &self.0 {
            c[1].inc();
        }
    }
    pub fn rejected(&self) {
        if let Some(c) = &self.0 {
            c[2].inc();
        }
    }
}

/// The failure counter of one authentication or authorization plugin on one route, for one
/// reason (`auth::AuthMetrics` binds one per reason); `None` without metrics.
pub fn auth_failure_counter(
    metrics: &Metrics,
    route: &str,
    plugin: &str,
    reason: &str,
) -> Option<IntCounter> {
    metrics
        .as_ref()
        .map(|m| m.auth_failures.with_label_values(&[route, plugin, reason]))
}

/// Counts a cache eviction.
pub fn cache_evicted(metrics: &Metrics) {
    if let Some(m) = metrics {
        m.cache_evictions.inc();
    }
}

/// Counts a body a plugin skipped or failed on (rare: labels bound per call); the request's
/// own note for the access log is `RequestCtx::transform_failed`.
pub fn transform_error(metrics: &Metrics, route: &str, phase: &str, reason: &'static str) {
    if let Some(m) = metrics {
        m.transform_errors
            .with_label_values(&[route, phase, reason])
            .inc();
    }
}

/// Handles of one call of a composite (the `ok` result and the duration bound once).
#[derive(Clone, Default)]
pub struct CallMetrics {
    labels: Option<(Arc<str>, Arc<str>, IntCounterVec)>,
    ok: Option<IntCounter>,
    duration: Option<Histogram>,
}

impl CallMetrics {
    pub fn new(metrics: &Metrics, route: &str, call: &str) -> CallMetrics {
        let Some(m) = metrics else {
            return CallMetrics::default();
        };
        CallMetrics {
            labels: Some((route.into(), call.into(), m.aggregate_calls.clone())),
            ok: Some(m.aggregate_calls.with_label_values(&[route, call, "ok"])),
            duration: Some(m.aggregate_call_duration.with_label_values(&[route, call])),
        }
    }

    /// A finished call: `None` for success, else the failure reason.
    pub fn observe(&self, failure: Option<&str>, seconds: f64) {
        if let Some(h) = &self.duration {
            h.observe(seconds);
        }
        match (failure, &self.labels) {
            (None, _) => {
                if let Some(c) = &self.ok {
                    c.inc();
                }
            }
            (Some(reason), Some((route, call, calls))) => {
                calls.with_label_values(&[&**route, &**call, reason]).inc()
            }
            _ => {}
        }
    }
}

/// Counts bytes buffered whole for body plugins.
pub fn body_buffered(metrics: &Metrics, bytes: usize) {
    if let Some(m) = metrics {
        m.body_buffered.inc_by(bytes as u64);
    }
}

/// Counts a span dropped by a full export queue.
pub fn spans_dropped(metrics: &Metrics) {
    if let Some(m) = metrics {
        m.spans_dropped.inc();
    }
}

/// Counts spans lost to a failed export.
pub fn span_export_failed(metrics: &Metrics, n: usize) {
    if let Some(m) = metrics {
        m.spans_dropped.inc_by(n as u64);
    }
}

/// Counts bytes stored in the cache.
pub fn cache_stored(metrics: &Metrics, bytes: usize) {
    if let Some(m) = metrics {
        m.cache_stored_bytes.inc_by(bytes as u64);
    }
}

/// Sets the size of the cache's disk tier.
pub fn cache_disk_bytes(metrics: &Metrics, bytes: u64) {
    if let Some(m) = metrics {
        m.cache_disk_bytes.set(bytes as i64);
    }
}

/// Cache results of one route.
#[derive(Clone, Default)]
pub struct CacheMetrics(Option<Vec<(&'static str, IntCounter)>>);

impl CacheMetrics {
    pub const RESULTS: [&'static str; 6] =
        ["HIT", "MISS", "STALE", "EXPIRED", "REVALIDATED", "BYPASS"];

    pub fn new(metrics: &Metrics, route: &str) -> CacheMetrics {
        CacheMetrics(metrics.as_ref().map(|m| {
            Self::RESULTS
                .iter()
                .map(|r| {
                    (
                        *r,
                        m.cache_requests
                            .with_label_values(&[route, &r.to_ascii_lowercase()]),
                    )
                })
                .collect()
        }))
    }

    pub fn observe(&self, result: &str) {
        if let Some(v) = &self.0 {
            if let Some((_, c)) = v.iter().find(|(r, _)| *r == result) {
                c.inc();
            }
        }
    }
}

/// Records a Redis outage or recovery in the metrics.
pub fn redis_state(metrics: &Metrics, up: bool, error: bool) {
    if let Some(m) = metrics {
        m.redis_up.set(i64::from(up));
        if error {
            m.redis_errors.inc();
        }
    }
}

/// Handles of one route.
#[derive(Clone)]
pub struct RouteMetrics {
    by_class: Option<[IntCounter; 6]>,
    duration: Option<Histogram>,
    bytes_in: Option<IntCounter>,
    bytes_out: Option<IntCounter>,
}

impl RouteMetrics {
    /// Handles that record nothing (the internal route of a composite's call).
    pub fn none() -> RouteMetrics {
        RouteMetrics {
            by_class: None,
            duration: None,
            bytes_in: None,
            bytes_out: None,
        }
    }

    pub fn new(metrics: &Metrics, route: &str) -> RouteMetrics {
        let Some(m) = metrics else {
            return RouteMetrics {
                by_class: None,
                duration: None,
                bytes_in: None,
                bytes_out: None,
            };
        };
        RouteMetrics {
            by_class: Some(CLASSES.map(|c| m.requests.with_label_values(&[route, c]))),
            duration: Some(m.duration.with_label_values(&[route])),
            bytes_in: Some(m.bytes.with_label_values(&[route, "in"])),
            bytes_out: Some(m.bytes.with_label_values(&[route, "out"])),
        }
    }

    pub fn observe(&self, status: u16, seconds: f64, bytes_in: u64, bytes_out: u64) {
        let class = class_index(status);
        if let Some(c) = &self.by_class {
            c[class].inc();
        }
        if let Some(h) = &self.duration {
            h.observe(seconds);
        }
        if let (Some(i), Some(o)) = (&self.bytes_in, &self.bytes_out) {
            i.inc_by(bytes_in);
            o.inc_by(bytes_out);
        }
    }
}

/// Handles of one upstream group.
#[derive(Clone)]
pub struct UpstreamMetrics {
    pub response: Option<Histogram>,
    pub retries: Option<IntCounter>,
    /// Retry decisions: retried, budget_exhausted.
    retry_results: Option<[IntCounter; 2]>,
}

impl UpstreamMetrics {
    pub fn new(metrics: &Metrics, upstream: &str) -> UpstreamMetrics {
        let m = metrics.as_ref();
        UpstreamMetrics {
            response: m.map(|m| m.upstream_duration.with_label_values(&[upstream])),
            retries: m.map(|m| m.retries.with_label_values(&[upstream])),
            retry_results: m.map(|m| {
                ["retried", "budget_exhausted"]
                    .map(|r| m.retry_results.with_label_values(&[upstream, r]))
            }),
        }
    }

    /// Counts a retry decision: allowed by the budget, or not.
    pub fn retry_result(&self, allowed: bool) {
        if let Some(c) = &self.retry_results {
            c[usize::from(!allowed)].inc();
        }
    }
}

/// A circuit breaker's state gauge and transition counters.
pub struct BreakerMetrics(Option<(Arc<Families>, prometheus::IntGauge, String)>);

impl BreakerMetrics {
    pub fn new(metrics: &Metrics, upstream: &str) -> BreakerMetrics {
        BreakerMetrics(metrics.as_ref().map(|m| {
            *m.live_breakers
                .lock()
                .entry(upstream.to_string())
                .or_default() += 1;
            (
                m.clone(),
                m.circuit_state.with_label_values(&[upstream]),
                upstream.to_string(),
            )
        }))
    }

    pub fn set_state(&self, state: i64) {
        if let Some((_, g, _)) = &self.0 {
            g.set(state);
        }
    }

    pub fn transition(&self, state: i64, name: &str) {
        if let Some((m, g, up)) = &self.0 {
            g.set(state);
            m.circuit_transitions
                .with_label_values(&[up.as_str(), name])
                .inc();
        }
    }
}

impl Drop for BreakerMetrics {
    /// An upstream whose breaker left the configuration stops reporting a state.
    fn drop(&mut self) {
        let Some((m, _, up)) = &self.0 else {
            return;
        };
        let mut live = m.live_breakers.lock();
        let n = live.entry(up.clone()).or_insert(1);
        *n = n.saturating_sub(1);
        if *n == 0 {
            live.remove(up);
            let _ = m.circuit_state.remove_label_values(&[up.as_str()]);
        }
    }
}

/// Counts a mirrored request copy by result.
pub fn mirror(metrics: &Metrics, route: &str, result: &str) {
    if let Some(m) = metrics {
        m.mirrors.with_label_values(&[route, result]).inc();
    }
}

/// Counts a fault the `fault` plugin injected.
pub fn fault(metrics: &Metrics, route: &str, what: &str) {
    if let Some(m) = metrics {
        m.faults.with_label_values(&[route, what]).inc();
    }
}

/// Counts a fallback answer of a route.
pub fn fallback(metrics: &Metrics, route: &str, reason: &str) {
    if let Some(m) = metrics {
        m.fallbacks.with_label_values(&[route, reason]).inc();
    }
}

/// Counts a request by method and status class.
pub fn observe_method(metrics: &Metrics, method: &http::Method, status: u16) {
    let Some(m) = metrics else { return };
    let mi = METHODS
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1);
    m.by_method_handles[mi * CLASSES.len() + class_index(status)].inc();
}

/// The text exposition of a server's metrics, with whatever the process registered in
/// Prometheus' default registry (Pingora's own).
pub fn render(metrics: &Metrics) -> String {
    use prometheus::Encoder;
    let mut families = metrics
        .as_ref()
        .map_or_else(Vec::new, |m| m.registry.gather());
    families.extend(prometheus::gather());
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&families, &mut out);
    String::from_utf8(out).unwrap_or_default()
}
