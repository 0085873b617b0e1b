//! JSON ↔ XML with one documented mapping, over `quick-xml`'s event reader and writer (no DOM).
//!
//! JSON → XML: the document goes inside a root element (`root`); an object's keys become child
//! elements, `@name` keys attributes and `#text` the element's text; an array becomes repeated
//! elements of its key's name (a top-level array or an array inside an array repeats `item`);
//! `null` is an empty element (`<k/>`); numbers and booleans are written as text. Keys that are
//! not XML names are made into names (`_` for bad characters, a leading `_` before a digit).
//!
//! XML → JSON: the content of the document element (with `keep_root`, `{name: content}`);
//! attributes become `@name`, child elements keys (repeated names, and names listed in
//! `arrays`, become arrays), text of an element with children or attributes `#text`, the text
//! of a plain element a string (typed numbers and booleans with `types: infer`); `<k/>` is
//! null and `<k></k>` an empty string; a root whose children are all `item` an array.
//! Namespace prefixes stay part of the names (`soap:Body`, `@xmlns:soap`).
//!
//! Round trip (JSON → XML → JSON gives the input back): documents whose keys are XML names,
//! whose arrays have at least two elements (or are listed in `arrays`) and hold no arrays,
//! and whose scalars are strings (or numbers and booleans with `types: infer`).
//!
//! Hostile XML: a DOCTYPE (DTD) is refused, so no external entity and no entity expansion can
//! happen; only the five predefined entities and character references are read; nesting is
//! limited (`max_depth`).

use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Deserialize, serde::Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XmlOptions {
    /// The document element written around a JSON document (default `root`).
    #[serde(default = "root")]
    pub root: String,
    /// The element of each value of a top-level or nested array (default `item`).
    #[serde(default = "item")]
    pub item: String,
    /// Element names always read as JSON arrays, even when they appear once.
    #[serde(default)]
    pub arrays: Vec<String>,
    /// XML text to JSON: `strings` (default) or `infer` (numbers and booleans typed).
    #[serde(default)]
    pub types: Types,
    /// XML → JSON keeps the document element: `{ "name": {...} }`.
    #[serde(default)]
    pub keep_root: bool,
    /// Deepest element nesting accepted (default 64).
    #[serde(default = "max_depth")]
    pub max_depth: usize,
}

impl Default for XmlOptions {
    fn default() -> Self {
        XmlOptions {
            root: root(),
            item: item(),
            arrays: Vec::new(),
            types: Types::default(),
            keep_root: false,
            max_depth: max_depth(),
        }
    }
}

