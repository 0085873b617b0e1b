//! Pingora's per-request context: the plugin view ([`RequestCtx`]) plus what only the gateway
//! touches, grouped by concern (the upstream attempt, timings and spans, the cache).

use super::mode::{ClientSpan, Mode};
use super::state::{Counted, ServerState, Ticket};
use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::router::Captures;
use crate::snapshot::{Route, Snapshot};
use crate::upstream::target::{InflightGuard, TargetState};
use http::HeaderValue;
use pingora::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub struct Ctx {
    pub req: RequestCtx,
    pub(super) snap: Arc<Snapshot>,
    pub(super) route: Option<Arc<Route>>,
    pub(super) captures: Captures,
    /// The Host the client addressed (see `forward::client_host`).
    pub(super) client_host: Option<HeaderValue>,
    pub(super) attempt: Attempt,
    pub(super) timing: Timing,
    pub(super) cache: CacheState,
    /// The error Postern decided on, rendered by `fail_to_proxy` and named in the access log.
    pub(super) failure: Option<GatewayError>,
    /// Request body bytes read so far (for the route's `max_request_body`).
    pub(super) body_bytes: u64,
    pub(super) bodies: Bodies,
    /// What this request is: a client's, a subrequest of one, or a cached composite's inner
    /// request.
    pub(super) mode: Mode,
    /// The copy of this request for the route's mirror, while its body streams.
    pub(super) mirror: Option<Box<crate::upstream::mirror::Capture>>,
    /// Why the route's static fallback answered instead of the upstream (access log).
    pub(super) fallback: Option<&'static str>,
    /// The server's shared state; counts this request as in flight while the context lives.
    pub(super) server: Counted,
}

/// Body plugins at work on this exchange (all `None` on routes without body plugins).
#[derive(Default)]
pub(super) struct Bodies {
    /// The request body, transformed as it streams (or buffered whole) on its way upstream.
    pub request: Option<super::body::BodyStage>,
    /// The request body, read and transformed before an upstream was chosen; sent in place of
    /// the client's (again on a retry).
    pub request_ready: Option<bytes::Bytes>,
    /// The response body before the cache stores it (plugins listed before `cache`).
    pub stored: Option<super::body::BodyStage>,
    /// The response body as sent to the client.
    pub served: Option<super::body::BodyStage>,
    /// Compression of the response sent (after every body plugin).
    pub encoder: Option<crate::plugins::compression::Encoder>,
}

/// The tries at the upstream.
#[derive(Default)]
pub(super) struct Attempt {
    pub target: Option<Arc<TargetState>>,
    pub inflight: Option<InflightGuard>,
    pub tried: smallvec::SmallVec<[SocketAddr; 2]>,
    /// Attempts made, as `retry.attempts` counts them (a closed pooled connection is not one).
    pub tries: u32,
    /// Tries that failed on a pooled connection the target had already closed.
    pub stale_tries: u32,
    /// The next try opens a new connection instead of taking a pooled one.
    pub fresh: bool,
    pub started: Option<Instant>,
    /// Time to the upstream's response header.
    pub secs: Option<f64>,
    /// The circuit breaker's permission for the current try (upstreams with a breaker).
    pub permit: Option<crate::upstream::breaker::Permit>,
    /// When the current try was sent, for the breaker's slow-call rule.
    pub sent: Option<Instant>,
    /// The tries go to the route's `failover` upstream.
    pub failover: bool,
    /// The upstream of the route's split this request was given (index), and whether the
    /// answer sets the sticky cookie.
    pub split: Option<usize>,
    pub set_cookie: bool,
    /// The next try is the first on the failover upstream: no backoff pause.
    pub switched: bool,
    /// When the first try started (routes with a `deadline`).
    pub first: Option<Instant>,
    /// The pause before the next try, when the upstream said how long (`Retry-After`).
    pub delay: Option<std::time::Duration>,
    /// The current try's outcome was already counted (a status turned into a retry or a
    /// fallback): `error_while_proxy` must not count it again.
    pub counted: bool,
    /// The tries go to the internal socket (a cached composite's miss): the handoff the inner
    /// request takes over, kept for a retry on another connection.
    pub handoff: Option<Ticket>,
}

#[derive(Default)]
pub(super) struct Timing {
    /// Start of the request; `None` when nothing reads durations (no metrics, access log or
    /// span export): each clock read costs about as much as routing a request.
    pub started: Option<Instant>,
    /// Start of the request on the Unix clock (for exported spans).
    pub started_unix: u64,
    pub client_spans: Vec<ClientSpan>,
    /// A composite's calls: the upstream and status of each CLIENT span.
    pub call_spans: Vec<(Arc<str>, u16, ClientSpan)>,
}

#[derive(Default)]
pub(super) struct CacheState {
    /// The client sent `Authorization` (before any plugin stripped it): RFC 9111 §3.5.
    pub had_authorization: bool,
    /// How the cache answered (`HIT`, `MISS`, ...), on cached routes.
    pub status: Option<&'static str>,
    /// The fields of a 304 that revalidated a stored response (merged in
    /// `response_cache_filter`).
    pub not_modified: Option<Box<http::HeaderMap>>,
}

impl Ctx {
    pub(super) fn new(snap: Arc<Snapshot>, timed: bool, server: &Arc<ServerState>) -> Ctx {
        Ctx {
            req: RequestCtx::default(),
            snap,
            route: None,
            captures: Captures::default(),
            client_host: None,
            attempt: Attempt::default(),
            timing: Timing {
                started: timed.then(Instant::now),
                ..Timing::default()
            },
            cache: CacheState::default(),
            failure: None,
            body_bytes: 0,
            bodies: Bodies::default(),
            mode: Mode::Client,
            fallback: None,
            mirror: None,
            server: Counted::new(server),
        }
    }

    /// The Host the client addressed, as text.
    pub(super) fn host(&self) -> Option<&str> {
        self.client_host.as_ref().and_then(|h| h.to_str().ok())
    }

    /// Records Postern's decision and returns the Pingora error that carries it.
    pub(super) fn fail(&mut self, e: GatewayError) -> Box<Error> {
        let p = e.clone().into_pingora();
        self.failure = Some(e);
        p
    }

    /// The upstream the current try goes to: the route's, or its `failover` one.
    pub(super) fn group(&self) -> Option<&Arc<crate::upstream::UpstreamGroup>> {
        let r = self.route.as_ref()?;
        match (self.attempt.failover, self.attempt.split, &r.split) {
            (true, _, _) => r.failover.as_ref(),
            (false, Some(i), Some(s)) => s.choices.get(i).map(|(g, _)| g),
            _ => r.upstream(),
        }
    }

    /// The matched route (every phase after `request_filter` has one).
    pub(super) fn route(&mut self) -> Result<Arc<Route>, Box<Error>> {
        match &self.route {
            Some(r) => Ok(r.clone()),
            None => Err(self.fail(GatewayError::Internal)),
        }
    }
}
