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

use super::ctx::Ctx;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::router::Captures;
use crate::snapshot::Route;
use http::{HeaderName, HeaderValue};
use parking_lot::Mutex;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, SystemTime};

/// The handoff token's field on the inner request.
static MARKER: HeaderName = HeaderName::from_static("postern-composite");

/// The socket's path, once the listener is added (at start).
static SOCKET: OnceLock<String> = OnceLock::new();

/// Handoffs of the outer requests being answered through the socket, by id.
static HANDOFFS: LazyLock<Mutex<HashMap<u64, Arc<Handoff>>>> = LazyLock::new(Mutex::default);

/// Records that this process listens on the internal socket at `path`.
pub fn listen(path: &str) {
    let _ = SOCKET.set(path.to_string());
}

/// Whether the internal socket is open (a composite route's `cache` added by a reload to a
/// process started without it is not applied: those composites are answered uncached).
pub fn listening() -> bool {
    SOCKET.get().is_some()
}

/// What the inner request tells the outer one (before it writes its answer).
#[derive(Default)]
pub(super) struct InnerReport {
    pub failure: Option<GatewayError>,
    pub spans: Vec<super::aggregate::CallSpan>,
}

pub(super) type InnerSlot = Arc<Mutex<Option<InnerReport>>>;

/// The outer request's state, for its inner request.
struct Handoff {
    header: RequestHeader,
    req: RequestCtx,
    route: Arc<Route>,
    captures: Captures,
    client_host: Option<HeaderValue>,
    report: InnerSlot,
}

/// An outer request's handoff: removed from the table when the request ends.
pub(super) struct Ticket {
    id: u64,
    report: InnerSlot,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        HANDOFFS.lock().remove(&self.id);
    }
}

/// Whether a composite route's request goes through the cache and the internal socket. Not
/// once the process drains (upgrade or stop): its listeners, the internal socket among them,
/// no longer accept (after an upgrade the new process does, without this one's handoffs), so
/// composites are then answered directly, uncached.
pub(super) fn applies(route: &Route) -> bool {
    route.caches_composite() && listening() && !super::draining()
}

/// `upstream_peer` of a cached composite: the internal socket (the handoff is made on the
/// first try and kept for the next ones).
pub(super) fn peer(session: &Session, ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
    let route = ctx.route()?;
    let (Some(path), Some(comp)) = (SOCKET.get(), route.composite()) else {
        return Err(ctx.fail(GatewayError::Internal));
    };
    if ctx.ticket.is_none() {
        let report = InnerSlot::default();
        let handoff = Handoff {
            header: session.req_header().clone(),
            req: ctx.req.clone(),
            route: route.clone(),
            captures: ctx.captures.clone(),
            client_host: ctx.client_host.clone(),
            report: report.clone(),
        };
        let id = loop {
            let id: u64 = rand::random();
            let mut table = HANDOFFS.lock();
            if let std::collections::hash_map::Entry::Vacant(e) = table.entry(id) {
                e.insert(Arc::new(handoff));
                break id;
            }
        };
        ctx.ticket = Some(Ticket { id, report });
    }
    ctx.attempt.tries += 1;
    let mut peer = HttpPeer::new_uds(path, false, String::new())?;
    let o = &mut peer.options;
    o.connection_timeout = Some(Duration::from_secs(1));
    // The inner request ends the composite at its deadline; this only bounds a stuck socket.
    o.read_timeout = Some(comp.deadline + Duration::from_secs(5));
    o.write_timeout = Some(Duration::from_secs(10));
    o.idle_timeout = Some(Duration::from_secs(60));
    Ok(Box::new(peer))
}

/// `upstream_request_filter` of a cached composite: the handoff token.
pub(super) fn mark(up: &mut RequestHeader, ctx: &Ctx) -> pingora::Result<()> {
    let Some(t) = &ctx.ticket else {
        return Ok(());
    };
    let token = format!("{}.{:016x}", super::calls::secret(), t.id);
    up.insert_header(MARKER.clone(), token)?;
    Ok(())
}

/// `upstream_response_filter` of a cached composite: a failed composite (5xx) is turned into
/// an error when the stored answer may be served instead (`stale_if_error`); otherwise its
/// problem+json goes to the client.
pub(super) fn failed_answer(
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
pub(super) fn proxy_failed(ctx: &mut Ctx, e: &mut pingora::Error, reused: bool) {
    if crate::upstream::retry::is_stale_pooled(e, reused) && ctx.attempt.stale_tries < 2 {
        ctx.attempt.stale_tries += 1;
        e.set_retry(true);
    }
}

/// Whether this request arrived on the internal socket.
pub(super) fn on_socket(session: &Session) -> bool {
    session.server_addr().is_some_and(|a| a.as_unix().is_some())
}

/// `early_request_filter` of a request on the internal socket: takes over the outer request's
/// state; a 404 without a live handoff token.
pub(super) fn adopt(session: &mut Session, ctx: &mut Ctx) -> Result<(), GatewayError> {
    let token = session.req_header_mut().remove_header(&MARKER);
    let handoff = token
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(find)
        .ok_or(GatewayError::NoRoute)?;
    *session.req_header_mut() = handoff.header.clone();
    ctx.req = handoff.req.clone();
    ctx.route = Some(handoff.route.clone());
    ctx.captures = handoff.captures.clone();
    ctx.client_host = handoff.client_host.clone();
    ctx.inner = Some(handoff.report.clone());
    Ok(())
}

fn find(token: &str) -> Option<Arc<Handoff>> {
    let (secret, id) = token.split_once('.')?;
    if secret != super::calls::secret() {
        return None;
    }
    let id = u64::from_str_radix(id, 16).ok()?;
    HANDOFFS.lock().get(&id).cloned()
}

/// In the outer request's `logging`: what the inner request reported.
pub(super) fn merge_report(ctx: &mut Ctx) {
    let Some(t) = ctx.ticket.take() else {
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
