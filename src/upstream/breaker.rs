//! Circuit breaker of an upstream: closed (requests flow, outcomes are counted in a sliding
//! window), open (requests fail fast until `open_for` passed), half-open (a few trial requests;
//! all succeed: closed; one fails: open again for twice as long, up to `max_open_for`).
//!
//! The state is local to the node and lives outside config snapshots (see
//! `Shared::breaker`), so a reload keeps it while the upstream's breaker settings are unchanged.
//! Passive health ejects single targets after failures in a row; the breaker judges the whole
//! upstream. A failure counts for both, once each: a target ejection does not feed the breaker
//! and an open breaker does not eject targets.
//!
//! Every method takes the time (`now`, milliseconds on the monotonic clock of
//! [`super::target::now_ms`]) so that tests drive it with a clock of their own.

use super::window::Window;
use crate::observability::metrics::BreakerMetrics;
use crate::upstream::config::{CircuitBreaker, FailureKind, FailureOn};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            1 => State::HalfOpen,
            2 => State::Open,
            _ => State::Closed,
        }
    }
}

/// How a request ended, as the breaker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    ConnectError,
    Timeout,
    Reset,
    Status(u16),
}

/// Which outcomes are failures.
#[derive(Debug, Clone)]
struct FailureSet {
    connect_error: bool,
    timeout: bool,
    reset: bool,
    server_error: bool,
    statuses: Vec<u16>,
}

impl FailureSet {
    fn new(on: &[FailureOn]) -> FailureSet {
        let has = |k| on.contains(&FailureOn::Kind(k));
        FailureSet {
            connect_error: has(FailureKind::ConnectError),
            timeout: has(FailureKind::Timeout),
            reset: has(FailureKind::Reset),
            server_error: has(FailureKind::ServerError),
            statuses: on
                .iter()
                .filter_map(|o| match o {
                    FailureOn::Status(s) => Some(*s),
                    FailureOn::Kind(_) => None,
                })
                .collect(),
        }
    }

    fn is_failure(&self, o: Outcome) -> bool {
        match o {
            Outcome::ConnectError => self.connect_error,
            Outcome::Timeout => self.timeout,
            Outcome::Reset => self.reset,
            Outcome::Status(s) => {
                (self.server_error && (500..=599).contains(&s)) || self.statuses.contains(&s)
            }
        }
    }
}

/// A permission to send one request, from [`Breaker::admit`]. A trial permit that is dropped
/// without an outcome (the client went away first) is given back.
pub struct Permit {
    /// Set for trial permits only (closed-state permits cost nothing).
    trial: Option<Arc<Breaker>>,
    generation: u64,
    reported: bool,
}

impl Permit {
    pub fn is_trial(&self) -> bool {
        self.trial.is_some()
    }

