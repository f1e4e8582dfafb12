//! Cold merges (VM stopped) with VDSM's verbs, on real images: `StoragePool.prepareMerge`,
//! the `SDM.merge` job (`qemu-img commit`), `StoragePool.finalizeMerge`, then the engine's
//! `Image.deleteVolumes`; of an internal volume and of the leaf, every write kept (the VM
//! boots on the merged chain and finds them). A finalize without a successful merge is
//! refused; rvdsmd killed in the commit job and mid-finalize ends truthfully and a retry
//! completes;
//! a full disk fails the commit with the chain as it was; `Image.reconcileVolumeChain` reads
//! the chain back from the qcow2 headers.

mod common;

use std::path::Path;
use std::time::Duration;

use common::chain::{blob_sum, chain_problems, new_top, read_marker, wait_job};
use common::domain::{Fixture, assert_success, new_id, qemu_info};
use common::engine::{EngineVm, TwoSnapshots};
use common::guest::GuestSlot;
use common::guest::{qemu_img, qemu_io};
use common::{libvirt, wait_until};
use serde_json::{Value, json};

fn subchain(f: &Fixture, image: &str, base: &str, top: &str) -> Value {
    json!({"sd_id": f.domain, "img_id": image, "base_id": base, "top_id": top})
}

/// `StoragePool.prepareMerge` or `finalizeMerge`; returns the task's final status.
fn pool_step(f: &Fixture, verb: &str, image: &str, base: &str, top: &str) -> Value {
    let task = f.daemon.ok(
        verb,
        json!({"storagepoolID": f.pool, "subchainInfo": subchain(f, image, base, top)}),
    );
    f.daemon.wait_task(task.as_str().unwrap())
}

/// Starts `SDM.merge`; returns its job.
fn start_sdm_merge(f: &Fixture, image: &str, base: &str, top: &str) -> String {
    let job = new_id();
    let params = json!({"job_id": job, "subchain_info": subchain(f, image, base, top)});
    assert_eq!(f.daemon.ok("SDM.merge", params), json!(true));
    job
}

/// The whole cold merge of `top` into `base`, as an engine runs it: one subchain, with the
/// base's generation read beforehand, given to all three steps.
fn cold_merge(f: &Fixture, image: &str, base: &str, top: &str) {
    let generation = f.info(image, base)["generation"].as_u64().unwrap();
    let mut subchain = subchain(f, image, base, top);
    subchain["base_generation"] = json!(generation);
    let step = |verb: &str| {
        let task = f.daemon.ok(
            verb,
            json!({"storagepoolID": f.pool, "subchainInfo": subchain}),
        );
        f.daemon.wait_task(task.as_str().unwrap())
    };
    assert_success(&step("StoragePool.prepareMerge"));
    let job = new_id();
    let params = json!({"job_id": job, "subchain_info": subchain});
    assert_eq!(f.daemon.ok("SDM.merge", params), json!(true));
    let info = wait_job(f, &job, Duration::from_secs(120));
    assert_eq!(info["status"], "done", "{info}; log:\n{}", f.daemon.log());
    assert_eq!(info["job_type"], "storage");
    assert_eq!(info["description"], "merge_subchain");
    assert_eq!(info["result"]["generation"], generation + 1, "{info}");
    assert_success(&step("StoragePool.finalizeMerge"));
    // The engine deletes the top; rvdsm already did, and says so by succeeding.
    f.delete_volumes(image, &[top]);
}

