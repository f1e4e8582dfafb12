//! The live merge's decisions, through `VM.merge` on a fake hypervisor and real volumes: how
//! the pivot is retried and given up, what a commit that ends without a pivot means, what is
//! refused before anything starts, and how a restart ends a merge from its journal.

use std::collections::VecDeque;

use serde_json::json;
use uuid::Uuid;

use crate::api::ApiError;
use crate::jobs::vm_jobs::JobStatus;
use crate::services::testing::{Bed, job, job_end, params};
use crate::virt::fake::{FakeHypervisor, FakeVm};
use crate::virt::{BlockJob, Conflict, Pivot};

/// A commit's block job as libvirt shows it; `ready` once an active commit may pivot.
fn commit(ready: bool) -> Option<BlockJob> {
    Some(BlockJob {
        cur: if ready { 100 } else { 40 },
        end: 100,
        bandwidth: 0,
        ready,
    })
}

/// A VM running on a two-volume image (base, top) as its disk vda, and that image.
async fn vm_on_two_volumes(bed: &Bed) -> (Uuid, Uuid, [Uuid; 2]) {
    let (image, volumes) = bed.chain(2).await;
    let vm = Uuid::new_v4();
    bed.fake
        .add(FakeVm::running(vm).with_chain("vda", &bed.leaf_first(image, &volumes)));
    (vm, image, [volumes[0], volumes[1]])
}

/// `VM.merge` of `top` into `base` on the VM's disk whose leaf is `leaf`, as job `job`.
fn merge_params(
    bed: &Bed,
    vm: Uuid,
    image: Uuid,
    leaf: Uuid,
    (base, top): (Uuid, Uuid),
    job: Uuid,
) -> crate::api::merge_types::MergeParams {
    params(json!({
        "vmID": vm,
        "drive": {"poolID": bed.pool, "domainID": bed.domain, "imageID": image, "volumeID": leaf},
        "baseVolUUID": base, "topVolUUID": top, "jobUUID": job,
    }))
}

/// The calls of the kinds a merge's decisions are made of (not the reads between them).
fn decisions(fake: &FakeHypervisor) -> Vec<String> {
    let kinds = ["block_commit", "pivot", "abort_block_job", "record_merge"];
    fake.calls()
        .into_iter()
        .filter(|c| kinds.contains(&c.split(' ').next().unwrap_or_default()))
        .collect()
}

fn set_block_jobs(fake: &FakeHypervisor, vm: Uuid, answers: Vec<Option<BlockJob>>) {
    fake.edit(vm, |v| {
        v.block_jobs.insert("vda".into(), VecDeque::from(answers));
    });
}

/// A pivot libvirt answers "not ready" is asked again; the second, done, ends the merge:
/// `top` is deleted, `base` is the leaf again, the VM's recorded chain drops `top`.
#[tokio::test]
async fn a_pivot_not_ready_is_retried_and_the_merge_ends_on_base() {
    let bed = Bed::open().await;
    let (vm, image, [base, top]) = vm_on_two_volumes(&bed).await;
    set_block_jobs(&bed.fake, vm, vec![commit(true)]);
    bed.fake.edit(vm, |v| {
        v.pivots = VecDeque::from([Pivot::NotReady, Pivot::Done]);
    });
    let id = Uuid::new_v4();
    let p = merge_params(&bed, vm, image, top, (base, top), id);
    bed.services
        .merge
        .merge(p)
        .await
        .expect("VM.merge accepted");
    tokio::time::pause();

    let end = job_end(&bed.services, id).await;
    assert_eq!(end.status, JobStatus::Done, "{end:?}");
    let result = serde_json::to_value(&end).unwrap();
    assert_eq!(result["result"]["pivotAttempts"], 2, "{result}");
    assert_eq!(
        decisions(&bed.fake),
        [
            "block_commit vda",
            "pivot vda",
            "pivot vda",
            "record_merge vda"
        ]
    );
    assert!(bed.info(image, top).await.is_err(), "top is deleted");
    let base_info = bed.info(image, base).await.unwrap();
    assert_eq!(base_info.legality, "LEGAL");
    assert!(base_info.children.is_empty(), "base is the leaf again");
}

