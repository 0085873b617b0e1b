//! Custom error responses: operators replace the problem+json body of the errors Postern
//! generates (and, per route, of upstream error answers it intercepts) with their own JSON or
//! HTML templates, chosen by status or status class. `${status}`, `${title}`, `${detail}`,
//! `${request_id}` and `${route}` are filled per request, escaped for the content type (JSON
//! string content, or HTML text). Templates are loaded and checked when the config loads: an
//! unknown name, an unreadable file or a JSON template that does not render to JSON is an
//! error of `postern check`.

use crate::common::defaults as d;
use crate::common::issue::Issue;
use bytes::Bytes;
use http::HeaderValue;
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Status,
    Title,
    Detail,
    RequestId,
    Route,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(Var),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    Json,
    Html,
    None,
}

#[derive(Debug)]
struct Page {
    statuses: Vec<StatusSelector>,
    content_type: HeaderValue,
    escape: Escape,
    parts: Vec<Part>,
}

/// The values an error page is filled with.
pub struct Fill<'a> {
    pub status: u16,
    pub title: &'a str,
    pub detail: &'a str,
    pub request_id: &'a str,
    pub route: &'a str,
}

/// A list of error pages (a route's or the server's); the first that matches a status wins.
#[derive(Debug, Default)]
pub struct ErrorPages(Vec<Page>);

impl ErrorPages {
    pub fn compile(path: &str, list: &[ErrorPageConfig]) -> Result<ErrorPages, Vec<Issue>> {
        let mut issues = Vec::new();
        let mut pages = Vec::new();
        for (i, c) in list.iter().enumerate() {
            let at = format!("{path}[{i}]");
            match compile_page(&at, c) {
                Ok(p) => pages.push(p),
                Err(mut e) => issues.append(&mut e),
            }
        }
        match issues.is_empty() {
            true => Ok(ErrorPages(pages)),
            false => Err(issues),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether some page answers this status.
    pub fn covers(&self, status: u16) -> bool {
        self.0.iter().any(|p| matches(&p.statuses, status))
    }

    /// The content type and body for this status, when some page matches it.
    pub fn render(&self, f: &Fill) -> Option<(HeaderValue, Bytes)> {
        let page = self.0.iter().find(|p| matches(&p.statuses, f.status))?;
        let mut out = String::new();
        for part in &page.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(v) => {
                    let status;
                    let value = match v {
                        Var::Status => {
                            status = f.status.to_string();
                            status.as_str()
                        }
                        Var::Title => f.title,
                        Var::Detail => f.detail,
                        Var::RequestId => f.request_id,
                        Var::Route => f.route,
                    };
                    escape(page.escape, value, &mut out);
                }
            }
        }
        Some((page.content_type.clone(), Bytes::from(out)))
    }
}

fn matches(sel: &[StatusSelector], status: u16) -> bool {
    sel.iter().any(|s| match s {
        StatusSelector::Code(c) => *c == status,
        StatusSelector::Class(c) => {
            c.len() == 3
                && c.ends_with("xx")
                && c.as_bytes()[0].wrapping_sub(b'0') == (status / 100) as u8
        }
    })
}

fn escape(how: Escape, v: &str, out: &mut String) {
    match how {
        Escape::None => out.push_str(v),
        Escape::Json => {
            let quoted = serde_json::to_string(v).unwrap_or_default();
            out.push_str(&quoted[1..quoted.len().saturating_sub(1)]);
        }
        Escape::Html => {
            for ch in v.chars() {
                match ch {
                    '&' => out.push_str("&amp;"),
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&#39;"),
                    c => out.push(c),
                }
            }
        }
    }
}

fn compile_page(at: &str, c: &ErrorPageConfig) -> Result<Page, Vec<Issue>> {
    let mut issues = Vec::new();
    if c.status.is_empty() {
        issues.push(Issue::new(
            format!("{at}.status"),
            "list at least one status or class",
        ));
    }
    for (j, s) in c.status.iter().enumerate() {
        let ok = match s {
            StatusSelector::Code(n) => (400..=599).contains(n),
            StatusSelector::Class(k) => k == "4xx" || k == "5xx",
        };
        if !ok {
            issues.push(Issue::new(
                format!("{at}.status[{j}]"),
                "error pages answer 4xx and 5xx statuses: write 404, 503, 4xx or 5xx",
            ));
        }
    }
    let text = match (&c.body, &c.body_file) {
        (Some(b), None) => b.clone(),
        (None, Some(f)) => match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                issues.push(Issue::new(
                    format!("{at}.body_file"),
                    format!("cannot read {f}: {e}"),
                ));
                String::new()
            }
        },
        _ => {
            issues.push(Issue::new(at, "set exactly one of body and body_file"));
            String::new()
        }
    };
    let content_type = match HeaderValue::from_str(&c.content_type) {
        Ok(v) => v,
        Err(_) => {
            issues.push(Issue::new(
                format!("{at}.content_type"),
                "not a valid header value",
            ));
            HeaderValue::from_static("text/plain")
        }
    };
    let ct = c.content_type.to_ascii_lowercase();
    let escape = if ct.contains("json") {
        Escape::Json
    } else if ct.contains("html") || ct.contains("xml") {
        Escape::Html
    } else {
        Escape::None
    };
    let field = if c.body.is_some() {
        "body"
    } else {
        "body_file"
    };
    let parts = match parse(&text) {
        Ok(p) => p,
        Err(m) => {
            issues.push(Issue::new(format!("{at}.{field}"), m));
            Vec::new()
        }
    };
    let page = Page {
        statuses: c.status.clone(),
        content_type,
        escape,
        parts,
    };
    if escape == Escape::Json && issues.is_empty() {
        let sample = Fill {
            status: 503,
            title: "Service \"Unavailable\"",
            detail: "a\\b\n",
            request_id: "id",
            route: "r",
        };
        let body = page.render_any(&sample);
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            issues.push(
                Issue::new(
                    format!("{at}.{field}"),
                    format!("the template does not render to JSON: {e}"),
                )
                .hint(
                    "write values inside strings: {\"error\": \"${title}\", \"status\": ${status}}",
                ),
            );
        }
    }
    match issues.is_empty() {
        true => Ok(page),
        false => Err(issues),
    }
}

