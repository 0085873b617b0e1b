//! `mtls`: the route requires a verified client certificate (from a listener with
//! `tls.client_auth: optional | required`) and resolves it to a consumer by the certificate's
//! SHA-256 fingerprint, a subjectAltName or its subject CN (`consumers[].certificates`).
//!
//! ```yaml
//! listeners:
//!   - addr: 0.0.0.0:8443
//!     tls: { certificates: [...], client_auth: optional, client_ca: /etc/postern/clients-ca.pem }
//! consumers:
//!   - { name: billing-svc, certificates: [ { san: billing.internal } ] }
//! routes:
//!   - plugins: [ { mtls: { consumer_required: true } } ]
//! ```
//! Without a certificate the answer is 401; a certificate that names no consumer is refused
//! with 403 when `consumer_required`, else the caller is a consumer named by the CN (or first
//! SAN). The certificate's CN, SANs and fingerprint can be forwarded as request headers.

use super::{BuildCtx, Flow, Plugin};
use crate::auth::{AuthFail, Consumers};
use crate::common::issue::Issue;
use crate::context::{Consumer, RequestCtx};
use crate::error::GatewayError;
use crate::auth::AuthMetrics;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "mtls")]
pub struct Config {
    /// Refuse certificates that identify no configured consumer.
    #[serde(default)]
    pub consumer_required: bool,
    /// Forward certificate facts as request headers (client-sent copies are removed).
    #[serde(default)]
    pub forward: ForwardHeaders,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardHeaders {
    #[serde(default)]
    pub cn: Option<String>,
    /// All subjectAltNames, comma separated.
    #[serde(default)]
    pub sans: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
}

pub struct Mtls {
    consumer_required: bool,
    cn: Option<HeaderName>,
    sans: Option<HeaderName>,
    sha256: Option<HeaderName>,
    consumers: Arc<Consumers>,
    metrics: AuthMetrics,
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(Mtls::new(self, b)?))
    }
}

impl Mtls {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<Mtls, Vec<Issue>> {
        let mut issues = Vec::new();
        let mut name = |v: &Option<String>, key: &str| {
            v.as_ref().and_then(|h| {
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| {
                        issues.push(Issue::new(
                            format!("{}.forward.{key}", b.path),
                            format!("invalid header name \"{h}\""),
                        ))
                    })
                    .ok()
            })
        };
        let (cn, sans, sha256) = (
            name(&c.forward.cn, "cn"),
            name(&c.forward.sans, "sans"),
            name(&c.forward.sha256, "sha256"),
        );
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Mtls {
            consumer_required: c.consumer_required,
            cn,
            sans,
            sha256,
            consumers: b.consumers.clone(),
            metrics: AuthMetrics::new(b.shared.metrics(), b.route, "mtls"),
        })
    }
}

fn set(req: &mut RequestHeader, name: &Option<HeaderName>, value: Option<String>) {
    if let Some(n) = name {
        req.remove_header(n);
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            let _ = req.insert_header(n.clone(), v);
        }
    }
}

#[async_trait]
impl Plugin for Mtls {
    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let Some(cert) = ctx.conn.client_cert.clone() else {
            self.metrics.failed(AuthFail::Missing);
            ctx.ext.insert(crate::auth::LastFail(AuthFail::Missing));
            return Ok(Flow::Respond(
                GatewayError::Unauthorized("A verified client certificate is required.")
                    .reply(&ctx.request_id),
            ));
        };
        let consumer = match self.consumers.by_cert(&cert) {
            Some(c) => c.clone(),
            None if self.consumer_required => {
                self.metrics.failed(AuthFail::UnknownConsumer);
                return Ok(Flow::Respond(crate::auth::failure(
                    ctx,
                    AuthFail::UnknownConsumer,
                    "",
                    "",
                )));
            }
            None => Arc::new(Consumer {
                name: cert
                    .subject_cn
                    .clone()
                    .or_else(|| cert.sans.first().cloned())
                    .unwrap_or_else(|| cert.sha256.clone()),
                groups: Vec::new(),
            }),
        };
        set(req, &self.cn, cert.subject_cn.clone());
        set(
            req,
            &self.sans,
            (!cert.sans.is_empty()).then(|| cert.sans.join(",")),
        );
        set(req, &self.sha256, Some(cert.sha256.clone()));
        ctx.consumer = Some(consumer);
        Ok(Flow::Continue)
    }
}
