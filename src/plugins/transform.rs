//! `transform`: changes what flows through a route: JSON fields of request and response bodies,
//! the query string and method of the request, the status of the response.
//!
//! ```yaml
//! plugins:
//!   - transform:
//!       request:
//!         json:                               # applied in order to a JSON request body
//!           - set: { path: tenant, value: "${header.x-tenant}" }
//!           - remove: [debug, internal.trace]
//!         query: { set: { limit: "${query.per_page}" }, remove: [per_page], rename: { q: search } }
//!         method: POST
//!       response:
//!         json:
//!           - rename: { from: items[*].cost, to: price }
//!           - keep: [id, name, items[*].price]
//!           - add: { path: meta.request_id, value: "${request_id}" }
//!         status: { 201: 200 }
//!       max_body: 1MiB          # bodies are buffered whole, up to this
//!       on_oversize: pass       # pass (untransformed) | error (502, or a cut response)
//!       on_error: pass          # a response that is not JSON: pass | error
//!       content_types: [application/json, +json]
//! ```
//! Phases: `on_request` (query, method, template inputs), the request body, `on_response`
//! (status) and the response body. Operations and templates: `crate::transform`.

use super::{BodyMode, BuildCtx, Flow, Oversize, Phases, Plugin};
use crate::config::error::Issue;
use crate::config::types::Size;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::transform::template::{Inputs, Template};
use crate::transform::{JsonOpConfig, JsonOps};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub request: Option<RequestConfig>,
    #[serde(default)]
    pub response: Option<ResponseConfig>,
    /// Largest body buffered for JSON operations (default 1MiB, at most the route's
    /// `max_request_body`).
    #[serde(default = "default_max_body")]
    pub max_body: Size,
    #[serde(default)]
    pub on_oversize: Oversize,
    /// A response body that cannot be parsed: `pass` (sent unchanged and counted) or `error`.
    #[serde(default)]
    pub on_error: Oversize,
    /// Media types whose bodies are transformed; `+json` matches any `*/*+json`.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    #[serde(default)]
    pub json: Vec<JsonOpConfig>,
    #[serde(default)]
    pub query: Option<QueryConfig>,
    /// The method sent upstream.
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryConfig {
    /// Parameters to set (replacing any of the same name); values may be templates.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    #[serde(default)]
    pub json: Vec<JsonOpConfig>,
    /// Status mapping: `{ 201: 200 }`.
    #[serde(default)]
    pub status: BTreeMap<u16, u16>,
}

fn default_max_body() -> Size {
    Size(1 << 20)
}

fn default_content_types() -> Vec<String> {
    vec!["application/json".into(), "+json".into()]
}

/// Query values: literal or template.
enum QueryValue {
    Lit(String),
    Tpl(Template),
}

pub struct Transform {
    request_json: JsonOps,
    query_set: Vec<(String, QueryValue)>,
    query_remove: Vec<String>,
    query_rename: Vec<(String, String)>,
    method: Option<http::Method>,
    response_json: JsonOps,
    status: Vec<(u16, u16)>,
    max_body: usize,
    on_oversize: Oversize,
    on_error: Oversize,
    content_types: Vec<String>,
    /// Header names templates read, captured when the request arrives.
    template_headers: Vec<http::HeaderName>,
    route: String,
}

