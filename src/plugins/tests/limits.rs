//! `rate_limit`, `concurrency_limit` and `fault`.

use super::*;
use std::time::Duration;

async fn hit(r: &Route, headers: &[(&str, &str)], c: &mut RequestCtx) -> Result<(), Reply> {
    match run(r, &mut req("GET", "/", headers), c).await.unwrap() {
        None => Ok(()),
        Some(reply) => Err(reply),
    }
}

#[tokio::test]
async fn rate_limit_allows_the_burst_then_429_with_retry_after_per_key() {
    let r = route(
        "",
        "- rate_limit: { key: \"header:x-user\", limits: [ { requests: 3, per: 1m } ] }",
    );
    for _ in 0..3 {
        assert!(hit(&r, &[("x-user", "a")], &mut ctx()).await.is_ok());
    }
    let refused = hit(&r, &[("x-user", "a")], &mut ctx()).await.unwrap_err();
    assert_eq!(refused.status, 429);
    // One request every 20 s refills the bucket: the next one is allowed within 20 s.
    let wait: u64 = field(&refused, "retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&wait), "retry-after {wait}");
    let problem: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(problem["status"], 429);
    // Another key has its own bucket; a request without the key is not limited (skip).
    assert!(hit(&r, &[("x-user", "b")], &mut ctx()).await.is_ok());
    for _ in 0..5 {
        assert!(hit(&r, &[], &mut ctx()).await.is_ok());
    }
}

#[tokio::test]
async fn rate_limit_every_limit_must_pass_and_a_refusal_charges_none() {
    let r = route(
        "",
        "- rate_limit:\n    key: client_ip\n    limits: [ { requests: 2, per: 1s }, { requests: 3, per: 1h } ]",
    );
    let from = |ip: &str| ctx_from(ip);
    assert!(hit(&r, &[], &mut from("10.0.0.1")).await.is_ok());
    assert!(hit(&r, &[], &mut from("10.0.0.1")).await.is_ok());
    // The per-second limit refuses the third at once; the hourly one was not charged for it.
    assert_eq!(
        hit(&r, &[], &mut from("10.0.0.1"))
            .await
            .unwrap_err()
            .status,
        429
    );
    assert!(hit(&r, &[], &mut from("10.0.0.2")).await.is_ok());
}

#[tokio::test]
async fn rate_limit_keys_by_consumer_and_claim_and_shares_a_bucket_for_missing_keys() {
    let r = route(
        "",
        "- rate_limit: { key: [consumer, \"claim:tenant\"], limits: [ { requests: 1, per: 1h } ], missing_key: shared }",
    );
    let with_claim = |who: &str, tenant: &str| {
        let mut c = ctx_as(who, &[]);
        let mut claims = serde_json::Map::new();
        claims.insert("tenant".into(), tenant.into());
        c.claims = Some(Arc::new(claims));
        c
    };
    assert!(hit(&r, &[], &mut with_claim("alice", "t1")).await.is_ok());
    assert!(hit(&r, &[], &mut with_claim("alice", "t2")).await.is_ok());
    assert!(hit(&r, &[], &mut with_claim("bob", "t1")).await.is_ok());
    assert!(hit(&r, &[], &mut with_claim("alice", "t1")).await.is_err());
    // Without a consumer: one shared bucket for all such requests.
    assert!(hit(&r, &[], &mut ctx()).await.is_ok());
    assert!(hit(&r, &[], &mut ctx_from("10.9.9.9")).await.is_err());
}

#[tokio::test]
async fn rate_limit_headers_follow_the_profile() {
    let r = route(
        "",
        "- rate_limit: { name: api, headers: both, limits: [ { requests: 10, per: 1m } ] }",
    );
    let mut c = ctx();
    hit(&r, &[], &mut c).await.unwrap();
    let resp = respond(&r, 200, &mut c);
    let h = |n: &str| resp.headers.get(n).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(h("ratelimit").as_deref(), Some("\"api\";r=9;t=6"));
    assert_eq!(h("ratelimit-policy").as_deref(), Some("\"api\";q=10;w=60"));
    assert_eq!(h("x-ratelimit-limit").as_deref(), Some("10"));
    assert_eq!(h("x-ratelimit-remaining").as_deref(), Some("9"));

    let quiet = route(
        "",
        "- rate_limit: { headers: none, limits: [ { requests: 10, per: 1m } ] }",
    );
    let mut c = ctx();
    hit(&quiet, &[], &mut c).await.unwrap();
    let resp = respond(&quiet, 200, &mut c);
    assert!(resp.headers.get("ratelimit").is_none());
}

#[tokio::test(start_paused = true)]
async fn rate_limit_delay_holds_a_request_instead_of_refusing_it() {
    let r = route(
        "",
        "- rate_limit: { action: delay, max_delay: 5s, limits: [ { requests: 1, per: 2s } ] }",
    );
    assert!(hit(&r, &[], &mut ctx()).await.is_ok());
    let before = tokio::time::Instant::now();
    assert!(hit(&r, &[], &mut ctx()).await.is_ok());
    let held = before.elapsed();
    assert!(held >= Duration::from_millis(1900), "held {held:?}");
}

#[test]
fn rate_limit_checks_its_configuration() {
    let e = check_error("- rate_limit: { key: \"nope:x\", limits: [ { requests: 1, per: 1s } ] }");
    assert!(
        e.contains("rate_limit.key") && e.contains("invalid key part"),
        "{e}"
    );
    let e = check_error("- rate_limit: { limits: [] }");
    assert!(e.contains("rate_limit.limits"), "{e}");
}

#[tokio::test]
async fn concurrency_limit_counts_requests_until_their_context_ends() {
    let r = route(
        "",
        "- concurrency_limit: { key: \"header:x-user\", max: 2, status: 503 }",
    );
    let mut first = ctx();
    let mut second = ctx();
    assert!(hit(&r, &[("x-user", "a")], &mut first).await.is_ok());
    assert!(hit(&r, &[("x-user", "a")], &mut second).await.is_ok());
    let refused = hit(&r, &[("x-user", "a")], &mut ctx()).await.unwrap_err();
    assert_eq!(refused.status, 503);
    assert_eq!(field(&refused, "retry-after"), Some("1"));
    assert!(
        hit(&r, &[("x-user", "b")], &mut ctx()).await.is_ok(),
        "other key"
    );
    drop(first);
    assert!(
        hit(&r, &[("x-user", "a")], &mut ctx()).await.is_ok(),
        "a permit came back"
    );
}

#[tokio::test]
async fn fault_aborts_only_requests_with_the_header() {
    let r = route(
        "",
        "- fault: { abort: { status: 503, percent: 100 }, when_header: x-chaos }",
    );
    assert!(hit(&r, &[], &mut ctx()).await.is_ok());
    let injected = hit(&r, &[("x-chaos", "1")], &mut ctx()).await.unwrap_err();
    assert_eq!(injected.status, 503);
    assert_eq!(
        field(&injected, "content-type"),
        Some("application/problem+json")
    );
    let body: serde_json::Value = serde_json::from_slice(&injected.body).unwrap();
    assert_eq!(body["type"], "urn:postern:problem:fault-injected");
    assert_eq!(body["request_id"], "req-1");
}

#[tokio::test]
async fn fault_with_a_seed_repeats_the_same_decisions() {
    let plugin = "- fault: { abort: { status: 500, percent: 50 }, seed: 7 }";
    let mut runs = Vec::new();
    for _ in 0..2 {
        let r = route("", plugin);
        let mut outcomes = Vec::new();
        for _ in 0..64 {
            outcomes.push(hit(&r, &[], &mut ctx()).await.is_ok());
        }
        runs.push(outcomes);
    }
    assert_eq!(runs[0], runs[1]);
    let aborted = runs[0].iter().filter(|ok| !**ok).count();
    assert!((10..=54).contains(&aborted), "{aborted} of 64 at 50%");
}

#[tokio::test(start_paused = true)]
async fn fault_delays_the_share_it_is_given() {
    let r = route("", "- fault: { delay: { duration: 3s, percent: 100 } }");
    let before = tokio::time::Instant::now();
    assert!(hit(&r, &[], &mut ctx()).await.is_ok());
    assert!(before.elapsed() >= Duration::from_secs(3));
}

#[test]
fn fault_refuses_a_status_that_is_not_an_error() {
    let e = check_error("- fault: { abort: { status: 200, percent: 10 } }");
    assert!(e.contains("fault.abort.status"), "{e}");
}