/// Five pivots that fail: the commit is aborted, the job fails (52), and the VM stays on
/// `top`, which is LEGAL again (it was ILLEGAL only around the pivot).
#[tokio::test]
async fn a_pivot_that_keeps_failing_is_aborted_and_the_leaf_made_legal_again() {
    let bed = Bed::open().await;
    let (vm, image, [base, top]) = vm_on_two_volumes(&bed).await;
    set_block_jobs(&bed.fake, vm, vec![commit(true)]);
    bed.fake
        .edit(vm, |v| v.pivots = VecDeque::from(vec![Pivot::NotReady; 5]));
    let id = Uuid::new_v4();
    let p = merge_params(&bed, vm, image, top, (base, top), id);
    bed.services
        .merge
        .merge(p)
        .await
        .expect("VM.merge accepted");
    tokio::time::pause();

    let end = job_end(&bed.services, id).await;
    assert_eq!(end.status, JobStatus::Failed);
    let error = end.error.clone().expect("a failed job says why");
    assert_eq!(error.code, 52, "{error:?}");
    assert!(
        error.message.contains("the pivot failed 5 times"),
        "{error:?}"
    );
    let mut expected = vec!["block_commit vda".to_owned()];
    expected.extend(std::iter::repeat_n("pivot vda".to_owned(), 5));
    expected.push("abort_block_job vda".into());
    assert_eq!(decisions(&bed.fake), expected);
    let top_info = bed.info(image, top).await.expect("top is kept");
    assert_eq!(top_info.legality, "LEGAL");
    let disk = bed.fake.vm(vm).unwrap().disks[0].clone();
    assert_eq!(disk.path, Some(bed.path(image, top)), "the VM stays on top");
}

/// A commit's job that disappears while the VM still uses `top` merged nothing: the job
/// fails, no pivot is asked, `top` stays in the chain.
#[tokio::test]
async fn a_commit_that_disappears_unmerged_fails_without_a_pivot() {
    let bed = Bed::open().await;
    let (vm, image, [base, top]) = vm_on_two_volumes(&bed).await;
    set_block_jobs(&bed.fake, vm, vec![commit(false), None]);
    let id = Uuid::new_v4();
    let p = merge_params(&bed, vm, image, top, (base, top), id);
    bed.services
        .merge
        .merge(p)
        .await
        .expect("VM.merge accepted");
    tokio::time::pause();

    let end = job_end(&bed.services, id).await;
    assert_eq!(end.status, JobStatus::Failed);
    let message = end.error.unwrap().message;
    assert!(
        message.contains("no block commit runs on the disk"),
        "{message}"
    );
    assert_eq!(decisions(&bed.fake), ["block_commit vda"]);
    assert_eq!(bed.info(image, top).await.unwrap().legality, "LEGAL");
    assert_eq!(bed.info(image, base).await.unwrap().children, [top]);
}

/// An internal volume's commit ends by itself (no pivot): once QEMU's chain no longer holds
/// `top`, its child is rebased on `base` in the metadata and `top` deleted.
#[tokio::test]
async fn an_internal_commit_that_left_the_chain_is_finished_without_a_pivot() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(3).await;
    let [base, top, leaf] = [volumes[0], volumes[1], volumes[2]];
    let vm = Uuid::new_v4();
    bed.fake
        .add(FakeVm::running(vm).with_chain("vda", &bed.leaf_first(image, &volumes)));
    set_block_jobs(&bed.fake, vm, vec![commit(false), None]);
    let id = Uuid::new_v4();
    let p = merge_params(&bed, vm, image, leaf, (base, top), id);
    bed.services
        .merge
        .merge(p)
        .await
        .expect("VM.merge accepted");
    // QEMU's commit ends: the chain is leaf, base.
    let merged = bed.leaf_first(image, &[base, leaf]);
    bed.fake.edit(vm, |v| {
        *v = FakeVm::running(vm).with_chain("vda", &merged);
        v.block_jobs.insert("vda".into(), VecDeque::from([None]));
    });
    tokio::time::pause();

    let end = job_end(&bed.services, id).await;
    assert_eq!(end.status, JobStatus::Done, "{end:?}");
    assert_eq!(
        decisions(&bed.fake),
        ["block_commit vda", "record_merge vda"]
    );
    assert!(bed.info(image, top).await.is_err(), "top is deleted");
    assert_eq!(bed.info(image, leaf).await.unwrap().parent, base);
}

