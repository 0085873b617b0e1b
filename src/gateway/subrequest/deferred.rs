//! Deferred responses: on a route whose response-body plugins need the whole response before
//! anything is sent (fields computed from the body, an error answer instead of a cut body),
//! the request, once its request plugins let it through, is proxied by a Pingora subrequest
//! that runs the route's upstream side (targets, retries, cache, the stored-stage body
//! plugins, the response plugins) and hands back its answer; the served-stage body plugins
//! then see the complete header and body, and the gateway writes the result.
//!
//! The subrequest carries the main request's state ([`Handoff`]): it skips routing and the
//! request plugins (they ran), and reports its upstream facts back for the one access-log
//! line and the metrics, which only the main request records.

use crate::context::RequestCtx;
use crate::error::GatewayError;
use crate::gateway::body::{self, BodyStage};
use crate::gateway::ctx::Ctx;
use crate::gateway::mode::{Failure, Mode, Report, Slot};
use crate::plugins::{BodyMode, Oversize, Plugin};
use crate::router::Captures;
use crate::snapshot::Route;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::HttpTask;
use pingora::proxy::subrequest::{BodyMode as SubBody, Ctx as SubCtx};
use pingora::proxy::Session;
use std::sync::Arc;

/// The main request's state, for its subrequest.
pub(crate) struct Handoff {
    /// The request as the main request's plugins left it (Pingora builds a subrequest from the
    /// client's original bytes).
    header: Box<RequestHeader>,
    req: RequestCtx,
    route: Arc<Route>,
    captures: Captures,
    client_host: Option<HeaderValue>,
    request_stage: Option<BodyStage>,
    report: Slot,
}

/// Whether this request is answered through a deferred response.
pub(crate) fn applies(session: &Session, ctx: &Ctx) -> bool {
    ctx.route.as_ref().is_some_and(|r| r.chain.defers())
        && session.subrequest_spawner.is_some()
        && !ctx.req.conn.http2
        && !session.is_upgrade_req()
}

/// In a subrequest's `early_request_filter`: takes over the main request's state. `false`
/// when this is not a deferred subrequest (e.g. a background cache refresh).
pub(crate) fn adopt(session: &mut Session, ctx: &mut Ctx) -> bool {
    let Some(h) = session
        .subrequest_ctx
        .as_mut()
        .and_then(|c| c.user_ctx_mut())
        .and_then(|u| u.downcast_mut::<Option<Handoff>>())
        .and_then(Option::take)
    else {
        return false;
    };
    *session.req_header_mut() = *h.header;
    ctx.req = h.req;
    ctx.route = Some(h.route);
    ctx.captures = h.captures;
    ctx.client_host = h.client_host;
    ctx.bodies.request = h.request_stage;
    ctx.mode = Mode::DeferredBody(h.report);
    true
}

/// In a subrequest's `logging`: what the main request needs to record.
pub(crate) fn report(ctx: &mut Ctx, slot: &Slot, e: Option<&pingora::Error>) {
    use super::calls::failure_of;
    use crate::gateway::mode::Failure;
    let call_failure = match (&ctx.failure, e) {
        (Some(GatewayError::NoHealthyTarget), _) => Some(Failure::Unavailable),
        (Some(GatewayError::CircuitOpen { .. }), _) => Some(Failure::CircuitOpen),
        (_, Some(e)) => Some(failure_of(e)),
        (Some(GatewayError::UpstreamTimeout), None) => Some(Failure::Timeout),
        (Some(_), None) => Some(Failure::Upstream),
        (None, None) => None,
    };
    *slot.lock() = Some(Report {
        call_failure,
        spans: std::mem::take(&mut ctx.timing.client_spans),
        call_spans: std::mem::take(&mut ctx.timing.call_spans),
        target: ctx.attempt.target.clone(),
        tries: ctx.attempt.tries,
        tried: std::mem::take(&mut ctx.attempt.tried),
        secs: ctx.attempt.secs,
        cache_status: ctx.cache.status,
        failure: ctx.failure.take(),
        transform: ctx.req.transform,
    });
}

/// In the main request's `logging`: the subrequest's upstream facts.
pub(crate) fn merge_report(ctx: &mut Ctx) {
    let Some(r) = ctx.mode.deferring().and_then(|s| s.lock().take()) else {
        return;
    };
    ctx.attempt.target = r.target;
    ctx.attempt.tries = r.tries;
    ctx.attempt.tried = r.tried;
    if !r.call_spans.is_empty() {
        ctx.timing.call_spans = r.call_spans;
    }
    ctx.attempt.secs = r.secs;
    ctx.cache.status = ctx.cache.status.or(r.cache_status);
    if ctx.failure.is_none() {
        ctx.failure = r.failure;
    }
    ctx.req.transform = ctx.req.transform.or(r.transform);
}

