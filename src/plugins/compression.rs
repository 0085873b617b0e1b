//! `compression`: response compression (gzip, brotli, zstd) negotiated from `Accept-Encoding`
//! with q-values, for configured media types above a minimum size, with the encoders of
//! Pingora's compression module. Per route (this plugin) or for every route
//! (`server.compression`); `enabled: false` on a route turns the server's off there.
//!
//! ```yaml
//! plugins:
//!   - compression:
//!       algorithms: [br, zstd, gzip]    # the server's preference when q-values tie
//!       levels: { gzip: 6, br: 4, zstd: 3 }
//!       min_size: 1KiB                  # smaller bodies (by Content-Length) are sent as they are
//!       content_types: [text/, application/json, +json, application/xml, +xml, application/javascript, image/svg+xml]
//! ```
//!
//! Never compressed: bodies already encoded (`Content-Encoding`), partial content (206 or
//! `Content-Range`), `Cache-Control: no-transform`, HEAD, 1xx/204/304. `Vary: Accept-Encoding`
//! is added to every response whose type and size would be compressed, whatever this client
//! accepts. Request bodies with `Content-Encoding` pass through untouched.

use super::BuildCtx;
use crate::common::issue::Issue;
use crate::common::types::Size;
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::compression::{Algorithm, Encode};
use schemars::JsonSchema;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "compression")]
pub struct Config {
    /// `false` turns compression off (on a route: also the server-wide one).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Codings offered, in the server's order of preference for equal q-values.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Coding>,
    #[serde(default)]
    pub levels: Levels,
    /// Bodies shorter than this (by Content-Length) are not compressed.
    #[serde(default = "default_min_size")]
    pub min_size: Size,
    /// Media types compressed: `text/` (a prefix ending in `/`), `+json` (a suffix) or exact.
    #[serde(default = "default_types")]
    pub content_types: Vec<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Coding {
    Br,
    Zstd,
    Gzip,
}

impl Coding {
    fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Coding::Br => Algorithm::Brotli,
            Coding::Zstd => Algorithm::Zstd,
            Coding::Gzip => Algorithm::Gzip,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Levels {
    /// 1 (fast) to 9.
    #[serde(default = "gzip_level")]
    pub gzip: u32,
    /// 1 to 11.
    #[serde(default = "br_level")]
    pub br: u32,
    /// 1 to 19.
    #[serde(default = "zstd_level")]
    pub zstd: u32,
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            gzip: gzip_level(),
            br: br_level(),
            zstd: zstd_level(),
        }
    }
}

fn gzip_level() -> u32 {
    6
}
fn br_level() -> u32 {
    4
}
fn zstd_level() -> u32 {
    3
}
fn default_algorithms() -> Vec<Coding> {
    vec![Coding::Br, Coding::Zstd, Coding::Gzip]
}
fn default_min_size() -> Size {
    Size(1024)
}
fn default_types() -> Vec<String> {
    [
        "text/",
        "application/json",
        "+json",
        "application/xml",
        "+xml",
        "application/javascript",
        "image/svg+xml",
    ]
    .map(String::from)
    .to_vec()
}

/// A route's compiled compression settings.
#[derive(Debug)]
pub struct CompressionPolicy {
    pub enabled: bool,
    algorithms: Vec<(Coding, u32)>,
    min_size: u64,
    content_types: Vec<String>,
}

