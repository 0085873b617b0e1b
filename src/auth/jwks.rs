//! Verification keys of the `jwt` plugin: inline keys, a JWKS file, or a JWKS URL fetched in the
//! background. A URL is refreshed every `jwks_refresh`, and early when a token names an unknown
//! `kid` (at most once per `jwks_min_refetch`, so forged `kid`s cannot turn into a flood of
//! fetches). A failed fetch keeps the last good set. Requests never fetch: they read the current
//! set; only a request with an unknown `kid` waits (briefly) for the refetch it triggered.
//!
//! Every key is pinned to algorithms: its JWK `alg`, or, for JWKs without one, the configured
//! algorithms of its key type. A token whose `alg` is not allowed for the key that signed it is
//! rejected, which rules out `alg: none` and HS-with-a-public-key confusion.

use arc_swap::ArcSwapOption;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Key type families; an algorithm only works with keys of its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

pub fn family(a: Algorithm) -> Option<Family> {
    use Algorithm::*;
    Some(match a {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
        _ => return None,
    })
}

/// One verification key and the algorithms it may verify.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub algs: Vec<Algorithm>,
    pub key: DecodingKey,
}

#[derive(Clone, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

impl KeySet {
    /// Keys that may verify a token with this header, restricted to keys allowing the token's
    /// algorithm: the keys with the token's `kid`; when no key has it (or the token names none),
    /// the keys without a `kid`, since a `kid` is only a hint (RFC 7515 §4.1.4); every key when
    /// the token has no `kid`.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        let known = kid.is_some_and(|k| self.has_kid(k));
        self.keys.iter().filter(move |k| {
            k.algs.contains(&alg)
                && match kid {
                    None => true,
                    Some(_) if known => k.kid.as_deref() == kid,
                    Some(_) => k.kid.is_none(),
                }
        })
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

/// Parses a JWK; `fallback` are the configured algorithms, used when the JWK has no `alg`.
pub fn from_jwk(j: &Jwk, fallback: &[Algorithm]) -> Result<VerifyKey, String> {
    let fam = match &j.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(_) => Family::Ec,
        AlgorithmParameters::OctetKey(_) => Family::Hmac,
        AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
        _ => return Err("unsupported JWK key type".into()),
    };
    let algs: Vec<Algorithm> = match &j.common.key_algorithm {
        Some(ka) => {
            let a = Algorithm::from_str(&ka.to_string())
                .map_err(|_| format!("unsupported JWK alg {ka}"))?;
            if family(a) != Some(fam) {
                return Err(format!("JWK alg {a:?} does not fit its key type"));
            }
            vec![a]
        }
        None => fallback
            .iter()
            .copied()
            .filter(|a| family(*a) == Some(fam))
            .collect(),
    };
    if algs.is_empty() {
        return Err("no configured algorithm fits this key type (set `algorithms`)".into());
    }
    let key = DecodingKey::from_jwk(j).map_err(|e| format!("invalid JWK: {e}"))?;
    Ok(VerifyKey {
        kid: j.common.key_id.clone(),
        algs,
        key,
    })
}

/// Parses a JWKS document; unusable keys (encryption keys, unknown types) are skipped.
pub fn parse_set(text: &[u8], fallback: &[Algorithm]) -> Result<KeySet, String> {
    let set: JwkSet = serde_json::from_slice(text).map_err(|e| format!("invalid JWKS: {e}"))?;
    let keys: Vec<VerifyKey> = set
        .keys
        .iter()
        .filter(|j| {
            !matches!(
                j.common.public_key_use,
                Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
            )
        })
        .filter_map(|j| match from_jwk(j, fallback) {
            Ok(k) => Some(k),
            Err(e) => {
                log::debug!("JWKS key {:?} skipped: {e}", j.common.key_id);
                None
            }
        })
        .collect();
    if keys.is_empty() {
        return Err("the JWKS has no usable signing key".into());
    }
    Ok(KeySet { keys })
}

/// A JWKS fetched from a URL and kept fresh in the background.
pub struct RemoteJwks {
    pub url: String,
    refresh: Duration,
    min_refetch: Duration,
    fallback: Vec<Algorithm>,
    set: ArcSwapOption<KeySet>,
    /// Bumped whenever a new key set is installed.
    generation: AtomicU64,
    started: AtomicBool,
    /// Asks the background task for an early fetch.
    kick: Notify,
    /// Signalled after every fetch attempt.
    fetched: Notify,
    epoch: Instant,
    /// When a token last triggered an early fetch (ms since `epoch`, 0: never).
    last_early_ms: AtomicU64,
    client: reqwest::Client,
}

impl RemoteJwks {
    pub fn new(
        url: String,
        refresh: Duration,
        min_refetch: Duration,
        fallback: Vec<Algorithm>,
    ) -> Result<RemoteJwks, String> {
        crate::common::http_client_ready();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(RemoteJwks {
            url,
            refresh,
            min_refetch,
            fallback,
            set: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            started: AtomicBool::new(false),
            kick: Notify::new(),
            fetched: Notify::new(),
            epoch: Instant::now(),
            last_early_ms: AtomicU64::new(0),
            client,
        })
    }

    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.set.load_full()
    }

    /// Changes whenever the key set does (for caches of verified tokens).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Starts the refresh task once (needs a Tokio runtime). It ends with the last user.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<RemoteJwks> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(me) = weak.upgrade() else { return };
                me.fetch_once().await;
                let (refresh, retry) = (me.refresh, me.set.load().is_none());
                let wait = if retry {
                    // No set yet: retry soon, but not in a tight loop.
                    me.min_refetch.min(Duration::from_secs(5))
                } else {
                    refresh
                };
                let kicked = async { me.kick.notified().await };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = kicked => {}
                }
            }
        });
    }

    async fn fetch_once(&self) {
        let result = async {
            let resp = self
                .client
                .get(&self.url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("status {}", resp.status()));
            }
            let body = resp.bytes().await.map_err(|e| e.to_string())?;
            parse_set(&body, &self.fallback)
        }
        .await;
        match result {
            Ok(set) => {
                log::debug!("JWKS {} loaded: {} keys", self.url, set.keys.len());
                self.set.store(Some(Arc::new(set)));
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => log::warn!(
                "JWKS {} could not be fetched ({e}); keeping the last good key set",
                self.url
            ),
        }
        self.fetched.notify_waiters();
    }

    /// For a token with an unknown `kid` (or before the first set arrived): triggers an early
    /// fetch unless one happened within `min_refetch`, and waits up to `wait` for it.
    pub async fn refetch(self: &Arc<Self>, wait: Duration) -> Option<Arc<KeySet>> {
        self.start();
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.last_early_ms.load(Ordering::Relaxed);
        let have_set = self.set.load().is_some();
        let too_soon = last != 0 && now.saturating_sub(last) < self.min_refetch.as_millis() as u64;
        if have_set && too_soon {
            return self.current();
        }
        if have_set {
            // One caller wins the right to trigger; concurrent ones just wait for its fetch.
            if self
                .last_early_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
            {
                let _ = tokio::time::timeout(wait, self.fetched.notified()).await;
                return self.current();
            }
        }
        let done = self.fetched.notified();
        self.kick.notify_one();
        let _ = tokio::time::timeout(wait, done).await;
        self.current()
    }
}
