//! The suite's one way to wait for something that happens in the background: poll a probe
//! until it gives a value, and fail with a message once a deadline passes. (No sleep stands
//! for synchronisation: the pause between probes only spaces them out.)

use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`eventually`] waits unless told otherwise.
pub const WITHIN: Duration = Duration::from_secs(10);

/// How long to wait and how often to look.
#[derive(Clone, Copy)]
pub struct Poll {
    pub within: Duration,
    pub every: Duration,
}

impl Poll {
    pub const DEFAULT: Poll = Poll {
        within: WITHIN,
        every: Duration::from_millis(20),
    };

    pub fn within(within: Duration) -> Poll {
        Poll {
            within,
            ..Poll::DEFAULT
        }
    }

    pub fn every(self, every: Duration) -> Poll {
        Poll { every, ..self }
    }
}

/// Polls `probe` (an async block) until it gives `Some`, and returns that value; panics with
/// `what` after [`WITHIN`]. Bind what the probe reads to references first (`let gw = &gw;`)
/// so that `async move` copies them: `eventually("reloaded", || async move { … }).await`.
pub async fn eventually<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_with(Poll::DEFAULT, what, probe).await
}

/// [`eventually`] with another deadline or pace.
pub async fn eventually_with<T, F, Fut>(poll: Poll, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + poll.within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {:?}: {what}",
            poll.within
        );
        tokio::time::sleep(poll.every).await;
    }
}

/// The blocking form, for synchronous tests and helpers.
pub fn eventually_blocking<T>(poll: Poll, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + poll.within;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {:?}: {what}",
            poll.within
        );
        std::thread::sleep(poll.every);
    }
}

/// Like [`eventually_blocking`], but gives up quietly: `None` once the deadline passed.
pub fn poll_until<T>(poll: Poll, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + poll.within;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(poll.every);
    }
}
