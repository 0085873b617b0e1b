//! Metrics after a known sequence of requests, and the JSON access log (fields, redaction,
//! reopen on SIGUSR1).

use crate::util::upstream::Upstream;
use crate::util::{
    client, eventually_blocking, eventually_with, metric, poll_until, raw, upstream_yaml, Gateway,
    Poll,
};
use crate::util::{read_lines, read_until};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_sequence() {
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ name: users, match: {{ path: /users/* }}, upstream: u }}\n",
        upstream_yaml("u", &[up.addr], "")
    );
    let gw = Gateway::start(&body);
    let c = client();
    for _ in 0..3 {
        assert_eq!(
            c.get(gw.url("/users/1")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(
        c.post(gw.url("/nowhere")).send().await.unwrap().status(),
        404
    );
    // Metrics are recorded in the logging phase, just after the response went out: wait for them.
    let fetch = || {
        let resp = raw(
            gw.admin,
            "GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
    };
    let text = poll_until(Poll::DEFAULT, || {
        Some(fetch()).filter(|t| metric(t, "postern_http_requests_in_flight") == Some(0.0))
    })
    .unwrap_or_else(fetch);
    let text = text.as_str();
    assert_eq!(
        metric(
            text,
            "postern_http_requests_total{route=\"users\",status_class=\"2xx\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(
            text,
            "postern_http_requests_total{route=\"(none)\",status_class=\"4xx\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            text,
            "postern_http_requests_by_method_total{method=\"POST\",status_class=\"4xx\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            text,
            "postern_http_request_duration_seconds_count{route=\"users\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            text,
            "postern_upstream_response_seconds_count{upstream=\"u\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            text,
            &format!(
                "postern_upstream_target_up{{target=\"{}\",upstream=\"u\"}}",
                up.addr
            )
        ),
        Some(1.0)
    );
    assert_eq!(metric(text, "postern_http_requests_in_flight"), Some(0.0));
    assert_eq!(metric(text, "postern_config_generation"), Some(1.0));
    // promtool validates naming when it is installed (it is with `apt-get install prometheus`).
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_are_json_redacted_and_reopened() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let body = format!(
        "observability:\n  access_log: {{ path: \"{}\" }}\nupstreams:\n{}routes:\n  - {{ name: users, match: {{ path: /users/* }}, upstream: u }}\n",
        log.display(),
        upstream_yaml("u", &[up.addr], "")
    );
    let gw = Gateway::start(&body);
    let c = client();
    c.get(gw.url("/users/1?token=s3cret&page=2"))
        .header("authorization", "Bearer very-secret")
        .header("x-request-id", "log-1")
        .send()
        .await
        .unwrap();
    c.get(gw.url("/missing")).send().await.unwrap();
    let lines = read_lines(&log, 2);
    assert_eq!(lines.len(), 2);
    let first = &lines[0];
    for k in [
        "time",
        "request_id",
        "client",
        "method",
        "host",
        "path",
        "route",
        "upstream",
        "target",
        "status",
        "bytes_out",
        "duration_ms",
        "upstream_ms",
        "tries",
    ] {
        assert!(first.get(k).is_some(), "{k} missing in {first}");
    }
    assert_eq!(first["request_id"], "log-1");
    assert_eq!(first["route"], "users");
    assert_eq!(first["status"], 200);
    assert_eq!(first["path"], "/users/1?token=REDACTED&page=2");
    assert_eq!(lines[1]["status"], 404);
    assert!(lines[1]["route"].is_null());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("s3cret") && !text.contains("very-secret"),
        "secrets never reach the log"
    );
    // logrotate: move the file away, SIGUSR1, the next line goes to a new file.
    std::fs::rename(&log, dir.path().join("access.log.1")).unwrap();
    gw.signal("USR1");
    let (c, gw_ref, log_ref) = (&c, &gw, &log);
    let poll = Poll::DEFAULT.every(Duration::from_millis(50));
    eventually_with(poll, "the log is reopened", || async move {
        c.get(gw_ref.url("/users/2")).send().await.unwrap();
        log_ref.exists().then_some(())
    })
    .await;
    c.get(gw.url("/users/3")).send().await.unwrap();
    let after = read_until(&log, |l| l.iter().any(|l| l["path"] == "/users/3"));
    assert!(after.iter().any(|l| l["path"] == "/users/3"), "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_health_readiness_and_redacted_config() {
    let dead = format!("127.0.0.1:{}", crate::util::free_port());
    let body = format!(
        r#"upstreams:
  gone:
    targets: [ {{ addr: "{dead}" }} ]
    health:
      active: {{ type: tcp, interval: 50ms, timeout: 200ms, healthy_after: 1, unhealthy_after: 1 }}
routes:
  - {{ match: {{ path: /* }}, upstream: gone }}
"#
    );
    let gw = Gateway::start(&body);
    assert_eq!(gw.admin_call("GET", "/health", None).0, 200);
    // JSON answers end with a newline (a shell prompt after `curl` starts on its own line).
    let raw_health = crate::util::raw(
        gw.admin,
        "GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(raw_health.ends_with("}\n"), "{raw_health:?}");
    let raw_404 = crate::util::raw(
        gw.admin,
        "GET /nope HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert!(raw_404.ends_with("}\n"), "{raw_404:?}");
    let v = eventually_blocking(Poll::DEFAULT, "/ready turns 503", || {
        let (status, v) = gw.admin_call("GET", "/ready", None);
        (status == 503).then_some(v)
    });
    assert_eq!(v["upstreams_without_healthy_target"][0], "gone");
    let (status, v) = gw.admin_call("GET", "/config", None);
    assert_eq!(status, 200);
    assert_eq!(v["config"]["admin"]["token"], "REDACTED");
    assert!(
        !v.to_string().contains(crate::util::ADMIN_TOKEN),
        "the token never leaves the process"
    );
    assert_eq!(v["config"]["upstreams"]["gone"]["targets"][0]["addr"], dead);
    assert_eq!(v["hash"].as_str().unwrap().len(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_with_a_new_span_per_upstream_call() {
    let up = Upstream::start("u").await;
    let body = format!(
        "observability:\n  tracing: {{ propagate: true }}\nupstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: u }}\n",
        upstream_yaml("u", &[up.addr], "")
    );
    let gw = Gateway::start(&body);
    let c = client();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let v: serde_json::Value = c
        .get(gw.url("/x"))
        .header("traceparent", incoming)
        .header("tracestate", "vendor=1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent = v["headers"]["traceparent"].as_str().unwrap();
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(sent.ends_with("-01"));
    assert_ne!(
        &sent[36..52],
        "00f067aa0ba902b7",
        "a new span id for the upstream call"
    );
    assert_eq!(v["headers"]["tracestate"], "vendor=1");
    // No (or an invalid) traceparent: a new trace is started.
    let v: serde_json::Value = c
        .get(gw.url("/x"))
        .header("traceparent", "garbage")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent = v["headers"]["traceparent"].as_str().unwrap();
    assert_eq!(sent.len(), 55);
    assert!(!sent.contains("4bf92f3577b34da6a3ce929d0e0e4736"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_traces_are_exported_over_otlp_and_a_dead_collector_costs_nothing() {
    use crate::util::upstream::FnServer;
    let received: std::sync::Arc<parking_lot::Mutex<Vec<String>>> = Default::default();
    let collector = FnServer::start({
        let r = received.clone();
        move |s| {
            r.lock().push(s.body.clone());
            (200, vec![], "{}".into())
        }
    })
    .await;
    let up = Upstream::start("u").await;
    let body = format!(
        "observability:\n  tracing:\n    otlp: {{ endpoint: \"http://{}/v1/traces\", sample_ratio: 0.0 }}\nupstreams:\n{}routes:\n  - {{ name: users, match: {{ path: /users/* }}, upstream: u }}\n",
        collector.addr,
        upstream_yaml("u", &[up.addr], "")
    );
    let gw = Gateway::start(&body);
    let c = client();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = c
        .get(gw.url("/users/1"))
        .header("traceparent", parent)
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let sent = v["headers"]["traceparent"].as_str().unwrap().to_string();
    let client_span = sent.split('-').nth(2).unwrap().to_string();
    // Not sampled by the caller, and sample_ratio 0 for traces started here: nothing exported.
    c.get(gw.url("/users/2"))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4737-00f067aa0ba902b7-00",
        )
        .send()
        .await
        .unwrap();
    c.get(gw.url("/users/3")).send().await.unwrap();
    let received_ref = &received;
    let spans: Vec<serde_json::Value> =
        crate::util::eventually("the server and client spans are exported", || async move {
            let all = crate::util::exported_spans(received_ref);
            (all.len() >= 2).then_some(all)
        })
        .await;
    assert_eq!(spans.len(), 2, "one server and one client span: {spans:?}");
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    let client_s = spans.iter().find(|s| s["kind"] == 3).unwrap();
    assert_eq!(server["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(server["parentSpanId"], "00f067aa0ba902b7");
    assert_eq!(server["name"], "GET users");
    assert_eq!(
        client_s["spanId"],
        client_span.as_str(),
        "the span named in the upstream's traceparent"
    );
    assert_eq!(client_s["parentSpanId"], server["spanId"]);

    // A collector that is gone: requests are unaffected.
    drop(collector);
    for _ in 0..20 {
        let r = c
            .get(gw.url("/users/9"))
            .header("traceparent", parent)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_the_configured_fields_in_order() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let body = format!(
        "observability:\n  access_log: {{ path: \"{}\", fields: [status, route, request_id, cache] }}\nupstreams:\n{}routes:\n  - {{ name: users, match: {{ path: /users/* }}, upstream: u }}\n",
        log.display(),
        upstream_yaml("u", &[up.addr], "")
    );
    let gw = Gateway::start(&body);
    client()
        .get(gw.url("/users/1"))
        .header("x-request-id", "f-1")
        .send()
        .await
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let text = poll_until(Poll::DEFAULT, || Some(read()).filter(|t| t.ends_with('\n')))
        .unwrap_or_else(read);
    assert_eq!(
        text.trim(),
        r#"{"status":200,"route":"users","request_id":"f-1","cache":null}"#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_switched_off_are_not_served_and_stay_off_across_reloads() {
    let up = Upstream::start("u").await;
    let routes = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: u }}\n",
        upstream_yaml("u", &[up.addr], "")
    );
    let gw = Gateway::start(&format!(
        "observability:\n  metrics: {{ enabled: false }}\n{routes}"
    ));
    let r = client().get(gw.url("/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(gw.admin_call("GET", "/metrics", None).0, 404);
    // Switching them on takes a restart: the reload says so and changes nothing.
    gw.rewrite(&format!(
        "observability:\n  metrics: {{ enabled: true }}\n{routes}"
    ));
    let (status, v) = gw.admin_call("POST", "/reload", Some(crate::util::ADMIN_TOKEN));
    assert_eq!(status, 200, "{v}");
    assert!(
        v["not_applied"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "observability.metrics.enabled"),
        "{v}"
    );
    assert_eq!(gw.admin_call("GET", "/metrics", None).0, 404);
}

/// Regressions of issue 12: a request the client abandons was counted as `1xx`, the access
/// log's `error` read `HTTPStatus(400)`, and admin errors were not problem+json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_readable_errors_and_admin_problems() {
    let up = Upstream::start("u").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let body = format!(
        "observability:\n  access_log: {{ path: \"{}\" }}\nupstreams:\n{}routes:\n  - {{ name: users, match: {{ path: /users/* }}, upstream: u }}\n",
        log.display(),
        upstream_yaml("u", &[up.addr], "")
    );
    let gw = Gateway::start(&body);
    // A body announced and never sent: the client leaves half-way.
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
        s.write_all(b"POST /users/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly-part")
            .unwrap();
    }
    let resp = gw.raw("GET /users/1 HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    gw.wait_metric(
        "postern_http_requests_total{route=\"users\",status_class=\"client_closed\"}",
        1.0,
    );
    let text = gw.metrics();
    assert_eq!(
        metric(
            &text,
            "postern_http_requests_total{route=\"users\",status_class=\"1xx\"}"
        ),
        Some(0.0)
    );
    let lines = read_lines(&log, 2);
    let abandoned = lines
        .iter()
        .find(|l| l["status"] == 499)
        .expect("a 499 line");
    assert_eq!(abandoned["error"], "client-closed", "{abandoned}");
    let bad = lines
        .iter()
        .find(|l| l["status"] == 400)
        .expect("a 400 line");
    assert_eq!(bad["error"], "bad-request", "{bad}");
    // Admin errors: problem+json, and the 404 lists the documented endpoints.
    for (method, path, token, status) in [
        ("GET", "/nope", None, 404),
        ("POST", "/reload", None, 401),
        ("PUT", "/health", None, 405),
        ("DELETE", "/cache", Some(crate::util::ADMIN_TOKEN), 400),
    ] {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let resp = raw(
            gw.admin,
            &format!("{method} {path} HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"),
        );
        assert!(resp.starts_with(&format!("HTTP/1.1 {status}")), "{resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{resp}"
        );
        let v: serde_json::Value =
            serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(v["status"], status);
        assert!(v["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:postern:problem:"));
        if status == 404 {
            let detail = v["detail"].as_str().unwrap();
            for e in [
                "/health",
                "/ready",
                "/config",
                "/upstreams",
                "/metrics",
                "/reload",
                "/cache",
            ] {
                assert!(detail.contains(e), "{detail}");
            }
            assert!(!detail.contains("/status"), "{detail}");
        }
    }
}
