//! The `shape` configuration as a route writes it (compiled by [`super::Shape::compile`]).

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShapeConfig {
    /// Where the array is: a path (`data.items`) or the document itself (default).
    #[serde(default)]
    pub target: Option<String>,
    /// Item fields clients may filter on (`?status=active&price[lt]=10`).
    #[serde(default)]
    pub filter: Vec<String>,
    /// Item fields clients may sort by (`?sort=-created_at,name`).
    #[serde(default)]
    pub sort: Vec<String>,
    /// The order when the client gives none (same syntax as the parameter).
    #[serde(default)]
    pub default_sort: Option<String>,
    /// Item fields clients may select (`?fields=id,name`).
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub paginate: Option<PaginateConfig>,
    /// Answer `{ <key>: [...], "meta": {...} }` instead of the array.
    #[serde(default)]
    pub wrap: Option<WrapConfig>,
    /// Answer only the shaped array (the sub-tree at `target`), not the whole document.
    #[serde(default)]
    pub unwrap: bool,
    /// Names of the `sort` and `fields` parameters.
    #[serde(default)]
    pub params: ParamNames,
    /// Remove the shaping parameters from the request sent upstream (default true).
    #[serde(default = "yes")]
    pub strip_params: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamNames {
    #[serde(default = "sort_name")]
    pub sort: String,
    #[serde(default = "fields_name")]
    pub fields: String,
}

impl Default for ParamNames {
    fn default() -> Self {
        ParamNames {
            sort: sort_name(),
            fields: fields_name(),
        }
    }
}

fn sort_name() -> String {
    "sort".into()
}
fn fields_name() -> String {
    "fields".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PageStyle {
    /// `page` (from 1) and `per_page`.
    #[default]
    Page,
    /// `offset` (from 0) and `limit`.
    Offset,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaginateConfig {
    #[serde(default)]
    pub style: PageStyle,
    /// Page size when the client gives none.
    #[serde(default = "default_per_page")]
    pub default_per_page: usize,
    #[serde(default = "max_per_page")]
    pub max_per_page: usize,
    /// Parameter names: `page`/`per_page` (style page) or `offset`/`limit` (style offset).
    #[serde(default)]
    pub page_param: Option<String>,
    #[serde(default)]
    pub size_param: Option<String>,
    /// RFC 8288 `Link` (first, prev, next, last) and `X-Total-Count` headers (default true).
    #[serde(default = "yes")]
    pub headers: bool,
}

fn default_per_page() -> usize {
    20
}
fn max_per_page() -> usize {
    100
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WrapConfig {
    /// The key of the array (default `data`).
    #[serde(default = "data_key")]
    pub key: String,
    /// Add `meta` with `total` and the page (default true).
    #[serde(default = "yes")]
    pub meta: bool,
}

fn data_key() -> String {
    "data".into()
}
