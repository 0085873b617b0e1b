//! Cross-reference and value checks that serde cannot express. Syntax of route patterns, regexes
//! and certificates is checked when the snapshot is compiled (`snapshot::compile`).

use super::schema::{Balance, Config, Upstream};
use crate::common::issue::{known_list, Issue, Issues};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

pub fn check(c: &Config, out: &mut Issues) {
    if c.version != 1 {
        out.push(
            Issue::new("version", format!("unsupported version {}", c.version))
                .hint("use version: 1"),
        );
    }
    if c.server.threads == 0 {
        out.err("server.threads", "must be at least 1");
    }
    // Pingora's HTTP/1 parser stops at 256 fields and 1 MiB with a bare 400 before any phase
    // runs; Postern's limits must be lower for its 431 problem response to apply.
    if c.server.max_header_count == 0 || c.server.max_header_count > 255 {
        out.push(
            Issue::new(
                "server.max_header_count",
                format!(
                    "must be between 1 and 255, got {}",
                    c.server.max_header_count
                ),
            )
            .hint("Pingora itself refuses requests with 256 fields or more"),
        );
    }
    if c.server.max_header_size.0 < 1024 || c.server.max_header_size.0 >= 1 << 20 {
        out.push(
            Issue::new("server.max_header_size", "must be between 1KiB and 1023KiB")
                .hint("Pingora itself refuses headers of 1 MiB or more"),
        );
    }
    check_ranges(c, out);
    check_listeners(c, out);
    for (name, up) in &c.upstreams {
        check_upstream(name, up, out);
        check_upstream_ranges(name, up, out);
    }
    check_routes(c, out);
}

/// `min..=max` for a duration field; the message names the range.
fn within(out: &mut Issues, path: &str, d: Duration, min: Duration, max: Duration) {
    if d < min || d > max {
        let show = |d: Duration| {
            let s = d.as_secs();
            match (d.subsec_nanos(), s) {
                (0, 0) => "0s".to_string(),
                (0, s) if s % 86_400 == 0 => format!("{}d", s / 86_400),
                (0, s) if s % 3600 == 0 => format!("{}h", s / 3600),
                (0, s) if s % 60 == 0 => format!("{}m", s / 60),
                (0, s) => format!("{s}s"),
                _ => format!("{}ms", d.as_millis()),
            }
        };
        out.push(Issue::new(
            path,
            format!(
                "must be between {} and {}, got {}",
                show(min),
                show(max),
                show(d)
            ),
        ));
    }
}

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);
const HOUR: Duration = Duration::from_secs(3600);

/// Ranges of the server and cache settings: values outside them are typos (`100y`, `5ms` for a
/// keep-alive) rather than choices.
fn check_ranges(c: &Config, out: &mut Issues) {
    let s = &c.server;
    let zero = Duration::ZERO;
    let table = [
        ("server.grace_period", s.grace_period.0, zero, HOUR),
        (
            "server.graceful_shutdown_timeout",
            s.graceful_shutdown_timeout.0,
            zero,
            HOUR,
        ),
        ("server.keepalive_timeout", s.keepalive_timeout.0, SEC, HOUR),
        (
            "server.client_read_timeout",
            s.client_read_timeout.0,
            100 * MS,
            HOUR,
        ),
        (
            "server.client_header_timeout",
            s.client_header_timeout.0,
            100 * MS,
            300 * SEC,
        ),
        (
            "server.client_write_timeout",
            s.client_write_timeout.0,
            100 * MS,
            HOUR,
        ),
        (
            "cache.lock_timeout",
            c.cache.lock_timeout.0,
            10 * MS,
            60 * SEC,
        ),
    ];
    for (path, d, min, max) in table {
        within(out, path, d, min, max);
    }
    if s.max_request_body.0 > 1 << 40 {
        out.err("server.max_request_body", "must be at most 1TiB");
    }
    if c.cache.memory.0 > 1 << 40 {
        out.err("cache.memory", "must be at most 1TiB");
    }
}

