//! Values computed from the request: `${path.id}`, `${query.page}`, `${header.x-tenant}`,
//! `${consumer}`, `${consumer.groups}`, `${claim.sub}`, `${request_id}`, `${route}`,
//! `${time.unix}`. A string that is one template with a type (`"${query.limit:number}"`) gives
//! a typed value (`number`, `bool`, `json`, `string`); otherwise templates are interpolated into
//! the string.
//!
//! The rule that keeps templates apart from environment references (`config::env`): names of
//! environment variables are upper case (`${JWT_SECRET}`), expanded when the file is loaded;
//! template names start with a lower-case letter (`${path.id}`, `${claim.userId}`), evaluated
//! per request. Anything else in `${}` is a configuration error.

use crate::context::RequestCtx;
use http::HeaderName;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Param(String),
    Query(String),
    Header(HeaderName),
    Consumer,
    ConsumerGroups,
    Claim(String),
    RequestId,
    Route,
    TimeUnix,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    String,
    Number,
    Bool,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Var(Source),
}

/// A string with templates.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
    /// A whole-value template with a type.
    typed: Option<Kind>,
}

/// What templates read from the request, captured when it arrives (a response body is read
/// long after the request header is gone).
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub query: Option<String>,
    pub headers: Vec<(HeaderName, String)>,
}

impl Inputs {
    pub fn capture(req: &pingora::http::RequestHeader, headers: &[HeaderName]) -> Inputs {
        Inputs {
            query: req.uri.query().map(str::to_string),
            headers: headers
                .iter()
                .filter_map(|h| {
                    let v = req.headers.get(h)?.to_str().ok()?;
                    Some((h.clone(), v.to_string()))
                })
                .collect(),
        }
    }
}

impl Template {
    /// `None` when `s` holds no template.
    pub fn parse(s: &str) -> Result<Option<Template>, String> {
        if !s.contains("${") {
            return Ok(None);
        }
        let mut parts = Vec::new();
        let mut rest = s;
        let mut typed = None;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_string()));
            }
            let body = &rest[start + 2..];
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in \"{s}\""))?;
            let (name, kind) = match body[..end].split_once(':') {
                Some((n, k)) => (n, Some(kind_of(k)?)),
                None => (&body[..end], None),
            };
            parts.push(Part::Var(source_of(name)?));
            typed = kind;
            rest = &body[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        let whole = parts.len() == 1 && matches!(parts[0], Part::Var(_));
        if typed.is_some() && !whole {
            return Err(format!(
                "a typed template (`:number`, `:bool`, `:json`) must be the whole value in \"{s}\""
            ));
        }
        Ok(Some(Template { parts, typed }))
    }

    /// What the template reads.
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(s) => Some(s),
            Part::Lit(_) => None,
        })
    }

    /// Header names the template reads (to capture them when the request arrives).
    pub fn headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(Source::Header(h)) => Some(h),
            _ => None,
        })
    }

    pub fn eval(&self, ctx: &RequestCtx, inputs: &Inputs) -> Value {
        if let (Some(kind), [Part::Var(src)]) = (self.typed, self.parts.as_slice()) {
            let v = value_of(src, ctx, inputs);
            return convert(v, kind);
        }
        if let [Part::Var(Source::ConsumerGroups)] = self.parts.as_slice() {
            return value_of(&Source::ConsumerGroups, ctx, inputs);
        }
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Var(src) => match value_of(src, ctx, inputs) {
                    Value::String(s) => out.push_str(&s),
                    Value::Null => {}
                    other => out.push_str(&other.to_string()),
                },
            }
        }
        Value::String(out)
    }
}

fn kind_of(k: &str) -> Result<Kind, String> {
    match k {
        "string" => Ok(Kind::String),
        "number" => Ok(Kind::Number),
        "bool" => Ok(Kind::Bool),
        "json" => Ok(Kind::Json),
        other => Err(format!(
            "unknown template type \":{other}\"; use :string, :number, :bool or :json"
        )),
    }
}

