//! JSON field operations on values and on lazy documents (which must give the same result).

mod operations {
    use crate::transform::*;
    use serde_json::json;

    fn ops(yaml: &str) -> JsonOps {
        let list: Vec<JsonOpConfig> = yaml_serde::from_str(yaml).unwrap();
        JsonOps::compile(&list, "json").unwrap()
    }

    #[test]
    fn every_operation() {
        let ctx = RequestCtx {
            params: vec![("id".into(), "7".into())],
            ..Default::default()
        };
        let o = ops(r#"
- set: { path: meta.id, value: "${path.id:number}" }
- set: { path: meta.tags, value: [a, "${path.id}"] }
- add: { path: name, value: ignored }
- add: { path: nick, value: added }
- default: { path: note, value: dflt }
- remove: [secret, "items[*].internal"]
- rename: { from: "items[*].cost", to: price }
- move: { from: old.place, to: place }
- copy: { from: name, to: meta.name }
"#);
        let mut doc = json!({ "name": "n", "note": null, "secret": "s", "old": { "place": 1 },
            "items": [ { "cost": 1, "internal": true }, { "cost": 2 } ] });
        o.apply(&mut doc, &ctx, &Inputs::default());
        assert_eq!(
            doc,
            json!({ "name": "n", "nick": "added", "note": "dflt", "old": {}, "place": 1,
                "items": [ { "price": 1 }, { "price": 2 } ],
                "meta": { "id": 7, "tags": ["a", "7"], "name": "n" } })
        );
        let k = ops("- keep: [id, \"items[*].price\"]");
        let mut doc = json!({ "id": 1, "x": 2, "items": [ { "price": 1, "cost": 3 } ] });
        k.apply(&mut doc, &ctx, &Inputs::default());
        assert_eq!(doc, json!({ "id": 1, "items": [ { "price": 1 } ] }));
    }

    #[test]
    fn bad_operations_are_config_errors() {
        for bad in [
            "- rename: { from: \"a[0]\", to: b }",
            "- rename: { from: a, to: b.c }",
            "- move: { from: \"a[*]\", to: b }",
            "- keep: [\"a[0]\"]",
            "- set: { path: a, value: \"${unknown}\" }",
            "- remove: \"a..b\"",
        ] {
            let list: Vec<JsonOpConfig> = yaml_serde::from_str(bad).unwrap();
            assert!(JsonOps::compile(&list, "json").is_err(), "{bad}");
        }
    }
}

mod lazy_tests {
    use crate::transform::*;
    use serde_json::json;

