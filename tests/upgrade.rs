//! Graceful binary upgrade: a second process started with `-u` takes over the listening sockets
//! while the first drains; a load loop over keep-alive connections sees every request answered.

use crate::util::upstream::Upstream;
use crate::util::{upstream_yaml, Gateway, KillOnDrop, BIN};
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_loss_binary_upgrade() {
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: u }}\n",
        upstream_yaml("u", &[up.addr], "")
    );
    let mut gw = Gateway::start(&body);
    let mut load = crate::util::keep_alive_load(&gw.url("/x"), 4, 2000, "x-request-id");
    // The new process waits for the sockets on the upgrade socket; then the old one hands them
    // over on SIGQUIT and drains for grace_period (1 s in the harness).
    let mut next = KillOnDrop(
        Command::new(BIN)
            .args(["run", "-u", "-c", gw.conf.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    gw.signal("QUIT");
    let old_exit = tokio::task::spawn_blocking(move || {
        let status = gw.child.wait().unwrap();
        (status, gw)
    });
    let mut total = 0;
    while let Some(r) = load.join_next().await {
        total += r.unwrap().len();
    }
    let (status, _gw) = old_exit.await.unwrap();
    assert!(
        status.success(),
        "the old process exits cleanly: {status:?}"
    );
    assert_eq!(total, 8000, "every request answered");
    assert!(
        next.0.try_wait().unwrap().is_none(),
        "the new process keeps serving"
    );
}
