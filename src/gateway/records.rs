//! What the gateway reports about a finished request: its access-log line and, for sampled
//! traces, its spans.

use super::ctx::Ctx;
use super::Gateway;
use crate::json_key;
use crate::observability::access_log::{now_rfc3339_millis, AccessLog, Entry, Stamp};
use crate::observability::json::JsonObject;
use crate::observability::metrics::observe_method;
use crate::observability::trace::TraceContext;
use pingora::proxy::Session;
use pingora::Error;
use std::net::SocketAddr;

/// `logging`: what a finished request reports: metrics, spans, the access-log line, the
/// plugins' `on_log`, and the cache's bookkeeping (outcome counts, invalidation by unsafe
/// methods).
pub(super) fn finish(gw: &Gateway, session: &Session, ctx: &mut Ctx, e: Option<&Error>) {
    ctx.attempt.inflight = None;
    if ctx.mode.is_inner() {
        // The inner request of a cached composite: the outer one records it.
        return;
    }
    super::internal::merge_report(ctx);
    if let Some(slot) = ctx.mode.report().cloned() {
        super::deferred::report(ctx, &slot, e);
        return;
    }
    super::deferred::merge_report(ctx);
    let status = session
        .response_written()
        .map(|r| r.status.as_u16())
        .or(ctx.req.status)
        .unwrap_or(0);
    ctx.req.status = Some(status);
    let elapsed = ctx
        .timing
        .started
        .map_or(0.0, |s| s.elapsed().as_secs_f64());
    let (bytes_in, bytes_out) = (
        session.body_bytes_read() as u64,
        session.body_bytes_sent() as u64,
    );
    let metrics = ctx
        .route
        .as_ref()
        .map_or(&ctx.snap.unrouted, |r| &r.metrics);
    metrics.observe(status, elapsed, bytes_in, bytes_out);
    observe_method(&ctx.snap.metrics, &session.req_header().method, status);
    let group = ctx.group();
    if let (Some(group), Some(secs)) = (group, ctx.attempt.secs) {
        if let Some(h) = &group.metrics.response {
            h.observe(secs);
        }
    }
    if let (Some(exporter), Some(trace)) = (&gw.spans, ctx.req.trace) {
        if trace.sampled() {
            export_spans(exporter, session, ctx, trace, status);
        }
    }
    if let Some(log) = &gw.access_log {
        access_record(session, ctx, log, e, elapsed, bytes_in, bytes_out);
    }
    let Some(route) = &ctx.route else {
        return;
    };
    route.chain.on_log(&ctx.req);
    if let Some(policy) = &route.cache {
        if let Some(s) = ctx.cache.status {
            route.cache_metrics.observe(s);
        }
        if let Some(cache) = ctx.snap.shared.http_cache() {
            crate::cache::invalidate_after(cache, policy, session.req_header(), ctx.host(), status);
        }
    }
}

/// The request's SERVER span and one CLIENT span per upstream attempt.
fn export_spans(
    exporter: &crate::observability::otlp::Exporter,
    session: &Session,
    ctx: &Ctx,
    trace: TraceContext,
    status: u16,
) {
    use crate::observability::otlp::{unix_nanos, Span};
    use serde_json::json;
    let req = session.req_header();
    let end = unix_nanos();
    let route = ctx.route.as_ref().map_or("(none)", |r| &*r.name);
    let mut attributes = vec![
        ("http.request.method", json!(req.method.as_str())),
        ("url.path", json!(req.uri.path())),
        ("http.response.status_code", json!(status)),
        ("http.route", json!(route)),
    ];
    if let Some(ip) = ctx.req.client_ip {
        attributes.push(("client.address", json!(ip.to_string())));
    }
    exporter.send(Span {
        trace_id: trace.trace_id,
        span_id: trace.span_id,
        parent: trace.parent,
        name: format!("{} {route}", req.method),
        kind: 2,
        start_unix_nanos: ctx.timing.started_unix,
        end_unix_nanos: end,
        attributes,
        error: status >= 500 || status == 0,
    });
    let upstream = ctx.group().map_or("", |g| &*g.name);
    for (i, (id, target, start, stop)) in ctx.timing.client_spans.iter().enumerate() {
        let last = i + 1 == ctx.timing.client_spans.len();
        let mut attributes = vec![("postern.upstream", json!(upstream))];
        if let Some(t) = target {
            attributes.push(("server.address", json!(t.ip().to_string())));
            attributes.push(("server.port", json!(t.port())));
        }
        if last {
            attributes.push(("http.response.status_code", json!(status)));
        }
        exporter.send(Span {
            trace_id: trace.trace_id,
            span_id: *id,
            parent: Some(trace.span_id),
            name: format!("{} {upstream}", req.method),
            kind: 3,
            start_unix_nanos: *start,
            end_unix_nanos: stop.unwrap_or(end),
            attributes,
            error: !last || status >= 500,
        });
    }
    for (upstream, call_status, (id, target, start, stop)) in &ctx.timing.call_spans {
        let mut attributes = vec![
            ("postern.upstream", json!(&**upstream)),
            ("http.response.status_code", json!(call_status)),
        ];
        if let Some(t) = target {
            attributes.push(("server.address", json!(t.ip().to_string())));
            attributes.push(("server.port", json!(t.port())));
        }
        exporter.send(Span {
            trace_id: trace.trace_id,
            span_id: *id,
            parent: Some(trace.span_id),
            name: format!("call {upstream}"),
            kind: 3,
            start_unix_nanos: *start,
            end_unix_nanos: stop.unwrap_or(end),
            attributes,
            error: *call_status >= 500,
        });
    }
}

