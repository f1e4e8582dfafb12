//! No link in a storage domain is followed by rvdsm or by the tools it starts (qemu-img,
//! QEMU, sanlock). A co-tenant of a shared domain plants a symbolic link at the file an
//! operation touches, pointing at a host file outside the domain (the victim): a copy's
//! destination, a cold merge's base, a clone's parent, a revert's new leaf (swapped in while
//! the create is paused), the leases volume `dom_md/xleases`, a volume's `.lease` that sanlock
//! takes for an SDM job, the shared `master/` records.
//! Each operation fails with an error that says why, and the victim keeps its bytes. A qcow2
//! header whose backing file names a host file is refused before the chain is written or a
//! VM starts on it.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::chain::{take_snapshot, wait_job};
use common::cluster::SharedHost;
use common::domain::{Fixture, assert_success, new_id};
use common::engine::{EngineVm, Undefine, engine_xml, vm_name};
use common::guest::{qemu_img, qemu_io};
use common::libvirt;
use serde_json::{Value, json};

const MIB: u64 = 1 << 20;

/// A host file outside the domain that links point at, with the bytes it must keep.
struct Victim {
    _dir: tempfile::TempDir,
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Victim {
    fn new(dir: tempfile::TempDir, path: PathBuf) -> Victim {
        let bytes = std::fs::read(&path).unwrap();
        Victim {
            _dir: dir,
            path,
            bytes,
        }
    }

    /// A small text file (a host's configuration, say).
    fn text() -> Victim {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host-file");
        std::fs::write(&path, b"a precious host file\n").unwrap();
        Victim::new(dir, path)
    }

    /// A raw disk image of `size` bytes full of a pattern (another VM's disk, say).
    fn raw_disk(size: u64) -> Victim {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host-disk.raw");
        let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, bytes).unwrap();
        Victim::new(dir, path)
    }

    /// A copy of the qcow2 image at `image` (what a tool would take for the volume).
    fn qcow2_copy(image: &Path) -> Victim {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host-disk.qcow2");
        std::fs::copy(image, &path).unwrap();
        Victim::new(dir, path)
    }

    fn assert_untouched(&self) {
        let now = std::fs::read(&self.path).unwrap();
        assert_eq!(
            now.len(),
            self.bytes.len(),
            "the victim's size changed: written through a link"
        );
        assert!(
            now == self.bytes,
            "the victim's content changed: written through a link"
        );
    }
}

/// Replaces whatever is at `at` with a symbolic link to `victim`.
fn plant_link(at: &Path, victim: &Path) {
    let _ = std::fs::remove_file(at);
    std::os::unix::fs::symlink(victim, at).unwrap();
}

/// A new volume of `size` bytes in `image` (`format` 4 COW, 5 RAW; `parent` optional).
fn volume(f: &Fixture, image: &str, format: u32, size: u64, parent: Option<&str>) -> String {
    let volume = new_id();
    let mut extra = json!({"size": size.to_string(), "volFormat": format});
    if let Some(parent) = parent {
        extra["srcVolUUID"] = json!(parent);
    }
    assert_success(&f.create(image, &volume, extra));
    volume
}

/// `Volume.create` of `volume` on `parent`: `Ok` if it succeeded, else the refusal's or the
/// task's message.
fn try_create_on(f: &Fixture, image: &str, volume: &str, parent: &str) -> Result<(), String> {
    let params = f.create_params(
        image,
        volume,
        json!({"srcVolUUID": parent, "size": (64 * MIB).to_string()}),
    );
    let task = match f
        .daemon
        .call(common::daemon::Via::Unix, "Volume.create", params)
    {
        Ok(task) => task,
        Err(err) => return Err(err.to_string()),
    };
    task_outcome(f.daemon.wait_task(task.as_str().unwrap()))
}

fn task_outcome(status: Value) -> Result<(), String> {
    if status["taskResult"] == "success" {
        Ok(())
    } else {
        Err(status["message"].as_str().unwrap_or_default().to_owned())
    }
}

fn endpoint(f: &Fixture, image: &str, volume: &str) -> Value {
    json!({"endpoint_type": "div", "sd_id": f.domain, "img_id": image, "vol_id": volume})
}

