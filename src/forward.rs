//! What Postern changes on the request it forwards: path rewrite, Host, the `X-Forwarded-*` and
//! `Forwarded` (RFC 7239) fields, and the request id.

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
/// and the request id. `host` is the Host the client asked for.
pub fn add_forwarding(req: &mut RequestHeader, ctx: &RequestCtx, host: Option<&str>) {
    let proto = if ctx.conn.tls { "https" } else { "http" };
    if let Some(ip) = ctx.conn.client_ip {
        let xff = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        let _ = req.insert_header("x-forwarded-for", xff);
        let node = if ip.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip.to_string()
        };
        let mut fwd = format!("for={node};proto={proto}");
        if let Some(h) = host.filter(|h| crate::checks::valid_host(h.as_bytes())) {
            fwd.push_str(&format!(";host=\"{h}\""));
        }
        let fwd = match req.headers.get("forwarded").and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.trim().is_empty() => format!("{prev}, {fwd}"),
            _ => fwd,
        };
        let _ = req.insert_header("forwarded", fwd);
    }
    let _ = req.insert_header("x-forwarded-proto", proto);
    if let Some(h) = host {
        let _ = req.insert_header("x-forwarded-host", h);
    }
    let _ = req.insert_header(X_REQUEST_ID, &ctx.request_id);
}

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
    resp.remove_header("keep-alive");
    resp.remove_header("proxy-connection");
}
