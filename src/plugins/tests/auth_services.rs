//! `forward_auth` and `oauth2_introspection`: what an answer of the service means and what
//! it does to the request. The transport (an HTTP call) is covered end to end in
//! tests/auth.rs; here the decisions, without sockets.

use super::*;
use crate::plugins::forward_auth::{self, Decision, ForwardAuth};
use crate::plugins::oauth2_introspection::{self as introspection, Answer, Introspection};
use http::{HeaderMap, HeaderValue};
use serde_json::json;
use std::time::Duration;

fn forward_auth(yaml: &str) -> ForwardAuth {
    let c: forward_auth::Config = yaml_serde::from_str(yaml).unwrap();
    with_build_ctx("- { name: alice, groups: [staff] }", |b| {
        ForwardAuth::new(&c, b).unwrap_or_else(|e| panic!("{e:?}"))
    })
}

fn answer_headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn forward_auth_2xx_copies_headers_names_the_consumer_and_removes_client_copies() {
    let p = forward_auth(
        "{ url: \"http://127.0.0.1:1/check\", response_headers: [x-user, x-roles], consumer_header: x-user }",
    );
    let d = p.decide(
        200,
        &answer_headers(&[
            ("x-user", "alice"),
            ("x-roles", "a"),
            ("x-roles", "b"),
            ("x-other", "no"),
        ]),
        bytes::Bytes::new(),
    );
    let mut q = req("GET", "/", &[("x-user", "forged"), ("x-roles", "admin")]);
    let mut c = ctx();
    assert!(matches!(p.apply(d, &mut q, &mut c), Flow::Continue));
    assert_eq!(header(&q, "x-user"), Some("alice"));
    let roles: Vec<_> = q
        .headers
        .get_all("x-roles")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(roles, ["a", "b"]);
    assert!(q.headers.get("x-other").is_none());
    // A consumer of the configuration keeps its groups; an unknown name is a bare consumer.
    assert_eq!(c.consumer.as_ref().unwrap().groups, ["staff"]);
    let d = p.decide(
        204,
        &answer_headers(&[("x-user", "zed")]),
        bytes::Bytes::new(),
    );
    let mut c = ctx();
    p.apply(d, &mut req("GET", "/", &[]), &mut c);
    assert_eq!(c.consumer.unwrap().name, "zed");
}

#[test]
fn forward_auth_refusals_pass_back_status_body_and_only_safe_headers() {
    let p = forward_auth("{ url: \"http://127.0.0.1:1/check\" }");
    let h = answer_headers(&[
        ("www-authenticate", "Bearer realm=x"),
        ("location", "https://login/"),
        ("x-internal", "secret"),
        ("set-cookie", "a=1"),
    ]);
    for (status, want) in [(401, 401), (302, 302), (503, 503), (100, 403), (600, 403)] {
        let Decision::Refuse(r) = p.decide(status, &h, bytes::Bytes::from_static(b"no")) else {
            panic!("{status} let the request through");
        };
        assert_eq!(r.status, want);
        assert_eq!(&r.body[..], b"no");
        assert_eq!(field(&r, "www-authenticate"), Some("Bearer realm=x"));
        assert_eq!(field(&r, "location"), Some("https://login/"));
        assert_eq!(field(&r, "set-cookie"), Some("a=1"));
        assert!(
            field(&r, "x-internal").is_none(),
            "internal headers stay inside"
        );
    }
}

#[test]
fn forward_auth_caches_by_the_headers_it_sends() {
    let p = forward_auth("{ url: \"http://127.0.0.1:1/check\", request_headers: [authorization] }");
    let a = p.cache_key(&req(
        "GET",
        "/a",
        &[("authorization", "Bearer 1"), ("x-other", "1")],
    ));
    let b = p.cache_key(&req(
        "POST",
        "/b",
        &[("authorization", "Bearer 1"), ("x-other", "2")],
    ));
    let c = p.cache_key(&req("GET", "/a", &[("authorization", "Bearer 2")]));
    assert_eq!(a, b, "only the headers sent to the service make the key");
    assert_ne!(a, c);
}

