//! What saving and restoring a guest's RAM needs from libvirt: an external snapshot with
//! memory (the disks switch at the instant the RAM image is taken), a save (hibernation), a
//! restore onto a checked definition, the guest's clock set after it, and the domain's
//! migratable definition to keep beside the RAM. The dump's file is named to libvirt by a
//! descriptor rvdsmd holds (`/proc/<pid>/fd/<n>`), never by a path in a shared domain that
//! another host could replace with a link between the check and libvirt's open.
//!
//! How long the guest stood still is read from libvirt's lifecycle events (suspended, then
//! resumed) seen on the call's own connection while it runs; QEMU's own figure for the final
//! stop-and-copy (`downtime`) from the completed job's statistics.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;
use virt::connect::Connect;
use virt::sys;

use super::connection::Libvirt;
use super::domains::lookup;
use super::error::VirtError;
use super::ffi;
use super::snapshot::{DiskSwitch, snapshot_xml};
use crate::api::snapshot_types::MemoryMode;

/// How long to wait, after libvirt's call returned, for the event that the guest runs again.
const RESUME_EVENT_WAIT: Duration = Duration::from_secs(2);

/// The RAM's destination: a name of a descriptor rvdsmd holds, and how to save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryDump {
    /// `/proc/<rvdsmd's pid>/fd/<n>`.
    pub file: String,
    /// Paused for the whole dump, or live until the last pages.
    pub mode: MemoryMode,
    /// How long libvirt's call may take (a dump's length grows with the guest's RAM).
    pub timeout: Duration,
}

/// What a save of the RAM measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PauseReport {
    /// Milliseconds from libvirt's suspended event to its resumed event (or to the call's
    /// end when the guest stays stopped, as after a hibernation); `None` when no event was
    /// seen (no event loop, or the guest was paused before).
    pub pause_ms: Option<f64>,
    /// QEMU's own figure for the final stop-and-copy, in milliseconds.
    pub downtime_ms: Option<f64>,
}

impl Libvirt {
    /// The domain's definition as a destination host (or a restore) needs it.
    pub async fn migratable_xml(&self, vm: Uuid) -> Result<String, VirtError> {
        self.call("read domain XML", move |conn| {
            lookup(conn, vm)?
                .xml_desc(sys::VIR_DOMAIN_XML_MIGRATABLE)
                .map_err(|e| VirtError::libvirt("read domain XML", e))
        })
        .await
    }

    /// One external snapshot with memory: the listed disks switch onto their new volumes at
    /// the instant the RAM is saved into `dump`; every other disk is left alone. Without
    /// `LIVE` (paused mode) libvirt pauses the guest for the whole dump and resumes it.
    pub async fn memory_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
        dump: MemoryDump,
    ) -> Result<PauseReport, VirtError> {
        let xml = snapshot_xml(&switches, &all_targets, Some(&dump.file));
        let mut flags = sys::VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
            | sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
            | sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
        if dump.mode == MemoryMode::Live {
            flags |= sys::VIR_DOMAIN_SNAPSHOT_CREATE_LIVE;
        }
        let op = "create external snapshot with memory";
        self.call_once_on_within(vm, op, dump.timeout, move |conn| {
            timed_by_events(conn, vm, |domain| {
                domain
                    .create_snapshot_xml(&xml, flags)
                    .map(|_| ())
                    .map_err(|e| VirtError::libvirt(op, e))
            })
        })
        .await
    }

    /// Hibernation: the RAM and device state into `dump` (its mode is ignored: a save is
    /// always paused); the domain stops once saved, and stays defined.
    pub async fn save_memory(&self, vm: Uuid, dump: MemoryDump) -> Result<PauseReport, VirtError> {
        self.call_once_on_within(vm, "save the domain", dump.timeout, move |conn| {
            timed_by_events(conn, vm, |domain| {
                ffi::save(domain, &dump.file, 0).map_err(VirtError::from)
            })
        })
        .await
    }

    /// Restores a saved RAM image with the definition `xml` (checked by the caller), paused:
    /// the caller resumes it once it has checked what runs.
    pub async fn restore_paused(
        &self,
        vm: Uuid,
        file: String,
        xml: String,
        timeout: Duration,
    ) -> Result<(), VirtError> {
        self.call_once_on_within(vm, "restore the domain", timeout, move |conn| {
            conn.restore_domain_flags(&file, Some(&xml), sys::VIR_DOMAIN_SAVE_PAUSED)
                .map_err(|e| VirtError::libvirt("restore the domain", e))
        })
        .await
    }

    /// Sets the guest's clock to the host's now, through its agent (as VDSM does after a
    /// restore: the guest's clock stood still while its RAM was saved). The caller bounds agent
    /// calls first.
    pub async fn set_guest_time(&self, vm: Uuid) -> Result<(), VirtError> {
        self.call_once_on(vm, "set the guest's time", move |conn| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
            let nanos = i32::try_from(now.subsec_nanos()).unwrap_or(0);
            lookup(conn, vm)?
                .set_time(seconds, nanos, 0)
                .map_err(|e| VirtError::libvirt("set the guest's time", e))
        })
        .await
    }

    /// Stops the domain's running save or dump (libvirt undoes its snapshot: the disks stay,
    /// the guest runs again).
    pub async fn abort_job(&self, vm: Uuid) -> Result<(), VirtError> {
        self.call("abort the domain's job", move |conn| {
            ffi::abort_job(&lookup(conn, vm)?).map_err(VirtError::from)
        })
        .await
    }
}

