//! Prometheus metrics, served by the admin listener at `GET /metrics`. Handles are bound when a
//! snapshot is compiled (per route and per upstream), so the request path only increments.
//! Names follow Prometheus conventions: `_total` counters, seconds, bytes.

use pingora_prometheus::prometheus::{
    self, register_histogram_vec, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec,
};
use std::sync::LazyLock;

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
    requests: IntCounterVec,
    by_method: IntCounterVec,
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

fn families() -> Result<Families, prometheus::Error> {
    Ok(Families {
        requests: register_int_counter_vec!(
            "postern_http_requests_total",
            "Requests answered, by route and status class.",
            &["route", "status_class"]
        )?,
        by_method: register_int_counter_vec!(
            "postern_http_requests_by_method_total",
            "Requests answered, by method and status class.",
            &["method", "status_class"]
        )?,
        duration: register_histogram_vec!(
            "postern_http_request_duration_seconds",
            "Time from the request header to the end of the response, by route.",
            &["route"],
            BUCKETS.to_vec()
        )?,
        bytes: register_int_counter_vec!(
            "postern_http_body_bytes_total",
            "Body bytes received from clients (in) and sent to them (out), by route.",
            &["route", "direction"]
        )?,
        upstream_duration: register_histogram_vec!(
            "postern_upstream_response_seconds",
            "Time from choosing a target to its response header, by upstream.",
            &["upstream"],
            BUCKETS.to_vec()
        )?,
        retries: register_int_counter_vec!(
            "postern_upstream_retries_total",
            "Requests sent to another target after a failure, by upstream.",
            &["upstream"]
        )?,
        in_flight: register_int_gauge!(
            "postern_http_requests_in_flight",
            "Requests being processed."
        )?,
        target_up: register_int_gauge_vec!(
            "postern_upstream_target_up",
            "1 when a target receives traffic (healthy and not ejected), else 0.",
            &["upstream", "target"]
        )?,
        reloads: register_int_counter_vec!(
            "postern_config_reloads_total",
            "Configuration reloads, by result.",
            &["result"]
        )?,
        config_generation: register_int_gauge!(
            "postern_config_generation",
            "Generation of the running configuration (1 at start, +1 per reload)."
        )?,
        access_log_dropped: IntCounter::new(
            "postern_access_log_dropped_total",
            "Access log records dropped: the writer fell behind or the file could not be written.",
        )
        .and_then(|c| prometheus::register(Box::new(c.clone())).map(|_| c))?,
        ratelimit: register_int_counter_vec!(
            "postern_ratelimit_requests_total",
            "Requests checked by rate and concurrency limits, by route, rule and result \
             (allowed, delayed, rejected).",
            &["route", "rule", "result"]
        )?,
        redis_up: register_int_gauge!(
            "postern_redis_up",
            "1 while the Redis of cluster-wide rate limits answers, else 0."
        )?,
        auth_failures: register_int_counter_vec!(
            "postern_auth_failures_total",
            "Requests refused by authentication and authorization plugins, by route, plugin and \
             reason.",
            &["route", "plugin", "reason"]
        )?,
        cache_requests: register_int_counter_vec!(
            "postern_cache_requests_total",
            "Requests of cached routes by how the cache answered (hit, miss, stale, expired, \
             revalidated, bypass).",
            &["route", "result"]
        )?,
        cache_evictions: IntCounter::new(
            "postern_cache_evictions_total",
            "Cached responses evicted to stay within the memory budget.",
        )
        .and_then(|c| prometheus::register(Box::new(c.clone())).map(|_| c))?,
        cache_stored_bytes: IntCounter::new(
            "postern_cache_stored_bytes_total",
            "Bytes of responses stored in the cache (headers and bodies).",
        )
        .and_then(|c| prometheus::register(Box::new(c.clone())).map(|_| c))?,
        aggregate_calls: register_int_counter_vec!(
            "postern_aggregate_calls_total",
            "Calls made by composite routes, by route, call and result (ok or the failure reason).",
            &["route", "call", "result"]
        )?,
        aggregate_call_duration: register_histogram_vec!(
            "postern_aggregate_call_duration_seconds",
            "Time of a composite's call, from its start to its complete answer, by route and call.",
            &["route", "call"],
            BUCKETS.to_vec()
        )?,
        circuit_state: register_int_gauge_vec!(
            "postern_circuit_state",
            "Circuit breaker state of an upstream on this node: 0 closed, 1 half-open, 2 open.",
            &["upstream"]
        )?,
        circuit_transitions: register_int_counter_vec!(
            "postern_circuit_transitions_total",
            "Circuit breaker transitions, by upstream and the state entered.",
            &["upstream", "to"]
        )?,
        retry_results: register_int_counter_vec!(
            "postern_retries_total",
            "Retry decisions after a failed try, by upstream and result (retried, \
             budget_exhausted).",
            &["upstream", "result"]
        )?,
        fallbacks: register_int_counter_vec!(
            "postern_fallbacks_total",
            "Requests answered by a route's static fallback, by route and reason.",
            &["route", "reason"]
        )?,
        mirrors: register_int_counter_vec!(
            "postern_mirror_requests_total",
            "Request copies sent to a route's shadow upstream, by route and result (sent, failed, \
             dropped, too_large, no_healthy_target).",
            &["route", "result"]
        )?,
        faults: register_int_counter_vec!(
            "postern_faults_injected_total",
            "Requests the fault plugin delayed or aborted, by route and fault.",
            &["route", "fault"]
        )?,
        transform_errors: register_int_counter_vec!(
            "postern_transform_errors_total",
            "Bodies a body plugin left untransformed or failed on, by route, phase and reason.",
            &["route", "phase", "reason"]
        )?,
        body_buffered: IntCounter::new(
            "postern_body_buffered_bytes_total",
            "Body bytes buffered whole for body plugins.",
        )
        .and_then(|c| prometheus::register(Box::new(c.clone())).map(|_| c))?,
        spans_dropped: IntCounter::new(
            "postern_trace_spans_dropped_total",
            "Spans not exported: the export queue was full or the collector failed.",
        )
        .and_then(|c| prometheus::register(Box::new(c.clone())).map(|_| c))?,
        cache_disk_bytes: register_int_gauge!(
            "postern_cache_disk_bytes",
            "Bytes held by the cache's disk tier."
        )?,
        redis_errors: IntCounter::new(
            "postern_redis_errors_total",
            "Redis calls of cluster-wide rate limits that failed or timed out.",
        )
        .and_then(|c| prometheus::register(Box::new(c.clone())).map(|_| c))?,
    })
}

