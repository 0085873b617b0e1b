//! Paths into a JSON document: dot paths with array indexes and `[*]` wildcards
//! (`items[*].price`, `data.users[0].name`, `[*].id` for a top-level array) or RFC 6901 JSON
//! Pointers (`/data/users/0/name`, `~1` for `/` and `~0` for `~` in names).

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
    /// Every element of an array (`[*]`).
    All,
}

/// A parsed path; empty means the document itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Path(pub Vec<Seg>);

impl Path {
    pub fn parse(s: &str) -> Result<Path, String> {
        if let Some(p) = s.strip_prefix('/') {
            return Ok(Path(pointer(p)));
        }
        if s.is_empty() || s == "." {
            return Ok(Path::default());
        }
        let mut segs = Vec::new();
        for (i, part) in s.split('.').enumerate() {
            let (name, mut rest) = match part.find('[') {
                Some(b) => (&part[..b], &part[b..]),
                None => (part, ""),
            };
            if name.is_empty() && (rest.is_empty() || i > 0) {
                return Err(format!("empty name in path \"{s}\""));
            }
            if !name.is_empty() {
                segs.push(Seg::Key(name.to_string()));
            }
            while let Some(r) = rest.strip_prefix('[') {
                let Some(end) = r.find(']') else {
                    return Err(format!("unclosed [ in path \"{s}\""));
                };
                let idx = &r[..end];
                segs.push(match idx {
                    "*" => Seg::All,
                    n => Seg::Index(n.parse().map_err(|_| {
                        format!("\"[{n}]\" in path \"{s}\" is neither an index nor [*]")
                    })?),
                });
                rest = &r[end + 1..];
            }
            if !rest.is_empty() {
                return Err(format!("unexpected \"{rest}\" in path \"{s}\""));
            }
        }
        Ok(Path(segs))
    }

    pub fn has_wildcard(&self) -> bool {
        self.0.contains(&Seg::All)
    }

    /// Every value the path reaches.
    pub fn get<'a>(&self, v: &'a Value) -> Vec<&'a Value> {
        let mut found = Vec::new();
        walk(v, &self.0, &mut found);
        found
    }

    /// The first value a path without wildcards reaches (no allocation).
    pub fn get_one<'a>(&self, v: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(v, |v, s| match (s, v) {
            (Seg::Key(k), Value::Object(m)) => m.get(k),
            (Seg::Index(i), Value::Array(a)) => a.get(*i),
            (Seg::Index(i), Value::Object(m)) => m.get(&i.to_string()),
            _ => None,
        })
    }

    /// Takes the value at a path without wildcards out of the document (leaving null).
    pub fn take(&self, v: &mut Value) -> Option<Value> {
        let mut at = v;
        for s in &self.0 {
            at = match (s, at) {
                (Seg::Key(k), Value::Object(m)) => m.get_mut(k)?,
                (Seg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
                (Seg::Index(i), Value::Object(m)) => m.get_mut(&i.to_string())?,
                _ => return None,
            };
        }
        Some(std::mem::take(at))
    }

    /// Sets the value at the path, creating objects on the way (not arrays: an index past the
    /// end or into a non-array changes nothing). `only_absent`: keep an existing value.
    pub fn set(&self, v: &mut Value, new: &Value, only_absent: bool) {
        set_at(v, &self.0, new, only_absent);
    }

    /// Removes what the path reaches; returns the removed values.
    pub fn remove(&self, v: &mut Value) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some((last, parents)) = self.0.split_last() {
            for_each_parent(v, parents, &mut |p| {
                if let Some(x) = take(p, last) {
                    out.push(x);
                }
            });
        }
        out
    }

    /// The parents of the path's targets, with the last segment (for renames).
    pub fn parents_mut(&self, v: &mut Value, f: &mut dyn FnMut(&mut Value, &Seg)) {
        if let Some((last, parents)) = self.0.split_last() {
            for_each_parent(v, parents, &mut |p| f(p, last));
        }
    }
}

fn pointer(p: &str) -> Vec<Seg> {
    if p.is_empty() {
        return Vec::new();
    }
    p.split('/')
        .map(|t| {
            let t = t.replace("~1", "/").replace("~0", "~");
            match t.parse::<usize>() {
                Ok(i) if !t.starts_with('+') => Seg::Index(i),
                _ => Seg::Key(t),
            }
        })
        .collect()
}

