//! Request parameters into typed values. VDSM accepts parameters by name (an object) or by
//! position (a list, mapped to names in schema order); both are accepted here. A missing or
//! mistyped parameter is refused with a message that names it. Unknown names are logged and
//! ignored, as VDSM does in production (managers send parameters older hosts don't know).

use jsonrpsee::types::Params;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::api::{ApiError, Verb};

/// Parses the parameters of a call to `verb`.
pub fn parse<T: DeserializeOwned>(verb: &Verb, params: &Params) -> Result<T, ApiError> {
    let raw = params.as_str().unwrap_or("{}");
    let value: Value = serde_json::from_str(raw)
        .map_err(|e| ApiError::InvalidParams(format!("parameters are not JSON: {e}")))?;
    let object = by_name(verb, value)?;
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
        tracing::warn!(verb = verb.name, ?ignored, "unknown parameters ignored");
    }
    Ok(parsed)
}

/// The parameters as an object: positional lists are mapped to names in schema order.
fn by_name(verb: &Verb, value: Value) -> Result<Map<String, Value>, ApiError> {
    match value {
        Value::Object(object) => Ok(object),
        Value::Null => Ok(Map::new()),
        Value::Array(items) if items.len() <= verb.params.len() => Ok(verb
            .params
            .iter()
            .map(|p| p.name.to_owned())
            .zip(items)
            .collect()),
        Value::Array(items) => Err(ApiError::InvalidParams(format!(
            "{} takes at most {} parameters, {} given",
            verb.name,
            verb.params.len(),
            items.len()
        ))),
        other => Err(ApiError::InvalidParams(format!(
            "parameters must be an object or a list, not {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::schema::find;
    use crate::api::types::{GetVmListParams, VmIdParams};

    const VM: &str = "4d8b1f6e-2f1b-4c4e-9a59-3e0d6c3a1d10";

    fn parse_json<T: DeserializeOwned>(verb: &str, json: &str) -> Result<T, ApiError> {
        let params = Params::new(Some(json));
        parse(find(verb).unwrap(), &params)
    }

    #[test]
    fn by_name_and_by_position_agree() {
        let named: VmIdParams =
            parse_json("VM.getStats", &format!(r#"{{"vmID":"{VM}"}}"#)).unwrap();
        let positional: VmIdParams = parse_json("VM.getStats", &format!(r#"["{VM}"]"#)).unwrap();
        assert_eq!(named, positional);
        assert_eq!(named.vm_id.to_string(), VM);
    }

    #[test]
    fn missing_parameter_is_named() {
        let err = parse_json::<VmIdParams>("VM.getStats", "{}").unwrap_err();
        assert!(err.to_string().contains("vmID"), "{err}");
        assert_eq!(err.code(), -32602);
    }

    #[test]
    fn mistyped_parameter_is_named() {
        let err = parse_json::<VmIdParams>("VM.getStats", r#"{"vmID":"../etc"}"#).unwrap_err();
        assert!(err.to_string().contains("'vmID'"), "{err}");
        let err = parse_json::<VmIdParams>("VM.getStats", r#"{"vmID":7}"#).unwrap_err();
        assert!(err.to_string().contains("'vmID'"), "{err}");
        let err =
            parse_json::<GetVmListParams>("Host.getVMList", r#"{"vmList":["x"]}"#).unwrap_err();
        assert!(err.to_string().contains("vmList"), "{err}");
    }

    #[test]
    fn too_many_positional_parameters_are_refused() {
        let err = parse_json::<VmIdParams>("VM.getStats", &format!(r#"["{VM}", 1]"#)).unwrap_err();
        assert!(err.to_string().contains("at most 1"), "{err}");
    }

    #[test]
    fn absent_parameters_take_defaults_and_unknown_are_ignored() {
        let p: GetVmListParams = parse_json("Host.getVMList", "null").unwrap();
        assert_eq!(p, GetVmListParams::default());
        let p: GetVmListParams = parse_json("Host.getVMList", r#"{"colour":"red"}"#).unwrap();
        assert_eq!(p, GetVmListParams::default());
    }

    #[test]
    fn scalar_parameters_are_refused() {
        assert!(parse_json::<GetVmListParams>("Host.getVMList", "3").is_err());
    }
}
