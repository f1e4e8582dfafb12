//! VDSM's JSON text style on its own wire: VDSM serializes with Python's `json.dumps`, which
//! writes `", "` and `": "` between items, and clients written against it have been seen to
//! match reply text byte for byte (`"result": true`). STOMP replies and events are rewritten
//! in that style in one pass over the bytes, without parsing; strings are left untouched. A
//! batch reply with a single member is unwrapped, as VDSM answers.

/// A JSON-RPC reply as VDSM sends it: a batch reply with one member becomes that bare object
/// (found by looking for a top-level comma, not by parsing), in Python's separators.
pub fn vdsm_reply(json: &[u8]) -> Vec<u8> {
    let single = match json {
        [b'[', inner @ .., b']'] if !inner.is_empty() && !has_top_level_comma(inner) => inner,
        _ => json,
    };
    python_separators(single)
}

/// Whether a comma separates items of the outermost array or object in `json`.
fn has_top_level_comma(json: &[u8]) -> bool {
    let mut scanner = Scanner::default();
    let mut depth = 0usize;
    for &byte in json {
        if scanner.in_string_after(byte) {
            continue;
        }
        match byte {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => return true,
            _ => {}
        }
    }
    false
}

/// `{"a":1,"b":[2,3]}` becomes `{"a": 1, "b": [2, 3]}`.
pub fn python_separators(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + json.len() / 8);
    let mut scanner = Scanner::default();
    for &byte in json {
        out.push(byte);
        if !scanner.in_string_after(byte) && matches!(byte, b',' | b':') {
            out.push(b' ');
        }
    }
    out
}

/// Tells string bytes (quotes included) from structure, byte by byte.
#[derive(Default)]
struct Scanner {
    in_string: bool,
    escaped: bool,
}

impl Scanner {
    /// Feeds one byte; whether it belongs to a string (its quotes included).
    fn in_string_after(&mut self, byte: u8) -> bool {
        if self.in_string {
            match byte {
                _ if self.escaped => self.escaped = false,
                b'\\' => self.escaped = true,
                b'"' => self.in_string = false,
                _ => {}
            }
            return true;
        }
        if byte == b'"' {
            self.in_string = true;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_get_spaces_and_strings_do_not() {
        let text = br#"{"jsonrpc":"2.0","id":"a,b:c","result":[1,{"k":"q\"x,y"}]}"#;
        assert_eq!(
            String::from_utf8(python_separators(text)).unwrap(),
            r#"{"jsonrpc": "2.0", "id": "a,b:c", "result": [1, {"k": "q\"x,y"}]}"#
        );
    }

    #[test]
    fn a_batch_of_one_reply_becomes_a_bare_object() {
        let one = br#"[{"jsonrpc":"2.0","id":"a,]","result":[1,2]}]"#;
        assert_eq!(
            String::from_utf8(vdsm_reply(one)).unwrap(),
            r#"{"jsonrpc": "2.0", "id": "a,]", "result": [1, 2]}"#
        );
        let two = br#"[{"id":1},{"id":2}]"#;
        assert_eq!(
            String::from_utf8(vdsm_reply(two)).unwrap(),
            r#"[{"id": 1}, {"id": 2}]"#
        );
        let bare = br#"{"id":1}"#;
        assert_eq!(String::from_utf8(vdsm_reply(bare)).unwrap(), r#"{"id": 1}"#);
        assert_eq!(vdsm_reply(b"[]"), b"[]");
    }

    #[test]
    fn the_result_is_the_same_json() {
        let value = serde_json::json!({"a": [1, 2, {"b": "c:d, \\\"e"}], "f": null});
        let styled = python_separators(value.to_string().as_bytes());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&styled).unwrap(),
            value
        );
    }
}
