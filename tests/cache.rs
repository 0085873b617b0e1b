//! The HTTP cache end to end against an origin that counts its hits per path: freshness,
//! no-store/private, Vary, revalidation, Age, Authorization, coalescing, stale serving, purges,
//! invalidation by unsafe methods, and the memory bound.

use crate::util::upstream::{FnServer, Seen};
use crate::util::{client, eventually, eventually_with, metric, Gateway, Poll, ADMIN_TOKEN};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

type Hits = Arc<Mutex<HashMap<String, usize>>>;

/// The origin: behaviour chosen by the path's first segment after `/c/`.
async fn origin(hits: Hits, fail: Arc<AtomicU16>) -> FnServer {
    FnServer::start(move |s: &Seen| {
        let path = s.uri.split('?').next().unwrap_or("").to_string();
        let n = {
            let mut h = hits.lock();
            let e = h.entry(path.clone()).or_insert(0);
            *e += 1;
            *e
        };
        let status = fail.load(SeqCst);
        if status != 0 && s.method == "GET" {
            return (status, vec![], "origin failure".into());
        }
        let body = format!("{path} #{n}");
        let kind = path
            .trim_start_matches("/c/")
            .split('/')
            .next()
            .unwrap_or("");
        let cc = |v: &str| vec![("cache-control", v.to_string())];
        match kind {
            "fresh" => (200, cc("max-age=60"), body),
            "nostore" => (200, cc("no-store"), body),
            "private" => (200, cc("private, max-age=60"), body),
            "silent" => (200, vec![], body),
            "cookie" => (
                200,
                vec![
                    ("cache-control", "max-age=60".into()),
                    ("set-cookie", "s=1".into()),
                ],
                body,
            ),
            "slow" => {
                std::thread::sleep(Duration::from_millis(300));
                (200, cc("max-age=60"), body)
            }
            "vary" => {
                let lang = s
                    .headers
                    .get("accept-language")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_string();
                (
                    200,
                    vec![
                        ("cache-control", "max-age=60".into()),
                        ("vary", "Accept-Language".into()),
                    ],
                    format!("{body} {lang}"),
                )
            }
            "etag" => {
                if s.headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some("\"v1\"") {
                    (
                        304,
                        vec![
                            ("etag", "\"v1\"".into()),
                            ("cache-control", "max-age=0, must-revalidate".into()),
                        ],
                        String::new(),
                    )
                } else {
                    (
                        200,
                        vec![
                            ("etag", "\"v1\"".into()),
                            ("cache-control", "max-age=0, must-revalidate".into()),
                        ],
                        body,
                    )
                }
            }
            "swr" => (200, cc("max-age=1, stale-while-revalidate=60"), body),
            "sie" => (200, cc("max-age=1, stale-if-error=60"), body),
            "mustrev" => (
                200,
                cc("max-age=1, must-revalidate, stale-if-error=60"),
                body,
            ),
            "tagged" => (
                200,
                vec![
                    ("cache-control", "max-age=60".into()),
                    ("surrogate-key", "catalog product-7".into()),
                ],
                body,
            ),
            "big" => (200, cc("max-age=60"), "x".repeat(200_000)),
            _ => (200, cc("max-age=60"), body),
        }
    })
    .await
}

