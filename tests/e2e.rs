//! End-to-end tests: the real binary, real sockets, loopback, ephemeral ports.

#![allow(clippy::unwrap_used)]

#[path = "util/mod.rs"]
mod util;

#[path = "aggregate.rs"]
mod aggregate;
#[path = "auth.rs"]
mod auth;
#[path = "balancing.rs"]
mod balancing;
#[path = "cache.rs"]
mod cache;
#[path = "cluster.rs"]
mod cluster;
#[path = "config_files.rs"]
mod config_files;
#[path = "cors.rs"]
mod cors;
#[path = "formats.rs"]
mod formats;
#[path = "health.rs"]
mod health;
#[path = "inprocess.rs"]
mod inprocess;
#[path = "layers.rs"]
mod layers;
#[path = "lifecycle.rs"]
mod lifecycle;
#[path = "observability.rs"]
mod observability;
#[path = "packaging.rs"]
mod packaging;
#[path = "parsing.rs"]
mod parsing;
#[path = "protocols.rs"]
mod protocols;
#[path = "ratelimit.rs"]
mod ratelimit;
#[path = "reload.rs"]
mod reload;
#[path = "resilience.rs"]
mod resilience;
#[path = "routing.rs"]
mod routing;
#[path = "transform.rs"]
mod transform;
#[path = "upgrade.rs"]
mod upgrade;
