//! The response side: the header sent to the client (from the upstream, the cache or a
//! plugin's reply).

use super::ctx::Ctx;
use super::{draining, forward};
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
    if draining() {
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
    route
        .chain
        .on_response(resp, &mut ctx.req)
        .map_err(|e| ctx.fail(e))
}

/// Writes a plugin's reply, after the route's response hooks.
pub(super) async fn send_reply(
    session: &mut Session,
    ctx: &mut Ctx,
    reply: Reply,
) -> pingora::Result<bool> {
    let route = ctx.route()?;
    let mut h = ResponseHeader::build(reply.status, Some(reply.headers.len() + 2))?;
    for (n, v) in reply.headers {
        h.append_header(n, v)?;
    }
    h.insert_header("content-length", reply.body.len().to_string())?;
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
