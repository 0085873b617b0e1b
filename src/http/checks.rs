//! Request checks from RFC 9110 and RFC 9112 that a proxy must enforce before forwarding:
//! a request that fails one is answered 400 (or 431) and never reaches an upstream.

use super::Limits;
use crate::error::GatewayError;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::Version;
use pingora::http::RequestHeader;

/// Checks framing and header fields. `h2`: the request came over HTTP/2, where the h2 layer
/// already enforces framing and `:authority` replaces Host.
pub fn check(req: &RequestHeader, h2: bool, limits: &Limits) -> Result<(), GatewayError> {
    check_sizes(req, limits)?;
    check_target(req, h2)?;
    check_field_values(req)?;
    check_host(req, h2)?;
    check_singletons(req)?;
    if !h2 {
        check_framing(req)?;
    }
    Ok(())
}

fn check_sizes(req: &RequestHeader, limits: &Limits) -> Result<(), GatewayError> {
    if req.headers.len() > limits.max_header_count {
        return Err(GatewayError::HeadersTooLarge);
    }
    let size: usize = req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let size = size + req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if size > limits.max_header_size {
        return Err(GatewayError::HeadersTooLarge);
    }
    Ok(())
}

/// RFC 9112 §3.2: the request-target is origin-form (`/path`) or absolute-form
/// (`http://host/path`); `OPTIONS *` and authority-form (CONNECT) are not proxied by routes.
fn check_target(req: &RequestHeader, h2: bool) -> Result<(), GatewayError> {
    let raw = req.raw_path();
    let ok = raw.starts_with(b"/")
        || (!h2 && (raw.starts_with(b"http://") || raw.starts_with(b"https://")))
        || (h2 && req.uri.path().starts_with('/'));
    if ok {
        Ok(())
    } else {
        Err(GatewayError::BadRequest(
            "The request target must be an absolute path.",
        ))
    }
}

/// RFC 9110 §5.5: field values must not contain CR, LF or NUL; other controls except HTAB are
/// rejected too, since no legitimate client sends them and they enable smuggling tricks.
fn check_field_values(req: &RequestHeader) -> Result<(), GatewayError> {
    // A fold without early exit, so the byte loop vectorizes (browsers send ~1 KB of fields).
    let bad = |v: &http::HeaderValue| {
        v.as_bytes().iter().fold(false, |acc, &b| {
            acc | ((b < 0x20) & (b != b'\t')) | (b == 0x7f)
        })
    };
    if req.headers.values().any(bad) {
        return Err(GatewayError::BadRequest(
            "A header field value contains a control character.",
        ));
    }
    Ok(())
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host, with several Host fields or with an invalid
/// Host must be answered 400.
fn check_host(req: &RequestHeader, h2: bool) -> Result<(), GatewayError> {
    let mut hosts = req.headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest(
            "The request has more than one Host header field.",
        ));
    }
    let value = match (host, h2, req.version) {
        (Some(h), _, _) => Some(h.as_bytes()),
        (None, true, _) => req.uri.authority().map(|a| a.as_str().as_bytes()),
        (None, false, Version::HTTP_11) => {
            return Err(GatewayError::BadRequest(
                "An HTTP/1.1 request must have a Host header field.",
            ))
        }
        (None, false, _) => None,
    };
    match value {
        Some(v) if !valid_host(v) => Err(GatewayError::BadRequest(
            "The Host header field is invalid.",
        )),
        _ => Ok(()),
    }
}

/// RFC 9110 §11.6.2 and §11.7.2: `Authorization` and `Proxy-Authorization` hold one
/// credential. Two fields make the request ambiguous (a plugin reading the first and an
/// upstream reading the last would disagree about who is calling), so it is refused for every
/// authentication plugin alike.
fn check_singletons(req: &RequestHeader) -> Result<(), GatewayError> {
    use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};
    for name in [AUTHORIZATION, PROXY_AUTHORIZATION] {
        let mut all = req.headers.get_all(name).iter();
        if all.next().is_some() && all.next().is_some() {
            return Err(GatewayError::BadRequest(
                "The request has more than one Authorization field.",
            ));
        }
    }
    Ok(())
}

/// Framing and connection fields that a server behind a CGI-style interface cannot tell from
/// their underscored spelling (`Transfer_Encoding` and `Transfer-Encoding` both become
/// `HTTP_TRANSFER_ENCODING`).
const FRAMING_NAMES: [&str; 5] = [
    "transfer-encoding",
    "content-length",
    "connection",
    "keep-alive",
    "proxy-connection",
];

/// Drops header fields whose name, with `_` read as `-`, is a framing field: Postern frames the
/// request by the real fields, an upstream could frame it by the underscored one (request
/// smuggling). nginx drops every underscored name by default (`underscores_in_headers off`);
/// only the ones that can change framing are dropped here, so `X_Api_Key` keeps working.
pub fn drop_underscored_framing(req: &mut RequestHeader) {
    let lookalike = |n: &http::HeaderName| {
        let n = n.as_str().as_bytes();
        n.contains(&b'_')
            && FRAMING_NAMES.iter().any(|f| {
                f.len() == n.len()
                    && f.bytes()
                        .zip(n)
                        .all(|(f, &b)| b == f || (b == b'_' && f == b'-'))
            })
    };
    if !req.headers.keys().any(lookalike) {
        return;
    }
    let names: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|n| lookalike(n))
        .cloned()
        .collect();
    for n in names {
        req.remove_header(&n);
    }
}

