//! A bound on the nesting of a definition before any XML parser sees it: roxmltree descends
//! one stack frame per level with no limit of its own, so a manager's document of a few
//! thousand nested elements overflowed rvdsmd's stack and killed the daemon. libvirt's own
//! schema nests a dozen levels; libxml2 stops at 256.

/// The deepest nesting accepted.
pub const MAX_DEPTH: usize = 256;

/// Whether `xml` nests its elements at most [`MAX_DEPTH`] deep. A cheap scan of the markup:
/// comments, CDATA sections, processing instructions and declarations are skipped, a `>`
/// inside a quoted attribute value does not end its tag, and `/>` closes what it opens. It
/// does not validate: the parser does that afterwards, on a document known to be shallow.
pub fn within_depth(xml: &str) -> bool {
    let bytes = xml.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'<') {
        i += offset;
        let rest = &bytes[i..];
        let skip_to = |end: &[u8]| find(rest, end).map_or(bytes.len(), |at| i + at + end.len());
        if rest.starts_with(b"<!--") {
            i = skip_to(b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_to(b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_to(b"?>");
        } else if rest.starts_with(b"<!") {
            i = skip_to(b">");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_to(b">");
        } else {
            let (end, self_closing) = tag_end(rest);
            if !self_closing {
                depth += 1;
                if depth > MAX_DEPTH {
                    return false;
                }
            }
            i += end;
        }
    }
    true
}

/// The length of the start tag at the beginning of `rest` (through its `>`, quotes
/// respected), and whether it closes itself.
fn tag_end(rest: &[u8]) -> (usize, bool) {
    let mut quote = None;
    for (at, &b) in rest.iter().enumerate() {
        match (quote, b) {
            (None, b'"' | b'\'') => quote = Some(b),
            (Some(q), _) if b == q => quote = None,
            (None, b'>') => return (at + 1, at > 0 && rest[at - 1] == b'/'),
            _ => {}
        }
    }
    (rest.len(), false)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}{}", "<a x='>'>".repeat(levels), "</a>".repeat(levels))
    }

    #[test]
    fn shallow_documents_pass_and_deep_ones_do_not() {
        assert!(within_depth(&nested(MAX_DEPTH)));
        assert!(!within_depth(&nested(MAX_DEPTH + 1)));
        assert!(!within_depth(&nested(40_000)));
    }

    #[test]
    fn markup_that_opens_nothing_is_not_counted() {
        let flat = "<a/><!-- <b><b><b> --><![CDATA[<c><c>]]><?pi <d>?><e attr='<x>'/>"
            .repeat(MAX_DEPTH + 10);
        assert!(within_depth(&format!("<root>{flat}</root>")));
        let siblings = "<b></b>".repeat(10 * MAX_DEPTH);
        assert!(within_depth(&format!("<root>{siblings}</root>")));
    }
}
