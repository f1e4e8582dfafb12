//! The configuration volume of a memory snapshot or a hibernation: what restoring the saved
//! RAM needs (the domain's definition at the instant of the dump, which volumes it matches,
//! how long the VM had run), in a format of rvdsm's own, versioned, checksummed so that a torn
//! or foreign write is refused rather than restored (docs/memory-state.md).
//!
//! The volume lives in a storage domain other hosts share: nothing read from it is trusted
//! beyond its form; the caller checks the definition as it checks a manager's.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::api::snapshot_types::MemoryMode;

/// The first bytes of every configuration rvdsm writes.
pub const MAGIC: &str = "rvdsm-memory-state";
/// The format version this build writes, and the newest it reads.
pub const VERSION: u32 = 1;
/// The most a configuration's payload may take (the domain XML is a few KiB; this bounds a
/// read).
pub const MAX_LEN: usize = 4 << 20;
/// The longest header line, its newline included: the magic, a version, a length and a
/// SHA-256 in hex take at most 116 bytes.
pub const MAX_HEADER_LEN: usize = 128;
/// What [`encode`] pads its output to a multiple of, with zeros: a RAW volume is written and
/// converted in whole blocks.
pub const PAD_TO: usize = 4096;
/// The most of a volume a reader needs to hand [`decode`]: a longest header, a longest
/// payload and the newline after it.
pub const MAX_READ: usize = MAX_HEADER_LEN + MAX_LEN + 1;
/// The magic and the space after it: how every header line begins.
const HEADER_START: &str = "rvdsm-memory-state ";
/// How many bytes of the volume's start tell whether anything was written.
const WRITTEN_WITHIN: usize = 4096;

/// Why the saved RAM exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SavedFor {
    /// `VM.snapshot` with `snapMemory`: the VM went on running on new volumes.
    Snapshot,
    /// `VM.hibernate`: the VM stopped.
    Hibernation,
}

/// A volume, by its domain, image and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedVolume {
    /// The storage domain.
    pub domain_id: Uuid,
    /// The image.
    pub image_id: Uuid,
    /// The volume.
    pub volume_id: Uuid,
}

/// A disk of the VM and the volume its data was on at the instant of the dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedDisk {
    /// The guest device (`vda`).
    pub target: String,
    /// The volume.
    #[serde(flatten)]
    pub volume: SavedVolume,
}

/// What a configuration volume holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryState {
    /// The VM.
    pub vm_id: Uuid,
    /// Snapshot or hibernation.
    pub saved_for: SavedFor,
    /// How the RAM was saved.
    pub mode: MemoryMode,
    /// Epoch seconds of the save.
    pub saved_at: u64,
    /// Seconds the VM had run when saved (VDSM's `elapsedTimeOffset`).
    pub elapsed_time_offset: f64,
    /// The domain's migratable definition at the save, with rvdsm's drive metadata.
    pub domain_xml: String,
    /// Each managed disk and the volume it was on.
    pub disks: Vec<SavedDisk>,
    /// The dump this configuration belongs to.
    pub dump: SavedVolume,
}

/// A configuration that cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum MemoryStateError {
    /// Zeros: the volume was never written (a save that did not get that far).
    #[error("the configuration volume is empty (never written: the save did not complete)")]
    Empty,
    /// VDSM's configuration: a Python pickle.
    #[error(
        "the configuration volume is in VDSM's format (a Python pickle), which rvdsm does not \
         read; a VM saved by VDSM is restored by VDSM"
    )]
    Pickle,
    /// Not rvdsm's format.
    #[error("the configuration volume is not in rvdsm's format ({0})")]
    Foreign(String),
    /// No end of the header line where one must be.
    #[error(
        "the configuration's header line is longer than {MAX_HEADER_LEN} bytes: not one rvdsm \
         wrote"
    )]
    HeaderTooLong,
    /// The header line is rvdsm's, but not in the form this version writes.
    #[error("the configuration's header line is malformed: {0}")]
    Header(String),
    /// A newer rvdsm wrote it.
    #[error(
        "the configuration was written in format version {0}; this rvdsm reads up to {VERSION}"
    )]
    Version(u32),
    /// The header claims more than a configuration may take.
    #[error("the configuration's header claims {0} bytes of payload; at most {MAX_LEN} are read")]
    TooLong(u64),
    /// Cut short, or changed since written.
    #[error("the configuration is torn or altered: {0}")]
    Torn(String),
    /// The payload is not the one the header's checksum was computed over.
    #[error("the configuration's SHA-256 does not match its header: a torn or altered write")]
    Checksum,
    /// Checksummed, but not the members this version has.
    #[error("the configuration's payload is not one this rvdsm reads")]
    Payload(#[source] serde_json::Error),
}

