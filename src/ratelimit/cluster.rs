//! Cluster-wide GCRA on Redis: one atomic Lua script per check (the GCRA state of a key is one
//! hash with an arrival time per limit, timed by the Redis server's clock so nodes never disagree
//! about "now"). Around it:
//!
//! - a hard timeout per call (`cluster.redis.timeout`, 10 ms by default);
//! - a local cache of keys known to be over the limit until a given time, so a rejected flood
//!   costs no Redis round trip (GCRA makes this exact: no node can make a key conform sooner);
//! - after a failure Redis is left alone for [`RECHECK`] and calls take the `on_error` path at
//!   once; outages and recoveries are logged once each and counted in metrics.
//!
//! Connections are made off the request path: a reconnecting `ConnectionManager` for a single
//! server, a `ClusterConnection` for Redis Cluster.

use super::gcra::{shard_of, Cell, Clock, PreHashedMap, SHARDS};
use super::Outcome;
use crate::observability::metrics::redis_state;
use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::Script;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long Redis is bypassed after a failed or timed-out call.
pub const RECHECK: Duration = Duration::from_millis(500);

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

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

enum Client {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// Why a cluster check gave no answer.
#[derive(Debug)]
pub enum Unavailable {
    /// Redis failed recently; not asked.
    Bypassed,
    NotConnected,
    Timeout,
    Failed(String),
}

pub struct Redis {
    /// Settings fingerprint: a reload with the same settings keeps this connection.
    pub id: String,
    pub prefix: String,
    /// Where pub/sub subscriptions go (any node of a cluster: messages reach every node).
    pubsub_url: String,
    client: Client,
    conn: ArcSwapOption<Conn>,
    connecting: AtomicBool,
    timeout: Duration,
    up: AtomicBool,
    bypass_until: AtomicU64,
    clock: Clock,
    script: Script,
}

impl Redis {
    /// `nodes` with one entry is a single server (`redis://` or `rediss://` URL); more is Redis
    /// Cluster. Nothing is connected until [`Redis::connect_in_background`] or the first check.
    pub fn new(
        id: String,
        nodes: &[String],
        cluster: bool,
        timeout: Duration,
        prefix: String,
    ) -> Result<Redis, String> {
        let client = if cluster {
            Client::Cluster(Box::new(
                redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
                    .connection_timeout(Duration::from_secs(1))
                    .response_timeout(Duration::from_secs(1))
                    .build()
                    .map_err(|e| e.to_string())?,
            ))
        } else {
            let url = nodes.first().ok_or("no Redis URL")?;
            Client::Single(redis::Client::open(url.as_str()).map_err(|e| e.to_string())?)
        };
        Ok(Redis {
            id,
            prefix,
            pubsub_url: nodes.first().cloned().unwrap_or_default(),
            client,
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            timeout,
            up: AtomicBool::new(false),
            bypass_until: AtomicU64::new(0),
            clock: Clock::new(),
            script: Script::new(GCRA_LUA),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Starts connecting unless connected or already trying. Needs a Tokio runtime.
    pub fn connect_in_background(self: &Arc<Self>) {
        if self.conn.load().is_some() || self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let made = match &me.client {
                Client::Single(c) => {
                    let cfg = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(Duration::from_secs(1)))
                        .set_response_timeout(Some(Duration::from_secs(1)))
                        .set_number_of_retries(2)
                        .set_max_delay(Duration::from_secs(1));
                    ConnectionManager::new_with_config(c.clone(), cfg)
                        .await
                        .map(Conn::Single)
                }
                Client::Cluster(c) => c.get_async_connection().await.map(Conn::Cluster),
            };
            match made {
                Ok(c) => {
                    me.conn.store(Some(Arc::new(c)));
                    me.mark_up();
                }
                Err(e) => me.mark_down(&e.to_string()),
            }
            me.connecting.store(false, Ordering::Release);
        });
    }

    fn mark_up(&self) {
        redis_state(true, false);
        if !self.up.swap(true, Ordering::AcqRel) {
            log::info!("Redis for cluster-wide rate limits is reachable");
        }
    }

