//! Builds and runs the Pingora server: one proxy service per listener, the admin service and the
//! supervisor (health checks, DNS). Nothing here runs per request.

use crate::admin::Admin;
use crate::gateway::Gateway;
use crate::http::head_deadline::WithHeadDeadline;
use crate::observability::access_log::{self, AccessLog, Writer};
use crate::reload::Reloader;
use crate::snapshot::{self, ListenerPlan, Snapshot};
use crate::upstream::health;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{ExecutionPhase, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use std::sync::Arc;
use std::time::Instant;

/// Flags of `postern run`, with Pingora's meanings.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    pub daemon: bool,
    pub upgrade: bool,
    pub test: bool,
}

/// Loads the config, builds every service and runs until shutdown (signals: see `lifecycle`).
/// Returns an error message when the configuration is invalid (nothing is started then).
pub fn run(conf_path: &str, flags: RunFlags) -> Result<(), String> {
    run_with(conf_path, flags, None)
}

/// [`run`] stopped by `shutdown` instead of the process's signals: several servers can run in
/// one process (each owns its state), which the in-process tests do. Returns once it stopped.
pub fn run_with(
    conf_path: &str,
    flags: RunFlags,
    shutdown: Option<Box<dyn pingora::server::ShutdownSignalWatch>>,
) -> Result<(), String> {
    let shared = crate::shared::Shared::new();
    let (snap, listeners) =
        snapshot::load_and_compile(conf_path, &shared).map_err(|e| e.to_string())?;
    for g in snap.upstreams.values() {
        for name in g.resolve_blocking() {
            log::warn!(
                "upstream {}: {name} does not resolve yet; retrying every {:?}",
                g.name,
                g.resolve_interval
            );
        }
    }
    let c = &snap.config.cache;
    shared.init_cache(|| {
        crate::cache::HttpCache::new(
            c.memory.0 as usize,
            c.max_object_size.0 as usize,
            c.lock_timeout.0,
            c.disk
                .as_ref()
                .map(|d| (std::path::Path::new(&d.path), d.size.0)),
            shared.metrics(),
        )
    });
    let server_conf = server_conf(&snap, flags.daemon);
    let admin = snap.config.admin.clone();
    let metrics = shared.metrics().clone();
    let metrics_enabled = metrics.is_some();
    let (spans, span_sender) = match &snap.config.observability.tracing.otlp {
        Some(o) => {
            let (e, s) = crate::observability::otlp::channel(
                &o.endpoint,
                o.sample_ratio,
                o.timeout.0,
                &o.service_name,
                &metrics,
            )?;
            (Some(e), Some(Arc::new(s)))
        }
        None => (None, None),
    };
    let (access_log, log_writer) = match &snap.config.observability.access_log {
        Some(cfg) => {
            let (log, writer) = access_log::channel(cfg, &metrics);
            (Some(log), Some(writer))
        }
        None => (None, None),
    };
    let snapshot = Arc::new(ArcSwap::from_pointee(snap));
    // What every listener's gateway shares: drain state, requests in flight, handoffs.
    let state = crate::gateway::state::ServerState::new(&metrics);
    let reloader = Arc::new(Reloader::new(
        conf_path,
        snapshot.clone(),
        shared,
        state.clone(),
    ));
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        nocapture: false,
        test: flags.test,
        conf: None,
    };
    // With -u the listening sockets of the process being replaced are handed over: those
    // addresses are busy by design; any other one must be free.
    let inherited = if flags.upgrade {
        crate::lifecycle::listening_addresses_of(&server_conf.pid_file)
    } else {
        Vec::new()
    };
    let addresses: Vec<(String, String)> = listeners
        .iter()
        .map(|l| (format!("listener {}", l.name), l.addr.clone()))
        .chain(
            admin
                .iter()
                .map(|a| ("the admin listener".into(), a.addr.clone())),
        )
        .collect();
    // Without the old process's addresses (no pid file, no /proc) an upgrade is not checked.
    if !flags.upgrade || !inherited.is_empty() {
        crate::lifecycle::check_addresses(&addresses, &inherited)?;
    }
    let upgrade_sock = server_conf.upgrade_sock.clone();
    let pid_file = (!flags.daemon).then(|| server_conf.pid_file.clone());
    let probes = probe_addresses(&listeners);
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    // Pingora writes the pid file only when it daemonizes; a foreground process writes it too,
    // so that `postern run -u` can find the sockets it will inherit.
    if let Some(f) = pid_file {
        if let Err(e) = std::fs::write(&f, format!("{}\n", std::process::id())) {
            log::warn!("cannot write the pid file {f}: {e}");
        }
    }
    let mut internal = internal_socket(&snapshot.load())?;
    for l in listeners {
        let uds = internal.take();
        add_listener(
            &mut server,
            l,
            &snapshot,
            &state,
            access_log.clone(),
            spans.clone(),
            uds,
        )?;
    }
    if let Some(a) = admin {
        let mut svc = Service::new(
            "admin".to_string(),
            Admin {
                snapshot: snapshot.clone(),
                reloader: reloader.clone(),
                token: a.token.clone(),
                metrics: metrics_enabled,
                started: Instant::now(),
                listeners: probes,
            },
        );
        svc.add_tcp(&a.addr);
        svc.threads = Some(1);
        server.add_service(svc);
    }
    server.add_service(background_service(
        "supervisor",
        Supervisor {
            reloader: reloader.clone(),
        },
    ));
    server.add_service(background_service(
        "config watch",
        ConfigWatch {
            reloader: reloader.clone(),
        },
    ));
    server.add_service(background_service("sighup", SighupReload { reloader }));
    let phases = server.watch_execution_phase();
    server.add_service(background_service(
        "drain",
        DrainWatch {
            state,
            phases: parking_lot::Mutex::new(Some(phases)),
            access_log: access_log.clone(),
        },
    ));
    if let Some(s) = span_sender {
        server.add_service(background_service("span export", SpanExport(s)));
    }
    if let Some(w) = log_writer {
        server.add_service(background_service("access log", LogWriter(Arc::new(w))));
    }
    server.run(pingora::server::RunArgs {
        shutdown_signal: shutdown
            .unwrap_or_else(|| Box::new(crate::lifecycle::Signals { upgrade_sock })),
    });
    Ok(())
}

