//! Body plugins end to end: the `transform` plugin's JSON operations on request and response
//! bodies, query and method changes, status mapping, the header of a changed body, bodies that
//! are not JSON, oversized bodies, HEAD, and the order with the cache.

use crate::util::upstream::{FnServer, Seen};
use crate::util::{client, Gateway};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::sync::Arc;

/// What the origin last received: method, URI, headers, body.
type Last = Arc<Mutex<Option<(String, String, http::HeaderMap, String)>>>;

async fn origin(last: Last) -> FnServer {
    FnServer::start(move |s: &Seen| {
        *last.lock() = Some((
            s.method.clone(),
            s.uri.clone(),
            s.headers.clone(),
            s.body.clone(),
        ));
        let path = s.uri.split('?').next().unwrap_or("");
        let json_ct = ("content-type", "application/json".to_string());
        match path {
            "/t/text" => (
                200,
                vec![("content-type", "text/plain".into())],
                "not json".into(),
            ),
            "/t/broken" => (200, vec![json_ct], "{\"a\": ".into()),
            "/t/created" => (201, vec![json_ct], "{\"id\": 5}".into()),
            "/t/big" => (
                200,
                vec![json_ct],
                json!({ "pad": "x".repeat(5 << 10), "secret": 1 }).to_string(),
            ),
            _ => (
                200,
                vec![
                    json_ct,
                    ("etag", "\"v1\"".into()),
                    ("cache-control", "max-age=60".into()),
                ],
                json!({
                    "id": 7,
                    "secret": "s3cret",
                    "items": [ { "cost": 1, "internal": true }, { "cost": 2 } ],
                    "path": path,
                })
                .to_string(),
            ),
        }
    })
    .await
}

const TRANSFORM: &str = r#"      - transform:
          request:
            json:
              - set: { path: tenant, value: "${header.x-tenant}" }
              - set: { path: limit, value: "${query.per_page:number}" }
              - remove: debug
            query: { set: { size: "${query.per_page}" }, remove: [per_page], rename: { q: search } }
          response:
            json:
              - rename: { from: "items[*].cost", to: price }
              - remove: [secret, "items[*].internal"]
              - add: { path: meta.request_id, value: "${request_id}" }
              - set: { path: meta.item, value: "${path.id:number}" }
            status: { 201: 200 }
"#;

