//! A sliding window of counters (10 buckets), updated with atomics only: what the retry budget
//! and the circuit breaker count on every request without taking a lock. A bucket is recycled
//! when its time slot comes round again; a request counted during that instant may be lost,
//! which the ratios they feed tolerate.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

pub const BUCKETS: usize = 10;

pub struct Window<const K: usize> {
    bucket_ms: u64,
    /// Time slot (`now / bucket_ms`) each bucket counts, plus one (0: never used).
    slots: [AtomicU64; BUCKETS],
    counts: [[AtomicU32; K]; BUCKETS],
}

impl<const K: usize> Window<K> {
    pub fn new(window_ms: u64) -> Self {
        Window {
            bucket_ms: window_ms.max(BUCKETS as u64).div_ceil(BUCKETS as u64),
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            counts: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU32::new(0))),
        }
    }

    /// Adds `deltas` to the counters of the bucket of `now` (milliseconds).
    pub fn add(&self, now: u64, deltas: [u32; K]) {
        let slot = now / self.bucket_ms + 1;
        let i = (slot % BUCKETS as u64) as usize;
        let seen = self.slots[i].load(Relaxed);
        if seen != slot
            && self.slots[i]
                .compare_exchange(seen, slot, Relaxed, Relaxed)
                .is_ok()
        {
            for c in &self.counts[i] {
                c.store(0, Relaxed);
            }
        }
        for (c, d) in self.counts[i].iter().zip(deltas) {
            if d > 0 {
                c.fetch_add(d, Relaxed);
            }
        }
    }

    /// The counters summed over the buckets still inside the window at `now`.
    pub fn sum(&self, now: u64) -> [u64; K] {
        let slot = now / self.bucket_ms + 1;
        let mut out = [0u64; K];
        for (s, counts) in self.slots.iter().zip(&self.counts) {
            let s = s.load(Relaxed);
            if s != 0 && s + BUCKETS as u64 > slot && s <= slot {
                for (o, c) in out.iter_mut().zip(counts) {
                    *o += u64::from(c.load(Relaxed));
                }
            }
        }
        out
    }

    /// Forgets everything.
    pub fn reset(&self) {
        for s in &self.slots {
            s.store(0, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_of_the_window() {
        let w: Window<2> = Window::new(1000);
        w.add(0, [1, 0]);
        w.add(50, [1, 1]);
        w.add(950, [1, 0]);
        assert_eq!(w.sum(950), [3, 1]);
        // At 1.05 s the first bucket (0..100 ms) has left the window.
        assert_eq!(w.sum(1050), [1, 0]);
        w.add(1050, [5, 5]);
        assert_eq!(w.sum(1050), [6, 5]);
        assert_eq!(w.sum(5000), [0, 0]);
        w.reset();
        assert_eq!(w.sum(1050), [0, 0]);
    }
}
