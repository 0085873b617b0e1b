//! The router: a pure function from a request's method, host, path, headers and query to the
//! most specific route. It never sees a Pingora session.
//!
//! Precedence (documented in the README):
//! 1. Host: routes for the exact host, then for the longest matching `*.suffix`, then routes
//!    without a host condition.
//! 2. Within a host group, a full-path match (exact or `{param}` segments) beats a prefix (`/x/*`);
//!    among full matches a static segment beats a parameter at the first position where they
//!    differ; among prefixes the longer one wins.
//! 3. Routes with the same pattern are tried in declaration order; the first whose methods,
//!    headers and query conditions all hold wins.
//!
//! Matching allocates only when parameters are captured.

pub mod matcher;
pub mod path;
pub mod pattern;

use http::{HeaderMap, HeaderName, Method};
use matcher::{query_matches, ValueMatch};
use pattern::{Pattern, Segment};
use std::collections::HashMap;

/// What the router needs to know about a request.
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Host as the client sent it (any case; a port is ignored).
    pub host: Option<&'a str>,
    /// A normalized path (see [`path::normalize`]).
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
}

/// The conditions of a route besides host and path.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
}

impl Conditions {
    fn accepts(&self, r: &RequestView<'_>) -> bool {
        (self.methods.is_empty() || self.methods.contains(r.method))
            && self.headers.iter().all(|(name, m)| {
                r.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| m.matches(v))
            })
            && self.query.iter().all(|(k, m)| query_matches(r.query, k, m))
    }
}

/// Positions of captured values in the matched path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captures {
    /// `(start, end)` of each `{param}`, in pattern order.
    pub params: Vec<(u32, u32)>,
    /// Start of the part matched by a prefix's `*` (None for full matches).
    pub rest: Option<u32>,
}

/// The route found for a request.
pub struct Found<'a, T> {
    pub value: &'a T,
    pub captures: Captures,
}

struct Entry<T> {
    value: T,
    conditions: Conditions,
}

#[derive(Default)]
struct Node {
    statics: HashMap<Box<str>, Node>,
    param: Option<Box<Node>>,
    exact: Vec<usize>,
    prefix: Vec<usize>,
}

/// Routes of one host group.
#[derive(Default)]
struct Table {
    root: Node,
}

pub struct Router<T> {
    entries: Vec<Entry<T>>,
    exact_hosts: HashMap<Box<str>, Table>,
    /// (".example.com", table), longest suffix first.
    wildcard_hosts: Vec<(Box<str>, Table)>,
    any_host: Table,
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Router {
            entries: Vec::new(),
            exact_hosts: HashMap::new(),
            wildcard_hosts: Vec::new(),
            any_host: Table::default(),
        }
    }
}

/// Validates a host pattern: `api.example.com` or `*.example.com`.
pub fn check_host(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    let ok = !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid host \"{h}\"; write a name such as api.example.com or *.example.com"
        ))
    }
}

