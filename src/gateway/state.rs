//! What every proxy service of one server shares: whether the process drains, the requests in
//! flight, the handoffs of cached composites and the per-process secret of internal requests.
//! The server (`app`) makes one and hands an `Arc` to each [`super::Gateway`], as Pingora's
//! own services take their state; so two gateways in one process do not share it.

use super::mode::InnerSlot;
use crate::context::RequestCtx;
use crate::observability::metrics::Metrics;
use crate::router::Captures;
use crate::snapshot::Route;
use http::HeaderValue;
use parking_lot::Mutex;
use pingora::http::RequestHeader;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

pub struct ServerState {
    /// The server's metrics (the in-flight gauge).
    metrics: Metrics,
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// The internal socket's path, once its listener is added (at start).
    internal_socket: OnceLock<String>,
    /// Handoffs of the outer requests of cached composites being answered through the
    /// internal socket, by id.
    handoffs: Mutex<HashMap<u64, Arc<InnerHandoff>>>,
    /// Proves that a request on the internal socket, or a call's request head, was made by
    /// this process (random per process).
    secret: String,
}

impl ServerState {
    pub fn new(metrics: &Metrics) -> Arc<ServerState> {
        let bytes: [u8; 16] = rand::random();
        Arc::new(ServerState {
            metrics: metrics.clone(),
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            internal_socket: OnceLock::new(),
            handoffs: Mutex::default(),
            secret: hex(&bytes),
        })
    }

    /// From now on every response closes its client connection (graceful upgrade or stop).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Requests whose context is alive (for the exit once a stop is idle).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Records that this server listens on the internal socket at `path`.
    pub fn listen_internal(&self, path: &str) {
        let _ = self.internal_socket.set(path.to_string());
    }

    /// The internal socket, when it is open (a composite route's `cache` added by a reload to
    /// a process started without it is not applied: those composites are answered uncached).
    pub fn internal_socket(&self) -> Option<&str> {
        self.internal_socket.get().map(String::as_str)
    }

    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// Files an outer request's handoff under a fresh id; the ticket removes it when dropped.
    pub(crate) fn hand_off(self: &Arc<Self>, handoff: InnerHandoff) -> Ticket {
        let report = handoff.report.clone();
        let handoff = Arc::new(handoff);
        let id = loop {
            let id: u64 = rand::random();
            let mut table = self.handoffs.lock();
            if let std::collections::hash_map::Entry::Vacant(e) = table.entry(id) {
                e.insert(handoff);
                break id;
            }
        };
        Ticket {
            id,
            report,
            state: self.clone(),
        }
    }

    /// The handoff a token (`secret.id`) names, while its outer request lives.
    pub(crate) fn handoff(&self, token: &str) -> Option<Arc<InnerHandoff>> {
        let (secret, id) = token.split_once('.')?;
        if secret != self.secret {
            return None;
        }
        let id = u64::from_str_radix(id, 16).ok()?;
        self.handoffs.lock().get(&id).cloned()
    }
}

/// The outer request's state, for its inner request.
pub(crate) struct InnerHandoff {
    pub header: RequestHeader,
    pub req: RequestCtx,
    pub route: Arc<Route>,
    pub captures: Captures,
    pub client_host: Option<HeaderValue>,
    pub report: InnerSlot,
}

/// An outer request's handoff: removed from the table when the request ends.
pub(crate) struct Ticket {
    pub id: u64,
    pub report: InnerSlot,
    state: Arc<ServerState>,
}

impl Ticket {
    /// The token the inner request carries.
    pub fn token(&self) -> String {
        format!("{}.{:016x}", self.state.secret, self.id)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.state.handoffs.lock().remove(&self.id);
    }
}

/// Counts a request (and in `postern_http_requests_in_flight`) for as long as its context
/// lives, and gives the context its server's state.
pub(crate) struct Counted(Arc<ServerState>);

impl Counted {
    pub fn new(state: &Arc<ServerState>) -> Counted {
        state.in_flight.fetch_add(1, Ordering::SeqCst);
        if let Some(m) = &state.metrics {
            m.in_flight.inc();
        }
        Counted(state.clone())
    }
}

impl Counted {
    pub fn state(&self) -> &Arc<ServerState> {
        &self.0
    }
}

impl std::ops::Deref for Counted {
    type Target = ServerState;
    fn deref(&self) -> &ServerState {
        &self.0
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(m) = &self.0.metrics {
            m.in_flight.dec();
        }
    }
}

pub(crate) fn hex(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() * 2);
    push_hex(&mut out, b);
    out
}

pub(crate) fn push_hex(out: &mut String, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for x in b {
        out.push(char::from(DIGITS[usize::from(x >> 4)]));
        out.push(char::from(DIGITS[usize::from(x & 15)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two servers in one process keep their own handoffs, secrets, counts and drain state.
    #[test]
    fn two_servers_share_nothing() {
        let metrics = crate::observability::metrics::Families::new(true);
        let (a, b) = (ServerState::new(&None), ServerState::new(&metrics));
        assert_ne!(a.secret(), b.secret());
        let ticket = a.hand_off(InnerHandoff {
            header: RequestHeader::build("GET", b"/", None).unwrap(),
            req: RequestCtx::default(),
            route: crate::snapshot::testing::route(
                r#"
listeners: [{ addr: "127.0.0.1:0" }]
upstreams: { u: { targets: [{ addr: "127.0.0.1:1" }] } }
routes: [{ name: r, match: { path: /x }, upstream: u }]
"#,
                "r",
            ),
            captures: Captures::default(),
            client_host: None,
            report: InnerSlot::default(),
        });
        let token = ticket.token();
        assert!(a.handoff(&token).is_some());
        assert!(b.handoff(&token).is_none(), "another server's token");
        a.start_draining();
        assert!(a.draining() && !b.draining());
        let _counted = Counted::new(&b);
        assert_eq!((a.in_flight(), b.in_flight()), (0, 1));
        drop(ticket);
        assert!(a.handoff(&token).is_none(), "removed with its ticket");
    }
}
