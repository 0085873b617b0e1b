//! `jwt`: verifies a JSON Web Token and resolves the caller to a consumer.
//!
//! ```yaml
//! plugins:
//!   - jwt:
//!       jwks_url: https://auth.example.com/.well-known/jwks.json   # background refresh
//!       # jwks_file: /etc/postern/jwks.json
//!       # keys: [ { kid: k1, alg: HS256, secret: "${JWT_SECRET}" }, { alg: ES256, pem_file: pub.pem } ]
//!       issuers: [ "https://auth.example.com/" ]
//!       audiences: [ api ]
//!       leeway: 30s
//!       scopes_any: [ "orders:read", "orders:admin" ]
//!       consumer_claim: sub
//!       forward_claims: { sub: x-user-id }
//!       strip_token: true
//! ```
//! Algorithms: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA. Every key is
//! pinned to its algorithm (see `auth::jwks`); `alg: none` never verifies.

use super::{BuildCtx, Flow, Plugin};
use crate::auth::jwks::{self, family, KeySet, RemoteJwks, VerifyKey};
use crate::auth::claims::ClaimRules;
use crate::auth::{failure, AuthFail, Consumers};
use crate::common::issue::Issue;
use crate::common::types::{Dur, Size};
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::auth::AuthMetrics;
use async_trait::async_trait;
use http::HeaderName;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

type Claims = serde_json::Map<String, serde_json::Value>;

/// Every algorithm Postern verifies.
const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Verified tokens remembered per plugin.
const CACHE_MAX: usize = 10_000;

/// Tokens already verified, by SHA-256 of the token: a repeated token costs a hash and a lookup
/// instead of a signature check. Entries end with the token (`exp` + leeway); the whole cache is
/// dropped when the key set changes (rotation), so a removed key stops working at once.
#[derive(Default)]
struct VerifiedCache {
    key_set: u64,
    map: std::collections::HashMap<[u8; 32], (u64, Arc<Claims>)>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "jwt")]
pub struct Config {
    /// Keys given inline (secret, PEM, PEM file or JWK).
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// A JWKS document on disk, read when the configuration loads.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// A JWKS URL, fetched in the background.
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default = "default_refresh")]
    pub jwks_refresh: Dur,
    /// Shortest time between two fetches caused by unknown `kid`s.
    #[serde(default = "default_min_refetch")]
    pub jwks_min_refetch: Dur,
    /// Algorithms allowed for JWKS keys that do not name their own `alg`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Accepted `iss` values (any when empty).
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted `aud` values (not checked when empty).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// Claims that must be present.
    #[serde(default = "default_required")]
    pub required_claims: Vec<String>,
    /// At least one of these scopes (`scope` string or `scp` list).
    #[serde(default)]
    pub scopes_any: Vec<String>,
    /// All of these scopes.
    #[serde(default)]
    pub scopes_all: Vec<String>,
    /// The claim naming the consumer.
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    /// Reject tokens whose consumer claim names no entry of `consumers`.
    #[serde(default)]
    pub consumer_required: bool,
    /// Where the token is read from (default: `Authorization: Bearer`).
    #[serde(default)]
    pub token: TokenSource,
    /// Claims copied to request headers: `{ claim: header }`.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Remove the token from the request sent upstream.
    #[serde(default)]
    pub strip_token: bool,
    /// Longest token accepted (1KiB to 1MiB, default 16KiB); a longer one is refused with 401
    /// before any parsing. Tokens arrive in a header, so `server.max_header_size` bounds it too.
    #[serde(default = "default_max_token_size")]
    pub max_token_size: Size,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "JwtKey")]
