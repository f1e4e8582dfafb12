//! The end of a failed snapshot: read the live domain (waiting while libvirt does not answer or
//! still runs a snapshot on the VM: the outcome must be exact, never guessed), keep a new
//! volume a disk already uses (or may use), delete the others and make each parent a LEAF
//! again. A switch found done after its error makes the job done, consistency unknown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

use super::SnapshotService;
use super::journal::Entry;
use super::memory::MemoryJob;
use crate::api::codes;
use crate::api::snapshot_types::Consistency;
use crate::jobs::results::{RollbackReport, SnapshotResult};
use crate::services::storage::ImageRef;
use crate::virt::VirtError;

/// What the live domain shows of a VM's disks, after a switch that may have happened.
pub(super) enum Live {
    /// Each disk target and the canonical path it uses now.
    Disks(HashMap<String, Option<PathBuf>>),
    /// libvirt answers, and the VM no longer exists: nothing runs on any of its volumes.
    Gone,
    /// libvirt does not answer, or still runs a snapshot on the VM (why): nothing can be
    /// decided yet.
    Unreadable(String),
}

impl SnapshotService {
    /// Ends a failed job: reads the live domain (when the switch was attempted, waiting for
    /// libvirt if it does not answer), keeps a new volume a disk already uses, deletes the
    /// others.
    pub(super) async fn fail(&self, entry: &Entry, switch_attempted: bool, message: String) {
        self.fail_with_memory(entry, switch_attempted, message, None)
            .await;
    }

    /// [`Self::fail`] for a snapshot with memory too: its memory volumes are settled (kept
    /// when the switch is found done after all, ILLEGAL otherwise) before the job's end is
    /// shown, so that a manager never reads a failed job whose RAM still looks usable.
    pub(super) async fn fail_with_memory(
        &self,
        entry: &Entry,
        switch_attempted: bool,
        message: String,
        memory: Option<&MemoryJob>,
    ) {
        tracing::warn!(job = %entry.job, %message, "snapshot failed; rolling back");
        let live = if switch_attempted {
            // A switch that timed out may still happen: `wait_live` first waits until libvirt
            // returns from it.
            self.wait_live(entry.vm).await
        } else {
            Live::Disks(HashMap::new())
        };
        let switched = matches!(&live, Live::Disks(disks) if switched_all(entry, disks).await);
        if let Some(memory) = memory {
            self.after_failed_dump(entry, memory, switched).await;
        }
        if switched {
            // The switch happened after all (it outlived its timeout): the job is done, with
            // no claim on consistency, since the freeze, if any, ended before it.
            tracing::warn!(job = %entry.job, "the switch completed after its error; the job is done");
            let result = SnapshotResult::LateSwitch {
                consistency: Consistency::Unknown,
                switched: entry.drives.iter().map(|d| d.volume).collect(),
                late_switch: message,
            };
            self.note_consistency(entry, Consistency::Unknown, Some("late-switch".into()))
                .await;
            self.finish_job(entry, Ok(result)).await;
            return;
        }
        crate::failpoint::pause!("snapshot:rolling-back");
        let rollback = self.roll_back(entry, &live).await;
        let message = format!("{message}{}", why_kept(&rollback, &live));
        self.jobs.set_result(entry.job, rollback.into());
        self.finish_job(entry, Err((codes::SNAPSHOT_FAILED, message)))
            .await;
    }

    /// Deletes the new volumes no disk uses (as `live` shows), keeps the others.
    pub(super) async fn roll_back(&self, entry: &Entry, live: &Live) -> RollbackReport {
        let new_real = new_volumes_real(entry).await;
        let mut report = RollbackReport::default();
        for (drive, real) in entry.drives.iter().zip(&new_real) {
            let keep = match live {
                Live::Disks(disks) => must_keep(Some(disks), &drive.target, real),
                Live::Unreadable(_) => true,
                // No VM runs on it any more: it matters only if the guest wrote to it.
                Live::Gone => match self.storage.image(ImageRef::new(drive.domain, drive.image)) {
                    Ok(image) => image.has_data(drive.volume).await,
                    Err(err) => Err(err),
                }
                .unwrap_or(real.is_some()),
            };
            if keep {
                report.kept.push(drive.volume);
                continue;
            }
            let discarded = match self.storage.image(ImageRef::new(drive.domain, drive.image)) {
                // The job holds the image's lock (`lock_images`).
                Ok(image) => image.discard_volume(drive.volume, drive.base).await,
                Err(err) => Err(err),
            };
            match discarded {
                Ok(()) => report.deleted.push(drive.volume),
                Err(err) => {
                    tracing::error!(volume = %drive.volume, error = %err, "cannot delete the new volume of a failed snapshot");
                    report
                        .cleanup_errors
                        .push(format!("{}: {err}", drive.volume));
                }
            }
        }
        if !report.deleted.is_empty() {
            crate::metrics::global().rollbacks.inc();
        }
        report
    }

    /// The VM's disks as the live domain shows them now.
    pub(super) async fn read_live(&self, vm: Uuid) -> Live {
        match self.hypervisor.domain_disks(vm).await {
            Ok((_, disks)) => {
                let paths = disks
                    .iter()
                    .map(|d| PathBuf::from(d.path.clone().unwrap_or_default()))
                    .collect();
                let real = canonical_all(paths).await;
                Live::Disks(disks.into_iter().map(|d| d.target).zip(real).collect())
            }
            Err(VirtError::NoSuchDomain { .. }) => Live::Gone,
            Err(err) => Live::Unreadable(format!("cannot read the VM's disks: {err}")),
        }
    }

