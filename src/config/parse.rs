//! YAML → [`Config`] reporting every error at once, each at its own path and line.
//!
//! serde stops at the first error. The document is therefore parsed into a YAML value first and
//! deserialized from it with `serde_path_to_error`, which names the exact field of a failure
//! (a bad duration at `upstreams.users.timeouts.connect`, not at the enclosing map); the
//! offending key is then removed and deserialization runs again, until it succeeds or an error
//! cannot be stepped over (a missing required field). Paths are turned into lines by the
//! [`LineIndex`] of the source.

use super::schema::Config;
use crate::common::issue::Issue;
use crate::common::lines::LineIndex;
use serde_path_to_error::Segment;
use yaml_serde::Value;

/// Largest configuration file read.
pub const MAX_SIZE: usize = 4 << 20;
/// Deepest nesting of maps and lists accepted (Postern's own schema needs about 8).
pub const MAX_DEPTH: usize = 64;
/// Errors reported before giving up.
const MAX_ERRORS: usize = 50;

/// Refuses input that is too large or too deeply nested before any full parse: deeply nested
/// flow collections (`[[[[...`) make a YAML parse slow (100k levels took over 30 s), while
/// scanning events up to the first level past the limit is linear.
pub fn check_shape(text: &str) -> Result<(), Issue> {
    use saphyr_parser::{Event, Parser};
    if text.len() > MAX_SIZE {
        return Err(Issue::new(
            "",
            format!(
                "the file is {} bytes; a configuration is at most {MAX_SIZE} bytes",
                text.len()
            ),
        ));
    }
    let mut depth = 0usize;
    for item in Parser::new_from_str(text) {
        let (event, span) = match item {
            Ok(e) => e,
            // The scanner's own limit (a few hundred levels) is the same problem.
            Err(e) if e.to_string().contains("recursion limit") => {
                let mut i = Issue::new(
                    "",
                    format!("maps and lists are nested deeper than {MAX_DEPTH} levels"),
                );
                i.line = Some(e.marker().line());
                return Err(i);
            }
            // Other syntax errors are reported by the full parse, with their position.
            Err(_) => return Ok(()),
        };
        match event {
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    let mut i = Issue::new(
                        "",
                        format!("maps and lists are nested deeper than {MAX_DEPTH} levels"),
                    );
                    i.line = Some(span.start.line());
                    return Err(i);
                }
            }
            Event::MappingEnd | Event::SequenceEnd => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// The parsed configuration with the problems stepped over (and the paths removed to step over
/// them, so that later checks can ignore what follows from the removal), or every problem found
/// when no configuration could be built.
pub struct Parsed {
    pub config: Config,
    pub issues: Vec<Issue>,
    /// Paths stepped over, in the file's coordinates.
    pub removed: Vec<String>,
    /// List items taken out to step over them: (the list's path, the item's index), in the
    /// file's coordinates. Paths of later checks are mapped back with [`to_original`].
    pub items: Vec<(String, usize)>,
}

/// Values tried, in order, for a required field that is missing, so that the rest of the
/// document can still be checked (the field is reported once, and what follows from the
/// stand-in is not).
fn stand_ins() -> [Value; 5] {
    [
        Value::Sequence(Vec::new()),
        Value::Mapping(Default::default()),
        Value::String(String::new()),
        Value::Number(0.into()),
        Value::Bool(false),
    ]
}

pub fn parse(text: &str, lines: &LineIndex) -> Result<Parsed, Vec<Issue>> {
    let mut issues: Vec<Issue> = Vec::new();
    let mut removed = Vec::new();
    let mut items: Vec<(String, usize)> = Vec::new();
    // The stand-in being tried for a missing field: its map and key (current coordinates),
    // and which one.
    let mut standing: Option<(Vec<Segment>, String, usize)> = None;
    // The text deserialized: the file itself first (exact YAML-to-type semantics: `30` read as
    // the string "30" by a string field, an empty value as ""); after an error, the document
    // with the offending keys removed, written back as YAML.
    let mut current = std::borrow::Cow::Borrowed(text);
    let mut value: Option<Value> = None;
    loop {
        let de = yaml_serde::Deserializer::from_str(&current);
        let e = match serde_path_to_error::deserialize::<_, Config>(de) {
            Ok(config) => {
                return Ok(Parsed {
                    config,
                    issues,
                    removed,
                    items,
                })
            }
            Err(e) => e,
        };
        let mut segments: Vec<Segment> = e.path().iter().cloned().collect();
        let inner = e.into_inner();
        if segments.is_empty() && issues.is_empty() && inner.location().is_some() {
            // Nothing was deserialized yet: a YAML syntax error.
            if !inner.to_string().contains("missing field") {
                return Err(vec![syntax_issue(&inner)]);
            }
        }
        if issues.len() >= MAX_ERRORS {
            return Err(issues);
        }
        let tree = match &mut value {
            Some(v) => v,
            None => match yaml_serde::from_str::<Value>(text) {
                Ok(v) => value.insert(v),
                Err(_) => return Err(issues),
            },
        };
        let message = plain_message(&inner.to_string());
        let at = path_string(&segments);
        // The stand-in of a missing field has the wrong type: the next one.
        if let Some((parent, field, n)) = standing.take() {
            let path = join(&path_string(&parent), &field);
            let inside = at == path
                || at.starts_with(&format!("{path}."))
                || at.starts_with(&format!("{path}["));
            if inside {
                let stand_ins = stand_ins();
                if n + 1 < stand_ins.len()
                    && insert(tree, &parent, &field, stand_ins[n + 1].clone())
                {
                    standing = Some((parent, field, n + 1));
                    current = std::borrow::Cow::Owned(write(tree).ok_or_else(|| issues.clone())?);
                    continue;
                }
                // No stand-in fits: the item holding the field goes.
                if !remove_item(tree, &parent, &mut items, &mut removed) {
                    return Err(issues);
                }
                current = std::borrow::Cow::Owned(write(tree).ok_or_else(|| issues.clone())?);
                continue;
            }
        }
        if let Some(field) = quoted_after(&message, "missing field `") {
            let path = join(&at, &field);
            let original = to_original(&path, &items);
            if !removed.contains(&original) {
                issues.push(locate(
                    Issue::new(to_original(&at, &items), message).hint("add the required key"),
                    lines,
                ));
                removed.push(original);
            }
            if insert(tree, &segments, &field, stand_ins()[0].clone()) {
                standing = Some((segments, field, 0));
            } else if !remove_item(tree, &segments, &mut items, &mut removed) {
                return Err(issues);
            }
            current = std::borrow::Cow::Owned(write(tree).ok_or_else(|| issues.clone())?);
            continue;
        }
        if let Some(field) = quoted_after(&message, "unknown field `") {
            let names_it = matches!(segments.last(), Some(Segment::Map { key }) if *key == field);
            if !names_it {
                segments.push(Segment::Map { key: field });
            }
        }
        let path = to_original(&path_string(&segments), &items);
        let hint = message
            .contains("unknown field")
            .then_some("remove the key or fix its spelling; see conf/postern.example.yaml");
        let mut issue = Issue::new(path.clone(), message);
        issue.hint = hint.map(String::from);
        issues.push(locate(issue, lines));
        if remove(tree, &segments) {
            removed.push(path);
        } else if !remove_item(tree, &segments, &mut items, &mut removed) {
            return Err(issues);
        }
        current = std::borrow::Cow::Owned(write(tree).ok_or_else(|| issues.clone())?);
    }
}

fn write(tree: &Value) -> Option<String> {
    yaml_serde::to_string(tree).ok()
}

/// Sets `key` of the map at `segments` (current coordinates).
fn insert(value: &mut Value, segments: &[Segment], key: &str, v: Value) -> bool {
    match walk(value, segments) {
        Some(Value::Mapping(m)) => {
            m.insert(Value::String(key.to_string()), v);
            true
        }
        _ => false,
    }
}

/// Takes the innermost list item of `segments` out of the document, and remembers it so that
/// the paths of later errors are given in the file's coordinates.
fn remove_item(
    value: &mut Value,
    segments: &[Segment],
    items: &mut Vec<(String, usize)>,
    removed: &mut Vec<String>,
) -> bool {
    let Some(k) = segments
        .iter()
        .rposition(|s| matches!(s, Segment::Seq { .. }))
    else {
        return false;
    };
    let Segment::Seq { index } = segments[k] else {
        return false;
    };
    let Some(Value::Sequence(list)) = walk(value, &segments[..k]) else {
        return false;
    };
    if index >= list.len() {
        return false;
    }
    list.remove(index);
    let item = to_original(&path_string(&segments[..=k]), items);
    let (list_path, original) = split_index(&item);
    items.push((list_path, original));
    removed.push(item);
    true
}

/// `a.b[3]` → (`a.b`, 3).
fn split_index(path: &str) -> (String, usize) {
    let open = path.rfind('[').unwrap_or(path.len());
    let index = path[open..]
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .unwrap_or(0);
    (path[..open].to_string(), index)
}

/// A path of the document as it is now (some list items taken out) in the file's coordinates.
pub fn to_original(path: &str, items: &[(String, usize)]) -> String {
    if items.is_empty() {
        return path.to_string();
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find(']').map(|c| open + c) else {
            break;
        };
        out.push_str(&rest[..open]);
        let Ok(mut index) = rest[open + 1..close].parse::<usize>() else {
            out.push_str(&rest[open..=close]);
            rest = &rest[close + 1..];
            continue;
        };
        let mut gone: Vec<usize> = items
            .iter()
            .filter(|(list, _)| *list == out)
            .map(|(_, i)| *i)
            .collect();
        gone.sort_unstable();
        for g in gone {
            if g <= index {
                index += 1;
            }
        }
        out.push_str(&format!("[{index}]"));
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The value at `segments` (current coordinates).
fn walk<'a>(value: &'a mut Value, segments: &[Segment]) -> Option<&'a mut Value> {
    let mut v = value;
    for s in segments {
        v = match (s, v) {
            (Segment::Map { key } | Segment::Enum { variant: key }, Value::Mapping(m)) => {
                m.get_mut(key.as_str())?
            }
            (Segment::Enum { .. }, Value::Tagged(t)) => &mut t.value,
            (Segment::Seq { index }, Value::Sequence(items)) => items.get_mut(*index)?,
            _ => return None,
        };
    }
    Some(v)
}

/// yaml_serde's message without its own position (`at line 7 column 3`) and path prefix
/// (`server: `, the enclosing map): both are replaced by the exact path and its line.
fn plain_message(text: &str) -> String {
    let body = text.split_once(" at line ").map_or(text, |(m, _)| m);
    match body.split_once(": ") {
        Some((prefix, rest)) if !prefix.is_empty() && !prefix.contains(' ') => rest.to_string(),
        _ => body.to_string(),
    }
}

fn locate(mut i: Issue, lines: &LineIndex) -> Issue {
    i.line = lines.line(&i.path);
    i
}

/// `a.b[2].c`: the form of `serde_path_to_error` and of [`LineIndex`].
fn path_string(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => out = join(&out, key),
            Segment::Enum { variant } => out = join(&out, variant),
            Segment::Unknown => out = join(&out, "?"),
        }
    }
    out
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The text between `prefix` and the next backtick.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(rest[..rest.find('`')?].to_string())
}

