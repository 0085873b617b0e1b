//! What a request is ([`Mode`]), and the reports a subrequest or an inner request hands back
//! to the request it serves. Below `ctx` and the subrequest machinery: it names neither.

use crate::error::GatewayError;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a request is. Set when its context is made (a client request) or adopted in
/// `early_request_filter` (the others); a client request becomes [`Mode::Deferring`] in
/// `request_filter` when its route's answer is taken whole first.
#[derive(Default)]
pub enum Mode {
    /// A request from a client, served as the route says.
    #[default]
    Client,
    /// A client request answered through a subrequest that takes the whole response first
    /// (`subrequest::deferred`): where that subrequest reports.
    Deferring(Slot),
    /// The subrequest of a [`Mode::Deferring`] request: it runs the route's upstream side and
    /// reports to the main request, which records it.
    DeferredBody(Slot),
    /// One call of a composite, as a subrequest on the call's route: where it reports, and
    /// the upstream's name that its cache entries are filed under (instead of the client's
    /// Host).
    CompositeCall {
        report: Slot,
        key_host: Option<Arc<str>>,
    },
    /// The inner request of a cached composite, on the internal socket: it runs the
    /// composite and reports to the outer request, which records it.
    InnerComposite(InnerSlot),
}

impl Mode {
    /// A subrequest (a deferred body or a composite call): where it reports.
    pub fn report(&self) -> Option<&Slot> {
        match self {
            Mode::DeferredBody(s) | Mode::CompositeCall { report: s, .. } => Some(s),
            Mode::Client | Mode::Deferring(_) | Mode::InnerComposite(_) => None,
        }
    }

    /// A subrequest: routing, request plugins and records belong to the request it serves.
    pub fn is_subrequest(&self) -> bool {
        self.report().is_some()
    }

    /// One call of a composite.
    pub fn is_composite_call(&self) -> bool {
        matches!(self, Mode::CompositeCall { .. })
    }

    /// The inner request of a cached composite.
    pub fn is_inner(&self) -> bool {
        matches!(self, Mode::InnerComposite(_))
    }

    /// A request answered through a subrequest: what that subrequest reports.
    pub fn deferring(&self) -> Option<&Slot> {
        match self {
            Mode::Deferring(s) => Some(s),
            _ => None,
        }
    }

    /// The host a composite call's cache entries are filed under.
    pub fn key_host(&self) -> Option<&str> {
        match self {
            Mode::CompositeCall { key_host, .. } => key_host.as_deref(),
            _ => None,
        }
    }
}

/// One upstream call of a sampled trace: span id, target, start and end (Unix ns).
pub type ClientSpan = ([u8; 8], Option<SocketAddr>, u64, Option<u64>);

/// A CLIENT span of a call's try: its upstream and the status the call ended with.
pub type CallSpan = (Arc<str>, u16, ClientSpan);

/// What a subrequest reports back to the request it serves.
#[derive(Default)]
pub struct Report {
    pub target: Option<Arc<crate::upstream::target::TargetState>>,
    pub tries: u32,
    pub tried: smallvec::SmallVec<[SocketAddr; 2]>,
    pub secs: Option<f64>,
    pub cache_status: Option<&'static str>,
    pub failure: Option<GatewayError>,
    pub transform: Option<&'static str>,
    /// Why the subrequest failed, as a composite's call reports it.
    pub call_failure: Option<Failure>,
    /// The CLIENT spans of its tries (sampled traces with span export).
    pub spans: Vec<ClientSpan>,
    /// A cached composite's calls (their CLIENT spans).
    pub call_spans: Vec<CallSpan>,
}

pub type Slot = Arc<Mutex<Option<Report>>>;

/// What the inner request of a cached composite tells the outer one (before it answers).
#[derive(Default)]
pub struct InnerReport {
    pub failure: Option<GatewayError>,
    pub spans: Vec<CallSpan>,
}

pub type InnerSlot = Arc<Mutex<Option<InnerReport>>>;

/// Why a call failed (the `reason` of the partial-failure contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made (refused, unreachable, TLS).
    Connect,
    /// The upstream did not answer in time (connect, read or the call's `timeout`).
    Timeout,
    /// Every target of the upstream is unhealthy.
    Unavailable,
    /// The upstream's circuit breaker is open.
    CircuitOpen,
    /// The connection broke or the upstream answered with a malformed response.
    Upstream,
    /// A status outside `expect`.
    Status(u16),
    /// The answer is not JSON.
    InvalidJson,
    /// The answer is larger than `max_body`.
    TooLarge,
    /// The composite's deadline passed first.
    Deadline,
    /// A required call failed first; this one was cancelled.
    Cancelled,
    /// A call this one reads failed.
    Dependency,
    /// A template of the call has no value.
    Unresolved,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Connect => "connect_error",
            Failure::Timeout => "timeout",
            Failure::Unavailable => "no_healthy_target",
            Failure::CircuitOpen => "circuit_open",
            Failure::Upstream => "upstream_error",
            Failure::Status(_) => "status",
            Failure::InvalidJson => "invalid_json",
            Failure::TooLarge => "too_large",
            Failure::Deadline => "deadline",
            Failure::Cancelled => "cancelled",
            Failure::Dependency => "dependency_failed",
            Failure::Unresolved => "unresolved_template",
        }
    }
}
