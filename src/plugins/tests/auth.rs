//! `api_key`, `basic_auth`, `mtls` and `auth` (any of several): credentials to consumers.

use super::*;

fn sha256_hex(s: &str) -> String {
    crate::gateway::state::hex(&crate::auth::sha256(s.as_bytes()))
}

fn key_consumers() -> String {
    format!(
        "- {{ name: alice, groups: [staff], api_keys: [{{ sha256: \"{}\" }}] }}\n- {{ name: bob, api_keys: [{{ sha256: \"{}\" }}] }}",
        sha256_hex("alice-key"),
        sha256_hex("bob-key")
    )
}

#[tokio::test]
async fn api_key_from_a_header_or_the_query_names_the_consumer_and_is_removed() {
    let r = route(
        &key_consumers(),
        "- api_key: { header: x-api-key, query: apikey }",
    );
    let mut q = req("GET", "/x", &[("x-api-key", "alice-key")]);
    let mut c = ctx();
    assert_eq!(status(&r, &mut q, &mut c).await, 200);
    let who = c.consumer.as_ref().unwrap();
    assert_eq!(
        (who.name.as_str(), who.groups.as_slice()),
        ("alice", &["staff".to_string()][..])
    );
    assert_eq!(
        header(&q, "x-api-key"),
        None,
        "the key does not reach the upstream"
    );

    let mut q = req("GET", "/x?a=1&apikey=bob-key&b=2", &[]);
    let mut c = ctx();
    assert_eq!(status(&r, &mut q, &mut c).await, 200);
    assert_eq!(c.consumer.unwrap().name, "bob");
    assert_eq!(q.uri.query(), Some("a=1&b=2"));
}

#[tokio::test]
async fn api_key_missing_or_unknown_is_401_with_a_challenge() {
    let r = route(&key_consumers(), "- api_key: { header: x-api-key }");
    for headers in [
        &[][..],
        &[("x-api-key", "")][..],
        &[("x-api-key", "guess")][..],
    ] {
        let mut q = req("GET", "/", headers);
        let mut c = ctx();
        let reply = run(&r, &mut q, &mut c).await.unwrap().unwrap();
        assert_eq!(reply.status, 401, "{headers:?}");
        assert!(field(&reply, "www-authenticate")
            .unwrap()
            .starts_with("ApiKey"));
        assert!(c.consumer.is_none());
    }
}

