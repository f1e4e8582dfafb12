//! Snapshots with memory through `VM.snapshot` on a fake hypervisor and real volumes: what a
//! done one records (its result, the configuration volume), what a failed one leaves (the new
//! volume gone, the memory volumes ILLEGAL), and what is refused before any job exists.

use serde_json::json;
use uuid::Uuid;

use crate::jobs::vm_jobs::JobStatus;
use crate::services::testing::{Bed, job_end, params};
use crate::virt::fake::{FakeVm, libvirt_error};

/// A VM with 128 MiB of RAM running on a one-volume image; the image, its volume, and a new
/// volume made on it for the snapshot.
async fn vm_and_new_volume(bed: &Bed) -> (Uuid, Uuid, Uuid, Uuid) {
    let (image, volumes) = bed.chain(1).await;
    let vm = Uuid::new_v4();
    bed.fake
        .add(FakeVm::running(vm).with_chain("vda", &bed.leaf_first(image, &volumes)));
    bed.fake.edit(vm, |v| {
        v.view.xml = format!("<domain><uuid>{vm}</uuid><memory unit='MiB'>128</memory></domain>");
    });
    let new = Uuid::new_v4();
    bed.volume(image, new, Some(volumes[0])).await;
    (vm, image, volumes[0], new)
}

fn snapshot(
    bed: &Bed,
    (vm, image, base, new): (Uuid, Uuid, Uuid, Uuid),
    dump: (Uuid, Uuid),
    conf: (Uuid, Uuid),
    job: Uuid,
) -> crate::api::vm_types::SnapshotParams {
    params(json!({
        "vmID": vm, "jobUUID": job,
        "snapDrives": [{"domainID": bed.domain, "imageID": image, "baseVolumeID": base, "volumeID": new}],
        "snapMemory": format!("{},{},{},{},{},{}", bed.domain, bed.pool, dump.0, dump.1, conf.0, conf.1),
    }))
}

/// A done snapshot with memory made one libvirt call and no freeze, says what it saved, and
/// left a configuration a restore reads, for this VM and this dump.
#[tokio::test]
async fn a_snapshot_with_memory_saves_its_configuration_and_reports_the_memory() {
    let bed = Bed::open().await;
    let ids = vm_and_new_volume(&bed).await;
    let dump = bed.raw_volume(256 << 20).await;
    let conf = bed.raw_volume(1 << 20).await;
    let job = Uuid::new_v4();
    bed.services
        .snapshot
        .snapshot(snapshot(&bed, ids, dump, conf, job))
        .await
        .expect("VM.snapshot");
    let end = job_end(&bed.services, job).await;
    assert_eq!(end.status, JobStatus::Done, "{end:?}");
    let result = serde_json::to_value(&end.result).unwrap();
    assert_eq!(result["consistency"], "with-memory", "{result}");
    assert_eq!(result["memory"]["mode"], "paused", "{result}");
    assert_eq!(result["memory"]["dumpVolume"], dump.1.to_string());
    assert_eq!(bed.fake.count("memory_snapshot"), 1);
    assert_eq!(bed.fake.count("freeze"), 0, "no freeze with memory");

    let storage = &bed.services.storage;
    let held = storage
        .open_memory_volume(crate::services::storage::MemoryVolumeId::new(
            bed.domain, conf,
        ))
        .await
        .unwrap();
    let saved = storage.read_memory_state(&held).await.expect("readable");
    assert_eq!(saved.vm_id, ids.0);
    assert_eq!(saved.dump.volume_id, dump.1);
    assert_eq!(
        saved.disks[0].volume.volume_id, ids.2,
        "the disk's volume at the dump"
    );
}

/// A snapshot with memory that libvirt refuses: the new volume deleted, both memory volumes
/// ILLEGAL.
#[tokio::test]
async fn a_failed_snapshot_with_memory_leaves_its_memory_volumes_illegal() {
    let bed = Bed::open().await;
    let ids = vm_and_new_volume(&bed).await;
    let dump = bed.raw_volume(256 << 20).await;
    let conf = bed.raw_volume(1 << 20).await;
    bed.fake.fail_next(
        "memory_snapshot",
        libvirt_error("create external snapshot with memory", 1),
    );
    let job = Uuid::new_v4();
    bed.services
        .snapshot
        .snapshot(snapshot(&bed, ids, dump, conf, job))
        .await
        .expect("VM.snapshot");
    let end = job_end(&bed.services, job).await;
    assert_eq!(end.status, JobStatus::Failed, "{end:?}");
    assert_eq!(bed.legality(dump).await, "ILLEGAL");
    assert_eq!(bed.legality(conf).await, "ILLEGAL");
    assert!(
        bed.info(ids.1, ids.3).await.is_err(),
        "the new volume is gone"
    );
}

/// Refused before any job exists, nothing changed: a dump volume smaller than the RAM needs,
/// and the VM's own disk named as the dump.
#[tokio::test]
async fn a_small_dump_or_a_disk_as_the_dump_is_refused_untouched() {
    let bed = Bed::open().await;
    let ids = vm_and_new_volume(&bed).await;
    let conf = bed.raw_volume(1 << 20).await;
    let small = bed.raw_volume(128 << 20).await;
    let err = bed
        .services
        .snapshot
        .snapshot(snapshot(&bed, ids, small, conf, Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");

    // A RAW volume the VM uses as a disk: its data would be overwritten by the dump.
    let disk = bed.raw_volume(512 << 20).await;
    let path = bed.path(disk.0, disk.1);
    bed.fake.edit(ids.0, |v| {
        v.disks
            .push(FakeVm::running(ids.0).with_disk("vdb", &path).disks[0].clone());
    });
    let err = bed
        .services
        .snapshot
        .snapshot(snapshot(&bed, ids, disk, conf, Uuid::new_v4()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is a disk of a VM"), "{err}");
    assert_eq!(bed.fake.count("memory_snapshot"), 0);
    assert_eq!(bed.legality(conf).await, "LEGAL");
}
