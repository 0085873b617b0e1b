//! Authentication and authorization plugins end to end: API keys, Basic (argon2id, bcrypt),
//! JWT (inline keys, JWKS URL with rotation, claims, scopes, algorithm pinning), the `auth: any`
//! combinator, ACLs, IP filters behind trusted proxies, and consumers used by rate limits.

use crate::util::upstream::{DocServer, Upstream};
use crate::util::{client, eventually_with, metric, upstream_yaml, Gateway, Poll};
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

const SECRET: &str = "an-hmac-secret-of-at-least-32-bytes!!";

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn hs256(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn consumers() -> String {
    let argon = {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        a.hash_password(b"open sesame", &salt).unwrap().to_string()
    };
    let bcrypt = bcrypt::hash("hunter2", 4).unwrap();
    format!(
        r#"consumers:
  - name: alice
    groups: [gold]
    api_keys: [ {{ sha256: "{}" }} ]
    basic: {{ password_hash: "{argon}" }}
  - name: bob
    groups: [silver]
    api_keys: [ {{ sha256: "{}" }} ]
    basic: {{ username: robert, password_hash: "{bcrypt}" }}
"#,
        sha256_hex("key-alice"),
        sha256_hex("key-bob"),
    )
}

fn route(name: &str, path: &str, plugins: &str) -> String {
    format!(
        "  - name: {name}\n    match: {{ path: {path} }}\n    upstream: u\n    plugins:\n{plugins}"
    )
}

async fn call(
    c: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let a = crate::util::http::get(c, url, headers).await;
    (a.status, a.headers.clone(), a.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_basic_credentials_and_acls() {
    let up = Upstream::start("u").await;
    let body = format!(
        "{}upstreams:\n{}routes:\n{}{}{}",
        consumers(),
        upstream_yaml("u", &[up.addr], ""),
        route(
            "keys",
            "/keys/*",
            "      - api_key: { header: x-api-key, query: api_key }\n      - acl: { allow_groups: [gold] }\n"
        ),
        route("basic", "/basic/*", "      - basic_auth: { realm: internal }\n"),
        route(
            "limited",
            "/limited/*",
            "      - api_key: {}\n      - rate_limit: { key: consumer, limits: [ { requests: 1, per: 1h } ] }\n"
        ),
    );
    let gw = Gateway::start(&body);
    let c = client();

    let (s, h, v) = call(&c, &gw.url("/keys/a"), &[]).await;
    assert_eq!(s, 401);
    assert_eq!(v["type"], "urn:postern:problem:unauthorized");
    assert_eq!(h["content-type"], "application/problem+json");
    let (s, _, _) = call(&c, &gw.url("/keys/a"), &[("x-api-key", "nope")]).await;
    assert_eq!(s, 401);
    let (s, _, v) = call(&c, &gw.url("/keys/a"), &[("x-api-key", "key-alice")]).await;
    assert_eq!(s, 200);
    assert!(
        v["headers"].get("x-api-key").is_none(),
        "the key is not proxied: {v}"
    );
    let (s, _, v) = call(&c, &gw.url("/keys/a?x=1&api_key=key-alice"), &[]).await;
    assert_eq!(s, 200);
    assert_eq!(v["uri"], "/keys/a?x=1", "the key is removed from the query");
    // bob is authenticated but not in the allowed group.
    let (s, _, v) = call(&c, &gw.url("/keys/a"), &[("x-api-key", "key-bob")]).await;
    assert_eq!(s, 403);
    assert_eq!(v["type"], "urn:postern:problem:forbidden");

    let basic = |u: &str, p: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };
    let (s, h, _) = call(&c, &gw.url("/basic/a"), &[]).await;
    assert_eq!(s, 401);
    assert_eq!(h["www-authenticate"], "Basic realm=\"internal\"");
    let (s, _, _) = call(
        &c,
        &gw.url("/basic/a"),
        &[("authorization", &basic("alice", "wrong"))],
    )
    .await;
    assert_eq!(s, 401);
    for _ in 0..2 {
        // argon2id, then from the cache of verified credentials
        let (s, _, v) = call(
            &c,
            &gw.url("/basic/a"),
            &[("authorization", &basic("alice", "open sesame"))],
        )
        .await;
        assert_eq!(s, 200);
        assert!(v["headers"].get("authorization").is_none());
    }
    let (s, _, _) = call(
        &c,
        &gw.url("/basic/a"),
        &[("authorization", &basic("robert", "hunter2"))],
    )
    .await;
    assert_eq!(s, 200, "bcrypt");

    // Rate limits keyed by consumer: each consumer has its own budget.
    assert_eq!(
        call(&c, &gw.url("/limited/a"), &[("x-api-key", "key-alice")])
            .await
            .0,
        200
    );
    assert_eq!(
        call(&c, &gw.url("/limited/a"), &[("x-api-key", "key-alice")])
            .await
            .0,
        429
    );
    assert_eq!(
        call(&c, &gw.url("/limited/a"), &[("x-api-key", "key-bob")])
            .await
            .0,
        200
    );

    gw.wait_metric(
        "postern_auth_failures_total{plugin=\"acl\",reason=\"denied\",route=\"keys\"}",
        1.0,
    );
    let text = gw.metrics();
    assert_eq!(
        metric(
            &text,
            "postern_auth_failures_total{plugin=\"api_key\",reason=\"missing\",route=\"keys\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_claims_scopes_and_algorithm_pinning() {
    let up = Upstream::start("u").await;
    let jwt = format!(
        r#"      - jwt:
          keys: [ {{ kid: k1, alg: HS256, secret: "{SECRET}" }} ]
          issuers: [ "https://issuer.test/" ]
          audiences: [ api ]
          leeway: 0s
          scopes_any: [ "orders:read", "orders:admin" ]
          forward_claims: {{ sub: x-user-id }}
          strip_token: true
"#
    );
    let body = format!(
        "{}upstreams:\n{}routes:\n{}",
        consumers(),
        upstream_yaml("u", &[up.addr], ""),
        route("jwt", "/jwt/*", &jwt),
    );
    let gw = Gateway::start(&body);
    let c = client();
    let good = json!({ "sub": "alice", "iss": "https://issuer.test/", "aud": "api", "exp": now() + 600, "scope": "profile orders:read" });
    let bearer = |t: &str| format!("Bearer {t}");

    let (s, _, v) = call(
        &c,
        &gw.url("/jwt/x"),
        &[
            ("authorization", &bearer(&hs256(good.clone()))),
            ("x-user-id", "spoofed"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["headers"]["x-user-id"], "alice",
        "claim forwarded, client value replaced"
    );
    assert!(
        v["headers"].get("authorization").is_none(),
        "token stripped"
    );

    let (s, h, _) = call(&c, &gw.url("/jwt/x"), &[]).await;
    assert_eq!(s, 401);
    assert_eq!(h["www-authenticate"], "Bearer realm=\"postern\"");

    let mut expired = good.clone();
    expired["exp"] = json!(now() - 10);
    let (s, h, _) = call(
        &c,
        &gw.url("/jwt/x"),
        &[("authorization", &bearer(&hs256(expired)))],
    )
    .await;
    assert_eq!(s, 401);
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));

    for (field, value) in [
        ("iss", json!("https://evil.test/")),
        ("aud", json!("other")),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        let (s, _, _) = call(
            &c,
            &gw.url("/jwt/x"),
            &[("authorization", &bearer(&hs256(bad)))],
        )
        .await;
        assert_eq!(s, 401, "{field}");
    }
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        call(
            &c,
            &gw.url("/jwt/x"),
            &[("authorization", &bearer(&hs256(no_exp)))]
        )
        .await
        .0,
        401
    );

    let mut no_scope = good.clone();
    no_scope["scope"] = json!("profile");
    let (s, h, v) = call(
        &c,
        &gw.url("/jwt/x"),
        &[("authorization", &bearer(&hs256(no_scope)))],
    )
    .await;
    assert_eq!(s, 403);
    assert!(h["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    assert_eq!(v["type"], "urn:postern:problem:forbidden");
    let mut scp = good.clone();
    scp.as_object_mut().unwrap().remove("scope");
    scp["scp"] = json!(["orders:admin"]);
    assert_eq!(
        call(
            &c,
            &gw.url("/jwt/x"),
            &[("authorization", &bearer(&hs256(scp)))]
        )
        .await
        .0,
        200
    );

    // alg: none, a wrong secret, and a token whose header lies about its algorithm.
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    assert_eq!(
        call(&c, &gw.url("/jwt/x"), &[("authorization", &bearer(&none))])
            .await
            .0,
        401
    );
    let wrong = encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(b"another-secret-that-is-long-enough!!"),
    )
    .unwrap();
    assert_eq!(
        call(&c, &gw.url("/jwt/x"), &[("authorization", &bearer(&wrong))])
            .await
            .0,
        401
    );
    let hs512 = encode(
        &Header::new(Algorithm::HS512),
        &good,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(
        call(&c, &gw.url("/jwt/x"), &[("authorization", &bearer(&hs512))])
            .await
            .0,
        401,
        "the key is pinned to HS256"
    );
    assert_eq!(
        call(
            &c,
            &gw.url("/jwt/x"),
            &[("authorization", "Bearer not.a.token")]
        )
        .await
        .0,
        401
    );
}

/// An ES256 key pair: (private PEM for signing, public JWK with `kid`).
fn es256_key(kid: &str) -> (String, Value) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({ "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                      "x": b64(&raw[1..33]), "y": b64(&raw[33..65]) });
    (kp.serialize_pem(), jwk)
}

fn es256_token(pem: &str, kid: &str, sub: &str) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.to_string());
    encode(
        &h,
        &json!({ "sub": sub, "exp": now() + 600 }),
        &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_rotation_outage_and_refetch_rate_limit() {
    let (pem1, jwk1) = es256_key("k1");
    let (pem2, jwk2) = es256_key("k2");
    let jwks = DocServer::start(200, &json!({ "keys": [jwk1] }).to_string()).await;
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n{}routes:\n{}",
        upstream_yaml("u", &[up.addr], ""),
        route(
            "jwks",
            "/jwks/*",
            &format!("      - jwt: {{ jwks_url: \"http://{}/jwks.json\", jwks_refresh: 2s, jwks_min_refetch: 1h, forward_claims: {{ sub: x-user }} }}\n", jwks.addr)
        ),
    );
    let gw = Gateway::start(&body);
    let c = client();
    let auth = |t: String| format!("Bearer {t}");
    let (s, _, v) = call(
        &c,
        &gw.url("/jwks/a"),
        &[("authorization", &auth(es256_token(&pem1, "k1", "carol")))],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["headers"]["x-user"], "carol",
        "a consumer that is not configured is named by the claim"
    );

    // Rotation: the issuer publishes k2; the first token with kid k2 triggers a refetch.
    jwks.set(200, &json!({ "keys": [jwk1, jwk2] }).to_string());
    let (s, _, _) = call(
        &c,
        &gw.url("/jwks/a"),
        &[("authorization", &auth(es256_token(&pem2, "k2", "dave")))],
    )
    .await;
    assert_eq!(s, 200, "unknown kid refetched the JWKS");
    let fetches = jwks.hits();

    // Forged kids cannot make Postern hammer the JWKS endpoint (min refetch 1h).
    for i in 0..5 {
        let (s, _, _) = call(
            &c,
            &gw.url("/jwks/a"),
            &[(
                "authorization",
                &auth(es256_token(&pem2, &format!("forged-{i}"), "x")),
            )],
        )
        .await;
        assert_eq!(s, 401);
    }
    assert!(
        jwks.hits() <= fetches + 1,
        "no refetch within jwks_min_refetch (one periodic refresh at most)"
    );

    // The issuer retires k1: once the periodic refresh saw it, k1 tokens (even ones verified
    // and cached before) are refused.
    let k1_token = es256_token(&pem1, "k1", "erin");
    assert_eq!(
        call(
            &c,
            &gw.url("/jwks/a"),
            &[("authorization", &auth(k1_token.clone()))]
        )
        .await
        .0,
        200
    );
    jwks.set(200, &json!({ "keys": [jwk2] }).to_string());
    wait_for_fetch(&jwks).await;
    // The fetch is counted when it starts; the new set may land a moment later.
    let (c, gw, k1) = (&c, &gw, &k1_token);
    let poll = Poll::within(std::time::Duration::from_secs(20));
    eventually_with(poll, "the retired key is refused", || async move {
        let s = call(
            c,
            &gw.url("/jwks/a"),
            &[("authorization", &auth(k1.clone()))],
        )
        .await;
        (s.0 == 401).then_some(())
    })
    .await;

    // The endpoint fails: after failed refreshes, the last good set still works.
    jwks.set(500, "oops");
    wait_for_fetch(&jwks).await;
    wait_for_fetch(&jwks).await;
    let (s, _, _) = call(
        c,
        &gw.url("/jwks/a"),
        &[("authorization", &auth(es256_token(&pem2, "k2", "frank")))],
    )
    .await;
    assert_eq!(s, 200);
}

/// Waits until the JWKS server got one more request (a periodic refresh).
async fn wait_for_fetch(jwks: &DocServer) {
    let before = jwks.hits();
    let jwks = &jwks;
    let poll = Poll::within(std::time::Duration::from_secs(20));
    eventually_with(poll, "a periodic JWKS refresh", || async move {
        (jwks.hits() != before).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_of_several_mechanisms_and_ip_filters_behind_trusted_proxies() {
    let up = Upstream::start("u").await;
    let body = format!(
        "{}upstreams:\n{}routes:\n{}{}{}",
        consumers(),
        upstream_yaml("u", &[up.addr], ""),
        route(
            "either",
            "/either/*",
            &format!("      - auth:\n          any:\n            - jwt: {{ keys: [ {{ alg: HS256, secret: \"{SECRET}\" }} ] }}\n            - api_key: {{}}\n")
        ),
        route("blocked", "/blocked/*", "      - ip_filter: { deny: [6.6.6.0/24] }\n"),
        route("office", "/office/*", "      - ip_filter: { allow: [10.0.0.0/8] }\n"),
    );
    let gw = Gateway::start_full(&body, "", "  trusted_proxies: [127.0.0.1/32]\n");
    let c = client();
    let token = hs256(json!({ "sub": "alice", "exp": now() + 60 }));
    assert_eq!(
        call(
            &c,
            &gw.url("/either/a"),
            &[("authorization", &format!("Bearer {token}"))]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(&c, &gw.url("/either/a"), &[("x-api-key", "key-bob")])
            .await
            .0,
        200
    );
    let resp = c.get(gw.url("/either/a")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenges: Vec<_> = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        challenges,
        ["Bearer realm=\"postern\"", "ApiKey realm=\"postern\""]
    );
    let (s, h, _) = call(
        &c,
        &gw.url("/either/a"),
        &[("authorization", "Bearer bad.token.here")],
    )
    .await;
    assert_eq!(s, 401);
    assert!(
        h.get_all("www-authenticate")
            .iter()
            .any(|v| v.to_str().unwrap().contains("invalid_token")),
        "the failure of the mechanism that found credentials is reported"
    );

    // 127.0.0.1 is a trusted proxy: the right-most untrusted X-Forwarded-For hop is the client.
    assert_eq!(
        call(&c, &gw.url("/blocked/a"), &[("x-forwarded-for", "6.6.6.6")])
            .await
            .0,
        403
    );
    assert_eq!(
        call(
            &c,
            &gw.url("/blocked/a"),
            &[("x-forwarded-for", "6.6.6.6, 1.2.3.4")]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(&c, &gw.url("/office/a"), &[("x-forwarded-for", "10.1.2.3")])
            .await
            .0,
        200
    );
    assert_eq!(
        call(&c, &gw.url("/office/a"), &[]).await.0,
        403,
        "127.0.0.1 itself is not in 10/8"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_decides_copies_headers_and_caches() {
    use crate::util::upstream::FnServer;
    let authz = FnServer::start(|s| {
        let auth = s
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let seen = format!(
            "{} {} {}",
            s.headers
                .get("x-forwarded-method")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            s.headers
                .get("x-forwarded-uri")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            s.headers
                .get("x-forwarded-host")
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        );
        match auth {
            "Bearer good" => (
                200,
                vec![("x-user", "alice".into()), ("x-seen", seen)],
                String::new(),
            ),
            "Bearer slow" => {
                std::thread::sleep(std::time::Duration::from_millis(600));
                (200, vec![], String::new())
            }
            _ => (
                401,
                vec![
                    ("www-authenticate", "Bearer realm=\"sso\"".into()),
                    ("content-type", "text/plain".into()),
                ],
                "sign in first".into(),
            ),
        }
    })
    .await;
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n{}routes:\n{}",
        upstream_yaml("u", &[up.addr], ""),
        route(
            "fa",
            "/fa/*",
            &format!(
                r#"      - forward_auth: {{ url: "http://{}/check", request_headers: [authorization], response_headers: [x-user, x-seen], consumer_header: x-user, timeout: 300ms, cache_ttl: 1h }}
      - rate_limit: {{ key: consumer, limits: [ {{ requests: 2, per: 1h }} ] }}
"#,
                authz.addr
            )
        ),
    );
    let gw = Gateway::start(&body);
    let c = client();
    let (s, _, v) = call(
        &c,
        &gw.url("/fa/x?q=1"),
        &[("authorization", "Bearer good"), ("x-user", "mallory")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["headers"]["x-user"], "alice",
        "copied from the answer, client copy dropped"
    );
    assert!(v["headers"]["x-seen"]
        .as_str()
        .unwrap()
        .starts_with("GET /fa/x?q=1 127.0.0.1:"));
    let hits = authz.hits();
    assert_eq!(
        call(&c, &gw.url("/fa/x"), &[("authorization", "Bearer good")])
            .await
            .0,
        200
    );
    assert_eq!(authz.hits(), hits, "the decision came from the cache");
    // The consumer named by the service is rate limited.
    assert_eq!(
        call(&c, &gw.url("/fa/x"), &[("authorization", "Bearer good")])
            .await
            .0,
        429
    );

    let resp = c
        .get(gw.url("/fa/x"))
        .header("authorization", "Bearer bad")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"sso\"");
    assert_eq!(
        resp.text().await.unwrap(),
        "sign in first",
        "the refusal goes back as it is"
    );

    let (s, _, v) = call(&c, &gw.url("/fa/x"), &[("authorization", "Bearer slow")]).await;
    assert_eq!(s, 503, "a timeout denies by default");
    assert_eq!(v["type"], "urn:postern:problem:unavailable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_maps_active_tokens_and_caches_answers() {
    use crate::util::upstream::FnServer;
    let exp = now() + 3600;
    let idp = FnServer::start(move |s| {
        let creds = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("gw:gw-secret")
        );
        if s.method != "POST" || s.headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(creds.as_str()) {
            return (401, vec![], "{}".into());
        }
        let body = if s.body.contains("token=opaque-good") {
            json!({ "active": true, "sub": "alice", "client_id": "web", "scope": "orders:read", "exp": exp })
        } else if s.body.contains("token=opaque-noscope") {
            json!({ "active": true, "sub": "bob", "scope": "profile", "exp": exp })
        } else {
            json!({ "active": false })
        };
        (200, vec![("content-type", "application/json".into())], body.to_string())
    })
    .await;
    let up = Upstream::start("u").await;
    let body = format!(
        "{}upstreams:\n{}routes:\n{}",
        consumers(),
        upstream_yaml("u", &[up.addr], ""),
        route(
            "intro",
            "/intro/*",
            &format!(
                r#"      - oauth2_introspection: {{ url: "http://{}/introspect", client_id: gw, client_secret: gw-secret, scopes_any: ["orders:read"], forward_claims: {{ sub: x-user-id, client_id: x-client-id }}, strip_token: true }}
      - acl: {{ allow_groups: [gold] }}
"#,
                idp.addr
            )
        ),
    );
    let gw = Gateway::start(&body);
    let c = client();
    let (s, _, v) = call(
        &c,
        &gw.url("/intro/x"),
        &[("authorization", "Bearer opaque-good")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["headers"]["x-user-id"], "alice");
    assert_eq!(v["headers"]["x-client-id"], "web");
    assert!(v["headers"].get("authorization").is_none());
    let hits = idp.hits();
    assert_eq!(
        call(
            &c,
            &gw.url("/intro/x"),
            &[("authorization", "Bearer opaque-good")]
        )
        .await
        .0,
        200
    );
    assert_eq!(idp.hits(), hits, "active answers are cached until exp");
    assert_eq!(
        call(
            &c,
            &gw.url("/intro/x"),
            &[("authorization", "Bearer opaque-noscope")]
        )
        .await
        .0,
        403
    );
    assert_eq!(
        call(
            &c,
            &gw.url("/intro/x"),
            &[("authorization", "Bearer revoked")]
        )
        .await
        .0,
        401
    );
    assert_eq!(call(&c, &gw.url("/intro/x"), &[]).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_windows_open_and_closed_now() {
    let up = Upstream::start("u").await;
    // Ranges around the current UTC time, so the test does not depend on when it runs.
    let t = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let hm = |z: &jiff::Zoned| format!("{:02}:{:02}", z.hour(), z.minute());
    let from = t.checked_sub(jiff::SignedDuration::from_mins(90)).unwrap();
    let to = t.checked_add(jiff::SignedDuration::from_mins(90)).unwrap();
    let body = format!(
        "upstreams:\n{}routes:\n{}{}",
        upstream_yaml("u", &[up.addr], ""),
        route("open", "/open/*", &format!("      - time_window: {{ timezone: UTC, allow: [ {{ from: \"{}\", to: \"{}\" }} ] }}\n", hm(&from), hm(&to))),
        route("closed", "/closed/*", &format!("      - time_window: {{ timezone: Etc/UTC, deny: [ {{ from: \"{}\", to: \"{}\" }} ] }}\n", hm(&from), hm(&to))),
    );
    let gw = Gateway::start(&body);
    let c = client();
    assert_eq!(call(&c, &gw.url("/open/x"), &[]).await.0, 200);
    let (s, _, v) = call(&c, &gw.url("/closed/x"), &[]).await;
    assert_eq!(s, 403);
    assert_eq!(v["type"], "urn:postern:problem:forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_verifies_with_its_key_and_attacks_fail() {
    let (rsa_private, rsa_public_pem) = crate::util::rsa_pem_pair();
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p.display().to_string()
    };
    let rsa_public = write("rsa.pem", rsa_public_pem);
    let (p256_pub, p384_pub, ed_pub) = (
        write("p256.pem", p256.public_key_pem()),
        write("p384.pem", p384.public_key_pem()),
        write("ed.pem", ed.public_key_pem()),
    );
    use Algorithm::*;
    let cases: Vec<(Algorithm, EncodingKey, String)> = vec![
        (
            HS256,
            EncodingKey::from_secret(SECRET.as_bytes()),
            format!("secret: \"{SECRET}\""),
        ),
        (
            HS384,
            EncodingKey::from_secret(SECRET.as_bytes()),
            format!("secret: \"{SECRET}\""),
        ),
        (
            HS512,
            EncodingKey::from_secret(SECRET.as_bytes()),
            format!("secret: \"{SECRET}\""),
        ),
        (
            RS256,
            EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
            format!("pem_file: \"{rsa_public}\""),
        ),
        (
            RS384,
            EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
            format!("pem_file: \"{rsa_public}\""),
        ),
        (
            RS512,
            EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
            format!("pem_file: \"{rsa_public}\""),
        ),
        (
            PS256,
            EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
            format!("pem_file: \"{rsa_public}\""),
        ),
        (
            PS384,
            EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
            format!("pem_file: \"{rsa_public}\""),
        ),
        (
            PS512,
            EncodingKey::from_rsa_pem(rsa_private.as_bytes()).unwrap(),
            format!("pem_file: \"{rsa_public}\""),
        ),
        (
            ES256,
            EncodingKey::from_ec_pem(p256.serialize_pem().as_bytes()).unwrap(),
            format!("pem_file: \"{p256_pub}\""),
        ),
        (
            ES384,
            EncodingKey::from_ec_pem(p384.serialize_pem().as_bytes()).unwrap(),
            format!("pem_file: \"{p384_pub}\""),
        ),
        (
            EdDSA,
            EncodingKey::from_ed_pem(ed.serialize_pem().as_bytes()).unwrap(),
            format!("pem_file: \"{ed_pub}\""),
        ),
    ];
    let keys: Vec<String> = cases
        .iter()
        .map(|(alg, _, key)| {
            format!("              - {{ kid: \"{alg:?}\", alg: {alg:?}, {key} }}\n")
        })
        .collect();
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n{}routes:\n{}",
        upstream_yaml("u", &[up.addr], ""),
        route(
            "all",
            "/all/*",
            &format!("      - jwt:\n          leeway: 0s\n          required_claims: [exp, sub]\n          keys:\n{}", keys.concat())
        ),
    );
    let gw = Gateway::start(&body);
    let c = client();
    let claims = json!({ "sub": "alice", "exp": now() + 600 });
    let sign = |alg: Algorithm, key: &EncodingKey, kid: &str, claims: &Value| {
        let mut h = Header::new(alg);
        h.kid = Some(kid.to_string());
        encode(&h, claims, key).unwrap()
    };
    let bearer = |t: &str| format!("Bearer {t}");
    for (alg, key, _) in &cases {
        let t = sign(*alg, key, &format!("{alg:?}"), &claims);
        assert_eq!(
            call(&c, &gw.url("/all/x"), &[("authorization", &bearer(&t))])
                .await
                .0,
            200,
            "{alg:?}"
        );
    }

    let good = sign(ES256, &cases[9].1, "ES256", &claims);
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let mut attacks: Vec<(&str, String)> = vec![
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&json!({ "sub": "admin", "exp": now() + 600 })),
                parts[2]
            ),
        ),
        ("stripped signature", format!("{}.{}.", parts[0], parts[1])),
        ("malformed base64", format!("{}.!!!.{}", parts[0], parts[2])),
        (
            "oversized",
            format!("{}.{}.{}", parts[0], "A".repeat(9000), parts[2]),
        ),
        (
            "wrong kid",
            sign(HS256, &cases[0].1, "no-such-kid", &claims),
        ),
        // The RSA public key used as an HMAC secret (classic alg confusion) under the RS256 kid.
        (
            "alg confusion",
            sign(
                HS256,
                &EncodingKey::from_secret(std::fs::read(&rsa_public).unwrap().as_slice()),
                "RS256",
                &claims,
            ),
        ),
        (
            "alg swapped to another of the same family",
            sign(HS512, &cases[0].1, "HS256", &claims),
        ),
        (
            "not yet valid",
            sign(
                HS256,
                &cases[0].1,
                "HS256",
                &json!({ "sub": "a", "exp": now() + 600, "nbf": now() + 300 }),
            ),
        ),
        (
            "missing required claim",
            sign(HS256, &cases[0].1, "HS256", &json!({ "exp": now() + 600 })),
        ),
        (
            "expired",
            sign(
                HS256,
                &cases[0].1,
                "HS256",
                &json!({ "sub": "a", "exp": now() - 5 }),
            ),
        ),
    ];
    attacks.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(&json!({ "alg": "none", "kid": "HS256" })),
            parts[1]
        ),
    ));
    for (what, token) in attacks {
        let (s, h, v) = call(&c, &gw.url("/all/x"), &[("authorization", &bearer(&token))]).await;
        assert_eq!(s, 401, "{what}");
        assert!(
            h["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token"),
            "{what}"
        );
        let text = v.to_string();
        assert!(
            !text.contains(&token[..20.min(token.len())]),
            "{what}: the token is not echoed"
        );
        assert!(
            v["detail"].as_str().unwrap().len() < 80,
            "{what}: a short generic detail"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_from_a_cookie_or_a_query_parameter_is_stripped_when_asked() {
    let up = Upstream::start("u").await;
    let key = format!("keys: [ {{ alg: HS256, secret: \"{SECRET}\" }} ]");
    let body = format!(
        "upstreams:\n{}routes:\n{}{}",
        upstream_yaml("u", &[up.addr], ""),
        route(
            "cookie",
            "/cookie/*",
            &format!("      - jwt: {{ {key}, token: {{ cookie: auth }}, strip_token: true }}\n")
        ),
        route(
            "query",
            "/query/*",
            &format!(
                "      - jwt: {{ {key}, token: {{ query: access_token }}, strip_token: true }}\n"
            )
        ),
    );
    let gw = Gateway::start(&body);
    let c = client();
    let t = hs256(json!({ "sub": "alice", "exp": now() + 60 }));
    let (s, _, v) = call(
        &c,
        &gw.url("/cookie/x"),
        &[("cookie", &format!("theme=dark; auth={t}"))],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        v["headers"]["cookie"], "theme=dark",
        "only the token cookie is removed"
    );
    assert_eq!(
        call(
            &c,
            &gw.url("/cookie/x"),
            &[("authorization", &format!("Bearer {t}"))]
        )
        .await
        .0,
        401
    );
    let (s, _, v) = call(
        &c,
        &gw.url(&format!("/query/x?page=2&access_token={t}")),
        &[],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["uri"], "/query/x?page=2");
    assert_eq!(
        call(&c, &gw.url("/query/x?access_token=nope"), &[]).await.0,
        401
    );
}

/// Regressions of issue 12: `crit` headers, a `kid` no key has, the token size cap, and two
/// Authorization fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_crit_kid_hint_size_cap_and_single_authorization() {
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n{}routes:\n{}{}",
        upstream_yaml("u", &[up.addr], ""),
        route(
            "jwt",
            "/jwt/*",
            &format!("      - jwt: {{ keys: [ {{ alg: HS256, secret: \"{SECRET}\" }} ], max_token_size: 2KiB }}\n")
        ),
        route("key", "/key/*", "      - api_key: {}\n"),
    );
    let gw = Gateway::start(&format!("{}{body}", consumers()));
    let c = client();
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let claims = json!({ "sub": "alice", "exp": now() + 600 });
    let bearer = |t: &str| format!("Bearer {t}");
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    // A token whose header is written by hand, signed with the HMAC key.
    let signed = |header: Value| {
        use hmac_sign::sign;
        let input = format!("{}.{}", b64(&header), b64(&claims));
        format!("{input}.{}", sign(SECRET.as_bytes(), input.as_bytes()))
    };
    let ok = signed(json!({ "alg": "HS256", "typ": "JWT" }));
    assert_eq!(
        call(&c, &gw.url("/jwt/x"), &[("authorization", &bearer(&ok))])
            .await
            .0,
        200
    );
    for (what, header) in [
        (
            "unknown critical extension",
            json!({ "alg": "HS256", "crit": ["exp-ext"], "exp-ext": 1 }),
        ),
        ("empty crit", json!({ "alg": "HS256", "crit": [] })),
        (
            "unencoded payload",
            json!({ "alg": "HS256", "crit": ["b64"], "b64": false }),
        ),
        (
            "b64 false without crit",
            json!({ "alg": "HS256", "b64": false }),
        ),
    ] {
        let t = signed(header);
        assert_eq!(
            call(&c, &gw.url("/jwt/x"), &[("authorization", &bearer(&t))])
                .await
                .0,
            401,
            "{what}"
        );
    }
    // The configured key has no kid: a token naming a kid still verifies with it.
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rotated-2026".into());
    let with_kid = encode(&h, &claims, &key).unwrap();
    assert_eq!(
        call(
            &c,
            &gw.url("/jwt/x"),
            &[("authorization", &bearer(&with_kid))]
        )
        .await
        .0,
        200
    );
    // max_token_size: 2KiB.
    let big = encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "alice", "exp": now() + 600, "pad": "x".repeat(2100) }),
        &key,
    )
    .unwrap();
    assert_eq!(
        call(&c, &gw.url("/jwt/x"), &[("authorization", &bearer(&big))])
            .await
            .0,
        401
    );
    // Two Authorization fields, either order: 400 for every plugin.
    for pair in [
        [bearer(&ok), "Bearer junk".to_string()],
        ["Bearer junk".to_string(), bearer(&ok)],
    ] {
        let resp = gw.raw(&format!(
            "GET /jwt/x HTTP/1.1\r\nHost: a\r\nAuthorization: {}\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            pair[0], pair[1]
        ));
        assert_eq!(crate::util::status_of(&resp), 400, "{resp}");
    }
    let resp = gw.raw("GET /key/x HTTP/1.1\r\nHost: a\r\nAuthorization: Basic YTpi\r\nAuthorization: Basic YTpi\r\nX-Api-Key: key-alice\r\nConnection: close\r\n\r\n");
    assert_eq!(crate::util::status_of(&resp), 400, "{resp}");
    let hits = up.hits();
    assert!(hits >= 2, "the valid calls reached the upstream");
}

/// HS256 signing of hand-written headers (jsonwebtoken only signs its own `Header`).
mod hmac_sign {
    pub fn sign(secret: &[u8], input: &[u8]) -> String {
        use base64::Engine;
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
        let tag = aws_lc_rs::hmac::sign(&key, input);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref())
    }
}