/// Counters of one rate-limit rule on one route: allowed, delayed, rejected.
#[derive(Clone, Default)]
pub struct LimitMetrics(Option<[IntCounter; 3]>);

impl LimitMetrics {
    pub fn new(route: &str, rule: &str) -> LimitMetrics {
        LimitMetrics(METRICS.as_ref().map(|m| {
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
pub fn auth_failure_counter(route: &str, plugin: &str, reason: &str) -> Option<IntCounter> {
    METRICS
        .as_ref()
        .map(|m| m.auth_failures.with_label_values(&[route, plugin, reason]))
}

/// Counts a cache eviction.
pub fn cache_evicted() {
    if let Some(m) = METRICS.as_ref() {
        m.cache_evictions.inc();
    }
}

/// Counts a body a plugin skipped or failed on (rare: labels bound per call); the request's
/// own note for the access log is `RequestCtx::transform_failed`.
pub fn transform_error(route: &str, phase: &str, reason: &'static str) {
    if let Some(m) = METRICS.as_ref() {
        m.transform_errors
            .with_label_values(&[route, phase, reason])
            .inc();
    }
}

/// Handles of one call of a composite (the `ok` result and the duration bound once).
#[derive(Clone, Default)]
pub struct CallMetrics {
    labels: Option<(std::sync::Arc<str>, std::sync::Arc<str>)>,
    ok: Option<IntCounter>,
    duration: Option<Histogram>,
}

impl CallMetrics {
    pub fn new(route: &str, call: &str) -> CallMetrics {
        let Some(m) = METRICS.as_ref() else {
            return CallMetrics::default();
        };
        CallMetrics {
            labels: Some((route.into(), call.into())),
            ok: Some(m.aggregate_calls.with_label_values(&[route, call, "ok"])),
            duration: Some(m.aggregate_call_duration.with_label_values(&[route, call])),
        }
    }

    /// A finished call: `None` for success, else the failure reason.
    pub fn observe(&self, failure: Option<&str>, seconds: f64) {
        if let Some(h) = &self.duration {
            h.observe(seconds);
        }
        match (failure, &self.labels, METRICS.as_ref()) {
            (None, ..) => {
                if let Some(c) = &self.ok {
                    c.inc();
                }
            }
            (Some(reason), Some((route, call)), Some(m)) => m
                .aggregate_calls
                .with_label_values(&[&**route, &**call, reason])
                .inc(),
            _ => {}
        }
    }
}

/// Counts bytes buffered whole for body plugins.
pub fn body_buffered(bytes: usize) {
    if let Some(m) = METRICS.as_ref() {
        m.body_buffered.inc_by(bytes as u64);
    }
}

/// Counts a span dropped by a full export queue.
pub fn spans_dropped() {
    if let Some(m) = METRICS.as_ref() {
        m.spans_dropped.inc();
    }
}

/// Counts spans lost to a failed export.
pub fn span_export_failed(n: usize) {
    if let Some(m) = METRICS.as_ref() {
        m.spans_dropped.inc_by(n as u64);
    }
}

/// Counts bytes stored in the cache.
pub fn cache_stored(bytes: usize) {
    if let Some(m) = METRICS.as_ref() {
        m.cache_stored_bytes.inc_by(bytes as u64);
    }
}

/// Sets the size of the cache's disk tier.
pub fn cache_disk_bytes(bytes: u64) {
    if let Some(m) = METRICS.as_ref() {
        m.cache_disk_bytes.set(bytes as i64);
    }
}

/// Cache results of one route.
#[derive(Clone, Default)]
pub struct CacheMetrics(Option<Vec<(&'static str, IntCounter)>>);

impl CacheMetrics {
    pub const RESULTS: [&'static str; 6] =
        ["HIT", "MISS", "STALE", "EXPIRED", "REVALIDATED", "BYPASS"];

    pub fn new(route: &str) -> CacheMetrics {
        CacheMetrics(METRICS.as_ref().map(|m| {
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
pub fn redis_state(up: bool, error: bool) {
    if let Some(m) = METRICS.as_ref() {
        m.redis_up.set(i64::from(up));
        if error {
            m.redis_errors.inc();
        }
    }
}

/// Whether this process records metrics: decided by the first configuration it loads
/// (`observability.metrics.enabled`), before any metric is touched.
static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Records metrics or not, for the life of the process; later calls (reloads) change nothing.
pub fn configure(enabled: bool) {
    let _ = ENABLED.set(enabled);
}

/// Whether metrics are recorded (the first configuration's choice).
pub fn enabled() -> bool {
    *ENABLED.get_or_init(|| true)
}

/// The process-wide families (Pingora's exporter serves the default registry); `None` when
/// metrics are switched off, so the request path records nothing.
pub static METRICS: LazyLock<Option<Families>> = LazyLock::new(|| {
    if !enabled() {
        return None;
    }
    match families() {
        Ok(f) => Some(f),
        Err(e) => {
            log::error!("metrics disabled: {e}");
            None
        }
    }
});

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

    pub fn new(route: &str) -> RouteMetrics {
        let Some(m) = METRICS.as_ref() else {
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
}

impl UpstreamMetrics {
    pub fn new(upstream: &str) -> UpstreamMetrics {
        let m = METRICS.as_ref();
        UpstreamMetrics {
            response: m.map(|m| m.upstream_duration.with_label_values(&[upstream])),
            retries: m.map(|m| m.retries.with_label_values(&[upstream])),
        }
    }
}

/// A circuit breaker's state gauge and transition counters.
pub struct BreakerMetrics(Option<(prometheus::IntGauge, IntCounterVec, String)>);

/// Live breakers per upstream label: a reload builds the new breaker before the old one is
/// dropped, so the gauge series goes only when the last breaker of that upstream does.
static LIVE_BREAKERS: LazyLock<parking_lot::Mutex<std::collections::HashMap<String, usize>>> =
    LazyLock::new(Default::default);

impl BreakerMetrics {
    pub fn new(upstream: &str) -> BreakerMetrics {
        BreakerMetrics(METRICS.as_ref().map(|m| {
            *LIVE_BREAKERS
                .lock()
                .entry(upstream.to_string())
                .or_default() += 1;
            (
                m.circuit_state.with_label_values(&[upstream]),
                m.circuit_transitions.clone(),
                upstream.to_string(),
            )
        }))
    }

    pub fn set_state(&self, state: i64) {
        if let Some((g, _, _)) = &self.0 {
            g.set(state);
        }
    }

    pub fn transition(&self, state: i64, name: &str) {
        if let Some((g, c, up)) = &self.0 {
            g.set(state);
            c.with_label_values(&[up.as_str(), name]).inc();
        }
    }
}

impl Drop for BreakerMetrics {
    /// An upstream whose breaker left the configuration stops reporting a state.
    fn drop(&mut self) {
        let (Some((_, _, up)), Some(m)) = (&self.0, METRICS.as_ref()) else {
            return;
        };
        let mut live = LIVE_BREAKERS.lock();
        let n = live.entry(up.clone()).or_insert(1);
        *n = n.saturating_sub(1);
        if *n == 0 {
            live.remove(up);
            let _ = m.circuit_state.remove_label_values(&[up.as_str()]);
        }
    }
}

/// Counts a retry decision (`retried`, `budget_exhausted`) of an upstream.
pub fn retry_result(upstream: &str, result: &str) {
    if let Some(m) = METRICS.as_ref() {
        m.retry_results.with_label_values(&[upstream, result]).inc();
    }
}

/// Counts a mirrored request copy by result.
pub fn mirror(route: &str, result: &str) {
    if let Some(m) = METRICS.as_ref() {
        m.mirrors.with_label_values(&[route, result]).inc();
    }
}

/// Counts a fault the `fault` plugin injected.
pub fn fault(route: &str, what: &str) {
    if let Some(m) = METRICS.as_ref() {
        m.faults.with_label_values(&[route, what]).inc();
    }
}

/// Counts a fallback answer of a route.
pub fn fallback(route: &str, reason: &str) {
    if let Some(m) = METRICS.as_ref() {
        m.fallbacks.with_label_values(&[route, reason]).inc();
    }
}

/// Counts a request by method and status class (handles bound once, on first use).
pub fn observe_method(method: &http::Method, status: u16) {
    static HANDLES: LazyLock<Option<Vec<IntCounter>>> = LazyLock::new(|| {
        let m = METRICS.as_ref()?;
        Some(
            METHODS
                .iter()
                .flat_map(|meth| CLASSES.map(|c| m.by_method.with_label_values(&[*meth, c])))
                .collect(),
        )
    });
    let Some(h) = HANDLES.as_ref() else { return };
    let mi = METHODS
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(METHODS.len() - 1);
    h[mi * CLASSES.len() + class_index(status)].inc();
}

/// The text exposition of every registered metric.
pub fn render() -> String {
    use prometheus::Encoder;
    let mut out = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
