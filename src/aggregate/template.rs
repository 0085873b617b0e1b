//! Templates of a composite's calls: the path and query, header values and the JSON body of a
//! call, over the request (`{id}` route parameters and every `${...}` template of
//! `transform::template`), the client's JSON body (`${body.PATH}`) and the answers of earlier
//! calls (`${calls.NAME.body.PATH}`, `${calls.NAME.status}`, `${calls.NAME.header.N}`).
//!
//! A value placed in a path or query is percent-encoded (everything but `A-Z a-z 0-9 - . _ ~`;
//! a lone `.` or `..` too), so a value can never add a path segment or a query parameter. A
//! modifier after `:` says how a value that is not a string is written: `:csv` joins an array
//! with commas (each element encoded), `:json` writes JSON; in a body, a string that is one
//! template keeps the value's type, or converts it with `:number`, `:bool`, `:string`, `:json`.

use crate::context::RequestCtx;
use crate::transform::path::Path;
use crate::transform::template::{Inputs, Template};
use http::HeaderName;
use serde_json::Value;

/// What a `${...}` reads.
#[derive(Debug, Clone)]
pub enum Source {
    /// A route parameter written `{name}`.
    Param(String),
    /// A request template of `transform::template` (`${path.id}`, `${claim.sub}`, ...).
    Request(Template),
    /// The client's JSON body.
    ClientBody(Path),
    /// An earlier call's JSON answer.
    CallBody(usize, Path),
    CallStatus(usize),
    CallHeader(usize, HeaderName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modifier {
    None,
    Csv,
    Json,
    Number,
    Bool,
    String,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Var(Source, Modifier),
}

/// A string with templates.
#[derive(Debug, Clone)]
pub struct Text {
    parts: Vec<Part>,
}

/// A JSON body with templates in its strings.
#[derive(Debug, Clone)]
pub enum Body {
    Lit(Value),
    Text(Text),
    Array(Vec<Body>),
    Object(Vec<(String, Body)>),
}

/// Everything templates read while a composite runs.
pub struct Scope<'a> {
    pub req: &'a RequestCtx,
    pub inputs: &'a Inputs,
    pub client_body: Option<&'a Value>,
    pub calls: &'a [Option<Answer>],
}

/// A finished call, as later templates and the merge see it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
}

/// Why a template could not be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved(pub String);

impl Text {
    /// Parses `s`; `calls` are the names of the composite's calls, `params` the route's
    /// parameters. `{name}` (without `$`) is a route parameter only where `braces` is set
    /// (paths).
    pub fn parse(s: &str, calls: &[&str], params: &[&str], braces: bool) -> Result<Text, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while !rest.is_empty() {
            let dollar = rest.starts_with("${");
            if dollar || (braces && rest.starts_with('{')) {
                let open = if dollar { 2 } else { 1 };
                let end = rest[open..]
                    .find('}')
                    .ok_or_else(|| format!("unterminated `{}` in \"{s}\"", &rest[..open]))?;
                let inner = &rest[open..open + end];
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                let (src, m) = if dollar {
                    source(inner, calls)?
                } else if params.contains(&inner) {
                    (Source::Param(inner.to_string()), Modifier::None)
                } else {
                    return Err(format!(
                        "`{{{inner}}}` is not a parameter of the route's path; known: {}",
                        list(params)
                    ));
                };
                parts.push(Part::Var(src, m));
                rest = &rest[open + end + 1..];
            } else {
                let c = rest.chars().next().unwrap_or_default();
                lit.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Text { parts })
    }

    /// The calls this text reads.
    pub fn deps(&self, out: &mut Vec<usize>) {
        for p in &self.parts {
            if let Part::Var(
                Source::CallBody(i, _) | Source::CallStatus(i) | Source::CallHeader(i, _),
                _,
            ) = p
            {
                out.push(*i);
            }
        }
    }

