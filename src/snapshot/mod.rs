//! The compiled, immutable runtime state. A [`Snapshot`] is built from a checked [`Config`] and
//! swapped atomically (`ArcSwap`); each request pins the snapshot it started with, so a reload
//! never changes a request half-way. Target health lives in a [`Registry`] outside snapshots.

pub mod composite;
mod route;

use route::compile_route;
pub use route::compile_template;

use crate::config::schema::{self, Config};
use crate::config::{self as cfg, ConfigError, Issue, Loaded};
use crate::error_pages::ErrorPages;
pub use crate::http::Limits;
use crate::observability::metrics::Metrics;
use crate::observability::metrics::RouteMetrics;
use crate::plugins::compression::CompressionPolicy;
use crate::plugins::{self, Built, Chain};
use crate::redis::Redis;
use crate::router::matcher::ValueMatch;
use crate::router::pattern::Pattern;
use crate::router::{check_host, Conditions, Router};
use crate::shared::Shared;
use crate::tls::SniResolver;
use crate::upstream::UpstreamGroup;
use http::{HeaderName, HeaderValue, Method};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One part of a rewrite template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    /// Index into the route's captured parameters.
    Param(usize),
    /// What a prefix route's `*` matched.
    Rest,
}

/// A compiled route.
/// What a route sends its requests to: exactly one per route.
pub enum Target {
    /// An upstream group (balancing, health, retries).
    Upstream(Arc<UpstreamGroup>),
    /// A composite endpoint: several calls to upstreams, merged.
    Aggregate(Arc<crate::snapshot::composite::Composite>),
}

pub struct Route {
    pub name: Arc<str>,
    pub target: Target,
    pub chain: Chain,
    pub param_names: Vec<Arc<str>>,
    pub strip_prefix: Option<String>,
    pub rewrite_path: Option<Vec<Part>>,
    pub host: Option<HeaderValue>,
    pub max_body: u64,
    pub metrics: RouteMetrics,
    /// HTTP cache policy (the route's `cache` plugin).
    pub cache: Option<Arc<crate::cache::CachePolicy>>,
    pub cache_metrics: crate::observability::metrics::CacheMetrics,
    /// Response compression (the route's `compression` plugin, else `server.compression`).
    pub compression: Option<Arc<CompressionPolicy>>,
    /// Error pages of this route's errors: its own `errors`, else `server.errors`.
    pub errors: Arc<ErrorPages>,
    /// Upstream statuses answered with the error page (`intercept_upstream`).
    pub intercept: Vec<u16>,
    /// Copies of the requests to a shadow upstream (`mirror`).
    pub mirror: Option<Arc<crate::upstream::mirror::Mirror>>,
    /// The route's weighted split between upstreams (`upstreams`).
    pub split: Option<Arc<crate::upstream::split::Split>>,
    /// The route's `failover` upstream.
    pub failover: Option<Arc<UpstreamGroup>>,
    /// Bound of all tries together (`deadline`).
    pub deadline: Option<Duration>,
    /// The static answer in place of an upstream failure (`fallback`).
    pub fallback: Option<Arc<crate::upstream::fallback::Fallback>>,
}

impl Route {
    /// The upstream group, for a route whose target is one.
    pub fn upstream(&self) -> Option<&Arc<UpstreamGroup>> {
        match &self.target {
            Target::Upstream(g) => Some(g),
            Target::Aggregate(_) => None,
        }
    }

    /// The composite, for a route whose target is `aggregate`.
    pub fn composite(&self) -> Option<&Arc<crate::snapshot::composite::Composite>> {
        match &self.target {
            Target::Aggregate(c) => Some(c),
            Target::Upstream(_) => None,
        }
    }

    /// A composite route whose answer is cached as a whole (answered through the internal
    /// socket, see `gateway::internal`).
    pub fn caches_composite(&self) -> bool {
        self.cache.is_some() && self.composite().is_some()
    }
}

