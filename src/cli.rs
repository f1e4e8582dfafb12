//! Argument handling for the `rvdsm` CLI, kept in the library so it is unit-tested: turning
//! `name=value` words into typed JSON parameters, and describing verbs from the schema.
//!
//! Unlike vdsm-client, a value that parses as JSON (number, boolean, list, object, quoted
//! string) is sent typed, and `@file.json` reads a value from a file; anything else is sent as
//! a string.

use std::path::Path;

use serde_json::{Map, Value};

use crate::api::{VERBS, Verb};

/// A bad command line.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A word is not `name=value`.
    #[error("expected name=value, got {0:?}")]
    NotAssignment(String),
    /// The same parameter twice.
    #[error("parameter {0:?} given twice")]
    Duplicate(String),
    /// A value file could not be read or is not JSON.
    #[error("cannot read parameter {name} from {path}: {message}")]
    ValueFile {
        /// The parameter.
        name: String,
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// `-f` did not hold a JSON object.
    #[error("the parameter file must hold a JSON object: {0}")]
    ParamFile(String),
    /// `-f` and `name=value` together.
    #[error("give parameters either with -f or as name=value, not both")]
    Mixed,
}

/// A job's progress as the CLI shows it while it waits: `job <id>: running [####----] 50%`.
pub fn progress_line(job: &str, status: &str, percent: u64) -> String {
    const WIDTH: usize = 20;
    let filled = (percent.min(100) as usize * WIDTH) / 100;
    format!(
        "job {job}: {status:<7} [{}{}] {percent:>3}%",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled)
    )
}

/// Parses `name=value` words into a parameter object.
pub fn parse_assignments(words: &[String]) -> Result<Map<String, Value>, UsageError> {
    let mut params = Map::new();
    for word in words {
        let (name, raw) = word
            .split_once('=')
            .filter(|(name, _)| !name.is_empty())
            .ok_or_else(|| UsageError::NotAssignment(word.clone()))?;
        let value = parse_value(name, raw)?;
        if params.insert(name.to_owned(), value).is_some() {
            return Err(UsageError::Duplicate(name.to_owned()));
        }
    }
    Ok(params)
}

/// One value: `@path` reads JSON from a file; JSON is sent typed; anything else as a string.
fn parse_value(name: &str, raw: &str) -> Result<Value, UsageError> {
    if let Some(path) = raw.strip_prefix('@') {
        let text = std::fs::read_to_string(path).map_err(|e| UsageError::ValueFile {
            name: name.to_owned(),
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        return serde_json::from_str(&text).map_err(|e| UsageError::ValueFile {
            name: name.to_owned(),
            path: path.to_owned(),
            message: e.to_string(),
        });
    }
    Ok(serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned())))
}

/// Reads a JSON object of parameters from `path` (`-` for standard input).
pub fn read_param_file(path: &Path) -> Result<Map<String, Value>, UsageError> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| UsageError::ParamFile(e.to_string()))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(UsageError::ParamFile(format!("got {other}"))),
        Err(e) => Err(UsageError::ParamFile(e.to_string())),
    }
}

/// `rvdsm --list`: every verb with its one-line description.
pub fn list_verbs() -> String {
    let width = VERBS.iter().map(|v| v.name.len()).max().unwrap_or(0);
    VERBS
        .iter()
        .map(|v| format!("{:width$}  {}\n", v.name, v.description))
        .collect()
}

/// `rvdsm Namespace method --help`: the parameters and a JSON template for `-f`.
pub fn describe_verb(verb: &Verb) -> String {
    let mut out = format!(
        "{} {}\n\n{}\n",
        verb.namespace(),
        verb.method(),
        verb.description
    );
    if verb.params.is_empty() {
        out.push_str("\nNo parameters.\n");
        return out;
    }
    out.push_str("\nParameters:\n");
    for p in verb.params {
        let need = if p.required { "required" } else { "optional" };
        out.push_str(&format!(
            "  {} ({}, {}): {}\n",
            p.name,
            p.ty.name(),
            need,
            p.description
        ));
    }
    out.push_str("\nJSON template (for -f):\n{\n");
    let lines: Vec<String> = verb
        .params
        .iter()
        .map(|p| format!("    \"{}\": {}", p.name, p.ty.template()))
        .collect();
    out.push_str(&lines.join(",\n"));
    out.push_str("\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn values_are_typed_when_json() {
        let p = parse_assignments(&words(&[
            "a=1",
            "b=true",
            "c=[1,2]",
            r#"d={"x":1}"#,
            "e=plain text",
            r#"f="7""#,
            "g=",
            "h=x=y",
        ]))
        .unwrap();
        assert_eq!(
            Value::Object(p),
            json!({"a":1,"b":true,"c":[1,2],"d":{"x":1},"e":"plain text","f":"7","g":"","h":"x=y"})
        );
    }

    #[test]
    fn uuids_stay_strings() {
        let p = parse_assignments(&words(&["vmID=4d8b1f6e-2f1b-4c4e-9a59-3e0d6c3a1d10"])).unwrap();
        assert_eq!(p["vmID"], json!("4d8b1f6e-2f1b-4c4e-9a59-3e0d6c3a1d10"));
    }

    #[test]
    fn bad_words_are_refused() {
        assert!(matches!(
            parse_assignments(&words(&["novalue"])),
            Err(UsageError::NotAssignment(_))
        ));
        assert!(matches!(
            parse_assignments(&words(&["=1"])),
            Err(UsageError::NotAssignment(_))
        ));
        assert!(matches!(
            parse_assignments(&words(&["a=1", "a=2"])),
            Err(UsageError::Duplicate(_))
        ));
    }

    #[test]
    fn values_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("drives.json");
        std::fs::write(&file, r#"[{"imageID":"x"}]"#).unwrap();
        let p = parse_assignments(&[format!("snapDrives=@{}", file.display())]).unwrap();
        assert_eq!(p["snapDrives"], json!([{"imageID":"x"}]));
        let missing = parse_assignments(&words(&["x=@/nonexistent/file"]));
        assert!(matches!(missing, Err(UsageError::ValueFile { .. })));
    }

    #[test]
    fn param_file_must_be_an_object() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.json");
        std::fs::write(&file, "[1]").unwrap();
        assert!(read_param_file(&file).is_err());
        std::fs::write(&file, r#"{"vmID":"x"}"#).unwrap();
        assert_eq!(read_param_file(&file).unwrap()["vmID"], json!("x"));
    }

    #[test]
    fn help_lists_parameters_and_template() {
        let text = describe_verb(crate::api::find("VM.getStats").unwrap());
        assert!(text.contains("vmID (UUID, required)"), "{text}");
        assert!(text.contains("\"vmID\": \"00000000"), "{text}");
        assert!(list_verbs().contains("Host.getVMList"));
    }

    #[test]
    fn progress_bars_fill_with_the_percentage() {
        assert_eq!(
            progress_line("j", "running", 50),
            "job j: running [##########----------]  50%"
        );
        assert_eq!(
            progress_line("j", "done", 100),
            "job j: done    [####################] 100%"
        );
        assert!(progress_line("j", "pending", 0).contains("[--------------------]   0%"));
    }
}
