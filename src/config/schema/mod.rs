//! The YAML shape of Postern's configuration, as serde types. Every struct rejects unknown keys;
//! defaults live in `defaults.rs`. The request path never sees these types: `snapshot` compiles
//! them into runtime structures.

use super::defaults as d;
use super::types::{Dur, Size};
use crate::plugins::PluginSpec;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

mod aggregate;
pub mod cluster;
pub mod consumer;
mod upstream;
pub use aggregate::{Aggregate, Call, Fallback};
pub use cluster::{OnError, RedisConfig};
pub use consumer::*;
pub use upstream::*;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version of this file; only `1` exists.
    #[serde(default = "d::version")]
    pub version: u32,
    #[serde(default)]
    pub server: Server,
    pub listeners: Vec<Listener>,
    /// The admin listener (status and upstream health); never on a public address by default.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// Access log and metrics.
    #[serde(default)]
    pub observability: Observability,
    /// Known callers; authentication plugins resolve requests to them.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// The HTTP cache shared by routes with the `cache` plugin.
    #[serde(default)]
    pub cache: CacheConfig,
    /// State shared between Postern nodes (cluster-wide rate limits).
    #[serde(default)]
    pub cluster: Cluster,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Upstream>,
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// The HTTP cache storage (created at start; a size change needs a restart or upgrade).
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Memory for cached responses (headers and bodies).
    #[serde(default = "d::cache_memory")]
    pub memory: Size,
    /// Largest response stored.
    #[serde(default = "d::cache_max_object")]
    pub max_object_size: Size,
    /// How long requests for a key being fetched wait for that fetch (coalescing).
    #[serde(default = "d::cache_lock_timeout")]
    pub lock_timeout: Dur,
    /// A second tier on disk; entries survive restarts.
    #[serde(default)]
    pub disk: Option<CacheDisk>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CacheDisk {
    /// Directory of the entries (created if missing; one file per entry).
    pub path: String,
    /// Bytes on disk, oldest entries removed first.
    pub size: Size,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory: d::cache_memory(),
            max_object_size: d::cache_max_object(),
            lock_timeout: d::cache_lock_timeout(),
            disk: None,
        }
    }
}

/// What several Postern nodes share.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// The Redis (standalone or Redis Cluster) holding cluster-wide rate-limit state.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
}

