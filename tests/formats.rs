//! Response formatting end to end: collection shaping (filter, sort, paginate, fields, wrap,
//! Link and X-Total-Count), JSON ↔ XML in both directions on requests and responses,
//! negotiation, hostile XML, 5 MiB bodies against a 1 MiB cap, and compressed upstream bodies.
//! Shaping and conversion need the whole response before the header goes out: these routes
//! are served through a subrequest (`gateway/deferred.rs`).

use crate::util::upstream::{FnServer, Seen};
use crate::util::{client, Gateway};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::io::Write;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Last = Arc<Mutex<Option<(String, String, http::HeaderMap, String)>>>;

fn products() -> Value {
    let items: Vec<Value> = (1..=25)
        .map(|i| {
            json!({
                "id": i,
                "name": format!("p{:02}", 26 - i),
                "price": i * 10,
                "status": if i % 5 == 0 { "gone" } else { "active" },
                "secret": "x",
            })
        })
        .collect();
    json!({ "data": { "items": items }, "source": "catalog" })
}

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
        let xml_ct = ("content-type", "application/xml".to_string());
        match path {
            "/products" => (200, vec![json_ct], products().to_string()),
            "/order.xml" => (
                200,
                vec![xml_ct],
                r#"<?xml version="1.0"?><order id="7"><line>a</line><line>b</line><total>9.5</total></order>"#.into(),
            ),
            "/laughs.xml" => (
                200,
                vec![xml_ct],
                r#"<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><l>&b;</l>"#.into(),
            ),
            "/echo" => (
                200,
                vec![(
                    "content-type",
                    s.headers
                        .get("content-type")
                        .map_or("", |v| v.to_str().unwrap())
                        .to_string(),
                )],
                s.body.clone(),
            ),
            "/notarray" => (200, vec![json_ct], "{\"data\": 1}".into()),
            _ => (200, vec![json_ct], json!({ "user": { "id": 1, "tags": ["a", "b"] } }).to_string()),
        }
    })
    .await
}

