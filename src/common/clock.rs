//! A monotonic clock in nanoseconds, shared by the local limiters and the Redis client.

use std::time::Instant;

/// Nanoseconds on a monotonic clock private to one limiter. Starts far from zero so that a
/// stored time of 0 always means "in the past".
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Clock {
        Clock(Instant::now())
    }
    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64 + 1_000_000_000
    }
}

impl Default for Clock {
    fn default() -> Clock {
        Clock::new()
    }
}
