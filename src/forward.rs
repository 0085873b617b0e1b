//! What Postern changes on the request it forwards: path rewrite, Host, the `X-Forwarded-*` and
//! `Forwarded` (RFC 7239) fields, and the request id.

use crate::config::schema::ForwardedHeaders;
use crate::context::RequestCtx;
use crate::router::Captures;
use crate::snapshot::{Part, Route};
use http::header::HOST;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};

pub const X_REQUEST_ID: &str = "x-request-id";

/// Keeps a client's request id when it is short and plain, otherwise makes a new (UUIDv7) one.
pub fn request_id(req: &RequestHeader) -> String {
    match req.headers.get(X_REQUEST_ID).and_then(|v| v.to_str().ok()) {
        Some(id)
            if !id.is_empty()
                && id.len() <= 128
                && id.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
                }) =>
        {
            id.to_string()
        }
        _ => uuid::Uuid::now_v7().to_string(),
    }
}

/// The path sent upstream: `rewrite.path` if set, else the (normalized) path minus `strip_prefix`.
pub fn upstream_path(route: &Route, path: &str, caps: &Captures) -> Option<String> {
    if let Some(parts) = &route.rewrite_path {
        let mut out = String::with_capacity(path.len() + 16);
        for p in parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Param(i) => {
                    let (s, e) = caps.params.get(*i)?;
                    out.push_str(path.get(*s as usize..*e as usize)?);
                }
                Part::Rest => {
                    out.push_str(caps.rest.and_then(|r| path.get(r as usize..)).unwrap_or(""))
                }
            }
        }
        return Some(collapse_slashes(out));
    }
    let prefix = route.strip_prefix.as_deref()?;
    let rest = path.strip_prefix(prefix.trim_end_matches('/'))?;
    Some(match rest {
        "" => "/".to_string(),
        r if r.starts_with('/') => r.to_string(),
        // `/api` must not strip `/apiv2`: only whole segments are removed.
        _ => return None,
    })
}

fn collapse_slashes(mut s: String) -> String {
    while s.contains("//") {
        s = s.replace("//", "/");
    }
    s
}

/// Sets the new path on `req`, keeping its query.
pub fn set_path(req: &mut RequestHeader, path: &str) {
    let pq = match req.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    if let Ok(uri) = http::Uri::builder().path_and_query(pq).build() {
        req.set_uri(uri);
    }
}

/// Appends the client to `X-Forwarded-For` and `Forwarded`, and sets `X-Forwarded-Proto/-Host`
/// and the request id, as `which` enables them. `host` is the Host the client asked for.
pub fn add_forwarding(
    req: &mut RequestHeader,
    ctx: &RequestCtx,
    host: Option<&str>,
    which: &ForwardedHeaders,
) {
    use std::fmt::Write;
    let proto = if ctx.conn.tls { "https" } else { "http" };
    if let Some(ip) = ctx.conn.client_ip {
        if which.x_forwarded_for {
            let mut xff = String::with_capacity(64);
            if let Some(prev) = req
                .headers
                .get(X_FORWARDED_FOR)
                .and_then(|v| v.to_str().ok())
                .filter(|p| !p.trim().is_empty())
            {
                xff.push_str(prev);
                xff.push_str(", ");
            }
            let _ = write!(xff, "{ip}");
            let _ = req.insert_header(X_FORWARDED_FOR, xff);
        }
        if which.forwarded {
            let mut fwd = String::with_capacity(96);
            if let Some(prev) = req
                .headers
                .get(http::header::FORWARDED)
                .and_then(|v| v.to_str().ok())
                .filter(|p| !p.trim().is_empty())
            {
                fwd.push_str(prev);
                fwd.push_str(", ");
            }
            let _ = match ip {
                std::net::IpAddr::V4(v4) => write!(fwd, "for={v4};proto={proto}"),
                std::net::IpAddr::V6(v6) => write!(fwd, "for=\"[{v6}]\";proto={proto}"),
            };
            if let Some(h) = host.filter(|h| crate::checks::valid_host(h.as_bytes())) {
                let _ = write!(fwd, ";host=\"{h}\"");
            }
            let _ = req.insert_header(FORWARDED, fwd);
        }
    }
    if which.x_forwarded_proto {
        let _ = req.insert_header(X_FORWARDED_PROTO, proto);
    }
    if let (Some(h), true) = (host, which.x_forwarded_host) {
        let _ = req.insert_header(X_FORWARDED_HOST, h);
    }
    if !ctx.request_id.is_empty() {
        let _ = req.insert_header(X_REQUEST_ID, &ctx.request_id);
    }
}

const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const FORWARDED: &str = "forwarded";

/// The Host the client addressed: the Host field, or the authority of an HTTP/2 request.
pub fn client_host(req: &RequestHeader) -> Option<String> {
    req.headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri.authority().map(|a| a.as_str().to_string()))
}

/// Applies the route's Host policy: set it, or keep the client's (filling it in from the
/// authority for HTTP/2 clients, since HTTP/1.1 upstreams need a Host field).
pub fn set_host(req: &mut RequestHeader, route: &Route, client_host: Option<&str>) {
    if let Some(h) = &route.host {
        let _ = req.insert_header(HOST, h.clone());
    } else if !req.headers.contains_key(HOST) {
        if let Some(v) = client_host.and_then(|h| HeaderValue::from_str(h).ok()) {
            let _ = req.insert_header(HOST, v);
        }
    }
}

/// Removes hop-by-hop fields from an upstream response (RFC 9110 §7.6.1): `Keep-Alive`,
/// `Proxy-Connection` and every field named in `Connection`. Pingora manages `Connection` itself;
/// a 101 keeps its `Upgrade`.
pub fn clean_response(resp: &mut ResponseHeader) {
    if resp.status.as_u16() == 101 {
        return;
    }
    // Static names: looking up a `&str` that is not a standard header parses (and allocates) it.
    static KEEP_ALIVE: http::HeaderName = http::HeaderName::from_static("keep-alive");
    static PROXY_CONNECTION: http::HeaderName = http::HeaderName::from_static("proxy-connection");
    if resp.headers.contains_key(&KEEP_ALIVE) {
        resp.remove_header(&KEEP_ALIVE);
    }
    if resp.headers.contains_key(&PROXY_CONNECTION) {
        resp.remove_header(&PROXY_CONNECTION);
    }
    if !resp.headers.contains_key(http::header::CONNECTION) {
        return;
    }
    let named: Vec<String> = resp
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty() && s != "close" && s != "keep-alive")
        .collect();
    for n in named {
        resp.remove_header(&n);
    }
}
