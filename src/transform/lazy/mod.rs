//! A lazily parsed JSON document for the field operations: the text is validated once, and only
//! the objects and arrays a path goes through are split into members; everything else stays a
//! slice of the original text and is written back verbatim (no allocation per value, numbers
//! keep their spelling, members keep their order). Semantics match the `serde_json::Value`
//! operations in `path.rs` (a test checks both give the same document); a member whose value
//! was replaced holds a `Value`, and the operations that need whole values (`keep`, the source
//! of `copy`/`move`) materialise them.

mod read;

use super::path::Seg;
use read::Scan;
use serde_json::{Map, Value};
use std::borrow::Cow;

pub enum Node<'a> {
    /// Untouched text of the original document (one JSON value, already validated).
    Raw(&'a str),
    Obj(Vec<(Cow<'a, str>, Node<'a>)>),
    Arr(Vec<Node<'a>>),
    /// A value the operations produced (or replaced a subtree with).
    Val(Value),
}

/// Member names seen in one object: a repeated name keeps its first place and its last value,
/// as `serde_json::Value` keeps the last. A linear search for small objects, an index above 16
/// members (a large object must not cost a comparison per pair of members).
/// Below the index, a 64-bit filter of (length, last byte) says whether a name can have been
/// seen at all, so distinct names (nearly always) cost no comparison.
#[derive(Default)]
struct Names {
    index: Option<std::collections::HashMap<String, usize>>,
    seen: u64,
}

impl Names {
    fn push<'a>(&mut self, out: &mut Vec<(Cow<'a, str>, Node<'a>)>, k: Cow<'a, str>, v: Node<'a>) {
        let bit = 1u64 << ((k.len() * 7 + usize::from(k.bytes().last().unwrap_or(0))) & 63);
        let found = match &self.index {
            Some(ix) => ix.get(k.as_ref()).copied(),
            None if self.seen & bit == 0 => None,
            None => out.iter().position(|(n, _)| *n == k),
        };
        self.seen |= bit;
        if let Some(i) = found {
            // The later name and value together (the member as last written).
            out[i] = (k, v);
            return;
        }
        if let Some(ix) = self.index.as_mut() {
            ix.insert(k.to_string(), out.len());
        } else if out.len() == 16 {
            let mut ix: std::collections::HashMap<String, usize> = out
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (n.to_string(), i))
                .collect();
            ix.insert(k.to_string(), out.len());
            self.index = Some(ix);
        }
        out.push((k, v));
    }
}

/// The objects and arrays the operations' paths go through: those are split into members while
/// the text is read (one pass), everything else stays text.
#[derive(Debug, Clone, Default)]
pub struct Guide {
    keys: Vec<(String, Guide)>,
    all: Option<Box<Guide>>,
}

impl Guide {
    /// Marks the values along `segs` (the parents of a path's last segment) to be split.
    pub fn add(&mut self, segs: &[Seg]) {
        let Some((first, rest)) = segs.split_first() else {
            return;
        };
        match first {
            Seg::Key(k) => self.member(k).add(rest),
            // An index into an object names a member ("0"); into an array, one element (every
            // element is split).
            Seg::Index(i) => {
                self.member(&i.to_string()).add(rest);
                self.all.get_or_insert_with(Box::default).add(rest);
            }
            Seg::All => self.all.get_or_insert_with(Box::default).add(rest),
        }
    }

    fn member(&mut self, k: &str) -> &mut Guide {
        let i = match self.keys.iter().position(|(n, _)| n == k) {
            Some(i) => i,
            None => {
                self.keys.push((k.to_string(), Guide::default()));
                self.keys.len() - 1
            }
        };
        &mut self.keys[i].1
    }
}