fn root() -> String {
    "root".into()
}
fn item() -> String {
    "item".into()
}
fn max_depth() -> usize {
    64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Types {
    #[default]
    Strings,
    Infer,
}

/// Checks names given in configuration.
pub fn check_name(n: &str) -> Result<(), String> {
    if is_name(n) {
        Ok(())
    } else {
        Err(format!("\"{n}\" is not an XML element name"))
    }
}

fn is_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

fn to_name(k: &str) -> String {
    if is_name(k) {
        return k.to_string();
    }
    let mut out: String = k
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// JSON → XML

/// The XML document for a JSON value.
pub fn to_xml(v: &Value, o: &XmlOptions) -> Vec<u8> {
    let mut w = Writer::new(Vec::with_capacity(256));
    // Writing into a Vec cannot fail.
    let _ = w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
    match v {
        Value::Array(a) => {
            write_open(&mut w, &o.root, None, false);
            for x in a {
                element(&mut w, &o.item, x, o);
            }
            let _ = w.write_event(Event::End(BytesEnd::new(o.root.as_str())));
        }
        other => element(&mut w, &o.root, other, o),
    }
    w.into_inner()
}

fn write_open(
    w: &mut Writer<Vec<u8>>,
    name: &str,
    attrs: Option<&Map<String, Value>>,
    empty: bool,
) {
    let mut start = BytesStart::new(name);
    if let Some(m) = attrs {
        for (k, v) in m {
            if let Some(a) = k.strip_prefix('@') {
                start.push_attribute((to_name(a).as_str(), scalar_text(v).as_str()));
            }
        }
    }
    let _ = w.write_event(if empty {
        Event::Empty(start)
    } else {
        Event::Start(start)
    });
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn element(w: &mut Writer<Vec<u8>>, name: &str, v: &Value, o: &XmlOptions) {
    match v {
        Value::Null => write_open(w, name, None, true),
        Value::Object(m) => {
            write_open(w, name, Some(m), false);
            for (k, x) in m {
                if k.starts_with('@') {
                    continue;
                }
                if k == "#text" {
                    let _ = w.write_event(Event::Text(BytesText::new(&scalar_text(x))));
                    continue;
                }
                let child = to_name(k);
                match x {
                    Value::Array(a) => {
                        for y in a {
                            match y {
                                Value::Array(_) => nested_array(w, &child, y, o),
                                _ => element(w, &child, y, o),
                            }
                        }
                    }
                    _ => element(w, &child, x, o),
                }
            }
            let _ = w.write_event(Event::End(BytesEnd::new(name)));
        }
        Value::Array(_) => nested_array(w, name, v, o),
        scalar => {
            write_open(w, name, None, false);
            let _ = w.write_event(Event::Text(BytesText::new(&scalar_text(scalar))));
            let _ = w.write_event(Event::End(BytesEnd::new(name)));
        }
    }
}

/// An array inside an array: one element holding an `item` per value.
fn nested_array(w: &mut Writer<Vec<u8>>, name: &str, v: &Value, o: &XmlOptions) {
    write_open(w, name, None, false);
    if let Value::Array(a) = v {
        for y in a {
            element(w, &o.item, y, o);
        }
    }
    let _ = w.write_event(Event::End(BytesEnd::new(name)));
}

// ---------------------------------------------------------------------------------------------
// XML → JSON

/// Why an XML document was not converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XmlError {
    /// A DOCTYPE: DTDs (and so external and custom entities) are not processed.
    Dtd,
    /// An entity reference other than the five predefined ones.
    Entity(String),
    TooDeep(usize),
    Syntax(String),
}

impl XmlError {
    pub fn reason(&self) -> &'static str {
        match self {
            XmlError::Dtd => "xml_dtd",
            XmlError::Entity(_) => "xml_entity",
            XmlError::TooDeep(_) => "xml_depth",
            XmlError::Syntax(_) => "xml_syntax",
        }
    }
}

impl std::fmt::Display for XmlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XmlError::Dtd => write!(f, "XML with a DOCTYPE is not accepted (no DTD processing)"),
            XmlError::Entity(e) => write!(f, "the XML entity &{e}; is not defined"),
            XmlError::TooDeep(d) => write!(f, "the XML is nested deeper than {d} elements"),
            XmlError::Syntax(e) => write!(f, "the XML is malformed: {e}"),
        }
    }
}

struct Frame {
    name: String,
    map: Map<String, Value>,
    text: String,
    /// Has attributes or child elements.
    structured: bool,
}

impl Frame {
    fn new(start: &BytesStart, o: &XmlOptions) -> Result<Frame, XmlError> {
        let name = start.name().as_ref().to_string();
        let mut map = Map::new();
        for a in start.attributes() {
            let a = a.map_err(|e| XmlError::Syntax(e.to_string()))?;
            let key = format!("@{}", a.key.as_ref());
            let value = a
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| match e {
                    quick_xml::Error::Escape(
                        quick_xml::escape::EscapeError::UnrecognizedEntity(_, n),
                    ) => XmlError::Entity(n),
                    other => XmlError::Syntax(other.to_string()),
                })?;
            map.insert(key, typed(&value, o));
        }
        Ok(Frame {
            name,
            structured: !map.is_empty(),
            map,
            text: String::new(),
        })
    }

    fn finish(self, empty_tag: bool, o: &XmlOptions) -> Value {
        if !self.structured {
            if empty_tag {
                return Value::Null;
            }
            return typed(&self.text, o);
        }
        let mut map = self.map;
        let text = self.text.trim();
        if !text.is_empty() {
            map.insert("#text".into(), typed(text, o));
        }
        Value::Object(map)
    }
}

