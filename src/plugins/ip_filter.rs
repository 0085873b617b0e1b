//! `ip_filter`: allow or deny by client address (CIDR lists). The client address is the peer's,
//! or, when the peer is in `server.trusted_proxies`, the right-most `X-Forwarded-For` hop that is
//! not itself trusted (so a client cannot pick its own address by sending the header).
//!
//! ```yaml
//! plugins:
//!   - ip_filter: { allow: [10.0.0.0/8, 192.168.1.7], deny: [10.6.6.0/24] }
//! ```
//! Deny wins; with an allow list, addresses outside it are refused with 403.

use super::{BuildCtx, Flow, Plugin};
use crate::auth::{failure, AuthFail};
use crate::common::issue::Issue;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::auth::AuthMetrics;
use async_trait::async_trait;
use ipnet::IpNet;
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ip_filter")]
pub struct Config {
    /// Addresses or CIDR blocks let through (everyone when empty).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Addresses or CIDR blocks refused.
    #[serde(default)]
    pub deny: Vec<String>,
}

pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    metrics: AuthMetrics,
}

/// Parses `10.0.0.0/8` or a bare address.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("invalid address or CIDR block \"{s}\""))
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(IpFilter::new(self, b)?))
    }
}

impl IpFilter {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<IpFilter, Vec<Issue>> {
        let mut issues = Vec::new();
        let mut parse = |list: &[String], key: &str| -> Vec<IpNet> {
            list.iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    parse_net(s)
                        .map_err(|e| issues.push(Issue::new(format!("{}.{key}[{i}]", b.path), e)))
                        .ok()
                })
                .collect()
        };
        let allow = parse(&c.allow, "allow");
        let deny = parse(&c.deny, "deny");
        if allow.is_empty() && deny.is_empty() && issues.is_empty() {
            issues.push(Issue::new(b.path.clone(), "give `allow`, `deny` or both"));
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(IpFilter {
            allow,
            deny,
            metrics: AuthMetrics::new(b.shared.metrics(), b.route, "ip_filter"),
        })
    }
}

#[async_trait]
impl Plugin for IpFilter {
    async fn on_request(
        &self,
        _req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let ok = ctx.client_ip.is_some_and(|ip| {
            let ip = crate::auth::canonical_ip(ip);
            !self.deny.iter().any(|n| n.contains(&ip))
                && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
        });
        if ok {
            return Ok(Flow::Continue);
        }
        self.metrics.failed(AuthFail::Denied);
        Ok(Flow::Respond(failure(ctx, AuthFail::Denied, "", "")))
    }
}
