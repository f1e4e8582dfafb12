//! The storage vocabulary shared by the API, volume metadata and volumes: formats, allocation,
//! volume roles, legality and disk content types, with VDSM's wire numbers and names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The "no parent" UUID in `PUUID` and `srcVolUUID`.
pub const BLANK_UUID: uuid::Uuid = uuid::Uuid::nil();

macro_rules! named_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// The name written in metadata and on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!("{other:?} is not a valid {}", stringify!($name))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

named_enum! {
    /// The data file's format (`FORMAT`).
    VolumeFormat { /// qcow2.
        Cow = "COW", /// raw.
        Raw = "RAW" }
}

named_enum! {
    /// How the data file is allocated (`TYPE`).
    Preallocation { /// Every byte allocated at creation.
        Preallocated = "PREALLOCATED", /// Allocated on write.
        Sparse = "SPARSE" }
}

named_enum! {
    /// The volume's place in its chain (`VOLTYPE`).
    VolumeRole { /// The active layer: nothing is based on it.
        Leaf = "LEAF", /// Has children.
        Internal = "INTERNAL", /// A template shared by images.
        Shared = "SHARED" }
}

named_enum! {
    /// Whether the volume may be used (`LEGALITY`).
    Legality { /// Complete and usable.
        Legal = "LEGAL", /// Incomplete or being changed: not usable.
        Illegal = "ILLEGAL", /// A placeholder.
        Fake = "FAKE" }
}

impl VolumeFormat {
    /// VDSM's wire number (4 = COW, 5 = RAW).
    pub fn code(self) -> u8 {
        match self {
            Self::Cow => 4,
            Self::Raw => 5,
        }
    }

    /// qemu-img's name for the format.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Self::Cow => "qcow2",
            Self::Raw => "raw",
        }
    }
}

impl Preallocation {
    /// VDSM's wire number (1 = PREALLOCATED, 2 = SPARSE).
    pub fn code(self) -> u8 {
        match self {
            Self::Preallocated => 1,
            Self::Sparse => 2,
        }
    }
}

/// Accepts VDSM's number or the name: managers send ints, the schema shows names.
fn from_code_or_name<'de, D, T>(d: D, by_code: fn(i64) -> Option<T>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => {
            by_code(n).ok_or_else(|| serde::de::Error::custom(format!("{n} is out of range")))
        }
        Raw::Text(text) => match text.parse::<i64>() {
            Ok(n) => {
                by_code(n).ok_or_else(|| serde::de::Error::custom(format!("{n} is out of range")))
            }
            Err(_) => text.parse().map_err(serde::de::Error::custom),
        },
    }
}

impl<'de> Deserialize<'de> for VolumeFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_code_or_name(d, |n| match n {
            4 => Some(Self::Cow),
            5 => Some(Self::Raw),
            _ => None,
        })
    }
}

impl<'de> Deserialize<'de> for Preallocation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        from_code_or_name(d, |n| match n {
            1 => Some(Self::Preallocated),
            2 => Some(Self::Sparse),
            _ => None,
        })
    }
}

/// The disk content types VDSM accepts (`DISKTYPE`), legacy numbers included.
pub const DISK_TYPES: &[&str] = &[
    "DATA", "OVFS", "MEMD", "MEMM", "ISOF", "HEVD", "HESD", "HEMD", "HECI", "SCRD", "1", "2",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_accept_codes_and_names() {
        let f: VolumeFormat = serde_json::from_str("4").unwrap();
        assert_eq!(f, VolumeFormat::Cow);
        let f: VolumeFormat = serde_json::from_str("\"RAW\"").unwrap();
        assert_eq!(f, VolumeFormat::Raw);
        let f: VolumeFormat = serde_json::from_str("\"5\"").unwrap();
        assert_eq!(f, VolumeFormat::Raw);
        assert!(serde_json::from_str::<VolumeFormat>("3").is_err());
        assert!(serde_json::from_str::<VolumeFormat>("\"qcow2\"").is_err());
        let p: Preallocation = serde_json::from_str("2").unwrap();
        assert_eq!(p, Preallocation::Sparse);
        assert!(serde_json::from_str::<Preallocation>("0").is_err());
    }

    #[test]
    fn names_round_trip() {
        for role in [VolumeRole::Leaf, VolumeRole::Internal, VolumeRole::Shared] {
            assert_eq!(role.as_str().parse::<VolumeRole>().unwrap(), role);
        }
        assert!("leaf".parse::<VolumeRole>().is_err());
    }
}
