//! The upstream side of a request: choosing a target for each try, what a failed try means
//! for health and retries (decided by the group's `upstream::retry` policy), the request as
//! sent upstream, and the upstream's response header.

use super::ctx::Ctx;
use super::{forward, Gateway};
use crate::error::GatewayError;
use crate::upstream::breaker::{Outcome, Permit};
use crate::upstream::retry::is_stale_pooled;
use crate::upstream::target::now_ms;
use crate::upstream::target::TargetState;
use crate::upstream::UpstreamGroup;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::Error;
use std::sync::Arc;
use std::time::Instant;

/// `upstream_peer`: the next target (untried first), after the retry backoff; the route's
/// `failover` upstream when its own cannot take the request (breaker open, no healthy target).
pub(super) async fn peer(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<Box<HttpPeer>> {
    let route = ctx.route()?;
    if route.composite().is_some() {
        return super::internal::peer(session, ctx);
    }
    if let (Some(split), None) = (&route.split, ctx.attempt.split) {
        let c = split.choose(session.req_header());
        ctx.attempt.split = Some(c.index);
        ctx.attempt.set_cookie = c.set_cookie;
    }
    let Some(mut group) = ctx.group().cloned() else {
        return Err(ctx.fail(GatewayError::Internal));
    };
    let fresh = std::mem::take(&mut ctx.attempt.fresh);
    let delay = ctx.attempt.delay.take();
    let switched = std::mem::take(&mut ctx.attempt.switched);
    if ctx.attempt.tried.is_empty() {
        if let Some(b) = &group.budget {
            b.request(now_ms());
        }
        if route.deadline.is_some() {
            ctx.attempt.first = Some(Instant::now());
        }
    } else if !fresh && !switched {
        // A retry: the upstream's Retry-After, else the backoff; never past the deadline.
        let pause = delay.unwrap_or_else(|| group.retry.pause(ctx.attempt.tries));
        if left(&route, ctx).is_some_and(|l| pause >= l) {
            return Err(ctx.fail(GatewayError::UpstreamTimeout));
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    let left = left(&route, ctx);
    if left.is_some_and(|l| l.is_zero()) {
        return Err(ctx.fail(GatewayError::UpstreamTimeout));
    }
    let (permit, target) = loop {
        match admit(&group, session, ctx) {
            Ok(chosen) => break chosen,
            Err(_) if !ctx.attempt.failover && route.failover.is_some() => {
                ctx.attempt.failover = true;
                group = ctx
                    .group()
                    .cloned()
                    .ok_or_else(|| ctx.fail(GatewayError::Internal))?;
            }
            Err(e) => return Err(ctx.fail(e)),
        }
    };
    let bound = match (group.retry.per_try_timeout, left) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if permit.is_some() {
        ctx.attempt.permit = permit;
        if group.breaker.as_ref().is_some_and(|b| b.times_calls()) {
            ctx.attempt.sent = Some(Instant::now());
        }
    }
    ctx.attempt.counted = false;
    if let Some(stage) = ctx.bodies.request.as_mut() {
        stage.reset();
    }
    let a = &mut ctx.attempt;
    if a.tries > 0 {
        if let Some(c) = &group.metrics.retries {
            c.inc();
        }
    }
    a.tries += 1;
    if ctx.timing.started.is_some() {
        a.started = Some(Instant::now());
    }
    a.tried.push(target.addr);
    a.inflight = Some(target.begin());
    let peer = group.http_peer(&target, fresh, bound);
    a.target = Some(target);
    Ok(Box::new(peer))
}

/// The breaker's permission (upstreams with one) and a target of `group`.
#[allow(clippy::type_complexity)]
fn admit(
    group: &UpstreamGroup,
    session: &Session,
    ctx: &Ctx,
) -> Result<(Option<Permit>, Arc<TargetState>), GatewayError> {
    let permit = match &group.breaker {
        Some(b) => match b.admit(now_ms()) {
            Ok(p) => Some(p),
            Err(r) => {
                let retry_after = r.retry_after_ms.div_ceil(1000).max(1);
                return Err(GatewayError::CircuitOpen { retry_after });
            }
        },
        None => None,
    };
    let target = group.select(session.req_header(), ctx.req.client_ip, &ctx.attempt.tried)?;
    Ok((permit, target))
}

/// What is left of the route's `deadline` (None: no deadline).
fn left(route: &crate::snapshot::Route, ctx: &Ctx) -> Option<std::time::Duration> {
    let first = ctx.attempt.first?;
    Some(route.deadline?.saturating_sub(first.elapsed()))
}

/// `fail_to_connect`: a health failure of the target; retried as the policy says (nothing was
/// sent, so any method may be).
pub(super) fn connect_failed(ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
    let group = ctx.group().cloned();
    if let (Some(group), Some(t)) = (group, &ctx.attempt.target) {
        group.record_outcome(t, false);
        let timed_out = matches!(
            e.etype(),
            pingora::ErrorType::ConnectTimedout | pingora::ErrorType::TLSHandshakeTimedout
        );
        breaker_outcome(
            ctx,
            &group,
            if timed_out {
                Outcome::Timeout
            } else {
                Outcome::ConnectError
            },
        );
        // Outside the retry budget: nothing reached the target, and the retry goes to another
        // one (a budget here turned one dead target of two into lost requests under load).
        let retry = group.retry.after_connect_failure(ctx.attempt.tries, &e);
        let has_failover = ctx.route.as_ref().is_some_and(|r| r.failover.is_some());
        if !retry && has_failover && !ctx.attempt.failover {
            // The route's own upstream is out of tries: one more on the failover upstream.
            ctx.attempt.failover = true;
            ctx.attempt.switched = true;
            e.set_retry(true);
        } else {
            e.set_retry(retry);
        }
    }
    e
}

/// Reports the current try's outcome to the upstream's circuit breaker (once per try).
fn breaker_outcome(ctx: &mut Ctx, group: &UpstreamGroup, outcome: Outcome) {
    if let (Some(b), Some(mut permit)) = (&group.breaker, ctx.attempt.permit.take()) {
        let elapsed = ctx
            .attempt
            .sent
            .map_or(0, |s| s.elapsed().as_millis() as u64);
        b.record(&mut permit, outcome, elapsed, now_ms());
    }
}

/// `error_while_proxy`: a closed pooled connection is tried again on a new connection without
/// counting as an attempt or against the target's health; any other failure counts and is
/// retried as the policy says (idempotent, replayable requests only).
pub(super) fn proxy_failed(
    session: &Session,
    ctx: &mut Ctx,
    mut e: Box<Error>,
    reused: bool,
) -> Box<Error> {
    if ctx.attempt.handoff.is_some() {
        super::internal::proxy_failed(ctx, &mut e, reused);
        return e;
    }
    let group = ctx.group().cloned();
    let (Some(group), Some(t)) = (group, ctx.attempt.target.clone()) else {
        return e;
    };
    let replayable = group.retry.body_replayable(
        session.as_ref().retry_buffer_truncated(),
        session.as_ref().body_bytes_read(),
        session.req_header(),
    );
    let idempotent = group.retry.replayable_method(session.req_header());
    let policy = &group.retry;
    let a = &mut ctx.attempt;
    let retry = if is_stale_pooled(&e, reused) {
        // This target stays in `tried`: the new connection goes to another one first.
        a.tries = a.tries.saturating_sub(1);
        a.stale_tries += 1;
        a.fresh = true;
        policy.after_stale_connection(a.stale_tries, idempotent, replayable)
    } else {
        // A status already judged in `upstream_response` (retry or fallback, budget included).
        let judged = a.counted;
        if e.esource() == &pingora::ErrorSource::Upstream && !a.counted {
            group.record_outcome(&t, false);
            let outcome = match e.etype() {
                pingora::ErrorType::ReadTimedout | pingora::ErrorType::WriteTimedout => {
                    Outcome::Timeout
                }
                pingora::ErrorType::HTTPStatus(s) => Outcome::Status(*s),
                _ => Outcome::Reset,
            };
            breaker_outcome(ctx, &group, outcome);
        }
        let a = &ctx.attempt;
        policy.after_proxy_failure(a.tries, &e, idempotent, replayable)
            && (judged || group.budget_allows_retry())
    };
    e.set_retry(retry);
    e
}

/// `upstream_request_filter`: path rewrite, Host, `traceparent` (a CLIENT span per try when
/// sampled), then the route's plugins.
pub(super) fn upstream_request(
    gw: &Gateway,
    session: &Session,
    up: &mut RequestHeader,
    ctx: &mut Ctx,
) -> pingora::Result<()> {
    let route = ctx.route()?;
    if route.composite().is_some() {
        return super::internal::mark(up, ctx);
    }
    if let Some(p) = forward::upstream_path(&route, session.req_header().uri.path(), &ctx.captures)
    {
        forward::set_path(up, &p);
    }
    forward::set_host(up, &route, ctx.client_host.as_ref());
    if let Some(ready) = &ctx.bodies.request_ready {
        up.remove_header(&http::header::TRANSFER_ENCODING);
        let _ = up.insert_header(http::header::CONTENT_LENGTH, ready.len().to_string());
    } else if ctx.bodies.request.is_some() {
        up.remove_header(&http::header::CONTENT_LENGTH);
    }
    if route.chain.has_response_body() {
        // Body plugins read plain bytes: ask for them instead of decoding and re-encoding.
        let _ = up.insert_header(http::header::ACCEPT_ENCODING, "identity");
    }
    if let Some(t) = &ctx.req.trace {
        let (span, header) = t.child();
        let _ = up.insert_header("traceparent", header);
        if t.sampled() && gw.spans.is_some() {
            let target = ctx.attempt.target.as_ref().map(|t| t.addr);
            let now = crate::observability::otlp::unix_nanos();
            ctx.timing.client_spans.push((span, target, now, None));
        }
    }
    route
        .chain
        .on_upstream_request(up, &mut ctx.req)
        .map_err(|e| ctx.fail(e))
}

/// `upstream_response_filter`: timings, passive health, a retry on a configured status, and
/// the fields of a 304 that revalidates a stored response.
pub(super) fn upstream_response(
    session: &Session,
    resp: &mut ResponseHeader,
    ctx: &mut Ctx,
) -> pingora::Result<()> {
    let status = resp.status.as_u16();
    ctx.attempt.secs = ctx.attempt.started.map(|s| s.elapsed().as_secs_f64());
    if let Some(last) = ctx.timing.client_spans.last_mut() {
        last.3
            .get_or_insert_with(crate::observability::otlp::unix_nanos);
    }
    if status == 304 && session.cache.maybe_cache_meta().is_some() {
        ctx.cache.not_modified = Some(Box::new(resp.headers.clone()));
    }
    if ctx.attempt.handoff.is_some() {
        if let Some(e) = super::internal::failed_answer(session, resp) {
            return Err(e);
        }
    }
    super::response::start_body(session, resp, ctx, true)?;
    let group = ctx.group();
    let (Some(group), Some(t)) = (group, &ctx.attempt.target) else {
        return Ok(());
    };
    if status < 200 {
        return Ok(());
    }
    group.record_outcome(t, !group.is_failure_status(status));
    let group = group.clone();
    breaker_outcome(ctx, &group, Outcome::Status(status));
    ctx.attempt.counted = true;
    let idempotent = group.retry.replayable_method(session.req_header());
    let replayable = group.retry.body_replayable(
        session.as_ref().retry_buffer_truncated(),
        session.as_ref().body_bytes_read(),
        session.req_header(),
    );
    if group
        .retry
        .retries_status(ctx.attempt.tries, status, idempotent, replayable)
        && retry_after_fits(resp, &group, ctx)
        && group.budget_allows_retry()
    {
        // Drop this answer and let `error_while_proxy` send the request to another target.
        let mut e = Error::explain(
            pingora::ErrorType::HTTPStatus(status),
            "retrying on upstream status",
        );
        e.esource = pingora::ErrorSource::Upstream;
        return Err(e);
    }
    let route = ctx.route()?;
    if route
        .fallback
        .as_ref()
        .is_some_and(|f| f.covers_status(status))
    {
        // Drop this answer: `fail_to_proxy` sends the fallback (or a stale cached answer is
        // served first). The status stays the error's type, so no retry rule reads it as
        // another status.
        ctx.failure = Some(GatewayError::UpstreamStatus(status));
        let mut e = Error::explain(
            pingora::ErrorType::HTTPStatus(status),
            "upstream status replaced by the route's fallback",
        );
        e.esource = pingora::ErrorSource::Upstream;
        return Err(e);
    }
    if route.intercept.contains(&status) {
        // The error page replaces the upstream's body; the status stays.
        ctx.failure = Some(GatewayError::Intercepted(status));
        let mut e = Error::explain(
            pingora::ErrorType::HTTPStatus(status),
            "upstream error answer intercepted",
        );
        e.esource = pingora::ErrorSource::Upstream;
        return Err(e);
    }
    Ok(())
}

/// A 503 or 429 with `Retry-After` (delta seconds) is retried after that long when it fits
/// in what is left of the route's `deadline` (without one: within the backoff's longest pause);
/// otherwise it is not retried and the answer, `Retry-After` included, goes to the client.
fn retry_after_fits(resp: &ResponseHeader, group: &UpstreamGroup, ctx: &mut Ctx) -> bool {
    if !matches!(resp.status.as_u16(), 503 | 429) {
        return true;
    }
    let Some(v) = resp.headers.get(http::header::RETRY_AFTER) else {
        return true;
    };
    let Some(wait) = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs)
    else {
        return false; // an HTTP date or garbage: the client decides
    };
    let room = match (ctx.attempt.first, &ctx.route) {
        (Some(first), Some(r)) => r.deadline.map(|d| d.saturating_sub(first.elapsed())),
        _ => None,
    }
    .unwrap_or_else(|| group.retry.max_pause());
    if wait >= room && !wait.is_zero() {
        return false;
    }
    ctx.attempt.delay = Some(wait);
    true
}