/// Refused before anything starts: an unknown VM (1), a disk with a block job running (52).
/// No commit is asked and no job is left.
#[tokio::test]
async fn an_unknown_vm_or_a_running_block_job_is_refused_untouched() {
    let bed = Bed::open().await;
    let (vm, image, [base, top]) = vm_on_two_volumes(&bed).await;
    let id = Uuid::new_v4();

    let unknown = merge_params(&bed, Uuid::new_v4(), image, top, (base, top), id);
    let err = ApiError::from(bed.services.merge.merge(unknown).await.unwrap_err());
    assert_eq!(err.code(), 1, "{err}");

    bed.fake
        .edit(vm, |v| v.conflict = Some(Conflict::BlockJob("vda".into())));
    let p = merge_params(&bed, vm, image, top, (base, top), id);
    let err = ApiError::from(bed.services.merge.merge(p).await.unwrap_err());
    assert_eq!(err.code(), 52, "{err}");
    assert!(
        err.to_string().contains("disk vda has a block job running"),
        "{err}"
    );

    assert_eq!(decisions(&bed.fake), Vec::<String>::new());
    assert!(job(&bed.services, id).is_none(), "no job is shown");
    let top_info = bed.info(image, top).await.unwrap();
    assert_eq!(top_info.legality, "LEGAL");
    assert_eq!(bed.info(image, base).await.unwrap().children, [top]);
}

/// A merge left running when rvdsmd stopped is ended at the next start by what the domain
/// shows: a disk already on `base` (QEMU pivoted) finishes it without asking anything of
/// libvirt again; a disk still on `top` with no commit fails it and keeps `top`.
#[tokio::test]
async fn an_interrupted_merge_is_ended_by_what_the_domain_shows_after_a_restart() {
    for pivoted in [true, false] {
        let bed = Bed::open().await;
        let (vm, image, [base, top]) = vm_on_two_volumes(&bed).await;
        set_block_jobs(&bed.fake, vm, vec![commit(false)]);
        let id = Uuid::new_v4();
        let p = merge_params(&bed, vm, image, top, (base, top), id);
        bed.services
            .merge
            .merge(p)
            .await
            .expect("VM.merge accepted");
        bed.services.merge.stop();
        // No qemu-img runs from here to the job's end: its timeout cannot fire early.
        tokio::time::pause();

        let after = FakeHypervisor::new();
        let chain = if pivoted {
            bed.leaf_first(image, &[base])
        } else {
            bed.leaf_first(image, &[base, top])
        };
        after.add(FakeVm::running(vm).with_chain("vda", &chain));
        let (services, interrupted) = bed.reopen(&after).await;
        services.recover(interrupted).await;

        let end = job_end(&services, id).await;
        assert_eq!(
            decisions(&after),
            if pivoted {
                vec!["record_merge vda"]
            } else {
                vec![]
            }
        );
        if pivoted {
            assert_eq!(end.status, JobStatus::Done, "{end:?}");
            assert!(bed.info(image, top).await.is_err(), "top is deleted");
        } else {
            assert_eq!(end.status, JobStatus::Failed, "{end:?}");
            assert_eq!(bed.info(image, top).await.unwrap().legality, "LEGAL");
        }
        tokio::time::resume();
    }
}

/// A finished merge's journal entry shows the job again after a restart, with its outcome,
/// and nothing is asked of libvirt for it.
#[tokio::test]
async fn a_finished_merge_is_shown_again_after_a_restart() {
    let bed = Bed::open().await;
    let (vm, image, [base, top]) = vm_on_two_volumes(&bed).await;
    set_block_jobs(&bed.fake, vm, vec![commit(true)]);
    let id = Uuid::new_v4();
    let p = merge_params(&bed, vm, image, top, (base, top), id);
    bed.services
        .merge
        .merge(p)
        .await
        .expect("VM.merge accepted");
    tokio::time::pause();
    assert_eq!(job_end(&bed.services, id).await.status, JobStatus::Done);

    let after = FakeHypervisor::new();
    let (services, interrupted) = bed.reopen(&after).await;
    services.recover(interrupted).await;
    let shown = job(&services, id).expect("the finished job is shown again");
    assert_eq!(shown.status, JobStatus::Done);
    assert_eq!(shown.vm_id, Some(vm));
    assert_eq!(decisions(&after), Vec::<String>::new());
}

