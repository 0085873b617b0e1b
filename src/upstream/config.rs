//! The `upstreams` section: targets, balancing, health checks, timeouts, retries and TLS to
//! the upstream.

use crate::common::defaults as d;
use crate::common::types::{Dur, Size};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A named pool of targets.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub targets: Vec<Target>,
    #[serde(default)]
    pub balance: Balance,
    /// Key for `consistent_hash`: client_ip | header:NAME | cookie:NAME | query:NAME | path.
    #[serde(default)]
    pub hash_key: Option<String>,
    /// How to pick a target when the hash key is absent from a request: `round_robin` or `random`.
    #[serde(default)]
    pub hash_fallback: HashFallback,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub retry: Retry,
    /// Stop sending requests to this upstream while it keeps failing (see `circuit_breaker`).
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Connect to targets over TLS.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// HTTP version spoken to targets: http1, http2 (h2c on cleartext, ALPN h2 over TLS) or auto
    /// (ALPN h2 with http/1.1 fallback over TLS; http1 on cleartext).
    #[serde(default)]
    pub protocol: Protocol,
    /// How often host-name targets are resolved again.
    #[serde(default = "d::resolve_interval")]
    pub resolve_interval: Dur,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `ip:port` or `host:port` (host names are resolved in the background).
    pub addr: String,
    #[serde(default = "d::weight")]
    pub weight: u32,
    /// Gets traffic only while no primary (non-backup) target is healthy (NGINX `backup`).
    #[serde(default)]
    pub backup: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    Random,
    LeastConn,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HashFallback {
    #[default]
    RoundRobin,
    Random,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Auto,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(default)]
    pub active: Option<ActiveHealth>,
    #[serde(default)]
    pub passive: Option<PassiveHealth>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveHealth {
    #[serde(default, rename = "type")]
    pub kind: CheckKind,
    /// Path requested by `http` checks.
    #[serde(default = "d::health_path")]
    pub path: String,
    /// Host header sent by `http` checks; the target address when absent.
    #[serde(default)]
    pub host: Option<String>,
    /// Statuses that count as healthy for `http` checks.
    #[serde(default = "d::expected_statuses")]
    pub expected_statuses: Vec<u16>,
    #[serde(default = "d::health_interval")]
    pub interval: Dur,
    #[serde(default = "d::health_timeout")]
    pub timeout: Dur,
    #[serde(default = "d::healthy_after")]
    pub healthy_after: u32,
    #[serde(default = "d::unhealthy_after")]
    pub unhealthy_after: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    #[default]
    Http,
    Tcp,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    /// Consecutive proxy failures (connect errors, timeouts, 5xx listed in `statuses`) that eject a target.
    #[serde(default = "d::passive_unhealthy_after")]
    pub unhealthy_after: u32,
    /// How long an ejected target gets no traffic.
    #[serde(default = "d::eject_for")]
    pub eject_for: Dur,
    /// Upstream statuses counted as failures.
    #[serde(default = "d::passive_statuses")]
    pub statuses: Vec<u16>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(default = "d::connect_timeout")]
    pub connect: Dur,
    #[serde(default = "d::read_timeout")]
    pub read: Dur,
    #[serde(default = "d::write_timeout")]
    pub write: Dur,
    /// How long an idle pooled connection to a target is kept.
    #[serde(default = "d::idle_timeout")]
    pub idle: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: d::connect_timeout(),
            read: d::read_timeout(),
            write: d::write_timeout(),
            idle: d::idle_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Total tries per request, the first included (1 = no retry).
    #[serde(default = "d::retry_attempts")]
    pub attempts: u32,
    /// Which failures are retried on another target: connect_error, timeout, reset, or a status (502).
    #[serde(default = "retry_on")]
    pub on: Vec<RetryOn>,
    /// Pause before each retry: a fixed duration (`25ms`) or exponential with full jitter
    /// (`{ base: 25ms, max: 1s }`: a random pause up to base x 2^(retry-1), at most max).
    #[serde(default)]
    pub backoff: Backoff,
    /// Bound of each try's connection and of each of its reads (at most `timeouts.read`).
    #[serde(default)]
    pub per_try_timeout: Option<Dur>,
    /// Requests carrying an `Idempotency-Key` field may be retried after they were sent (or
    /// on a status) like idempotent methods.
    #[serde(default)]
    pub idempotency_key: bool,
    /// Retries may add at most this share of the recent requests (Envoy/Linkerd-style budget).
    #[serde(default)]
    pub budget: RetryBudget,
    /// A request whose body (declared, or read so far) is larger than this is not sent again
    /// once it went out (connect errors, where nothing was sent, are still retried). At most
    /// 64 KiB: the body is replayed from Pingora's retry buffer, which holds that much.
    #[serde(default = "d::retry_max_body")]
    pub max_body: Size,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: d::retry_attempts(),
            on: retry_on(),
            backoff: Backoff::default(),
            per_try_timeout: None,
            idempotency_key: false,
            budget: RetryBudget::default(),
            max_body: d::retry_max_body(),
        }
    }
}

