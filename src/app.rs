//! Builds and runs the Pingora server: one proxy service per listener, the admin service and the
//! supervisor (health checks, DNS). Nothing here runs per request.

use crate::admin::Admin;
use crate::gateway::Gateway;
use crate::snapshot::{self, ListenerPlan, Snapshot};
use crate::upstream::health;
use crate::upstream::target::Registry;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::proxy::ProxyServiceBuilder;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
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

/// Loads the config, builds every service and runs until shutdown. Returns an error message when
/// the configuration is invalid (nothing is started then).
pub fn run(conf_path: &str, flags: RunFlags) -> Result<(), String> {
    let registry = Arc::new(Registry::default());
    let (snap, listeners) =
        snapshot::load_and_compile(conf_path, registry).map_err(|e| e.to_string())?;
    for g in snap.upstreams.values() {
        for name in g.resolve_blocking() {
            log::warn!(
                "upstream {}: {name} does not resolve yet; retrying every {:?}",
                g.name,
                g.resolve_interval
            );
        }
    }
    let server_conf = server_conf(&snap, flags.daemon);
    let admin = snap.config.admin.clone();
    let snapshot = Arc::new(ArcSwap::from_pointee(snap));
    let opt = Opt {
        upgrade: flags.upgrade,
        daemon: flags.daemon,
        nocapture: false,
        test: flags.test,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();
    for l in listeners {
        add_listener(&mut server, l, &snapshot)?;
    }
    if let Some(a) = admin {
        let mut svc = Service::new(
            "admin".to_string(),
            Admin {
                snapshot: snapshot.clone(),
                started: Instant::now(),
            },
        );
        svc.add_tcp(&a.addr);
        svc.threads = Some(1);
        server.add_service(svc);
    }
    server.add_service(background_service("supervisor", Supervisor { snapshot }));
    server.run_forever()
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

struct NoCallbacks;
impl TlsAccept for NoCallbacks {}

fn add_listener(
    server: &mut Server,
    l: ListenerPlan,
    snapshot: &Arc<ArcSwap<Snapshot>>,
) -> Result<(), String> {
    let gateway = Gateway {
        snapshot: snapshot.clone(),
        tls: l.tls.is_some(),
    };
    let mut options = HttpServerOptions::default();
    options.h2c = l.h2c;
    options.h2_idle_timeout = Some(snapshot.load().limits.keepalive);
    let mut svc = ProxyServiceBuilder::new(&server.configuration, gateway)
        .name(format!("listener {}", l.name))
        .server_options(options)
        .build();
    match l.tls {
        None => svc.add_tcp(&l.addr),
        Some((resolver, http2)) => {
            let mut tls =
                TlsSettings::with_callbacks(Box::new(NoCallbacks)).map_err(|e| e.to_string())?;
            tls.set_cert_resolver(resolver);
            if http2 {
                tls.enable_h2();
            }
            svc.add_tls_with_settings(&l.addr, None, tls);
        }
    }
    server.add_service(svc);
    Ok(())
}

/// Runs the background work of the current snapshot's upstreams: active health checks and DNS
/// re-resolution. State lives in the registry, so tasks can be restarted for a new snapshot.
struct Supervisor {
    snapshot: Arc<ArcSwap<Snapshot>>,
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks = tokio::task::JoinSet::new();
        let snap = self.snapshot.load_full();
        for g in snap.upstreams.values() {
            tasks.spawn(health::run_active(g.clone()));
            tasks.spawn(health::run_dns(g.clone()));
        }
        let _ = shutdown.changed().await;
        tasks.abort_all();
    }
}