/// Runs `SDM.copy_data` from one volume to another; returns its job's end.
fn copy(f: &Fixture, from: (&str, &str), to: (&str, &str)) -> Value {
    let job = new_id();
    let params = json!({"job_id": job, "source": endpoint(f, from.0, from.1),
                        "destination": endpoint(f, to.0, to.1)});
    assert_eq!(f.daemon.ok("SDM.copy_data", params), json!(true));
    wait_job(f, &job, Duration::from_secs(120))
}

fn assert_refused_for_a_link(what: &str, message: &str) {
    assert!(
        message.contains("symbolic link"),
        "{what}: the error should say a link was refused: {message}"
    );
}

#[test]
fn a_copy_never_writes_through_a_link_at_its_destination() {
    let Some(_conn) = libvirt() else { return };
    let f = Fixture::new();
    let (src_image, dst_image) = (new_id(), new_id());
    let source = volume(&f, &src_image, 4, 4 * MIB, None);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0xcd 0 1M",
        f.image_dir(&src_image).join(&source).to_str().unwrap(),
    ]);
    let destination = volume(&f, &dst_image, 5, 4 * MIB, None);
    let victim = Victim::raw_disk(4 * MIB);
    plant_link(&f.image_dir(&dst_image).join(&destination), &victim.path);

    let info = copy(&f, (&src_image, &source), (&dst_image, &destination));
    assert_eq!(info["status"], "failed", "{info}");
    assert_refused_for_a_link("SDM.copy_data", &info["error"]["message"].to_string());
    victim.assert_untouched();
}

#[test]
fn a_cold_merge_never_writes_through_a_link_at_its_base() {
    let Some(_conn) = libvirt() else { return };
    let f = Fixture::new();
    let image = new_id();
    let base = volume(&f, &image, 4, 4 * MIB, None);
    let top = volume(&f, &image, 4, 4 * MIB, Some(&base));
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0xab 0 1M",
        f.image_dir(&image).join(&top).to_str().unwrap(),
    ]);
    let base_file = f.image_dir(&image).join(&base);
    let victim = Victim::qcow2_copy(&base_file);
    plant_link(&base_file, &victim.path);

    let job = new_id();
    let subchain = json!({"sd_id": f.domain, "img_id": image, "base_id": base, "top_id": top});
    let started = f.daemon.call(
        common::daemon::Via::Unix,
        "SDM.merge",
        json!({"job_id": job, "subchain_info": subchain}),
    );
    let message = match started {
        Ok(_) => {
            let info = wait_job(&f, &job, Duration::from_secs(120));
            assert_eq!(info["status"], "failed", "{info}");
            info["error"]["message"].to_string()
        }
        Err(err) => err.to_string(),
    };
    assert_refused_for_a_link("SDM.merge", &message);
    victim.assert_untouched();
}

#[test]
fn a_clone_on_a_linked_parent_is_refused() {
    let Some(_conn) = libvirt() else { return };
    let f = Fixture::new();
    let image = new_id();
    let parent = volume(&f, &image, 4, 64 * MIB, None);
    let parent_file = f.image_dir(&image).join(&parent);
    let victim = Victim::qcow2_copy(&parent_file);
    plant_link(&parent_file, &victim.path);

    let clone = new_id();
    let refused = try_create_on(&f, &image, &clone, &parent).unwrap_err();
    assert_refused_for_a_link("a linked clone", &refused);
    assert!(
        !f.image_dir(&image).join(&clone).exists(),
        "the refused clone left a data file"
    );
    victim.assert_untouched();
}

