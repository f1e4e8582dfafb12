//! `VM.freeze` / `VM.thaw`, for snapshots consistent across several VMs: a manager freezes
//! them, snapshots each with `frozen=true`, and thaws them.
//!
//! Beyond VDSM: every freeze made here carries an auto-thaw deadline, after which rvdsmd thaws
//! the guest itself, so a manager that dies between freeze and thaw never leaves guests frozen.
//! Freezes are recorded in `<state_dir>/freezes/<vmId>.json` so a restarted rvdsmd still thaws
//! on time. A thaw that fails (libvirtd down, the agent hung or gone) is retried, with backoff,
//! until the guest is thawed or the VM is gone: the promise is kept, late rather than never.
//!
//! The same record guards the freezes a snapshot could not undo ([`FreezeService::guard`]):
//! a failed thaw, or a freeze that timed out and may still take effect when a hung agent wakes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::vm_types::FreezeParams;
use crate::clock::epoch_secs;
use crate::jobs::journal::{Journal, JournalRecord};
use crate::jobs::vm_jobs::{JobRefusal, JobRegistry};
use crate::virt::{FreezeState, RunState, SharedHypervisor};

mod error;
#[cfg(test)]
mod fake_tests;

pub use error::{AgentOp, FreezeError, FreezeErrorKind};

/// A freeze rvdsm made and must undo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FreezeRecord {
    vm: Uuid,
    /// Epoch seconds after which rvdsmd thaws the guest.
    thaw_at: u64,
    /// Distinguishes this freeze from a later one of the same VM.
    generation: Uuid,
    /// The verb whose freeze this is: `VM.freeze`, or `VM.snapshot` for a guarded one.
    #[serde(default = "freeze_verb")]
    by: String,
}

impl JournalRecord for FreezeRecord {
    fn id(&self) -> Uuid {
        self.vm
    }
}

fn freeze_verb() -> String {
    "VM.freeze".to_owned()
}

/// The first wait before a failed thaw is tried again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest auto-thaw deadline taken (a day): a guest is never left frozen longer on
/// rvdsm's word, and a client's number never meets the clock unchecked.
const MAX_AUTO_THAW_SECONDS: u64 = 24 * 3600;
/// The longest wait between two thaw attempts.
const RETRY_MAX: Duration = Duration::from_secs(15);

/// Freezes and thaws guests, and keeps the auto-thaw promise.
#[derive(Clone)]
pub struct FreezeService {
    hypervisor: SharedHypervisor,
    jobs: JobRegistry,
    journal: Journal<FreezeRecord>,
    agent_timeout: Duration,
    default_auto_thaw: Duration,
    owned: Arc<Mutex<HashMap<Uuid, FreezeRecord>>>,
}

impl FreezeService {
    /// Loads the freezes a previous run recorded and re-arms their deadlines (thawing at once
    /// those already past). Call inside the runtime.
    pub fn start(
        hypervisor: SharedHypervisor,
        jobs: JobRegistry,
        dir: PathBuf,
        agent_timeout: Duration,
        default_auto_thaw: Duration,
    ) -> Self {
        let (journal, records) = Journal::open(&dir, "freeze").unwrap_or_else(|err| {
            tracing::error!(dir = %dir.display(), error = %err, "cannot read the freeze records");
            (Journal::unread(&dir, "freeze"), Vec::new())
        });
        let service = Self {
            hypervisor,
            jobs,
            journal,
            agent_timeout,
            default_auto_thaw,
            owned: Arc::default(),
        };
        for record in records {
            tracing::info!(vm = %record.vm, thaw_at = record.thaw_at, "re-arming auto-thaw of a recorded freeze");
            service.lock().insert(record.vm, record.clone());
            service.arm(record);
        }
        service
    }

    /// `VM.freeze`.
    pub async fn freeze(&self, p: FreezeParams) -> Result<(), FreezeError> {
        if p.auto_thaw_seconds
            .is_some_and(|s| s > MAX_AUTO_THAW_SECONDS)
        {
            return Err(FreezeError::InvalidParameter(format!(
                "autoThawSeconds must be at most {MAX_AUTO_THAW_SECONDS}"
            )));
        }
        let vm = p.vm_id;
        self.hypervisor.domain_disks(vm).await?;
        let _claim = self.jobs.claim_vm(vm)?;
        self.hypervisor
            .set_agent_timeout(vm, self.agent_timeout)
            .await
            .map_err(FreezeError::agent(AgentOp::Freeze))?;
        // A guest frozen already is either ours (the deadline is renewed below) or someone
        // else's, which rvdsm must never take over and thaw.
        let frozen_before = self.hypervisor.freeze_state(vm, self.agent_timeout).await;
        let ours = self.lock().contains_key(&vm);
        if frozen_before == Ok(FreezeState::Frozen) && !ours {
            return Err(FreezeError::ForeignFreeze);
        }
        let mountpoints = p.mountpoints.unwrap_or_default();
        if frozen_before == Ok(FreezeState::Frozen) {
            tracing::info!(%vm, "guest already frozen by rvdsm; renewing the auto-thaw deadline");
        } else {
            self.freeze_now(vm, mountpoints).await?;
        }
        let seconds = p
            .auto_thaw_seconds
            .map_or(self.default_auto_thaw, Duration::from_secs);
        let record = FreezeRecord {
            vm,
            thaw_at: epoch_secs().saturating_add(seconds.as_secs()),
            generation: Uuid::new_v4(),
            by: freeze_verb(),
        };
        if let Err(err) = self.persist(record.clone()).await {
            tracing::error!(%vm, error = %err, "cannot record the freeze; auto-thaw will not survive a restart");
        }
        self.lock().insert(vm, record.clone());
        self.arm(record);
        Ok(())
    }