impl<'a> Node<'a> {
    /// Reads `text` in one pass, splitting what `guide` marks.
    pub fn parse_guided(text: &'a str, guide: &Guide) -> Result<Node<'a>, serde_json::Error> {
        match Scan::new(text).document(guide) {
            Some(n) => Ok(n),
            // serde_json says where the text is wrong, or reads what the scan refused.
            None => serde_json::from_str(text).map(Node::Val),
        }
    }

    /// Reads `text` as one JSON document; the top level is split into its members.
    pub fn parse(text: &'a str) -> Result<Node<'a>, serde_json::Error> {
        Node::parse_guided(text, &Guide::default())
    }

    /// Splits an untouched object or array into its members.
    pub(crate) fn expand(&mut self) {
        let Node::Raw(text) = self else { return };
        if matches!(text.as_bytes().first(), Some(b'{' | b'[')) {
            if let Some(n) = Scan::checked(text).document(&Guide::default()) {
                *self = n;
            }
        }
    }

    fn is_null(&self) -> bool {
        match self {
            Node::Raw(r) => *r == "null",
            Node::Val(v) => v.is_null(),
            _ => false,
        }
    }

    /// The whole value.
    pub fn to_value(&self) -> Value {
        match self {
            Node::Raw(r) => serde_json::from_str(r).unwrap_or(Value::Null),
            Node::Obj(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect::<Map<String, Value>>(),
            ),
            Node::Arr(a) => Value::Array(a.iter().map(Node::to_value).collect()),
            Node::Val(v) => v.clone(),
        }
    }

    /// The document as JSON text.
    pub fn write(&self, out: &mut Vec<u8>) {
        match self {
            Node::Raw(r) => out.extend_from_slice(r.as_bytes()),
            Node::Obj(m) => {
                out.push(b'{');
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_key(out, k);
                    out.push(b':');
                    v.write(out);
                }
                out.push(b'}');
            }
            Node::Arr(a) => {
                out.push(b'[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write(out);
                }
                out.push(b']');
            }
            Node::Val(v) => {
                let _ = serde_json::to_writer(&mut *out, v);
            }
        }
    }

    /// The document as JSON text, where `text` is what it was read from: runs of members and
    /// elements that are unchanged and still next to each other in `text` are copied in one
    /// piece (separators and all).
    pub fn write_from(&self, text: &str, out: &mut Vec<u8>) {
        let mut w = SpanWriter {
            text: text.as_bytes(),
            out,
            pending: None,
        };
        w.node(self);
        w.flush();
    }

    fn member(m: &[(Cow<'a, str>, Node<'a>)], k: &str) -> Option<usize> {
        m.iter().position(|(n, _)| n == k)
    }

    /// `Path::set` on this document.
    pub fn set(&mut self, segs: &'a [Seg], new: &Value, only_absent: bool) {
        let Some((first, rest)) = segs.split_first() else {
            if !only_absent || self.is_null() {
                *self = Node::Val(new.clone());
            }
            return;
        };
        if let Node::Val(v) = self {
            super::path::set_at(v, segs, new, only_absent);
            return;
        }
        match first {
            Seg::Key(k) => {
                if self.is_null() {
                    *self = Node::Obj(Vec::new());
                }
                self.expand();
                let Node::Obj(m) = self else { return };
                let at = match Node::member(m, k) {
                    Some(_) if rest.is_empty() && only_absent => return,
                    Some(i) => i,
                    None => {
                        m.push((Cow::Borrowed(k.as_str()), Node::Val(Value::Null)));
                        m.len() - 1
                    }
                };
                if rest.is_empty() {
                    m[at].1 = Node::Val(new.clone());
                } else {
                    m[at].1.set(rest, new, only_absent);
                }
            }
            Seg::Index(i) => {
                self.expand();
                match self {
                    Node::Arr(a) => {
                        if let Some(x) = a.get_mut(*i) {
                            x.set(rest, new, only_absent);
                        }
                    }
                    Node::Obj(m) => {
                        let k = i.to_string();
                        let at = match Node::member(m, &k) {
                            Some(j) => j,
                            None => {
                                m.push((Cow::Owned(k), Node::Val(Value::Null)));
                                m.len() - 1
                            }
                        };
                        m[at].1.set(rest, new, only_absent);
                    }
                    _ => {}
                }
            }
            Seg::All => {
                self.expand();
                if let Node::Arr(a) = self {
                    a.iter_mut().for_each(|x| x.set(rest, new, only_absent));
                }
            }
        }
    }

    /// Calls `f` on every parent the path's last segment applies to (`Path::parents_mut`).
    pub fn each_parent(&mut self, segs: &[Seg], f: &mut dyn FnMut(&mut Node<'a>)) {
        let Some((first, rest)) = segs.split_first() else {
            f(self);
            return;
        };
        if matches!(self, Node::Val(_)) {
            f_on_value(self, segs, f);
            return;
        }
        self.expand();
        match (first, self) {
            (Seg::Key(k), Node::Obj(m)) => {
                if let Some(i) = Node::member(m, k) {
                    m[i].1.each_parent(rest, f);
                }
            }
            (Seg::Index(i), Node::Arr(a)) => {
                if let Some(x) = a.get_mut(*i) {
                    x.each_parent(rest, f);
                }
            }
            (Seg::Index(i), Node::Obj(m)) => {
                if let Some(j) = Node::member(m, &i.to_string()) {
                    m[j].1.each_parent(rest, f);
                }
            }
            (Seg::All, Node::Arr(a)) => a.iter_mut().for_each(|x| x.each_parent(rest, f)),
            _ => {}
        }
    }

    /// Removes what the path reaches (`Path::remove`); returns the removed values.
    pub fn remove(&mut self, segs: &[Seg]) -> Vec<Node<'a>> {
        let mut out = Vec::new();
        if let Some((last, parents)) = segs.split_last() {
            self.each_parent(parents, &mut |p| {
                if let Some(x) = p.take(last) {
                    out.push(x);
                }
            });
        }
        out
    }

    pub(crate) fn take(&mut self, last: &Seg) -> Option<Node<'a>> {
        if let Node::Val(v) = self {
            return super::path::take(v, last).map(Node::Val);
        }
        self.expand();
        match (last, self) {
            (Seg::Key(k), Node::Obj(m)) => Node::member(m, k).map(|i| m.remove(i).1),
            (Seg::Index(i), Node::Obj(m)) => Node::member(m, &i.to_string()).map(|j| m.remove(j).1),
            (Seg::Index(i), Node::Arr(a)) if *i < a.len() => Some(a.remove(*i)),
            (Seg::All, Node::Arr(a)) => Some(Node::Arr(std::mem::take(a))),
            _ => None,
        }
    }

