//! Clones of a real guest from one of its snapshots: a full copy (`SDM.copy_data`, the chain
//! collapsed by qemu-img convert) and a linked clone (a new leaf on the snapshot's volume,
//! instant). Both boot with the snapshot's files and a new VM generation id at their first
//! boot only; the source VM is refused snapshots and merges while the copy reads its image;
//! a copy from the volume a VM writes is refused; a full disk fails the copy with the
//! destination ILLEGAL and the source untouched.

mod common;

use std::time::Duration;

use common::chain::{read_marker, take_snapshot, wait_job, write_marker};
use common::domain::{Fixture, assert_success, new_id};
use common::engine::{EngineVm, Undefine, engine_xml, vm_name};
use common::guest::GuestSlot;
use common::{libvirt, wait_until};
use serde_json::{Value, json};

fn endpoint(f: &Fixture, image: &str, volume: &str) -> Value {
    json!({"endpoint_type": "div", "sd_id": f.domain, "img_id": image, "vol_id": volume})
}

/// A new, empty 64 MiB volume in a new image; returns (image, volume).
fn new_destination(f: &Fixture) -> (String, String) {
    let (image, volume) = (new_id(), new_id());
    assert_success(&f.create(&image, &volume, json!({"size": (64u64 << 20).to_string()})));
    (image, volume)
}

fn start_copy(f: &Fixture, source: Value, destination: Value) -> String {
    let job = new_id();
    let params = json!({"job_id": job, "source": source, "destination": destination});
    assert_eq!(f.daemon.ok("SDM.copy_data", params), json!(true));
    job
}

