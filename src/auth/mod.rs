//! What the authentication plugins share: the compiled `consumers` section (lookups by name, by
//! API-key digest and by Basic user name), password hashes, JWKS key sets, and where a token is
//! read from. Plugins resolve a request to a [`Consumer`] and record it in the request context.

pub mod claims;
pub mod config;
pub mod crypto;
pub mod jwks;
pub mod password;

use crate::auth::config::ConsumerConfig;
use crate::common::issue::Issue;
use crate::context::Consumer;
use password::PasswordHash;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// The `consumers` section, compiled.
#[derive(Default)]
pub struct Consumers {
    by_name: HashMap<String, Arc<Consumer>>,
    api_keys: HashMap<[u8; 32], Arc<Consumer>>,
    basic: HashMap<String, (PasswordHash, Arc<Consumer>)>,
    /// `sha256:<hex>`, `san:<name>` and `cn:<name>` of client certificates.
    certs: HashMap<String, Arc<Consumer>>,
}

/// SHA-256 of a secret.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Consumers {
    pub fn compile(list: &[ConsumerConfig], issues: &mut Vec<Issue>) -> Consumers {
        let mut c = Consumers::default();
        for (i, cc) in list.iter().enumerate() {
            let path = format!("consumers[{i}]");
            let consumer = Arc::new(Consumer {
                name: cc.name.clone(),
                groups: cc.groups.clone(),
            });
            if cc.name.is_empty() {
                issues.push(Issue::new(
                    format!("{path}.name"),
                    "a consumer needs a name",
                ));
            }
            if c.by_name
                .insert(cc.name.clone(), consumer.clone())
                .is_some()
            {
                issues.push(Issue::new(
                    format!("{path}.name"),
                    format!("duplicate consumer name \"{}\"", cc.name),
                ));
            }
            for (j, k) in cc.api_keys.iter().enumerate() {
                let p = format!("{path}.api_keys[{j}]");
                let digest = match (&k.sha256, &k.key) {
                    (Some(h), None) => parse_hex32(h).or_else(|| {
                        issues.push(Issue::new(
                            format!("{p}.sha256"),
                            "expected 64 hex digits (the SHA-256 of the key)",
                        ));
                        None
                    }),
                    (None, Some(plain)) if !plain.is_empty() => Some(sha256(plain.as_bytes())),
                    _ => {
                        issues.push(Issue::new(p.clone(), "give either `sha256` or `key`"));
                        None
                    }
                };
                if let Some(d) = digest {
                    if c.api_keys.insert(d, consumer.clone()).is_some() {
                        issues.push(Issue::new(
                            p,
                            "this API key belongs to another consumer too",
                        ));
                    }
                }
            }
            for (j, id) in cc.certificates.iter().enumerate() {
                let p = format!("{path}.certificates[{j}]");
                let key = match (&id.sha256, &id.san, &id.cn) {
                    (Some(h), None, None) => parse_hex32(h)
                        .map(|_| format!("sha256:{}", h.trim().to_ascii_lowercase()))
                        .ok_or("expected 64 hex digits (SHA-256 of the DER certificate)"),
                    (None, Some(s), None) => Ok(format!("san:{s}")),
                    (None, None, Some(cn)) => Ok(format!("cn:{cn}")),
                    _ => Err("give exactly one of `sha256`, `san` or `cn`"),
                };
                match key {
                    Ok(k) => {
                        if c.certs.insert(k, consumer.clone()).is_some() {
                            issues.push(Issue::new(
                                p,
                                "this certificate identifies another consumer too",
                            ));
                        }
                    }
                    Err(e) => issues.push(Issue::new(p, e)),
                }
            }
            if let Some(b) = &cc.basic {
                let user = b.username.clone().unwrap_or_else(|| cc.name.clone());
                match PasswordHash::parse(&b.password_hash) {
                    Ok(h) => {
                        if c.basic
                            .insert(user.clone(), (h, consumer.clone()))
                            .is_some()
                        {
                            issues.push(Issue::new(
                                format!("{path}.basic.username"),
                                format!("duplicate Basic user name \"{user}\""),
                            ));
                        }
                    }
                    Err(e) => issues.push(Issue::new(format!("{path}.basic.password_hash"), e)),
                }
            }
        }
        c
    }

    pub fn by_name(&self, name: &str) -> Option<&Arc<Consumer>> {
        self.by_name.get(name)
    }

    /// The consumer owning this API key. The map is keyed by the key's SHA-256, so what a client
    /// sends is never compared with stored material byte by byte; the final comparison of the
    /// digests is constant-time as well.
    pub fn by_api_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        use subtle::ConstantTimeEq;
        let d = sha256(key);
        self.api_keys
            .get_key_value(&d)
            .filter(|(k, _)| bool::from(k.ct_eq(&d)))
            .map(|(_, c)| c)
    }

    pub fn basic(&self, user: &str) -> Option<&(PasswordHash, Arc<Consumer>)> {
        self.basic.get(user)
    }

    /// The consumer a verified client certificate identifies: by fingerprint, then by any
    /// subjectAltName, then by subject CN.
    pub fn by_cert(&self, cert: &crate::context::ClientCert) -> Option<&Arc<Consumer>> {
        self.certs
            .get(&format!("sha256:{}", cert.sha256))
            .or_else(|| {
                cert.sans
                    .iter()
                    .find_map(|s| self.certs.get(&format!("san:{s}")))
            })
            .or_else(|| {
                cert.subject_cn
                    .as_ref()
                    .and_then(|cn| self.certs.get(&format!("cn:{cn}")))
            })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

/// Why an authentication or authorization plugin refused a request (also the metric reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFail {
    /// No credentials of this kind in the request.
    Missing,
    /// Credentials present but wrong (bad signature, unknown key, wrong password).
    Invalid,
    /// A token outside its `nbf`..`exp` validity.
    Expired,
    /// A valid token without the required scope.
    Scope,
    /// Valid credentials that map to no known consumer where one is required.
    UnknownConsumer,
    /// An authorization policy (acl, ip_filter, time_window) said no.
    Denied,
}

