//! The client side of a request: connection facts and limits when it arrives, and what is set
//! on it once its route's plugins let it through.

use super::ctx::Ctx;
use super::{forward, Gateway};
use crate::context::{ClientCert, ConnInfo};
use crate::error::GatewayError;
use crate::http::checks;
use crate::observability::trace::TraceContext;
use pingora::proxy::Session;
use std::sync::Arc;

/// `early_request_filter`: framing checks, connection limits, the facts plugins read (client,
/// TLS, request id, trace) and the request checks of RFC 9110/9112.
pub(super) fn arrive(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut Ctx,
) -> Result<(), GatewayError> {
    let h2 = session.is_http2();
    if !h2 && checks::had_cl_and_te(session.req_header(), session.get_keepalive()) {
        return Err(GatewayError::BadRequest(
            "The request has both Content-Length and Transfer-Encoding.",
        ));
    }
    set_connection_limits(session, ctx);
    let inet = session.client_addr().and_then(|a| a.as_inet());
    ctx.req.conn = ConnInfo {
        client_ip: inet.map(|a| a.ip()),
        client_port: inet.map_or(0, |a| a.port()),
        tls: gw.tls,
        client_cert: gw.tls.then(|| client_cert(session)).flatten(),
        sni: None,
        http2: h2,
    };
    let req = session.req_header();
    let limits = &ctx.snap.limits;
    ctx.cache.had_authorization = req.headers.contains_key(http::header::AUTHORIZATION);
    ctx.req.client_ip =
        crate::auth::client_ip(ctx.req.conn.client_ip, req, &limits.trusted_proxies);
    if limits.request_id {
        ctx.req.request_id = forward::request_id(req);
    }
    if limits.trace {
        start_trace(gw, req, ctx);
    }
    checks::drop_underscored_framing(session.req_header_mut());
    checks::check(session.req_header(), h2, &ctx.snap.limits)
}

/// Bounds the idle time of connections Pingora keeps alive (its default is infinite), leaves
/// closed the ones the client or HTTP/1.0 asked to close, and sets the client I/O timeouts.
fn set_connection_limits(session: &mut Session, ctx: &Ctx) {
    let limits = &ctx.snap.limits;
    if ctx.server.draining() {
        session.set_keepalive(None);
    } else if session.get_keepalive().is_some() {
        session.set_keepalive(Some(limits.keepalive.as_secs().max(1)));
    }
    session.set_read_timeout(Some(limits.client_read));
    session.set_write_timeout(Some(limits.client_write));
}

fn client_cert(session: &Session) -> Option<Arc<ClientCert>> {
    session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .and_then(|s| s.extension.get::<Arc<ClientCert>>())
        .cloned()
}

fn start_trace(gw: &Gateway, req: &pingora::http::RequestHeader, ctx: &mut Ctx) {
    let incoming = req
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let sample = || gw.spans.as_ref().is_some_and(|e| e.sample());
    ctx.req.trace = Some(incoming.unwrap_or_else(|| TraceContext::new_root_sampled(sample())));
    ctx.timing.started_unix = crate::observability::otlp::unix_nanos();
}

/// After the route's plugins let the request through: the forwarding fields (set on the
/// client's request header, which Pingora clones for each upstream attempt: done once per
/// request), then the first chunk of a chunked body (see [`checks::read_first_chunk`]).
/// A `deferred` request's body is read by `deferred::serve`, which checks its framing.
pub(super) async fn admit(
    session: &mut Session,
    ctx: &mut Ctx,
    deferred: bool,
) -> pingora::Result<()> {
    let limits = &ctx.snap.limits;
    let fields = forward::forwarding_fields(
        session.req_header(),
        &ctx.req,
        ctx.client_host.as_ref(),
        &limits.forwarded,
    );
    forward::set_fields(
        session.req_header_mut(),
        fields,
        limits.preserve_header_case,
    );
    if ctx
        .route
        .as_ref()
        .is_some_and(|r| !r.chain.request_body().is_empty())
    {
        body_plugins(session, ctx).await?;
        if ctx.bodies.request_ready.is_some() {
            return Ok(());
        }
    }
    mirror(session, ctx);
    if deferred {
        return Ok(());
    }
    match checks::read_first_chunk(session).await {
        Ok(()) => Ok(()),
        Err(checks::FirstChunk::Invalid) => Err(ctx.fail(GatewayError::BadRequest(
            "The chunked body framing is invalid.",
        ))),
        Err(checks::FirstChunk::Gone(e)) => Err(e),
    }
}

