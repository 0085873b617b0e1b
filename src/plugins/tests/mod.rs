//! Unit tests of every plugin: a route compiled from YAML as `postern check` compiles it, its
//! chain run on a request header and a `RequestCtx`, no sockets.

mod access;
mod auth;
mod auth_services;
mod cache;
mod jwt;
mod limits;
mod table;
mod transform;

use crate::context::{ClientCert, ConnInfo, Consumer, RequestCtx, RequestId};
use crate::error::GatewayError;
use crate::reply::{Flow, Reply};
use crate::snapshot::Route;
use pingora::http::{RequestHeader, ResponseHeader};
use std::net::IpAddr;
use std::sync::Arc;

/// A route `r` on `/*` with these plugins (a YAML list, one entry a line or block) and
/// consumers (a YAML list, or empty).
pub fn route(consumers: &str, plugins: &str) -> Arc<Route> {
    let consumers = if consumers.trim().is_empty() {
        String::new()
    } else {
        format!("consumers:\n{}\n", indent(consumers, 2))
    };
    let yaml = format!(
        "listeners: [{{ addr: \"127.0.0.1:0\" }}]\n\
         upstreams: {{ u: {{ targets: [{{ addr: \"127.0.0.1:1\" }}] }} }}\n\
         {consumers}\
         routes:\n  - name: r\n    match: {{ path: \"/*\" }}\n    upstream: u\n    plugins:\n{}\n",
        indent(plugins, 6)
    );
    crate::snapshot::testing::route(&yaml, "r")
}

/// The issues `postern check` reports for these plugins, as text.
pub fn check_error(plugins: &str) -> String {
    let yaml = format!(
        "listeners: [{{ addr: \"127.0.0.1:0\" }}]\n\
         upstreams: {{ u: {{ targets: [{{ addr: \"127.0.0.1:1\" }}] }} }}\n\
         routes:\n  - name: r\n    match: {{ path: \"/*\" }}\n    upstream: u\n    plugins:\n{}\n",
        indent(plugins, 6)
    );
    let loaded = match crate::config::load_str(&yaml, "test.yaml") {
        Ok(l) => l,
        Err(e) => return e.to_string(),
    };
    match crate::snapshot::compile(loaded, &crate::shared::Shared::new()) {
        Ok(_) => panic!("the configuration is valid:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.trim_matches('\n')
        .lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A request header.
pub fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build(method, uri.as_bytes(), None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

/// The context of a request to route `r` from `ip`.
pub fn ctx_from(ip: &str) -> RequestCtx {
    let ip: IpAddr = ip.parse().unwrap();
    RequestCtx {
        conn: ConnInfo {
            client_ip: Some(ip),
            ..ConnInfo::default()
        },
        client_ip: Some(ip),
        route: "r".into(),
        request_id: RequestId::new(http::HeaderValue::from_static("req-1")),
        ..RequestCtx::default()
    }
}

pub fn ctx() -> RequestCtx {
    ctx_from("127.0.0.1")
}

/// A context whose caller is already known (as after an authentication plugin).
pub fn ctx_as(name: &str, groups: &[&str]) -> RequestCtx {
    RequestCtx {
        consumer: Some(Arc::new(Consumer {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })),
        ..ctx()
    }
}

/// A context on an mTLS connection with this verified certificate.
pub fn ctx_with_cert(cert: ClientCert) -> RequestCtx {
    let mut c = ctx();
    c.conn.client_cert = Some(Arc::new(cert));
    c
}

/// Runs the route's request plugins; `Ok(None)` when they let the request through.
pub async fn run(
    route: &Route,
    req: &mut RequestHeader,
    ctx: &mut RequestCtx,
) -> Result<Option<Reply>, GatewayError> {
    match route.chain.on_request(req, ctx).await? {
        Flow::Continue => Ok(None),
        Flow::Respond(r) => Ok(Some(r)),
    }
}

/// The status a request gets from the route's request plugins (200: let through).
pub async fn status(route: &Route, req: &mut RequestHeader, ctx: &mut RequestCtx) -> u16 {
    match run(route, req, ctx).await {
        Ok(None) => 200,
        Ok(Some(r)) => r.status,
        Err(e) => e.status(),
    }
}

/// A header of a reply, as text.
pub fn field<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.to_str().ok())
}

/// A request header's value, as text.
pub fn header<'a>(r: &'a RequestHeader, name: &str) -> Option<&'a str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

/// A response through the route's response plugins.
pub fn respond(route: &Route, status: u16, ctx: &mut RequestCtx) -> ResponseHeader {
    let mut resp = ResponseHeader::build(status, None).unwrap();
    route.chain.on_response(&mut resp, ctx).unwrap();
    resp
}

/// What building a plugin by hand needs (for plugins tested below their hooks).
pub fn with_build_ctx<R>(consumers: &str, f: impl FnOnce(&super::BuildCtx) -> R) -> R {
    let list: Vec<crate::auth::config::ConsumerConfig> = match consumers.trim() {
        "" => Vec::new(),
        text => yaml_serde::from_str(text).unwrap(),
    };
    let mut issues = Vec::new();
    let consumers = Arc::new(crate::auth::Consumers::compile(&list, &mut issues));
    assert!(issues.is_empty(), "{issues:?}");
    let shared = crate::shared::Shared::new();
    f(&super::BuildCtx {
        route: "r",
        index: 0,
        path: "routes[0].plugins[0]".into(),
        shared: &shared,
        consumers: &consumers,
        redis: None,
        max_request_body: 1 << 20,
    })
}
