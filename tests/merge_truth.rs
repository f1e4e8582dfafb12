//! A live merge never leaves a record that lies (issue 26): the base's snapshot note does not
//! promise a clean revert once a commit into it may have begun (a merge cancelled midway
//! leaves it `unknown`, not `clean`); `VM.destroy` is refused while a live merge holds the
//! VM (42), so that the merge ends on a VM whose chain libvirt can still tell; and a VM that
//! vanishes (definition and all) after QEMU pivoted never gets its stale top made LEGAL
//! again. Real guests, through rvdsmd, with the failpoints of `src/failpoint.rs`.

mod common;

use std::time::Duration;

use common::chain::{
    chain_problems, read_marker, take_snapshot, wait_job, write_blob, write_marker,
};
use common::domain::{Fixture, new_id};
use common::engine::EngineVm;
use common::guest::GuestSlot;
use common::{GuestOptions, libvirt, wait_until};
use serde_json::{Value, json};

/// `VM.merge` parameters: `top` into `base` on the disk whose leaf is `leaf`, with `extra`.
fn merge_params(
    f: &Fixture,
    (vm, image, leaf): (&str, &str, &str),
    (base, top): (&str, &str),
    extra: Value,
) -> Value {
    let mut params = json!({
        "vmID": vm,
        "drive": {"poolID": f.pool, "domainID": f.domain, "imageID": image, "volumeID": leaf},
        "baseVolUUID": base, "topVolUUID": top, "jobUUID": new_id(),
    });
    params
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    params
}

/// Starts the merge `params` describe; returns its job.
fn start_merge(f: &Fixture, params: Value) -> String {
    let job = params["jobUUID"].as_str().unwrap().to_owned();
    assert_eq!(f.daemon.ok("VM.merge", params), json!(true));
    job
}

/// Waits until the daemon pauses at its failpoint (its marker file exists).
fn wait_paused(f: &Fixture, marker: &std::path::Path, point: &str) {
    assert!(
        wait_until(Duration::from_secs(90), || marker.exists()),
        "{point} never reached; log:\n{}",
        f.daemon.log()
    );
}