    /// Renames member `k` of this object to `to` (in place; a member already named `to` goes).
    pub fn rename_member(&mut self, k: &str, to: &'a str) {
        if let Node::Val(Value::Object(m)) = self {
            if let Some(v) = m.remove(k) {
                m.insert(to.to_string(), v);
            }
            return;
        }
        self.expand();
        let Node::Obj(m) = self else { return };
        let Some(i) = Node::member(m, k) else { return };
        m[i].0 = Cow::Borrowed(to);
        if let Some(j) = m
            .iter()
            .enumerate()
            .position(|(j, (n, _))| j != i && n == to)
        {
            m.remove(j);
        }
    }

    /// Removes member `k` when it is null (`default` counts null as absent).
    pub fn remove_null_member(&mut self, k: &str) {
        if let Node::Val(Value::Object(m)) = self {
            if m.get(k).is_some_and(Value::is_null) {
                m.remove(k);
            }
            return;
        }
        self.expand();
        if let Node::Obj(m) = self {
            if let Some(i) = Node::member(m, k).filter(|i| m[*i].1.is_null()) {
                m.remove(i);
            }
        }
    }

    /// The first value the path reaches (`Path::get`), whole.
    pub fn get_first(&mut self, segs: &[Seg]) -> Option<Value> {
        let mut found = None;
        if segs.is_empty() {
            return Some(self.to_value());
        }
        let (last, parents) = segs.split_last()?;
        self.each_parent(parents, &mut |p| {
            if found.is_some() {
                return;
            }
            let v = p.to_value();
            found = super::path::Path(vec![last.clone()])
                .get(&v)
                .first()
                .map(|x| (*x).clone());
        });
        found
    }
}

struct SpanWriter<'t, 'o> {
    text: &'t [u8],
    out: &'o mut Vec<u8>,
    /// Text not yet copied: `text[start..end]`.
    pending: Option<(usize, usize)>,
}

