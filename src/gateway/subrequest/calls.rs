//! One call of a composite, run as a Pingora subrequest on the call's own internal route (the
//! upstream as target, the call's cache as its only plugin): the call uses the upstream's
//! balancing, health, timeouts, retries, TLS and connection pool, and the shared HTTP cache
//! with its coalescing and stale serving, exactly as a proxied request does.
//!
//! Pingora builds a subrequest from the request head bytes of a parsed session; the call's head
//! is written here and parsed once into an in-memory session ([`MemIo`]) so that the subrequest
//! (and a background revalidation Pingora spawns from it) sees the call, not the client's
//! request. The head carries a marker field (`Postern-Call`, with a per-process secret) naming
//! the route and call, so that a background revalidation, which has no handoff, finds its call
//! again; the marker is removed before anything is sent upstream.

use crate::context::{Consumer, RequestCtx};
use crate::gateway::ctx::Ctx;
use crate::gateway::mode::{Failure, Mode, Report, Slot};
use crate::gateway::state::push_hex;
use crate::snapshot::{Route, Snapshot};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method};
use parking_lot::Mutex;
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::protocols::http::ServerSession;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::subrequest::{BodyMode as SubBody, Ctx as SubCtx};
use pingora::proxy::{Session, SubrequestSpawner};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The marker field of a call's request head.
static MARKER: HeaderName = HeaderName::from_static("postern-call");

fn unhex(s: &str) -> Option<String> {
    if s.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// A call as it is sent.
pub(crate) struct CallRequest {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Bytes>,
}

/// The composite's state for one call's subrequest.
pub(crate) struct CallHandoff {
    req: RequestCtx,
    route: Arc<Route>,
    report: Slot,
}

/// What a call's subrequest reports about a failed try, from the error Pingora ended it with.
pub(crate) fn failure_of(e: &pingora::Error) -> Failure {
    use pingora::ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => Failure::Timeout,
        HTTPStatus(504) => Failure::Timeout,
        HTTPStatus(503) => Failure::Unavailable,
        ConnectRefused | ConnectNoRoute | ConnectError | BindError | TLSHandshakeFailure
        | InvalidCert | ConnectProxyFailure | SocketError => Failure::Connect,
        _ => Failure::Upstream,
    }
}

/// A finished call's answer.
pub(crate) struct Answered {
    pub header: Box<ResponseHeader>,
    pub body: Bytes,
    pub report: Option<Report>,
}

/// Runs one call to its end (the caller bounds it in time).
pub(crate) async fn run(
    spawner: &SubrequestSpawner,
    secret: &str,
    call: CallRequest,
    req: RequestCtx,
    route: Arc<Route>,
    max_body: usize,
) -> Result<Answered, Failure> {
    let consumer = req.consumer.as_ref().map(|c| c.name.clone());
    let head = head(&call, secret, &route.name, consumer.as_deref());
    let mut parsed = ServerSession::new_http1(Box::new(MemIo::new(head)));
    if !matches!(parsed.read_request().await, Ok(true)) {
        return Err(Failure::Unresolved);
    }
    let report: Slot = Arc::new(Mutex::new(None));
    let handoff = CallHandoff {
        req,
        route,
        report: report.clone(),
    };
    let sub_ctx = SubCtx::builder()
        .user_ctx(Box::new(Some(handoff)))
        .body_mode(if call.body.is_some() {
            SubBody::ExpectBody
        } else {
            SubBody::NoBody
        })
        .build();
    let (sub, mut handle) = spawner.create_subrequest(&parsed, sub_ctx);
    let received = async move {
        if let Some(b) = call.body {
            if handle.tx.send(HttpTask::Body(Some(b), true)).await.is_err() {
                return Err(Failure::Upstream);
            }
        }
        let mut header = None;
        let mut body = BytesMut::new();
        let mut failed = None;
        while let Some(task) = handle.rx.recv().await {
            match task {
                HttpTask::Header(h, _) if !h.status.is_informational() => header = Some(h),
                HttpTask::Body(Some(d), _) => {
                    if body.len() + d.len() > max_body {
                        return Err(Failure::TooLarge);
                    }
                    body.extend_from_slice(&d);
                }
                HttpTask::Failed(e) => failed = Some(failure_of(&e)),
                _ => {}
            }
        }
        Ok((header, body, failed))
    };
    // The subrequest runs inside this call's future, not as a task of its own: it goes on
    // whenever the composite is polled instead of waiting for a turn of the scheduler (a
    // spawned call started, on median, 0.4 ms late under load), and it is dropped (its
    // upstream connection closed, never pooled) when the composite stops waiting for it.
    let sub = sub.run();
    tokio::pin!(sub, received);
    let mut sub_done = false;
    let (header, body, failed) = loop {
        tokio::select! {
            biased;
            () = &mut sub, if !sub_done => sub_done = true,
            r = &mut received => break r?,
        }
    };
    let report = report.lock().take();
    let reported = report.as_ref().and_then(|r| r.call_failure);
    match (header, failed.or(reported)) {
        (Some(h), None) => Ok(Answered {
            header: h,
            body: body.freeze(),
            report,
        }),
        // An answer of the upstream (or a stale one the cache served after an error).
        (Some(h), Some(_)) if h.status.as_u16() < 500 => Ok(Answered {
            header: h,
            body: body.freeze(),
            report,
        }),
        (_, Some(f)) => Err(f),
        (None, None) => Err(Failure::Upstream),
    }
}