/// The bytes to write at the start of the configuration volume: the header line, the JSON
/// payload and a newline, padded with zeros to a multiple of [`PAD_TO`] (docs/memory-state.md).
///
/// A state whose payload is over [`MAX_LEN`] or holds a non-finite number encodes to bytes
/// [`decode`] refuses; [`try_encode`] says so before anything is written.
pub fn encode(state: &MemoryState) -> Vec<u8> {
    let payload = serde_json::to_vec(state).expect("a MemoryState serializes");
    let mut out = format!(
        "{MAGIC} {VERSION} {} {}\n",
        payload.len(),
        Hex(&Sha256::digest(&payload).into())
    )
    .into_bytes();
    out.extend_from_slice(&payload);
    out.push(b'\n');
    out.resize(out.len().next_multiple_of(PAD_TO), 0);
    out
}

/// [`encode`], refused when [`decode`] would not give the state back: what a writer calls so
/// that a save never leaves a configuration no restore can read.
pub fn try_encode(state: &MemoryState) -> Result<Vec<u8>, MemoryStateError> {
    let bytes = encode(state);
    decode(&bytes)?;
    Ok(bytes)
}

/// Reads a configuration from the start of its volume (at most [`MAX_READ`] bytes are looked
/// at; what follows the payload's newline is not).
///
/// Refuses, each with its own error, anything but a whole configuration of a version it
/// knows; never panics, and allocates nothing a header claims: only the payload's own values,
/// after its checksum matched, and a short message.
pub fn decode(bytes: &[u8]) -> Result<MemoryState, MemoryStateError> {
    refuse_unwritten_or_foreign(bytes)?;
    let newline = header_end(bytes)?;
    let header = header_text(&bytes[..newline])?;
    let (length, checksum) = header_fields(header)?;
    let payload = payload(bytes, newline + 1, length)?;
    if Sha256::digest(payload)[..] != checksum[..] {
        return Err(MemoryStateError::Checksum);
    }
    serde_json::from_slice(payload).map_err(MemoryStateError::Payload)
}

/// Zeros, VDSM's pickle, or anything that does not begin with rvdsm's magic.
fn refuse_unwritten_or_foreign(bytes: &[u8]) -> Result<(), MemoryStateError> {
    let start = &bytes[..bytes.len().min(WRITTEN_WITHIN)];
    if start.iter().all(|b| *b == 0) {
        return Err(MemoryStateError::Empty);
    }
    // Every pickle from protocol 2 on opens with PROTO (0x80) and its protocol number; VDSM
    // writes protocol 2.
    if let [0x80, 2..=5, ..] = bytes {
        return Err(MemoryStateError::Pickle);
    }
    if bytes.starts_with(HEADER_START.as_bytes()) {
        return Ok(());
    }
    if HEADER_START.as_bytes().starts_with(bytes) {
        return Err(MemoryStateError::Torn("cut short within its header".into()));
    }
    let shown = &bytes[..bytes.len().min(16)];
    Err(MemoryStateError::Foreign(format!(
        "it begins with b\"{}\"",
        shown.escape_ascii()
    )))
}

/// Where the header line's newline is.
fn header_end(bytes: &[u8]) -> Result<usize, MemoryStateError> {
    let window = &bytes[..bytes.len().min(MAX_HEADER_LEN)];
    match window.iter().position(|b| *b == b'\n') {
        Some(newline) => Ok(newline),
        None if bytes.len() < MAX_HEADER_LEN => {
            Err(MemoryStateError::Torn("cut short within its header".into()))
        }
        None => Err(MemoryStateError::HeaderTooLong),
    }
}

