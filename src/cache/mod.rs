//! HTTP caching on top of Pingora's cache state machine: the process-wide storage and cache
//! lock, the per-route policy (from the `cache` plugin), cache keys, the RFC 9111 storability
//! decision with the route's overrides, `Vary`, and `Cache-Status` (RFC 9211).
//!
//! Pingora runs lookup, freshness, revalidation (`ETag` / `Last-Modified`, 304 handling),
//! request coalescing behind the cache lock, `Age`, `stale-while-revalidate` and
//! `stale-if-error`; this module decides what may be stored and for how long.

pub mod disk;
pub mod storage;

use http::{HeaderName, Method};
use pingora::cache::cache_control::CacheControl;
use pingora::cache::filters::resp_cacheable;
use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{
    CacheKey, CacheMeta, CacheMetaDefaults, CachePhase, NoCacheReason, RespCacheable,
    VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use storage::MemoryStorage;

/// The storage and lock, created once per process from the first configuration loaded.
struct Store {
    storage: &'static MemoryStorage,
    lock: &'static CacheKeyLockImpl,
    max_object: usize,
}

static STORE: OnceLock<Store> = OnceLock::new();

/// Creates the storage (first call wins: its size is fixed for the life of the process).
/// A disk tier that cannot be opened is reported and left out (memory only).
pub fn init(
    memory: usize,
    max_object: usize,
    lock_timeout: Duration,
    disk: Option<(&std::path::Path, u64)>,
) {
    STORE.get_or_init(|| {
        let mut storage = MemoryStorage::new(memory, max_object);
        if let Some((dir, size)) = disk {
            storage = match MemoryStorage::new(memory, max_object).with_disk(dir, size) {
                Ok(s) => s,
                Err(e) => {
                    log::error!(
                        "cache disk tier at {} unusable ({e}); memory only",
                        dir.display()
                    );
                    storage
                }
            };
        }
        Store {
            storage: Box::leak(Box::new(storage)),
            lock: Box::leak(CacheLock::new_boxed(lock_timeout)),
            max_object,
        }
    });
}

/// The storage, for purges and tests; `None` before [`init`].
pub fn storage() -> Option<&'static MemoryStorage> {
    STORE.get().map(|s| s.storage)
}

/// What a purge targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgeKind {
    /// Every variant of one URL (`host/path?query`).
    Url,
    /// Every URL starting with the value.
    Prefix,
    /// Every response tagged with the value (`Surrogate-Key`, `Cache-Tag`).
    Tag,
}

impl PurgeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PurgeKind::Url => "url",
            PurgeKind::Prefix => "prefix",
            PurgeKind::Tag => "tag",
        }
    }

    fn parse(s: &str) -> Option<PurgeKind> {
        match s {
            "url" => Some(PurgeKind::Url),
            "prefix" => Some(PurgeKind::Prefix),
            "tag" => Some(PurgeKind::Tag),
            _ => None,
        }
    }
}

/// Purges are broadcast to the other nodes on this Redis channel (under the key prefix).
pub const PURGE_CHANNEL: &str = "cache:purge";

static BROADCAST: arc_swap::ArcSwapOption<crate::ratelimit::cluster::Redis> =
    arc_swap::ArcSwapOption::const_empty();

/// Where purges are broadcast (the `cluster.redis` of the running configuration).
pub fn set_broadcast(redis: Option<std::sync::Arc<crate::ratelimit::cluster::Redis>>) {
    BROADCAST.store(redis);
}

fn apply(kind: PurgeKind, value: &str, soft: bool) -> Option<storage::Purged> {
    let s = storage()?;
    let keys = s.select(kind, value);
    Some(if soft {
        s.expire_keys(&keys)
    } else {
        s.remove_keys(&keys)
    })
}

/// Purges on this node and, with `cluster.redis`, on every other node.
pub fn purge(kind: PurgeKind, value: &str, soft: bool) -> Option<storage::Purged> {
    let done = apply(kind, value, soft)?;
    if let Some(r) = BROADCAST.load_full() {
        r.publish(
            PURGE_CHANNEL,
            &format!("{}\t{soft}\t{value}", kind.as_str()),
        );
    }
    Some(done)
}

/// Applies a purge broadcast by another node.
pub fn apply_remote(message: &str) {
    let mut parts = message.splitn(3, '\t');
    let (Some(kind), Some(soft), Some(value)) = (
        parts.next().and_then(PurgeKind::parse),
        parts.next(),
        parts.next(),
    ) else {
        log::warn!("ignored a malformed purge message");
        return;
    };
    let done = apply(kind, value, soft == "true");
    log::debug!("remote purge {} {value}: {done:?}", kind.as_str());
}

