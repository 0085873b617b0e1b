//! The YAML shape of Postern's configuration, as serde types. Every struct rejects unknown keys;
//! defaults live in `defaults.rs`. The request path never sees these types: `snapshot` compiles
//! them into runtime structures.

use crate::common::defaults as d;
use crate::common::types::{Dur, Size};
use crate::plugins::PluginSpec;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

pub use crate::aggregate::config::{Aggregate, Call, Fallback};
pub use crate::auth::config::*;
pub use crate::common::types::OnError;
pub use crate::error_pages::{ErrorPageConfig, StatusSelector};
pub use crate::http::ForwardedHeaders;
pub use crate::observability::config::*;
pub use crate::redis::config::RedisConfig;
pub use crate::tls::{CertKey, ClientAuth, ListenerTls};
pub use crate::upstream::config::*;

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
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
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

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address of the admin listener, loopback by default.
    #[serde(default = "d::admin_addr")]
    pub addr: String,
    /// Bearer token required by write endpoints (empty: writes disabled).
    #[serde(default)]
    pub token: String,
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
