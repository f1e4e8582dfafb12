//! Parameters by name into a verb's typed struct, with errors that name the bad parameter, and
//! the names a struct takes (for the test that the verb table and the structs agree). VDSM
//! accepts unknown names (managers send parameters older hosts don't know): they are logged
//! and ignored here too.

use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeOwned, Visitor};
use serde_json::{Map, Value};

use super::ApiError;

/// Deserializes the named parameters of a call to `verb`.
pub fn from_object<T: DeserializeOwned>(
    verb: &str,
    object: Map<String, Value>,
) -> Result<T, ApiError> {
    let mut ignored = Vec::new();
    let mut record = |path: serde_ignored::Path| ignored.push(path.to_string());
    let deserializer = serde_ignored::Deserializer::new(Value::Object(object), &mut record);
    let parsed = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::InvalidParams(e.inner().to_string())
        } else {
            ApiError::InvalidParams(format!("parameter '{path}': {}", e.inner()))
        }
    })?;
    if !ignored.is_empty() {
        tracing::warn!(verb, ?ignored, "unknown parameters ignored");
    }
    Ok(parsed)
}

/// The wire names a parameter struct deserializes from (its serde field names, renames
/// applied), read from what serde's derive tells a deserializer.
pub fn serde_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = T::deserialize(FieldRecorder(&mut fields));
    fields.unwrap_or(&[])
}

/// A deserializer that only records the field list of the struct asked of it.
struct FieldRecorder<'a>(&'a mut Option<&'static [&'static str]>);

/// Ends a [`FieldRecorder`] run: no value is ever produced.
#[derive(Debug)]
struct Recorded;

impl fmt::Display for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("fields recorded")
    }
}

impl std::error::Error for Recorded {}

impl serde::de::Error for Recorded {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Self
    }
}

impl<'de> Deserializer<'de> for FieldRecorder<'_> {
    type Error = Recorded;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Recorded> {
        Err(Recorded)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Recorded> {
        *self.0 = Some(fields);
        Err(Recorded)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::{GetVmListParams, VmIdParams};

    #[test]
    fn fields_are_the_wire_names() {
        assert_eq!(serde_fields::<VmIdParams>(), ["vmID"]);
        assert_eq!(
            serde_fields::<GetVmListParams>(),
            ["fullStatus", "vmList", "onlyUUID"]
        );
    }

    #[test]
    fn a_bad_parameter_is_named() {
        let object = serde_json::json!({"vmID": "../etc"});
        let Value::Object(object) = object else {
            unreachable!()
        };
        let err = from_object::<VmIdParams>("VM.getStats", object).unwrap_err();
        assert!(err.to_string().contains("'vmID'"), "{err}");
    }
}