#[test]
fn cold_merges_of_an_internal_volume_and_the_leaf_keep_every_write() {
    let Some(_conn) = libvirt() else { return };
    let _slot = GuestSlot::acquire();
    let f = Fixture::new();
    let TwoSnapshots {
        vm: guest,
        image,
        base,
        top1,
        top2,
        blob,
    } = TwoSnapshots::take(&f, 4);
    let vm = guest.uuid.clone();

    // A running VM's chain is not merged cold.
    let (code, message) = f.daemon.err(
        "StoragePool.prepareMerge",
        json!({"storagepoolID": f.pool, "subchainInfo": subchain(&f, &image, &base, &top1)}),
    );
    assert_eq!(code, 222, "{message}");
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
    drop(guest);

    // Finalizing before a merge would lose the top's data: refused, nothing changed.
    let (code, message) = f.daemon.err(
        "StoragePool.finalizeMerge",
        json!({"storagepoolID": f.pool, "subchainInfo": subchain(&f, &image, &base, &top1)}),
    );
    assert_eq!(code, 1000, "{message}");
    assert!(message.contains("no SDM.merge"), "{message}");

    cold_merge(&f, &image, &base, &top1);
    assert_eq!(f.info(&image, &top2)["parent"], base.as_str());
    let backing = qemu_info(&f.image_dir(&image).join(&top2));
    assert_eq!(backing["backing-filename"], base.as_str(), "{backing}");
    assert!(chain_problems(&f, &image, &top2).is_empty());

    cold_merge(&f, &image, &base, &top2);
    assert_eq!(f.info(&image, &base)["voltype"], "LEAF");
    assert!(chain_problems(&f, &image, &base).is_empty());

    let (again, _) = EngineVm::create(&f, &vm, &image, &base, None);
    let exec = |c: &str| again.exec(c);
    assert_eq!(read_marker(exec), "C");
    assert_eq!(blob_sum(exec), blob);
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
}

/// Three volumes on the fixture's data (base <- mid <- leaf), 4 MiB written in each of mid
/// and leaf, no VM: returns (image, base, mid, leaf).
fn offline_chain(f: &Fixture) -> (String, String, String, String) {
    let (image, base, _) = f.data_volume();
    let mid = new_top(f, &image, &base);
    let leaf = new_top(f, &image, &mid);
    for (volume, pattern) in [(&mid, 0x11), (&leaf, 0x22)] {
        let path = f.image_dir(&image).join(volume);
        let write = format!("write -P {pattern} 8M 4M");
        qemu_io(&["-f", "qcow2", "-c", &write, path.to_str().unwrap()]);
    }
    (image, base, mid, leaf)
}