    /// Every operation gives the same document lazily as on a `serde_json::Value`.
    #[test]
    fn lazy_documents_match_values() {
        let docs = [
            json!({ "id": 7, "secret": "s", "items": [ { "cost": 1, "x": null }, { "cost": 2.50, "tags": ["a"] } ],
                    "data": { "owner": { "name": "n" }, "list": [1, 2, 3] }, "n": null, "esc\"ape": "q\n" }),
            json!([ { "id": 1, "price": 1.0 }, { "id": 2 } ]),
            json!({ "a": 1 }),
            json!("scalar"),
            json!(null),
        ];
        let op_lists = [
            r#"[ { "rename": { "from": "items[*].cost", "to": "price" } }, { "remove": ["secret", "items[*].x"] } ]"#,
            r#"[ { "set": { "path": "meta.id", "value": "${request_id}" } }, { "add": { "path": "id", "value": 9 } }, { "add": { "path": "new", "value": [1] } } ]"#,
            r#"[ { "default": { "path": "n", "value": 5 } }, { "default": { "path": "items[*].x", "value": "d" } } ]"#,
            r#"[ { "move": { "from": "data.owner", "to": "owner" } }, { "copy": { "from": "items[1].tags", "to": "t" } } ]"#,
            r#"[ { "keep": ["id", "items[*].cost"] }, { "set": { "path": "k", "value": true } } ]"#,
            r#"[ { "set": { "path": "[*].currency", "value": "EUR" } }, { "rename": { "from": "[*].id", "to": "key" } } ]"#,
            r#"[ { "remove": "/data/list/1" }, { "set": { "path": "/data/list/0", "value": 0 } }, { "set": { "path": "data.list[9]", "value": 0 } } ]"#,
            r#"[ { "set": { "path": "a.b.c", "value": 1 } }, { "rename": { "from": "a.b.c", "to": "d" } }, { "remove": "a.b.d" } ]"#,
            r#"[ { "set": { "path": "items", "value": { "x": 1 } } }, { "rename": { "from": "items.x", "to": "y" } }, { "copy": { "from": "items", "to": "again" } } ]"#,
            r#"[ { "set": { "path": "esc\"ape", "value": "v" } }, { "rename": { "from": "id", "to": "esc\"ape" } } ]"#,
            r#"[ { "move": { "from": "items[1]", "to": "second" } }, { "copy": { "from": "data.list", "to": "data.copy" } } ]"#,
        ];
        let ctx = RequestCtx {
            request_id: crate::context::RequestId::new(http::HeaderValue::from_static("rid")),
            ..RequestCtx::default()
        };
        let inputs = Inputs::default();
        for d in &docs {
            // The text of an upstream: pretty-printed, with a duplicated member name.
            let mut text = serde_json::to_string_pretty(d).unwrap();
            if text.starts_with('{') && text.len() > 2 {
                text = format!("{{\"dup\": 1, \"other\": 0, \"dup\": 2, {}", &text[1..]);
            }
            for list in op_lists {
                let list: Vec<JsonOpConfig> = serde_json::from_str(list).unwrap();
                let ops = JsonOps::compile(&list, "t").unwrap();
                let mut want: Value = serde_json::from_str(&text).unwrap();
                ops.apply(&mut want, &ctx, &inputs);
                for guided in [false, true] {
                    let mut node = if guided {
                        ops.parse_lazy(&text).unwrap()
                    } else {
                        lazy::Node::parse(&text).unwrap()
                    };
                    ops.apply_lazy(&mut node, &ctx, &inputs);
                    for spans in [false, true] {
                        let mut out = Vec::new();
                        if spans {
                            node.write_from(&text, &mut out);
                        } else {
                            node.write(&mut out);
                        }
                        let got: Value = serde_json::from_slice(&out)
                            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)));
                        assert_eq!(
                            got, want,
                            "doc {d} ops {list:?} guided {guided} spans {spans}"
                        );
                        // No member written twice (serde_json would keep the last silently):
                        // each name appears as often as in the reference document.
                        let text = String::from_utf8_lossy(&out).replace("\": ", "\":");
                        let reference = serde_json::to_string(&want).unwrap();
                        if let Value::Object(m) = &got {
                            for k in m.keys().filter(|k| !k.contains('"')) {
                                let pat = format!("\"{k}\":");
                                assert_eq!(
                                    text.matches(&pat).count(),
                                    reference.matches(&pat).count(),
                                    "{k} in {text}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn untouched_parts_keep_their_text() {
        let text = r#"{"b": 0.00, "a": [1.50, {"k": "v"}], "z": 1}"#;
        let list: Vec<JsonOpConfig> =
            serde_json::from_str(r#"[ { "rename": { "from": "z", "to": "y" } } ]"#).unwrap();
        let ops = JsonOps::compile(&list, "t").unwrap();
        let mut node = ops.parse_lazy(text).unwrap();
        ops.apply_lazy(&mut node, &RequestCtx::default(), &Inputs::default());
        let mut out = Vec::new();
        node.write(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"b":0.00,"a":[1.50, {"k": "v"}],"y":1}"#
        );
        assert!(lazy::Node::parse("{\"a\": tru").is_err());
        assert!(ops.parse_lazy("{\"a\": tru").is_err());
        assert!(ops.parse_lazy("{} x").is_err());
    }
}

mod lazy_large_objects {
    use crate::transform::*;

    /// A flat object of 50,000 members (and a repeated one) is read in linear time and keeps
    /// the last value of a repeated name.
    #[test]
    fn large_objects_and_repeated_names() {
        let mut text = String::from("{");
        for i in 0..50_000 {
            text.push_str(&format!("\"k{i}\":{i},"));
        }
        text.push_str("\"k7\":\"last\"}");
        let list: Vec<JsonOpConfig> = serde_json::from_str(r#"[ { "remove": "k1" } ]"#).unwrap();
        let ops = JsonOps::compile(&list, "t").unwrap();
        let mut node = ops.parse_lazy(&text).unwrap();
        ops.apply_lazy(&mut node, &RequestCtx::default(), &Inputs::default());
        let mut out = Vec::new();
        node.write(&mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 49_999);
        assert_eq!(v["k7"], "last");
        assert!(v.get("k1").is_none());
    }
}
