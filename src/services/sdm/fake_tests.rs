//! The SDM jobs' ends on real volumes (qemu-img does the work), with a fake hypervisor saying
//! which VM uses what: `SDM.merge` then `StoragePool.finalizeMerge` (a cold merge), a
//! finalize refused without a merge, `SDM.copy_data`, refusals that start no job, and the
//! jobs shown again after a restart.

use serde_json::json;
use uuid::Uuid;

use crate::api::codes;
use crate::jobs::vm_jobs::JobStatus;
use crate::services::testing::{Bed, job, job_end, params};
use crate::virt::fake::{FakeHypervisor, FakeVm};

fn subchain(bed: &Bed, image: Uuid, base: Uuid, top: Uuid) -> serde_json::Value {
    json!({"sd_id": bed.domain, "img_id": image, "base_id": base, "top_id": top})
}

fn sdm_merge(
    bed: &Bed,
    job: Uuid,
    image: Uuid,
    base: Uuid,
    top: Uuid,
) -> crate::api::merge_types::SdmMergeParams {
    params(json!({ "job_id": job, "subchain_info": subchain(bed, image, base, top) }))
}

fn finalize(
    bed: &Bed,
    image: Uuid,
    base: Uuid,
    top: Uuid,
) -> crate::api::merge_types::PoolSubchainParams {
    params(json!({ "storagepoolID": bed.pool, "subchainInfo": subchain(bed, image, base, top) }))
}

fn endpoint(bed: &Bed, image: Uuid, volume: Uuid) -> serde_json::Value {
    json!({"endpoint_type": "div", "sd_id": bed.domain, "img_id": image, "vol_id": volume})
}

/// A cold merge: `SDM.merge` is a storage job that ends done; `finalizeMerge` then rebases
/// the leaf on `base` and deletes `top`.
#[tokio::test]
async fn a_cold_merge_ends_done_and_finalize_takes_top_out() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(3).await;
    let [base, top, leaf] = [volumes[0], volumes[1], volumes[2]];
    let id = Uuid::new_v4();
    bed.services
        .sdm
        .merge(sdm_merge(&bed, id, image, base, top))
        .await
        .expect("SDM.merge");
    let end = job_end(&bed.services, id).await;
    assert_eq!(end.status, JobStatus::Done, "{end:?}");
    assert_eq!(end.job_type, "storage");

    let task = bed
        .services
        .sdm
        .finalize_merge(finalize(&bed, image, base, top))
        .await
        .unwrap();
    let status = bed.wait_task(task).await;
    assert_eq!(status.task_result, "success", "{status:?}");
    assert_eq!(bed.info(image, leaf).await.unwrap().parent, base);
    assert!(bed.info(image, top).await.is_err(), "top is deleted");
}

/// A finalize with no successful `SDM.merge` of that subchain is refused: rebasing on a base
/// that lacks the top's data would lose it. Nothing changes.
#[tokio::test]
async fn a_finalize_without_a_merge_is_refused() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(3).await;
    let [base, top, leaf] = [volumes[0], volumes[1], volumes[2]];
    let err = bed
        .services
        .sdm
        .finalize_merge(finalize(&bed, image, base, top))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no SDM.merge"), "{err}");
    assert_eq!(bed.info(image, leaf).await.unwrap().parent, top);
    assert_eq!(bed.info(image, top).await.unwrap().parent, base);
}

/// An `SDM.merge` of an image a VM uses is refused before any job is made.
#[tokio::test]
async fn an_sdm_merge_of_an_image_in_use_starts_no_job() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(2).await;
    let vm = Uuid::new_v4();
    bed.fake
        .add(FakeVm::running(vm).with_chain("vda", &bed.leaf_first(image, &volumes)));
    let id = Uuid::new_v4();
    let err = bed
        .services
        .sdm
        .merge(sdm_merge(&bed, id, image, volumes[0], volumes[1]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::CANNOT_DELETE_VOLUME, "{err}");
    assert!(job(&bed.services, id).is_none());
}

/// `SDM.copy_data` of a chain into another image's volume ends done; one asking to copy
/// bitmaps is refused without a job.
#[tokio::test]
async fn copy_data_ends_done_and_bitmaps_are_refused() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(2).await;
    let (copy, copied) = bed.chain(1).await;
    let id = Uuid::new_v4();
    let p = json!({
        "job_id": id,
        "source": endpoint(&bed, image, volumes[1]),
        "destination": endpoint(&bed, copy, copied[0]),
    });
    let mut with_bitmaps = p.clone();
    with_bitmaps["copy_bitmaps"] = json!(true);
    assert!(
        bed.services
            .sdm
            .copy_data(params(with_bitmaps))
            .await
            .is_err()
    );
    assert!(job(&bed.services, id).is_none());

    bed.services
        .sdm
        .copy_data(params(p))
        .await
        .expect("SDM.copy_data");
    let end = job_end(&bed.services, id).await;
    assert_eq!(end.status, JobStatus::Done, "{end:?}");
    assert_eq!(end.description, "copy_data");
}

/// A restarted rvdsmd shows the SDM jobs again with how they ended.
#[tokio::test]
async fn sdm_jobs_are_shown_again_after_a_restart() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(2).await;
    let id = Uuid::new_v4();
    bed.services
        .sdm
        .merge(sdm_merge(&bed, id, image, volumes[0], volumes[1]))
        .await
        .unwrap();
    assert_eq!(job_end(&bed.services, id).await.status, JobStatus::Done);

    let (services, interrupted) = bed.reopen(&FakeHypervisor::new()).await;
    services.recover(interrupted).await;
    let shown = job(&services, id).expect("shown again");
    assert_eq!(
        (shown.status, shown.description.to_string()),
        (JobStatus::Done, "merge_subchain".to_owned())
    );
}

/// An `SDM.merge` of a top whose file is not the qcow2 image its metadata says is refused
/// (200) before any job; the chain is unchanged, and a finalize is then refused too.
#[tokio::test]
async fn an_sdm_merge_of_a_broken_top_starts_no_job_and_allows_no_finalize() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(3).await;
    let [base, top, leaf] = [volumes[0], volumes[1], volumes[2]];
    std::fs::write(bed.path(image, top), b"not a qcow2 image").unwrap();
    let id = Uuid::new_v4();
    let err = bed
        .services
        .sdm
        .merge(sdm_merge(&bed, id, image, base, top))
        .await
        .unwrap_err();
    assert_eq!(err.code(), 200, "{err}");
    assert!(job(&bed.services, id).is_none());
    let err = bed
        .services
        .sdm
        .finalize_merge(finalize(&bed, image, base, top))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no SDM.merge"), "{err}");
    assert_eq!(bed.info(image, leaf).await.unwrap().parent, top);
    assert_eq!(bed.info(image, top).await.unwrap().parent, base);
}
