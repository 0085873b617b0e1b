//! The Pingora `ProxyHttp` implementation. Each phase only dispatches: routing is in `router`,
//! target choice and retries in `upstream`, request rules in `checks` and `forward`, features in
//! `plugins`, and every error response in `error`.

pub mod checks;
pub mod forward;
pub mod head_deadline;
mod records;
mod routing;

use crate::context::{ConnInfo, RequestCtx};
use crate::error::{classify, GatewayError};
use crate::observability::access_log::AccessLog;
use crate::observability::metrics::{observe_method, METRICS};
use crate::observability::trace::TraceContext;
use crate::plugins::Flow;
use crate::router::Captures;
use crate::snapshot::{Route, Snapshot};
use crate::upstream::target::{InflightGuard, TargetState};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, RetryType};
use records::{access_record, export_spans};
use routing::{route_request, send_reply};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Tries on closed pooled connections allowed per request, beyond `retry.attempts`.
const MAX_STALE_TRIES: u32 = 3;

static DRAINING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on every response closes its client connection (graceful upgrade or stop).
pub fn start_draining() {
    DRAINING.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn draining() -> bool {
    DRAINING.load(std::sync::atomic::Ordering::Relaxed)
}

/// One proxy service (one listener) of the gateway.
pub struct Gateway {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub tls: bool,
    pub access_log: Option<AccessLog>,
    /// OTLP span export, when configured.
    pub spans: Option<crate::observability::otlp::Exporter>,
    /// Something reads request durations (metrics, access log or spans).
    pub timed: bool,
}

/// Pingora's per-request context: the plugin view plus what only the gateway touches.
pub struct Ctx {
    pub req: RequestCtx,
    snap: Arc<Snapshot>,
    route: Option<Arc<Route>>,
    captures: Captures,
    /// The Host the client addressed (see `forward::client_host`).
    client_host: Option<HeaderValue>,
    target: Option<Arc<TargetState>>,
    _inflight: Option<InflightGuard>,
    tried: smallvec::SmallVec<[SocketAddr; 2]>,
    /// Attempts made, as `retry.attempts` counts them (a closed pooled connection is not one).
    tries: u32,
    /// Tries that failed on a pooled connection the target had already closed.
    stale_tries: u32,
    /// The next try opens a new connection instead of taking a pooled one.
    fresh: bool,
    body_bytes: u64,
    failure: Option<GatewayError>,
    /// Start of the request; `None` when nothing reads durations (no metrics, access log or
    /// span export): each clock read costs about as much as routing a request.
    started: Option<Instant>,
    upstream_started: Option<Instant>,
    upstream_secs: Option<f64>,
    /// The client sent `Authorization` (before any plugin stripped it): RFC 9111 §3.5.
    had_authorization: bool,
    /// How the cache answered (`HIT`, `MISS`, ...), on cached routes.
    cache_status: Option<&'static str>,
    /// The fields of a 304 that revalidated a stored response (merged in `response_cache_filter`).
    not_modified: Option<Box<http::HeaderMap>>,
    /// Start of the request on the Unix clock (for exported spans).
    started_unix: u64,
    /// Upstream calls of a sampled trace: span id, target, start and end (Unix ns).
    client_spans: Vec<ClientSpan>,
    _counted: InFlight,
}

/// One upstream call of a sampled trace: span id, target, start and end (Unix ns).
type ClientSpan = ([u8; 8], Option<SocketAddr>, u64, Option<u64>);

/// Requests whose context is alive, in this process (for the exit once a stop is idle).
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Requests being served now.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(std::sync::atomic::Ordering::SeqCst)
}

/// Counts a request (and in `postern_http_requests_in_flight`) for as long as its context lives.
struct InFlight;

impl InFlight {
    fn new() -> InFlight {
        IN_FLIGHT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(m) = METRICS.as_ref() {
            m.in_flight.inc();
        }
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(m) = METRICS.as_ref() {
            m.in_flight.dec();
        }
    }
}

impl Ctx {
    /// The Host the client addressed, as text.
    fn host(&self) -> Option<&str> {
        self.client_host.as_ref().and_then(|h| h.to_str().ok())
    }
}