/// The header line as text: printable ASCII and spaces only.
fn header_text(line: &[u8]) -> Result<&str, MemoryStateError> {
    if !line.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Err(MemoryStateError::Header(
            "it holds a byte that is not printable ASCII".into(),
        ));
    }
    std::str::from_utf8(line).map_err(|_| MemoryStateError::Header("it is not text".into()))
}

/// The payload's length and SHA-256 from a header line, once its version is one this build
/// reads. The version comes first: what follows it is that version's.
fn header_fields(header: &str) -> Result<(u64, [u8; 32]), MemoryStateError> {
    let rest = header
        .strip_prefix(MAGIC)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| MemoryStateError::Header("no magic".into()))?;
    let (version, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let version = decimal(version, 9)
        .ok_or_else(|| MemoryStateError::Header(format!("no version number ({version:.12})")))?;
    let version = u32::try_from(version).expect("nine digits fit in a u32");
    if version == 0 {
        return Err(MemoryStateError::Header(
            "format version 0 does not exist".into(),
        ));
    }
    if version > VERSION {
        return Err(MemoryStateError::Version(version));
    }
    let mut fields = rest.split(' ');
    let (Some(length), Some(checksum), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(MemoryStateError::Header(
            "not `<magic> <version> <length> <sha256>`".into(),
        ));
    };
    let length = decimal(length, 20)
        .ok_or_else(|| MemoryStateError::Header(format!("no length ({length:.24})")))?;
    if length > MAX_LEN as u64 {
        return Err(MemoryStateError::TooLong(length));
    }
    let checksum = sha256_hex(checksum).ok_or_else(|| {
        MemoryStateError::Header("the checksum is not 64 lowercase hex digits".into())
    })?;
    Ok((length, checksum))
}

/// The payload the header announces, and the newline after it.
fn payload(bytes: &[u8], start: usize, length: u64) -> Result<&[u8], MemoryStateError> {
    let length = usize::try_from(length).expect("at most MAX_LEN");
    let end = start + length;
    let payload = bytes.get(start..end).ok_or_else(|| {
        MemoryStateError::Torn(format!(
            "the header announces {length} bytes of payload; {} are there",
            bytes.len() - start
        ))
    })?;
    match bytes.get(end) {
        Some(b'\n') => Ok(payload),
        Some(_) => Err(MemoryStateError::Torn(
            "no newline where the payload ends".into(),
        )),
        None => Err(MemoryStateError::Torn(
            "cut short before the payload's newline".into(),
        )),
    }
}

/// A decimal number as rvdsm writes one: digits only, no sign, no leading zero, at most
/// `most` digits (so that it fits what it is read into).
fn decimal(text: &str, most: usize) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.len() <= most
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// A SHA-256 written as 64 lowercase hex digits.
fn sha256_hex(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(out)
}

