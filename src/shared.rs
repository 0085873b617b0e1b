//! Process-wide state that outlives snapshots: target health, rate-limit engines and the Redis
//! connection. A reload compiles the new snapshot against the same `Shared`, so whatever did not
//! change keeps its state.

use crate::config::schema::RedisConfig;
use crate::ratelimit::cluster::Redis;
use crate::ratelimit::Store;
use crate::upstream::target::Registry;
use parking_lot::Mutex;
use std::sync::Arc;

#[derive(Default)]
pub struct Shared {
    pub registry: Arc<Registry>,
    pub limits: Store,
    redis: Mutex<Option<Arc<Redis>>>,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared::default())
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
        let r = Arc::new(Redis::new(
            id,
            &nodes,
            cluster,
            c.timeout.0,
            c.key_prefix.clone(),
        )?);
        *slot = Some(r.clone());
        Ok(r)
    }
}
