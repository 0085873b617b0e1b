//! The scale-out example (`conf/examples/cluster.yaml`, docs/cluster.md): three nodes started
//! from one file with per-node environment, sharing one Redis.

use crate::util::redis::RedisServer;
use crate::util::upstream::Upstream;
use crate::util::{client, eventually, Gateway};
use std::sync::atomic::Ordering::SeqCst;

/// The limit is exact across nodes, a purge on one node empties the others, and a change of the
/// shared file reaches every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_from_one_file_share_limits_purges_and_config() {
    let redis = RedisServer::start();
    let origin = Upstream::start("catalog").await;
    // The example as shipped, in a directory of its own (the "ConfigMap").
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("cluster.yaml");
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/examples/cluster.yaml"
    ))
    .unwrap()
    .replace(
        "/tmp/postern-",
        &format!("{}/postern-", dir.path().display()),
    )
    // On a machine busy with the rest of the suite a Redis round trip can pass the example's
    // 20 ms, and `allow` would then count per node: a generous timeout, and `deny` so that a
    // Redis error shows as a 503 instead of a silently local count.
    .replace("timeout: 20ms", "timeout: 5s")
    .replace("on_error: allow", "on_error: deny");
    assert!(example.contains("timeout: 5s") && example.contains("on_error: deny"));
    std::fs::write(&shared, &example).unwrap();
    let env = [
        ("REDIS_URL", redis.url()),
        ("CATALOG_ADDR", origin.addr.to_string()),
        ("POSTERN_ADMIN_TOKEN", "admin-secret".to_string()),
        ("CACHE_PURGE_TOKEN", "purge-secret".to_string()),
    ];
    let nodes: Vec<Gateway> = ["1", "2", "3"]
        .iter()
        .map(|n| Gateway::start_node(&shared, n, &env))
        .collect();
    for n in &nodes {
        n.wait_metric("postern_redis_up", 1.0);
    }
    let c = client();
    let get =
        |n: &Gateway, path: &str, key: &str| c.get(n.url(path)).header("x-api-key", key).send();

    // 100 per minute per key for the cluster: 150 requests spread over the three nodes.
    let started = std::time::Instant::now();
    let mut allowed = 0;
    for i in 0..150 {
        let r = get(&nodes[i % 3], &format!("/catalog/item-{}", i % 7), "k1")
            .await
            .unwrap();
        match r.status().as_u16() {
            200 => allowed += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    // The bucket refills one request every 0.6 s: on a busy machine the 150 requests may take
    // long enough for a refill to be allowed too. Counting per node would allow up to 150.
    let refilled = (started.elapsed().as_secs_f64() / 0.6).floor() as i32;
    assert!(
        (100..=100 + refilled).contains(&allowed),
        "the three nodes together allow exactly the limit: {allowed} (refills: {refilled})"
    );
    // Another key has its own budget.
    assert_eq!(
        get(&nodes[0], "/catalog/x", "k2").await.unwrap().status(),
        200
    );

    // Each node caches on its own; a PURGE on node 1 is applied by nodes 2 and 3 too.
    for n in &nodes {
        get(n, "/catalog/p", "k3").await.unwrap();
        let r = get(n, "/catalog/p", "k3").await.unwrap();
        assert_eq!(r.headers()["x-cache"], "HIT");
    }
    let hits_before = origin.state.hits.load(SeqCst);
    let r = c
        .request(
            reqwest::Method::from_bytes(b"PURGE").unwrap(),
            nodes[0].url("/catalog/p"),
        )
        .bearer_auth("purge-secret")
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    for n in &nodes[1..] {
        let what = format!("the purge reaches node {}", n.port);
        eventually(&what, || async move {
            let r = get(n, "/catalog/p", "k3").await.unwrap();
            (r.headers()["x-cache"] == "MISS").then_some(())
        })
        .await;
    }
    assert!(origin.state.hits.load(SeqCst) > hits_before);

    // A new version of the shared file (written whole, then renamed, as a ConfigMap update
    // is): every node picks it up through watch_config.
    let updated = example.replace("requests: 100, per: 1m", "requests: 3, per: 1m");
    assert_ne!(updated, example);
    let tmp = dir.path().join("cluster.yaml.new");
    std::fs::write(&tmp, updated).unwrap();
    std::fs::rename(&tmp, &shared).unwrap();
    for n in &nodes {
        n.wait_metric("postern_config_generation", 2.0);
    }
    // Three for the cluster under the new rule (a fresh key).
    let mut allowed = 0;
    for i in 0..9 {
        if get(&nodes[i % 3], "/catalog/y", "k4")
            .await
            .unwrap()
            .status()
            == 200
        {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 3);
}