    fn closed() -> Permit {
        Permit {
            trial: None,
            generation: 0,
            reported: true,
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Permit(trial: {})", self.is_trial())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let (Some(b), false) = (&self.trial, self.reported) {
            let mut g = b.inner.lock();
            if b.state() == State::HalfOpen && g.generation == self.generation {
                g.permits += 1;
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// Open: until when. Half-open: when it half-opened.
    until: u64,
    /// The open time of the current (or last) opening, doubled after each failed trial.
    open_for: u64,
    /// Half-open: trial permits left to hand out, and trial successes so far.
    permits: u32,
    successes: u32,
    /// Changes at each transition: outcomes of permits from an earlier state are not trials.
    generation: u64,
}

pub struct Breaker {
    upstream: String,
    failures: FailureSet,
    failure_ratio: f64,
    min_requests: u32,
    consecutive_failures: u32,
    slow: Option<(u64, f64)>,
    /// Closed state: requests, failures and slow answers (atomics: no lock per request).
    window: Window<3>,
    /// Failures in a row.
    consecutive: AtomicU32,
    open_for: u64,
    max_open_for: u64,
    half_open_requests: u32,
    /// `State` as u8: read without the lock on every request.
    state: AtomicU8,
    inner: Mutex<Inner>,
    metrics: BreakerMetrics,
}

/// The breaker refused the request; `retry_after_ms` until it may let one through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after_ms: u64,
}

impl Breaker {
    pub fn new(
        upstream: &str,
        c: &CircuitBreaker,
        metrics: &crate::observability::metrics::Metrics,
    ) -> Breaker {
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        let b = Breaker {
            upstream: upstream.to_string(),
            failures: FailureSet::new(&c.on),
            failure_ratio: c.failure_ratio,
            min_requests: c.min_requests.max(1),
            consecutive_failures: c.consecutive_failures,
            slow: c.slow_call.as_ref().map(|s| (ms(s.threshold.0), s.ratio)),
            window: Window::new(ms(c.window.0)),
            consecutive: AtomicU32::new(0),
            open_for: ms(c.open_for.0).max(1),
            max_open_for: ms(c.max_open_for.0).max(ms(c.open_for.0)),
            half_open_requests: c.half_open_requests.max(1),
            state: AtomicU8::new(State::Closed as u8),
            inner: Mutex::new(Inner {
                until: 0,
                open_for: ms(c.open_for.0).max(1),
                permits: 0,
                successes: 0,
                generation: 0,
            }),
            metrics: BreakerMetrics::new(metrics, upstream),
        };
        b.metrics.set_state(State::Closed as i64);
        b
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Relaxed))
    }

    /// The state at `now`: an open breaker whose `open_for` has passed half-opens now, with or
    /// without a request, so that what the admin view and `postern_circuit_state` report is
    /// true of an idle upstream too (the admin view and each metrics scrape call this).
    pub fn refresh(&self, now: u64) -> State {
        if self.state() == State::Open {
            let mut g = self.inner.lock();
            if self.state() == State::Open && now >= g.until {
                self.half_open(&mut g, now);
            }
        }
        self.state()
    }

    fn half_open(&self, g: &mut Inner, now: u64) {
        g.permits = self.half_open_requests;
        g.successes = 0;
        g.until = now;
        self.transition(g, State::HalfOpen);
    }

    /// Milliseconds until an open breaker half-opens (0 when not open).
    pub fn retry_after_ms(&self, now: u64) -> u64 {
        match self.state() {
            State::Open => self.inner.lock().until.saturating_sub(now),
            _ => 0,
        }
    }

    /// May a request be sent now? Closed: yes, without taking the lock.
    pub fn admit(self: &Arc<Self>, now: u64) -> Result<Permit, Refused> {
        if self.state() == State::Closed {
            return Ok(Permit::closed());
        }
        let mut g = self.inner.lock();
        match self.state() {
            State::Closed => Ok(Permit::closed()),
            State::Open if now < g.until => Err(Refused {
                retry_after_ms: g.until - now,
            }),
            State::Open => {
                self.half_open(&mut g, now);
                self.take_trial(&mut g)
            }
            State::HalfOpen => self.take_trial(&mut g),
        }
    }

    fn take_trial(self: &Arc<Self>, g: &mut Inner) -> Result<Permit, Refused> {
        if g.permits == 0 {
            // The trials are under way: callers retry after about one open period at most.
            return Err(Refused {
                retry_after_ms: g.open_for.min(1000),
            });
        }
        g.permits -= 1;
        Ok(Permit {
            trial: Some(self.clone()),
            generation: g.generation,
            reported: false,
        })
    }

    /// Whether outcomes need the time each request took (a slow-call rule is set).
    pub fn times_calls(&self) -> bool {
        self.slow.is_some()
    }

