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
    /// The verified client certificate (mTLS listeners), parsed once per connection.
    pub client_cert: Option<Arc<ClientCert>>,
}

/// Facts of a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    pub subject_cn: Option<String>,
    /// subjectAltNames as text (DNS names, e-mail addresses, URIs, IP addresses).
    pub sans: Vec<String>,
    /// Lower-case hex SHA-256 of the DER certificate.
    pub sha256: String,
}

/// A known caller, from the `consumers` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consumer {
    pub name: String,
    pub groups: Vec<String>,
}

/// A request id, kept as the header value it is sent as: the same bytes go to the upstream and
/// back to the client without a copy (the incoming field's bytes when the client's id is kept).
/// Reads as `&str`; empty when request ids are off.
#[derive(Debug, Clone, Default)]
pub struct RequestId(Option<http::HeaderValue>);

impl RequestId {
    /// `v` must be visible ASCII (the only ids Postern keeps or makes); anything else is dropped.
    pub fn new(v: http::HeaderValue) -> RequestId {
        RequestId(Some(v).filter(|v| v.to_str().is_ok()))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The id as a header value (a reference-counted clone).
    pub fn header_value(&self) -> Option<http::HeaderValue> {
        self.0.clone()
    }
}

impl std::ops::Deref for RequestId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The plugin-visible per-request state.
#[derive(Debug, Clone, Default)]
pub struct RequestCtx {
    pub conn: ConnInfo,
    /// The request id (incoming `X-Request-Id` when safe, else generated).
    pub request_id: RequestId,
    /// Name of the matched route (empty before routing).
    pub route: Arc<str>,
    /// Captured path parameters, in pattern order.
    pub params: Vec<(Arc<str>, String)>,
    /// The W3C trace this request belongs to (when tracing propagation is on).
    pub trace: Option<crate::observability::trace::TraceContext>,
    /// The client address: the peer, or the address a trusted proxy forwarded
    /// (`server.trusted_proxies`).
    pub client_ip: Option<IpAddr>,
    /// Who is calling, once an authentication plugin identified the caller.
    pub consumer: Option<Arc<Consumer>>,
    /// Claims of a verified token (JWT or introspection), for keys and header templates.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Final response status, once known.
    pub status: Option<u16>,
    /// Why a body plugin skipped or failed on this exchange (`oversize`, `not_json`, ...), for
    /// the access log.
    pub transform: Option<&'static str>,
    /// Plugin-private data, keyed by type.
    pub ext: http::Extensions,
}

impl RequestCtx {
    /// Notes for the access log's `transform` that a body plugin skipped or failed on this
    /// request's body, and counts it.
    pub fn transform_failed(
        &mut self,
        metrics: &crate::observability::metrics::Metrics,
        phase: &str,
        reason: &'static str,
    ) {
        self.transform = Some(reason);
        crate::observability::metrics::transform_error(metrics, &self.route, phase, reason);
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl RequestCtx {
    /// A claim as text: strings as they are, other JSON values in their JSON form.
    pub fn claim(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        match self.claims.as_ref()?.get(name)? {
            serde_json::Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
            serde_json::Value::Null => None,
            v => Some(std::borrow::Cow::Owned(v.to_string())),
        }
    }
}
