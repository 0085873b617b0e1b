//! What a limit counts by: `key: client_ip`, or several parts, `key: [consumer, header:x-tenant]`.
//! Parts: `client_ip`, `consumer`, `route`, `path`, `header:NAME`, `cookie:NAME`, `query:NAME`,
//! `claim:NAME`.

use crate::context::RequestCtx;
use crate::upstream::HashKey;
use pingora::http::RequestHeader;
use schemars::JsonSchema;
use serde::Deserialize;
use std::fmt::Write;
use std::hash::BuildHasher;
use std::sync::LazyLock;

/// One key part or a list of them, as written in YAML.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
#[schemars(rename = "LimitKey")]
pub enum KeyConfig {
    One(String),
    All(Vec<String>),
}

impl Default for KeyConfig {
    fn default() -> Self {
        KeyConfig::One("client_ip".into())
    }
}

/// Requests that lack a part of the key.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MissingKey {
    /// Not limited by this rule.
    #[default]
    Skip,
    /// Counted together in one shared bucket.
    Shared,
}

#[derive(Debug, Clone)]
enum Part {
    Request(HashKey),
    Consumer,
    Claim(String),
    Route,
}

#[derive(Debug, Clone)]
pub struct Key(Vec<Part>);

const HINT: &str =
    "use client_ip, consumer, route, path, header:NAME, cookie:NAME, query:NAME or claim:NAME";

impl Key {
    pub fn parse(c: &KeyConfig) -> Result<Key, String> {
        let names: Vec<&str> = match c {
            KeyConfig::One(s) => vec![s.as_str()],
            KeyConfig::All(v) => v.iter().map(String::as_str).collect(),
        };
        if names.is_empty() {
            return Err(format!("the key needs at least one part; {HINT}"));
        }
        names
            .into_iter()
            .map(|s| match s.split_once(':') {
                None if s == "consumer" => Ok(Part::Consumer),
                None if s == "route" => Ok(Part::Route),
                Some(("claim", n)) if !n.is_empty() => Ok(Part::Claim(n.to_string())),
                _ => HashKey::parse(s)
                    .map(Part::Request)
                    .map_err(|_| format!("invalid key part \"{s}\"; {HINT}")),
            })
            .collect::<Result<_, _>>()
            .map(Key)
    }

    /// Writes the key of this request into `out` (cleared first). `false` when a part is absent.
    pub fn write(&self, req: &RequestHeader, ctx: &RequestCtx, out: &mut String) -> bool {
        out.clear();
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                // Never part of a header value, a path or a name: parts cannot run together.
                out.push('\n');
            }
            let ok = match p {
                Part::Request(HashKey::ClientIp) => match ctx.client_ip {
                    Some(ip) => write!(out, "{ip}").is_ok(),
                    None => false,
                },
                Part::Request(k) => match k.extract(req, ctx.client_ip) {
                    Some(v) => {
                        out.push_str(&String::from_utf8_lossy(&v));
                        true
                    }
                    None => false,
                },
                Part::Consumer => match &ctx.consumer {
                    Some(c) => {
                        out.push_str(&c.name);
                        true
                    }
                    None => false,
                },
                Part::Claim(n) => match ctx.claim(n) {
                    Some(v) => {
                        out.push_str(&v);
                        true
                    }
                    None => false,
                },
                Part::Route => {
                    out.push_str(&ctx.route);
                    true
                }
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

impl Key {
    /// The key of this request in `buf`, applying the missing-key policy: `false` when the
    /// request is not limited by the rule (`missing_key: skip`).
    pub fn material(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        missing: MissingKey,
        buf: &mut String,
    ) -> bool {
        if self.write(req, ctx, buf) {
            return true;
        }
        match missing {
            MissingKey::Skip => false,
            MissingKey::Shared => {
                buf.clear();
                buf.push_str("\u{0}missing");
                true
            }
        }
    }
}

/// Hash of a key for the local engines: foldhash with a per-process random seed (fast, and keys
/// chosen by clients cannot be made to collide without knowing the seed).
pub fn hash(key: &str) -> u64 {
    static STATE: LazyLock<foldhash::fast::RandomState> =
        LazyLock::new(foldhash::fast::RandomState::default);
    STATE.hash_one(key)
}