#[test]
fn a_revert_s_new_leaf_is_never_written_through_a_link_planted_meanwhile() {
    let Some(_conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let image = new_id();
    let snapshot = volume(&f, &image, 4, GIB_SIZE, None);
    let _leaf = volume(&f, &image, 4, GIB_SIZE, Some(&snapshot));
    let victim = Victim::text();

    // The preview's leaf on the snapshot's volume; its empty data file replaced by a link
    // while the create waits between its steps.
    let preview = new_id();
    let (task, marker) = f.create_paused_at("create:reserved", &image, &snapshot, &preview);
    plant_link(&f.image_dir(&image).join(&preview), &victim.path);
    std::fs::remove_file(&marker).unwrap();
    let outcome = task_outcome(f.daemon.wait_task(&task));
    let refused = outcome.expect_err("the create wrote its leaf through a link");
    assert_refused_for_a_link("the revert's new leaf", &refused);
    victim.assert_untouched();
}

/// What the refusal of a qcow2 header naming a file other than its parent says.
const FOREIGN_BACKING: &str = "qcow2 header names the backing file";

/// `Volume.create`'s default size in the fixture (1 GiB, sparse).
const GIB_SIZE: u64 = 1 << 30;

#[test]
fn a_backing_file_outside_the_image_is_refused_before_use() {
    let Some(_conn) = libvirt() else { return };
    let f = Fixture::new();
    let image = new_id();
    let base = volume(&f, &image, 4, 64 * MIB, None);
    let top = volume(&f, &image, 4, 64 * MIB, Some(&base));
    let top_file = f.image_dir(&image).join(&top);
    let victim = Victim::qcow2_copy(&f.image_dir(&image).join(&base));
    qemu_img(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        victim.path.to_str().unwrap(),
        "-F",
        "qcow2",
        top_file.to_str().unwrap(),
    ]);

    // A new leaf on it (a snapshot, a clone, a revert).
    let refused = try_create_on(&f, &image, &new_id(), &top).unwrap_err();
    assert!(refused.contains(FOREIGN_BACKING), "{refused}");

    // A full copy of it.
    let dst_image = new_id();
    let destination = volume(&f, &dst_image, 4, 64 * MIB, None);
    let info = copy(&f, (&image, &top), (&dst_image, &destination));
    assert_eq!(info["status"], "failed", "{info}");
    assert!(
        info["error"]["message"]
            .to_string()
            .contains(FOREIGN_BACKING),
        "{info}"
    );

    // A VM on it.
    let vm = new_id();
    let _undefine = Undefine(vm.clone());
    let dir = tempfile::tempdir().unwrap();
    let xml = engine_xml(&f, &vm, &vm_name("links"), &image, &top, dir.path());
    let created = f.daemon.call(
        common::daemon::Via::Unix,
        "VM.create",
        json!({"vmID": vm, "vmParams": {"xml": xml}}),
    );
    let refused = created.expect_err("a VM started on a chain naming a host file");
    assert!(refused.to_string().contains(FOREIGN_BACKING), "{refused}");
    victim.assert_untouched();
}

#[test]
fn a_lease_is_never_written_through_a_linked_leases_volume() {
    let Some(_conn) = libvirt() else { return };
    let host = SharedHost::start();
    let f = &host.f;
    let victim = Victim::text();
    plant_link(&f.root().join("dom_md/xleases"), &victim.path);

    let lease = json!({"sd_id": f.domain, "lease_id": new_id()});
    let refused = match f.daemon.call(
        common::daemon::Via::Unix,
        "Lease.create",
        json!({"lease": lease}),
    ) {
        Ok(task) => task_outcome(f.daemon.wait_task(task.as_str().unwrap()))
            .expect_err("a lease was created through a link"),
        Err(err) => err.to_string(),
    };
    assert_refused_for_a_link("Lease.create", &refused);
    victim.assert_untouched();
}

#[test]
fn the_shared_task_records_are_never_written_through_a_link_at_master() {
    let Some(_conn) = libvirt() else { return };
    let host = SharedHost::start();
    let f = &host.f;
    // A host directory with a `tasks/` in it, where `master/` now points.
    let elsewhere = tempfile::tempdir().unwrap();
    let victim_dir = elsewhere.path().join("tasks");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("keep"), b"kept").unwrap();
    let master = f.root().join("master");
    std::fs::rename(&master, f.root().join("master.before")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), &master).unwrap();

    // A task of the SPM: its record goes to master/tasks.
    let image = new_id();
    let params = f.create_params(&image, &new_id(), json!({"size": (4 * MIB).to_string()}));
    let refused = match f
        .daemon
        .call(common::daemon::Via::Unix, "Volume.create", params)
    {
        Ok(task) => task_outcome(f.daemon.wait_task(task.as_str().unwrap()))
            .expect_err("a task record was written through a link"),
        Err(err) => err.to_string(),
    };
    assert_refused_for_a_link("the SPM's task record", &refused);
    let names: Vec<_> = std::fs::read_dir(&victim_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep"], "written through the link at master/");
    assert_eq!(std::fs::read(victim_dir.join("keep")).unwrap(), b"kept");
}

