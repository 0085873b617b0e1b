//! W3C Trace Context (`traceparent`) propagation: an incoming trace is continued, otherwise a new
//! one is started, and every upstream attempt gets its own child span id. `tracestate` is passed
//! through untouched. Spans are not exported yet (no OTLP): this keeps the traces of the services
//! behind Postern connected.

use std::fmt::Write;

/// The trace a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span (absent for a trace started here).
    pub parent: Option<[u8; 8]>,
    /// Postern's own span for this request (the parent of every upstream call's span).
    pub span_id: [u8; 8],
    pub flags: u8,
}

fn new_span_id() -> [u8; 8] {
    let mut span: [u8; 8] = rand::random();
    if span == [0; 8] {
        span[7] = 1;
    }
    span
}

impl TraceContext {
    /// Parses `traceparent` (version 00 layout; later versions are read the same way, as the
    /// spec asks); None when absent or invalid (then a new trace is started).
    pub fn parse(v: &str) -> Option<TraceContext> {
        let mut parts = v.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2
            || version == "ff"
            || trace.len() != 32
            || parent.len() != 16
            || flags.len() != 2
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id: [u8; 16] = hex(trace)?.try_into().ok()?;
        let parent_id: [u8; 8] = hex(parent)?.try_into().ok()?;
        let flags = hex(flags)?[0];
        if trace_id == [0; 16]
            || parent_id == [0; 8]
            || !is_lower_hex(trace)
            || !is_lower_hex(parent)
        {
            return None;
        }
        Some(TraceContext {
            trace_id,
            parent: Some(parent_id),
            span_id: new_span_id(),
            flags,
        })
    }

    /// A new trace; `sampled` sets the W3C sampled flag (01).
    pub fn new_root_sampled(sampled: bool) -> TraceContext {
        let mut trace_id: [u8; 16] = rand::random();
        if trace_id == [0; 16] {
            trace_id[15] = 1;
        }
        TraceContext {
            trace_id,
            parent: None,
            span_id: new_span_id(),
            flags: u8::from(sampled),
        }
    }

    /// A new trace, not sampled.
    pub fn new_root() -> TraceContext {
        Self::new_root_sampled(false)
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// The `traceparent` for one upstream call, with a fresh span id.
    pub fn child_header(&self) -> String {
        self.child().1
    }

    /// A new span for one upstream call: its id and the `traceparent` that names it.
    pub fn child(&self) -> ([u8; 8], String) {
        let span = new_span_id();
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        out.push_str(&to_hex(&self.trace_id));
        out.push('-');
        out.push_str(&to_hex(&span));
        let _ = write!(out, "-{:02x}", self.flags);
        (span, out)
    }
}

/// Lower-case hex of bytes (trace and span ids).
pub fn hex_id(b: &[u8]) -> String {
    to_hex(b)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn to_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_continues_a_trace() {
        let t =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = t.child_header();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(&child[36..52], "00f067aa0ba902b7");
    }

    #[test]
    fn rejects_invalid_traceparents() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
    }
}
