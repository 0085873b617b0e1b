//! The merge step of a composite: three 4 KiB JSON answers read as lazy documents, shaped (`target`, `allow`,
//! `deny`, `mapping`, `group`) and merged into one document, then serialized, as
//! `gateway::aggregate` does once its calls have answered; and the rendering of a call's path
//! template that reads an earlier answer.
//! `cargo bench --bench aggregate`

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use postern::aggregate::merge::{merge, Shape, Shaped};
use postern::aggregate::template::{Answer, Scope, Text};
use postern::context::RequestCtx;
use postern::transform::path::Path;
use postern::transform::template::Inputs;
use serde_json::{json, Value};
use std::hint::black_box;

/// A JSON answer of about `bytes` bytes: `{ "data": { "id", "name", "items": [...] }, "meta" }`.
fn answer(bytes: usize, kind: &str) -> Vec<u8> {
    let mut items = Vec::new();
    let mut i = 0u64;
    loop {
        items.push(json!({ "id": i, "sku": format!("{kind}-{i:04}"), "qty": i % 5, "price": 9.5 }));
        i += 1;
        let doc = json!({ "data": { "id": 7, "name": kind, "secret": "x", "items": items },
                          "meta": { "source": kind } });
        let v = serde_json::to_vec(&doc).unwrap();
        if v.len() >= bytes {
            return v;
        }
    }
}

fn paths(list: &[&str]) -> Vec<Path> {
    list.iter().map(|p| Path::parse(p).unwrap()).collect()
}

fn bench(c: &mut Criterion) {
    let bodies = [
        answer(4096, "order"),
        answer(4096, "user"),
        answer(4096, "stock"),
    ];
    let shapes = [
        (
            Shape {
                deny: paths(&["data.secret"]),
                ..Shape::default()
            },
            None,
        ),
        (
            Shape {
                target: Some(Path::parse("data").unwrap()),
                allow: paths(&["id", "name", "items"]),
                mapping: vec![(Path::parse("name").unwrap(), "display_name".into())],
                ..Shape::default()
            },
            Some("customer"),
        ),
        (
            Shape {
                target: Some(Path::parse("data.items").unwrap()),
                allow: paths(&["sku", "qty"]),
                ..Shape::default()
            },
            Some("stock"),
        ),
    ];
    let mut g = c.benchmark_group("aggregate");
    g.throughput(Throughput::Bytes(
        bodies.iter().map(|b| b.len() as u64).sum(),
    ));
    g.bench_function("merge 3 x 4 KiB", |b| {
        b.iter(|| {
            let parts: Vec<Shaped> = bodies
                .iter()
                .zip(&shapes)
                .enumerate()
                .map(|(i, (body, (shape, group)))| {
                    let text = std::str::from_utf8(black_box(body)).unwrap();
                    let node = shape.apply(shape.read(text).unwrap());
                    Shaped::of(node, ["order", "user", "stock"][i], *group)
                })
                .collect();
            black_box(merge(&parts, None))
        })
    });
    // For scale: what a `serde_json::Value` round trip of the same answers costs.
    g.bench_function("plain parse + serialize 3 x 4 KiB", |b| {
        b.iter(|| {
            for body in &bodies {
                let v: Value = serde_json::from_slice(black_box(body)).unwrap();
                black_box(v.to_string());
            }
        })
    });
    let order: Value = serde_json::from_slice(&bodies[0]).unwrap();
    let calls = vec![Some(Answer {
        status: 200,
        headers: http::HeaderMap::new(),
        body: order,
    })];
    let t = Text::parse(
        "/stock?skus=${calls.order.body.data.items[*].sku:csv}&id={id}",
        &["order"],
        &["id"],
        true,
    )
    .unwrap();
    let req = RequestCtx {
        params: vec![("id".into(), "42".into())],
        ..Default::default()
    };
    let inputs = Inputs::default();
    g.throughput(Throughput::Elements(1));
    g.bench_function("render a path reading an earlier answer", |b| {
        b.iter(|| {
            let scope = Scope {
                req: &req,
                inputs: &inputs,
                client_body: None,
                calls: &calls,
            };
            black_box(t.render_url(&scope).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
