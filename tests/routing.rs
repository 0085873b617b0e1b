//! Routing, forwarding headers, rewrites and gateway-generated errors.

use crate::util::upstream::Upstream;
use crate::util::{client, upstream_yaml, Gateway};
use serde_json::Value;

async fn json(resp: reqwest::Response) -> Value {
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_path_method_header_and_query() {
    let (users, admin, v2, beta, wild) = (
        Upstream::start("users").await,
        Upstream::start("admin").await,
        Upstream::start("v2").await,
        Upstream::start("beta").await,
        Upstream::start("wild").await,
    );
    let body = format!(
        r#"upstreams:
{}{}{}{}{}routes:
  - {{ name: v2, match: {{ path: /users/*, headers: {{ x-api-version: "2" }} }}, upstream: v2 }}
  - {{ name: beta, match: {{ path: /users/*, query: {{ beta: "true" }} }}, upstream: beta }}
  - {{ name: users, match: {{ path: /users/*, methods: [GET] }}, upstream: users }}
  - {{ name: admin, match: {{ path: /admin/* }}, upstream: admin }}
  - {{ name: wild, match: {{ host: "*.example.com", path: /users/* }}, upstream: wild }}
"#,
        upstream_yaml("users", &[users.addr], ""),
        upstream_yaml("admin", &[admin.addr], ""),
        upstream_yaml("v2", &[v2.addr], ""),
        upstream_yaml("beta", &[beta.addr], ""),
        upstream_yaml("wild", &[wild.addr], ""),
    );
    let gw = Gateway::start(&body);
    let c = client();
    let up = |r: Value| r["upstream"].as_str().unwrap().to_string();
    assert_eq!(
        up(json(c.get(gw.url("/users/1")).send().await.unwrap()).await),
        "users"
    );
    assert_eq!(
        up(json(
            c.get(gw.url("/users/1"))
                .header("x-api-version", "2")
                .send()
                .await
                .unwrap()
        )
        .await),
        "v2"
    );
    assert_eq!(
        up(json(c.get(gw.url("/users/1?beta=true")).send().await.unwrap()).await),
        "beta"
    );
    assert_eq!(
        up(json(
            c.get(gw.url("/users/1"))
                .header("host", "eu.example.com")
                .send()
                .await
                .unwrap()
        )
        .await),
        "wild"
    );
    // Method not allowed by any route for this path: no route.
    let r = c.delete(gw.url("/users/1")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p = json(r).await;
    assert_eq!(p["status"], 404);
    assert!(p["request_id"].as_str().is_some_and(|s| !s.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalized_paths_cannot_escape_their_route() {
    let (users, admin) = (
        Upstream::start("users").await,
        Upstream::start("admin").await,
    );
    let body = format!(
        "upstreams:\n{}{}routes:\n  - {{ match: {{ path: /users/* }}, upstream: users }}\n  - {{ match: {{ path: /admin/* }}, upstream: admin }}\n",
        upstream_yaml("users", &[users.addr], ""),
        upstream_yaml("admin", &[admin.addr], ""),
    );
    let gw = Gateway::start(&body);
    for (path, want) in [
        ("/admin/../users/1", "users"),
        ("/users/%2e%2e/admin/x", "admin"),
        ("/admin/%2E%2E/users", "users"),
        ("//users//1", "users"),
        ("/users/./../admin", "admin"),
    ] {
        let resp = gw.raw(&format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        ));
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
        let v: Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(v["upstream"], want, "{path}: {resp}");
        // The upstream sees the normalized path, never the dot segments.
        assert!(!v["uri"].as_str().unwrap_or("").contains(".."), "{path}");
    }
    assert_eq!(
        crate::util::status_of(
            &gw.raw("GET /a%zz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        ),
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_request_id_and_hop_by_hop() {
    let users = Upstream::start("users").await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: users }}\n",
        upstream_yaml("users", &[users.addr], "")
    );
    let gw = Gateway::start(&body);
    let c = client();
    let r = c
        .get(gw.url("/x"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("forwarded", "for=203.0.113.7")
        .header("x-request-id", "abc-123")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    assert!(
        r.headers().get("x-hop").is_none(),
        "Connection-nominated response headers are removed"
    );
    let v = json(r).await;
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(
        h["forwarded"],
        format!(
            "for=203.0.113.7, for=127.0.0.1;proto=http;host=\"127.0.0.1:{}\"",
            gw.port
        )
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{}", gw.port));
    assert_eq!(h["x-request-id"], "abc-123");
    assert!(
        h.get("x-secret").is_none(),
        "Connection-nominated request headers are removed"
    );
    // Generated when absent (or unsafe), and the same id both ways.
    let r = c
        .get(gw.url("/x"))
        .header("x-request-id", "bad id\twith tab")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(json(r).await["headers"]["x-request-id"], id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_rewrite_host_and_headers_plugin() {
    let users = Upstream::start("users").await;
    let body = format!(
        r#"upstreams:
{}routes:
  - match: {{ path: /api/* }}
    upstream: users
    rewrite: {{ strip_prefix: /api, host: users.internal }}
    plugins:
      - headers: {{ request: {{ set: {{ x-from: postern }}, remove: [x-debug] }}, response: {{ set: {{ x-served-by: postern }}, remove: [x-hop] }} }}
  - match: {{ path: "/v1/users/{{id}}/orders/*" }}
    upstream: users
    rewrite: {{ path: "/orders/{{*}}?user={{id}}" }}
"#,
        upstream_yaml("users", &[users.addr], "")
    );
    let body = body.replace("?user={id}", "/by-user/{id}");
    let gw = Gateway::start(&body);
    let c = client();
    let r = c
        .get(gw.url("/api/users/7?x=1"))
        .header("x-debug", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-served-by"], "postern");
    let v = json(r).await;
    assert_eq!(v["uri"], "/users/7?x=1");
    assert_eq!(v["headers"]["host"], "users.internal");
    assert_eq!(v["headers"]["x-from"], "postern");
    assert!(v["headers"].get("x-debug").is_none());
    let v = json(c.get(gw.url("/api")).send().await.unwrap()).await;
    assert_eq!(v["uri"], "/");
    let v = json(
        c.get(gw.url("/v1/users/42/orders/9/items?q=1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(v["uri"], "/orders/9/items/by-user/42?q=1");
    assert_eq!(
        v["headers"]["host"],
        format!("127.0.0.1:{}", gw.port),
        "Host is kept by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_limits_give_413() {
    let users = Upstream::start("users").await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /small }}, upstream: users, max_request_body: 10 }}\n  - {{ match: {{ path: /* }}, upstream: users }}\n",
        upstream_yaml("users", &[users.addr], "")
    );
    let gw = Gateway::start(&body);
    let c = client();
    let r = c
        .post(gw.url("/small"))
        .body("0123456789abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    assert_eq!(
        users.hits(),
        0,
        "checked against Content-Length before proxying"
    );
    // Chunked bodies are counted while streaming.
    let resp = gw.raw("POST /small HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n8\r\n01234567\r\n8\r\n01234567\r\n0\r\n\r\n");
    assert_eq!(crate::util::status_of(&resp), 413, "{resp}");
    let r = c
        .post(gw.url("/small"))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(gw.url("/other"))
        .body(vec![b'x'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["body_len"], 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_request_ids_can_be_turned_off() {
    let users = Upstream::start("users").await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: users }}\n",
        upstream_yaml("users", &[users.addr], "")
    );
    // The harness writes `server:` first; these keys go into the same section.
    let body = format!("  request_id: false\n  forwarded_headers: {{ x_forwarded_for: true, x_forwarded_proto: false, x_forwarded_host: false, forwarded: false }}\n{body}");
    let gw = Gateway::start(&body);
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert!(r.headers().get("x-request-id").is_none());
    let v = json(r).await;
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    for absent in [
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "x-request-id",
    ] {
        assert!(h.get(absent).is_none(), "{absent} should not be sent");
    }
}
