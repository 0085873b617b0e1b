//! The compiled form of a route's `aggregate:` section ([`Composite`], [`CallSpec`]) and its
//! checks. Each call becomes a [`Route`] of its own (its upstream as target, its cache as its
//! only plugin), which is why this lives beside the route it compiles with. The YAML shape,
//! templates and merging are `crate::aggregate`; the request path is `gateway::aggregate`.

use super::{Route, Target};
use crate::aggregate::config as schema;
use crate::aggregate::{merge, template, DEFAULT_DEADLINE, DEFAULT_MAX_BODY, DEFAULT_MAX_CALLS};
use crate::common::issue::Issue;
use crate::plugins::Built;
use crate::transform::path::Path;
use crate::upstream::UpstreamGroup;
use http::{HeaderName, Method};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use template::{Body, Text};

/// A compiled `aggregate` section.
pub struct Composite {
    pub deadline: Duration,
    pub calls: Vec<CallSpec>,
    pub include_errors: bool,
    /// Some call's body reads the client's JSON body.
    pub reads_body: bool,
    /// Request header fields templates read.
    pub template_headers: Vec<HeaderName>,
    /// Some template reads the consumer, its groups or a claim: the answer is the caller's.
    pub reads_identity: bool,
    /// Query parameters templates read.
    pub reads_query: Vec<String>,
    /// The request fields the answer depends on besides its URL (the client headers calls
    /// carry and the ones templates read): the answer's `Vary`.
    pub vary: Option<http::HeaderValue>,
}

/// One compiled call.
pub struct CallSpec {
    pub name: Arc<str>,
    /// What the call's subrequest runs: the upstream as target, the call's cache as its only
    /// plugin. Its name is `ROUTE.CALL`.
    pub route: Arc<Route>,
    pub method: Method,
    pub path: Text,
    pub body: Option<Body>,
    pub headers: Vec<(HeaderName, Text)>,
    pub pass_headers: Vec<HeaderName>,
    /// Indexes of the calls this one reads (all earlier in the run order).
    pub deps: Vec<usize>,
    pub expect: Option<Vec<u16>>,
    pub timeout: Option<Duration>,
    pub optional: bool,
    pub fallback: Option<Value>,
    pub shape: merge::Shape,
    /// What reading an answer splits (from `shape`).
    pub guide: crate::transform::lazy::Guide,
    pub group: Option<String>,
    pub max_body: usize,
    pub cached: bool,
    /// Another call's templates read this call's answer (it is then also kept as a value).
    pub referenced: bool,
    pub metrics: crate::observability::metrics::CallMetrics,
}

impl CallSpec {
    pub fn expects(&self, status: u16) -> bool {
        match &self.expect {
            Some(list) => list.contains(&status),
            None => (200..300).contains(&status),
        }
    }
}

/// Builds the `cache` plugin of a call (errors at the given config path).
pub type CacheBuilder<'a> =
    dyn Fn(&crate::plugins::cache::Config, String) -> Result<Built, Vec<Issue>> + 'a;

/// What compiling a composite needs from the snapshot being built.
pub struct Env<'a> {
    pub path: &'a str,
    pub route: &'a str,
    pub params: &'a [Arc<str>],
    pub upstreams: &'a BTreeMap<String, Arc<UpstreamGroup>>,
    /// Builds the `cache` plugin of a call (errors at the given config path).
    pub cache: &'a CacheBuilder<'a>,
    pub max_body: u64,
    pub metrics: &'a crate::observability::metrics::Metrics,
}

