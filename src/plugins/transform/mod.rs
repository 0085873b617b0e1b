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

mod config;

pub use config::{Config, Convert, QueryConfig, RequestConfig, ResponseConfig};

use super::{BodyMode, BuildCtx, Flow, Oversize, Phases, Plugin};
use crate::common::issue::Issue;
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::transform::shape::{Shape, ShapeError, ShapeRequest};
use crate::transform::template::{Inputs, Template};
use crate::transform::xml::{self, XmlOptions};
use crate::transform::{JsonOpConfig, JsonOps};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

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
    request_convert: Option<Convert>,
    response_convert: Option<Convert>,
    shape: Option<Shape>,
    xml: XmlOptions,
    max_body: usize,
    on_oversize: Oversize,
    on_error: Oversize,
    content_types: Vec<String>,
    /// Header names templates read, captured when the request arrives.
    template_headers: Vec<http::HeaderName>,
    /// Some body operation reads the request through a template: capture its inputs.
    keeps_inputs: bool,
    route: String,
    metrics: crate::observability::metrics::Metrics,
}

impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::plugin(Transform::new(self, b)?))
    }
}

/// `request.query.set`: each value a literal or a template.
fn query_set(query: &QueryConfig, path: &str, issues: &mut Vec<Issue>) -> Vec<(String, QueryValue)> {
    let mut out = Vec::new();
    for (k, v) in &query.set {
        match Template::parse(v) {
            Ok(Some(t)) => out.push((k.clone(), QueryValue::Tpl(t))),
            Ok(None) => out.push((k.clone(), QueryValue::Lit(v.clone()))),
            Err(e) => issues.push(Issue::new(format!("{path}.request.query.set.{k}"), e)),
        }
    }
    out
}

/// `request.method`: an upper-case method.
fn method(req: &RequestConfig, path: &str, issues: &mut Vec<Issue>) -> Option<http::Method> {
    let m = req.method.as_ref()?;
    let parsed = http::Method::from_bytes(m.as_bytes())
        .ok()
        .filter(|m| m.as_str().bytes().all(|b| b.is_ascii_uppercase()));
    if parsed.is_none() {
        issues.push(Issue::new(
            format!("{path}.request.method"),
            format!("invalid method \"{m}\" (upper case, e.g. POST)"),
        ));
    }
    parsed
}

/// The XML mapping's element names and depth.
fn check_xml(c: &Config, path: &str, issues: &mut Vec<Issue>) {
    let xml_names = std::iter::once(("root", &c.xml.root))
        .chain(std::iter::once(("item", &c.xml.item)))
        .chain(c.xml.arrays.iter().map(|a| ("arrays", a)));
    for (field, name) in xml_names {
        if let Err(e) = xml::check_name(name) {
            issues.push(Issue::new(format!("{path}.xml.{field}"), e));
        }
    }
    if !(1..=256).contains(&c.xml.max_depth) {
        issues.push(Issue::new(
            format!("{path}.xml.max_depth"),
            "must be between 1 and 256",
        ));
    }
}

/// `response.status`: final statuses on both sides.
fn check_status_map(resp: &ResponseConfig, path: &str, issues: &mut Vec<Issue>) {
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
}

