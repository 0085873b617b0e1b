//! The plugin table: names, schema and decoding agree.

use super::super::*;

/// The enum's serde names (snake case of the variant) are the table's names, so the JSON
/// Schema and the decoder agree.
#[test]
fn schema_names_are_the_table_names() {
    let schema = serde_json::to_value(schemars::schema_for!(PluginSpec)).unwrap();
    let text = schema.to_string();
    for name in PLUGIN_NAMES {
        assert!(
            text.contains(&format!("\"{name}\"")),
            "{name} missing from the schema"
        );
    }
    let variants = schema["oneOf"].as_array().map_or(0, Vec::len);
    assert_eq!(variants, PLUGIN_NAMES.len());
}

#[test]
fn an_unknown_or_doubled_entry_is_refused() {
    let e = yaml_serde::from_str::<PluginSpec>("compresion: {}").unwrap_err();
    assert!(e.to_string().contains("compression"), "{e}");
    let e = yaml_serde::from_str::<PluginSpec>("headers: {}\ncors: {}").unwrap_err();
    assert!(e.to_string().contains("one plugin per list item"), "{e}");
}
