//! Retry budget of an upstream (the Envoy/Linkerd model): within a sliding window, retries may
//! add at most `ratio` of the requests sent to the upstream, plus `min_per_second` per second of
//! the window, so that a failing upstream sees at most (1 + ratio) times its normal load plus a
//! small constant instead of `attempts` times it. Local to the node, like the breaker.

use super::window::Window;
use crate::upstream::config::RetryBudget;

pub struct Budget {
    ratio: f64,
    /// Retries always allowed per window (`min_per_second` x window seconds).
    floor: f64,
    /// Requests and retries.
    window: Window<2>,
}

impl Budget {
    pub fn new(c: &RetryBudget) -> Budget {
        let window = c.window.0.as_millis() as u64;
        Budget {
            ratio: c.ratio,
            floor: c.min_per_second * window as f64 / 1000.0,
            window: Window::new(window),
        }
    }

    /// Counts a request's first try (atomics only: every request of the upstream does this).
    pub fn request(&self, now: u64) {
        self.window.add(now, [1, 0]);
    }

    /// May a failed try be retried? Counts the retry when it may.
    pub fn try_retry(&self, now: u64) -> bool {
        let [requests, retries] = self.window.sum(now);
        if (retries + 1) as f64 > self.ratio * requests as f64 + self.floor {
            return false;
        }
        self.window.add(now, [0, 1]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(yaml: &str) -> Budget {
        Budget::new(&yaml_serde::from_str(yaml).unwrap())
    }

    #[test]
    fn retries_are_bounded_by_ratio_plus_floor() {
        let b = budget("{ ratio: 0.2, window: 10s, min_per_second: 1 }");
        let mut allowed = 0;
        for _ in 0..1000 {
            b.request(5000);
            if b.try_retry(5000) {
                allowed += 1;
            }
        }
        // 0.2 x 1000 + 1/s x 10 s
        assert_eq!(allowed, 210);
    }

    #[test]
    fn the_window_slides() {
        let b = budget("{ ratio: 0.0, window: 1s, min_per_second: 2 }");
        assert!(b.try_retry(0) && b.try_retry(0));
        assert!(!b.try_retry(0));
        assert!(!b.try_retry(900));
        assert!(b.try_retry(1500), "the first retries left the window");
    }
}
