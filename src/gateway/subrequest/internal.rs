//! Composites cached as a whole. Pingora's HTTP cache stores answers that come from an
//! upstream, and a composite is written by the gateway itself; so a composite route that lists
//! `cache` has the gateway as its upstream, on a Unix socket (`server.internal_sock`, mode
//! 0600, opened at start and handed over on upgrade with the other listening sockets).
//!
//! Its request (the outer one) runs routing, its plugins and the cache phases as on any route;
//! on a miss or a revalidation it is proxied to the socket with a handoff token (a per-process
//! secret and a random id). The request that arrives there (the inner one) takes over the
//! outer request's state (route, consumer, claims, route parameters, the request as its plugins
//! left it), runs the composite (calls, contract, merge) and answers the merged JSON without
//! routing, plugins or records. The outer request stores the answer (never a partial one),
//! runs the route's response plugins on it and records the request once, with the calls'
//! spans the inner request reported. A request on the socket without a live token is a 404.

use crate::error::GatewayError;
use crate::gateway::ctx::Ctx;
use crate::gateway::mode::{InnerSlot, Mode};
use crate::gateway::state::InnerHandoff;
use crate::snapshot::Route;
use http::HeaderName;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use std::time::{Duration, SystemTime};

/// The handoff token's field on the inner request.
static MARKER: HeaderName = HeaderName::from_static("postern-composite");

/// Whether a composite route's request goes through the cache and the internal socket. Not
/// once the process drains (upgrade or stop): its listeners, the internal socket among them,
/// no longer accept (after an upgrade the new process does, without this one's handoffs), so
/// composites are then answered directly, uncached.
pub(crate) fn applies(ctx: &Ctx, route: &Route) -> bool {
    route.caches_composite() && ctx.server.internal_socket().is_some() && !ctx.server.draining()
}

/// `upstream_peer` of a cached composite: the internal socket (the handoff is made on the
/// first try and kept for the next ones).
pub(crate) fn peer(session: &Session, ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
    let route = ctx.route()?;
    let (Some(path), Some(comp)) = (ctx.server.internal_socket(), route.composite()) else {
        return Err(ctx.fail(GatewayError::Internal));
    };
    let path = path.to_string();
    if ctx.attempt.handoff.is_none() {
        let handoff = InnerHandoff {
            header: session.req_header().clone(),
            req: ctx.req.clone(),
            route: route.clone(),
            captures: ctx.captures.clone(),
            client_host: ctx.client_host.clone(),
            report: InnerSlot::default(),
        };
        ctx.attempt.handoff = Some(ctx.server.state().hand_off(handoff));
    }
    ctx.attempt.tries += 1;
    let mut peer = HttpPeer::new_uds(&path, false, String::new())?;
    let o = &mut peer.options;
    o.connection_timeout = Some(Duration::from_secs(1));
    // The inner request ends the composite at its deadline; this only bounds a stuck socket.
    o.read_timeout = Some(comp.deadline + Duration::from_secs(5));
    o.write_timeout = Some(Duration::from_secs(10));
    o.idle_timeout = Some(Duration::from_secs(60));
    Ok(Box::new(peer))
}

/// `upstream_request_filter` of a cached composite: the handoff token.
pub(crate) fn mark(up: &mut RequestHeader, ctx: &Ctx) -> pingora::Result<()> {
    let Some(t) = &ctx.attempt.handoff else {
        return Ok(());
    };
    up.insert_header(MARKER.clone(), t.token())?;
    Ok(())
}

/// `upstream_response_filter` of a cached composite: a failed composite (5xx) is turned into
/// an error when the stored answer may be served instead (`stale_if_error`); otherwise its
/// problem+json goes to the client.
pub(crate) fn failed_answer(
    session: &Session,
    resp: &ResponseHeader,
) -> Option<Box<pingora::Error>> {
    let status = resp.status.as_u16();
    let stale_ok = session
        .cache
        .maybe_cache_meta()
        .is_some_and(|m| m.serve_stale_if_error(SystemTime::now()));
    if status < 500 || !stale_ok {
        return None;
    }
    let mut e = pingora::Error::explain(
        pingora::ErrorType::HTTPStatus(status),
        "composite failed: serving the stored answer",
    );
    e.esource = pingora::ErrorSource::Upstream;
    Some(e)
}

/// `error_while_proxy` of a cached composite: a pooled socket connection that was closed is
/// tried again on another (twice at most); nothing else is retried (the inner request ran
/// the calls with their own retries).
pub(crate) fn proxy_failed(ctx: &mut Ctx, e: &mut pingora::Error, reused: bool) {
    if crate::upstream::retry::is_stale_pooled(e, reused) && ctx.attempt.stale_tries < 2 {
        ctx.attempt.stale_tries += 1;
        e.set_retry(true);
    }
}

/// Whether this request arrived on the internal socket.
pub(crate) fn on_socket(session: &Session) -> bool {
    session.server_addr().is_some_and(|a| a.as_unix().is_some())
}

/// `early_request_filter` of a request on the internal socket: takes over the outer request's
/// state; a 404 without a live handoff token.
pub(crate) fn adopt(session: &mut Session, ctx: &mut Ctx) -> Result<(), GatewayError> {
    let token = session.req_header_mut().remove_header(&MARKER);
    let handoff = token
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|t| ctx.server.handoff(t))
        .ok_or(GatewayError::NoRoute)?;
    *session.req_header_mut() = handoff.header.clone();
    ctx.req = handoff.req.clone();
    ctx.route = Some(handoff.route.clone());
    ctx.captures = handoff.captures.clone();
    ctx.client_host = handoff.client_host.clone();
    ctx.mode = Mode::InnerComposite(handoff.report.clone());
    Ok(())
}

/// In the outer request's `logging`: what the inner request reported.
pub(crate) fn merge_report(ctx: &mut Ctx) {
    let Some(t) = ctx.attempt.handoff.take() else {
        return;
    };
    let Some(r) = t.report.lock().take() else {
        return;
    };
    ctx.timing.call_spans = r.spans;
    if ctx.failure.is_none() {
        ctx.failure = r.failure;
    }
}