impl Transform {
    pub fn new(c: &Config, b: &BuildCtx) -> Result<Transform, Vec<Issue>> {
        let path = &b.path;
        let mut issues = Vec::new();
        let req = c.request.clone().unwrap_or_default();
        let resp = c.response.clone().unwrap_or_default();
        let mut ops = |list: &[JsonOpConfig], at: String| {
            JsonOps::compile(list, &at).unwrap_or_else(|errs| {
                issues.extend(errs.into_iter().map(|(p, m)| Issue::new(p, m)));
                JsonOps::default()
            })
        };
        let request_json = ops(&req.json, format!("{path}.request.json"));
        let response_json = ops(&resp.json, format!("{path}.response.json"));
        let query = req.query.clone().unwrap_or_default();
        let mut query_set = Vec::new();
        for (k, v) in &query.set {
            match Template::parse(v) {
                Ok(Some(t)) => query_set.push((k.clone(), QueryValue::Tpl(t))),
                Ok(None) => query_set.push((k.clone(), QueryValue::Lit(v.clone()))),
                Err(e) => issues.push(Issue::new(format!("{path}.request.query.set.{k}"), e)),
            }
        }
        let method = req.method.as_ref().and_then(|m| {
            http::Method::from_bytes(m.as_bytes())
                .ok()
                .filter(|m| m.as_str().bytes().all(|b| b.is_ascii_uppercase()))
                .or_else(|| {
                    issues.push(Issue::new(
                        format!("{path}.request.method"),
                        format!("invalid method \"{m}\" (upper case, e.g. POST)"),
                    ));
                    None
                })
        });
        for (from, to) in &resp.status {
            for s in [from, to] {
                if !(200..600).contains(s) {
                    issues.push(Issue::new(
                        format!("{path}.response.status.{from}"),
                        format!("{s} is not a final status (200-599)"),
                    ));
                }
            }
        }
        if c.max_body.0 < 1 || c.max_body.0 > b.max_request_body {
            issues.push(Issue::new(
                format!("{path}.max_body"),
                format!(
                    "must be between 1 and the route's max_request_body ({} bytes)",
                    b.max_request_body
                ),
            ));
        }
        if c.content_types.is_empty() {
            issues.push(Issue::new(
                format!("{path}.content_types"),
                "list at least one media type",
            ));
        }
        if req.json.is_empty()
            && query.set.is_empty()
            && query.remove.is_empty()
            && query.rename.is_empty()
            && method.is_none()
            && resp.json.is_empty()
            && resp.status.is_empty()
            && issues.is_empty()
        {
            issues.push(Issue::new(
                path.clone(),
                "nothing to do: give `request` or `response` operations",
            ));
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let mut template_headers = request_json.headers();
        template_headers.extend(response_json.headers());
        for (_, v) in &query_set {
            if let QueryValue::Tpl(t) = v {
                template_headers.extend(t.headers().cloned());
            }
        }
        Ok(Transform {
            request_json,
            query_set,
            query_remove: query.remove.clone(),
            query_rename: query.rename.into_iter().collect(),
            method,
            response_json,
            status: resp.status.into_iter().collect(),
            max_body: c.max_body.0 as usize,
            on_oversize: c.on_oversize,
            on_error: c.on_error,
            content_types: c.content_types.clone(),
            template_headers,
            route: b.route.to_string(),
        })
    }

    fn json_type(&self, content_type: Option<&http::HeaderValue>) -> bool {
        let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let media = ct.split(';').next().unwrap_or("").trim();
        self.content_types.iter().any(|t| {
            if t.starts_with('+') {
                media.len() > t.len() && media[media.len() - t.len()..].eq_ignore_ascii_case(t)
            } else {
                media.eq_ignore_ascii_case(t)
            }
        })
    }

    fn inputs<'a>(&self, ctx: &'a RequestCtx) -> std::borrow::Cow<'a, Inputs> {
        match ctx.ext.get::<Inputs>() {
            Some(i) => std::borrow::Cow::Borrowed(i),
            None => std::borrow::Cow::Owned(Inputs::default()),
        }
    }

    fn edit_query(&self, req: &mut RequestHeader, ctx: &RequestCtx, inputs: &Inputs) {
        let set: Vec<(String, String)> = self
            .query_set
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    QueryValue::Lit(s) => s.clone(),
                    QueryValue::Tpl(t) => match t.eval(ctx, inputs) {
                        serde_json::Value::String(s) => s,
                        serde_json::Value::Null => String::new(),
                        other => other.to_string(),
                    },
                };
                (k.clone(), value)
            })
            .collect();
        let query = crate::transform::query::edit(
            req.uri.query(),
            &set,
            &self.query_remove,
            &self.query_rename,
        );
        let path = req.uri.path().to_string();
        let target = if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        };
        if let Ok(uri) = target.parse::<http::Uri>() {
            req.set_uri(uri);
        }
    }
}

#[async_trait]
impl Plugin for Transform {
    fn name(&self) -> &'static str {
        "transform"
    }

    fn phases(&self) -> Phases {
        let mut p = Phases::REQUEST;
        if !self.request_json.is_empty() {
            p = p.and(Phases::REQUEST_BODY);
        }
        if !self.status.is_empty() {
            p = p.and(Phases::RESPONSE);
        }
        if !self.response_json.is_empty() {
            p = p.and(Phases::RESPONSE_BODY);
        }
        p
    }

    fn body_mode(&self) -> BodyMode {
        BodyMode::Whole { max: self.max_body }
    }

    fn oversize(&self) -> Oversize {
        self.on_oversize
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        let inputs = Inputs::capture(req, &self.template_headers);
        if !self.query_set.is_empty()
            || !self.query_remove.is_empty()
            || !self.query_rename.is_empty()
        {
            self.edit_query(req, ctx, &inputs);
        }
        if let Some(m) = &self.method {
            req.set_method(m.clone());
        }
        ctx.ext.insert(inputs);
        Ok(Flow::Continue)
    }

    fn takes_request_body(&self, req: &mut RequestHeader, _ctx: &mut RequestCtx) -> bool {
        self.json_type(req.headers.get(http::header::CONTENT_TYPE))
    }

    fn on_request_body(
        &self,
        body: &mut Bytes,
        _eos: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        let mut doc: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            GatewayError::InvalidBody(format!(
                "The request body is not valid JSON: {} at line {}, column {}.",
                json_error_kind(&e),
                e.line(),
                e.column()
            ))
        })?;
        self.request_json.apply(&mut doc, ctx, &self.inputs(ctx));
        *body = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
        Ok(())
    }

    fn on_response(
        &self,
        resp: &mut ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        let status = resp.status.as_u16();
        if let Some((_, to)) = self.status.iter().find(|(from, _)| *from == status) {
            let _ = resp.set_status(*to);
        }
        Ok(())
    }

    fn takes_response_body(&self, resp: &mut ResponseHeader, _ctx: &mut RequestCtx) -> bool {
        self.json_type(resp.headers.get(http::header::CONTENT_TYPE))
    }

    fn on_response_body(
        &self,
        body: &mut Bytes,
        _eos: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(mut doc) => {
                self.response_json.apply(&mut doc, ctx, &self.inputs(ctx));
                *body = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
                Ok(())
            }
            Err(e) => {
                crate::observability::metrics::transform_error(&self.route, "response", "not_json");
                log::debug!("route {}: response body not transformed: {e}", self.route);
                match self.on_error {
                    Oversize::Pass => Ok(()),
                    Oversize::Error => Err(GatewayError::BadGateway),
                }
            }
        }
    }
}

/// The kind of a JSON syntax error, without quoting the input.
fn json_error_kind(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => "unexpected end of input",
        Category::Syntax => "syntax error",
        Category::Data => "invalid data",
        Category::Io => "read error",
    }
}
