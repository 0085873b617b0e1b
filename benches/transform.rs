//! Body transformation costs: JSON field operations (parse + operations + serialize; on the
//! lazily parsed document the plugin uses, and on a `serde_json::Value`) against a plain
//! `serde_json` parse + serialize of the same document, at 1 KiB, 64 KiB and 1 MiB;
//! JSON → XML and XML → JSON at 64 KiB; collection shaping (filter + sort + page) on a
//! 10,000-item array. Targets: field ops ≤ 2× the plain round trip; shaping < 5 ms.
//! `cargo bench --bench transform`

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use postern::context::RequestCtx;
use postern::transform::shape::{Shape, ShapeConfig};
use postern::transform::template::Inputs;
use postern::transform::xml::{to_json, to_xml, XmlOptions};
use postern::transform::{JsonOpConfig, JsonOps};
use serde_json::{json, Value};
use std::hint::black_box;

/// A JSON document of about `bytes` bytes: an object with an `items` array.
fn document(bytes: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut doc = json!({ "items": [], "total": 0, "source": "bench" });
    let mut i = 0u64;
    loop {
        items.push(json!({
            "id": i, "sku": format!("item-{i:05}"), "price": (i * 7 % 100) as f64 + 0.25,
            "tags": ["alpha", "beta"], "in_stock": i % 3 != 0,
            "dims": { "w": i % 40, "h": i % 30 },
        }));
        i += 1;
        if i % 8 == 0 {
            doc["items"] = Value::Array(items.clone());
            if serde_json::to_vec(&doc).unwrap().len() >= bytes {
                break;
            }
        }
    }
    doc["total"] = json!(i);
    serde_json::to_vec(&doc).unwrap()
}

fn ops() -> JsonOps {
    let list: Vec<JsonOpConfig> = serde_json::from_value(json!([
        { "rename": { "from": "items[*].price", "to": "cost" } },
        { "remove": ["items[*].tags", "source"] },
        { "set": { "path": "meta.gateway", "value": "postern" } },
        { "default": { "path": "items[*].currency", "value": "EUR" } },
    ]))
    .unwrap();
    JsonOps::compile(&list, "bench").unwrap()
}

fn field_ops(c: &mut Criterion) {
    let ops = ops();
    let ctx = RequestCtx::default();
    let inputs = Inputs::default();
    let mut g = c.benchmark_group("json");
    for (name, size) in [("1KiB", 1 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)] {
        let doc = document(size);
        g.throughput(Throughput::Bytes(doc.len() as u64));
        g.bench_with_input(BenchmarkId::new("serde_round_trip", name), &doc, |b, d| {
            b.iter(|| {
                let v: Value = serde_json::from_slice(black_box(d)).unwrap();
                black_box(serde_json::to_vec(&v).unwrap())
            })
        });
        g.bench_with_input(BenchmarkId::new("field_ops_value", name), &doc, |b, d| {
            b.iter(|| {
                let mut v: Value = serde_json::from_slice(black_box(d)).unwrap();
                ops.apply(&mut v, &ctx, &inputs);
                black_box(serde_json::to_vec(&v).unwrap())
            })
        });
        // What the plugin runs: the lazily parsed document.
        g.bench_with_input(BenchmarkId::new("field_ops", name), &doc, |b, d| {
            b.iter(|| {
                let text = std::str::from_utf8(black_box(d)).unwrap();
                let mut node = ops.parse_lazy(text).unwrap();
                ops.apply_lazy(&mut node, &ctx, &inputs);
                let mut out = Vec::with_capacity(d.len() + 64);
                node.write_from(text, &mut out);
                black_box(out)
            })
        });
    }
    g.finish();
}

fn xml(c: &mut Criterion) {
    let o = XmlOptions::default();
    let doc = document(64 << 10);
    let v: Value = serde_json::from_slice(&doc).unwrap();
    let x = to_xml(&v, &o);
    let mut g = c.benchmark_group("xml");
    g.throughput(Throughput::Bytes(doc.len() as u64));
    g.bench_function("json_to_xml/64KiB", |b| {
        b.iter(|| {
            let v: Value = serde_json::from_slice(black_box(&doc)).unwrap();
            black_box(to_xml(&v, &o))
        })
    });
    g.throughput(Throughput::Bytes(x.len() as u64));
    g.bench_function("xml_to_json/64KiB", |b| {
        b.iter(|| {
            let v = to_json(black_box(&x), &o).unwrap();
            black_box(serde_json::to_vec(&v).unwrap())
        })
    });
    g.finish();
}

fn shaping(c: &mut Criterion) {
    let items: Vec<Value> = (0..10_000u64)
        .map(|i| {
            json!({ "id": i, "name": format!("n{:05}", (i * 7919) % 10_000), "price": (i * 37 % 1000) as f64 / 10.0,
                    "status": if i % 4 == 0 { "gone" } else { "active" } })
        })
        .collect();
    let doc = json!({ "data": items });
    let cfg: ShapeConfig = serde_json::from_value(json!({
        "target": "data", "filter": ["status", "price"], "sort": ["price", "name"],
        "paginate": { "default_per_page": 20 }, "wrap": { "key": "data" }
    }))
    .unwrap();
    let shape = Shape::compile(&cfg, "bench").unwrap();
    let q = "status=active&price[ge]=10&sort=-price,name&page=3&per_page=20";
    let req = shape.request(q).unwrap();
    c.bench_function("shape/filter_sort_page/10000", |b| {
        b.iter_batched(
            || doc.clone(),
            |d| black_box(shape.apply(d, &req, "/items", q).unwrap()),
            criterion::BatchSize::LargeInput,
        )
    });
}

criterion_group!(benches, field_ops, xml, shaping);
criterion_main!(benches);