const HOP_BY_HOP: [&str; 11] = [
    "accept-encoding",
    "content-type",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

/// Credentials a call carries only when the user lists them.
fn carries_credentials(names: &[HeaderName]) -> bool {
    names.iter().any(|h| {
        matches!(
            h.as_str(),
            "authorization" | "cookie" | "proxy-authorization" | "x-api-key"
        )
    })
}

pub fn compile(a: &schema::Aggregate, env: &Env, issues: &mut Vec<Issue>) -> Option<Composite> {
    let before = issues.len();
    let at = format!("{}.aggregate", env.path);
    check_call_count(a, &at, issues);
    let names: Vec<&str> = a.calls.keys().map(String::as_str).collect();
    let params: Vec<&str> = env.params.iter().map(|p| &**p).collect();
    let default_pass = header_list(
        a.pass_headers
            .as_deref()
            .unwrap_or(&["accept-language".to_string()]),
        &format!("{at}.pass_headers"),
        issues,
    );
    let deadline = a.deadline.map_or(DEFAULT_DEADLINE, |d| d.0);
    let mut calls = Vec::new();
    for (name, c) in &a.calls {
        let cat = format!("{at}.calls.{name}");
        let Some(call) = compile_call(name, c, &cat, &names, &params, &default_pass, env, issues)
        else {
            continue;
        };
        if call.timeout.is_some_and(|t| t > deadline) {
            issues.push(Issue::new(
                format!("{cat}.timeout"),
                "longer than the composite's deadline (the deadline ends the call first)",
            ));
        }
        calls.push(call);
    }
    if issues.len() > before {
        return None;
    }
    if let Err((call, cycle)) = check_cycles(&calls) {
        issues.push(
            Issue::new(
                format!("{at}.calls.{}", calls[call].name),
                format!("the calls' templates form a cycle: {cycle}"),
            )
            .hint("a call may only read calls that do not read it back"),
        );
        return None;
    }
    let read: Vec<usize> = calls.iter().flat_map(|c| c.deps.clone()).collect();
    for i in read {
        calls[i].referenced = true;
    }
    let reads = Reads::of(&calls);
    Some(Composite {
        deadline,
        reads_body: calls
            .iter()
            .any(|c| c.body.as_ref().is_some_and(Body::reads_client_body)),
        include_errors: a.include_errors,
        vary: reads.vary(&calls),
        calls,
        template_headers: reads.headers,
        reads_identity: reads.identity,
        reads_query: reads.query,
    })
}

/// At least one call, at most `max_calls`.
fn check_call_count(a: &schema::Aggregate, at: &str, issues: &mut Vec<Issue>) {
    let max_calls = a.max_calls.unwrap_or(DEFAULT_MAX_CALLS);
    if a.calls.is_empty() {
        issues.push(Issue::new(
            format!("{at}.calls"),
            "a composite needs at least one call",
        ));
    }
    if a.calls.len() > max_calls {
        issues.push(
            Issue::new(
                format!("{at}.calls"),
                format!("{} calls, more than max_calls ({max_calls})", a.calls.len()),
            )
            .hint("raise `max_calls` or split the composite"),
        );
    }
}

/// What the calls' templates read of the client's request: the answer depends on it.
struct Reads {
    headers: Vec<HeaderName>,
    query: Vec<String>,
    identity: bool,
}

impl Reads {
    fn of(calls: &[CallSpec]) -> Reads {
        use crate::transform::template::Source as S;
        let mut r = Reads {
            headers: Vec::new(),
            query: Vec::new(),
            identity: false,
        };
        for call in calls {
            let mut requests: Vec<&crate::transform::template::Template> =
                call.path.requests().collect();
            for (_, t) in &call.headers {
                requests.extend(t.requests());
            }
            if let Some(b) = &call.body {
                b.requests(&mut requests);
            }
            for src in requests.iter().flat_map(|t| t.sources()) {
                match src {
                    S::Header(h) => r.headers.push(h.clone()),
                    S::Query(q) => r.query.push(q.clone()),
                    S::Consumer | S::ConsumerGroups | S::Claim(_) => r.identity = true,
                    _ => {}
                }
            }
        }
        r.headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        r.headers.dedup();
        r.query.sort();
        r.query.dedup();
        r
    }

    /// The answer's `Vary`: the client headers the calls carry and the ones templates read.
    fn vary(&self, calls: &[CallSpec]) -> Option<http::HeaderValue> {
        let mut vary: Vec<HeaderName> = calls
            .iter()
            .flat_map(|c| c.pass_headers.iter().cloned())
            .chain(self.headers.iter().cloned())
            .collect();
        vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        vary.dedup();
        if vary.is_empty() {
            return None;
        }
        let names: Vec<&str> = vary.iter().map(HeaderName::as_str).collect();
        http::HeaderValue::from_str(&names.join(", ")).ok()
    }
}

fn header_list(list: &[String], at: &str, issues: &mut Vec<Issue>) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(n) if HOP_BY_HOP.contains(&n.as_str()) => issues.push(Issue::new(
                format!("{at}[{i}]"),
                format!("`{h}` is managed by the gateway and never copied to a call"),
            )),
            Ok(n) => out.push(n),
            Err(_) => issues.push(Issue::new(
                format!("{at}[{i}]"),
                format!("invalid header name \"{h}\""),
            )),
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn compile_call(
    name: &str,
    c: &schema::Call,
    at: &str,
    names: &[&str],
    params: &[&str],
    default_pass: &[HeaderName],
    env: &Env,
    issues: &mut Vec<Issue>,
) -> Option<CallSpec> {
    let before = issues.len();
    check_call_name(name, at, issues);
    let group = env.upstreams.get(&c.upstream);
    let method = call_method(c, at, issues);
    let (path, body) = call_path_and_body(c, at, &method, names, params, issues);
    let headers = call_headers(c, at, names, params, issues);
    let pass_headers = match &c.pass_headers {
        Some(l) => header_list(l, &format!("{at}.pass_headers"), issues),
        None => default_pass.to_vec(),
    };
    let shape = call_shape(c, at, issues);
    let max_body = check_call_contract(c, at, issues);
    let chain = call_chain(c, at, &method, &pass_headers, env, issues);
    if issues.len() > before {
        return None;
    }
    let (group, path) = (group?.clone(), path?);
    let deps = deps_of(&path, &headers, body.as_ref());
    let route = call_route(format!("{}.{name}", env.route).into(), group, chain, env);
    Some(CallSpec {
        name: name.into(),
        cached: route.cache.is_some(),
        route: Arc::new(route),
        method,
        path,
        body,
        headers,
        pass_headers,
        deps,
        expect: c.expect.clone(),
        timeout: c.timeout.map(|t| t.0),
        optional: c.optional,
        fallback: c.fallback.as_ref().map(|f| f.body.clone()),
        guide: shape.guide(),
        shape,
        group: c.group.clone(),
        max_body: max_body as usize,
        referenced: false,
        metrics: crate::observability::metrics::CallMetrics::new(env.metrics, env.route, name),
    })
}

fn check_call_name(name: &str, at: &str, issues: &mut Vec<Issue>) {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || !name.chars().all(ok) {
        issues.push(Issue::new(
            at.to_string(),
            format!("call name \"{name}\": use letters, digits, `_` and `-`"),
        ));
    }
}

/// The call's method (GET unless set; upper case only).
fn call_method(c: &schema::Call, at: &str, issues: &mut Vec<Issue>) -> Method {
    let Some(m) = c.method.as_deref() else {
        return Method::GET;
    };
    match Method::from_bytes(m.as_bytes()) {
        Ok(m) if !m.as_str().chars().any(|c| c.is_ascii_lowercase()) => m,
        _ => {
            issues.push(Issue::new(
                format!("{at}.method"),
                format!("invalid method \"{m}\""),
            ));
            Method::GET
        }
    }
}

/// The path template and the body template (not on GET or HEAD).
fn call_path_and_body(
    c: &schema::Call,
    at: &str,
    method: &Method,
    names: &[&str],
    params: &[&str],
    issues: &mut Vec<Issue>,
) -> (Option<Text>, Option<Body>) {
    if !c.path.starts_with('/') {
        issues.push(Issue::new(format!("{at}.path"), "must start with /"));
    }
    let path = Text::parse(&c.path, names, params, true)
        .map_err(|m| issues.push(Issue::new(format!("{at}.path"), m)))
        .ok();
    let body = c.body.as_ref().and_then(|b| {
        Body::parse(b, names, params)
            .map_err(|m| issues.push(Issue::new(format!("{at}.body"), m)))
            .ok()
    });
    if body.is_some() && matches!(*method, Method::GET | Method::HEAD) {
        issues.push(Issue::new(
            format!("{at}.body"),
            format!("a {method} call has no body; set `method: POST` (or PUT, PATCH)"),
        ));
    }
    (path, body)
}

/// The call's own header templates (the gateway's hop-by-hop fields excepted).
fn call_headers(
    c: &schema::Call,
    at: &str,
    names: &[&str],
    params: &[&str],
    issues: &mut Vec<Issue>,
) -> Vec<(HeaderName, Text)> {
    let mut headers = Vec::new();
    for (k, v) in &c.headers {
        let hat = format!("{at}.headers.{k}");
        match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) if HOP_BY_HOP.contains(&n.as_str()) => {
                issues.push(Issue::new(hat, format!("`{k}` is managed by the gateway")))
            }
            Ok(n) => match Text::parse(v, names, params, false) {
                Ok(t) => headers.push((n, t)),
                Err(m) => issues.push(Issue::new(hat, m)),
            },
            Err(_) => issues.push(Issue::new(hat, format!("invalid header name \"{k}\""))),
        }
    }
    headers
}

