//! Rate-limit engines used by the `rate_limit` and `concurrency_limit` plugins: exact local GCRA
//! ([`gcra`]), in-flight counters ([`concurrency`]) and the cluster-wide GCRA on Redis
//! ([`cluster`]). Engines survive reloads for rules whose definition did not change
//! ([`Store`]).

pub mod cluster;
pub mod concurrency;
pub mod gcra;

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// One limit: `requests` per `per`, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub requests: u64,
    pub per: Duration,
    pub burst: u64,
}

/// The answer to one check, with what the rate-limit headers need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// How long to hold the request before it conforms (`delay` action).
    pub delay: Duration,
    /// When rejected: how long until a retry can pass.
    pub retry_after: Duration,
    /// Requests left under the most restrictive limit.
    pub remaining: u64,
    /// Time until that limit's quota is whole again.
    pub reset: Duration,
    /// Index of that limit in the rule.
    pub limit: usize,
}

impl Outcome {
    /// Keeps the most restrictive limit: the fewest remaining, then the longest reset.
    pub(crate) fn note_limit(&mut self, i: usize, remaining: u64, reset: Duration) {
        if i == 0
            || remaining < self.remaining
            || (remaining == self.remaining && reset > self.reset)
        {
            self.remaining = remaining;
            self.reset = reset;
            self.limit = i;
        }
    }
}

/// Engines shared across snapshots, by a fingerprint of the rule that owns them (route, rule
/// name and every setting that changes its meaning). A reload that keeps a rule keeps its
/// counters; a changed rule starts afresh. Entries disappear with the last snapshot using them.
#[derive(Default)]
pub struct Store {
    gcra: Mutex<HashMap<String, Weak<gcra::LocalGcra>>>,
    concurrency: Mutex<HashMap<String, Weak<concurrency::Concurrency>>>,
}

impl Store {
    pub fn gcra(&self, id: &str, make: impl FnOnce() -> gcra::LocalGcra) -> Arc<gcra::LocalGcra> {
        reuse(&self.gcra, id, make)
    }

    pub fn concurrency(
        &self,
        id: &str,
        make: impl FnOnce() -> concurrency::Concurrency,
    ) -> Arc<concurrency::Concurrency> {
        reuse(&self.concurrency, id, make)
    }
}

fn reuse<T>(map: &Mutex<HashMap<String, Weak<T>>>, id: &str, make: impl FnOnce() -> T) -> Arc<T> {
    let mut m = map.lock();
    m.retain(|_, w| w.strong_count() > 0);
    if let Some(a) = m.get(id).and_then(Weak::upgrade) {
        return a;
    }
    let a = Arc::new(make());
    m.insert(id.to_string(), Arc::downgrade(&a));
    a
}