fn source_of(name: &str) -> Result<Source, String> {
    let known = "path.NAME, query.NAME, header.NAME, consumer, consumer.groups, claim.NAME, request_id, route, time.unix";
    let upper = name.starts_with(|c: char| !c.is_ascii_lowercase());
    if upper {
        return Err(format!(
            "\"${{{name}}}\" is neither a template (lower case: {known}) nor an environment reference (upper case letters, digits and _ only)"
        ));
    }
    let src = match name.split_once('.') {
        Some(("path", p)) if !p.is_empty() => Source::Param(p.to_string()),
        Some(("query", q)) if !q.is_empty() => Source::Query(q.to_string()),
        Some(("header", h)) => Source::Header(
            HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| format!("invalid header name in \"${{{name}}}\""))?,
        ),
        Some(("claim", c)) if !c.is_empty() => Source::Claim(c.to_string()),
        Some(("consumer", "groups")) => Source::ConsumerGroups,
        Some(("time", "unix")) => Source::TimeUnix,
        None if name == "consumer" => Source::Consumer,
        None if name == "request_id" => Source::RequestId,
        None if name == "route" => Source::Route,
        _ => return Err(format!("unknown template \"${{{name}}}\"; known: {known}")),
    };
    Ok(src)
}

fn value_of(src: &Source, ctx: &RequestCtx, inputs: &Inputs) -> Value {
    let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::String(s.to_string()));
    match src {
        Source::Param(p) => text(ctx.param(p)),
        Source::Query(q) => text(
            inputs
                .query
                .as_deref()
                .and_then(|qs| super::query::value(qs, q))
                .as_deref(),
        ),
        Source::Header(h) => text(
            inputs
                .headers
                .iter()
                .find(|(n, _)| n == h)
                .map(|(_, v)| v.as_str()),
        ),
        Source::Consumer => text(ctx.consumer.as_deref().map(|c| c.name.as_str())),
        Source::ConsumerGroups => Value::Array(
            ctx.consumer
                .as_deref()
                .map(|c| c.groups.iter().map(|g| Value::String(g.clone())).collect())
                .unwrap_or_default(),
        ),
        Source::Claim(c) => ctx
            .claims
            .as_ref()
            .and_then(|m| m.get(c))
            .cloned()
            .unwrap_or(Value::Null),
        Source::RequestId => Value::String(ctx.request_id.to_string()),
        Source::Route => Value::String(ctx.route.to_string()),
        Source::TimeUnix => Value::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        ),
    }
}

fn convert(v: Value, kind: Kind) -> Value {
    let s = match &v {
        Value::String(s) => s.clone(),
        Value::Null => return Value::Null,
        other => other.to_string(),
    };
    match kind {
        Kind::String => Value::String(s),
        Kind::Number => s
            .parse::<i64>()
            .map(Value::from)
            .or_else(|_| s.parse::<f64>().map(Value::from))
            .unwrap_or(Value::Null),
        Kind::Bool => match s.as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => Value::Null,
        },
        Kind::Json => serde_json::from_str(&s).unwrap_or(Value::String(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_eval() {
        let ctx = RequestCtx {
            params: vec![("id".into(), "42".into())],
            ..Default::default()
        };
        let inputs = Inputs {
            query: Some("limit=10&x=a%20b".into()),
            headers: vec![(HeaderName::from_static("x-tenant"), "t1".into())],
        };
        let t = Template::parse("${query.limit:number}").unwrap().unwrap();
        assert_eq!(t.eval(&ctx, &inputs), serde_json::json!(10));
        let t = Template::parse("user-${path.id}@${header.x-tenant}")
            .unwrap()
            .unwrap();
        assert_eq!(t.eval(&ctx, &inputs), serde_json::json!("user-42@t1"));
        assert_eq!(
            Template::parse("${query.x}")
                .unwrap()
                .unwrap()
                .eval(&ctx, &inputs),
            serde_json::json!("a b")
        );
        assert!(Template::parse("plain").unwrap().is_none());
        assert!(Template::parse("${nope}")
            .unwrap_err()
            .contains("unknown template"));
        assert!(Template::parse("${JWT_SECRET}")
            .unwrap_err()
            .contains("environment"));
        assert!(Template::parse("a${query.x:number}").is_err());
        assert!(Template::parse("${query.x:float}").is_err());
    }
}
