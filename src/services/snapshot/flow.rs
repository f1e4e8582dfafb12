//! The decision logic of a snapshot, against a small interface to the hypervisor so that every
//! branch is tested with a recording fake (see the tests below) as well as with real guests.
//!
//! The rules (DESIGN.md, "Rules that keep data safe"):
//! - Quiesce first; when no compatible agent is there (not configured, not connected, not
//!   responding, VM paused), take the snapshot without it, once, and say why; with
//!   `require`, fail instead. Any other freeze failure is a failure.
//! - The frozen window holds only the switch.
//! - Thaw what this operation froze, always, and only that: a guest frozen before the
//!   operation is left frozen (and treated as `frozen=true`); after an ambiguous agent
//!   failure, the freeze status is probed and a freeze that took effect is thawed.
//! - Never a second switch attempt: a failed switch is reported as it is; the caller reads the
//!   live domain before any rollback.

use std::future::Future;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::api::snapshot_types::{Consistency, Quiesce, Reason, Timings};
use crate::virt::{
    DefinedSwitch, DiskSwitch, FreezeState, MemoryDump, PauseReport, RunState, VirtError,
    VirtErrorKind,
};

/// What the flow needs from the hypervisor.
pub trait VmOps: Send + Sync {
    /// The VM's run state.
    fn run_state(&self, vm: Uuid) -> impl Future<Output = Result<RunState, VirtError>> + Send;
    /// Bounds agent calls on the VM.
    fn set_agent_timeout(
        &self,
        vm: Uuid,
        t: Duration,
    ) -> impl Future<Output = Result<(), VirtError>> + Send;
    /// The agent's freeze status.
    fn freeze_state(
        &self,
        vm: Uuid,
        t: Duration,
    ) -> impl Future<Output = Result<FreezeState, VirtError>> + Send;
    /// Records durably, before a freeze, that a guest frozen from now on may be this
    /// operation's to thaw (after a crash too). No freeze is made when this fails.
    fn record_freeze_intent(&self, vm: Uuid) -> impl Future<Output = Result<(), String>> + Send;
    /// Records durably that this operation owns no freeze after all (the guest was frozen by
    /// another tool), so that nothing thaws it on this operation's behalf.
    fn disown_freeze(&self, vm: Uuid) -> impl Future<Output = Result<(), String>> + Send;
    /// Freezes all guest filesystems.
    fn freeze(&self, vm: Uuid) -> impl Future<Output = Result<u32, VirtError>> + Send;
    /// Thaws all guest filesystems.
    fn thaw(&self, vm: Uuid) -> impl Future<Output = Result<u32, VirtError>> + Send;
    /// One atomic external disk-only snapshot.
    fn external_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
    ) -> impl Future<Output = Result<(), VirtError>> + Send;
    /// One external snapshot with memory: the disks switch at the instant the RAM is saved.
    fn memory_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
        dump: MemoryDump,
    ) -> impl Future<Output = Result<PauseReport, VirtError>> + Send;
    /// Points a stopped VM's definition at the new volumes.
    fn switch_defined_disks(
        &self,
        vm: Uuid,
        switches: Vec<DefinedSwitch>,
    ) -> impl Future<Output = Result<(), VirtError>> + Send;
}

/// A switch that happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Quiesced or not.
    pub consistency: Consistency,
    /// Why not, when not.
    pub reason: Option<Reason>,
    /// Phase durations.
    pub timings: Timings,
    /// A thaw that failed after the switch (the guest may still be frozen: reported, never
    /// hidden).
    pub thaw_error: Option<String>,
    /// For a snapshot with memory: how long the guest stood still.
    pub pause: Option<PauseReport>,
}

/// A switch that did not happen (or may have, when `switch_attempted`).
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    /// What went wrong.
    pub message: String,
    /// libvirt's code, if libvirt failed.
    pub libvirt_code: Option<i32>,
    /// Whether libvirt's snapshot call was made (then the live domain must be read).
    pub switch_attempted: bool,
    /// A thaw that failed after a freeze this operation made: the guest may still be frozen.
    pub thaw_error: Option<String>,
}

impl Failure {
    fn before_switch(message: impl Into<String>, err: Option<&VirtError>) -> Self {
        Self {
            message: message.into(),
            libvirt_code: err.and_then(VirtError::libvirt_code),
            switch_attempted: false,
            thaw_error: None,
        }
    }
}

