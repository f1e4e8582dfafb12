//! Checks a `VM.snapshot` request before anything changes: its parameters, then each drive
//! against the storage domain (the new volume is a usable child of the base) and the live
//! domain (the VM uses the base volume, on an unshared file disk). A drive whose new volume the
//! VM already uses is skipped, so that a retried request is idempotent.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use super::SnapshotService;
use super::error::SnapshotError;
use super::rollback::canonical_all;
use crate::api::types::DiskStats;
use crate::api::vm_types::{SnapDrive, SnapshotParams};
use crate::services::storage::ImageRef;

/// One drive of a validated request.
#[derive(Debug, Clone)]
pub(super) struct Drive {
    pub domain: Uuid,
    pub image: Uuid,
    pub base: Uuid,
    pub volume: Uuid,
    pub target: String,
    /// The path the VM uses now (as the VM names it).
    pub old_path: String,
    /// The new volume's path, in the same style as the old one.
    pub new_path: String,
    /// The new volume's canonical path, to recognize it in the live domain.
    pub new_real: Option<PathBuf>,
}

/// What a request asks for, once checked.
pub(super) struct Checked {
    /// The drives to switch.
    pub drives: Vec<Drive>,
    /// The new volumes the VM already uses.
    pub skipped: Vec<Uuid>,
    /// Every disk target of the VM.
    pub all_targets: Vec<String>,
}

/// The longest `timeout` or `freeze_timeout` taken, in minutes (a week): a client's number
/// never meets a clock unchecked.
pub(super) const MAX_TIMEOUT_MINUTES: i64 = 7 * 24 * 60;

/// The checks that need nothing but the parameters.
pub(super) fn check_params(p: &SnapshotParams) -> Result<(), SnapshotError> {
    // VDSM accepts a freeze_timeout of 0 (its schema says uint) and the job then fails, the
    // deadline being past before the switch; so does rvdsm. A timeout must be positive.
    for (name, value, least, rule) in [
        ("timeout", p.timeout, 1, "must be positive"),
        (
            "freeze_timeout",
            p.freeze_timeout,
            0,
            "must not be negative",
        ),
    ] {
        let Some(value) = value else { continue };
        if value < least {
            return Err(SnapshotError::invalid_value(name, value, rule));
        }
        if value > MAX_TIMEOUT_MINUTES {
            return Err(SnapshotError::invalid_value(
                name,
                value,
                &format!("must be at most {MAX_TIMEOUT_MINUTES} minutes"),
            ));
        }
    }
    if let Some(text) = p.snap_memory.as_deref().filter(|m| !m.is_empty()) {
        text.parse::<crate::api::snapshot_types::MemoryVolumes>()
            .map_err(|why| SnapshotError::invalid(format!("snapMemory: {why}")))?;
    }
    if p.drives.is_empty() {
        return Err(SnapshotError::invalid("snapDrives is empty"));
    }
    for drive in &p.drives {
        drive_ids(drive)?;
    }
    Ok(())
}

/// A drive's `(domain, image, base, volume)`; a direct LUN is refused.
fn drive_ids(drive: &SnapDrive) -> Result<(Uuid, Uuid, Uuid, Uuid), SnapshotError> {
    if drive.guid.is_some() {
        return Err(SnapshotError::invalid(
            "direct LUN disks cannot be snapshotted",
        ));
    }
    match (drive.domain, drive.image, drive.base, drive.volume) {
        (Some(domain), Some(image), Some(base), Some(volume)) => Ok((domain, image, base, volume)),
        _ => Err(SnapshotError::invalid(
            "each drive needs domainID, imageID, baseVolumeID and volumeID",
        )),
    }
}

/// Refuses a disk that an external snapshot of a file volume cannot switch.
fn check_disk_kind(disk: &DiskStats) -> Result<(), SnapshotError> {
    if disk.shareable || disk.device == "lun" || disk.disk_type != "file" {
        let what = if disk.shareable {
            "shareable"
        } else {
            "not a file volume"
        };
        return Err(SnapshotError::invalid(format!(
            "disk {} is {what}: only unshared file volumes can be snapshotted",
            disk.target
        )));
    }
    Ok(())
}

/// The new volume's path in the style of the old one (same directory, the volume's name), so
/// that the VM's definition keeps naming its volumes one way.
fn new_path_like(old_path: &str, volume: Uuid) -> String {
    Path::new(old_path)
        .with_file_name(volume.hyphenated().to_string())
        .to_string_lossy()
        .into_owned()
}