fn routes(o: &FnServer) -> String {
    format!(
        r#"upstreams:
  o: {{ targets: [ {{ addr: "{a}" }} ] }}
routes:
  - name: products
    match: {{ path: /products }}
    upstream: o
    plugins:
      - cache: {{ x_cache: true, ttl: 60s }}
      - transform:
          response:
            json: [ {{ remove: "data.items[*].secret" }} ]
            shape:
              target: data.items
              filter: [status, price, name]
              sort: [price, name]
              fields: [id, name, price]
              paginate: {{ default_per_page: 10, max_per_page: 20 }}
              wrap: {{ key: items }}
  - name: plain
    match: {{ path: /notarray }}
    upstream: o
    plugins:
      - transform: {{ response: {{ shape: {{ target: data.items, sort: [id] }} }} }}
  - name: to-xml
    match: {{ path: /user }}
    upstream: o
    plugins:
      - transform: {{ response: {{ convert: xml }}, xml: {{ root: doc }} }}
  - name: negotiate
    match: {{ path: /n/user }}
    upstream: o
    rewrite: {{ path: /user }}
    plugins:
      - transform: {{ response: {{ convert: negotiate }} }}
  - name: from-xml
    match: {{ path: /order.xml }}
    upstream: o
    plugins:
      - transform: {{ response: {{ convert: json }}, xml: {{ types: infer, keep_root: true }} }}
  - name: laughs-pass
    match: {{ path: /laughs.xml }}
    upstream: o
    plugins:
      - transform: {{ response: {{ convert: json }} }}
  - name: laughs-error
    match: {{ path: /strict/laughs.xml }}
    upstream: o
    rewrite: {{ path: /laughs.xml }}
    plugins:
      - transform: {{ response: {{ convert: json }}, on_error: error }}
  - name: req-to-xml
    match: {{ path: /soap }}
    upstream: o
    rewrite: {{ path: /echo }}
    plugins:
      - transform: {{ request: {{ convert: xml }}, response: {{ convert: json }}, xml: {{ root: Envelope }} }}
  - name: req-from-xml
    match: {{ path: /xml-in }}
    upstream: o
    rewrite: {{ path: /echo }}
    plugins:
      - transform: {{ request: {{ convert: json }} }}
"#,
        a = o.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_are_filtered_sorted_paged_trimmed_and_wrapped() {
    let last: Last = Arc::default();
    let o = origin(last.clone()).await;
    let gw = Gateway::start(&routes(&o));
    let c = client();

    let r = c
        .get(gw.url("/products?status=active&price[ge]=50&sort=-price&fields=id,price&page=2&per_page=5&q=keep"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["x-total-count"], "16", "active items with price >= 50");
    let link = h["link"].to_str().unwrap();
    assert!(
        link.contains("</products?status=active&price%5Bge%5D=50&sort=-price&fields=id,price&q=keep&page=3&per_page=5>; rel=\"next\""),
        "{link}"
    );
    // RFC 3986: `[` and `]` are not allowed in a query; the client's raw brackets are encoded.
    assert!(!link.contains('[') && !link.contains(']'), "{link}");
    assert!(link.contains("page=1&per_page=5>; rel=\"prev\""), "{link}");
    assert!(link.contains("page=4&per_page=5>; rel=\"last\""), "{link}");
    let text = r.text().await.unwrap();
    assert_eq!(h["content-length"], text.len().to_string());
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!({ "items": [
            { "id": 18, "price": 180 }, { "id": 17, "price": 170 }, { "id": 16, "price": 160 },
            { "id": 14, "price": 140 }, { "id": 13, "price": 130 }
        ], "meta": { "total": 16, "page": 2, "per_page": 5, "pages": 4 } })
    );
    // The upstream never sees the shaping parameters; its other parameters pass.
    let (_, uri, _, _) = last.lock().clone().unwrap();
    assert_eq!(uri, "/products?q=keep");

    // Default page size, default order; the upstream request is the same (shaping parameters
    // stripped), so this is a cache hit, shaped again.
    let hits = o.hits();
    let r = c
        .get(gw.url("/products?name[prefix]=p0&q=keep"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache"], "HIT");
    let v: Value = r.json().await.unwrap();
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["p09", "p08", "p07", "p06", "p05", "p04", "p03", "p02", "p01"]
    );
    assert!(v["items"][0].get("secret").is_none());
    assert_eq!(o.hits(), hits, "served from the cache");

    // Invalid client parameters: 400 problem+json listing what is allowed; no upstream call.
    for (q, want) in [
        ("sort=secret", "allowed: price, name"),
        ("fields=secret", "allowed: id, name, price"),
        ("secret[eq]=x", "allowed: status, price, name"),
        (
            "price[like]=1",
            "allowed: eq, ne, lt, le, gt, ge, in, contains, prefix",
        ),
        ("per_page=21", "between 1 and 20"),
        ("page=9", "out of range: there are 3 page(s)"),
    ] {
        let r = c
            .get(gw.url(&format!("/products?{q}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        // A client error in a query is no reason to drop a keep-alive connection.
        assert_ne!(
            r.headers().get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "{q}"
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["type"], "urn:postern:problem:invalid-query");
        assert!(v["detail"].as_str().unwrap().contains(want), "{q}: {v}");
    }

    // Each request counted once (its subrequest is not).
    let m = gw.metrics();
    assert!(
        m.contains("postern_http_requests_total{route=\"products\",status_class=\"2xx\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("postern_http_requests_total{route=\"products\",status_class=\"4xx\"} 6"),
        "{m}"
    );
    // An upstream answer without the array passes unchanged (on_error: pass).
    let r = c.get(gw.url("/notarray")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "{\"data\": 1}");
    assert!(gw.metrics().contains("postern_transform_errors_total{phase=\"response\",reason=\"shape_target\",route=\"plain\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_xml_convert_both_ways_and_negotiate() {
    let last: Last = Arc::default();
    let o = origin(last.clone()).await;
    let gw = Gateway::start(&routes(&o));
    let c = client();

    let r = c.get(gw.url("/user")).send().await.unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/xml; charset=utf-8"
    );
    let len = r.headers()["content-length"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert_eq!(len, body.len().to_string());
    assert_eq!(
        body,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><doc><user><id>1</id><tags>a</tags><tags>b</tags></user></doc>"
    );

    // XML upstream to JSON, typed.
    let r = c.get(gw.url("/order.xml")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "order": { "@id": 7, "line": ["a", "b"], "total": 9.5 } })
    );

    // Negotiation: XML only when Accept prefers it; Vary: Accept either way.
    for (accept, xml) in [
        (None, false),
        (Some("application/json"), false),
        (Some("application/xml"), true),
        (Some("application/json;q=0.5, text/xml"), true),
        (Some("*/*"), false),
    ] {
        let mut req = c.get(gw.url("/n/user"));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.headers()["vary"], "Accept");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert_eq!(ct.contains("xml"), xml, "{accept:?}: {ct}");
    }

    // Requests: a JSON body reaches an XML upstream as XML, and the XML answer comes back JSON.
    let r = c
        .post(gw.url("/soap"))
        .header("content-type", "application/json")
        .body(r#"{"Body":{"GetUser":{"@id":"5"}}}"#)
        .send()
        .await
        .unwrap();
    let (_, _, headers, body) = last.lock().clone().unwrap();
    assert_eq!(headers["content-type"], "application/xml; charset=utf-8");
    assert_eq!(
        body,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Envelope><Body><GetUser id=\"5\"></GetUser></Body></Envelope>"
    );
    assert_eq!(headers["content-length"], body.len().to_string());
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({ "Body": { "GetUser": { "@id": "5" } } })
    );
    // and an XML body reaches a JSON upstream as JSON.
    c.post(gw.url("/xml-in"))
        .header("content-type", "text/xml")
        .body("<a><b>1</b><b>2</b></a>")
        .send()
        .await
        .unwrap();
    let (_, _, headers, body) = last.lock().clone().unwrap();
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({ "b": ["1", "2"] })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_xml_is_refused() {
    let last: Last = Arc::default();
    let o = origin(last.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = Gateway::start(&format!(
        "observability:\n  access_log: {{ path: \"{}\" }}\n{}",
        log.display(),
        routes(&o)
    ));
    let c = client();
    let hits = o.hits();
    for (body, want) in [
        (
            r#"<!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><l>&b;</l>"#.to_string(),
            "DOCTYPE",
        ),
        (
            r#"<!DOCTYPE f [<!ENTITY x SYSTEM "file:///etc/passwd">]><f>&x;</f>"#.to_string(),
            "DOCTYPE",
        ),
        ("<a>&x;</a>".to_string(), "entity &x; is not defined"),
        (
            "<a>".repeat(100) + &"</a>".repeat(100),
            "nested deeper than 64",
        ),
        ("<a><b></a>".to_string(), "malformed"),
    ] {
        let r = c
            .post(gw.url("/xml-in"))
            .header("content-type", "application/xml")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert!(v["detail"].as_str().unwrap().contains(want), "{v}");
    }
    assert_eq!(o.hits(), hits, "no upstream call");
    // From an upstream: passed unchanged and counted, or a 502 with on_error: error.
    let r = c.get(gw.url("/laughs.xml")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/xml");
    assert!(r.text().await.unwrap().starts_with("<!DOCTYPE"));
    let r = c.get(gw.url("/strict/laughs.xml")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(gw.metrics().contains("reason=\"xml_dtd\""));
    // One access-log line per deferred request (not one more for its subrequest), naming
    // why the body was not transformed, with the upstream's facts.
    let lines = crate::util::read_lines(&log, 7);
    assert_eq!(lines.len(), 7, "{lines:?}");
    let last_two = &lines[5..];
    assert_eq!(last_two[0]["transform"], "xml_dtd");
    assert_eq!(last_two[0]["status"], 200);
    assert_eq!(last_two[0]["tries"], 1);
    assert!(last_two[0]["target"].is_string(), "{}", last_two[0]);
    assert_eq!(last_two[1]["status"], 502);
}

/// An origin that answers every request with `response` (raw bytes), for bodies FnServer
/// cannot make: chunked, binary.
async fn raw_origin(response: Vec<u8>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let response = Arc::new(response);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                continue;
            };
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        buf.clear();
                        if s.write_all(&response).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn chunked_json(total: usize) -> Vec<u8> {
    let doc = json!({ "pad": "z".repeat(total), "secret": 1 })
        .to_string()
        .into_bytes();
    let mut out =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec();
    for c in doc.chunks(64 << 10) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_mib_against_a_one_mib_cap_and_compressed_upstreams() {
    let big = raw_origin(chunked_json(5 << 20)).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(br#"{"secret":1,"a":2}"#).unwrap();
    let gz = gz.finish().unwrap();
    let mut zipped = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\ncontent-length: {}\r\n\r\n",
        gz.len()
    )
    .into_bytes();
    zipped.extend_from_slice(&gz);
    let zipped_origin = raw_origin(zipped).await;
    let t = |extra: &str| {
        format!("      - transform: {{ response: {{ json: [ {{ remove: secret }} ] }}, max_body: 1MiB{extra} }}\n")
    };
    let gw = Gateway::start(&format!(
        r#"upstreams:
  big: {{ targets: [ {{ addr: "{big}" }} ] }}
  gz: {{ targets: [ {{ addr: "{zipped_origin}" }} ] }}
routes:
  - name: pass
    match: {{ path: /pass }}
    upstream: big
    plugins:
{}  - name: error
    match: {{ path: /error }}
    upstream: big
    plugins:
{}  - name: gz
    match: {{ path: /gz }}
    upstream: gz
    plugins:
{}"#,
        t(""),
        t(", on_oversize: error"),
        t("")
    ));
    let c = client();
    // Pass: all 5 MiB arrive untransformed and intact.
    let r = c.get(gw.url("/pass")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["secret"], 1);
    assert_eq!(v["pad"].as_str().unwrap().len(), 5 << 20);
    // Error: a 502 problem+json before any of it is sent (the length was unknown: chunked).
    let r = c.get(gw.url("/error")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert!(gw.metrics().contains("reason=\"oversize\",route=\"error\""));
    // A gzip body (the upstream ignored Accept-Encoding: identity) passes untouched, counted.
    let r = c.get(gw.url("/gz")).send().await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.bytes().await.unwrap().as_ref(), gz.as_slice());
    assert!(gw.metrics().contains("reason=\"encoded\",route=\"gz\""));
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_compressed_as_negotiated() {
    let page = "<p>compress me</p>".repeat(200);
    let last: Last = Arc::default();
    let seen = last.clone();
    let body = page.clone();
    let o = FnServer::start(move |s: &Seen| {
        *seen.lock() = Some((
            s.method.clone(),
            s.uri.clone(),
            s.headers.clone(),
            s.body.clone(),
        ));
        let html = ("content-type", "text/html".to_string());
        match s.uri.as_str() {
            "/small" => (200, vec![html], "tiny".into()),
            "/png" => (
                200,
                vec![("content-type", "image/png".into())],
                body.clone(),
            ),
            "/keep" => (
                200,
                vec![html, ("cache-control", "no-transform".into())],
                body.clone(),
            ),
            "/range" => (
                206,
                vec![html, ("content-range", format!("bytes 0-9/{}", body.len()))],
                body[..10].to_string(),
            ),
            "/products" => (
                200,
                vec![("content-type", "application/json".into())],
                products().to_string(),
            ),
            _ => (200, vec![html, ("etag", "\"e1\"".into())], body.clone()),
        }
    })
    .await;
    let gw = Gateway::start_full(
        &format!(
            r#"upstreams:
  o: {{ targets: [ {{ addr: "{a}" }} ] }}
routes:
  - name: off
    match: {{ path: /off/* }}
    upstream: o
    rewrite: {{ strip_prefix: /off }}
    plugins:
      - compression: {{ enabled: false }}
  - name: gzip-only
    match: {{ path: /gz/* }}
    upstream: o
    rewrite: {{ strip_prefix: /gz }}
    plugins:
      - compression: {{ algorithms: [gzip], levels: {{ gzip: 1 }}, min_size: 10B }}
  - name: products
    match: {{ path: /products }}
    upstream: o
    plugins:
      - transform: {{ response: {{ shape: {{ target: data.items, paginate: {{ default_per_page: 20 }} }} }} }}
  - name: all
    match: {{ path: /* }}
    upstream: o
"#,
            a = o.addr
        ),
        "",
        "  compression: { min_size: 256B }\n",
    );
    let c = client();
    let get = |path: &str, accept: Option<&str>| {
        let mut r = c.get(gw.url(path));
        if let Some(a) = accept {
            r = r.header("accept-encoding", a);
        }
        r.send()
    };
    let r = get("/page", Some("gzip")).await.unwrap();
    let h = r.headers().clone();
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["vary"], "Accept-Encoding");
    assert_eq!(h["etag"], "W/\"e1\"");
    assert!(h.get("content-length").is_none());
    let bytes = r.bytes().await.unwrap();
    assert!(bytes.len() < page.len() / 4);
    assert_eq!(gunzip(&bytes), page.as_bytes());
    // q-values, then the server's preference (br, zstd, gzip).
    for (accept, want) in [
        ("gzip;q=0.5, br", Some("br")),
        ("gzip, zstd", Some("zstd")),
        ("br;q=0, *", Some("zstd")),
        ("gzip;q=0", None),
        ("identity", None),
    ] {
        let r = get("/page", Some(accept)).await.unwrap();
        let ce = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        assert_eq!(ce.as_deref(), want, "{accept}");
        assert_eq!(r.headers()["vary"], "Accept-Encoding");
    }
    let r = get("/page", None).await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.text().await.unwrap(), page);
    // Never: small, not a listed type, no-transform, partial content, HEAD, switched off.
    for path in ["/small", "/png", "/keep", "/range", "/off/page"] {
        let r = get(path, Some("gzip, br")).await.unwrap();
        assert!(r.headers().get("content-encoding").is_none(), "{path}");
        assert!(r.headers().get("vary").is_none(), "{path}");
    }
    let r = c
        .head(gw.url("/page"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    // A route's own settings: gzip only, even when br is preferred.
    let r = get("/gz/page", Some("br, gzip;q=0.1")).await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(gunzip(&r.bytes().await.unwrap()), page.as_bytes());
    // A shaped (deferred) response is compressed after the transform.
    let r = get("/products?per_page=5", Some("gzip")).await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["x-total-count"], "25");
    let v: Value = serde_json::from_slice(&gunzip(&r.bytes().await.unwrap())).unwrap();
    assert_eq!(v["data"]["items"].as_array().unwrap().len(), 5);
    // A compressed request body passes to the upstream as it is.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"hello").unwrap();
    let gz = gz.finish().unwrap();
    c.post(gw.url("/upload"))
        .header("content-encoding", "gzip")
        .body(gz.clone())
        .send()
        .await
        .unwrap();
    let (_, _, headers, _) = last.lock().clone().unwrap();
    assert_eq!(headers["content-encoding"], "gzip");
    assert_eq!(headers["content-length"], gz.len().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_routes_carry_request_bodies_of_every_size() {
    let last: Last = Arc::default();
    let o = origin(last.clone()).await;
    let gw = Gateway::start(&format!(
        r#"upstreams:
  o: {{ targets: [ {{ addr: "{}" }} ] }}
routes:
  - name: both
    match: {{ path: /both }}
    upstream: o
    rewrite: {{ path: /echo }}
    plugins:
      - transform: {{ request: {{ json: [ {{ remove: debug }} ] }}, response: {{ convert: xml, json: [ {{ remove: pad }} ] }} }}
  - name: plain-body
    match: {{ path: /raw }}
    upstream: o
    rewrite: {{ path: /echo }}
    plugins:
      - transform: {{ response: {{ convert: xml }} }}
"#,
        o.addr
    ));
    let c = client();
    // Small (read ahead and transformed before the subrequest), large with a length, and
    // chunked (streamed through the subrequest's body stage).
    for (size, chunked) in [(10usize, false), (200 << 10, false), (200 << 10, true)] {
        let doc = json!({ "pad": "p".repeat(size), "debug": true, "keep": 1 }).to_string();
        let text = if chunked {
            let mut raw = String::from("POST /both HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
            for part in doc.as_bytes().chunks(16 << 10) {
                raw.push_str(&format!(
                    "{:x}\r\n{}\r\n",
                    part.len(),
                    std::str::from_utf8(part).unwrap()
                ));
            }
            raw.push_str("0\r\n\r\n");
            let port = gw.port;
            let resp = tokio::task::spawn_blocking(move || crate::util::raw(port, &raw))
                .await
                .unwrap();
            assert_eq!(crate::util::status_of(&resp), 200, "{resp}");
            resp
        } else {
            let r = c
                .post(gw.url("/both"))
                .header("content-type", "application/json")
                .body(doc.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{size}");
            r.text().await.unwrap()
        };
        assert!(
            text.ends_with("<root><keep>1</keep></root>"),
            "{size} {chunked}: {}",
            &text[..text.len().min(300)]
        );
        let (_, _, _, body) = last.lock().clone().unwrap();
        let sent: Value = serde_json::from_str(&body).unwrap();
        assert!(
            sent.get("debug").is_none() && sent["pad"].as_str().unwrap().len() == size,
            "{size} {chunked}"
        );
    }
    // A body no plugin reads passes through the subrequest unchanged.
    let r = c
        .post(gw.url("/raw"))
        .header("content-type", "application/json")
        .body("{\"a\":[1,2]}")
        .send()
        .await
        .unwrap();
    assert!(r
        .text()
        .await
        .unwrap()
        .ends_with("<root><a>1</a><a>2</a></root>"));
    let (_, _, _, body) = last.lock().clone().unwrap();
    assert_eq!(body, "{\"a\":[1,2]}");
}
