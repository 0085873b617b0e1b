//! Two gateways in one process: each server owns its metrics, HTTP cache, drain state and
//! handoffs, so two can run side by side (started with `app::run_with` and stopped by a
//! signal of the test's own instead of the process's).

use crate::util::upstream::Upstream;
use crate::util::{client, eventually_blocking, free_port, metric, raw, Poll};
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::Arc;
use std::time::Duration;

/// A shutdown signal the test sends.
struct Stop(Arc<tokio::sync::Notify>);

#[async_trait::async_trait]
impl ShutdownSignalWatch for Stop {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

struct InProcess {
    port: u16,
    admin: u16,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    fn start(upstream: std::net::SocketAddr) -> InProcess {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        let d = dir.path().display();
        let conf = dir.path().join("postern.yaml");
        std::fs::write(
            &conf,
            format!(
                r#"listeners: [ {{ addr: "127.0.0.1:{port}" }} ]
admin: {{ addr: "127.0.0.1:{admin}" }}
server: {{ threads: 1, pid_file: {d}/p.pid, upgrade_sock: {d}/u.sock, grace_period: 1s, graceful_shutdown_timeout: 1s }}
upstreams: {{ u: {{ targets: [ {{ addr: "{upstream}" }} ] }} }}
routes:
  - {{ name: r, match: {{ path: /* }}, upstream: u, plugins: [ {{ cache: {{ ttl: 30s, x_cache: true }} }} ] }}
"#
            ),
        )
        .unwrap();
        let stop = Arc::new(tokio::sync::Notify::new());
        let signal = Box::new(Stop(stop.clone()));
        let path = conf.display().to_string();
        let thread = std::thread::spawn(move || {
            let flags = postern::app::RunFlags {
                daemon: false,
                upgrade: false,
                test: false,
            };
            postern::app::run_with(&path, flags, Some(signal))
        });
        let admin_port = admin;
        eventually_blocking(Poll::DEFAULT, "the in-process gateway serves", || {
            raw(
                admin_port,
                "GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .starts_with("HTTP/1.1 200")
            .then_some(())
        });
        InProcess {
            port,
            admin,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn metrics(&self) -> String {
        let r = raw(
            self.admin,
            "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        r.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
    }

    fn stop(mut self) {
        self.stop.notify_one();
        let t = self.thread.take().unwrap();
        eventually_blocking(
            Poll::within(Duration::from_secs(20)),
            "the gateway stops",
            || t.is_finished().then_some(()),
        );
        assert_eq!(t.join().unwrap(), Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_in_one_process_keep_their_own_state() {
    let up = Upstream::start("u").await;
    let (a, b) = (InProcess::start(up.addr), InProcess::start(up.addr));
    let c = client();
    let get =
        |g: &InProcess, path: &str| c.get(format!("http://127.0.0.1:{}{path}", g.port)).send();
    for _ in 0..3 {
        assert_eq!(get(&a, "/x").await.unwrap().status(), 200);
    }
    // The same URL on the other gateway: its own (empty) cache, so a miss.
    let first_b = get(&b, "/x").await.unwrap();
    assert_eq!(first_b.status(), 200);
    assert_eq!(first_b.headers()["x-cache"], "MISS");
    assert_eq!(get(&a, "/x").await.unwrap().headers()["x-cache"], "HIT");
    // Counted in the logging phase, just after each answer: wait for the expected counts.
    let counted = |g: &InProcess, want: f64, what: &str| {
        let key = "postern_http_requests_total{route=\"r\",status_class=\"2xx\"}";
        eventually_blocking(Poll::DEFAULT, what, || {
            (metric(&g.metrics(), key) == Some(want)).then_some(())
        });
    };
    counted(&a, 4.0, "gateway a counts its 4 requests");
    counted(&b, 1.0, "gateway b counts only its own request");
    // Stopping one leaves the other serving.
    a.stop();
    assert_eq!(get(&b, "/x").await.unwrap().status(), 200);
    b.stop();
}
