//! Parameter and result types of the storage and task verbs (VDSM-REFERENCE §2.2, §5.1), with
//! VDSM's wire names. Numbers VDSM sends as strings stay strings.

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use super::volume_types::{Preallocation, VolumeFormat};

/// `typeArgs` of `StorageDomain.create`: the path as the oVirt engine sends it, or the schema's
/// `{remotePath}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TypeArgs {
    /// A bare path.
    Path(String),
    /// `{"remotePath": ...}`.
    Object {
        /// The path.
        #[serde(rename = "remotePath")]
        remote_path: String,
    },
}

impl TypeArgs {
    /// The path either way.
    pub fn path(&self) -> &str {
        match self {
            Self::Path(path) | Self::Object { remote_path: path } => path,
        }
    }
}

/// Parameters of `StorageDomain.create`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateDomainParams {
    /// The new domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// 1 NFS, 4 LOCALFS, 6 POSIXFS (or the schema's names).
    #[serde(rename = "domainType", deserialize_with = "domain_type_code")]
    pub domain_type: i64,
    /// The directory.
    #[serde(rename = "typeArgs")]
    pub type_args: TypeArgs,
    /// Its name.
    pub name: String,
    /// 1 = DATA (or the schema's name, `Data`).
    #[serde(rename = "domainClass", deserialize_with = "domain_class_code")]
    pub domain_class: i64,
    /// 5.
    #[serde(deserialize_with = "number_or_string")]
    pub version: i64,
    /// 512 or 4096.
    #[serde(rename = "blockSize", default)]
    pub block_size: Option<u32>,
    /// Most hosts sharing it.
    #[serde(rename = "maxHosts", default)]
    pub max_hosts: Option<u32>,
}

/// Parameters of verbs on a domain.
#[derive(Debug, Clone, Deserialize)]
pub struct DomainParams {
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
}

/// Parameters of `Host.getStorageDomains`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GetStorageDomainsParams {
    /// Only the domains of this pool.
    #[serde(rename = "storagepoolID", default)]
    pub pool: Option<Uuid>,
}

/// Parameters of `StorageDomain.getVolumes`.
#[derive(Debug, Clone, Deserialize)]
pub struct DomainVolumesParams {
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// Only this image; BLANK or absent for all.
    #[serde(rename = "imageID", default)]
    pub image: Option<Uuid>,
}

/// Parameters of verbs on an image.
#[derive(Debug, Clone, Deserialize)]
pub struct ImageParams {
    /// The image.
    #[serde(rename = "imageID")]
    pub image: Uuid,
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
}

/// Parameters of verbs on a volume.
#[derive(Debug, Clone, Deserialize)]
pub struct VolumeParams {
    /// The volume.
    #[serde(rename = "volumeID")]
    pub volume: Uuid,
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// The image.
    #[serde(rename = "imageID")]
    pub image: Uuid,
}

/// Parameters of `Volume.create`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreateVolumeParams {
    /// The new volume.
    #[serde(rename = "volumeID")]
    pub volume: Uuid,
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// The image.
    #[serde(rename = "imageID")]
    pub image: Uuid,
    /// Capacity in bytes, a decimal string.
    #[serde(deserialize_with = "number_or_string_text")]
    pub size: String,
    /// 4 COW, 5 RAW (or the names).
    #[serde(rename = "volFormat")]
    pub format: VolumeFormat,
    /// 1 PREALLOCATED, 2 SPARSE (or the names).
    pub preallocate: Preallocation,
    /// Content type, `DATA` and the others VDSM knows.
    #[serde(rename = "diskType", deserialize_with = "number_or_string_text")]
    pub disk_type: String,
    /// Description.
    #[serde(default)]
    pub desc: String,
    /// The parent's image; BLANK means the same image.
    #[serde(rename = "srcImgUUID", default)]
    pub src_image: Option<Uuid>,
    /// The parent; BLANK or absent for a base volume.
    #[serde(rename = "srcVolUUID", default)]
    pub src_volume: Option<Uuid>,
    /// Initial allocation (file RAW preallocated only).
    #[serde(rename = "initialSize", default)]
    pub initial_size: Option<serde_json::Value>,
    /// Whether the volume ends LEGAL (default true).
    #[serde(default)]
    pub legal: Option<bool>,
    /// `SEQ`.
    #[serde(default)]
    pub sequence: Option<u32>,
}

/// Parameters of `Volume.delete`. The ids repeat [`VolumeParams`]' rather than flatten it: a
/// flattened struct hides its field names from what serde's derive tells, which the verb
/// table's agreement test reads.
#[derive(Debug, Clone, Deserialize)]
pub struct DeleteVolumeParams {
    /// The volume.
    #[serde(rename = "volumeID")]
    pub volume: Uuid,
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// The image.
    #[serde(rename = "imageID")]
    pub image: Uuid,
    /// Accepted for VDSM compatibility; file domains do not zero.
    #[serde(rename = "postZero", default)]
    pub post_zero: Option<bool>,
    /// Accepted; a volume with children or in use is refused all the same.
    #[serde(default)]
    pub force: Option<bool>,
    /// Accepted; file domains do not discard.
    #[serde(default)]
    pub discard: Option<bool>,
}

