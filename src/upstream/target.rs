//! Per-target runtime state: health (active and passive) and in-flight requests. States live in a
//! [`Registry`] keyed by upstream name and address, outside any config snapshot, so a reload keeps
//! what the checks have learnt.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};
use std::time::Instant;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the process started (monotonic).
pub fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// One resolved endpoint of an upstream.
#[derive(Debug)]
pub struct TargetState {
    pub addr: SocketAddr,
    /// Host name from the config (`users.internal` in `users.internal:80`), used for SNI.
    pub host: Option<Arc<str>>,
    pub weight: u32,
    /// A backup target: used only while no primary target is healthy.
    pub backup: bool,
    active_up: AtomicBool,
    streak_ok: AtomicU32,
    streak_fail: AtomicU32,
    passive_failures: AtomicU32,
    ejected_until: AtomicU64,
    inflight: AtomicUsize,
}

impl TargetState {
    pub fn new(addr: SocketAddr, host: Option<Arc<str>>, weight: u32) -> TargetState {
        TargetState {
            addr,
            host,
            weight,
            backup: false,
            active_up: AtomicBool::new(true),
            streak_ok: AtomicU32::new(0),
            streak_fail: AtomicU32::new(0),
            passive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            inflight: AtomicUsize::new(0),
        }
    }

    /// Healthy for active checks and not ejected by passive ones.
    pub fn is_healthy(&self, now: u64) -> bool {
        self.active_up.load(Relaxed) && self.ejected_until.load(Relaxed) <= now
    }

    pub fn active_up(&self) -> bool {
        self.active_up.load(Relaxed)
    }

    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Relaxed) > now
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Relaxed)
    }

    /// Records an active check result; returns Some(new state) when the state flipped.
    pub fn record_check(&self, ok: bool, healthy_after: u32, unhealthy_after: u32) -> Option<bool> {
        if ok {
            self.streak_fail.store(0, Relaxed);
            let n = self.streak_ok.fetch_add(1, Relaxed) + 1;
            if n >= healthy_after && !self.active_up.swap(true, Relaxed) {
                return Some(true);
            }
        } else {
            self.streak_ok.store(0, Relaxed);
            let n = self.streak_fail.fetch_add(1, Relaxed) + 1;
            if n >= unhealthy_after && self.active_up.swap(false, Relaxed) {
                return Some(false);
            }
        }
        None
    }

    /// Records a proxied request's outcome; returns true when this failure ejected the target.
    pub fn record_passive(&self, ok: bool, unhealthy_after: u32, eject_for_ms: u64) -> bool {
        if ok {
            self.passive_failures.store(0, Relaxed);
            return false;
        }
        let now = now_ms();
        let until = self.ejected_until.load(Relaxed);
        if until > now {
            // Requests sent before the ejection still fail as they finish: they neither extend
            // it nor count towards the next one (one ejection, one log line).
            return false;
        }
        let n = self.passive_failures.fetch_add(1, Relaxed) + 1;
        if n >= unhealthy_after {
            self.passive_failures.store(0, Relaxed);
            // Only one of several threads failing at once makes the transition.
            return self
                .ejected_until
                .compare_exchange(until, now + eject_for_ms, Relaxed, Relaxed)
                .is_ok();
        }
        false
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Relaxed);
        InflightGuard(self.clone())
    }
}

