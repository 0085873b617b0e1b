//! Upstream groups: targets, balancing, health and how Postern connects to them.

pub mod balancer;
pub mod breaker;
pub mod budget;
pub mod config;
pub mod fallback;
pub mod health;
pub mod mirror;
pub mod retry;
pub mod split;
pub mod target;
pub mod window;

use crate::common::issue::Issue;
use crate::error::GatewayError;
use crate::observability::metrics::UpstreamMetrics;
use crate::upstream::config::{self as schema, Balance, HashFallback, Protocol};
use arc_swap::ArcSwap;
use balancer::Pool;
use pingora::http::RequestHeader;
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use retry::RetryPolicy;
use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use target::{now_ms, Registry, TargetState};

/// Where the consistent-hash key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
    Query(String),
    Path,
}

impl HashKey {
    pub fn parse(s: &str) -> Result<HashKey, String> {
        let bad = || {
            format!("invalid hash_key \"{s}\"; use client_ip, header:NAME, cookie:NAME, query:NAME or path")
        };
        match s.split_once(':') {
            None if s == "client_ip" => Ok(HashKey::ClientIp),
            None if s == "path" => Ok(HashKey::Path),
            Some(("header", n)) => http::HeaderName::from_bytes(n.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| bad()),
            Some(("cookie", n)) if !n.is_empty() => Ok(HashKey::Cookie(n.to_string())),
            Some(("query", n)) if !n.is_empty() => Ok(HashKey::Query(n.to_string())),
            _ => Err(bad()),
        }
    }

    /// The key's bytes for this request, if present.
    pub fn extract<'a>(
        &self,
        req: &'a RequestHeader,
        client_ip: Option<IpAddr>,
    ) -> Option<Cow<'a, [u8]>> {
        match self {
            HashKey::ClientIp => client_ip.map(|ip| Cow::Owned(ip.to_string().into_bytes())),
            HashKey::Path => Some(Cow::Borrowed(req.uri.path().as_bytes())),
            HashKey::Header(n) => req.headers.get(n).map(|v| Cow::Borrowed(v.as_bytes())),
            HashKey::Query(k) => req.uri.query().and_then(|q| {
                q.split('&').find_map(|p| {
                    let (pk, v) = p.split_once('=').unwrap_or((p, ""));
                    (pk == k).then_some(Cow::Borrowed(v.as_bytes()))
                })
            }),
            HashKey::Cookie(name) => {
                req.headers
                    .get_all(http::header::COOKIE)
                    .iter()
                    .find_map(|h| {
                        h.to_str().ok()?.split(';').find_map(|c| {
                            let (k, v) = c.trim().split_once('=')?;
                            (k == name).then_some(Cow::Borrowed(v.as_bytes()))
                        })
                    })
            }
        }
    }
}

/// How Postern connects to a group's targets.
#[derive(Clone)]
pub struct PeerSettings {
    pub tls: bool,
    pub sni: Option<String>,
    pub verify: bool,
    pub ca: Option<Arc<[WrappedX509]>>,
    pub protocol: Protocol,
    pub timeouts: schema::Timeouts,
}

/// A target as written in the config, before DNS.
#[derive(Debug, Clone)]
pub struct TargetSpec {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// False for IP literals.
    pub is_name: bool,
    pub backup: bool,
}

/// A compiled upstream.
pub struct UpstreamGroup {
    pub name: Arc<str>,
    pub specs: Vec<TargetSpec>,
    pool: ArcSwap<Pool>,
    pub balance: Balance,
    hash_key: Option<HashKey>,
    fallback: HashFallback,
    pub peer: PeerSettings,
    pub retry: RetryPolicy,
    /// The retry budget (upstreams that retry at all).
    pub budget: Option<budget::Budget>,
    /// The circuit breaker, when configured (state kept across reloads by the registry).
    pub breaker: Option<Arc<breaker::Breaker>>,
    pub passive: Option<schema::PassiveHealth>,
    pub active: Option<schema::ActiveHealth>,
    pub resolve_interval: Duration,
    registry: Arc<Registry>,
    pool_key: u64,
    pub metrics: UpstreamMetrics,
}