impl DeleteVolumeParams {
    /// The volume's ids.
    pub fn ids(&self) -> VolumeParams {
        VolumeParams {
            volume: self.volume,
            pool: self.pool,
            domain: self.domain,
            image: self.image,
        }
    }
}

/// Parameters of `Image.deleteVolumes`.
#[derive(Debug, Clone, Deserialize)]
pub struct DeleteVolumesParams {
    /// The image.
    #[serde(rename = "imageID")]
    pub image: Uuid,
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// The volumes to delete.
    #[serde(rename = "volumeList")]
    pub volumes: Vec<Uuid>,
    /// Accepted for VDSM compatibility.
    #[serde(rename = "postZero", default)]
    pub post_zero: Option<bool>,
    /// Accepted; the refusals still apply.
    #[serde(default)]
    pub force: Option<bool>,
    /// Accepted.
    #[serde(default)]
    pub discard: Option<bool>,
}

/// Parameters of `Image.delete`.
#[derive(Debug, Clone, Deserialize)]
pub struct DeleteImageParams {
    /// The image.
    #[serde(rename = "imageID")]
    pub image: Uuid,
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// Accepted for VDSM compatibility.
    #[serde(rename = "postZero", default)]
    pub post_zero: Option<bool>,
    /// Accepted; an image in use is refused all the same.
    #[serde(default)]
    pub force: Option<bool>,
    /// Accepted.
    #[serde(default)]
    pub discard: Option<bool>,
}

impl DeleteImageParams {
    /// The image's ids.
    pub fn ids(&self) -> ImageParams {
        ImageParams {
            image: self.image,
            pool: self.pool,
            domain: self.domain,
        }
    }
}

/// Parameters of `Image.prepare`.
#[derive(Debug, Clone, Deserialize)]
pub struct PrepareImageParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// The image.
    #[serde(rename = "imageID")]
    pub image: Uuid,
    /// The volume whose path is returned (the image's leaf, usually).
    #[serde(rename = "volumeID")]
    pub volume: Uuid,
    /// Prepare even if a volume of the image is ILLEGAL.
    #[serde(rename = "allowIllegal", default)]
    pub allow_illegal: bool,
}

/// Parameters of `Image.teardown`.
#[derive(Debug, Clone, Deserialize)]
pub struct TeardownImageParams {
    /// The pool.
    #[serde(rename = "storagepoolID")]
    pub pool: Uuid,
    /// The domain.
    #[serde(rename = "storagedomainID")]
    pub domain: Uuid,
    /// The image.
    #[serde(rename = "imageID")]
    pub image: Uuid,
    /// Accepted for VDSM compatibility.
    #[serde(rename = "volumeID", default)]
    pub volume: Option<Uuid>,
}

/// `Image.prepare`.
#[derive(Debug, Clone, Serialize)]
pub struct PreparedImage {
    /// The path a VM should use for the volume: through the pool's link to the domain,
    /// `<repository>/<pool>/<domain>/images/<image>/<volume>`, as VDSM's paths are.
    pub path: String,
}

/// Parameters of the task verbs.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskParams {
    /// The task.
    #[serde(rename = "taskID")]
    pub task: Uuid,
}

/// `StorageDomain.getInfo`.
#[derive(Debug, Clone, Serialize)]
pub struct DomainInfo {
    /// The domain.
    pub uuid: Uuid,
    /// `LOCALFS`, `NFS`, `POSIXFS`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `Data`.
    pub class: String,
    /// Its name.
    pub name: String,
    /// `Regular`.
    pub role: String,
    /// The pools it belongs to.
    pub pool: Vec<Uuid>,
    /// Its version, as a string as VDSM sends it.
    pub version: String,
    /// Block size.
    pub block_size: u32,
    /// Alignment of leases.
    pub alignment: u32,
    /// The directory or export.
    #[serde(rename = "remotePath")]
    pub remote_path: String,
}

/// `StorageDomain.getStats` (sizes as strings, as VDSM).
#[derive(Debug, Clone, Serialize)]
pub struct DomainStats {
    /// Total bytes.
    pub disktotal: String,
    /// Free bytes.
    pub diskfree: String,
    /// Whether the metadata area is valid.
    pub mdavalid: bool,
    /// Whether the metadata area is above its threshold.
    pub mdathreshold: bool,
}

