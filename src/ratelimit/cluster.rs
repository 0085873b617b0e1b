//! Cluster-wide GCRA on Redis: one atomic Lua script per check (the GCRA state of a key is one
//! hash with an arrival time per limit, timed by the Redis server's clock so nodes never disagree
//! about "now"). Around it:
//!
//! - a hard timeout per call (`cluster.redis.timeout`, 10 ms by default);
//! - a local cache of keys known to be over the limit until a given time, so a rejected flood
//!   costs no Redis round trip (GCRA makes this exact: no node can make a key conform sooner);
//! - after a failure Redis is left alone for `crate::redis::RECHECK` and calls take the `on_error` path at
//!   once; outages and recoveries are logged once each and counted in metrics.
//!
//! The connection, its timeouts and its up/down state are the shared client's (`crate::redis`).

use super::gcra::{shard_of, Cell, Clock, PreHashedMap, SHARDS};
use super::Outcome;
use parking_lot::Mutex;
use redis::Script;
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use crate::redis::{Redis, Unavailable};

/// Entries of the over-limit cache per shard.
const DENY_CACHE_PER_SHARD: usize = 4096;

const GCRA_LUA: &str = r#"
-- KEYS[1]: the key. ARGV[1]: max delay (us); then per limit: interval (us), tolerance (us).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local max_delay = tonumber(ARGV[1])
local n = (#ARGV - 1) / 2
local delay, retry, ttl = 0, 0, 0
local rem, reset, idx, ureset = -1, 0, 0, 0
local nexts = {}
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local v = redis.call('HGET', KEYS[1], i)
  local tat = now
  if v then tat = math.max(tonumber(v), now) end
  local nxt = tat + interval
  local wait = nxt - tolerance - now
  if wait < 0 then wait = 0 end
  if wait > max_delay and wait - max_delay > retry then retry = wait - max_delay end
  if wait > delay then delay = wait end
  local r = 0
  if wait == 0 then r = math.floor((tolerance - (nxt - now)) / interval) end
  if rem < 0 or r < rem or (r == rem and nxt - now > reset) then
    rem = r; reset = nxt - now; idx = i - 1; ureset = tat - now
  end
  nexts[i] = nxt
  if nxt - now > ttl then ttl = nxt - now end
end
if retry > 0 then return {0, retry, 0, ureset, idx} end
for i = 1, n do redis.call('HSET', KEYS[1], i, string.format('%.0f', nexts[i])) end
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1000)
return {1, delay, rem, reset, idx}
"#;

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));

/// One GCRA check of `key` (already prefixed) against `cells`.
pub async fn check(
    redis: &Arc<Redis>,
    key: &str,
    cells: &[Cell],
    max_delay: Duration,
) -> Result<Outcome, Unavailable> {
    let mut args = vec![max_delay.as_micros() as u64];
    for c in cells {
        args.push((c.interval / 1000).max(1));
        args.push((c.tolerance / 1000).max(1));
    }
    let answer = redis.eval(&GCRA, key, &args).await?;
    if answer.len() != 5 {
        return Err(redis.bad_answer(&format!("unexpected script answer {answer:?}")));
    }
    let us = |v: i64| Duration::from_micros(v.max(0) as u64);
    let allowed = answer[0] == 1;
    Ok(Outcome {
        allowed,
        delay: if allowed {
            us(answer[1])
        } else {
            Duration::ZERO
        },
        retry_after: if allowed {
            Duration::ZERO
        } else {
            us(answer[1])
        },
        remaining: answer[2].max(0) as u64,
        reset: us(answer[3]),
        limit: answer[4].max(0) as usize,
    })
}

/// Keys known to be over their limit until a time: rejected floods are answered locally.
pub struct DenyCache {
    clock: Clock,
    shards: Box<[Mutex<PreHashedMap<u64>>]>,
}

impl Default for DenyCache {
    fn default() -> Self {
        DenyCache {
            clock: Clock::new(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(PreHashedMap::default()))
                .collect(),
        }
    }
}

impl DenyCache {
    /// Time left before the key may conform again, if it is known to be over its limit.
    pub fn blocked(&self, hash: u64) -> Option<Duration> {
        let now = self.clock.now();
        let mut s = self.shards[shard_of(hash)].lock();
        match s.get(&hash) {
            Some(until) if *until > now => Some(Duration::from_nanos(until - now)),
            Some(_) => {
                s.remove(&hash);
                None
            }
            None => None,
        }
    }

    pub fn block(&self, hash: u64, for_: Duration) {
        let now = self.clock.now();
        let mut s = self.shards[shard_of(hash)].lock();
        if s.len() >= DENY_CACHE_PER_SHARD {
            s.retain(|_, until| *until > now);
            if s.len() >= DENY_CACHE_PER_SHARD {
                s.clear();
            }
        }
        s.insert(hash, now + for_.as_nanos() as u64);
    }
}
