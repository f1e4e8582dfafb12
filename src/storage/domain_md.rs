//! The storage domain metadata file (`dom_md/metadata`, VDSM-REFERENCE §4.1): `KEY=value`
//! lines sorted by key and a closing `_SHA_CKSUM=<sha1>` line, where the checksum is the SHA-1
//! of the `KEY=value` lines (without their newlines), as VDSM's `persistent.py` computes it.

use std::collections::BTreeMap;

use sha1::{Digest, Sha1};

const CHECKSUM_KEY: &str = "_SHA_CKSUM";

/// Why a domain metadata text cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainMetaError {
    /// No checksum line.
    #[error("domain metadata has no checksum")]
    NoChecksum,
    /// The checksum does not match the content.
    #[error("domain metadata checksum mismatch: recorded {recorded}, computed {computed}")]
    Checksum {
        /// The checksum in the file.
        recorded: String,
        /// The checksum of the content.
        computed: String,
    },
    /// A line is not `KEY=value`.
    #[error("domain metadata line {0:?} is not KEY=value")]
    Line(String),
}

/// Parses a domain metadata text, verifying its checksum.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, DomainMetaError> {
    let mut keys = BTreeMap::new();
    let mut hasher = Sha1::new();
    let mut recorded = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| DomainMetaError::Line(line.to_owned()))?;
        if key == CHECKSUM_KEY {
            recorded = Some(value.trim().to_owned());
            continue;
        }
        hasher.update(line.as_bytes());
        keys.insert(key.to_owned(), value.to_owned());
    }
    let recorded = recorded.ok_or(DomainMetaError::NoChecksum)?;
    let computed = hex(&hasher.finalize());
    if recorded != computed {
        return Err(DomainMetaError::Checksum { recorded, computed });
    }
    Ok(keys)
}

/// The text of a domain metadata file for `keys`, with its checksum line.
pub fn format(keys: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha1::new();
    let mut text = String::new();
    for (key, value) in keys {
        let line = format!("{key}={value}");
        hasher.update(line.as_bytes());
        text.push_str(&line);
        text.push('\n');
    }
    text.push_str(&format!("{CHECKSUM_KEY}={}\n", hex(&hasher.finalize())));
    text
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> BTreeMap<String, String> {
        [
            ("CLASS", "Data"),
            ("SDUUID", "22222222-2222-2222-2222-222222222222"),
            ("VERSION", "5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn round_trips_with_checksum_of_the_lines() {
        let text = format(&sample());
        let expected = hex(&Sha1::digest(
            "CLASS=DataSDUUID=22222222-2222-2222-2222-222222222222VERSION=5".as_bytes(),
        ));
        assert!(
            text.ends_with(&format!("_SHA_CKSUM={expected}\n")),
            "{text}"
        );
        assert_eq!(parse(&text).unwrap(), sample());
    }

    #[test]
    fn tampering_is_detected() {
        let text = format(&sample()).replace("VERSION=5", "VERSION=4");
        assert!(matches!(
            parse(&text),
            Err(DomainMetaError::Checksum { .. })
        ));
        assert_eq!(parse("CLASS=Data\n"), Err(DomainMetaError::NoChecksum));
        assert!(matches!(parse("garbage\n"), Err(DomainMetaError::Line(_))));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn any_keys_round_trip(keys in prop::collection::btree_map("[A-Z_]{1,12}", "[^\r\n]{0,40}", 0..10)) {
            let keys: BTreeMap<String, String> = keys.into_iter()
                .filter(|(k, _)| k != CHECKSUM_KEY)
                .map(|(k, v)| (k, v.trim().to_owned()))
                .collect();
            prop_assert_eq!(parse(&format(&keys)).unwrap(), keys);
        }
    }
}