/// The body bound (within the route's) and the media types.
fn check_bounds(c: &Config, b: &BuildCtx, issues: &mut Vec<Issue>) {
    let path = &b.path;
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
        let query_set = query_set(&query, path, &mut issues);
        let method = method(&req, path, &mut issues);
        if req.convert == Some(Convert::Negotiate) {
            issues.push(Issue::new(
                format!("{path}.request.convert"),
                "a request body is converted to `xml` or `json`; `negotiate` is for responses",
            ));
        }
        let shape = resp.shape.as_ref().and_then(|c| {
            Shape::compile(c, &format!("{path}.response.shape"))
                .map_err(|errs| issues.extend(errs.into_iter().map(|(p, m)| Issue::new(p, m))))
                .ok()
        });
        check_xml(c, path, &mut issues);
        check_status_map(&resp, path, &mut issues);
        check_bounds(c, b, &mut issues);
        if req.json.is_empty()
            && query.set.is_empty()
            && query.remove.is_empty()
            && query.rename.is_empty()
            && method.is_none()
            && resp.json.is_empty()
            && resp.status.is_empty()
            && req.convert.is_none()
            && resp.convert.is_none()
            && shape.is_none()
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
        template_headers.extend(query_set.iter().flat_map(|(_, v)| match v {
            QueryValue::Tpl(t) => t.headers().cloned().collect::<Vec<_>>(),
            QueryValue::Lit(_) => Vec::new(),
        }));
        let keeps_inputs = request_json.has_templates() || response_json.has_templates();
        Ok(Transform {
            request_json,
            query_set,
            query_remove: query.remove.clone(),
            query_rename: query.rename.into_iter().collect(),
            method,
            response_json,
            status: resp.status.into_iter().collect(),
            request_convert: req.convert,
            response_convert: resp.convert,
            shape,
            xml: c.xml.clone(),
            max_body: c.max_body.0 as usize,
            on_oversize: c.on_oversize,
            on_error: c.on_error,
            content_types: c.content_types.clone(),
            keeps_inputs,
            template_headers,
            route: b.route.to_string(),
            metrics: b.shared.metrics().clone(),
        })
    }

    fn json_type(&self, content_type: Option<&http::HeaderValue>) -> bool {
        media_in(content_type, &self.content_types)
    }

    /// Whether a body of this type is read: XML for a conversion from XML, else `content_types`.
    fn takes_type(
        &self,
        convert: Option<Convert>,
        content_type: Option<&http::HeaderValue>,
    ) -> bool {
        if convert == Some(Convert::Json) {
            media_in(content_type, &XML_TYPES)
        } else {
            self.json_type(content_type)
        }
    }

    /// Reads the client's shaping parameters (a 400 listing what is allowed when they are not)
    /// and takes them off the upstream request; notes the client's `Accept` for `negotiate`.
    fn response_inputs(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        let query = req.uri.query().unwrap_or("").to_string();
        let mut shape_req = None;
        if let Some(shape) = &self.shape {
            shape_req = Some(shape.request(&query).map_err(GatewayError::InvalidQuery)?);
            if let Some(strip) = shape.strip(&query).filter(|s| !s.is_empty()) {
                let q = crate::transform::query::edit(Some(&query), &[], &strip, &[]);
                let path = req.uri.path();
                let target = if q.is_empty() {
                    path.to_string()
                } else {
                    format!("{path}?{q}")
                };
                if let Ok(uri) = target.parse::<http::Uri>() {
                    req.set_uri(uri);
                }
            }
        }
        let path = req.uri.path().to_string();
        ctx.ext.insert(ResponseInputs {
            shape: shape_req,
            path,
            query,
            xml: prefers_xml(req.headers.get(http::header::ACCEPT)),
        });
        Ok(())
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

/// Media types read as XML.
const XML_TYPES: [&str; 3] = ["application/xml", "text/xml", "+xml"];

fn media_in(content_type: Option<&http::HeaderValue>, types: &[impl AsRef<str>]) -> bool {
    let Some(ct) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = ct.split(';').next().unwrap_or("").trim();
    types.iter().any(|t| {
        let t = t.as_ref();
        if t.starts_with('+') {
            media.len() > t.len() && media[media.len() - t.len()..].eq_ignore_ascii_case(t)
        } else {
            media.eq_ignore_ascii_case(t)
        }
    })
}

/// What a shaped or negotiated response needs from its request.
#[derive(Clone)]
struct ResponseInputs {
    shape: Option<ShapeRequest>,
    /// The client's path and query, for `Link`.
    path: String,
    query: String,
    /// `convert: negotiate` chose XML.
    xml: bool,
}

/// Whether `Accept` prefers XML (`application/xml` or `text/xml`) to JSON: the highest
/// q-value of the ranges that match each, ties to JSON.
fn prefers_xml(accept: Option<&http::HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (mut xml, mut json) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/xml" | "text/xml" => xml = xml.max(q),
            "application/json" | "*/*" | "application/*" => json = json.max(q),
            _ => {}
        }
    }
    xml > json
}

