//! The volume metadata file (`<vol>.meta`, VDSM-REFERENCE §4.2): `KEY=value` lines sorted by
//! key, then `EOF`, at most 512 bytes. Parsing is tolerant as VDSM's is (stops at `EOF`, skips
//! lines without `=`, strips values, reads legacy `SIZE` in 512-byte blocks when `CAP` is
//! absent, ignores `MTIME`); writing produces exactly VDSM's v5 form.

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::api::volume_types::{Legality, Preallocation, VolumeFormat, VolumeRole};

/// The most bytes a `.meta` file may hold.
pub const METADATA_SIZE: usize = 512;
/// Descriptions are cut to this many bytes (on a character boundary), as VDSM does.
pub const DESCRIPTION_SIZE: usize = 210;

/// Why a `.meta` text cannot be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// A required key is absent.
    #[error("metadata has no {0}")]
    Missing(&'static str),
    /// A key has a value out of its range.
    #[error("metadata key {key} has invalid value {value:?}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// The value found.
        value: String,
    },
    /// The `NONE` key: the metadata was cleared.
    #[error("metadata was cleared")]
    Cleared,
    /// The text would exceed 512 bytes.
    #[error("metadata of {size} bytes exceeds {METADATA_SIZE} bytes")]
    Overflow {
        /// Its size.
        size: usize,
    },
}

/// A volume's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMeta {
    /// Capacity in bytes (`CAP`).
    pub capacity: u64,
    /// Creation time, epoch seconds (`CTIME`).
    pub ctime: u64,
    /// Free text, at most 210 bytes (`DESCRIPTION`).
    pub description: String,
    /// Content type (`DISKTYPE`).
    pub disk_type: String,
    /// The storage domain (`DOMAIN`).
    pub domain: Uuid,
    /// Data format (`FORMAT`).
    pub format: VolumeFormat,
    /// Generation 0..999 (`GEN`).
    pub generation: u32,
    /// The image (`IMAGE`).
    pub image: Uuid,
    /// Usability (`LEGALITY`).
    pub legality: Legality,
    /// The parent volume, or the nil UUID (`PUUID`).
    pub parent: Uuid,
    /// Sequence number (`SEQ`).
    pub sequence: u32,
    /// Allocation (`TYPE`).
    pub allocation: Preallocation,
    /// Place in the chain (`VOLTYPE`).
    pub role: VolumeRole,
}