impl CompressionPolicy {
    pub fn compile(c: &Config, path: &str) -> Result<CompressionPolicy, Vec<Issue>> {
        let mut issues = Vec::new();
        for (name, level, max) in [
            ("gzip", c.levels.gzip, 9),
            ("br", c.levels.br, 11),
            ("zstd", c.levels.zstd, 19),
        ] {
            if !(1..=max).contains(&level) {
                issues.push(Issue::new(
                    format!("{path}.levels.{name}"),
                    format!("must be between 1 and {max}"),
                ));
            }
        }
        if c.enabled && c.algorithms.is_empty() {
            issues.push(Issue::new(
                format!("{path}.algorithms"),
                "list at least one of br, zstd, gzip",
            ));
        }
        if c.enabled && c.content_types.is_empty() {
            issues.push(Issue::new(
                format!("{path}.content_types"),
                "list at least one media type",
            ));
        }
        if !issues.is_empty() {
            return Err(issues);
        }
        let level = |a: Coding| match a {
            Coding::Br => c.levels.br,
            Coding::Zstd => c.levels.zstd,
            Coding::Gzip => c.levels.gzip,
        };
        let mut algorithms: Vec<(Coding, u32)> = Vec::new();
        for a in &c.algorithms {
            if !algorithms.iter().any(|(x, _)| x == a) {
                algorithms.push((*a, level(*a)));
            }
        }
        Ok(CompressionPolicy {
            enabled: c.enabled,
            algorithms,
            min_size: c.min_size.0,
            content_types: c
                .content_types
                .iter()
                .map(|t| t.to_ascii_lowercase())
                .collect(),
        })
    }

    /// Whether this response would be compressed for a client that accepts it.
    pub fn eligible(&self, resp: &ResponseHeader, head: bool) -> bool {
        let status = resp.status.as_u16();
        if !self.enabled || head || !(200..300).contains(&status) || matches!(status, 204 | 206) {
            return false;
        }
        let h = &resp.headers;
        if h.contains_key(header::CONTENT_ENCODING) || h.contains_key(header::CONTENT_RANGE) {
            return false;
        }
        let no_transform = h.get_all(header::CACHE_CONTROL).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
            })
        });
        if no_transform {
            return false;
        }
        let small = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|len| len < self.min_size);
        if small {
            return false;
        }
        let Some(media) = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
        else {
            return false;
        };
        self.content_types.iter().any(|t| {
            if t.ends_with('/') {
                media.starts_with(t.as_str())
            } else if t.starts_with('+') {
                media.len() > t.len() && media.ends_with(t.as_str())
            } else {
                media == *t
            }
        })
    }

    /// The coding to use for a client's `Accept-Encoding` (RFC 9110 §12.5.3): the highest
    /// q-value among the codings offered, ties to the server's order; `*` covers codings the
    /// client did not name; q=0 refuses.
    pub fn choose(&self, accept: Option<&http::HeaderValue>) -> Option<(Coding, u32)> {
        let accept = accept?.to_str().ok()?;
        let mut best: Option<((Coding, u32), f32)> = None;
        for (coding, level) in &self.algorithms {
            let q = q_of(accept, coding.token());
            if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
                best = Some(((*coding, *level), q));
            }
        }
        best.map(|(c, _)| c)
    }
}

/// The q-value the client gives `token` (its own entry, else `*`, else 0).
fn q_of(accept: &str, token: &str) -> f32 {
    let mut star = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        if name.eq_ignore_ascii_case(token) {
            return q;
        }
        if name == "*" {
            star = Some(q);
        }
    }
    star.unwrap_or(0.0)
}

/// One response being compressed.
pub struct Encoder(Box<dyn Encode + Send + Sync>);

impl Encoder {
    /// Starts compressing: the response header of the encoded body (`Content-Encoding`, no
    /// length, chunked, a weak ETag, no `Accept-Ranges`).
    pub fn start(coding: Coding, level: u32, resp: &mut ResponseHeader) -> Option<Encoder> {
        let enc = coding.algorithm().compressor(level)?;
        let _ = resp.insert_header(header::CONTENT_ENCODING, coding.token());
        resp.remove_header(&header::CONTENT_LENGTH);
        resp.remove_header(&header::ACCEPT_RANGES);
        let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
        if let Some(tag) = resp.headers.get(header::ETAG).cloned() {
            if !tag.as_bytes().starts_with(b"W/") {
                let weak = [b"W/", tag.as_bytes()].concat();
                match http::HeaderValue::from_bytes(&weak) {
                    Ok(v) => {
                        let _ = resp.insert_header(header::ETAG, v);
                    }
                    Err(_) => {
                        resp.remove_header(&header::ETAG);
                    }
                }
            }
        }
        Some(Encoder(enc))
    }