/// One access-log line. Headers are never logged; sensitive query parameters are redacted.
#[derive(serde::Serialize)]
struct Record<'a> {
    time: Stamp,
    request_id: &'a str,
    trace_id: Option<String>,
    client: Option<std::net::IpAddr>,
    consumer: Option<&'a str>,
    auth_failure: Option<&'static str>,
    cache: Option<&'static str>,
    /// Why a body plugin skipped or failed (`oversize`, `encoded`, `not_json`, `xml_dtd`...).
    transform: Option<&'static str>,
    method: &'a str,
    host: Option<&'a str>,
    path: std::borrow::Cow<'a, str>,
    protocol: &'static str,
    route: Option<&'a str>,
    upstream: Option<&'a str>,
    target: Option<SocketAddr>,
    status: Option<u16>,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    upstream_ms: Option<f64>,
    tries: u32,
    error: Option<String>,
    /// Why the route's static fallback answered (`circuit_open`, `timeout`...).
    fallback: Option<&'static str>,
    /// A fault the `fault` plugin injected (`delay`, `abort`, `delay+abort`).
    fault: Option<&'static str>,
}

impl Entry for Record<'_> {
    /// The same bytes as the derived `Serialize` (checked by a test), written directly.
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut o = JsonObject::new(out);
        o.str(json_key!("time"), self.time.as_str());
        o.str(json_key!("request_id"), self.request_id);
        o.opt_str(json_key!("trace_id"), self.trace_id.as_deref());
        o.ip(json_key!("client"), self.client);
        o.opt_str(json_key!("consumer"), self.consumer);
        o.opt_str(json_key!("auth_failure"), self.auth_failure);
        o.opt_str(json_key!("cache"), self.cache);
        o.opt_str(json_key!("transform"), self.transform);
        o.str(json_key!("method"), self.method);
        o.opt_str(json_key!("host"), self.host);
        o.str(json_key!("path"), &self.path);
        o.str(json_key!("protocol"), self.protocol);
        o.opt_str(json_key!("route"), self.route);
        o.opt_str(json_key!("upstream"), self.upstream);
        o.socket(json_key!("target"), self.target);
        o.opt_uint(json_key!("status"), self.status.map(u64::from));
        o.uint(json_key!("bytes_in"), self.bytes_in);
        o.uint(json_key!("bytes_out"), self.bytes_out);
        o.millis(json_key!("duration_ms"), self.duration_ms);
        o.opt_millis(json_key!("upstream_ms"), self.upstream_ms);
        o.uint(json_key!("tries"), u64::from(self.tries));
        o.opt_str(json_key!("error"), self.error.as_deref());
        o.opt_str(json_key!("fallback"), self.fallback);
        o.opt_str(json_key!("fault"), self.fault);
        o.finish();
    }
}