/// Serves the request through a subrequest; `Ok(true)`: the response was written.
pub(crate) async fn serve(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
    let route = ctx.route()?;
    let ready = ctx.bodies.request_ready.take();
    if let Some(r) = &ready {
        let req = session.req_header_mut();
        req.remove_header(&http::header::TRANSFER_ENCODING);
        req.insert_header(http::header::CONTENT_LENGTH, r.len().to_string())?;
    }
    let has_body = ready.is_some() || !session.as_downstream_mut().is_body_done();
    let slot: Slot = Arc::default();
    let handoff = Handoff {
        header: Box::new(session.req_header().clone()),
        req: ctx.req.clone(),
        route: route.clone(),
        captures: ctx.captures.clone(),
        client_host: ctx.client_host.clone(),
        request_stage: ctx.bodies.request.take(),
        report: slot.clone(),
    };
    ctx.mode = Mode::Deferring(slot);
    let sub_ctx = SubCtx::builder()
        .user_ctx(Box::new(Some(handoff)))
        .body_mode(if has_body {
            SubBody::ExpectBody
        } else {
            SubBody::NoBody
        })
        .build();
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Err(ctx.fail(GatewayError::Internal));
    };
    let (sub, mut handle) = spawner.create_subrequest(&session.downstream_session, sub_ctx);
    tokio::spawn(sub.run());
    let mut out = Output::new(route.chain.response_body(false));
    let mut sending = has_body;
    let mut ready = ready;
    loop {
        tokio::select! {
            task = handle.rx.recv() => match task {
                Some(t) => out.task(t, session, ctx).await?,
                None => break,
            },
            permit = handle.tx.reserve(), if sending => {
                let Ok(permit) = permit else {
                    sending = false;
                    continue;
                };
                let (chunk, end) = match ready.take() {
                    Some(r) => (Some(r), true),
                    None => {
                        let c = session.as_downstream_mut().read_request_body().await?;
                        let end = c.is_none() || session.as_downstream_mut().is_body_done();
                        (c, end)
                    }
                };
                sending = !end;
                permit.send(HttpTask::Body(chunk, end));
            }
        }
    }
    out.end(session, ctx).await?;
    if !session.as_downstream_mut().is_body_done() {
        session.set_keepalive(None);
    }
    Ok(true)
}

enum State {
    /// No header yet.
    Waiting,
    /// Taking the body whole for these plugins.
    Collecting {
        header: Box<ResponseHeader>,
        takers: Vec<Arc<dyn Plugin>>,
        buf: BytesMut,
        limit: usize,
    },
    /// Header written: the body streams through.
    Streaming,
    Done,
}

struct Output<'a> {
    candidates: &'a [Arc<dyn Plugin>],
    head: bool,
    state: State,
}

