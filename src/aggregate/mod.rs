//! API composition: a route whose target is `aggregate:` answers from several upstream calls,
//! run as a DAG (a call starts once the calls its templates read have finished), each shaped,
//! then merged into one JSON document that goes through the route's response plugins.
//!
//! This module holds the YAML shape (`config`), the templates calls are built from and the
//! merge of their answers; the compiled form is `snapshot::composite`, the request path
//! `gateway::aggregate`.

pub mod config;
pub mod merge;
pub mod template;

use std::time::Duration;

/// Default bound of a composite without `deadline`.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);
/// Default `max_calls`.
pub const DEFAULT_MAX_CALLS: usize = 16;
/// Default `max_body` of a call's answer.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;