/// Where the admin `/ready` check connects to see each listener serving: its address, with an
/// unspecified IP (`0.0.0.0`, `::`) replaced by loopback.
fn probe_addresses(listeners: &[ListenerPlan]) -> Vec<(String, std::net::SocketAddr)> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs};
    listeners
        .iter()
        .filter_map(|l| {
            let mut sa = l.addr.to_socket_addrs().ok()?.next()?;
            if sa.ip().is_unspecified() {
                sa.set_ip(match sa.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                });
            }
            Some((l.name.clone(), sa))
        })
        .collect()
}

fn server_conf(snap: &Snapshot, daemon: bool) -> ServerConf {
    let s = &snap.config.server;
    ServerConf {
        daemon,
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.0.as_secs()),
        pid_file: s.pid_file.clone(),
        upgrade_sock: s.upgrade_sock.clone(),
        error_log: s.error_log.clone(),
        upstream_keepalive_pool_size: s.upstream_pool_size,
        ..ServerConf::default()
    }
}

/// The internal socket (cached composites, see `gateway::internal`), its directory made.
fn internal_socket(snap: &Snapshot) -> Result<Option<String>, String> {
    let Some(path) = snap.internal_socket() else {
        return Ok(None);
    };
    if let Some(dir) = std::path::Path::new(&path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| {
                format!(
                    "server.internal_sock: cannot create the directory {}: {e}",
                    dir.display()
                )
            })?;
        }
    }
    Ok(Some(path))
}

fn add_listener(
    server: &mut Server,
    l: ListenerPlan,
    snapshot: &Arc<ArcSwap<Snapshot>>,
    state: &Arc<crate::gateway::state::ServerState>,
    access_log: Option<AccessLog>,
    spans: Option<crate::observability::otlp::Exporter>,
    internal: Option<String>,
) -> Result<(), String> {
    let gateway = Gateway {
        snapshot: snapshot.clone(),
        tls: l.tls.is_some(),
        timed: snapshot.load().metrics.is_some() || access_log.is_some() || spans.is_some(),
        access_log,
        spans,
        state: state.clone(),
    };
    let mut options = HttpServerOptions::default();
    options.h2c = l.h2c;
    options.h2_idle_timeout = Some(snapshot.load().limits.keepalive);
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    proxy.server_options = Some(options);
    let snap = snapshot.clone();
    let app = WithHeadDeadline {
        inner: Arc::new(proxy),
        limit: Arc::new(move || snap.load().limits.client_header),
    };
    let mut svc = Service::new(format!("listener {}", l.name), app);
    match l.tls {
        None => svc.add_tcp(&l.addr),
        Some(plan) => {
            let mut tls = TlsSettings::with_callbacks(Box::new(crate::tls::ClientCertCallbacks))
                .map_err(|e| e.to_string())?;
            tls.set_cert_resolver(plan.resolver);
            if let Some(v) = plan.client_verifier {
                tls.set_client_cert_verifier(v);
            }
            if plan.http2 {
                tls.enable_h2();
            }
            svc.add_tls_with_settings(&l.addr, None, tls);
        }
    }
    if let Some(path) = internal {
        use std::os::unix::fs::PermissionsExt;
        svc.add_uds(&path, Some(std::fs::Permissions::from_mode(0o600)));
        state.listen_internal(&path);
    }
    server.add_service(svc);
    Ok(())
}

