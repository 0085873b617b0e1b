//! Distribution of each balancing algorithm over real upstreams.

use crate::util::upstream::Upstream;
use crate::util::{client, Gateway};
use std::collections::HashMap;

async fn tally(gw: &Gateway, n: usize, header: Option<(&str, String)>) -> HashMap<String, usize> {
    let c = client();
    let mut counts = HashMap::new();
    for i in 0..n {
        let mut req = c.get(gw.url(&format!("/x?i={i}")));
        if let Some((k, v)) = &header {
            req = req.header(*k, v.replace("{i}", &i.to_string()));
        }
        let v: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
        *counts
            .entry(v["upstream"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    counts
}

fn conf(balance: &str, targets: &[(&Upstream, u32)], extra: &str) -> String {
    let t: Vec<String> = targets
        .iter()
        .map(|(u, w)| format!("{{ addr: \"{}\", weight: {w} }}", u.addr))
        .collect();
    format!("upstreams:\n  pool:\n    balance: {balance}\n{extra}    targets: [ {} ]\nroutes:\n  - {{ match: {{ path: /* }}, upstream: pool }}\n", t.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_follows_weights_exactly() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = Gateway::start(&conf("round_robin", &[(&a, 1), (&b, 3)], ""));
    let c = tally(&gw, 1000, None).await;
    // Smooth WRR over one shared cursor: exact shares per full cycle (threads share the cursor).
    assert_eq!(c["a"] + c["b"], 1000);
    assert!((248..=252).contains(&c["a"]), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_follows_weights_within_tolerance() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = Gateway::start(&conf("random", &[(&a, 1), (&b, 1)], ""));
    let c = tally(&gw, 1000, None).await;
    // Binomial(1000, 0.5): ±100 is more than 6 standard deviations.
    assert!((400..=600).contains(&c["a"]), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_avoids_the_busy_target() {
    let (slow, fast) = (Upstream::start("slow").await, Upstream::start("fast").await);
    slow.state
        .delay_ms
        .store(400, std::sync::atomic::Ordering::SeqCst);
    let gw = Gateway::start(&conf("least_conn", &[(&slow, 1), (&fast, 1)], ""));
    let c = client();
    // Keep 4 requests in flight at all times; the slow target holds its requests, so new ones
    // go to the fast target.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (c, url) = (c.clone(), gw.url(&format!("/x?i={i}")));
        set.spawn(async move {
            let v: serde_json::Value = c.get(url).send().await.unwrap().json().await.unwrap();
            v["upstream"].as_str().unwrap().to_string()
        });
        if set.len() >= 4 {
            set.join_next().await;
        }
    }
    while set.join_next().await.is_some() {}
    assert!(slow.hits() <= 8, "slow got {} of 40", slow.hits());
    assert!(fast.hits() >= 32);
}

/// The upstream that serves each of 200 `x-user` keys.
async fn owners(gw: &Gateway) -> Vec<String> {
    let c = client();
    let mut out = Vec::new();
    for i in 0..200 {
        let v: serde_json::Value = c
            .get(gw.url("/x"))
            .header("x-user", format!("user-{i}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        out.push(v["upstream"].as_str().unwrap().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_is_stable_and_moves_about_one_nth() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
        Upstream::start("d").await,
    ];
    let key = "    hash_key: header:x-user\n";
    let all: Vec<(&Upstream, u32)> = ups.iter().map(|u| (u, 1)).collect();
    let gw = Gateway::start(&conf("consistent_hash", &all, key));
    let first = owners(&gw).await;
    assert_eq!(first, owners(&gw).await, "same key, same target");
    drop(gw);
    // Remove target d: only d's keys may move.
    let three: Vec<(&Upstream, u32)> = ups[..3].iter().map(|u| (u, 1)).collect();
    let gw = Gateway::start(&conf("consistent_hash", &three, key));
    let second = owners(&gw).await;
    let moved = first.iter().zip(&second).filter(|(a, b)| a != b).count();
    assert!(
        first.iter().zip(&second).all(|(a, b)| a == b || a == "d"),
        "a key owned by a remaining target moved"
    );
    let owned_by_d = first.iter().filter(|u| *u == "d").count();
    assert_eq!(moved, owned_by_d);
    assert!(
        (20..=90).contains(&moved),
        "about 1/4 of 200 keys should move, moved {moved}"
    );
    // Without the key, the fallback (round robin) still serves.
    assert_eq!(
        client().get(gw.url("/x")).send().await.unwrap().status(),
        200
    );
}