/// `Volume.getInfo` (VDSM's shape: several numbers are strings).
#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    /// The volume.
    pub uuid: Uuid,
    /// `SPARSE` or `PREALLOCATED`.
    #[serde(rename = "type")]
    pub allocation: String,
    /// `COW` or `RAW`.
    pub format: String,
    /// Content type.
    pub disktype: String,
    /// `LEAF`, `INTERNAL`, `SHARED`.
    pub voltype: String,
    /// Capacity in bytes.
    pub capacity: String,
    /// The parent or BLANK.
    pub parent: Uuid,
    /// Description.
    pub description: String,
    /// Always empty, as VDSM.
    pub pool: String,
    /// The domain.
    pub domain: Uuid,
    /// The image.
    pub image: Uuid,
    /// Creation time, epoch seconds.
    pub ctime: String,
    /// Always `"0"`, as VDSM.
    pub mtime: String,
    /// `LEGAL`, `ILLEGAL`, `FAKE`.
    pub legality: String,
    /// Generation.
    pub generation: u32,
    /// Sequence.
    pub sequence: u32,
    /// Size of the data file.
    pub apparentsize: String,
    /// Bytes allocated to it.
    pub truesize: String,
    /// `OK` or `ILLEGAL`.
    pub status: String,
    /// Volumes based on this one.
    pub children: Vec<Uuid>,
    /// How the snapshot that made this volume a backing file was taken (rvdsm's addition):
    /// `{consistency, reason, time, vmId, volumeID}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<super::snapshot_types::SnapshotNote>,
    /// What a guest reverted to this volume's snapshot will see at boot (rvdsm's addition,
    /// with `snapshot`): `{outcome: clean | journal-recovery | unknown, message}`.
    #[serde(rename = "revertBoot", skip_serializing_if = "Option::is_none")]
    pub revert_boot: Option<super::snapshot_types::RevertBoot>,
}

/// `Volume.getSize`.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeSize {
    /// Size of the data file.
    pub apparentsize: String,
    /// Bytes allocated.
    pub truesize: String,
}

/// `Task.getStatus` and the values of `Host.getAllTasksStatuses`.
#[derive(Debug, Clone, Serialize)]
pub struct TaskStatus {
    /// The task.
    #[serde(rename = "taskID")]
    pub task_id: Uuid,
    /// `running`, `finished`, `aborting`...
    #[serde(rename = "taskState")]
    pub task_state: String,
    /// `""`, `success`, `cleanSuccess`, `cleanFailure`.
    #[serde(rename = "taskResult")]
    pub task_result: String,
    /// 0 or the error's code.
    pub code: i32,
    /// VDSM's message.
    pub message: String,
}

/// `Task.getInfo`.
#[derive(Debug, Clone, Serialize)]
pub struct TaskInfo {
    /// The task.
    pub id: Uuid,
    /// The verb that started it.
    pub verb: String,
}

/// An integer sent as a number or a string.
pub(super) fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let text = number_or_string_text(d)?;
    text.parse()
        .map_err(|_| serde::de::Error::custom(format!("{text:?} is not an integer")))
}

/// A value sent as a string or a number, kept as text.
fn number_or_string_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string or a number, got {other}"
        ))),
    }
}

/// `StorageDomainType` by number or by the schema's name (`LOCALFS`).
fn domain_type_code<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    const NAMES: [&str; 8] = [
        "UNKNOWN",
        "NFS",
        "FCP",
        "ISCSI",
        "LOCALFS",
        "CIFS",
        "POSIXFS",
        "GLUSTERFS",
    ];
    code_or_name(d, &NAMES)
}

/// `StorageDomainImageClass` by number or by the schema's name (`Data`).
fn domain_class_code<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    code_or_name(d, &["", "Data", "Iso", "Backup"])
}

fn code_or_name<'de, D: Deserializer<'de>>(d: D, names: &[&str]) -> Result<i64, D::Error> {
    let text = number_or_string_text(d)?;
    if let Ok(code) = text.parse() {
        return Ok(code);
    }
    names
        .iter()
        .position(|n| !n.is_empty() && n.eq_ignore_ascii_case(&text))
        .and_then(|i| i64::try_from(i).ok())
        .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not one of {names:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(
        domain_type: serde_json::Value,
        class: serde_json::Value,
    ) -> Result<CreateDomainParams, String> {
        serde_json::from_value(serde_json::json!({
            "storagedomainID": "00000000-0000-0000-0000-0000000000a1", "domainType": domain_type,
            "typeArgs": "/d", "name": "n", "domainClass": class, "version": "5",
        }))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn domain_type_and_class_take_the_schema_names_and_numbers() {
        let named = create("LOCALFS".into(), "Data".into()).unwrap();
        assert_eq!((named.domain_type, named.domain_class), (4, 1));
        let numbered = create(6.into(), "1".into()).unwrap();
        assert_eq!((numbered.domain_type, numbered.domain_class), (6, 1));
        let err = create("FLOPPY".into(), "Data".into()).unwrap_err();
        assert!(err.contains("FLOPPY"), "{err}");
    }
}