/// Removes the map entry the path ends at. Sequence items are not removed (the paths of the
/// items after it would shift); `false` when nothing could be removed.
fn remove(value: &mut Value, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut v = value;
    for s in parents {
        let next = match (s, v) {
            (Segment::Map { key } | Segment::Enum { variant: key }, Value::Mapping(m)) => {
                m.get_mut(key.as_str())
            }
            (Segment::Enum { .. }, Value::Tagged(t)) => Some(&mut t.value),
            (Segment::Seq { index }, Value::Sequence(items)) => items.get_mut(*index),
            _ => None,
        };
        let Some(next) = next else {
            return false;
        };
        v = next;
    }
    match (last, v) {
        (Segment::Map { key } | Segment::Enum { variant: key }, Value::Mapping(m)) => {
            m.remove(key.as_str()).is_some()
        }
        _ => false,
    }
}

/// A YAML syntax error with its line.
fn syntax_issue(e: &yaml_serde::Error) -> Issue {
    let text = e.to_string();
    let body = text
        .split_once(" at line ")
        .map_or(text.as_str(), |(m, _)| m);
    let mut i = Issue::new("", body.to_string());
    i.line = e.location().map(|l| l.line());
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<Issue> {
        match parse(text, &LineIndex::build(text)) {
            Ok(p) => p.issues,
            Err(i) => i,
        }
    }

    #[test]
    fn every_field_error_at_its_own_path_and_line() {
        let text = "version: 1\nlisteners: [ { addr: \"127.0.0.1:1\" } ]\nserver:\n  threads: 2\n  keepalive: forever\nupstreams:\n  users:\n    targets: [ { addr: \"127.0.0.1:2\" } ]\n    timeouts:\n      connect: fast\n      read: 5s\nroutes:\n  - { match: { path: /x }, upstream: users, typo: 1 }\n";
        let found: Vec<(String, Option<usize>)> =
            errors(text).into_iter().map(|i| (i.path, i.line)).collect();
        assert_eq!(
            found,
            [
                ("server.keepalive".to_string(), Some(5)),
                ("upstreams.users.timeouts.connect".to_string(), Some(10)),
                ("routes[0].typo".to_string(), Some(13)),
            ],
            "{found:?}"
        );
    }

    /// A missing field no longer ends the pass: a stand-in lets the rest be read; a list item
    /// that cannot be read is taken out, and the paths after it keep the file's indexes.
    #[test]
    fn errors_after_a_missing_field_or_a_bad_item_are_still_found() {
        let text = "listeners: [ { addr: \"127.0.0.1:1\" } ]\nroutes:\n  - match: { path: /a }\n    plugins:\n      - nope: {}\n      - cors: { origin: [x] }\n      - cors: { origins: [x], max_age: forever }\n";
        let found: Vec<String> = errors(text).into_iter().map(|i| i.path).collect();
        assert_eq!(
            found,
            [
                "routes[0].plugins[0]",
                "routes[0].plugins[1].cors.origin",
                "routes[0].plugins[1].cors",
                "routes[0].plugins[2].cors.max_age",
            ],
            "{found:?}"
        );
    }

    #[test]
    fn paths_after_a_removed_item_map_back_to_the_file() {
        let items = vec![
            ("routes[0].plugins".to_string(), 0),
            ("routes[0].plugins".to_string(), 2),
        ];
        assert_eq!(
            to_original("routes[0].plugins[0].x", &items),
            "routes[0].plugins[1].x"
        );
        assert_eq!(
            to_original("routes[0].plugins[1]", &items),
            "routes[0].plugins[3]"
        );
        assert_eq!(
            to_original("routes[1].plugins[0]", &items),
            "routes[1].plugins[0]"
        );
        assert_eq!(to_original("server.threads", &items), "server.threads");
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let deep = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let e = check_shape(&deep).unwrap_err();
        assert!(e.message.contains("nested deeper"), "{e}");
        assert!(check_shape("a: [[1]]\n").is_ok());
        assert!(check_shape(&"#".repeat(MAX_SIZE + 1)).is_err());
    }
}