    /// The VM's disks once no snapshot runs on it in libvirt. A switch a killed rvdsmd
    /// started goes on in libvirtd while its QEMU does not answer: judged before it ends, the
    /// VM would be seen on its old volumes and the new one deleted under the switch.
    pub(super) async fn settled_live(&self, vm: Uuid) -> Live {
        // Our own calls that timed out on the VM (a switch, an earlier probe) are waited for
        // first: one blocked thread per VM at most.
        self.hypervisor.settled(vm).await;
        match self.hypervisor.snapshot_running(vm).await {
            Ok(false) | Err(VirtError::NoSuchDomain { .. }) => self.read_live(vm).await,
            Ok(true) => Live::Unreadable("libvirt still runs a snapshot on the VM".to_owned()),
            Err(err) => Live::Unreadable(format!("cannot read the VM's libvirt job: {err}")),
        }
    }

    /// The VM's disks, waiting (with backoff) while libvirt does not answer or still runs a
    /// snapshot on the VM.
    pub(super) async fn wait_live(&self, vm: Uuid) -> Live {
        let mut wait = Duration::from_millis(500);
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            match self.settled_live(vm).await {
                Live::Unreadable(why) => {
                    // Logged at powers of two: libvirtd may stay away for hours.
                    if attempt.is_power_of_two() {
                        tracing::warn!(%vm, %why, attempt, "waiting until the VM can be judged");
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(10));
                }
                live => return live,
            }
        }
    }
}

/// Why volumes were kept, for the job's message ("" when none was).
pub(super) fn why_kept(report: &RollbackReport, live: &Live) -> &'static str {
    if report.kept.is_empty() {
        return "";
    }
    match live {
        Live::Disks(_) => "; the VM uses the kept volumes",
        Live::Gone => "; the VM is gone and the kept volumes hold its writes",
        Live::Unreadable(_) => "; the VM cannot be read, so its volumes are kept",
    }
}

/// Whether every drive of `entry` uses its new volume in `disks`.
async fn switched_all(entry: &Entry, disks: &HashMap<String, Option<PathBuf>>) -> bool {
    let new_real = new_volumes_real(entry).await;
    entry
        .drives
        .iter()
        .zip(&new_real)
        .all(|(d, real)| real.is_some() && disks.get(&d.target) == Some(real))
}

/// Whether a failed snapshot must keep the new volume of the disk `target`: when the live
/// domain shows the disk already uses it, or when the live domain could not be read (never
/// delete a volume the VM may be writing to).
fn must_keep(
    live: Option<&HashMap<String, Option<PathBuf>>>,
    target: &str,
    new_real: &Option<PathBuf>,
) -> bool {
    match live {
        Some(live) => new_real.is_some() && live.get(target) == Some(new_real),
        None => true,
    }
}

/// The canonical path of each new volume of `entry` (`None` for one that is gone).
async fn new_volumes_real(entry: &Entry) -> Vec<Option<PathBuf>> {
    canonical_all(
        entry
            .drives
            .iter()
            .map(|d| PathBuf::from(&d.new_path))
            .collect(),
    )
    .await
}

/// The canonical form of each path (`None` for one that does not resolve), computed off the
/// reactor: resolving a path can block on a slow mount.
pub(super) async fn canonical_all(paths: Vec<PathBuf>) -> Vec<Option<PathBuf>> {
    let count = paths.len();
    tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|p| std::fs::canonicalize(p).ok())
            .collect()
    })
    .await
    .unwrap_or_else(|_| vec![None; count])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn rollback_keeps_what_the_vm_uses_and_anything_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old");
        let new = dir.path().join("new");
        std::fs::write(&old, b"").unwrap();
        std::fs::write(&new, b"").unwrap();
        let real = |path: &Path| std::fs::canonicalize(path).ok();
        let on = |path: &Path| HashMap::from([("vda".to_owned(), real(path))]);
        let new_real = real(&new);

        assert!(
            must_keep(Some(&on(&new)), "vda", &new_real),
            "the VM writes to it"
        );
        assert!(
            !must_keep(Some(&on(&old)), "vda", &new_real),
            "the VM stayed on its volume"
        );
        assert!(
            !must_keep(Some(&HashMap::new()), "vda", &new_real),
            "switch never attempted"
        );
        assert!(must_keep(None, "vda", &new_real), "live domain unreadable");
        let missing = dir.path().join("missing");
        assert!(!must_keep(Some(&on(&missing)), "vda", &real(&missing)));
    }

    #[test]
    fn the_message_says_why_volumes_were_kept() {
        let kept = RollbackReport {
            kept: vec![Uuid::nil()],
            ..RollbackReport::default()
        };
        assert_eq!(why_kept(&RollbackReport::default(), &Live::Gone), "");
        assert!(why_kept(&kept, &Live::Gone).contains("hold its writes"));
        assert!(why_kept(&kept, &Live::Unreadable(String::new())).contains("cannot be read"));
        assert!(why_kept(&kept, &Live::Disks(HashMap::new())).contains("uses the kept"));
    }
}
