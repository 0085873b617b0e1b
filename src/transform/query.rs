//! Query-string reading and editing for templates and the `transform` plugin's `query`
//! operations. Pairs are kept in their order; values are decoded for reading and encoded
//! (RFC 3986 unreserved characters kept) when set.

/// The decoded value of the first `name` parameter.
pub fn value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|p| p.split_once('=').or(Some((p, ""))))
        .find(|(k, _)| crate::router::path::form_decode(k) == name)
        .map(|(_, v)| crate::router::path::form_decode(v))
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A raw query key or value as it may stand in a URI (RFC 3986 `query`): what it already
/// escapes (`%XX`) and every character a query allows are kept, anything else (`[`, `]`, a
/// space, a quote ...) is percent-encoded, so the text means what the client sent.
pub fn query_safe(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        let allowed = crate::http::checks::allowed_in_query(b);
        if allowed {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The query after `set` (replace or append), `remove` and `rename` operations, in that order.
pub fn edit(
    query: Option<&str>,
    set: &[(String, String)],
    remove: &[String],
    rename: &[(String, String)],
) -> String {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect();
    let key_is = |k: &str, name: &str| crate::router::path::form_decode(k) == name;
    for (name, v) in set {
        pairs.retain(|(k, _)| !key_is(k, name));
        pairs.push((encode(name), encode(v)));
    }
    pairs.retain(|(k, _)| !remove.iter().any(|r| key_is(k, r)));
    for (from, to) in rename {
        for (k, _) in pairs.iter_mut().filter(|(k, _)| key_is(k, from)) {
            *k = encode(to);
        }
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_and_edit() {
        assert_eq!(value("a=1&b=x%20y", "b").as_deref(), Some("x y"));
        assert_eq!(value("a=1", "z"), None);
        let q = edit(
            Some("page=2&debug=1&q=a+b"),
            &[
                ("limit".into(), "10 20".into()),
                ("page".into(), "3".into()),
            ],
            &["debug".into()],
            &[("q".into(), "search".into())],
        );
        assert_eq!(q, "search=a+b&limit=10%2020&page=3");
    }
}
