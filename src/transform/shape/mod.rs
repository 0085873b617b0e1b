//! Collection shaping: the client's query string filters, sorts, pages and trims a JSON array in
//! an upstream response, within what the route allows.
//!
//! Order: filter → sort → paginate → fields → wrap. Filters are `field=value` or
//! `field[op]=value` (`eq ne lt le gt ge in contains prefix`); `sort=-created_at,name`;
//! `fields=id,name`; `page`/`per_page` or `offset`/`limit`. Parameter names are configurable.
//! Shaping works on the one upstream response: it never pages through the upstream.

mod config;

pub use config::{PageStyle, PaginateConfig, ParamNames, ShapeConfig, WrapConfig};

use super::path::Path;
use serde_json::{Map, Value};
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Contains,
    Prefix,
}

const OPS: &[(&str, Op)] = &[
    ("eq", Op::Eq),
    ("ne", Op::Ne),
    ("lt", Op::Lt),
    ("le", Op::Le),
    ("gt", Op::Gt),
    ("ge", Op::Ge),
    ("in", Op::In),
    ("contains", Op::Contains),
    ("prefix", Op::Prefix),
];

/// A route's compiled shaping.
#[derive(Debug, Clone)]
pub struct Shape {
    target: Path,
    filter: Vec<(String, Path)>,
    sort: Vec<(String, Path)>,
    default_sort: Vec<(usize, bool)>,
    fields: Vec<String>,
    paginate: Option<Paginate>,
    wrap: Option<WrapConfig>,
    unwrap: bool,
    params: ParamNames,
    strip: bool,
}

#[derive(Debug, Clone)]
struct Paginate {
    style: PageStyle,
    default: usize,
    max: usize,
    page: String,
    size: String,
    headers: bool,
}

/// What the client asked for, checked against what the route allows.
#[derive(Debug, Clone, Default)]
pub struct ShapeRequest {
    filters: Vec<(usize, Op, String)>,
    /// (index into `sort`, descending)
    sort: Vec<(usize, bool)>,
    fields: Vec<String>,
    /// Offset and size of the page.
    page: Option<(usize, usize)>,
}

/// Why a response was not shaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    /// The client asked for a page past the end (a 400 that says how many there are).
    Client(String),
    /// The upstream's document has no array where the route says (an upstream problem).
    NoArray,
}

/// The shaped document and the headers that describe it.
#[derive(Debug, PartialEq)]
pub struct Shaped {
    pub doc: Value,
    pub total: usize,
    pub links: Option<String>,
}

impl Shape {
    pub fn compile(c: &ShapeConfig, at: &str) -> Result<Shape, Vec<(String, String)>> {
        let mut issues = Vec::new();
        let mut paths = |list: &[String], field: &str| -> Vec<(String, Path)> {
            list.iter()
                .enumerate()
                .filter_map(|(i, f)| match Path::parse(f) {
                    Ok(p) if !p.has_wildcard() && !f.starts_with('/') => Some((f.clone(), p)),
                    Ok(_) => {
                        issues.push((
                            format!("{at}.{field}[{i}]"),
                            format!("\"{f}\": a field is a dot path without [*] or pointers"),
                        ));
                        None
                    }
                    Err(e) => {
                        issues.push((format!("{at}.{field}[{i}]"), e));
                        None
                    }
                })
                .collect()
        };
        let filter = paths(&c.filter, "filter");
        let sort = paths(&c.sort, "sort");
        let target = match c.target.as_deref().map(Path::parse) {
            None => Path::default(),
            Some(Ok(p)) if !p.has_wildcard() => p,
            Some(Ok(_)) => {
                issues.push((format!("{at}.target"), "target cannot hold [*]".into()));
                Path::default()
            }
            Some(Err(e)) => {
                issues.push((format!("{at}.target"), e));
                Path::default()
            }
        };
        for (i, f) in c.fields.iter().enumerate() {
            if f.is_empty() || f.contains(['.', '[', '/', ',']) {
                issues.push((
                    format!("{at}.fields[{i}]"),
                    format!("\"{f}\": fields are top-level item keys"),
                ));
            }
        }
        let default_sort = match &c.default_sort {
            None => Vec::new(),
            Some(s) => parse_sort(s, &sort).unwrap_or_else(|e| {
                issues.push((format!("{at}.default_sort"), e));
                Vec::new()
            }),
        };
        let paginate = c.paginate.as_ref().map(|p| {
            if p.max_per_page == 0 || p.default_per_page == 0 || p.default_per_page > p.max_per_page
            {
                issues.push((
                    format!("{at}.paginate"),
                    "need 1 <= default_per_page <= max_per_page".into(),
                ));
            }
            let (page, size) = match p.style {
                PageStyle::Page => ("page", "per_page"),
                PageStyle::Offset => ("offset", "limit"),
            };
            Paginate {
                style: p.style,
                default: p.default_per_page,
                max: p.max_per_page,
                page: p.page_param.clone().unwrap_or_else(|| page.into()),
                size: p.size_param.clone().unwrap_or_else(|| size.into()),
                headers: p.headers,
            }
        });
        if c.wrap.is_some() && c.unwrap {
            issues.push((
                format!("{at}.unwrap"),
                "give either `wrap` or `unwrap`, not both".into(),
            ));
        }
        if let Some(w) = &c.wrap {
            if w.key.is_empty() || (w.meta && w.key == "meta") {
                issues.push((format!("{at}.wrap.key"), "a key other than \"meta\"".into()));
            }
        }
        let mut names: Vec<&str> = vec![&c.params.sort, &c.params.fields];
        if let Some(p) = &paginate {
            names.extend([p.page.as_str(), p.size.as_str()]);
        }
        for (i, n) in names.iter().enumerate() {
            if n.is_empty() || names[..i].contains(n) || c.filter.iter().any(|f| f == n) {
                issues.push((
                    format!("{at}.params"),
                    format!("parameter name \"{n}\" is empty or used twice"),
                ));
            }
        }
        if filter.is_empty()
            && sort.is_empty()
            && c.fields.is_empty()
            && paginate.is_none()
            && c.wrap.is_none()
            && !c.unwrap
            && issues.is_empty()
        {
            issues.push((
                at.to_string(),
                "nothing to do: give filter, sort, fields, paginate, wrap or unwrap".into(),
            ));
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Shape {
            target,
            filter,
            sort,
            default_sort,
            fields: c.fields.clone(),
            paginate,
            wrap: c.wrap.clone(),
            unwrap: c.unwrap,
            params: c.params.clone(),
            strip: c.strip_params,
        })
    }

