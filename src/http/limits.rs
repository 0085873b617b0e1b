//! Limits every downstream request is held to, and the `server.forwarded_headers` section.

use crate::common::defaults as d;
use schemars::JsonSchema;
use serde::Deserialize;
use std::time::Duration;

/// Forwarding headers added to proxied requests (each costs a header insertion per request).
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardedHeaders {
    /// Append the client address to `X-Forwarded-For`.
    #[serde(default = "d::yes")]
    pub x_forwarded_for: bool,
    /// Set `X-Forwarded-Proto` to http or https.
    #[serde(default = "d::yes")]
    pub x_forwarded_proto: bool,
    /// Set `X-Forwarded-Host` to the Host the client asked for.
    #[serde(default = "d::yes")]
    pub x_forwarded_host: bool,
    /// Append `for=...;proto=...;host=...` to the RFC 7239 `Forwarded` header.
    #[serde(default = "d::yes")]
    pub forwarded: bool,
}

impl Default for ForwardedHeaders {
    fn default() -> Self {
        ForwardedHeaders {
            x_forwarded_for: true,
            x_forwarded_proto: true,
            x_forwarded_host: true,
            forwarded: true,
        }
    }
}

/// Limits applied to every downstream request.
#[derive(Debug, Clone)]
pub struct Limits {
    pub keepalive: Duration,
    pub client_read: Duration,
    pub client_write: Duration,
    pub client_header: Duration,
    pub max_header_count: usize,
    pub max_header_size: usize,
    pub forwarded: ForwardedHeaders,
    pub request_id: bool,
    pub trace: bool,
    pub preserve_header_case: bool,
    /// `server.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}