/// Logs the access-log line of a finished request.
fn access_record(
    session: &Session,
    ctx: &Ctx,
    log: &AccessLog,
    e: Option<&Error>,
    secs: f64,
    bytes_in: u64,
    bytes_out: u64,
) {
    let req = session.req_header();
    let ms = |s: f64| (s * 1_000_000.0).round() / 1000.0;
    let record = Record {
        time: now_rfc3339_millis(),
        request_id: &ctx.req.request_id,
        trace_id: ctx.req.trace.map(|t| t.trace_id_hex()),
        client: ctx.req.client_ip,
        consumer: ctx.req.consumer.as_deref().map(|c| c.name.as_str()),
        cache: ctx.cache.status,
        transform: ctx.req.transform,
        auth_failure: ctx
            .req
            .ext
            .get::<crate::auth::LastFail>()
            .map(|f| f.0.reason()),
        method: req.method.as_str(),
        host: ctx.host(),
        path: log.redacted_target(req.uri.path(), req.uri.query()),
        protocol: if ctx.req.conn.http2 {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        },
        route: ctx.route.as_ref().map(|r| &*r.name),
        upstream: ctx.group().map(|g| &*g.name),
        target: ctx.attempt.target.as_ref().map(|t| t.addr),
        // nginx's 499 for a client that left before any answer (0 inside Postern).
        status: ctx.req.status.map(|s| if s == 0 { 499 } else { s }),
        bytes_in,
        bytes_out,
        duration_ms: ms(secs),
        upstream_ms: ctx.attempt.secs.map(ms),
        tries: ctx.attempt.tries,
        error: e.map(|e| error_name(e, ctx.failure.as_ref()).to_string()),
        fallback: ctx.fallback,
        fault: ctx
            .req
            .ext
            .get::<crate::plugins::fault::Injected>()
            .map(|f| f.0),
    };
    log.write(&record);
}

/// The access log's `error`: the problem type the client got (`bad-request`,
/// `upstream-timeout`), `client-closed` when the client left before an answer, or Pingora's
/// name of a transport error that produced no answer of ours (`ConnectRefused`).
fn error_name(e: &Error, ours: Option<&crate::error::GatewayError>) -> &'static str {
    if let Some(g) = ours {
        return g.kind();
    }
    match (e.etype(), crate::error::classify(e)) {
        (pingora::ErrorType::HTTPStatus(_), Some(g)) => g.kind(),
        (_, None) => "client-closed",
        (t, Some(_)) => t.as_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(r: &Record) -> (String, String) {
        let mut direct = Vec::new();
        r.write_json(&mut direct);
        (
            String::from_utf8(direct).unwrap(),
            serde_json::to_string(r).unwrap(),
        )
    }

    #[test]
    fn the_direct_writer_matches_serde() {
        let full = Record {
            time: now_rfc3339_millis(),
            request_id: "01a2-\"quoted\"",
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            client: Some("203.0.113.7".parse().unwrap()),
            consumer: Some("alice\u{1}"),
            auth_failure: Some("expired"),
            cache: Some("HIT"),
            transform: Some("not_json"),
            method: "GET",
            host: Some("api.example.com:8080"),
            path: "/a\\b?q=é".into(),
            protocol: "HTTP/1.1",
            route: Some("users"),
            upstream: Some("u"),
            target: Some("[2001:db8::1]:8443".parse().unwrap()),
            status: Some(200),
            bytes_in: 0,
            bytes_out: 18_446_744_073_709_551_615,
            duration_ms: 1.133,
            upstream_ms: Some(12.0),
            tries: 2,
            error: Some("ConnectTimedout".into()),
            fallback: None,
            fault: Some("delay"),
        };
        let (a, b) = both(&full);
        assert_eq!(a, b);
        let empty = Record {
            trace_id: None,
            client: Some("::1".parse().unwrap()),
            consumer: None,
            auth_failure: None,
            cache: None,
            transform: None,
            host: None,
            route: None,
            upstream: None,
            target: Some("127.0.0.1:80".parse().unwrap()),
            status: None,
            duration_ms: 0.0,
            upstream_ms: None,
            error: None,
            fallback: Some("circuit_open"),
            ..full
        };
        let (a, b) = both(&empty);
        assert_eq!(a, b);
        let none = Record {
            client: None,
            target: None,
            ..empty
        };
        let (a, b) = both(&none);
        assert_eq!(a, b);
    }
}
