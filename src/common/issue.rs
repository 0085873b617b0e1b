//! Configuration errors: every problem names its path, its line and, where possible, a fix.

use std::fmt;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Path in the serde form: `routes[2].upstream`.
    pub path: String,
    pub line: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl Issue {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Issue {
        Issue {
            path: path.into(),
            line: None,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Issue {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.path.as_str(), self.line) {
            ("", Some(l)) => write!(f, "line {l}: {}", self.message)?,
            ("", None) => write!(f, "{}", self.message)?,
            (path, Some(l)) => write!(f, "{path} (line {l}): {}", self.message)?,
            (path, None) => write!(f, "{path}: {}", self.message)?,
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// All the problems found in one file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    pub file: String,
    pub issues: Vec<Issue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        writeln!(
            f,
            "{}: {n} error{}",
            self.file,
            if n == 1 { "" } else { "s" }
        )?;
        for i in &self.issues {
            writeln!(f, "{i}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects issues while a config is checked or compiled.
#[derive(Debug, Default)]
pub struct Issues(pub Vec<Issue>);

impl Issues {
    pub fn push(&mut self, issue: Issue) {
        self.0.push(issue);
    }
    pub fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Issue::new(path, message));
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Names the closest known name, for "did you mean" hints.
pub fn known_list<'a>(known: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = known.collect();
    if v.is_empty() {
        "none defined".to_string()
    } else {
        v.join(", ")
    }
}
