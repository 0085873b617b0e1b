//! The Redis settings of `cluster.redis`. A leaf module (no project imports but value types),
//! so that the Redis client can read it without depending on the whole schema.

use crate::common::types::{Dur, OnError};
use schemars::JsonSchema;
use serde::Deserialize;

fn redis_timeout() -> Dur {
    Dur::millis(10)
}
fn redis_prefix() -> String {
    "postern".into()
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One server: `redis://[user:password@]host:port[/db]`.
    #[serde(default)]
    pub url: Option<String>,
    /// Seed nodes of a Redis Cluster, instead of `url`.
    #[serde(default)]
    pub cluster_nodes: Vec<String>,
    /// Hard limit on one rate-limit check; past it the rule follows `on_error`.
    #[serde(default = "redis_timeout")]
    pub timeout: Dur,
    /// When Redis is slow or down: `allow` (fall back to a per-node limit) or `deny` (503).
    #[serde(default)]
    pub on_error: OnError,
    /// Prefix of every key Postern writes.
    #[serde(default = "redis_prefix")]
    pub key_prefix: String,
}