pub struct KeyConfig {
    #[serde(default)]
    pub kid: Option<String>,
    /// The one algorithm this key verifies (not needed for a JWK with `alg`).
    #[serde(default)]
    pub alg: Option<String>,
    /// HMAC secret (use `${ENV}`).
    #[serde(default)]
    pub secret: Option<String>,
    /// Public key PEM (RSA, EC or Ed25519).
    #[serde(default)]
    pub pem: Option<String>,
    #[serde(default)]
    pub pem_file: Option<String>,
    #[serde(default)]
    pub jwk: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenSource {
    /// A header holding the token; `authorization` expects the `Bearer` scheme.
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

fn default_refresh() -> Dur {
    Dur::secs(300)
}
fn default_min_refetch() -> Dur {
    Dur::secs(30)
}
fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "PS256", "EdDSA"]
        .map(String::from)
        .to_vec()
}
fn default_max_token_size() -> Size {
    Size(16 << 10)
}
fn default_leeway() -> Dur {
    Dur::secs(30)
}
fn default_required() -> Vec<String> {
    vec!["exp".into()]
}
fn default_consumer_claim() -> String {
    "sub".into()
}

enum Source {
    Header(HeaderName, bool),
    Cookie(String),
    Query(String),
}

pub struct Jwt {
    fixed: KeySet,
    remote: Option<Arc<RemoteJwks>>,
    /// Claim checks, one per algorithm (built once: a `Validation` holds sets that would
    /// otherwise be cloned per token).
    validations: Vec<(Algorithm, Validation)>,
    rules: ClaimRules,
    consumer_required: bool,
    consumers: Arc<Consumers>,
    source: Source,
    strip: bool,
    max_token: usize,
    leeway: u64,
    cache: parking_lot::Mutex<VerifiedCache>,
    metrics: AuthMetrics,
}

fn parse_alg(s: &str) -> Result<Algorithm, String> {
    if s.eq_ignore_ascii_case("none") {
        return Err("`none` is not an algorithm Postern accepts".into());
    }
    Algorithm::from_str(s)
        .ok()
        .filter(|a| family(*a).is_some())
        .ok_or_else(|| {
            format!("unknown algorithm \"{s}\"; use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA")
        })
}

fn inline_key(k: &KeyConfig, fallback: &[Algorithm]) -> Result<VerifyKey, String> {
    if let Some(j) = &k.jwk {
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(j.clone()).map_err(|e| format!("invalid JWK: {e}"))?;
        let mut vk = jwks::from_jwk(&jwk, fallback)?;
        if let Some(a) = &k.alg {
            let a = parse_alg(a)?;
            if !vk.algs.contains(&a) {
                return Err(format!("alg {a:?} does not fit this JWK"));
            }
            vk.algs = vec![a];
        }
        vk.kid = k.kid.clone().or(vk.kid);
        return Ok(vk);
    }
    let alg = parse_alg(k.alg.as_deref().ok_or("`alg` is required for this key")?)?;
    let pem = match (&k.pem, &k.pem_file) {
        (Some(p), None) => Some(p.clone()),
        (None, Some(f)) => {
            Some(std::fs::read_to_string(f).map_err(|e| format!("cannot read {f}: {e}"))?)
        }
        (Some(_), Some(_)) => return Err("give `pem` or `pem_file`, not both".into()),
        (None, None) => None,
    };
    let Some(fam) = family(alg) else {
        return Err(format!("unsupported algorithm {alg:?}"));
    };
    let key = match (fam, &k.secret, pem) {
        (jwks::Family::Hmac, Some(s), None) => {
            if s.len() < 32 {
                return Err("an HMAC secret needs at least 32 bytes".into());
            }
            DecodingKey::from_secret(s.as_bytes())
        }
        (jwks::Family::Hmac, _, _) => return Err("HS algorithms need `secret` only".into()),
        (_, Some(_), _) => {
            return Err(format!(
                "{alg:?} needs a public key (`pem`, `pem_file` or `jwk`), not a secret"
            ))
        }
        (jwks::Family::Rsa, None, Some(p)) => {
            DecodingKey::from_rsa_pem(p.as_bytes()).map_err(|e| format!("invalid RSA PEM: {e}"))?
        }
        (jwks::Family::Ec, None, Some(p)) => {
            DecodingKey::from_ec_pem(p.as_bytes()).map_err(|e| format!("invalid EC PEM: {e}"))?
        }
        (jwks::Family::Ed, None, Some(p)) => DecodingKey::from_ed_pem(p.as_bytes())
            .map_err(|e| format!("invalid Ed25519 PEM: {e}"))?,
        (_, None, None) => return Err("give the public key as `pem`, `pem_file` or `jwk`".into()),
    };
    Ok(VerifyKey {
        kid: k.kid.clone(),
        algs: vec![alg],
        key,
    })
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(Jwt::new(self, b)?))
    }
}

