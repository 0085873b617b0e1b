//! The suite's one GET helper: a request with extra headers, its answer read whole.

use std::collections::HashMap;

/// An answer read to the end.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Every header as text, lower-case names (the last value of a repeated field).
    pub fn header_map(&self) -> HashMap<String, String> {
        self.headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect()
    }
}

/// `GET url` with these headers.
pub async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut r = c.get(url);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap();
    Answer {
        status,
        headers,
        body,
    }
}