fn typed(s: &str, o: &XmlOptions) -> Value {
    if o.types == Types::Infer {
        if let Ok(b) = s.parse::<bool>() {
            return Value::Bool(b);
        }
        if let Ok(i) = s.parse::<i64>() {
            let padded = s.starts_with(['+', '0']) && s.len() > 1 || s.starts_with("-0");
            if !padded {
                return Value::from(i);
            }
        }
        if s.contains(['.', 'e', 'E']) && !s.starts_with(['.', '+']) && !s.ends_with('.') {
            if let Ok(f) = s.parse::<f64>() {
                if f.is_finite() {
                    if let Some(n) = serde_json::Number::from_f64(f) {
                        return Value::Number(n);
                    }
                }
            }
        }
    }
    Value::String(s.to_string())
}

fn insert(parent: &mut Frame, name: String, v: Value, o: &XmlOptions) {
    parent.structured = true;
    let always = o.arrays.contains(&name);
    match parent.map.get_mut(&name) {
        // Element values are never arrays: an array here is a repeated element.
        Some(Value::Array(a)) => a.push(v),
        Some(existing) => {
            let first = std::mem::take(existing);
            *existing = Value::Array(vec![first, v]);
        }
        None if always => {
            parent.map.insert(name, Value::Array(vec![v]));
        }
        None => {
            parent.map.insert(name, v);
        }
    }
}

