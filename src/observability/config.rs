//! The `observability` section: access log, metrics and tracing.

use crate::common::defaults as d;
use crate::common::types::Dur;
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Observability {
    /// One JSON line per request; off when absent.
    #[serde(default)]
    pub access_log: Option<AccessLogConfig>,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub tracing: TracingConfig,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Continue or start a W3C trace and send `traceparent` (a new span id per upstream call).
    #[serde(default)]
    pub propagate: bool,
    /// Export spans over OTLP/HTTP (implies `propagate`).
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// Share of the traces started here that are recorded (0.0 to 1.0); a caller's sampled
    /// flag is always followed.
    #[serde(default = "d::sample_ratio")]
    pub sample_ratio: f64,
    /// Limit on one export request.
    #[serde(default = "d::otlp_timeout")]
    pub timeout: Dur,
    #[serde(default = "d::service_name")]
    pub service_name: String,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout` or a file path (appended; reopened on SIGUSR1).
    #[serde(default = "d::access_log_path")]
    pub path: String,
    /// Query parameters whose values are written as REDACTED.
    #[serde(default = "d::redact_query")]
    pub redact_query: Vec<String>,
    /// Fields written, in this order (all when empty); see `ACCESS_LOG_FIELDS`.
    #[serde(default)]
    pub fields: Vec<String>,
}

/// Every access-log field, in the default order.
pub const ACCESS_LOG_FIELDS: &[&str] = &[
    "time",
    "request_id",
    "trace_id",
    "client",
    "consumer",
    "method",
    "host",
    "path",
    "protocol",
    "route",
    "upstream",
    "target",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "upstream_ms",
    "tries",
    "cache",
    "auth_failure",
    "transform",
    "error",
];

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Record metrics and serve them at `GET /metrics` (Prometheus text format) on the admin
    /// listener. `false` records nothing on the request path. Read at start only.
    #[serde(default = "d::yes")]
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}