impl VolumeMeta {
    /// Parses the text of a `.meta` file.
    pub fn parse(text: &str) -> Result<Self, MetaError> {
        let mut keys = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line == "EOF" {
                break;
            }
            if let Some((key, value)) = line.split_once('=') {
                keys.insert(key.trim().to_owned(), value.trim().to_owned());
            }
        }
        if keys.contains_key("NONE") {
            return Err(MetaError::Cleared);
        }
        let capacity = match keys.get("CAP") {
            Some(_) => number(&keys, "CAP")?,
            None => number(&keys, "SIZE")?
                .checked_mul(512)
                .ok_or(MetaError::Invalid {
                    key: "SIZE",
                    value: keys["SIZE"].clone(),
                })?,
        };
        Ok(Self {
            capacity,
            ctime: optional_number(&keys, "CTIME")?.unwrap_or(0),
            description: keys.get("DESCRIPTION").cloned().unwrap_or_default(),
            disk_type: keys
                .get("DISKTYPE")
                .cloned()
                .unwrap_or_else(|| "DATA".into()),
            domain: uuid_key(&keys, "DOMAIN")?,
            format: parsed(&keys, "FORMAT")?,
            generation: u32::try_from(optional_number(&keys, "GEN")?.unwrap_or(0)).map_err(
                |_| MetaError::Invalid {
                    key: "GEN",
                    value: keys["GEN"].clone(),
                },
            )?,
            image: uuid_key(&keys, "IMAGE")?,
            legality: parsed(&keys, "LEGALITY")?,
            parent: uuid_key(&keys, "PUUID")?,
            sequence: u32::try_from(optional_number(&keys, "SEQ")?.unwrap_or(0)).map_err(|_| {
                MetaError::Invalid {
                    key: "SEQ",
                    value: keys["SEQ"].clone(),
                }
            })?,
            allocation: parsed(&keys, "TYPE")?,
            role: parsed(&keys, "VOLTYPE")?,
        })
    }

    /// The text of the `.meta` file: sorted keys, `EOF`, at most 512 bytes.
    pub fn to_text(&self) -> Result<String, MetaError> {
        let description = truncate(&self.description, DESCRIPTION_SIZE);
        let mut lines: Vec<(&str, String)> = vec![
            ("CAP", self.capacity.to_string()),
            ("CTIME", self.ctime.to_string()),
            ("DESCRIPTION", description.replace(['\n', '\r'], " ")),
            ("DISKTYPE", self.disk_type.clone()),
            ("DOMAIN", self.domain.hyphenated().to_string()),
            ("FORMAT", self.format.to_string()),
            ("GEN", self.generation.to_string()),
            ("IMAGE", self.image.hyphenated().to_string()),
            ("LEGALITY", self.legality.to_string()),
            ("PUUID", self.parent.hyphenated().to_string()),
            ("SEQ", self.sequence.to_string()),
            ("TYPE", self.allocation.to_string()),
            ("VOLTYPE", self.role.to_string()),
        ];
        lines.sort_by(|a, b| a.0.cmp(b.0));
        let mut text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        text.push_str("EOF\n");
        if text.len() > METADATA_SIZE {
            return Err(MetaError::Overflow { size: text.len() });
        }
        Ok(text)
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn value<'a>(keys: &'a BTreeMap<String, String>, key: &'static str) -> Result<&'a str, MetaError> {
    keys.get(key)
        .map(String::as_str)
        .ok_or(MetaError::Missing(key))
}

fn number(keys: &BTreeMap<String, String>, key: &'static str) -> Result<u64, MetaError> {
    let text = value(keys, key)?;
    text.parse().map_err(|_| MetaError::Invalid {
        key,
        value: text.to_owned(),
    })
}

fn optional_number(
    keys: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<Option<u64>, MetaError> {
    match keys.get(key) {
        None => Ok(None),
        Some(_) => number(keys, key).map(Some),
    }
}

fn uuid_key(keys: &BTreeMap<String, String>, key: &'static str) -> Result<Uuid, MetaError> {
    let text = value(keys, key)?;
    Uuid::parse_str(text).map_err(|_| MetaError::Invalid {
        key,
        value: text.to_owned(),
    })
}

fn parsed<T: std::str::FromStr>(
    keys: &BTreeMap<String, String>,
    key: &'static str,
) -> Result<T, MetaError> {
    let text = value(keys, key)?;
    text.parse().map_err(|_| MetaError::Invalid {
        key,
        value: text.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "CAP=10737418240\nCTIME=1700000000\nDESCRIPTION=\nDISKTYPE=DATA\n\
        DOMAIN=22222222-2222-2222-2222-222222222222\nFORMAT=COW\nGEN=0\n\
        IMAGE=33333333-3333-3333-3333-333333333333\nLEGALITY=LEGAL\n\
        PUUID=44444444-4444-4444-4444-444444444444\nSEQ=0\nTYPE=SPARSE\nVOLTYPE=LEAF\nEOF\n";

    #[test]
    fn vdsm_example_round_trips_byte_for_byte() {
        let meta = VolumeMeta::parse(EXAMPLE).unwrap();
        assert_eq!(meta.capacity, 10_737_418_240);
        assert_eq!(meta.format, VolumeFormat::Cow);
        assert_eq!(meta.role, VolumeRole::Leaf);
        assert_eq!(meta.to_text().unwrap(), EXAMPLE);
    }

    #[test]
    fn legacy_keys_are_tolerated() {
        let legacy = EXAMPLE
            .replace("CAP=10737418240\n", "SIZE=20971520\nMTIME=0\n")
            .replace("GEN=0\n", "")
            .replace("SEQ=0\n", "")
            + "garbage after EOF=1\n";
        let meta = VolumeMeta::parse(&format!("junk line\n{legacy}")).unwrap();
        assert_eq!(meta.capacity, 20_971_520 * 512);
        assert_eq!((meta.generation, meta.sequence), (0, 0));
    }

    #[test]
    fn bad_metadata_is_refused() {
        assert_eq!(
            VolumeMeta::parse(&EXAMPLE.replace("FORMAT=COW\n", "")),
            Err(MetaError::Missing("FORMAT"))
        );
        assert!(matches!(
            VolumeMeta::parse(&EXAMPLE.replace("LEGAL\n", "MAYBE\n")),
            Err(MetaError::Invalid {
                key: "LEGALITY",
                ..
            })
        ));
        assert!(matches!(
            VolumeMeta::parse(&EXAMPLE.replace("PUUID=4444", "PUUID=../4")),
            Err(MetaError::Invalid { key: "PUUID", .. })
        ));
        assert_eq!(
            VolumeMeta::parse("NONE=####\nEOF\n"),
            Err(MetaError::Cleared)
        );
    }

    #[test]
    fn description_is_capped_and_kept_on_one_line() {
        let mut meta = VolumeMeta::parse(EXAMPLE).unwrap();
        meta.description = "é".repeat(300) + "\nINJECTED=1";
        let text = meta.to_text().unwrap();
        assert!(text.len() <= METADATA_SIZE);
        let back = VolumeMeta::parse(&text).unwrap();
        assert!(back.description.len() <= DESCRIPTION_SIZE);
        assert!(back.description.chars().all(|c| c == 'é'));
        assert!(!text.contains("\nINJECTED"));
    }

    fn arbitrary_meta() -> impl Strategy<Value = VolumeMeta> {
        (
            any::<u64>(),
            any::<u64>(),
            "[^\r\n]{0,300}",
            any::<u128>(),
            any::<u128>(),
            any::<u128>(),
            (0u32..1000, any::<u32>()),
            (any::<bool>(), any::<bool>(), 0usize..3, 0usize..3),
        )
            .prop_map(
                |(capacity, ctime, description, d, i, p, (generation, sequence), flags)| {
                    VolumeMeta {
                        capacity,
                        ctime,
                        description,
                        disk_type: "DATA".into(),
                        domain: Uuid::from_u128(d),
                        format: if flags.0 {
                            VolumeFormat::Cow
                        } else {
                            VolumeFormat::Raw
                        },
                        generation,
                        image: Uuid::from_u128(i),
                        legality: [Legality::Legal, Legality::Illegal, Legality::Fake][flags.2],
                        parent: Uuid::from_u128(p),
                        sequence,
                        allocation: if flags.1 {
                            Preallocation::Sparse
                        } else {
                            Preallocation::Preallocated
                        },
                        role: [VolumeRole::Leaf, VolumeRole::Internal, VolumeRole::Shared][flags.3],
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn any_metadata_round_trips_within_512_bytes(meta in arbitrary_meta()) {
            let text = meta.to_text().unwrap();
            prop_assert!(text.len() <= METADATA_SIZE);
            let back = VolumeMeta::parse(&text).unwrap();
            let mut expected = meta.clone();
            expected.description = truncate(&meta.description, DESCRIPTION_SIZE).trim().to_owned();
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn parsing_never_panics(text in "\\PC{0,600}") {
            let _ = VolumeMeta::parse(&text);
        }
    }
}