/// What the domain shows after a restart that interrupted a pivot.
#[derive(Debug, Clone, Copy)]
enum AfterRestart {
    /// The VM is gone with its definition: nothing tells whether QEMU pivoted.
    Gone,
    /// The VM stopped, its definition still on `top`: no pivot happened.
    StoppedOnTop,
    /// The VM runs on `base`: QEMU pivoted before rvdsmd stopped.
    RunningOnBase,
    /// The VM runs on `top` with the commit still ready: the pivot is asked again.
    RunningOnTop,
}

/// A merge stopped while libvirt's pivot call hung (journaled in its pivot phase, the leaf
/// ILLEGAL first) is judged at the next start by what the domain shows: a pivot that
/// happened is finished, one that did not leaves `top` LEGAL, a VM still running is pivoted
/// again, and a VM gone with its definition leaves `top` ILLEGAL (unusable, never stale).
#[tokio::test]
async fn a_merge_interrupted_in_its_pivot_is_judged_by_the_domain_after_a_restart() {
    use AfterRestart::*;
    for after_restart in [Gone, StoppedOnTop, RunningOnBase, RunningOnTop] {
        let bed = Bed::open().await;
        let (vm, image, [base, top]) = vm_on_two_volumes(&bed).await;
        set_block_jobs(&bed.fake, vm, vec![commit(true)]);
        bed.fake.hang_next("pivot");
        let id = Uuid::new_v4();
        let p = merge_params(&bed, vm, image, top, (base, top), id);
        bed.services
            .merge
            .merge(p)
            .await
            .expect("VM.merge accepted");
        tokio::time::pause();
        let asked = std::time::Instant::now();
        while bed.fake.count("pivot") == 0 {
            assert!(
                asked.elapsed() < std::time::Duration::from_secs(30),
                "no pivot"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let illegal = bed.info(image, top).await.unwrap().legality;
        assert_eq!(
            illegal, "ILLEGAL",
            "the leaf is marked before the pivot is asked"
        );

        let after = FakeHypervisor::new();
        let on_top = bed.leaf_first(image, &[base, top]);
        let on_base = bed.leaf_first(image, &[base]);
        match after_restart {
            Gone => {}
            StoppedOnTop => {
                let stopped = FakeVm::running(vm).with_status(crate::api::types::VmStatus::Down);
                after.add(stopped.with_chain("vda", &on_top));
            }
            RunningOnBase => {
                after.add(FakeVm::running(vm).with_chain("vda", &on_base));
            }
            RunningOnTop => {
                after.add(FakeVm::running(vm).with_chain("vda", &on_top));
                set_block_jobs(&after, vm, vec![commit(true)]);
            }
        }
        let (services, interrupted) = bed.reopen(&after).await;
        services.recover(interrupted).await;
        let end = job_end(&services, id).await;

        let top_now = bed.info(image, top).await.map(|i| i.legality);
        match after_restart {
            Gone => {
                assert_eq!(end.status, JobStatus::Failed, "{end:?}");
                assert!(end.error.unwrap().message.contains("stays ILLEGAL"));
                assert_eq!(top_now.unwrap(), "ILLEGAL");
                assert_eq!(decisions(&after), Vec::<String>::new());
            }
            StoppedOnTop => {
                assert_eq!(end.status, JobStatus::Failed, "{end:?}");
                assert_eq!(top_now.unwrap(), "LEGAL");
                assert_eq!(decisions(&after), Vec::<String>::new());
            }
            RunningOnBase => {
                assert_eq!(end.status, JobStatus::Done, "{end:?}");
                assert!(top_now.is_err(), "top is deleted");
                assert_eq!(decisions(&after), ["record_merge vda"]);
            }
            RunningOnTop => {
                assert_eq!(end.status, JobStatus::Done, "{end:?}");
                assert!(top_now.is_err(), "top is deleted");
                assert_eq!(decisions(&after), ["pivot vda", "record_merge vda"]);
            }
        }
        // The next bed creates volumes with qemu-img, under the real clock.
        tokio::time::resume();
    }
}