impl UpstreamGroup {
    pub fn new(
        name: &str,
        c: &schema::Upstream,
        registry: Arc<Registry>,
        metrics: &crate::observability::metrics::Metrics,
    ) -> Result<UpstreamGroup, Vec<Issue>> {
        let path = format!("upstreams.{name}");
        let mut issues = Vec::new();
        let specs: Vec<TargetSpec> = c
            .targets
            .iter()
            .filter_map(|t| parse_target(&t.addr, t.weight, t.backup))
            .collect();
        let ca = match c.tls.as_ref().and_then(|t| t.ca.as_ref()) {
            Some(file) => match load_ca(file) {
                Ok(ca) => Some(ca),
                Err(m) => {
                    issues.push(Issue::new(format!("{path}.tls.ca"), m));
                    None
                }
            },
            None => None,
        };
        if !issues.is_empty() {
            return Err(issues);
        }
        let g = UpstreamGroup {
            name: name.into(),
            specs,
            pool: ArcSwap::from_pointee(Pool::new(Vec::new(), c.balance)),
            balance: c.balance,
            hash_key: c.hash_key.as_deref().and_then(|k| HashKey::parse(k).ok()),
            fallback: c.hash_fallback,
            peer: PeerSettings {
                tls: c.tls.is_some(),
                sni: c.tls.as_ref().and_then(|t| t.sni.clone()),
                verify: c.tls.as_ref().is_none_or(|t| t.verify),
                ca,
                protocol: c.protocol,
                timeouts: c.timeouts.clone(),
            },
            retry: RetryPolicy::new(&c.retry),
            budget: (c.retry.attempts > 1).then(|| budget::Budget::new(&c.retry.budget)),
            breaker: c
                .circuit_breaker
                .as_ref()
                .map(|b| registry.breaker(name, b, metrics)),
            passive: c.health.passive.clone(),
            active: c.health.active.clone(),
            resolve_interval: c.resolve_interval.0,
            registry,
            metrics: UpstreamMetrics::new(metrics, name),
            pool_key: {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                name.hash(&mut h);
                h.finish()
            },
        };
        Ok(g)
    }

    /// Resolves host names with the system resolver. Blocking: call it at start-up or from a
    /// blocking task, never on a worker. Returns names that did not resolve.
    pub fn resolve_blocking(&self) -> Vec<String> {
        let mut failed = Vec::new();
        let resolved = self
            .specs
            .iter()
            .map(|s| {
                let r: Vec<SocketAddr> = (s.host.as_str(), s.port)
                    .to_socket_addrs()
                    .map(|i| i.collect())
                    .unwrap_or_default();
                if r.is_empty() {
                    failed.push(format!("{}:{}", s.host, s.port));
                }
                r
            })
            .collect();
        self.set_addresses(resolved);
        failed
    }

