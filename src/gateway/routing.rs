//! Finding the route of a request, and writing a plugin's own reply.

use super::checks;
use super::forward;
use super::{fail, Ctx};
use crate::error::GatewayError;
use crate::plugins::Reply;
use crate::router::{path::normalize, RequestView};
use crate::snapshot::Route;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use std::borrow::Cow;

/// Normalizes the path, finds the route and records it in `ctx`.
pub(super) fn route_request(session: &mut Session, ctx: &mut Ctx) -> Result<(), GatewayError> {
    let path = session.req_header().uri.path();
    let normalized =
        normalize(path).map_err(|_| GatewayError::BadRequest("The request path is invalid."))?;
    if let Cow::Owned(p) = normalized {
        forward::set_path(session.req_header_mut(), &p);
    }
    let req = session.req_header();
    ctx.client_host = forward::client_host(req);
    let view = RequestView {
        method: &req.method,
        host: ctx.host(),
        path: req.uri.path(),
        headers: &req.headers,
        query: req.uri.query(),
    };
    let found = ctx.snap.router.find(&view).ok_or(GatewayError::NoRoute)?;
    let route = found.value.clone();
    let path = req.uri.path();
    ctx.req.params = route
        .param_names
        .iter()
        .zip(&found.captures.params)
        .map(|(n, (s, e))| (n.clone(), path[*s as usize..*e as usize].to_string()))
        .collect();
    ctx.captures = found.captures;
    ctx.req.route = route.name.clone();
    if checks::content_length(req).is_some_and(|len| len > route.max_body) {
        ctx.route = Some(route);
        return Err(GatewayError::PayloadTooLarge);
    }
    ctx.route = Some(route);
    Ok(())
}

/// Writes a plugin's reply, after the route's response hooks.
pub(super) async fn send_reply(
    session: &mut Session,
    ctx: &mut Ctx,
    route: &Route,
    reply: Reply,
) -> pingora::Result<()> {
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
        .map_err(|e| fail(ctx, e))?;
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(reply.body), true).await
}
