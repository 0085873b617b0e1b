//! The Pingora `ProxyHttp` implementation. Each phase only dispatches: the request side is in
//! `request`, routing in `routing`, the upstream side (targets, retries) in `attempt`, the
//! cache phases in `caching`, the response side in `response`, the report of a finished request
//! in `records`, and every error response in `error::respond`.

mod attempt;
mod body;
mod caching;
mod ctx;
pub mod forward;
mod mode;
mod records;
mod request;
mod response;
mod routing;
pub mod state;
mod subrequest;

use subrequest::{calls, composite, deferred, internal};

pub use ctx::Ctx;

use crate::observability::access_log::AccessLog;
use crate::reply::Flow;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::Error;
use std::sync::Arc;

/// One proxy service (one listener) of the gateway.
pub struct Gateway {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub tls: bool,
    pub access_log: Option<AccessLog>,
    /// OTLP span export, when configured.
    pub spans: Option<crate::observability::otlp::Exporter>,
    /// Something reads request durations (metrics, access log or spans).
    pub timed: bool,
    /// What every proxy service of this server shares (owned by the server).
    pub state: Arc<state::ServerState>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.snapshot.load_full(), self.timed, &self.state)
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if session.subrequest_ctx.is_some()
            && (deferred::adopt(session, ctx) || calls::adopt(session, ctx))
        {
            return Ok(());
        }
        if internal::on_socket(session) {
            return internal::adopt(session, ctx).map_err(|e| ctx.fail(e));
        }
        request::arrive(self, session, ctx).map_err(|e| ctx.fail(e))
    }

    /// Deferred responses (see `deferred`) and a composite's calls (see `aggregate`) are served
    /// through subrequests.
    fn allow_spawning_subrequest(&self, session: &Session, ctx: &Ctx) -> bool {
        ctx.snap.defers && session.subrequest_ctx.is_none()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        if ctx.mode.is_inner() {
            return composite::serve(session, ctx).await;
        }
        if ctx.mode.is_subrequest() {
            return Ok(false);
        }
        routing::route_request(session, ctx).map_err(|e| ctx.fail(e))?;
        let route = ctx.route()?;
        match route
            .chain
            .on_request(session.req_header_mut(), &mut ctx.req)
            .await
        {
            Ok(Flow::Continue) if route.composite().is_some() => {
                if !internal::applies(ctx, &route) {
                    composite::serve(session, ctx).await
                } else if deferred::applies(session, ctx) {
                    deferred::serve(session, ctx).await
                } else {
                    // Through the cache; a miss is answered by the internal socket.
                    Ok(false)
                }
            }
            Ok(Flow::Continue) if deferred::applies(session, ctx) => {
                request::admit(session, ctx, true).await?;
                deferred::serve(session, ctx).await
            }
            Ok(Flow::Continue) => request::admit(session, ctx, false).await.map(|()| false),
            Ok(Flow::Respond(reply)) => response::send_reply(session, ctx, reply).await,
            Err(e) => Err(ctx.fail(e)),
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<()> {
        caching::enable(session, ctx);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> pingora::Result<CacheKey> {
        caching::key(session, ctx)
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<RespCacheable> {
        Ok(caching::storable(resp, ctx))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        crate::cache::vary(meta, req)
    }

    fn should_serve_stale(&self, _s: &mut Session, _ctx: &mut Ctx, error: Option<&Error>) -> bool {
        caching::serve_stale(error)
    }

    async fn request_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        eos: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        request::body(ctx, body, eos)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        attempt::peer(session, ctx).await
    }

    fn fail_to_connect(
        &self,
        _s: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        attempt::connect_failed(ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        reused: bool,
    ) -> Box<Error> {
        attempt::proxy_failed(
            session,
            ctx,
            e.more_context(format!("Peer: {peer}")),
            reused,
        )
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        attempt::upstream_request(self, session, up, ctx)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        attempt::upstream_response(session, resp, ctx)
    }

    fn upstream_response_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        eos: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<Option<std::time::Duration>> {
        response::body(ctx, body, eos, true).map(|()| None)
    }

    fn response_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        eos: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<Option<std::time::Duration>> {
        response::body(ctx, body, eos, false).map(|()| None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        response::header(session, resp, ctx)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        if let Some(answer) = response::fallback(session, ctx, e).await {
            return answer;
        }
        let pages = match &ctx.route {
            Some(r) => (&*r.errors, &*r.name),
            None => (&*ctx.snap.errors, ""),
        };
        let pages = (!pages.0.is_empty()).then_some(pages);
        let answer =
            crate::error::respond(session, ctx.failure.clone(), e, &ctx.req.request_id, pages)
                .await;
        ctx.req.status = Some(answer.error_code);
        answer
    }

    /// Client errors Postern answers itself (404, 400, 413, 431), clients that went away and
    /// requests refused by an open circuit breaker (its transitions are logged once each) are
    /// expected traffic, not gateway faults: keep them out of the error log.
    fn suppress_error_log(&self, _s: &Session, ctx: &Ctx, e: &Error) -> bool {
        // A composite's call that failed is an outcome the composite handles (a partial
        // answer, or its own 502 listing the failures) and counts
        // (`postern_aggregate_calls_total`): not an error of its own.
        if ctx.mode.is_composite_call() {
            log::debug!("route {}: composite call failed: {e}", ctx.req.route);
            return true;
        }
        ctx.req.status.is_some_and(|s| s < 500)
            || matches!(
                ctx.failure,
                Some(crate::error::GatewayError::CircuitOpen { .. })
            )
    }

    /// A failed try that is retried is not a failed request: retries are counted in
    /// `postern_upstream_retries_total` and the access log's `tries`; the detail goes to the
    /// debug log instead of a warning per try.
    fn suppress_proxy_warn_log(
        &self,
        _s: &Session,
        _ctx: &Ctx,
        e: &Error,
        at: ProxyWarnLogContext,
    ) -> bool {
        let retry = matches!(at, ProxyWarnLogContext::UpstreamRetry);
        if retry {
            log::debug!("retrying after: {e}");
        }
        retry
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        records::finish(self, session, ctx, e);
    }
}
