//! Declarative JSON document operations, shared by the `transform` plugin (and later by API
//! composition): `set`, `add`, `default`, `remove`, `rename`, `move`, `copy` and `keep`, over
//! [`path::Path`]s, with values that may be [`template::Template`]s over the request.

pub mod lazy;
pub mod path;
pub mod query;
pub mod shape;
pub mod template;
pub mod xml;

use crate::context::RequestCtx;
use path::{Path, Seg};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};
use template::{Inputs, Template};

/// One operation as written in YAML (`- set: { path: a.b, value: 1 }`): a map with one key
/// naming the operation (decoded by hand: yaml_serde reads externally tagged enums as tags).
#[derive(Debug, Clone, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum JsonOpConfig {
    /// Create or replace.
    Set(SetConfig),
    /// Create only where the field is absent.
    Add(SetConfig),
    /// Set where the field is absent or null.
    Default(SetConfig),
    /// Remove one path or several.
    Remove(OneOrMany),
    /// Rename the last name of a path (`{ from: user.fullname, to: name }`).
    Rename(FromTo),
    /// Move a value to another path.
    Move(FromTo),
    /// Copy a value to another path.
    Copy(FromTo),
    /// Keep only these paths (an allow-list); everything else is dropped.
    Keep(Vec<String>),
}

const OPERATIONS: &[&str] = &[
    "set", "add", "default", "remove", "rename", "move", "copy", "keep",
];

impl crate::common::one_key::OneKey for JsonOpConfig {
    const NAMES: &'static [&'static str] = OPERATIONS;
    const EXPECTING: &'static str = "operation ({names})";
    const EMPTY: &'static str = "empty operation";
    const SECOND_KEY: &'static str =
        "one operation per list item; start a new `- op:` item for the next";

    fn decode<'de, A: serde::de::MapAccess<'de>>(
        name: &str,
        map: &mut A,
    ) -> Result<Option<JsonOpConfig>, A::Error> {
        Ok(Some(match name {
            "set" => JsonOpConfig::Set(map.next_value()?),
            "add" => JsonOpConfig::Add(map.next_value()?),
            "default" => JsonOpConfig::Default(map.next_value()?),
            "remove" => JsonOpConfig::Remove(map.next_value()?),
            "rename" => JsonOpConfig::Rename(map.next_value()?),
            "move" => JsonOpConfig::Move(map.next_value()?),
            "copy" => JsonOpConfig::Copy(map.next_value()?),
            "keep" => JsonOpConfig::Keep(map.next_value()?),
            _ => return Ok(None),
        }))
    }
}

impl<'de> Deserialize<'de> for JsonOpConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        crate::common::one_key::deserialize(d)
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    pub path: String,
    /// A typed value (string, number, bool, null, object, array); strings may hold templates.
    pub value: Value,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FromTo {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "PathOrPaths")]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SetMode {
    Replace,
    IfAbsent,
    IfAbsentOrNull,
}

/// A value to write: literals with templates in their strings.
#[derive(Debug, Clone)]
pub enum Spec {
    Lit(Value),
    Tpl(Template),
    Object(Vec<(String, Spec)>),
    Array(Vec<Spec>),
}

impl Spec {
    pub fn compile(v: &Value) -> Result<Spec, String> {
        Ok(match v {
            Value::String(s) => match Template::parse(s)? {
                Some(t) => Spec::Tpl(t),
                None => Spec::Lit(v.clone()),
            },
            Value::Object(m) => {
                let fields = m
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), Spec::compile(v)?)))
                    .collect::<Result<Vec<_>, String>>()?;
                if fields.iter().all(|(_, s)| matches!(s, Spec::Lit(_))) {
                    Spec::Lit(v.clone())
                } else {
                    Spec::Object(fields)
                }
            }
            Value::Array(a) => {
                let items = a.iter().map(Spec::compile).collect::<Result<Vec<_>, _>>()?;
                if items.iter().all(|s| matches!(s, Spec::Lit(_))) {
                    Spec::Lit(v.clone())
                } else {
                    Spec::Array(items)
                }
            }
            other => Spec::Lit(other.clone()),
        })
    }

    pub fn eval(&self, ctx: &RequestCtx, inputs: &Inputs) -> Value {
        match self {
            Spec::Lit(v) => v.clone(),
            Spec::Tpl(t) => t.eval(ctx, inputs),
            Spec::Object(f) => Value::Object(
                f.iter()
                    .map(|(k, s)| (k.clone(), s.eval(ctx, inputs)))
                    .collect(),
            ),
            Spec::Array(a) => Value::Array(a.iter().map(|s| s.eval(ctx, inputs)).collect()),
        }
    }

    fn templates(&self) -> Vec<&Template> {
        match self {
            Spec::Lit(_) => Vec::new(),
            Spec::Tpl(t) => vec![t],
            Spec::Object(f) => f.iter().flat_map(|(_, s)| s.templates()).collect(),
            Spec::Array(a) => a.iter().flat_map(Spec::templates).collect(),
        }
    }
}

