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
    let mut template_headers = Vec::new();
    let mut reads_identity = false;
    let mut reads_query = Vec::new();
    let mut vary: Vec<HeaderName> = Vec::new();
    for (name, c) in &a.calls {
        let cat = format!("{at}.calls.{name}");
        if let Some(call) = compile_call(name, c, &cat, &names, &params, &default_pass, env, issues)
        {
            let mut requests: Vec<&crate::transform::template::Template> =
                call.path.requests().collect();
            for (_, t) in &call.headers {
                requests.extend(t.requests());
            }
            if let Some(b) = &call.body {
                b.requests(&mut requests);
            }
            use crate::transform::template::Source as S;
            for src in requests.iter().flat_map(|t| t.sources()) {
                match src {
                    S::Header(h) => template_headers.push(h.clone()),
                    S::Query(q) => reads_query.push(q.clone()),
                    S::Consumer | S::ConsumerGroups | S::Claim(_) => reads_identity = true,
                    _ => {}
                }
            }
            vary.extend(call.pass_headers.iter().cloned());
            if call.timeout.is_some_and(|t| t > deadline) {
                issues.push(Issue::new(
                    format!("{cat}.timeout"),
                    "longer than the composite's deadline (the deadline ends the call first)",
                ));
            }
            calls.push(call);
        }
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
    template_headers.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    template_headers.dedup();
    reads_query.sort();
    reads_query.dedup();
    vary.extend(template_headers.iter().cloned());
    vary.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    vary.dedup();
    let vary = (!vary.is_empty())
        .then(|| {
            let names: Vec<&str> = vary.iter().map(HeaderName::as_str).collect();
            http::HeaderValue::from_str(&names.join(", ")).ok()
        })
        .flatten();
    Some(Composite {
        deadline,
        reads_body: calls
            .iter()
            .any(|c| c.body.as_ref().is_some_and(Body::reads_client_body)),
        calls,
        include_errors: a.include_errors,
        template_headers,
        reads_identity,
        reads_query,
        vary,
    })
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
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        issues.push(Issue::new(
            at.to_string(),
            format!("call name \"{name}\": use letters, digits, `_` and `-`"),
        ));
    }
    let group = env.upstreams.get(&c.upstream);
    let method = match c.method.as_deref() {
        None => Method::GET,
        Some(m) => match Method::from_bytes(m.as_bytes()) {
            Ok(m) if !m.as_str().chars().any(|c| c.is_ascii_lowercase()) => m,
            _ => {
                issues.push(Issue::new(
                    format!("{at}.method"),
                    format!("invalid method \"{m}\""),
                ));
                Method::GET
            }
        },
    };
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
    if body.is_some() && matches!(method, Method::GET | Method::HEAD) {
        issues.push(Issue::new(
            format!("{at}.body"),
            format!("a {method} call has no body; set `method: POST` (or PUT, PATCH)"),
        ));
    }
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
    let pass_headers = match &c.pass_headers {
        Some(l) => header_list(l, &format!("{at}.pass_headers"), issues),
        None => default_pass.to_vec(),
    };
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
    let mut chain = Vec::new();
    if let Some(cfg) = &c.cache {
        if carries_credentials(&pass_headers) && !cfg.key.consumer {
            issues.push(
                Issue::new(
                    format!("{at}.cache.key.consumer"),
                    "this call carries the client's credentials: its cached answers must be kept per consumer",
                )
                .hint("set `cache: { key: { consumer: true } }` (the route needs an authentication plugin)"),
            );
        }
        if !matches!(method, Method::GET) {
            issues.push(Issue::new(
                format!("{at}.cache"),
                format!("only GET calls are cached, not {method}"),
            ));
        }
        match (env.cache)(cfg, format!("{at}.cache")) {
            Ok(p) => chain.push(p),
            Err(mut e) => issues.append(&mut e),
        }
    }
    if issues.len() > before {
        return None;
    }
    let group = group?.clone();
    let path = path?;
    let mut deps = Vec::new();
    path.deps(&mut deps);
    headers.iter().for_each(|(_, t)| t.deps(&mut deps));
    if let Some(b) = &body {
        b.deps(&mut deps);
    }
    deps.sort_unstable();
    deps.dedup();
    let route_name: Arc<str> = format!("{}.{name}", env.route).into();
    let chain = crate::plugins::Chain::new(chain);
    let cache = chain.cache_policy();
    let route = Route {
        metrics: crate::observability::metrics::RouteMetrics::none(),
        cache_metrics: match cache {
            Some(_) => crate::observability::metrics::CacheMetrics::new(&route_name),
            None => Default::default(),
        },
        name: route_name,
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
    };
    let shape = merge::Shape {
        target,
        flatten: c.flatten,
        allow,
        deny,
        mapping,
    };
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
        metrics: crate::observability::metrics::CallMetrics::new(env.route, name),
    })
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