/// The call's request head.
fn head(call: &CallRequest, secret: &str, route: &str, consumer: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(call.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(call.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (n, v) in &call.headers {
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(b) = &call.body {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(b.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let mut marker = String::with_capacity(80);
    marker.push_str(MARKER.as_str());
    marker.push_str(": ");
    marker.push_str(secret);
    marker.push('.');
    push_hex(&mut marker, route.as_bytes());
    marker.push('.');
    push_hex(&mut marker, consumer.unwrap_or("").as_bytes());
    marker.push_str("\r\n\r\n");
    out.extend_from_slice(marker.as_bytes());
    out
}

/// In a subrequest's `early_request_filter`: takes over a call's state. `false` when this is
/// not a call.
pub(crate) fn adopt(session: &mut Session, ctx: &mut Ctx) -> bool {
    let handoff = session
        .subrequest_ctx
        .as_mut()
        .and_then(|c| c.user_ctx_mut())
        .and_then(|u| u.downcast_mut::<Option<CallHandoff>>())
        .and_then(Option::take);
    let marker = session.req_header_mut().remove_header(&MARKER);
    let (req, route, report) = match handoff {
        Some(h) => (h.req, h.route, h.report),
        None => {
            // A background revalidation of a call's cached answer.
            let Some((route, consumer)) =
                marker.and_then(|m| find(&ctx.snap, ctx.server.secret(), m.to_str().ok()?))
            else {
                return false;
            };
            let req = RequestCtx {
                request_id: crate::gateway::forward::request_id(session.req_header()),
                route: route.name.clone(),
                consumer: consumer.map(|name| {
                    Arc::new(Consumer {
                        name,
                        groups: Vec::new(),
                    })
                }),
                ..RequestCtx::default()
            };
            (req, route, Arc::new(Mutex::new(None)))
        }
    };
    ctx.mode = Mode::CompositeCall {
        report,
        key_host: route.upstream().map(|g| g.name.clone()),
    };
    ctx.req = req;
    ctx.route = Some(route);
    true
}

/// The call route a marker names, in the running configuration.
fn find(snap: &Snapshot, secret: &str, marker: &str) -> Option<(Arc<Route>, Option<String>)> {
    let mut parts = marker.split('.');
    let (Some(s), Some(route), Some(consumer)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    if s != secret {
        return None;
    }
    let route = unhex(route)?;
    let consumer = unhex(consumer)?;
    let (composite_name, call) = route.rsplit_once('.')?;
    let call_route = snap
        .routes
        .iter()
        .filter(|r| &*r.name == composite_name)
        .find_map(|r| {
            r.composite()?
                .calls
                .iter()
                .find(|c| &*c.name == call)
                .map(|c| c.route.clone())
        })?;
    Some((call_route, (!consumer.is_empty()).then_some(consumer)))
}

/// An in-memory stream that reads a call's request head once, then waits forever; writes go
/// nowhere (the subrequest answers through its channel).
#[derive(Debug)]
struct MemIo(std::io::Cursor<Vec<u8>>);

impl MemIo {
    fn new(head: Vec<u8>) -> MemIo {
        MemIo(std::io::Cursor::new(head))
    }
}

impl tokio::io::AsyncRead for MemIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.0.position() < self.0.get_ref().len() as u64 {
            Pin::new(&mut self.0).poll_read(cx, buf)
        } else {
            Poll::Pending
        }
    }
}

impl tokio::io::AsyncWrite for MemIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl UniqueID for MemIo {
    fn id(&self) -> UniqueIDType {
        0
    }
}

impl Ssl for MemIo {}

impl GetTimingDigest for MemIo {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for MemIo {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for MemIo {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        None
    }
}

#[async_trait]
impl Peek for MemIo {}

#[async_trait]
impl Shutdown for MemIo {
    async fn shutdown(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        assert_eq!(
            unhex(&crate::gateway::state::hex("order-view.user".as_bytes())).unwrap(),
            "order-view.user"
        );
        assert!(unhex("zz").is_none());
        assert!(unhex("abc").is_none());
    }
}
