//! Shaping each call's answer and merging the answers into one document.
//!
//! Per call, in this order: `target` (take a sub-tree), `flatten` (an array of arrays becomes
//! one array), `allow` (keep only these paths), `deny` (drop these paths), `mapping` (rename).
//! On an array, `allow`, `deny` and `mapping` apply to each element. Then the merge, in the
//! order the calls are written: a call with `group` is placed under that key; an object answer
//! without `group` has its members merged at the top level (a later call wins on a clash); any
//! other answer without `group` is placed under the call's name.

use crate::transform::path::{Path, Seg};
use serde_json::{Map, Value};

/// How one call's answer is shaped before the merge.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    pub target: Option<Path>,
    pub flatten: bool,
    pub allow: Vec<Path>,
    pub deny: Vec<Path>,
    /// A path and the new name of its last member.
    pub mapping: Vec<(Path, String)>,
}

impl Shape {
    pub fn is_identity(&self) -> bool {
        self.target.is_none()
            && !self.flatten
            && self.allow.is_empty()
            && self.deny.is_empty()
            && self.mapping.is_empty()
    }

    pub fn apply(&self, mut v: Value) -> Value {
        if self.is_identity() {
            return v;
        }
        if let Some(t) = &self.target {
            v = t.take(&mut v).unwrap_or(Value::Null);
        }
        if self.flatten {
            if let Value::Array(items) = v {
                v = Value::Array(
                    items
                        .into_iter()
                        .flat_map(|x| match x {
                            Value::Array(inner) => inner,
                            other => vec![other],
                        })
                        .collect(),
                );
            }
        }
        match &mut v {
            Value::Array(items) => items.iter_mut().for_each(|x| self.fields(x)),
            other => self.fields(other),
        }
        v
    }

    fn fields(&self, v: &mut Value) {
        if !v.is_object() {
            return;
        }
        if !self.allow.is_empty() {
            let mut kept = Value::Object(Map::new());
            for p in &self.allow {
                if let Some(x) = p.get_one(v) {
                    p.set(&mut kept, x, false);
                }
            }
            *v = kept;
        }
        for p in &self.deny {
            p.remove(v);
        }
        for (p, to) in &self.mapping {
            p.parents_mut(v, &mut |parent, last| {
                if let (Value::Object(m), Seg::Key(k)) = (parent, last) {
                    if let Some(x) = m.remove(k) {
                        m.insert(to.clone(), x);
                    }
                }
            });
        }
    }
}

/// One call's shaped answer, in configuration order.
pub struct Part<'a> {
    pub name: &'a str,
    pub group: Option<&'a str>,
    pub value: Value,
}

/// The merged document (always an object).
pub fn merge(parts: Vec<Part>) -> Map<String, Value> {
    let mut out = Map::new();
    for p in parts {
        match (p.group, p.value) {
            (Some(g), v) => {
                out.insert(g.to_string(), v);
            }
            (None, Value::Object(m)) => out.extend(m),
            (None, Value::Null) => {}
            (None, v) => {
                out.insert(p.name.to_string(), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(list: &[&str]) -> Vec<Path> {
        list.iter().map(|p| Path::parse(p).unwrap()).collect()
    }

    #[test]
    fn shaping_steps() {
        let s = Shape {
            target: Some(Path::parse("data").unwrap()),
            allow: paths(&["id", "name", "address.city"]),
            deny: paths(&["name"]),
            mapping: vec![(Path::parse("address.city").unwrap(), "town".into())],
            ..Shape::default()
        };
        let v = json!({"data": {"id": 1, "name": "n", "secret": "s", "address": {"city": "c", "zip": "z"}}});
        assert_eq!(s.apply(v), json!({"id": 1, "address": {"town": "c"}}));
        let arr = Shape {
            allow: paths(&["id"]),
            flatten: true,
            ..Shape::default()
        };
        assert_eq!(
            arr.apply(json!([[{"id": 1, "x": 2}], [{"id": 3}], {"id": 4, "y": 0}])),
            json!([{"id": 1}, {"id": 3}, {"id": 4}])
        );
        let missing = Shape {
            target: Some(Path::parse("nope").unwrap()),
            ..Shape::default()
        };
        assert_eq!(missing.apply(json!({"a": 1})), Value::Null);
    }

    #[test]
    fn merge_order_and_groups() {
        let m = merge(vec![
            Part {
                name: "a",
                group: None,
                value: json!({"id": 1, "x": "a"}),
            },
            Part {
                name: "b",
                group: None,
                value: json!({"x": "b"}),
            },
            Part {
                name: "c",
                group: Some("customer"),
                value: json!({"name": "n"}),
            },
            Part {
                name: "d",
                group: None,
                value: json!([1, 2]),
            },
        ]);
        assert_eq!(
            Value::Object(m),
            json!({"id": 1, "x": "b", "customer": {"name": "n"}, "d": [1, 2]})
        );
    }
}
