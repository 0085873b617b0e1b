//! Error handling and resilience: circuit breakers, static fallbacks.

use crate::util::upstream::DocServer;
use crate::util::{client, free_port, metric, Gateway};
use std::time::{Duration, Instant};

/// Sends requests until `done` accepts an answer (status, body, retry-after), up to 10 s.
async fn until(
    gw: &Gateway,
    path: &str,
    what: &str,
    done: impl Fn(u16, &str, Option<&str>) -> bool,
) -> (u16, String) {
    let c = client();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.get(gw.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let ra = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.text().await.unwrap();
        if done(status, &body, ra.as_deref()) {
            return (status, body);
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn circuit(gw: &Gateway) -> serde_json::Value {
    gw.upstreams()["upstreams"]["svc"]["circuit"].clone()
}

/// Issue 27: an open breaker of an idle upstream moved to half-open only when a request came,
/// so the admin view said `open, retry_after_ms: 0` and `postern_circuit_state` stayed 2 (and
/// the PosternCircuitOpen alert fired) long after the upstream recovered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_open_breaker_reports_half_open_after_open_for() {
    let up = DocServer::start(503, r#"{"down":true}"#).await;
    let body = format!(
        r#"upstreams:
  svc:
    targets: [ {{ addr: "{}" }} ]
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ consecutive_failures: 1, open_for: 200ms, max_open_for: 1s }}
routes:
  - {{ name: r, match: {{ path: /* }}, upstream: svc }}
"#,
        up.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 503);
    assert_eq!(circuit(&gw)["state"], "open");
    // No request reaches the gateway from now on: the metric and the view move by themselves.
    crate::util::eventually_blocking(
        crate::util::Poll::DEFAULT,
        "the gauge reports half-open",
        || {
            (metric(&gw.metrics(), "postern_circuit_state{upstream=\"svc\"}") == Some(1.0))
                .then_some(())
        },
    );
    let v = circuit(&gw);
    assert_eq!(
        (v["state"].as_str(), v["retry_after_ms"].as_u64()),
        (Some("half_open"), Some(0)),
        "{v}"
    );
    assert_eq!(up.hits(), 1, "half-opened without a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_fails_fast_then_half_opens_doubles_and_closes() {
    let up = DocServer::start(503, r#"{"down":true}"#).await;
    let body = format!(
        r#"upstreams:
  svc:
    targets: [ {{ addr: "{}" }} ]
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ consecutive_failures: 3, min_requests: 100, open_for: 300ms, max_open_for: 1s, half_open_requests: 2 }}
routes:
  - {{ name: r, match: {{ path: /* }}, upstream: svc }}
"#,
        up.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    assert_eq!(circuit(&gw)["state"], "closed");
    for _ in 0..3 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert_eq!(
            r.text().await.unwrap(),
            r#"{"down":true}"#,
            "the upstream's own answer"
        );
    }
    // Open: fast failures without a connection attempt, with Retry-After.
    let r = c.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:postern:problem:circuit-open");
    assert_eq!(up.hits(), 3);
    assert_eq!(circuit(&gw)["state"], "open");
    assert_eq!(
        metric(&gw.metrics(), "postern_circuit_state{upstream=\"svc\"}"),
        Some(2.0)
    );
    // After open_for: trials reach the upstream, fail, and the breaker reopens for twice as long.
    until(&gw, "/x", "a trial", |_, b, _| b.contains("down")).await;
    let c1 = circuit(&gw);
    assert_eq!(c1["state"], "open", "{c1}");
    let left = c1["retry_after_ms"].as_u64().unwrap();
    assert!(
        left > 300 && left <= 600,
        "reopened for 600 ms, {left} left"
    );
    // The upstream recovers: two successful trials close the breaker.
    up.set(200, r#"{"ok":true}"#);
    until(&gw, "/x", "a successful trial", |s, _, _| s == 200).await;
    until(&gw, "/x", "the second trial", |s, _, _| s == 200).await;
    gw.wait_upstreams("closed", |v| {
        v["upstreams"]["svc"]["circuit"]["state"] == "closed"
    });
    for _ in 0..5 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    let m = gw.metrics();
    assert_eq!(
        metric(&m, "postern_circuit_state{upstream=\"svc\"}"),
        Some(0.0)
    );
    let to = |s: &str| {
        metric(
            &m,
            &format!("postern_circuit_transitions_total{{to=\"{s}\",upstream=\"svc\"}}"),
        )
    };
    assert_eq!(to("open"), Some(2.0));
    assert_eq!(to("half_open"), Some(2.0));
    assert_eq!(to("closed"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_state_survives_a_reload_that_keeps_its_settings() {
    let up = DocServer::start(500, "{}").await;
    let body = |extra: &str| {
        format!(
            r#"upstreams:
  svc:
    targets: [ {{ addr: "{}" }} ]
    circuit_breaker: {{ consecutive_failures: 1, open_for: 1h, max_open_for: 1h }}
routes:
  - {{ name: r, match: {{ path: /* }}, upstream: svc }}
{extra}"#,
            up.addr
        )
    };
    let gw = Gateway::start(&body(""));
    let c = client();
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 500);
    assert_eq!(circuit(&gw)["state"], "open");
    gw.rewrite(&body(
        "  - { name: other, match: { path: /other }, upstream: svc }\n",
    ));
    gw.signal("HUP");
    gw.wait_metric("postern_config_generation", 2.0);
    assert_eq!(circuit(&gw)["state"], "open", "kept across the reload");
    let r = c.get(gw.url("/other")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(up.hits(), 1);
    assert!(gw
        .metrics()
        .contains("postern_circuit_state{upstream=\"svc\"} 2"));

    // The breaker leaves the configuration: requests go through, and the upstream stops
    // reporting a circuit state (no stale "open" series for an alert to fire on).
    let without = body("").replace(
        "    circuit_breaker: { consecutive_failures: 1, open_for: 1h, max_open_for: 1h }\n",
        "",
    );
    gw.rewrite(&without);
    gw.signal("HUP");
    gw.wait_metric("postern_config_generation", 3.0);
    assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 500);
    let gw = &gw;
    crate::util::eventually(
        "the removed upstream's circuit series goes",
        || async move {
            (!gw.metrics()
                .contains("postern_circuit_state{upstream=\"svc\"}"))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallbacks_answer_for_upstream_failures_only() {
    let up = DocServer::start(500, r#"{"error":"internal detail"}"#).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fallback.html");
    std::fs::write(&file, "<p>Back soon</p>").unwrap();
    let dead = format!("127.0.0.1:{}", free_port());
    let body = format!(
        r#"upstreams:
  svc: {{ targets: [ {{ addr: "{up}" }} ], retry: {{ attempts: 1 }} }}
  dead: {{ targets: [ {{ addr: "{dead}" }} ], retry: {{ attempts: 1 }} }}
routes:
  - name: list
    match: {{ path: /list }}
    upstream: svc
    fallback: {{ on: [5xx], status: 200, headers: {{ x-degraded: "1" }}, body: '{{"items":[]}}' }}
  - name: only-503
    match: {{ path: /only-503 }}
    upstream: svc
    fallback: {{ on: [503], body: '{{}}' }}
  - name: page
    match: {{ path: /page }}
    upstream: dead
    fallback: {{ status: 503, headers: {{ content-type: text/html }}, body_file: "{file}" }}
"#,
        up = up.addr,
        file = file.display()
    );
    let gw = Gateway::start(&body);
    let c = client();
    let r = c.get(gw.url("/list")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["postern-fallback"], "?1");
    assert_eq!(r.headers()["x-degraded"], "1");
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.text().await.unwrap(), r#"{"items":[]}"#);
    // A 500 is not covered by `on: [503]`: the upstream's answer passes.
    let r = c.get(gw.url("/only-503")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.headers().get("postern-fallback").is_none());
    // Connection refused: the file's page, with its status and type.
    let r = c.get(gw.url("/page")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "text/html");
    assert_eq!(r.headers()["postern-fallback"], "?1");
    assert_eq!(r.text().await.unwrap(), "<p>Back soon</p>");
    // A client error is never replaced.
    assert_eq!(c.get(gw.url("/none")).send().await.unwrap().status(), 404);
    up.set(200, r#"{"items":[1]}"#);
    let r = c.get(gw.url("/list")).send().await.unwrap();
    assert!(r.headers().get("postern-fallback").is_none());
    assert_eq!(r.text().await.unwrap(), r#"{"items":[1]}"#);
    let m = gw.metrics();
    assert_eq!(
        metric(&m, "postern_fallbacks_total{reason=\"5xx\",route=\"list\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "postern_fallbacks_total{reason=\"connect_error\",route=\"page\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_takes_the_fallback() {
    let up = DocServer::start(502, "{}").await;
    let body = format!(
        r#"upstreams:
  svc:
    targets: [ {{ addr: "{}" }} ]
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ consecutive_failures: 2, open_for: 1h, max_open_for: 1h }}
routes:
  - name: r
    match: {{ path: /* }}
    upstream: svc
    fallback: {{ on: [circuit_open], body: '{{"cached":false}}' }}
"#,
        up.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    for _ in 0..2 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 502);
    }
    for _ in 0..3 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["postern-fallback"], "?1");
    }
    assert_eq!(up.hits(), 2);
    assert_eq!(
        metric(
            &gw.metrics(),
            "postern_fallbacks_total{reason=\"circuit_open\",route=\"r\"}"
        ),
        Some(3.0)
    );
}

/// A server answering `first` (status, headers) to its first `n` requests, then 200.
async fn flaky(
    n: usize,
    status: u16,
    headers: Vec<(&'static str, String)>,
) -> crate::util::upstream::FnServer {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    crate::util::upstream::FnServer::start(move |_| {
        let i = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if i < n {
            (status, headers.clone(), "{}".into())
        } else {
            (200, vec![], r#"{"ok":true}"#.into())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_attempts_under_a_total_outage() {
    let up = flaky(usize::MAX, 503, vec![]).await;
    let body = format!(
        r#"upstreams:
  svc:
    targets: [ {{ addr: "{}" }} ]
    retry: {{ attempts: 5, on: [503], budget: {{ ratio: 0.2, window: 1m, min_per_second: 0.1 }} }}
routes:
  - {{ name: r, match: {{ path: /* }}, upstream: svc }}
"#,
        up.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    let requests = 200;
    for _ in 0..requests {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 503);
    }
    // Without a budget: 5 x 200 = 1000 attempts. With it: 200 + 0.2 x 200 + 0.1/s x 60 s.
    let attempts = up.hits();
    assert!(
        attempts <= requests * 12 / 10 + 6 && attempts > requests,
        "{attempts} upstream attempts for {requests} requests"
    );
    let m = gw.metrics();
    let exhausted = metric(
        &m,
        "postern_retries_total{result=\"budget_exhausted\",upstream=\"svc\"}",
    )
    .unwrap();
    let retried = metric(
        &m,
        "postern_retries_total{result=\"retried\",upstream=\"svc\"}",
    )
    .unwrap();
    assert_eq!(retried as usize, attempts - requests);
    assert!(exhausted > 100.0, "{exhausted}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_when_it_fits_the_deadline() {
    let soon = flaky(1, 503, vec![("retry-after", "1".into())]).await;
    let late = flaky(1, 503, vec![("retry-after", "30".into())]).await;
    let body = format!(
        r#"upstreams:
  soon: {{ targets: [ {{ addr: "{}" }} ], retry: {{ attempts: 2, on: [503] }} }}
  late: {{ targets: [ {{ addr: "{}" }} ], retry: {{ attempts: 2, on: [503] }} }}
routes:
  - {{ match: {{ path: /soon }}, upstream: soon, deadline: 5s }}
  - {{ match: {{ path: /late }}, upstream: late, deadline: 5s }}
"#,
        soon.addr, late.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    let r = c.get(gw.url("/soon")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(soon.hits(), 2);
    let t = soon.timeline.lock().clone();
    let gap = t[1].1.duration_since(t[0].2);
    assert!(gap >= Duration::from_millis(990), "retried after {gap:?}");
    // 30 s does not fit in the 5 s deadline: no retry, the client gets the answer and its field.
    let r = c.get(gw.url("/late")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "30");
    assert_eq!(late.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_deadline_bounds_every_try() {
    let slow = crate::util::upstream::FnServer::start(|_| {
        (200, vec![("x-test-delay-ms", "3000".into())], "{}".into())
    })
    .await;
    let body = format!(
        r#"upstreams:
  slow: {{ targets: [ {{ addr: "{}" }} ], timeouts: {{ read: 10s }}, retry: {{ attempts: 3, on: [timeout] }} }}
routes:
  - {{ match: {{ path: /* }}, upstream: slow, deadline: 300ms }}
"#,
        slow.addr
    );
    let gw = Gateway::start(&body);
    let started = Instant::now();
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "bounded by the deadline, not the 10 s read timeout"
    );
    assert_eq!(slow.hits(), 1, "no retry once the deadline passed");
}

/// `retry.max_body`: a body that went out and is larger than the limit is not sent again; a
/// smaller one is (both with an Idempotency-Key, on a 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_above_retry_max_body_is_not_sent_again() {
    let up = flaky(2, 502, vec![]).await;
    let body = format!(
        "upstreams:\n  u: {{ targets: [ {{ addr: \"{}\" }} ], retry: {{ attempts: 2, on: [502], idempotency_key: true, max_body: 1KiB }} }}\nroutes:\n  - {{ match: {{ path: /* }}, upstream: u }}\n",
        up.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    let post = |n: usize, key: &'static str| {
        c.post(gw.url("/orders"))
            .header("idempotency-key", key)
            .body(vec![b'x'; n])
            .send()
    };
    // 2 KiB: one try, the 502 goes to the client.
    let r = post(2048, "big").await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(up.hits(), 1, "not sent again");
    // 512 bytes: the second failure is retried and the third answer succeeds.
    let r = post(512, "small").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_post_retryable() {
    let up = flaky(1, 502, vec![]).await;
    let plain = flaky(1, 502, vec![]).await;
    let body = format!(
        r#"upstreams:
  keyed: {{ targets: [ {{ addr: "{}" }} ], retry: {{ attempts: 2, on: [502], idempotency_key: true }} }}
  plain: {{ targets: [ {{ addr: "{}" }} ], retry: {{ attempts: 2, on: [502] }} }}
routes:
  - {{ match: {{ path: /keyed }}, upstream: keyed }}
  - {{ match: {{ path: /plain }}, upstream: plain }}
"#,
        up.addr, plain.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    let r = c
        .post(gw.url("/keyed"))
        .header("idempotency-key", "order-7")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.hits(), 2);
    let r = c
        .post(gw.url("/plain"))
        .header("idempotency-key", "order-8")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "not enabled on this upstream: a POST is not replayed"
    );
    assert_eq!(plain.hits(), 1);
}

async fn served_by(gw: &Gateway, path: &str) -> String {
    let r = client().get(gw.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    v["upstream"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_targets_serve_only_while_no_primary_is_healthy() {
    use crate::util::upstream::Upstream;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let addr_a = a.addr;
    let body = format!(
        r#"upstreams:
  pool:
    targets: [ {{ addr: "{}" }}, {{ addr: "{}", backup: true }} ]
    health: {{ passive: {{ unhealthy_after: 1, eject_for: 1s }} }}
    retry: {{ attempts: 2, on: [connect_error] }}
routes:
  - {{ match: {{ path: /* }}, upstream: pool }}
"#,
        a.addr, b.addr
    );
    let gw = Gateway::start(&body);
    for _ in 0..10 {
        assert_eq!(served_by(&gw, "/x").await, "a");
    }
    assert_eq!(
        b.hits(),
        0,
        "the backup gets nothing while the primary is healthy"
    );
    assert_eq!(
        gw.upstreams()["upstreams"]["pool"]["targets"][1]["backup"],
        true
    );
    a.stop();
    // The first request fails to connect to a (ejected at once) and is retried on the backup.
    for _ in 0..5 {
        assert_eq!(served_by(&gw, "/x").await, "b");
    }
    // The primary comes back: once its ejection ends, traffic returns to it.
    let _a = Upstream::start_on(addr_a, "a").await;
    until(&gw, "/x", "the primary again", |_, body, _| {
        body.contains("\"a\"")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_upstream_takes_over() {
    use crate::util::upstream::Upstream;
    let dr = Upstream::start("dr").await;
    let failing = DocServer::start(503, "{}").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let body = format!(
        r#"upstreams:
  main: {{ targets: [ {{ addr: "{dead}" }} ], retry: {{ attempts: 2, on: [connect_error] }} }}
  flaky:
    targets: [ {{ addr: "{}" }} ]
    retry: {{ attempts: 1 }}
    circuit_breaker: {{ consecutive_failures: 1, open_for: 1h, max_open_for: 1h }}
  dr: {{ targets: [ {{ addr: "{}" }} ] }}
routes:
  - {{ match: {{ path: /refused }}, upstream: main, failover: dr }}
  - {{ match: {{ path: /breaker }}, upstream: flaky, failover: dr }}
"#,
        failing.addr, dr.addr
    );
    let gw = Gateway::start(&body);
    // Connection refused twice (the retry), then the failover upstream.
    assert_eq!(served_by(&gw, "/refused").await, "dr");
    // The 503 opens flaky's breaker (a 503 is an answer: the client gets it); then the open
    // breaker sends requests to the failover upstream without trying flaky.
    let r = client().get(gw.url("/breaker")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(served_by(&gw, "/breaker").await, "dr");
    assert_eq!(served_by(&gw, "/breaker").await, "dr");
    assert_eq!(failing.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_percentages_hold_over_ten_thousand_requests() {
    use crate::util::upstream::Upstream;
    let up = Upstream::start("a").await;
    let body = format!(
        r#"upstreams:
  svc: {{ targets: [ {{ addr: "{}" }} ] }}
routes:
  - name: chaos
    match: {{ path: /chaos }}
    upstream: svc
    plugins:
      - fault: {{ delay: {{ duration: 1ms, percent: 10 }}, abort: {{ status: 503, percent: 5 }}, seed: 7 }}
  - name: opt-in
    match: {{ path: /opt-in }}
    upstream: svc
    plugins:
      - fault: {{ abort: {{ status: 500, percent: 100 }}, when_header: x-postern-fault }}
"#,
        up.addr
    );
    let gw = Gateway::start(&body);
    let n = 10_000usize;
    let url = gw.url("/chaos");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (c, url) = (client(), url.clone());
            tokio::spawn(async move {
                let mut aborted = 0;
                for _ in 0..n / 8 {
                    let r = c.get(&url).send().await.unwrap();
                    match r.status().as_u16() {
                        503 => {
                            let p: serde_json::Value = r.json().await.unwrap();
                            assert_eq!(p["type"], "urn:postern:problem:fault-injected");
                            aborted += 1;
                        }
                        200 => {}
                        s => panic!("unexpected {s}"),
                    }
                }
                aborted
            })
        })
        .collect();
    let mut aborted = 0usize;
    for t in tasks {
        aborted += t.await.unwrap();
    }
    // 5% +- 2 points and 10% +- 2 points.
    assert!((300..=700).contains(&aborted), "{aborted} aborted of {n}");
    assert_eq!(
        up.hits(),
        n - aborted,
        "an aborted request never reaches the upstream"
    );
    let m = gw.metrics();
    let count = |f: &str| {
        metric(
            &m,
            &format!("postern_faults_injected_total{{fault=\"{f}\",route=\"chaos\"}}"),
        )
        .unwrap_or(0.0) as usize
    };
    assert_eq!(count("abort") + count("delay+abort"), aborted);
    let delayed = count("delay") + count("delay+abort");
    assert!((800..=1200).contains(&delayed), "{delayed} delayed of {n}");
    // Opt-in faults: only requests with the header.
    let c = client();
    assert_eq!(c.get(gw.url("/opt-in")).send().await.unwrap().status(), 200);
    let r = c
        .get(gw.url("/opt-in"))
        .header("x-postern-fault", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_replace_problem_bodies_and_intercepted_upstream_errors() {
    let leaky = DocServer::start(500, "panic at db.internal:5432, stack: ...").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let server = r#"  errors:
    - { status: [404], content_type: text/html, body: "<h1>${status} ${title}</h1><p>${detail}</p><small>${request_id}</small>" }
    - { status: [5xx], content_type: application/json, body: '{"error": "${title}", "status": ${status}, "route": "${route}", "id": "${request_id}"}' }
"#;
    let body = format!(
        r#"consumers:
  - {{ name: app, api_keys: [ {{ sha256: "2c70e12b7a0646f92279f427c7b38e7334d8e5389cff167a1dc30e73f826b683" }} ] }}
upstreams:
  leaky: {{ targets: [ {{ addr: "{leaky}" }} ] }}
  dead: {{ targets: [ {{ addr: "{dead}" }} ], retry: {{ attempts: 1 }} }}
routes:
  - name: down
    match: {{ path: /down }}
    upstream: dead
  - name: leaky
    match: {{ path: /leaky }}
    upstream: leaky
    intercept_upstream: [500]
  - name: private
    match: {{ path: /private }}
    upstream: leaky
    plugins: [ {{ api_key: {{ header: x-api-key }} }} ]
    errors:
      - {{ status: [401, 403], content_type: text/plain, body: "denied: ${{detail}}" }}
"#,
        leaky = leaky.addr
    );
    let gw = Gateway::start_full(&body, "", server);
    let c = client();
    // No route: the server's HTML page, values escaped for HTML.
    let r = c.get(gw.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "text/html");
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let text = r.text().await.unwrap();
    assert!(
        text.starts_with("<h1>404 Not Found</h1><p>No route matches this request.</p>"),
        "{text}"
    );
    assert!(text.contains(&id));
    // Connection refused: the server's JSON page.
    let r = c.get(gw.url("/down")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"], "Bad Gateway");
    assert_eq!(v["status"], 502);
    assert_eq!(v["route"], "down");
    // An intercepted upstream 500: status kept, its body (with internal detail) replaced.
    let r = c.get(gw.url("/leaky")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let text = r.text().await.unwrap();
    assert!(!text.contains("db.internal"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"], "Internal Server Error");
    assert_eq!(v["route"], "leaky");
    // Not listed: a 500 on another route passes as the upstream sent it.
    let r = c
        .get(gw.url("/private"))
        .header("x-api-key", "key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.text().await.unwrap().contains("db.internal"));
    // A plugin's 401 with the route's own page.
    let r = c.get(gw.url("/private")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert!(r.text().await.unwrap().starts_with("denied: "));
}

/// Every error Postern itself answers, walked once: no address, Pingora text or OS error in
/// any body or header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_error_answer_leaks_internal_detail() {
    let slow = crate::util::upstream::FnServer::start(|_| {
        (200, vec![("x-test-delay-ms", "2000".into())], "{}".into())
    })
    .await;
    let failing = DocServer::start(503, "{}").await;
    let dead_port = free_port();
    let dead = format!("127.0.0.1:{dead_port}");
    let body = format!(
        r#"upstreams:
  slow: {{ targets: [ {{ addr: "{slow}" }} ], timeouts: {{ read: 200ms }}, retry: {{ attempts: 1 }} }}
  dead: {{ targets: [ {{ addr: "{dead}" }} ], retry: {{ attempts: 1 }} }}
  down: {{ targets: [ {{ addr: "{dead}" }} ], health: {{ passive: {{ unhealthy_after: 1, eject_for: 1h }} }}, retry: {{ attempts: 1 }} }}
  failing: {{ targets: [ {{ addr: "{failing}" }} ], retry: {{ attempts: 1 }}, circuit_breaker: {{ consecutive_failures: 1, open_for: 1h, max_open_for: 1h }} }}
routes:
  - {{ name: timeout, match: {{ path: /timeout }}, upstream: slow }}
  - {{ name: refused, match: {{ path: /refused }}, upstream: dead }}
  - {{ name: unhealthy, match: {{ path: /unhealthy }}, upstream: down }}
  - {{ name: breaker, match: {{ path: /breaker }}, upstream: failing }}
  - name: small
    match: {{ path: /small }}
    upstream: slow
    max_request_body: 10
  - name: limited
    match: {{ path: /limited }}
    upstream: dead
    plugins: [ {{ rate_limit: {{ key: client_ip, limits: [ {{ requests: 1, per: 1m }} ] }} }} ]
  - name: denied
    match: {{ path: /denied }}
    upstream: dead
    plugins: [ {{ ip_filter: {{ deny: [127.0.0.0/8] }} }} ]
  - name: jwt
    match: {{ path: /jwt }}
    upstream: dead
    plugins: [ {{ jwt: {{ keys: [ {{ alg: HS256, secret: "0123456789abcdef0123456789abcdef" }} ] }} }} ]
  - name: composite
    match: {{ path: /composite }}
    aggregate:
      calls:
        a: {{ upstream: dead, path: /a }}
"#,
        slow = slow.addr,
        failing = failing.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    // The breaker needs one failure first; the unhealthy upstream one ejection.
    c.get(gw.url("/breaker")).send().await.unwrap();
    c.get(gw.url("/unhealthy")).send().await.unwrap();
    c.get(gw.url("/limited")).send().await.unwrap();
    let mut seen = Vec::new();
    let mut check = |what: &str, status: u16, headers: String, body: String| {
        let all = format!("{headers}\n{body}");
        for leak in [
            dead_port.to_string(),
            slow.addr.port().to_string(),
            failing.addr.port().to_string(),
            "pingora".into(),
            "Pingora".into(),
            "os error".into(),
            "refused".into(),
            "Peer".into(),
            "context:".into(),
        ] {
            assert!(
                !all.contains(&leak),
                "{what} ({status}) leaks {leak:?}: {all}"
            );
        }
        seen.push(status);
    };
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("no route", c.get(gw.url("/nope"))),
        ("timeout", c.get(gw.url("/timeout"))),
        ("refused", c.get(gw.url("/refused"))),
        ("unhealthy", c.get(gw.url("/unhealthy"))),
        ("breaker", c.get(gw.url("/breaker"))),
        ("too large", c.post(gw.url("/small")).body("x".repeat(100))),
        ("rate limited", c.get(gw.url("/limited"))),
        ("ip denied", c.get(gw.url("/denied"))),
        (
            "bad token",
            c.get(gw.url("/jwt")).bearer_auth("not.a.token"),
        ),
        ("composite", c.get(gw.url("/composite"))),
        (
            "huge header",
            c.get(gw.url("/nope")).header("x-big", "a".repeat(70_000)),
        ),
    ];
    for (what, req) in cases {
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = format!("{:?}", r.headers());
        let body = r.text().await.unwrap_or_default();
        check(what, status, headers, body);
    }
    // A request Pingora's parser refuses (two Content-Length fields) gets Pingora's canned 400:
    // an empty body, and its `Server: Pingora` field, the one trace of the framework (known,
    // see the README's Errors section).
    let raw =
        gw.raw("GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
    let raw = raw.replace("Server: Pingora\r\n", "");
    check(
        "malformed",
        crate::util::status_of(&raw),
        raw.clone(),
        String::new(),
    );
    seen.sort();
    assert_eq!(
        seen,
        vec![400, 401, 403, 404, 413, 429, 431, 502, 502, 503, 503, 504],
        "every path answered its status"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_holds_its_ratio_and_stickiness() {
    use crate::util::upstream::Upstream;
    let (v1, v2) = (Upstream::start("v1").await, Upstream::start("v2").await);
    let body = format!(
        r#"upstreams:
  v1: {{ targets: [ {{ addr: "{}" }} ] }}
  v2: {{ targets: [ {{ addr: "{}" }} ] }}
routes:
  - {{ name: canary, match: {{ path: /canary }}, upstreams: [ {{ name: v1, weight: 90 }}, {{ name: v2, weight: 10 }} ] }}
  - {{ name: by-user, match: {{ path: /user }}, upstreams: [ {{ name: v1, weight: 50 }}, {{ name: v2, weight: 50 }} ], sticky: "header:x-user-id" }}
  - {{ name: by-cookie, match: {{ path: /cookie }}, upstreams: [ {{ name: v1, weight: 50 }}, {{ name: v2, weight: 50 }} ], sticky: "cookie:release" }}
"#,
        v1.addr, v2.addr
    );
    let gw = Gateway::start(&body);
    let n = 10_000usize;
    let url = gw.url("/canary");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (c, url) = (client(), url.clone());
            tokio::spawn(async move {
                for _ in 0..n / 8 {
                    assert_eq!(c.get(&url).send().await.unwrap().status(), 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let share = v2.hits() as f64 / n as f64;
    assert!(
        (0.08..=0.12).contains(&share),
        "v2 got {share} of the requests"
    );
    assert_eq!(v1.hits() + v2.hits(), n);
    // Sticky by header: every user stays on one upstream; users spread over both.
    let mut users_on = [0, 0];
    for u in 0..40 {
        let first = served_by_with(&gw, "/user", Some(("x-user-id", format!("user-{u}")))).await;
        for _ in 0..5 {
            let again =
                served_by_with(&gw, "/user", Some(("x-user-id", format!("user-{u}")))).await;
            assert_eq!(again, first, "user-{u} moved");
        }
        users_on[usize::from(first == "v2")] += 1;
    }
    assert!(users_on[0] > 5 && users_on[1] > 5, "{users_on:?}");
    // Sticky by cookie: the first answer sets it, later requests with it stay.
    let r = client().get(gw.url("/cookie")).send().await.unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("release=v") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let given = pair.split('=').nth(1).unwrap().to_string();
    for _ in 0..10 {
        let r = client()
            .get(gw.url("/cookie"))
            .header("cookie", &pair)
            .send()
            .await
            .unwrap();
        assert!(r.headers().get("set-cookie").is_none());
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["upstream"], given.as_str());
    }
}

async fn served_by_with(gw: &Gateway, path: &str, header: Option<(&str, String)>) -> String {
    let mut req = client().get(gw.url(path));
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    let v: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
    v["upstream"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_never_delay_the_client_and_stay_bounded() {
    use crate::util::upstream::{FnServer, Upstream};
    let main = Upstream::start("main").await;
    let hanging =
        FnServer::start(|_| (200, vec![("x-test-delay-ms", "20000".into())], "{}".into())).await;
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(
        Vec::<(String, String, String)>::new(),
    ));
    let s2 = seen.clone();
    let recorder = FnServer::start(move |r| {
        let host = r
            .headers
            .get("host")
            .map(|h| h.to_str().unwrap().to_string())
            .unwrap_or_default();
        s2.lock()
            .push((format!("{} {}", r.method, r.uri), r.body.clone(), host));
        (200, vec![], "{}".into())
    })
    .await;
    let body = format!(
        r#"upstreams:
  main: {{ targets: [ {{ addr: "{}" }} ] }}
  hanging: {{ targets: [ {{ addr: "{}" }} ], timeouts: {{ read: 30s }} }}
  recorder: {{ targets: [ {{ addr: "{}" }} ] }}
routes:
  - {{ name: shadowed, match: {{ path: /shadowed }}, upstream: main, mirror: {{ upstream: hanging, max_in_flight: 2 }} }}
  - {{ name: copied, match: {{ path: /api/* }}, upstream: main, rewrite: {{ strip_prefix: /api }}, mirror: {{ upstream: recorder, max_body: 16 }} }}
"#,
        main.addr, hanging.addr, recorder.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    let started = Instant::now();
    for _ in 0..10 {
        let r = c.get(gw.url("/shadowed")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["upstream"], "main");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a shadow that hangs for 20 s delayed the clients"
    );
    // Two copies hang in flight; the other eight were dropped.
    gw.wait_metric(
        "postern_mirror_requests_total{result=\"dropped\",route=\"shadowed\"}",
        8.0,
    );
    // A POST's copy carries the body and the rewritten path; a body over max_body is not copied.
    let r = c
        .post(gw.url("/api/orders?x=1"))
        .header("host", "shop.example")
        .body("{\"id\":7}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.wait_metric(
        "postern_mirror_requests_total{result=\"sent\",route=\"copied\"}",
        1.0,
    );
    let copies = seen.lock().clone();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].0, "POST /orders?x=1");
    assert_eq!(copies[0].1, "{\"id\":7}");
    assert_eq!(copies[0].2, "shop.example");
    c.post(gw.url("/api/big"))
        .body("x".repeat(100))
        .send()
        .await
        .unwrap();
    gw.wait_metric(
        "postern_mirror_requests_total{result=\"too_large\",route=\"copied\"}",
        1.0,
    );
    assert_eq!(seen.lock().len(), 1);
}