pub struct Snapshot {
    /// The server's metrics (the request path records through these).
    pub metrics: Metrics,
    /// What outlives snapshots, the HTTP cache among it.
    pub shared: Arc<Shared>,
    pub router: Router<Arc<Route>>,
    /// Metrics of requests that matched no route.
    pub unrouted: RouteMetrics,
    pub upstreams: BTreeMap<String, Arc<UpstreamGroup>>,
    pub limits: Limits,
    /// Every route, for starting their plugins' background work.
    pub routes: Vec<Arc<Route>>,
    /// The Redis of cluster-wide rate limits, when configured.
    pub redis: Option<Arc<Redis>>,
    /// Some route's response is deferred or some route is a composite (both served through
    /// subrequests): only then may requests spawn subrequests (Pingora's spawner costs a reference count per request).
    pub defers: bool,
    /// Some composite route caches its answer: it needs the internal socket.
    pub caches_composites: bool,
    /// `server.errors`, compiled (for requests without a route).
    pub errors: Arc<ErrorPages>,
    pub config: Config,
}

impl Snapshot {
    /// The internal socket to open at start: `server.internal_sock` when set, else next to
    /// `upgrade_sock` when some composite route caches its answer.
    pub fn internal_socket(&self) -> Option<String> {
        let s = &self.config.server;
        match &s.internal_sock {
            Some(p) => Some(p.clone()),
            None if self.caches_composites => {
                let dir = std::path::Path::new(&s.upgrade_sock)
                    .parent()
                    .unwrap_or(std::path::Path::new("."));
                Some(dir.join("internal.sock").to_string_lossy().into_owned())
            }
            None => None,
        }
    }
}

/// What compiling a route needs besides the route itself.
struct RouteEnv<'a> {
    config: &'a Config,
    upstreams: &'a BTreeMap<String, Arc<UpstreamGroup>>,
    shared: &'a Arc<Shared>,
    consumers: &'a Arc<crate::auth::Consumers>,
    redis: Option<(&'a Arc<Redis>, schema::OnError)>,
    /// `server.compression`, compiled.
    compression: Option<Arc<CompressionPolicy>>,
    /// `server.errors`, compiled.
    errors: &'a Arc<ErrorPages>,
    metrics: &'a Metrics,
}

/// A listener ready to be bound.
pub struct ListenerPlan {
    pub name: String,
    pub addr: String,
    pub tls: Option<TlsPlan>,
    pub h2c: bool,
}

/// TLS of a listener: certificates by SNI, HTTP/2 by ALPN, client certificate verification.
pub struct TlsPlan {
    pub resolver: Arc<SniResolver>,
    pub http2: bool,
    pub client_verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

/// Loads, checks and compiles a file: what `postern check` and start-up run.
pub fn load_and_compile(
    path: &str,
    shared: &Arc<Shared>,
) -> Result<(Snapshot, Vec<ListenerPlan>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_string(),
        issues: vec![Issue::new("", format!("cannot read the file: {e}"))],
    })?;
    let mut partial = cfg::load_partial(&text, path)?;
    // Before anything binds metric handles: a process that starts with metrics off never
    // records them.
    shared.init_metrics(partial.loaded.config.observability.metrics.enabled);
    if partial.issues.is_empty() {
        return compile(partial.loaded, shared);
    }
    // The document has problems: compile what could be read anyway, so that one run lists
    // the problems compilation finds too (plugin settings, references), not only the first
    // round.
    let loaded = cfg::Loaded {
        config: partial.loaded.config.clone(),
        lines: partial.loaded.lines.clone(),
        file: partial.loaded.file.clone(),
    };
    if let Err(e) = compile(loaded, shared) {
        partial.add_later(e.issues);
    }
    Err(ConfigError {
        file: path.to_string(),
        issues: partial.issues,
    })
}