    /// Request headers the text reads (captured when the request arrives).
    pub fn headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.requests().flat_map(Template::headers)
    }

    /// The request templates of the text (`${claim.sub}`, `${query.q}`, ...).
    pub fn requests(&self) -> impl Iterator<Item = &Template> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(Source::Request(t), _) => Some(t),
            _ => None,
        })
    }

    pub fn reads_client_body(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var(Source::ClientBody(_), _)))
    }

    /// The text for a path and query: values percent-encoded.
    pub fn render_url(&self, scope: &Scope) -> Result<String, Unresolved> {
        self.render(scope, true)
    }

    /// The text as it is (header values).
    pub fn render_plain(&self, scope: &Scope) -> Result<String, Unresolved> {
        self.render(scope, false)
    }

    fn render(&self, scope: &Scope, encode: bool) -> Result<String, Unresolved> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Var(src, m) => {
                    let v = value(src, scope)?;
                    write_value(&mut out, &v, *m, encode)
                        .map_err(|why| Unresolved(format!("the {} {why}", describe(src))))?;
                }
            }
        }
        Ok(out)
    }

    /// One template and nothing else: its value keeps its type.
    fn whole(&self) -> Option<(&Source, Modifier)> {
        match self.parts.as_slice() {
            [Part::Var(s, m)] => Some((s, *m)),
            _ => None,
        }
    }
}