/// What the guest would read through `leaf`: the whole chain converted to raw, hashed.
fn view_of(dir: &Path, leaf: &str) -> String {
    let raw = tempfile::NamedTempFile::new().unwrap();
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-U", "-O", "raw"])
        .arg(dir.join(leaf))
        .arg(raw.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = std::process::Command::new("md5sum")
        .arg(raw.path())
        .output()
        .unwrap();
    String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn rvdsmd_killed_in_the_commit_job_or_mid_finalize_ends_truthfully_and_a_retry_completes() {
    let mut f = Fixture::new();
    let (image, base, mid, leaf) = offline_chain(&f);
    let dir = f.image_dir(&image);
    let view = view_of(&dir, &leaf);
    assert_success(&pool_step(
        &f,
        "StoragePool.prepareMerge",
        &image,
        &base,
        &mid,
    ));

    // Killed in the commit: the job shows failed after the restart; the chain reads the same.
    let marker = f.daemon.restart_paused_at("sdm:merge");
    let job = start_sdm_merge(&f, &image, &base, &mid);
    assert!(wait_until(Duration::from_secs(30), || marker.exists()));
    f.daemon.restart_in_place(&[]);
    let info = wait_job(&f, &job, Duration::from_secs(30));
    assert_eq!(info["status"], "failed", "{info}");
    assert!(
        info["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retried"),
        "{info}"
    );
    assert_eq!(view_of(&dir, &leaf), view);
    assert!(chain_problems(&f, &image, &leaf).is_empty());

    // The retry merges; killed after the finalize's rebase, the next start finishes it.
    let job = start_sdm_merge(&f, &image, &base, &mid);
    assert_eq!(
        wait_job(&f, &job, Duration::from_secs(60))["status"],
        "done"
    );
    let marker = f.daemon.restart_paused_at("finalize:rebased");
    let task = f.daemon.ok(
        "StoragePool.finalizeMerge",
        json!({"storagepoolID": f.pool, "subchainInfo": subchain(&f, &image, &base, &mid)}),
    );
    assert!(wait_until(Duration::from_secs(30), || marker.exists()));
    f.daemon.restart_in_place(&[]);
    let status = f.daemon.wait_task(task.as_str().unwrap());
    assert_eq!(status["taskResult"], "success", "{status}");
    assert_eq!(f.info(&image, &leaf)["parent"], base.as_str());
    assert!(chain_problems(&f, &image, &leaf).is_empty());
    assert_eq!(
        view_of(&dir, &leaf),
        view,
        "the merge changed what the guest reads"
    );
}

#[test]
fn a_full_disk_fails_the_commit_with_the_chain_as_it_was() {
    let f = Fixture::new();
    let image = new_id();
    let dir = f.image_dir(&image);
    let _mount = common::Tmpfs::mount(&dir, "24m");
    let base = new_id();
    assert_success(&f.create(&image, &base, json!({"size": (64u64 << 20).to_string()})));
    let top = new_top(&f, &image, &base);
    let path = dir.join(&top);
    qemu_io(&[
        "-f",
        "qcow2",
        "-c",
        "write -P 0x33 0 12M",
        path.to_str().unwrap(),
    ]);
    let view = view_of(&dir, &top);
    common::fill_but(&dir.join("filler"), 2 << 20);
    assert_success(&pool_step(
        &f,
        "StoragePool.prepareMerge",
        &image,
        &base,
        &top,
    ));
    let job = start_sdm_merge(&f, &image, &base, &top);
    let info = wait_job(&f, &job, Duration::from_secs(60));
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(info["error"]["code"], 252, "{info}");
    std::fs::remove_file(dir.join("filler")).unwrap();
    assert_eq!(
        view_of(&dir, &top),
        view,
        "a failed commit changed what the guest reads"
    );
    assert!(chain_problems(&f, &image, &top).is_empty());
    let (code, _) = f.daemon.err(
        "StoragePool.finalizeMerge",
        json!({"storagepoolID": f.pool, "subchainInfo": subchain(&f, &image, &base, &top)}),
    );
    assert_eq!(code, 1000, "no finalize after a failed merge");
}

#[test]
fn reconcile_reads_the_chain_from_the_images_and_fixes_the_metadata() {
    let f = Fixture::new();
    let (image, base, mid, leaf) = offline_chain(&f);
    // The images say leaf <- base (as after an internal merge whose metadata update was
    // lost); the metadata still says leaf <- mid <- base.
    let path = f.image_dir(&image).join(&leaf);
    let path = path.to_str().unwrap();
    qemu_img(&[
        "rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", &base, path,
    ]);
    let chain = f.daemon.ok(
        "Image.reconcileVolumeChain",
        json!({"storagepoolID": f.pool, "storagedomainID": f.domain, "imageID": image,
               "leafVolID": leaf}),
    );
    assert_eq!(chain, json!([base, leaf]));
    assert_eq!(f.info(&image, &leaf)["parent"], base.as_str());
    let _ = mid;
}

#[test]
fn the_top_s_bitmaps_are_merged_into_the_base_when_asked() {
    let f = Fixture::new();
    let (image, base, mid, _leaf) = offline_chain(&f);
    let dir = f.image_dir(&image);
    let path = dir.join(&mid);
    qemu_img(&[
        "bitmap",
        "--add",
        "-f",
        "qcow2",
        path.to_str().unwrap(),
        "backup-1",
    ]);
    assert_success(&pool_step(
        &f,
        "StoragePool.prepareMerge",
        &image,
        &base,
        &mid,
    ));
    let job = new_id();
    let params = json!({"job_id": job, "subchain_info": subchain(&f, &image, &base, &mid),
                        "merge_bitmaps": true});
    assert_eq!(f.daemon.ok("SDM.merge", params), json!(true));
    let info = wait_job(&f, &job, Duration::from_secs(60));
    assert_eq!(info["status"], "done", "{info}");
    let base_info = qemu_info(&dir.join(&base));
    let bitmaps = &base_info["format-specific"]["data"]["bitmaps"];
    assert!(
        bitmaps
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["name"] == "backup-1")),
        "{base_info}"
    );
}
