//! In-flight request counters per key. A [`Permit`] holds one slot and gives it back when it is
//! dropped: when the request context ends, whether the response completed, failed, or the client
//! went away. Keys with nothing in flight are removed, so memory follows concurrency.

use super::gcra::{shard_of, PreHashedMap, SHARDS};
use parking_lot::Mutex;
use std::sync::Arc;

pub struct Concurrency {
    max: u32,
    shards: Box<[Mutex<PreHashedMap<u32>>]>,
}

/// One in-flight request; releases its slot on drop.
pub struct Permit {
    owner: Arc<Concurrency>,
    hash: u64,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("hash", &self.hash).finish()
    }
}

impl Concurrency {
    pub fn new(max: u32) -> Concurrency {
        Concurrency {
            max,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(PreHashedMap::default()))
                .collect(),
        }
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// Takes a slot for the key, or `None` when `max` requests are already in flight.
    pub fn acquire(self: &Arc<Self>, hash: u64) -> Option<(Permit, u32)> {
        let mut shard = self.shards[shard_of(hash)].lock();
        let n = shard.entry(hash).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        let left = self.max - *n;
        Some((
            Permit {
                owner: self.clone(),
                hash,
            },
            left,
        ))
    }

    /// Requests in flight for the key.
    pub fn in_flight(&self, hash: u64) -> u32 {
        self.shards[shard_of(hash)]
            .lock()
            .get(&hash)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut shard = self.owner.shards[shard_of(self.hash)].lock();
        if let Some(n) = shard.get_mut(&self.hash) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                shard.remove(&self.hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_come_back_on_drop() {
        let c = Arc::new(Concurrency::new(2));
        let a = c.acquire(7).map(|p| p.0);
        let b = c.acquire(7).map(|p| p.0);
        assert!(a.is_some() && b.is_some());
        assert!(c.acquire(7).is_none());
        assert!(c.acquire(8).is_some(), "other keys are independent");
        drop(a);
        assert_eq!(c.in_flight(7), 1);
        let again = c.acquire(7);
        assert!(again.is_some());
        drop((b, again));
        assert_eq!(c.in_flight(7), 0);
        assert!(c.shards.iter().all(|s| s.lock().is_empty()));
    }
}