/// Runs `call` on `vm`'s domain while watching its lifecycle events on `conn`, and measures
/// the guest's stop from them.
fn timed_by_events(
    conn: &Connect,
    vm: Uuid,
    call: impl FnOnce(&virt::domain::Domain) -> Result<(), VirtError>,
) -> Result<PauseReport, VirtError> {
    let domain = lookup(conn, vm)?;
    let seen: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let recorder = Arc::clone(&seen);
    let handler: ffi::LifecycleHandler = Box::new(move |uuid, event, _detail| {
        if uuid != vm {
            return;
        }
        let stopped = match u32::try_from(event) {
            Ok(sys::VIR_DOMAIN_EVENT_SUSPENDED | sys::VIR_DOMAIN_EVENT_STOPPED) => true,
            Ok(sys::VIR_DOMAIN_EVENT_RESUMED) => false,
            _ => return,
        };
        recorder
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((Instant::now(), stopped));
    });
    let guard = match ffi::lifecycle_guard(conn, handler) {
        Ok(guard) => Some(guard),
        Err(err) => {
            tracing::debug!(%vm, error = %err, "no lifecycle events: the pause is not measured");
            None
        }
    };
    call(&domain)?;
    let returned = Instant::now();
    if guard.is_some() {
        // The resumed event may come after the call returned.
        while returned.elapsed() < RESUME_EVENT_WAIT && awaits_resume(&seen) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    drop(guard);
    let downtime_ms = match ffi::completed_job_downtime(&domain) {
        Ok(downtime) => downtime.map(|ms| ms as f64),
        Err(err) => {
            tracing::debug!(%vm, error = %err, "no completed job statistics");
            None
        }
    };
    let events = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(PauseReport {
        pause_ms: stopped_ms(&events, returned),
        downtime_ms,
    })
}

/// Whether the last event seen stopped the guest (a resume may still come).
fn awaits_resume(seen: &Mutex<Vec<(Instant, bool)>>) -> bool {
    seen.lock()
        .unwrap_or_else(|e| e.into_inner())
        .last()
        .is_some_and(|(_, stopped)| *stopped)
}

/// The time the guest stood still, from its stop and resume events; a stop without a resume
/// counts until `end`.
fn stopped_ms(events: &[(Instant, bool)], end: Instant) -> Option<f64> {
    let mut total = Duration::ZERO;
    let mut since: Option<Instant> = None;
    let mut any = false;
    for (at, stopped) in events {
        match (stopped, since) {
            (true, None) => {
                since = Some(*at);
                any = true;
            }
            (false, Some(start)) => {
                total += at.saturating_duration_since(start);
                since = None;
            }
            _ => {}
        }
    }
    if let Some(start) = since {
        total += end.saturating_duration_since(start);
    }
    any.then_some(total.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_is_the_sum_of_stopped_stretches() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(stopped_ms(&[], at(10)), None);
        let paused = stopped_ms(&[(at(0), true), (at(40), false)], at(100)).unwrap();
        assert!((paused - 40.0).abs() < 0.5, "{paused}");
        let twice = [
            (at(0), true),
            (at(10), false),
            (at(50), true),
            (at(80), false),
        ];
        assert!((stopped_ms(&twice, at(100)).unwrap() - 40.0).abs() < 0.5);
        let never_resumed = stopped_ms(&[(at(20), true)], at(100)).unwrap();
        assert!((never_resumed - 80.0).abs() < 0.5, "{never_resumed}");
    }

    #[test]
    fn the_memory_goes_beside_the_disks_in_the_snapshot() {
        let xml = snapshot_xml(
            &[DiskSwitch {
                target: "vda".into(),
                new_path: "/sd/images/i/new".into(),
            }],
            &["vda".into()],
            Some("/proc/1/fd/7"),
        );
        assert!(
            xml.ends_with(
                "</disks><memory snapshot='external' file='/proc/1/fd/7'/></domainsnapshot>"
            ),
            "{xml}"
        );
    }
}