/// `virsh` on the system connection; panics with its stderr when it fails.
fn virsh(args: &[&str]) {
    let out = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_live_merge_cancelled_midway_leaves_the_base_announced_unknown_not_clean() {
    let Some(conn) = libvirt() else { return };
    let _slot = GuestSlot::acquire();
    let mut f = Fixture::new();
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let top = take_snapshot(&f, &guest.uuid, &image, &base, json!({}));
    assert_eq!(
        f.info(&image, &base)["revertBoot"]["outcome"],
        "clean",
        "the snapshot was quiesced: {}",
        f.info(&image, &base)
    );
    // 4 MiB of the guest's own in top, so that a commit at 1 MiB/s is still running when
    // it is cancelled.
    write_blob(|s: &str| guest.exec(s), 4);
    let marker = f.daemon.restart_paused_at("merge:committing");
    let params = merge_params(
        &f,
        (&guest.uuid, &image, &top),
        (&base, &top),
        json!({"bandwidth": 1}),
    );
    let job = start_merge(&f, params);
    wait_paused(&f, &marker, "merge:committing");
    // Cancelled behind rvdsm's back (an operator, or QEMU failing the job): part of top's
    // data may be in base already.
    virsh(&["blockjob", &guest.name, "vda", "--abort"]);
    std::fs::remove_file(&marker).unwrap();
    let info = wait_job(&f, &job, Duration::from_secs(120));
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(info["error"]["code"], 52, "{info}");
    let base_info = f.info(&image, &base);
    assert_ne!(
        base_info["revertBoot"]["outcome"], "clean",
        "a revert to the base would boot a mix of two instants: {base_info}"
    );
    assert_eq!(base_info["revertBoot"]["outcome"], "unknown", "{base_info}");
    assert_eq!(base_info["snapshot"]["reason"], "merging", "{base_info}");
    let message = info["error"]["message"].as_str().unwrap();
    assert!(
        !message.contains("nothing changed"),
        "the base may hold part of the top's data: {message}"
    );
    // The VM stays on its volume, LEGAL, the chain sound.
    assert_eq!(f.info(&image, &top)["legality"], "LEGAL");
    assert!(chain_problems(&f, &image, &top).is_empty());
}

/// A VM created with `VM.create` on a new volume, with a quiesced snapshot (`base <- top`,
/// the VM on `top`) and marker `text` written after it; and a merge of `top` into `base`
/// paused right after libvirt reported the pivot done (before rvdsm has looked).
struct PausedAfterPivot {
    vm: EngineVm,
    image: String,
    base: String,
    top: String,
    job: String,
    marker: std::path::PathBuf,
}

fn merge_paused_after_the_pivot(f: &mut Fixture, text: &str) -> PausedAfterPivot {
    let (image, base, _) = f.data_volume();
    let id = new_id();
    let (vm, _) = EngineVm::create(f, &id, &image, &base, None);
    write_marker(|s: &str| vm.exec(s), "before");
    let top = take_snapshot(f, &id, &image, &base, json!({}));
    write_marker(|s: &str| vm.exec(s), text);
    let marker = f.daemon.restart_paused_at("merge:pivot-asked");
    let params = merge_params(f, (&id, &image, &top), (&base, &top), json!({}));
    let job = start_merge(f, params);
    wait_paused(f, &marker, "merge:pivot-asked");
    PausedAfterPivot {
        vm,
        image,
        base,
        top,
        job,
        marker,
    }
}

#[test]
fn vm_destroy_is_refused_while_a_live_merge_runs_and_the_chain_stays_true() {
    let Some(_conn) = libvirt() else { return };
    let _slot = GuestSlot::acquire();
    let mut f = Fixture::new();
    let PausedAfterPivot {
        vm,
        image,
        base,
        top,
        job,
        marker,
    } = merge_paused_after_the_pivot(&mut f, "after");
    // QEMU writes to base now; rvdsm has not yet seen the pivot.
    let (code, message) = f.daemon.err("VM.destroy", json!({"vmID": vm.uuid}));
    assert_eq!(code, 42, "{message}");
    assert!(message.contains("merge"), "{message}");
    assert!(
        message.contains(&job),
        "the refusal names the job: {message}"
    );
    std::fs::remove_file(&marker).unwrap();
    let info = wait_job(&f, &job, Duration::from_secs(120));
    assert_eq!(info["status"], "done", "{info}; log:\n{}", f.daemon.log());
    // The metadata says what QEMU uses: base the LEGAL leaf, top gone.
    let base_info = f.info(&image, &base);
    assert_eq!(base_info["voltype"], "LEAF", "{base_info}");
    assert_eq!(base_info["legality"], "LEGAL", "{base_info}");
    assert!(
        base_info["revertBoot"].is_null(),
        "the leaf has no snapshot on it: {base_info}"
    );
    let gone = f.daemon.err(
        "Volume.getInfo",
        json!({"storagepoolID": f.pool, "storagedomainID": f.domain, "imageID": image, "volumeID": top}),
    );
    assert_eq!(gone.0, 201, "the merged volume is deleted");
    assert!(chain_problems(&f, &image, &base).is_empty());
    assert_eq!(read_marker(|s: &str| vm.exec(s)), "after");
    // Once the merge ended, the VM is destroyed as usual.
    f.daemon.ok("VM.destroy", json!({"vmID": vm.uuid}));
}

#[test]
fn a_vm_gone_after_the_pivot_never_gets_its_stale_top_made_legal_again() {
    let Some(conn) = libvirt() else { return };
    let _slot = GuestSlot::acquire();
    let mut f = Fixture::new();
    let PausedAfterPivot {
        vm,
        image,
        base: _,
        top,
        job,
        marker,
    } = merge_paused_after_the_pivot(&mut f, "after");
    // The VM dies and its definition goes, behind rvdsm's back: nothing can tell any more
    // whether the pivot happened (it did: top misses what the guest wrote since).
    let domain = conn.lookup_domain_by_uuid_string(&vm.uuid).unwrap();
    domain.destroy().unwrap();
    domain.undefine().unwrap();
    std::fs::remove_file(&marker).unwrap();
    let info = wait_job(&f, &job, Duration::from_secs(180));
    assert_eq!(info["status"], "failed", "{info}");
    let top_info = f.info(&image, &top);
    assert_eq!(
        top_info["legality"], "ILLEGAL",
        "a top QEMU may have left must stay unusable, not become a stale LEGAL leaf: {info}; \
         {top_info}"
    );
    let message = info["error"]["message"].as_str().unwrap();
    assert!(message.contains("ILLEGAL"), "{message}");
}
