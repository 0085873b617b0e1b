//! Local GCRA (generic cell rate algorithm): one "theoretical arrival time" per key and limit,
//! which is exactly a token bucket that refills continuously. A limit of `requests` per `per`
//! with `burst` lets `burst` requests through at once and then one every `per / requests`.
//!
//! State lives in a sharded hash map (64 shards, one `parking_lot` mutex each: no global lock),
//! keyed by a 64-bit hash of the rate-limit key. Memory is bounded: each shard holds at most
//! `max_keys / 64` keys; when a shard is full, keys whose buckets are full again (idle keys,
//! identical to a fresh key) are dropped first, then the keys closest to idle.

use super::{Outcome, Quota};
pub(crate) use crate::common::Clock;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

pub(crate) const SHARDS: usize = 64;

/// The map's keys are already uniformly distributed hashes: use them as they are.
#[derive(Default)]
pub(crate) struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type PreHashedMap<V> = HashMap<u64, V, BuildHasherDefault<PreHashed>>;

/// One shard's lock on its own cache lines, so that two cores working on neighbouring shards do
/// not invalidate each other's line (false sharing).
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Shard index from bits that neither hashbrown's bucket index (low bits) nor its control tag
/// (top 7 bits) use, so every shard still spreads its keys evenly.
pub(crate) fn shard_of(hash: u64) -> usize {
    ((hash >> 32) as usize) & (SHARDS - 1)
}

/// GCRA constants of one limit, in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    /// Time between two conforming requests: `per / requests`.
    pub interval: u64,
    /// How far ahead of now the arrival time may run: `burst * interval`.
    pub tolerance: u64,
}

impl Cell {
    pub fn new(q: &Quota) -> Cell {
        let interval = (q.per.as_nanos() / u128::from(q.requests.max(1))).max(1) as u64;
        Cell {
            interval,
            tolerance: interval.saturating_mul(q.burst),
        }
    }
}

/// Arrival times of a key, one per limit; inline for rules of up to two limits (the common
/// case), so a check touches one cache line of the map and no separate allocation.
type Tats = smallvec::SmallVec<[u64; 2]>;
type Shard = PreHashedMap<Tats>;

pub struct LocalGcra {
    cells: Box<[Cell]>,
    max_delay: u64,
    shards: Box<[Padded<Mutex<Shard>>]>,
    shard_cap: usize,
    clock: Clock,
}

impl LocalGcra {
    pub fn new(quotas: &[Quota], max_delay: Duration, max_keys: usize) -> LocalGcra {
        LocalGcra {
            cells: quotas.iter().map(Cell::new).collect(),
            max_delay: max_delay.as_nanos() as u64,
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
            shard_cap: (max_keys / SHARDS).max(1),
            clock: Clock::new(),
        }
    }

    /// Checks one request for the key with this hash and, when it conforms (possibly after a
    /// delay of at most `max_delay`), records it against every limit. All limits pass or none is
    /// charged.
    pub fn check(&self, hash: u64) -> Outcome {
        let now = self.clock.now();
        let mut shard = self.shards[shard_of(hash)].lock();
        if shard.len() >= self.shard_cap && !shard.contains_key(&hash) {
            evict(&mut shard, self.shard_cap, now);
        }
        let tats = shard
            .entry(hash)
            .or_insert_with(|| smallvec::smallvec![0; self.cells.len()]);
        decide(&self.cells, tats, now, self.max_delay)
    }

