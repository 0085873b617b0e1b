//! HTTP caching on top of Pingora's cache state machine: each server's storage and cache
//! lock ([`HttpCache`]), the per-route policy (from the `cache` plugin), cache keys, the RFC 9111 storability
//! decision with the route's overrides, `Vary`, and `Cache-Status` (RFC 9211).
//!
//! Pingora runs lookup, freshness, revalidation (`ETag` / `Last-Modified`, 304 handling),
//! request coalescing behind the cache lock, `Age`, `stale-while-revalidate` and
//! `stale-if-error`; this module decides what may be stored and for how long.

pub mod disk;
pub mod storage;

use http::{HeaderName, Method};
use pingora::cache::cache_control::CacheControl;
use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::{
    CacheKey, CacheMeta, CachePhase, NoCacheReason, RespCacheable, VarianceBuilder,
};
use pingora::http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};
use storage::MemoryStorage;

/// One server's HTTP cache: the storage and the cache lock, and where purges are broadcast.
/// Pingora's cache phases take `&'static` storage and lock, so each is leaked once per server
/// (made from the first configuration; its size is fixed for the life of the server).
pub struct HttpCache {
    storage: &'static MemoryStorage,
    lock: &'static CacheKeyLockImpl,
    max_object: usize,
    /// The `cluster.redis` of the running configuration.
    broadcast: arc_swap::ArcSwapOption<crate::redis::Redis>,
}

