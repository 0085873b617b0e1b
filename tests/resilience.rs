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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_fails_fast_then_half_opens_doubles_and_closes() {
    let up = DocServer::start(503, r#"{"down":true}"#).await;
    let body = format!(
        "upstreams:\n  svc:\n    targets: [ {{ addr: \"{}\" }} ]\n    retry: {{ attempts: 1 }}\n    circuit_breaker: {{ consecutive_failures: 3, min_requests: 100, open_for: 300ms, max_open_for: 1s, half_open_requests: 2 }}\nroutes:\n  - {{ name: r, match: {{ path: /* }}, upstream: svc }}\n",
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
            "upstreams:\n  svc:\n    targets: [ {{ addr: \"{}\" }} ]\n    circuit_breaker: {{ consecutive_failures: 1, open_for: 1h, max_open_for: 1h }}\nroutes:\n  - {{ name: r, match: {{ path: /* }}, upstream: svc }}\n{extra}",
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
        "upstreams:\n  svc:\n    targets: [ {{ addr: \"{}\" }} ]\n    retry: {{ attempts: 1 }}\n    circuit_breaker: {{ consecutive_failures: 2, open_for: 1h, max_open_for: 1h }}\nroutes:\n  - name: r\n    match: {{ path: /* }}\n    upstream: svc\n    fallback: {{ on: [circuit_open], body: '{{\"cached\":false}}' }}\n",
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
