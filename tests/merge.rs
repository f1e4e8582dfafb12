//! Live merges (`VM.merge`) of real guests through rvdsmd: an internal volume and then the
//! active layer merged while the guest writes, with the job's progress in `vmJobs` and
//! `Host.getJobs`, every write kept (the guest boots again on the merged volume and finds
//! them), the metadata agreeing with the chain QEMU uses and nothing leaked; VDSM's refusals;
//! and the faults: rvdsmd killed when the commit is ready and right after the pivot (the next
//! start finishes the merge), a pivot that keeps failing (a bounded number of attempts, then
//! a truthful failure with the VM on its volume), QEMU killed mid-commit.

mod common;

use std::time::Duration;

use common::chain::{
    assert_intact, blob_sum, chain_problems, read_marker, snapshot_params, take_snapshot, wait_job,
    write_blob, write_marker,
};
use common::daemon::cli;
use common::domain::{Fixture, new_id};
use common::engine::{EngineVm, TwoSnapshots};
use common::guest::GuestSlot;
use common::guest::qemu_img;
use common::{Guest, GuestOptions, libvirt, wait_until};
use serde_json::{Value, json};

/// `VM.merge` parameters: `top` into `base` on the disk whose leaf is `leaf`.
fn merge_params(f: &Fixture, vm: &str, image: &str, leaf: &str, base: &str, top: &str) -> Value {
    json!({
        "vmID": vm,
        "drive": {"poolID": f.pool, "domainID": f.domain, "imageID": image, "volumeID": leaf},
        "baseVolUUID": base, "topVolUUID": top, "jobUUID": new_id(),
    })
}

/// Starts a merge with `params` (plus `extra`); returns its job.
fn start_merge(f: &Fixture, mut params: Value, extra: Value) -> String {
    params
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let job = params["jobUUID"].as_str().unwrap().to_owned();
    assert_eq!(f.daemon.ok("VM.merge", params), json!(true));
    job
}

