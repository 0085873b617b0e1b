//! What `jwt` and `oauth2_introspection` do with the claims of a token they accepted: the
//! scopes it must carry, the consumer it names, the claims forwarded as request headers.

use super::{AuthFail, Consumers};
use crate::common::issue::Issue;
use crate::context::Consumer;
use http::HeaderName;
use pingora::http::RequestHeader;
use std::collections::BTreeMap;
use std::sync::Arc;

type Claims = serde_json::Map<String, serde_json::Value>;

/// A plugin's rules over the claims of an accepted token.
pub struct ClaimRules {
    scopes_any: Vec<String>,
    scopes_all: Vec<String>,
    consumer_claim: String,
    forward: Vec<(String, HeaderName)>,
}

impl ClaimRules {
    /// From the plugin's `scopes_any`, `scopes_all`, `consumer_claim` and `forward_claims`;
    /// a bad header name is an issue at `path.forward_claims.CLAIM`.
    pub fn new(
        scopes_any: &[String],
        scopes_all: &[String],
        consumer_claim: &str,
        forward_claims: &BTreeMap<String, String>,
        path: &str,
        issues: &mut Vec<Issue>,
    ) -> ClaimRules {
        ClaimRules {
            scopes_any: scopes_any.to_vec(),
            scopes_all: scopes_all.to_vec(),
            consumer_claim: consumer_claim.to_string(),
            forward: super::forward_claims(forward_claims, path, issues),
        }
    }

    /// The scopes asked for, from `scope` (space-separated, RFC 8693) or `scp` (a list or a
    /// string): at least one of `scopes_any`, all of `scopes_all`.
    pub fn scopes_ok(&self, claims: &Claims) -> bool {
        if self.scopes_any.is_empty() && self.scopes_all.is_empty() {
            return true;
        }
        let mut have: Vec<&str> = Vec::new();
        for name in ["scope", "scp"] {
            match claims.get(name) {
                Some(serde_json::Value::String(s)) => have.extend(s.split_whitespace()),
                Some(serde_json::Value::Array(a)) => {
                    have.extend(a.iter().filter_map(|v| v.as_str()))
                }
                _ => {}
            }
        }
        let has = |s: &String| have.contains(&s.as_str());
        (self.scopes_any.is_empty() || self.scopes_any.iter().any(has))
            && self.scopes_all.iter().all(has)
    }

    /// The consumer the consumer claim names (a string or a number): the configured one with
    /// its groups, or a consumer of that name alone. With `required`, a name that is not
    /// configured (or none) is refused.
    pub fn consumer(
        &self,
        claims: &Claims,
        consumers: &Consumers,
        required: bool,
    ) -> Result<Option<Arc<Consumer>>, AuthFail> {
        let name = match claims.get(&self.consumer_claim) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        match name {
            Some(n) => match consumers.by_name(&n) {
                Some(c) => Ok(Some(c.clone())),
                None if required => Err(AuthFail::UnknownConsumer),
                None => Ok(Some(Arc::new(Consumer {
                    name: n,
                    groups: Vec::new(),
                }))),
            },
            None if required => Err(AuthFail::UnknownConsumer),
            None => Ok(None),
        }
    }

    /// Checks the scopes, resolves the consumer and forwards the claims onto the request.
    pub fn accept(
        &self,
        claims: &Claims,
        req: &mut RequestHeader,
        consumers: &Consumers,
        required: bool,
    ) -> Result<Option<Arc<Consumer>>, AuthFail> {
        if !self.scopes_ok(claims) {
            return Err(AuthFail::Scope);
        }
        let consumer = self.consumer(claims, consumers, required)?;
        super::apply_claims(req, &self.forward, claims);
        Ok(consumer)
    }
}
