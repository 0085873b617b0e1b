//! Metrics and access logs: plain records from the gateway, never a reach into the snapshot.

pub mod access_log;
pub mod config;
pub mod json;
pub mod metrics;
pub mod otlp;
pub mod trace;