/// What to switch and how.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The VM.
    pub vm: Uuid,
    /// The disks to switch.
    pub switches: Vec<DiskSwitch>,
    /// For a stopped VM: each disk to switch, with its current and new paths.
    pub defined_switches: Vec<DefinedSwitch>,
    /// Every disk target of the VM (the unlisted ones are left alone).
    pub all_targets: Vec<String>,
    /// rvdsm's quiesce mode.
    pub quiesce: Quiesce,
    /// VDSM's `frozen`: the caller froze the guest.
    pub frozen_by_caller: bool,
    /// libvirt's agent response timeout for this VM.
    pub agent_timeout: Duration,
    /// Past this (VDSM's `freeze_timeout` after the job's start), the switch is not attempted.
    pub switch_deadline: Instant,
    /// Save the guest's RAM too, there: no freeze then (the RAM holds the filesystems' state,
    /// as VDSM reasons), and no `freeze_timeout` (it bounds a freeze).
    pub memory: Option<MemoryDump>,
}

/// Takes the snapshot described by `plan`.
pub async fn run<V: VmOps>(ops: &V, plan: &Plan) -> Result<Outcome, Failure> {
    let started = Instant::now();
    let mut timings = Timings::default();
    let state = ops
        .run_state(plan.vm)
        .await
        .map_err(|e| Failure::before_switch(e.to_string(), Some(&e)))?;
    if let Some(dump) = &plan.memory {
        return with_memory(ops, plan, dump.clone(), state, started).await;
    }
    let skip_reason = match state {
        RunState::Stopped => {
            let t = Instant::now();
            ops.switch_defined_disks(plan.vm, plan.defined_switches.clone())
                .await
                .map_err(|e| Failure {
                    message: e.to_string(),
                    libvirt_code: e.libvirt_code(),
                    switch_attempted: true,
                    thaw_error: None,
                })?;
            timings.switch_ms = millis(t);
            timings.total_ms = millis(started);
            return Ok(crash(Reason::NotRunning, timings));
        }
        RunState::Paused => Some(Reason::Paused),
        RunState::Running if plan.frozen_by_caller => Some(Reason::FrozenByCaller),
        RunState::Running if plan.quiesce == Quiesce::Skip => Some(Reason::Skipped),
        RunState::Running => None,
    };
    let (owned_freeze, reason) = match skip_reason {
        Some(Reason::Paused) if plan.quiesce == Quiesce::Require => {
            return Err(Failure::before_switch(
                "quiesce required but the VM is paused",
                None,
            ));
        }
        Some(reason) => (false, Some(reason)),
        None => quiesce(ops, plan, &mut timings).await?,
    };
    let frozen_since = Instant::now();
    if owned_freeze {
        // Test seam for faults in the frozen window (kill -9, libvirtd or QEMU killed).
        crate::failpoint::pause!("snapshot:frozen");
    }
    if Instant::now() > plan.switch_deadline {
        let thaw_error = if owned_freeze {
            thaw_owned(ops, plan).await
        } else {
            None
        };
        return Err(Failure {
            thaw_error,
            ..Failure::before_switch(
                "freeze_timeout passed before the switch; nothing was switched",
                None,
            )
        });
    }

    let t = Instant::now();
    let switched = ops
        .external_snapshot(plan.vm, plan.switches.clone(), plan.all_targets.clone())
        .await;
    timings.switch_ms = millis(t);
    if owned_freeze && switched.is_ok() {
        crate::failpoint::pause!("snapshot:switched");
    }
    let thaw_error = if owned_freeze {
        let t = Instant::now();
        let error = thaw_owned(ops, plan).await;
        timings.thaw_ms = millis(t);
        timings.frozen_ms = millis(frozen_since);
        error
    } else {
        None
    };
    timings.total_ms = millis(started);
    match switched {
        Ok(()) => Ok(Outcome {
            consistency: if owned_freeze {
                Consistency::Quiesced
            } else {
                Consistency::CrashConsistent
            },
            reason,
            timings,
            thaw_error,
            pause: None,
        }),
        Err(e) => Err(Failure {
            message: e.to_string(),
            libvirt_code: e.libvirt_code(),
            switch_attempted: true,
            thaw_error,
        }),
    }
}

