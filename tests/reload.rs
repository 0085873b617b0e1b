//! Hot reload: SIGHUP and `POST /reload`, a broken file keeps the running config, and no request
//! is lost while the configuration is swapped repeatedly under load.

use crate::util::upstream::Upstream;
use crate::util::{client, eventually, eventually_with, upstream_yaml, Gateway, Poll, ADMIN_TOKEN};
use std::time::Duration;

fn body(tag: &str, up: &Upstream) -> String {
    format!(
        "upstreams:\n{}routes:\n  - match: {{ path: /* }}\n    upstream: u\n    plugins:\n      - headers: {{ response: {{ set: {{ x-config: {tag} }} }} }}\n",
        upstream_yaml("u", &[up.addr], "")
    )
}

async fn tag_of(gw: &Gateway) -> String {
    let r = client().get(gw.url("/x")).send().await.unwrap();
    r.headers()
        .get("x-config")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_broken_file_keeps_the_running_config() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&body("one", &up));
    assert_eq!(tag_of(&gw).await, "one");
    gw.rewrite(&body("two", &up));
    gw.signal("HUP");
    let gw_ref = &gw;
    eventually("SIGHUP reloads", || async move {
        (tag_of(gw_ref).await == "two").then_some(())
    })
    .await;
    // A broken file: the admin endpoint reports every error, the old config keeps serving.
    gw.rewrite(&body("three", &up).replace("upstream: u", "upstream: nope"));
    let (status, v) = gw.admin_call("POST", "/reload", Some(ADMIN_TOKEN));
    assert_eq!(status, 422);
    assert!(
        v["errors"]
            .to_string()
            .contains("unknown upstream \\\"nope\\\""),
        "{v}"
    );
    gw.signal("HUP"); // the same broken file by signal: logged, nothing changes, process lives
    assert_eq!(tag_of(&gw).await, "two");
    gw.rewrite(&body("four", &up));
    let (status, v) = gw.admin_call("POST", "/reload", Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "reloaded");
    assert_eq!(tag_of(&gw).await, "four");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_needs_the_admin_token() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&body("one", &up));
    assert_eq!(gw.admin_call("POST", "/reload", None).0, 401);
    assert_eq!(gw.admin_call("POST", "/reload", Some("wrong")).0, 401);
    assert_eq!(gw.admin_call("POST", "/reload", Some(ADMIN_TOKEN)).0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_loss_reload_under_load() {
    let up = Upstream::start("u").await;
    let gw = Gateway::start(&body("a", &up));
    // 4 keep-alive clients x 1,500 requests, while the config is reloaded 20 times.
    let mut load = crate::util::keep_alive_load(&gw.url("/x"), 4, 1500, "x-config");
    for i in 0..20 {
        gw.rewrite(&body(if i % 2 == 0 { "b" } else { "a" }, &up));
        let (status, v) = gw.admin_call("POST", "/reload", Some(ADMIN_TOKEN));
        assert_eq!(status, 200, "{v}");
    }
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    while let Some(tags) = load.join_next().await {
        let tags = tags.unwrap();
        total += tags.len();
        seen.extend(tags);
    }
    assert_eq!(total, 6000, "every request answered");
    assert!(seen.contains("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_a_reload() {
    use std::sync::atomic::Ordering::SeqCst;
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let conf = |tag: &str| {
        format!(
            r#"upstreams:
  pool:
    targets: [ {{ addr: "{}" }}, {{ addr: "{}" }} ]
    health:
      active: {{ type: http, path: /healthz, interval: 1h, timeout: 500ms, healthy_after: 1, unhealthy_after: 1 }}
      passive: {{ unhealthy_after: 1, eject_for: 1h }}
routes:
  - {{ match: {{ path: /* }}, upstream: pool, plugins: [ {{ headers: {{ response: {{ set: {{ x-config: {tag} }} }} }} }} ] }}
"#,
            a.addr, b.addr
        )
    };
    let gw = Gateway::start(&conf("one"));
    // Passive ejection of b (one 502), then a reload: b must stay ejected without new evidence.
    b.state.status.store(502, SeqCst);
    let c = client();
    for _ in 0..4 {
        c.get(gw.url("/x")).send().await.unwrap();
    }
    let baddr = b.addr.to_string();
    let healthy = |v: &serde_json::Value| {
        v["upstreams"]["pool"]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["addr"] == baddr)
            .unwrap()["healthy"]
            .clone()
    };
    assert_eq!(healthy(&gw.upstreams()), false);
    gw.rewrite(&conf("two"));
    assert_eq!(gw.admin_call("POST", "/reload", Some(ADMIN_TOKEN)).0, 200);
    assert_eq!(tag_of(&gw).await, "two");
    assert_eq!(
        healthy(&gw.upstreams()),
        false,
        "ejection carried over the reload"
    );
    let before = b.hits();
    for _ in 0..10 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!(b.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_when_watched() {
    let up = Upstream::start("u").await;
    let routes = |extra: &str| {
        format!(
            "upstreams:\n{}routes:\n  - {{ name: a, match: {{ path: /a/* }}, upstream: u }}\n{extra}",
            upstream_yaml("u", &[up.addr], "")
        )
    };
    let gw = Gateway::start_full(&routes(""), "", "  watch_config: 100ms\n");
    let c = client();
    assert_eq!(c.get(gw.url("/b/x")).send().await.unwrap().status(), 404);
    gw.rewrite(&routes(
        "  - { name: b, match: { path: /b/* }, upstream: u }\n",
    ));
    let (c_ref, gw_ref) = (&c, &gw);
    let poll = Poll::DEFAULT.every(Duration::from_millis(50));
    eventually_with(poll, "the watcher picks the change up", || async move {
        (c_ref.get(gw_ref.url("/b/x")).send().await.unwrap().status() == 200).then_some(())
    })
    .await;
    // A broken file is refused; the running configuration stays.
    gw.rewrite_raw("routes: [ this is not valid");
    gw.wait_metric("postern_config_reloads_total{result=\"failure\"}", 1.0);
    assert_eq!(c.get(gw.url("/b/x")).send().await.unwrap().status(), 200);
}