fn check_upstream_ranges(name: &str, up: &Upstream, out: &mut Issues) {
    let t = &up.timeouts;
    let mut table = vec![
        ("timeouts.connect", t.connect.0, 10 * MS, 300 * SEC),
        ("timeouts.read", t.read.0, 10 * MS, HOUR),
        ("timeouts.write", t.write.0, 10 * MS, HOUR),
        ("timeouts.idle", t.idle.0, SEC, HOUR),
        (
            "resolve_interval",
            up.resolve_interval.0,
            100 * MS,
            24 * HOUR,
        ),
    ];
    match up.retry.backoff {
        super::schema::Backoff::Fixed(d) => {
            table.push(("retry.backoff", d.0, Duration::ZERO, 10 * SEC))
        }
        super::schema::Backoff::Exponential { base, max } => {
            table.push(("retry.backoff.base", base.0, MS, 10 * SEC));
            table.push(("retry.backoff.max", max.0, MS, 60 * SEC));
        }
    }
    if let Some(t) = up.retry.per_try_timeout {
        table.push(("retry.per_try_timeout", t.0, 10 * MS, HOUR));
    }
    table.push((
        "retry.budget.window",
        up.retry.budget.window.0,
        SEC,
        10 * 60 * SEC,
    ));
    if let Some(a) = &up.health.active {
        table.push(("health.active.interval", a.interval.0, 10 * MS, HOUR));
        table.push(("health.active.timeout", a.timeout.0, 10 * MS, 60 * SEC));
    }
    if let Some(p) = &up.health.passive {
        table.push(("health.passive.eject_for", p.eject_for.0, SEC, HOUR));
    }
    for (field, d, min, max) in table {
        within(out, &format!("upstreams.{name}.{field}"), d, min, max);
    }
}

fn check_listeners(c: &Config, out: &mut Issues) {
    if c.listeners.is_empty() {
        out.push(
            Issue::new("listeners", "at least one listener is required")
                .hint("listeners: [ { addr: \"0.0.0.0:8080\" } ]"),
        );
    }
    let mut addrs = HashSet::new();
    let mut names = HashSet::new();
    for (i, l) in c.listeners.iter().enumerate() {
        let path = format!("listeners[{i}]");
        match l.addr.parse::<SocketAddr>() {
            Ok(a) if !addrs.insert(a) => out.err(
                format!("{path}.addr"),
                format!("duplicate listener address {a}"),
            ),
            Ok(_) => {}
            Err(_) => out.push(
                Issue::new(
                    format!("{path}.addr"),
                    format!("invalid address \"{}\"", l.addr),
                )
                .hint("write ip:port, e.g. 0.0.0.0:8080 or [::]:8443"),
            ),
        }
        if let Some(n) = &l.name {
            if !names.insert(n.clone()) {
                out.err(
                    format!("{path}.name"),
                    format!("duplicate listener name \"{n}\""),
                );
            }
        }
        if let Some(tls) = &l.tls {
            if tls.certificates.is_empty() {
                out.err(
                    format!("{path}.tls.certificates"),
                    "at least one certificate is required",
                );
            }
            if l.h2c {
                out.err(
                    format!("{path}.h2c"),
                    "h2c is for cleartext listeners; use tls.http2 on a TLS listener",
                );
            }
        }
    }
    if let Some(admin) = &c.admin {
        match admin.addr.parse::<SocketAddr>() {
            Ok(a) if addrs.contains(&a) => {
                out.err("admin.addr", format!("{a} is already used by a listener"))
            }
            Ok(_) => {}
            Err(_) => out.err("admin.addr", format!("invalid address \"{}\"", admin.addr)),
        }
    }
}

