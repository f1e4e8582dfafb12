//! `VM.freeze` / `VM.thaw` decisions on a fake hypervisor, with tokio's paused clock: the
//! auto-thaw at the deadline, a failed thaw retried until it takes, ownership (a guest frozen
//! by another tool is never taken over; a second freeze renews the deadline), and the records
//! a restarted rvdsmd keeps its promise from.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::services::FreezeErrorKind;
use crate::services::testing::{Bed, params};
use crate::virt::FreezeState;
use crate::virt::fake::{FakeHypervisor, FakeVm, libvirt_error};

/// A bed with a running VM; the clock paused from here on.
async fn bed_with_vm() -> (Bed, Uuid) {
    let bed = Bed::open().await;
    let vm = Uuid::new_v4();
    bed.fake.add(FakeVm::running(vm));
    tokio::time::pause();
    (bed, vm)
}

fn freeze(vm: Uuid, auto_thaw_seconds: u64) -> crate::api::vm_types::FreezeParams {
    params(json!({ "vmID": vm, "autoThawSeconds": auto_thaw_seconds }))
}

fn frozen(fake: &FakeHypervisor, vm: Uuid) -> bool {
    fake.vm(vm).expect("the VM is known").frozen
}

/// Lets the clock run `seconds` (the services' timers fire on the way).
async fn after(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    // The thaw's record removal runs on the blocking pool: let it land.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A freeze nobody thaws is thawed by rvdsmd at its deadline, not before, and its record
/// goes with it.
#[tokio::test]
async fn a_freeze_is_thawed_at_its_deadline() {
    let (bed, vm) = bed_with_vm().await;
    bed.services.freeze.freeze(freeze(vm, 30)).await.unwrap();
    assert!(frozen(&bed.fake, vm));
    let (by, _) = bed
        .services
        .freeze
        .owned_until(vm)
        .expect("rvdsm owns the freeze");
    assert_eq!(by, "VM.freeze");

    after(29).await;
    assert!(frozen(&bed.fake, vm), "still frozen before the deadline");
    assert_eq!(bed.fake.count("thaw"), 0);
    after(2).await;
    assert!(!frozen(&bed.fake, vm), "thawed at the deadline");
    assert_eq!(bed.fake.count("thaw"), 1);
    assert_eq!(bed.services.freeze.owned_until(vm), None);
}

/// A guest another tool froze is refused and never thawed by rvdsm, however long it waits.
#[tokio::test]
async fn a_guest_frozen_by_another_tool_is_refused_and_never_thawed() {
    let (bed, vm) = bed_with_vm().await;
    bed.fake.edit(vm, |v| v.frozen = true);
    let err = bed
        .services
        .freeze
        .freeze(freeze(vm, 30))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("already frozen by another tool"),
        "{err}"
    );
    assert_eq!(bed.fake.count("freeze"), 0);
    assert_eq!(bed.services.freeze.owned_until(vm), None);
    after(3600).await;
    assert_eq!(bed.fake.count("thaw"), 0);
    assert!(frozen(&bed.fake, vm));
}

/// A second freeze of a guest rvdsm froze does not freeze again: it renews the deadline,
/// and the first deadline passes without a thaw.
#[tokio::test]
async fn a_second_freeze_renews_the_deadline_without_freezing_again() {
    let (bed, vm) = bed_with_vm().await;
    bed.services.freeze.freeze(freeze(vm, 30)).await.unwrap();
    bed.services.freeze.freeze(freeze(vm, 100)).await.unwrap();
    assert_eq!(bed.fake.count("freeze"), 1);
    after(31).await;
    assert!(frozen(&bed.fake, vm), "the first deadline no longer holds");
    assert_eq!(bed.fake.count("thaw"), 0);
    after(70).await;
    assert!(!frozen(&bed.fake, vm));
    assert_eq!(bed.fake.count("thaw"), 1);
}

/// `VM.thaw` that the agent fails is reported (19, unresponsive) and keeps the record: the
/// deadline still thaws the guest. A thaw that works drops it.
#[tokio::test]
async fn a_thaw_that_fails_keeps_the_promise_to_thaw() {
    let (bed, vm) = bed_with_vm().await;
    bed.services.freeze.freeze(freeze(vm, 30)).await.unwrap();
    bed.fake.fail_next("thaw", libvirt_error("thaw", 86));
    let err = bed.services.freeze.thaw(vm).await.unwrap_err();
    assert_eq!(err.kind(), FreezeErrorKind::AgentUnresponsive, "{err}");
    assert!(
        bed.services.freeze.owned_until(vm).is_some(),
        "the record is kept"
    );
    after(31).await;
    assert!(!frozen(&bed.fake, vm), "the deadline thawed it");
    assert_eq!(bed.fake.count("thaw"), 2);
    assert_eq!(bed.services.freeze.owned_until(vm), None);
}

