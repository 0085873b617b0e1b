//! Compiling one route of the configuration: its match conditions, rewrite templates, target
//! and plugin chain.

use super::*;

pub(super) fn compile_route(
    i: usize,
    r: &schema::Route,
    env: &RouteEnv,
    router: &mut Router<Arc<Route>>,
    issues: &mut Vec<Issue>,
) -> Option<Arc<Route>> {
    let path = format!("routes[{i}]");
    let before = issues.len();
    let pattern = Pattern::parse(r.matcher.path.as_deref().unwrap_or("/*"))
        .map_err(|m| issues.push(Issue::new(format!("{path}.match.path"), m)))
        .ok();
    let hosts = r.matcher.host.to_vec();
    for h in &hosts {
        if let Err(m) = check_host(h) {
            issues.push(Issue::new(format!("{path}.match.host"), m));
        }
    }
    let conditions = compile_conditions(&path, &r.matcher, issues);
    let name: Arc<str> = r
        .name
        .clone()
        .unwrap_or_else(|| format!("route-{i}"))
        .into();
    let max_body = r
        .max_request_body
        .unwrap_or(env.config.server.max_request_body)
        .0;
    let plugins = compile_plugins(&path, r, env, &name, max_body, issues);
    let pattern = pattern?;
    let param_names: Vec<Arc<str>> = pattern.param_names().into_iter().map(Arc::from).collect();
    let (rewrite_path, host) = compile_rewrite(&path, r, &param_names, pattern.prefix, issues);
    let split = compile_split(r, env);
    let target = compile_target(&path, r, env, &name, &param_names, max_body, &split, issues);
    if let (Some(Target::Aggregate(comp)), Some((j, policy))) = (&target, cache_entry(&plugins)) {
        check_composite_cache(&format!("{path}.plugins[{j}].cache"), comp, &policy, issues);
    }
    let fallback = compile_fallback(&path, r, issues);
    let errors = compile_errors(&path, r, env, issues);
    let mirror = compile_mirror(&path, r, env, &name, issues);
    let (target, errors) = (target?, errors?);
    if issues.len() > before {
        return None;
    }
    let chain = Chain::new(plugins);
    let cache = chain.cache_policy();
    let compression = chain
        .compression_policy()
        .or_else(|| env.compression.clone())
        .filter(|p| p.enabled);
    let route = Arc::new(Route {
        compression,
        metrics: RouteMetrics::new(env.metrics, &name),
        cache_metrics: match cache {
            Some(_) => crate::observability::metrics::CacheMetrics::new(env.metrics, &name),
            None => Default::default(),
        },
        name,
        target,
        cache,
        chain,
        fallback,
        deadline: r.deadline.map(|d| d.0),
        errors,
        intercept: r.intercept_upstream.clone(),
        split,
        mirror,
        failover: r
            .failover
            .as_ref()
            .and_then(|f| env.upstreams.get(f).cloned()),
        param_names,
        strip_prefix: r.rewrite.strip_prefix.clone(),
        rewrite_path,
        host,
        max_body,
    });
    router.insert(&hosts, &pattern, conditions?, route.clone());
    Some(route)
}

/// The route's plugin entries, built in order; a plugin that needs the whole response listed
/// before `cache` is refused (it reads each request, its query or its Accept: its output would
/// be stored and served to other requests).
fn compile_plugins(
    path: &str,
    r: &schema::Route,
    env: &RouteEnv,
    name: &str,
    max_request_body: u64,
    issues: &mut Vec<Issue>,
) -> Vec<Built> {
    let mut plugins = Vec::new();
    for (j, spec) in r.plugins.iter().enumerate() {
        let b = plugins::BuildCtx {
            route: name,
            index: j,
            path: format!("{path}.plugins[{j}]"),
            shared: env.shared,
            consumers: env.consumers,
            redis: env.redis,
            max_request_body,
        };
        match plugins::build(spec, &b) {
            Ok(p) => plugins.push(p),
            Err(mut e) => issues.append(&mut e),
        }
    }
    if plugins.len() < r.plugins.len() {
        return plugins; // positions no longer match the list; its errors come first
    }
    let cache_at = plugins
        .iter()
        .position(|p| matches!(p, Built::Cache { .. }));
    for (j, p) in plugins.iter().enumerate().take(cache_at.unwrap_or(0)) {
        if p.defers_response() {
            issues.push(Issue::new(
                format!("{path}.plugins[{j}]"),
                format!(
                    "`{}` with shape, convert or an `error` mode works on each request's answer: list it after `cache` (the cache then stores the upstream's answer)",
                    r.plugins[j].name()
                ),
            ));
        }
    }
    plugins
}

