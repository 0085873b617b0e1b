//! `auth`: accept a request that passes any one of several authentication plugins.
//!
//! ```yaml
//! plugins:
//!   - auth:
//!       any:
//!         - jwt: { jwks_url: "https://auth.example.com/jwks.json" }
//!         - api_key: {}
//! ```
//! The mechanisms are tried in order; the first that identifies the caller wins. When all fail,
//! the answer is the failure of a mechanism that found credentials (a bad token says more than a
//! missing API key), with every mechanism's `WWW-Authenticate` challenge. To require several
//! mechanisms at once, list them one after the other as plugins.

use super::{build, BuildCtx, Flow, Plugin, PluginSpec};
use crate::auth::{AuthFail, LastFail};
use crate::common::issue::Issue;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "auth")]
pub struct Config {
    /// Authentication plugins, one of which must accept the request.
    pub any: Vec<PluginSpec>,
}

pub struct AnyAuth {
    any: Vec<Arc<dyn Plugin>>,
}

/// Plugins that identify a caller and may appear under `any`.
const MECHANISMS: &[&str] = &[
    "jwt",
    "api_key",
    "basic_auth",
    "oauth2_introspection",
    "mtls",
];

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(AnyAuth::new(self, b)?))
    }
}

impl AnyAuth {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<AnyAuth, Vec<Issue>> {
        let mut issues = Vec::new();
        let mut any = Vec::new();
        if c.any.len() < 2 {
            issues.push(Issue::new(
                format!("{}.any", b.path),
                "list at least two mechanisms (a single one needs no `auth`)",
            ));
        }
        for (i, spec) in c.any.iter().enumerate() {
            let child = BuildCtx {
                path: format!("{}.any[{i}]", b.path),
                ..*b
            };
            if !MECHANISMS.contains(&spec.name()) {
                issues.push(Issue::new(
                    child.path,
                    format!(
                        "`{}` is not an authentication mechanism; use {}",
                        spec.name(),
                        MECHANISMS.join(", ")
                    ),
                ));
                continue;
            }
            match build(spec, &child) {
                Ok(built) => any.extend(built.into_plugin()),
                Err(mut e) => issues.append(&mut e),
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(AnyAuth { any })
    }
}

#[async_trait]
impl Plugin for AnyAuth {
    fn start(&self) {
        self.any.iter().for_each(|p| p.start());
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let mut best: Option<(super::Reply, bool)> = None;
        let mut challenges = Vec::new();
        for p in &self.any {
            ctx.ext.remove::<LastFail>();
            match p.on_request(req, ctx).await? {
                Flow::Continue => return Ok(Flow::Continue),
                Flow::Respond(reply) => {
                    let found = ctx
                        .ext
                        .get::<LastFail>()
                        .is_some_and(|f| f.0 != AuthFail::Missing);
                    challenges.extend(
                        reply
                            .headers
                            .iter()
                            .filter(|(n, _)| n == http::header::WWW_AUTHENTICATE)
                            .cloned(),
                    );
                    if best.as_ref().is_none_or(|(_, f)| found && !f) {
                        best = Some((reply, found));
                    }
                }
            }
        }
        let Some((mut reply, _)) = best else {
            return Err(GatewayError::Internal);
        };
        reply
            .headers
            .retain(|(n, _)| n != http::header::WWW_AUTHENTICATE);
        reply.headers.extend(challenges);
        Ok(Flow::Respond(reply))
    }
}
