//! `${VAR}` and `${VAR:-default}` expansion on the raw file text, before YAML parsing.
//!
//! Only the braced forms are expanded (a bare `$NAME` is left alone, so regexes such as `^/v1$`
//! survive), `$$` is a literal `$`, and comments are not expanded. Written here rather than with
//! `shellexpand` because that crate also expands bare `$NAME`.

use super::error::Issue;

pub fn expand(src: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<Issue>> {
    let mut out = String::with_capacity(src.len());
    let mut issues = Vec::new();
    for (n, line) in src.split_inclusive('\n').enumerate() {
        let (code, comment) = split_comment(line);
        expand_line(code, n + 1, &lookup, &mut out, &mut issues);
        out.push_str(comment);
    }
    if issues.is_empty() {
        Ok(out)
    } else {
        Err(issues)
    }
}

fn expand_line(
    code: &str,
    line: usize,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
    issues: &mut Vec<Issue>,
) {
    let mut rest = code;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(body) = tail.strip_prefix("${") {
            let Some(end) = body.find('}') else {
                issues.push(located(line, "unterminated ${ in an environment reference"));
                out.push_str(tail);
                return;
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                issues.push(located(
                    line,
                    &format!("invalid environment variable name \"{name}\""),
                ));
            } else {
                match (lookup(name), default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => issues.push(
                        located(line, &format!("environment variable {name} is not set"))
                            .hint(format!("export {name}, or write ${{{name}:-default}}")),
                    ),
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
}

fn located(line: usize, msg: &str) -> Issue {
    let mut i = Issue::new("", msg);
    i.line = Some(line);
    i
}

/// Splits a line at a YAML comment (`#` at the start or after whitespace, outside quotes).
fn split_comment(line: &str) -> (&str, &str) {
    let mut quote: Option<char> = None;
    let mut prev_ws = true;
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && prev_ws => return line.split_at(i),
            None => {}
        }
        prev_ws = c.is_whitespace();
    }
    (line, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "HOST").then(|| "10.0.0.1".to_string())
    }

    #[test]
    fn expands_braced_forms_only() {
        let out = expand(
            "a: ${HOST}\nb: ${NOPE:-x}\nc: ^/v1$\nd: $$HOST # ${NOPE}\n",
            env,
        )
        .unwrap();
        assert_eq!(out, "a: 10.0.0.1\nb: x\nc: ^/v1$\nd: $HOST # ${NOPE}\n");
    }

    #[test]
    fn unset_variable_is_an_error_with_its_line() {
        let err = expand("a: 1\nb: ${NOPE}\n", env).unwrap_err();
        assert_eq!(err[0].line, Some(2));
        assert!(err[0].message.contains("NOPE is not set"));
    }
}