/// How the call's answer is shaped before the merge: target, allow/deny lists, mapping.
fn call_shape(c: &schema::Call, at: &str, issues: &mut Vec<Issue>) -> merge::Shape {
    let parse_paths = |list: &[String], field: &str, issues: &mut Vec<Issue>| -> Vec<Path> {
        list.iter()
            .enumerate()
            .filter_map(|(i, p)| {
                Path::parse(p)
                    .map_err(|m| issues.push(Issue::new(format!("{at}.{field}[{i}]"), m)))
                    .ok()
            })
            .collect()
    };
    let allow = parse_paths(&c.allow, "allow", issues);
    let deny = parse_paths(&c.deny, "deny", issues);
    let target = c.target.as_deref().and_then(|t| {
        Path::parse(t)
            .map_err(|m| issues.push(Issue::new(format!("{at}.target"), m)))
            .ok()
    });
    let mut mapping = Vec::new();
    for (from, to) in &c.mapping {
        match Path::parse(from) {
            Ok(p) if !p.0.is_empty() => mapping.push((p, to.clone())),
            Ok(_) => issues.push(Issue::new(format!("{at}.mapping"), "empty path")),
            Err(m) => issues.push(Issue::new(format!("{at}.mapping.{from}"), m)),
        }
    }
    merge::Shape {
        target,
        flatten: c.flatten,
        allow,
        deny,
        mapping,
    }
}