/// Which query parameters are part of the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKey {
    /// Every parameter, sorted (so `?a=1&b=2` and `?b=2&a=1` share an entry).
    All,
    None,
    Only(Vec<String>),
}

/// A route's cache policy, compiled from its `cache` plugin.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    pub ttl: Option<Duration>,
    pub max_ttl: Duration,
    pub force_ttl: Option<Duration>,
    pub statuses: Vec<u16>,
    pub host_in_key: bool,
    pub query: QueryKey,
    pub headers: Vec<HeaderName>,
    pub consumer_in_key: bool,
    pub bypass_headers: Vec<HeaderName>,
    pub bypass_cookies: Vec<String>,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    pub store_set_cookie: bool,
    pub x_cache: bool,
}

/// The URL an entry is filed under for purges: `host/path?query` (host lower case, without
/// port; left out when the key ignores the host), with the query as the key sees it.
pub fn url(policy: &CachePolicy, req: &RequestHeader, host: Option<&str>) -> String {
    let mut u = String::new();
    if policy.host_in_key {
        if let Some(h) = host {
            u.push_str(&crate::router::strip_port(h).to_ascii_lowercase());
        }
    }
    u.push_str(req.uri.path());
    let q = query_part(&policy.query, req.uri.query());
    if !q.is_empty() {
        u.push('?');
        u.push_str(&q);
    }
    u
}

fn query_part(k: &QueryKey, query: Option<&str>) -> String {
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
    match k {
        QueryKey::None => return String::new(),
        QueryKey::All => {}
        QueryKey::Only(names) => pairs.retain(|p| {
            names
                .iter()
                .any(|n| p.split('=').next() == Some(n.as_str()))
        }),
    }
    pairs.sort_unstable();
    pairs.join("&")
}

/// Should this request skip the cache entirely (policy bypass header or cookie)?
pub fn bypassed(policy: &CachePolicy, req: &RequestHeader) -> bool {
    policy
        .bypass_headers
        .iter()
        .any(|h| req.headers.contains_key(h))
        || policy
            .bypass_cookies
            .iter()
            .any(|c| crate::auth::cookie(req, c).is_some())
}

/// Turns the cache on for a request of a cached route (GET and HEAD only).
pub fn enable(session: &mut pingora::proxy::Session, policy: &CachePolicy) -> bool {
    let Some(store) = STORE.get() else {
        return false;
    };
    let req = session.req_header();
    if !matches!(req.method, Method::GET | Method::HEAD) || bypassed(policy, req) {
        return false;
    }
    session
        .cache
        .enable(store.storage, None, None, Some(store.lock), None);
    session.cache.set_max_file_size_bytes(store.max_object);
    true
}

/// The cache key: length-prefixed parts (method class, host, path, query, chosen request
/// headers, consumer), and the URL as the user tag for purges.
pub fn key(
    policy: &CachePolicy,
    req: &RequestHeader,
    host: Option<&str>,
    consumer: Option<&str>,
) -> CacheKey {
    let url = url(policy, req, host);
    let mut primary = Vec::with_capacity(url.len() + 32);
    let mut part = |b: &[u8]| {
        primary.extend_from_slice(&(b.len() as u32).to_be_bytes());
        primary.extend_from_slice(b);
    };
    part(url.as_bytes());
    for h in &policy.headers {
        part(h.as_str().as_bytes());
        let mut values: Vec<&[u8]> = req
            .headers
            .get_all(h)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        values.sort_unstable();
        for v in values {
            part(v);
        }
    }
    if policy.consumer_in_key {
        part(consumer.unwrap_or("").as_bytes());
    }
    CacheKey::new(primary, url)
}

/// No heuristic freshness: a response without freshness information is not stored unless the
/// route gives a default `ttl`.
static NO_DEFAULTS: CacheMetaDefaults = CacheMetaDefaults::new(|_| None, 0, 0);

