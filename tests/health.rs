//! Active and passive health, retries and the all-down answer.

use crate::util::upstream::Upstream;
use crate::util::{client, free_port, Gateway};
use std::sync::atomic::Ordering::SeqCst;

fn healthy(v: &serde_json::Value, up: &str, addr: &str) -> Option<bool> {
    v["upstreams"][up]["targets"]
        .as_array()?
        .iter()
        .find(|t| t["addr"] == addr)?["healthy"]
        .as_bool()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_eject_and_restore_a_target() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let body = format!(
        r#"upstreams:
  pool:
    targets: [ {{ addr: "{}" }}, {{ addr: "{}" }} ]
    health:
      active: {{ type: http, path: /healthz, interval: 50ms, timeout: 500ms, healthy_after: 2, unhealthy_after: 2 }}
routes:
  - {{ match: {{ path: /* }}, upstream: pool }}
"#,
        a.addr, b.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    b.state.health_status.store(503, SeqCst);
    assert_eq!(
        gw.upstreams()["upstreams"]["pool"]["balance"],
        "round_robin"
    );
    let baddr = b.addr.to_string();
    gw.wait_upstreams("b unhealthy", |v| healthy(v, "pool", &baddr) == Some(false));
    let before = b.hits();
    for _ in 0..20 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(b.hits(), before, "an unhealthy target gets no traffic");
    b.state.health_status.store(200, SeqCst);
    gw.wait_upstreams("b healthy again", |v| {
        healthy(v, "pool", &baddr) == Some(true)
    });
    for _ in 0..20 {
        c.get(gw.url("/x")).send().await.unwrap();
    }
    assert!(b.hits() > before, "a recovered target gets traffic again");
}

/// Issue 27: a target's recovery was logged at WARN like its failure; good news is INFO.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_is_logged_at_info_and_a_failure_at_warn() {
    let a = Upstream::start("a").await;
    let body = format!(
        r#"upstreams:
  pool:
    targets: [ {{ addr: "{}" }} ]
    health:
      active: {{ type: http, path: /healthz, interval: 50ms, timeout: 500ms, healthy_after: 1, unhealthy_after: 1 }}
routes:
  - {{ match: {{ path: /* }}, upstream: pool }}
"#,
        a.addr
    );
    let gw = Gateway::start_with_log(&body, "postern=info");
    let addr = a.addr.to_string();
    a.state.health_status.store(503, SeqCst);
    gw.wait_upstreams("unhealthy", |v| healthy(v, "pool", &addr) == Some(false));
    a.state.health_status.store(200, SeqCst);
    gw.wait_upstreams("healthy again", |v| healthy(v, "pool", &addr) == Some(true));
    let line = |what: &str| {
        crate::util::eventually_blocking(crate::util::Poll::DEFAULT, what, || {
            gw.log()
                .lines()
                .find(|l| l.contains(what))
                .map(String::from)
        })
    };
    let down = line("is now unhealthy");
    let up = line("is now healthy");
    assert!(down.contains("WARN"), "{down}");
    assert!(up.contains("INFO"), "{up}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_checks_notice_a_stopped_target() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let body = format!(
        r#"upstreams:
  pool:
    targets: [ {{ addr: "{}" }}, {{ addr: "{}" }} ]
    health:
      active: {{ type: tcp, interval: 50ms, timeout: 500ms, healthy_after: 1, unhealthy_after: 1 }}
routes:
  - {{ match: {{ path: /* }}, upstream: pool }}
"#,
        a.addr, b.addr
    );
    let gw = Gateway::start(&body);
    let baddr = b.stop().to_string();
    gw.wait_upstreams("b down", |v| healthy(v, "pool", &baddr) == Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_failures_eject_for_a_while() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    b.state.status.store(502, SeqCst);
    let body = format!(
        r#"upstreams:
  pool:
    targets: [ {{ addr: "{}" }}, {{ addr: "{}" }} ]
    health:
      passive: {{ unhealthy_after: 3, eject_for: 1m }}
routes:
  - {{ match: {{ path: /* }}, upstream: pool }}
"#,
        a.addr, b.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    let mut bad = 0;
    for _ in 0..30 {
        if c.get(gw.url("/x")).send().await.unwrap().status() == 502 {
            bad += 1;
        }
    }
    assert_eq!(bad, 3, "three 502s pass through, then b is ejected");
    let baddr = b.addr.to_string();
    assert_eq!(healthy(&gw.upstreams(), "pool", &baddr), Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_retried_on_another_target() {
    let a = Upstream::start("a").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let body = format!(
        "upstreams:\n  pool:\n    targets: [ {{ addr: \"{dead}\" }}, {{ addr: \"{}\" }} ]\n    retry: {{ attempts: 2, on: [connect_error] }}\nroutes:\n  - {{ match: {{ path: /* }}, upstream: pool }}\n",
        a.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    for _ in 0..10 {
        let r = c.post(gw.url("/x")).body("payload").send().await.unwrap();
        assert_eq!(
            r.status(),
            200,
            "POST is safe to retry when the connection never opened"
        );
    }
    assert_eq!(a.hits(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_targets_down_gives_a_quick_503_problem() {
    let dead = format!("127.0.0.1:{}", free_port());
    let body = format!(
        r#"upstreams:
  pool:
    targets: [ {{ addr: "{dead}" }} ]
    health:
      active: {{ type: tcp, interval: 50ms, timeout: 200ms, healthy_after: 1, unhealthy_after: 1 }}
routes:
  - {{ match: {{ path: /* }}, upstream: pool }}
"#
    );
    let gw = Gateway::start(&body);
    gw.wait_upstreams("target down", |v| healthy(v, "pool", &dead) == Some(false));
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["type"], "urn:postern:problem:no-healthy-upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_timeouts_give_504_and_errors_pass_through() {
    let a = Upstream::start("a").await;
    let body = format!(
        "upstreams:\n  pool:\n    targets: [ {{ addr: \"{}\" }} ]\n    timeouts: {{ read: 200ms }}\n    retry: {{ attempts: 1 }}\nroutes:\n  - {{ match: {{ path: /* }}, upstream: pool }}\n",
        a.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    a.state.delay_ms.store(1000, SeqCst);
    let r = c.get(gw.url("/slow")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    a.state.delay_ms.store(0, SeqCst);
    a.state.status.store(500, SeqCst);
    let r = c.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.headers()["content-type"],
        "application/json",
        "upstream errors pass through untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_statuses_are_retried_for_idempotent_requests_only() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    b.state.status.store(503, SeqCst);
    let body = format!(
        "upstreams:\n  pool:\n    targets: [ {{ addr: \"{}\" }}, {{ addr: \"{}\" }} ]\n    retry: {{ attempts: 2, on: [connect_error, 503] }}\nroutes:\n  - {{ match: {{ path: /* }}, upstream: pool }}\n",
        a.addr, b.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    for _ in 0..10 {
        let r = c.get(gw.url("/x")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(b.hits() >= 4, "b was tried");
    let mut passed_through = 0;
    for _ in 0..10 {
        if c.post(gw.url("/x"))
            .body("once")
            .send()
            .await
            .unwrap()
            .status()
            == 503
        {
            passed_through += 1;
        }
    }
    assert!(
        passed_through >= 4,
        "a POST is never replayed: b's 503 reaches the client"
    );
}

/// Regression (issue 12): killing one of two targets under keep-alive load gave 3 to 16 502s:
/// a closed pooled connection used up the one retry and the retry went back to the dead target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_targets_under_keep_alive_load_loses_no_get() {
    for round in 0..3 {
        let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
        let body = format!(
            "upstreams:\n  pool:\n    targets: [ {{ addr: \"{}\" }}, {{ addr: \"{}\" }} ]\n    retry: {{ attempts: 2, on: [connect_error] }}\nroutes:\n  - {{ match: {{ path: /* }}, upstream: pool }}\n",
            a.addr, b.addr
        );
        let gw = Gateway::start(&body);
        // `keep_alive_load` fails on any non-2xx answer or lost request.
        let mut load = crate::util::keep_alive_load(&gw.url("/x"), 8, 150, "x-request-id");
        let poll = crate::util::Poll::within(std::time::Duration::from_secs(20))
            .every(std::time::Duration::from_millis(2));
        let a_ref = &a;
        crate::util::eventually_with(poll, "the load reaches a", || async move {
            (a_ref.hits() >= 100).then_some(())
        })
        .await;
        a.kill();
        let b_before = b.hits();
        while let Some(r) = load.join_next().await {
            assert!(r.is_ok(), "round {round}: a request failed: {r:?}");
        }
        assert!(b.hits() > b_before, "b took the load");
    }
}