impl<'a> Output<'a> {
    fn new(candidates: &'a [Arc<dyn Plugin>]) -> Output<'a> {
        Output {
            candidates,
            head: false,
            state: State::Waiting,
        }
    }

    async fn task(
        &mut self,
        t: HttpTask,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        match t {
            HttpTask::Header(h, end) => self.header(h, end, session, ctx).await,
            HttpTask::Body(data, end) | HttpTask::UpgradedBody(data, end) => {
                self.body(data, end, session, ctx).await
            }
            HttpTask::Done => self.end(session, ctx).await,
            HttpTask::Failed(e) => {
                self.state = State::Done;
                Err(e)
            }
            HttpTask::Trailer(_) => Ok(()),
        }
    }

    async fn header(
        &mut self,
        mut h: Box<ResponseHeader>,
        end: bool,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if h.status.is_informational() || !matches!(self.state, State::Waiting) {
            return Ok(());
        }
        self.head = session.req_header().method == http::Method::HEAD;
        let takers = body::response_takers(
            self.candidates,
            self.head,
            &mut h,
            &mut ctx.req,
            &ctx.snap.metrics,
        );
        let limit = BodyStage::limit_of(&takers);
        let oversize = BodyStage::oversize_of(&takers);
        let known_over = body::content_length(&h).is_some_and(|l| l > limit);
        if known_over && oversize == Oversize::Error {
            ctx.req
                .transform_failed(&ctx.snap.metrics, "response", "oversize");
            return Err(ctx.fail(GatewayError::BadGateway));
        }
        if takers.is_empty() || known_over || end {
            if known_over {
                ctx.req
                    .transform_failed(&ctx.snap.metrics, "response", "oversize");
            }
            return self.write_header(h, end, session, ctx).await;
        }
        self.state = State::Collecting {
            header: h,
            takers,
            buf: BytesMut::new(),
            limit,
        };
        Ok(())
    }

    async fn write_header(
        &mut self,
        mut h: Box<ResponseHeader>,
        end: bool,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        if !end {
            crate::gateway::response::start_compression(session.req_header(), &mut h, ctx);
        }
        ctx.req.status = Some(h.status.as_u16());
        session.write_response_header(h, end).await?;
        self.state = if end { State::Done } else { State::Streaming };
        Ok(())
    }

    async fn body(
        &mut self,
        data: Option<Bytes>,
        end: bool,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        match &mut self.state {
            State::Streaming => {
                let mut data = data;
                crate::gateway::response::compress(ctx, &mut data, end);
                session.write_response_body(data, end).await?;
                if end {
                    self.state = State::Done;
                }
                Ok(())
            }
            State::Collecting {
                buf, limit, takers, ..
            } => {
                if let Some(d) = data {
                    buf.extend_from_slice(&d);
                }
                if buf.len() > *limit {
                    let oversize = BodyStage::oversize_of(takers);
                    return self.over_limit(oversize, end, session, ctx).await;
                }
                if end {
                    return self.end(session, ctx).await;
                }
                Ok(())
            }
            State::Waiting | State::Done => Ok(()),
        }
    }

    async fn over_limit(
        &mut self,
        oversize: Oversize,
        end: bool,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> pingora::Result<()> {
        ctx.req
            .transform_failed(&ctx.snap.metrics, "response", "oversize");
        let State::Collecting { header, buf, .. } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Ok(());
        };
        if oversize == Oversize::Error {
            return Err(ctx.fail(GatewayError::BadGateway));
        }
        log::warn!(
            "route {}: response body above the transform limit passed through untransformed",
            ctx.req.route
        );
        self.write_header(header, false, session, ctx).await?;
        let mut data = Some(buf.freeze());
        crate::gateway::response::compress(ctx, &mut data, end);
        session.write_response_body(data, end).await?;
        self.state = if end { State::Done } else { State::Streaming };
        Ok(())
    }

    /// The end of the subrequest's answer: the collected response through the plugins, then
    /// written; a 502 when no answer came at all.
    async fn end(&mut self, session: &mut Session, ctx: &mut Ctx) -> pingora::Result<()> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Collecting {
                header,
                takers,
                buf,
                ..
            } => {
                let body = buf.freeze();
                crate::observability::metrics::body_buffered(&ctx.snap.metrics, body.len());
                write_whole(session, ctx, header, body, &takers).await
            }
            State::Waiting => {
                // The subrequest failed: its reason, for the error or the route's fallback.
                let failure = ctx.mode.deferring().and_then(|s| {
                    let r = s.lock();
                    let r = r.as_ref()?;
                    r.failure.clone().or(match r.call_failure? {
                        Failure::Timeout => Some(GatewayError::UpstreamTimeout),
                        Failure::Unavailable => Some(GatewayError::NoHealthyTarget),
                        Failure::CircuitOpen => Some(GatewayError::CircuitOpen { retry_after: 1 }),
                        _ => None,
                    })
                });
                Err(ctx.fail(failure.unwrap_or(GatewayError::BadGateway)))
            }
            State::Streaming => {
                let mut data = None;
                crate::gateway::response::compress(ctx, &mut data, true);
                session.write_response_body(data, true).await?;
                Ok(())
            }
            State::Done => Ok(()),
        }
    }
}

/// Writes a complete response after the body plugins that took it (`on_whole_response`), with
/// an exact `Content-Length`, compressed when the route and the client say so.
pub(crate) async fn write_whole(
    session: &mut Session,
    ctx: &mut Ctx,
    mut header: Box<ResponseHeader>,
    mut body: Bytes,
    takers: &[Arc<dyn Plugin>],
) -> pingora::Result<()> {
    for p in takers {
        p.on_whole_response(&mut header, &mut body, &mut ctx.req)
            .map_err(|e| ctx.fail(e))?;
    }
    if !takers.is_empty() {
        body::changed_body_header(&mut header);
    }
    header.remove_header(&http::header::TRANSFER_ENCODING);
    header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    crate::gateway::response::start_compression(session.req_header(), &mut header, ctx);
    ctx.req.status = Some(header.status.as_u16());
    session.write_response_header(header, false).await?;
    let mut data = Some(body);
    crate::gateway::response::compress(ctx, &mut data, true);
    session.write_response_body(data, true).await?;
    Ok(())
}

/// The buffer limit of whole-body plugins (1 MiB when only chunk plugins take the body).
impl BodyStage {
    pub(crate) fn limit_of(takers: &[Arc<dyn Plugin>]) -> usize {
        takers
            .iter()
            .filter_map(|p| match p.body_mode() {
                BodyMode::Whole { max } => Some(max),
                BodyMode::Chunks => None,
            })
            .min()
            .unwrap_or(1 << 20)
    }

    pub(crate) fn oversize_of(takers: &[Arc<dyn Plugin>]) -> Oversize {
        if takers.iter().any(|p| p.oversize() == Oversize::Error) {
            Oversize::Error
        } else {
            Oversize::Pass
        }
    }
}