    /// Number of keys held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The GCRA decision over several limits; updates `tats` only when the request is let through.
fn decide(cells: &[Cell], tats: &mut [u64], now: u64, max_delay: u64) -> Outcome {
    let mut delay = 0u64;
    let mut retry = 0u64;
    let mut out = Outcome::default();
    for (i, (c, tat)) in cells.iter().zip(tats.iter()).enumerate() {
        let next = (*tat).max(now) + c.interval;
        // The earliest time this request conforms to the limit.
        let conforms_at = next.saturating_sub(c.tolerance);
        let wait = conforms_at.saturating_sub(now);
        if wait > max_delay {
            retry = retry.max(wait - max_delay);
        }
        delay = delay.max(wait);
        let remaining = if wait > 0 {
            0
        } else {
            (c.tolerance - (next - now)) / c.interval
        };
        out.note_limit(i, remaining, Duration::from_nanos(next - now));
    }
    if retry > 0 {
        out.allowed = false;
        out.retry_after = Duration::from_nanos(retry);
        // Nothing was charged: report the state as it stands.
        out.remaining = 0;
        let tat = tats.get(out.limit).copied().unwrap_or(0).max(now);
        out.reset = Duration::from_nanos(tat - now);
        return out;
    }
    for (c, tat) in cells.iter().zip(tats.iter_mut()) {
        *tat = (*tat).max(now) + c.interval;
    }
    out.allowed = true;
    out.delay = Duration::from_nanos(delay);
    out
}

/// Makes room in a full shard: drops idle keys, then (when that freed less than an eighth) the
/// keys whose buckets are closest to full. Amortized O(1) per insertion.
fn evict(shard: &mut Shard, cap: usize, now: u64) {
    shard.retain(|_, tats| tats.iter().any(|t| *t > now));
    let target = cap - cap / 8;
    if shard.len() <= target {
        return;
    }
    let mut ends: Vec<u64> = shard
        .values()
        .map(|t| t.iter().copied().max().unwrap_or(0))
        .collect();
    let cut = ends.len() - target;
    let (_, nth, _) = ends.select_nth_unstable(cut);
    let threshold = *nth;
    let mut to_drop = cut;
    shard.retain(|_, tats| {
        let end = tats.iter().copied().max().unwrap_or(0);
        if to_drop > 0 && end <= threshold {
            to_drop -= 1;
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(requests: u64, per: Duration, burst: u64) -> Quota {
        Quota {
            requests,
            per,
            burst,
        }
    }

    #[test]
    fn exact_count_in_a_window() {
        let q = [quota(5, Duration::from_secs(60), 5)];
        let cells: Vec<Cell> = q.iter().map(Cell::new).collect();
        let mut tats = vec![0u64];
        let now = 10_000_000_000;
        for i in 0..5 {
            let o = decide(&cells, &mut tats, now, 0);
            assert!(o.allowed, "request {i}");
            assert_eq!(o.remaining, 4 - i);
        }
        let o = decide(&cells, &mut tats, now, 0);
        assert!(!o.allowed);
        assert_eq!(o.retry_after, Duration::from_secs(12));
        assert_eq!(
            o.reset,
            Duration::from_secs(60),
            "whole again in 60 s: nothing charged"
        );
        // One interval later exactly one more request conforms.
        let later = now + 12_000_000_000;
        assert!(decide(&cells, &mut tats, later, 0).allowed);
        assert!(!decide(&cells, &mut tats, later, 0).allowed);
    }

    #[test]
    fn burst_above_rate() {
        let cells = [Cell::new(&quota(10, Duration::from_secs(1), 20))];
        let mut tats = vec![0u64];
        let now = 5_000_000_000;
        let allowed = (0..30)
            .filter(|_| decide(&cells, &mut tats, now, 0).allowed)
            .count();
        assert_eq!(allowed, 20);
    }

    #[test]
    fn every_limit_must_pass_and_a_rejection_charges_nothing() {
        let cells = [
            Cell::new(&quota(10, Duration::from_secs(1), 10)),
            Cell::new(&quota(3, Duration::from_secs(3600), 3)),
        ];
        let mut tats = vec![0u64; 2];
        let now = 5_000_000_000;
        assert_eq!(
            (0..10)
                .filter(|_| decide(&cells, &mut tats, now, 0).allowed)
                .count(),
            3
        );
        let before = tats.clone();
        let o = decide(&cells, &mut tats, now, 0);
        assert!(!o.allowed);
        assert_eq!(tats, before);
        assert_eq!(o.limit, 1, "the hourly limit is the binding one");
        assert_eq!(o.retry_after, Duration::from_secs(1200));
    }

    #[test]
    fn delay_within_max_delay() {
        let cells = [Cell::new(&quota(10, Duration::from_secs(1), 1))];
        let mut tats = vec![0u64];
        let now = 5_000_000_000;
        let max = 250_000_000;
        assert_eq!(decide(&cells, &mut tats, now, max).delay, Duration::ZERO);
        assert_eq!(
            decide(&cells, &mut tats, now, max).delay,
            Duration::from_millis(100)
        );
        assert_eq!(
            decide(&cells, &mut tats, now, max).delay,
            Duration::from_millis(200)
        );
        let o = decide(&cells, &mut tats, now, max);
        assert!(!o.allowed, "300 ms would exceed max_delay");
        assert_eq!(o.retry_after, Duration::from_millis(50));
    }

    #[test]
    fn memory_stays_bounded_with_a_million_keys() {
        let l = LocalGcra::new(
            &[quota(1, Duration::from_secs(3600), 1)],
            Duration::ZERO,
            10_000,
        );
        let s = std::collections::hash_map::RandomState::new();
        for k in 0..1_000_000u64 {
            let h = std::hash::BuildHasher::hash_one(&s, k);
            assert!(l.check(h).allowed);
        }
        assert!(l.len() <= 10_000, "{} keys held", l.len());
        assert!(l.len() >= 10_000 / 2);
    }
}
