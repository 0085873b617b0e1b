//! Maps a config path (`routes[2].upstream`, the form serde errors use) to its line in the YAML
//! source, so that semantic errors found after parsing can still point at a line.

use saphyr_parser::{Event, Parser};
use std::collections::HashMap;

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, idx: usize },
}

/// Path → 1-based line of the key (for map entries) or of the item (for sequence items).
#[derive(Debug, Default, Clone)]
pub struct LineIndex(HashMap<String, usize>);

impl LineIndex {
    pub fn build(src: &str) -> LineIndex {
        let mut map = HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        for item in Parser::new_from_str(src) {
            let Ok((event, span)) = item else { break };
            let line = span.start.line();
            match event {
                Event::Scalar(value, ..) => {
                    if let Some(Frame::Map { path, key }) = stack.last_mut() {
                        if key.is_none() {
                            let child = join_key(path, &value);
                            map.entry(child).or_insert(line);
                            *key = Some(value.into_owned());
                            continue;
                        }
                    }
                    if let Some(child) = child_path(&stack) {
                        map.entry(child).or_insert(line);
                    }
                    advance(&mut stack);
                }
                Event::Alias(_) => advance(&mut stack),
                Event::MappingStart(..) | Event::SequenceStart(..) => {
                    let path = child_path(&stack).unwrap_or_default();
                    map.entry(path.clone()).or_insert(line);
                    stack.push(match event {
                        Event::MappingStart(..) => Frame::Map { path, key: None },
                        _ => Frame::Seq { path, idx: 0 },
                    });
                }
                Event::MappingEnd | Event::SequenceEnd => {
                    stack.pop();
                    advance(&mut stack);
                }
                _ => {}
            }
        }
        LineIndex(map)
    }

    /// The line of `path`, or of its closest ancestor that has one.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.0.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn child_path(stack: &[Frame]) -> Option<String> {
    match stack.last()? {
        Frame::Map { path, key } => key.as_deref().map(|k| join_key(path, k)),
        Frame::Seq { path, idx } => Some(format!("{path}[{idx}]")),
    }
}

fn advance(stack: &mut [Frame]) {
    match stack.last_mut() {
        Some(Frame::Map { key, .. }) => *key = None,
        Some(Frame::Seq { idx, .. }) => *idx += 1,
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_nested_paths() {
        let src = "a: 1\nroutes:\n  - name: x\n    upstream: u\n  - { name: y, upstream: v }\nups:\n  u:\n    targets: [ { addr: b } ]\n";
        let idx = LineIndex::build(src);
        assert_eq!(idx.line("a"), Some(1));
        assert_eq!(idx.line("routes[0].upstream"), Some(4));
        assert_eq!(idx.line("routes[1].upstream"), Some(5));
        assert_eq!(idx.line("ups.u.targets[0].addr"), Some(8));
        assert_eq!(idx.line("routes[1].nothing"), Some(5));
    }
}