fn check_upstream(name: &str, up: &Upstream, out: &mut Issues) {
    let path = format!("upstreams.{name}");
    if up.targets.is_empty() {
        out.err(format!("{path}.targets"), "at least one target is required");
    } else if up.targets.iter().all(|t| t.backup) {
        out.push(
            Issue::new(
                format!("{path}.targets"),
                "every target is a backup: at least one primary target is required",
            )
            .hint("remove `backup: true` from the targets that should take traffic normally"),
        );
    }
    for (i, t) in up.targets.iter().enumerate() {
        let tp = format!("{path}.targets[{i}]");
        if let Err(m) = check_host_port(&t.addr) {
            out.push(
                Issue::new(format!("{tp}.addr"), m)
                    .hint("write host:port, e.g. 127.0.0.1:9001 or users.internal:80"),
            );
        }
        if t.weight == 0 || t.weight > 10_000 {
            out.err(
                format!("{tp}.weight"),
                format!("weight must be between 1 and 10000, got {}", t.weight),
            );
        }
    }
    match (up.balance, &up.hash_key) {
        (Balance::ConsistentHash, None) => out.push(
            Issue::new(
                format!("{path}.hash_key"),
                "consistent_hash needs a hash_key",
            )
            .hint("hash_key: client_ip | header:NAME | cookie:NAME | query:NAME | path"),
        ),
        (Balance::ConsistentHash, Some(k)) => {
            if let Err(m) = crate::upstream::HashKey::parse(k) {
                out.err(format!("{path}.hash_key"), m);
            }
        }
        (_, Some(_)) => out.push(
            Issue::new(
                format!("{path}.hash_key"),
                "hash_key is only used with balance: consistent_hash",
            )
            .hint("remove hash_key or set balance: consistent_hash"),
        ),
        _ => {}
    }
    if let Some(a) = &up.health.active {
        let hp = format!("{path}.health.active");
        if a.healthy_after == 0 || a.unhealthy_after == 0 {
            out.err(
                hp.clone(),
                "healthy_after and unhealthy_after must be at least 1",
            );
        }
        if a.interval.0.is_zero() || a.timeout.0.is_zero() {
            out.err(hp.clone(), "interval and timeout must be positive");
        }
        if !a.path.starts_with('/') {
            out.err(format!("{hp}.path"), "must start with /");
        }
        check_statuses(
            &format!("{hp}.expected_statuses"),
            &a.expected_statuses,
            out,
        );
    }
    if let Some(p) = &up.health.passive {
        if p.unhealthy_after == 0 {
            out.err(
                format!("{path}.health.passive.unhealthy_after"),
                "must be at least 1",
            );
        }
        check_statuses(&format!("{path}.health.passive.statuses"), &p.statuses, out);
    }
    if up.retry.attempts == 0 || up.retry.attempts > 10 {
        out.err(
            format!("{path}.retry.attempts"),
            format!("must be between 1 and 10, got {}", up.retry.attempts),
        );
    }
    for (i, on) in up.retry.on.iter().enumerate() {
        if let super::schema::RetryOn::Status(s) = on {
            if !(500..=599).contains(s) {
                out.err(
                    format!("{path}.retry.on[{i}]"),
                    format!("only 5xx statuses can be retried, got {s}"),
                );
            }
        }
    }
    if up.resolve_interval.0.is_zero() {
        out.err(format!("{path}.resolve_interval"), "must be positive");
    }
    if let super::schema::Backoff::Exponential { base, max } = up.retry.backoff {
        if max < base {
            out.err(
                format!("{path}.retry.backoff.max"),
                format!("must be at least base ({max} < {base})"),
            );
        }
    }
    if up.retry.max_body.0 > crate::common::defaults::RETRY_BUFFER {
        out.err(
            format!("{path}.retry.max_body"),
            format!(
                "must be at most 64KiB (Pingora's retry buffer), got {} bytes",
                up.retry.max_body.0
            ),
        );
    }
    let b = &up.retry.budget;
    if !(b.ratio >= 0.0 && b.ratio <= 10.0) {
        out.err(
            format!("{path}.retry.budget.ratio"),
            format!("must be between 0 and 10, got {}", b.ratio),
        );
    }
    if !(b.min_per_second >= 0.0 && b.min_per_second <= 1e6) {
        out.err(
            format!("{path}.retry.budget.min_per_second"),
            format!("must be between 0 and 1000000, got {}", b.min_per_second),
        );
    }
    if let Some(cb) = &up.circuit_breaker {
        check_breaker(&format!("{path}.circuit_breaker"), cb, out);
    }
}