fn fail(ctx: &mut Ctx, e: GatewayError) -> Box<Error> {
    let p = e.clone().into_pingora();
    ctx.failure = Some(e);
    p
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            req: RequestCtx::default(),
            snap: self.snapshot.load_full(),
            route: None,
            captures: Captures::default(),
            client_host: None,
            target: None,
            _inflight: None,
            tried: smallvec::SmallVec::new(),
            tries: 0,
            stale_tries: 0,
            fresh: false,
            body_bytes: 0,
            failure: None,
            started: self.timed.then(Instant::now),
            upstream_started: None,
            upstream_secs: None,
            had_authorization: false,
            cache_status: None,
            not_modified: None,
            started_unix: 0,
            client_spans: Vec::new(),
            _counted: InFlight::new(),
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let limits = &ctx.snap.limits;
        let h2 = session.is_http2();
        if !h2 && checks::had_cl_and_te(session.req_header(), session.get_keepalive()) {
            return Err(fail(
                ctx,
                GatewayError::BadRequest(
                    "The request has both Content-Length and Transfer-Encoding.",
                ),
            ));
        }
        // Bound the idle time of connections Pingora keeps alive (its default is infinite), and
        // leave closed the ones the client or HTTP/1.0 asked to close.
        if draining() {
            session.set_keepalive(None);
        } else if session.get_keepalive().is_some() {
            session.set_keepalive(Some(limits.keepalive.as_secs().max(1)));
        }
        session.set_read_timeout(Some(limits.client_read));
        session.set_write_timeout(Some(limits.client_write));
        let inet = session.client_addr().and_then(|a| a.as_inet());
        ctx.req.conn = ConnInfo {
            client_ip: inet.map(|a| a.ip()),
            client_port: inet.map_or(0, |a| a.port()),
            tls: self.tls,
            client_cert: if self.tls {
                session
                    .digest()
                    .and_then(|d| d.ssl_digest.as_ref())
                    .and_then(|s| s.extension.get::<Arc<crate::context::ClientCert>>())
                    .cloned()
            } else {
                None
            },
            sni: None,
            http2: h2,
        };
        ctx.had_authorization = session
            .req_header()
            .headers
            .contains_key(http::header::AUTHORIZATION);
        ctx.req.client_ip = crate::auth::client_ip(
            ctx.req.conn.client_ip,
            session.req_header(),
            &limits.trusted_proxies,
        );
        if limits.request_id {
            ctx.req.request_id = forward::request_id(session.req_header());
        }
        if limits.trace {
            let incoming = session
                .req_header()
                .headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(TraceContext::parse);
            let sample = || self.spans.as_ref().is_some_and(|e| e.sample());
            ctx.req.trace =
                Some(incoming.unwrap_or_else(|| TraceContext::new_root_sampled(sample())));
            ctx.started_unix = crate::observability::otlp::unix_nanos();
        }
        checks::drop_underscored_framing(session.req_header_mut());
        checks::check(session.req_header(), h2, &ctx.snap.limits).map_err(|e| fail(ctx, e))
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
        route_request(session, ctx).map_err(|e| fail(ctx, e))?;
        let Some(route) = ctx.route.clone() else {
            return Err(fail(ctx, GatewayError::Internal));
        };
        match route
            .chain
            .on_request(session.req_header_mut(), &mut ctx.req)
            .await
        {
            Ok(Flow::Continue) => {
                // Set on the client's request header, which Pingora clones for each upstream
                // attempt: done once per request.
                let limits = &ctx.snap.limits;
                let host = ctx.client_host.as_ref();
                let fields = forward::forwarding_fields(
                    session.req_header(),
                    &ctx.req,
                    host,
                    &limits.forwarded,
                );
                forward::set_fields(
                    session.req_header_mut(),
                    fields,
                    limits.preserve_header_case,
                );
                match checks::read_first_chunk(session).await {
                    Ok(()) => Ok(false),
                    Err(checks::FirstChunk::Invalid) => Err(fail(
                        ctx,
                        GatewayError::BadRequest("The chunked body framing is invalid."),
                    )),
                    Err(checks::FirstChunk::Gone(e)) => Err(e),
                }
            }
            Ok(Flow::Respond(reply)) => send_reply(session, ctx, &route, reply).await.map(|_| true),
            Err(e) => Err(fail(ctx, e)),
        }
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<()> {
        if let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.clone()) {
            crate::cache::enable(session, &policy);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> pingora::Result<CacheKey> {
        let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) else {
            return Err(fail(ctx, GatewayError::Internal));
        };
        Ok(crate::cache::key(
            policy,
            session.req_header(),
            ctx.host(),
            ctx.req.consumer.as_deref().map(|c| c.name.as_str()),
        ))
    }

    fn response_cache_filter(
        &self,
        _session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<RespCacheable> {
        let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        Ok(match ctx.not_modified.take() {
            Some(fields) => {
                let merged = crate::cache::merge_not_modified(resp, &fields);
                crate::cache::cacheable(policy, &merged, ctx.had_authorization)
            }
            None => crate::cache::cacheable(policy, resp, ctx.had_authorization),
        })
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        crate::cache::vary(meta, req)
    }

    /// Stale answers: while revalidating in the background (`error: None`, only when the
    /// entry's stale-while-revalidate allows it) and when the origin fails (stale-if-error).
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        // The retry logic ends with 503 no-healthy-upstream once every target failed: an
        // upstream failure too (RFC 5861 §4 `stale-if-error`).
        error.is_none_or(|e| {
            e.esource() == &pingora::ErrorSource::Upstream
                || matches!(e.etype(), pingora::ErrorType::HTTPStatus(502..=504))
        })
    }

    async fn request_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        _eos: bool,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        match &ctx.route {
            Some(r) if ctx.body_bytes > r.max_body => Err(fail(ctx, GatewayError::PayloadTooLarge)),
            _ => Ok(()),
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let Some(route) = ctx.route.clone() else {
            return Err(fail(ctx, GatewayError::Internal));
        };
        let group = &route.upstream;
        let fresh = std::mem::take(&mut ctx.fresh);
        if ctx.tries > 0 && !fresh && !group.retry.backoff.is_zero() {
            tokio::time::sleep(group.retry.backoff).await;
        }
        let target = group
            .select(session.req_header(), ctx.req.client_ip, &ctx.tried)
            .map_err(|e| fail(ctx, e))?;
        if ctx.tries > 0 {
            if let Some(c) = &group.metrics.retries {
                c.inc();
            }
        }
        ctx.tries += 1;
        if ctx.started.is_some() {
            ctx.upstream_started = Some(Instant::now());
        }
        ctx.tried.push(target.addr);
        ctx._inflight = Some(target.begin());
        let peer = group.http_peer(&target, fresh);
        ctx.target = Some(target);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _s: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(route), Some(t)) = (&ctx.route, &ctx.target) {
            route.upstream.record_outcome(t, false);
            e.set_retry(route.upstream.retry.after_connect_failure(ctx.tries, &e));
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let replayable = !session.as_ref().retry_buffer_truncated();
        let idempotent = session.req_header().method.is_idempotent();
        let mut stale = e.retry;
        stale.decide_reuse(reused);
        let stale_pooled =
            matches!(e.retry, RetryType::ReusedOnly) && matches!(stale, RetryType::Decided(true));
        let (Some(route), Some(t)) = (&ctx.route, &ctx.target) else {
            return e;
        };
        let retry = if stale_pooled {
            // A pooled connection the target had closed (idle close, restart, or the target
            // died): not an attempt and not a health failure. The next try opens a new
            // connection, to another target first (this one stays in `tried`).
            ctx.tries = ctx.tries.saturating_sub(1);
            ctx.stale_tries += 1;
            ctx.fresh = true;
            idempotent && replayable && ctx.stale_tries <= MAX_STALE_TRIES
        } else {
            if e.esource() == &pingora::ErrorSource::Upstream {
                route.upstream.record_outcome(t, false);
            }
            route
                .upstream
                .retry
                .after_proxy_failure(ctx.tries, &e, idempotent, replayable)
        };
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        up: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        if let Some(p) =
            forward::upstream_path(&route, session.req_header().uri.path(), &ctx.captures)
        {
            forward::set_path(up, &p);
        }
        forward::set_host(up, &route, ctx.client_host.as_ref());
        if let Some(t) = &ctx.req.trace {
            let (span, header) = t.child();
            let _ = up.insert_header("traceparent", header);
            if t.sampled() && self.spans.is_some() {
                let target = ctx.target.as_ref().map(|t| t.addr);
                let now = crate::observability::otlp::unix_nanos();
                ctx.client_spans.push((span, target, now, None));
            }
        }
        route
            .chain
            .on_upstream_request(up, &mut ctx.req)
            .map_err(|e| fail(ctx, e))
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        let status = resp.status.as_u16();
        ctx.upstream_secs = ctx.upstream_started.map(|s| s.elapsed().as_secs_f64());
        if let Some(last) = ctx.client_spans.last_mut() {
            last.3
                .get_or_insert_with(crate::observability::otlp::unix_nanos);
        }
        if status == 304 && session.cache.maybe_cache_meta().is_some() {
            ctx.not_modified = Some(Box::new(resp.headers.clone()));
        }
        let (Some(route), Some(t)) = (&ctx.route, &ctx.target) else {
            return Ok(());
        };
        if status < 200 {
            return Ok(());
        }
        route
            .upstream
            .record_outcome(t, !route.upstream.is_failure_status(status));
        let idempotent = session.req_header().method.is_idempotent();
        let replayable = !session.as_ref().retry_buffer_truncated();
        if route
            .upstream
            .retry
            .retries_status(ctx.tries, status, idempotent, replayable)
        {
            // Drop this answer and let `error_while_proxy` send the request to another target.
            let mut e = Error::explain(
                pingora::ErrorType::HTTPStatus(status),
                "retrying on upstream status",
            );
            e.esource = pingora::ErrorSource::Upstream;
            return Err(e);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
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
        if let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) {
            let phase = session.cache.phase();
            crate::cache::response_headers(policy, &phase, session.cache.maybe_cache_meta(), resp);
            ctx.cache_status = Some(crate::cache::outcome(&phase));
        }
        match ctx.route.clone() {
            Some(route) => route
                .chain
                .on_response(resp, &mut ctx.req)
                .map_err(|e| fail(ctx, e)),
            None => Ok(()),
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let Some(ge) = ctx.failure.clone().or_else(|| classify(e)) else {
            // The client went away: nothing to answer, and not a gateway fault to log.
            ctx.req.status = Some(0);
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        let code = ge.status();
        ctx.req.status = Some(code);
        if session.response_written().is_some() {
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        }
        let Ok((header, body)) = ge.response(&ctx.req.request_id) else {
            return FailToProxy {
                error_code: code,
                can_reuse_downstream: false,
            };
        };
        let reusable = matches!(ge, GatewayError::NoRoute | GatewayError::NoHealthyTarget)
            && session.is_body_empty();
        if !reusable {
            session.set_keepalive(None);
        }
        let written = match session.write_response_header(Box::new(header), false).await {
            Ok(()) => session.write_response_body(Some(body), true).await,
            Err(e) => Err(e),
        };
        if let Err(w) = written {
            log::debug!("could not send the error response: {w}");
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: reusable,
        }
    }

    /// Client errors Postern answers itself (404, 400, 413, 431) and clients that went away
    /// are expected traffic, not gateway faults: keep them out of the error log.
    fn suppress_error_log(&self, _s: &Session, ctx: &Ctx, _e: &Error) -> bool {
        ctx.req.status.is_some_and(|s| s < 500)
    }

    /// A failed try that is retried is not a failed request: retries are counted in
    /// `postern_upstream_retries_total` and the access log's `tries`; the detail goes to the
    /// debug log instead of a warning per try.
    fn suppress_proxy_warn_log(
        &self,
        _s: &Session,
        _ctx: &Ctx,
        e: &Error,
        context: pingora::proxy::ProxyWarnLogContext,
    ) -> bool {
        let retry = matches!(context, pingora::proxy::ProxyWarnLogContext::UpstreamRetry);
        if retry {
            log::debug!("retrying after: {e}");
        }
        retry
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        ctx._inflight = None;
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .or(ctx.req.status)
            .unwrap_or(0);
        ctx.req.status = Some(status);
        let elapsed = ctx.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        let (bytes_in, bytes_out) = (
            session.body_bytes_read() as u64,
            session.body_bytes_sent() as u64,
        );
        let metrics = ctx
            .route
            .as_ref()
            .map_or(&ctx.snap.unrouted, |r| &r.metrics);
        metrics.observe(status, elapsed, bytes_in, bytes_out);
        observe_method(&session.req_header().method, status);
        if let (Some(route), Some(secs)) = (&ctx.route, ctx.upstream_secs) {
            if let Some(h) = &route.upstream.metrics.response {
                h.observe(secs);
            }
        }
        if let (Some(exporter), Some(trace)) = (&self.spans, ctx.req.trace) {
            if trace.sampled() {
                export_spans(exporter, session, ctx, trace, status);
            }
        }
        if let Some(log) = &self.access_log {
            access_record(session, ctx, log, e, elapsed, bytes_in, bytes_out);
        }
        if let Some(route) = &ctx.route {
            route.chain.on_log(&ctx.req);
            if let Some(policy) = &route.cache {
                if let Some(s) = ctx.cache_status {
                    route.cache_metrics.observe(s);
                }
                // RFC 9111 §4.4: a successful unsafe request invalidates the URL's entries.
                let req = session.req_header();
                let unsafe_method = !matches!(
                    req.method,
                    http::Method::GET
                        | http::Method::HEAD
                        | http::Method::OPTIONS
                        | http::Method::TRACE
                );
                if unsafe_method && (200..400).contains(&status) {
                    if let Some(storage) = crate::cache::storage() {
                        storage.purge_url(&crate::cache::url(policy, req, ctx.host()));
                    }
                }
            }
        }
    }
}
