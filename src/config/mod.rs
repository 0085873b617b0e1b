//! Loading the configuration: read → expand `${VAR}` → parse (unknown keys rejected) → check
//! cross-references. `snapshot::compile` turns the result into the runtime state; `load_and_compile`
//! there is what `postern check` runs.

mod env;
mod parse;
pub mod schema;
mod validate;

pub use crate::common::{ConfigError, Issue, Issues, LineIndex};
pub use schema::Config;

/// A parsed config with what is needed to point errors at lines.
pub struct Loaded {
    pub config: Config,
    pub lines: LineIndex,
    /// Directory of the file; relative paths in the config are resolved from the working directory.
    pub file: String,
}

/// Reads and checks a config file, returning every problem found.
pub fn load(path: &str) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_string(),
        issues: vec![Issue::new("", format!("cannot read the file: {e}"))],
    })?;
    load_str(&text, path)
}

/// Same as [`load`] on text already in memory; `file` names it in errors.
pub fn load_str(text: &str, file: &str) -> Result<Loaded, ConfigError> {
    let partial = load_partial(text, file)?;
    if !partial.issues.is_empty() {
        return Err(ConfigError {
            file: file.to_string(),
            issues: partial.issues,
        });
    }
    Ok(partial.loaded)
}

/// A configuration read with its problems stepped over: what could be built, every problem
/// found so far (located), and what was stepped over, so that a later stage (snapshot
/// compilation) can check the rest and leave out what follows from a step.
pub struct Partial {
    pub loaded: Loaded,
    pub issues: Vec<Issue>,
    removed: Vec<String>,
    items: Vec<(String, usize)>,
}

impl Partial {
    /// Issues of a later stage, in the file's coordinates, without those that follow from a
    /// step over an earlier problem, located.
    pub fn add_later(&mut self, later: Vec<Issue>) {
        let (removed, items) = (&self.removed, &self.items);
        let kept = later.into_iter().filter_map(|mut i| {
            i.path = parse::to_original(&i.path, items);
            i.line = None; // located below, at the path in the file
                           // Below a removed key, or a plugin entry judged as a whole after one of its keys
                           // was removed ("nothing to do" once its only operation went).
            let follows = removed.iter().any(|r| {
                i.path == *r
                    || i.path.starts_with(&format!("{r}."))
                    || i.path.starts_with(&format!("{r}["))
                    || (i.path.contains(".plugins[")
                        && (r.starts_with(&format!("{}.", i.path))
                            || r.starts_with(&format!("{}[", i.path))))
            });
            (!follows).then_some(i)
        });
        let kept: Vec<Issue> = kept.collect();
        let kept = locate(kept, &self.loaded.lines);
        for i in kept {
            if !self.issues.contains(&i) {
                self.issues.push(i);
            }
        }
    }
}

/// [`load_str`], keeping what could be built past its problems (see [`Partial`]); `Err` when
/// nothing could (a syntax error, a missing variable, a file too large).
pub fn load_partial(text: &str, file: &str) -> Result<Partial, ConfigError> {
    let fail = |issues: Vec<Issue>| ConfigError {
        file: file.to_string(),
        issues,
    };
    parse::check_shape(text).map_err(|i| fail(vec![i]))?;
    let expanded = env::expand(text, |k| std::env::var(k).ok()).map_err(fail)?;
    parse::check_shape(&expanded).map_err(|i| fail(vec![i]))?;
    let lines = LineIndex::build(&expanded);
    let parsed = parse::parse(&expanded, &lines).map_err(fail)?;
    let config = parsed.config;
    let mut checks = Issues::default();
    validate::check(&config, &mut checks);
    plain_keys_from_env(&config, text, &lines, &mut checks);
    let mut partial = Partial {
        loaded: Loaded {
            config,
            lines,
            file: file.to_string(),
        },
        issues: parsed.issues,
        removed: parsed.removed,
        items: parsed.items,
    };
    // What follows from a key removed to step over its error is not a problem of its own.
    partial.add_later(checks.0);
    Ok(partial)
}

/// A plain API key (`key:`) must come from the environment: the raw line has to hold `${VAR}`
/// (without a `:-default`, which would put the key in the file after all).
fn plain_keys_from_env(config: &Config, raw: &str, lines: &LineIndex, issues: &mut Issues) {
    let raw_lines: Vec<&str> = raw.lines().collect();
    for (i, c) in config.consumers.iter().enumerate() {
        for (j, k) in c.api_keys.iter().enumerate() {
            if k.key.is_none() {
                continue;
            }
            let path = format!("consumers[{i}].api_keys[{j}].key");
            let from_env = lines
                .line(&path)
                .or_else(|| lines.line(&format!("consumers[{i}].api_keys[{j}]")))
                .and_then(|n| raw_lines.get(n.saturating_sub(1)))
                .is_some_and(|l| l.contains("${") && !l.contains(":-"));
            if !from_env {
                issues.push(
                    Issue::new(path, "a plain API key must come from the environment")
                        .hint("write `key: ${ALICE_API_KEY}`, or store `sha256:` of the key"),
                );
            }
        }
    }
}

/// Adds line numbers to issues found after parsing.
pub fn locate(mut issues: Vec<Issue>, lines: &LineIndex) -> Vec<Issue> {
    for i in &mut issues {
        if i.line.is_none() {
            i.line = lines.line(&i.path);
        }
    }
    issues
}

/// The JSON Schema of the configuration, generated from the types above.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default()
}
