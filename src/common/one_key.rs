//! YAML lists whose items are one-key maps naming what they are (`- jwt: { … }`,
//! `- rename: { … }`). yaml_serde writes externally tagged enums as YAML tags, so such enums
//! decode through [`OneKey`] instead: errors inside an item's value keep their path and line,
//! an unknown name lists the known ones, a second key says to start a new item.

use serde::de::{Deserializer, Error, MapAccess, Visitor};
use std::marker::PhantomData;

pub trait OneKey: Sized {
    /// The known names, for messages.
    const NAMES: &'static [&'static str];
    /// What the map holds, after "a map with one ": `plugin name ({names}) and its settings`.
    const EXPECTING: &'static str;
    /// The message for an empty map.
    const EMPTY: &'static str;
    /// The message for a second key.
    const SECOND_KEY: &'static str;

    /// The value of the entry named `name`; `None` for an unknown name.
    fn decode<'de, A: MapAccess<'de>>(name: &str, map: &mut A) -> Result<Option<Self>, A::Error>;
}

/// `Deserialize::deserialize` of a [`OneKey`] type.
pub fn deserialize<'de, D: Deserializer<'de>, T: OneKey>(d: D) -> Result<T, D::Error> {
    struct V<T>(PhantomData<T>);
    impl<'de, T: OneKey> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let expecting = T::EXPECTING.replace("{names}", &T::NAMES.join(", "));
            write!(f, "a map with one {expecting}")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let Some(name) = map.next_key::<String>()? else {
                return Err(A::Error::custom(T::EMPTY));
            };
            let Some(value) = T::decode(&name, &mut map)? else {
                return Err(A::Error::unknown_variant(&name, T::NAMES));
            };
            if map.next_key::<String>()?.is_some() {
                return Err(A::Error::custom(T::SECOND_KEY));
            }
            Ok(value)
        }
    }
    d.deserialize_map(V(PhantomData))
}