impl HttpCache {
    /// A disk tier that cannot be opened is reported and left out (memory only).
    pub fn new(
        memory: usize,
        max_object: usize,
        lock_timeout: Duration,
        disk: Option<(&std::path::Path, u64)>,
        metrics: &crate::observability::metrics::Metrics,
    ) -> HttpCache {
        let fresh = || MemoryStorage::new(memory, max_object).with_metrics(metrics.clone());
        let mut storage = fresh();
        if let Some((dir, size)) = disk {
            storage = match fresh().with_disk(dir, size) {
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
        HttpCache {
            storage: Box::leak(Box::new(storage)),
            lock: Box::leak(CacheLock::new_boxed(lock_timeout)),
            max_object,
            broadcast: arc_swap::ArcSwapOption::empty(),
        }
    }

    pub fn storage(&self) -> &'static MemoryStorage {
        self.storage
    }

    /// Where purges are broadcast (the `cluster.redis` of the running configuration).
    pub fn set_broadcast(&self, redis: Option<std::sync::Arc<crate::redis::Redis>>) {
        self.broadcast.store(redis);
    }

    fn apply(&self, kind: PurgeKind, value: &str, soft: bool) -> storage::Purged {
        let keys = self.storage.select(kind, value);
        if soft {
            self.storage.expire_keys(&keys)
        } else {
            self.storage.remove_keys(&keys)
        }
    }

    /// Purges on this node and, with `cluster.redis`, on every other node.
    pub fn purge(&self, kind: PurgeKind, value: &str, soft: bool) -> storage::Purged {
        let done = self.apply(kind, value, soft);
        if let Some(r) = self.broadcast.load_full() {
            r.publish(
                PURGE_CHANNEL,
                &format!("{}\t{soft}\t{value}", kind.as_str()),
            );
        }
        done
    }

    /// Applies a purge broadcast by another node.
    pub fn apply_remote(&self, message: &str) {
        let mut parts = message.splitn(3, '\t');
        let (Some(kind), Some(soft), Some(value)) = (
            parts.next().and_then(PurgeKind::parse),
            parts.next(),
            parts.next(),
        ) else {
            log::warn!("ignored a malformed purge message");
            return;
        };
        let done = self.apply(kind, value, soft == "true");
        log::debug!("remote purge {} {value}: {done:?}", kind.as_str());
    }

    /// Turns the cache on for a request of a cached route (GET and HEAD only).
    pub fn enable(&self, session: &mut pingora::proxy::Session, policy: &CachePolicy) -> bool {
        let req = session.req_header();
        if !matches!(req.method, Method::GET | Method::HEAD) || bypassed(policy, req) {
            return false;
        }
        session
            .cache
            .enable(self.storage, None, None, Some(self.lock), None);
        session.cache.set_max_file_size_bytes(self.max_object);
        true
    }
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
    /// Statuses that may be stored; `None`: see [`storable_status`].
    pub statuses: Option<Vec<u16>>,
    /// Targeted cache-control fields (RFC 9213), in precedence order.
    pub targeted: Vec<HeaderName>,
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
            .any(|c| crate::http::cookie(req, c).is_some())
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

/// The cache-control directives Postern's cache obeys: the first targeted field present
/// (RFC 9213 `CDN-Cache-Control`, or the route's own), else `Cache-Control`.
fn directives(policy: &CachePolicy, resp: &ResponseHeader) -> Option<CacheControl> {
    policy
        .targeted
        .iter()
        .find_map(|name| CacheControl::from_resp_headers_named(name.as_str(), resp))
        .or_else(|| CacheControl::from_resp_headers(resp))
}

/// RFC 9110 §15.1: the statuses cacheable by default (heuristic freshness).
pub const HEURISTIC_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Whether a response with `status` may be stored. With `explicit` freshness any final status
/// except 206 (partial) and 304 (a validation answer) may (RFC 9111 §3); a heuristic (the
/// route's `ttl`) only covers the statuses RFC 9110 §15.1 calls heuristically cacheable. A
/// configured `statuses` list decides both.
fn storable_status(policy: &CachePolicy, status: u16, explicit: bool) -> bool {
    match &policy.statuses {
        Some(list) => list.contains(&status),
        None if explicit => (200..600).contains(&status) && !matches!(status, 206 | 304),
        None => HEURISTIC_STATUSES.contains(&status),
    }
}

/// RFC 9111 §4.2.1: the explicit freshness lifetime: `s-maxage`, then `max-age` (`no-cache`:
/// zero), then `Expires` minus `Date` (a single invalid `Expires` means already expired; several
/// are ignored). `None`: the origin said nothing about freshness.
fn explicit_lifetime(cc: Option<&CacheControl>, resp: &ResponseHeader) -> Option<Duration> {
    use pingora::cache::cache_control::InterpretCacheControl;
    if let Some(d) = cc.and_then(|c| c.fresh_duration()) {
        return Some(d);
    }
    let mut expires = resp.headers.get_all(http::header::EXPIRES).iter();
    let (Some(value), None) = (expires.next(), expires.next()) else {
        return None;
    };
    let Some(expires) = http_date(value) else {
        return Some(Duration::ZERO);
    };
    let date = resp
        .headers
        .get(http::header::DATE)
        .and_then(http_date)
        .unwrap_or_else(SystemTime::now);
    Some(expires.duration_since(date).unwrap_or_default())
}

fn http_date(v: &http::HeaderValue) -> Option<SystemTime> {
    let t = v.to_str().ok()?.parse::<httpdate::HttpDate>().ok()?;
    Some(SystemTime::from(t))
}

/// RFC 9111 §4.2.3: how old the response already was when it arrived, from its `Age` and its
/// `Date` (the larger of the two; a `Date` in the future counts as zero).
fn initial_age(resp: &ResponseHeader, now: SystemTime) -> Duration {
    let age_value = resp
        .headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent = resp
        .headers
        .get(http::header::DATE)
        .and_then(http_date)
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or_default();
    age_value.max(apparent)
}

/// RFC 9111 storability with the route's overrides. Freshness counts from when the response was
/// created (now minus its age at arrival), so an answer that arrives with `Age: 7200` and
/// `max-age=3600` is already stale, and hits report `Age` from the same origin.
pub fn cacheable(
    policy: &CachePolicy,
    resp: &ResponseHeader,
    authorization_present: bool,
) -> RespCacheable {
    use pingora::cache::cache_control::{Cacheable, InterpretCacheControl};
    use RespCacheable::Uncacheable;
    let status = resp.status.as_u16();
    if !policy.store_set_cookie && resp.headers.contains_key(http::header::SET_COOKIE) {
        return Uncacheable(NoCacheReason::Custom("set-cookie"));
    }
    if resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|p| p.trim() == "*"))
    }) {
        return Uncacheable(NoCacheReason::Custom("vary: *"));
    }
    let cc = directives(policy, resp);
    let private = cc
        .as_ref()
        .is_some_and(|c| c.is_cacheable() == Cacheable::No);
    // RFC 9111 §3.5: an answer to a request with credentials only when the response allows it.
    let auth_blocked = authorization_present
        && cc
            .as_ref()
            .is_none_or(|c| !c.allow_caching_authorized_req());
    if private || (auth_blocked && policy.force_ttl.is_none()) {
        return Uncacheable(NoCacheReason::OriginNotCache);
    }
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
    let now = SystemTime::now();
    let mut header = resp.clone();
    if let Some(c) = &cc {
        c.strip_private_headers(&mut header);
    }
    // Recomputed on every hit from the entry's creation time.
    header.remove_header(&http::header::AGE);
    let (lifetime, created) = if let Some(force) = policy.force_ttl {
        // The route overrides the origin, except where storing would leak a private answer.
        if authorization_present {
            return Uncacheable(NoCacheReason::OriginNotCache);
        }
        if !storable_status(policy, status, false) {
            return Uncacheable(NoCacheReason::Custom("status not cacheable by the route"));
        }
        (force, now)
    } else {
        let explicit = explicit_lifetime(cc.as_ref(), resp);
        if !storable_status(policy, status, explicit.is_some()) {
            return Uncacheable(NoCacheReason::Custom("status not cacheable by the route"));
        }
        let lifetime = match (explicit, policy.ttl) {
            (Some(l), _) => l,
            (None, Some(ttl)) if !authorization_present => ttl,
            (None, _) => return Uncacheable(NoCacheReason::OriginNotCache),
        };
        let age = initial_age(resp, now);
        (
            lifetime.min(policy.max_ttl),
            now.checked_sub(age).unwrap_or(now),
        )
    };
    RespCacheable::Cacheable(CacheMeta::new(
        created + lifetime,
        created,
        swr,
        sie,
        header,
    ))
}