pub fn compile(
    loaded: Loaded,
    shared: &Arc<Shared>,
) -> Result<(Snapshot, Vec<ListenerPlan>), ConfigError> {
    let Loaded {
        config,
        lines,
        file,
    } = loaded;
    let mut issues = Vec::new();
    let metrics = shared.metrics();
    let listeners = compile_listeners(&config, &mut issues);
    let upstreams = compile_upstreams(&config, shared, &mut issues);
    let redis = compile_redis(&config, shared, &mut issues);
    check_server(&config.server, &mut issues);
    check_cache(&config.cache, &mut issues);
    check_observability(&config.observability, &mut issues);
    let server_compression = config.server.compression.as_ref().and_then(|c| {
        CompressionPolicy::compile(c, "server.compression")
            .map_err(|mut e| issues.append(&mut e))
            .ok()
            .map(Arc::new)
    });
    let consumers = Arc::new(crate::auth::Consumers::compile(
        &config.consumers,
        &mut issues,
    ));
    let trusted_proxies = compile_trusted_proxies(&config.server, &mut issues);
    let server_errors = Arc::new(
        ErrorPages::compile("server.errors", &config.server.errors)
            .map_err(|mut e| issues.append(&mut e))
            .unwrap_or_default(),
    );
    let mut router = Router::default();
    let mut routes = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        let env = RouteEnv {
            errors: &server_errors,
            consumers: &consumers,
            config: &config,
            upstreams: &upstreams,
            shared,
            redis: redis.as_ref().map(|(r, e)| (r, *e)),
            compression: server_compression.clone(),
            metrics,
        };
        if let Some(route) = compile_route(i, r, &env, &mut router, &mut issues) {
            routes.push(route);
        }
    }
    if !issues.is_empty() {
        return Err(ConfigError {
            file,
            issues: cfg::locate(issues, &lines),
        });
    }
    let limits = limits(&config, trusted_proxies);
    Ok((
        Snapshot {
            unrouted: RouteMetrics::new(metrics, "(none)"),
            metrics: metrics.clone(),
            shared: shared.clone(),
            router,
            redis: redis.map(|(r, _)| r),
            defers: routes
                .iter()
                .any(|r| r.chain.defers() || r.composite().is_some()),
            caches_composites: routes.iter().any(|r| r.caches_composite()),
            routes,
            upstreams,
            limits,
            errors: server_errors,
            config,
        },
        listeners,
    ))
}

fn compile_upstreams(
    config: &Config,
    shared: &Arc<Shared>,
    issues: &mut Vec<Issue>,
) -> BTreeMap<String, Arc<UpstreamGroup>> {
    let mut upstreams = BTreeMap::new();
    for (name, u) in &config.upstreams {
        match UpstreamGroup::new(name, u, shared.registry.clone(), shared.metrics()) {
            Ok(g) => {
                upstreams.insert(name.clone(), Arc::new(g));
            }
            Err(mut e) => issues.append(&mut e),
        }
    }
    upstreams
}

/// The cluster store (`cluster.redis`), taken from the shared state, and its failure policy.
fn compile_redis(
    config: &Config,
    shared: &Arc<Shared>,
    issues: &mut Vec<Issue>,
) -> Option<(Arc<Redis>, schema::OnError)> {
    let c = config.cluster.redis.as_ref()?;
    let redis = shared
        .redis(c)
        .map(|r| (r, c.on_error))
        .map_err(|e| {
            let at = match (&c.url, c.cluster_nodes.is_empty()) {
                (Some(_), true) => "cluster.redis.url",
                (None, false) => "cluster.redis.cluster_nodes",
                _ => "cluster.redis",
            };
            issues.push(Issue::new(at, e))
        })
        .ok();
    if c.timeout.0.is_zero() {
        issues.push(Issue::new("cluster.redis.timeout", "must be above 0"));
    }
    redis
}

