//! `cors`: Cross-Origin Resource Sharing as the Fetch standard describes it. The gateway answers
//! preflight requests itself (204, no upstream call) and adds the CORS fields to actual
//! responses; an origin that is not allowed gets no CORS fields (the browser then blocks it).
//!
//! ```yaml
//! plugins:
//!   - cors:
//!       origins: ["https://app.example.com", "https://*.example.com", "~^https://[a-z]+\\.test$"]
//!       methods: [GET, POST, PUT]          # default: GET, HEAD, POST
//!       headers: [content-type, authorization]   # request headers allowed ("*": any, not with credentials)
//!       expose_headers: [x-request-id]
//!       credentials: true                  # never together with the origin "*"
//!       max_age: 10m
//! ```

use super::{BuildCtx, Flow, Phases, Plugin, Reply};
use crate::common::issue::Issue;
use crate::common::types::Dur;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use async_trait::async_trait;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "cors")]
pub struct Config {
    /// Allowed origins: exact (`https://app.example.com`), a wildcard subdomain
    /// (`https://*.example.com`, or `*.example.com` for any scheme), a regex (`~^https://...$`),
    /// or `*` for any origin.
    pub origins: Vec<String>,
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Request headers a cross-origin request may send; `*` allows any (not with credentials).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Response headers the browser may show to the page.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Allow cookies and `Authorization` (`Access-Control-Allow-Credentials: true`).
    #[serde(default)]
    pub credentials: bool,
    /// How long a browser may cache a preflight answer.
    #[serde(default)]
    pub max_age: Option<Dur>,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

enum Origin {
    Any,
    Exact(String),
    /// Scheme (or any) and the suffix after `*`: `https://*.example.com` → (Some("https"), ".example.com").
    Wildcard(Option<String>, String),
    Regex(regex::Regex),
}

impl Origin {
    fn parse(s: &str) -> Result<Origin, String> {
        if s == "*" {
            return Ok(Origin::Any);
        }
        if let Some(re) = s.strip_prefix('~') {
            return regex::Regex::new(re)
                .map(Origin::Regex)
                .map_err(|e| format!("invalid regex: {e}"));
        }
        let (scheme, host) = match s.split_once("://") {
            Some((sch, h)) => (Some(sch.to_ascii_lowercase()), h),
            None => (None, s),
        };
        if let Some(suffix) = host.strip_prefix('*') {
            if !suffix.starts_with('.') || suffix.len() < 2 {
                return Err("a wildcard origin is `*.domain` or `scheme://*.domain`".into());
            }
            return Ok(Origin::Wildcard(scheme, suffix.to_ascii_lowercase()));
        }
        if scheme.is_none() || host.is_empty() || host.contains('/') {
            return Err("an exact origin is `scheme://host[:port]`, without a path".into());
        }
        Ok(Origin::Exact(s.to_ascii_lowercase()))
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            Origin::Any => true,
            Origin::Exact(o) => origin.eq_ignore_ascii_case(o),
            Origin::Wildcard(scheme, suffix) => {
                let Some((sch, host)) = origin.split_once("://") else {
                    return false;
                };
                let host = host.to_ascii_lowercase();
                let host = host.split(':').next().unwrap_or("");
                scheme.as_ref().is_none_or(|s| s.eq_ignore_ascii_case(sch))
                    && host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
            }
            Origin::Regex(r) => r.is_match(origin),
        }
    }
}

pub struct Cors {
    origins: Vec<Origin>,
    any_origin: bool,
    methods: Vec<http::Method>,
    methods_value: HeaderValue,
    headers: Vec<HeaderName>,
    any_header: bool,
    expose: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

/// The decision for an actual request: the value of `Access-Control-Allow-Origin`, or none.
#[derive(Clone)]
struct Allowed(Option<HeaderValue>);

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(Cors::new(self, b)?))
    }
}

