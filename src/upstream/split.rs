//! Weighted traffic split of a route between upstreams (canary releases), optionally sticky: the
//! same header value always lands on the same upstream (a stable hash, the same on every node),
//! or a cookie set on the first answer keeps a client on the upstream it was given.

use super::UpstreamGroup;
use http::HeaderName;
use pingora::http::RequestHeader;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    Header(HeaderName),
    /// The cookie's name; its value is the upstream's name.
    Cookie(String),
}

impl Sticky {
    pub fn parse(s: &str) -> Result<Sticky, String> {
        let bad = || format!("invalid sticky \"{s}\"; use header:NAME or cookie:NAME");
        match s.split_once(':') {
            Some(("header", n)) => HeaderName::from_bytes(n.as_bytes())
                .map(Sticky::Header)
                .map_err(|_| bad()),
            Some(("cookie", n))
                if !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
            {
                Ok(Sticky::Cookie(n.to_string()))
            }
            _ => Err(bad()),
        }
    }
}

pub struct Split {
    pub choices: Vec<(Arc<UpstreamGroup>, u32)>,
    total: u64,
    pub sticky: Option<Sticky>,
}

/// Which upstream a request goes to, and the cookie to set when stickiness is by cookie and
/// the request had none.
pub struct Choice {
    pub index: usize,
    pub set_cookie: bool,
}

impl Split {
    pub fn new(choices: Vec<(Arc<UpstreamGroup>, u32)>, sticky: Option<Sticky>) -> Split {
        let total = choices
            .iter()
            .map(|(_, w)| u64::from(*w))
            .sum::<u64>()
            .max(1);
        Split {
            choices,
            total,
            sticky,
        }
    }

    fn by_point(&self, point: u64) -> usize {
        let mut acc = 0;
        for (i, (_, w)) in self.choices.iter().enumerate() {
            acc += u64::from(*w);
            if point < acc {
                return i;
            }
        }
        self.choices.len() - 1
    }

    pub fn choose(&self, req: &RequestHeader) -> Choice {
        let random = || self.by_point(rand::random_range(0..self.total));
        match &self.sticky {
            None => Choice {
                index: random(),
                set_cookie: false,
            },
            Some(Sticky::Header(h)) => {
                let index = match req.headers.get(h) {
                    Some(v) => {
                        // SipHash with fixed keys: the same choice on every node and restart.
                        let mut hasher = std::hash::DefaultHasher::new();
                        v.as_bytes().hash(&mut hasher);
                        self.by_point(hasher.finish() % self.total)
                    }
                    None => random(),
                };
                Choice {
                    index,
                    set_cookie: false,
                }
            }
            Some(Sticky::Cookie(name)) => {
                let given = crate::http::cookie(req, name)
                    .and_then(|v| self.choices.iter().position(|(g, _)| *g.name == *v));
                match given {
                    Some(index) => Choice {
                        index,
                        set_cookie: false,
                    },
                    None => Choice {
                        index: random(),
                        set_cookie: true,
                    },
                }
            }
        }
    }

    /// The `Set-Cookie` value that keeps a client on choice `index`.
    pub fn cookie_value(&self, index: usize) -> Option<String> {
        let Some(Sticky::Cookie(name)) = &self.sticky else {
            return None;
        };
        let up = &self.choices.get(index)?.0.name;
        Some(format!("{name}={up}; Path=/; HttpOnly; SameSite=Lax"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_parses() {
        assert!(matches!(
            Sticky::parse("header:x-user-id"),
            Ok(Sticky::Header(_))
        ));
        assert_eq!(
            Sticky::parse("cookie:canary"),
            Ok(Sticky::Cookie("canary".into()))
        );
        assert!(Sticky::parse("cookie:").is_err());
        assert!(Sticky::parse("cookie:a;b").is_err());
        assert!(Sticky::parse("query:x").is_err());
    }
}