    /// Compresses a chunk (flushing at `end`). A failed encoder ends the body.
    pub fn encode(&mut self, data: Option<&[u8]>, end: bool) -> Option<bytes::Bytes> {
        match self.0.encode(data.unwrap_or(&[]), end) {
            Ok(b) => Some(b),
            Err(e) => {
                log::warn!("compression failed: {e}");
                None
            }
        }
    }
}

/// Adds `Vary: Accept-Encoding` unless present.
pub fn vary(resp: &mut ResponseHeader) {
    let present = resp.headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(|t| t.trim_ascii())
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding"))
    });
    if !present {
        let _ = resp.append_header(header::VARY, "Accept-Encoding");
    }
}

/// `compression` configures the gateway (it compresses last, after every body plugin): it
/// builds a policy, not a plugin.
impl super::Build for Config {
    fn build(&self, b: &BuildCtx) -> Result<super::Built, Vec<Issue>> {
        use super::Built;
        Ok(Built::Compression(Arc::new(CompressionPolicy::compile(
            self, &b.path,
        )?)))
    }
}

/// The client's `Accept-Encoding` (the request header is what the gateway reads).
pub fn accept_encoding(req: &RequestHeader) -> Option<&http::HeaderValue> {
    req.headers.get(header::ACCEPT_ENCODING)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CompressionPolicy {
        let c: Config = serde_json::from_str("{}").unwrap();
        CompressionPolicy::compile(&c, "c").unwrap()
    }

    #[test]
    fn q_values_and_server_preference() {
        let p = policy();
        let pick = |a: &str| {
            p.choose(Some(&http::HeaderValue::from_str(a).unwrap()))
                .map(|c| c.0)
        };
        assert_eq!(pick("gzip"), Some(Coding::Gzip));
        assert_eq!(
            pick("gzip, br"),
            Some(Coding::Br),
            "tie: the server's order"
        );
        assert_eq!(pick("br;q=0.5, gzip"), Some(Coding::Gzip));
        assert_eq!(pick("gzip;q=0, deflate"), None);
        assert_eq!(pick("*"), Some(Coding::Br));
        assert_eq!(pick("*;q=0.1, zstd;q=0.5"), Some(Coding::Zstd));
        assert_eq!(pick("br;q=0, *"), Some(Coding::Zstd));
        assert_eq!(pick("identity"), None);
        assert_eq!(p.choose(None), None);
    }

    #[test]
    fn eligibility() {
        let p = policy();
        let resp = |fields: &[(&str, &str)]| {
            let mut r = ResponseHeader::build(200, None).unwrap();
            for (k, v) in fields {
                r.insert_header(k.to_string(), *v).unwrap();
            }
            r
        };
        let json = ("content-type", "application/json; charset=utf-8");
        assert!(p.eligible(&resp(&[json]), false));
        assert!(p.eligible(
            &resp(&[("content-type", "application/problem+json")]),
            false
        ));
        assert!(p.eligible(&resp(&[("content-type", "text/html")]), false));
        assert!(!p.eligible(&resp(&[("content-type", "image/png")]), false));
        assert!(!p.eligible(&resp(&[json]), true), "HEAD");
        assert!(!p.eligible(&resp(&[json, ("content-length", "100")]), false));
        assert!(!p.eligible(&resp(&[json, ("content-encoding", "gzip")]), false));
        assert!(!p.eligible(&resp(&[json, ("content-range", "bytes 0-9/100")]), false));
        assert!(!p.eligible(
            &resp(&[json, ("cache-control", "public, no-transform")]),
            false
        ));
        let mut partial = resp(&[json]);
        partial.set_status(206).unwrap();
        assert!(!p.eligible(&partial, false));
    }

    #[test]
    fn config_errors() {
        let c: Config =
            serde_json::from_str(r#"{"levels": {"gzip": 10}, "algorithms": []}"#).unwrap();
        let e = CompressionPolicy::compile(&c, "c").unwrap_err();
        assert_eq!(e.len(), 2);
    }
}
