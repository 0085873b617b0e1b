//! API composition end to end: composite routes whose calls fan out to test upstreams over real
//! sockets, in parallel and in sequence, with the partial-failure contract, the deadline,
//! shaping, templated bodies, header propagation, per-call caching and hot reload.

use crate::util::upstream::FnServer;
use crate::util::{client, eventually, eventually_with, Gateway, Poll, ADMIN_TOKEN};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

const SECRET: &str = "composite-test-secret-of-32-bytes-or-more";

/// The back ends: one server answering every path the composites call.
async fn services() -> FnServer {
    FnServer::start(|s| {
        let json_ct = ("content-type", "application/json".to_string());
        let path = s.uri.split('?').next().unwrap_or("").to_string();
        let query = s.uri.split_once('?').map(|(_, q)| q.to_string());
        let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match seg.as_slice() {
            ["slow", name] => (
                200,
                vec![json_ct, ("x-test-delay-ms", "200".into())],
                json!({ *name: true }).to_string(),
            ),
            ["hang"] => (
                200,
                vec![json_ct, ("x-test-delay-ms", "3000".into())],
                "{}".into(),
            ),
            ["orders", id] => (
                200,
                vec![json_ct, ("x-order-version", "7".into())],
                json!({ "id": id, "user_id": "u/1", "items": [ { "product_id": 1 }, { "product_id": 2 } ], "total": 10 })
                    .to_string(),
            ),
            ["users", id] => (
                200,
                vec![json_ct],
                json!({ "id": id, "name": "Ann", "email": "ann@example.com", "password": "x",
                        "address": { "city": "Oslo", "zip": "0150" } })
                .to_string(),
            ),
            ["products"] => (
                200,
                vec![json_ct],
                json!({ "query": query, "data": [ [ { "id": 1, "cost": 3 } ], [ { "id": 2, "cost": 4 } ] ] })
                    .to_string(),
            ),
            ["points", sub] => (
                200,
                vec![json_ct, ("cache-control", "max-age=60".into())],
                json!({ "sub": sub, "points": 42 }).to_string(),
            ),
            ["fail"] => (503, vec![json_ct], "{\"internal\": \"db down at 10.0.0.7\"}".into()),
            ["text"] => (200, vec![("content-type", "text/plain".into())], "hello".into()),
            ["big"] => (200, vec![json_ct], json!({ "pad": "x".repeat(4096) }).to_string()),
            ["echo"] => {
                let headers: serde_json::Map<String, Value> = s
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                    .collect();
                let body: Value = serde_json::from_str(&s.body).unwrap_or(Value::Null);
                (
                    200,
                    vec![json_ct],
                    json!({ "method": s.method, "uri": s.uri, "headers": headers, "body": body })
                        .to_string(),
                )
            }
            _ => (404, vec![json_ct], "{}".into()),
        }
    })
    .await
}

fn config(svc: &FnServer, routes: &str) -> String {
    format!(
        "upstreams:\n  svc: {{ targets: [ {{ addr: \"{}\" }} ] }}\n  dead: {{ targets: [ {{ addr: \"127.0.0.1:1\" }} ] }}\nroutes:\n{routes}",
        svc.addr
    )
}

async fn get(gw: &Gateway, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let a = crate::util::http::get(&client(), &gw.url(path), &[]).await;
    let v = serde_json::from_str(&a.body).unwrap_or_else(|_| panic!("not JSON: {}", a.body));
    (a.status, a.headers, v)
}

/// A stale answer (`n` = 1) to every request until the upstream was asked again in the
/// background (`n` reaches 2).
async fn stale_until_revalidated(gw: &Gateway, n: &AtomicUsize, path: &str) {
    let poll = Poll::DEFAULT.every(Duration::from_millis(100));
    eventually_with(poll, "a background revalidation", || async move {
        if n.load(SeqCst) >= 2 {
            return Some(());
        }
        let (s, _, v) = get(gw, path).await;
        assert_eq!(
            (s, v["n"].as_u64()),
            (200, Some(1)),
            "the stale answer meanwhile"
        );
        None
    })
    .await;
}