    /// Whether pages are described by `Link` and `X-Total-Count`.
    pub fn page_headers(&self) -> bool {
        self.paginate.as_ref().is_some_and(|p| p.headers)
    }

    fn is_param(&self, name: &str) -> bool {
        let base = name.split('[').next().unwrap_or(name);
        name == self.params.sort
            || name == self.params.fields
            || self
                .paginate
                .as_ref()
                .is_some_and(|p| name == p.page || name == p.size)
            || self.filter.iter().any(|(f, _)| f == base)
            || name.contains('[')
    }

    /// The parameter names to take off the upstream request, when `strip_params` is set.
    pub fn strip(&self, query: &str) -> Option<Vec<String>> {
        if !self.strip {
            return None;
        }
        Some(
            pairs(query)
                .map(|(k, _)| k)
                .filter(|k| self.is_param(k))
                .collect(),
        )
    }

    /// Reads the client's shaping parameters; an error lists what is allowed.
    pub fn request(&self, query: &str) -> Result<ShapeRequest, String> {
        let mut r = ShapeRequest::default();
        let mut page_no: Option<usize> = None;
        let mut size: Option<usize> = None;
        for (k, v) in pairs(query) {
            if k == self.params.sort {
                r.sort = parse_sort(&v, &self.sort)?;
            } else if k == self.params.fields {
                r.fields = self.parse_fields(&v)?;
            } else if let Some(p) = self.paginate.as_ref().filter(|p| k == p.page) {
                page_no = Some(number(&k, &v)?);
                if p.style == PageStyle::Page && page_no == Some(0) {
                    return Err(format!("\"{k}\" counts from 1."));
                }
            } else if let Some(p) = self.paginate.as_ref().filter(|p| k == p.size) {
                let n = number(&k, &v)?;
                if n == 0 || n > p.max {
                    return Err(format!("\"{k}\" must be between 1 and {}.", p.max));
                }
                size = Some(n);
            } else if let Some(f) = self.parse_filter(&k, v)? {
                r.filters.push(f);
            }
        }
        if r.sort.is_empty() {
            r.sort = self.default_sort.clone();
        }
        if let Some(p) = &self.paginate {
            let size = size.unwrap_or(p.default);
            let offset = match p.style {
                PageStyle::Page => (page_no.unwrap_or(1) - 1).saturating_mul(size),
                PageStyle::Offset => page_no.unwrap_or(0),
            };
            r.page = Some((offset, size));
        }
        Ok(r)
    }

    fn parse_fields(&self, v: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        for f in v.split(',').filter(|f| !f.is_empty()) {
            if !self.fields.iter().any(|a| a == f) {
                return Err(format!(
                    "\"{}\" cannot select \"{f}\"; allowed: {}.",
                    self.params.fields,
                    list(self.fields.iter())
                ));
            }
            out.push(f.to_string());
        }
        Ok(out)
    }

