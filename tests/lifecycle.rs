//! Start-up and stop of the process: a busy listening port fails start-up, and a graceful stop
//! ends as soon as nothing is in flight instead of sleeping the whole grace period.

use crate::util::upstream::Upstream;
use crate::util::{free_port, raw, status_of, upstream_yaml, KillOnDrop, BIN};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Waits for the child to exit (at most `limit`); `None` if it is still running.
fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    crate::util::poll_until(crate::util::Poll::within(limit), || {
        child.try_wait().unwrap()
    })
}

fn config(
    dir: &std::path::Path,
    port: u16,
    admin: u16,
    grace: &str,
    body: &str,
) -> std::path::PathBuf {
    let conf = dir.join("postern.yaml");
    std::fs::write(
        &conf,
        format!(
            r#"listeners:
  - {{ name: main, addr: "127.0.0.1:{port}" }}
admin: {{ addr: "127.0.0.1:{admin}" }}
server:
  threads: 2
  grace_period: {grace}
  graceful_shutdown_timeout: 1s
  pid_file: {d}/postern.pid
  upgrade_sock: {d}/upgrade.sock
{body}"#,
            d = dir.display()
        ),
    )
    .unwrap();
    conf
}

/// Regression (issue 12): with its port in use, Pingora retried for 30 s, its thread panicked,
/// and the process stayed up answering `/health` while serving nothing.
#[test]
fn a_busy_port_fails_start_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let conf = config(dir.path(), port, free_port(), "1s", "routes: []\n");
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["run", "-c", conf.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = wait_exit(&mut child.0, Duration::from_secs(10)).expect("start-up fails at once");
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    use std::io::Read;
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains("listener main") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

/// Regression (issue 12): SIGTERM on an idle gateway waited the whole `grace_period`. A request
/// in flight still finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_once_nothing_is_in_flight() {
    let up = Upstream::start("u").await;
    up.state
        .delay_ms
        .store(600, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: u }}\n",
        upstream_yaml("u", &[up.addr], "")
    );
    let conf = config(dir.path(), port, admin, "60s", &body);
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["run", "-c", conf.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let poll = crate::util::Poll::within(Duration::from_secs(20)).every(Duration::from_millis(50));
    crate::util::eventually_blocking(poll, "the gateway starts", || {
        raw(
            port,
            "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        .starts_with("HTTP/1.1 200")
        .then_some(())
    });
    // A slow request is in flight when the signal arrives.
    let hits = up.hits();
    let slow = std::thread::spawn(move || {
        raw(
            port,
            "GET /slow HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
    });
    while up.hits() == hits {
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let status = wait_exit(&mut child.0, Duration::from_secs(20)).expect("exited");
    assert!(status.success(), "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "not the 60 s grace period: {:?}",
        sent.elapsed()
    );
    assert_eq!(
        status_of(&slow.join().unwrap()),
        200,
        "the request in flight finished"
    );
}

/// Regression (issue 12): an upgrade whose new process cannot start must leave the old one
/// serving. Here the new configuration adds a listener on a busy port: the new process fails
/// before taking the sockets, and the old one, told to hand over, keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_leaves_the_old_process_serving() {
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: u }}\n",
        upstream_yaml("u", &[up.addr], "")
    );
    let mut gw = crate::util::Gateway::start(&body);
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = holder.local_addr().unwrap();
    let text = std::fs::read_to_string(&gw.conf).unwrap();
    gw.rewrite_raw(&text.replacen(
        "listeners:\n",
        &format!("listeners:\n  - {{ name: extra, addr: \"{busy}\" }}\n"),
        1,
    ));
    gw.signal("QUIT");
    let out = Command::new(BIN)
        .args(["run", "-u", "-c", gw.conf.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the new process fails");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listener extra") && err.contains("cannot listen"),
        "{err}"
    );
    // Past the 5 s the old process waits for a new one, it still serves.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        let resp = gw.raw("GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        assert_eq!(status_of(&resp), 200, "{resp}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the old process is still running"
    );
}