impl Transform {
    /// The response document through `convert` (from XML), the JSON operations and shaping;
    /// `Ok(None)`: not transformed (the body is not what the route expects, `on_error: pass`).
    fn response_doc(
        &self,
        body: &[u8],
        ctx: &mut RequestCtx,
        resp: Option<&mut ResponseHeader>,
    ) -> Result<Option<Bytes>, GatewayError> {
        if self.response_convert.is_none() && self.shape.is_none() {
            return self.response_lazy(body, ctx);
        }
        let parsed = if self.response_convert == Some(Convert::Json) {
            xml::to_json(body, &self.xml).map_err(|e| (e.reason(), e.to_string()))
        } else {
            serde_json::from_slice::<serde_json::Value>(body)
                .map_err(|e| ("not_json", e.to_string()))
        };
        let mut doc = match parsed {
            Ok(d) => d,
            Err((reason, why)) => return self.failed(ctx, reason, &why),
        };
        let inputs = ctx.ext.get::<ResponseInputs>().cloned();
        self.response_json.apply(&mut doc, ctx, &self.inputs(ctx));
        let mut links = None;
        if let (Some(shape), Some(i)) = (&self.shape, &inputs) {
            let req = i.shape.clone().unwrap_or_default();
            match shape.apply(doc, &req, &i.path, &i.query) {
                Ok(shaped) => {
                    doc = shaped.doc;
                    links = Some((shaped.total, shaped.links));
                }
                Err(ShapeError::Client(why)) => return Err(GatewayError::InvalidQuery(why)),
                Err(ShapeError::NoArray) => {
                    return self.failed(ctx, "shape_target", "no array at the shaping target")
                }
            }
        }
        let to_xml = match self.response_convert {
            Some(Convert::Xml) => true,
            Some(Convert::Negotiate) => inputs.as_ref().is_some_and(|i| i.xml),
            _ => false,
        };
        if let Some(resp) = resp {
            if let Some((total, link)) = links {
                if self.shape.as_ref().is_some_and(|s| s.page_headers()) {
                    let _ = resp.insert_header("x-total-count", total.to_string());
                    if let Some(l) = link {
                        let _ = resp.insert_header(http::header::LINK, l);
                    }
                }
            }
            let ct = if to_xml {
                "application/xml; charset=utf-8"
            } else {
                "application/json"
            };
            if to_xml || self.response_convert == Some(Convert::Json) {
                let _ = resp.insert_header(http::header::CONTENT_TYPE, ct);
            }
        }
        Ok(Some(Bytes::from(if to_xml {
            xml::to_xml(&doc, &self.xml)
        } else {
            serde_json::to_vec(&doc).unwrap_or_default()
        })))
    }