/// The algorithms of JWKS keys that name none, and the refresh intervals.
fn fallback_algorithms(c: &Config, path: &str, issues: &mut Vec<Issue>) -> Vec<Algorithm> {
    let mut fallback = Vec::new();
    for (i, a) in c.algorithms.iter().enumerate() {
        match parse_alg(a) {
            Ok(a) => fallback.push(a),
            Err(e) => issues.push(Issue::new(format!("{path}.algorithms[{i}]"), e)),
        }
    }
    for (key, d) in [
        ("jwks_refresh", c.jwks_refresh.0),
        ("jwks_min_refetch", c.jwks_min_refetch.0),
    ] {
        if d < Duration::from_secs(1) {
            issues.push(Issue::new(format!("{path}.{key}"), "must be at least 1s"));
        }
    }
    fallback
}

/// The keys given inline or in a JWKS file, and the remote JWKS (shared across reloads);
/// at least one of them.
fn key_sets(
    c: &Config,
    b: &BuildCtx,
    fallback: &[Algorithm],
    issues: &mut Vec<Issue>,
) -> (KeySet, Option<Arc<RemoteJwks>>) {
    let path = &b.path;
    let mut fixed = KeySet::default();
    for (i, k) in c.keys.iter().enumerate() {
        match inline_key(k, fallback) {
            Ok(k) => fixed.keys.push(k),
            Err(e) => issues.push(Issue::new(format!("{path}.keys[{i}]"), e)),
        }
    }
    if let Some(f) = &c.jwks_file {
        match std::fs::read(f)
            .map_err(|e| format!("cannot read {f}: {e}"))
            .and_then(|t| jwks::parse_set(&t, fallback))
        {
            Ok(s) => fixed.keys.extend(s.keys),
            Err(e) => issues.push(Issue::new(format!("{path}.jwks_file"), e)),
        }
    }
    let remote = match &c.jwks_url {
        Some(u) if !(u.starts_with("https://") || u.starts_with("http://")) => {
            issues.push(Issue::new(
                format!("{path}.jwks_url"),
                "expected an http:// or https:// URL",
            ));
            None
        }
        Some(u) => b
            .shared
            .jwks(u, c.jwks_refresh.0, c.jwks_min_refetch.0, fallback)
            .map_err(|e| issues.push(Issue::new(format!("{path}.jwks_url"), e)))
            .ok(),
        None => None,
    };
    if fixed.keys.is_empty() && remote.is_none() && issues.is_empty() {
        issues.push(Issue::new(
            path.clone(),
            "no verification key: give `keys`, `jwks_file` or `jwks_url`",
        ));
    }
    (fixed, remote)
}

/// Where the token is read: one header (`Authorization` expects `Bearer`), cookie or query
/// parameter.
fn token_source(t: &TokenSource, path: &str, issues: &mut Vec<Issue>) -> Option<Source> {
    match (&t.header, &t.cookie, &t.query) {
        (None, None, None) => Some(Source::Header(http::header::AUTHORIZATION, true)),
        (Some(h), None, None) => HeaderName::from_bytes(h.as_bytes())
            .map(|n| {
                let bearer = n == http::header::AUTHORIZATION;
                Source::Header(n, bearer)
            })
            .map_err(|_| {
                issues.push(Issue::new(
                    format!("{path}.token.header"),
                    "invalid header name",
                ))
            })
            .ok(),
        (None, Some(c), None) => Some(Source::Cookie(c.clone())),
        (None, None, Some(q)) => Some(Source::Query(q.clone())),
        _ => {
            issues.push(Issue::new(
                format!("{path}.token"),
                "give one of `header`, `cookie` or `query`",
            ));
            None
        }
    }
}