fn config(origin: &FnServer, cache_section: &str) -> String {
    format!(
        r#"{cache_section}upstreams:
  o: {{ targets: [ {{ addr: "{}" }} ] }}
routes:
  - name: cached
    match: {{ path: /c/* }}
    upstream: o
    plugins:
      - cache: {{ ttl: 30s, x_cache: true, bypass: {{ headers: [x-no-cache] }} }}
"#,
        origin.addr
    )
}

fn hits(h: &Hits, path: &str) -> usize {
    h.lock().get(path).copied().unwrap_or(0)
}

async fn get(
    c: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, HashMap<String, String>, String) {
    let a = crate::util::http::get(c, url, headers).await;
    (a.status, a.header_map(), a.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freshness_storability_vary_revalidation_and_authorization() {
    let h: Hits = Arc::default();
    let o = origin(h.clone(), Arc::default()).await;
    let gw = Gateway::start(&config(&o, ""));
    let c = client();
    let url = |p: &str| gw.url(p);

    let (s, hd, b1) = get(&c, &url("/c/fresh/1"), &[]).await;
    assert_eq!((s, hd["x-cache"].as_str()), (200, "MISS"));
    assert_eq!(hd["cache-status"], "postern; fwd=miss; stored");
    let (_, hd, b2) = get(&c, &url("/c/fresh/1"), &[]).await;
    assert_eq!(hd["x-cache"], "HIT");
    assert!(
        hd["cache-status"].starts_with("postern; hit; ttl="),
        "{hd:?}"
    );
    assert!(hd.contains_key("age"));
    assert_eq!(b1, b2);
    assert_eq!(hits(&h, "/c/fresh/1"), 1);
    let head = c.head(url("/c/fresh/1")).send().await.unwrap();
    assert_eq!(
        head.headers()["x-cache"],
        "HIT",
        "HEAD is answered from the GET entry"
    );
    assert_eq!(hits(&h, "/c/fresh/1"), 1);
    // Query order does not matter; a bypass header skips the cache.
    get(&c, &url("/c/fresh/q?b=2&a=1"), &[]).await;
    let (_, hd, _) = get(&c, &url("/c/fresh/q?a=1&b=2"), &[]).await;
    assert_eq!(hd["x-cache"], "HIT");
    let (_, hd, _) = get(&c, &url("/c/fresh/1"), &[("x-no-cache", "1")]).await;
    assert_eq!(hd["x-cache"], "BYPASS");
    assert_eq!(hits(&h, "/c/fresh/1"), 2);

    for p in ["/c/nostore/1", "/c/private/1", "/c/cookie/1"] {
        get(&c, &url(p), &[]).await;
        get(&c, &url(p), &[]).await;
        assert_eq!(hits(&h, p), 2, "{p} must not be stored");
    }
    // The origin said nothing: the route's default ttl applies.
    get(&c, &url("/c/silent/1"), &[]).await;
    assert_eq!(get(&c, &url("/c/silent/1"), &[]).await.1["x-cache"], "HIT");

    // Vary: one entry per Accept-Language.
    let (_, _, en) = get(&c, &url("/c/vary/1"), &[("accept-language", "en")]).await;
    let (_, _, de) = get(&c, &url("/c/vary/1"), &[("accept-language", "de")]).await;
    let (_, hd, en2) = get(&c, &url("/c/vary/1"), &[("accept-language", "en")]).await;
    assert!(en.ends_with(" en") && de.ends_with(" de"));
    assert_eq!((en, hd["x-cache"].as_str()), (en2, "HIT"));
    assert_eq!(hits(&h, "/c/vary/1"), 2);

    // Revalidation with ETag: the origin answers 304, the stored body is served.
    let (_, _, b) = get(&c, &url("/c/etag/1"), &[]).await;
    let (s, hd, b2) = get(&c, &url("/c/etag/1"), &[]).await;
    assert_eq!((s, b2), (200, b));
    assert_eq!(hd["x-cache"], "REVALIDATED");
    assert_eq!(hd["cache-status"], "postern; fwd=stale; fwd-status=304");

    // Requests with Authorization are not served from a shared entry the origin did not allow.
    get(&c, &url("/c/fresh/auth"), &[("authorization", "Bearer a")]).await;
    get(&c, &url("/c/fresh/auth"), &[("authorization", "Bearer b")]).await;
    assert_eq!(hits(&h, "/c/fresh/auth"), 2);

    gw.wait_metric(
        "postern_cache_requests_total{result=\"hit\",route=\"cached\"}",
        5.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_misses_make_one_origin_request() {
    let h: Hits = Arc::default();
    let o = origin(h.clone(), Arc::default()).await;
    let gw = Gateway::start(&config(&o, ""));
    let c = client();
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (c, u) = (c.clone(), gw.url("/c/slow/cold"));
            tokio::spawn(async move { c.get(u).send().await.unwrap().text().await.unwrap() })
        })
        .collect();
    let mut bodies = Vec::new();
    for call in calls {
        bodies.push(call.await.unwrap());
    }
    assert!(bodies.iter().all(|b| b == "/c/slow/cold #1"), "{bodies:?}");
    assert_eq!(hits(&h, "/c/slow/cold"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_and_stale_if_error() {
    let h: Hits = Arc::default();
    let fail = Arc::new(AtomicU16::new(0));
    let o = origin(h.clone(), fail.clone()).await;
    let gw = Gateway::start(&config(&o, ""));
    let c = client();
    get(&c, &gw.url("/c/swr/1"), &[]).await;
    get(&c, &gw.url("/c/sie/1"), &[]).await;
    get(&c, &gw.url("/c/mustrev/1"), &[]).await;
    // Both entries are fresh for 1 s; wait until the cache itself says they expired.
    let (c_ref, gw_ref, h_ref) = (&c, &gw, &h);
    let slow = Poll::DEFAULT.every(Duration::from_millis(100));
    let (status, body) = eventually_with(slow, "a stale answer", || async move {
        let (_, hd, b) = get(c_ref, &gw_ref.url("/c/swr/1"), &[]).await;
        (hd["x-cache"] == "STALE").then(|| (hd["cache-status"].clone(), b))
    })
    .await;
    assert!(status.starts_with("postern; hit; ttl=-"), "{status}");
    assert_eq!(body, "/c/swr/1 #1", "the stale copy is served at once");
    // ... and refreshed in the background.
    eventually("a background refresh", || async move {
        (hits(h_ref, "/c/swr/1") >= 2).then_some(())
    })
    .await;

    fail.store(503, SeqCst);
    let (s, hd, b) = eventually_with(slow, "the entry expires", || async move {
        let answer = get(c_ref, &gw_ref.url("/c/sie/1"), &[]).await;
        (hits(h_ref, "/c/sie/1") >= 2).then_some(answer)
    })
    .await;
    assert_eq!(
        (s, b.as_str()),
        (200, "/c/sie/1 #1"),
        "stale-if-error: {hd:?}"
    );
    // must-revalidate forbids the stale copy even when the origin fails.
    let (s, _, _) = get(&c, &gw.url("/c/mustrev/1"), &[]).await;
    assert_eq!(s, 503, "the origin's failure, not a stale copy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_by_url_prefix_tag_and_unsafe_methods() {
    let h: Hits = Arc::default();
    let o = origin(h.clone(), Arc::default()).await;
    let gw = Gateway::start(&config(&o, ""));
    let c = client();
    for p in [
        "/c/fresh/a",
        "/c/fresh/b",
        "/c/other/x",
        "/c/tagged/1",
        "/c/tagged/2",
    ] {
        get(&c, &gw.url(p), &[]).await;
        assert_eq!(get(&c, &gw.url(p), &[]).await.1["x-cache"], "HIT", "{p}");
    }
    let purge = |q: &str| gw.admin_call("DELETE", &format!("/cache?{q}"), Some(ADMIN_TOKEN));
    assert_eq!(
        gw.admin_call("DELETE", "/cache?url=x", None).0,
        401,
        "writes need the token"
    );
    let (s, v) = purge("url=127.0.0.1/c/fresh/a");
    assert_eq!((s, v["purged"].as_u64()), (200, Some(1)));
    assert_eq!(
        get(&c, &gw.url("/c/fresh/a"), &[]).await.1["x-cache"],
        "MISS"
    );
    assert_eq!(
        get(&c, &gw.url("/c/fresh/b"), &[]).await.1["x-cache"],
        "HIT"
    );
    // A URL with a query: its own ?, & and = are percent-encoded; the query is matched sorted.
    get(&c, &gw.url("/c/fresh/q?b=2&a=1"), &[]).await;
    let (_, v) = purge("url=127.0.0.1/c/fresh/q%3Fa%3D1%26b%3D2");
    assert_eq!(v["purged"].as_u64(), Some(1));
    let (_, v) = purge("prefix=127.0.0.1/c/fresh/");
    assert_eq!(v["purged"].as_u64(), Some(2));
    assert_eq!(
        get(&c, &gw.url("/c/fresh/b"), &[]).await.1["x-cache"],
        "MISS"
    );
    assert_eq!(
        get(&c, &gw.url("/c/other/x"), &[]).await.1["x-cache"],
        "HIT"
    );
    let (_, v) = purge("tag=product-7");
    assert_eq!(v["purged"].as_u64(), Some(2));
    assert_eq!(
        get(&c, &gw.url("/c/tagged/1"), &[]).await.1["x-cache"],
        "MISS"
    );
    assert_eq!(purge("").0, 400);

    // A successful POST to a URL invalidates its GET entry.
    assert_eq!(
        get(&c, &gw.url("/c/other/x"), &[]).await.1["x-cache"],
        "HIT"
    );
    let r = c
        .post(gw.url("/c/other/x"))
        .body("change")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (c, gw) = (&c, &gw);
    eventually("the POST invalidates the entry", || async move {
        (get(c, &gw.url("/c/other/x"), &[]).await.1["x-cache"] == "MISS").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bound_holds_with_much_more_data_than_fits() {
    let h: Hits = Arc::default();
    let o = origin(h.clone(), Arc::default()).await;
    let gw = Gateway::start(&config(
        &o,
        "cache: { memory: 2MiB, max_object_size: 1MiB }\n",
    ));
    let c = client();
    // 200 objects of 200 KB = 40 MB through a 2 MiB cache.
    for i in 0..200 {
        let (s, _, b) = get(&c, &gw.url(&format!("/c/big/{i}")), &[]).await;
        assert_eq!((s, b.len()), (200, 200_000));
    }
    gw.wait_metric("postern_http_requests_in_flight", 0.0);
    let text = gw.metrics();
    let evicted = metric(&text, "postern_cache_evictions_total").unwrap_or(0.0);
    assert!(
        evicted >= 150.0,
        "at most ~10 objects fit: {evicted} evictions"
    );
    // A recent object may still be there, the earliest certainly not.
    assert_eq!(get(&c, &gw.url("/c/big/0"), &[]).await.1["x-cache"], "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purges_reach_every_node_through_redis_and_the_purge_method() {
    let redis = crate::util::redis::RedisServer::start();
    let h: Hits = Arc::default();
    let o = origin(h.clone(), Arc::default()).await;
    let body = format!(
        r#"cluster:
  redis: {{ url: "{}" }}
upstreams:
  o: {{ targets: [ {{ addr: "{}" }} ] }}
routes:
  - name: cached
    match: {{ path: /c/* }}
    upstream: o
    plugins:
      - cache: {{ x_cache: true, purge: {{ enabled: true, allow: [10.9.9.9/32], token: purge-secret }} }}
"#,
        redis.url(),
        o.addr
    );
    let (a, b) = (Gateway::start(&body), Gateway::start(&body));
    a.wait_metric("postern_redis_up", 1.0);
    b.wait_metric("postern_redis_up", 1.0);
    let c = client();
    for gw in [&a, &b] {
        for p in ["/c/fresh/shared", "/c/tagged/9"] {
            get(&c, &gw.url(p), &[]).await;
            assert_eq!(get(&c, &gw.url(p), &[]).await.1["x-cache"], "HIT");
        }
    }
    // A tag purge on node A empties node B too (the subscription may need a moment).
    let (s, _) = a.admin_call("DELETE", "/cache?tag=catalog", Some(ADMIN_TOKEN));
    assert_eq!(s, 200);
    let (c_ref, b_ref) = (&c, &b);
    let poll = Poll::DEFAULT.every(Duration::from_millis(50));
    eventually_with(poll, "the tag purge reaches node B", || async move {
        (get(c_ref, &b_ref.url("/c/tagged/9"), &[]).await.1["x-cache"] == "MISS").then_some(())
    })
    .await;
    // PURGE on a route: refused from an address outside `allow` without the token.
    let purge = |gw: &Gateway, token: Option<&str>| {
        let mut r = c.request(
            reqwest::Method::from_bytes(b"PURGE").unwrap(),
            gw.url("/c/fresh/shared"),
        );
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    assert_eq!(purge(&a, None).await.unwrap().status(), 403);
    assert_eq!(purge(&a, Some("wrong")).await.unwrap().status(), 403);
    let r = purge(&a, Some("purge-secret")).await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["purged"], 1);
    assert_eq!(
        get(&c, &a.url("/c/fresh/shared"), &[]).await.1["x-cache"],
        "MISS"
    );
    eventually_with(poll, "the PURGE reaches node B", || async move {
        (get(c_ref, &b_ref.url("/c/fresh/shared"), &[]).await.1["x-cache"] == "MISS").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_served_from_a_get_entry_and_last_modified_revalidates() {
    let h: Hits = Arc::default();
    let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
    let o = FnServer::start({
        let h = h.clone();
        move |s: &Seen| {
            *h.lock().entry(s.uri.clone()).or_insert(0) += 1;
            if s.headers
                .get("if-modified-since")
                .and_then(|v| v.to_str().ok())
                == Some(lm)
            {
                return (
                    304,
                    vec![
                        ("last-modified", lm.into()),
                        ("cache-control", "no-cache".into()),
                    ],
                    String::new(),
                );
            }
            (
                200,
                vec![
                    ("last-modified", lm.into()),
                    ("cache-control", "no-cache".into()),
                ],
                "document".into(),
            )
        }
    })
    .await;
    let gw = Gateway::start(&config(&o, ""));
    let c = client();
    let (_, hd, body) = get(&c, &gw.url("/c/lm"), &[]).await;
    assert_eq!(
        (hd["x-cache"].as_str(), body.as_str()),
        ("MISS", "document")
    );
    let (s, hd, body) = get(&c, &gw.url("/c/lm"), &[]).await;
    assert_eq!((s, body.as_str()), (200, "document"));
    assert_eq!(
        hd["x-cache"], "REVALIDATED",
        "no-cache: revalidated with If-Modified-Since"
    );
    let head = c.head(gw.url("/c/lm")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["x-cache"], "REVALIDATED");
    assert_eq!(head.headers()["last-modified"], lm);
}

fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(sub.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_none() {
                out.push(f.path());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_tier_survives_a_restart_and_rejects_a_damaged_file() {
    let h: Hits = Arc::default();
    let o = origin(h.clone(), Arc::default()).await;
    let disk = tempfile::tempdir().unwrap();
    let section = format!(
        "cache: {{ memory: 4MiB, max_object_size: 1MiB, disk: {{ path: \"{}\", size: 16MiB }} }}\n",
        disk.path().display()
    );
    let c = client();
    {
        let gw = Gateway::start(&config(&o, &section));
        get(&c, &gw.url("/c/fresh/kept"), &[]).await;
        get(&c, &gw.url("/c/fresh/damaged"), &[]).await;
        let dir = disk.path();
        eventually("the entries reach the disk", || async move {
            (cache_files(dir).len() >= 2).then_some(())
        })
        .await;
    }
    // Damage one file: a flipped byte fails its checksum.
    let files = cache_files(disk.path());
    let gw = Gateway::start(&config(&o, &section));
    let (_, hd, body) = get(&c, &gw.url("/c/fresh/kept"), &[]).await;
    assert_eq!(hd["x-cache"], "HIT", "served from disk after the restart");
    assert_eq!(body, "/c/fresh/kept #1");
    drop(gw);
    for f in &files {
        let mut b = std::fs::read(f).unwrap();
        let n = b.len() / 2;
        b[n] ^= 0x55;
        std::fs::write(f, b).unwrap();
    }
    let gw = Gateway::start(&config(&o, &section));
    let (_, hd, body) = get(&c, &gw.url("/c/fresh/damaged"), &[]).await;
    assert_eq!(hd["x-cache"], "MISS", "a damaged file is not served");
    assert_eq!(body, "/c/fresh/damaged #2");
}

/// Regressions (issue 12): `stale-if-error` was not used when the failure came out of the
/// retry logic (503 no-healthy-upstream with the default retry settings), and a stored
/// `no-cache` answer was served stale when the origin went away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_after_retries_and_never_for_no_cache() {
    let o = FnServer::start(|s: &Seen| {
        let cc = if s.uri.contains("nocache") {
            "max-age=1, no-cache, stale-if-error=60"
        } else {
            "max-age=1, stale-if-error=60"
        };
        (200, vec![("cache-control", cc.to_string())], s.uri.clone())
    })
    .await;
    // Two targets of one origin and the default retry policy: a failure goes through retries.
    let body = format!(
        r#"upstreams:
  o: {{ targets: [ {{ addr: "{a}" }}, {{ addr: "{a}", weight: 1 }} ] }}
routes:
  - name: cached
    match: {{ path: /c/* }}
    upstream: o
    plugins:
      - cache: {{ x_cache: true }}
"#,
        a = o.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    assert_eq!(get(&c, &gw.url("/c/sie"), &[]).await.0, 200);
    assert_eq!(get(&c, &gw.url("/c/nocache"), &[]).await.0, 200);
    o.kill();
    let (c_ref, gw_ref) = (&c, &gw);
    let slow = Poll::DEFAULT.every(Duration::from_millis(100));
    let (s, hd, b) = eventually_with(slow, "the entry expires", || async move {
        let (s, hd, b) = get(c_ref, &gw_ref.url("/c/sie"), &[]).await;
        (hd.get("x-cache").map(String::as_str) != Some("HIT")).then_some((s, hd, b))
    })
    .await;
    assert_eq!((s, b.as_str()), (200, "/c/sie"), "the stale copy: {hd:?}");
    let (s, hd, _) = get(&c, &gw.url("/c/nocache"), &[]).await;
    assert!(s >= 500, "no-cache forbids the stale copy: {s} {hd:?}");
}

/// Regressions (issue 12, RFC 9111): the origin's `Age` was ignored, `Expires` was measured
/// from now instead of from `Date`, a 304 updated only a few stored fields, `CDN-Cache-Control`
/// (RFC 9213) was not read, and statuses with explicit freshness outside the short default
/// list were not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc9111_age_expires_304_merge_targeted_fields_and_statuses() {
    let revalidations = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r = revalidations.clone();
    let o = FnServer::start(move |s: &Seen| {
        let path = s.uri.as_str();
        let h = |pairs: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
            pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
        };
        let date = |offset: i64| {
            let t = std::time::SystemTime::now();
            let t = if offset >= 0 {
                t + Duration::from_secs(offset as u64)
            } else {
                t - Duration::from_secs((-offset) as u64)
            };
            httpdate::fmt_http_date(t)
        };
        match path {
            "/c/aged-out" => (
                200,
                h(&[("age", "7200"), ("cache-control", "max-age=3600")]),
                "a".into(),
            ),
            "/c/aged" => (
                200,
                h(&[("age", "100"), ("cache-control", "max-age=3600")]),
                "a".into(),
            ),
            // The origin's clock is 1000 s ahead: Expires is 60 s after its Date.
            "/c/expires" => (
                200,
                h(&[("date", &date(1000)), ("expires", &date(1060))]),
                "e".into(),
            ),
            "/c/revalidate" => {
                if s.headers.get("if-none-match").is_some() {
                    r.fetch_add(1, SeqCst);
                    (
                        304,
                        h(&[
                            ("etag", "\"v1\""),
                            ("cache-control", "max-age=60"),
                            ("x-version", "2"),
                        ]),
                        String::new(),
                    )
                } else {
                    (
                        200,
                        h(&[
                            ("etag", "\"v1\""),
                            ("cache-control", "max-age=0"),
                            ("x-version", "1"),
                        ]),
                        "r".into(),
                    )
                }
            }
            "/c/cdn" => (
                200,
                h(&[
                    ("cache-control", "no-store"),
                    ("cdn-cache-control", "max-age=60"),
                ]),
                "c".into(),
            ),
            "/c/cdn-nostore" => (
                200,
                h(&[
                    ("cache-control", "max-age=60"),
                    ("cdn-cache-control", "no-store"),
                ]),
                "c".into(),
            ),
            "/c/own" => (
                200,
                h(&[
                    ("cdn-cache-control", "no-store"),
                    ("x-postern-cc", "max-age=60"),
                ]),
                "o".into(),
            ),
            "/c/s500" => (500, h(&[("cache-control", "max-age=60")]), "s".into()),
            "/c/s503" => (503, h(&[("cache-control", "max-age=60")]), "s".into()),
            "/c/s500-heuristic" => (500, vec![], "s".into()),
            _ => (200, h(&[("cache-control", "max-age=60")]), "d".into()),
        }
    })
    .await;
    let body = format!(
        r#"upstreams:
  o: {{ targets: [ {{ addr: "{}" }} ] }}
routes:
  - name: cached
    match: {{ path: /c/* }}
    upstream: o
    plugins:
      - cache: {{ ttl: 30s, x_cache: true, targeted: [x-postern-cc, cdn-cache-control] }}
"#,
        o.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    let twice = |p: &'static str| {
        let (c, url) = (c.clone(), gw.url(p));
        async move {
            let first = get(&c, &url, &[]).await;
            let second = get(&c, &url, &[]).await;
            (first, second)
        }
    };
    // Age at arrival counts: 7200 s old with max-age=3600 is stale on arrival.
    let (_, (_, hd, _)) = twice("/c/aged-out").await;
    assert_ne!(hd["x-cache"], "HIT", "{hd:?}");
    let (_, (_, hd, _)) = twice("/c/aged").await;
    assert_eq!(hd["x-cache"], "HIT", "{hd:?}");
    let age: u64 = hd["age"].parse().unwrap();
    assert!(
        (100..200).contains(&age),
        "Age includes the age at arrival: {age}"
    );
    // Expires - Date = 60 s, whatever the origin's clock says.
    let (_, (_, hd, _)) = twice("/c/expires").await;
    assert_eq!(hd["x-cache"], "HIT", "{hd:?}");
    let ttl: i64 = hd["cache-status"]
        .rsplit("ttl=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (0..=60).contains(&ttl),
        "freshness from Date, not from now: {hd:?}"
    );
    // A 304 replaces the stored fields it carries.
    let ((_, first, _), (_, second, body)) = twice("/c/revalidate").await;
    assert_eq!(first["x-version"], "1");
    assert_eq!(revalidations.load(SeqCst), 1, "{second:?}");
    assert_eq!((second["x-version"].as_str(), body.as_str()), ("2", "r"));
    let (_, hd, _) = get(&c, &gw.url("/c/revalidate"), &[]).await;
    assert_eq!(
        (hd["x-cache"].as_str(), hd["x-version"].as_str()),
        ("HIT", "2"),
        "{hd:?}"
    );
    assert_eq!(
        revalidations.load(SeqCst),
        1,
        "max-age=60 from the 304 made it fresh"
    );
    // Targeted fields win over Cache-Control, the route's own first.
    for (path, stored) in [
        ("/c/cdn", true),
        ("/c/cdn-nostore", false),
        ("/c/own", true),
    ] {
        let (_, (_, hd, _)) = twice(path).await;
        assert_eq!(hd["x-cache"] == "HIT", stored, "{path}: {hd:?}");
    }
    // Explicit freshness stores any final status; a heuristic only the RFC 9110 list.
    for (path, stored) in [
        ("/c/s500", true),
        ("/c/s503", true),
        ("/c/s500-heuristic", false),
    ] {
        let (_, (_, hd, _)) = twice(path).await;
        assert_eq!(
            hd.get("x-cache").is_some_and(|v| v == "HIT"),
            stored,
            "{path}: {hd:?}"
        );
    }
}