/// Process-wide settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Worker threads per listener service.
    #[serde(default = "d::threads")]
    pub threads: usize,
    /// How long an old process keeps serving in-flight requests on shutdown or upgrade.
    #[serde(default = "d::grace_period")]
    pub grace_period: Dur,
    /// Extra time given to runtimes to stop after the grace period.
    #[serde(default = "d::graceful_shutdown_timeout")]
    pub graceful_shutdown_timeout: Dur,
    /// PID file written in daemon mode (`-d`).
    #[serde(default = "d::pid_file")]
    pub pid_file: String,
    /// Unix socket over which listening sockets are handed to a new process (`-u`).
    #[serde(default = "d::upgrade_sock")]
    pub upgrade_sock: String,
    /// Unix socket on which the gateway answers its own requests for the composites of routes
    /// that cache them (a composite's answer is stored when it comes from an upstream). Opened
    /// at start when a composite route lists `cache`, or when this is set; default:
    /// `internal.sock` in the directory of `upgrade_sock`. Mode 0600.
    #[serde(default)]
    pub internal_sock: Option<String>,
    /// File that receives the error log in daemon mode; stderr otherwise.
    #[serde(default)]
    pub error_log: Option<String>,
    /// Largest request body accepted (413 above it); routes may override.
    #[serde(default = "d::max_request_body")]
    pub max_request_body: Size,
    /// Idle time allowed between requests on a client keep-alive connection.
    #[serde(default = "d::keepalive_timeout")]
    pub keepalive_timeout: Dur,
    /// Time allowed for each read of a request body from a client (a stalled upload is cut).
    /// A whole request head is bounded by `client_header_timeout`.
    #[serde(default = "d::client_read_timeout")]
    pub client_read_timeout: Dur,
    /// Time allowed for a whole request head, from the connection (or, on a kept-alive one,
    /// from the head's first byte) to its end; past it the answer is 408 and the connection
    /// closes (slowloris protection, HAProxy's `timeout http-request`).
    #[serde(default = "d::client_header_timeout")]
    pub client_header_timeout: Dur,
    /// Time allowed for each write to a client.
    #[serde(default = "d::client_write_timeout")]
    pub client_write_timeout: Dur,
    /// Maximum number of request header fields (431 above it).
    #[serde(default = "d::max_header_count")]
    pub max_header_count: usize,
    /// Maximum total size of request header names and values (431 above it).
    #[serde(default = "d::max_header_size")]
    pub max_header_size: Size,
    /// Idle upstream connections kept per listener service.
    #[serde(default = "d::upstream_pool_size")]
    pub upstream_pool_size: usize,
    /// Which forwarding headers are added to proxied requests.
    #[serde(default)]
    pub forwarded_headers: ForwardedHeaders,
    /// Keep or generate an `X-Request-Id` and return it on the response.
    #[serde(default = "d::yes")]
    pub request_id: bool,
    /// Forward HTTP/1 header names with the client's (and upstream's) spelling instead of in
    /// lower case; costs throughput (Pingora keeps a second header map for it).
    #[serde(default)]
    pub preserve_header_case: bool,
    /// Check the configuration file this often and reload it when its content changed (off when
    /// absent; SIGHUP and `POST /reload` always work).
    #[serde(default)]
    pub watch_config: Option<Dur>,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed when finding the
    /// client address (used by `client_ip` keys, `ip_filter` and the access log).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Response compression for every route (a route's `compression` plugin replaces it there;
    /// `compression: { enabled: false }` on a route turns it off). Off when absent.
    #[serde(default)]
    pub compression: Option<crate::plugins::compression::Config>,
    /// Error pages replacing the problem+json body of the errors Postern generates, by status
    /// (a route's `errors` replace these for that route).
    #[serde(default)]
    pub errors: Vec<ErrorPageConfig>,
    /// The process log (standard error): its format and level. `RUST_LOG`, when set, overrides
    /// the level with env_logger's syntax. Read at start (a reload does not change it).
    #[serde(default)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// error, warn, info, debug or trace. Pingora's own messages are shown from `warn` up
    /// unless the level is debug or trace.
    #[serde(default)]
    pub level: LogLevel,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `[time LEVEL target] message`, one line each.
    #[default]
    Text,
    /// One JSON object per line: time, level, target, message.
    Json,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

/// Forwarding headers added to proxied requests (each costs a header insertion per request).
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardedHeaders {
    /// Append the client address to `X-Forwarded-For`.
    #[serde(default = "d::yes")]
    pub x_forwarded_for: bool,
    /// Set `X-Forwarded-Proto` to http or https.
    #[serde(default = "d::yes")]
    pub x_forwarded_proto: bool,
    /// Set `X-Forwarded-Host` to the Host the client asked for.
    #[serde(default = "d::yes")]
    pub x_forwarded_host: bool,
    /// Append `for=...;proto=...;host=...` to the RFC 7239 `Forwarded` header.
    #[serde(default = "d::yes")]
    pub forwarded: bool,
}