/// The position and policy of the route's `cache` entry.
fn cache_entry(plugins: &[Built]) -> Option<(usize, Arc<crate::cache::CachePolicy>)> {
    plugins.iter().enumerate().find_map(|(j, p)| match p {
        Built::Cache { policy, .. } => Some((j, policy.clone())),
        _ => None,
    })
}

/// `rewrite.path` (a template over the route's parameters) and `rewrite.host`.
fn compile_rewrite(
    path: &str,
    r: &schema::Route,
    param_names: &[Arc<str>],
    prefix: bool,
    issues: &mut Vec<Issue>,
) -> (Option<Vec<Part>>, Option<HeaderValue>) {
    let rewrite_path = r.rewrite.path.as_deref().and_then(|t| {
        compile_template(t, param_names, prefix)
            .map_err(|m| issues.push(Issue::new(format!("{path}.rewrite.path"), m)))
            .ok()
    });
    let host = r.rewrite.host.as_deref().and_then(|h| {
        HeaderValue::from_str(h)
            .map_err(|_| {
                issues.push(Issue::new(
                    format!("{path}.rewrite.host"),
                    "invalid host value",
                ))
            })
            .ok()
    });
    (rewrite_path, host)
}

/// The weighted split between upstreams (`upstreams:`); names and weights are checked by
/// validation.
fn compile_split(r: &schema::Route, env: &RouteEnv) -> Option<Arc<crate::upstream::split::Split>> {
    (!r.upstreams.is_empty()).then(|| {
        let choices: Vec<_> = r
            .upstreams
            .iter()
            .filter_map(|t| Some((env.upstreams.get(&t.name)?.clone(), t.weight)))
            .collect();
        let sticky = r
            .sticky
            .as_deref()
            .and_then(|s| crate::upstream::split::Sticky::parse(s).ok());
        Arc::new(crate::upstream::split::Split::new(choices, sticky))
    })
}

/// What the route sends its requests to: its upstream, its split's first upstream, or its
/// composite.
#[allow(clippy::too_many_arguments)]
fn compile_target(
    path: &str,
    r: &schema::Route,
    env: &RouteEnv,
    name: &Arc<str>,
    param_names: &[Arc<str>],
    max_request_body: u64,
    split: &Option<Arc<crate::upstream::split::Split>>,
    issues: &mut Vec<Issue>,
) -> Option<Target> {
    match (&r.upstream, &r.aggregate) {
        (None, None) => split
            .as_ref()
            .and_then(|s| s.choices.first())
            .map(|(g, _)| Target::Upstream(g.clone())),
        (Some(u), None) => env.upstreams.get(u).cloned().map(Target::Upstream),
        (None, Some(a)) => {
            let cache = |c: &crate::plugins::cache::Config, at: String| {
                let b = plugins::BuildCtx {
                    route: name,
                    index: 0,
                    path: at,
                    shared: env.shared,
                    consumers: env.consumers,
                    redis: env.redis,
                    max_request_body,
                };
                plugins::build(&plugins::PluginSpec::Cache(c.clone()), &b)
            };
            let aenv = super::composite::Env {
                path,
                route: name,
                params: param_names,
                upstreams: env.upstreams,
                cache: &cache,
                max_body: max_request_body,
                metrics: env.metrics,
            };
            super::composite::compile(a, &aenv, issues).map(|c| Target::Aggregate(Arc::new(c)))
        }
        _ => None,
    }
}

/// The route's static answer for upstream failures (`fallback`); a composite has none.
fn compile_fallback(
    path: &str,
    r: &schema::Route,
    issues: &mut Vec<Issue>,
) -> Option<Arc<crate::upstream::fallback::Fallback>> {
    match (&r.fallback, &r.aggregate) {
        (Some(_), Some(_)) => {
            issues.push(
                Issue::new(
                    format!("{path}.fallback"),
                    "a composite has no route fallback; its calls have their own",
                )
                .hint("set `optional: true` and `fallback: { body: ... }` on the calls"),
            );
            None
        }
        (Some(f), None) => {
            crate::upstream::fallback::Fallback::compile(&format!("{path}.fallback"), f)
                .map_err(|mut e| issues.append(&mut e))
                .ok()
                .map(Arc::new)
        }
        (None, _) => None,
    }
}

/// The route's error pages (its own `errors`, else `server.errors`) and the upstream statuses
/// it intercepts.
fn compile_errors(
    path: &str,
    r: &schema::Route,
    env: &RouteEnv,
    issues: &mut Vec<Issue>,
) -> Option<Arc<ErrorPages>> {
    for (j, st) in r.intercept_upstream.iter().enumerate() {
        if !(400..=599).contains(st) {
            issues.push(Issue::new(
                format!("{path}.intercept_upstream[{j}]"),
                format!("only 4xx and 5xx answers can be intercepted, got {st}"),
            ));
        }
    }
    match r.errors.is_empty() {
        true => Some(env.errors.clone()),
        false => ErrorPages::compile(&format!("{path}.errors"), &r.errors)
            .map_err(|mut e| issues.append(&mut e))
            .ok()
            .map(Arc::new),
    }
}

