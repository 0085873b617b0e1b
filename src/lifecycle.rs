//! Process start and stop around Pingora's server loop: listening addresses checked before
//! anything starts, and a binary upgrade (SIGQUIT) that only hands the sockets over when a new
//! process is there to take them.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// How long SIGQUIT waits for a new process (`postern run -u`) to listen on the upgrade socket.
const UPGRADE_WAIT: Duration = Duration::from_secs(5);

/// SIGQUIT (upgrade), SIGTERM (graceful stop) and SIGINT (fast stop), as Pingora's own watch,
/// except that an upgrade goes ahead only once the new process listens on `upgrade_sock`.
/// Pingora's sender gives up after a few seconds and shuts the old process down all the same,
/// so a new process that failed to start (bad configuration, busy port) left nothing serving;
/// here the old process logs the failed upgrade and keeps serving.
pub struct Signals {
    pub upgrade_sock: String,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers; stopping");
            return ShutdownSignal::FastShutdown;
        };
        loop {
            tokio::select! {
                _ = quit.recv() => {
                    if self.new_process_waiting().await {
                        return ShutdownSignal::GracefulUpgrade;
                    }
                    log::error!(
                        "upgrade abandoned: no new process listened on {} within {UPGRADE_WAIT:?}; this process keeps serving",
                        self.upgrade_sock
                    );
                }
                _ = term.recv() => return ShutdownSignal::GracefulTerminate,
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
    }
}

impl Signals {
    /// The new process creates the upgrade socket when it is ready to receive the listeners.
    async fn new_process_waiting(&self) -> bool {
        let deadline = tokio::time::Instant::now() + UPGRADE_WAIT;
        while tokio::time::Instant::now() < deadline {
            let listening = std::fs::metadata(&self.upgrade_sock)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
            if listening {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

/// Binds every address once before anything starts: Pingora binds each listener inside its
/// service's thread and retries a busy address for about 30 s, then panics that thread and
/// leaves the process running without it. `inherited`: addresses the process being replaced
/// (`-u`) listens on and hands over; those are busy by design.
pub fn check_addresses(
    listeners: &[(String, String)],
    inherited: &[SocketAddr],
) -> Result<(), String> {
    for (what, addr) in listeners {
        let addrs = addr
            .to_socket_addrs()
            .map_err(|e| format!("{what}: invalid address {addr}: {e}\n"))?;
        for sa in addrs {
            if inherited.contains(&sa) {
                continue;
            }
            if let Err(e) = std::net::TcpListener::bind(sa) {
                return Err(format!(
                    "{what}: cannot listen on {sa}: {e}\n  hint: another process holds the port; stop it or change the address\n"
                ));
            }
        }
    }
    Ok(())
}

/// The TCP addresses the process in `pid_file` listens on (Linux `/proc`): the sockets a `-u`
/// start will receive. Empty when they cannot be read.
pub fn listening_addresses_of(pid_file: &str) -> Vec<SocketAddr> {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
    else {
        return Vec::new();
    };
    let inodes: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| {
            t.lines()
                .skip(1)
                .filter_map(|l| listening_entry(l, &inodes))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One line of `/proc/net/tcp{,6}`: its local address when it is a listening socket (`0A`)
/// whose inode is in `inodes`.
fn listening_entry(line: &str, inodes: &std::collections::HashSet<u64>) -> Option<SocketAddr> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
    if *state != "0A" || !inodes.contains(&inode.parse().ok()?) {
        return None;
    }
    let (ip, port) = local.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // The kernel prints the address as 32-bit words in host byte order.
    let words: Vec<u32> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).map(u32::from_be))
        .collect::<Result<_, _>>()
        .ok()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    let ip = match bytes.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_lines() {
        let inodes = [12345u64].into_iter().collect();
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            listening_entry(v4, &inodes),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        let other = v4.replace("12345", "999");
        assert_eq!(listening_entry(&other, &inodes), None);
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(listening_entry(&established, &inodes), None);
        let v6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            listening_entry(v6, &inodes),
            Some("[::1]:8080".parse().unwrap())
        );
    }

    #[test]
    fn this_process_listens_where_it_bound() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("pid");
        std::fs::write(&pid, std::process::id().to_string()).unwrap();
        let found = listening_addresses_of(pid.to_str().unwrap());
        assert!(found.contains(&l.local_addr().unwrap()), "{found:?}");
    }
}