/// A compiled operation.
#[derive(Debug, Clone)]
enum Op {
    Set(Path, Spec, SetMode),
    Remove(Vec<Path>),
    Rename(Path, String),
    Move(Path, Path),
    Copy(Path, Path),
    Keep(Keep),
}

/// The operations of one document, in order.
#[derive(Debug, Clone, Default)]
pub struct JsonOps {
    ops: Vec<Op>,
    /// What the operations' paths go through (split when a document is read lazily).
    guide: lazy::Guide,
}

impl JsonOps {
    /// Compiles `list`; errors name the operation (`[i]`) under `path`.
    pub fn compile(list: &[JsonOpConfig], at: &str) -> Result<JsonOps, Vec<(String, String)>> {
        let mut ops = Vec::new();
        let mut errors = Vec::new();
        for (i, c) in list.iter().enumerate() {
            match compile_op(c) {
                Ok(op) => ops.push(op),
                Err(e) => errors.push((format!("{at}[{i}]"), e)),
            }
        }
        if errors.is_empty() {
            let mut guide = lazy::Guide::default();
            let mut parents = |p: &Path| {
                if let Some((_, parents)) = p.0.split_last() {
                    guide.add(parents);
                }
            };
            for op in &ops {
                match op {
                    Op::Set(p, _, _) | Op::Rename(p, _) => parents(p),
                    Op::Remove(ps) => ps.iter().for_each(&mut parents),
                    Op::Move(a, b) | Op::Copy(a, b) => {
                        parents(a);
                        parents(b);
                    }
                    Op::Keep(_) => {}
                }
            }
            Ok(JsonOps { ops, guide })
        } else {
            Err(errors)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Whether an operation's value holds a template (request inputs must then be kept).
    pub fn has_templates(&self) -> bool {
        self.ops.iter().any(|o| match o {
            Op::Set(_, s, _) => !s.templates().is_empty(),
            _ => false,
        })
    }

    /// Header names the operations' templates read.
    pub fn headers(&self) -> Vec<http::HeaderName> {
        let mut out: Vec<http::HeaderName> = self
            .ops
            .iter()
            .filter_map(|o| match o {
                Op::Set(_, s, _) => Some(s),
                _ => None,
            })
            .flat_map(|s| s.templates())
            .flat_map(|t| t.headers().cloned().collect::<Vec<_>>())
            .collect();
        out.dedup();
        out
    }

    pub fn apply(&self, doc: &mut Value, ctx: &RequestCtx, inputs: &Inputs) {
        for op in &self.ops {
            match op {
                Op::Set(p, spec, mode) => set(doc, p, &spec.eval(ctx, inputs), *mode),
                Op::Remove(paths) => paths.iter().for_each(|p| {
                    p.remove(doc);
                }),
                Op::Rename(p, to) => p.parents_mut(doc, &mut |parent, last| {
                    if let (Value::Object(m), Seg::Key(k)) = (parent, last) {
                        if let Some(v) = m.remove(k) {
                            m.insert(to.clone(), v);
                        }
                    }
                }),
                Op::Move(from, to) => {
                    if let Some(v) = from.remove(doc).into_iter().next() {
                        to.set(doc, &v, false);
                    }
                }
                Op::Copy(from, to) => {
                    if let Some(v) = from.get(doc).first().map(|v| (*v).clone()) {
                        to.set(doc, &v, false);
                    }
                }
                Op::Keep(k) => *doc = k.apply(std::mem::take(doc)),
            }
        }
    }
}

impl JsonOps {
    /// Reads a document for [`JsonOps::apply_lazy`], in one pass.
    pub fn parse_lazy<'a>(&self, text: &'a str) -> Result<lazy::Node<'a>, serde_json::Error> {
        lazy::Node::parse_guided(text, &self.guide)
    }

    /// [`JsonOps::apply`] on a lazily parsed document (same result; untouched parts stay text).
    pub fn apply_lazy<'a>(&'a self, doc: &mut lazy::Node<'a>, ctx: &RequestCtx, inputs: &Inputs) {
        for op in &self.ops {
            match op {
                Op::Set(p, spec, mode) => {
                    let v = spec.eval(ctx, inputs);
                    if *mode == SetMode::IfAbsentOrNull {
                        if let Some((Seg::Key(k), parents)) = p.0.split_last() {
                            doc.each_parent(parents, &mut |parent| parent.remove_null_member(k));
                        }
                    }
                    doc.set(&p.0, &v, *mode != SetMode::Replace);
                }
                Op::Remove(paths) => paths.iter().for_each(|p| {
                    doc.remove(&p.0);
                }),
                Op::Rename(p, to) => {
                    if let Some((Seg::Key(k), parents)) = p.0.split_last() {
                        doc.each_parent(parents, &mut |parent| parent.rename_member(k, to));
                    }
                }
                Op::Move(from, to) => {
                    if let Some(v) = doc.remove(&from.0).into_iter().next() {
                        doc.set(&to.0, &v.to_value(), false);
                    }
                }
                Op::Copy(from, to) => {
                    if let Some(v) = doc.get_first(&from.0) {
                        doc.set(&to.0, &v, false);
                    }
                }
                Op::Keep(k) => *doc = lazy::Node::Val(k.apply(doc.to_value())),
            }
        }
    }
}