/// A snapshot with memory of a running (or paused) VM: one call, no freeze.
async fn with_memory<V: VmOps>(
    ops: &V,
    plan: &Plan,
    dump: MemoryDump,
    state: RunState,
    started: Instant,
) -> Result<Outcome, Failure> {
    if state == RunState::Stopped {
        return Err(Failure::before_switch(
            "a snapshot with memory needs a running VM; this one is not running",
            None,
        ));
    }
    let mut timings = Timings::default();
    let t = Instant::now();
    let saved = ops
        .memory_snapshot(
            plan.vm,
            plan.switches.clone(),
            plan.all_targets.clone(),
            dump,
        )
        .await;
    timings.switch_ms = millis(t);
    timings.total_ms = millis(started);
    match saved {
        Ok(pause) => Ok(Outcome {
            consistency: Consistency::WithMemory,
            reason: (state == RunState::Paused).then_some(Reason::Paused),
            timings,
            thaw_error: None,
            pause: Some(pause),
        }),
        Err(e) => Err(Failure {
            message: e.to_string(),
            libvirt_code: e.libvirt_code(),
            switch_attempted: true,
            thaw_error: None,
        }),
    }
}

/// Freezes the guest if an agent can; returns whether this operation owns a freeze, or why
/// the snapshot goes unquiesced.
async fn quiesce<V: VmOps>(
    ops: &V,
    plan: &Plan,
    timings: &mut Timings,
) -> Result<(bool, Option<Reason>), Failure> {
    let unavailable = |reason: Reason| {
        if plan.quiesce == Quiesce::Require {
            Err(Failure::before_switch(
                format!("quiesce required but impossible: {}", reason_text(reason)),
                None,
            ))
        } else {
            Ok((false, Some(reason)))
        }
    };
    // Without a bounded agent, no agent call is made at all: an unbounded freeze on a hung
    // agent would block forever and keep the domain's agent lock.
    if let Err(err) = ops.set_agent_timeout(plan.vm, plan.agent_timeout).await {
        tracing::warn!(vm = %plan.vm, error = %err, "cannot bound agent calls; not quiescing");
        return unavailable(Reason::NoAgent);
    }
    // The status first, though it costs an agent round trip (~3 ms here): a freeze sent to
    // a hung agent runs when the agent wakes, freezing the guest at a moment nobody chose
    // (tried: the late freeze was then undone only by the freeze guard), while a status query
    // that runs late harms nothing.
    match ops.freeze_state(plan.vm, plan.agent_timeout).await {
        Ok(FreezeState::Frozen) => return Ok((false, Some(Reason::AlreadyFrozen))),
        Ok(FreezeState::Thawed) => {}
        Err(err) => return unavailable(agent_reason(&err)),
    }
    if let Err(why) = ops.record_freeze_intent(plan.vm).await {
        return Err(Failure::before_switch(
            format!("cannot record the freeze durably, so the guest is not frozen: {why}"),
            None,
        ));
    }
    let t = Instant::now();
    let frozen = ops.freeze(plan.vm).await;
    timings.freeze_ms = millis(t);
    match frozen {
        Ok(_) => Ok((true, None)),
        // Frozen by another tool between the status and the freeze: the agent refused at
        // once and froze nothing, so this operation thaws nothing.
        Err(err) if err.kind() == VirtErrorKind::AgentFrozen => {
            if let Err(why) = ops.disown_freeze(plan.vm).await {
                return Err(Failure::before_switch(
                    format!(
                        "the guest was frozen by another tool, and this could not be recorded \
                         (a restart could then thaw it): {why}"
                    ),
                    None,
                ));
            }
            Ok((false, Some(Reason::AlreadyFrozen)))
        }
        Err(err) => {
            // Ambiguous: the freeze may have taken effect in the guest. Look, and thaw what
            // this operation froze.
            if ops.freeze_state(plan.vm, plan.agent_timeout).await == Ok(FreezeState::Frozen)
                && let Some(e) = thaw_owned(ops, plan).await
            {
                return Err(Failure {
                    thaw_error: Some(e.clone()),
                    ..Failure::before_switch(
                        format!("freeze failed ({err}) and the thaw failed too: {e}"),
                        Some(&err),
                    )
                });
            }
            if err.is_agent_unavailable() {
                unavailable(agent_reason(&err))
            } else {
                Err(Failure::before_switch(
                    format!("freeze failed: {err}"),
                    Some(&err),
                ))
            }
        }
    }
}

