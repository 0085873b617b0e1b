//! Every file under conf/ is loaded by `postern check`: examples must pass, and each file in
//! conf/invalid/ must fail with the message its first line announces (`# expect: ...`).

use crate::util::{check, BIN};
use std::path::{Path, PathBuf};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_example_config_is_valid() {
    let mut files = Vec::new();
    yaml_files(&root().join("conf"), &mut files);
    let mut checked = 0;
    for f in files
        .iter()
        .filter(|f| !f.starts_with(root().join("conf/invalid")))
    {
        if f.starts_with(root().join("conf/monitoring")) {
            continue; // Prometheus rules, checked by promtool where installed
        }
        let rel = f.strip_prefix(root()).unwrap();
        let out = std::process::Command::new(BIN)
            .current_dir(root())
            .args(["check", "-c", rel.to_str().unwrap()])
            // Secrets the examples take from the environment.
            .env("CI_BOT_API_KEY", "example-key")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            rel.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} example files found");
}

/// The load-test scenarios are configs too: rendered as the bench harness renders them (ports
/// and a Redis port filled in), each must pass `postern check`.
#[test]
fn every_load_test_scenario_is_valid() {
    let dir = root().join("load-tests/scenarios");
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".yaml.tmpl") else {
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("@LISTEN_PORT@", "28503")
            .replace("@UP_PORT@", "28480")
            .replace("@REDIS_PORT@", "6379");
        assert!(!text.contains('@'), "{name}: a placeholder is left");
        let rendered = tmp.path().join(format!("{stem}.yaml"));
        std::fs::write(&rendered, text).unwrap();
        let out = std::process::Command::new(BIN)
            .args(["check", "-c", rendered.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} scenarios found");
}

#[test]
fn every_invalid_config_fails_with_its_expected_message() {
    let mut files = Vec::new();
    yaml_files(&root().join("conf/invalid"), &mut files);
    assert!(files.len() >= 10);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        // Every leading `# expect:` line must be found in the output.
        let expects: Vec<&str> = text
            .lines()
            .map_while(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expects.is_empty(),
            "{}: first line must be `# expect: ...`",
            f.display()
        );
        let rel = f
            .strip_prefix(root())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let out = std::process::Command::new(BIN)
            .current_dir(root())
            .args(["check", "-c", &rel])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{rel} should be rejected");
        for expect in expects {
            assert!(
                stderr.contains(expect),
                "{rel}: expected `{expect}` in:\n{stderr}"
            );
        }
    }
}

#[test]
fn check_reports_missing_files_and_schema_is_json() {
    let (code, text) = check("/nonexistent/postern.yaml");
    assert_eq!(code, 1);
    assert!(text.contains("cannot read the file"), "{text}");
    let out = std::process::Command::new(BIN)
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema["properties"]["routes"].is_object());
    assert!(schema["properties"]["upstreams"].is_object());
    let required = schema["required"].as_array().unwrap();
    assert!(required.iter().any(|r| r == "listeners"));
}

/// Regression (issue 12): `postern schema | head` panicked on the broken pipe.
#[test]
fn schema_into_a_closed_pipe_exits_quietly() {
    let mut child = std::process::Command::new(BIN)
        .arg("schema")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the child writes: its write fails with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{:?} {stderr}", out.status);
}