fn check_breaker(path: &str, cb: &super::schema::CircuitBreaker, out: &mut Issues) {
    let ratio_ok = |r: f64| r > 0.0 && r <= 1.0;
    if !ratio_ok(cb.failure_ratio) {
        out.err(
            format!("{path}.failure_ratio"),
            format!("must be in (0, 1], got {}", cb.failure_ratio),
        );
    }
    if let Some(s) = &cb.slow_call {
        if !ratio_ok(s.ratio) {
            out.err(
                format!("{path}.slow_call.ratio"),
                format!("must be in (0, 1], got {}", s.ratio),
            );
        }
        within(
            out,
            &format!("{path}.slow_call.threshold"),
            s.threshold.0,
            MS,
            HOUR,
        );
    }
    if cb.min_requests == 0 || cb.min_requests > 1_000_000 {
        out.err(
            format!("{path}.min_requests"),
            "must be between 1 and 1000000",
        );
    }
    if cb.half_open_requests == 0 || cb.half_open_requests > 1000 {
        out.err(
            format!("{path}.half_open_requests"),
            "must be between 1 and 1000",
        );
    }
    within(out, &format!("{path}.window"), cb.window.0, 100 * MS, HOUR);
    within(
        out,
        &format!("{path}.open_for"),
        cb.open_for.0,
        10 * MS,
        HOUR,
    );
    within(
        out,
        &format!("{path}.max_open_for"),
        cb.max_open_for.0,
        10 * MS,
        24 * HOUR,
    );
    if cb.max_open_for < cb.open_for {
        out.err(
            format!("{path}.max_open_for"),
            format!(
                "must be at least open_for ({} < {})",
                cb.max_open_for, cb.open_for
            ),
        );
    }
    if cb.on.is_empty() {
        out.err(
            format!("{path}.on"),
            "at least one failure kind is required",
        );
    }
    for (i, on) in cb.on.iter().enumerate() {
        if let super::schema::FailureOn::Status(s) = on {
            if !(400..=599).contains(s) {
                out.err(
                    format!("{path}.on[{i}]"),
                    format!("only 4xx and 5xx statuses can count as failures, got {s}"),
                );
            }
        }
    }
}

fn check_statuses(path: &str, statuses: &[u16], out: &mut Issues) {
    if statuses.is_empty() {
        out.err(path, "at least one status is required");
    }
    for s in statuses {
        if !(100..=599).contains(s) {
            out.err(path, format!("{s} is not an HTTP status"));
        }
    }
}

fn check_host_port(addr: &str) -> Result<(), String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("\"{addr}\" has no port"));
    };
    if port.parse::<u16>().is_err() {
        return Err(format!("invalid port in \"{addr}\""));
    }
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("invalid host in \"{addr}\""))
    }
}

fn check_upstream_name(c: &Config, name: &str, at: &str, out: &mut Issues) {
    if !c.upstreams.contains_key(name) {
        let known = known_list(c.upstreams.keys().map(String::as_str));
        out.push(
            Issue::new(
                at.to_string(),
                format!("unknown upstream \"{name}\"; known: {known}"),
            )
            .hint("define it under `upstreams:` or fix the name"),
        );
    }
}

