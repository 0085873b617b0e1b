//! Retry decisions, called only from `fail_to_connect` (nothing was sent: always safe) and
//! `error_while_proxy` (the request may have reached the target: only idempotent methods).

use crate::upstream::config::{Backoff, Retry, RetryKind, RetryOn};
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, RetryType};
use std::time::Duration;

/// Tries on closed pooled connections allowed per request, beyond `retry.attempts`.
pub const MAX_STALE_TRIES: u32 = 3;

/// A failure on a pooled connection that the target had already closed (idle close, restart,
/// or the target died) before any answer: Pingora marks it `ReusedOnly`, and it applies when
/// the connection was indeed reused. Not an attempt and not a health failure of the target.
pub fn is_stale_pooled(e: &Error, reused: bool) -> bool {
    let mut decided = e.retry;
    decided.decide_reuse(reused);
    matches!(e.retry, RetryType::ReusedOnly) && matches!(decided, RetryType::Decided(true))
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total tries including the first.
    pub attempts: u32,
    pub connect_error: bool,
    pub timeout: bool,
    pub reset: bool,
    /// Upstream statuses retried on another target (idempotent requests only).
    pub statuses: Vec<u16>,
    pub backoff: Backoff,
    pub per_try_timeout: Option<Duration>,
    pub idempotency_key: bool,
    /// Bodies above this many bytes are not sent again once they went out.
    pub max_body: usize,
}

impl RetryPolicy {
    pub fn new(c: &Retry) -> RetryPolicy {
        let has = |k| c.on.contains(&RetryOn::Kind(k));
        RetryPolicy {
            attempts: c.attempts.max(1),
            connect_error: has(RetryKind::ConnectError),
            timeout: has(RetryKind::Timeout),
            reset: has(RetryKind::Reset),
            statuses: c
                .on
                .iter()
                .filter_map(|o| match o {
                    RetryOn::Status(s) => Some(*s),
                    RetryOn::Kind(_) => None,
                })
                .collect(),
            backoff: c.backoff,
            per_try_timeout: c.per_try_timeout.map(|d| d.0),
            idempotency_key: c.idempotency_key,
            max_body: usize::try_from(c.max_body.0).unwrap_or(usize::MAX),
        }
    }