#[test]
fn full_and_linked_clones_boot_with_the_snapshot_s_files_and_a_new_generation() {
    let Some(_conn) = libvirt() else { return };
    let _slots = (GuestSlot::acquire(), GuestSlot::acquire());
    let mut f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let (vm, genid) = (new_id(), new_id());
    let (source, _) = EngineVm::create(&f, &vm, &image, &base, Some(&genid));
    write_marker(|c: &str| source.exec(c), "A");
    let top = take_snapshot(&f, &vm, &image, &base, json!({}));
    write_marker(|c: &str| source.exec(c), "B");

    // The volume the VM writes changes under a copy: refused.
    let (dst_image, dst) = new_destination(&f);
    let (code, message) = f.daemon.err(
        "SDM.copy_data",
        json!({"job_id": new_id(), "source": endpoint(&f, &image, &top),
               "destination": endpoint(&f, &dst_image, &dst)}),
    );
    assert_eq!(code, 1000, "{message}");
    assert!(message.contains("copy one of its snapshots"), "{message}");

    // A full copy of the snapshot; while it reads the image, its VM's chain stays.
    let marker = f.daemon.restart_paused_at("sdm:copy");
    let job = start_copy(
        &f,
        endpoint(&f, &image, &base),
        endpoint(&f, &dst_image, &dst),
    );
    assert!(wait_until(Duration::from_secs(30), || marker.exists()));
    let next = new_id();
    assert_success(&f.create(
        &image,
        &next,
        json!({"srcVolUUID": top, "size": (64u64 << 20).to_string()}),
    ));
    let (code, message) = f.daemon.err(
        "VM.snapshot",
        json!({"vmID": vm, "snapDrives": [{"domainID": f.domain, "imageID": image,
               "baseVolumeID": top, "volumeID": next}]}),
    );
    assert_eq!(code, 91, "{message}");
    assert!(message.contains("being copied"), "{message}");
    let (code, message) = f.daemon.err(
        "VM.merge",
        json!({"vmID": vm, "drive": {"poolID": f.pool, "domainID": f.domain, "imageID": image,
               "volumeID": top}, "baseVolUUID": base, "topVolUUID": top}),
    );
    assert_eq!(code, 52, "{message}");
    // Nor does a VM start on the image's leaf meanwhile: it would write under the copy.
    let other = new_id();
    let _undefine = Undefine(other.clone());
    let files = tempfile::tempdir().unwrap();
    let xml = engine_xml(&f, &other, &vm_name("copied"), &image, &next, files.path());
    let (code, message) = f.daemon.err(
        "VM.create",
        json!({"vmID": other, "vmParams": {"xml": xml}}),
    );
    assert_eq!(code, 1000, "{message}");
    assert!(message.contains("being copied"), "{message}");
    std::fs::remove_file(&marker).unwrap();
    let info = wait_job(&f, &job, Duration::from_secs(120));
    assert_eq!(info["status"], "done", "{info}; log:\n{}", f.daemon.log());
    assert_eq!(
        (info["job_type"].as_str(), info["description"].as_str()),
        (Some("storage"), Some("copy_data"))
    );
    let copied = f.info(&dst_image, &dst);
    assert_eq!(copied["legality"], "LEGAL");
    assert_eq!(copied["generation"], 1);

    // It boots as the snapshot was, with a new generation id the first time only.
    let clone_vm = new_id();
    let (clone, _) = EngineVm::create(&f, &clone_vm, &dst_image, &dst, Some(&genid));
    assert_eq!(read_marker(|c: &str| clone.exec(c)), "A");
    assert_ne!(clone.genid().as_deref(), Some(genid.as_str()));
    f.daemon.ok("VM.destroy", json!({"vmID": clone_vm}));
    drop(clone);
    let (clone, _) = EngineVm::create(&f, &clone_vm, &dst_image, &dst, Some(&genid));
    assert_eq!(clone.genid().as_deref(), Some(genid.as_str()));
    f.daemon.ok("VM.destroy", json!({"vmID": clone_vm}));
    drop(clone);

    // A linked clone: a new leaf on the snapshot's volume, in the same image.
    let linked = new_id();
    assert_success(&f.create(
        &image,
        &linked,
        json!({"srcVolUUID": base, "size": (64u64 << 20).to_string()}),
    ));
    let linked_vm = new_id();
    let (clone, _) = EngineVm::create(&f, &linked_vm, &image, &linked, Some(&genid));
    assert_eq!(read_marker(|c: &str| clone.exec(c)), "A");
    assert_ne!(clone.genid().as_deref(), Some(genid.as_str()));
    // The source VM still writes its own leaf; its snapshot's volume now has two children,
    // so merging into it is refused.
    assert_eq!(read_marker(|c: &str| source.exec(c)), "B");
    let (code, message) = f.daemon.err(
        "VM.merge",
        json!({"vmID": vm, "drive": {"poolID": f.pool, "domainID": f.domain, "imageID": image,
               "volumeID": top}, "baseVolUUID": base, "topVolUUID": top}),
    );
    assert_eq!(code, 52, "{message}");
    assert!(
        message.contains("other volumes are based on it"),
        "{message}"
    );
    f.daemon.ok("VM.destroy", json!({"vmID": linked_vm}));
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
}

#[test]
fn a_full_disk_fails_the_copy_with_the_destination_illegal_and_the_source_untouched() {
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let path = f.image_dir(&image).join(&base);
    common::guest::qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x44 0 16M",
        path.to_str().unwrap(),
    ]);
    let before = std::fs::read(f.image_dir(&image).join(&base)).unwrap();
    let dst_image = new_id();
    let _mount = common::Tmpfs::mount(&f.image_dir(&dst_image), "8m");
    let dst = new_id();
    assert_success(&f.create(&dst_image, &dst, json!({"size": (64u64 << 20).to_string()})));
    let job = start_copy(
        &f,
        endpoint(&f, &image, &base),
        endpoint(&f, &dst_image, &dst),
    );
    let info = wait_job(&f, &job, Duration::from_secs(60));
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(info["error"]["code"], 261, "{info}");
    assert_eq!(f.info(&dst_image, &dst)["legality"], "ILLEGAL");
    assert_eq!(f.info(&image, &base)["legality"], "LEGAL");
    assert!(
        std::fs::read(f.image_dir(&image).join(&base)).unwrap() == before,
        "the copy changed its source"
    );
}
