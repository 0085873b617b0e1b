//! Postern: an API gateway built on Pingora.
//!
//! Layers, lowest first. A module imports only from layers below its own; `tests/layers.rs`
//! scans every `crate::` path and fails on one that does not, so no import cycle can come back.
//!
//! 1. `common`, `reply`, `router`, `cli`, `lifecycle`: value types, issues, answers, route
//!    matching, command line, process phases
//! 2. `observability`, `error_pages`: metrics registry, access log, traces; error page bodies
//! 3. `context`, `error`, `redis`: what plugins see of a request; the one error type; Redis
//! 4. `http`: request-head checks, the head deadline, cookies and query parameters
//! 5. `auth`, `tls`, `ratelimit`, `cache`, `upstream`, `transform`: the mechanisms plugins use
//! 6. `shared`: state kept across reloads (JWKS, limiter stores, targets)
//! 7. `plugins`: the plugin contract and every plugin
//! 8. `aggregate`: composition's YAML shape, templates and merging
//! 9. `config`: the whole YAML document, loading and its cross-checks
//! 10. `snapshot`: config compiled into the immutable runtime state
//! 11. `gateway`: Pingora's phases
//! 12. `reload`, `control`: swapping snapshots; the control socket
//! 13. `admin`: the admin listener
//! 14. `app`: the server, its services and their owned state

#![forbid(unsafe_code)]

pub mod admin;
pub mod aggregate;
pub mod app;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod common;
pub mod config;
pub mod context;
pub mod control;
pub mod error;
pub mod error_pages;
pub mod gateway;
pub mod http;
pub mod lifecycle;
pub mod observability;
pub mod plugins;
pub mod ratelimit;
pub mod redis;
pub mod reload;
pub mod reply;
pub mod router;
pub mod shared;
pub mod snapshot;
pub mod tls;
pub mod transform;
pub mod upstream;