/// Thaws a freeze this operation made; retries once after looking when the first thaw fails.
/// Returns the error if the guest may still be frozen.
async fn thaw_owned<V: VmOps>(ops: &V, plan: &Plan) -> Option<String> {
    let Err(first) = ops.thaw(plan.vm).await else {
        return None;
    };
    tracing::warn!(vm = %plan.vm, error = %first, "thaw failed; checking the guest");
    match ops.freeze_state(plan.vm, plan.agent_timeout).await {
        Ok(FreezeState::Thawed) => None,
        _ => match ops.thaw(plan.vm).await {
            Ok(_) => None,
            Err(second) => {
                tracing::error!(vm = %plan.vm, error = %second, "guest may still be frozen");
                Some(format!("thaw failed: {first}; again: {second}"))
            }
        },
    }
}

fn agent_reason(err: &VirtError) -> Reason {
    match err.kind() {
        VirtErrorKind::AgentUnresponsive => Reason::AgentNotResponding,
        VirtErrorKind::InvalidState => Reason::Paused,
        _ => Reason::NoAgent,
    }
}

/// A reason in words, for messages.
pub fn reason_text(reason: Reason) -> &'static str {
    match reason {
        Reason::NoAgent => "no guest agent",
        Reason::AgentNotResponding => "guest agent not responding",
        Reason::Paused => "VM paused",
        Reason::NotRunning => "VM not running",
        Reason::Skipped => "quiesce skipped",
        Reason::FrozenByCaller => "frozen by caller",
        Reason::AlreadyFrozen => "guest already frozen",
    }
}

fn crash(reason: Reason, timings: Timings) -> Outcome {
    Outcome {
        consistency: Consistency::CrashConsistent,
        reason: Some(reason),
        timings,
        thaw_error: None,
        pause: None,
    }
}

fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::snapshot::fake::{Fake, libvirt};
    use std::sync::Mutex;

    fn plan(quiesce: Quiesce, frozen_by_caller: bool) -> Plan {
        Plan {
            vm: Uuid::nil(),
            switches: vec![DiskSwitch {
                target: "vda".into(),
                new_path: "/new".into(),
            }],
            defined_switches: vec![DefinedSwitch {
                target: "vda".into(),
                old_path: "/old".into(),
                new_path: "/new".into(),
            }],
            all_targets: vec!["vda".into()],
            quiesce,
            frozen_by_caller,
            agent_timeout: Duration::from_secs(5),
            switch_deadline: Instant::now() + Duration::from_secs(600),
            memory: None,
        }
    }

    fn with_memory_plan(mode: crate::api::snapshot_types::MemoryMode) -> Plan {
        Plan {
            memory: Some(MemoryDump {
                file: "/proc/1/fd/9".into(),
                mode,
                timeout: Duration::from_secs(60),
            }),
            ..plan(Quiesce::Require, false)
        }
    }

    /// A snapshot with memory never freezes (even with quiesce=require, which a memory
    /// snapshot does not need), makes one call, and is refused on a stopped VM.
    #[tokio::test]
    async fn memory_snapshots_make_one_call_and_never_freeze() {
        use crate::api::snapshot_types::MemoryMode;
        let fake = Fake::running();
        let outcome = run(&fake, &with_memory_plan(MemoryMode::Paused))
            .await
            .unwrap();
        assert_eq!(outcome.consistency, Consistency::WithMemory);
        assert!(outcome.pause.is_some());
        assert_eq!(fake.calls(), ["state", "memory"]);

        let fake = Fake {
            snapshot: Some(Err(libvirt(1))),
            ..Fake::running()
        };
        let failure = run(&fake, &with_memory_plan(MemoryMode::Live))
            .await
            .unwrap_err();
        assert!(failure.switch_attempted, "the live domain must be read");
        assert_eq!(fake.calls(), ["state", "memory"]);

        let fake = Fake {
            state: Some(RunState::Stopped),
            ..Fake::running()
        };
        let failure = run(&fake, &with_memory_plan(MemoryMode::Paused))
            .await
            .unwrap_err();
        assert!(!failure.switch_attempted);
        assert_eq!(fake.calls(), ["state"], "nothing redefined, nothing saved");
    }

    #[tokio::test]
    async fn a_passed_deadline_thaws_and_switches_nothing() {
        let fake = Fake::running();
        let mut late = plan(Quiesce::Prefer, false);
        late.switch_deadline = Instant::now() - Duration::from_secs(1);
        let failure = run(&fake, &late).await.unwrap_err();
        assert!(!failure.switch_attempted);
        assert_eq!(
            fake.calls(),
            ["state", "timeout", "status", "freeze", "thaw"]
        );
    }

    async fn go(fake: &Fake, quiesce: Quiesce) -> Result<Outcome, Failure> {
        run(fake, &plan(quiesce, false)).await
    }

    /// No freeze without a durable intent to thaw: when the journal cannot be written, the
    /// guest is not frozen and nothing is switched.
    #[tokio::test]
    async fn no_freeze_without_a_recorded_intent() {
        let fake = Fake {
            journal_fails: true,
            ..Fake::running()
        };
        let failure = go(&fake, Quiesce::Prefer).await.unwrap_err();
        assert!(!failure.switch_attempted);
        assert!(
            failure.message.contains("not frozen"),
            "{}",
            failure.message
        );
        assert_eq!(fake.calls(), ["state", "timeout", "status", "journal"]);
    }

    #[tokio::test]
    async fn running_vm_with_agent_is_quiesced_and_thawed() {
        let fake = Fake::running();
        let outcome = go(&fake, Quiesce::Prefer).await.unwrap();
        assert_eq!(outcome.consistency, Consistency::Quiesced);
        assert_eq!(outcome.reason, None);
        assert_eq!(
            fake.calls(),
            ["state", "timeout", "status", "freeze", "snapshot", "thaw"]
        );
    }

    #[tokio::test]
    async fn no_agent_falls_back_once_or_fails_when_required() {
        for (code, reason) in [(74, Reason::NoAgent), (86, Reason::AgentNotResponding)] {
            let fake = Fake {
                freeze_states: Mutex::new(vec![Err(libvirt(code))]),
                ..Fake::running()
            };
            let outcome = go(&fake, Quiesce::Prefer).await.unwrap();
            assert_eq!(
                (outcome.consistency, outcome.reason),
                (Consistency::CrashConsistent, Some(reason))
            );
            assert_eq!(fake.calls(), ["state", "timeout", "status", "snapshot"]);

            let fake = Fake {
                freeze_states: Mutex::new(vec![Err(libvirt(code))]),
                ..Fake::running()
            };
            let failure = go(&fake, Quiesce::Require).await.unwrap_err();
            assert!(!failure.switch_attempted);
            assert_eq!(
                fake.calls(),
                ["state", "timeout", "status"],
                "nothing switched"
            );
        }
    }

    #[tokio::test]
    async fn freeze_timeout_that_took_effect_is_thawed_before_falling_back() {
        let fake = Fake {
            freeze_states: Mutex::new(vec![Ok(FreezeState::Thawed), Ok(FreezeState::Frozen)]),
            freeze: Some(Err(libvirt(86))),
            ..Fake::running()
        };
        let outcome = go(&fake, Quiesce::Prefer).await.unwrap();
        assert_eq!(outcome.reason, Some(Reason::AgentNotResponding));
        assert_eq!(
            fake.calls(),
            [
                "state", "timeout", "status", "freeze", "status", "thaw", "snapshot"
            ],
            "thawed before the switch, no thaw after it"
        );
    }

    #[tokio::test]
    async fn other_freeze_failures_fail_without_switching() {
        let fake = Fake {
            freeze_states: Mutex::new(vec![Ok(FreezeState::Thawed), Ok(FreezeState::Thawed)]),
            freeze: Some(Err(libvirt(1))),
            ..Fake::running()
        };
        let failure = go(&fake, Quiesce::Prefer).await.unwrap_err();
        assert!(!failure.switch_attempted);
        assert_eq!(failure.libvirt_code, Some(1));
        assert!(!fake.calls().contains(&"snapshot"));
    }

    #[tokio::test]
    async fn a_guest_frozen_before_is_never_thawed() {
        let fake = Fake {
            freeze_states: Mutex::new(vec![Ok(FreezeState::Frozen)]),
            ..Fake::running()
        };
        let outcome = go(&fake, Quiesce::Prefer).await.unwrap();
        assert_eq!(outcome.reason, Some(Reason::AlreadyFrozen));
        assert_eq!(fake.calls(), ["state", "timeout", "status", "snapshot"]);
    }

    /// Another tool freezes the guest between the status and the freeze: the agent refuses
    /// the freeze, and that freeze is never thawed (the ambiguous-failure path would see a
    /// frozen guest and thaw it).
    #[tokio::test]
    async fn a_guest_frozen_by_another_tool_meanwhile_is_never_thawed() {
        let fake = Fake {
            freeze_states: Mutex::new(vec![Ok(FreezeState::Thawed), Ok(FreezeState::Frozen)]),
            freeze: Some(Err(agent_frozen())),
            ..Fake::running()
        };
        let outcome = go(&fake, Quiesce::Prefer).await.unwrap();
        assert_eq!(outcome.reason, Some(Reason::AlreadyFrozen));
        assert_eq!(
            fake.calls(),
            ["state", "timeout", "status", "freeze", "disown", "snapshot"],
            "the freeze disowned, no thaw"
        );
        // If that cannot be recorded, nothing is switched (and nothing thawed).
        let fake = Fake {
            freeze: Some(Err(agent_frozen())),
            disown_fails: true,
            ..Fake::running()
        };
        let failure = go(&fake, Quiesce::Prefer).await.unwrap_err();
        assert!(!failure.switch_attempted);
        assert_eq!(
            fake.calls(),
            ["state", "timeout", "status", "freeze", "disown"]
        );
    }

    /// libvirt's error for a freeze the agent refused because the guest is frozen (seen on
    /// the fixture's guest).
    fn agent_frozen() -> VirtError {
        VirtError::Libvirt {
            op: "freeze guest filesystems",
            code: 1,
            message: "internal error: unable to execute QEMU agent command \
                      'guest-fsfreeze-freeze': Command guest-fsfreeze-freeze has been \
                      disabled: the agent is in frozen state"
                .into(),
        }
    }

    #[tokio::test]
    async fn frozen_by_caller_and_skip_make_no_agent_call() {
        let fake = Fake::running();
        let outcome = run(&fake, &plan(Quiesce::Prefer, true)).await.unwrap();
        assert_eq!(outcome.reason, Some(Reason::FrozenByCaller));
        assert_eq!(fake.calls(), ["state", "snapshot"]);
        let fake = Fake::running();
        let outcome = go(&fake, Quiesce::Skip).await.unwrap();
        assert_eq!(outcome.reason, Some(Reason::Skipped));
        assert_eq!(fake.calls(), ["state", "snapshot"]);
    }

    #[tokio::test]
    async fn failed_switch_still_thaws_and_is_never_retried() {
        let fake = Fake {
            snapshot: Some(Err(libvirt(1))),
            ..Fake::running()
        };
        let failure = go(&fake, Quiesce::Prefer).await.unwrap_err();
        assert!(failure.switch_attempted);
        assert_eq!(
            fake.calls(),
            ["state", "timeout", "status", "freeze", "snapshot", "thaw"]
        );
    }

    #[tokio::test]
    async fn failed_thaw_is_checked_retried_and_reported() {
        let fake = Fake {
            freeze_states: Mutex::new(vec![Ok(FreezeState::Thawed), Ok(FreezeState::Frozen)]),
            thaws: Mutex::new(vec![Err(libvirt(86)), Err(libvirt(86))]),
            ..Fake::running()
        };
        let outcome = go(&fake, Quiesce::Prefer).await.unwrap();
        assert!(outcome.thaw_error.is_some());
        assert_eq!(fake.calls().iter().filter(|c| **c == "thaw").count(), 2);
    }

    #[tokio::test]
    async fn unbounded_agent_is_never_called() {
        let fake = Fake {
            timeout_fails: true,
            ..Fake::running()
        };
        let outcome = go(&fake, Quiesce::Prefer).await.unwrap();
        assert_eq!(outcome.reason, Some(Reason::NoAgent));
        assert_eq!(fake.calls(), ["state", "timeout", "snapshot"]);
    }

    #[tokio::test]
    async fn paused_and_stopped_vms() {
        let fake = Fake {
            state: Some(RunState::Paused),
            ..Fake::running()
        };
        assert_eq!(
            go(&fake, Quiesce::Prefer).await.unwrap().reason,
            Some(Reason::Paused)
        );
        assert_eq!(fake.calls(), ["state", "snapshot"]);
        assert!(go(&fake, Quiesce::Require).await.is_err());

        let fake = Fake {
            state: Some(RunState::Stopped),
            ..Fake::running()
        };
        assert_eq!(
            go(&fake, Quiesce::Prefer).await.unwrap().reason,
            Some(Reason::NotRunning)
        );
        assert_eq!(fake.calls(), ["state", "redefine"]);
    }
}