fn complete(h: &reqwest::header::HeaderMap) -> &str {
    h.get("postern-complete").unwrap().to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn independent_calls_run_in_parallel() {
    let svc = services().await;
    let gw = Gateway::start(&config(
        &svc,
        r#"  - name: par
    match: { path: /par }
    aggregate:
      calls:
        a: { upstream: svc, path: /slow/a }
        b: { upstream: svc, path: /slow/b }
        c: { upstream: svc, path: /slow/c }
"#,
    ));
    let (s, h, v) = get(&gw, "/par").await;
    assert_eq!(s, 200);
    assert_eq!(complete(&h), "?1");
    assert_eq!(v, json!({ "a": true, "b": true, "c": true }));
    let tl = svc.timeline.lock().clone();
    assert_eq!(tl.len(), 3);
    // Each call takes 200 ms: they overlap when every one started before any one ended.
    let last_start = tl.iter().map(|t| t.1).max().unwrap();
    let first_end = tl.iter().map(|t| t.2).min().unwrap();
    assert!(
        last_start < first_end,
        "the calls ran one after another: {tl:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reading_another_waits_for_it_and_values_are_encoded() {
    let svc = services().await;
    let gw = Gateway::start(&config(
        &svc,
        r#"  - name: view
    match: { path: "/orders/{id}/view" }
    aggregate:
      calls:
        user: { upstream: svc, path: "/users/${calls.order.body.user_id}", group: customer, allow: [id, name, address.city], mapping: { address.city: town } }
        order: { upstream: svc, path: "/orders/{id}", deny: [user_id] }
        products: { upstream: svc, path: "/products?ids=${calls.order.body.items[*].product_id:csv}&v=${calls.order.header.x-order-version}", target: data, flatten: true, group: products, deny: [cost] }
        query: { upstream: svc, path: "/products?q=${path.id}", target: query, group: upstream_query }
"#,
    ));
    let (s, h, v) = get(&gw, "/orders/42/view").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(complete(&h), "?1");
    assert_eq!(
        v,
        json!({
            "customer": { "id": "u%2F1", "name": "Ann", "address": { "town": "Oslo" } },
            "id": "42", "items": [ { "product_id": 1 }, { "product_id": 2 } ], "total": 10,
            "products": [ { "id": 1 }, { "id": 2 } ],
            "upstream_query": "q=42"
        })
    );
    let tl = svc.timeline.lock().clone();
    let at = |p: &str| tl.iter().find(|t| t.0.starts_with(p)).unwrap().clone();
    let (order, user) = (at("/orders/42"), at("/users/"));
    assert!(
        user.1 >= order.2,
        "the user call started before the order call ended"
    );
    assert_eq!(user.0, "/users/u%2F1");
    assert_eq!(at("/products?ids").0, "/products?ids=1,2&v=7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_required_call_is_a_502_listing_the_failures() {
    let svc = services().await;
    let gw = Gateway::start(&config(
        &svc,
        r#"  - name: req
    match: { path: /req }
    aggregate:
      calls:
        ok: { upstream: svc, path: /users/1 }
        down: { upstream: svc, path: /fail }
        gone: { upstream: dead, path: /x, optional: true }
        text: { upstream: svc, path: /text, optional: true }
"#,
    ));
    let (s, h, v) = get(&gw, "/req").await;
    assert_eq!(s, 502, "{v}");
    assert!(h.get("postern-complete").is_none());
    assert_eq!(v["type"], "urn:postern:problem:composite-failed");
    let errors = v["errors"].as_array().unwrap();
    assert!(
        errors.contains(&json!({ "call": "down", "reason": "status", "status": 503 })),
        "{v}"
    );
    let text = v.to_string();
    assert!(
        !text.contains("10.0.0.7") && !text.contains("db down"),
        "{text}"
    );
}

/// Issue 27: a failed optional call (an outcome the composite handles) was logged as
/// `ERROR Fail to proxy ... (subrequest)`; it is a debug line now, while a plain route's failed
/// request still is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_is_not_logged_as_an_error() {
    let svc = services().await;
    let body = config(
        &svc,
        r#"  - name: opt
    match: { path: /opt }
    aggregate:
      calls:
        user: { upstream: svc, path: /users/1 }
        gone: { upstream: dead, path: /x, optional: true }
  - name: plain
    match: { path: /plain }
    upstream: dead
"#,
    );
    let gw = Gateway::start_with_log(&body, "warn");
    let (s, _, _) = get(&gw, "/opt").await;
    assert_eq!(s, 200);
    let plain = client().get(gw.url("/plain")).send().await.unwrap();
    assert_eq!(plain.status(), 502);
    let log = crate::util::eventually_blocking(
        crate::util::Poll::DEFAULT,
        "the plain failure is logged",
        || {
            let log = gw.log();
            log.contains("GET /plain").then_some(log)
        },
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("ERROR") && l.contains("(subrequest)")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_optional_calls_give_a_partial_answer() {
    let svc = services().await;
    let gw = Gateway::start(&config(
        &svc,
        r#"  - name: opt
    match: { path: /opt }
    aggregate:
      include_errors: true
      calls:
        user: { upstream: svc, path: /users/1, allow: [name] }
        gone: { upstream: dead, path: /x, optional: true, group: gone }
        status: { upstream: svc, path: /fail, optional: true, group: recs, fallback: { body: [] } }
        text: { upstream: svc, path: /text, optional: true }
        big: { upstream: svc, path: /big, optional: true, max_body: 1KiB }
        after: { upstream: svc, path: "/users/${calls.gone.body.id}", optional: true }
"#,
    ));
    let (s, h, v) = get(&gw, "/opt").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(complete(&h), "?0");
    assert_eq!(v["name"], "Ann");
    assert_eq!(v["recs"], json!([]));
    assert!(v.get("gone").is_none());
    let mut errors: Vec<(String, String)> = v["_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["call"].as_str().unwrap().into(),
                e["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    errors.sort();
    assert_eq!(
        errors,
        vec![
            ("after".into(), "dependency_failed".into()),
            ("big".into(), "too_large".into()),
            ("gone".into(), "connect_error".into()),
            ("status".into(), "status".into()),
            ("text".into(), "invalid_json".into()),
        ]
    );
    gw.wait_metric(
        r#"postern_aggregate_calls_total{call="user",result="ok",route="opt"}"#,
        1.0,
    );
    gw.wait_metric(
        r#"postern_aggregate_calls_total{call="big",result="too_large",route="opt"}"#,
        1.0,
    );
    gw.wait_metric(
        r#"postern_http_requests_total{route="opt",status_class="2xx"}"#,
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_ends_the_composite_with_504_and_cancels_calls() {
    let svc = services().await;
    let gw = Gateway::start(&config(
        &svc,
        r#"  - name: dl
    match: { path: /dl }
    aggregate:
      deadline: 300ms
      calls:
        fast: { upstream: svc, path: /users/1 }
        slow: { upstream: svc, path: /hang }
  - name: opt-timeout
    match: { path: /ot }
    aggregate:
      calls:
        fast: { upstream: svc, path: /users/1, allow: [id] }
        slow: { upstream: svc, path: /hang, optional: true, timeout: 200ms }
"#,
    ));
    let started = std::time::Instant::now();
    let (s, _, v) = get(&gw, "/dl").await;
    assert_eq!(s, 504, "{v}");
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert_eq!(v["type"], "urn:postern:problem:composite-deadline");
    assert_eq!(
        v["errors"],
        json!([ { "call": "slow", "reason": "deadline" } ])
    );
    let (s, h, v) = get(&gw, "/ot").await;
    assert_eq!((s, complete(&h)), (200, "?0"));
    assert_eq!(v, json!({ "id": "1" }));
    gw.wait_metric(
        r#"postern_aggregate_calls_total{call="slow",result="timeout",route="opt-timeout"}"#,
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_composite_builds_bodies_and_passes_only_allowed_headers() {
    let svc = services().await;
    let gw = Gateway::start(&format!(
        "observability: {{ tracing: {{ propagate: true }} }}\n{}",
        config(
            &svc,
            r#"  - name: post
    match: { path: /checkout, methods: [POST] }
    aggregate:
      calls:
        order: { upstream: svc, path: /orders/9 }
        echo:
          upstream: svc
          method: POST
          path: /echo
          body: { order: "${calls.order.body.id}", qty: "${body.qty:number}", note: "for ${body.user}", items: "${calls.order.body.items}" }
          headers: { x-tenant: "${header.x-tenant}" }
          group: sent
        plain: { upstream: svc, path: /echo, group: plain }
        authed: { upstream: svc, path: /echo, group: authed, pass_headers: [authorization] }
"#,
        )
    ));
    let r = client()
        .post(gw.url("/checkout"))
        .header("authorization", "Bearer abc")
        .header("accept-language", "nb")
        .header("x-tenant", "t1")
        .header("x-request-id", "req-123")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&json!({ "qty": "3", "user": "ann" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-123");
    let v: Value = r.json().await.unwrap();
    let sent = &v["sent"];
    assert_eq!(sent["method"], "POST");
    assert_eq!(
        sent["body"],
        json!({ "order": "9", "qty": 3, "note": "for ann", "items": [ { "product_id": 1 }, { "product_id": 2 } ] })
    );
    assert_eq!(sent["headers"]["content-type"], "application/json");
    assert_eq!(sent["headers"]["x-tenant"], "t1");
    let plain = &v["plain"]["headers"];
    assert_eq!(plain["x-request-id"], "req-123");
    assert_eq!(plain["accept-language"], "nb");
    assert!(plain["traceparent"]
        .as_str()
        .unwrap()
        .starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
    assert!(plain.get("authorization").is_none(), "{plain}");
    assert!(plain.get("postern-call").is_none(), "{plain}");
    assert_eq!(plain["accept-encoding"], "identity");
    assert!(plain["x-forwarded-for"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1"));
    assert_eq!(v["authed"]["headers"]["authorization"], "Bearer abc");
    // Not JSON from the client: 400 before any call.
    let hits = svc.hits();
    let r = client()
        .post(gw.url("/checkout"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(svc.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_calls_are_shared_coalesced_and_purged() {
    let svc = services().await;
    let body = config(
        &svc,
        r#"  - name: cached
    match: { path: "/me/{id}" }
    aggregate:
      calls:
        user: { upstream: svc, path: "/users/{id}", allow: [id] }
        points: { upstream: svc, path: "/points/{id}", group: loyalty, cache: { ttl: 30s, stale_while_revalidate: 5m } }
"#,
    );
    let gw = Gateway::start(&format!("cache: {{ memory: 16MiB }}\n{body}"));
    let points_hits = || {
        svc.timeline
            .lock()
            .iter()
            .filter(|t| t.0.starts_with("/points/"))
            .count()
    };
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = gw.url("/me/7");
        tasks.push(tokio::spawn(async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(s, 200);
        assert_eq!(v["loyalty"]["points"], 42);
    }
    assert_eq!(
        points_hits(),
        1,
        "20 concurrent composites made more than one cached call"
    );
    let (_, _, v) = get(&gw, "/me/8").await;
    assert_eq!(v["loyalty"]["sub"], "8");
    assert_eq!(points_hits(), 2);
    assert!(gw
        .metrics()
        .contains(r#"postern_cache_requests_total{result="hit",route="cached.points"}"#));
    // A purge by URL reaches the call's entry: filed under the upstream's name.
    let (status, v) = gw.admin_call("DELETE", "/cache?url=svc/points/7", Some(ADMIN_TOKEN));
    assert_eq!((status, v["purged"].as_u64()), (200, Some(1)), "{v}");
    let _ = get(&gw, "/me/7").await;
    assert_eq!(points_hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_calls() {
    let svc = services().await;
    let route = |path: &str| {
        config(
            &svc,
            &format!("  - name: r\n    match: {{ path: /r }}\n    aggregate:\n      calls:\n        one: {{ upstream: svc, path: \"{path}\", group: one }}\n"),
        )
    };
    let gw = Gateway::start(&route("/users/1"));
    let (_, _, v) = get(&gw, "/r").await;
    assert_eq!(v["one"]["name"], "Ann");
    gw.rewrite(&route("/orders/5"));
    gw.signal("HUP");
    let gw = &gw;
    eventually("the reload takes", || async move {
        let (_, _, v) = get(gw, "/r").await;
        (v["one"]["total"] == 10).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composite_behind_jwt_and_a_rate_limit() {
    let svc = services().await;
    let gw = Gateway::start(&config(
        &svc,
        &format!(
            r#"  - name: secure
    match: {{ path: /secure }}
    plugins:
      - jwt: {{ keys: [ {{ alg: HS256, secret: "{SECRET}" }} ] }}
      - rate_limit: {{ key: client_ip, limits: [ {{ requests: 2, per: 1h }} ] }}
    aggregate:
      calls:
        points: {{ upstream: svc, path: "/points/${{claim.sub}}" }}
"#
        ),
    ));
    let token = encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "alice", "exp": 4_000_000_000u64 }),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let hits = svc.hits();
    let r = client().get(gw.url("/secure")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(svc.hits(), hits);
    let r = client()
        .get(gw.url("/secure"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["sub"], "alice");
    let r = client()
        .get(gw.url("/secure"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client()
        .get(gw.url("/secure"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_call_is_served_stale_while_it_revalidates_and_when_its_upstream_fails() {
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let (n, fail) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU16::new(0)));
    let (n2, fail2) = (n.clone(), fail.clone());
    let svc = FnServer::start(move |_| {
        let status = fail2.load(SeqCst);
        if status != 0 {
            return (status, vec![], "{}".into());
        }
        let i = n2.fetch_add(1, SeqCst) + 1;
        (
            200,
            vec![
                ("content-type", "application/json".into()),
                (
                    "cache-control",
                    "max-age=1, stale-while-revalidate=60, stale-if-error=60".into(),
                ),
            ],
            json!({ "n": i }).to_string(),
        )
    })
    .await;
    let gw = Gateway::start(&format!(
        "cache: {{ memory: 16MiB }}\n{}",
        config(
            &svc,
            "  - name: s\n    match: { path: /s }\n    aggregate:\n      calls:\n        v: { upstream: svc, path: /v, cache: {} }\n",
        )
    ));
    let (_, _, v) = get(&gw, "/s").await;
    assert_eq!(v["n"], 1);
    // Fresh for 1 s; then the first composite gets the stale answer at once and the entry is
    // refreshed in the background (found again through the call's marker).
    let gw_ref = &gw;
    stale_until_revalidated(gw_ref, &n, "/s").await;
    gw.wait_metric(
        r#"postern_cache_requests_total{result="stale",route="s.v"}"#,
        1.0,
    );
    eventually("the refreshed answer", || async move {
        let (_, _, v) = get(gw_ref, "/s").await;
        (v["n"] == 2).then_some(())
    })
    .await;
    assert_eq!(
        n.load(SeqCst),
        2,
        "the refreshed entry was stored under the call's key"
    );
    // The upstream fails: once the entry expired, the stale answer stands in (stale-if-error).
    fail.store(503, SeqCst);
    let hits = svc.hits();
    let svc_ref = &svc;
    let poll = Poll::DEFAULT.every(Duration::from_millis(100));
    eventually_with(poll, "the entry expires", || async move {
        if svc_ref.hits() != hits {
            return Some(());
        }
        let (s, h, v) = get(gw_ref, "/s").await;
        assert_eq!((s, complete(&h), v["n"].as_u64()), (200, "?1", Some(2)));
        None
    })
    .await;
    let (s, h, v) = get(&gw, "/s").await;
    assert_eq!((s, complete(&h), v["n"].as_u64()), (200, "?1", Some(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_is_a_client_span_of_the_composite() {
    let received: std::sync::Arc<parking_lot::Mutex<Vec<String>>> = Default::default();
    let collector = FnServer::start({
        let r = received.clone();
        move |s| {
            r.lock().push(s.body.clone());
            (200, vec![], "{}".into())
        }
    })
    .await;
    let svc = services().await;
    let gw = Gateway::start(&format!(
        "observability:\n  tracing:\n    otlp: {{ endpoint: \"http://{}/v1/traces\", sample_ratio: 1.0 }}\n{}",
        collector.addr,
        config(
            &svc,
            "  - name: traced\n    match: { path: /traced }\n    aggregate:\n      calls:\n        a: { upstream: svc, path: /echo, group: a }\n        b: { upstream: svc, path: /echo, group: b }\n",
        )
    ));
    let (s, _, v) = get(&gw, "/traced").await;
    assert_eq!(s, 200);
    let sent: Vec<String> = ["a", "b"]
        .iter()
        .map(|c| {
            let tp = v[c]["headers"]["traceparent"].as_str().unwrap();
            tp.split('-').nth(2).unwrap().to_string()
        })
        .collect();
    assert_ne!(sent[0], sent[1], "one span per call");
    let received_ref = &received;
    let spans: Vec<Value> = crate::util::eventually(
        "the server span and one client span per call are exported",
        || async move {
            let all = crate::util::exported_spans(received_ref);
            (all.len() >= 3).then_some(all)
        },
    )
    .await;
    assert_eq!(
        spans.len(),
        3,
        "a server span and a client span per call: {spans:?}"
    );
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    for id in &sent {
        let c = spans.iter().find(|s| s["spanId"] == id.as_str()).unwrap();
        assert_eq!(
            (c["kind"].as_u64(), &c["parentSpanId"]),
            (Some(3), &server["spanId"])
        );
        assert_eq!(c["name"], "call svc");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composite_is_cached_as_a_whole_through_its_response_plugins() {
    let svc = services().await;
    let gw = Gateway::start(&format!(
        "cache: {{ memory: 16MiB }}\n{}",
        config(
            &svc,
            r#"  - name: view
    match: { path: "/view/{id}" }
    plugins:
      - cache: { ttl: 30s, x_cache: true }
      - transform: { response: { json: [ { set: { path: shaped, value: true } } ] } }
    aggregate:
      calls:
        order: { upstream: svc, path: "/orders/{id}", allow: [id, total] }
        user: { upstream: svc, path: "/users/${calls.order.body.user_id}", group: customer, allow: [name] }
  - name: deferred
    match: { path: /deferred }
    plugins:
      - cache: { ttl: 30s, x_cache: true }
      - transform: { response: { json: [ { set: { path: s, value: 1 } } ] }, on_error: error }
    aggregate:
      calls:
        user: { upstream: svc, path: /users/2, allow: [name] }
  - name: partial
    match: { path: /partial }
    plugins: [ { cache: { ttl: 30s, x_cache: true } } ]
    aggregate:
      calls:
        user: { upstream: svc, path: /users/1, allow: [name] }
        down: { upstream: dead, path: /x, optional: true }
"#,
        )
    ));
    let hits = |prefix: &str| {
        svc.timeline
            .lock()
            .iter()
            .filter(|t| t.0.starts_with(prefix))
            .count()
    };
    // 20 concurrent first requests: one composite runs, the others wait for its answer.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = gw.url("/view/5");
        tasks.push(tokio::spawn(async move {
            let r = client().get(url).send().await.unwrap();
            let h = r.headers().clone();
            (r.status().as_u16(), h, r.json::<Value>().await.unwrap())
        }));
    }
    for t in tasks {
        let (s, h, v) = t.await.unwrap();
        assert_eq!(s, 200);
        assert_eq!(complete(&h), "?1");
        assert_eq!(
            v,
            json!({ "id": "5", "total": 10, "customer": { "name": "Ann" }, "shaped": true })
        );
    }
    assert_eq!((hits("/orders/"), hits("/users/")), (1, 1), "coalesced");
    let (s, h, v) = get(&gw, "/view/5").await;
    assert_eq!((s, h["x-cache"].to_str().unwrap()), (200, "HIT"));
    assert_eq!(
        v["shaped"], true,
        "the route's response plugins run on a hit"
    );
    assert_eq!(
        h["vary"], "accept-language",
        "the client header calls carry"
    );
    assert_eq!((hits("/orders/"), hits("/users/")), (1, 1));
    // Another URL is another entry; the route counts each request once.
    let (_, h, _) = get(&gw, "/view/6").await;
    assert_eq!(h["x-cache"], "MISS");
    assert_eq!(hits("/orders/"), 2);
    // The route counts each request once (its record is written after the answer: waited for).
    gw.wait_metric(
        r#"postern_http_requests_total{route="view",status_class="2xx"}"#,
        22.0,
    );
    assert!(gw
        .metrics()
        .contains(r#"postern_cache_requests_total{result="hit",route="view"}"#));
    // A purge by URL drops the composite's entry.
    let (status, v) = gw.admin_call("DELETE", "/cache?url=127.0.0.1/view/5", Some(ADMIN_TOKEN));
    assert_eq!((status, v["purged"].as_u64()), (200, Some(1)), "{v}");
    let (_, h, _) = get(&gw, "/view/5").await;
    assert_eq!(h["x-cache"], "MISS");
    assert_eq!(hits("/orders/"), 3);
    // HEAD is answered (from the stored entry or a miss) without a body.
    let r = client().head(gw.url("/view/5")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    // A route whose response plugin needs the whole answer (deferred) caches the same way.
    for expect in ["MISS", "HIT"] {
        let (s, h, v) = get(&gw, "/deferred").await;
        assert_eq!((s, h["x-cache"].to_str().unwrap()), (200, expect));
        assert_eq!(v, json!({ "name": "Ann", "s": 1 }));
    }
    assert_eq!(hits("/users/2"), 1);
    // A partial answer (an optional call failed) is served but not stored.
    for _ in 0..2 {
        let (s, h, v) = get(&gw, "/partial").await;
        assert_eq!(
            (s, complete(&h), h["x-cache"].to_str().unwrap()),
            (200, "?0", "MISS")
        );
        assert_eq!(v["name"], "Ann");
    }
    assert_eq!(hits("/users/1"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_socket_answers_only_handed_over_requests() {
    use std::io::{Read, Write};
    let svc = services().await;
    let gw = Gateway::start(&format!(
        "cache: {{ memory: 16MiB }}\n{}",
        config(
            &svc,
            "  - name: v\n    match: { path: /v }\n    plugins: [ { cache: { ttl: 30s } } ]\n    aggregate:\n      calls:\n        user: { upstream: svc, path: /users/1 }\n",
        )
    ));
    let (s, _, v) = get(&gw, "/v").await;
    assert_eq!((s, &v["name"]), (200, &json!("Ann")));
    let path = gw.dir.path().join("internal.sock");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    for marker in ["", "postern-composite: 00.1\r\n"] {
        let mut sock = std::os::unix::net::UnixStream::connect(&path).unwrap();
        write!(
            sock,
            "GET /v HTTP/1.1\r\nhost: x\r\n{marker}connection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        sock.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_composite_is_refreshed_in_the_background_and_served_stale_on_error() {
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    let (n, fail) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicU16::new(0)));
    let (n2, fail2) = (n.clone(), fail.clone());
    let svc = FnServer::start(move |_| {
        let status = fail2.load(SeqCst);
        if status != 0 {
            return (status, vec![], "{}".into());
        }
        let i = n2.fetch_add(1, SeqCst) + 1;
        let json = ("content-type", "application/json".to_string());
        (200, vec![json], json!({ "n": i }).to_string())
    })
    .await;
    let gw = Gateway::start(&format!(
        "cache: {{ memory: 16MiB }}\n{}",
        config(
            &svc,
            r#"  - name: swr
    match: { path: /swr }
    plugins: [ { cache: { ttl: 1s, stale_while_revalidate: 60s, x_cache: true } } ]
    aggregate:
      calls:
        v: { upstream: svc, path: /v }
  - name: sie
    match: { path: /sie }
    plugins: [ { cache: { ttl: 1s, stale_if_error: 60s, x_cache: true } } ]
    aggregate:
      calls:
        v: { upstream: svc, path: /v }
"#,
        )
    ));
    let (_, _, v) = get(&gw, "/swr").await;
    assert_eq!(v["n"], 1);
    // Once stale, the stored answer is served at once while the composite runs again in the
    // background (a subrequest through the internal socket).
    let gw_ref = &gw;
    stale_until_revalidated(gw_ref, &n, "/swr").await;
    eventually("the refreshed answer", || async move {
        let (_, _, v) = get(gw_ref, "/swr").await;
        (v["n"] == 2).then_some(())
    })
    .await;
    // stale-if-error: the composite fails (its required call gets 503) once the entry expired;
    // the stored answer stands in.
    let (s, _, v) = get(&gw, "/sie").await;
    let stored = v["n"].as_u64();
    assert!(s == 200 && stored.is_some(), "{v}");
    fail.store(503, SeqCst);
    let hits = svc.hits();
    let svc_ref = &svc;
    let poll = Poll::DEFAULT.every(Duration::from_millis(100));
    eventually_with(poll, "the entry expires", || async move {
        if svc_ref.hits() != hits {
            return Some(());
        }
        let (s, _, v) = get(gw_ref, "/sie").await;
        assert_eq!((s, v["n"].as_u64()), (200, stored));
        None
    })
    .await;
    let (s, h, v) = get(&gw, "/sie").await;
    assert_eq!((s, v["n"].as_u64()), (200, stored), "{h:?}");
    // Without a stored answer the composite's own error goes to the client.
    let (s, _, v) = get(&gw, "/sie?other").await;
    assert_eq!(
        (s, v["errors"][0]["call"].as_str()),
        (502, Some("v")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_composite_cache_added_by_a_reload_waits_for_a_restart() {
    let svc = services().await;
    let route = |plugins: &str| {
        config(
            &svc,
            &format!("  - name: v\n    match: {{ path: /v }}\n{plugins}    aggregate:\n      calls:\n        user: {{ upstream: svc, path: /users/1 }}\n"),
        )
    };
    let gw = Gateway::start(&route(""));
    gw.rewrite(&format!(
        "cache: {{ memory: 16MiB }}\n{}",
        route("    plugins: [ { cache: { ttl: 30s, x_cache: true } } ]\n")
    ));
    let (status, v) = gw.admin_call("POST", "/reload", Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{v}");
    assert!(
        v["not_applied"].to_string().contains("composite"),
        "the reload says the cache waits for a restart: {v}"
    );
    // Answered, uncached, meanwhile.
    for _ in 0..2 {
        let (s, h, v) = get(&gw, "/v").await;
        assert_eq!((s, &v["name"]), (200, &json!("Ann")));
        assert!(h.get("x-cache").is_none());
    }
    assert!(!gw.dir.path().join("internal.sock").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_composite_behind_jwt_is_kept_per_consumer() {
    let svc = services().await;
    let gw = Gateway::start(&format!(
        "cache: {{ memory: 16MiB }}\n{}",
        config(
            &svc,
            &format!(
                r#"  - name: mine
    match: {{ path: /mine }}
    plugins:
      - jwt: {{ keys: [ {{ alg: HS256, secret: "{SECRET}" }} ], consumer_claim: sub }}
      - cache: {{ ttl: 30s, key: {{ consumer: true }}, x_cache: true }}
    aggregate:
      calls:
        points: {{ upstream: svc, path: "/points/${{claim.sub}}" }}
"#
            ),
        )
    ));
    let token = |sub: &str| {
        encode(
            &Header::new(Algorithm::HS256),
            &json!({ "sub": sub, "exp": 4_000_000_000u64 }),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let mine = |sub: &'static str| {
        let (url, t) = (gw.url("/mine"), token(sub));
        async move {
            let r = client().get(url).bearer_auth(t).send().await.unwrap();
            let cache = r.headers()["x-cache"].to_str().unwrap().to_string();
            (cache, r.json::<Value>().await.unwrap()["sub"].clone())
        }
    };
    assert_eq!(mine("alice").await, ("MISS".into(), json!("alice")));
    assert_eq!(mine("alice").await, ("HIT".into(), json!("alice")));
    assert_eq!(mine("bob").await, ("MISS".into(), json!("bob")));
    assert_eq!(mine("bob").await, ("HIT".into(), json!("bob")));
}