/// The partial-failure contract (fallback only on optional calls, expected statuses) and the
/// answer's size bound, which it returns.
fn check_call_contract(c: &schema::Call, at: &str, issues: &mut Vec<Issue>) -> u64 {
    if c.fallback.is_some() && !c.optional {
        issues.push(
            Issue::new(
                format!("{at}.fallback"),
                "only an optional call has a fallback (a required call's failure fails the composite)",
            )
            .hint("add `optional: true`"),
        );
    }
    if let Some(list) = &c.expect {
        if list.iter().any(|s| !(100..=599).contains(s)) {
            issues.push(Issue::new(format!("{at}.expect"), "statuses are 100-599"));
        }
    }
    let max_body = c.max_body.map_or(DEFAULT_MAX_BODY as u64, |s| s.0);
    if max_body == 0 || max_body > 64 << 20 {
        issues.push(Issue::new(
            format!("{at}.max_body"),
            "between 1 byte and 64 MiB",
        ));
    }
    max_body
}

/// The call route's chain: its `cache`, if any (GET only; kept per consumer when the call
/// carries the client's credentials).
fn call_chain(
    c: &schema::Call,
    at: &str,
    method: &Method,
    pass_headers: &[HeaderName],
    env: &Env,
    issues: &mut Vec<Issue>,
) -> Vec<Built> {
    let Some(cfg) = &c.cache else {
        return Vec::new();
    };
    if carries_credentials(pass_headers) && !cfg.key.consumer {
        issues.push(
            Issue::new(
                format!("{at}.cache.key.consumer"),
                "this call carries the client's credentials: its cached answers must be kept per consumer",
            )
            .hint("set `cache: { key: { consumer: true } }` (the route needs an authentication plugin)"),
        );
    }
    if *method != Method::GET {
        issues.push(Issue::new(
            format!("{at}.cache"),
            format!("only GET calls are cached, not {method}"),
        ));
    }
    match (env.cache)(cfg, format!("{at}.cache")) {
        Ok(p) => vec![p],
        Err(mut e) => {
            issues.append(&mut e);
            Vec::new()
        }
    }
}