fn set(doc: &mut Value, p: &Path, v: &Value, mode: SetMode) {
    match mode {
        SetMode::Replace => p.set(doc, v, false),
        SetMode::IfAbsent => p.set(doc, v, true),
        SetMode::IfAbsentOrNull => {
            // Null counts as absent: clear nulls first, then add.
            p.parents_mut(doc, &mut |parent, last| {
                if let (Value::Object(m), Seg::Key(k)) = (parent, last) {
                    if m.get(k).is_some_and(Value::is_null) {
                        m.remove(k);
                    }
                }
            });
            p.set(doc, v, true);
        }
    }
}

fn parse(p: &str) -> Result<Path, String> {
    Path::parse(p)
}

fn compile_op(c: &JsonOpConfig) -> Result<Op, String> {
    let set_op = |s: &SetConfig, mode| -> Result<Op, String> {
        let path = parse(&s.path)?;
        if path.0.is_empty() && mode != SetMode::Replace {
            return Err("`add`/`default` need a path below the document".into());
        }
        Ok(Op::Set(path, Spec::compile(&s.value)?, mode))
    };
    Ok(match c {
        JsonOpConfig::Set(s) => set_op(s, SetMode::Replace)?,
        JsonOpConfig::Add(s) => set_op(s, SetMode::IfAbsent)?,
        JsonOpConfig::Default(s) => set_op(s, SetMode::IfAbsentOrNull)?,
        JsonOpConfig::Remove(OneOrMany::One(p)) => Op::Remove(vec![parse(p)?]),
        JsonOpConfig::Remove(OneOrMany::Many(ps)) => {
            Op::Remove(ps.iter().map(|p| parse(p)).collect::<Result<_, _>>()?)
        }
        JsonOpConfig::Rename(ft) => {
            let from = parse(&ft.from)?;
            if !matches!(from.0.last(), Some(Seg::Key(_))) {
                return Err("`rename.from` must end with a field name".into());
            }
            if ft.to.is_empty() || ft.to.contains(['.', '[', '/']) {
                return Err("`rename.to` is the new field name (no dots or brackets)".into());
            }
            Op::Rename(from, ft.to.clone())
        }
        JsonOpConfig::Move(ft) | JsonOpConfig::Copy(ft) => {
            let (from, to) = (parse(&ft.from)?, parse(&ft.to)?);
            if from.has_wildcard() || to.has_wildcard() {
                return Err("`move`/`copy` take one value: no [*] in `from` or `to`".into());
            }
            if matches!(c, JsonOpConfig::Move(_)) {
                Op::Move(from, to)
            } else {
                Op::Copy(from, to)
            }
        }
        JsonOpConfig::Keep(paths) => {
            let mut k = Keep::default();
            for p in paths {
                let path = parse(p)?;
                if path.0.iter().any(|s| matches!(s, Seg::Index(_))) {
                    return Err(format!("keep path \"{p}\": use names and [*], not indexes"));
                }
                k.insert(&path.0);
            }
            Op::Keep(k)
        }
    })
}

/// An allow-list of paths as a tree: a leaf keeps the whole value below it.
#[derive(Debug, Clone, Default)]
struct Keep {
    leaf: bool,
    keys: Vec<(String, Keep)>,
    all: Option<Box<Keep>>,
}

impl Keep {
    fn insert(&mut self, segs: &[Seg]) {
        let Some((first, rest)) = segs.split_first() else {
            self.leaf = true;
            return;
        };
        let child = match first {
            Seg::Key(k) => {
                let i = match self.keys.iter().position(|(n, _)| n == k) {
                    Some(i) => i,
                    None => {
                        self.keys.push((k.clone(), Keep::default()));
                        self.keys.len() - 1
                    }
                };
                &mut self.keys[i].1
            }
            Seg::All | Seg::Index(_) => self.all.get_or_insert_with(Box::default),
        };
        child.insert(rest);
    }

    fn apply(&self, v: Value) -> Value {
        if self.leaf {
            return v;
        }
        match v {
            Value::Object(mut m) => {
                let mut out = Map::new();
                for (k, sub) in &self.keys {
                    if let Some(x) = m.remove(k) {
                        out.insert(k.clone(), sub.apply(x));
                    }
                }
                Value::Object(out)
            }
            Value::Array(a) => match &self.all {
                Some(sub) => Value::Array(a.into_iter().map(|x| sub.apply(x)).collect()),
                None => Value::Array(Vec::new()),
            },
            _ => Value::Null,
        }
    }
}

#[cfg(test)]
mod tests;
