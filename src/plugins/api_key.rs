//! `api_key`: the caller presents a key (header or query parameter) that belongs to a consumer.
//! Keys are stored as SHA-256 digests in `consumers[].api_keys` (a plain `key:` only through
//! `${ENV}`), and the key is removed from the request before it is proxied.
//!
//! ```yaml
//! consumers:
//!   - { name: alice, api_keys: [ { sha256: "<hex of sha256(key)>" } ] }
//! routes:
//!   - plugins: [ { api_key: { header: x-api-key, query: api_key } } ]
//! ```

use super::{BuildCtx, Flow, Plugin};
use crate::auth::{failure, AuthFail, Consumers};
use crate::common::issue::Issue;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::auth::AuthMetrics;
use async_trait::async_trait;
use http::HeaderName;
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "api_key")]
pub struct Config {
    /// Header carrying the key.
    #[serde(default = "default_header")]
    pub header: String,
    /// Query parameter carrying the key (not read when absent).
    #[serde(default)]
    pub query: Option<String>,
    /// Keep the key in what the upstream receives.
    #[serde(default)]
    pub keep_credentials: bool,
}

fn default_header() -> String {
    "x-api-key".into()
}

pub struct ApiKey {
    header: HeaderName,
    query: Option<String>,
    keep: bool,
    consumers: Arc<Consumers>,
    metrics: AuthMetrics,
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(ApiKey::new(self, b)?))
    }
}

impl ApiKey {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<ApiKey, Vec<Issue>> {
        let header = HeaderName::from_bytes(c.header.as_bytes()).map_err(|_| {
            vec![Issue::new(
                format!("{}.header", b.path),
                format!("invalid header name \"{}\"", c.header),
            )]
        })?;
        Ok(ApiKey {
            header,
            query: c.query.clone().filter(|q| !q.is_empty()),
            keep: c.keep_credentials,
            consumers: b.consumers.clone(),
            metrics: AuthMetrics::new(b.shared.metrics(), b.route, "api_key"),
        })
    }
}

#[async_trait]
impl Plugin for ApiKey {
    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let from_header = req.headers.get(&self.header).map(|v| v.as_bytes().to_vec());
        let key = from_header.or_else(|| {
            let q = self.query.as_deref()?;
            crate::http::query(req, q).map(|v| v.as_bytes().to_vec())
        });
        let Some(key) = key.filter(|k| !k.is_empty()) else {
            self.metrics.failed(AuthFail::Missing);
            return Ok(Flow::Respond(failure(
                ctx,
                AuthFail::Missing,
                "ApiKey",
                "postern",
            )));
        };
        let Some(consumer) = self.consumers.by_api_key(&key) else {
            self.metrics.failed(AuthFail::Invalid);
            return Ok(Flow::Respond(failure(
                ctx,
                AuthFail::Invalid,
                "ApiKey",
                "postern",
            )));
        };
        if !self.keep {
            req.remove_header(&self.header);
            if let Some(q) = &self.query {
                crate::auth::remove_query(req, q);
            }
        }
        ctx.consumer = Some(consumer.clone());
        Ok(Flow::Continue)
    }
}