impl SnapshotService {
    /// Maps each requested drive to the VM's disk using its base volume.
    pub(super) async fn check_drives(&self, p: &SnapshotParams) -> Result<Checked, SnapshotError> {
        let (_, disks) = self.hypervisor.domain_disks(p.vm_id).await?;
        let disk_paths: Vec<PathBuf> = disks
            .iter()
            .map(|d| PathBuf::from(d.path.clone().unwrap_or_default()))
            .collect();
        let disk_real = canonical_all(disk_paths).await;
        let uses = |wanted: &Option<PathBuf>| {
            disks
                .iter()
                .zip(&disk_real)
                .find(|(_, real)| real.is_some() && *real == wanted)
                .map(|(disk, _)| disk)
        };
        let mut checked = Checked {
            drives: Vec::new(),
            skipped: Vec::new(),
            all_targets: disks.iter().map(|d| d.target.clone()).collect(),
        };
        for drive in &p.drives {
            let (domain, image, base, volume) = drive_ids(drive)?;
            let (base_path, new_path) = self
                .storage
                .image(ImageRef::new(domain, image))?
                .snapshot_target(base, volume)
                .await?;
            let real = canonical_all(vec![base_path, new_path]).await;
            let (base_real, new_real) = (real[0].clone(), real[1].clone());
            if let Some(disk) = uses(&new_real) {
                tracing::info!(target = %disk.target, %volume, "drive already uses the new volume; skipped");
                checked.skipped.push(volume);
                continue;
            }
            let Some(disk) = uses(&base_real) else {
                return Err(SnapshotError::invalid(format!(
                    "base volume {base} is not used by VM {}",
                    p.vm_id
                )));
            };
            check_disk_kind(disk)?;
            let old_path = disk.path.clone().unwrap_or_default();
            checked.drives.push(Drive {
                domain,
                image,
                base,
                volume,
                target: disk.target.clone(),
                new_path: new_path_like(&old_path, volume),
                old_path,
                new_real,
            });
        }
        Ok(checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(drives: serde_json::Value) -> SnapshotParams {
        serde_json::from_value(serde_json::json!({
            "vmID": Uuid::nil(), "snapDrives": drives
        }))
        .unwrap()
    }

    fn drive() -> serde_json::Value {
        let id = Uuid::nil();
        serde_json::json!({"domainID": id, "imageID": id, "baseVolumeID": id, "volumeID": id})
    }

    #[test]
    fn parameters_are_checked_before_anything() {
        assert!(check_params(&params(serde_json::json!([drive()]))).is_ok());
        let refused = |p: SnapshotParams| check_params(&p).unwrap_err().to_string();
        assert!(refused(params(serde_json::json!([]))).contains("snapDrives is empty"));
        let mut p = params(serde_json::json!([drive()]));
        p.timeout = Some(0);
        assert!(
            refused(p).contains("'parameter': 'timeout', 'value': 0, 'reason': 'must be positive'")
        );
        let mut p = params(serde_json::json!([drive()]));
        p.freeze_timeout = Some(-1);
        assert!(
            refused(p).contains("'freeze_timeout', 'value': -1, 'reason': 'must not be negative'")
        );
        let mut p = params(serde_json::json!([drive()]));
        p.freeze_timeout = Some(0);
        assert!(check_params(&p).is_ok(), "VDSM takes 0 and fails the job");
        for huge in [MAX_TIMEOUT_MINUTES + 1, 200_000_000_000_000_000, i64::MAX] {
            let mut p = params(serde_json::json!([drive()]));
            p.freeze_timeout = Some(huge);
            assert!(refused(p).contains("'freeze_timeout', 'value': "));
            let mut p = params(serde_json::json!([drive()]));
            p.timeout = Some(huge);
            assert!(refused(p).contains("'reason': 'must be at most"));
        }
        let mut p = params(serde_json::json!([drive()]));
        p.snap_memory = Some("x".into());
        assert!(refused(p).contains("snapMemory"));
        let lun = serde_json::json!([{"GUID": "3600a0", "baseGUID": "3600a0"}]);
        assert!(refused(params(lun)).contains("direct LUN"));
        let partial = serde_json::json!([{"domainID": Uuid::nil()}]);
        assert!(refused(params(partial)).contains("needs domainID"));
    }

    #[test]
    fn only_unshared_file_disks_are_switched() {
        let disk = |device: &str, disk_type: &str, shareable| DiskStats {
            target: "vda".into(),
            device: device.into(),
            disk_type: disk_type.into(),
            path: Some("/d/old".into()),
            format: Some("qcow2".into()),
            readonly: false,
            shareable,
            backing_chain: Vec::new(),
        };
        assert!(check_disk_kind(&disk("disk", "file", false)).is_ok());
        let err = check_disk_kind(&disk("disk", "file", true)).unwrap_err();
        assert!(err.to_string().contains("shareable"), "{err}");
        assert!(check_disk_kind(&disk("lun", "block", false)).is_err());
        assert!(check_disk_kind(&disk("disk", "network", false)).is_err());
    }

    #[test]
    fn the_new_path_follows_the_old_paths_style() {
        let volume = Uuid::from_u128(7);
        assert_eq!(
            new_path_like("/run/pool/dom/images/img/old", volume),
            format!("/run/pool/dom/images/img/{volume}")
        );
    }
}
