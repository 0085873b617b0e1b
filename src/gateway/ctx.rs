//! Pingora's per-request context: the plugin view ([`RequestCtx`]) plus what only the gateway
//! touches, grouped by concern (the upstream attempt, timings and spans, the cache).

use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::observability::metrics::METRICS;
use crate::router::Captures;
use crate::snapshot::{Route, Snapshot};
use crate::upstream::target::{InflightGuard, TargetState};
use http::HeaderValue;
use pingora::Error;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// A deferred response's subrequest: where it reports back to the main request.
    pub(super) sub: Option<super::deferred::Slot>,
    /// A composite's call: the cache files its answers under the upstream's name instead of
    /// the client's Host.
    pub(super) key_host: Option<Arc<str>>,
    /// The copy of this request for the route's mirror, while its body streams.
    pub(super) mirror: Option<Box<crate::upstream::mirror::Capture>>,
    /// Why the route's static fallback answered instead of the upstream (access log).
    pub(super) fallback: Option<&'static str>,
    /// A main request answered through a subrequest: its report.
    pub(super) deferred: Option<super::deferred::Slot>,
    /// A cached composite answered through the internal socket: its handoff.
    pub(super) ticket: Option<super::internal::Ticket>,
    /// The inner request of a cached composite: where it reports (it records nothing itself).
    pub(super) inner: Option<super::internal::InnerSlot>,
    _counted: InFlight,
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
}

/// One upstream call of a sampled trace: span id, target, start and end (Unix ns).
pub(super) type ClientSpan = ([u8; 8], Option<SocketAddr>, u64, Option<u64>);

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
    pub(super) fn new(snap: Arc<Snapshot>, timed: bool) -> Ctx {
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
            sub: None,
            key_host: None,
            deferred: None,
            ticket: None,
            inner: None,
            fallback: None,
            mirror: None,
            _counted: InFlight::new(),
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

/// Requests whose context is alive, in this process (for the exit once a stop is idle).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Requests being served now.
pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::SeqCst)
}

/// Counts a request (and in `postern_http_requests_in_flight`) for as long as its context lives.
struct InFlight;

impl InFlight {
    fn new() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::SeqCst);
        if let Some(m) = METRICS.as_ref() {
            m.in_flight.inc();
        }
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
        if let Some(m) = METRICS.as_ref() {
            m.in_flight.dec();
        }
    }
}
