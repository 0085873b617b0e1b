//! Rate and concurrency limits: exact counts, bursts, several windows, keys, delay, headers,
//! reloads, and cluster-wide limits on a real Redis shared by two gateways.

use crate::util::redis::{RedisCluster, RedisServer};
use crate::util::upstream::Upstream;
use crate::util::{client, eventually, eventually_with, metric, upstream_yaml, Gateway, Poll};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

fn body(up: &Upstream, plugins: &str) -> String {
    format!(
        "upstreams:\n{}routes:\n  - name: api\n    match: {{ path: /api/* }}\n    upstream: u\n    plugins:\n{plugins}",
        upstream_yaml("u", &[up.addr], "")
    )
}

async fn get(c: &reqwest::Client, url: &str, header: Option<(&str, &str)>) -> reqwest::Response {
    let mut r = c.get(url);
    if let Some((k, v)) = header {
        r = r.header(k, v);
    }
    r.send().await.unwrap()
}

fn hv<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_count_then_429_with_headers() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&body(
        &up,
        "      - rate_limit: { key: client_ip, limits: [ { requests: 5, per: 1m } ] }\n",
    ));
    let c = client();
    for i in 0..5u64 {
        let r = get(&c, &gw.url("/api/x"), None).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(hv(&r, "ratelimit-policy"), "\"client_ip\";q=5;w=60");
        // One request per 12 s refills: the bucket is whole again 12 s per request used.
        assert_eq!(
            hv(&r, "ratelimit"),
            format!("\"client_ip\";r={};t={}", 4 - i, 12 * (i + 1))
        );
    }
    let r = get(&c, &gw.url("/api/x"), None).await;
    assert_eq!(r.status(), 429);
    assert_eq!(hv(&r, "retry-after"), "12");
    assert_eq!(hv(&r, "content-type"), "application/problem+json");
    assert_eq!(
        hv(&r, "ratelimit"),
        "\"client_ip\";r=0;t=60",
        "a rejected request is not charged: the quota is whole again in 60 s"
    );
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], "urn:postern:problem:rate-limited");
    assert_eq!(v["status"], 429);
    assert_eq!(up.hits(), 5, "rejected requests never reach the upstream");
    gw.wait_metric(
        "postern_ratelimit_requests_total{result=\"rejected\",route=\"api\",rule=\"client_ip\"}",
        1.0,
    );
    let text = gw.metrics();
    assert_eq!(
        metric(
            &text,
            "postern_ratelimit_requests_total{result=\"allowed\",route=\"api\",rule=\"client_ip\"}"
        ),
        Some(5.0),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_and_several_windows_with_legacy_headers() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&body(
        &up,
        r#"      - rate_limit:
          name: fast
          limits: [ { requests: 1, per: 1h, burst: 3 } ]
          headers: legacy
      - rate_limit:
          name: two-windows
          key: header:x-key
          limits: [ { requests: 100, per: 1s }, { requests: 2, per: 1h } ]
"#,
    ));
    let c = client();
    // Burst 3 above a rate of 1/h: three at once, then none.
    let mut codes = Vec::new();
    for _ in 0..4 {
        let r = get(&c, &gw.url("/api/b"), None).await;
        codes.push(r.status().as_u16());
        if r.status() == 429 {
            assert_eq!(hv(&r, "x-ratelimit-limit"), "1");
            assert_eq!(hv(&r, "x-ratelimit-remaining"), "0");
            assert_eq!(hv(&r, "retry-after"), "3600");
            assert_eq!(hv(&r, "ratelimit"), "", "legacy profile only");
        }
    }
    assert_eq!(codes, [200, 200, 200, 429]);

    // A fresh gateway for the second rule (the first one is exhausted for this client).
    let gw = Gateway::start(&body(
        &up,
        "      - rate_limit:\n          name: two-windows\n          key: header:x-key\n          limits: [ { requests: 100, per: 1s }, { requests: 2, per: 1h } ]\n",
    ));
    let k = Some(("x-key", "k1"));
    let r = get(&c, &gw.url("/api/w"), k).await;
    assert_eq!(
        hv(&r, "ratelimit-policy"),
        "\"two-windows-1s\";q=100;w=1, \"two-windows-1h\";q=2;w=3600"
    );
    assert_eq!(hv(&r, "ratelimit"), "\"two-windows-1h\";r=1;t=1800");
    assert_eq!(get(&c, &gw.url("/api/w"), k).await.status(), 200);
    let r = get(&c, &gw.url("/api/w"), k).await;
    assert_eq!(r.status(), 429, "the hourly limit binds");
    assert_eq!(hv(&r, "retry-after"), "1800");
    // Keys are independent; requests without the key are not limited (missing_key: skip).
    assert_eq!(
        get(&c, &gw.url("/api/w"), Some(("x-key", "k2")))
            .await
            .status(),
        200
    );
    for _ in 0..3 {
        assert_eq!(get(&c, &gw.url("/api/w"), None).await.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_bucket_for_requests_without_the_key() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&body(
        &up,
        "      - rate_limit: { key: [header:x-tenant, client_ip], missing_key: shared, limits: [ { requests: 2, per: 1h } ] }\n",
    ));
    let c = client();
    let codes: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(get(&c, &gw.url("/api/s"), None).await.status().as_u16());
        }
        v
    };
    assert_eq!(codes, [200, 200, 429]);
    assert_eq!(
        get(&c, &gw.url("/api/s"), Some(("x-tenant", "t")))
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_holds_requests_and_gives_up_past_max_delay() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&body(
        &up,
        "      - rate_limit: { limits: [ { requests: 2, per: 1s, burst: 1 } ], action: delay, max_delay: 700ms }\n",
    ));
    let c = client();
    let start = Instant::now();
    let calls = (0..3).map(|_| {
        let (c, url) = (c.clone(), gw.url("/api/d"));
        tokio::spawn(async move {
            let r = c.get(url).send().await.unwrap();
            (r.status().as_u16(), start.elapsed())
        })
    });
    let mut results = Vec::new();
    for h in calls.collect::<Vec<_>>() {
        results.push(h.await.unwrap());
    }
    results.sort_by_key(|r| r.1);
    let ok: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    let rejected: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    // Slots at 0 ms and 500 ms; the third would wait 1000 ms > 700 ms.
    assert_eq!(ok.len(), 2, "{results:?}");
    assert_eq!(rejected.len(), 1, "{results:?}");
    assert!(
        ok[1].1 >= Duration::from_millis(400),
        "the second request was held: {results:?}"
    );
    assert!(
        rejected[0].1 < Duration::from_millis(400),
        "a request past max_delay is rejected at once: {results:?}"
    );
    gw.wait_metric(
        "postern_ratelimit_requests_total{result=\"delayed\",route=\"api\",rule=\"client_ip\"}",
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_the_state_of_unchanged_rules() {
    let up = Upstream::start("u").await;
    let plugins = "      - rate_limit: { limits: [ { requests: 2, per: 1h } ] }\n";
    let gw = Gateway::start(&body(&up, plugins));
    let c = client();
    for _ in 0..2 {
        assert_eq!(get(&c, &gw.url("/api/r"), None).await.status(), 200);
    }
    // Same rule, another route added: the counter survives.
    gw.rewrite(&format!(
        "{}  - {{ name: other, match: {{ path: /other/* }}, upstream: u }}\n",
        body(&up, plugins)
    ));
    let (code, _) = gw.admin_call("POST", "/reload", Some(crate::util::ADMIN_TOKEN));
    assert_eq!(code, 200);
    assert_eq!(get(&c, &gw.url("/api/r"), None).await.status(), 429);
    // A changed rule starts afresh.
    gw.rewrite(&body(
        &up,
        "      - rate_limit: { limits: [ { requests: 3, per: 1h } ] }\n",
    ));
    let (code, _) = gw.admin_call("POST", "/reload", Some(crate::util::ADMIN_TOKEN));
    assert_eq!(code, 200);
    assert_eq!(get(&c, &gw.url("/api/r"), None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_releases_on_completion_and_on_client_abort() {
    use std::io::Write;
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&body(
        &up,
        "      - concurrency_limit: { key: client_ip, max: 1 }\n",
    ));
    let c = client();
    up.state.delay_ms.store(400, SeqCst);
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/api/slow"));
        async move { c.get(url).send().await.unwrap().status().as_u16() }
    });
    while up.hits() == 0 {
        tokio::task::yield_now().await;
    }
    let r = get(&c, &gw.url("/api/other"), None).await;
    assert_eq!(r.status(), 429);
    assert_eq!(hv(&r, "retry-after"), "1");
    assert_eq!(slow.await.unwrap(), 200);
    up.state.delay_ms.store(0, SeqCst);
    assert_eq!(get(&c, &gw.url("/api/after"), None).await.status(), 200);

    // A client that goes away while its request waits on the upstream gives its slot back.
    up.state.delay_ms.store(60_000, SeqCst);
    let hits = up.hits();
    let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
    s.write_all(b"GET /api/abandoned HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    while up.hits() == hits {
        tokio::task::yield_now().await;
    }
    // The upstream counts the hit before it reads the delay: keep the delay until the slot is
    // known to be held (the 429 never reaches the upstream), or the abandoned request could
    // finish at once and free it.
    assert_eq!(get(&c, &gw.url("/api/x"), None).await.status(), 429);
    up.state.delay_ms.store(0, SeqCst);
    drop(s);
    let (c, gw) = (&c, &gw);
    eventually("the slot is released after the abort", || async move {
        (get(c, &gw.url("/api/x"), None).await.status() == 200).then_some(())
    })
    .await;
}

fn cluster_body(up: &Upstream, redis: &RedisServer, timeout: &str) -> String {
    format!(
        r#"cluster:
  redis: {{ url: "{}", timeout: {timeout}, on_error: allow }}
upstreams:
{}routes:
  - name: shared
    match: {{ path: /shared/* }}
    upstream: u
    plugins:
      - rate_limit: {{ scope: cluster, limits: [ {{ requests: 10, per: 1h }} ] }}
  - name: strict
    match: {{ path: /strict/* }}
    upstream: u
    plugins:
      - rate_limit: {{ scope: cluster, on_error: deny, limits: [ {{ requests: 1000, per: 1h }} ] }}
  - name: fallback
    match: {{ path: /fallback/* }}
    upstream: u
    plugins:
      - rate_limit: {{ scope: cluster, limits: [ {{ requests: 2, per: 1h }} ] }}
"#,
        redis.url(),
        upstream_yaml("u", &[up.addr], "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_limit_holds_across_two_gateways_and_survives_redis_outages() {
    let mut redis = RedisServer::start();
    let up = Upstream::start("u").await;
    let a = Gateway::start(&cluster_body(&up, &redis, "50ms"));
    let b = Gateway::start(&cluster_body(&up, &redis, "50ms"));
    a.wait_metric("postern_redis_up", 1.0);
    b.wait_metric("postern_redis_up", 1.0);
    let c = client();
    let mut allowed = 0;
    for i in 0..30 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = get(&c, &gw.url("/shared/x"), None).await;
        match r.status().as_u16() {
            200 => allowed += 1,
            429 => assert!(hv(&r, "retry-after").parse::<u64>().unwrap() > 0),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        allowed, 10,
        "the two nodes together allow exactly the limit"
    );
    assert!(redis
        .cmd(&["KEYS", "postern:rl:shared:*"])
        .contains("postern:rl:shared:"));

    // Redis down: `allow` falls back to a per-node limit, `deny` answers 503.
    redis.stop();
    let r = get(&c, &a.url("/strict/x"), None).await;
    assert_eq!(r.status(), 503);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], "urn:postern:problem:unavailable");
    // Keys known to be over the limit stay rejected without asking Redis.
    assert_eq!(get(&c, &a.url("/shared/x"), None).await.status(), 429);
    // `allow`: the same rule, enforced by this node alone.
    let mut codes = Vec::new();
    for _ in 0..3 {
        codes.push(get(&c, &a.url("/fallback/x"), None).await.status().as_u16());
    }
    assert_eq!(codes, [200, 200, 429]);
    a.wait_metric("postern_redis_up", 0.0);

    // Redis back: the cluster path is used again (state was lost with the restart).
    redis.restart();
    let (c_ref, a_ref) = (&c, &a);
    let poll = Poll::within(Duration::from_secs(20)).every(Duration::from_millis(50));
    eventually_with(poll, "requests recover with Redis", || async move {
        (get(c_ref, &a_ref.url("/strict/x"), None).await.status() == 200).then_some(())
    })
    .await;
    a.wait_metric("postern_redis_up", 1.0);
    let text = a.metrics();
    assert!(metric(&text, "postern_redis_errors_total").unwrap() >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_costs_at_most_the_timeout() {
    let redis = RedisServer::start();
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&cluster_body(&up, &redis, "20ms"));
    gw.wait_metric("postern_redis_up", 1.0);
    let c = client();
    assert_eq!(get(&c, &gw.url("/shared/x"), None).await.status(), 200);
    let port = redis.port;
    let sleeper = std::thread::spawn(move || {
        let r = RedisServer::cmd_on(port, &["DEBUG", "SLEEP", "2"]);
        assert!(r.starts_with("+OK"), "{r}");
    });
    // Wait until the server is actually blocked: a PING from another connection stalls.
    while !redis.is_stalled() {}
    let started = Instant::now();
    let r = get(&c, &gw.url("/shared/y"), None).await;
    let took = started.elapsed();
    assert_eq!(r.status(), 200, "on_error: allow");
    assert!(
        took < Duration::from_millis(1500),
        "a 2 s Redis stall must not stall the request ({took:?})"
    );
    sleeper.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_limit_on_redis_cluster() {
    let cluster = RedisCluster::start();
    let up = Upstream::start("u").await;
    let body = format!(
        r#"cluster:
  redis: {{ cluster_nodes: {}, timeout: 200ms }}
upstreams:
{}routes:
  - name: shared
    match: {{ path: /shared/* }}
    upstream: u
    plugins:
      - rate_limit: {{ scope: cluster, key: header:x-user, limits: [ {{ requests: 3, per: 1h }} ] }}
"#,
        cluster.nodes_yaml(),
        upstream_yaml("u", &[up.addr], "")
    );
    let a = Gateway::start(&body);
    let b = Gateway::start(&body);
    a.wait_metric("postern_redis_up", 1.0);
    b.wait_metric("postern_redis_up", 1.0);
    let c = client();
    // Several users, so that keys land on different nodes of the cluster.
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        let mut allowed = 0;
        for i in 0..6 {
            let gw = if i % 2 == 0 { &a } else { &b };
            if get(&c, &gw.url("/shared/x"), Some(("x-user", user)))
                .await
                .status()
                == 200
            {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 3, "user {user}");
    }
    let text = a.metrics();
    assert_eq!(
        metric(&text, "postern_redis_errors_total"),
        Some(0.0),
        "{text}"
    );
}