    /// Rebuilds the pool when the set of addresses changed. `resolved[i]` belongs to `specs[i]`.
    pub fn set_addresses(&self, resolved: Vec<Vec<SocketAddr>>) -> bool {
        let mut targets = Vec::new();
        for (spec, addrs) in self.specs.iter().zip(resolved) {
            let host: Option<Arc<str>> = spec.is_name.then(|| spec.host.as_str().into());
            for a in addrs {
                if !targets.iter().any(|t: &Arc<TargetState>| t.addr == a) {
                    targets.push(self.registry.get(
                        &self.name,
                        a,
                        host.clone(),
                        spec.weight,
                        spec.backup,
                    ));
                }
            }
        }
        let current = self.pool.load();
        let same = current.targets.len() == targets.len()
            && current
                .targets
                .iter()
                .zip(&targets)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            self.pool.store(Arc::new(Pool::new(targets, self.balance)));
        }
        !same
    }

    pub fn targets(&self) -> Vec<Arc<TargetState>> {
        self.pool.load().targets.clone()
    }

    pub fn has_names(&self) -> bool {
        self.specs.iter().any(|s| s.is_name)
    }

    /// Picks a healthy target, one not in `tried` when there is one.
    pub fn select(
        &self,
        req: &RequestHeader,
        client_ip: Option<IpAddr>,
        tried: &[SocketAddr],
    ) -> Result<Arc<TargetState>, GatewayError> {
        let now = now_ms();
        // Backup targets take the traffic only while no primary one is healthy.
        let backups = self.pool.load().has_backup
            && !self
                .pool
                .load()
                .targets
                .iter()
                .any(|t| !t.backup && t.is_healthy(now));
        let usable = |t: &TargetState| t.backup == backups && t.is_healthy(now);
        let untried = |t: &TargetState| usable(t) && !tried.contains(&t.addr);
        if let Some(t) = self.pick(req, client_ip, &untried) {
            return Ok(t);
        }
        // Every healthy target was tried: a retry goes back to one rather than give up.
        match tried.is_empty() {
            true => Err(GatewayError::NoHealthyTarget),
            false => self
                .pick(req, client_ip, &usable)
                .ok_or(GatewayError::NoHealthyTarget),
        }
    }

    /// The balancer's choice among the targets `ok` accepts.
    fn pick(
        &self,
        req: &RequestHeader,
        client_ip: Option<IpAddr>,
        ok: &dyn Fn(&TargetState) -> bool,
    ) -> Option<Arc<TargetState>> {
        let pool = self.pool.load();
        let picked = match self.balance {
            Balance::RoundRobin => pool.round_robin(ok),
            Balance::Random => pool.random(ok),
            Balance::LeastConn => pool.least_conn(ok),
            Balance::ConsistentHash => match self
                .hash_key
                .as_ref()
                .and_then(|k| k.extract(req, client_ip))
            {
                Some(key) => pool.hashed(&key, ok),
                None if self.fallback == HashFallback::Random => pool.random(ok),
                None => pool.round_robin(ok),
            },
        };
        picked.cloned()
    }

    /// The peer to connect to `t`, with this group's timeouts, TLS and HTTP version. `fresh`:
    /// a new connection, not a pooled one (the try after a pooled connection turned out closed).
    /// `bound`: the most a try may take (the retry's `per_try_timeout`, what is left of the
    /// route's `deadline`); each timeout is at most that.
    pub fn http_peer(&self, t: &TargetState, fresh: bool, bound: Option<Duration>) -> HttpPeer {
        let p = &self.peer;
        let sni = match (p.tls, &p.sni, &t.host) {
            (false, _, _) => String::new(),
            (true, Some(s), _) => s.clone(),
            (true, None, Some(h)) => h.to_string(),
            (true, None, None) => t.addr.ip().to_string(),
        };
        let mut peer = HttpPeer::new(t.addr, p.tls, sni);
        // Pooled connections are keyed by address, SNI and verify flags but not by CA or
        // timeouts: keep each upstream group's connections apart.
        // Pingora cannot be told to skip its pool, but the pool is keyed by `group_key`: a key
        // of its own has no idle connection to hand out.
        peer.group_key = if fresh {
            self.pool_key ^ FRESH_POOL
        } else {
            self.pool_key
        };
        let o = &mut peer.options;
        let to = &p.timeouts;
        let b = |d: Duration| Some(bound.map_or(d, |b| d.min(b)));
        o.connection_timeout = b(to.connect.0);
        o.total_connection_timeout = b(to.connect.0 * 2);
        o.read_timeout = b(to.read.0);
        o.write_timeout = b(to.write.0);
        o.idle_timeout = Some(to.idle.0);
        o.verify_cert = p.verify;
        o.verify_hostname = p.verify;
        o.ca = p.ca.clone();
        o.alpn = match (p.protocol, p.tls) {
            (Protocol::Http1, _) => ALPN::H1,
            (Protocol::Http2, _) => ALPN::H2,
            (Protocol::Auto, true) => ALPN::H2H1,
            (Protocol::Auto, false) => ALPN::H1,
        };
        if o.alpn != ALPN::H1 {
            o.max_h2_streams = 100;
        }
        peer
    }

    /// Asks the retry budget for a retry the policy allows; counted as `retried` or
    /// `budget_exhausted` in `postern_retries_total`.
    pub fn budget_allows_retry(&self) -> bool {
        let ok = self.budget.as_ref().is_none_or(|b| b.try_retry(now_ms()));
        self.metrics.retry_result(ok);
        if !ok {
            log::debug!("upstream {}: retry budget exhausted", self.name);
        }
        ok
    }

    /// Passive health: counts a proxied request's outcome against the target.
    pub fn record_outcome(&self, t: &TargetState, ok: bool) {
        if let Some(p) = &self.passive {
            if t.record_passive(ok, p.unhealthy_after, p.eject_for.0.as_millis() as u64) {
                log::warn!(
                    "upstream {}: target {} ejected for {} after {} consecutive failures",
                    self.name,
                    t.addr,
                    p.eject_for,
                    p.unhealthy_after
                );
            }
        }
    }

    /// Passive health: is this upstream status a failure?
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.passive
            .as_ref()
            .is_some_and(|p| p.statuses.contains(&status))
    }
}

