//! The response side: the header sent to the client (from the upstream, the cache or a
//! plugin's reply).

use super::ctx::Ctx;
use super::{body, forward};
use crate::error::GatewayError;
use crate::plugins::Oversize;
use crate::reply::Reply;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// `response_filter`: hop-by-hop fields out, `X-Request-Id` in, cache status fields, then the
/// route's plugins (in reverse order).
pub(super) fn header(
    session: &mut Session,
    resp: &mut ResponseHeader,
    ctx: &mut Ctx,
) -> pingora::Result<()> {
    forward::clean_response(resp);
    if ctx.server.draining() {
        session.set_keepalive(None);
    }
    if let Some(id) = ctx.req.request_id.header_value() {
        let preserve = ctx.snap.limits.preserve_header_case || resp.status.as_u16() == 101;
        forward::set_response_field(resp, forward::REQUEST_ID, id, preserve);
    }
    ctx.req.status = Some(resp.status.as_u16());
    let route = ctx.route()?;
    if let Some(policy) = &route.cache {
        let phase = session.cache.phase();
        crate::cache::response_headers(policy, &phase, session.cache.maybe_cache_meta(), resp);
        ctx.cache.status = Some(crate::cache::outcome(&phase));
    }
    if let (true, Some(i), Some(split)) = (ctx.attempt.set_cookie, ctx.attempt.split, &route.split)
    {
        if let Some(v) = split.cookie_value(i) {
            resp.append_header(http::header::SET_COOKIE, v)?;
        }
    }
    route
        .chain
        .on_response(resp, &mut ctx.req)
        .map_err(|e| ctx.fail(e))?;
    start_body(session, resp, ctx, false)?;
    if route.compression.is_some() && !ctx.mode.is_subrequest() {
        start_compression(session.req_header(), resp, ctx);
    }
    Ok(())
}

/// Compression of the response to the client, when the route has it: `Vary: Accept-Encoding`
/// on every response that could be compressed, the encoder when this client accepts a coding.
pub(super) fn start_compression(
    req: &pingora::http::RequestHeader,
    resp: &mut ResponseHeader,
    ctx: &mut Ctx,
) {
    let Some(policy) = ctx.route.as_ref().and_then(|r| r.compression.clone()) else {
        return;
    };
    if !policy.eligible(resp, req.method == http::Method::HEAD) {
        return;
    }
    crate::plugins::compression::vary(resp);
    let accept = crate::plugins::compression::accept_encoding(req);
    if let Some((coding, level)) = policy.choose(accept) {
        ctx.bodies.encoder = crate::plugins::compression::Encoder::start(coding, level, resp);
    }
}

/// The compressed form of a chunk about to be sent, when the response is compressed.
pub(super) fn compress(ctx: &mut Ctx, chunk: &mut Option<bytes::Bytes>, eos: bool) {
    if let Some(enc) = ctx.bodies.encoder.as_mut() {
        let out = enc.encode(chunk.as_deref(), eos);
        *chunk = out.filter(|b| !b.is_empty() || eos);
    }
}

/// Sets up the response-body plugins of one stage (`stored`: before the cache stores the
/// answer, in `upstream_response_filter`; otherwise as it is served) for this response, and
/// gives the header of the changed body. A body longer than a whole-body plugin's limit, known
/// from Content-Length, passes untransformed or is a 502, as the plugin says.
pub(super) fn start_body(
    session: &Session,
    resp: &mut ResponseHeader,
    ctx: &mut Ctx,
    stored: bool,
) -> pingora::Result<()> {
    // Most routes have no body plugin: decided without touching the route's refcount. A
    // deferred response's served stage runs in the main request (`deferred`).
    if (!stored && ctx.mode.is_subrequest())
        || ctx
            .route
            .as_ref()
            .is_none_or(|r| r.chain.response_body(stored).is_empty())
    {
        return Ok(());
    }
    let route = ctx.route()?;
    let candidates = route.chain.response_body(stored);
    let head = session.req_header().method == http::Method::HEAD;
    let takers = body::response_takers(candidates, head, resp, &mut ctx.req, &ctx.snap.metrics);
    let Some(stage) = body::BodyStage::new(body::Side::Response, takers, &ctx.snap.metrics) else {
        return Ok(());
    };
    if let (Some(max), Some(len)) = (stage.limit(), body::content_length(resp)) {
        if len > max {
            ctx.req
                .transform_failed(&ctx.snap.metrics, "response", "oversize");
            return match stage.oversize() {
                Oversize::Pass => Ok(()),
                Oversize::Error => Err(ctx.fail(GatewayError::BadGateway)),
            };
        }
    }
    body::changed_body_header(resp);
    if stored {
        ctx.bodies.stored = Some(stage);
    } else {
        ctx.bodies.served = Some(stage);
    }
    Ok(())
}