impl AuthFail {
    pub const ALL: [AuthFail; 6] = [
        AuthFail::Missing,
        AuthFail::Invalid,
        AuthFail::Expired,
        AuthFail::Scope,
        AuthFail::UnknownConsumer,
        AuthFail::Denied,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            AuthFail::Missing => "missing",
            AuthFail::Invalid => "invalid",
            AuthFail::Expired => "expired",
            AuthFail::Scope => "insufficient_scope",
            AuthFail::UnknownConsumer => "unknown_consumer",
            AuthFail::Denied => "denied",
        }
    }

    fn error(self) -> crate::error::GatewayError {
        use crate::error::GatewayError::{Forbidden, Unauthorized};
        match self {
            AuthFail::Missing => Unauthorized("Credentials are required."),
            AuthFail::Invalid => Unauthorized("The credentials are not valid."),
            AuthFail::Expired => Unauthorized("The token has expired or is not valid yet."),
            AuthFail::Scope => Forbidden("The token lacks a required scope."),
            AuthFail::UnknownConsumer => Forbidden("The caller is not a known consumer."),
            AuthFail::Denied => Forbidden("Access to this resource is denied."),
        }
    }
}

/// The last authentication failure of a request (the `auth: { any: [...] }` combinator picks
/// the most informative one).
#[derive(Debug, Clone, Copy)]
pub struct LastFail(pub AuthFail);

/// The 401/403 reply of a failure, with a `WWW-Authenticate` challenge on 401 (RFC 9110 §11.6.1)
/// and the Bearer error codes of RFC 6750 §3.
pub fn failure(
    ctx: &mut crate::context::RequestCtx,
    why: AuthFail,
    scheme: &str,
    realm: &str,
) -> crate::reply::Reply {
    ctx.ext.insert(LastFail(why));
    let mut r = why.error().reply(&ctx.request_id);
    let challenge = match (why, scheme) {
        (AuthFail::Missing, s) => Some(format!("{s} realm=\"{realm}\"")),
        (AuthFail::Invalid | AuthFail::Expired, "Bearer") => {
            Some(format!("Bearer realm=\"{realm}\", error=\"invalid_token\""))
        }
        (AuthFail::Scope, "Bearer") => Some(format!(
            "Bearer realm=\"{realm}\", error=\"insufficient_scope\""
        )),
        (AuthFail::Invalid | AuthFail::Expired, s) => Some(format!("{s} realm=\"{realm}\"")),
        _ => None,
    };
    if let Some(v) = challenge.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
        r.headers.push((http::header::WWW_AUTHENTICATE, v));
    }
    r
}