/// Pool key of connections opened after a pooled one failed (see [`UpstreamGroup::http_peer`]).
const FRESH_POOL: u64 = 0x9e37_79b9_7f4a_7c15;

fn parse_target(addr: &str, weight: u32, backup: bool) -> Option<TargetSpec> {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Some(TargetSpec {
            host: sa.ip().to_string(),
            port: sa.port(),
            weight,
            is_name: false,
            backup,
        });
    }
    let (host, port) = addr.rsplit_once(':')?;
    Some(TargetSpec {
        host: host.to_string(),
        port: port.parse().ok()?,
        weight,
        is_name: true,
        backup,
    })
}

fn load_ca(file: &str) -> Result<Arc<[WrappedX509]>, String> {
    let pem = std::fs::read(file).map_err(|e| format!("cannot read CA bundle {file}: {e}"))?;
    let ders: Vec<Vec<u8>> = rustls_pemfile::certs(&mut pem.as_slice())
        .filter_map(Result::ok)
        .map(|c| c.to_vec())
        .collect();
    if ders.is_empty() {
        return Err(format!("{file} holds no PEM certificate"));
    }
    let wrapped: Vec<WrappedX509> = ders
        .into_iter()
        .map(|d| WrappedX509::new(d, pingora::utils::tls::parse_x509))
        .collect();
    Ok(wrapped.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_keys_parse_and_extract() {
        let mut req = RequestHeader::build("GET", b"/p?a=1&user=42", None).unwrap();
        req.insert_header("x-user", "u7").unwrap();
        req.insert_header("cookie", "x=1; sid=abc").unwrap();
        let get = |s: &str| {
            HashKey::parse(s)
                .unwrap()
                .extract(&req, Some("10.1.2.3".parse().unwrap()))
                .map(|c| c.into_owned())
        };
        assert_eq!(get("header:x-user"), Some(b"u7".to_vec()));
        assert_eq!(get("cookie:sid"), Some(b"abc".to_vec()));
        assert_eq!(get("query:user"), Some(b"42".to_vec()));
        assert_eq!(get("path"), Some(b"/p".to_vec()));
        assert_eq!(get("client_ip"), Some(b"10.1.2.3".to_vec()));
        assert_eq!(get("header:absent"), None);
        assert!(HashKey::parse("bogus").is_err());
        assert!(HashKey::parse("cookie:").is_err());
    }
}
