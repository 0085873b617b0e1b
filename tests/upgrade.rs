//! Graceful binary upgrade: a second process started with `-u` takes over the listening sockets
//! while the first drains; a load loop over keep-alive connections sees every request answered.

use crate::util::upstream::Upstream;
use crate::util::{upstream_yaml, Gateway, KillOnDrop, BIN};
use std::process::{Command, Stdio};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_loss_binary_upgrade() {
    let up = Upstream::start("u").await;
    // A cached composite: its misses are answered on the internal socket, handed over too.
    let body = format!(
        r#"cache: {{ memory: 16MiB }}
upstreams:
{}routes:
  - {{ match: {{ path: /* }}, upstream: u }}
  - name: c
    match: {{ path: "/c/{{id}}" }}
    plugins: [ {{ cache: {{ ttl: 30s }} }} ]
    aggregate: {{ calls: {{ a: {{ upstream: u, path: "/a/{{id}}", group: a }} }} }}
"#,
        upstream_yaml("u", &[up.addr], "")
    );
    let mut gw = Gateway::start(&body);
    let composite = |gw: &Gateway, id: u32| {
        let url = gw.url(&format!("/c/{id}"));
        async move {
            let r = crate::util::client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, text) = composite(&gw, 1).await;
    assert!(s == 200 && text.contains("/a/1"), "{s} {text}");
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
    let (s, text) = composite(&_gw, 2).await;
    assert!(
        s == 200 && text.contains("/a/2"),
        "a miss after the upgrade: {s} {text}"
    );
}

/// `postern reload` (what `systemctl reload postern` runs): a configuration reload by SIGHUP
/// after a check; a file that does not check is refused before anything is signalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postern_reload_checks_then_signals() {
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: u }}\n",
        upstream_yaml("u", &[up.addr], "")
    );
    let gw = crate::util::Gateway::start(&body);
    let reload = || {
        Command::new(BIN)
            .args(["reload", "-c", gw.conf.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = reload();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gw.wait_metric("postern_config_generation", 2.0);
    gw.rewrite(&format!(
        "{body}  - {{ match: {{ path: /x }}, upstream: nope }}\n"
    ));
    let out = reload();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown upstream"));
}

/// `postern upgrade` outside systemd: the running process hands its sockets to a new daemon
/// started from this binary, and every request of a keep-alive load is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postern_upgrade_hands_the_sockets_over() {
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: u }}\n",
        upstream_yaml("u", &[up.addr], "")
    );
    let mut gw = crate::util::Gateway::start(&body);
    let old = gw.child.id();
    let mut load = crate::util::keep_alive_load(&gw.url("/x"), 4, 1000, "x-request-id");
    let conf = gw.conf.clone();
    // Files, not pipes: the new daemon keeps the standard streams it inherits (its logs go
    // there, as into the journal under systemd), so a pipe would never reach end of file.
    let log = gw.dir.path().join("upgrade.log");
    let file = std::fs::File::create(&log).unwrap();
    let status = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["upgrade", "--no-systemctl", "-c", conf.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{said}");
    assert!(said.contains("handed its sockets"), "{said}");
    let status = gw.child.wait().unwrap();
    assert!(
        status.success(),
        "the old process drains and exits: {status:?}"
    );
    let mut total = 0;
    while let Some(r) = load.join_next().await {
        total += r.unwrap().len();
    }
    assert_eq!(total, 4000, "every request answered");
    // The new daemon wrote its pid file and serves.
    let pid_file = gw.dir.path().join("postern.pid");
    let new: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(new, old);
    assert!(
        said.contains(&format!("to process {new}")),
        "upgrade returns once the pid file names the new process: {said}"
    );
    let r = crate::util::client()
        .get(gw.url("/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = Command::new("kill").arg(new.to_string()).status();
}
