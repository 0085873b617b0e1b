//! `${VAR}` and `${VAR:-default}` expansion on the raw file text, before YAML parsing.
//!
//! The rule that keeps them apart from request templates (`${path.id}`, `${request_id}`,
//! evaluated per request by `transform`): environment variable names are upper case
//! (`[A-Z_][A-Z0-9_]*`) and are expanded here; template names start with a lower-case letter
//! (then letters of either case, digits, `_`, `.`, `-`, `[`, `]`, `*`, an optional `:type`:
//! `${path.id}`, `${calls.order.body.items[*].productId:csv}`) and are left in place for the
//! feature that reads them; anything else (`${Path}`, `${path:-x}`) is an error naming the line.
//!
//! Only the braced forms are expanded (a bare `$NAME` is left alone, so regexes such as `^/v1$`
//! survive), `$$` is a literal `$`, and comments are not expanded. Written here rather than with
//! `shellexpand` because that crate also expands bare `$NAME`.

use crate::common::issue::Issue;

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
            if default.is_none() && is_template(name) {
                // A request template: kept for the plugin that evaluates it.
                out.push_str(&tail[..end + 3]);
                rest = &body[end + 1..];
                continue;
            }
            let env_name = name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && name.starts_with(|c: char| c.is_ascii_uppercase() || c == '_');
            if !env_name {
                issues.push(
                    located(
                        line,
                        &format!("\"${{{expr}}}\" is neither an environment reference nor a template"),
                    )
                    .hint("environment variables are upper case (${JWT_SECRET}, ${PORT:-8080}); request templates are lower case (${path.id}, ${request_id})"),
                );
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

/// A request template name: a lower-case letter first, then letters, digits, `_`, `.`, `-`,
/// `[`, `]`, `*` (JSON member names and array steps), and an optional `:type`.
fn is_template(name: &str) -> bool {
    let base = name.split_once(':').map_or(name, |(b, _)| b);
    base.starts_with(|c: char| c.is_ascii_lowercase())
        && base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '[' | ']' | '*'))
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
    fn templates_are_left_for_plugins_and_mixed_case_is_refused() {
        let out = expand(
            "a: \"${path.id}-${request_id}\"\nb: ${query.n:number}\nc: ${calls.o.body.items[*].productId:csv}\n",
            env,
        )
        .unwrap();
        assert_eq!(
            out,
            "a: \"${path.id}-${request_id}\"\nb: ${query.n:number}\nc: ${calls.o.body.items[*].productId:csv}\n"
        );
        for bad in ["a: ${Host}\n", "a: ${path:-x}\n", "a: ${a b}\n"] {
            let err = expand(bad, env).unwrap_err();
            assert!(err[0].message.contains("neither"), "{bad}: {err:?}");
        }
    }

    #[test]
    fn unset_variable_is_an_error_with_its_line() {
        let err = expand("a: 1\nb: ${NOPE}\n", env).unwrap_err();
        assert_eq!(err[0].line, Some(2));
        assert!(err[0].message.contains("NOPE is not set"));
    }
}
