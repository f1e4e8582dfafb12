//! What the monitoring cache samples: every domain's state, live XML and bulk statistics, read
//! in one blocking call (one `virConnectGetAllDomainStats` for the numbers), and one domain's
//! state and XML when something just changed it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use uuid::Uuid;
use virt::domain::{
    Domain, DomainPausedReason, DomainShutoffReason, DomainState, DomainStateReason,
    DomainStateReasonEnum,
};
use virt::enumutil::Enum;

use super::connection::Libvirt;
use super::domains::{identity, lookup, vm_status};
use super::error::{VirtError, code::NO_DOMAIN};
pub use super::ffi::StatValue;
use crate::api::types::VmStatus;

/// The statistics groups sampled: those VDSM's VM stats are computed from.
const STATS_GROUPS: u32 = virt::sys::VIR_DOMAIN_STATS_STATE
    | virt::sys::VIR_DOMAIN_STATS_CPU_TOTAL
    | virt::sys::VIR_DOMAIN_STATS_BALLOON
    | virt::sys::VIR_DOMAIN_STATS_VCPU
    | virt::sys::VIR_DOMAIN_STATS_INTERFACE
    | virt::sys::VIR_DOMAIN_STATS_BLOCK;

/// Set while a full sample runs in libvirt (the blocking thread may outlive the caller's
/// timeout); one hypervisor per process, so one flag.
static SAMPLING: AtomicBool = AtomicBool::new(false);

/// Clears [`SAMPLING`] when the blocking sample ends, however it ends.
struct SamplingDone;

impl Drop for SamplingDone {
    fn drop(&mut self) {
        SAMPLING.store(false, Ordering::SeqCst);
    }
}

/// Why a stopped domain stopped, in VDSM's terms (`exitCode`, `exitReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// 0 normal, 1 error.
    pub code: u8,
    /// VDSM's `vmexitreason` number.
    pub reason: u8,
}

/// One domain as the monitoring cache keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainView {
    /// The domain UUID.
    pub uuid: Uuid,
    /// The domain name.
    pub name: String,
    /// Its state in VDSM's vocabulary.
    pub status: VmStatus,
    /// For a stopped domain, why it stopped.
    pub exit: Option<ExitInfo>,
    /// Whether libvirt keeps its definition after it stops.
    pub persistent: bool,
    /// The live domain XML (disks, chains, rvdsm's metadata).
    pub xml: String,
}

/// The bulk statistics of one domain, by libvirt's field name (`cpu.time`, `block.0.rd.bytes`).
pub type DomainStats = HashMap<String, StatValue>;

