//! A real `redis-server` on a free loopback port, for cluster-wide rate limits. `make test`
//! installs Redis when missing.

use super::{free_port, KillOnDrop};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct RedisServer {
    pub port: u16,
    child: Option<KillOnDrop>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = free_port();
            if let Some(child) = spawn(port, &dir, &[]) {
                return RedisServer {
                    port,
                    child: Some(child),
                    dir,
                };
            }
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (an outage).
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.child = None;
        for _ in 0..50 {
            if let Some(c) = spawn(self.port, &self.dir, &[]) {
                self.child = Some(c);
                return;
            }
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// Sends one command and returns the raw reply.
    pub fn cmd(&self, args: &[&str]) -> String {
        Self::cmd_on(self.port, args)
    }

    /// True when the server does not answer a PING within 100 ms (e.g. during `DEBUG SLEEP`).
    pub fn is_stalled(&self) -> bool {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        s.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        let mut buf = [0u8; 16];
        s.read(&mut buf).is_err()
    }

    pub fn cmd_on(port: u16, args: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// Starts redis-server and waits for its "Ready to accept connections" line.
fn spawn(port: u16, dir: &tempfile::TempDir, extra: &[&str]) -> Option<KillOnDrop> {
    let mut child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.path().to_str().unwrap(),
            "--enable-debug-command",
            "yes",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is not installed (`make test` installs it)");
    let out = child.stdout.take().unwrap();
    let child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.contains("Ready to accept connections") {
                let _ = tx.send(true);
            }
        }
        let _ = tx.send(false);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(true) => Some(child),
        _ => None,
    }
}

/// A three-node Redis Cluster (no replicas) on free loopback ports, slots spread by redis-cli.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    _nodes: Vec<(KillOnDrop, tempfile::TempDir)>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        while nodes.len() < 3 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let conf = dir.path().join("nodes.conf");
            if let Some(child) = spawn(
                port,
                &dir,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                ],
            ) {
                nodes.push((child, dir));
                ports.push(port);
            }
        }
        let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli is needed (package redis-tools, installed with redis-server)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let poll = super::Poll::within(Duration::from_secs(20)).every(Duration::from_millis(50));
        for p in &ports {
            super::eventually_blocking(poll, "the Redis cluster becomes ready", || {
                RedisServer::cmd_on(*p, &["CLUSTER", "INFO"])
                    .contains("cluster_state:ok")
                    .then_some(())
            });
        }
        RedisCluster {
            ports,
            _nodes: nodes,
        }
    }

    /// The `cluster_nodes` list of the configuration.
    pub fn nodes_yaml(&self) -> String {
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("\"redis://127.0.0.1:{p}\""))
            .collect();
        format!("[ {} ]", urls.join(", "))
    }
}
