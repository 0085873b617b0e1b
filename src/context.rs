//! What plugins may see of a request: facts copied once from the connection and the route.

use std::net::IpAddr;
use std::sync::Arc;

/// Connection facts, copied in `early_request_filter`.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub client_ip: Option<IpAddr>,
    pub client_port: u16,
    pub tls: bool,
    pub sni: Option<String>,
    pub http2: bool,
}

/// The plugin-visible per-request state.
#[derive(Debug, Default)]
pub struct RequestCtx {
    pub conn: ConnInfo,
    /// The request id (incoming `X-Request-Id` when safe, else generated).
    pub request_id: String,
    /// Name of the matched route (empty before routing).
    pub route: Arc<str>,
    /// Captured path parameters, in pattern order.
    pub params: Vec<(Arc<str>, String)>,
    /// The W3C trace this request belongs to (when tracing propagation is on).
    pub trace: Option<crate::observability::trace::TraceContext>,
    /// Final response status, once known.
    pub status: Option<u16>,
    /// Plugin-private data, keyed by type.
    pub ext: http::Extensions,
}

impl RequestCtx {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v.as_str())
    }
}
