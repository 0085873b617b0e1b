//! `server.client_header_timeout`: one deadline for a whole request head.
//!
//! Pingora bounds each read of a request head (60 s on a new connection, `keepalive_timeout`
//! between requests) but not the head as a whole, so a client sending one header line every
//! 5 s holds a connection for ever (slowloris). No phase runs before the head is read, so the
//! deadline sits under Pingora, in the client connection itself: [`HeadDeadline`] wraps each
//! accepted stream, starts the clock when a head has to wait for more bytes (at accept, or
//! within a later request's head on a kept-alive connection: a head that arrives in one read
//! never touches a clock), stops it at the blank line that ends the head, and when it passes
//! answers 408 (if any byte of the head arrived) and fails the read.
//!
//! Heads are recognised from the bytes, without parsing HTTP: a head ends at the first empty
//! line; a later one starts with the first read after a response head (`HTTP/1.x`, not 1xx)
//! was written that begins like a request line (`TOKEN `). After a `101` (WebSocket) nothing
//! is timed again, and an HTTP/2 connection ends its one "head" with the preface.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The app of a listener: the proxy, with each accepted stream wrapped in a [`HeadDeadline`].
pub struct WithHeadDeadline<A> {
    pub inner: Arc<A>,
    /// The limit for new connections, from the running configuration.
    pub limit: Arc<dyn Fn() -> Duration + Send + Sync>,
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for WithHeadDeadline<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let wrapped: Stream = Box::new(HeadDeadline::new(stream, (self.limit)()));
        self.inner.process_new(wrapped, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head: the clock runs.
    Head,
    /// Between the end of a head and the next one.
    Message,
    /// After `101 Switching Protocols`: a tunnel, never timed again.
    Tunnel,
}

/// A client connection whose request heads must each arrive within a limit.
#[derive(Debug)]
pub struct HeadDeadline {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    /// Armed at the first read of a head that has to wait: a head that arrives in one read
    /// (nearly all of them) costs no clock read and no timer.
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Bytes of the head read so far (a 408 is sent only to a client that sent some).
    head_bytes: usize,
    /// Length of the current head line, for finding the empty line that ends the head.
    line_len: usize,
    /// A final response head was written since the last head ended.
    answered: bool,
    expired: bool,
}

impl HeadDeadline {
    pub fn new(inner: Stream, limit: Duration) -> HeadDeadline {
        HeadDeadline {
            inner,
            limit,
            phase: Phase::Head,
            timer: None,
            armed: false,
            head_bytes: 0,
            line_len: 0,
            answered: false,
            expired: false,
        }
    }

    fn start_head(&mut self) {
        self.phase = Phase::Head;
        self.head_bytes = 0;
        self.line_len = 0;
        self.answered = false;
        self.armed = false;
    }

    /// Polls the head's deadline, arming it on first use.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.armed {
            let at = Instant::now() + self.limit;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        match &mut self.timer {
            Some(t) => t.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }

    /// Follows the head through newly read bytes; ends it at an empty line.
    fn scan(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Message && self.answered && looks_like_request_line(bytes) {
            self.start_head();
        }
        if self.phase != Phase::Head {
            return;
        }
        // Line by line (memchr finds the LFs): a line with nothing but CRs ends the head.
        // `line_len` carries the non-CR bytes of a line split across reads.
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            let line = &bytes[start..nl];
            if self.line_len == 0 && line.iter().all(|&b| b == b'\r') {
                self.head_bytes += nl + 1;
                self.phase = Phase::Message;
                return;
            }
            self.line_len = 0;
            start = nl + 1;
        }
        self.line_len += bytes[start..].iter().filter(|&&b| b != b'\r').count();
        self.head_bytes += bytes.len();
    }

    /// Notes response heads written: a final one allows the next head, a 101 ends timing.
    fn watch_write(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Tunnel || !bytes.starts_with(b"HTTP/1.") {
            return;
        }
        match bytes.get(9..12) {
            Some(b"101") => self.phase = Phase::Tunnel,
            Some([b'1', ..]) => {}
            Some(_) => self.answered = true,
            None => {}
        }
    }

    /// The deadline passed: a 408 to a client that started a head, then the read fails.
    fn expire(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.expired {
            self.expired = true;
            log::debug!("request head not complete within {:?}", self.limit);
            if self.head_bytes > 0 {
                let answer = crate::error::GatewayError::RequestTimeout.raw_response();
                // Best effort: a few hundred bytes fit any socket buffer of a live connection.
                let _ = Pin::new(&mut self.inner).poll_write(cx, &answer);
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request head not received in time",
        )))
    }
}

/// `METHOD ` at the start: an uppercase token and a space.
fn looks_like_request_line(bytes: &[u8]) -> bool {
    let token = bytes.iter().take_while(|b| b.is_ascii_uppercase()).count();
    token > 0 && bytes.get(token) == Some(&b' ')
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.expired {
            return this.expire(cx);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                if !fresh.is_empty() && this.phase != Phase::Tunnel {
                    this.scan(fresh);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.phase == Phase::Head => match this.poll_deadline(cx) {
                Poll::Ready(()) => this.expire(cx),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.watch_write(buf);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            self.watch_write(first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> HeadDeadline {
        let mock = tokio_test::io::Builder::new().build();
        HeadDeadline::new(Box::new(mock), Duration::from_secs(10))
    }

    #[tokio::test]
    async fn heads_end_at_the_empty_line_and_restart_after_an_answer() {
        let mut s = stream();
        s.scan(b"GET / HTTP/1.1\r\nHost: a\r\n");
        assert_eq!(s.phase, Phase::Head);
        s.scan(b"\r\nbody");
        assert_eq!(s.phase, Phase::Message);
        let mut split = stream();
        split.scan(b"GET / HTTP/1.1\r\nHost: a\r");
        split.scan(b"\n\r");
        assert_eq!(split.phase, Phase::Head);
        split.scan(b"\n");
        assert_eq!(
            split.phase,
            Phase::Message,
            "an empty line split across reads"
        );
        s.scan(b"GET /next HTTP/1.1\r\n");
        assert_eq!(
            s.phase,
            Phase::Message,
            "no answer yet: still the first message"
        );
        s.watch_write(b"HTTP/1.1 100 Continue\r\n\r\n");
        s.scan(b"GET / HTTP/1.1\r\n");
        assert_eq!(s.phase, Phase::Message, "1xx is not an answer");
        s.watch_write(b"HTTP/1.1 200 OK\r\n");
        s.scan(b"\x00binary body");
        assert_eq!(s.phase, Phase::Message, "body bytes after an early answer");
        s.scan(b"POST /x HTTP/1.1\r\n");
        assert_eq!(s.phase, Phase::Head, "the next request");
        s.scan(b"Host: a\n\n");
        assert_eq!(s.phase, Phase::Message, "bare LF line ends count too");
        s.watch_write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert_eq!(s.phase, Phase::Tunnel);
        s.scan(b"GET / HTTP/1.1\r\n");
        assert_eq!(s.phase, Phase::Tunnel);
    }
}