impl SpanWriter<'_, '_> {
    /// Where `s` lies in the text, if it is a slice of it.
    fn offset(&self, s: &str) -> Option<usize> {
        let base = self.text.as_ptr() as usize;
        let p = s.as_ptr() as usize;
        (p >= base && p + s.len() <= base + self.text.len()).then(|| p - base)
    }

    /// Whether the name at `ko` (length `len`, inside quotes) and the value at `vo` are one
    /// member of the text: only `":` and whitespace between them.
    fn is_member(&self, ko: usize, len: usize, vo: usize) -> bool {
        let end = ko + len;
        ko > 0
            && vo > end
            && self.text[ko - 1] == b'"'
            && self.text[end] == b'"'
            && self.text[end + 1..vo]
                .iter()
                .all(|b| matches!(b, b':' | b' ' | b'\t' | b'\n' | b'\r'))
    }

    fn flush(&mut self) {
        if let Some((s, e)) = self.pending.take() {
            self.out.extend_from_slice(&self.text[s..e]);
        }
    }

    /// Queues `text[start..end]`, the next member or element after a separator (`first`:
    /// none). It joins the queued run when only the separator lies between them in the text.
    fn span(&mut self, start: usize, end: usize, first: bool) {
        if let Some((ps, pe)) = self.pending {
            if !first && start >= pe && is_separator(&self.text[pe..start]) {
                self.pending = Some((ps, end));
                return;
            }
        }
        self.flush();
        if !first {
            self.out.push(b',');
        }
        self.pending = Some((start, end));
    }

    fn bytes(&mut self, b: &[u8]) {
        self.flush();
        self.out.extend_from_slice(b);
    }

    fn node(&mut self, n: &Node<'_>) {
        match n {
            Node::Raw(r) => match self.offset(r) {
                Some(o) => {
                    self.flush();
                    self.pending = Some((o, o + r.len()));
                }
                None => self.bytes(r.as_bytes()),
            },
            Node::Obj(m) => {
                self.bytes(b"{");
                for (i, (k, v)) in m.iter().enumerate() {
                    // A member with its name and value as read: from the name's quote to the
                    // value's end.
                    if let (Node::Raw(r), Some(ko)) = (v, self.offset(k)) {
                        if let Some(vo) = self.offset(r) {
                            if self.is_member(ko, k.len(), vo) {
                                self.span(ko - 1, vo + r.len(), i == 0);
                                continue;
                            }
                        }
                    }
                    self.flush();
                    if i > 0 {
                        self.out.push(b',');
                    }
                    write_key(self.out, k);
                    self.out.push(b':');
                    self.node(v);
                }
                self.bytes(b"}");
            }
            Node::Arr(a) => {
                self.bytes(b"[");
                for (i, v) in a.iter().enumerate() {
                    if let Node::Raw(r) = v {
                        if let Some(o) = self.offset(r) {
                            self.span(o, o + r.len(), i == 0);
                            continue;
                        }
                    }
                    self.flush();
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.node(v);
                }
                self.bytes(b"]");
            }
            Node::Val(v) => {
                self.flush();
                let _ = serde_json::to_writer(&mut *self.out, v);
            }
        }
    }
}

/// Only whitespace and one comma: what separates two members or elements.
fn is_separator(gap: &[u8]) -> bool {
    let mut commas = 0;
    for b in gap {
        match b {
            b',' => commas += 1,
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => return false,
        }
    }
    commas == 1
}

/// A member name as a JSON string: copied when it needs no escape (names read from the
/// document, most configured ones), escaped by serde_json otherwise.
pub(crate) fn write_key(out: &mut Vec<u8>, k: &str) {
    if k.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, k);
    }
}

/// `each_parent` below a `Val` node: each parent is walked as a `Value`, lent to `f` as a node
/// and put back.
fn f_on_value<'a>(node: &mut Node<'a>, segs: &[Seg], f: &mut dyn FnMut(&mut Node<'a>)) {
    let Node::Val(v) = node else { return };
    super::path::for_each_parent(v, segs, &mut |p| {
        let mut n = Node::Val(std::mem::take(p));
        f(&mut n);
        *p = match n {
            Node::Val(x) => x,
            other => other.to_value(),
        };
    });
}
