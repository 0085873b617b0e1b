//! A route's static fallback: the answer sent instead of an error when its upstream cannot
//! answer (open breaker, no healthy target, connection failure, timeout, a 5xx answer). The
//! answer is marked `Postern-Fallback: ?1` (an RFC 8941 boolean) so clients and logs can tell.
//! On a cached route, `stale-if-error` comes first: Pingora serves a stale entry before the
//! request fails, and only a request without one reaches the fallback.

use crate::common::issue::Issue;
use crate::error::GatewayError;
use crate::reply::Reply;
use crate::upstream::config::{FallbackKind, FallbackOn, RouteFallback};
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::{Error, ErrorSource, ErrorType};

/// Why a request could not be answered by its upstream (the `reason` label and log field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    CircuitOpen,
    NoHealthyTarget,
    ConnectError,
    Timeout,
    UpstreamError,
    Status(u16),
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::CircuitOpen => "circuit_open",
            Reason::NoHealthyTarget => "no_healthy_target",
            Reason::ConnectError => "connect_error",
            Reason::Timeout => "timeout",
            Reason::UpstreamError => "upstream_error",
            Reason::Status(_) => "5xx",
        }
    }

    /// The upstream-side reason of a failed request: Postern's own decision when there is one,
    /// else Pingora's error. `None` for anything the client caused (those never fall back).
    pub fn of(decided: Option<&GatewayError>, e: &Error) -> Option<Reason> {
        if let Some(g) = decided {
            return match g {
                GatewayError::CircuitOpen { .. } => Some(Reason::CircuitOpen),
                GatewayError::NoHealthyTarget => Some(Reason::NoHealthyTarget),
                GatewayError::UpstreamStatus(s) => Some(Reason::Status(*s)),
                GatewayError::UpstreamTimeout => Some(Reason::Timeout),
                GatewayError::BadGateway => Some(Reason::UpstreamError),
                _ => None,
            };
        }
        if e.esource() != &ErrorSource::Upstream {
            return None;
        }
        Some(match e.etype() {
            ErrorType::ConnectTimedout
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout => Reason::Timeout,
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::ConnectProxyFailure
            | ErrorType::TLSHandshakeFailure
            | ErrorType::SocketError
            | ErrorType::BindError => Reason::ConnectError,
            ErrorType::HTTPStatus(s) if *s >= 500 => Reason::Status(*s),
            _ => Reason::UpstreamError,
        })
    }
}

/// Fields the gateway writes itself on a fallback answer.
const MANAGED: [&str; 7] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "postern-fallback",
    "x-request-id",
];

/// A compiled fallback.
#[derive(Debug)]
pub struct Fallback {
    on: Vec<FallbackOn>,
    pub status: u16,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Fallback {
    /// `path`: the fallback's place in the config, for messages.
    pub fn compile(path: &str, c: &RouteFallback) -> Result<Fallback, Vec<Issue>> {
        let mut issues = Vec::new();
        let body = match (&c.body, &c.body_file) {
            (Some(b), None) => Bytes::from(b.clone()),
            (None, Some(f)) => match std::fs::read(f) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    issues.push(Issue::new(
                        format!("{path}.body_file"),
                        format!("cannot read {f}: {e}"),
                    ));
                    Bytes::new()
                }
            },
            (Some(_), Some(_)) => {
                issues.push(Issue::new(path, "set body or body_file, not both"));
                Bytes::new()
            }
            (None, None) => {
                issues.push(
                    Issue::new(path, "a fallback needs a body or a body_file")
                        .hint("body: '{\"items\": []}'  (an empty answer is written body: '')"),
                );
                Bytes::new()
            }
        };
        if !(200..=599).contains(&c.status) {
            issues.push(Issue::new(
                format!("{path}.status"),
                format!("{} is not a final HTTP status", c.status),
            ));
        }
        if c.on.is_empty() {
            issues.push(Issue::new(
                format!("{path}.on"),
                "at least one condition is required",
            ));
        }
        for (i, o) in c.on.iter().enumerate() {
            if let FallbackOn::Status(s) = o {
                if !(500..=599).contains(s) {
                    issues.push(Issue::new(
                        format!("{path}.on[{i}]"),
                        format!("only upstream 5xx statuses fall back, got {s}"),
                    ));
                }
            }
        }
        let mut headers = Vec::new();
        let mut typed = false;
        for (k, v) in &c.headers {
            let name = HeaderName::from_bytes(k.as_bytes());
            let value = HeaderValue::from_str(v);
            match (name, value) {
                (Ok(n), Ok(v)) => {
                    if MANAGED.contains(&n.as_str()) {
                        issues.push(Issue::new(
                            format!("{path}.headers.{k}"),
                            "this field is set by the gateway",
                        ));
                    }
                    typed |= n == http::header::CONTENT_TYPE;
                    headers.push((n, v));
                }
                _ => issues.push(Issue::new(
                    format!("{path}.headers.{k}"),
                    "not a valid header field",
                )),
            }
        }
        if !typed {
            let json = serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok();
            let ct = if json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            headers.push((http::header::CONTENT_TYPE, HeaderValue::from_static(ct)));
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        Ok(Fallback {
            on: c.on.clone(),
            status: c.status,
            headers,
            body,
        })
    }