impl Page {
    fn render_any(&self, f: &Fill) -> Bytes {
        ErrorPages(vec![Page {
            statuses: vec![StatusSelector::Code(f.status)],
            content_type: self.content_type.clone(),
            escape: self.escape,
            parts: self.parts.clone(),
        }])
        .render(f)
        .map(|(_, b)| b)
        .unwrap_or_default()
    }
}

fn parse(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        if i > 0 {
            parts.push(Part::Text(rest[..i].to_string()));
        }
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err("unclosed ${ in the template".into());
        };
        let var = match &after[..end] {
            "status" => Var::Status,
            "title" => Var::Title,
            "detail" => Var::Detail,
            "request_id" => Var::RequestId,
            "route" => Var::Route,
            other => {
                return Err(format!(
                    "unknown template ${{{other}}}; use ${{status}}, ${{title}}, ${{detail}}, ${{request_id}} or ${{route}}"
                ))
            }
        };
        parts.push(Part::Var(var));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pages(yaml: &str) -> Result<ErrorPages, Vec<Issue>> {
        ErrorPages::compile(
            "server.errors",
            &yaml_serde::from_str::<Vec<_>>(yaml).unwrap(),
        )
    }

    fn fill(status: u16) -> Fill<'static> {
        Fill {
            status,
            title: "Not <Found>",
            detail: "No \"route\"",
            request_id: "r1",
            route: "api",
        }
    }

    #[test]
    fn first_matching_page_renders_escaped_values() {
        let p = pages(
            r#"
- { status: [404], content_type: text/html, body: "<h1>${title}</h1><p>${detail} (${request_id})</p>" }
- { status: [4xx, 5xx], content_type: application/json, body: '{"error": "${detail}", "status": ${status}, "route": "${route}"}' }
"#,
        )
        .unwrap();
        let (ct, b) = p.render(&fill(404)).unwrap();
        assert_eq!(ct, "text/html");
        assert_eq!(
            b,
            "<h1>Not &lt;Found&gt;</h1><p>No &quot;route&quot; (r1)</p>"
        );
        let (ct, b) = p.render(&fill(503)).unwrap();
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"], "No \"route\"");
        assert_eq!(v["status"], 503);
        assert!(p.covers(429) && !p.covers(302));
    }

    #[test]
    fn bad_templates_are_config_errors() {
        let e = pages(
            "[ { status: [500], content_type: application/json, body: '{\"a\": ${title}}' } ]",
        )
        .unwrap_err();
        assert!(
            e[0].to_string().contains("does not render to JSON"),
            "{}",
            e[0]
        );
        let e =
            pages("[ { status: [500], content_type: text/html, body: '${Title}' } ]").unwrap_err();
        assert!(e[0].to_string().contains("unknown template"), "{}", e[0]);
        assert!(pages("[ { status: [200], content_type: text/html, body: x } ]").is_err());
        assert!(pages("[ { status: [3xx], content_type: text/html, body: x } ]").is_err());
        assert!(
            pages("[ { status: [500], content_type: text/html, body_file: /nonexistent } ]")
                .is_err()
        );
        assert!(pages("[ { status: [500], content_type: text/html } ]").is_err());
    }
}

/// An error page: the body of the errors with these statuses.
#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorPageConfig {
    /// Statuses (404) and classes (`4xx`, `5xx`) this page answers.
    pub status: Vec<StatusSelector>,
    /// The page's `Content-Type`; JSON types escape values as JSON, HTML and XML as markup.
    #[serde(default = "d::error_page_type")]
    pub content_type: String,
    /// The template, inline: `${status}`, `${title}`, `${detail}`, `${request_id}`, `${route}`.
    #[serde(default)]
    pub body: Option<String>,
    /// The template, read from this file when the configuration is loaded.
    #[serde(default)]
    pub body_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusSelector {
    Code(u16),
    Class(String),
}