/// The file names of the disk `vda`'s chain as `VM.getStats` shows it, leaf first.
fn live_chain(f: &Fixture, vm: &str) -> Vec<String> {
    let stats = f.daemon.ok("VM.getStats", json!({"vmID": vm}));
    let disk = &stats[0]["disks"]["vda"];
    let name = |p: &Value| {
        std::path::Path::new(p.as_str().unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    std::iter::once(name(&disk["path"]))
        .chain(
            disk["backingChain"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| name(&l["path"])),
        )
        .collect()
}

#[test]
fn live_merges_of_an_internal_volume_and_the_active_layer_keep_every_write() {
    let Some(_conn) = libvirt() else { return };
    let _slot = GuestSlot::acquire();
    let f = Fixture::new();
    // 8 MiB of the guest's own in top1, so that a merge at 1 MiB/s takes a while.
    let TwoSnapshots {
        vm: guest,
        image,
        base,
        top1,
        top2,
        blob,
    } = TwoSnapshots::take(&f, 8);
    let vm = guest.uuid.clone();
    let exec = |script: &str| guest.exec(script);
    assert_eq!(
        live_chain(&f, &vm),
        [top2.clone(), top1.clone(), base.clone()]
    );

    // VDSM's refusals, each changing nothing.
    let params = |leaf: &str, base: &str, top: &str| merge_params(&f, &vm, &image, leaf, base, top);
    let mut unknown = params(&top2, &base, &top1);
    unknown["vmID"] = json!(new_id());
    assert_eq!(f.daemon.err("VM.merge", unknown).0, 1);
    let (code, message) = f.daemon.err("VM.merge", params(&top1, &base, &top1));
    assert_eq!(code, 13, "not the disk's leaf: {message}");
    let (code, message) = f.daemon.err("VM.merge", params(&top2, &base, &top2));
    assert_eq!(code, 52, "not adjacent: {message}");
    assert!(
        message.starts_with("Merge failed: {'reason': "),
        "{message}"
    );
    let (code, _) = f.daemon.err("VM.merge", params(&top2, &top1, &top1));
    assert_eq!(code, 52, "base == top");
    assert_eq!(
        live_chain(&f, &vm),
        [top2.clone(), top1.clone(), base.clone()]
    );
    assert!(chain_problems(&f, &image, &top2).is_empty());

    // The internal volume, slowly: the job shows in vmJobs and Host.getJobs while it runs.
    let job = start_merge(&f, params(&top2, &base, &top1), json!({"bandwidth": 1}));
    let mut seen = Value::Null;
    let shown = wait_until(Duration::from_secs(30), || {
        let stats = f.daemon.ok("VM.getStats", json!({"vmID": vm}));
        seen = stats[0]["vmJobs"][&job].clone();
        seen["end"].as_str().is_some_and(|end| end != "0")
    });
    assert!(shown, "vmJobs never showed the commit: {seen}");
    assert_eq!(seen["jobType"], "block");
    assert_eq!(seen["blockJobType"], "commit");
    assert_eq!(seen["drive"], "vda");
    assert_eq!(seen["imgUUID"], image.as_str());
    let running = &f.daemon.ok("Host.getJobs", json!({"job_ids": [job]}))[&job];
    assert_eq!(running["description"], "merge_vm", "{running}");
    let snap_job = new_id();
    let (code, _) = f.daemon.err(
        "VM.snapshot",
        snapshot_params(&f, &vm, &image, &top2, &new_id(), &snap_job),
    );
    assert_eq!(code, 100, "a snapshot while the VM merges is refused");
    // And a copy of the chain being merged.
    let (dst_image, dst) = (new_id(), new_id());
    common::domain::assert_success(&f.create(
        &dst_image,
        &dst,
        json!({"size": (64u64 << 20).to_string()}),
    ));
    let endpoint = |img: &str, vol: &str| json!({"endpoint_type": "div", "sd_id": f.domain, "img_id": img, "vol_id": vol});
    let (code, message) = f.daemon.err(
        "SDM.copy_data",
        json!({"job_id": new_id(), "source": endpoint(&image, &base),
               "destination": endpoint(&dst_image, &dst)}),
    );
    assert_eq!(code, 1000, "{message}");
    assert!(message.contains("being merged"), "{message}");
    let info = wait_job(&f, &job, Duration::from_secs(120));
    assert_eq!(info["status"], "done", "{info}; log:\n{}", f.daemon.log());
    assert_eq!(info["result"]["active"], false);
    let stats = f.daemon.ok("VM.getStats", json!({"vmID": vm}));
    assert_eq!(stats[0]["vmJobs"], json!({}), "the job left vmJobs");
    assert_eq!(live_chain(&f, &vm), [top2.clone(), base.clone()]);
    assert_eq!(f.info(&image, &top2)["parent"], base.as_str());
    assert_eq!(
        f.daemon
            .err(
                "Volume.getInfo",
                json!({"storagepoolID": f.pool, "storagedomainID": f.domain, "imageID": image, "volumeID": top1})
            )
            .0,
        201,
        "the merged volume is deleted"
    );
    assert!(chain_problems(&f, &image, &top2).is_empty());
    let xml = &f.daemon.ok("Host.dumpxmls", json!({"vmList": [vm]}))[&vm];
    assert!(!xml.as_str().unwrap().contains(&top1), "{xml}");
    assert_eq!(blob_sum(exec), blob);

    // The active layer, through the CLI's --wait: the VM pivots to the base.
    let active = params(&top2, &base, &top2);
    let (code, out, err) = cli(
        &f.daemon,
        &[
            "--wait",
            "VM",
            "merge",
            &format!("vmID={vm}"),
            &format!("drive={}", active["drive"]),
            &format!("baseVolUUID={base}"),
            &format!("topVolUUID={top2}"),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}\nlog:\n{}", f.daemon.log());
    assert!(err.contains("100%"), "a progress bar: {err}");
    let done: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(done["result"]["active"], true, "{done}");
    assert!(done["result"]["pivotAttempts"].as_u64().unwrap() >= 1);
    assert_eq!(live_chain(&f, &vm), std::slice::from_ref(&base));
    assert_eq!(f.info(&image, &base)["voltype"], "LEAF");
    assert!(chain_problems(&f, &image, &base).is_empty());
    write_marker(exec, "D");
    let xml = f.daemon.ok("Host.dumpxmls", json!({"vmList": [vm]}))[&vm].clone();
    let metadata = xml.as_str().unwrap();
    assert!(
        metadata.contains(&format!("<ovirt-vm:volumeID>{base}</ovirt-vm:volumeID>"))
            && !metadata.contains(&top2),
        "{metadata}"
    );

    // Every write is in the base: the VM boots on it again and finds them.
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
    drop(guest);
    let (again, _) = EngineVm::create(&f, &vm, &image, &base, None);
    let exec = |script: &str| again.exec(script);
    assert_eq!(read_marker(exec), "D");
    assert_eq!(blob_sum(exec), blob);
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
}

/// A guest on a new volume with one snapshot (base <- top, the VM on top), and a merge of top
/// into base that stops at `point`; returns (guest, image, base, top, job, marker).
fn merge_paused_at(
    f: &mut Fixture,
    point: &str,
    extra: Value,
) -> (Guest, String, String, String, String, std::path::PathBuf) {
    let conn = libvirt().unwrap();
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let top = take_snapshot(f, &guest.uuid, &image, &base, json!({}));
    write_blob(|s: &str| guest.exec(s), 4);
    let marker = f.daemon.restart_paused_at(point);
    let params = merge_params(f, &guest.uuid, &image, &top, &base, &top);
    let job = start_merge(f, params, extra);
    assert!(
        wait_until(Duration::from_secs(60), || marker.exists()),
        "{point} never reached; log:\n{}",
        f.daemon.log()
    );
    (guest, image, base, top, job, marker)
}

#[test]
fn rvdsmd_killed_during_the_commit_when_ready_or_after_the_pivot_finishes_the_merge_at_start() {
    let Some(_conn) = libvirt() else { return };
    for point in ["merge:committing", "merge:ready", "merge:pivoted"] {
        let mut f = Fixture::new();
        // Slow enough that the commit is still running when rvdsmd dies.
        let bandwidth = if point == "merge:committing" { 1 } else { 0 };
        let (guest, image, base, top, job, _marker) =
            merge_paused_at(&mut f, point, json!({"bandwidth": bandwidth}));
        let sum = blob_sum(|s: &str| guest.exec(s));
        if point == "merge:ready" {
            assert_eq!(
                f.info(&image, &top)["legality"],
                "ILLEGAL",
                "the leaf is ILLEGAL before the pivot"
            );
        }
        f.daemon.restart_in_place(&[]);
        let info = wait_job(&f, &job, Duration::from_secs(120));
        assert_eq!(
            info["status"],
            "done",
            "{point}: {info}; log:\n{}",
            f.daemon.log()
        );
        assert_eq!(info["result"]["active"], true);
        assert_intact(&f, &image, &guest, &base, point);
        assert_eq!(blob_sum(|s: &str| guest.exec(s)), sum, "{point}");
    }
}

#[test]
fn a_pivot_that_keeps_failing_ends_in_a_truthful_failure_on_the_old_volume() {
    let Some(_conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let (guest, image, _base, top, job, marker) = merge_paused_at(&mut f, "merge:ready", json!({}));
    // Someone cancels the commit behind rvdsm's back: every pivot fails.
    let out = std::process::Command::new("virsh")
        .args([
            "-c",
            "qemu:///system",
            "blockjob",
            &guest.name,
            "vda",
            "--abort",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&marker).unwrap();
    let info = wait_job(&f, &job, Duration::from_secs(120));
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(info["error"]["code"], 52);
    let message = info["error"]["message"].as_str().unwrap();
    assert!(message.contains("the pivot failed 5 times"), "{message}");
    assert!(message.contains("which is LEGAL"), "{message}");
    assert_intact(&f, &image, &guest, &top, "failed pivot");
}

#[test]
fn rvdsmd_killed_before_the_commit_starts_ends_the_job_failed_with_nothing_changed() {
    let Some(_conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let conn = libvirt().unwrap();
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let top = take_snapshot(&f, &guest.uuid, &image, &base, json!({}));
    let marker = f.daemon.restart_paused_at("merge:journaled");
    let params = merge_params(&f, &guest.uuid, &image, &top, &base, &top);
    let job = params["jobUUID"].as_str().unwrap().to_owned();
    // The request hangs at the failpoint: send it from a thread that gives up on it.
    // The parameters' file goes with the test's temporary directory, even on a panic.
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("merge.json");
    std::fs::write(&file, params.to_string()).unwrap();
    let request = {
        let socket = f.daemon.socket.clone();
        std::thread::spawn(move || {
            let _ = std::process::Command::new(env!("CARGO_BIN_EXE_rvdsm"))
                .arg("--socket")
                .arg(socket)
                .args(["VM", "merge", "-f"])
                .arg(file)
                .output();
        })
    };
    assert!(wait_until(Duration::from_secs(30), || marker.exists()));
    f.daemon.restart_in_place(&[]);
    let _ = request.join();
    let info = wait_job(&f, &job, Duration::from_secs(60));
    assert_eq!(info["status"], "failed", "{info}");
    assert!(
        info["error"]["message"]
            .as_str()
            .unwrap()
            .contains("never started"),
        "{info}"
    );
    assert_intact(&f, &image, &guest, &top, "killed before the commit");
    // Killed before the base's note was marked: nothing began, and the note stays true.
    assert_eq!(
        f.info(&image, &base)["revertBoot"]["outcome"],
        "clean",
        "{}",
        f.info(&image, &base)
    );
}

#[test]
fn qemu_killed_mid_commit_leaves_the_chain_as_it_was() {
    let Some(_conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let (guest, image, base, top, job, marker) =
        merge_paused_at(&mut f, "merge:committing", json!({"bandwidth": 1}));
    guest.domain().destroy().unwrap();
    std::fs::remove_file(&marker).unwrap();
    let info = wait_job(&f, &job, Duration::from_secs(120));
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(info["error"]["code"], 52);
    assert!(
        info["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing was merged"),
        "{info}"
    );
    assert_eq!(f.info(&image, &top)["legality"], "LEGAL");
    assert!(chain_problems(&f, &image, &top).is_empty());
    // The commit began: the base may hold part of the top's data, and says so.
    assert_eq!(
        f.info(&image, &base)["revertBoot"]["outcome"],
        "unknown",
        "{}",
        f.info(&image, &base)
    );
}

#[test]
fn a_live_merge_says_which_dirty_bitmaps_went_with_the_top() {
    let Some(_conn) = libvirt() else { return };
    let _slot = GuestSlot::acquire();
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let top = common::chain::new_top(&f, &image, &base);
    let path = f.image_dir(&image).join(&top);
    qemu_img(&[
        "bitmap",
        "--add",
        "-f",
        "qcow2",
        path.to_str().unwrap(),
        "backup-1",
    ]);
    let vm = new_id();
    let (guest, _) = EngineVm::create(&f, &vm, &image, &top, None);
    write_blob(|c: &str| guest.exec(c), 1);
    let job = start_merge(
        &f,
        merge_params(&f, &vm, &image, &top, &base, &top),
        json!({}),
    );
    let info = wait_job(&f, &job, Duration::from_secs(120));
    assert_eq!(info["status"], "done", "{info}");
    // Measured: libvirt's commit does not carry a bitmap it did not make; the job says so.
    assert_eq!(
        info["result"]["droppedBitmaps"],
        json!(["backup-1"]),
        "{info}"
    );
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
}
