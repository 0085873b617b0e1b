//! Finding the route of a request.

use super::ctx::Ctx;
use super::forward;
use crate::error::GatewayError;
use crate::http::checks;
use crate::router::{path::normalize, RequestView};
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