    /// Freezes; a failure that nonetheless froze the guest (a timeout) counts as a freeze.
    async fn freeze_now(&self, vm: Uuid, mountpoints: Vec<String>) -> Result<(), FreezeError> {
        let started = std::time::Instant::now();
        let frozen = self.hypervisor.freeze(vm, mountpoints).await;
        crate::metrics::global()
            .freeze_seconds
            .observe(started.elapsed().as_secs_f64());
        match frozen {
            Ok(count) => tracing::info!(%vm, count, "guest filesystems frozen"),
            Err(err) => {
                // A timeout is ambiguous: the freeze may have taken effect. Then it is ours.
                let state = self.hypervisor.freeze_state(vm, self.agent_timeout).await;
                if state.is_err() {
                    // Nobody can tell: a hung agent may run the freeze when it wakes. The
                    // caller is told it failed, so rvdsm thaws the guest once the agent answers.
                    self.guard(vm).await;
                }
                let took_effect = state == Ok(FreezeState::Frozen);
                if !took_effect {
                    let error = FreezeError::agent(AgentOp::Freeze)(err);
                    if error.kind() == FreezeErrorKind::AgentUnresponsive {
                        crate::metrics::global().agent_timeouts.inc();
                    }
                    return Err(error);
                }
                tracing::warn!(%vm, error = %err, "freeze reported an error but took effect");
            }
        }
        Ok(())
    }

    /// `VM.thaw`: succeeds on a thawed guest too. Refused (100) while a snapshot job runs on
    /// the VM: a thaw inside its frozen window would make its `quiesced` a lie.
    pub async fn thaw(&self, vm: Uuid) -> Result<(), FreezeError> {
        self.hypervisor.domain_disks(vm).await?;
        if self.jobs.busy_with_job(vm) {
            return Err(FreezeError::Busy(JobRefusal::VmBusy(vm)));
        }
        self.thaw_now(vm).await?;
        self.forget(vm, None).await;
        Ok(())
    }

    /// Thaws the guest (bounded agent call), taking no claim: callers decide.
    async fn thaw_now(&self, vm: Uuid) -> Result<(), FreezeError> {
        self.hypervisor
            .set_agent_timeout(vm, self.agent_timeout)
            .await
            .map_err(FreezeError::agent(AgentOp::Thaw))?;
        let count = self
            .hypervisor
            .thaw(vm, Vec::new())
            .await
            .map_err(FreezeError::agent(AgentOp::Thaw))?;
        tracing::info!(%vm, count, "guest filesystems thawed");
        Ok(())
    }

    /// Takes over a freeze a snapshot may have left behind: the guest is thawed as soon as the
    /// agent answers, retried until then, across restarts. A guest frozen by `VM.freeze` keeps
    /// that freeze's deadline.
    pub async fn guard(&self, vm: Uuid) {
        if self.lock().contains_key(&vm) {
            return;
        }
        let record = FreezeRecord {
            vm,
            thaw_at: epoch_secs(),
            generation: Uuid::new_v4(),
            by: "VM.snapshot".to_owned(),
        };
        tracing::warn!(%vm, "the guest may still be frozen; thawing it until the agent answers");
        if let Err(err) = self.persist(record.clone()).await {
            tracing::error!(%vm, error = %err, "cannot record the pending thaw; it will not survive a restart");
        }
        self.lock().insert(vm, record.clone());
        self.arm(record);
    }

    /// When the daemon stops: every guest rvdsm holds frozen (by `VM.freeze`, or guarded
    /// after a snapshot) is thawed now, since a stopped daemon keeps no deadline. A thaw that
    /// fails keeps its record on disk: the next start thaws the guest.
    pub async fn stop(&self) {
        let owned: Vec<Uuid> = self.lock().keys().copied().collect();
        let thaws = owned.into_iter().map(|vm| async move {
            tracing::warn!(%vm, "rvdsmd is stopping: thawing a guest it froze");
            // No claim: the grace is over, and a stopped daemon keeps no deadline.
            match self.thaw_now(vm).await {
                Ok(()) => self.forget(vm, None).await,
                Err(err) => {
                    tracing::error!(%vm, error = %err, "cannot thaw the guest before stopping; the next start will");
                }
            }
        });
        futures_util::future::join_all(thaws).await;
    }