    /// Records the outcome of a request sent under `permit`, `elapsed_ms` after it was sent.
    /// Closed, a success costs a few atomic additions; the lock is taken for failures that may
    /// open the breaker and in the half-open state.
    pub fn record(&self, permit: &mut Permit, outcome: Outcome, elapsed_ms: u64, now: u64) {
        let failed = self.failures.is_failure(outcome);
        let slow = self.slow.is_some_and(|(t, _)| elapsed_ms > t);
        permit.reported = true;
        if self.state() == State::Closed && !permit.is_trial() {
            self.window
                .add(now, [1, u32::from(failed), u32::from(slow)]);
            let consecutive = match failed {
                true => self.consecutive.fetch_add(1, Relaxed) + 1,
                false => {
                    self.consecutive.store(0, Relaxed);
                    0
                }
            };
            if (failed || slow) && self.should_open(consecutive, now) {
                let mut g = self.inner.lock();
                if self.state() == State::Closed {
                    g.open_for = self.open_for;
                    g.until = now + g.open_for;
                    self.transition(&mut g, State::Open);
                }
            }
            return;
        }
        let mut g = self.inner.lock();
        if self.state() != State::HalfOpen
            || !permit.is_trial()
            || permit.generation != g.generation
        {
            return;
        }
        if failed || slow {
            g.open_for = (g.open_for * 2).min(self.max_open_for);
            g.until = now + g.open_for;
            self.transition(&mut g, State::Open);
        } else {
            g.successes += 1;
            if g.successes >= self.half_open_requests {
                self.window.reset();
                self.consecutive.store(0, Relaxed);
                g.open_for = self.open_for;
                self.transition(&mut g, State::Closed);
            }
        }
    }

    fn should_open(&self, consecutive: u32, now: u64) -> bool {
        if self.consecutive_failures > 0 && consecutive >= self.consecutive_failures {
            return true;
        }
        let [total, failed, slow] = self.window.sum(now);
        if total < u64::from(self.min_requests) {
            return false;
        }
        let ratio = |n: u64| n as f64 / total as f64;
        ratio(failed) >= self.failure_ratio || self.slow.is_some_and(|(_, r)| ratio(slow) >= r)
    }

