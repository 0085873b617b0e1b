//! `aggregate:` on a route: a composite endpoint that answers from several upstream calls.

use crate::common::types::{Dur, Size};
use crate::plugins::cache;
use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::Deserialize;

/// A composite endpoint: the calls it makes and how their answers become one.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// Bound on the whole composite; calls still running when it passes are cancelled.
    #[serde(default)]
    pub deadline: Option<Dur>,
    /// The calls, by name; their order is the merge order (later calls win on a clash).
    pub calls: IndexMap<String, Call>,
    /// Upper bound on the number of calls (default 16).
    #[serde(default)]
    pub max_calls: Option<usize>,
    /// Add an `_errors` member naming the optional calls that failed and why.
    #[serde(default)]
    pub include_errors: bool,
    /// Client request fields copied to every call (default `[accept-language]`; `authorization`
    /// only when listed). A call's own `pass_headers` replaces this list.
    #[serde(default)]
    pub pass_headers: Option<Vec<String>>,
}

/// One call of a composite.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Call {
    /// An upstream of this file: its balancing, health, timeouts, retries and pool are used.
    pub upstream: String,
    #[serde(default)]
    pub method: Option<String>,
    /// Path and query: `{name}` is a route parameter; `${...}` a template
    /// (`${path.id}`, `${query.q}`, `${header.x}`, `${consumer}`, `${claim.sub}`,
    /// `${calls.NAME.body.PATH}`, `${calls.NAME.status}`, `${calls.NAME.header.N}`; `:csv`
    /// joins an array with commas). Values are percent-encoded.
    pub path: String,
    /// A JSON body (for POST/PUT): strings in it may be templates, including `${body.PATH}` of
    /// the client's JSON body; a string that is one template keeps the value's type.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    /// Extra request fields; values may be templates.
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// Client request fields copied to this call (replaces the composite's list).
    #[serde(default)]
    pub pass_headers: Option<Vec<String>>,
    /// Statuses that count as success (default: any 2xx).
    #[serde(default)]
    pub expect: Option<Vec<u16>>,
    /// Time for this call, all tries included (default: the deadline).
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// A failed optional call is left out (or replaced by `fallback`): the answer is partial.
    #[serde(default)]
    pub optional: bool,
    /// What stands in for a failed optional call.
    #[serde(default)]
    pub fallback: Option<Fallback>,
    /// Take this sub-tree of the answer (dot path or JSON Pointer).
    #[serde(default)]
    pub target: Option<String>,
    /// Keep only these fields (dot paths).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Drop these fields (dot paths).
    #[serde(default)]
    pub deny: Vec<String>,
    /// Rename fields: `old.path: new_name`.
    #[serde(default)]
    pub mapping: IndexMap<String, String>,
    /// Nest the answer under this key; without it an object answer is merged at the top level.
    #[serde(default)]
    pub group: Option<String>,
    /// An array of arrays becomes one array.
    #[serde(default)]
    pub flatten: bool,
    /// Largest answer body (default 1 MiB); above it the call fails as `too_large`.
    #[serde(default)]
    pub max_body: Option<Size>,
    /// Store this call's answers in the HTTP cache (the `cache` plugin's settings): shared by
    /// every composite that makes the same call.
    #[serde(default)]
    pub cache: Option<cache::Config>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fallback {
    /// The JSON value used in place of the call's answer (before shaping).
    pub body: serde_json::Value,
}
