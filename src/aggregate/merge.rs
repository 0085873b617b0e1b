//! Shaping each call's answer and merging the answers into one document.
//!
//! An answer is read as a lazy document (`transform::lazy`): the text is validated once, only
//! the objects and arrays a shaping step goes through are split into members, and everything
//! else is copied verbatim into the merged answer (numbers keep their spelling, members their
//! order).
//!
//! Per call, in this order: `target` (take a sub-tree), `flatten` (an array of arrays becomes
//! one array), `allow` (keep only these paths), `deny` (drop these paths), `mapping` (rename).
//! On an array, `allow`, `deny` and `mapping` apply to each element. Then the merge, in the
//! order the calls are written: a call with `group` is placed under that key; an object answer
//! without `group` has its members merged at the top level (a later call wins on a clash, in
//! the place of the first); any other answer without `group` is placed under the call's name;
//! `null` (a `target` that is absent) adds nothing.

use crate::transform::lazy::{write_key, Guide, Node};
use crate::transform::path::{Path, Seg};
use serde_json::Value;
use std::borrow::Cow;

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
    /// Reads an answer in one pass, splitting only what the shaping goes through.
    pub fn read<'a>(&self, text: &'a str) -> Result<Node<'a>, serde_json::Error> {
        Node::parse_guided(text, &self.guide())
    }

    /// What [`Shape::read`] splits: compiled once per call with the configuration.
    pub fn guide(&self) -> Guide {
        let mut guide = Guide::default();
        let target: Vec<Seg> = self.target.iter().flat_map(|t| t.0.clone()).collect();
        let mut along = |rest: &[Seg]| {
            let mut segs = target.clone();
            segs.extend_from_slice(rest);
            guide.add(&segs);
        };
        // The target, and each element when it is an array (`flatten`: each element's too).
        along(&[Seg::All]);
        if self.flatten {
            along(&[Seg::All, Seg::All]);
        }
        let fields = self
            .allow
            .iter()
            .chain(&self.deny)
            .chain(self.mapping.iter().map(|(p, _)| p));
        for p in fields {
            let parents = &p.0[..p.0.len().saturating_sub(1)];
            along(parents);
            let mut each = vec![Seg::All];
            each.extend_from_slice(parents);
            along(&each);
        }
        guide
    }

    pub fn apply<'a>(&self, mut v: Node<'a>) -> Node<'a> {
        if let Some(t) = &self.target {
            v = take_path(&mut v, &t.0).unwrap_or(Node::Val(Value::Null));
        }
        if self.flatten {
            v.expand();
            if let Node::Arr(items) = v {
                let mut out = Vec::with_capacity(items.len());
                for mut x in items {
                    x.expand();
                    match x {
                        Node::Arr(inner) => out.extend(inner),
                        other => out.push(other),
                    }
                }
                v = Node::Arr(out);
            }
        }
        if self.allow.is_empty() && self.deny.is_empty() && self.mapping.is_empty() {
            return v;
        }
        v.expand();
        match &mut v {
            Node::Arr(items) => items.iter_mut().for_each(|x| self.fields(x)),
            other => self.fields(other),
        }
        v
    }

    fn fields(&self, v: &mut Node) {
        v.expand();
        if !matches!(v, Node::Obj(_)) {
            return;
        }
        if !self.allow.is_empty() {
            let mut kept = Node::Obj(Vec::with_capacity(self.allow.len()));
            for p in &self.allow {
                // A member name (the usual case): the member moves over with its name as read.
                if let ([Seg::Key(k)], Node::Obj(from), Node::Obj(to)) =
                    (&p.0[..], &mut *v, &mut kept)
                {
                    if let Some(i) = from.iter().position(|(n, _)| n == k) {
                        let member = from.remove(i);
                        match to.iter().position(|(n, _)| *n == member.0) {
                            Some(j) => to[j] = member,
                            None => to.push(member),
                        }
                    }
                    continue;
                }
                if let Some(x) = take_path(v, &p.0) {
                    put_path(&mut kept, &p.0, x);
                }
            }
            *v = kept;
        }
        for p in &self.deny {
            v.remove(&p.0);
        }
        for (p, to) in &self.mapping {
            if let Some((Seg::Key(k), parents)) = p.0.split_last() {
                v.each_parent(parents, &mut |parent| {
                    parent.expand();
                    if let Node::Obj(m) = parent {
                        if let Some(i) = m.iter().position(|(n, _)| n == k) {
                            m.retain(|(n, _)| n != to);
                            let i = m.iter().position(|(n, _)| n == k).unwrap_or(i);
                            m[i].0 = Cow::Owned(to.clone());
                        }
                    }
                });
            }
        }
    }
}

