//! CORS end to end: preflights answered by the gateway, CORS fields on actual responses,
//! credentials, a disallowed origin, and `*`.

use crate::util::upstream::Upstream;
use crate::util::{client, upstream_yaml, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_actual_credentials_and_disallowed_origins() {
    let up = Upstream::start("u").await;
    let body = format!(
        r#"upstreams:
{}routes:
  - name: app
    match: {{ path: /app/* }}
    upstream: u
    plugins:
      - cors: {{ origins: ["https://app.example.com", "https://*.example.org"], methods: [GET, PUT], headers: [content-type, authorization], expose_headers: [x-request-id], credentials: true, max_age: 10m }}
  - name: open
    match: {{ path: /open/* }}
    upstream: u
    plugins:
      - cors: {{ origins: ["*"] }}
"#,
        upstream_yaml("u", &[up.addr], "")
    );
    let gw = Gateway::start(&body);
    let c = client();
    // Preflight of an allowed origin: answered by the gateway.
    let r = c
        .request(reqwest::Method::OPTIONS, gw.url("/app/x"))
        .header("origin", "https://a.example.org")
        .header("access-control-request-method", "PUT")
        .header(
            "access-control-request-headers",
            "Content-Type, Authorization",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://a.example.org");
    assert_eq!(h["access-control-allow-methods"], "GET, PUT");
    assert_eq!(
        h["access-control-allow-headers"],
        "content-type, authorization"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert!(h["vary"].to_str().unwrap().contains("Origin"));
    assert!(
        h.get("content-length").is_none(),
        "no Content-Length on a 204"
    );
    assert_eq!(up.hits(), 0, "no upstream call for a preflight");
    // Preflights that fail: another origin, a method or a header not allowed.
    for (origin, method, headers) in [
        ("https://evil.example.com", "PUT", "content-type"),
        ("https://app.example.com", "DELETE", "content-type"),
        ("https://app.example.com", "PUT", "x-secret"),
    ] {
        let r = c
            .request(reqwest::Method::OPTIONS, gw.url("/app/x"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        assert!(
            r.headers().get("access-control-allow-origin").is_none(),
            "{origin} {method} {headers}"
        );
    }
    // Actual request of an allowed origin.
    let r = c
        .get(gw.url("/app/x"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-expose-headers"], "x-request-id");
    assert!(h.get_all("vary").iter().any(|v| v == "Origin"));
    // A disallowed origin: no CORS fields (the browser blocks it), still Vary: Origin.
    let r = c
        .get(gw.url("/app/x"))
        .header("origin", "https://evil.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert!(r.headers().get_all("vary").iter().any(|v| v == "Origin"));
    // `*` without credentials: the answer does not depend on the origin.
    let r = c
        .get(gw.url("/open/x"))
        .header("origin", "https://anywhere.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(r
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    // Not a CORS request: nothing added.
    let r = c.get(gw.url("/app/x")).send().await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}