    fn parse_filter(&self, k: &str, v: String) -> Result<Option<(usize, Op, String)>, String> {
        let (name, op) = match k.split_once('[') {
            Some((n, rest)) => {
                let Some(op) = rest.strip_suffix(']') else {
                    return Err(format!("\"{k}\": an operator is written field[op]."));
                };
                let Some((_, op)) = OPS.iter().find(|(o, _)| *o == op) else {
                    return Err(format!(
                        "\"{op}\" is not an operator; allowed: {}.",
                        list(OPS.iter().map(|(o, _)| o))
                    ));
                };
                (n, Some(*op))
            }
            None => (k, None),
        };
        match self.filter.iter().position(|(f, _)| f == name) {
            Some(i) => Ok(Some((i, op.unwrap_or(Op::Eq), v))),
            // Plain parameters of other names are the upstream's; `x[op]` is always a filter.
            None if op.is_none() => Ok(None),
            None => Err(format!(
                "\"{name}\" cannot be filtered; allowed: {}.",
                list(self.filter.iter().map(|(f, _)| f))
            )),
        }
    }

    /// Shapes `doc`; `base` is the client's path and `query` its query, for `Link`.
    pub fn apply(
        &self,
        mut doc: Value,
        req: &ShapeRequest,
        path: &str,
        query: &str,
    ) -> Result<Shaped, ShapeError> {
        let Some(Value::Array(items)) = self.target.take(&mut doc) else {
            return Err(ShapeError::NoArray);
        };
        let mut items: Vec<Value> = items
            .into_iter()
            .filter(|item| {
                req.filters
                    .iter()
                    .all(|(i, op, v)| matches(self.filter[*i].1.get_one(item), *op, v))
            })
            .collect();
        if !req.sort.is_empty() {
            items = self.sorted(items, &req.sort);
        }
        let total = items.len();
        let mut links = None;
        let mut meta = Map::new();
        meta.insert("total".into(), total.into());
        if let (Some(p), Some((offset, size))) = (&self.paginate, req.page) {
            if offset > 0 && offset >= total {
                let last = total.div_ceil(size).max(1);
                return Err(ShapeError::Client(match p.style {
                    PageStyle::Page => format!(
                        "\"{}\" is out of range: there are {last} page(s) of {size}.",
                        p.page
                    ),
                    PageStyle::Offset => {
                        format!("\"{}\" is out of range: there are {total} item(s).", p.page)
                    }
                }));
            }
            items = items.into_iter().skip(offset).take(size).collect();
            if p.headers {
                links = Some(self.links(p, offset, size, total, path, query));
            }
            match p.style {
                PageStyle::Page => {
                    meta.insert("page".into(), (offset / size + 1).into());
                    meta.insert("per_page".into(), size.into());
                    meta.insert("pages".into(), total.div_ceil(size).into());
                }
                PageStyle::Offset => {
                    meta.insert("offset".into(), offset.into());
                    meta.insert("limit".into(), size.into());
                }
            }
        }
        if !req.fields.is_empty() {
            for item in &mut items {
                if let Value::Object(m) = item {
                    m.retain(|k, _| req.fields.iter().any(|f| f == k));
                }
            }
        }
        let array = Value::Array(items);
        let doc = if let Some(w) = &self.wrap {
            let mut out = Map::new();
            out.insert(w.key.clone(), array);
            if w.meta {
                out.insert("meta".into(), Value::Object(meta));
            }
            Value::Object(out)
        } else if self.unwrap || self.target.0.is_empty() {
            array
        } else {
            self.target.set(&mut doc, &array, false);
            doc
        };
        Ok(Shaped { doc, total, links })
    }

    /// The items in sort order (stable). The sort keys are looked up once per item, and the
    /// items are ordered by index, not moved at every comparison.
    fn sorted(&self, mut items: Vec<Value>, sort: &[(usize, bool)]) -> Vec<Value> {
        let k = sort.len();
        let mut order: Vec<usize> = (0..items.len()).collect();
        {
            let keys: Vec<Option<&Value>> = items
                .iter()
                .flat_map(|it| sort.iter().map(|(i, _)| self.sort[*i].1.get_one(it)))
                .collect();
            order.sort_by(|&a, &b| {
                sort.iter()
                    .enumerate()
                    .map(|(j, (_, desc))| compare(keys[a * k + j], keys[b * k + j], *desc))
                    .find(|o| *o != Ordering::Equal)
                    .unwrap_or(Ordering::Equal)
            });
        }
        order
            .into_iter()
            .map(|i| std::mem::take(&mut items[i]))
            .collect()
    }

