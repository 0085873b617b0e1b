//! `cache`: the policy it gives the gateway's cache phases, and `PURGE`.

use super::*;
use crate::cache::{bypassed, url, QueryKey};
use std::time::Duration;

#[test]
fn the_policy_follows_the_configuration() {
    let r = route(
        "",
        "- cache:\n    ttl: 30s\n    max_ttl: 1h\n    stale_while_revalidate: 10s\n    stale_if_error: 1m\n    key: { host: false, query: [page, sort], headers: [accept-language], consumer: true }\n    bypass: { headers: [x-no-cache], cookies: [session] }\n    x_cache: true",
    );
    let p = r.cache.as_ref().expect("a cache policy");
    assert_eq!(p.ttl, Some(Duration::from_secs(30)));
    assert_eq!(p.max_ttl, Duration::from_secs(3600));
    assert_eq!(p.stale_while_revalidate, Duration::from_secs(10));
    assert_eq!(p.stale_if_error, Duration::from_secs(60));
    assert!(!p.host_in_key && p.consumer_in_key && p.x_cache);
    assert!(
        matches!(&p.query, QueryKey::Only(q) if q == &["page".to_string(), "sort".to_string()])
    );
    assert_eq!(p.headers[0].as_str(), "accept-language");
    // The URL an entry is filed under keeps only the key's query parameters, in order.
    let q = req("GET", "/items?sort=asc&x=1&page=2", &[]);
    assert_eq!(
        url(p, &q, Some("Shop.Example:8443")),
        "/items?page=2&sort=asc"
    );
    // Bypass by header or cookie.
    assert!(bypassed(p, &req("GET", "/", &[("x-no-cache", "1")])));
    assert!(bypassed(
        p,
        &req("GET", "/", &[("cookie", "a=1; session=xyz")])
    ));
    assert!(!bypassed(p, &req("GET", "/", &[("cookie", "sessionx=1")])));
}

#[test]
fn the_host_is_in_the_url_by_default_lower_case_without_port() {
    let r = route("", "- cache: { ttl: 5s }");
    let p = r.cache.as_ref().unwrap();
    assert!(matches!(p.query, QueryKey::All));
    let q = req("GET", "/a?b=2&a=1", &[]);
    assert_eq!(
        url(p, &q, Some("Shop.Example:8443")),
        "shop.example/a?a=1&b=2"
    );
}

#[tokio::test]
async fn purge_is_refused_from_elsewhere_and_allowed_by_address_or_token() {
    let r = route(
        "",
        "- cache: { ttl: 5s, purge: { enabled: true, allow: [10.0.0.0/8], token: purge-me } }",
    );
    // Not a PURGE: the cache phases handle it.
    assert_eq!(
        status(&r, &mut req("GET", "/x", &[]), &mut ctx_from("192.0.2.1")).await,
        200
    );
    let mut outside = req("PURGE", "/x", &[("host", "shop")]);
    assert_eq!(
        status(&r, &mut outside, &mut ctx_from("192.0.2.1")).await,
        403
    );
    let mut wrong = req(
        "PURGE",
        "/x",
        &[("host", "shop"), ("authorization", "Bearer nope")],
    );
    assert_eq!(
        status(&r, &mut wrong, &mut ctx_from("192.0.2.1")).await,
        403
    );
    for (ip, auth) in [("10.1.1.1", None), ("192.0.2.1", Some("Bearer purge-me"))] {
        let mut headers = vec![("host", "shop")];
        headers.extend(auth.map(|a| ("authorization", a)));
        let reply = run(&r, &mut req("PURGE", "/x?a=1", &headers), &mut ctx_from(ip))
            .await
            .unwrap()
            .expect("answered by the plugin");
        assert_eq!(reply.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["url"], "shop/x?a=1");
    }
}

#[test]
fn a_bad_query_mode_names_its_key() {
    let e = check_error("- cache: { ttl: 5s, key: { query: some } }");
    assert!(
        e.contains("cache.key.query") && e.contains("all, none"),
        "{e}"
    );
}