/// Decrements the target's in-flight count when dropped (request finished or client gone).
#[derive(Debug)]
pub struct InflightGuard(Arc<TargetState>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

/// (upstream name, address): the identity of a target across config generations.
type TargetKey = (Arc<str>, SocketAddr);

/// Target states and circuit breakers shared across config generations.
#[derive(Default)]
pub struct Registry {
    states: Mutex<HashMap<TargetKey, Arc<TargetState>>>,
    /// Breakers by upstream name and settings: a reload keeps one while both are unchanged.
    breakers: Mutex<HashMap<String, std::sync::Weak<super::breaker::Breaker>>>,
}

impl Registry {
    /// The state for this upstream and address, created on first use (weight and host follow config).
    pub fn get(
        &self,
        upstream: &Arc<str>,
        addr: SocketAddr,
        host: Option<Arc<str>>,
        weight: u32,
        backup: bool,
    ) -> Arc<TargetState> {
        let make = |host| {
            let mut t = TargetState::new(addr, host, weight);
            t.backup = backup;
            t
        };
        let mut m = self.states.lock();
        let e = m
            .entry((upstream.clone(), addr))
            .or_insert_with(|| Arc::new(make(host.clone())));
        if e.weight != weight || e.host != host || e.backup != backup {
            // Same endpoint, new settings: keep the learnt health, rebuild the rest.
            let fresh = Arc::new(make(host));
            fresh.active_up.store(e.active_up(), Relaxed);
            *e = fresh;
        }
        e.clone()
    }
}

impl Registry {
    /// The circuit breaker of this upstream with these settings: the running one (and its
    /// state) when a snapshot still uses it.
    pub fn breaker(
        &self,
        upstream: &str,
        c: &crate::upstream::config::CircuitBreaker,
        metrics: &crate::observability::metrics::Metrics,
    ) -> Arc<super::breaker::Breaker> {
        let id = format!("{upstream}\n{c:?}");
        let mut m = self.breakers.lock();
        m.retain(|_, w| w.strong_count() > 0);
        if let Some(b) = m.get(&id).and_then(std::sync::Weak::upgrade) {
            return b;
        }
        let b = Arc::new(super::breaker::Breaker::new(upstream, c, metrics));
        m.insert(id, Arc::downgrade(&b));
        b
    }

    /// Forgets targets that no longer belong to any upstream (after a reload). `keep` says
    /// whether (upstream, address) is still configured.
    pub fn retain(&self, keep: impl Fn(&str, SocketAddr) -> bool) {
        self.states.lock().retain(|(up, addr), _| keep(up, *addr));
    }

    pub fn len(&self) -> usize {
        self.states.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_thresholds_need_consecutive_results() {
        let t = TargetState::new("127.0.0.1:1".parse().unwrap(), None, 1);
        assert_eq!(t.record_check(false, 2, 2), None);
        assert_eq!(t.record_check(true, 2, 2), None);
        assert_eq!(t.record_check(false, 2, 2), None);
        assert_eq!(t.record_check(false, 2, 2), Some(false));
        assert!(!t.is_healthy(now_ms()));
        assert_eq!(t.record_check(true, 2, 2), None);
        assert_eq!(t.record_check(true, 2, 2), Some(true));
    }

    #[test]
    fn passive_ejection_expires() {
        let t = TargetState::new("127.0.0.1:1".parse().unwrap(), None, 1);
        assert!(!t.record_passive(false, 2, 60_000));
        assert!(t.record_passive(false, 2, 60_000));
        assert!(!t.is_healthy(now_ms()));
        assert!(t.is_healthy(now_ms() + 60_001));
    }

    /// Regression (issue 12): "ejected for 30s" was logged up to 7 times for one ejection, as
    /// requests already in flight failed after it.
    #[test]
    fn one_ejection_per_transition() {
        let t = TargetState::new("127.0.0.1:1".parse().unwrap(), None, 1);
        let ejections = (0..20)
            .filter(|_| t.record_passive(false, 3, 60_000))
            .count();
        assert_eq!(ejections, 1);
        let until = t.ejected_until.load(Relaxed);
        assert!(!t.record_passive(false, 1, 120_000));
        assert_eq!(t.ejected_until.load(Relaxed), until, "not extended");
    }

    #[test]
    fn registry_keeps_state_across_lookups() {
        let r = Registry::default();
        let name: Arc<str> = "u".into();
        let a = r.get(&name, "127.0.0.1:1".parse().unwrap(), None, 1, false);
        a.record_check(false, 1, 1);
        let b = r.get(&name, "127.0.0.1:1".parse().unwrap(), None, 1, false);
        assert!(!b.active_up());
        let c = r.get(&name, "127.0.0.1:1".parse().unwrap(), None, 5, false);
        assert!(!c.active_up());
        assert_eq!(c.weight, 5);
        r.retain(|_, _| false);
        assert!(r.is_empty());
    }
}