    /// RFC 8288 links to the first, previous, next and last pages, other parameters kept.
    fn links(
        &self,
        p: &Paginate,
        offset: usize,
        size: usize,
        total: usize,
        path: &str,
        query: &str,
    ) -> String {
        let kept: Vec<(String, String)> = raw_pairs(query)
            .filter(|(k, _)| {
                let k = crate::router::path::form_decode(k);
                k != p.page && k != p.size
            })
            .map(|(k, v)| (super::query::query_safe(k), super::query::query_safe(v)))
            .collect();
        let last_offset = if total == 0 {
            0
        } else {
            (total - 1) / size * size
        };
        let url = |off: usize| {
            let at = match p.style {
                PageStyle::Page => off / size + 1,
                PageStyle::Offset => off,
            };
            let mut q: Vec<String> = kept.iter().map(|(k, v)| format!("{k}={v}")).collect();
            q.push(format!("{}={at}", super::query::encode(&p.page)));
            q.push(format!("{}={size}", super::query::encode(&p.size)));
            format!("<{path}?{}>", q.join("&"))
        };
        let mut out = vec![format!("{}; rel=\"first\"", url(0))];
        if offset > 0 {
            out.push(format!(
                "{}; rel=\"prev\"",
                url(offset.saturating_sub(size))
            ));
        }
        if offset + size < total {
            out.push(format!("{}; rel=\"next\"", url(offset + size)));
        }
        out.push(format!("{}; rel=\"last\"", url(last_offset)));
        out.join(", ")
    }
}

fn list<'a>(names: impl Iterator<Item = &'a (impl AsRef<str> + 'a + ?Sized)>) -> String {
    let v: Vec<&str> = names.map(|n| n.as_ref()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn number(k: &str, v: &str) -> Result<usize, String> {
    v.parse()
        .map_err(|_| format!("\"{k}\" must be a whole number, not \"{v}\"."))
}

fn raw_pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// Decoded query pairs.
fn pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    raw_pairs(query).map(|(k, v)| {
        (
            crate::router::path::form_decode(k),
            crate::router::path::form_decode(v),
        )
    })
}

fn parse_sort(s: &str, allowed: &[(String, Path)]) -> Result<Vec<(usize, bool)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (desc, name) = match part.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, part.strip_prefix('+').unwrap_or(part)),
        };
        let Some(i) = allowed.iter().position(|(f, _)| f == name) else {
            return Err(format!(
                "cannot sort by \"{name}\"; allowed: {}.",
                list(allowed.iter().map(|(f, _)| f))
            ));
        };
        out.push((i, desc));
    }
    Ok(out)
}

/// Does an item's value pass `op value`? Comparison follows the item's type: numbers
/// numerically, strings by code point, booleans and null by their names.
fn matches(field: Option<&Value>, op: Op, want: &str) -> bool {
    let Some(field) = field else {
        return op == Op::Ne;
    };
    match op {
        Op::In => want
            .split(',')
            .any(|w| compare_to(field, w) == Some(Ordering::Equal)),
        Op::Contains => match field {
            Value::String(s) => s.contains(want),
            Value::Array(a) => a
                .iter()
                .any(|x| compare_to(x, want) == Some(Ordering::Equal)),
            _ => false,
        },
        Op::Prefix => matches!(field, Value::String(s) if s.starts_with(want)),
        _ => {
            let Some(o) = compare_to(field, want) else {
                return op == Op::Ne;
            };
            match op {
                Op::Eq => o == Ordering::Equal,
                Op::Ne => o != Ordering::Equal,
                Op::Lt => o == Ordering::Less,
                Op::Le => o != Ordering::Greater,
                Op::Gt => o == Ordering::Greater,
                _ => o != Ordering::Less,
            }
        }
    }
}

/// How a JSON value compares with the client's text, read as the value's type; `None` when the
/// text is not of that type.
fn compare_to(v: &Value, text: &str) -> Option<Ordering> {
    match v {
        Value::Number(n) => n.as_f64()?.partial_cmp(&text.trim().parse::<f64>().ok()?),
        Value::String(s) => Some(s.as_str().cmp(text)),
        Value::Bool(b) => Some(b.cmp(&text.parse::<bool>().ok()?)),
        Value::Null => (text == "null").then_some(Ordering::Equal),
        _ => None,
    }
}

/// Sort order: values of the same type by value; nulls and missing values last in either
/// direction; otherwise numbers, strings, booleans, then arrays and objects.
fn compare(a: Option<&Value>, b: Option<&Value>, desc: bool) -> Ordering {
    let rank = |v: Option<&Value>| match v {
        None | Some(Value::Null) => 4,
        Some(Value::Number(_)) => 0,
        Some(Value::String(_)) => 1,
        Some(Value::Bool(_)) => 2,
        Some(_) => 3,
    };
    let (ra, rb) = (rank(a), rank(b));
    if ra == 4 || rb == 4 || ra != rb {
        return ra.cmp(&rb);
    }
    let o = match (a, b) {
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        _ => Ordering::Equal,
    };
    if desc {
        o.reverse()
    } else {
        o
    }
}

#[cfg(test)]
mod tests;