/// Removes a query parameter from the request target sent upstream.
pub fn remove_query(req: &mut pingora::http::RequestHeader, name: &str) {
    let Some(q) = req.uri.query() else { return };
    let kept: Vec<&str> = q
        .split('&')
        .filter(|p| p.split_once('=').map_or(*p, |(k, _)| k) != name)
        .collect();
    let path = req.uri.path().to_string();
    let target = if kept.is_empty() {
        path
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    if let Ok(uri) = target.parse::<http::Uri>() {
        req.set_uri(uri);
    }
}

/// Failure counters of one authentication or authorization plugin on one route, one per reason.
#[derive(Clone, Default)]
pub struct AuthMetrics(Option<Vec<(AuthFail, prometheus::IntCounter)>>);

impl AuthMetrics {
    pub fn new(
        metrics: &crate::observability::metrics::Metrics,
        route: &str,
        plugin: &str,
    ) -> AuthMetrics {
        let counters: Option<Vec<_>> = AuthFail::ALL
            .iter()
            .map(|f| {
                crate::observability::metrics::auth_failure_counter(
                    metrics,
                    route,
                    plugin,
                    f.reason(),
                )
                .map(|c| (*f, c))
            })
            .collect();
        AuthMetrics(counters)
    }

    pub fn failed(&self, why: AuthFail) {
        if let Some(v) = &self.0 {
            if let Some((_, c)) = v.iter().find(|(f, _)| *f == why) {
                c.inc();
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, what a dual-stack socket reports) as IPv4,
/// so that IPv4 rules match them.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// The client address: the peer, or when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not a trusted proxy itself.
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    req: &pingora::http::RequestHeader,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    let mut current = canonical_ip(peer?);
    if trusted.is_empty() || !trusted.iter().any(|n| n.contains(&current)) {
        return Some(current);
    }
    let hops: Vec<&str> = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<std::net::IpAddr>() else {
            break;
        };
        current = canonical_ip(ip);
        if !trusted.iter().any(|n| n.contains(&current)) {
            break;
        }
    }
    Some(current)
}

/// `forward_claims: { claim: header }`, parsed; bad header names become issues.
pub fn forward_claims(
    map: &std::collections::BTreeMap<String, String>,
    path: &str,
    issues: &mut Vec<Issue>,
) -> Vec<(String, http::HeaderName)> {
    map.iter()
        .filter_map(|(claim, h)| {
            http::HeaderName::from_bytes(h.as_bytes())
                .map(|n| (claim.clone(), n))
                .map_err(|_| {
                    issues.push(Issue::new(
                        format!("{path}.forward_claims.{claim}"),
                        format!("invalid header name \"{h}\""),
                    ))
                })
                .ok()
        })
        .collect()
}

/// Copies claims to request headers, replacing whatever the client sent under those names.
pub fn apply_claims(
    req: &mut pingora::http::RequestHeader,
    forward: &[(String, http::HeaderName)],
    claims: &serde_json::Map<String, serde_json::Value>,
) {
    for (claim, h) in forward {
        req.remove_header(h);
        let v = match claims.get(claim) {
            Some(serde_json::Value::String(s)) => http::HeaderValue::from_str(s).ok(),
            Some(serde_json::Value::Null) | None => None,
            Some(other) => http::HeaderValue::from_str(&other.to_string()).ok(),
        };
        if let Some(v) = v {
            let _ = req.insert_header(h.clone(), v);
        }
    }
}

/// The HTTP client of an external service (authorization, introspection): the URL must be
/// http(s); no redirects are followed; every call is bounded by `timeout`.
pub fn service_client(
    url: &str,
    timeout: std::time::Duration,
    path: &str,
    issues: &mut Vec<Issue>,
) -> Option<reqwest::Client> {
    if !(url.starts_with("http://") || url.starts_with("https://"))
        || url.parse::<http::Uri>().is_err()
    {
        issues.push(Issue::new(
            format!("{path}.url"),
            format!("invalid URL \"{url}\"; expected http:// or https://"),
        ));
    }
    if timeout.is_zero() {
        issues.push(Issue::new(format!("{path}.timeout"), "must be above 0"));
    }
    crate::common::http_client_ready();
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| issues.push(Issue::new(path, format!("HTTP client: {e}"))))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_hops() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut req = pingora::http::RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")
            .unwrap();
        let peer = "10.0.0.1".parse().ok();
        assert_eq!(
            client_ip(peer, &req, &trusted),
            "1.2.3.4".parse().ok(),
            "the right-most untrusted hop, not the spoofable left-most one"
        );
        let untrusted_peer = "8.8.8.8".parse().ok();
        assert_eq!(client_ip(untrusted_peer, &req, &trusted), untrusted_peer);
        assert_eq!(client_ip(peer, &req, &[]), peer);
    }
}