fn walk<'a>(v: &'a Value, segs: &[Seg], out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = segs.split_first() else {
        out.push(v);
        return;
    };
    match (first, v) {
        (Seg::Key(k), Value::Object(m)) => {
            if let Some(x) = m.get(k) {
                walk(x, rest, out);
            }
        }
        (Seg::Index(i), Value::Array(a)) => {
            if let Some(x) = a.get(*i) {
                walk(x, rest, out);
            }
        }
        // A pointer token of digits names a key in an object.
        (Seg::Index(i), Value::Object(m)) => {
            if let Some(x) = m.get(&i.to_string()) {
                walk(x, rest, out);
            }
        }
        (Seg::All, Value::Array(a)) => a.iter().for_each(|x| walk(x, rest, out)),
        _ => {}
    }
}

pub(crate) fn set_at(v: &mut Value, segs: &[Seg], new: &Value, only_absent: bool) {
    let Some((first, rest)) = segs.split_first() else {
        if !only_absent || v.is_null() {
            *v = new.clone();
        }
        return;
    };
    match first {
        Seg::Key(k) => {
            if v.is_null() {
                *v = Value::Object(Map::new());
            }
            let Value::Object(m) = v else { return };
            if rest.is_empty() {
                if only_absent && m.contains_key(k) {
                    return;
                }
                m.insert(k.clone(), new.clone());
            } else {
                set_at(
                    m.entry(k.clone()).or_insert(Value::Null),
                    rest,
                    new,
                    only_absent,
                );
            }
        }
        Seg::Index(i) => match v {
            Value::Array(a) => {
                if let Some(x) = a.get_mut(*i) {
                    set_at(x, rest, new, only_absent);
                }
            }
            Value::Object(m) => set_at(
                m.entry(i.to_string()).or_insert(Value::Null),
                rest,
                new,
                only_absent,
            ),
            _ => {}
        },
        Seg::All => {
            if let Value::Array(a) = v {
                a.iter_mut().for_each(|x| set_at(x, rest, new, only_absent));
            }
        }
    }
}

pub(crate) fn for_each_parent(v: &mut Value, segs: &[Seg], f: &mut dyn FnMut(&mut Value)) {
    let Some((first, rest)) = segs.split_first() else {
        f(v);
        return;
    };
    match (first, v) {
        (Seg::Key(k), Value::Object(m)) => {
            if let Some(x) = m.get_mut(k) {
                for_each_parent(x, rest, f);
            }
        }
        (Seg::Index(i), Value::Array(a)) => {
            if let Some(x) = a.get_mut(*i) {
                for_each_parent(x, rest, f);
            }
        }
        (Seg::Index(i), Value::Object(m)) => {
            if let Some(x) = m.get_mut(&i.to_string()) {
                for_each_parent(x, rest, f);
            }
        }
        (Seg::All, Value::Array(a)) => a.iter_mut().for_each(|x| for_each_parent(x, rest, f)),
        _ => {}
    }
}

pub(crate) fn take(parent: &mut Value, last: &Seg) -> Option<Value> {
    match (last, parent) {
        (Seg::Key(k), Value::Object(m)) => m.remove(k),
        (Seg::Index(i), Value::Object(m)) => m.remove(&i.to_string()),
        (Seg::Index(i), Value::Array(a)) if *i < a.len() => Some(a.remove(*i)),
        (Seg::All, Value::Array(a)) => Some(Value::Array(std::mem::take(a))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dot_paths_and_pointers() {
        let p = Path::parse("items[*].price").unwrap();
        assert_eq!(
            p.0,
            [Seg::Key("items".into()), Seg::All, Seg::Key("price".into())]
        );
        assert_eq!(
            Path::parse("/a~1b/0").unwrap().0,
            [Seg::Key("a/b".into()), Seg::Index(0)]
        );
        assert_eq!(
            Path::parse("[*].id").unwrap().0,
            [Seg::All, Seg::Key("id".into())]
        );
        assert!(Path::parse("a..b").is_err());
        assert!(Path::parse("a[x]").is_err());
        assert!(Path::parse("a[1").is_err());
    }

    #[test]
    fn get_set_remove_with_wildcards() {
        let mut v = json!({ "items": [ { "price": 1 }, { "price": 2 } ], "a": { "b": 1 } });
        let p = Path::parse("items[*].price").unwrap();
        assert_eq!(p.get(&v), [&json!(1), &json!(2)]);
        Path::parse("items[*].currency")
            .unwrap()
            .set(&mut v, &json!("EUR"), false);
        assert_eq!(v["items"][1]["currency"], "EUR");
        Path::parse("a.c.d")
            .unwrap()
            .set(&mut v, &json!(true), false);
        assert_eq!(v["a"]["c"]["d"], true);
        Path::parse("a.b").unwrap().set(&mut v, &json!(9), true);
        assert_eq!(v["a"]["b"], 1, "add keeps an existing value");
        assert_eq!(p.remove(&mut v), [json!(1), json!(2)]);
        assert!(v["items"][0].get("price").is_none());
    }
}