/// Copies of the route's requests to a shadow upstream (`mirror`); an unknown upstream is
/// reported by validation.
fn compile_mirror(
    path: &str,
    r: &schema::Route,
    env: &RouteEnv,
    name: &Arc<str>,
    issues: &mut Vec<Issue>,
) -> Option<Arc<crate::upstream::mirror::Mirror>> {
    let m = r.mirror.as_ref()?;
    let g = env.upstreams.get(&m.upstream)?;
    crate::upstream::mirror::Mirror::new(
        &format!("{path}.mirror"),
        m,
        g.clone(),
        name.clone(),
        env.metrics,
    )
    .map_err(|mut e| issues.append(&mut e))
    .ok()
    .map(Arc::new)
}

fn compile_conditions(
    path: &str,
    m: &schema::Match,
    issues: &mut Vec<Issue>,
) -> Option<Conditions> {
    let before = issues.len();
    let methods = m
        .methods
        .iter()
        .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
        .collect();
    let mut headers = Vec::new();
    for (k, v) in &m.headers {
        let p = format!("{path}.match.headers.{k}");
        match (HeaderName::from_bytes(k.as_bytes()), ValueMatch::parse(v)) {
            (Ok(n), Ok(vm)) => headers.push((n, vm)),
            (Err(_), _) => issues.push(Issue::new(p, format!("invalid header name \"{k}\""))),
            (_, Err(e)) => issues.push(Issue::new(p, e)),
        }
    }
    let mut query = Vec::new();
    for (k, v) in &m.query {
        match ValueMatch::parse(v) {
            Ok(vm) => query.push((k.clone(), vm)),
            Err(e) => issues.push(Issue::new(format!("{path}.match.query.{k}"), e)),
        }
    }
    (issues.len() == before).then_some(Conditions {
        methods,
        headers,
        query,
    })
}

/// `/v2/users/{id}/{*}` → parts; every `{name}` must be a parameter of the route's pattern.
pub fn compile_template(t: &str, names: &[Arc<str>], prefix: bool) -> Result<Vec<Part>, String> {
    if !t.starts_with('/') {
        return Err(format!("\"{t}\" must start with /"));
    }
    let mut parts = Vec::new();
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unclosed {{ in \"{t}\""))?
            + open;
        let name = &rest[open + 1..close];
        if name == "*" {
            if !prefix {
                return Err("{*} can only be used when the route path ends with /*".into());
            }
            parts.push(Part::Rest);
        } else {
            let idx = names.iter().position(|n| &**n == name).ok_or_else(|| {
                let known: Vec<&str> = names.iter().map(|n| &**n).collect();
                format!(
                    "unknown parameter {{{name}}}; the route path captures: {}",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    }
                )
            })?;
            parts.push(Part::Param(idx));
        }
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    if rest.contains('}') {
        return Err(format!("unbalanced }} in \"{t}\""));
    }
    Ok(parts)
}

/// A composite's answer cached as a whole: it carries no freshness of its own, and every
/// request value its calls read must be part of the cache key (request headers are: the answer
/// names them in `Vary`).
fn check_composite_cache(
    at: &str,
    comp: &crate::snapshot::composite::Composite,
    policy: &crate::cache::CachePolicy,
    issues: &mut Vec<Issue>,
) {
    if policy.ttl.is_none() && policy.force_ttl.is_none() {
        issues.push(
            Issue::new(
                at.to_string(),
                "a composite's answer has no Cache-Control of its own, so nothing would be stored",
            )
            .hint("set `ttl` (or `force_ttl`)"),
        );
    }
    if comp.reads_identity && !policy.consumer_in_key {
        issues.push(
            Issue::new(
                format!("{at}.key.consumer"),
                "the calls read the consumer or its claims, so one caller's answer would be served to another",
            )
            .hint("set `key: { consumer: true }`"),
        );
    }
    for q in &comp.reads_query {
        let keyed = match &policy.query {
            crate::cache::QueryKey::All => true,
            crate::cache::QueryKey::None => false,
            crate::cache::QueryKey::Only(names) => names.contains(q),
        };
        if !keyed {
            issues.push(
                Issue::new(
                    format!("{at}.key.query"),
                    format!(
                        "the calls read the query parameter `{q}`, which the cache key leaves out"
                    ),
                )
                .hint("key the query with `all` or list the parameter"),
            );
        }
    }
}