#[test]
fn forward_auth_checks_its_configuration() {
    let e = check_error("- forward_auth: { url: \"not a url\" }");
    assert!(e.contains("forward_auth.url"), "{e}");
}

fn introspection(extra: &str) -> Introspection {
    let c: introspection::Config = yaml_serde::from_str(&format!(
        "{{ url: \"http://127.0.0.1:1/introspect\", client_id: gw, client_secret: s, negative_ttl: 10s, cache_max_ttl: 5m{extra} }}"
    ))
    .unwrap();
    with_build_ctx("- { name: alice, groups: [staff] }", |b| {
        Introspection::new(&c, b).unwrap_or_else(|e| panic!("{e:?}"))
    })
}

fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn introspection_answers_are_active_until_exp_bounded_by_max_ttl() {
    let p = introspection("");
    let now = 1_000_000;
    let (a, ttl) = p.answer(claims(json!({ "active": true, "exp": now + 60 })), now);
    assert!(matches!(a, Answer::Active(_)));
    assert_eq!(ttl, Duration::from_secs(60));
    let (_, ttl) = p.answer(claims(json!({ "active": true, "exp": now + 86_400 })), now);
    assert_eq!(ttl, Duration::from_secs(300));
    let (_, ttl) = p.answer(claims(json!({ "active": true })), now);
    assert_eq!(ttl, Duration::from_secs(300));
    for inactive in [
        json!({ "active": false }),
        json!({ "active": "true" }),
        json!({}),
        json!({ "active": true, "exp": now }),
    ] {
        let (a, ttl) = p.answer(claims(inactive.clone()), now);
        assert!(matches!(a, Answer::Inactive), "{inactive}");
        assert_eq!(ttl, Duration::from_secs(10));
    }
}

#[test]
fn introspection_accepts_with_scopes_names_the_consumer_and_forwards_claims() {
    let p =
        introspection(", scopes_all: [read], forward_claims: { sub: x-user }, strip_token: true");
    let active = |v: serde_json::Value| Answer::Active(Arc::new(claims(v)));
    let mut q = req(
        "GET",
        "/",
        &[("authorization", "Bearer t"), ("x-user", "forged")],
    );
    let mut c = ctx();
    let flow = p
        .accept(
            active(json!({ "active": true, "sub": "alice", "scope": "read write" })),
            &mut q,
            &mut c,
        )
        .unwrap();
    assert!(matches!(flow, Flow::Continue));
    assert_eq!(c.consumer.as_ref().unwrap().groups, ["staff"]);
    assert_eq!(header(&q, "x-user"), Some("alice"));
    assert_eq!(header(&q, "authorization"), None);
    assert_eq!(c.claim("scope").as_deref(), Some("read write"));

    let refused = |a: Answer| {
        let mut c = ctx();
        match p.accept(a, &mut req("GET", "/", &[]), &mut c).unwrap() {
            Flow::Respond(r) => r.status,
            Flow::Continue => 200,
        }
    };
    assert_eq!(
        refused(active(json!({ "active": true, "scope": "write" }))),
        403
    );
    assert_eq!(refused(Answer::Inactive), 401);
}

#[tokio::test]
async fn introspection_without_a_bearer_token_is_401() {
    let r = route(
        "",
        "- oauth2_introspection: { url: \"http://127.0.0.1:1/i\", client_id: gw, client_secret: s }",
    );
    for auth in [None, Some("Basic abc"), Some("Bearer "), Some("Bearer")] {
        let headers: Vec<_> = auth.map(|a| ("authorization", a)).into_iter().collect();
        assert_eq!(
            status(&r, &mut req("GET", "/", &headers), &mut ctx()).await,
            401,
            "{auth:?}"
        );
    }
}
