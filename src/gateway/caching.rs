//! The cache phases of a request on a route with a `cache` plugin: turning the cache on, the
//! key, storability (with a 304's fields merged first) and when stale answers may be served.

use super::ctx::Ctx;
use crate::error::GatewayError;
use pingora::cache::{CacheKey, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Error;

/// `request_cache_filter`.
pub(super) fn enable(session: &mut Session, ctx: &Ctx) {
    if let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) {
        if let Some(cache) = ctx.snap.shared.http_cache() {
            cache.enable(session, policy);
        }
    }
}

/// `cache_key_callback` (Pingora's default panics).
pub(super) fn key(session: &Session, ctx: &mut Ctx) -> pingora::Result<CacheKey> {
    let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.clone()) else {
        return Err(ctx.fail(GatewayError::Internal));
    };
    Ok(crate::cache::key(
        &policy,
        session.req_header(),
        ctx.mode.key_host().or(ctx.host()),
        ctx.req.consumer.as_deref().map(|c| c.name.as_str()),
    ))
}

/// `response_cache_filter`.
pub(super) fn storable(resp: &ResponseHeader, ctx: &mut Ctx) -> RespCacheable {
    let Some(policy) = ctx.route.as_ref().and_then(|r| r.cache.as_ref()) else {
        return RespCacheable::Uncacheable(NoCacheReason::NeverEnabled);
    };
    if ctx.attempt.handoff.is_some()
        && resp
            .headers
            .get("postern-complete")
            .is_some_and(|v| v.as_bytes() != b"?1")
    {
        // A partial composite (an optional call failed) is not kept for everyone.
        return RespCacheable::Uncacheable(NoCacheReason::Custom("partial composite"));
    }
    // RFC 9111 §3.5 keeps answers to requests with credentials out of a shared cache. A
    // composite keyed by consumer is not shared: the gateway wrote it for this consumer, whose
    // credentials the route's plugins check before every lookup.
    let auth =
        ctx.cache.had_authorization && !(ctx.attempt.handoff.is_some() && policy.consumer_in_key);
    match ctx.cache.not_modified.take() {
        Some(fields) => {
            let merged = crate::cache::merge_not_modified(resp, &fields);
            crate::cache::cacheable(policy, &merged, auth)
        }
        None => crate::cache::cacheable(policy, resp, auth),
    }
}

/// `should_serve_stale`: while revalidating in the background (`error: None`, only when the
/// entry's stale-while-revalidate allows it) and when the origin fails (stale-if-error) —
/// including the 503 no-healthy-upstream the retry logic ends with once every target failed.
pub(super) fn serve_stale(error: Option<&Error>) -> bool {
    error.is_none_or(|e| {
        e.esource() == &pingora::ErrorSource::Upstream
            || matches!(e.etype(), pingora::ErrorType::HTTPStatus(502..=504))
    })
}
