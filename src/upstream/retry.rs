//! Retry decisions, called only from `fail_to_connect` (nothing was sent: always safe) and
//! `error_while_proxy` (the request may have reached the target: only idempotent methods).

use crate::config::schema::{Retry, RetryKind, RetryOn};
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
    pub backoff: Duration,
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
            backoff: c.backoff.0,
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
    fn proxy_failures_need_idempotency_and_opt_in() {
        let p = policy("{ attempts: 2, on: [timeout] }");
        let e = Error::new_up(ErrorType::ReadTimedout);
        assert!(p.after_proxy_failure(1, &e, true, true));
        assert!(!p.after_proxy_failure(1, &e, false, true));
        assert!(!p.after_proxy_failure(1, &Error::new_up(ErrorType::ConnectionClosed), true, true));
    }
}