fn check_split(c: &Config, r: &super::schema::Route, path: &str, out: &mut Issues) {
    if r.upstream.is_some() || r.aggregate.is_some() {
        out.push(
            Issue::new(
                format!("{path}.upstreams"),
                "a route has one of `upstream`, `upstreams` (a split) and `aggregate`",
            )
            .hint("list every upstream of the split under `upstreams:` with its weight"),
        );
    }
    if r.upstreams.len() < 2 {
        out.err(
            format!("{path}.upstreams"),
            "a split needs at least two upstreams (use `upstream:` for one)",
        );
    }
    let mut seen = HashSet::new();
    for (i, t) in r.upstreams.iter().enumerate() {
        let at = format!("{path}.upstreams[{i}]");
        check_upstream_name(c, &t.name, &format!("{at}.name"), out);
        if !seen.insert(&t.name) {
            out.err(
                format!("{at}.name"),
                format!("\"{}\" is listed twice", t.name),
            );
        }
        if t.weight == 0 || t.weight > 1_000_000 {
            out.err(
                format!("{at}.weight"),
                format!("weight must be between 1 and 1000000, got {}", t.weight),
            );
        }
    }
    if let Some(s) = &r.sticky {
        if let Err(m) = crate::upstream::split::Sticky::parse(s) {
            out.err(format!("{path}.sticky"), m);
        }
    }
}

fn check_routes(c: &Config, out: &mut Issues) {
    let mut names = HashSet::new();
    for (i, r) in c.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if !r.upstreams.is_empty() {
            check_split(c, r, &path, out);
        } else if r.sticky.is_some() {
            out.err(
                format!("{path}.sticky"),
                "sticky needs a split (`upstreams:`)",
            );
        }
        match (&r.upstream, &r.aggregate) {
            (None, None) if !r.upstreams.is_empty() => {}
            (Some(u), None) => check_upstream_name(c, u, &format!("{path}.upstream"), out),
            (None, Some(a)) => {
                for (name, call) in &a.calls {
                    let at = format!("{path}.aggregate.calls.{name}.upstream");
                    check_upstream_name(c, &call.upstream, &at, out);
                }
            }
            (Some(_), Some(_)) => out.push(
                Issue::new(
                    format!("{path}.aggregate"),
                    "a route has either `upstream` or `aggregate`, not both",
                )
                .hint("a composite names an upstream in each of its calls"),
            ),
            (None, None) => out.push(
                Issue::new(
                    path.clone(),
                    "a route needs `upstream`, `upstreams` or `aggregate`",
                )
                .hint("add `upstream: NAME` (one of `upstreams:`) or an `aggregate:` section"),
            ),
        }
        if let Some(m) = &r.mirror {
            check_upstream_name(c, &m.upstream, &format!("{path}.mirror.upstream"), out);
            if r.aggregate.is_some() {
                out.err(
                    format!("{path}.mirror"),
                    "a composite is not mirrored; mirror the routes of its upstreams",
                );
            }
        }
        if let Some(f) = &r.failover {
            check_upstream_name(c, f, &format!("{path}.failover"), out);
            if r.upstream.is_none() {
                out.err(
                    format!("{path}.failover"),
                    "failover needs `upstream` (a composite's calls use `optional` and `fallback`)",
                );
            }
            if r.upstream.as_ref() == Some(f) {
                out.err(
                    format!("{path}.failover"),
                    "the failover upstream must differ from `upstream`",
                );
            }
        }
        if let Some(n) = &r.name {
            if !names.insert(n.clone()) {
                out.err(
                    format!("{path}.name"),
                    format!("duplicate route name \"{n}\""),
                );
            }
        }
        for (j, m) in r.matcher.methods.iter().enumerate() {
            if http::Method::from_bytes(m.as_bytes()).is_err()
                || m.chars().any(|c| c.is_ascii_lowercase())
            {
                out.push(
                    Issue::new(
                        format!("{path}.match.methods[{j}]"),
                        format!("invalid method \"{m}\""),
                    )
                    .hint("methods are upper case tokens such as GET, POST, PUT"),
                );
            }
        }
        if let Some(p) = &r.rewrite.strip_prefix {
            if !p.starts_with('/') {
                out.err(format!("{path}.rewrite.strip_prefix"), "must start with /");
            }
        }
        if let Some(size) = r.max_request_body {
            if size.0 == 0 {
                out.err(format!("{path}.max_request_body"), "must be positive");
            }
        }
    }
}