fn config(o: &FnServer, extra_routes: &str) -> String {
    format!(
        "upstreams:\n  o: {{ targets: [ {{ addr: \"{}\" }} ] }}\nroutes:\n  - name: t\n    match: {{ path: \"/t/{{id}}\" }}\n    upstream: o\n    plugins:\n{TRANSFORM}{extra_routes}",
        o.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_operations_on_requests_and_responses() {
    let last: Last = Arc::default();
    let o = origin(last.clone()).await;
    let gw = Gateway::start(&config(&o, ""));
    let c = client();

    // Response: fields renamed, removed, added from templates; a valid Content-Length.
    let r = c
        .get(gw.url("/t/42"))
        .header("x-request-id", "req-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r
        .headers()
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        etag, "W/\"v1\"",
        "a strong ETag of the old body is weakened"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({ "id": 7, "items": [ { "price": 1 }, { "price": 2 } ], "path": "/t/42",
                "meta": { "request_id": "req-1", "item": 42 } })
    );
    let (_, _, headers, _) = last.lock().clone().unwrap();
    assert_eq!(
        headers["accept-encoding"], "identity",
        "plain bytes asked for"
    );

    // Request: JSON body, query and templates; the upstream gets the new body with its length.
    let r = c
        .post(gw.url("/t/1?per_page=20&q=shoes&keep=1"))
        .header("x-tenant", "acme")
        .header("content-type", "application/json")
        .body(r#"{"name":"n","debug":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (method, uri, headers, body) = last.lock().clone().unwrap();
    assert_eq!(method, "POST");
    assert_eq!(uri, "/t/1?search=shoes&keep=1&size=20");
    let sent: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(sent, json!({ "name": "n", "tenant": "acme", "limit": 20 }));
    assert_eq!(headers["content-length"], body.len().to_string());

    // A large request body (streamed, not read ahead) is transformed too.
    let big = json!({ "pad": "y".repeat(100 << 10), "debug": 1 }).to_string();
    let r = c
        .post(gw.url("/t/2"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, _, _, body) = last.lock().clone().unwrap();
    let sent: Value = serde_json::from_str(&body).unwrap();
    assert!(sent.get("debug").is_none() && sent["pad"].as_str().unwrap().len() == 100 << 10);

    // Status mapping.
    assert_eq!(
        c.get(gw.url("/t/created")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_other_types_head_and_oversize() {
    let last: Last = Arc::default();
    let o = origin(last.clone()).await;
    let strict = r#"  - name: strict
    match: { path: "/s/{id}" }
    upstream: o
    rewrite: { path: "/t/{id}" }
    plugins:
      - transform: { response: { json: [ { remove: secret } ] }, max_body: 1KiB, on_oversize: error, on_error: error }
  - name: lenient
    match: { path: "/l/{id}" }
    upstream: o
    rewrite: { path: "/t/{id}" }
    plugins:
      - transform: { response: { json: [ { remove: secret } ] }, max_body: 1KiB }
"#.to_string();
    let gw = Gateway::start(&config(&o, &strict));
    let c = client();
    // A request body that is not JSON: 400 naming the position, and no upstream call.
    let hits = o.hits();
    let r = c
        .post(gw.url("/t/1"))
        .header("content-type", "application/json")
        .body("{\"a\": tru")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let v: Value = r.json().await.unwrap();
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("line 1, column"), "{detail}");
    assert_eq!(o.hits(), hits, "no upstream call");
    // Responses that are not JSON pass unchanged (counted), or fail with on_error: error.
    let r = c.get(gw.url("/t/text")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "not json");
    let r = c.get(gw.url("/t/broken")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "{\"a\": ");
    // HEAD has no body to change, but its header must not promise the upstream's bytes: no
    // Content-Length (a GET gets another length) and the ETag weakened as on a GET.
    let r = c.head(gw.url("/t/3")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("content-length").is_none(),
        "{:?}",
        r.headers()
    );
    assert_eq!(r.headers()["etag"], "W/\"v1\"");
    let get = c.get(gw.url("/t/3")).send().await.unwrap();
    assert_eq!(get.headers()["etag"], "W/\"v1\"");
    // 5 KiB against a 1 KiB limit: untransformed (pass) or 502 (error, length known).
    let r = c.get(gw.url("/l/big")).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["secret"], 1, "passed through untransformed");
    let r = c.get(gw.url("/s/big")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    // Within the limit, the strict route transforms.
    let r = c.get(gw.url("/s/created")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({ "id": 5 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_stores_before_or_after_the_transform_as_listed() {
    let last: Last = Arc::default();
    let o = origin(last.clone()).await;
    let t = "      - transform: { response: { json: [ { set: { path: served, value: \"${request_id}\" } } ] } }\n";
    let body = format!(
        r#"upstreams:
  o: {{ targets: [ {{ addr: "{a}" }} ] }}
routes:
  - name: before
    match: {{ path: "/b/*" }}
    upstream: o
    plugins:
{t}      - cache: {{ x_cache: true }}
  - name: after
    match: {{ path: "/a/*" }}
    upstream: o
    plugins:
      - cache: {{ x_cache: true }}
{t}"#,
        a = o.addr
    );
    let gw = Gateway::start(&body);
    let c = client();
    let get = |path: &'static str, id: &'static str| {
        let (c, url) = (c.clone(), gw.url(path));
        async move {
            let r = c.get(url).header("x-request-id", id).send().await.unwrap();
            let cache = r.headers()["x-cache"].to_str().unwrap().to_string();
            (cache, r.json::<Value>().await.unwrap())
        }
    };
    // [transform, cache]: the transformed body is stored, so a hit shows the first request's id.
    assert_eq!(get("/b/1", "one").await.1["served"], "one");
    let (cache, v) = get("/b/1", "two").await;
    assert_eq!((cache.as_str(), &v["served"]), ("HIT", &json!("one")));
    // [cache, transform]: the upstream's body is stored and transformed on every hit.
    assert_eq!(get("/a/1", "one").await.1["served"], "one");
    let (cache, v) = get("/a/1", "two").await;
    assert_eq!((cache.as_str(), &v["served"]), ("HIT", &json!("two")));
}