#[tokio::test]
async fn api_key_kept_when_asked() {
    let r = route(
        &key_consumers(),
        "- api_key: { header: x-api-key, keep_credentials: true }",
    );
    let mut q = req("GET", "/", &[("x-api-key", "bob-key")]);
    assert_eq!(status(&r, &mut q, &mut ctx()).await, 200);
    assert_eq!(header(&q, "x-api-key"), Some("bob-key"));
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn basic_auth_checks_argon2id_and_bcrypt_hashes() {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
    let argon = argon2::Argon2::default()
        .hash_password(b"s3cret", &salt)
        .unwrap()
        .to_string();
    let bcrypt = bcrypt::hash("hunter2", 4).unwrap();
    let consumers = format!(
        "- {{ name: alice, basic: {{ password_hash: \"{argon}\" }} }}\n- {{ name: svc, basic: {{ username: robot, password_hash: \"{bcrypt}\" }} }}"
    );
    let r = route(&consumers, "- basic_auth: { realm: shop }");
    let cases = [
        (basic("alice", "s3cret"), 200, Some("alice")),
        (basic("robot", "hunter2"), 200, Some("svc")),
        (basic("alice", "wrong"), 401, None),
        (basic("svc", "hunter2"), 401, None), // the username is robot
        ("Bearer abc".to_string(), 401, None),
        ("Basic !!!".to_string(), 401, None),
    ];
    for (auth, want, who) in cases {
        let mut q = req("GET", "/", &[("authorization", &auth)]);
        let mut c = ctx();
        let got = run(&r, &mut q, &mut c).await.unwrap();
        match got {
            None => {
                assert_eq!(want, 200, "{auth}");
                assert_eq!(header(&q, "authorization"), None);
            }
            Some(reply) => {
                assert_eq!(reply.status, want, "{auth}");
                assert_eq!(
                    field(&reply, "www-authenticate"),
                    Some("Basic realm=\"shop\"")
                );
            }
        }
        assert_eq!(c.consumer.map(|c| c.name.clone()).as_deref(), who, "{auth}");
    }
}

#[test]
fn basic_auth_refuses_a_hash_it_cannot_check() {
    let e = crate::config::load_str(
        "listeners: [{ addr: \"127.0.0.1:0\" }]\nconsumers: [{ name: a, basic: { password_hash: \"plain\" } }]\n",
        "t.yaml",
    )
    .map(|l| crate::snapshot::compile(l, &crate::shared::Shared::new()).err())
    .map_or_else(|e| Some(e.to_string()), |e| e.map(|e| e.to_string()))
    .unwrap();
    assert!(e.contains("consumers[0].basic.password_hash"), "{e}");
}

fn cert(cn: &str, sans: &[&str]) -> ClientCert {
    ClientCert {
        subject_cn: Some(cn.into()),
        sans: sans.iter().map(|s| s.to_string()).collect(),
        sha256: sha256_hex(cn),
    }
}

#[tokio::test]
async fn mtls_resolves_certificates_by_cn_san_or_fingerprint_and_forwards_facts() {
    let consumers = format!(
        "- {{ name: web, certificates: [{{ cn: web.internal }}] }}\n- {{ name: batch, certificates: [{{ san: \"spiffe://corp/batch\" }}] }}\n- {{ name: pinned, certificates: [{{ sha256: \"{}\" }}] }}",
        sha256_hex("pinned-cn")
    );
    let r = route(
        &consumers,
        "- mtls: { forward: { cn: x-client-cn, sans: x-client-sans, sha256: x-client-sha256 } }",
    );
    for (c, who) in [
        (cert("web.internal", &[]), "web"),
        (cert("other", &["dns:x", "spiffe://corp/batch"]), "batch"),
        (cert("pinned-cn", &[]), "pinned"),
        // Unknown certificates still identify a caller by their CN when not required.
        (cert("stranger", &[]), "stranger"),
    ] {
        let mut q = req("GET", "/", &[("x-client-cn", "forged")]);
        let mut cx = ctx_with_cert(c.clone());
        assert_eq!(status(&r, &mut q, &mut cx).await, 200);
        assert_eq!(cx.consumer.unwrap().name, who);
        assert_eq!(
            header(&q, "x-client-cn"),
            c.subject_cn.as_deref(),
            "client copy replaced"
        );
        assert_eq!(header(&q, "x-client-sha256"), Some(c.sha256.as_str()));
    }
    // No certificate: 401.
    assert_eq!(status(&r, &mut req("GET", "/", &[]), &mut ctx()).await, 401);
    // With consumer_required an unknown certificate is refused.
    let strict = route(&consumers, "- mtls: { consumer_required: true }");
    let mut cx = ctx_with_cert(cert("stranger", &[]));
    assert_eq!(
        status(&strict, &mut req("GET", "/", &[]), &mut cx).await,
        403
    );
}

#[tokio::test]
async fn auth_any_takes_the_first_mechanism_that_identifies_the_caller() {
    let r = route(
        &key_consumers(),
        "- auth:\n    any:\n      - mtls: {}\n      - api_key: { header: x-api-key }",
    );
    let mut cx = ctx();
    assert_eq!(
        status(
            &r,
            &mut req("GET", "/", &[("x-api-key", "bob-key")]),
            &mut cx
        )
        .await,
        200
    );
    assert_eq!(cx.consumer.unwrap().name, "bob");
    let mut cx = ctx_with_cert(cert("web", &[]));
    assert_eq!(status(&r, &mut req("GET", "/", &[]), &mut cx).await, 200);
    assert_eq!(cx.consumer.unwrap().name, "web");
    assert_eq!(status(&r, &mut req("GET", "/", &[]), &mut ctx()).await, 401);
    // Only authentication mechanisms may be listed, and at least two.
    let e = check_error("- auth: { any: [ { acl: {} }, { api_key: {} } ] }");
    assert!(
        e.contains("any[0]") && e.contains("not an authentication mechanism"),
        "{e}"
    );
    let e = check_error("- auth: { any: [ { api_key: {} } ] }");
    assert!(e.contains("at least two"), "{e}");
}