    fn transition(&self, g: &mut Inner, to: State) {
        g.generation += 1;
        self.state.store(to as u8, Relaxed);
        self.metrics.transition(to as i64, to.name());
        match to {
            State::Open => log::warn!(
                "upstream {}: circuit breaker open for {} ms",
                self.upstream,
                g.open_for
            ),
            State::HalfOpen => log::info!(
                "upstream {}: circuit breaker half-open, {} trial requests",
                self.upstream,
                self.half_open_requests
            ),
            State::Closed => log::info!("upstream {}: circuit breaker closed", self.upstream),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(yaml: &str) -> Arc<Breaker> {
        Arc::new(Breaker::new(
            "u",
            &yaml_serde::from_str(yaml).unwrap(),
            &None,
        ))
    }

    fn run(b: &Arc<Breaker>, o: Outcome, now: u64) -> bool {
        match b.admit(now) {
            Ok(mut p) => {
                b.record(&mut p, o, 1, now);
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn opens_on_ratio_after_min_requests() {
        let b = breaker("{ failure_ratio: 0.5, min_requests: 10, consecutive_failures: 0 }");
        for i in 0..9 {
            let o = if i % 2 == 0 {
                Outcome::Status(503)
            } else {
                Outcome::Status(200)
            };
            run(&b, o, 100);
        }
        assert_eq!(b.state(), State::Closed, "9 < min_requests");
        run(&b, Outcome::Status(500), 100);
        assert_eq!(b.state(), State::Open);
        assert_eq!(
            b.admit(200).err(),
            Some(Refused {
                retry_after_ms: 9900
            })
        );
    }

    #[test]
    fn old_buckets_leave_the_window() {
        let b = breaker("{ min_requests: 4, consecutive_failures: 0, window: 1s }");
        run(&b, Outcome::ConnectError, 0);
        run(&b, Outcome::ConnectError, 0);
        run(&b, Outcome::ConnectError, 0);
        // 2 s later the three failures are out of the window: counted, a fourth failure would
        // make 4 of 4; alone it is 1 request, below min_requests.
        run(&b, Outcome::ConnectError, 2000);
        assert_eq!(b.state(), State::Closed);
        // Within the window they add up.
        run(&b, Outcome::ConnectError, 2100);
        run(&b, Outcome::ConnectError, 2200);
        run(&b, Outcome::ConnectError, 2300);
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn consecutive_failures_and_unlisted_outcomes() {
        let b = breaker("{ consecutive_failures: 3, on: [connect_error, 503] }");
        run(&b, Outcome::Status(500), 0); // not listed: a success
        run(&b, Outcome::ConnectError, 0);
        run(&b, Outcome::Status(503), 0);
        assert_eq!(b.state(), State::Closed);
        run(&b, Outcome::ConnectError, 0);
        assert_eq!(b.state(), State::Open);
    }

    /// An idle upstream's breaker half-opens when read after `open_for`, and its gauge moves.
    #[test]
    fn an_idle_open_breaker_half_opens_when_read() {
        let metrics = crate::observability::metrics::Families::new(true);
        let c = yaml_serde::from_str("{ consecutive_failures: 1, open_for: 1s }").unwrap();
        let b = Arc::new(Breaker::new("idle", &c, &metrics));
        run(&b, Outcome::Timeout, 0);
        let gauge = || {
            crate::observability::metrics::render(&metrics)
                .lines()
                .find(|l| l.starts_with("postern_circuit_state{upstream=\"idle\"}"))
                .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
        };
        assert_eq!(gauge().as_deref(), Some("2"));
        assert_eq!(b.refresh(999), State::Open);
        assert_eq!(b.retry_after_ms(999), 1);
        assert_eq!(b.refresh(1000), State::HalfOpen);
        assert_eq!(gauge().as_deref(), Some("1"));
        assert_eq!(b.retry_after_ms(1000), 0);
        // The trials are still there for the next requests.
        assert!(b.admit(1001).is_ok());
    }

    #[test]
    fn half_open_trials_close_or_reopen_with_doubling() {
        let b = breaker(
            "{ consecutive_failures: 1, open_for: 1s, max_open_for: 3s, half_open_requests: 2 }",
        );
        run(&b, Outcome::Timeout, 0);
        assert_eq!(b.state(), State::Open);
        assert!(b.admit(999).is_err());
        // Half-open: two trials, a third request is refused while they run.
        let mut t1 = b.admit(1000).unwrap();
        assert_eq!(b.state(), State::HalfOpen);
        let t2 = b.admit(1000).unwrap();
        assert!(t1.is_trial() && t2.is_trial());
        assert!(b.admit(1000).is_err());
        // One fails: open for 2 s.
        b.record(&mut t1, Outcome::Reset, 5, 1010);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.retry_after_ms(1010), 2000);
        drop(t2); // unreported, but of an earlier generation: no effect
                  // Fails again: 4 s capped at 3 s.
        let mut t = b.admit(3010).unwrap();
        b.record(&mut t, Outcome::Status(502), 5, 3010);
        assert_eq!(b.retry_after_ms(3010), 3000);
        // Both trials succeed: closed, and the next opening is back to 1 s.
        let (mut a, mut c) = (b.admit(6010).unwrap(), b.admit(6010).unwrap());
        b.record(&mut a, Outcome::Status(200), 5, 6020);
        assert_eq!(b.state(), State::HalfOpen);
        b.record(&mut c, Outcome::Status(404), 5, 6020);
        assert_eq!(b.state(), State::Closed);
        run(&b, Outcome::ConnectError, 7000);
        assert_eq!(b.retry_after_ms(7000), 1000);
    }

    #[test]
    fn a_released_trial_is_given_back() {
        let b = breaker("{ consecutive_failures: 1, open_for: 1s, half_open_requests: 1 }");
        run(&b, Outcome::Timeout, 0);
        let t = b.admit(1000).unwrap();
        assert!(b.admit(1000).is_err());
        drop(t); // the client went away: the trial is given back
        assert!(b.admit(1000).is_ok());
    }

    #[test]
    fn slow_calls_open_it() {
        let b = breaker(
            "{ min_requests: 4, consecutive_failures: 0, slow_call: { threshold: 100ms, ratio: 0.75 } }",
        );
        for elapsed in [150, 150, 20, 150] {
            let mut p = b.admit(0).unwrap();
            b.record(&mut p, Outcome::Status(200), elapsed, 0);
        }
        assert_eq!(b.state(), State::Open);
    }
}
