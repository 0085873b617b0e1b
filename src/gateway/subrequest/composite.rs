//! A composite route's request: its calls run as a DAG of subrequests (`calls`), bounded by the
//! composite's deadline; the partial-failure contract decides the answer; the shaped answers
//! are merged and written through the route's response plugins.
//!
//! The contract: a failed required call ends the composite with 502 problem+json (504 when the
//! deadline passed) listing each failed call and its reason, and cancels the calls still
//! running; a failed optional call is left out (or replaced by its fallback) and the answer is
//! 200 with `Postern-Complete: ?0` (`?1` when every call succeeded).

use super::calls::{self, CallRequest};
use crate::aggregate::merge::{self, Shaped};
use crate::aggregate::template::{Answer, Scope};
use crate::error::{CallError, GatewayError};
use crate::gateway::ctx::Ctx;
use crate::gateway::mode::{CallSpan, Failure, Mode};
use crate::snapshot::composite::{CallSpec, Composite};
use crate::transform::lazy::Node;
use crate::transform::template::Inputs;
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http::{HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::Value;
use std::time::Instant;

static COMPLETE: HeaderName = HeaderName::from_static("postern-complete");

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done,
    Failed(Failure),
}

/// Serves a composite route's request; `Ok(true)`: the response was written.
pub(crate) async fn serve(session: &mut Session, ctx: &mut Ctx) -> pingora::Result<bool> {
    let route = ctx.route()?;
    let Some(comp) = route.composite().cloned() else {
        return Err(ctx.fail(GatewayError::Internal));
    };
    let client_body = if comp.reads_body {
        Some(read_json_body(session, ctx, route.max_body).await?)
    } else {
        if !session.is_body_empty() {
            session.set_keepalive(None);
        }
        None
    };
    let base = base_headers(session, ctx);
    let inputs = Inputs::capture(session.req_header(), &comp.template_headers);
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Err(ctx.fail(GatewayError::Internal));
    };
    let run = Run {
        secret: ctx.server.secret(),
        comp: &comp,
        req: session.req_header(),
        base,
        inputs,
        client_body,
    };
    let (states, shaped, spans) = run.calls(spawner, &ctx.req).await;
    ctx.timing.call_spans = spans;
    let complete = states.iter().all(|s| *s == State::Done);
    let errors: Vec<CallError> = comp
        .calls
        .iter()
        .zip(&states)
        .filter_map(|(c, s)| match s {
            State::Failed(f) => Some(CallError {
                call: c.name.to_string(),
                reason: f.reason(),
                status: match f {
                    Failure::Status(s) => Some(*s),
                    _ => None,
                },
            }),
            _ => None,
        })
        .collect();
    let required_failed = comp
        .calls
        .iter()
        .zip(&states)
        .any(|(c, s)| !c.optional && matches!(s, State::Failed(_)));
    if required_failed {
        let timed_out = comp
            .calls
            .iter()
            .zip(&states)
            .any(|(c, s)| !c.optional && *s == State::Failed(Failure::Deadline));
        let failure = GatewayError::Composite { timed_out, errors };
        report_inner(ctx, Some(failure.clone()));
        return Err(ctx.fail(failure));
    }
    report_inner(ctx, None);
    let body = merged(&comp, &states, shaped, &errors);
    respond(session, ctx, &comp, body, complete)
        .await
        .map(|()| true)
}

/// The inner request of a cached composite tells the outer one how it went, before it answers.
fn report_inner(ctx: &mut Ctx, failure: Option<GatewayError>) {
    if let Mode::InnerComposite(slot) = &ctx.mode {
        *slot.lock() = Some(crate::gateway::mode::InnerReport {
            failure,
            spans: std::mem::take(&mut ctx.timing.call_spans),
        });
    }
}

/// The shaped answers merged, with `_errors` when asked for and some call failed.
fn merged(
    comp: &Composite,
    states: &[State],
    shaped: Vec<Option<Shaped>>,
    errors: &[CallError],
) -> Bytes {
    let parts: Vec<Shaped> = comp
        .calls
        .iter()
        .zip(states)
        .zip(shaped)
        .filter_map(|((c, s), a)| match (s, a) {
            (State::Done, Some(a)) => Some(a),
            (State::Failed(_), _) => c
                .fallback
                .as_ref()
                .map(|f| Shaped::of_value(f, &c.name, c.group.as_deref())),
            _ => None,
        })
        .collect();
    let errors = (comp.include_errors && !errors.is_empty()).then(|| serde_json::json!(errors));
    Bytes::from(merge::merge(
        &parts,
        errors.as_ref().map(|e| ("_errors", e)),
    ))
}

