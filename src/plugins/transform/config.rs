//! The `transform` plugin's configuration as a route writes it (compiled by
//! [`super::Transform`]).

use crate::common::types::Size;
use crate::plugins::Oversize;
use crate::transform::shape::ShapeConfig;
use crate::transform::xml::XmlOptions;
use crate::transform::JsonOpConfig;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "transform")]
pub struct Config {
    #[serde(default)]
    pub request: Option<RequestConfig>,
    #[serde(default)]
    pub response: Option<ResponseConfig>,
    /// Largest body buffered for JSON operations (default 1MiB, at most the route's
    /// `max_request_body`).
    #[serde(default = "default_max_body")]
    pub max_body: Size,
    #[serde(default)]
    pub on_oversize: Oversize,
    /// A response body that cannot be parsed: `pass` (sent unchanged and counted) or `error`.
    #[serde(default)]
    pub on_error: Oversize,
    /// Media types whose bodies are transformed; `+json` matches any `*/*+json`. (XML bodies
    /// converted to JSON are recognised by `application/xml`, `text/xml` and `+xml`.)
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
    /// The JSON ↔ XML mapping's options (root and item element names, arrays, typing, depth).
    #[serde(default)]
    pub xml: XmlOptions,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestConfig {
    #[serde(default)]
    pub json: Vec<JsonOpConfig>,
    #[serde(default)]
    pub query: Option<QueryConfig>,
    /// The method sent upstream.
    #[serde(default)]
    pub method: Option<String>,
    /// Convert the request body: `xml` (JSON in, XML to the upstream) or `json` (XML in).
    #[serde(default)]
    pub convert: Option<Convert>,
}

/// Body format conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Convert {
    /// JSON to XML.
    Xml,
    /// XML to JSON.
    Json,
    /// (responses) XML when the client's `Accept` prefers it, JSON otherwise; `Vary: Accept`.
    Negotiate,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "QueryEdits")]
pub struct QueryConfig {
    /// Parameters to set (replacing any of the same name); values may be templates.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResponseConfig {
    #[serde(default)]
    pub json: Vec<JsonOpConfig>,
    /// Status mapping: `{ 201: 200 }`.
    #[serde(default)]
    pub status: BTreeMap<u16, u16>,
    /// Convert the response body: `xml`, `json` (an XML upstream) or `negotiate`.
    #[serde(default)]
    pub convert: Option<Convert>,
    /// Filter, sort, paginate, select fields of and wrap a JSON array, from the client's query.
    #[serde(default)]
    pub shape: Option<ShapeConfig>,
}

fn default_max_body() -> Size {
    Size(1 << 20)
}

fn default_content_types() -> Vec<String> {
    vec!["application/json".into(), "+json".into()]
}
