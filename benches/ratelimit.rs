//! Local rate-limit check cost with 100,000 active keys: one thread, and two threads hammering
//! the same limiter at once (the target is under 200 ns per check in both).
//! `cargo bench --bench ratelimit`

use criterion::{criterion_group, criterion_main, Criterion};
use postern::plugins::key;
use postern::ratelimit::concurrency::Concurrency;
use postern::ratelimit::gcra::LocalGcra;
use postern::ratelimit::Quota;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: usize = 100_000;

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .collect()
}

fn limiter() -> LocalGcra {
    let l = LocalGcra::new(
        &[
            Quota {
                requests: 1_000_000,
                per: Duration::from_secs(1),
                burst: 1_000_000,
            },
            Quota {
                requests: 100_000_000,
                per: Duration::from_secs(3600),
                burst: 100_000_000,
            },
        ],
        Duration::ZERO,
        KEYS * 2,
    );
    for k in keys() {
        l.check(key::hash(&k));
    }
    l
}

fn bench(c: &mut Criterion) {
    let keys = Arc::new(keys());
    let l = Arc::new(limiter());
    assert_eq!(l.len(), KEYS);
    let hashes: Arc<Vec<u64>> = Arc::new(keys.iter().map(|k| key::hash(k)).collect());
    let mut g = c.benchmark_group("rate_limit_100k_keys");
    g.bench_function("check_1_thread", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(l.check(hashes[i]))
        })
    });
    g.bench_function("check_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let handles: Vec<_> = (0..2)
                .map(|t| {
                    let (l, hashes) = (l.clone(), hashes.clone());
                    std::thread::spawn(move || {
                        let mut i = t * 50_000;
                        for _ in 0..iters {
                            i = (i + 7919) % KEYS;
                            black_box(l.check(hashes[i]));
                        }
                    })
                })
                .collect();
            for h in handles {
                let _ = h.join();
            }
            // Wall time per check of one thread while the other runs too.
            start.elapsed()
        })
    });
    g.bench_function("hash_and_check_1_thread", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(l.check(key::hash(&keys[i])))
        })
    });
    g.bench_function("hash_and_check_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let handles: Vec<_> = (0..2)
                .map(|t| {
                    let (l, keys) = (l.clone(), keys.clone());
                    std::thread::spawn(move || {
                        let mut i = t * 50_000;
                        for _ in 0..iters {
                            i = (i + 7919) % KEYS;
                            black_box(l.check(key::hash(&keys[i])));
                        }
                    })
                })
                .collect();
            for h in handles {
                let _ = h.join();
            }
            // Wall time per check of one thread while the other runs too.
            start.elapsed()
        })
    });
    let conc = Arc::new(Concurrency::new(u32::MAX));
    g.bench_function("concurrency_acquire_release", |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(conc.acquire(key::hash(&keys[i])))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