fn check_server(s: &schema::Server, issues: &mut Vec<Issue>) {
    if s.watch_config
        .is_some_and(|d| d.0 < Duration::from_millis(100))
    {
        issues.push(Issue::new(
            "server.watch_config",
            "check the file at most every 100ms",
        ));
    }
}

fn check_cache(cache: &schema::CacheConfig, issues: &mut Vec<Issue>) {
    if cache.memory.0 < (1 << 20) {
        issues.push(Issue::new("cache.memory", "give at least 1MiB"));
    }
    if cache.max_object_size.0 > cache.memory.0 {
        issues.push(Issue::new(
            "cache.max_object_size",
            "larger than cache.memory: such an object could never be stored",
        ));
    }
    if let Some(d) = &cache.disk {
        if d.size.0 < cache.max_object_size.0 {
            issues.push(Issue::new(
                "cache.disk.size",
                "smaller than cache.max_object_size",
            ));
        }
        if d.path.is_empty() {
            issues.push(Issue::new("cache.disk.path", "give a directory"));
        }
    }
}

fn check_observability(o: &schema::Observability, issues: &mut Vec<Issue>) {
    if let Some(a) = &o.access_log {
        for (i, f) in a.fields.iter().enumerate() {
            if !schema::ACCESS_LOG_FIELDS.contains(&f.as_str()) {
                issues.push(Issue::new(
                    format!("observability.access_log.fields[{i}]"),
                    format!(
                        "unknown field \"{f}\"; known: {}",
                        schema::ACCESS_LOG_FIELDS.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(o) = &o.tracing.otlp {
        if !(0.0..=1.0).contains(&o.sample_ratio) {
            issues.push(Issue::new(
                "observability.tracing.otlp.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if !(o.endpoint.starts_with("http://") || o.endpoint.starts_with("https://")) {
            issues.push(Issue::new(
                "observability.tracing.otlp.endpoint",
                "expected an http:// or https:// URL (OTLP/HTTP, e.g. http://127.0.0.1:4318/v1/traces)",
            ));
        }
    }
}

fn compile_trusted_proxies(s: &schema::Server, issues: &mut Vec<Issue>) -> Vec<ipnet::IpNet> {
    s.trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            crate::plugins::ip_filter::parse_net(p)
                .map_err(|e| issues.push(Issue::new(format!("server.trusted_proxies[{i}]"), e)))
                .ok()
        })
        .collect()
}

/// The limits every downstream request is held to.
fn limits(config: &Config, trusted_proxies: Vec<ipnet::IpNet>) -> Limits {
    let s = &config.server;
    Limits {
        keepalive: s.keepalive_timeout.0,
        client_read: s.client_read_timeout.0,
        client_header: s.client_header_timeout.0,
        client_write: s.client_write_timeout.0,
        max_header_count: s.max_header_count,
        max_header_size: s.max_header_size.0 as usize,
        forwarded: s.forwarded_headers.clone(),
        request_id: s.request_id,
        trace: config.observability.tracing.propagate
            || config.observability.tracing.otlp.is_some(),
        preserve_header_case: s.preserve_header_case,
        trusted_proxies,
    }
}

fn compile_listeners(c: &Config, issues: &mut Vec<Issue>) -> Vec<ListenerPlan> {
    let mut out = Vec::new();
    for (i, l) in c.listeners.iter().enumerate() {
        let tls = match &l.tls {
            None => None,
            Some(t) => {
                use schema::ClientAuth;
                let client_verifier = match (t.client_auth, &t.client_ca) {
                    (ClientAuth::None, None) => None,
                    (ClientAuth::None, Some(_)) => {
                        issues.push(Issue::new(
                            format!("listeners[{i}].tls.client_ca"),
                            "client_ca needs `client_auth: optional` or `required`",
                        ));
                        None
                    }
                    (_, None) => {
                        issues.push(Issue::new(
                            format!("listeners[{i}].tls.client_auth"),
                            "client certificates need `client_ca` (the PEM bundle of their CAs)",
                        ));
                        None
                    }
                    (auth, Some(ca)) => {
                        crate::tls::client_verifier(ca, auth == ClientAuth::Required)
                            .map_err(|m| {
                                issues.push(Issue::new(format!("listeners[{i}].tls.client_ca"), m))
                            })
                            .ok()
                    }
                };
                match SniResolver::load(&t.certificates) {
                    Ok(r) => Some(TlsPlan {
                        resolver: Arc::new(r),
                        http2: t.http2,
                        client_verifier,
                    }),
                    Err((j, m)) => {
                        issues.push(Issue::new(
                            format!("listeners[{i}].tls.certificates[{j}]"),
                            m,
                        ));
                        None
                    }
                }
            }
        };
        out.push(ListenerPlan {
            name: l.name.clone().unwrap_or_else(|| l.addr.clone()),
            addr: l.addr.clone(),
            tls,
            h2c: l.h2c,
        });
    }
    out
}

/// Snapshots compiled from YAML text, for unit tests of what uses them.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The snapshot of a configuration; panics on an invalid one.
    pub fn snapshot(yaml: &str) -> Snapshot {
        let loaded = cfg::load_str(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
        compile(loaded, &Shared::new())
            .unwrap_or_else(|e| panic!("{e}"))
            .0
    }

    /// The route named `name` of a configuration.
    pub fn route(yaml: &str, name: &str) -> Arc<Route> {
        snapshot(yaml)
            .router
            .values()
            .find(|r| &*r.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no route {name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two servers in one process: each compiles against its own shared state and counts in
    /// its own registry.
    #[test]
    fn two_servers_in_one_process_count_apart() {
        let yaml = r#"
listeners: [{ addr: "127.0.0.1:0" }]
upstreams: { u: { targets: [{ addr: "127.0.0.1:1" }] } }
routes: [{ name: r, match: { path: /x }, upstream: u }]
"#;
        let server = || {
            let shared = Shared::new();
            shared.init_metrics(true);
            let loaded = cfg::load_str(yaml, "t.yaml").unwrap();
            compile(loaded, &shared).unwrap().0
        };
        let (a, b) = (server(), server());
        let route = a.router.values().next().unwrap().clone();
        route.metrics.observe(200, 0.01, 10, 20);
        route.metrics.observe(503, 0.01, 10, 20);
        let line = |s: &Snapshot, class: &str| {
            let text = crate::observability::metrics::render(&s.metrics);
            let key =
                format!("postern_http_requests_total{{route=\"r\",status_class=\"{class}\"}}");
            text.lines()
                .find(|l| l.starts_with(&key))
                .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
        };
        assert_eq!(line(&a, "2xx").as_deref(), Some("1"));
        assert_eq!(line(&a, "5xx").as_deref(), Some("1"));
        assert_eq!(
            line(&b, "2xx").as_deref(),
            Some("0"),
            "the other server counted nothing"
        );
        // Metrics off: nothing is bound, nothing is rendered of Postern's.
        let off = Shared::new();
        off.init_metrics(false);
        let s = compile(cfg::load_str(yaml, "t.yaml").unwrap(), &off)
            .unwrap()
            .0;
        assert!(s.metrics.is_none());
        assert!(!crate::observability::metrics::render(&s.metrics).contains("postern_"));
    }

    #[test]
    fn templates() {
        let names: Vec<Arc<str>> = vec!["id".into()];
        assert_eq!(
            compile_template("/v2/u/{id}/{*}", &names, true).unwrap(),
            vec![
                Part::Text("/v2/u/".into()),
                Part::Param(0),
                Part::Text("/".into()),
                Part::Rest
            ]
        );
        assert!(compile_template("/x/{nope}", &names, false)
            .unwrap_err()
            .contains("captures: id"));
        assert!(compile_template("/x/{*}", &names, false).is_err());
        assert!(compile_template("x", &names, false).is_err());
    }
}
