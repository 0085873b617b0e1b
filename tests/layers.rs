//! The module layers `src/lib.rs` declares are the ones the code has: every top-level module
//! is in exactly one layer, and every `crate::` path in a module (a `use`, or inline) names a
//! module of a lower layer. So no import cycle between top-level modules can come back.
//!
//! Test code is not part of the build and may use any layer (a plugin's unit tests compile a
//! whole snapshot): files named `tests.rs` or under a `tests/` folder, and everything from a
//! file's `#[cfg(test)]` on (test modules stand at the end of a file), are not scanned.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The layers of `lib.rs`'s doc: lines `//! N. `a`, `b`: …`, lowest first.
fn declared_layers(lib: &str) -> Vec<(usize, Vec<String>)> {
    let mut layers = Vec::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("//! ") else {
            continue;
        };
        let Some((n, body)) = rest.split_once(". ") else {
            continue;
        };
        let Ok(n) = n.trim().parse::<usize>() else {
            continue;
        };
        // The names before the first colon, each in backticks.
        let names = body.split(':').next().unwrap_or("");
        let mods: Vec<String> = names
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        layers.push((n, mods));
    }
    layers
}

/// `pub mod x;` lines of `lib.rs`.
fn declared_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

/// The top-level modules a piece of source names through `crate::` (`$crate::` too),
/// including each name of a `crate::{a, b::c}` group. Line comments are skipped.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::") {
        let start = at + i;
        at = start + "crate::".len();
        // `foo_crate::` is another path.
        if start > 0 {
            let b = bytes[start - 1];
            if b.is_ascii_alphanumeric() || b == b'_' {
                continue;
            }
        }
        if bytes.get(at) == Some(&b'{') {
            // A group: the first name of each top-level entry.
            let mut depth = 0;
            let mut entry_start = true;
            let mut name = String::new();
            for &c in &bytes[at..] {
                match c {
                    b'{' => {
                        depth += 1;
                        if depth == 1 {
                            entry_start = true;
                        }
                    }
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => entry_start = true,
                    c if depth == 1 && entry_start && (c.is_ascii_alphanumeric() || c == b'_') => {
                        name.push(c as char)
                    }
                    _ if depth == 1 && entry_start && !name.is_empty() => {
                        found.insert(std::mem::take(&mut name));
                        entry_start = false;
                    }
                    _ => {}
                }
            }
            if !name.is_empty() {
                found.insert(name);
            }
        } else {
            let name: String = code[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// For each top-level module, the other top-level modules it names, with one file each.
fn module_edges(modules: &BTreeSet<String>) -> BTreeMap<String, BTreeMap<String, String>> {
    let root = src();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&root).unwrap().to_string_lossy().to_string();
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs");
        if !modules.contains(top) {
            continue; // lib.rs, main.rs (the binary crate)
        }
        if rel.ends_with("/tests.rs") || rel.contains("/tests/") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        for m in crate_paths(text) {
            if m != top && modules.contains(&m) {
                edges
                    .entry(top.to_string())
                    .or_default()
                    .entry(m)
                    .or_insert_with(|| rel.clone());
            }
        }
    }
    edges
}

#[test]
fn every_import_goes_to_a_lower_layer() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let modules = declared_modules(&lib);
    let layers = declared_layers(&lib);
    assert!(layers.len() > 3, "lib.rs declares no layers");
    let mut layer_of = BTreeMap::new();
    for (n, mods) in &layers {
        for m in mods {
            assert!(
                modules.contains(m),
                "lib.rs layer {n} names `{m}`, not a module"
            );
            assert!(
                layer_of.insert(m.clone(), *n).is_none(),
                "`{m}` is in two layers"
            );
        }
    }
    let missing: Vec<_> = modules
        .iter()
        .filter(|m| !layer_of.contains_key(*m))
        .collect();
    assert!(
        missing.is_empty(),
        "modules in no layer of lib.rs: {missing:?}"
    );

    let mut wrong = Vec::new();
    for (from, tos) in module_edges(&modules) {
        for (to, file) in tos {
            if layer_of[&to] >= layer_of[&from] {
                wrong.push(format!(
                    "{from} (layer {}) -> {to} (layer {}) in src/{file}",
                    layer_of[&from], layer_of[&to]
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that do not go to a lower layer:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scan_sees_groups_inline_paths_and_skips_comments() {
    let found = crate_paths(
        "use crate::{config::{self, X}, error::E};\n\
         let x = crate::router::strip(y); // crate::admin::f\n\
         macro_rules! m { () => { $crate::reply::R } }\n\
         use other_crate::thing;",
    );
    let want: BTreeSet<String> = ["config", "error", "router", "reply"]
        .map(String::from)
        .into();
    assert_eq!(found, want);
}