/// The claim checks, one per algorithm: the algorithm list is set per token from the key, the
/// rest is fixed here (a `Validation` holds sets that would otherwise be cloned per token).
fn validations(c: &Config) -> Vec<(Algorithm, Validation)> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = c.leeway.0.as_secs();
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&c.required_claims);
    if !c.issuers.is_empty() {
        validation.set_issuer(&c.issuers);
    }
    if c.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&c.audiences);
    }
    ALGORITHMS
        .iter()
        .map(|a| {
            let mut v = validation.clone();
            v.algorithms = vec![*a];
            (*a, v)
        })
        .collect()
}

impl Jwt {
    /// Checks the configuration (every problem at its path), then builds the verifier.
    pub fn new(c: &Config, b: &BuildCtx) -> Result<Jwt, Vec<Issue>> {
        crate::auth::crypto::install();
        let path = &b.path;
        let mut issues = Vec::new();
        let fallback = fallback_algorithms(c, path, &mut issues);
        let (fixed, remote) = key_sets(c, b, &fallback, &mut issues);
        let source = token_source(&c.token, path, &mut issues);
        if !(1 << 10..=1 << 20).contains(&c.max_token_size.0) {
            issues.push(Issue::new(
                format!("{path}.max_token_size"),
                format!(
                    "must be between 1KiB and 1MiB, got {} bytes",
                    c.max_token_size.0
                ),
            ));
        }
        let rules = ClaimRules::new(
            &c.scopes_any,
            &c.scopes_all,
            &c.consumer_claim,
            &c.forward_claims,
            path,
            &mut issues,
        );
        let (Some(source), true) = (source, issues.is_empty()) else {
            return Err(issues);
        };
        Ok(Jwt {
            fixed,
            remote,
            validations: validations(c),
            rules,
            consumer_required: c.consumer_required,
            consumers: b.consumers.clone(),
            source,
            strip: c.strip_token,
            max_token: c.max_token_size.0 as usize,
            leeway: c.leeway.0.as_secs(),
            cache: parking_lot::Mutex::new(VerifiedCache::default()),
            metrics: AuthMetrics::new(b.shared.metrics(), b.route, "jwt"),
        })
    }