    /// JSON operations alone: on a lazily parsed document (only the members the paths go
    /// through are parsed; the rest is copied as it came).
    fn response_lazy(
        &self,
        body: &[u8],
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>, GatewayError> {
        let parsed = std::str::from_utf8(body)
            .map_err(|e| e.to_string())
            .and_then(|t| self.response_json.parse_lazy(t).map_err(|e| e.to_string()));
        let mut doc = match parsed {
            Ok(d) => d,
            Err(why) => return self.failed(ctx, "not_json", &why),
        };
        self.response_json
            .apply_lazy(&mut doc, ctx, &self.inputs(ctx));
        let mut out = Vec::with_capacity(body.len() + 64);
        doc.write_from(text_of(body), &mut out);
        Ok(Some(Bytes::from(out)))
    }

    /// A response body the transform cannot read: counted, then passed or a 502.
    fn failed(
        &self,
        ctx: &mut RequestCtx,
        reason: &'static str,
        why: &str,
    ) -> Result<Option<Bytes>, GatewayError> {
        ctx.transform_failed(&self.metrics, "response", reason);
        log::debug!("route {}: response body not transformed: {why}", self.route);
        match self.on_error {
            Oversize::Pass => Ok(None),
            Oversize::Error => Err(GatewayError::BadGateway),
        }
    }

    /// The request body converted and transformed; errors are 400s naming the cause.
    fn request_doc(&self, body: &[u8], ctx: &mut RequestCtx) -> Result<Bytes, GatewayError> {
        if self.request_convert.is_none() {
            let text = std::str::from_utf8(body).map_err(|_| {
                GatewayError::InvalidBody("The request body is not valid UTF-8 JSON.".into())
            })?;
            let mut doc = self
                .request_json
                .parse_lazy(text)
                .map_err(|e| invalid_json(&e))?;
            self.request_json
                .apply_lazy(&mut doc, ctx, &self.inputs(ctx));
            let mut out = Vec::with_capacity(body.len() + 64);
            doc.write_from(text, &mut out);
            return Ok(Bytes::from(out));
        }
        let mut doc: serde_json::Value = if self.request_convert == Some(Convert::Json) {
            xml::to_json(body, &self.xml).map_err(|e| {
                GatewayError::InvalidBody(format!("The request body is not accepted: {e}."))
            })?
        } else {
            serde_json::from_slice(body).map_err(|e| invalid_json(&e))?
        };
        self.request_json.apply(&mut doc, ctx, &self.inputs(ctx));
        Ok(Bytes::from(if self.request_convert == Some(Convert::Xml) {
            xml::to_xml(&doc, &self.xml)
        } else {
            serde_json::to_vec(&doc).unwrap_or_default()
        }))
    }
}

#[async_trait]
impl Plugin for Transform {
    fn phases(&self) -> Phases {
        let mut p = Phases::REQUEST;
        if !self.request_json.is_empty() || self.request_convert.is_some() {
            p = p.and(Phases::REQUEST_BODY);
        }
        if !self.status.is_empty() {
            p = p.and(Phases::RESPONSE);
        }
        if !self.response_json.is_empty() || self.response_convert.is_some() || self.shape.is_some()
        {
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

    fn defers_response(&self) -> bool {
        self.response_convert.is_some()
            || self.shape.is_some()
            || self.on_error == Oversize::Error
            || self.on_oversize == Oversize::Error
    }

    async fn on_request(
        &self,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<Flow, GatewayError> {
        if self.shape.is_some() || self.response_convert == Some(Convert::Negotiate) {
            self.response_inputs(req, ctx)?;
        }
        let edits_query = !self.query_set.is_empty()
            || !self.query_remove.is_empty()
            || !self.query_rename.is_empty();
        if edits_query || self.keeps_inputs {
            // Templates read the request as the client sent it.
            let inputs = Inputs::capture(req, &self.template_headers);
            if edits_query {
                self.edit_query(req, ctx, &inputs);
            }
            if self.keeps_inputs {
                ctx.ext.insert(inputs);
            }
        }
        if let Some(m) = &self.method {
            req.set_method(m.clone());
        }
        Ok(Flow::Continue)
    }

    fn takes_request_body(&self, req: &mut RequestHeader, _ctx: &mut RequestCtx) -> bool {
        if !self.takes_type(
            self.request_convert,
            req.headers.get(http::header::CONTENT_TYPE),
        ) {
            return false;
        }
        let ct = match self.request_convert {
            Some(Convert::Xml) => "application/xml; charset=utf-8",
            Some(Convert::Json) => "application/json",
            _ => return true,
        };
        let _ = req.insert_header(http::header::CONTENT_TYPE, ct);
        true
    }

    fn on_request_body(
        &self,
        body: &mut Bytes,
        _eos: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        *body = self.request_doc(body, ctx)?;
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
        if self.response_convert == Some(Convert::Negotiate) {
            let _ = resp.append_header(http::header::VARY, "Accept");
        }
        self.takes_type(
            self.response_convert,
            resp.headers.get(http::header::CONTENT_TYPE),
        )
    }

    fn on_response_body(
        &self,
        body: &mut Bytes,
        _eos: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        if let Some(new) = self.response_doc(body, ctx, None)? {
            *body = new;
        }
        Ok(())
    }

    fn on_whole_response(
        &self,
        resp: &mut ResponseHeader,
        body: &mut Bytes,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        if let Some(new) = self.response_doc(body, ctx, Some(resp))? {
            *body = new;
        }
        Ok(())
    }
}

/// The body as text (already checked to be UTF-8 when it was read).
fn text_of(body: &[u8]) -> &str {
    std::str::from_utf8(body).unwrap_or("")
}

fn invalid_json(e: &serde_json::Error) -> GatewayError {
    GatewayError::InvalidBody(format!(
        "The request body is not valid JSON: {} at line {}, column {}.",
        json_error_kind(e),
        e.line(),
        e.column()
    ))
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
