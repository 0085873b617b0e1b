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
    let mut issues = Issues(parsed.issues);
    let mut checks = Issues::default();
    validate::check(&config, &mut checks);
    plain_keys_from_env(&config, text, &lines, &mut checks);
    // What follows from a key removed to step over its error is not a problem of its own.
    let removed = parsed.removed;
    issues.0.extend(checks.0.into_iter().filter(|i| {
        !removed.iter().any(|r| {
            i.path == *r
                || i.path.starts_with(&format!("{r}."))
                || i.path.starts_with(&format!("{r}["))
        })
    }));
    if !issues.is_empty() {
        return Err(fail(locate(issues.0, &lines)));
    }
    Ok(Loaded {
        config,
        lines,
        file: file.to_string(),
    })
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