/// Why the first chunk of a body could not be taken.
pub enum FirstChunk {
    /// The chunked framing is invalid (RFC 9112 §7.1): answer 400.
    Invalid,
    /// The client went away or stalled: nothing to answer.
    Gone(Box<pingora::Error>),
}

/// Reads the first chunk of a chunked HTTP/1.1 request body before an upstream is chosen, so
/// that a malformed chunk-size line (bad hex, overflow, an empty size line, a bare LF in an
/// extension, ...) is answered 400 before the request head reaches an upstream. Pingora sends
/// the request head upstream before it reads the body, so without this an upstream sees a head
/// and then an aborted request. What is read stays in Pingora's retry buffer (at most one read
/// of 64 KiB, the buffer's size) and is sent upstream first. Not done for
/// `Expect: 100-continue` (the client waits for the 100 before sending the body): later chunks
/// are checked as they stream, after the head went upstream.
pub async fn read_first_chunk(session: &mut pingora::proxy::Session) -> Result<(), FirstChunk> {
    let req = session.req_header();
    let chunked = req
        .headers
        .get(TRANSFER_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let expects_continue = req
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if session.is_http2() || !chunked || expects_continue || session.is_body_done() {
        return Ok(());
    }
    session.as_downstream_mut().enable_retry_buffering();
    match session.as_downstream_mut().read_request_body().await {
        Ok(_) => Ok(()),
        Err(e) => match e.etype() {
            pingora::ErrorType::ReadError
            | pingora::ErrorType::ReadTimedout
            | pingora::ErrorType::ConnectionClosed => Err(FirstChunk::Gone(e)),
            _ => Err(FirstChunk::Invalid),
        },
    }
}

/// uri-host [ ":" port ] with a reg-name, IPv4 or bracketed IPv6 host.
pub fn valid_host(v: &[u8]) -> bool {
    let valid_port = |p: &[u8]| !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit);
    if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let ip6_ok = std::str::from_utf8(&rest[..end])
            .is_ok_and(|ip6| ip6.parse::<std::net::Ipv6Addr>().is_ok());
        let after = &rest[end + 1..];
        return ip6_ok && (after.is_empty() || after.strip_prefix(b":").is_some_and(valid_port));
    }
    let host = match v.iter().rposition(|&b| b == b':') {
        Some(i) if !valid_port(&v[i + 1..]) => return false,
        Some(i) => &v[..i],
        None => v,
    };
    !host.is_empty() && host.len() <= 253 && host.iter().all(|&b| REG_NAME[b as usize])
}

/// Bytes of a reg-name (RFC 3986 §3.2.2: unreserved, pct-encoded, sub-delims), as a table.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        i += 1;
    }
    t
};

/// A byte a URI query may hold as it is (RFC 3986 §3.4: pchar, `/` and `?`; `%` of an escape).
pub fn allowed_in_query(b: u8) -> bool {
    REG_NAME[b as usize] || matches!(b, b':' | b'@' | b'/' | b'?')
}

/// RFC 9112 §6.1 and §6.3: Content-Length with Transfer-Encoding, differing or invalid
/// Content-Length values and transfer codings other than a final `chunked` are rejected.
fn check_framing(req: &RequestHeader) -> Result<(), GatewayError> {
    let te: Vec<&[u8]> = req
        .headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let mut lengths = req
        .headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','));
    if !te.is_empty() {
        if req.headers.contains_key(CONTENT_LENGTH) {
            return Err(GatewayError::BadRequest(
                "The request has both Content-Length and Transfer-Encoding.",
            ));
        }
        if req.version != Version::HTTP_11 {
            return Err(GatewayError::BadRequest(
                "Transfer-Encoding requires HTTP/1.1.",
            ));
        }
        let codings: Vec<&[u8]> = te
            .iter()
            .flat_map(|v| v.split(|b| *b == b','))
            .map(trim)
            .collect();
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case(b"chunked") {
            return Err(GatewayError::BadRequest(
                "Only the chunked transfer coding is accepted.",
            ));
        }
        return Ok(());
    }
    let first = lengths.next().map(trim);
    if let Some(f) = first {
        if f.is_empty() || f.len() > 19 || !f.iter().all(u8::is_ascii_digit) {
            return Err(GatewayError::BadRequest(
                "The Content-Length header field is invalid.",
            ));
        }
        if lengths.any(|l| trim(l) != f) {
            return Err(GatewayError::BadRequest(
                "The request has differing Content-Length values.",
            ));
        }
    }
    Ok(())
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// Pingora follows RFC 9112 §6.1's other option for a request with both Content-Length and
/// Transfer-Encoding: it drops Content-Length, keeps Transfer-Encoding and turns keep-alive off
/// (pingora-core 0.9.1 `v1/server.rs`, `read_request`). Postern rejects such requests instead, as
/// they are the signature of request smuggling. Since the Content-Length is gone by the time our
/// phases run, the combination is recognized by its trace: an HTTP/1.1 request with
/// Transfer-Encoding, whose keep-alive was switched off although the client did not ask for
/// `Connection: close`. (With `Connection: close` the request is processed by Transfer-Encoding
/// alone and the connection closed, which the RFC also allows.)
pub fn had_cl_and_te(req: &RequestHeader, keepalive_after_parse: Option<u64>) -> bool {
    req.version == Version::HTTP_11
        && keepalive_after_parse.is_none()
        && req.headers.contains_key(TRANSFER_ENCODING)
        && !req
            .headers
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| {
                v.as_bytes()
                    .split(|b| *b == b',')
                    .any(|t| trim(t).eq_ignore_ascii_case(b"close"))
            })
}

