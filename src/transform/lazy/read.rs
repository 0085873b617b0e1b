//! The reader of lazy documents: one pass that checks JSON text and splits what a [`Guide`]
//! marks (see [`Scan`]).

use super::{Guide, Names, Node};
use std::borrow::Cow;

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
pub(super) struct Scan<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    depth: u32,
    /// The text was checked before (a value split later, [`Node::expand`]): values that are
    /// not split are skipped by brackets and quotes alone.
    checked: bool,
}

impl<'a> Scan<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Scan {
            text,
            b: text.as_bytes(),
            i: 0,
            depth: 0,
            checked: false,
        }
    }

    /// A scan of text an earlier scan accepted.
    pub(super) fn checked(text: &'a str) -> Self {
        Scan {
            checked: true,
            ..Scan::new(text)
        }
    }

    /// The whole text as one document; `None` when the scan refuses it.
    pub(super) fn document(mut self, guide: &Guide) -> Option<Node<'a>> {
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

#[cfg(test)]
mod tests {
    use super::super::Node;
    use rand::{Rng, SeedableRng};
    use serde_json::Value;

    /// The reader checks the text itself (one pass); it must never take a document
    /// serde_json rejects, and it must read the same values. Documents are mutated at random
    /// (bytes deleted, inserted, replaced with JSON's structural and tricky bytes) from seeds
    /// with every kind of value; the reader either fails like serde_json or gives the value
    /// serde_json gives.
    #[test]
    fn mutated_documents() {
        let seeds = [
            r#"{"a": [1, -2.5e+3, 0, -0.0, 1E5, true, false, null], "b": {"c": "x\"y\\z\/\b\f\n\r\t\u00e9\ud83d\ude00"}, "": {}, "e": []}"#,
            r#"[{"id":1,"sku":"item-0001","price":3.25,"tags":["alpha","beta"]},{"id":2}]"#,
            " \n\t{\"k\" : \"v\" , \"n\" : [ [ ] , { } ] } \r\n",
            "\"just a string\"",
            "-12.5e-7",
            "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]",
        ];
        // Nesting at and beyond serde_json's limit: the same verdict.
        for depth in [127, 128, 129, 200] {
            let text = format!("{}{}", "[{\"a\":".repeat(depth / 2), "}]".repeat(depth / 2));
            let text = text.replacen("}]", "1}]", 1);
            assert_eq!(
                serde_json::from_str::<Value>(&text).ok(),
                Node::parse(&text).ok().map(|n| n.to_value()),
                "depth {depth}"
            );
        }
        let tricky = b"{}[]\",:\\ \t\n-+.0123456789eEtrufalsnu\x00\x1f/bx";
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut checked = 0;
        for seed in seeds {
            for round in 0..3000 {
                let mut b = seed.as_bytes().to_vec();
                for _ in 0..=(round % 3) {
                    let at = rng.random_range(0..=b.len());
                    let c = tricky[rng.random_range(0..tricky.len())];
                    match rng.random_range(0..3) {
                        0 if at < b.len() => {
                            b.remove(at);
                        }
                        1 if at < b.len() => b[at] = c,
                        _ => b.insert(at, c),
                    }
                }
                let Ok(text) = std::str::from_utf8(&b) else {
                    continue;
                };
                let want = serde_json::from_str::<Value>(text);
                let got = Node::parse(text).map(|n| n.to_value());
                match (&want, &got) {
                    (Ok(w), Ok(g)) => assert_eq!(w, g, "{text:?}"),
                    (Err(_), Err(_)) => {}
                    _ => panic!("{text:?}: serde_json {want:?}, lazy reader {got:?}"),
                }
                // Splitting a nested value reads the same as serde_json too.
                let mut n = Node::parse(text).unwrap_or(Node::Val(Value::Null));
                if let Node::Obj(m) = &mut n {
                    m.iter_mut().for_each(|(_, v)| v.expand());
                }
                if let Ok(w) = &want {
                    assert_eq!(&n.to_value(), w, "{text:?}");
                }
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    /// Errors keep serde_json's message and position (the 400 a client gets names it).
    #[test]
    fn errors_name_the_position() {
        let e = Node::parse("{\"a\": [1, 2,]}").err().unwrap();
        assert_eq!((e.line(), e.column()), (1, 13), "{e}");
        let e = Node::parse("{\"a\": \"\u{1}\"}").err().unwrap();
        assert!(e.to_string().contains("control character"), "{e}");
    }
}