    /// Who froze the VM and until when, if rvdsm did: `(verb, thaw_at epoch seconds)`.
    pub fn owned_until(&self, vm: Uuid) -> Option<(String, u64)> {
        self.lock().get(&vm).map(|r| (r.by.clone(), r.thaw_at))
    }

    /// Thaws the guest at the record's deadline; a failed thaw is retried (backoff up to
    /// [`RETRY_MAX`]) for as long as the record is the VM's current one.
    fn arm(&self, record: FreezeRecord) {
        let service = self.clone();
        tokio::spawn(async move {
            let wait = record.thaw_at.saturating_sub(epoch_secs());
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let mut retry = RETRY_FIRST;
            for attempt in 1u64.. {
                let still_ours = service
                    .lock()
                    .get(&record.vm)
                    .is_some_and(|r| r.generation == record.generation);
                if !still_ours {
                    return;
                }
                if attempt == 1 && record.by == "VM.freeze" {
                    tracing::warn!(vm = %record.vm, "auto-thaw deadline reached: thawing the guest");
                    crate::metrics::global().auto_thaws.inc();
                }
                let generation = Some(record.generation);
                // A snapshot may run on the VM (frozen=true, inside its switch): the thaw waits
                // for it to end, never cuts its frozen window.
                let thawed = if service.jobs.busy_with_job(record.vm) {
                    Err(FreezeError::Busy(JobRefusal::VmBusy(record.vm)))
                } else {
                    service.thaw_now(record.vm).await
                };
                match thawed {
                    Ok(()) => return service.forget(record.vm, generation).await,
                    Err(err) if err.kind() == FreezeErrorKind::NoSuchVm => {
                        return service.forget(record.vm, generation).await;
                    }
                    // No agent channel at all: nothing can be frozen.
                    Err(err) if err.kind() == FreezeErrorKind::Unsupported => {
                        return service.forget(record.vm, generation).await;
                    }
                    // A VM that stopped has nothing frozen any more.
                    Err(_)
                        if service.hypervisor.run_state(record.vm).await
                            == Ok(RunState::Stopped) =>
                    {
                        return service.forget(record.vm, generation).await;
                    }
                    // Logged at powers of two: an agent gone for hours must not flood the log.
                    Err(err) if attempt.is_power_of_two() => {
                        tracing::error!(vm = %record.vm, error = %err, attempt, "thaw failed; retrying");
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        });
    }

    /// Drops the VM's freeze record: any (`None`), or only the one of `generation`, so that a
    /// late end of an old freeze never drops a newer freeze's record (and its auto-thaw).
    async fn forget(&self, vm: Uuid, generation: Option<Uuid>) {
        {
            let mut owned = self.lock();
            let current = owned.get(&vm).map(|r| r.generation);
            if generation.is_some() && current.is_some() && current != generation {
                return;
            }
            owned.remove(&vm);
        }
        let journal = self.journal.clone();
        // Off the reactor: file-system calls can block.
        let _ = tokio::task::spawn_blocking(move || journal.remove(vm)).await;
    }

    async fn persist(&self, record: FreezeRecord) -> std::io::Result<()> {
        let journal = self.journal.clone();
        // Off the reactor: an atomic write fsyncs.
        tokio::task::spawn_blocking(move || journal.write(&record))
            .await
            .map_err(std::io::Error::other)?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, FreezeRecord>> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records exactly as the release before the one journal wrote them (serialized with its
    /// types, pasted verbatim) read into the same meaning, and are found by the journal.
    #[test]
    fn records_of_the_previous_release_read_the_same() {
        let by_freeze = r#"{"vm":"00000000-0000-0000-0000-000000000020","thaw_at":1765000000,"generation":"00000000-0000-0000-0000-000000000030","by":"VM.freeze"}"#;
        let guarded = r#"{"vm":"00000000-0000-0000-0000-000000000020","thaw_at":1765000000,"generation":"00000000-0000-0000-0000-000000000030","by":"VM.snapshot"}"#;
        let record = |by: &str| FreezeRecord {
            vm: Uuid::from_u128(0x20),
            thaw_at: 1765000000,
            generation: Uuid::from_u128(0x30),
            by: by.to_owned(),
        };
        for (text, want) in [
            (by_freeze, record("VM.freeze")),
            (guarded, record("VM.snapshot")),
        ] {
            let read: FreezeRecord = serde_json::from_str(text).unwrap();
            assert_eq!(read, want, "{text}");
            assert_eq!(serde_json::to_string(&read).unwrap(), text);
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{}.json", Uuid::from_u128(0x20)));
        std::fs::write(file, by_freeze).unwrap();
        let (_, found) = Journal::<FreezeRecord>::open(dir.path(), "freeze").unwrap();
        assert_eq!(
            found,
            [record("VM.freeze")],
            "never pruned: removed once thawed"
        );
    }
}