/// The JSON value of an XML document.
pub fn to_json(xml: &[u8], o: &XmlOptions) -> Result<Value, XmlError> {
    let text = std::str::from_utf8(xml).map_err(|e| XmlError::Syntax(e.to_string()))?;
    let mut reader = Reader::from_str(text);
    let cfg = reader.config_mut();
    cfg.check_end_names = true;
    cfg.check_comments = false;
    let mut stack: Vec<Frame> = Vec::new();
    let mut done: Option<(String, Value)> = None;
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| XmlError::Syntax(e.to_string()))?;
        match ev {
            Event::DocType(_) => return Err(XmlError::Dtd),
            Event::Start(s) | Event::Empty(s) if done.is_some() => {
                let _ = s;
                return Err(XmlError::Syntax("more than one document element".into()));
            }
            Event::Start(s) => {
                if stack.len() >= o.max_depth {
                    return Err(XmlError::TooDeep(o.max_depth));
                }
                stack.push(Frame::new(&s, o)?);
            }
            Event::Empty(s) => {
                if stack.len() >= o.max_depth {
                    return Err(XmlError::TooDeep(o.max_depth));
                }
                let f = Frame::new(&s, o)?;
                let name = f.name.clone();
                let v = f.finish(true, o);
                match stack.last_mut() {
                    Some(p) => insert(p, name, v, o),
                    None => done = Some((name, v)),
                }
            }
            Event::End(_) => {
                let Some(f) = stack.pop() else {
                    return Err(XmlError::Syntax("unmatched end tag".into()));
                };
                let name = f.name.clone();
                let v = f.finish(false, o);
                match stack.last_mut() {
                    Some(p) => insert(p, name, v, o),
                    None => done = Some((name, v)),
                }
            }
            Event::Text(t) => {
                let s = t.xml10_content();
                match stack.last_mut() {
                    Some(f) => f.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => {
                        return Err(XmlError::Syntax("text outside the document element".into()))
                    }
                }
            }
            Event::CData(c) => {
                if let Some(f) = stack.last_mut() {
                    f.text.push_str(&c.into_inner());
                }
            }
            Event::GeneralRef(r) => {
                let ch = match r.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => {
                        let name = r.xml10_content();
                        match quick_xml::escape::resolve_predefined_entity(&name) {
                            Some(s) => s.to_string(),
                            None => return Err(XmlError::Entity(name.into_owned())),
                        }
                    }
                    Err(e) => return Err(XmlError::Syntax(e.to_string())),
                };
                if let Some(f) = stack.last_mut() {
                    f.text.push_str(&ch);
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Syntax(
            "the document ends inside an element".into(),
        ));
    }
    let Some((name, v)) = done else {
        return Err(XmlError::Syntax("no document element".into()));
    };
    let v = match v {
        // A root of only `item` elements is an array (what a JSON array becomes).
        Value::Object(mut m) if m.len() == 1 && m.contains_key(&o.item) => {
            match m.remove(&o.item) {
                Some(Value::Array(a)) => Value::Array(a),
                Some(one) => Value::Array(vec![one]),
                None => Value::Null,
            }
        }
        other => other,
    };
    Ok(if o.keep_root {
        let mut m = Map::new();
        m.insert(name, v);
        Value::Object(m)
    } else {
        v
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts() -> XmlOptions {
        XmlOptions::default()
    }

    #[test]
    fn json_to_xml_mapping() {
        let v = json!({"user": {"@id": 42, "name": "Ann & Bob", "tags": ["a", "b"], "none": null, "note": {"@lang": "en", "#text": "hi"}}});
        let x = String::from_utf8(to_xml(&v, &opts())).unwrap();
        assert_eq!(
            x,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><root><user id=\"42\"><name>Ann &amp; Bob</name><none/><note lang=\"en\">hi</note><tags>a</tags><tags>b</tags></user></root>"
        );
        let arr = String::from_utf8(to_xml(&json!([1, [2, 3]]), &opts())).unwrap();
        assert!(
            arr.ends_with("<root><item>1</item><item><item>2</item><item>3</item></item></root>"),
            "{arr}"
        );
        let odd = String::from_utf8(to_xml(&json!({"1a b": "x"}), &opts())).unwrap();
        assert!(odd.contains("<_1a_b>x</_1a_b>"), "{odd}");
    }

    #[test]
    fn round_trip_of_the_documented_subset() {
        let docs = [
            json!({"user": {"@id": "42", "name": "Ann", "tags": ["a", "b"], "none": null, "empty": "", "note": {"@lang": "en", "#text": "hi"}}}),
            json!([{"id": "1"}, {"id": "2"}]),
            json!({"soap:Envelope": {"@xmlns:soap": "http://schemas.xmlsoap.org/soap/envelope/", "soap:Body": {"x": "<&>\"'"}}}),
        ];
        for d in docs {
            let back = to_json(&to_xml(&d, &opts()), &opts()).unwrap();
            assert_eq!(back, d);
        }
        let infer = XmlOptions {
            types: Types::Infer,
            arrays: vec!["one".into()],
            ..opts()
        };
        let d = json!({"n": 42, "f": 1.5, "b": true, "s": "007", "one": ["x"]});
        assert_eq!(to_json(&to_xml(&d, &infer), &infer).unwrap(), d);
    }

    #[test]
    fn xml_to_json_mapping() {
        let x = br#"<?xml version="1.0"?><!-- c --><order id="7"><item>a</item><item>b</item><total cur="EUR">9.5</total><gift/><note><![CDATA[<b>]]> &#65;&amp;</note></order>"#;
        assert_eq!(
            to_json(x, &opts()).unwrap(),
            json!({"@id": "7", "item": ["a", "b"], "total": {"@cur": "EUR", "#text": "9.5"}, "gift": null, "note": "<b> A&"})
        );
        let keep = XmlOptions {
            keep_root: true,
            ..opts()
        };
        assert_eq!(to_json(b"<a>1</a>", &keep).unwrap(), json!({"a": "1"}));
    }

    #[test]
    fn hostile_xml_is_refused() {
        let laughs = br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><lolz>&lol2;</lolz>"#;
        assert_eq!(to_json(laughs, &opts()), Err(XmlError::Dtd));
        let xxe = br#"<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>"#;
        assert_eq!(to_json(xxe, &opts()), Err(XmlError::Dtd));
        assert_eq!(
            to_json(b"<a>&xxe;</a>", &opts()),
            Err(XmlError::Entity("xxe".into()))
        );
        assert!(matches!(
            to_json(b"<a b=\"&x;\"/>", &opts()),
            Err(XmlError::Entity(_))
        ));
        let deep = "<a>".repeat(65) + &"</a>".repeat(65);
        assert_eq!(
            to_json(deep.as_bytes(), &opts()),
            Err(XmlError::TooDeep(64))
        );
        for bad in [
            &b"<a><b></a>"[..],
            b"<a>",
            b"",
            b"<a/><b/>",
            b"text",
            b"<a>\xff</a>",
        ] {
            assert!(
                matches!(to_json(bad, &opts()), Err(XmlError::Syntax(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