/// An auto-thaw that fails is retried with backoff (1 s, then 2 s) until it takes.
#[tokio::test]
async fn a_failed_auto_thaw_is_retried_until_it_takes() {
    let (bed, vm) = bed_with_vm().await;
    bed.services.freeze.freeze(freeze(vm, 10)).await.unwrap();
    bed.fake
        .fail_next("thaw", libvirt_error("thaw", 86))
        .fail_next("thaw", libvirt_error("thaw", 86));
    after(10).await;
    assert_eq!(bed.fake.count("thaw"), 1);
    assert!(frozen(&bed.fake, vm));
    after(1).await;
    assert_eq!(bed.fake.count("thaw"), 2, "retried after 1 s");
    after(1).await;
    assert_eq!(bed.fake.count("thaw"), 2, "the next wait is 2 s");
    after(1).await;
    assert_eq!(bed.fake.count("thaw"), 3);
    assert!(!frozen(&bed.fake, vm));
    assert_eq!(bed.services.freeze.owned_until(vm), None);
}

/// A restarted rvdsmd reads the freeze's record and thaws the guest at the same deadline;
/// a guest nobody froze through rvdsm is left alone.
#[tokio::test]
async fn a_restart_keeps_the_deadline_of_a_recorded_freeze() {
    let (bed, vm) = bed_with_vm().await;
    let other = Uuid::new_v4();
    bed.services.freeze.freeze(freeze(vm, 60)).await.unwrap();
    let (_, thaw_at) = bed.services.freeze.owned_until(vm).unwrap();

    let after_restart = FakeHypervisor::new();
    after_restart.add(FakeVm::running(vm));
    after_restart.add(FakeVm::running(other));
    after_restart.edit(vm, |v| v.frozen = true);
    after_restart.edit(other, |v| v.frozen = true);
    let (services, _interrupted) = bed.reopen(&after_restart).await;
    assert_eq!(
        services.freeze.owned_until(vm),
        Some(("VM.freeze".to_owned(), thaw_at))
    );
    after(50).await;
    assert!(frozen(&after_restart, vm), "not before the deadline");
    after(11).await;
    assert!(
        !frozen(&after_restart, vm),
        "thawed at the recorded deadline"
    );
    assert!(frozen(&after_restart, other), "never rvdsm's to thaw");
    assert_eq!(services.freeze.owned_until(vm), None);
}

/// A freeze that failed ambiguously (the agent timed out, and nobody can tell whether the
/// freeze took effect) is reported failed, and guarded: rvdsmd thaws the guest as soon as
/// the agent answers, retrying until then.
#[tokio::test]
async fn an_ambiguous_freeze_failure_is_guarded_until_the_agent_answers() {
    let (bed, vm) = bed_with_vm().await;
    bed.fake.edit(vm, |v| {
        v.freeze_states =
            VecDeque::from([Ok(FreezeState::Thawed), Err(libvirt_error("status", 86))]);
    });
    bed.fake
        .fail_next("freeze", libvirt_error("freeze", 86))
        .fail_next("thaw", libvirt_error("thaw", 86));
    let err = bed
        .services
        .freeze
        .freeze(freeze(vm, 30))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), FreezeErrorKind::AgentUnresponsive, "{err}");
    let (by, _) = bed.services.freeze.owned_until(vm).expect("guarded");
    assert_eq!(by, "VM.snapshot");
    // The hung agent wakes and runs the freeze after all.
    bed.fake.edit(vm, |v| v.frozen = true);
    after(0).await;
    assert_eq!(bed.fake.count("thaw"), 1, "tried at once");
    assert!(frozen(&bed.fake, vm));
    after(1).await;
    assert_eq!(bed.fake.count("thaw"), 2);
    assert!(!frozen(&bed.fake, vm), "thawed once the agent answered");
    assert_eq!(bed.services.freeze.owned_until(vm), None);
}

/// A freeze whose call reported an error but took effect (the guest is frozen after it)
/// counts as a freeze: rvdsm owns it and thaws it at its deadline.
#[tokio::test]
async fn a_freeze_error_that_took_effect_counts_as_a_freeze() {
    let (bed, vm) = bed_with_vm().await;
    bed.fake.edit(vm, |v| {
        v.freeze_states = VecDeque::from([Ok(FreezeState::Thawed), Ok(FreezeState::Frozen)]);
        v.frozen = true;
    });
    bed.fake.fail_next("freeze", libvirt_error("freeze", 86));
    bed.services
        .freeze
        .freeze(freeze(vm, 30))
        .await
        .expect("a freeze all the same");
    let (by, _) = bed.services.freeze.owned_until(vm).expect("rvdsm owns it");
    assert_eq!(by, "VM.freeze");
    after(31).await;
    assert!(!frozen(&bed.fake, vm));
    assert_eq!(bed.fake.count("thaw"), 1);
}

/// A freeze whose agent call never returns (libvirt bounds it with the agent timeout) holds
/// no lock a thaw needs: `VM.thaw` meanwhile still reaches the agent and answers.
#[tokio::test]
async fn a_hung_freeze_call_does_not_block_a_thaw() {
    let (bed, vm) = bed_with_vm().await;
    bed.fake.hang_next("freeze");
    let service = bed.services.freeze.clone();
    let hung = tokio::spawn(async move { service.freeze(freeze(vm, 30)).await });
    while bed.fake.count("freeze") == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let thawed = bed.services.freeze.thaw(vm).await;
    assert!(!hung.is_finished(), "the freeze call still hangs");
    hung.abort();
    thawed.expect("VM.thaw answers during a hung freeze");
    assert_eq!(bed.fake.count("thaw"), 1);
}
