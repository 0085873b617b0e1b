//! `postern reload` and `postern upgrade`: acting on the running instance named by the
//! configuration's `server.pid_file`.
//!
//! - `reload`: check the file, then SIGHUP (routes, upstreams and plugins change; caches,
//!   counters and health are kept). When `postern upgrade` left a request next to the pid file,
//!   the binary hand-over instead. The systemd unit's `ExecReload` runs it, so
//!   `systemctl reload postern` is a configuration reload.
//! - `upgrade`: a new binary takes the listening sockets over (Pingora's graceful upgrade):
//!   under systemd it leaves the request and asks systemd for a reload, so the new process
//!   stays the service's main process; elsewhere it sends SIGQUIT to the running process and
//!   starts `postern run -u -d`, which receives the sockets while the old one drains.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// The file that asks the next `reload` for a binary hand-over.
fn request_path(pid_file: &str) -> PathBuf {
    Path::new(pid_file)
        .parent()
        .unwrap_or(Path::new("/run/postern"))
        .join("upgrade-requested")
}

/// Checks the configuration and returns its pid file.
fn checked(conf: &str) -> Result<String, String> {
    let shared = crate::shared::Shared::new();
    let (snapshot, _) =
        crate::snapshot::load_and_compile(conf, &shared).map_err(|e| e.to_string())?;
    Ok(snapshot.config.server.pid_file.clone())
}

fn running_pid(pid_file: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("no running instance: cannot read {pid_file}: {e}"))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{pid_file} does not hold a process id"))
}

fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    match status.success() {
        true => Ok(()),
        false => Err(format!(
            "process {pid} did not take SIG{sig} (is it running?)"
        )),
    }
}

/// `postern reload`: a configuration reload, or the binary hand-over `upgrade` asked for.
pub fn reload(conf: &str) -> Result<String, String> {
    let pid_file = checked(conf)?;
    let pid = running_pid(&pid_file)?;
    let request = request_path(&pid_file);
    if request.exists() {
        let _ = std::fs::remove_file(&request);
        return hand_over(conf, &pid_file, pid);
    }
    signal(pid, "HUP")?;
    Ok(format!("{conf}: reload signalled to process {pid}"))
}

/// `postern upgrade`: a new binary takes the sockets over. `systemctl`: go through systemd
/// (when it runs this system).
pub fn upgrade(conf: &str, systemctl: bool) -> Result<String, String> {
    let pid_file = checked(conf)?;
    let pid = running_pid(&pid_file)?;
    if systemctl && Path::new("/run/systemd/system").exists() {
        let request = request_path(&pid_file);
        std::fs::write(&request, b"upgrade\n")
            .map_err(|e| format!("cannot write {}: {e}", request.display()))?;
        let status = std::process::Command::new("systemctl")
            .args(["reload", "postern"])
            .status()
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        if !status.success() {
            let _ = std::fs::remove_file(&request);
            return Err("systemctl reload postern failed (see journalctl -u postern)".into());
        }
        return Ok("upgraded through systemd".into());
    }
    hand_over(conf, &pid_file, pid)
}

/// SIGQUIT to the running process (it sends its sockets over `server.upgrade_sock` and
/// drains), then this binary as `run -u -d`, whose parent returns once the new process serves.
fn hand_over(conf: &str, pid_file: &str, pid: u32) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    signal(pid, "QUIT")?;
    let mut new = std::process::Command::new(exe);
    new.args(["run", "-u", "-d", "-c", conf]);
    // The daemon keeps the standard streams it inherits when `server.error_log` is not set:
    // the journal under systemd, a file or pipe when redirected. A terminal it would write
    // to after this command returned, so there it gets none.
    if std::io::stderr().is_terminal() {
        new.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    }
    let status = new
        .status()
        .map_err(|e| format!("cannot start the new process: {e}"))?;
    if !status.success() {
        return Err(format!(
            "the new process failed to start ({status}); process {pid} drains and exits"
        ));
    }
    // The daemon's parent returns before the daemon writes its pid. Under systemd the pid
    // file is read again when this command (ExecReload) ends, and the old process exiting
    // must not look like the service's end: so return only once the file names the new one.
    let new_pid = wait_for_new_pid(pid_file, pid)?;
    Ok(format!(
        "{conf}: process {pid} handed its sockets to process {new_pid}"
    ))
}

/// Polls the pid file (every 10 ms, at most 10 s) until it names a process other than `old`.
fn wait_for_new_pid(pid_file: &str, old: u32) -> Result<u32, String> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(pid) = running_pid(pid_file) {
            if pid != old {
                return Ok(pid);
            }
        }
        if std::time::Instant::now() > until {
            return Err(format!(
                "the new process did not write {pid_file} within 10s (see its log)"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
