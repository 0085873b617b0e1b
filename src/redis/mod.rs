//! The Redis connection Postern shares between cluster-wide rate limits and cache purge
//! broadcasts: a reconnecting `ConnectionManager` for a single server, a `ClusterConnection`
//! for Redis Cluster, both made off the request path. Every call has a hard timeout
//! (`cluster.redis.timeout`); after a failure Redis is left alone for [`RECHECK`] and calls
//! fail at once; outages and recoveries are logged once each and counted in metrics.

pub mod config;

use crate::common::Clock;
use crate::observability::metrics::{redis_state, Metrics};
use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::Script;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long Redis is bypassed after a failed or timed-out call.
pub const RECHECK: Duration = Duration::from_millis(500);

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
    metrics: Metrics,
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
            metrics: None,
        })
    }

    /// Counts outages and recoveries in these metrics.
    pub fn with_metrics(mut self, metrics: Metrics) -> Redis {
        self.metrics = metrics;
        self
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
        redis_state(&self.metrics, true, false);
        if !self.up.swap(true, Ordering::AcqRel) {
            log::info!("Redis for cluster-wide rate limits is reachable");
        }
    }

    fn mark_down(&self, why: &str) {
        redis_state(&self.metrics, false, true);
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

    /// Runs `script` on `key` with integer `args`, within the call timeout.
    pub async fn eval(
        self: &Arc<Self>,
        script: &Script,
        key: &str,
        args: &[u64],
    ) -> Result<Vec<i64>, Unavailable> {
        if self.clock.now() < self.bypass_until.load(Ordering::Relaxed) {
            return Err(Unavailable::Bypassed);
        }
        let Some(conn) = self.conn.load_full() else {
            self.connect_in_background();
            return Err(Unavailable::NotConnected);
        };
        let mut inv = script.prepare_invoke();
        inv.key(key);
        for a in args {
            inv.arg(*a);
        }
        let call = async {
            match (*conn).clone() {
                Conn::Single(mut c) => inv.invoke_async::<Vec<i64>>(&mut c).await,
                Conn::Cluster(mut c) => inv.invoke_async::<Vec<i64>>(&mut c).await,
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => {
                self.mark_up();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.mark_down(&e.to_string());
                Err(Unavailable::Failed(e.to_string()))
            }
            Err(_) => {
                self.mark_down(&format!("no answer within {:?}", self.timeout));
                Err(Unavailable::Timeout)
            }
        }
    }

    /// A call answered with something the caller cannot use: counts as a failure.
    pub fn bad_answer(&self, why: &str) -> Unavailable {
        self.mark_down(why);
        Unavailable::Failed(why.to_string())
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
