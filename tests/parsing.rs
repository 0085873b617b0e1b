//! Requests that RFC 9112 / RFC 9110 say a proxy must reject are answered 400 (or 431) and never
//! reach the upstream. Written from the RFCs, each against a raw socket.

use crate::util::upstream::Upstream;
use crate::util::{status_of, upstream_yaml, Gateway};

async fn setup() -> (Upstream, Gateway) {
    let up = Upstream::start("u").await;
    let body = format!("server:\n  max_header_count: 50\nupstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: u }}\n", upstream_yaml("u", &[up.addr], ""));
    // `server:` is already emitted by the harness (max_header_count stays at its default, 100).
    let body = body.replace("server:\n  max_header_count: 50\n", "");
    let gw = Gateway::start(&body);
    (up, gw)
}

fn is_problem(resp: &str) -> bool {
    resp.to_ascii_lowercase()
        .contains("content-type: application/problem+json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_rejected_before_the_upstream() {
    let (up, gw) = setup().await;
    let cases: &[(&str, &str, u16)] = &[
        ("missing Host (RFC 9112 §3.2)", "GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 400),
        ("two Host fields", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n", 400),
        ("invalid Host", "GET / HTTP/1.1\r\nHost: a b@c\r\nConnection: close\r\n\r\n", 400),
        ("CL and TE (RFC 9112 §6.1)", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        ("differing CL (RFC 9112 §6.3)", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde", 400),
        ("non-numeric CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4x\r\nConnection: close\r\n\r\nabcd", 400),
        ("unknown transfer coding", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n", 400),
        ("TE not final chunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\nConnection: close\r\n\r\n", 400),
        ("control character in a value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\nConnection: close\r\n\r\n", 400),
        ("space before colon (RFC 9112 §5.1)", "GET / HTTP/1.1\r\nHost: a\r\nX-A : b\r\nConnection: close\r\n\r\n", 400),
        ("relative path without slash", "GET users HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 400),
    ];
    for (what, req, want) in cases {
        let resp = gw.raw(req);
        assert_eq!(status_of(&resp), *want, "{what}: {resp}");
    }
    assert_eq!(up.hits(), 0, "nothing reached the upstream");
}

/// Malformed chunked framing is a 400. A bad first chunk-size line is found before an upstream
/// is chosen, so the upstream sees nothing (regressions of issue 12: an empty size line and a
/// bare LF in an extension were accepted, and every other bad size line reached the upstream
/// as a head followed by an aborted request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_framing_is_rejected() {
    let (up, gw) = setup().await;
    let first_line_errors = [
        "5;a\nb\r\nhello\r\n0\r\n\r\n",
        "\r\n",
        "\r\n0\r\n\r\n",
        "zz\r\nabc\r\n0\r\n\r\n",
        "-1\r\nabc\r\n0\r\n\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        "+5\r\nhello\r\n0\r\n\r\n",
        "5_0\r\nhello\r\n0\r\n\r\n",
        "fffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "00000000000000000005\r\nhello\r\n0\r\n\r\n",
        "5\rhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",
        "5;a=\x01\r\nhello\r\n0\r\n\r\n",
    ];
    for body in first_line_errors {
        let req = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let resp = gw.raw(&req);
        assert_eq!(status_of(&resp), 400, "chunked {body:?}: {resp}");
        assert!(
            resp.to_ascii_lowercase().contains("connection: close"),
            "{body:?}: {resp}"
        );
        assert_eq!(up.hits(), 0, "chunked {body:?} reached the upstream");
    }
    // Errors after the first chunk are found while the body streams: still a 400.
    for body in ["3\r\nabcdef\r\n0\r\n\r\n", "5\r\nhello\r\nzz\r\n\r\n"] {
        let req = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{body}");
        let resp = gw.raw(&req);
        assert_eq!(status_of(&resp), 400, "chunked {body:?}: {resp}");
    }
    // A valid chunked body still goes through whole.
    let resp = gw.raw("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(resp.contains("\"body_len\":11"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_give_431() {
    let (up, gw) = setup().await;
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = gw.raw(&format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{many}Connection: close\r\n\r\n"
    ));
    assert_eq!(status_of(&resp), 431, "{resp}");
    assert!(is_problem(&resp));
    let big = "x".repeat(40_000);
    let resp = gw.raw(&format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(status_of(&resp), 431, "{}", &resp[..resp.len().min(200)]);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_without_host_is_accepted_and_errors_are_problems() {
    let (_up, gw) = setup().await;
    // (At least 24 bytes: h2c listeners peek for the HTTP/2 preface first.)
    let resp = gw.raw("GET /x HTTP/1.0\r\nUser-Agent: t\r\n\r\n");
    assert_eq!(status_of(&resp), 200, "{resp}");
    let resp = gw.raw("GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(is_problem(&resp), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap();
    let len: usize = resp
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap();
    assert_eq!(len, body.len(), "correct Content-Length");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    for k in ["type", "title", "status", "detail", "request_id"] {
        assert!(v.get(k).is_some(), "{k} missing");
    }
}

/// Regression (issue 12): `Transfer_Encoding` reached the upstream, which may read it as
/// `Transfer-Encoding` (CGI-style servers do).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscored_framing_fields_are_not_forwarded() {
    let (_up, gw) = setup().await;
    let resp = gw.raw("GET /x HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent_Length: 5\r\nX_Tenant: t1\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&resp), 200, "{resp}");
    let v: serde_json::Value =
        serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let headers = v["headers"].as_object().unwrap();
    assert!(!headers.contains_key("transfer_encoding"), "{v}");
    assert!(!headers.contains_key("content_length"), "{v}");
    assert_eq!(headers["x_tenant"], "t1", "other underscored names pass");
}

/// Regression (issue 12): a client sending one header line every few seconds held a connection
/// for ever. `server.client_header_timeout` bounds the whole head, on a new connection and on
/// a kept-alive one, with a 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_sent_head_gets_408_after_client_header_timeout() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let up = Upstream::start("u").await;
    let body = format!(
        "upstreams:\n{}routes:\n  - {{ match: {{ path: /* }}, upstream: u }}\n",
        upstream_yaml("u", &[up.addr], "")
    );
    let gw = Gateway::start_full(&body, "", "  client_header_timeout: 1s\n");
    for kept_alive in [false, true] {
        let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut got = Vec::new();
        if kept_alive {
            s.write_all(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("\"body_len\"") {
                if let Ok(n) = s.read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                }
            }
            got.clear();
        }
        let started = Instant::now();
        s.write_all(b"GET /slow HTTP/1.1\r\n").unwrap();
        let mut closed = false;
        while started.elapsed() < Duration::from_secs(15) {
            // One header line every 300 ms: each read is quick, the head never ends.
            if s.write_all(b"X-Slow: 1\r\n").is_err() {
                closed = true;
                break;
            }
            let mut buf = [0u8; 1024];
            match s.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = String::from_utf8_lossy(&got);
        assert!(
            closed,
            "kept_alive={kept_alive}: the connection was not closed"
        );
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "kept_alive={kept_alive}: {text}"
        );
        assert!(
            text.contains("urn:postern:problem:request-timeout"),
            "{text}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "closed after about 1 s, not after the trickle: {:?}",
            started.elapsed()
        );
    }
}