#[test]
fn a_volume_lease_is_never_taken_through_a_link() {
    let Some(_conn) = libvirt() else { return };
    let host = SharedHost::start();
    let f = &host.f;
    let (src_image, dst_image) = (new_id(), new_id());
    let source = volume(f, &src_image, 4, 4 * MIB, None);
    let destination = volume(f, &dst_image, 4, 4 * MIB, None);
    // The lease sanlock takes for the copy's destination, in a host file.
    let victim = Victim::raw_disk(2 * MIB);
    let lease = f.image_dir(&dst_image).join(format!("{destination}.lease"));
    plant_link(&lease, &victim.path);

    let info = copy(f, (&src_image, &source), (&dst_image, &destination));
    assert_eq!(info["status"], "failed", "{info}");
    assert_refused_for_a_link("the volume lease", &info["error"]["message"].to_string());
    victim.assert_untouched();
}

/// A live merge: QEMU reopens the base by its name to commit into it. A link swapped in at
/// the base's name while the VM runs (the VM keeps the real file open) is refused before
/// libvirt is asked.
#[test]
fn a_live_merge_never_commits_into_a_link_at_its_base() {
    let Some(_conn) = libvirt() else { return };
    let _slot = common::guest::GuestSlot::acquire();
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let vm = new_id();
    let (guest, _) = EngineVm::create(&f, &vm, &image, &base, None);
    let top = take_snapshot(&f, &vm, &image, &base, json!({}));
    let base_file = f.image_dir(&image).join(&base);
    let victim = Victim::qcow2_copy(&base_file);
    let moved = base_file.with_extension("moved");
    std::fs::rename(&base_file, &moved).unwrap();
    plant_link(&base_file, &victim.path);

    let job = new_id();
    let params = json!({"vmID": vm, "jobUUID": job, "baseVolUUID": base, "topVolUUID": top,
        "drive": {"poolID": f.pool, "domainID": f.domain, "imageID": image, "volumeID": top}});
    let message = match f.daemon.call(common::daemon::Via::Unix, "VM.merge", params) {
        Ok(_) => {
            let info = wait_job(&f, &job, Duration::from_secs(120));
            assert_eq!(info["status"], "failed", "{info}");
            info["error"]["message"].to_string()
        }
        Err(err) => err.to_string(),
    };
    assert_refused_for_a_link("VM.merge", &message);
    victim.assert_untouched();
    std::fs::remove_file(&base_file).unwrap();
    std::fs::rename(&moved, &base_file).unwrap();
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
    drop(guest);
}

/// A raw parent read as qcow2 (the leaf's header changed to say so) would make its content,
/// which a guest or a co-tenant writes, name any host file as a backing file: a copy of the
/// leaf then pulled a host file into the destination. Refused before the copy reads anything.
#[test]
fn a_raw_parent_read_as_qcow2_never_pulls_a_host_file_into_a_copy() {
    let Some(_conn) = libvirt() else { return };
    let f = Fixture::new();
    let (image, dst_image) = (new_id(), new_id());
    let base = volume(&f, &image, 5, 4 * MIB, None);
    let leaf = volume(&f, &image, 4, 4 * MIB, Some(&base));
    let destination = volume(&f, &dst_image, 5, 4 * MIB, None);
    let victim = Victim::text();
    // The co-tenant: a qcow2 header naming the victim inside the raw base's data, and the
    // leaf's header saying its backing file is qcow2 (its backing name unchanged).
    let scratch = tempfile::tempdir().unwrap();
    let header = scratch.path().join("header.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        victim.path.to_str().unwrap(),
        "-F",
        "raw",
        header.to_str().unwrap(),
        "4M",
    ]);
    let bytes = std::fs::read(&header).unwrap();
    let base_file = f.image_dir(&image).join(&base);
    let mut data = std::fs::read(&base_file).unwrap();
    data[..bytes.len()].copy_from_slice(&bytes);
    std::fs::write(&base_file, data).unwrap();
    let leaf_file = f.image_dir(&image).join(&leaf);
    qemu_img(&[
        "rebase",
        "-u",
        "-f",
        "qcow2",
        "-b",
        &base,
        "-F",
        "qcow2",
        leaf_file.to_str().unwrap(),
    ]);

    let info = copy(&f, (&image, &leaf), (&dst_image, &destination));
    assert_eq!(info["status"], "failed", "{info}");
    let message = info["error"]["message"].to_string();
    assert!(message.contains("reads its backing file as"), "{message}");
    let copied = std::fs::read(f.image_dir(&dst_image).join(&destination)).unwrap();
    assert!(
        !copied
            .windows(victim.bytes.len())
            .any(|w| w == victim.bytes),
        "the host file was copied into the volume"
    );
    victim.assert_untouched();
}
