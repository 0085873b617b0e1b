//! `acl` and `ip_filter`: allow and deny rules.

use super::*;

#[tokio::test]
async fn acl_allows_listed_consumers_and_groups_and_denies_the_rest() {
    let r = route(
        "",
        "- acl: { allow_consumers: [alice], allow_groups: [staff], deny_groups: [banned] }",
    );
    let mut q = req("GET", "/", &[]);
    assert_eq!(status(&r, &mut q, &mut ctx_as("alice", &[])).await, 200);
    assert_eq!(
        status(&r, &mut q, &mut ctx_as("bob", &["staff"])).await,
        200
    );
    assert_eq!(
        status(&r, &mut q, &mut ctx_as("carol", &["guests"])).await,
        403
    );
    // A deny rule wins over an allow rule.
    assert_eq!(
        status(&r, &mut q, &mut ctx_as("alice", &["banned"])).await,
        403
    );
    // No caller identified: 401 with a challenge (the acl needs an auth plugin before it).
    let reply = run(&r, &mut q, &mut ctx()).await.unwrap().unwrap();
    assert_eq!(reply.status, 401);
    assert!(field(&reply, "www-authenticate").is_some());
    let problem: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(problem["status"], 401);
}

#[tokio::test]
async fn acl_with_only_deny_rules_lets_everyone_else_through() {
    let r = route("", "- acl: { deny_consumers: [mallory] }");
    let mut q = req("GET", "/", &[]);
    assert_eq!(status(&r, &mut q, &mut ctx_as("alice", &[])).await, 200);
    assert_eq!(status(&r, &mut q, &mut ctx_as("mallory", &[])).await, 403);
}

#[tokio::test]
async fn ip_filter_matches_addresses_blocks_and_mapped_ipv6() {
    let r = route(
        "",
        "- ip_filter: { allow: [10.0.0.0/8, \"2001:db8::/32\"], deny: [10.0.0.66] }",
    );
    let mut q = req("GET", "/", &[]);
    assert_eq!(status(&r, &mut q, &mut ctx_from("10.1.2.3")).await, 200);
    assert_eq!(status(&r, &mut q, &mut ctx_from("2001:db8::1")).await, 200);
    // What a dual-stack socket reports for an IPv4 client matches IPv4 rules.
    assert_eq!(
        status(&r, &mut q, &mut ctx_from("::ffff:10.9.9.9")).await,
        200
    );
    assert_eq!(status(&r, &mut q, &mut ctx_from("10.0.0.66")).await, 403);
    assert_eq!(status(&r, &mut q, &mut ctx_from("192.0.2.1")).await, 403);
    // No known client address: refused, never let through by accident.
    let mut no_ip = RequestCtx {
        client_ip: None,
        ..ctx()
    };
    assert_eq!(status(&r, &mut q, &mut no_ip).await, 403);
}

#[test]
fn ip_filter_refuses_bad_addresses_with_their_path() {
    let e = check_error("- ip_filter: { allow: [10.0.0.0/33] }");
    assert!(e.contains("routes[0].plugins[0].ip_filter.allow[0]"), "{e}");
}