    fn token<'a>(&self, req: &'a RequestHeader) -> Option<&'a str> {
        match &self.source {
            Source::Header(n, bearer) => {
                let v = req.headers.get(n)?.to_str().ok()?.trim();
                if *bearer {
                    let (scheme, t) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| t.trim())
                } else {
                    Some(v)
                }
            }
            Source::Cookie(name) => crate::http::cookie(req, name),
            Source::Query(name) => crate::http::query(req, name),
        }
    }

    /// Verifies with the candidate keys of `set`: `Ok(None)` when no key matched.
    fn verify(
        &self,
        set: &KeySet,
        token: &str,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<Claims>, ErrorKind> {
        let mut last = None;
        for k in set.candidates(kid, alg) {
            let Some((_, v)) = self.validations.iter().find(|(a, _)| *a == alg) else {
                continue;
            };
            match jsonwebtoken::decode::<Claims>(token, &k.key, v) {
                Ok(data) => return Ok(Some(data.claims)),
                Err(e) => match e.kind() {
                    ErrorKind::InvalidSignature => last = Some(ErrorKind::InvalidSignature),
                    other => return Err(other.clone()),
                },
            }
        }
        match last {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    fn fail(&self, ctx: &mut RequestCtx, why: AuthFail) -> Result<Flow, GatewayError> {
        self.metrics.failed(why);
        Ok(Flow::Respond(failure(ctx, why, "Bearer", "postern")))
    }
}

#[async_trait]
impl Plugin for Jwt {
    fn start(&self) {
        if let Some(r) = &self.remote {
            r.start();
        }
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let Some(token) = self.token(req).map(str::to_string) else {
            return self.fail(ctx, AuthFail::Missing);
        };
        if token.len() > self.max_token {
            return self.fail(ctx, AuthFail::Invalid);
        }
        let digest = crate::auth::sha256(token.as_bytes());
        let set_id = self.remote.as_ref().map_or(0, |r| r.generation());
        let cached = {
            let mut c = self.cache.lock();
            if c.key_set != set_id {
                c.map.clear();
                c.key_set = set_id;
            }
            let now = unix_now();
            match c.map.get(&digest) {
                Some((until, claims)) if now <= *until => Some(claims.clone()),
                Some(_) => {
                    c.map.remove(&digest);
                    None
                }
                None => None,
            }
        };
        let claims = match cached {
            Some(c) => c,
            None => match self.verify_token(&token, ctx).await {
                Ok(c) => {
                    let c = Arc::new(c);
                    let until = c
                        .get("exp")
                        .and_then(serde_json::Value::as_u64)
                        .map_or(unix_now() + 300, |e| e.saturating_add(self.leeway));
                    let mut cache = self.cache.lock();
                    if cache.map.len() >= CACHE_MAX {
                        let now = unix_now();
                        cache.map.retain(|_, (u, _)| *u >= now);
                        if cache.map.len() >= CACHE_MAX {
                            cache.map.clear();
                        }
                    }
                    cache.map.insert(digest, (until, c.clone()));
                    c
                }
                Err(why) => return self.fail(ctx, why),
            },
        };
        self.accept(req, ctx, claims)
    }
}

/// RFC 7515 §4.1.11: `crit` lists header extensions the recipient MUST understand or reject the
/// token. Postern understands none (RFC 7797's unencoded payload `b64` included), and an empty
/// `crit` is forbidden outright, so any `crit` makes the token invalid; so does a `b64` that is
/// not `true`, since it changes what the signature covers. An unreadable header is invalid too.
fn has_extensions(token: &str) -> bool {
    use base64::Engine;
    let head = token.split('.').next().unwrap_or_default();
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(head) else {
        return true;
    };
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes) {
        Ok(h) => {
            h.contains_key("crit")
                || h.get("b64")
                    .is_some_and(|b| *b != serde_json::Value::Bool(true))
        }
        Err(_) => true,
    }
}

impl Jwt {
    /// The full check of a token not seen before: header, key, signature and claims.
    async fn verify_token(&self, token: &str, _ctx: &RequestCtx) -> Result<Claims, AuthFail> {
        if has_extensions(token) {
            return Err(AuthFail::Invalid);
        }
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Err(AuthFail::Invalid);
        };
        let kid = header.kid.as_deref();
        let mut result = self.verify(&self.fixed, token, kid, header.alg);
        if let (Ok(None), Some(remote)) = (&result, &self.remote) {
            let set = match remote.current() {
                Some(s) if kid.is_none_or(|k| s.has_kid(k)) => Some(s),
                // Unknown kid or no set yet: a rotation may have happened.
                _ => remote.refetch(Duration::from_secs(2)).await,
            };
            if let Some(set) = set {
                result = self.verify(&set, token, kid, header.alg);
            }
        }
        match result {
            Ok(Some(c)) => Ok(c),
            Ok(None) => Err(AuthFail::Invalid),
            Err(ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature) => {
                Err(AuthFail::Expired)
            }
            Err(_) => Err(AuthFail::Invalid),
        }
    }

    /// Scope, consumer and forwarding steps of a verified token.
    fn accept(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
        claims: Arc<Claims>,
    ) -> Result<Flow, GatewayError> {
        let consumer =
            match self
                .rules
                .accept(&claims, req, &self.consumers, self.consumer_required)
            {
                Ok(c) => c,
                Err(why) => return self.fail(ctx, why),
            };
        if self.strip {
            match &self.source {
                Source::Header(n, _) => {
                    req.remove_header(n);
                }
                Source::Cookie(name) => crate::http::remove_cookie(req, name),
                Source::Query(name) => crate::auth::remove_query(req, name),
            }
        }
        ctx.consumer = consumer;
        ctx.claims = Some(claims);
        Ok(Flow::Continue)
    }
}