/// The route's `mirror`: a copy of the request as the upstream gets it, sent now when it has
/// no body (or its body was read already), else once the body has streamed (see [`body`]).
fn mirror(session: &Session, ctx: &mut Ctx) {
    let Some(route) = ctx.route.as_ref() else {
        return;
    };
    let Some(m) = route.mirror.as_ref().filter(|m| m.draw()) else {
        return;
    };
    let req = session.req_header();
    let mut head = req.clone();
    if let Some(p) = forward::upstream_path(route, req.uri.path(), &ctx.captures) {
        forward::set_path(&mut head, &p);
    }
    let mut cap = m.capture(head, ctx.req.client_ip);
    let h = &req.headers;
    let bodyless = !h.contains_key(http::header::TRANSFER_ENCODING)
        && h.get(http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
    match (&ctx.bodies.request_ready, bodyless) {
        (Some(ready), _) => {
            m.add(&mut cap, ready);
            m.send(cap);
        }
        (None, true) => m.send(cap),
        (None, false) => ctx.mirror = Some(Box::new(cap)),
    }
}

/// Largest body read whole before an upstream is chosen: what Pingora's retry buffer holds
/// (the bytes read early are sent from it).
const READ_AHEAD: usize = 64 << 10;

/// The request-body plugins that take this request. A whole-body plugin's limit is checked
/// against Content-Length first (413, nothing sent upstream); a body of known length up to
/// 64 KiB is read and transformed right here, so that a bad body is answered before any
/// upstream is called. Longer or chunked bodies are transformed as they stream upstream.
async fn body_plugins(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<()> {
    let route = ctx.route()?;
    let req = session.req_header();
    let length = checks::content_length(req);
    let chunked = req.headers.contains_key(http::header::TRANSFER_ENCODING);
    if session.is_http2() || (length.unwrap_or(0) == 0 && !chunked) {
        return Ok(());
    }
    let takers: Vec<_> = route
        .chain
        .request_body()
        .iter()
        .filter(|p| p.takes_request_body(session.req_header_mut(), &mut ctx.req))
        .cloned()
        .collect();
    let Some(mut stage) =
        super::body::BodyStage::new(super::body::Side::Request, takers, &ctx.snap.metrics)
    else {
        return Ok(());
    };
    if let (Some(max), Some(len)) = (stage.limit(), length) {
        if len > max as u64 {
            return Err(ctx.fail(GatewayError::PayloadTooLarge));
        }
        if len <= READ_AHEAD as u64 {
            let whole = read_whole(session, ctx).await?;
            let mut body = Some(whole);
            stage
                .filter(&mut body, true, &mut ctx.req, None)
                .map_err(|e| ctx.fail(e))?;
            ctx.bodies.request_ready = Some(body.unwrap_or_default());
            return Ok(());
        }
    }
    ctx.bodies.request = Some(stage);
    Ok(())
}

/// The whole request body (its length was checked to fit the read-ahead).
async fn read_whole(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bytes::Bytes> {
    session.as_downstream_mut().enable_retry_buffering();
    let mut all = bytes::BytesMut::new();
    while let Some(chunk) = session.as_downstream_mut().read_request_body().await? {
        all.extend_from_slice(&chunk);
        if all.len() > READ_AHEAD {
            return Err(ctx.fail(GatewayError::BadRequest(
                "The request body is longer than its Content-Length.",
            )));
        }
    }
    Ok(all.freeze())
}

/// `request_body_filter`: the route's body size limit on bodies without (or beyond) a
/// Content-Length, then the body plugins: the body transformed before proxying replaces the
/// client's, or the streaming stage runs.
pub(super) fn body(
    ctx: &mut Ctx,
    chunk: &mut Option<bytes::Bytes>,
    eos: bool,
) -> pingora::Result<()> {
    ctx.body_bytes += chunk.as_ref().map_or(0, |b| b.len() as u64);
    if ctx
        .route
        .as_ref()
        .is_some_and(|r| ctx.body_bytes > r.max_body)
    {
        return Err(ctx.fail(GatewayError::PayloadTooLarge));
    }
    if let Some(mut cap) = ctx.mirror.take() {
        if let Some(m) = ctx.route.as_ref().and_then(|r| r.mirror.as_ref()) {
            m.add(&mut cap, chunk.as_deref().unwrap_or_default());
            match eos {
                true => m.send(*cap),
                false => ctx.mirror = Some(cap),
            }
        }
    }
    if let Some(ready) = &ctx.bodies.request_ready {
        // Everything was read before proxying: Pingora sends it from its retry buffer in one
        // piece (again on a retry), which becomes the transformed body.
        *chunk = Some(ready.clone());
        return Ok(());
    }
    let Some(stage) = ctx.bodies.request.as_mut() else {
        return Ok(());
    };
    let result = stage.filter(chunk, eos, &mut ctx.req, Some(bytes::Bytes::new()));
    result.map_err(|e| ctx.fail(e))
}