/// The declared body length, if any (already validated by [`check`]).
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    let v = req.headers.get(CONTENT_LENGTH)?.as_bytes();
    std::str::from_utf8(trim(v.split(|b| *b == b',').next()?))
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_syntax() {
        for ok in [
            "example.com",
            "Example.COM:8080",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:80",
            "[2001:db8::1]:65535",
            "a_b.c~d",
            "xn--bcher-kva.example",
            "a%20b",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok} should be valid");
        }
        for bad in [
            "",
            ":80",
            "a b",
            "example.com:",
            "example.com:123456",
            "example.com:8x",
            "a:b:80",
            "[::1",
            "[zz]",
            "[::1]x",
            "[::1]:",
            "a@b",
            "a/b",
            "a\"b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad} should be invalid");
        }
        assert!(!valid_host(b"ex\xffample"));
        assert!(!valid_host("a".repeat(254).as_bytes()));
    }

    fn limits() -> Limits {
        Limits {
            keepalive: std::time::Duration::from_secs(1),
            client_read: std::time::Duration::from_secs(1),
            client_write: std::time::Duration::from_secs(1),
            client_header: std::time::Duration::from_secs(1),
            max_header_count: 10,
            max_header_size: 1000,
            forwarded: Default::default(),
            request_id: true,
            trace: false,
            preserve_header_case: false,
            trusted_proxies: Vec::new(),
        }
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn verdict(headers: &[(&str, &str)]) -> Result<(), GatewayError> {
        check(&req(headers), false, &limits())
    }

    #[test]
    fn rfc9112_framing_rules() {
        assert!(verdict(&[("host", "a")]).is_ok());
        assert!(verdict(&[]).is_err(), "missing Host");
        assert!(verdict(&[("host", "a"), ("host", "b")]).is_err());
        assert!(verdict(&[("host", "a b")]).is_err());
        assert!(verdict(&[("host", "a:99999x")]).is_err());
        assert!(verdict(&[("host", "[::1]:80")]).is_ok());
        assert!(verdict(&[
            ("host", "a"),
            ("content-length", "3"),
            ("transfer-encoding", "chunked")
        ])
        .is_err());
        assert!(verdict(&[
            ("host", "a"),
            ("content-length", "3"),
            ("content-length", "4")
        ])
        .is_err());
        assert!(verdict(&[("host", "a"), ("content-length", "3, 3")]).is_ok());
        assert!(verdict(&[("host", "a"), ("content-length", "-1")]).is_err());
        assert!(verdict(&[("host", "a"), ("transfer-encoding", "gzip, chunked")]).is_err());
        assert!(verdict(&[("host", "a"), ("transfer-encoding", "chunked")]).is_ok());
    }

    /// Regression (issue 12): two Authorization fields let the first one decide.
    #[test]
    fn one_authorization_field_only() {
        assert!(verdict(&[("host", "a"), ("authorization", "Bearer x")]).is_ok());
        assert!(verdict(&[
            ("host", "a"),
            ("authorization", "Bearer x"),
            ("authorization", "Bearer y")
        ])
        .is_err());
    }

    /// Regression (issue 12): `Transfer_Encoding` was forwarded.
    #[test]
    fn underscored_framing_names_are_dropped() {
        let mut r = req(&[
            ("host", "a"),
            ("transfer_encoding", "chunked"),
            ("content_length", "5"),
            ("x_api_key", "k"),
        ]);
        drop_underscored_framing(&mut r);
        let names: Vec<&str> = r.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["host", "x_api_key"]);
    }

    #[test]
    fn header_limits_give_431() {
        let many: Vec<(String, &str)> = (0..11).map(|i| (format!("x-{i}"), "v")).collect();
        let h: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(verdict(&h), Err(GatewayError::HeadersTooLarge));
        let big = "x".repeat(2000);
        assert_eq!(
            verdict(&[("host", "a"), ("x-big", &big)]),
            Err(GatewayError::HeadersTooLarge)
        );
    }

    #[test]
    fn content_length_value() {
        assert_eq!(content_length(&req(&[("content-length", "42")])), Some(42));
        assert_eq!(content_length(&req(&[])), None);
    }
}