/// The calls a call's templates read.
fn deps_of(path: &Text, headers: &[(HeaderName, Text)], body: Option<&Body>) -> Vec<usize> {
    let mut deps = Vec::new();
    path.deps(&mut deps);
    headers.iter().for_each(|(_, t)| t.deps(&mut deps));
    if let Some(b) = body {
        b.deps(&mut deps);
    }
    deps.sort_unstable();
    deps.dedup();
    deps
}

/// The route a call's subrequest runs: its upstream as target, its cache as its only plugin.
fn call_route(name: Arc<str>, group: Arc<UpstreamGroup>, chain: Vec<Built>, env: &Env) -> Route {
    let chain = crate::plugins::Chain::new(chain);
    let cache = chain.cache_policy();
    Route {
        metrics: crate::observability::metrics::RouteMetrics::none(),
        cache_metrics: match cache {
            Some(_) => crate::observability::metrics::CacheMetrics::new(env.metrics, &name),
            None => Default::default(),
        },
        name,
        target: Target::Upstream(group),
        cache,
        compression: None,
        fallback: None,
        deadline: None,
        failover: None,
        errors: Default::default(),
        intercept: Vec::new(),
        split: None,
        mirror: None,
        chain,
        param_names: Vec::new(),
        strip_prefix: None,
        rewrite_path: None,
        host: None,
        max_body: env.max_body,
    }
}

/// `Err((call, "a → b → a"))` when the calls' references form a cycle.
fn check_cycles(calls: &[CallSpec]) -> Result<(), (usize, String)> {
    // 0 unvisited, 1 on the stack, 2 done
    fn visit(
        i: usize,
        calls: &[CallSpec],
        state: &mut [u8],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        match state[i] {
            2 => return None,
            1 => {
                let from = stack.iter().position(|&s| s == i).unwrap_or(0);
                let mut cycle = stack[from..].to_vec();
                cycle.push(i);
                return Some(cycle);
            }
            _ => {}
        }
        state[i] = 1;
        stack.push(i);
        for &d in &calls[i].deps {
            if let Some(c) = visit(d, calls, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state[i] = 2;
        None
    }
    let mut state = vec![0u8; calls.len()];
    for i in 0..calls.len() {
        if let Some(cycle) = visit(i, calls, &mut state, &mut Vec::new()) {
            let text = cycle
                .iter()
                .map(|&c| &*calls[c].name)
                .collect::<Vec<_>>()
                .join(" → ");
            return Err((cycle[0], text));
        }
    }
    Ok(())
}
