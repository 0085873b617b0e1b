//! Routing precedence table: each row is (request, expected route).

use super::*;

fn pat(p: &str) -> Pattern {
    Pattern::parse(p).unwrap()
}

fn router(routes: &[(&[&str], &str, &[&str], &str)]) -> Router<String> {
    let mut r = Router::default();
    for (hosts, path, methods, name) in routes {
        let hosts: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
        let conds = Conditions {
            methods: methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                .collect(),
            ..Default::default()
        };
        r.insert(&hosts, &pat(path), conds, name.to_string());
    }
    r
}

fn find<'a>(
    r: &'a Router<String>,
    method: &str,
    host: &str,
    path: &str,
) -> Option<(&'a str, Captures)> {
    let headers = HeaderMap::new();
    let m = Method::from_bytes(method.as_bytes()).unwrap();
    let view = RequestView {
        method: &m,
        host: Some(host),
        path,
        headers: &headers,
        query: None,
    };
    r.find(&view).map(|f| (f.value.as_str(), f.captures))
}

#[test]
fn precedence_table() {
    let r = router(&[
        (&[], "/*", &[], "catch-all"),
        (&[], "/users/*", &[], "users-prefix"),
        (&[], "/users/{id}", &[], "user-param"),
        (&[], "/users/me", &[], "user-me"),
        (&[], "/users/{id}/orders/*", &[], "orders-prefix"),
        (&[], "/users/{id}/orders/{oid}", &["GET"], "order-get"),
        (&[], "/users/{id}/orders/{oid}", &[], "order-any"),
        (&[], "/a/b/*", &[], "ab-prefix"),
        (&[], "/a/{x}/c", &[], "a-x-c"),
        (&["api.example.com"], "/users/*", &[], "api-users"),
        (&["*.example.com"], "/users/*", &[], "wild-users"),
        (&["*.eu.example.com"], "/users/*", &[], "eu-users"),
        (&[], "/", &[], "root"),
    ]);
    let rows: &[(&str, &str, &str, Option<&str>)] = &[
        ("GET", "x.test", "/users/me", Some("user-me")), // exact beats param
        ("GET", "x.test", "/users/42", Some("user-param")), // param beats prefix
        ("GET", "x.test", "/users/42/x", Some("users-prefix")), // prefix fallback
        ("GET", "x.test", "/users", Some("users-prefix")), // /x/* matches /x
        ("GET", "x.test", "/users/42/orders/7", Some("order-get")), // declaration order + method
        ("POST", "x.test", "/users/42/orders/7", Some("order-any")),
        (
            "GET",
            "x.test",
            "/users/42/orders/7/items",
            Some("orders-prefix"),
        ), // longer prefix wins
        ("GET", "x.test", "/a/b/c", Some("a-x-c")), // full match beats prefix
        ("GET", "x.test", "/a/b/d", Some("ab-prefix")),
        ("GET", "x.test", "/", Some("root")),
        ("GET", "x.test", "/other", Some("catch-all")),
        ("GET", "API.example.com:8080", "/users/1", Some("api-users")), // exact host, any case, port
        ("GET", "www.example.com", "/users/1", Some("wild-users")),
        ("GET", "a.eu.example.com", "/users/1", Some("eu-users")), // longest wildcard
        ("GET", "example.com", "/users/1", Some("user-param")),    // *.x does not match x
        ("GET", "api.example.com", "/nothing", Some("catch-all")), // falls back to any-host
    ];
    for (m, h, p, want) in rows {
        let got = find(&r, m, h, p).map(|(n, _)| n);
        assert_eq!(got, *want, "{m} {h}{p}");
    }
}

#[test]
fn no_route_is_none() {
    let r = router(&[(&[], "/users/{id}", &["GET"], "u")]);
    assert!(find(&r, "GET", "h", "/users").is_none());
    assert!(find(&r, "GET", "h", "/users/").is_none()); // empty segment is not a parameter
    assert!(find(&r, "DELETE", "h", "/users/1").is_none());
}

#[test]
fn captures_positions() {
    let r = router(&[
        (&[], "/users/{id}/orders/{oid}", &[], "o"),
        (&[], "/files/{dir}/*", &[], "f"),
    ]);
    let (_, c) = find(&r, "GET", "h", "/users/42/orders/7").unwrap();
    assert_eq!(c.params, vec![(7, 9), (17, 18)]);
    assert_eq!(c.rest, None);
    let (_, c) = find(&r, "GET", "h", "/files/docs/a/b.txt").unwrap();
    assert_eq!(c.params, vec![(7, 11)]);
    assert_eq!(
        &"/files/docs/a/b.txt"[c.rest.unwrap() as usize..],
        "a/b.txt"
    );
}

#[test]
fn header_and_query_conditions() {
    let mut r = Router::default();
    let v2 = Conditions {
        headers: vec![(
            HeaderName::from_static("x-api-version"),
            ValueMatch::parse("2").unwrap(),
        )],
        ..Default::default()
    };
    let beta = Conditions {
        query: vec![("beta".into(), ValueMatch::parse("true").unwrap())],
        ..Default::default()
    };
    r.insert(&[], &pat("/x"), v2, "v2");
    r.insert(&[], &pat("/x"), beta, "beta");
    r.insert(&[], &pat("/x"), Conditions::default(), "plain");
    let m = Method::GET;
    let mut headers = HeaderMap::new();
    fn view<'a>(m: &'a Method, h: &'a HeaderMap, q: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            method: m,
            host: None,
            path: "/x",
            headers: h,
            query: q,
        }
    }
    assert_eq!(*r.find(&view(&m, &headers, None)).unwrap().value, "plain");
    assert_eq!(
        *r.find(&view(&m, &headers, Some("beta=true")))
            .unwrap()
            .value,
        "beta"
    );
    headers.insert("x-api-version", "2".parse().unwrap());
    assert_eq!(
        *r.find(&view(&m, &headers, Some("beta=true")))
            .unwrap()
            .value,
        "v2"
    );
}

#[test]
fn strip_port_forms() {
    assert_eq!(strip_port("a.b:80"), "a.b");
    assert_eq!(strip_port("a.b"), "a.b");
    assert_eq!(strip_port("[::1]:80"), "[::1]");
}