impl Default for ForwardedHeaders {
    fn default() -> Self {
        ForwardedHeaders {
            x_forwarded_for: true,
            x_forwarded_proto: true,
            x_forwarded_host: true,
            forwarded: true,
        }
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            threads: d::threads(),
            grace_period: d::grace_period(),
            graceful_shutdown_timeout: d::graceful_shutdown_timeout(),
            pid_file: d::pid_file(),
            upgrade_sock: d::upgrade_sock(),
            internal_sock: None,
            error_log: None,
            max_request_body: d::max_request_body(),
            keepalive_timeout: d::keepalive_timeout(),
            client_read_timeout: d::client_read_timeout(),
            client_header_timeout: d::client_header_timeout(),
            client_write_timeout: d::client_write_timeout(),
            max_header_count: d::max_header_count(),
            max_header_size: d::max_header_size(),
            upstream_pool_size: d::upstream_pool_size(),
            forwarded_headers: ForwardedHeaders::default(),
            request_id: true,
            preserve_header_case: false,
            trusted_proxies: Vec::new(),
            watch_config: None,
            compression: None,
            errors: Vec::new(),
            log: LogConfig::default(),
        }
    }
}

/// One listening address.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Name used in logs; defaults to the address.
    #[serde(default)]
    pub name: Option<String>,
    /// `ip:port` to bind.
    pub addr: String,
    /// Serve TLS on this address.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Accept cleartext HTTP/2 (prior knowledge) next to HTTP/1.1 on a plain listener.
    #[serde(default)]
    pub h2c: bool,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificates; the one whose names match the client's SNI is served, the first otherwise.
    pub certificates: Vec<CertKey>,
    /// Offer HTTP/2 by ALPN.
    #[serde(default = "d::yes")]
    pub http2: bool,
    /// Client certificates (mutual TLS): `none`, `optional` (verified when presented) or
    /// `required` (the handshake fails without a valid one).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// PEM bundle of the CAs that issue client certificates.
    #[serde(default)]
    pub client_ca: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    None,
    Optional,
    Required,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertKey {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Server names served with this certificate; read from the certificate's SANs when absent.
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin listener, loopback by default.
    #[serde(default = "d::admin_addr")]
    pub addr: String,
    /// Bearer token required by write endpoints (empty: writes disabled).
    #[serde(default)]
    pub token: String,
}

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

/// A route: what to match and where to send it.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Unique name (logs, metrics); `route-N` when absent.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matcher: Match,
    /// Name of the upstream that serves this route (or `aggregate`).
    #[serde(default)]
    pub upstream: Option<String>,
    /// A composite endpoint answered from several upstream calls (instead of `upstream`).
    #[serde(default)]
    pub aggregate: Option<Aggregate>,
    /// A weighted split between upstreams (instead of `upstream`), for canary releases.
    #[serde(default)]
    pub upstreams: Vec<SplitTarget>,
    /// Send a copy of the requests to a shadow upstream (fire and forget).
    #[serde(default)]
    pub mirror: Option<MirrorConfig>,
    /// Keep a client on the upstream it was given by the split: `header:NAME` (a stable hash
    /// of the value) or `cookie:NAME` (a cookie set on the first answer).
    #[serde(default)]
    pub sticky: Option<String>,
    #[serde(default)]
    pub rewrite: Rewrite,
    /// Overrides `server.max_request_body` for this route.
    #[serde(default)]
    pub max_request_body: Option<Size>,
    /// Plugins; the request side runs top to bottom, the response side bottom to top.
    #[serde(default)]
    pub plugins: Vec<PluginSpec>,
    /// Error pages for the errors of this route (instead of `server.errors`).
    #[serde(default)]
    pub errors: Vec<ErrorPageConfig>,
    /// Upstream answers with these statuses get the route's (or the server's) error page as
    /// body, keeping their status (NGINX `proxy_intercept_errors`). 4xx only when listed.
    #[serde(default)]
    pub intercept_upstream: Vec<u16>,
    /// A second upstream for this route, used when `upstream` cannot take the request: every
    /// target unhealthy, its circuit breaker open, or the connection failed after its retries.
    #[serde(default)]
    pub failover: Option<String>,
    /// Bound of all tries of a request together (connections, retries and their pauses, the
    /// wait for each answer header); 504 after it. Without it each try has the upstream's
    /// timeouts.
    #[serde(default)]
    pub deadline: Option<Dur>,
    /// A static answer in place of an error when the upstream cannot answer (marked with
    /// `Postern-Fallback: ?1`).
    #[serde(default)]
    pub fallback: Option<RouteFallback>,
}

