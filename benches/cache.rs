//! Cache key computation and a lookup hit in the in-memory storage with 10,000 entries.
//! `cargo bench --bench cache`

#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::Storage;
use pingora::cache::CacheMeta;
use postern::cache::storage::MemoryStorage;
use postern::cache::{CachePolicy, QueryKey};
use std::hint::black_box;
use std::time::{Duration, SystemTime};

fn policy() -> CachePolicy {
    CachePolicy {
        ttl: None,
        max_ttl: Duration::from_secs(3600),
        force_ttl: None,
        statuses: Some(vec![200]),
        targeted: vec![http::HeaderName::from_static("cdn-cache-control")],
        host_in_key: true,
        query: QueryKey::All,
        headers: vec![http::HeaderName::from_static("accept-language")],
        consumer_in_key: false,
        bypass_headers: Vec::new(),
        bypass_cookies: Vec::new(),
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::ZERO,
        store_set_cookie: false,
        x_cache: false,
    }
}

fn bench(c: &mut Criterion) {
    let p = policy();
    let mut req =
        pingora::http::RequestHeader::build("GET", b"/products/42?sort=price&page=2", None)
            .unwrap();
    req.insert_header("accept-language", "en").unwrap();
    let mut g = c.benchmark_group("cache");
    g.bench_function("key", |b| {
        b.iter(|| {
            black_box(postern::cache::key(&p, &req, Some("shop.example.com"), None).combined())
        })
    });

    let storage: &'static MemoryStorage =
        Box::leak(Box::new(MemoryStorage::new(256 << 20, 1 << 20)));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let trace = pingora::cache::trace::Span::inactive().handle();
    let now = SystemTime::now();
    let mut keys = Vec::new();
    for i in 0..10_000 {
        let r =
            pingora::http::RequestHeader::build("GET", format!("/products/{i}").as_bytes(), None)
                .unwrap();
        let key = postern::cache::key(&p, &r, Some("shop.example.com"), None);
        let mut resp = pingora::http::ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-type", "application/json")
            .unwrap();
        let meta = CacheMeta::new(now + Duration::from_secs(3600), now, 0, 0, resp);
        rt.block_on(async {
            let mut miss = storage.get_miss_handler(&key, &meta, &trace).await.unwrap();
            miss.write_body(bytes::Bytes::from(vec![b'x'; 4096]), true)
                .await
                .unwrap();
            miss.finish().await.unwrap();
        });
        keys.push(key);
    }
    let mut i = 0;
    g.bench_function("lookup_hit_10k_entries", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            rt.block_on(async {
                black_box(storage.lookup(&keys[i], &trace).await.unwrap().is_some())
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
