//! The lowest layer: value types every configuration section shares (durations, sizes, the
//! issues a check reports and the line index that points them at the file), named defaults and a
//! monotonic clock. Imports nothing from the crate.

pub mod clock;
pub mod defaults;
pub mod issue;
pub mod lines;
pub mod one_key;
pub mod types;

pub use clock::Clock;
pub use issue::{ConfigError, Issue, Issues};
pub use lines::LineIndex;
pub use types::{Dur, Size};

/// Installs the process's TLS crypto provider once, before the first outgoing HTTPS client
/// (JWKS, introspection, OTLP, mirrors) is built. Later calls do nothing.
pub fn http_client_ready() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
