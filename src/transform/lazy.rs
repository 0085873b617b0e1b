//! A lazily parsed JSON document for the field operations: the text is validated once, and only
//! the objects and arrays a path goes through are split into members; everything else stays a
//! slice of the original text and is written back verbatim (no allocation per value, numbers
//! keep their spelling, members keep their order). Semantics match the `serde_json::Value`
//! operations in `path.rs` (a test checks both give the same document); a member whose value
//! was replaced holds a `Value`, and the operations that need whole values (`keep`, the source
//! of `copy`/`move`) materialise them.

use super::path::Seg;
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

/// Bytes a string scan stops at: its end, an escape, a control character (not allowed).
/// Bytes a string scan stops at: its end, an escape, a control character (not allowed).
static STRING_STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = true;
        c += 1;
    }
    t[b'"' as usize] = true;
    t[b'\\' as usize] = true;
    t
};

/// Bytes a skip over checked text stops at: 1 = brackets and quotes, 2 = ends of a scalar.
static SKIP_STOP: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'"' as usize] = 1;
    t[b'{' as usize] = 1;
    t[b'[' as usize] = 1;
    t[b'}' as usize] = 3;
    t[b']' as usize] = 3;
    t[b',' as usize] = 2;
    t[b' ' as usize] = 2;
    t[b'\t' as usize] = 2;
    t[b'\n' as usize] = 2;
    t[b'\r' as usize] = 2;
    t
};

/// Nesting deeper than this is refused, as serde_json does (it reads 127 levels).
const MAX_DEPTH: u32 = 127;

// The checking functions below take the text and a position and return the position after
// what they read (`None`: not JSON, or not in the form this reader takes). They keep the
// position in a local, which is what makes them a tight loop per byte.

fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

fn hex(b: &[u8], at: usize) -> Option<u32> {
    let mut n = 0;
    for &c in b.get(at..at + 4)? {
        n = n * 16 + char::from(c).to_digit(16)?;
    }
    Some(n)
}

/// The string at `i` (its opening quote): its end and whether it has escapes.
fn string_end(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    i += 1;
    let mut escaped = false;
    loop {
        while i < b.len() && !STRING_STOP[b[i] as usize] {
            i += 1;
        }
        match *b.get(i)? {
            b'"' => return Some((i + 1, escaped)),
            b'\\' => {
                escaped = true;
                i = match *b.get(i + 1)? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i + 2,
                    b'u' => match hex(b, i + 2)? {
                        // A surrogate pair, as serde_json wants it (a lone half is an error
                        // there when the string is read).
                        0xD800..=0xDBFF => {
                            if b.get(i + 6..i + 8)? != b"\\u"
                                || !(0xDC00..=0xDFFF).contains(&hex(b, i + 8)?)
                            {
                                return None;
                            }
                            i + 12
                        }
                        0xDC00..=0xDFFF => return None,
                        _ => i + 6,
                    },
                    _ => return None,
                };
            }
            _ => return None,
        }
    }
}

/// Past at least one digit.
fn digits(b: &[u8], mut i: usize) -> Option<usize> {
    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    (i > start).then_some(i)
}

fn number_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start;
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(b, i)?,
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        i = digits(b, i + 1)?;
    }
    let mut exponent = false;
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = digits(b, i)?;
        exponent = true;
    }
    // serde_json refuses a number beyond f64's range (only an exponent or some 300 digits
    // get there).
    if exponent || i - start > 300 {
        let n: f64 = std::str::from_utf8(&b[start..i]).ok()?.parse().ok()?;
        if !n.is_finite() {
            return None;
        }
    }
    Some(i)
}

fn literal(b: &[u8], i: usize, lit: &[u8]) -> Option<usize> {
    (b.get(i..i + lit.len())? == lit).then_some(i + lit.len())
}

/// A member name and its colon at `i`: the position of the value.
fn name_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let (i, _) = string_end(b, i)?;
    let i = ws(b, i);
    (b.get(i) == Some(&b':')).then(|| ws(b, i + 1))
}

/// Checks the value at `i` and returns its end; `depth` containers are open around it. One
/// loop with the open containers as bits (1 = object), no recursion.
fn value_end(b: &[u8], mut i: usize, depth: u32) -> Option<usize> {
    let base = depth;
    let mut depth = depth;
    let mut objects: u128 = 0;
    loop {
        // A value starts at `i`.
        i = match *b.get(i)? {
            b'"' => string_end(b, i)?.0,
            b'{' | b'[' => {
                let object = b[i] == b'{';
                let j = ws(b, i + 1);
                if b.get(j) == Some(if object { &b'}' } else { &b']' }) {
                    j + 1
                } else {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return None;
                    }
                    let bit = 1u128 << (depth - base - 1).min(127);
                    if object {
                        objects |= bit;
                        i = name_end(b, j)?;
                    } else {
                        objects &= !bit;
                        i = j;
                    }
                    continue;
                }
            }
            b't' => literal(b, i, b"true")?,
            b'f' => literal(b, i, b"false")?,
            b'n' => literal(b, i, b"null")?,
            _ => number_end(b, i)?,
        };
        // After a value: commas and closing brackets.
        loop {
            if depth == base {
                return Some(i);
            }
            let object = objects & (1u128 << (depth - base - 1).min(127)) != 0;
            i = ws(b, i);
            match *b.get(i)? {
                b',' => {
                    i = ws(b, i + 1);
                    if object {
                        i = name_end(b, i)?;
                    }
                    break;
                }
                b'}' if object => {
                    depth -= 1;
                    i += 1;
                }
                b']' if !object => {
                    depth -= 1;
                    i += 1;
                }
                _ => return None,
            }
        }
    }
}

