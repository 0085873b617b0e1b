//! Pure HTTP on the client side, with no gateway state: the checks every request head passes
//! (`checks`), the deadline on reading a head (`head_deadline`), the limits both use
//! (`limits`), and reading cookies and query parameters.

pub mod checks;
pub mod head_deadline;
pub mod limits;

pub use limits::{ForwardedHeaders, Limits};

/// A cookie's value from the request.
pub fn cookie<'a>(req: &'a pingora::http::RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// A query parameter's raw value from the request.
pub fn query<'a>(req: &'a pingora::http::RequestHeader, name: &str) -> Option<&'a str> {
    req.uri.query()?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (k == name).then_some(v)
    })
}

/// Removes a cookie from the `Cookie` header(s) sent upstream.
pub fn remove_cookie(req: &mut pingora::http::RequestHeader, name: &str) {
    let kept: Vec<String> = req
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && c.split_once('=').map_or(*c, |(k, _)| k) != name)
        .map(String::from)
        .collect();
    req.remove_header(&http::header::COOKIE);
    if !kept.is_empty() {
        let _ = req.insert_header(http::header::COOKIE, kept.join("; "));
    }
}
