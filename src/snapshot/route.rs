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
    let pattern_src = r.matcher.path.as_deref().unwrap_or("/*");
    let pattern = Pattern::parse(pattern_src)
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
    let mut plugins = Vec::new();
    for (j, spec) in r.plugins.iter().enumerate() {
        let b = plugins::BuildCtx {
            route: &name,
            index: j,
            path: format!("{path}.plugins[{j}]"),
            shared: env.shared,
            consumers: env.consumers,
            redis: env.redis,
            max_request_body: r
                .max_request_body
                .unwrap_or(env.config.server.max_request_body)
                .0,
        };
        match plugins::build(spec, &b) {
            Ok(p) => plugins.push(p),
            Err(mut e) => issues.append(&mut e),
        }
    }
    // A plugin that needs the whole response reads each request (its query, its Accept): listed
    // before `cache`, its output would be stored and served to other requests.
    let all_built = plugins.len() == r.plugins.len();
    if let Some(c) = plugins
        .iter()
        .position(|p| matches!(p, Built::Cache { .. }))
        .filter(|_| all_built)
    {
        for (j, p) in plugins.iter().enumerate().take(c) {
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
    }
    let pattern = pattern?;
    let param_names: Vec<Arc<str>> = pattern.param_names().into_iter().map(Arc::from).collect();
    let rewrite_path = r.rewrite.path.as_deref().and_then(|t| {
        compile_template(t, &param_names, pattern.prefix)
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
    let split = (!r.upstreams.is_empty()).then(|| {
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
    });
    let target = match (&r.upstream, &r.aggregate) {
        (None, None) => split
            .as_ref()
            .and_then(|s| s.choices.first())
            .map(|(g, _)| Target::Upstream(g.clone())),
        (Some(u), None) => env.upstreams.get(u).cloned().map(Target::Upstream),
        (None, Some(a)) => {
            let max_request_body = r
                .max_request_body
                .unwrap_or(env.config.server.max_request_body)
                .0;
            let cache = |c: &crate::plugins::cache::Config, at: String| {
                let b = plugins::BuildCtx {
                    route: &name,
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
                path: &path,
                route: &name,
                params: &param_names,
                upstreams: env.upstreams,
                cache: &cache,
                max_body: max_request_body,
            };
            super::composite::compile(a, &aenv, issues).map(|c| Target::Aggregate(Arc::new(c)))
        }
        _ => None,
    };
    if let (Some(Target::Aggregate(comp)), Some((j, policy))) = (
        &target,
        plugins.iter().enumerate().find_map(|(j, p)| match p {
            Built::Cache { policy, .. } => Some((j, policy.clone())),
            _ => None,
        }),
    ) {
        check_composite_cache(&format!("{path}.plugins[{j}].cache"), comp, &policy, issues);
    }
    let fallback = match (&r.fallback, &r.aggregate) {
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
    };
    let errors = match r.errors.is_empty() {
        true => Some(env.errors.clone()),
        false => ErrorPages::compile(&format!("{path}.errors"), &r.errors)
            .map_err(|mut e| issues.append(&mut e))
            .ok()
            .map(Arc::new),
    };
    for (j, st) in r.intercept_upstream.iter().enumerate() {
        if !(400..=599).contains(st) {
            issues.push(Issue::new(
                format!("{path}.intercept_upstream[{j}]"),
                format!("only 4xx and 5xx answers can be intercepted, got {st}"),
            ));
        }
    }
    let mirror = match &r.mirror {
        Some(m) => match env.upstreams.get(&m.upstream) {
            Some(g) => crate::upstream::mirror::Mirror::new(
                &format!("{path}.mirror"),
                m,
                g.clone(),
                name.clone(),
            )
            .map_err(|mut e| issues.append(&mut e))
            .ok()
            .map(Arc::new),
            None => None, // reported by validation
        },
        None => None,
    };
    let target = target?;
    let errors = errors?;
    if issues.len() > before {
        return None;
    }
    let chain = Chain::new(plugins);
    let cache = chain.cache_policy();
    let compression = chain
        .compression_policy()
        .or_else(|| env.compression.clone())
        .filter(|p| p.enabled);
    let route = Route {
        compression,
        metrics: RouteMetrics::new(&name),
        cache_metrics: match cache {
            Some(_) => crate::observability::metrics::CacheMetrics::new(&name),
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
        max_body: r
            .max_request_body
            .unwrap_or(env.config.server.max_request_body)
            .0,
    };
    let route = Arc::new(route);
    router.insert(&hosts, &pattern, conditions?, route.clone());
    Some(route)
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
