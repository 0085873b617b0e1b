//! `transform`: the query, method and status edits of its hooks, and JSON bodies both ways.

use super::*;
use bytes::Bytes;
use serde_json::{json, Value};

fn request_body(r: &Route, q: &mut RequestHeader, c: &mut RequestCtx, body: Value) -> Value {
    let p = &r.chain.request_body()[0];
    assert!(p.takes_request_body(q, c));
    let mut b = Bytes::from(body.to_string());
    p.on_request_body(&mut b, true, c).unwrap();
    serde_json::from_slice(&b).unwrap()
}

fn response_body(r: &Route, c: &mut RequestCtx, body: &str) -> Result<Value, GatewayError> {
    let p = &r.chain.response_body(false)[0];
    let mut resp = ResponseHeader::build(200, None).unwrap();
    resp.insert_header("content-type", "application/json")
        .unwrap();
    assert!(p.takes_response_body(&mut resp, c));
    let mut b = Bytes::from(body.to_string());
    p.on_response_body(&mut b, true, c)?;
    Ok(serde_json::from_slice(&b).unwrap())
}

#[tokio::test]
async fn the_query_and_method_sent_upstream() {
    let r = route(
        "",
        "- transform:\n    request:\n      query: { set: { size: \"${query.per_page}\" }, remove: [per_page], rename: { q: search } }\n      method: POST",
    );
    let mut q = req("GET", "/items?q=shoes&per_page=20&x=1", &[]);
    assert_eq!(status(&r, &mut q, &mut ctx()).await, 200);
    assert_eq!(q.method.as_str(), "POST");
    let query = q.uri.query().unwrap();
    let mut parts: Vec<&str> = query.split('&').collect();
    parts.sort_unstable();
    assert_eq!(parts, ["search=shoes", "size=20", "x=1"], "{query}");
}

#[tokio::test]
async fn request_json_operations_in_order_with_templates() {
    let r = route(
        "",
        "- transform:\n    request:\n      json:\n        - set: { path: tenant, value: \"${header.x-tenant}\" }\n        - default: { path: currency, value: EUR }\n        - remove: [debug, internal.trace]",
    );
    let mut q = req(
        "POST",
        "/",
        &[("x-tenant", "acme"), ("content-type", "application/json")],
    );
    let mut c = ctx();
    assert_eq!(status(&r, &mut q, &mut c).await, 200);
    let out = request_body(
        &r,
        &mut q,
        &mut c,
        json!({ "currency": null, "debug": true, "internal": { "trace": 1, "keep": 2 }, "n": 1 }),
    );
    assert_eq!(
        out,
        json!({ "tenant": "acme", "currency": "EUR", "internal": { "keep": 2 }, "n": 1 })
    );
}

#[tokio::test]
async fn a_request_body_that_is_not_json_is_a_400_naming_the_position_not_the_content() {
    let r = route("", "- transform: { request: { json: [ { remove: x } ] } }");
    let mut q = req("POST", "/", &[("content-type", "application/json")]);
    let mut c = ctx();
    status(&r, &mut q, &mut c).await;
    let p = &r.chain.request_body()[0];
    assert!(p.takes_request_body(&mut q, &mut c));
    let mut b = Bytes::from_static(b"{\"secret\": tru");
    let e = p.on_request_body(&mut b, true, &mut c).unwrap_err();
    assert_eq!(e.status(), 400);
    let text = format!("{e:?}");
    assert!(
        text.contains("line 1") && !text.contains("secret"),
        "{text}"
    );
    // Other media types are left alone.
    let mut xml = req("POST", "/", &[("content-type", "text/plain")]);
    assert!(!p.takes_request_body(&mut xml, &mut c));
}

#[tokio::test]
async fn response_json_operations_status_mapping_and_keep() {
    let r = route(
        "",
        "- transform:\n    response:\n      json:\n        - rename: { from: \"items[*].cost\", to: price }\n        - move: { from: data.owner, to: owner }\n        - copy: { from: id, to: meta.id }\n        - add: { path: meta.request_id, value: \"${request_id}\" }\n        - keep: [id, owner, meta, \"items[*].price\"]\n      status: { 201: 200 }",
    );
    let mut c = ctx();
    status(&r, &mut req("GET", "/", &[]), &mut c).await;
    assert_eq!(respond(&r, 201, &mut c).status.as_u16(), 200);
    assert_eq!(respond(&r, 404, &mut c).status.as_u16(), 404);
    let out = response_body(
        &r,
        &mut c,
        r#"{"id":7,"secret":"x","data":{"owner":"ann"},"items":[{"cost":3,"sku":"a"},{"cost":4}]}"#,
    )
    .unwrap();
    assert_eq!(
        out,
        json!({ "id": 7, "owner": "ann", "meta": { "id": 7, "request_id": "req-1" }, "items": [ { "price": 3 }, { "price": 4 } ] })
    );
}

#[test]
fn configuration_errors_name_the_operation() {
    let e = check_error("- transform: { response: { json: [ { frobnicate: x } ] } }");
    assert!(e.contains("transform") && e.contains("frobnicate"), "{e}");
    let e = check_error("- transform: { response: { status: { 200: 999 } } }");
    assert!(e.contains("transform.response.status"), "{e}");
}