fn hex_digit(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// Bytes shown as lowercase hex.
struct Hex<'a>(&'a [u8; 32]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn volume(n: u128) -> SavedVolume {
        SavedVolume {
            domain_id: Uuid::from_u128(0x1111_0000 + n),
            image_id: Uuid::from_u128(0x2222_0000 + n),
            volume_id: Uuid::from_u128(0x3333_0000 + n),
        }
    }

    /// A fixed state, small enough that its encoding is pinned below.
    fn sample() -> MemoryState {
        MemoryState {
            vm_id: Uuid::from_u128(0xabcd),
            saved_for: SavedFor::Snapshot,
            mode: MemoryMode::Paused,
            saved_at: 1_765_000_000,
            elapsed_time_offset: 12.5,
            domain_xml: "<domain type=\"kvm\"><name>vm</name></domain>".into(),
            disks: vec![SavedDisk {
                target: "vda".into(),
                volume: volume(1),
            }],
            dump: volume(2),
        }
    }

    /// The header line, payload and newline of `encode(&sample())`, without the padding.
    fn record() -> Vec<u8> {
        let bytes = encode(&sample());
        let end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
        bytes[..end].to_vec()
    }

    /// A header of this version over `payload`, with its right length and checksum.
    fn framed(version: u32, payload: &[u8]) -> Vec<u8> {
        let checksum = Hex(&Sha256::digest(payload).into()).to_string();
        let mut out = format!("{MAGIC} {version} {} {checksum}\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.push(b'\n');
        out
    }

    fn padded(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.resize(bytes.len().next_multiple_of(PAD_TO), 0);
        bytes
    }

    fn message(bytes: &[u8]) -> String {
        decode(bytes).unwrap_err().to_string()
    }

    #[test]
    fn a_state_comes_back_as_it_was_written() {
        let state = MemoryState {
            saved_for: SavedFor::Hibernation,
            mode: MemoryMode::Live,
            disks: vec![
                SavedDisk {
                    target: "vda".into(),
                    volume: volume(1),
                },
                SavedDisk {
                    target: "sdb".into(),
                    volume: volume(3),
                },
            ],
            domain_xml: "<domain>\n  <name>é \"x\" \\ </name>\n</domain>\n".into(),
            ..sample()
        };
        let bytes = encode(&state);
        assert_eq!(bytes.len() % PAD_TO, 0);
        assert_eq!(decode(&bytes).unwrap(), state);
        assert_eq!(try_encode(&state).unwrap(), bytes);
    }

    #[test]
    fn version_1_is_these_bytes() {
        let expected: &[u8] = b"rvdsm-memory-state 1 525 \
            9594e4b4f6d434423ad6869c28dafbc9a541ff0baa0e959e6cbf3a5de98b6abc\n\
            {\"vmId\":\"00000000-0000-0000-0000-00000000abcd\",\"savedFor\":\"snapshot\",\
            \"mode\":\"paused\",\"savedAt\":1765000000,\"elapsedTimeOffset\":12.5,\
            \"domainXml\":\"<domain type=\\\"kvm\\\"><name>vm</name></domain>\",\
            \"disks\":[{\"target\":\"vda\",\"domainId\":\"00000000-0000-0000-0000-000011110001\",\
            \"imageId\":\"00000000-0000-0000-0000-000022220001\",\
            \"volumeId\":\"00000000-0000-0000-0000-000033330001\"}],\
            \"dump\":{\"domainId\":\"00000000-0000-0000-0000-000011110002\",\
            \"imageId\":\"00000000-0000-0000-0000-000022220002\",\
            \"volumeId\":\"00000000-0000-0000-0000-000033330002\"}}\n";
        let bytes = encode(&sample());
        assert_eq!(
            String::from_utf8_lossy(&bytes[..expected.len().min(bytes.len())]),
            String::from_utf8_lossy(expected)
        );
        assert_eq!(bytes, padded(expected.to_vec()));
    }

    #[test]
    fn the_header_starts_with_the_magic() {
        assert_eq!(HEADER_START, format!("{MAGIC} "));
    }

    #[test]
    fn a_never_written_volume_is_empty() {
        for bytes in [vec![], vec![0; 1], vec![0; PAD_TO], vec![0; 1 << 20]] {
            assert!(matches!(decode(&bytes), Err(MemoryStateError::Empty)));
        }
        assert!(message(&[0; 512]).contains("never written"));
    }

    /// What VDSM writes: `pickle.dumps({restoreFromSnapshot, _srcDomXML, elapsedTimeOffset},
    /// protocol=2)` padded with zeros to 4096 bytes (`lib/vdsm/virt/jobs/snapshot.py`).
    const VDSM_CONF: &[u8] = b"\x80\x02}q\x00(X\x13\x00\x00\x00restoreFromSnapshotq\x01\x88X\
        \x0a\x00\x00\x00_srcDomXMLq\x02X\x09\x00\x00\x00<domain/>q\x03X\x11\x00\x00\x00\
        elapsedTimeOffsetq\x04G?\xf8\x00\x00\x00\x00\x00\x00u.";

    #[test]
    fn vdsms_pickle_is_named_as_such() {
        assert!(matches!(
            decode(&padded(VDSM_CONF.to_vec())),
            Err(MemoryStateError::Pickle)
        ));
        for protocol in 2..=5 {
            let bytes = [0x80, protocol, b'}', b'q', 0];
            assert!(matches!(decode(&bytes), Err(MemoryStateError::Pickle)));
        }
        assert!(
            message(VDSM_CONF)
                .contains("in VDSM's format (a Python pickle), which rvdsm does not read")
        );
    }

    #[test]
    fn other_bytes_are_foreign() {
        let qcow2 = b"QFI\xfb\x00\x00\x00\x03".to_vec();
        let bare_json = serde_json::to_vec(&sample()).unwrap();
        let old_pickle = b"(dp0\nVa\np1\n".to_vec();
        let other_magic = b"rvdsm-memory-stat 1 2 x\n{}\n".to_vec();
        for bytes in [qcow2, bare_json, old_pickle, other_magic, vec![0x80, 0x06]] {
            assert!(
                matches!(
                    decode(&padded(bytes.clone())),
                    Err(MemoryStateError::Foreign(_))
                ),
                "{:?}",
                bytes.escape_ascii().to_string()
            );
        }
        assert_eq!(
            message(b"QFI\xfb\x00\x00\x00\x03"),
            "the configuration volume is not in rvdsm's format \
             (it begins with b\"QFI\\xfb\\x00\\x00\\x00\\x03\")"
        );
    }

    #[test]
    fn a_newer_version_is_refused_whatever_follows_it() {
        let payload = serde_json::to_vec(&sample()).unwrap();
        assert!(matches!(
            decode(&framed(2, &payload)),
            Err(MemoryStateError::Version(2))
        ));
        let other_layout = format!("{MAGIC} 7 zstd 12 34\n").into_bytes();
        assert!(matches!(
            decode(&padded(other_layout)),
            Err(MemoryStateError::Version(7))
        ));
        assert_eq!(
            message(&framed(999_999_999, &payload)),
            "the configuration was written in format version 999999999; this rvdsm reads up to 1"
        );
    }

    #[test]
    fn version_0_does_not_exist() {
        let payload = serde_json::to_vec(&sample()).unwrap();
        let error = decode(&framed(0, &payload)).unwrap_err();
        assert!(matches!(error, MemoryStateError::Header(_)), "{error}");
        assert!(
            error.to_string().contains("version 0 does not exist"),
            "{error}"
        );
    }

    #[test]
    fn a_length_over_the_bound_is_refused_before_anything_is_read() {
        for length in [MAX_LEN as u64 + 1, u64::MAX] {
            let header = format!("{MAGIC} 1 {length} {}\n", "0".repeat(64));
            let error = decode(header.as_bytes()).unwrap_err();
            assert!(
                matches!(error, MemoryStateError::TooLong(l) if l == length),
                "{error}"
            );
        }
    }

    #[test]
    fn a_length_past_the_end_is_torn() {
        let record = record();
        let error = decode(&record[..record.len() - 2]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the configuration is torn or altered: the header announces 525 bytes of payload; \
             524 are there"
        );
        // A torn write on a volume: the record's end is zeros.
        let mut torn = record.clone();
        torn.truncate(record.len() - 100);
        let error = decode(&padded(torn)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the configuration is torn or altered: no newline where the payload ends"
        );
        let error = decode(&record[..record.len() - 1]).unwrap_err();
        assert!(matches!(error, MemoryStateError::Torn(_)), "{error}");
    }

    #[test]
    fn an_altered_payload_fails_its_checksum() {
        let altered: Vec<u8> = String::from_utf8(encode(&sample()))
            .unwrap()
            .replacen("\"vda\"", "\"vdb\"", 1)
            .into_bytes();
        let error = decode(&altered).unwrap_err();
        assert!(matches!(error, MemoryStateError::Checksum), "{error}");
        assert!(
            error.to_string().contains("torn or altered write"),
            "{error}"
        );
    }

    #[test]
    fn a_checksummed_payload_that_is_not_a_state_is_refused() {
        let mut missing = serde_json::to_value(sample()).unwrap();
        missing.as_object_mut().unwrap().remove("dump");
        let missing = serde_json::to_vec(&missing).unwrap();
        for payload in [&b"{\"vmId\": "[..], b"[]", b"null", &missing] {
            let error = decode(&framed(1, payload)).unwrap_err();
            assert!(matches!(error, MemoryStateError::Payload(_)), "{error}");
        }
        let error = decode(&framed(1, &missing)).unwrap_err();
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert!(source.contains("missing field `dump`"), "{source}");
    }

    #[test]
    fn a_header_without_its_end_within_the_bound_is_too_long() {
        let long = format!("{MAGIC} 1 {}\n{{}}\n", "1".repeat(MAX_HEADER_LEN));
        assert!(matches!(
            decode(long.as_bytes()),
            Err(MemoryStateError::HeaderTooLong)
        ));
        let zeros_after_magic = padded(format!("{MAGIC} 1 ").into_bytes());
        assert!(matches!(
            decode(&zeros_after_magic),
            Err(MemoryStateError::HeaderTooLong)
        ));
    }

    #[test]
    fn a_header_not_as_written_is_malformed() {
        let record = String::from_utf8(record()).unwrap();
        let (header, rest) = record.split_once('\n').unwrap();
        let checksum = header.rsplit(' ').next().unwrap();
        let malformed = [
            header.replacen(" 1 ", " +1 ", 1),
            header.replacen(" 1 ", " 01 ", 1),
            header.replacen(" 525 ", " 0525 ", 1),
            header.replacen(" 525 ", " 525  ", 1),
            header.replacen(" 525 ", "\t525 ", 1),
            header.replace(checksum, &checksum.to_uppercase()),
            header.replace(checksum, &checksum[1..]),
            format!("{header} extra"),
            // The first cut's header, without a checksum.
            format!("{MAGIC} 1 525"),
        ];
        for header in malformed {
            let bytes = format!("{header}\n{rest}").into_bytes();
            let error = decode(&bytes).unwrap_err();
            assert!(
                matches!(error, MemoryStateError::Header(_)),
                "{header:?}: {error}"
            );
        }
    }

    #[test]
    fn what_follows_the_record_is_not_read() {
        let mut bytes = encode(&sample());
        *bytes.last_mut().unwrap() = 0xff;
        assert_eq!(decode(&bytes).unwrap(), sample());
    }

    #[test]
    fn a_state_decode_would_refuse_is_not_encoded() {
        let nan = MemoryState {
            elapsed_time_offset: f64::NAN,
            ..sample()
        };
        let error = try_encode(&nan).unwrap_err();
        assert!(matches!(error, MemoryStateError::Payload(_)), "{error}");
        let huge = MemoryState {
            domain_xml: "x".repeat(MAX_LEN),
            ..sample()
        };
        let error = try_encode(&huge).unwrap_err();
        assert!(matches!(error, MemoryStateError::TooLong(_)), "{error}");
    }

    #[test]
    fn every_truncation_is_refused() {
        let record = record();
        for length in 0..record.len() {
            let cut = &record[..length];
            assert!(decode(cut).is_err(), "cut at {length}");
            assert!(
                decode(&padded(cut.to_vec())).is_err(),
                "cut at {length}, zeros after"
            );
        }
    }

    #[test]
    fn every_single_byte_change_is_refused() {
        let record = record();
        let mut changed = record.clone();
        for at in 0..record.len() {
            for value in (0..=u8::MAX).filter(|v| *v != record[at]) {
                changed[at] = value;
                assert!(decode(&changed).is_err(), "byte {at} set to {value:#04x}");
            }
            changed[at] = record[at];
        }
    }

    proptest! {
        #[test]
        fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..8192)) {
            prop_assert!(decode(&bytes).is_err());
        }

        #[test]
        fn random_bytes_after_the_magic_are_refused(
            tail in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            let mut bytes = format!("{MAGIC} 1 ").into_bytes();
            bytes.extend_from_slice(&tail);
            prop_assert!(decode(&bytes).is_err());
        }

        #[test]
        fn random_payloads_in_a_good_frame_are_refused(
            payload in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            prop_assert!(decode(&framed(1, &payload)).is_err());
        }
    }
}