#[test]
fn environment_variables_are_expanded() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("env.yaml");
    std::fs::write(&f, "version: 1\nlisteners: [ { addr: \"${POSTERN_TEST_ADDR}\" } ]\nserver: { threads: ${POSTERN_TEST_THREADS:-3} }\n").unwrap();
    let out = std::process::Command::new(BIN)
        .env("POSTERN_TEST_ADDR", "127.0.0.1:1")
        .args(["check", "-c", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(BIN)
        .env("POSTERN_TEST_ADDR", "not-an-address")
        .args(["check", "-c", f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("listeners[0].addr (line 2): invalid address \"not-an-address\""));
}

/// Metric names the gateway exports (kept in step with src/observability/metrics.rs).
const EXPORTED: &[&str] = &[
    "postern_http_requests_total",
    "postern_http_requests_by_method_total",
    "postern_http_request_duration_seconds",
    "postern_http_body_bytes_total",
    "postern_upstream_response_seconds",
    "postern_upstream_retries_total",
    "postern_http_requests_in_flight",
    "postern_upstream_target_up",
    "postern_config_reloads_total",
    "postern_config_generation",
    "postern_access_log_dropped_total",
    "postern_ratelimit_requests_total",
    "postern_redis_up",
    "postern_redis_errors_total",
    "postern_auth_failures_total",
    "postern_cache_requests_total",
    "postern_cache_evictions_total",
    "postern_cache_stored_bytes_total",
    "postern_cache_disk_bytes",
    "postern_trace_spans_dropped_total",
    "postern_circuit_state",
    "postern_circuit_transitions_total",
    "postern_retries_total",
    "postern_fallbacks_total",
    "postern_mirror_requests_total",
    "postern_faults_injected_total",
    "postern_aggregate_calls_total",
    "postern_aggregate_call_duration_seconds",
];

fn metric_names(text: &str) -> Vec<String> {
    let re_start = "postern_";
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(re_start) {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end]
            .trim_end_matches("_bucket")
            .trim_end_matches("_count")
            .trim_end_matches("_sum");
        out.push(name.to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn monitoring_rules_and_dashboard_are_valid() {
    let dir = root().join("conf/monitoring");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap())
            .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let rules = std::fs::read_to_string(dir.join("alerts.yaml")).unwrap();
    for name in metric_names(&dash.to_string())
        .into_iter()
        .chain(metric_names(&rules))
    {
        assert!(
            EXPORTED.contains(&name.as_str()),
            "{name} is used by the dashboard or rules but not exported"
        );
    }
    let out = std::process::Command::new("promtool")
        .args(["check", "rules", dir.join("alerts.yaml").to_str().unwrap()])
        .output()
        .expect("promtool is needed (make test installs the prometheus package)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn version_completions_and_man_page() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let v = run(&["--version"]);
    assert!(v.starts_with("postern 0."), "{v}");
    assert!(v.contains("commit ") && v.contains("pingora 0.9.1"), "{v}");
    assert!(run(&["completions", "bash"]).contains("complete -F _postern"));
    assert!(run(&["completions", "zsh"]).contains("#compdef postern"));
    assert!(run(&["completions", "fish"]).contains("complete -c postern"));
    let man = run(&["man"]);
    assert!(
        man.contains(".TH postern 1") && man.contains("check"),
        "{man}"
    );
}

/// Without `-c`, `check` (like `run`) reads /etc/postern/postern.yaml, else ./conf/postern.yaml.
#[test]
fn the_default_config_is_the_installed_one_then_the_checkout_s() {
    let out = std::process::Command::new(BIN)
        .current_dir(root())
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = if Path::new("/etc/postern/postern.yaml").exists() {
        "/etc/postern/postern.yaml"
    } else {
        "conf/postern.yaml"
    };
    assert!(text.starts_with(expected), "{text}");
    let tmp = tempfile::tempdir().unwrap();
    if !Path::new("/etc/postern/postern.yaml").exists() {
        let out = std::process::Command::new(BIN)
            .current_dir(tmp.path())
            .arg("check")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("/etc/postern/postern.yaml"), "{err}");
    }
}

/// `server.log: { format: json }`: every process log line is a JSON object.
#[test]
fn process_logs_can_be_json() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("postern.yaml");
    let port = crate::util::free_port();
    std::fs::write(
        &conf,
        format!(
            r#"version: 1
listeners: [ {{ addr: "127.0.0.1:{port}" }} ]
server:
  pid_file: {d}/p.pid
  upgrade_sock: {d}/u.sock
  log: {{ format: json, level: info }}
upstreams:
  a: {{ targets: [ {{ addr: "127.0.0.1:1" }} ] }}
routes:
  - {{ match: {{ path: /* }}, upstream: a }}
"#,
            d = dir.path().display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["run", "-c", conf.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(v["level"], "INFO");
    assert!(
        v["message"].as_str().unwrap().contains("starting with"),
        "{v}"
    );
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
}

/// A schema node as a type for the reference: `string`, `list of [Route](#route)`...
fn type_of(v: &serde_json::Value) -> String {
    if let Some(r) = v.get("$ref").and_then(|r| r.as_str()) {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("[{name}](#{})", name.to_ascii_lowercase());
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = v.get(key).and_then(|a| a.as_array()) {
            let parts: Vec<String> = alts
                .iter()
                .filter(|a| a.get("type") != Some(&serde_json::json!("null")))
                .map(type_of)
                .collect();
            return parts.join(" or ");
        }
    }
    if let Some(e) = v.get("enum").and_then(|e| e.as_array()) {
        let names: Vec<String> = e
            .iter()
            .map(|x| format!("`{}`", x.as_str().unwrap_or("?")))
            .collect();
        return format!("one of {}", names.join(", "));
    }
    if let Some(c) = v.get("const") {
        return format!("`{}`", c.as_str().map_or(c.to_string(), str::to_string));
    }
    let ty = match v.get("type") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|t| t.as_str())
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    };
    match ty.as_str() {
        "array" => format!("list of {}", v.get("items").map_or("any".into(), type_of)),
        "object" => match v.get("additionalProperties") {
            Some(a) if a.is_object() => format!("map of {}", type_of(a)),
            _ => "object".into(),
        },
        _ => ty,
    }
}

fn cell(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// The configuration reference, rendered from the JSON Schema: every key of every section.
fn render_reference(schema: &serde_json::Value) -> String {
    let mut out = String::from(
        r#"# Configuration reference

Generated from `postern schema` (the JSON Schema of the configuration) by the test
`configuration_reference_matches_the_schema`; do not edit by hand: after changing the
schema, run `UPDATE_DOCS=1 cargo test --test e2e configuration_reference` and commit the
result. The walk-through with examples is [configuration.md](configuration.md).
"#,
    );
    let mut sections: Vec<(String, &serde_json::Value)> = vec![("Config".into(), schema)];
    if let Some(defs) = schema.get("$defs").and_then(|d| d.as_object()) {
        let mut names: Vec<&String> = defs.keys().collect();
        names.sort();
        sections.extend(names.into_iter().map(|n| (n.clone(), &defs[n])));
    }
    for (name, def) in sections {
        out.push_str(&format!("\n## {name}\n\n"));
        if let Some(d) = def.get("description").and_then(|d| d.as_str()) {
            out.push_str(&format!("{}\n\n", d.trim()));
        }
        let props = def.get("properties").and_then(|p| p.as_object());
        let variants = def
            .get("oneOf")
            .or_else(|| def.get("anyOf"))
            .and_then(|o| o.as_array());
        if let Some(props) = props {
            let required: Vec<&str> = def
                .get("required")
                .and_then(|r| r.as_array())
                .map(|r| r.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            out.push_str("| key | type | default | description |\n|---|---|---|---|\n");
            for (k, v) in props {
                let default = match v.get("default") {
                    // An object's defaults are listed in its own section.
                    Some(d) if d.is_object() => String::new(),
                    Some(d) if d.to_string().len() > 60 => "(see description)".into(),
                    Some(d) => format!("`{d}`"),
                    None if required.contains(&k.as_str()) => "required".into(),
                    None => String::new(),
                };
                let desc = v.get("description").and_then(|d| d.as_str()).unwrap_or("");
                out.push_str(&format!(
                    "| `{k}` | {} | {} | {} |\n",
                    cell(&type_of(v)),
                    cell(&default),
                    cell(desc)
                ));
            }
        } else if let Some(vs) = variants {
            out.push_str("One of:\n\n");
            for v in vs {
                let desc = v.get("description").and_then(|d| d.as_str()).unwrap_or("");
                // A key whose value has a section of its own links to it (the plugin list).
                let keys = v.get("properties").and_then(|p| p.as_object()).map(|p| {
                    p.iter()
                        .map(|(k, pv)| match pv.get("$ref") {
                            Some(_) => format!("`{k}` ({})", type_of(pv)),
                            None => format!("`{k}`"),
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                });
                match keys {
                    Some(k) => out.push_str(&format!("- an object with {k}: {}\n", cell(desc))),
                    None => out.push_str(&format!("- {}: {}\n", cell(&type_of(v)), cell(desc))),
                }
            }
        } else {
            out.push_str(&format!("Type: {}\n", cell(&type_of(def))));
        }
    }
    out
}

/// docs/reference.md lists every key of the JSON Schema: a key added to the schema without
/// regenerating the reference fails here.
#[test]
fn configuration_reference_matches_the_schema() {
    let out = std::process::Command::new(BIN)
        .arg("schema")
        .output()
        .unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rendered = render_reference(&schema);
    let path = root().join("docs/reference.md");
    if std::env::var("UPDATE_DOCS").is_ok() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "docs/reference.md is out of date with the schema: run `UPDATE_DOCS=1 cargo test --test e2e configuration_reference` and commit it"
    );
    // And every property name of the schema is in it.
    fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
        if let Some(p) = v.get("properties").and_then(|p| p.as_object()) {
            out.extend(p.keys().cloned());
        }
        if let Some(o) = v.as_object() {
            o.values().for_each(|x| keys(x, out));
        } else if let Some(a) = v.as_array() {
            a.iter().for_each(|x| keys(x, out));
        }
    }
    let mut all = Vec::new();
    keys(&schema, &mut all);
    for k in all {
        assert!(
            committed.contains(&format!("`{k}`")),
            "{k} is missing from docs/reference.md"
        );
    }
}
