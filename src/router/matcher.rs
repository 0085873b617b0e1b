//! Value matchers for header and query conditions: `exact`, `*` (present) or `~regex`.

use regex::Regex;

#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(String),
    Present,
    Regex(Regex),
}

impl ValueMatch {
    pub fn parse(spec: &str) -> Result<ValueMatch, String> {
        if spec == "*" {
            Ok(ValueMatch::Present)
        } else if let Some(re) = spec.strip_prefix('~') {
            Regex::new(re)
                .map(ValueMatch::Regex)
                .map_err(|e| format!("invalid regex \"{re}\": {e}"))
        } else {
            Ok(ValueMatch::Exact(spec.to_string()))
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(v) => v == value,
            ValueMatch::Present => true,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// Finds `key` in a query string and tests its first value; `+` and `%XX` are decoded first.
pub fn query_matches(query: Option<&str>, key: &str, m: &ValueMatch) -> bool {
    let Some(q) = query else { return false };
    for pair in q.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == key {
            return if v.contains(['%', '+']) {
                m.matches(&decode_query_value(v))
            } else {
                m.matches(v)
            };
        }
    }
    false
}

fn decode_query_value(v: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let decoded = match b[i] {
            b'%' if i + 2 < b.len() => hex(b[i + 1]).zip(hex(b[i + 2])).map(|(h, l)| h * 16 + l),
            _ => None,
        };
        match (decoded, b[i]) {
            (Some(x), _) => {
                out.push(x);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, c) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_matchers() {
        assert!(ValueMatch::parse("2").unwrap().matches("2"));
        assert!(!ValueMatch::parse("2").unwrap().matches("3"));
        assert!(ValueMatch::parse("*").unwrap().matches(""));
        assert!(ValueMatch::parse("~^v[23]$").unwrap().matches("v3"));
        assert!(ValueMatch::parse("~(").is_err());
    }

    #[test]
    fn query_values() {
        let m = ValueMatch::parse("a b").unwrap();
        assert!(query_matches(Some("x=1&beta=a+b"), "beta", &m));
        assert!(query_matches(Some("beta=a%20b"), "beta", &m));
        assert!(!query_matches(Some("betax=a+b"), "beta", &m));
        assert!(!query_matches(None, "beta", &m));
        assert!(query_matches(Some("flag"), "flag", &ValueMatch::Present));
        assert!(!query_matches(Some("v=%"), "v", &m));
    }
}