/// Runs the background work of the current snapshot's upstreams: active health checks and DNS
/// re-resolution. State lives in the registry, so the tasks are simply restarted for each new
/// snapshot after a reload.
struct Supervisor {
    reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let mut tasks = tokio::task::JoinSet::new();
            let snap = self.reloader.snapshot.load_full();
            for g in snap.upstreams.values() {
                tasks.spawn(health::run_active(g.clone()));
                tasks.spawn(health::run_dns(g.clone()));
            }
            let cache = snap.shared.http_cache().cloned();
            if let (Some(r), Some(c)) = (&snap.redis, &cache) {
                r.connect_in_background();
                let c = c.clone();
                tasks.spawn(
                    r.clone()
                        .subscribe(crate::cache::PURGE_CHANNEL, move |m| c.apply_remote(m)),
                );
            } else if let Some(r) = &snap.redis {
                r.connect_in_background();
            }
            if let Some(c) = &cache {
                c.set_broadcast(snap.redis.clone());
            }
            for route in &snap.routes {
                route.chain.start();
            }
            drop(snap);
            tokio::select! {
                _ = shutdown.changed() => {
                    tasks.abort_all();
                    return;
                }
                _ = self.reloader.changed.notified() => tasks.abort_all(),
            }
        }
    }
}

/// Reloads the configuration on SIGHUP. Pingora installs no SIGHUP handler, and the default
/// action of SIGHUP would terminate the process.
struct SighupReload {
    reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for SighupReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!(
                    "cannot install the SIGHUP handler, reload by signal is unavailable: {e}"
                );
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    if let Err(e) = self.reloader.reload().await {
                        log::error!("reload on SIGHUP failed, the running configuration is kept:\n{e}");
                    }
                }
            }
        }
    }
}

/// Runs the access-log writer on its own thread (blocking file I/O never touches a worker) and
/// asks it to reopen its file on SIGUSR1.
struct LogWriter(Arc<Writer>);

#[async_trait]
impl BackgroundService for LogWriter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let writer = self.0.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run())
        {
            log::error!("access log disabled: cannot start its writer thread: {e}");
            return;
        }
        let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                got = usr1.recv() => {
                    if got.is_none() {
                        return;
                    }
                    self.0.reopen.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    }
}

/// Turns client keep-alive off as soon as this process starts handing its sockets to a new one
/// (or starts a graceful stop): every busy connection then closes after its current response and
/// the client reconnects, instead of racing Pingora's close of idle connections 5 s later.
///
/// Then ends the grace period early: Pingora sleeps the whole `grace_period` after a SIGTERM
/// or an upgrade even when nothing is left to serve. Once its listeners stopped accepting and no
/// request is in flight, the access log is flushed and the process exits.
struct DrainWatch {
    state: Arc<crate::gateway::state::ServerState>,
    phases: parking_lot::Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
    access_log: Option<AccessLog>,
}

#[async_trait]
impl BackgroundService for DrainWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut phases) = self.phases.lock().take() else {
            return;
        };
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = shutdown.changed(), if !stopping => {
                    self.state.start_draining();
                    stopping = true;
                }
                phase = phases.recv() => match phase {
                    Ok(ExecutionPhase::GracefulUpgradeTransferringFds | ExecutionPhase::GracefulTerminate | ExecutionPhase::ShutdownStarted) => {
                        self.state.start_draining();
                    }
                    Ok(ExecutionPhase::ShutdownGracePeriod) => self.exit_when_idle().await,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

impl DrainWatch {
    /// Waits (through Pingora's grace period, which ends the process anyway) until no request
    /// has been in flight for two checks in a row, then exits.
    async fn exit_when_idle(&self) {
        let mut idle_checks = 0;
        loop {
            idle_checks = if self.state.in_flight() == 0 {
                idle_checks + 1
            } else {
                0
            };
            if idle_checks >= 2 {
                log::info!(
                    "graceful stop: no request in flight, exiting before the grace period ends"
                );
                if let Some(log) = &self.access_log {
                    log.flush();
                }
                std::process::exit(0);
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
}

/// Sends queued spans to the OTLP collector.
struct SpanExport(Arc<crate::observability::otlp::Sender>);

#[async_trait]
impl BackgroundService for SpanExport {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = self.0.run() => {}
        }
    }
}

/// Reloads when the configuration file's content changes (`server.watch_config`), polling its
/// metadata and hashing it only when that changed. A file that fails to load is reported once
/// and retried only after it changes again.
struct ConfigWatch {
    reloader: Arc<Reloader>,
}

fn file_digest(path: &str) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| crate::auth::sha256(&b))
}

#[async_trait]
impl BackgroundService for ConfigWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let path = self.reloader.path.clone();
        let stamp = |p: &str| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut seen_stamp = stamp(&path);
        let mut seen_digest = file_digest(&path);
        loop {
            let every = self
                .reloader
                .snapshot
                .load()
                .config
                .server
                .watch_config
                .map(|d| d.0);
            let wait = every.unwrap_or(std::time::Duration::from_secs(5));
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if every.is_none() {
                continue;
            }
            let now = stamp(&path);
            if now == seen_stamp {
                continue;
            }
            seen_stamp = now;
            let digest = {
                let p = path.clone();
                tokio::task::spawn_blocking(move || file_digest(&p))
                    .await
                    .ok()
                    .flatten()
            };
            if digest.is_none() || digest == seen_digest {
                continue;
            }
            seen_digest = digest;
            match self.reloader.reload().await {
                Ok(o) => log::info!(
                    "configuration file changed: reloaded (generation {})",
                    o.generation
                ),
                Err(e) => log::error!(
                    "configuration file changed but cannot be loaded, keeping the running one: {e}"
                ),
            }
        }
    }
}