impl Body {
    pub fn parse(v: &Value, calls: &[&str], params: &[&str]) -> Result<Body, String> {
        Ok(match v {
            Value::String(s) if s.contains("${") => {
                Body::Text(Text::parse(s, calls, params, false)?)
            }
            Value::Array(a) => Body::Array(
                a.iter()
                    .map(|x| Body::parse(x, calls, params))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(o) => Body::Object(
                o.iter()
                    .map(|(k, x)| Ok((k.clone(), Body::parse(x, calls, params)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => Body::Lit(other.clone()),
        })
    }

    pub fn deps(&self, out: &mut Vec<usize>) {
        match self {
            Body::Lit(_) => {}
            Body::Text(t) => t.deps(out),
            Body::Array(a) => a.iter().for_each(|b| b.deps(out)),
            Body::Object(o) => o.iter().for_each(|(_, b)| b.deps(out)),
        }
    }

    pub fn reads_client_body(&self) -> bool {
        match self {
            Body::Lit(_) => false,
            Body::Text(t) => t.reads_client_body(),
            Body::Array(a) => a.iter().any(Body::reads_client_body),
            Body::Object(o) => o.iter().any(|(_, b)| b.reads_client_body()),
        }
    }

    /// The request templates of the body's strings.
    pub fn requests<'a>(&'a self, out: &mut Vec<&'a Template>) {
        match self {
            Body::Lit(_) => {}
            Body::Text(t) => out.extend(t.requests()),
            Body::Array(a) => a.iter().for_each(|b| b.requests(out)),
            Body::Object(o) => o.iter().for_each(|(_, b)| b.requests(out)),
        }
    }

    pub fn render(&self, scope: &Scope) -> Result<Value, Unresolved> {
        Ok(match self {
            Body::Lit(v) => v.clone(),
            Body::Text(t) => match t.whole() {
                Some((src, m)) => typed(value(src, scope)?, m),
                None => Value::String(t.render_plain(scope)?),
            },
            Body::Array(a) => Value::Array(
                a.iter()
                    .map(|b| b.render(scope))
                    .collect::<Result<_, _>>()?,
            ),
            Body::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, b)| Ok((k.clone(), b.render(scope)?)))
                    .collect::<Result<_, Unresolved>>()?,
            ),
        })
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

fn modifier(m: &str) -> Result<Modifier, String> {
    Ok(match m {
        "csv" => Modifier::Csv,
        "json" => Modifier::Json,
        "number" => Modifier::Number,
        "bool" => Modifier::Bool,
        "string" => Modifier::String,
        other => {
            return Err(format!(
                "unknown modifier `:{other}`; use :csv, :json, :number, :bool or :string"
            ))
        }
    })
}

fn source(inner: &str, calls: &[&str]) -> Result<(Source, Modifier), String> {
    let (name, m) = match inner.rsplit_once(':') {
        Some((n, m)) => (n, modifier(m)?),
        None => (inner, Modifier::None),
    };
    if let Some(rest) = name.strip_prefix("calls.") {
        let (call, what) = rest.split_once('.').unwrap_or((rest, ""));
        let Some(i) = calls.iter().position(|c| *c == call) else {
            return Err(format!(
                "`${{{inner}}}` names an unknown call \"{call}\"; calls: {}",
                list(calls)
            ));
        };
        let src = match what.split_once('.') {
            _ if what == "status" => Source::CallStatus(i),
            _ if what == "body" => Source::CallBody(i, Path::default()),
            Some(("body", p)) => Source::CallBody(i, Path::parse(p)?),
            Some(("header", h)) => Source::CallHeader(
                i,
                HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| format!("invalid header name in `${{{inner}}}`"))?,
            ),
            _ => {
                return Err(format!(
                    "`${{{inner}}}`: a call is read as calls.{call}.body.PATH, calls.{call}.status or calls.{call}.header.NAME"
                ))
            }
        };
        return Ok((src, m));
    }
    if name == "body" {
        return Ok((Source::ClientBody(Path::default()), m));
    }
    if let Some(p) = name.strip_prefix("body.") {
        return Ok((Source::ClientBody(Path::parse(p)?), m));
    }
    let t = Template::parse(&format!("${{{name}}}"))
        .map_err(|e| format!("{e} (or body.PATH, calls.NAME.body.PATH, calls.NAME.status, calls.NAME.header.NAME)"))?
        .ok_or_else(|| format!("empty template in `${{{inner}}}`"))?;
    Ok((Source::Request(t), m))
}

fn describe(src: &Source) -> String {
    match src {
        Source::Param(p) => format!("route parameter {p}"),
        Source::Request(_) => "request value".into(),
        Source::ClientBody(_) => "client body value".into(),
        Source::CallBody(..) | Source::CallStatus(_) | Source::CallHeader(..) => {
            "earlier call's value".into()
        }
    }
}

fn value(src: &Source, s: &Scope) -> Result<Value, Unresolved> {
    let missing = |what: &str| Unresolved(format!("{what} is missing"));
    let v = match src {
        Source::Param(p) => s
            .req
            .param(p)
            .map(|v| Value::String(v.to_string()))
            .ok_or_else(|| missing(&format!("route parameter {p}")))?,
        Source::Request(t) => t.eval(s.req, s.inputs),
        Source::ClientBody(p) => s
            .client_body
            .and_then(|b| pick(p, b))
            .ok_or_else(|| missing("a value of the request body"))?,
        Source::CallBody(i, p) => s
            .calls
            .get(*i)
            .and_then(Option::as_ref)
            .and_then(|a| pick(p, &a.body))
            .ok_or_else(|| missing("a value of an earlier call's answer"))?,
        Source::CallStatus(i) => s
            .calls
            .get(*i)
            .and_then(Option::as_ref)
            .map(|a| Value::from(a.status))
            .ok_or_else(|| missing("an earlier call's status"))?,
        Source::CallHeader(i, h) => s
            .calls
            .get(*i)
            .and_then(Option::as_ref)
            .and_then(|a| a.headers.get(h)?.to_str().ok())
            .map(|v| Value::String(v.to_string()))
            .ok_or_else(|| missing(&format!("header {h} of an earlier call")))?,
    };
    if v.is_null() {
        return Err(missing("a value"));
    }
    Ok(v)
}

/// A path's value; a path with `[*]` gives the array of what it reaches.
fn pick(p: &Path, v: &Value) -> Option<Value> {
    if p.has_wildcard() {
        Some(Value::Array(p.get(v).into_iter().cloned().collect()))
    } else {
        p.get_one(v).cloned()
    }
}

fn typed(v: Value, m: Modifier) -> Value {
    let text = || match &v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match m {
        Modifier::None | Modifier::Json => v,
        Modifier::String => Value::String(text()),
        Modifier::Csv => Value::String(match &v {
            Value::Array(a) => a.iter().map(scalar_text).collect::<Vec<_>>().join(","),
            _ => text(),
        }),
        Modifier::Number => {
            let s = text();
            s.parse::<i64>()
                .map(Value::from)
                .or_else(|_| s.parse::<f64>().map(Value::from))
                .unwrap_or(Value::Null)
        }
        Modifier::Bool => match text().as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => Value::Null,
        },
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn write_value(out: &mut String, v: &Value, m: Modifier, encode: bool) -> Result<(), String> {
    let put = |out: &mut String, s: &str| {
        if encode {
            encode_into(out, s)
        } else {
            out.push_str(s)
        }
    };
    match (v, m) {
        (Value::Array(a), Modifier::Csv) => {
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if x.is_array() || x.is_object() {
                    return Err("holds a nested array or object (`:csv` joins scalars)".into());
                }
                put(out, &scalar_text(x));
            }
            Ok(())
        }
        (Value::Array(_) | Value::Object(_), Modifier::Json) => {
            put(out, &v.to_string());
            Ok(())
        }
        (Value::Array(_) | Value::Object(_), _) => {
            Err("is an array or object (write it with `:csv` or `:json`)".into())
        }
        (Value::String(s), _) => {
            put(out, s);
            Ok(())
        }
        (other, _) => {
            put(out, &other.to_string());
            Ok(())
        }
    }
}

/// Percent-encodes everything but the unreserved characters (RFC 3986 §2.3); `.` and `..` as a
/// whole value are encoded too (they would be path segments of their own).
fn encode_into(out: &mut String, s: &str) {
    if s == "." || s == ".." {
        out.push_str(&"%2E".repeat(s.len()));
        return;
    }
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789ABCDEF"[(b & 15) as usize]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope_with<'a>(
        req: &'a RequestCtx,
        inputs: &'a Inputs,
        calls: &'a [Option<Answer>],
        body: Option<&'a Value>,
    ) -> Scope<'a> {
        Scope {
            req,
            inputs,
            client_body: body,
            calls,
        }
    }

