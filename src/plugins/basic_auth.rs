//! `basic_auth`: HTTP Basic credentials (RFC 7617) checked against the argon2id or bcrypt hashes
//! of `consumers[].basic`. Hash checks run on the blocking pool (they take milliseconds by
//! design); successful checks are remembered for `cache_ttl` by a digest of the credentials, so a
//! busy client does not pay for argon2 on every request.
//!
//! ```yaml
//! consumers:
//!   - { name: bob, basic: { password_hash: "$argon2id$v=19$m=19456,t=2,p=1$..." } }
//! routes:
//!   - plugins: [ { basic_auth: { realm: internal } } ]
//! ```

use super::{BuildCtx, Flow, Plugin};
use crate::auth::{failure, sha256, AuthFail, Consumers};
use crate::common::issue::Issue;
use crate::common::types::Dur;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::auth::AuthMetrics;
use async_trait::async_trait;
use base64::Engine;
use parking_lot::Mutex;
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Remembered successful checks per route.
const CACHE_MAX: usize = 10_000;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "basic_auth")]
pub struct Config {
    /// The realm of the `WWW-Authenticate` challenge.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// How long a successful check is remembered (0s: never).
    #[serde(default = "default_ttl")]
    pub cache_ttl: Dur,
    /// Keep the `Authorization` header in what the upstream receives.
    #[serde(default)]
    pub keep_credentials: bool,
}

fn default_realm() -> String {
    "postern".into()
}
fn default_ttl() -> Dur {
    Dur::secs(300)
}

pub struct BasicAuth {
    realm: String,
    ttl: Duration,
    keep: bool,
    consumers: Arc<Consumers>,
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    metrics: AuthMetrics,
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(BasicAuth::new(self, b)?))
    }
}

impl BasicAuth {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<BasicAuth, Vec<Issue>> {
        if c.realm.contains('"') || c.realm.chars().any(char::is_control) {
            return Err(vec![Issue::new(
                format!("{}.realm", b.path),
                "the realm cannot contain quotes or control characters",
            )]);
        }
        Ok(BasicAuth {
            realm: c.realm.clone(),
            ttl: c.cache_ttl.0,
            keep: c.keep_credentials,
            consumers: b.consumers.clone(),
            verified: Mutex::new(HashMap::new()),
            metrics: AuthMetrics::new(b.shared.metrics(), b.route, "basic_auth"),
        })
    }

    fn fail(&self, ctx: &mut RequestCtx, why: AuthFail) -> Result<Flow, GatewayError> {
        self.metrics.failed(why);
        Ok(Flow::Respond(failure(ctx, why, "Basic", &self.realm)))
    }

    fn remembered(&self, digest: &[u8; 32]) -> bool {
        let mut m = self.verified.lock();
        match m.get(digest) {
            Some(t) if t.elapsed() < self.ttl => true,
            Some(_) => {
                m.remove(digest);
                false
            }
            None => false,
        }
    }

    fn remember(&self, digest: [u8; 32]) {
        if self.ttl.is_zero() {
            return;
        }
        let mut m = self.verified.lock();
        if m.len() >= CACHE_MAX {
            let ttl = self.ttl;
            m.retain(|_, t| t.elapsed() < ttl);
            if m.len() >= CACHE_MAX {
                m.clear();
            }
        }
        m.insert(digest, Instant::now());
    }
}

/// `user:password` from an `Authorization: Basic` header.
fn credentials(req: &RequestHeader) -> Option<(String, String)> {
    let v = req
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[async_trait]
impl Plugin for BasicAuth {
    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let Some((user, password)) = credentials(req) else {
            return self.fail(ctx, AuthFail::Missing);
        };
        let Some((hash, consumer)) = self.consumers.basic(&user) else {
            return self.fail(ctx, AuthFail::Invalid);
        };
        let digest = sha256(format!("{user}\n{password}").as_bytes());
        if !self.remembered(&digest) {
            let hash = hash.clone();
            let ok = tokio::task::spawn_blocking(move || hash.verify(password.as_bytes()))
                .await
                .unwrap_or(false);
            if !ok {
                return self.fail(ctx, AuthFail::Invalid);
            }
            self.remember(digest);
        }
        if !self.keep {
            req.remove_header(&http::header::AUTHORIZATION);
        }
        ctx.consumer = Some(consumer.clone());
        Ok(Flow::Continue)
    }
}