/// Takes the node at a path without wildcards out of the document.
fn take_path<'a>(v: &mut Node<'a>, segs: &[Seg]) -> Option<Node<'a>> {
    let Some((last, parents)) = segs.split_last() else {
        return Some(std::mem::replace(v, Node::Val(Value::Null)));
    };
    let mut at = v;
    for s in parents {
        at.expand();
        at = match (s, at) {
            (Seg::Key(k), Node::Obj(m)) => &mut m.iter_mut().find(|(n, _)| n == k)?.1,
            (Seg::Index(i), Node::Arr(a)) => a.get_mut(*i)?,
            (Seg::Index(i), Node::Obj(m)) => {
                let k = i.to_string();
                &mut m.iter_mut().find(|(n, _)| *n == k)?.1
            }
            _ => return None,
        };
    }
    at.take(last)
}

/// Puts a node at a path of objects, creating them on the way.
fn put_path<'a>(v: &mut Node<'a>, segs: &[Seg], x: Node<'a>) {
    let Some((first, rest)) = segs.split_first() else {
        *v = x;
        return;
    };
    let Node::Obj(m) = v else { return };
    let k = match first {
        Seg::Key(k) => k.clone(),
        Seg::Index(i) => i.to_string(),
        Seg::All => return,
    };
    let i = match m.iter().position(|(n, _)| *n == k) {
        Some(i) => i,
        None => {
            m.push((Cow::Owned(k), Node::Obj(Vec::new())));
            m.len() - 1
        }
    };
    put_path(&mut m[i].1, rest, x);
}

/// One call's shaped answer, ready for the merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shaped {
    /// Members merged at the top level (an object without `group`).
    Members(Vec<(String, Vec<u8>)>),
    /// A value placed under one key (the `group`, or the call's name).
    Under(String, Vec<u8>),
    Nothing,
}

impl Shaped {
    /// The shaped answer of a call named `name`, as the merge places it.
    pub fn of(node: Node, name: &str, group: Option<&str>) -> Shaped {
        let text = |n: &Node| {
            let mut out = Vec::new();
            n.write(&mut out);
            out
        };
        if let Some(g) = group {
            return Shaped::Under(g.to_string(), text(&node));
        }
        let mut node = node;
        node.expand();
        match node {
            Node::Obj(m) => {
                Shaped::Members(m.iter().map(|(k, v)| (k.to_string(), text(v))).collect())
            }
            Node::Val(Value::Null) => Shaped::Nothing,
            Node::Raw("null") => Shaped::Nothing,
            Node::Val(Value::Object(m)) => Shaped::Members(
                m.into_iter()
                    .map(|(k, v)| (k, v.to_string().into_bytes()))
                    .collect(),
            ),
            other => Shaped::Under(name.to_string(), text(&other)),
        }
    }

    /// A fallback (placed as written, without shaping).
    pub fn of_value(v: &Value, name: &str, group: Option<&str>) -> Shaped {
        Shaped::of(Node::Val(v.clone()), name, group)
    }
}