    fn mark_down(&self, why: &str) {
        redis_state(false, true);
        self.bypass_until.store(
            self.clock.now() + RECHECK.as_nanos() as u64,
            Ordering::Relaxed,
        );
        if self.up.swap(false, Ordering::AcqRel) {
            log::warn!(
                "Redis for cluster-wide rate limits is unavailable ({why}); rules follow their \
                 on_error policy until it answers again"
            );
        } else {
            log::debug!("Redis still unavailable: {why}");
        }
    }

    /// One GCRA check of `key` (already prefixed) against `cells`.
    pub async fn check(
        self: &Arc<Self>,
        key: &str,
        cells: &[Cell],
        max_delay: Duration,
    ) -> Result<Outcome, Unavailable> {
        if self.clock.now() < self.bypass_until.load(Ordering::Relaxed) {
            return Err(Unavailable::Bypassed);
        }
        let Some(conn) = self.conn.load_full() else {
            self.connect_in_background();
            return Err(Unavailable::NotConnected);
        };
        let mut inv = self.script.prepare_invoke();
        inv.key(key).arg(max_delay.as_micros() as u64);
        for c in cells {
            inv.arg((c.interval / 1000).max(1))
                .arg((c.tolerance / 1000).max(1));
        }
        let call = async {
            match (*conn).clone() {
                Conn::Single(mut c) => inv.invoke_async::<Vec<i64>>(&mut c).await,
                Conn::Cluster(mut c) => inv.invoke_async::<Vec<i64>>(&mut c).await,
            }
        };
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) if v.len() == 5 => v,
            Ok(Ok(v)) => {
                let e = format!("unexpected script answer {v:?}");
                self.mark_down(&e);
                return Err(Unavailable::Failed(e));
            }
            Ok(Err(e)) => {
                self.mark_down(&e.to_string());
                return Err(Unavailable::Failed(e.to_string()));
            }
            Err(_) => {
                self.mark_down(&format!("no answer within {:?}", self.timeout));
                return Err(Unavailable::Timeout);
            }
        };
        self.mark_up();
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
}

/// This process in broadcast messages, so that a node skips its own.
static NODE: std::sync::LazyLock<u64> = std::sync::LazyLock::new(rand::random);

impl Redis {
    /// Publishes `payload` on `{prefix}:{channel}` to every node (fire and forget: a purge that
    /// cannot be broadcast is still applied locally, and the failure is logged).
    pub fn publish(self: &Arc<Self>, channel: &str, payload: &str) {
        let Some(conn) = self.conn.load_full() else {
            log::warn!("Redis not connected: {channel} message not broadcast");
            return;
        };
        let channel = format!("{}:{channel}", self.prefix);
        let message = format!("{}\t{payload}", *NODE);
        tokio::spawn(async move {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(&channel).arg(message);
            let sent = match (*conn).clone() {
                Conn::Single(mut c) => cmd.query_async::<i64>(&mut c).await,
                Conn::Cluster(mut c) => cmd.query_async::<i64>(&mut c).await,
            };
            if let Err(e) = sent {
                log::warn!("broadcast on {channel} failed: {e}");
            }
        });
    }

    /// Delivers messages of other nodes on `{prefix}:{channel}` to `handle`, reconnecting after
    /// failures; runs until the task is dropped.
    pub async fn subscribe(self: Arc<Self>, channel: &str, handle: impl Fn(&str)) {
        use futures_util::StreamExt;
        let channel = format!("{}:{channel}", self.prefix);
        let own = format!("{}\t", *NODE);
        loop {
            let subscribed = async {
                let client = redis::Client::open(self.pubsub_url.as_str())?;
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(ps)
            }
            .await;
            match subscribed {
                Ok(ps) => {
                    log::info!("subscribed to {channel}");
                    let mut stream = ps.into_on_message();
                    while let Some(msg) = stream.next().await {
                        let Ok(text) = msg.get_payload::<String>() else {
                            continue;
                        };
                        if let Some(body) = text.strip_prefix(&own) {
                            let _ = body; // sent by this node: already applied
                        } else if let Some((_, body)) = text.split_once('\t') {
                            handle(body);
                        }
                    }
                    log::warn!("subscription to {channel} ended; resubscribing");
                }
                Err(e) => log::debug!("cannot subscribe to {channel}: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
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
