//! `acl`: allow or deny by consumer name or group, after an authentication plugin identified the
//! caller. Deny rules win; with allow rules, anyone not matched is refused. A request without a
//! consumer gets 401.
//!
//! ```yaml
//! plugins:
//!   - api_key: {}
//!   - acl: { allow_groups: [gold], deny_consumers: [mallory] }
//! ```

use super::{BuildCtx, Flow, Plugin};
use crate::auth::{failure, AuthFail};
use crate::common::issue::Issue;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::auth::AuthMetrics;
use async_trait::async_trait;
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "acl")]
pub struct Config {
    #[serde(default)]
    pub allow_consumers: Vec<String>,
    #[serde(default)]
    pub allow_groups: Vec<String>,
    #[serde(default)]
    pub deny_consumers: Vec<String>,
    #[serde(default)]
    pub deny_groups: Vec<String>,
}

pub struct Acl {
    c: Config,
    metrics: AuthMetrics,
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(Acl::new(self, b)?))
    }
}

impl Acl {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<Acl, Vec<Issue>> {
        if c.allow_consumers.is_empty()
            && c.allow_groups.is_empty()
            && c.deny_consumers.is_empty()
            && c.deny_groups.is_empty()
        {
            return Err(vec![Issue::new(
                b.path.clone(),
                "give at least one of allow_consumers, allow_groups, deny_consumers, deny_groups",
            )]);
        }
        Ok(Acl {
            c: c.clone(),
            metrics: AuthMetrics::new(b.shared.metrics(), b.route, "acl"),
        })
    }
}

#[async_trait]
impl Plugin for Acl {
    async fn on_request(
        &self,
        _req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let Some(consumer) = ctx.consumer.clone() else {
            self.metrics.failed(AuthFail::Missing);
            return Ok(Flow::Respond(failure(
                ctx,
                AuthFail::Missing,
                "Bearer",
                "postern",
            )));
        };
        let in_group = |list: &[String]| consumer.groups.iter().any(|g| list.contains(g));
        let denied =
            self.c.deny_consumers.contains(&consumer.name) || in_group(&self.c.deny_groups);
        let has_allow = !self.c.allow_consumers.is_empty() || !self.c.allow_groups.is_empty();
        let allowed =
            self.c.allow_consumers.contains(&consumer.name) || in_group(&self.c.allow_groups);
        if denied || (has_allow && !allowed) {
            self.metrics.failed(AuthFail::Denied);
            return Ok(Flow::Respond(failure(ctx, AuthFail::Denied, "", "")));
        }
        Ok(Flow::Continue)
    }
}
