//! Path normalization applied before matching (RFC 3986 §6.2.2): percent-encoded unreserved
//! characters are decoded, `//` is collapsed and `.`/`..` segments are resolved, so that
//! `/admin/../users`, `/%2e%2e/users` and `//users` all match as `/users`. Encoded `/` (`%2F`)
//! stays encoded: it is data, not a separator.

use std::borrow::Cow;

/// Why a path cannot be routed (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadPercentEncoding,
}

/// Normalizes `path` (no query). Borrows when the path is already normal, which is the common case.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path.as_bytes())? {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "" | "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut result = String::with_capacity(decoded.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if trailing_slash || out.is_empty() {
        result.push('/');
    }
    Ok(Cow::Owned(result))
}

/// True when the path has no `%`, no empty segment (except a trailing slash) and no dot segment.
fn is_normal(p: &[u8]) -> Result<bool, PathError> {
    let mut seg_start = 1;
    for i in 1..=p.len() {
        if i == p.len() || p[i] == b'/' {
            let seg = &p[seg_start..i];
            let trailing = i == p.len();
            if (seg.is_empty() && !trailing) || seg == b"." || seg == b".." {
                return Ok(false);
            }
            seg_start = i + 1;
        } else if p[i] == b'%' {
            return Ok(false);
        }
    }
    Ok(true)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadPercentEncoding);
            };
            let v = h * 16 + l;
            if is_unreserved(v) {
                out.push(v as char);
            } else {
                out.push('%');
                out.push(b[i + 1].to_ascii_uppercase() as char);
                out.push(b[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            let start = i;
            while i < b.len() && b[i] != b'%' {
                i += 1;
            }
            out.push_str(&path[start..i]);
        }
    }
    Ok(out)
}

/// `%XX` and `+` decoding of a query value.
pub fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    #[test]
    fn normal_paths_are_borrowed() {
        assert!(matches!(normalize("/users/42").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalize("/users/").unwrap(), Cow::Borrowed(_)));
        assert!(matches!(normalize("/").unwrap(), Cow::Borrowed(_)));
    }

    #[test]
    fn dot_segments_and_double_slashes() {
        assert_eq!(n("/admin/../users"), "/users");
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("//users//1"), "/users/1");
        assert_eq!(n("/../../etc"), "/etc");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/.."), "/");
    }

    #[test]
    fn percent_decoding_of_unreserved_only() {
        assert_eq!(n("/%2e%2e/admin"), "/admin");
        assert_eq!(n("/admin/%2E%2E/users"), "/users");
        assert_eq!(n("/%75sers"), "/users");
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(normalize("/a%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("users"), Err(PathError::NotAbsolute));
    }
}