/// Writes the merged answer: through the route's response plugins, or as it is for the outer
/// request of a cached composite (which runs them).
async fn respond(
    session: &mut Session,
    ctx: &mut Ctx,
    comp: &Composite,
    body: Bytes,
    complete: bool,
) -> pingora::Result<()> {
    let route = ctx.route()?;
    let mut h = ResponseHeader::build(200, Some(5))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(&COMPLETE, if complete { "?1" } else { "?0" })?;
    if let Some(v) = &comp.vary {
        h.insert_header(http::header::VARY, v)?;
    }
    if let Some(id) = ctx.req.request_id.header_value() {
        h.insert_header(crate::gateway::forward::REQUEST_ID, id)?;
    }
    ctx.req.status = Some(200);
    let head = session.req_header().method == http::Method::HEAD;
    if ctx.mode.is_inner() {
        h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        session.write_response_header(Box::new(h), head).await?;
        if !head {
            session.write_response_body(Some(body), true).await?;
        }
        return Ok(());
    }
    route
        .chain
        .on_response(&mut h, &mut ctx.req)
        .map_err(|e| ctx.fail(e))?;
    let takers = crate::gateway::body::response_takers(
        route.chain.response_body(false),
        head,
        &mut h,
        &mut ctx.req,
        &ctx.snap.metrics,
    );
    if head {
        h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        session.write_response_header(Box::new(h), true).await?;
        return Ok(());
    }
    super::deferred::write_whole(session, ctx, Box::new(h), body, &takers).await
}

/// The client's JSON body (for call bodies that read it): 413 above the route's limit, 400
/// when it is not JSON.
async fn read_json_body(session: &mut Session, ctx: &mut Ctx, max: u64) -> pingora::Result<Value> {
    let mut all = bytes::BytesMut::new();
    while let Some(chunk) = session.as_downstream_mut().read_request_body().await? {
        if (all.len() + chunk.len()) as u64 > max {
            return Err(ctx.fail(GatewayError::PayloadTooLarge));
        }
        all.extend_from_slice(&chunk);
    }
    if all.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&all).map_err(|e| {
        ctx.fail(GatewayError::InvalidBody(format!(
            "The request body is not valid JSON (line {}, column {}).",
            e.line(),
            e.column()
        )))
    })
}

/// The fields every call carries: Host, the forwarding fields and the request id.
fn base_headers(session: &Session, ctx: &Ctx) -> Vec<(HeaderName, HeaderValue)> {
    let req = session.req_header();
    let mut out = Vec::with_capacity(8);
    if let Some(h) = ctx.client_host.clone() {
        out.push((http::header::HOST, h));
    }
    let fields = crate::gateway::forward::forwarding_fields(
        req,
        &ctx.req,
        ctx.client_host.as_ref(),
        &ctx.snap.limits.forwarded,
    );
    out.extend(fields.into_iter().map(|(n, v)| (n.clone(), v)));
    out.push((
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    ));
    out
}

/// One composite's run.
struct Run<'a> {
    /// The server's secret, for the calls' marker fields.
    secret: &'a str,
    comp: &'a Composite,
    req: &'a pingora::http::RequestHeader,
    base: Vec<(HeaderName, HeaderValue)>,
    inputs: Inputs,
    client_body: Option<Value>,
}