/// RFC 9111 storability with the route's overrides.
pub fn cacheable(
    policy: &CachePolicy,
    resp: &ResponseHeader,
    authorization_present: bool,
) -> RespCacheable {
    use RespCacheable::Uncacheable;
    let status = resp.status.as_u16();
    if !policy.statuses.contains(&status) {
        return Uncacheable(NoCacheReason::Custom("status not cacheable by the route"));
    }
    if !policy.store_set_cookie && resp.headers.contains_key(http::header::SET_COOKIE) {
        return Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    if resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim() == "*"))
    }) {
        return Uncacheable(NoCacheReason::Custom("vary: *"));
    }
    let now = SystemTime::now();
    let cc = CacheControl::from_resp_headers(resp);
    // must-revalidate, proxy-revalidate and s-maxage forbid serving stale (RFC 9111 §5.2.2),
    // and so does an unqualified no-cache (§5.2.2.4: never used without revalidation).
    let no_stale = cc.as_ref().is_some_and(|c| {
        c.must_revalidate()
            || c.proxy_revalidate()
            || c.no_cache()
            || c.s_maxage().ok().flatten().is_some()
    });
    let swr = cc
        .as_ref()
        .and_then(|c| c.stale_while_revalidate().ok().flatten())
        .unwrap_or(policy.stale_while_revalidate.as_secs() as u32);
    let sie = cc
        .as_ref()
        .and_then(|c| c.stale_if_error().ok().flatten())
        .unwrap_or(policy.stale_if_error.as_secs() as u32);
    let (swr, sie) = if no_stale { (0, 0) } else { (swr, sie) };
    let build = |ttl: Duration, header: ResponseHeader| {
        RespCacheable::Cacheable(CacheMeta::new(now + ttl, now, swr, sie, header))
    };
    if let Some(force) = policy.force_ttl {
        // The route overrides the origin, except where storing would leak a private answer.
        if authorization_present || cc.as_ref().is_some_and(|c| c.private()) {
            return Uncacheable(NoCacheReason::OriginNotCache);
        }
        return build(force, resp.clone());
    }
    match resp_cacheable(
        cc.as_ref(),
        resp.clone(),
        authorization_present,
        &NO_DEFAULTS,
    ) {
        RespCacheable::Cacheable(meta) => {
            let fresh = meta
                .fresh_until()
                .duration_since(now)
                .unwrap_or_default()
                .min(policy.max_ttl);
            let header = meta.response_header_copy();
            RespCacheable::Cacheable(CacheMeta::new(now + fresh, now, swr, sie, header))
        }
        Uncacheable(reason) => {
            // The origin said nothing about freshness: the route's default applies.
            let silent = cc.as_ref().is_none_or(|c| {
                !c.no_store()
                    && !c.no_cache()
                    && !c.private()
                    && c.max_age().ok().flatten().is_none()
                    && c.s_maxage().ok().flatten().is_none()
            }) && !resp.headers.contains_key(http::header::EXPIRES);
            match policy.ttl {
                Some(ttl) if silent && !authorization_present => {
                    build(ttl.min(policy.max_ttl), resp.clone())
                }
                _ => Uncacheable(reason),
            }
        }
    }
}

/// Secondary key from the stored response's `Vary` (RFC 9111 §4.1).
pub fn vary(meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
    let mut names: Vec<String> = meta
        .headers()
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return None;
    }
    names.sort();
    names.dedup();
    let mut b = VarianceBuilder::new();
    for n in names {
        let value: Vec<u8> = req
            .headers
            .get_all(n.as_str())
            .iter()
            .flat_map(|v| v.as_bytes().iter().copied().chain(std::iter::once(b',')))
            .collect();
        b.add_owned_name_value(n, value);
    }
    b.finalize()
}

/// How the cache took part in a response, for `Cache-Status`, `X-Cache`, metrics and logs.
pub fn outcome(phase: &CachePhase) -> &'static str {
    match phase {
        CachePhase::Hit => "HIT",
        CachePhase::Stale | CachePhase::StaleUpdating => "STALE",
        CachePhase::Expired => "EXPIRED",
        CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => "REVALIDATED",
        CachePhase::Miss => "MISS",
        // Looked up, fetched, and not stored (no-store, private, status, size...).
        CachePhase::Disabled(r) if !matches!(r, NoCacheReason::NeverEnabled) => "MISS",
        _ => "BYPASS",
    }
}

/// Sets `Cache-Status` (RFC 9211) and, when asked, `X-Cache`.
pub fn response_headers(
    policy: &CachePolicy,
    phase: &CachePhase,
    meta: Option<&CacheMeta>,
    resp: &mut ResponseHeader,
) {
    let now = SystemTime::now();
    let ttl = meta.map(|m| match m.fresh_until().duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        // Stale: at least one second past freshness, so the sign always shows.
        Err(e) => -(e.duration().as_secs_f64().ceil() as i64).max(1),
    });
    let status = match (phase, ttl) {
        (CachePhase::Hit | CachePhase::Stale | CachePhase::StaleUpdating, Some(t)) => {
            format!("postern; hit; ttl={t}")
        }
        (CachePhase::Expired, _) => "postern; fwd=stale".to_string(),
        (CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_), _) => {
            "postern; fwd=stale; fwd-status=304".to_string()
        }
        (CachePhase::Miss, _) => "postern; fwd=miss; stored".to_string(),
        (CachePhase::Disabled(r), _) if !matches!(r, NoCacheReason::NeverEnabled) => {
            "postern; fwd=miss".to_string()
        }
        _ => "postern; fwd=bypass".to_string(),
    };
    let _ = resp.insert_header("cache-status", status);
    if policy.x_cache {
        let _ = resp.insert_header("x-cache", outcome(phase));
    }
}
