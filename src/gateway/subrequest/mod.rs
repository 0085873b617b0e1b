//! Requests the gateway serves through requests of its own, all reporting back to the request
//! they serve, which alone records metrics and the access-log line:
//!
//! - `deferred`: a route whose served-stage body plugins need the whole response first is
//!   proxied by a Pingora subrequest that hands its complete answer back.
//! - `composite` and `calls`: an `aggregate:` route answers from several calls, each a
//!   subrequest on the call's own route, merged into one JSON document.
//! - `internal`: a composite cached as a whole has the gateway as its upstream, on a Unix
//!   socket; the inner request takes over the outer one's state.
//!
//! What a request is, and the reports, are `super::mode`; the handoff table is in
//! `super::state`. This folder sits above `super::ctx`, which names none of it.

pub(crate) mod calls;
pub(crate) mod composite;
pub(crate) mod deferred;
pub mod internal;