impl<T> Router<T> {
    /// Adds a route. Insertion order is declaration order (the tie-breaker).
    pub fn insert(
        &mut self,
        hosts: &[String],
        pattern: &Pattern,
        conditions: Conditions,
        value: T,
    ) {
        let idx = self.entries.len();
        self.entries.push(Entry { value, conditions });
        if hosts.is_empty() {
            self.any_host.insert(pattern, idx);
        }
        for h in hosts {
            let h = h.to_ascii_lowercase();
            if let Some(suffix) = h.strip_prefix('*') {
                let pos = self.wildcard_hosts.iter().position(|(s, _)| **s == *suffix);
                let pos = pos.unwrap_or_else(|| {
                    self.wildcard_hosts.push((suffix.into(), Table::default()));
                    self.wildcard_hosts
                        .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
                    self.wildcard_hosts
                        .iter()
                        .position(|(s, _)| **s == *suffix)
                        .unwrap_or(0)
                });
                self.wildcard_hosts[pos].1.insert(pattern, idx);
            } else {
                self.exact_hosts
                    .entry(h.into())
                    .or_default()
                    .insert(pattern, idx);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every route, in insertion order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|e| &e.value)
    }

    /// Finds the most specific route for `req`.
    pub fn find(&self, req: &RequestView<'_>) -> Option<Found<'_, T>> {
        let mut buf = [0u8; 255];
        // Most gateways route on paths only: no host work then.
        let host_routes = !self.exact_hosts.is_empty() || !self.wildcard_hosts.is_empty();
        let host = req
            .host
            .filter(|_| host_routes)
            .and_then(|h| lower(h, &mut buf));
        if let Some(h) = host {
            if let Some(t) = self.exact_hosts.get(h) {
                if let Some(f) = self.find_in(t, req) {
                    return Some(f);
                }
            }
            for (suffix, t) in &self.wildcard_hosts {
                if h.len() > suffix.len() && h.ends_with(&**suffix) {
                    if let Some(f) = self.find_in(t, req) {
                        return Some(f);
                    }
                }
            }
        }
        self.find_in(&self.any_host, req)
    }

    fn find_in(&self, t: &Table, req: &RequestView<'_>) -> Option<Found<'_, T>> {
        let start = Some(1);
        let mut caps = Vec::new();
        if let Some(e) = self.full(&t.root, req, start, &mut caps) {
            let captures = Captures {
                params: caps,
                rest: None,
            };
            return Some(Found {
                value: &self.entries[e].value,
                captures,
            });
        }
        let mut best = None;
        caps.clear();
        self.prefix(&t.root, req, start, 0, &mut caps, &mut best);
        best.map(|(_, e, captures)| Found {
            value: &self.entries[e].value,
            captures,
        })
    }

    fn first_accepting(&self, cands: &[usize], req: &RequestView<'_>) -> Option<usize> {
        cands
            .iter()
            .copied()
            .find(|&e| self.entries[e].conditions.accepts(req))
    }

    fn full(
        &self,
        n: &Node,
        req: &RequestView<'_>,
        pos: Option<usize>,
        caps: &mut Vec<(u32, u32)>,
    ) -> Option<usize> {
        let Some(p) = pos else {
            return self.first_accepting(&n.exact, req);
        };
        let (seg, next) = segment(req.path, p);
        if let Some(child) = n.statics.get(seg) {
            if let Some(e) = self.full(child, req, next, caps) {
                return Some(e);
            }
        }
        if let (Some(child), false) = (&n.param, seg.is_empty()) {
            caps.push((p as u32, (p + seg.len()) as u32));
            if let Some(e) = self.full(child, req, next, caps) {
                return Some(e);
            }
            caps.pop();
        }
        None
    }

    fn prefix(
        &self,
        n: &Node,
        req: &RequestView<'_>,
        pos: Option<usize>,
        depth: usize,
        caps: &mut Vec<(u32, u32)>,
        best: &mut Option<(usize, usize, Captures)>,
    ) {
        if best.as_ref().is_none_or(|b| depth > b.0) {
            if let Some(e) = self.first_accepting(&n.prefix, req) {
                let rest = pos.unwrap_or(req.path.len()) as u32;
                *best = Some((
                    depth,
                    e,
                    Captures {
                        params: caps.clone(),
                        rest: Some(rest),
                    },
                ));
            }
        }
        let Some(p) = pos else { return };
        let (seg, next) = segment(req.path, p);
        if let Some(child) = n.statics.get(seg) {
            self.prefix(child, req, next, depth + 1, caps, best);
        }
        if let (Some(child), false) = (&n.param, seg.is_empty()) {
            caps.push((p as u32, (p + seg.len()) as u32));
            self.prefix(child, req, next, depth + 1, caps, best);
            caps.pop();
        }
    }
}

impl Table {
    fn insert(&mut self, pattern: &Pattern, idx: usize) {
        let mut node = &mut self.root;
        for seg in &pattern.segments {
            node = match seg {
                Segment::Static(s) => node.statics.entry(s.as_str().into()).or_default(),
                Segment::Param(_) => node.param.get_or_insert_with(Default::default),
            };
        }
        if pattern.prefix {
            node.prefix.push(idx);
        } else {
            node.exact.push(idx);
        }
    }
}

/// The segment starting at `p` and where the next one starts (None at the end of the path).
fn segment(path: &str, p: usize) -> (&str, Option<usize>) {
    let rest = path.get(p..).unwrap_or("");
    // A byte scan: paths are short, and `str::find` sets up a searcher each time.
    match rest.bytes().position(|b| b == b'/') {
        Some(i) => (&rest[..i], Some(p + i + 1)),
        None => (rest, None),
    }
}

/// Lower-cases a host into `buf` and strips a port; None if it does not fit.
fn lower<'b>(host: &str, buf: &'b mut [u8; 255]) -> Option<&'b str> {
    let host = strip_port(host);
    let b = host.as_bytes();
    if b.len() > buf.len() {
        return None;
    }
    for (d, s) in buf.iter_mut().zip(b) {
        *d = s.to_ascii_lowercase();
    }
    std::str::from_utf8(&buf[..b.len()]).ok()
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests;