/// `upstream_response_body_filter` (`stored`) and `response_body_filter`.
pub(super) fn body(
    ctx: &mut Ctx,
    chunk: &mut Option<bytes::Bytes>,
    eos: bool,
    stored: bool,
) -> pingora::Result<()> {
    let stage = if stored {
        ctx.bodies.stored.as_mut()
    } else {
        ctx.bodies.served.as_mut()
    };
    if stage.is_none() && (stored || ctx.bodies.encoder.is_none()) {
        return Ok(());
    }
    if let Some(stage) = stage {
        let result = stage.filter(chunk, eos, &mut ctx.req, None);
        result.map_err(|e| ctx.fail(e))?;
    }
    if !stored {
        compress(ctx, chunk, eos);
    }
    Ok(())
}

/// Writes a plugin's reply, after the route's response hooks.
pub(super) async fn send_reply(
    session: &mut Session,
    ctx: &mut Ctx,
    reply: Reply,
) -> pingora::Result<bool> {
    let route = ctx.route()?;
    let reply = with_error_page(reply, &route, &ctx.req.request_id);
    let mut h = ResponseHeader::build(reply.status, Some(reply.headers.len() + 2))?;
    for (n, v) in reply.headers {
        h.append_header(n, v)?;
    }
    // RFC 9110 §8.6: no Content-Length on a 204 (or a 1xx); a 304 has none of its own.
    if !matches!(reply.status, 100..=199 | 204 | 304) {
        h.insert_header("content-length", reply.body.len().to_string())?;
    }
    if let Some(id) = ctx.req.request_id.header_value() {
        h.insert_header(forward::REQUEST_ID, id)?;
    }
    ctx.req.status = Some(reply.status);
    route
        .chain
        .on_response(&mut h, &mut ctx.req)
        .map_err(|e| ctx.fail(e))?;
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(reply.body), true).await?;
    Ok(true)
}

/// `fail_to_proxy` on a route with a `fallback` that covers why its upstream failed: the
/// static answer instead of the error (through the route's response plugins). `None`: no
/// fallback applies, the error is answered.
pub(super) async fn fallback(
    session: &mut Session,
    ctx: &mut Ctx,
    e: &pingora::Error,
) -> Option<pingora::proxy::FailToProxy> {
    use crate::upstream::fallback::Reason;
    if ctx.mode.is_subrequest() || session.response_written().is_some() {
        return None;
    }
    let route = ctx.route.clone()?;
    let fb = route.fallback.as_ref()?;
    let reason = Reason::of(ctx.failure.as_ref(), e).filter(|r| fb.covers(*r))?;
    crate::observability::metrics::fallback(&ctx.snap.metrics, &route.name, reason.name());
    ctx.fallback = Some(reason.name());
    let sent = send_reply(session, ctx, fb.reply()).await.is_ok();
    Some(pingora::proxy::FailToProxy {
        error_code: fb.status,
        can_reuse_downstream: sent && session.is_body_empty(),
    })
}

/// A plugin's problem+json error (401, 403, 429...) with the route's error page as body, when
/// one matches its status.
fn with_error_page(
    mut reply: Reply,
    route: &crate::snapshot::Route,
    request_id: &crate::context::RequestId,
) -> Reply {
    use http::header::CONTENT_TYPE;
    let problem = reply
        .headers
        .iter()
        .any(|(k, v)| k == CONTENT_TYPE && v == "application/problem+json");
    if !problem || !route.errors.covers(reply.status) {
        return reply;
    }
    let p: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
    let text = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let (title, detail) = (text("title"), text("detail"));
    let Some((ct, body)) = route.errors.render(&crate::error_pages::Fill {
        status: reply.status,
        title: &title,
        detail: &detail,
        request_id: request_id.as_str(),
        route: &route.name,
    }) else {
        return reply;
    };
    for (k, v) in reply.headers.iter_mut() {
        if *k == CONTENT_TYPE {
            *v = ct.clone();
        }
    }
    reply.body = body;
    reply
}
