//! `jwt`: every algorithm, key pinning, `kid` rules, `crit`, leeway, scopes and what an
//! accepted token gives the request.

use super::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(
    alg: Algorithm,
    kid: Option<&str>,
    key: &EncodingKey,
    claims: serde_json::Value,
) -> String {
    let mut h = Header::new(alg);
    h.kid = kid.map(String::from);
    encode(&h, &claims, key).unwrap()
}

fn claims(sub: &str) -> serde_json::Value {
    json!({ "sub": sub, "exp": now() + 600 })
}

/// One key of each kind, with the YAML that configures its public half.
struct Keys {
    rsa: (EncodingKey, String),
    p256: (EncodingKey, String),
    p384: (EncodingKey, String),
    ed: (EncodingKey, String),
}

fn keys() -> Keys {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
    use aws_lc_rs::signature::KeyPair;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let private: Pkcs8V1Der = kp.as_der().unwrap();
    let public: PublicKeyX509Der = kp.public_key().as_der().unwrap();
    let rsa = (
        EncodingKey::from_rsa_pem(pem("PRIVATE KEY", private.as_ref()).as_bytes()).unwrap(),
        pem("PUBLIC KEY", public.as_ref()),
    );
    let pair = |alg: &'static rcgen::SignatureAlgorithm, ed: bool| {
        let k = rcgen::KeyPair::generate_for(alg).unwrap();
        let private = k.serialize_pem();
        let enc = if ed {
            EncodingKey::from_ed_pem(private.as_bytes()).unwrap()
        } else {
            EncodingKey::from_ec_pem(private.as_bytes()).unwrap()
        };
        (enc, k.public_key_pem())
    };
    Keys {
        rsa,
        p256: pair(&rcgen::PKCS_ECDSA_P256_SHA256, false),
        p384: pair(&rcgen::PKCS_ECDSA_P384_SHA384, false),
        ed: pair(&rcgen::PKCS_ED25519, true),
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

fn yaml_pem(pem: &str) -> String {
    serde_json::to_string(pem).unwrap()
}

async fn verdict(r: &Route, token: &str) -> (u16, Option<String>) {
    let bearer = format!("Bearer {token}");
    let mut q = req("GET", "/", &[("authorization", &bearer)]);
    let mut c = ctx();
    let s = status(r, &mut q, &mut c).await;
    (s, c.consumer.map(|c| c.name.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn every_algorithm_verifies_with_its_pinned_key_and_no_other() {
    let k = keys();
    let mut entries = vec![
        "{ kid: h256, alg: HS256, secret: \"0123456789abcdef0123456789abcdef\" }".to_string(),
        "{ kid: h384, alg: HS384, secret: \"0123456789abcdef0123456789abcdef0123456789abcdef\" }".into(),
        "{ kid: h512, alg: HS512, secret: \"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\" }".into(),
    ];
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        entries.push(format!(
            "{{ kid: {}, alg: {alg}, pem: {} }}",
            alg.to_lowercase(),
            yaml_pem(&k.rsa.1)
        ));
    }
    entries.push(format!(
        "{{ kid: es256, alg: ES256, pem: {} }}",
        yaml_pem(&k.p256.1)
    ));
    entries.push(format!(
        "{{ kid: es384, alg: ES384, pem: {} }}",
        yaml_pem(&k.p384.1)
    ));
    entries.push(format!(
        "{{ kid: eddsa, alg: EdDSA, pem: {} }}",
        yaml_pem(&k.ed.1)
    ));
    let r = route(
        "",
        &format!("- jwt:\n    keys:\n      - {}", entries.join("\n      - ")),
    );

    let hs = |n: usize| EncodingKey::from_secret(&b"0123456789abcdef".repeat(n));
    let cases: Vec<(Algorithm, &str, EncodingKey)> = vec![
        (Algorithm::HS256, "h256", hs(2)),
        (Algorithm::HS384, "h384", hs(3)),
        (Algorithm::HS512, "h512", hs(4)),
        (Algorithm::RS256, "rs256", k.rsa.0.clone()),
        (Algorithm::RS384, "rs384", k.rsa.0.clone()),
        (Algorithm::RS512, "rs512", k.rsa.0.clone()),
        (Algorithm::PS256, "ps256", k.rsa.0.clone()),
        (Algorithm::PS384, "ps384", k.rsa.0.clone()),
        (Algorithm::PS512, "ps512", k.rsa.0.clone()),
        (Algorithm::ES256, "es256", k.p256.0.clone()),
        (Algorithm::ES384, "es384", k.p384.0.clone()),
        (Algorithm::EdDSA, "eddsa", k.ed.0.clone()),
    ];
    for (alg, kid, key) in &cases {
        let t = token(*alg, Some(kid), key, claims(kid));
        assert_eq!(
            verdict(&r, &t).await,
            (200, Some(kid.to_string())),
            "{alg:?}"
        );
    }
    // A key verifies only its own algorithm: the RS256 key's kid on an RS384 token fails, and
    // an HS256 token whose secret is the RSA public key (algorithm confusion) fails.
    let t = token(Algorithm::RS384, Some("rs256"), &k.rsa.0, claims("x"));
    assert_eq!(verdict(&r, &t).await.0, 401);
    let confused = EncodingKey::from_secret(k.rsa.1.as_bytes());
    let t = token(Algorithm::HS256, Some("rs256"), &confused, claims("x"));
    assert_eq!(verdict(&r, &t).await.0, 401);
    // `alg: none` never verifies.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims("x").to_string().as_bytes())
    );
    assert_eq!(verdict(&r, &none).await.0, 401);
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

const SECRET_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const SECRET_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

#[tokio::test]
async fn kid_selects_its_key_and_an_unknown_kid_falls_back_to_keys_without_one() {
    let r = route(
        "",
        &format!(
            "- jwt:\n    keys:\n      - {{ kid: a, alg: HS256, secret: \"{SECRET_A}\" }}\n      - {{ alg: HS256, secret: \"{SECRET_B}\" }}"
        ),
    );
    let a = EncodingKey::from_secret(SECRET_A.as_bytes());
    let b = EncodingKey::from_secret(SECRET_B.as_bytes());
    assert_eq!(
        verdict(&r, &token(Algorithm::HS256, Some("a"), &a, claims("u")))
            .await
            .0,
        200
    );
    // A known kid is tried with its key only.
    assert_eq!(
        verdict(&r, &token(Algorithm::HS256, Some("a"), &b, claims("u")))
            .await
            .0,
        401
    );
    // An unknown kid (a hint only): the keys without a kid.
    assert_eq!(
        verdict(&r, &token(Algorithm::HS256, Some("zz"), &b, claims("u")))
            .await
            .0,
        200
    );
    assert_eq!(
        verdict(&r, &token(Algorithm::HS256, Some("zz"), &a, claims("u")))
            .await
            .0,
        401
    );
    // No kid: every key.
    assert_eq!(
        verdict(&r, &token(Algorithm::HS256, None, &a, claims("u")))
            .await
            .0,
        200
    );
    assert_eq!(
        verdict(&r, &token(Algorithm::HS256, None, &b, claims("u")))
            .await
            .0,
        200
    );
}

fn hs_route(extra: &str) -> Arc<Route> {
    route(
        "- { name: alice, groups: [staff] }",
        &format!("- jwt:\n    keys: [ {{ alg: HS256, secret: \"{SECRET_A}\" }} ]\n{extra}"),
    )
}

fn hs(claims: serde_json::Value) -> String {
    token(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(SECRET_A.as_bytes()),
        claims,
    )
}

#[tokio::test]
async fn crit_makes_a_token_invalid() {
    let r = hs_route("");
    let mut h = Header::new(Algorithm::HS256);
    h.crit = Some(vec!["exp".into()]);
    let t = encode(
        &h,
        &claims("u"),
        &EncodingKey::from_secret(SECRET_A.as_bytes()),
    )
    .unwrap();
    assert_eq!(verdict(&r, &t).await.0, 401);
    // The same token without crit passes.
    assert_eq!(verdict(&r, &hs(claims("u"))).await.0, 200);
}

#[tokio::test]
async fn leeway_bounds_exp_and_nbf() {
    let r = hs_route("    leeway: 30s");
    let t = now();
    assert_eq!(
        verdict(&r, &hs(json!({ "sub": "u", "exp": t - 10 })))
            .await
            .0,
        200
    );
    let expired = hs(json!({ "sub": "u", "exp": t - 60 }));
    let mut q = req(
        "GET",
        "/",
        &[("authorization", &format!("Bearer {expired}"))],
    );
    let reply = run(&r, &mut q, &mut ctx()).await.unwrap().unwrap();
    assert_eq!(reply.status, 401);
    assert!(field(&reply, "www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    assert_eq!(
        verdict(
            &r,
            &hs(json!({ "sub": "u", "exp": t + 600, "nbf": t + 10 }))
        )
        .await
        .0,
        200
    );
    assert_eq!(
        verdict(
            &r,
            &hs(json!({ "sub": "u", "exp": t + 600, "nbf": t + 120 }))
        )
        .await
        .0,
        401
    );
    // `exp` is required by default.
    assert_eq!(verdict(&r, &hs(json!({ "sub": "u" }))).await.0, 401);
}

#[tokio::test]
async fn issuer_audience_and_scopes() {
    let r = hs_route(
        "    issuers: [\"https://idp/\"]\n    audiences: [api]\n    scopes_any: [\"orders:read\", \"orders:admin\"]\n    scopes_all: [basic]",
    );
    let t = now() + 600;
    let ok = json!({ "sub": "u", "exp": t, "iss": "https://idp/", "aud": "api", "scope": "basic orders:read" });
    assert_eq!(verdict(&r, &hs(ok.clone())).await.0, 200);
    let mut scp = ok.clone();
    scp["scope"] = json!(null);
    scp["scp"] = json!(["basic", "orders:admin"]);
    assert_eq!(verdict(&r, &hs(scp)).await.0, 200);
    for (k, v) in [
        ("iss", json!("https://evil/")),
        ("aud", json!("other")),
        ("scope", json!("basic")),
    ] {
        let mut bad = ok.clone();
        bad[k] = v;
        let (s, _) = verdict(&r, &hs(bad)).await;
        assert!(s == 401 || s == 403, "{k}: {s}");
    }
    let mut missing_all = ok.clone();
    missing_all["scope"] = json!("orders:read");
    assert_eq!(verdict(&r, &hs(missing_all)).await.0, 403);
}

#[tokio::test]
async fn an_accepted_token_names_the_consumer_forwards_claims_and_is_stripped() {
    let r = hs_route("    forward_claims: { sub: x-user-id, tenant: x-tenant }\n    strip_token: true\n    consumer_required: true");
    let t = hs(json!({ "sub": "alice", "tenant": "t1", "exp": now() + 600 }));
    let mut q = req(
        "GET",
        "/",
        &[
            ("authorization", &format!("Bearer {t}")),
            ("x-tenant", "forged"),
        ],
    );
    let mut c = ctx();
    assert_eq!(status(&r, &mut q, &mut c).await, 200);
    let who = c.consumer.as_ref().unwrap();
    assert_eq!((who.name.as_str(), who.groups.len()), ("alice", 1));
    assert_eq!(c.claim("tenant").as_deref(), Some("t1"));
    assert_eq!(header(&q, "x-user-id"), Some("alice"));
    assert_eq!(header(&q, "x-tenant"), Some("t1"));
    assert_eq!(header(&q, "authorization"), None);
    // consumer_required: a token for someone unknown is refused.
    let stranger = hs(json!({ "sub": "mallory", "exp": now() + 600 }));
    assert_eq!(verdict(&r, &stranger).await.0, 403);
}

#[tokio::test]
async fn tokens_from_a_cookie_or_query_and_size_bounds() {
    let r = hs_route("    token: { cookie: at }\n    max_token_size: 1KiB");
    let t = hs(claims("u"));
    let mut q = req("GET", "/", &[("cookie", &format!("x=1; at={t}"))]);
    assert_eq!(status(&r, &mut q, &mut ctx()).await, 200);
    // Not read from the Authorization header when a cookie is configured.
    assert_eq!(verdict(&r, &t).await.0, 401);
    let big = hs(json!({ "sub": "u", "exp": now() + 600, "pad": "x".repeat(2000) }));
    let mut q = req("GET", "/", &[("cookie", &format!("at={big}"))]);
    assert_eq!(status(&r, &mut q, &mut ctx()).await, 401);
    for garbage in ["", "a.b", "a.b.c", "....", "eyJ.eyJ.sig"] {
        let mut q = req("GET", "/", &[("cookie", &format!("at={garbage}"))]);
        assert_eq!(status(&r, &mut q, &mut ctx()).await, 401, "{garbage:?}");
    }
}

#[test]
fn configuration_errors_name_their_key() {
    let e = check_error("- jwt: { keys: [ { alg: HS999, secret: x } ] }");
    assert!(e.contains("jwt.keys[0]"), "{e}");
    let e = check_error("- jwt: {}");
    assert!(e.contains("jwt"), "{e}");
}
