//! Route path patterns: `/exact`, `/prefix/*` (matches `/prefix`, `/prefix/` and below) and
//! `{name}` segments that capture one whole segment.

/// One segment of a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Static(String),
    Param(String),
}

/// A parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    pub segments: Vec<Segment>,
    /// Ends with `/*`: the rest of the path is free.
    pub prefix: bool,
}

impl Pattern {
    pub fn parse(p: &str) -> Result<Pattern, String> {
        if !p.starts_with('/') {
            return Err(format!("path pattern \"{p}\" must start with /"));
        }
        let (body, prefix) = match p.strip_suffix("/*") {
            Some(b) => (b, true),
            None => (p, false),
        };
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        if body.len() > 1 || (body == "/" && !prefix) {
            for seg in body[1..].split('/') {
                if seg.contains('*') {
                    return Err(format!(
                        "\"{p}\": `*` is only allowed as the last segment (`/prefix/*`)"
                    ));
                }
                if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(format!("\"{p}\": invalid parameter name \"{{{name}}}\""));
                    }
                    if names.contains(&name) {
                        return Err(format!("\"{p}\": parameter {{{name}}} appears twice"));
                    }
                    names.push(name);
                    segments.push(Segment::Param(name.to_string()));
                } else if seg.contains(['{', '}']) {
                    return Err(format!(
                        "\"{p}\": a parameter must be a whole segment, like /users/{{id}}"
                    ));
                } else if seg.is_empty() && segments.len() + 1 < body[1..].split('/').count() {
                    return Err(format!("\"{p}\": empty segment (`//`)"));
                } else {
                    segments.push(Segment::Static(seg.to_string()));
                }
            }
        }
        Ok(Pattern { segments, prefix })
    }

    pub fn param_names(&self) -> Vec<String> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) => Some(n.clone()),
                Segment::Static(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds() {
        let p = Pattern::parse("/users/{id}").unwrap();
        assert_eq!(
            p.segments,
            vec![Segment::Static("users".into()), Segment::Param("id".into())]
        );
        assert!(!p.prefix);
        let p = Pattern::parse("/api/*").unwrap();
        assert_eq!(p.segments, vec![Segment::Static("api".into())]);
        assert!(p.prefix);
        let p = Pattern::parse("/*").unwrap();
        assert!(p.segments.is_empty() && p.prefix);
        let p = Pattern::parse("/").unwrap();
        assert_eq!(p.segments, vec![Segment::Static(String::new())]);
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!(Pattern::parse("users").is_err());
        assert!(Pattern::parse("/a/*/b").is_err());
        assert!(Pattern::parse("/a/{x}/{x}").is_err());
        assert!(Pattern::parse("/a/x{y}").is_err());
        assert!(Pattern::parse("/a//b").is_err());
    }
}