    /// Can the request body be sent again: all of it is still in Pingora's retry buffer, and
    /// neither what was read nor the declared `Content-Length` is above `max_body`.
    pub fn body_replayable(&self, truncated: bool, read: usize, req: &RequestHeader) -> bool {
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok())
            .unwrap_or(0);
        !truncated && read.max(declared) <= self.max_body
    }

    /// May this request be sent again after it (maybe) reached a target? Idempotent methods,
    /// and requests with an `Idempotency-Key` field when `idempotency_key` is set.
    pub fn replayable_method(&self, req: &RequestHeader) -> bool {
        req.method.is_idempotent()
            || (self.idempotency_key && req.headers.contains_key("idempotency-key"))
    }

    /// The pause before retry number `retry` (1-based): fixed, or full jitter.
    pub fn pause(&self, retry: u32) -> Duration {
        match self.backoff {
            Backoff::Fixed(d) => d.0,
            Backoff::Exponential { base, max } => {
                let cap = base
                    .0
                    .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
                    .min(max.0);
                cap.mul_f64(rand::random::<f64>())
            }
        }
    }

    /// The longest pause a retry may take (the bound of an upstream's `Retry-After`).
    pub fn max_pause(&self) -> Duration {
        match self.backoff {
            Backoff::Fixed(d) => d.0,
            Backoff::Exponential { max, .. } => max.0,
        }
    }

    /// After a failed connection attempt number `tries` (1-based).
    pub fn after_connect_failure(&self, tries: u32, e: &Error) -> bool {
        if tries >= self.attempts {
            return false;
        }
        match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => {
                self.connect_error || self.timeout
            }
            _ => self.connect_error,
        }
    }

    /// After a closed pooled connection ([`is_stale_pooled`]), `stale_tries` so far: try again
    /// on a new connection (idempotent, replayable requests only).
    pub fn after_stale_connection(
        &self,
        stale_tries: u32,
        idempotent: bool,
        body_replayable: bool,
    ) -> bool {
        idempotent && body_replayable && stale_tries <= MAX_STALE_TRIES
    }

    /// Whether an upstream answer with `status` should be replaced by a retry.
    pub fn retries_status(
        &self,
        tries: u32,
        status: u16,
        idempotent: bool,
        body_replayable: bool,
    ) -> bool {
        tries < self.attempts && idempotent && body_replayable && self.statuses.contains(&status)
    }

    /// After a failure once the request was (maybe) sent upstream.
    pub fn after_proxy_failure(
        &self,
        tries: u32,
        e: &Error,
        idempotent: bool,
        body_replayable: bool,
    ) -> bool {
        if tries >= self.attempts || !idempotent || !body_replayable {
            return false;
        }
        match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => self.timeout,
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError => {
                self.reset
            }
            ErrorType::HTTPStatus(code) => self.statuses.contains(code),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> RetryPolicy {
        RetryPolicy::new(&yaml_serde::from_str(yaml).unwrap())
    }

    #[test]
    fn connect_failures_are_retried_within_budget() {
        let p = policy("{ attempts: 3, on: [connect_error] }");
        let e = Error::new_up(ErrorType::ConnectRefused);
        assert!(p.after_connect_failure(1, &e));
        assert!(p.after_connect_failure(2, &e));
        assert!(!p.after_connect_failure(3, &e));
    }

    #[test]
    fn full_jitter_stays_under_the_exponential_cap() {
        let p = policy("{ attempts: 5, backoff: { base: 10ms, max: 50ms } }");
        for retry in 1..=6 {
            let cap = Duration::from_millis((10u64 << (retry - 1)).min(50));
            let pauses: Vec<Duration> = (0..200).map(|_| p.pause(retry)).collect();
            assert!(pauses.iter().all(|d| *d <= cap), "retry {retry}");
            // Spread over the range (not a constant): some pause is under half the cap.
            assert!(pauses.iter().any(|d| *d < cap / 2), "retry {retry}");
        }
        assert_eq!(p.max_pause(), Duration::from_millis(50));
        let fixed = policy("{ backoff: 25ms }");
        assert_eq!(fixed.pause(3), Duration::from_millis(25));
    }

    #[test]
    fn idempotency_keys_make_posts_replayable_when_enabled() {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.insert_header("idempotency-key", "k1").unwrap();
        assert!(!policy("{}").replayable_method(&req));
        assert!(policy("{ idempotency_key: true }").replayable_method(&req));
        let get = RequestHeader::build("GET", b"/", None).unwrap();
        assert!(policy("{}").replayable_method(&get));
    }

    #[test]
    fn bodies_above_max_body_are_not_replayed() {
        let p = policy("{ max_body: 1KiB }");
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        assert!(p.body_replayable(false, 1024, &req));
        assert!(!p.body_replayable(false, 1025, &req));
        assert!(
            !p.body_replayable(true, 10, &req),
            "Pingora's buffer overflowed"
        );
        // Declared larger, of which little was read yet: not replayed either.
        req.insert_header("content-length", "4096").unwrap();
        assert!(!p.body_replayable(false, 10, &req));
        req.insert_header("content-length", "oops").unwrap();
        assert!(
            p.body_replayable(false, 10, &req),
            "an unreadable length counts as 0"
        );
    }

    #[test]
    fn proxy_failures_need_idempotency_and_opt_in() {
        let p = policy("{ attempts: 2, on: [timeout] }");
        let e = Error::new_up(ErrorType::ReadTimedout);
        assert!(p.after_proxy_failure(1, &e, true, true));
        assert!(!p.after_proxy_failure(1, &e, false, true));
        assert!(!p.after_proxy_failure(1, &Error::new_up(ErrorType::ConnectionClosed), true, true));
    }
}
