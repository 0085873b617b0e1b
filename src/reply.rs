//! What a request-side hook decides: go on, or answer with a [`Reply`] of its own. Kept apart
//! from `plugins` so that `error` and `auth` can build replies without depending on the plugin
//! registry (which depends on them).

use bytes::Bytes;

/// A complete response a plugin wants sent instead of proxying (401, 429, …).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: Bytes,
}

/// The outcome of a request-side hook.
#[derive(Debug)]
pub enum Flow {
    Continue,
    Respond(Reply),
}