/// Fields of a 304 that do not replace the stored ones (RFC 9111 §3.2): framing and
/// connection fields, fields that describe a body the 304 does not have, and `Vary` (Pingora
/// keeps the stored variance across a 304). `Age` is recomputed from `Date`.
const NOT_MERGED: [HeaderName; 14] = [
    http::header::CONTENT_LENGTH,
    http::header::TRANSFER_ENCODING,
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::TE,
    http::header::TRAILER,
    http::header::UPGRADE,
    http::header::PROXY_AUTHENTICATE,
    HeaderName::from_static("proxy-authentication-info"),
    http::header::CONTENT_ENCODING,
    http::header::CONTENT_RANGE,
    http::header::VARY,
    http::header::AGE,
];

/// RFC 9111 §4.3.4: the stored header after a 304: every field of the 304 replaces the stored
/// field of that name (Pingora itself copies only Cache-Control, Expires, ETag and a few
/// more). A 304 without `Date` drops the stored one, so the entry's age restarts from now.
pub fn merge_not_modified(
    stored: &ResponseHeader,
    not_modified: &http::HeaderMap,
) -> ResponseHeader {
    let mut h = stored.clone();
    let nominated: Vec<String> = not_modified
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    for name in not_modified.keys() {
        if NOT_MERGED.contains(name) || nominated.iter().any(|n| n == name.as_str()) {
            continue;
        }
        h.remove_header(name);
        for v in not_modified.get_all(name) {
            let _ = h.append_header(name.clone(), v.clone());
        }
    }
    if !not_modified.contains_key(http::header::DATE) {
        h.remove_header(&http::header::DATE);
    }
    h
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

/// RFC 9111 §4.4: a successful unsafe request (POST, PUT, PATCH, DELETE...) invalidates the
/// stored responses of its URL.
pub fn invalidate_after(
    cache: &HttpCache,
    policy: &CachePolicy,
    req: &RequestHeader,
    host: Option<&str>,
    status: u16,
) {
    let safe = matches!(
        req.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if !safe && (200..400).contains(&status) {
        cache.storage.purge_url(&url(policy, req, host));
    }
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
