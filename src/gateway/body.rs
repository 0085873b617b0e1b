//! Body hooks of a route's plugins, for one request or one response: which plugins take this
//! body (decided on the header), the header of a changed body, and buffering for plugins that
//! need the whole body. A route without body plugins never gets here: its bodies stream
//! through untouched and uncopied.

use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::plugins::{BodyMode, Oversize, Plugin};
use bytes::{Bytes, BytesMut};
use http::header;
use pingora::http::ResponseHeader;
use std::sync::Arc;

/// Which side of the exchange, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Request,
    Response,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Request => "request",
            Side::Response => "response",
        }
    }
}

/// The body plugins at work on one body.
pub(super) struct BodyStage {
    side: Side,
    plugins: Vec<Arc<dyn Plugin>>,
    /// The buffer limit when a plugin needs the whole body.
    whole: Option<usize>,
    oversize: Oversize,
    buf: BytesMut,
    /// Over the limit with `Oversize::Pass`: the rest streams through untouched.
    passing: bool,
    /// Counts buffered bytes and bodies left untransformed.
    metrics: crate::observability::metrics::Metrics,
}

impl BodyStage {
    /// The stage for `plugins` that take this body, or `None` when none does.
    pub(super) fn new(
        side: Side,
        plugins: Vec<Arc<dyn Plugin>>,
        metrics: &crate::observability::metrics::Metrics,
    ) -> Option<BodyStage> {
        if plugins.is_empty() {
            return None;
        }
        let whole = plugins
            .iter()
            .any(|p| matches!(p.body_mode(), BodyMode::Whole { .. }))
            .then(|| BodyStage::limit_of(&plugins));
        let oversize = BodyStage::oversize_of(&plugins);
        Some(BodyStage {
            side,
            plugins,
            whole,
            oversize,
            buf: BytesMut::new(),
            passing: false,
            metrics: metrics.clone(),
        })
    }

    pub(super) fn limit(&self) -> Option<usize> {
        self.whole
    }

    pub(super) fn oversize(&self) -> Oversize {
        self.oversize
    }

    /// Starts over (a retried request sends its body again).
    pub(super) fn reset(&mut self) {
        self.buf.clear();
        self.passing = false;
    }

    /// Runs on one chunk. While a whole body is being buffered the chunk is replaced by `hold`
    /// (`Some(empty)` on the request side, where `None` would end the upstream body; `None` on
    /// the response side).
    pub(super) fn filter(
        &mut self,
        body: &mut Option<Bytes>,
        eos: bool,
        ctx: &mut RequestCtx,
        hold: Option<Bytes>,
    ) -> Result<(), GatewayError> {
        if self.passing {
            return Ok(());
        }
        let Some(max) = self.whole else {
            let Some(chunk) = body.as_mut() else {
                return Ok(());
            };
            return self
                .plugins
                .iter()
                .try_for_each(|p| self.run(p, chunk, eos, ctx));
        };
        if let Some(chunk) = body.take() {
            if eos && self.buf.is_empty() && chunk.len() <= max {
                // The whole body in one piece: no copy.
                crate::observability::metrics::body_buffered(&self.metrics, chunk.len());
                *body = Some(self.whole_body(chunk, ctx)?);
                return Ok(());
            }
            self.buf.extend_from_slice(&chunk);
        }
        if self.buf.len() > max {
            return self.over_limit(body, max, ctx);
        }
        if !eos {
            *body = hold;
            return Ok(());
        }
        let original = self.buf.split().freeze();
        crate::observability::metrics::body_buffered(&self.metrics, original.len());
        *body = Some(self.whole_body(original, ctx)?);
        Ok(())
    }

    fn run(
        &self,
        p: &Arc<dyn Plugin>,
        chunk: &mut Bytes,
        eos: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        match self.side {
            Side::Request => p.on_request_body(chunk, eos, ctx),
            Side::Response => p.on_response_body(chunk, eos, ctx),
        }
    }

    /// The whole body through every plugin, in order.
    fn whole_body(&self, original: Bytes, ctx: &mut RequestCtx) -> Result<Bytes, GatewayError> {
        let mut body = original;
        for p in &self.plugins {
            self.run(p, &mut body, true, ctx)?;
        }
        Ok(body)
    }

    fn over_limit(
        &mut self,
        body: &mut Option<Bytes>,
        max: usize,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        ctx.transform_failed(&self.metrics, self.side.name(), "oversize");
        if self.side == Side::Request {
            return Err(GatewayError::PayloadTooLarge);
        }
        match self.oversize {
            Oversize::Pass => {
                log::warn!(
                    "route {}: response body above {max} bytes passed through untransformed",
                    ctx.route
                );
                self.passing = true;
                *body = Some(self.buf.split().freeze());
                Ok(())
            }
            Oversize::Error => Err(GatewayError::BadGateway),
        }
    }
}

/// The response plugins of `candidates` that take this response, or none when the response
/// cannot carry a changed body: HEAD, 1xx, 204, 304, a tunnel, HTTP/2 (gRPC) or a body still
/// encoded (`Content-Encoding`; body routes ask upstreams for `identity`).
pub(super) fn response_takers(
    candidates: &[Arc<dyn Plugin>],
    head_request: bool,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
    metrics: &crate::observability::metrics::Metrics,
) -> Vec<Arc<dyn Plugin>> {
    let status = resp.status.as_u16();
    let encoded = resp
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if status < 200 || status == 204 || status == 304 || ctx.conn.http2 {
        return Vec::new();
    }
    if encoded {
        if !head_request {
            ctx.transform_failed(metrics, "response", "encoded");
        }
        return Vec::new();
    }
    if head_request {
        // No body to change, but the header must not promise the upstream's bytes: a GET
        // would get another length and a weak ETag.
        if candidates.iter().any(|p| p.takes_response_body(resp, ctx)) {
            describe_changed_body(resp);
        }
        return Vec::new();
    }
    candidates
        .iter()
        .filter(|p| p.takes_response_body(resp, ctx))
        .cloned()
        .collect()
}

/// The header of a body about to change: no length (chunked instead), a weak `ETag`, and none
/// of the fields that describe the old bytes.
pub(super) fn changed_body_header(resp: &mut ResponseHeader) {
    describe_changed_body(resp);
    let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
}

/// What `changed_body_header` does but the framing (also for a HEAD answer, which has none).
fn describe_changed_body(resp: &mut ResponseHeader) {
    resp.remove_header(&header::CONTENT_LENGTH);
    for name in ["content-md5", "digest", "content-digest", "repr-digest"] {
        resp.remove_header(name);
    }
    resp.remove_header(&header::ACCEPT_RANGES);
    if let Some(tag) = resp.headers.get(header::ETAG).cloned() {
        if !tag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(tag.as_bytes());
            if let Ok(v) = http::HeaderValue::from_bytes(&weak) {
                let _ = resp.insert_header(header::ETAG, v);
            }
        }
    }
}

/// The declared length of a response, if any.
pub(super) fn content_length(resp: &ResponseHeader) -> Option<usize> {
    resp.headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
