//! Hot reload: parse, check and compile the file again, then swap the snapshot atomically.
//! In-flight requests keep the snapshot they started with; target health and in-flight counts
//! live in the registry and carry over; upstream connection pools are keyed per upstream name
//! and carry over too. A file that fails to load changes nothing.
//!
//! Listeners and `server` settings are bound to sockets and runtimes: changing them needs a
//! binary upgrade (`postern run -u`), and a reload reports that it did not apply them.

use crate::shared::Shared;
use crate::snapshot::{self, Snapshot};
use arc_swap::ArcSwap;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// Everything a reload needs; shared by the SIGHUP handler and the admin endpoint.
pub struct Reloader {
    pub path: String,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub shared: Arc<Shared>,
    /// Wakes the supervisor so it restarts health checks for the new snapshot.
    pub changed: Notify,
    pub generation: AtomicU64,
    /// Serializes reloads (two at once would race on the swap order).
    lock: tokio::sync::Mutex<()>,
    /// The server's gateway state (whether the internal socket is open).
    state: Arc<crate::gateway::state::ServerState>,
}

/// What a successful reload did.
#[derive(Debug)]
pub struct Outcome {
    pub generation: u64,
    pub routes: usize,
    pub upstreams: usize,
    /// Changed sections that need a binary upgrade to take effect.
    pub not_applied: Vec<&'static str>,
}

impl Outcome {
    pub fn to_json(&self) -> serde_json::Value {
        json!({ "status": "reloaded", "generation": self.generation, "routes": self.routes,
                "upstreams": self.upstreams, "not_applied": self.not_applied })
    }
}

impl Reloader {
    pub fn new(
        path: &str,
        snapshot: Arc<ArcSwap<Snapshot>>,
        shared: Arc<Shared>,
        state: Arc<crate::gateway::state::ServerState>,
    ) -> Reloader {
        Reloader {
            state,
            path: path.to_string(),
            snapshot,
            shared,
            changed: Notify::new(),
            generation: AtomicU64::new(1),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Reloads the file. Blocking work (file read, DNS) runs on the blocking pool.
    pub async fn reload(&self) -> Result<Outcome, String> {
        let result = self.reload_inner().await;
        if let Some(m) = self.shared.metrics() {
            m.reloads
                .with_label_values(&[if result.is_ok() { "success" } else { "failure" }])
                .inc();
        }
        result
    }

    async fn reload_inner(&self) -> Result<Outcome, String> {
        let _one_at_a_time = self.lock.lock().await;
        let (path, shared) = (self.path.clone(), self.shared.clone());
        let compiled = tokio::task::spawn_blocking(move || {
            let (snap, _listeners) =
                snapshot::load_and_compile(&path, &shared).map_err(|e| e.to_string())?;
            for g in snap.upstreams.values() {
                for name in g.resolve_blocking() {
                    log::warn!("upstream {}: {name} does not resolve yet", g.name);
                }
            }
            Ok::<_, String>(snap)
        })
        .await
        .map_err(|e| format!("reload task failed: {e}"))??;
        let old = self.snapshot.load();
        let mut not_applied = Vec::new();
        if old.config.listeners != compiled.config.listeners {
            not_applied.push("listeners");
        }
        // Per-request limits (bodies, headers, keep-alive, forwarding) come from the snapshot and
        // do apply; these are bound to the process.
        let fixed = |s: &crate::config::schema::Server| {
            (
                s.threads,
                s.grace_period,
                s.graceful_shutdown_timeout,
                s.pid_file.clone(),
                s.upgrade_sock.clone(),
                s.internal_sock.clone(),
                s.error_log.clone(),
                s.upstream_pool_size,
            )
        };
        if fixed(&old.config.server) != fixed(&compiled.config.server) {
            not_applied.push("server (threads, grace periods, files, pool size)");
        }
        if compiled.caches_composites && self.state.internal_socket().is_none() {
            // Those composites are answered, uncached, until a restart or an upgrade.
            not_applied.push("cache of composite routes (the internal socket opens at start)");
        }
        if old.config.admin != compiled.config.admin {
            not_applied.push("admin");
        }
        if compiled.config.observability.metrics.enabled != self.shared.metrics().is_some() {
            not_applied.push("observability.metrics.enabled");
        }
        if compiled.config.cache != old.config.cache {
            not_applied.push("cache (storage size and lock timeout)");
        }
        let outcome = Outcome {
            generation: self.generation.fetch_add(1, Ordering::SeqCst) + 1,
            routes: compiled.router.len(),
            upstreams: compiled.upstreams.len(),
            not_applied,
        };
        // Targets that left the configuration lose their state (their pools are already gone).
        let live: std::collections::HashSet<(String, std::net::SocketAddr)> = compiled
            .upstreams
            .iter()
            .flat_map(|(name, g)| g.targets().into_iter().map(move |t| (name.clone(), t.addr)))
            .collect();
        self.shared
            .registry
            .retain(|up, addr| live.contains(&(up.to_string(), addr)));
        self.snapshot.store(Arc::new(compiled));
        self.changed.notify_one();
        log::info!(
            "configuration reloaded from {} (generation {})",
            self.path,
            outcome.generation
        );
        if !outcome.not_applied.is_empty() {
            log::warn!(
                "changes to {} need a binary upgrade (postern run -u) and were not applied",
                outcome.not_applied.join(", ")
            );
        }
        Ok(outcome)
    }
}