/// The pause before a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Backoff {
    /// The same pause before every retry.
    Fixed(Dur),
    /// Full jitter: a random pause in [0, min(max, base x 2^(retry-1))].
    Exponential { base: Dur, max: Dur },
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Fixed(d::retry_backoff())
    }
}

/// Retries allowed within `window`: `ratio` x the requests of the window, plus
/// `min_per_second` x the window's seconds. Above it, failed tries are not retried.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default = "d::budget_ratio")]
    pub ratio: f64,
    #[serde(default = "d::budget_window")]
    pub window: Dur,
    #[serde(default = "d::budget_min")]
    pub min_per_second: f64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: d::budget_ratio(),
            window: d::budget_window(),
            min_per_second: d::budget_min(),
        }
    }
}

fn retry_on() -> Vec<RetryOn> {
    vec![RetryOn::Kind(RetryKind::ConnectError)]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", untagged)]
pub enum RetryOn {
    Status(u16),
    Kind(RetryKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryKind {
    ConnectError,
    Timeout,
    Reset,
}

/// A circuit breaker for the whole upstream, local to this node. It opens when, within `window`,
/// at least `min_requests` finished and `failure_ratio` of them failed, or after
/// `consecutive_failures` failures in a row, or when `slow_call.ratio` of them took longer than
/// `slow_call.threshold`. While open, requests fail fast (503 with `Retry-After`, or the route's
/// `fallback`) without a connection attempt. After `open_for` it lets `half_open_requests` trial
/// requests through: all succeed, it closes; one fails, it opens again for twice as long (up to
/// `max_open_for`).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Share of failed requests in the window that opens the breaker, in (0, 1].
    #[serde(default = "d::cb_failure_ratio")]
    pub failure_ratio: f64,
    /// Requests the window must hold before the ratios apply.
    #[serde(default = "d::cb_min_requests")]
    pub min_requests: u32,
    /// The sliding window the ratios are computed over.
    #[serde(default = "d::cb_window")]
    pub window: Dur,
    /// Failures in a row that open the breaker whatever the ratio (0 = this rule is off).
    #[serde(default = "d::cb_consecutive")]
    pub consecutive_failures: u32,
    /// Slow answers count towards a second ratio.
    #[serde(default)]
    pub slow_call: Option<SlowCall>,
    /// How long the breaker stays open the first time.
    #[serde(default = "d::cb_open_for")]
    pub open_for: Dur,
    /// Upper bound of the doubled open time after failed trials.
    #[serde(default = "d::cb_max_open_for")]
    pub max_open_for: Dur,
    /// Trial requests let through when half-open; all must succeed to close.
    #[serde(default = "d::cb_half_open")]
    pub half_open_requests: u32,
    /// What counts as a failure: connect_error, timeout, reset, 5xx, or statuses (503).
    #[serde(default = "cb_on")]
    pub on: Vec<FailureOn>,
}

fn cb_on() -> Vec<FailureOn> {
    vec![
        FailureOn::Kind(FailureKind::ConnectError),
        FailureOn::Kind(FailureKind::Timeout),
        FailureOn::Kind(FailureKind::Reset),
        FailureOn::Kind(FailureKind::ServerError),
    ]
}

#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlowCall {
    /// An answer whose header took longer than this is slow.
    pub threshold: Dur,
    /// Share of slow answers in the window that opens the breaker, in (0, 1].
    pub ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(untagged)]
pub enum FailureOn {
    Status(u16),
    Kind(FailureKind),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
pub enum FailureKind {
    #[serde(rename = "connect_error")]
    ConnectError,
    #[serde(rename = "timeout")]
    Timeout,
    #[serde(rename = "reset")]
    Reset,
    /// Any 5xx answer.
    #[serde(rename = "5xx")]
    ServerError,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Server name sent by SNI and verified; the target host when absent.
    #[serde(default)]
    pub sni: Option<String>,
    /// PEM bundle of CAs trusted for targets; the system roots when absent.
    #[serde(default)]
    pub ca: Option<String>,
    /// Verify the target's certificate and name.
    #[serde(default = "d::yes")]
    pub verify: bool,
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