impl Run<'_> {
    /// Runs the calls as their references allow, until all ended, a required one failed or the
    /// deadline passed.
    async fn calls(
        &self,
        spawner: &pingora::proxy::SubrequestSpawner,
        req: &crate::context::RequestCtx,
    ) -> (Vec<State>, Vec<Option<Shaped>>, Vec<CallSpan>) {
        let calls = &self.comp.calls;
        let mut spans = Vec::new();
        let mut shaped: Vec<Option<Shaped>> = vec![None; calls.len()];
        let mut states = vec![State::Waiting; calls.len()];
        let mut answers: Vec<Option<Answer>> = vec![None; calls.len()];
        let deadline = tokio::time::Instant::now() + self.comp.deadline;
        let mut running = FuturesUnordered::new();
        loop {
            // Start what can start (a failure may make later calls fail at once: repeat).
            let mut changed = true;
            while changed {
                changed = false;
                for (i, c) in calls.iter().enumerate() {
                    if states[i] != State::Waiting {
                        continue;
                    }
                    if c.deps
                        .iter()
                        .any(|d| matches!(states[*d], State::Failed(_)))
                    {
                        states[i] = State::Failed(Failure::Dependency);
                        changed = true;
                        continue;
                    }
                    if !c.deps.iter().all(|d| states[*d] == State::Done) {
                        continue;
                    }
                    changed = true;
                    match self.request(c, req, &answers) {
                        Ok(call) => {
                            states[i] = State::Running;
                            running.push(one(spawner, self.secret, c, call, req.clone(), i));
                        }
                        Err(f) => states[i] = State::Failed(f),
                    }
                }
            }
            if self.required_failed(&states) || running.is_empty() {
                break;
            }
            tokio::select! {
                Some((i, result, secs, tries)) = running.next() => {
                    let c = &calls[i];
                    spans.extend(tries);
                    match result {
                        Ok((a, s)) => {
                            c.metrics.observe(None, secs);
                            answers[i] = Some(a);
                            shaped[i] = Some(s);
                            states[i] = State::Done;
                        }
                        Err(f) => {
                            c.metrics.observe(Some(f.reason()), secs);
                            states[i] = State::Failed(f);
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    for (i, s) in states.iter_mut().enumerate() {
                        if matches!(s, State::Running | State::Waiting) {
                            calls[i].metrics.observe(Some("deadline"), self.comp.deadline.as_secs_f64());
                            *s = State::Failed(Failure::Deadline);
                        }
                    }
                    break;
                }
            }
        }
        // Dropping `running` aborts the calls still under way.
        for s in states.iter_mut() {
            if matches!(s, State::Running | State::Waiting) {
                *s = State::Failed(Failure::Cancelled);
            }
        }
        (states, shaped, spans)
    }

    fn required_failed(&self, states: &[State]) -> bool {
        self.comp
            .calls
            .iter()
            .zip(states)
            .any(|(c, s)| !c.optional && matches!(s, State::Failed(_)))
    }

    /// The call's request, its templates written.
    fn request(
        &self,
        c: &CallSpec,
        req: &crate::context::RequestCtx,
        answers: &[Option<Answer>],
    ) -> Result<CallRequest, Failure> {
        let scope = Scope {
            req,
            inputs: &self.inputs,
            client_body: self.client_body.as_ref(),
            calls: answers,
        };
        let unresolved = |e: crate::aggregate::template::Unresolved| {
            log::debug!("route {}: call {}: {}", req.route, c.name, e.0);
            Failure::Unresolved
        };
        let path = c.path.render_url(&scope).map_err(unresolved)?;
        let mut headers = self.base.clone();
        for name in &c.pass_headers {
            for v in self.req.headers.get_all(name) {
                headers.push((name.clone(), v.clone()));
            }
        }
        for (name, t) in &c.headers {
            let v = t.render_plain(&scope).map_err(unresolved)?;
            let v = HeaderValue::from_str(&v).map_err(|_| Failure::Unresolved)?;
            headers.push((name.clone(), v));
        }
        let body = match &c.body {
            Some(b) => {
                headers.push((
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ));
                Some(Bytes::from(
                    b.render(&scope).map_err(unresolved)?.to_string(),
                ))
            }
            None => None,
        };
        Ok(CallRequest {
            method: c.method.clone(),
            path,
            headers,
            body,
        })
    }
}

/// One call, bounded by its timeout, its answer checked against the contract.
async fn one(
    spawner: &pingora::proxy::SubrequestSpawner,
    secret: &str,
    c: &CallSpec,
    call: CallRequest,
    req: crate::context::RequestCtx,
    i: usize,
) -> (usize, Result<(Answer, Shaped), Failure>, f64, Vec<CallSpan>) {
    let started = Instant::now();
    let run = calls::run(spawner, secret, call, req, c.route.clone(), c.max_body);
    let result = match c.timeout {
        Some(t) => tokio::time::timeout(t, run)
            .await
            .unwrap_or(Err(Failure::Timeout)),
        None => run.await,
    };
    let mut spans = Vec::new();
    let result = result.and_then(|mut a| {
        let status = a.header.status.as_u16();
        if let Some(r) = a.report.as_mut() {
            if let Some(cache) = r.cache_status {
                c.route.cache_metrics.observe(cache);
            }
            let upstream = c
                .route
                .upstream()
                .map(|g| g.name.clone())
                .unwrap_or_default();
            spans.extend(r.spans.drain(..).map(|s| (upstream.clone(), status, s)));
        }
        if !c.expects(status) {
            return Err(Failure::Status(status));
        }
        let text = std::str::from_utf8(&a.body).map_err(|_| Failure::InvalidJson)?;
        let node = if text.trim().is_empty() {
            Node::Val(Value::Null)
        } else {
            Node::parse_guided(text, &c.guide).map_err(|_| Failure::InvalidJson)?
        };
        // Later templates read values of this answer: keep it whole as well.
        let body = if c.referenced {
            node.to_value()
        } else {
            Value::Null
        };
        let shaped = Shaped::of(c.shape.apply(node), &c.name, c.group.as_deref());
        let headers = if c.referenced {
            a.header.headers.clone()
        } else {
            http::HeaderMap::new()
        };
        Ok((
            Answer {
                status,
                headers,
                body,
            },
            shaped,
        ))
    });
    (i, result, started.elapsed().as_secs_f64(), spans)
}
