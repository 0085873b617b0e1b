//! `headers`: add, set or remove request headers (on what the upstream receives) and response
//! headers (on what the client receives).
//!
//! ```yaml
//! plugins:
//!   - headers:
//!       request:  { set: { x-from: postern }, add: { x-tag: a }, remove: [x-debug] }
//!       response: { set: { x-frame-options: DENY }, remove: [server] }
//! ```
//! `set` replaces every existing value, `add` appends one, `remove` deletes all values; they are
//! applied in that order: remove, set, add.

use super::{BuildCtx, Plugin};
use crate::common::issue::Issue;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "headers")]
pub struct Config {
    #[serde(default)]
    pub request: Ops,
    #[serde(default)]
    pub response: Ops,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ops {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Default)]
struct Compiled {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

/// Hop-by-hop and framing headers that a header rule must not touch: changing them would break
/// message framing (RFC 9112 §6) or connection management.
const PROTECTED: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "host",
];

impl Compiled {
    fn new(ops: &Ops, path: &str, issues: &mut Vec<Issue>) -> Compiled {
        let mut c = Compiled::default();
        for (kind, map, out) in [("set", &ops.set, &mut c.set), ("add", &ops.add, &mut c.add)] {
            for (k, v) in map {
                let p = format!("{path}.{kind}.{k}");
                let n = header_name(k, &p, issues);
                match (n, HeaderValue::from_str(v)) {
                    (Some(n), Ok(v)) => out.push((n, v)),
                    (_, Err(_)) => issues.push(Issue::new(
                        p,
                        "invalid header value (control characters are not allowed)",
                    )),
                    _ => {}
                }
            }
        }
        for (i, r) in ops.remove.iter().enumerate() {
            if let Some(h) = header_name(r, &format!("{path}.remove[{i}]"), issues) {
                c.remove.push(h);
            }
        }
        c
    }
}

fn header_name(n: &str, path: &str, issues: &mut Vec<Issue>) -> Option<HeaderName> {
    match HeaderName::from_bytes(n.as_bytes()) {
        Ok(h) if PROTECTED.contains(&h.as_str()) => {
            issues.push(Issue::new(
                path,
                format!("header \"{n}\" controls framing or routing and cannot be changed here"),
            ));
            None
        }
        Ok(h) => Some(h),
        Err(_) => {
            issues.push(Issue::new(path, format!("invalid header name \"{n}\"")));
            None
        }
    }
}

/// The compiled plugin.
#[derive(Debug)]
pub struct Headers {
    request: Compiled,
    response: Compiled,
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(Headers::new(self, &b.path)?))
    }
}

impl Headers {
    pub fn new(c: &Config, path: &str) -> Result<Headers, Vec<Issue>> {
        let mut issues = Vec::new();
        let request = Compiled::new(&c.request, &format!("{path}.request"), &mut issues);
        let response = Compiled::new(&c.response, &format!("{path}.response"), &mut issues);
        if issues.is_empty() {
            Ok(Headers { request, response })
        } else {
            Err(issues)
        }
    }
}

macro_rules! apply {
    ($ops:expr, $h:expr) => {{
        for n in &$ops.remove {
            $h.remove_header(n);
        }
        for (n, v) in &$ops.set {
            let _ = $h.insert_header(n.clone(), v.clone());
        }
        for (n, v) in &$ops.add {
            let _ = $h.append_header(n.clone(), v.clone());
        }
    }};
}

#[async_trait::async_trait]
impl Plugin for Headers {
    fn phases(&self) -> super::Phases {
        super::Phases::UPSTREAM_REQUEST.and(super::Phases::RESPONSE)
    }

    fn on_upstream_request(
        &self,
        req: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        apply!(self.request, req);
        Ok(())
    }

    fn on_response(
        &self,
        resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        apply!(self.response, resp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Config {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn applies_remove_set_add_in_order() {
        let p = Headers::new(&cfg("request: { set: { x-a: '1' }, add: { x-b: '2' }, remove: [x-c] }\nresponse: { set: { server: postern } }"), "p").unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-a", "0").unwrap();
        req.insert_header("x-b", "1").unwrap();
        req.insert_header("x-c", "gone").unwrap();
        p.on_upstream_request(&mut req, &mut RequestCtx::default())
            .unwrap();
        assert_eq!(req.headers.get("x-a").unwrap(), "1");
        assert_eq!(req.headers.get_all("x-b").iter().count(), 2);
        assert!(req.headers.get("x-c").is_none());
        let mut resp = ResponseHeader::build(200, None).unwrap();
        p.on_response(&mut resp, &mut RequestCtx::default())
            .unwrap();
        assert_eq!(resp.headers.get("server").unwrap(), "postern");
    }

    #[test]
    fn rejects_bad_and_protected_names() {
        let err = Headers::new(
            &cfg("request: { set: { 'bad name': x, content-length: '3' } }"),
            "p",
        )
        .unwrap_err();
        assert_eq!(err.len(), 2);
        assert!(err.iter().any(|i| i.message.contains("framing")));
    }
}
