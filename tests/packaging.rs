//! What the operator installs: the systemd unit is valid and hardened.

use crate::util::BIN;
use std::process::Command;

/// `systemd-analyze verify` finds nothing wrong with the unit (its binary paths pointed at the
/// tested build), and `systemd-analyze security` rates its exposure at 2.5 or better.
#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/postern.service"
    ))
    .unwrap()
    .replace("/usr/bin/postern", BIN);
    let path = dir.path().join("postern.service");
    std::fs::write(&path, unit).unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (package systemd; make test installs it)");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success(), "{said}");
    assert!(
        !said.contains("postern.service"),
        "verify complains: {said}"
    );

    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for postern.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(level <= 2.5, "exposure {level} > 2.5:\n{text}");
}