    #[test]
    fn paths_encode_values_and_join_csv() {
        let req = RequestCtx {
            params: vec![("id".into(), "42".into())],
            ..Default::default()
        };
        let inputs = Inputs::default();
        let calls = vec![Some(Answer {
            status: 200,
            headers: http::HeaderMap::new(),
            body: json!({"user_id": "a/b?c", "items": [{"product_id": 1}, {"product_id": "x y"}]}),
        })];
        let s = scope_with(&req, &inputs, &calls, None);
        let names = ["order", "user"];
        let t = Text::parse(
            "/orders/{id}/u/${calls.order.body.user_id}",
            &names,
            &["id"],
            true,
        )
        .unwrap();
        assert_eq!(t.render_url(&s).unwrap(), "/orders/42/u/a%2Fb%3Fc");
        let t = Text::parse(
            "/p?ids=${calls.order.body.items[*].product_id:csv}",
            &names,
            &["id"],
            true,
        )
        .unwrap();
        assert_eq!(t.render_url(&s).unwrap(), "/p?ids=1,x%20y");
        let mut deps = Vec::new();
        t.deps(&mut deps);
        assert_eq!(deps, vec![0]);
        let t = Text::parse("/x/${calls.order.body.missing}", &names, &["id"], true).unwrap();
        assert!(t.render_url(&s).is_err());
        let t = Text::parse("/x/${calls.order.body.items}", &names, &["id"], true).unwrap();
        assert!(t.render_url(&s).unwrap_err().0.contains(":csv"));
        let t = Text::parse("/x/${path.id}", &names, &["id"], true).unwrap();
        assert_eq!(t.render_url(&s).unwrap(), "/x/42");
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let names = ["order"];
        assert!(Text::parse("/u/${calls.nope.body.x}", &names, &[], true)
            .unwrap_err()
            .contains("unknown call"));
        assert!(Text::parse("/u/{nope}", &names, &["id"], true)
            .unwrap_err()
            .contains("not a parameter"));
        assert!(Text::parse("/u/${calls.order.bdy}", &names, &[], true)
            .unwrap_err()
            .contains("calls.order.body.PATH"));
        assert!(Text::parse("/u/${wat}", &names, &[], true)
            .unwrap_err()
            .contains("unknown template"));
        assert!(Text::parse("/u/${JWT}", &names, &[], true)
            .unwrap_err()
            .contains("environment"));
        assert!(Text::parse("/u/${path.id:csvx}", &names, &[], true).is_err());
        assert!(Text::parse("/u/${path.id", &names, &[], true).is_err());
    }

    #[test]
    fn bodies_keep_types() {
        let req = RequestCtx::default();
        let inputs = Inputs::default();
        let calls = vec![Some(Answer {
            status: 201,
            headers: http::HeaderMap::new(),
            body: json!({"id": 7, "tags": ["a"]}),
        })];
        let client = json!({"qty": "3", "note": "hi"});
        let s = scope_with(&req, &inputs, &calls, Some(&client));
        let b = Body::parse(
            &json!({"order": "${calls.order.body.id}", "tags": "${calls.order.body.tags}",
                    "qty": "${body.qty:number}", "text": "note: ${body.note}",
                    "status": "${calls.order.status}", "fixed": [1, true]}),
            &["order"],
            &[],
        )
        .unwrap();
        assert!(b.reads_client_body());
        assert_eq!(
            b.render(&s).unwrap(),
            json!({"order": 7, "tags": ["a"], "qty": 3, "text": "note: hi", "status": 201, "fixed": [1, true]})
        );
    }
}
