//! A small JSON object writer for log records: the access log writes one object per request,
//! and this costs a fraction of serde's generic serializer (no per-field dispatch, prepared keys,
//! plain strings copied as they are). Output is byte-for-byte what serde writes for the same
//! values (tested with the access-log record).

/// `,"name":` for a field of a [`JsonObject`], built at compile time.
#[macro_export]
macro_rules! json_key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}

/// A JSON object written field by field, for records whose keys are plain ASCII names known
/// at compile time (each written as one prepared `,"name":`, see [`json_key!`]). Strings
/// without characters to escape are copied as they are; numbers go through `itoa`; IPv4
/// addresses are written octet by octet.
pub struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> JsonObject<'a> {
    pub fn new(out: &'a mut Vec<u8>) -> JsonObject<'a> {
        JsonObject { out, first: true }
    }

    /// `key` is `,"name":`; the first field opens the object instead of the comma.
    fn key(&mut self, key: &'static str) {
        if self.first {
            self.first = false;
            self.out.push(b'{');
            self.out
                .extend_from_slice(key.as_bytes().get(1..).unwrap_or_default());
        } else {
            self.out.extend_from_slice(key.as_bytes());
        }
    }

    pub fn str(&mut self, k: &'static str, v: &str) {
        self.key(k);
        // Without an early exit the check compiles to wide compares.
        let escape = v
            .bytes()
            .fold(false, |e, b| e | (b < 0x20) | (b == b'"') | (b == b'\\'));
        if escape {
            let _ = serde_json::to_writer(&mut *self.out, v);
        } else {
            self.out.push(b'"');
            self.out.extend_from_slice(v.as_bytes());
            self.out.push(b'"');
        }
    }

    pub fn opt_str(&mut self, k: &'static str, v: Option<&str>) {
        match v {
            Some(v) => self.str(k, v),
            None => self.null(k),
        }
    }

    pub fn null(&mut self, k: &'static str) {
        self.key(k);
        self.out.extend_from_slice(b"null");
    }

    pub fn uint(&mut self, k: &'static str, v: u64) {
        self.key(k);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
    }

    pub fn opt_uint(&mut self, k: &'static str, v: Option<u64>) {
        match v {
            Some(v) => self.uint(k, v),
            None => self.null(k),
        }
    }

    /// A number with at most three decimals (milliseconds rounded to the microsecond), written
    /// as serde writes the same `f64`: `12.0`, `0.603`, `1.5`.
    pub fn millis(&mut self, k: &'static str, v: f64) {
        self.key(k);
        if !(0.0..1e12).contains(&v) {
            let _ = serde_json::to_writer(&mut *self.out, &v);
            return;
        }
        let micros = (v * 1000.0).round() as u64;
        let mut b = itoa::Buffer::new();
        self.out
            .extend_from_slice(b.format(micros / 1000).as_bytes());
        self.out.push(b'.');
        let mut frac = micros % 1000;
        if frac == 0 {
            self.out.push(b'0');
            return;
        }
        let mut digits = 3;
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        let text = b.format(frac);
        for _ in text.len()..digits {
            self.out.push(b'0');
        }
        self.out.extend_from_slice(text.as_bytes());
    }

    pub fn opt_millis(&mut self, k: &'static str, v: Option<f64>) {
        match v {
            Some(v) => self.millis(k, v),
            None => self.null(k),
        }
    }

    pub fn ip(&mut self, k: &'static str, v: Option<std::net::IpAddr>) {
        let Some(ip) = v else {
            return self.null(k);
        };
        self.key(k);
        self.out.push(b'"');
        self.raw_ip(ip);
        self.out.push(b'"');
    }

    pub fn socket(&mut self, k: &'static str, v: Option<std::net::SocketAddr>) {
        let Some(a) = v else {
            return self.null(k);
        };
        self.key(k);
        self.out.push(b'"');
        if a.is_ipv6() {
            self.out.push(b'[');
            self.raw_ip(a.ip());
            self.out.push(b']');
        } else {
            self.raw_ip(a.ip());
        }
        self.out.push(b':');
        self.out
            .extend_from_slice(itoa::Buffer::new().format(a.port()).as_bytes());
        self.out.push(b'"');
    }

    fn raw_ip(&mut self, ip: std::net::IpAddr) {
        push_ip(self.out, ip);
    }

    pub fn finish(self) {
        if self.first {
            self.out.push(b'{');
        }
        self.out.push(b'}');
    }
}

/// Appends the text of `ip` (IPv4 octet by octet, without the formatting machinery).
pub fn push_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut b = itoa::Buffer::new();
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(b.format(o).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_are_written_as_serde_writes_them() {
        for ms in [
            0.0,
            0.001,
            0.01,
            0.1,
            0.5,
            0.603,
            1.0,
            1.133,
            12.0,
            12.05,
            999.999,
            1000.0,
            60_000.0,
            86_400_000.25,
            1e13,
            -1.0,
        ] {
            let mut out = Vec::new();
            let mut o = JsonObject::new(&mut out);
            o.millis(json_key!("m"), ms);
            o.finish();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::json!({ "m": ms }).to_string(),
                "{ms}"
            );
        }
        let mut out = Vec::new();
        JsonObject::new(&mut out).finish();
        assert_eq!(out, b"{}");
    }
}
