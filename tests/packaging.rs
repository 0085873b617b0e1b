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

/// `deploy/kubernetes/`: every manifest is valid against the Kubernetes schemas
/// (`kubernetes-validate --strict`, which `make test` installs from PyPI into the target
/// directory), and the configuration inside the ConfigMap passes `postern check`.
#[test]
fn kubernetes_manifests_are_valid() {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes"));
    let tool = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("tools/k8s-venv/bin/kubernetes-validate");
    assert!(
        tool.exists(),
        "{} is missing: `make test` installs it (python3 -m venv + pip install kubernetes-validate)",
        tool.display()
    );
    let mut manifests: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    manifests.sort();
    assert!(manifests.len() >= 4, "{manifests:?}");
    let out = Command::new(&tool)
        .args(["--strict", "--no-warn"])
        .args(&manifests)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    for kind in [
        "deployment/postern",
        "configmap/postern",
        "service/postern",
        "poddisruptionbudget/postern",
    ] {
        assert!(
            said.contains(&format!("passed for resource {kind} ")),
            "{kind} not validated: {said}"
        );
    }
    // kustomization.yaml names every manifest but the example Secret.
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    for m in &manifests {
        let name = m.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            kustomization.contains(&format!("- {name}")),
            name != "secret.example.yaml",
            "{name} in kustomization.yaml"
        );
    }

    // The configuration the pods run.
    let text = std::fs::read_to_string(dir.join("configmap.yaml")).unwrap();
    let cm: serde_json::Value = yaml_serde::from_str(&text).unwrap();
    let conf = cm["data"]["postern.yaml"].as_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("postern.yaml");
    std::fs::write(&path, conf).unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c", path.to_str().unwrap()])
        .env("POSTERN_ADMIN_TOKEN", "t")
        .env("CACHE_PURGE_TOKEN", "t")
        .env("REDIS_URL", "redis://postern-redis:6379")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The configuration the Debian package installs passes `postern check` (the package itself
/// is built and inspected by `make deb-check`).
#[test]
fn packaged_configuration_checks() {
    let (code, out) = crate::util::check(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/packaging/postern.yaml"
    ));
    assert_eq!(code, 0, "{out}");
}