/// Past the value at `i` in text that was checked before: brackets and quotes only.
fn skip_end(b: &[u8], mut i: usize) -> usize {
    let stop = |from: usize, class: u8| {
        b[from.min(b.len())..]
            .iter()
            .position(|&c| SKIP_STOP[c as usize] & class != 0)
            .map_or(b.len(), |p| from + p)
    };
    let after_string = |i: usize| string_end(b, i).map_or(b.len(), |(e, _)| e);
    match b.get(i) {
        Some(b'"') => after_string(i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            while i < b.len() {
                i = stop(i, 1);
                match b.get(i) {
                    Some(b'"') => {
                        i = after_string(i);
                        continue;
                    }
                    Some(b'{' | b'[') => depth += 1,
                    Some(_) => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    None => break,
                }
                i += 1;
            }
            b.len()
        }
        _ => stop(i, 2),
    }
}

/// One pass over JSON text that checks it (RFC 8259, as strict as serde_json: control
/// characters in strings, escapes and surrogate pairs, number syntax and range, literals,
/// commas, trailing bytes) and finds where members, names and values start and end, splitting
/// what a [`Guide`] marks and skipping the rest without building or decoding anything.
///
/// Why not serde_json alone: it has no way to hand out positions but `RawValue`, whose
/// per-value cost through serde's visitors was ~400 instructions per member (the transform
/// load scenario's bottleneck); reading the text twice (serde_json to check, a scan for the
/// positions) costs two passes. This scan must never accept what serde_json rejects (a test
/// compares both on mutated documents); when it refuses, serde_json reads the text and either
/// gives the error (with its position) or, for anything the scan refused wrongly or too deep,
/// the document as a value, so a refusal is never more than a slower path.
struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    depth: u32,
    /// The text was checked before (a value split later, [`Node::expand`]): values that are
    /// not split are skipped by brackets and quotes alone.
    checked: bool,
}

impl<'a> Scan<'a> {
    fn new(text: &'a str) -> Self {
        Scan {
            text,
            b: text.as_bytes(),
            i: 0,
            depth: 0,
            checked: false,
        }
    }

    /// A scan of text an earlier scan accepted.
    fn checked(text: &'a str) -> Self {
        Scan {
            checked: true,
            ..Scan::new(text)
        }
    }

    /// The whole text as one document; `None` when the scan refuses it.
    fn document(mut self, guide: &Guide) -> Option<Node<'a>> {
        self.i = ws(self.b, 0);
        let n = self.guided(guide)?;
        (ws(self.b, self.i) == self.b.len()).then_some(n)
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Past `{` or `[`.
    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        self.i = ws(self.b, self.i + 1);
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
        self.i += 1;
    }

    /// After a member or element: `true` past a comma, `false` at the closing `close`.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.i = ws(self.b, self.i);
        match self.peek()? {
            b',' => {
                self.i = ws(self.b, self.i + 1);
                Some(true)
            }
            c if c == close => Some(false),
            _ => None,
        }
    }

    /// The value at `i`, checked (or skipped, in checked text), as text.
    fn value(&mut self) -> Option<&'a str> {
        let start = self.i;
        self.i = if self.checked {
            skip_end(self.b, start)
        } else {
            value_end(self.b, start, self.depth)?
        };
        self.text.get(start..self.i)
    }

    /// A member name and its colon; the name's text with its quotes and whether it has
    /// escapes.
    fn name(&mut self) -> Option<(&'a str, bool)> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i;
        let (end, escaped) = string_end(self.b, start)?;
        let i = ws(self.b, end);
        if self.b.get(i) != Some(&b':') {
            return None;
        }
        self.i = ws(self.b, i + 1);
        Some((self.text.get(start..end)?, escaped))
    }

    /// The value at `i`: what `guide` marks is split (and so is the value itself when it is
    /// an object or array); the rest stays text.
    fn guided(&mut self, guide: &Guide) -> Option<Node<'a>> {
        match self.peek()? {
            b'{' => {
                self.enter()?;
                let mut out: Vec<(Cow<'a, str>, Node<'a>)> = Vec::with_capacity(8);
                let mut names = Names::default();
                if self.peek()? != b'}' {
                    loop {
                        let (quoted, escaped) = self.name()?;
                        let k = if escaped {
                            Cow::Owned(serde_json::from_str(quoted).ok()?)
                        } else {
                            Cow::Borrowed(quoted.get(1..quoted.len() - 1)?)
                        };
                        let node = match guide.keys.iter().find(|(n, _)| *n == k) {
                            Some((_, g)) => self.nested(g)?,
                            None => Node::Raw(self.value()?),
                        };
                        names.push(&mut out, k, node);
                        if !self.more(b'}')? {
                            break;
                        }
                    }
                }
                self.leave();
                Some(Node::Obj(out))
            }
            b'[' => {
                self.enter()?;
                let mut out = Vec::with_capacity(8);
                if self.peek()? != b']' {
                    loop {
                        out.push(match guide.all.as_deref() {
                            Some(g) => self.nested(g)?,
                            None => Node::Raw(self.value()?),
                        });
                        if !self.more(b']')? {
                            break;
                        }
                    }
                }
                self.leave();
                Some(Node::Arr(out))
            }
            _ => Some(Node::Raw(self.value()?)),
        }
    }

    /// A value a path goes through: split when it is an object or array; a scalar is read
    /// (the operations replace or look into it as a value).
    fn nested(&mut self, guide: &Guide) -> Option<Node<'a>> {
        match self.peek()? {
            b'{' | b'[' => self.guided(guide),
            _ => serde_json::from_str(self.value()?).ok().map(Node::Val),
        }
    }
}