impl Cors {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<Cors, Vec<Issue>> {
        let path = &b.path;
        let mut issues = Vec::new();
        let mut origins = Vec::new();
        for (i, o) in c.origins.iter().enumerate() {
            match Origin::parse(o) {
                Ok(x) => origins.push(x),
                Err(e) => issues.push(Issue::new(format!("{path}.origins[{i}]"), e)),
            }
        }
        if c.origins.is_empty() {
            issues.push(Issue::new(
                format!("{path}.origins"),
                "list at least one origin",
            ));
        }
        let any_origin = origins.iter().any(|o| matches!(o, Origin::Any));
        let any_header = c.headers.iter().any(|h| h == "*");
        if c.credentials && (any_origin || any_header) {
            issues.push(
                Issue::new(
                    format!("{path}.credentials"),
                    "credentials cannot be allowed with the origin `*` or the header `*`",
                )
                .hint("list the origins (and headers) explicitly; browsers refuse `*` with credentials"),
            );
        }
        let mut methods = Vec::new();
        for (i, m) in c.methods.iter().enumerate() {
            match http::Method::from_bytes(m.as_bytes()) {
                Ok(x) if m.bytes().all(|b| b.is_ascii_uppercase()) => methods.push(x),
                _ => issues.push(Issue::new(
                    format!("{path}.methods[{i}]"),
                    format!("invalid method \"{m}\" (upper case, e.g. PUT)"),
                )),
            }
        }
        let headers = super::header_names(
            &c.headers
                .iter()
                .filter(|h| *h != "*")
                .cloned()
                .collect::<Vec<_>>(),
            &format!("{path}.headers"),
            &mut issues,
        );
        let expose = super::header_names(
            &c.expose_headers,
            &format!("{path}.expose_headers"),
            &mut issues,
        );
        if !issues.is_empty() {
            return Err(issues);
        }
        let list = |names: Vec<&str>| HeaderValue::from_str(&names.join(", ")).ok();
        Ok(Cors {
            origins,
            any_origin,
            methods_value: list(methods.iter().map(|m| m.as_str()).collect())
                .unwrap_or(HeaderValue::from_static("GET")),
            methods,
            any_header,
            expose: (!expose.is_empty())
                .then(|| list(expose.iter().map(|h| h.as_str()).collect()))
                .flatten(),
            headers,
            credentials: c.credentials,
            max_age: c
                .max_age
                .and_then(|d| HeaderValue::from_str(&d.0.as_secs().to_string()).ok()),
        })
    }

    /// `Access-Control-Allow-Origin` for `origin`: `*` for any origin without credentials
    /// (the answer then does not depend on the origin), else the origin itself.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        let text = origin.to_str().ok()?;
        if !self.origins.iter().any(|o| o.matches(text)) {
            return None;
        }
        if self.any_origin && !self.credentials {
            Some(HeaderValue::from_static("*"))
        } else {
            Some(origin.clone())
        }
    }

    /// Whether the answer depends on the request's `Origin` (then `Vary: Origin`).
    fn varies(&self) -> bool {
        !self.any_origin || self.credentials
    }

    fn preflight(&self, req: &RequestHeader, origin: &HeaderValue) -> Reply {
        let mut headers = Vec::new();
        let vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
        headers.push((header::VARY, HeaderValue::from_static(vary)));
        let method_ok = req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        let requested = req.headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
        let headers_ok = self.any_header
            || requested.and_then(|v| v.to_str().ok()).is_none_or(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .all(|h| {
                        self.headers
                            .iter()
                            .any(|a| a.as_str().eq_ignore_ascii_case(h))
                    })
            });
        if let (Some(allow), true, true) = (self.allow_origin(origin), method_ok, headers_ok) {
            headers.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, allow));
            headers.push((
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.methods_value.clone(),
            ));
            let allowed_headers = match (self.any_header, requested) {
                (true, Some(r)) => Some(r.clone()),
                _ => HeaderValue::from_str(
                    &self
                        .headers
                        .iter()
                        .map(|h| h.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
                .ok()
                .filter(|v| !v.is_empty()),
            };
            if let Some(h) = allowed_headers {
                headers.push((header::ACCESS_CONTROL_ALLOW_HEADERS, h));
            }
            if self.credentials {
                headers.push((
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
            if let Some(age) = &self.max_age {
                headers.push((header::ACCESS_CONTROL_MAX_AGE, age.clone()));
            }
        }
        Reply {
            status: 204,
            headers,
            body: bytes::Bytes::new(),
        }
    }
}

#[async_trait]
impl Plugin for Cors {
    fn phases(&self) -> Phases {
        Phases::REQUEST.and(Phases::RESPONSE)
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let Some(origin) = req.headers.get(header::ORIGIN).cloned() else {
            return Ok(Flow::Continue);
        };
        let preflight = req.method == http::Method::OPTIONS
            && req
                .headers
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        if preflight {
            return Ok(Flow::Respond(self.preflight(req, &origin)));
        }
        ctx.ext.insert(Allowed(self.allow_origin(&origin)));
        Ok(Flow::Continue)
    }

    fn on_response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        let Some(Allowed(allow)) = ctx.ext.get::<Allowed>() else {
            return Ok(());
        };
        if self.varies() {
            let _ = resp.append_header(header::VARY, "Origin");
        }
        let Some(allow) = allow else {
            return Ok(());
        };
        let _ = resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow.clone());
        if self.credentials {
            let _ = resp.insert_header(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true");
        }
        if let Some(e) = &self.expose {
            let _ = resp.insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_patterns() {
        let o = |s| Origin::parse(s).unwrap();
        assert!(o("https://app.example.com").matches("https://APP.example.com"));
        assert!(!o("https://app.example.com").matches("http://app.example.com"));
        assert!(o("https://*.example.com").matches("https://a.b.example.com:8443"));
        assert!(!o("https://*.example.com").matches("https://example.com"));
        assert!(!o("https://*.example.com").matches("https://evilexample.com"));
        assert!(o("*.example.com").matches("http://x.example.com"));
        assert!(o("~^https://[a-z]+\\.test$").matches("https://abc.test"));
        assert!(Origin::parse("https://a.com/path").is_err());
        assert!(Origin::parse("*example.com").is_err());
        assert!(Origin::parse("~(").is_err());
    }
}