/// Traffic mirroring of a route.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    /// The shadow upstream (its balancing, health and timeouts apply).
    pub upstream: String,
    /// Share of requests copied, in (0, 100].
    #[serde(default = "d::mirror_percent")]
    pub percent: f64,
    /// Requests with a larger body are not copied.
    #[serde(default = "d::mirror_max_body")]
    pub max_body: Size,
    /// Copies running at once; above it, copies are dropped (and counted).
    #[serde(default = "d::mirror_in_flight")]
    pub max_in_flight: usize,
}

/// One upstream of a route's traffic split.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    pub name: String,
    /// Share of requests, relative to the other entries' weights.
    pub weight: u32,
}

/// An error page: the body of the errors with these statuses.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorPageConfig {
    /// Statuses (404) and classes (`4xx`, `5xx`) this page answers.
    pub status: Vec<StatusSelector>,
    /// The page's `Content-Type`; JSON types escape values as JSON, HTML and XML as markup.
    #[serde(default = "d::error_page_type")]
    pub content_type: String,
    /// The template, inline: `${status}`, `${title}`, `${detail}`, `${request_id}`, `${route}`.
    #[serde(default)]
    pub body: Option<String>,
    /// The template, read from this file when the configuration is loaded.
    #[serde(default)]
    pub body_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusSelector {
    Code(u16),
    Class(String),
}

/// A route's static fallback answer.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFallback {
    /// When to answer with it: circuit_open, no_healthy_target, connect_error, timeout,
    /// upstream_error (reset or malformed answer), 5xx (the upstream answered 5xx), or statuses.
    #[serde(default = "fallback_on")]
    pub on: Vec<FallbackOn>,
    #[serde(default = "d::fallback_status")]
    pub status: u16,
    /// Response header fields; `content-type` defaults to JSON when the body is JSON, else
    /// text/plain.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body, inline.
    #[serde(default)]
    pub body: Option<String>,
    /// The body, read from this file when the configuration is loaded.
    #[serde(default)]
    pub body_file: Option<String>,
}

fn fallback_on() -> Vec<FallbackOn> {
    use FallbackKind::*;
    [CircuitOpen, NoHealthyTarget, ConnectError, Timeout]
        .map(FallbackOn::Kind)
        .to_vec()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(untagged)]
pub enum FallbackOn {
    Status(u16),
    Kind(FallbackKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
pub enum FallbackKind {
    #[serde(rename = "circuit_open")]
    CircuitOpen,
    #[serde(rename = "no_healthy_target")]
    NoHealthyTarget,
    #[serde(rename = "connect_error")]
    ConnectError,
    #[serde(rename = "timeout")]
    Timeout,
    #[serde(rename = "upstream_error")]
    UpstreamError,
    #[serde(rename = "5xx")]
    ServerError,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Host names: exact (`api.example.com`) or suffix wildcards (`*.example.com`).
    #[serde(default)]
    pub host: OneOrMany,
    /// Path pattern: `/exact`, `/prefix/*`, `/users/{id}`; `/*` when absent.
    #[serde(default)]
    pub path: Option<String>,
    /// Allowed methods; all when empty.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header values that must match: exact, `*` (present) or `~regex`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameter values that must match: exact, `*` (present) or `~regex`.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
}

/// A single string or a list of strings.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Removed from the start of the path before forwarding.
    #[serde(default)]
    pub strip_prefix: Option<String>,
    /// New path, with `{param}` captures and `{*}` for the rest of a prefix match; query kept.
    #[serde(default)]
    pub path: Option<String>,
    /// Host header sent upstream; the client's Host is kept when absent.
    #[serde(default)]
    pub host: Option<String>,
}
