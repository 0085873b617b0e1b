//! Does route matching on a 1,000-route table stay under 1 µs per request (the budget of issue
//! #2)? Informs whether the router needs a different structure. Routes mix hosts, exact paths,
//! `{param}` segments and prefixes; requests hit exact, param, prefix and no-route cases.

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use postern::router::pattern::Pattern;
use postern::router::{path::normalize, Conditions, RequestView, Router};
use std::hint::black_box;

fn table(n: usize) -> Router<usize> {
    let mut r = Router::default();
    for i in 0..n {
        let (hosts, path) = match i % 5 {
            0 => (vec![], format!("/api/v1/service{i}/items")),
            1 => (vec![], format!("/api/v1/service{i}/items/{{id}}")),
            2 => (vec![], format!("/api/v1/service{i}/*")),
            3 => (
                vec![format!("tenant{i}.example.com")],
                "/t/{tenant}/orders/{id}".to_string(),
            ),
            _ => (vec!["*.example.com".to_string()], format!("/static{i}/*")),
        };
        let methods = if i % 2 == 0 {
            vec![Method::GET]
        } else {
            vec![]
        };
        r.insert(
            &hosts,
            &Pattern::parse(&path).unwrap(),
            Conditions {
                methods,
                ..Default::default()
            },
            i,
        );
    }
    r
}

fn bench(c: &mut Criterion) {
    let router = table(1000);
    let headers = HeaderMap::new();
    let mut g = c.benchmark_group("route_match_1000");
    let cases = [
        ("exact", "api.example.com", "/api/v1/service500/items"),
        ("param", "api.example.com", "/api/v1/service501/items/12345"),
        ("prefix", "api.example.com", "/api/v1/service502/a/b/c"),
        ("host_param", "tenant503.example.com", "/t/acme/orders/77"),
        ("no_route", "api.example.com", "/nothing/here/at/all"),
    ];
    for (name, host, path) in cases {
        g.bench_with_input(
            BenchmarkId::from_parameter(name),
            &(host, path),
            |b, (host, path)| {
                b.iter(|| {
                    let p = normalize(black_box(path)).unwrap();
                    let view = RequestView {
                        method: &Method::GET,
                        host: Some(host),
                        path: &p,
                        headers: &headers,
                        query: None,
                    };
                    black_box(router.find(&view).map(|f| *f.value))
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
