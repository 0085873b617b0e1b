//! Collection shaping: filters, sorting, pages, fields, wrapping and their errors.

use super::*;
use serde_json::json;

fn shape(c: serde_json::Value) -> Shape {
    let c: ShapeConfig = serde_json::from_value(c).unwrap();
    Shape::compile(&c, "shape").unwrap()
}

fn items() -> Value {
    json!({"data": {"items": [
        {"id": 1, "name": "b", "price": 10, "status": "active", "tags": ["x"]},
        {"id": 2, "name": "a", "price": 2.5, "status": "gone", "tags": []},
        {"id": 3, "name": "c", "price": null, "status": "active", "tags": ["x", "y"]},
        {"id": 4, "name": "a", "price": 30, "status": "active"}
    ]}})
}

#[test]
fn filter_sort_page_fields_wrap() {
    let s = shape(json!({
        "target": "data.items", "filter": ["status", "price", "tags"], "sort": ["name", "price"],
        "fields": ["id", "name"], "paginate": {"default_per_page": 2},
        "wrap": {"key": "data"}
    }));
    let q = "status=active&sort=name,-price&fields=id,name&page=1&x=keep";
    let r = s.request(q).unwrap();
    let out = s.apply(items(), &r, "/items", q).unwrap();
    assert_eq!(
        out.doc,
        json!({"data": [{"id": 4, "name": "a"}, {"id": 1, "name": "b"}],
               "meta": {"total": 3, "page": 1, "per_page": 2, "pages": 2}})
    );
    assert_eq!(out.total, 3);
    let links = out.links.unwrap();
    assert!(links.contains("</items?status=active&sort=name,-price&fields=id,name&x=keep&page=2&per_page=2>; rel=\"next\""), "{links}");
    assert!(!links.contains("prev"));
}

/// Issue 27: kept parameters went into the Link header as the client wrote them, with raw
/// `[` and `]`, which RFC 3986 does not allow in a query.
#[test]
fn link_urls_percent_encode_what_a_query_does_not_allow() {
    let s = shape(json!({
        "target": "data.items", "filter": ["price"], "paginate": {"default_per_page": 1}
    }));
    let q = "price[lt]=1000&page=1&note=a%20b";
    let r = s.request(q).unwrap();
    let out = s.apply(items(), &r, "/items", q).unwrap();
    let links = out.links.unwrap();
    assert!(
        links.contains("</items?price%5Blt%5D=1000&note=a%20b&page=2&per_page=1>; rel=\"next\""),
        "{links}"
    );
    assert!(!links.contains('[') && !links.contains(']'), "{links}");
}

#[test]
fn typed_operators() {
    let s =
        shape(json!({"target": "data.items", "filter": ["price", "tags", "name"], "unwrap": true}));
    let ids = |q: &str| -> Vec<i64> {
        let out = s.apply(items(), &s.request(q).unwrap(), "/", q).unwrap();
        out.doc
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids("price[lt]=10"), vec![2]);
    assert_eq!(ids("price[ge]=10"), vec![1, 4]);
    assert_eq!(ids("price=null"), vec![3]);
    assert_eq!(ids("tags[contains]=y"), vec![3]);
    assert_eq!(ids("name[in]=a,c"), vec![2, 3, 4]);
    assert_eq!(ids("name[prefix]=b"), vec![1]);
    assert_eq!(ids("price[ne]=10"), vec![2, 3, 4]);
    // a number field compared with text that is no number matches nothing
    assert_eq!(ids("price[lt]=cheap"), Vec::<i64>::new());
}

#[test]
fn sort_is_stable_and_nulls_last() {
    let s = shape(json!({"target": "data.items", "sort": ["price", "name"], "unwrap": true}));
    for (q, want) in [
        ("sort=price", vec![2, 1, 4, 3]),
        ("sort=-price", vec![4, 1, 2, 3]),
        ("sort=name", vec![2, 4, 1, 3]),
    ] {
        let out = s.apply(items(), &s.request(q).unwrap(), "/", q).unwrap();
        let ids: Vec<i64> = out
            .doc
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, want, "{q}");
    }
}

#[test]
fn client_errors_list_what_is_allowed() {
    let s = shape(
        json!({"filter": ["status"], "sort": ["name"], "fields": ["id"], "paginate": {"max_per_page": 50}}),
    );
    assert!(s
        .request("sort=price")
        .unwrap_err()
        .contains("allowed: name"));
    assert!(s
        .request("fields=secret")
        .unwrap_err()
        .contains("allowed: id"));
    assert!(s
        .request("price[lt]=3")
        .unwrap_err()
        .contains("allowed: status"));
    assert!(s
        .request("status[like]=a")
        .unwrap_err()
        .contains("allowed: eq, ne"));
    assert!(s
        .request("per_page=51")
        .unwrap_err()
        .contains("between 1 and 50"));
    assert!(s.request("page=0").is_err());
    assert!(s.request("page=x").is_err());
    // plain parameters of other names belong to the upstream
    assert!(s.request("q=shoes").is_ok());
    let r = s.request("page=3&per_page=2").unwrap();
    let err = s.apply(json!([1, 2, 3]), &r, "/", "").unwrap_err();
    assert!(
        matches!(&err, ShapeError::Client(m) if m.contains("2 page(s)")),
        "{err:?}"
    );
    assert_eq!(
        s.apply(json!({"a": 1}), &r, "/", ""),
        Err(ShapeError::NoArray)
    );
    assert_eq!(
        s.strip("page=3&q=a&status=x&sort=name"),
        Some(vec!["page".into(), "status".into(), "sort".into()])
    );
}

#[test]
fn offset_style_and_in_place() {
    let s = shape(
        json!({"target": "data.items", "paginate": {"style": "offset", "default_per_page": 1}}),
    );
    let q = "offset=1";
    let out = s.apply(items(), &s.request(q).unwrap(), "/i", q).unwrap();
    assert_eq!(out.doc["data"]["items"].as_array().unwrap().len(), 1);
    assert_eq!(out.doc["data"]["items"][0]["id"], 2);
    let links = out.links.unwrap();
    assert!(
        links.contains("</i?offset=0&limit=1>; rel=\"prev\""),
        "{links}"
    );
    assert!(
        links.contains("</i?offset=3&limit=1>; rel=\"last\""),
        "{links}"
    );
}

#[test]
fn config_errors() {
    let bad = |c: serde_json::Value| {
        let c: ShapeConfig = serde_json::from_value(c).unwrap();
        Shape::compile(&c, "s").unwrap_err()
    };
    assert!(bad(json!({}))[0].1.contains("nothing to do"));
    assert!(bad(json!({"sort": ["a[*].b"]}))[0].0 == "s.sort[0]");
    assert!(bad(json!({"sort": ["a"], "default_sort": "b"}))[0].0 == "s.default_sort");
    assert!(bad(json!({"wrap": {}, "unwrap": true}))[0].0 == "s.unwrap");
    assert!(bad(json!({"paginate": {"default_per_page": 200}}))[0].0 == "s.paginate");
}