/// The merged document: members in the order they first appear, a later value replacing an
/// earlier one; `extra` members last.
pub fn merge(parts: &[Shaped], extra: Option<(&str, &Value)>) -> Vec<u8> {
    let mut members: Vec<(&str, &[u8])> = Vec::new();
    for p in parts {
        match p {
            Shaped::Members(m) => {
                for (k, v) in m {
                    upsert(&mut members, k, v);
                }
            }
            Shaped::Under(k, v) => upsert(&mut members, k, v),
            Shaped::Nothing => {}
        }
    }
    let mut out = Vec::with_capacity(
        members
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>()
            + 64,
    );
    out.push(b'{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_key(&mut out, k);
        out.push(b':');
        out.extend_from_slice(v);
    }
    if let Some((k, v)) = extra {
        if !members.is_empty() {
            out.push(b',');
        }
        write_key(&mut out, k);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, v);
    }
    out.push(b'}');
    out
}

fn upsert<'p>(members: &mut Vec<(&'p str, &'p [u8])>, k: &'p str, v: &'p [u8]) {
    match members.iter_mut().find(|(n, _)| *n == k) {
        Some(slot) => slot.1 = v,
        None => members.push((k, v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(list: &[&str]) -> Vec<Path> {
        list.iter().map(|p| Path::parse(p).unwrap()).collect()
    }

    /// The shaped answer; reading it split only where the shape goes (`Shape::read`) gives
    /// the same as splitting as the steps go.
    fn shape(s: &Shape, v: Value) -> Value {
        let text = v.to_string();
        let mut got = Vec::new();
        for n in [Node::parse(&text).unwrap(), s.read(&text).unwrap()] {
            let mut out = Vec::new();
            s.apply(n).write(&mut out);
            got.push(serde_json::from_slice::<Value>(&out).unwrap());
        }
        assert_eq!(got[0], got[1], "{text}");
        got.remove(0)
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
        assert_eq!(shape(&s, v), json!({"id": 1, "address": {"town": "c"}}));
        let arr = Shape {
            allow: paths(&["id"]),
            flatten: true,
            ..Shape::default()
        };
        assert_eq!(
            shape(
                &arr,
                json!([[{"id": 1, "x": 2}], [{"id": 3}], {"id": 4, "y": 0}])
            ),
            json!([{"id": 1}, {"id": 3}, {"id": 4}])
        );
        let missing = Shape {
            target: Some(Path::parse("nope").unwrap()),
            ..Shape::default()
        };
        assert_eq!(shape(&missing, json!({"a": 1})), Value::Null);
        let nested = Shape {
            target: Some(Path::parse("a.list[1]").unwrap()),
            ..Shape::default()
        };
        assert_eq!(
            shape(&nested, json!({"a": {"list": [1, {"b": 2}]}})),
            json!({"b": 2})
        );
    }

    #[test]
    fn untouched_values_keep_their_spelling() {
        let text = r#"{"data":{"price":1.50,"items":[1.0,2.00]},"x":1}"#;
        let s = Shape {
            target: Some(Path::parse("data").unwrap()),
            ..Shape::default()
        };
        let shaped = Shaped::of(s.apply(Node::parse(text).unwrap()), "c", None);
        assert_eq!(
            String::from_utf8(merge(&[shaped], None)).unwrap(),
            r#"{"price":1.50,"items":[1.0,2.00]}"#
        );
    }

    #[test]
    fn merge_order_and_groups() {
        let part = |v: Value, name: &str, group: Option<&str>| {
            let text = v.to_string();
            Shaped::of(Node::parse(&text).unwrap(), name, group)
        };
        let parts = vec![
            part(json!({"id": 1, "x": "a"}), "a", None),
            part(json!({"x": "b"}), "b", None),
            part(json!({"name": "n"}), "c", Some("customer")),
            part(json!([1, 2]), "d", None),
            part(json!(null), "e", None),
            Shaped::of_value(&json!([]), "f", Some("recs")),
        ];
        let errors = json!([{"call": "g", "reason": "timeout"}]);
        let out = merge(&parts, Some(("_errors", &errors)));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":1,"x":"b","customer":{"name":"n"},"d":[1,2],"recs":[],"_errors":[{"call":"g","reason":"timeout"}]}"#
        );
    }
}