impl Libvirt {
    /// Every domain's view and statistics (statistics only for running or paused domains).
    /// libvirt is asked not to wait for a domain busy with a job (a snapshot on a stopped
    /// QEMU): its figures are then partial, not late. A sample still running in libvirt past
    /// its timeout is not doubled: the next one waits for it to end (a sample asked for now
    /// must see the domains as they are now: the start-up one, or one after an event
    /// connection came back), and is refused if it outlives a call's timeout.
    pub async fn sample_all(&self) -> Result<Vec<(DomainView, DomainStats)>, VirtError> {
        let waited = std::time::Instant::now();
        while SAMPLING.swap(true, Ordering::SeqCst) {
            if waited.elapsed() > self.call_timeout() {
                return Err(VirtError::Timeout {
                    op: "sample domains (the previous one still runs)",
                    secs: self.call_timeout().as_secs(),
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let sampled = self
            .call("sample domains", |conn| {
                let _done = SamplingDone;
                let domains = conn
                    .list_all_domains(0)
                    .map_err(|e| VirtError::libvirt("list domains", e))?;
                let flags = virt::sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT;
                let mut stats: HashMap<Uuid, DomainStats> =
                    super::ffi::all_domain_stats(conn, STATS_GROUPS, flags)?
                        .into_iter()
                        .map(|(uuid, fields)| (uuid, fields.into_iter().collect()))
                        .collect();
                let mut out = Vec::with_capacity(domains.len());
                for domain in &domains {
                    match view_of(domain) {
                        Ok(view) => {
                            let numbers = stats.remove(&view.uuid).unwrap_or_default();
                            out.push((view, numbers));
                        }
                        // Undefined between the listing and this read: simply gone.
                        Err(err) if err.libvirt_code() == Some(NO_DOMAIN) => {}
                        Err(err) => return Err(err),
                    }
                }
                Ok(out)
            })
            .await;
        // Past its timeout the sample may still run in libvirt, and clears the flag when it
        // ends; otherwise it ended (or never began, libvirt unreachable).
        if !matches!(sampled, Err(VirtError::Timeout { .. })) {
            SAMPLING.store(false, Ordering::SeqCst);
        }
        sampled
    }

    /// One domain's view now; `None` when libvirt no longer knows it.
    pub async fn read_view(&self, uuid: Uuid) -> Result<Option<DomainView>, VirtError> {
        self.call("read domain", move |conn| match lookup(conn, uuid) {
            Ok(domain) => match view_of(&domain) {
                Ok(view) => Ok(Some(view)),
                Err(err) if err.libvirt_code() == Some(NO_DOMAIN) => Ok(None),
                Err(err) => Err(err),
            },
            Err(VirtError::NoSuchDomain { .. }) => Ok(None),
            Err(err) => Err(err),
        })
        .await
    }
}

fn view_of(domain: &Domain) -> Result<DomainView, VirtError> {
    let (uuid, name, state, reason) = identity(domain)?;
    let persistent = domain
        .is_persistent()
        .map_err(|e| VirtError::libvirt("read domain persistence", e))?;
    let xml = domain
        .xml_desc(0)
        .map_err(|e| VirtError::libvirt("read domain XML", e))?;
    // QEMU starts paused and libvirt resumes it once set up: that pause is a launch.
    let starting = matches!(
        reason,
        Enum::Known(DomainStateReason::Paused(Enum::Known(
            DomainPausedReason::StartingUp
        )))
    );
    Ok(DomainView {
        uuid,
        name,
        status: if starting {
            VmStatus::WaitForLaunch
        } else {
            vm_status(state)
        },
        exit: exit_info(state, reason),
        persistent,
        xml,
    })
}

/// VDSM's exit code and reason for a stopped domain, from libvirt's state reason.
fn exit_info(state: Enum<DomainState, u32>, reason: DomainStateReasonEnum) -> Option<ExitInfo> {
    let shutoff = match reason {
        Enum::Known(DomainStateReason::Shutoff(Enum::Known(why))) => Some(why),
        _ => None,
    };
    match state {
        Enum::Known(DomainState::Crashed) => Some(ExitInfo { code: 1, reason: 2 }),
        Enum::Known(DomainState::Shutoff) => Some(match shutoff {
            Some(DomainShutoffReason::Shutdown) => ExitInfo { code: 0, reason: 7 },
            Some(DomainShutoffReason::Destroyed) => ExitInfo { code: 0, reason: 6 },
            Some(DomainShutoffReason::Crashed) => ExitInfo { code: 1, reason: 2 },
            Some(DomainShutoffReason::Failed) => ExitInfo { code: 1, reason: 3 },
            // Hibernated (`VM.hibernate`): VDSM's SAVE_STATE_SUCCEEDED.
            Some(DomainShutoffReason::Saved) => ExitInfo { code: 0, reason: 5 },
            _ => ExitInfo { code: 0, reason: 0 },
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_domains_say_why_as_vdsm_does() {
        let shutoff = |why| {
            exit_info(
                Enum::Known(DomainState::Shutoff),
                Enum::Known(DomainStateReason::Shutoff(Enum::Known(why))),
            )
        };
        assert_eq!(
            shutoff(DomainShutoffReason::Shutdown),
            Some(ExitInfo { code: 0, reason: 7 })
        );
        assert_eq!(
            shutoff(DomainShutoffReason::Crashed),
            Some(ExitInfo { code: 1, reason: 2 })
        );
        assert_eq!(
            shutoff(DomainShutoffReason::Saved),
            Some(ExitInfo { code: 0, reason: 5 })
        );
        let running = Enum::Known(DomainStateReason::Shutoff(Enum::Known(
            DomainShutoffReason::Unknown,
        )));
        assert_eq!(exit_info(Enum::Known(DomainState::Running), running), None);
    }
}
