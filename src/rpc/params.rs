//! Request parameters into a typed [`Call`]. VDSM accepts parameters by name (an object) or by
//! position (a list, mapped to names in schema order); both are accepted here. The verb table
//! ([`crate::api::verbs`]) then parses the named parameters: a missing or mistyped one is
//! refused with a message that names it, unknown ones are logged and ignored.

use jsonrpsee::types::Params;
use serde_json::{Map, Value};

use crate::api::{ApiError, Call, ParamType, Verb};

/// Parses the parameters of a call to `verb`.
pub fn parse(verb: &Verb, params: &Params) -> Result<Call, ApiError> {
    let raw = params.as_str().unwrap_or("{}");
    let value: Value = serde_json::from_str(raw)
        .map_err(|e| ApiError::InvalidParams(format!("parameters are not JSON: {e}")))?;
    let mut object = by_name(verb, value)?;
    coerce_strings(verb, &mut object);
    (verb.parse)(object)
}

/// VDSM accepts a string where its schema says boolean or number (the engine sends `postZero`
/// as `"false"`, and vdsm-client's `name=value` form sends every value as a string): such a
/// string becomes the value it spells. Anything else is left for the parser to refuse.
fn coerce_strings(verb: &Verb, object: &mut Map<String, Value>) {
    for param in verb.params {
        let Some(Value::String(text)) = object.get(param.name) else {
            continue;
        };
        let coerced = match param.ty {
            ParamType::Bool => match text.to_ascii_lowercase().as_str() {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
            ParamType::UInt => text.trim().parse::<u64>().ok().map(Value::from),
            ParamType::Int => text.trim().parse::<i64>().ok().map(Value::from),
            _ => None,
        };
        if let Some(value) = coerced {
            object.insert(param.name.to_owned(), value);
        }
    }
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
    use crate::api::find;
    use crate::api::types::{GetVmListParams, VmIdParams};

    const VM: &str = "4d8b1f6e-2f1b-4c4e-9a59-3e0d6c3a1d10";

    /// The typed parameters of a call to `verb`, when they are of type `T`.
    fn parse_json<T: TypedParams>(verb: &str, json: &str) -> Result<T, ApiError> {
        let params = Params::new(Some(json));
        parse(find(verb).unwrap(), &params).map(|call| T::of(call).expect("the verb's type"))
    }

    trait TypedParams: Sized {
        fn of(call: Call) -> Option<Self>;
    }

    impl TypedParams for VmIdParams {
        fn of(call: Call) -> Option<Self> {
            match call {
                Call::VmGetStats(p) | Call::VmThaw(p) => Some(p),
                _ => None,
            }
        }
    }

    impl TypedParams for GetVmListParams {
        fn of(call: Call) -> Option<Self> {
            match call {
                Call::HostGetVmList(p) => Some(p),
                _ => None,
            }
        }
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
    fn strings_for_booleans_and_numbers_are_taken_as_vdsm_takes_them() {
        let p: GetVmListParams = parse_json(
            "Host.getVMList",
            r#"{"fullStatus":"False","onlyUUID":"true"}"#,
        )
        .unwrap();
        assert_eq!((p.full_status, p.only_uuid), (Some(false), Some(true)));
        let err = parse_json::<GetVmListParams>("Host.getVMList", r#"{"fullStatus":"maybe"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("fullStatus"), "{err}");
    }

    #[test]
    fn scalar_parameters_are_refused() {
        assert!(parse_json::<GetVmListParams>("Host.getVMList", "3").is_err());
    }
}
