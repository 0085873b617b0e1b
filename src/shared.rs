//! Process-wide state that outlives snapshots: target health, rate-limit engines and the Redis
//! connection. A reload compiles the new snapshot against the same `Shared`, so whatever did not
//! change keeps its state.

use crate::auth::jwks::RemoteJwks;
use crate::cache::HttpCache;
use crate::observability::metrics::{Families, Metrics};
use crate::ratelimit::Store;
use crate::redis::config::RedisConfig;
use crate::redis::Redis;
use crate::upstream::target::Registry;
use parking_lot::Mutex;
use std::sync::Arc;

#[derive(Default)]
pub struct Shared {
    /// The server's metrics, decided by the first configuration loaded (reloads cannot switch
    /// them on or off).
    metrics: std::sync::OnceLock<Metrics>,
    /// The server's HTTP cache, made at start from the first configuration.
    http_cache: std::sync::OnceLock<Arc<HttpCache>>,
    pub registry: Arc<Registry>,
    pub limits: Store,
    redis: Mutex<Option<Arc<Redis>>>,
    jwks: Mutex<std::collections::HashMap<String, std::sync::Weak<RemoteJwks>>>,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared::default())
    }

    /// Makes the server's metrics on the first call (`observability.metrics.enabled` of the
    /// first configuration); later calls change nothing.
    pub fn init_metrics(&self, enabled: bool) {
        self.metrics.get_or_init(|| Families::new(enabled));
    }

    /// Makes the server's HTTP cache on the first call; later calls change nothing (a new
    /// size needs a restart or an upgrade).
    pub fn init_cache(&self, make: impl FnOnce() -> HttpCache) {
        self.http_cache.get_or_init(|| Arc::new(make()));
    }

    /// The server's HTTP cache (none before `init_cache`: `postern check`, unit tests).
    pub fn http_cache(&self) -> Option<&Arc<HttpCache>> {
        self.http_cache.get()
    }

    /// The server's metrics (none before `init_metrics`).
    pub fn metrics(&self) -> &Metrics {
        const NONE: &Metrics = &None;
        self.metrics.get().unwrap_or(NONE)
    }

    /// The JWKS of a URL with these settings: one fetcher (and key set) per distinct setting,
    /// kept across reloads while a route uses it.
    pub fn jwks(
        &self,
        url: &str,
        refresh: std::time::Duration,
        min_refetch: std::time::Duration,
        fallback: &[jsonwebtoken::Algorithm],
    ) -> Result<Arc<RemoteJwks>, String> {
        let id = format!("{url}\n{refresh:?}\n{min_refetch:?}\n{fallback:?}");
        let mut m = self.jwks.lock();
        m.retain(|_, w| w.strong_count() > 0);
        if let Some(j) = m.get(&id).and_then(std::sync::Weak::upgrade) {
            return Ok(j);
        }
        let j = Arc::new(RemoteJwks::new(
            url.to_string(),
            refresh,
            min_refetch,
            fallback.to_vec(),
        )?);
        m.insert(id, Arc::downgrade(&j));
        Ok(j)
    }

    /// The Redis client for these settings: the current one when they did not change.
    /// Nothing connects here (this runs in `postern check` too).
    pub fn redis(&self, c: &RedisConfig) -> Result<Arc<Redis>, String> {
        let id = format!("{c:?}");
        let mut slot = self.redis.lock();
        if let Some(r) = slot.as_ref().filter(|r| r.id == id) {
            return Ok(r.clone());
        }
        let (nodes, cluster) = match (&c.url, c.cluster_nodes.is_empty()) {
            (Some(u), true) => (vec![u.clone()], false),
            (None, false) => (c.cluster_nodes.clone(), true),
            (Some(_), false) => return Err("give either `url` or `cluster_nodes`, not both".into()),
            (None, true) => return Err("give `url` (one server) or `cluster_nodes`".into()),
        };
        let r = Arc::new(
            Redis::new(id, &nodes, cluster, c.timeout.0, c.key_prefix.clone())?
                .with_metrics(self.metrics().clone()),
        );
        *slot = Some(r.clone());
        Ok(r)
    }
}