    /// Does this fallback answer for `reason`?
    pub fn covers(&self, reason: Reason) -> bool {
        let kind = match reason {
            Reason::CircuitOpen => FallbackKind::CircuitOpen,
            Reason::NoHealthyTarget => FallbackKind::NoHealthyTarget,
            Reason::ConnectError => FallbackKind::ConnectError,
            Reason::Timeout => FallbackKind::Timeout,
            Reason::UpstreamError => FallbackKind::UpstreamError,
            Reason::Status(s) => {
                return self
                    .on
                    .contains(&FallbackOn::Kind(FallbackKind::ServerError))
                    || self.on.contains(&FallbackOn::Status(s))
            }
        };
        self.on.contains(&FallbackOn::Kind(kind))
    }

    /// Whether an upstream answer with this status is to be replaced (a 5xx it covers).
    pub fn covers_status(&self, status: u16) -> bool {
        status >= 500 && self.covers(Reason::Status(status))
    }

    /// The answer (the gateway adds `Content-Length` and the request id).
    pub fn reply(&self) -> Reply {
        let mut headers = self.headers.clone();
        headers.push((
            HeaderName::from_static("postern-fallback"),
            HeaderValue::from_static("?1"),
        ));
        Reply {
            status: self.status,
            headers,
            body: self.body.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<Fallback, Vec<Issue>> {
        Fallback::compile("routes[0].fallback", &yaml_serde::from_str(yaml).unwrap())
    }

    #[test]
    fn conditions_and_content_type() {
        let f = compile("{ on: [circuit_open, 503], body: '{\"items\":[]}' }").unwrap();
        assert!(f.covers(Reason::CircuitOpen));
        assert!(!f.covers(Reason::Timeout));
        assert!(f.covers_status(503) && !f.covers_status(500));
        let r = f.reply();
        assert_eq!(r.status, 200);
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/json"));
        let text = compile("{ on: [5xx], body: 'try later', status: 503 }").unwrap();
        assert!(text.covers_status(500) && text.covers_status(599));
        assert!(text
            .reply()
            .headers
            .iter()
            .any(|(_, v)| v.as_bytes().starts_with(b"text/plain")));
    }

    #[test]
    fn bad_fallbacks_are_refused() {
        assert!(compile("{ status: 200 }").is_err(), "no body");
        assert!(compile("{ body: x, body_file: /nope }").is_err());
        assert!(compile("{ body: x, body_file: /nonexistent/file }").is_err());
        assert!(compile("{ body: x, on: [404] }").is_err());
        assert!(compile("{ body: x, status: 99 }").is_err());
        assert!(compile("{ body: x, headers: { content-length: '3' } }").is_err());
        assert!(compile("{ body: x, on: [] }").is_err());
    }

    #[test]
    fn reasons_of_pingora_errors() {
        let up = |t| {
            let mut e = Error::new(t);
            e.esource = ErrorSource::Upstream;
            e
        };
        assert_eq!(
            Reason::of(None, &up(ErrorType::ConnectRefused)),
            Some(Reason::ConnectError)
        );
        assert_eq!(
            Reason::of(None, &up(ErrorType::ReadTimedout)),
            Some(Reason::Timeout)
        );
        assert_eq!(Reason::of(None, &Error::new(ErrorType::ReadError)), None);
        assert_eq!(
            Reason::of(Some(&GatewayError::NoRoute), &up(ErrorType::ReadError)),
            None
        );
    }
}
