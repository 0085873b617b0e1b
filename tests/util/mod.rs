//! Test harness: runs the real `postern` binary on a generated config with loopback ports.

#![allow(dead_code)]

pub mod http;
pub mod redis;
pub mod upstream;
pub mod wait;

pub use wait::{eventually, eventually_blocking, eventually_with, poll_until, Poll};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_postern");

/// A port that was free a moment ago (bind-and-release). Callers retry on a bind race.
/// A port nothing listens on, for a gateway started next. Taken below the kernel's range of
/// ephemeral ports when there is room: a port from that range can be handed to an outgoing
/// connection of another test between this check and the gateway's bind ("is in use"), and
/// the gateway's readiness probe then reaches whoever holds it. Ports are walked from a
/// per-process offset, so one test process never hands out the same port twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            t.split_whitespace()
                .next()
                .and_then(|p| p.parse::<u32>().ok())
        })
        .unwrap_or(32768);
    let (base, top) = (10_000u32, ephemeral_start.min(65_535));
    if top > base + 1_000 {
        let span = top - base;
        let offset = std::process::id().wrapping_mul(2_654_435_761) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (base + (offset + n) % span) as u16;
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `postern run -c conf` with `env`, its log at `POSTERN_TEST_LOG` (default warn) on stderr.
fn spawn_postern(conf: &std::path::Path, env: &[(&str, String)]) -> Child {
    spawn_postern_logged(conf, env, None)
}

/// [`spawn_postern`], its log at `level` into a file when `log` is given.
fn spawn_postern_logged(
    conf: &std::path::Path,
    env: &[(&str, String)],
    log: Option<(&std::path::Path, &str)>,
) -> Child {
    let level = match log {
        Some((_, level)) => level.to_string(),
        None => std::env::var("POSTERN_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    };
    let stderr = match log {
        Some((path, _)) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::inherit(),
    };
    Command::new(BIN)
        .args(["run", "-c", conf.to_str().unwrap()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", level)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// A running gateway; killed on drop.
pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub admin: u16,
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    /// The generated part of the file (listeners, admin, server), kept for [`Gateway::rewrite`].
    head: String,
}

/// Bearer token of the admin listener in every test gateway.
pub const ADMIN_TOKEN: &str = "test-admin-token";

impl Gateway {
    /// Starts postern with `body` (YAML without `listeners`/`admin`, which are added here with
    /// free ports; `{extra_listeners}` may be placed by callers that need more).
    pub fn start(body: &str) -> Gateway {
        Self::start_with(body, "")
    }

    /// `extra` is appended to the generated listeners list (already indented items).
    pub fn start_with(body: &str, extra: &str) -> Gateway {
        Self::start_full(body, extra, "")
    }

    /// `server` is appended to the generated `server:` section (indented lines).
    pub fn start_full(body: &str, extra: &str, server: &str) -> Gateway {
        Self::start_logged(body, extra, server, None)
    }

    /// The process log goes to `dir/gateway.log` at `level` (see [`Gateway::log`]).
    pub fn start_with_log(body: &str, level: &str) -> Gateway {
        Self::start_logged(body, "", "", Some(level))
    }

    /// What the gateway logged (started with [`Gateway::start_with_log`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    fn start_logged(body: &str, extra: &str, server: &str, level: Option<&str>) -> Gateway {
        for _ in 0..5 {
            let (port, admin) = (free_port(), free_port());
            let dir = tempfile::tempdir().unwrap();
            let head = format!(
                "listeners:\n  - {{ name: main, addr: \"127.0.0.1:{port}\", h2c: true }}\n{extra}admin: {{ addr: \"127.0.0.1:{admin}\", token: {ADMIN_TOKEN} }}\nserver:\n  threads: 2\n  grace_period: 1s\n  graceful_shutdown_timeout: 1s\n  pid_file: {d}/postern.pid\n  upgrade_sock: {d}/upgrade.sock\n{server}",
                d = dir.path().display()
            );
            let yaml = format!("{head}{body}");
            let conf = dir.path().join("postern.yaml");
            std::fs::write(&conf, &yaml).unwrap();
            let log = dir.path().join("gateway.log");
            let child = spawn_postern_logged(&conf, &[], level.map(|l| (log.as_path(), l)));
            let mut gw = Gateway {
                child,
                port,
                admin,
                dir,
                conf,
                head,
            };
            if gw.wait_ready(Duration::from_secs(20)) {
                return gw;
            }
        }
        panic!("the gateway did not start");
    }

    /// Starts a node from an existing file (shared by several nodes) with its own environment:
    /// `POSTERN_LISTEN` and `POSTERN_ADMIN_LISTEN` (free loopback ports), `POSTERN_NODE`, and
    /// `env`. The file must take its addresses from those variables.
    pub fn start_node(conf: &std::path::Path, node: &str, env: &[(&str, String)]) -> Gateway {
        for _ in 0..5 {
            let (port, admin) = (free_port(), free_port());
            let mut vars = vec![
                ("POSTERN_NODE", node.to_string()),
                ("POSTERN_LISTEN", format!("127.0.0.1:{port}")),
                ("POSTERN_ADMIN_LISTEN", format!("127.0.0.1:{admin}")),
            ];
            vars.extend(env.iter().cloned());
            let child = spawn_postern(conf, &vars);
            let mut gw = Gateway {
                child,
                port,
                admin,
                dir: tempfile::tempdir().unwrap(),
                conf: conf.to_path_buf(),
                head: String::new(),
            };
            if gw.wait_ready(Duration::from_secs(20)) {
                return gw;
            }
        }
        panic!("the node did not start");
    }

    /// Polls the admin readiness endpoint until it answers (or the process died).
    fn wait_ready(&mut self, limit: Duration) -> bool {
        poll_until(Poll::within(limit), || {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(false);
            }
            let ready = raw(
                self.admin,
                "GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .starts_with("HTTP/1.1 200")
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok();
            ready.then_some(true)
        })
        .unwrap_or(false)
    }

    /// Rewrites the config file with a new body (same listeners, admin and server section).
    pub fn rewrite(&self, body: &str) {
        let tmp = self.dir.path().join("postern.yaml.tmp");
        std::fs::write(&tmp, format!("{}{body}", self.head)).unwrap();
        std::fs::rename(&tmp, &self.conf).unwrap();
    }

    /// Writes raw text as the config file (for broken-file tests).
    pub fn rewrite_raw(&self, text: &str) {
        std::fs::write(&self.conf, text).unwrap();
    }

    /// Sends a signal to the gateway process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// An admin request: (status, JSON body).
    pub fn admin_call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let resp = raw(self.admin, &format!("{method} {path} HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"));
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("{}");
        (
            status_of(&resp),
            serde_json::from_str(body).unwrap_or_default(),
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Sends raw bytes to the main listener and returns everything read until close.
    pub fn raw(&self, request: &str) -> String {
        raw(self.port, request)
    }

    /// The Prometheus text of the admin `/metrics` endpoint.
    pub fn metrics(&self) -> String {
        let resp = raw(
            self.admin,
            "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
    }

    /// Waits until a metric (name with labels, as printed) has the value.
    pub fn wait_metric(&self, name: &str, value: f64) {
        let mut text = String::new();
        let found = poll_until(Poll::within(Duration::from_secs(20)), || {
            text = self.metrics();
            (metric(&text, name) == Some(value)).then_some(())
        });
        assert!(
            found.is_some(),
            "timed out waiting for {name} = {value}:\n{text}"
        );
    }

    /// The admin `/upstreams` document.
    pub fn upstreams(&self) -> serde_json::Value {
        let resp = raw(
            self.admin,
            "GET /upstreams HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("{}");
        serde_json::from_str(body).unwrap_or_default()
    }

    /// Waits until `cond` holds on the admin `/upstreams` document (health state changes).
    pub fn wait_upstreams(&self, what: &str, cond: impl Fn(&serde_json::Value) -> bool) {
        let found = poll_until(Poll::within(Duration::from_secs(20)), || {
            cond(&self.upstreams()).then_some(())
        });
        assert!(
            found.is_some(),
            "timed out waiting for {what}: {}",
            self.upstreams()
        );
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request over a fresh connection; returns the whole response text.
pub fn raw(port: u16, request: &str) -> String {
    raw_bytes(port, request.as_bytes())
}

pub fn raw_bytes(port: u16, request: &[u8]) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    if s.write_all(request).is_err() {
        return String::new();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of a metric line starting with `name_and_labels` in Prometheus text.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Status code of a raw response.
pub fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Runs `postern check -c FILE`: (exit code, stderr + stdout).
pub fn check(file: &str) -> (i32, String) {
    let out = Command::new(BIN)
        .args(["check", "-c", file])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    (out.status.code().unwrap_or(-1), text)
}

pub fn client() -> reqwest::Client {
    client_builder().pool_max_idle_per_host(0).build().unwrap()
}

/// A reqwest builder with the ring crypto provider installed (reqwest is built without one).
pub fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

/// Kills a child process when dropped (so a failing test leaves nothing running).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn upstream_yaml(name: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let targets: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ addr: \"{a}\" }}"))
        .collect();
    format!(
        "  {name}:\n    targets: [ {} ]\n{extra}",
        targets.join(", ")
    )
}

/// `clients` keep-alive clients send `requests` GETs each to `url`; every request must get a 2xx
/// (a connection error or another status fails the test). Returns each response's `header` value.
pub fn keep_alive_load(
    url: &str,
    clients: usize,
    requests: usize,
    header: &'static str,
) -> tokio::task::JoinSet<Vec<String>> {
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let url = url.to_string();
        load.spawn(async move {
            let c = client_builder().pool_max_idle_per_host(1).build().unwrap();
            let mut seen = Vec::with_capacity(requests);
            for _ in 0..requests {
                let r = c.get(&url).send().await.expect("no request lost");
                assert!(r.status().is_success(), "status {}", r.status());
                seen.push(
                    r.headers()
                        .get(header)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                );
            }
            seen
        });
    }
    load
}

/// A fresh RSA 2048 key pair as PEM: (PKCS#8 private key, SubjectPublicKeyInfo public key).
/// Made with aws-lc-rs (rcgen's ring backend cannot generate RSA keys).
pub fn rsa_pem_pair() -> (String, String) {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
    use aws_lc_rs::signature::KeyPair;
    let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let private: Pkcs8V1Der = kp.as_der().unwrap();
    let public: PublicKeyX509Der = kp.public_key().as_der().unwrap();
    (
        pem("PRIVATE KEY", private.as_ref()),
        pem("PUBLIC KEY", public.as_ref()),
    )
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The first `n` complete JSON lines of a log file (waits up to 10 s for them).
pub fn read_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    read_until(path, |lines| lines.len() >= n)
}

/// The complete lines of the log once `done` holds for them (or after 10 s).
pub fn read_until(
    path: &std::path::Path,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let read = || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // A line still being written has no newline yet.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect::<Vec<serde_json::Value>>()
    };
    poll_until(Poll::DEFAULT, || Some(read()).filter(|l| done(l))).unwrap_or_else(read)
}

/// The spans of every OTLP/JSON export a test collector received.
pub fn exported_spans(received: &parking_lot::Mutex<Vec<String>>) -> Vec<serde_json::Value> {
    received
        .lock()
        .iter()
        .flat_map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).unwrap();
            v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}
