//! Reverting a real guest to any of its snapshots, as an engine does it (preview, undo,
//! commit, VM stopped): a new leaf on the chosen snapshot's volume, `VM.create` on it, and
//! the boot the snapshot's consistency record promised, read from the guest's console: no
//! ext4 journal recovery after a quiesced snapshot taken under write load, journal recovery
//! after one taken without quiescing. The files are those of the snapshot's instant, and the
//! guest gets a new generation id at the first boot of a revert only.

mod common;

use std::time::Duration;

use common::chain::{new_top, read_marker, take_snapshot, write_marker};
use common::daemon::cli;
use common::domain::{Fixture, new_id};
use common::engine::EngineVm;
use common::guest::GuestSlot;
use common::libvirt;
use serde_json::json;

/// An ext4 mount that replayed its journal says so (`fs/ext4/super.c`).
const JOURNAL_RECOVERY: &str = "recovery complete";
/// Every mount of the data disk says this (the kernel's words reach the console).
const MOUNTED: &str = "rvdsm-guest: kernel: ";

/// Starts a writer in the guest: appends and renames files on the ext4 disk until the VM
/// stops, so that the journal always has transactions in flight.
fn start_writer(vm: &EngineVm) {
    let (code, out) = vm.exec(
        "(i=0; while :; do echo line$i >> /mnt/data/load; mv /mnt/data/load /mnt/data/load2; \
         mv /mnt/data/load2 /mnt/data/load; i=$((i+1)); done) >/dev/null 2>&1 & echo started",
    );
    assert_eq!(code, 0, "{out}");
    std::thread::sleep(Duration::from_secs(1));
}

fn destroy(f: &Fixture, vm: &str) {
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
}

/// Boots `vm` on `volume` and returns it once the guest has mounted its disk.
fn boot(f: &Fixture, vm: &str, image: &str, volume: &str, genid: &str) -> EngineVm {
    let (booted, created) = EngineVm::create(f, vm, image, volume, Some(genid));
    assert_eq!(created["status"], "Up", "{created}");
    booted.wait_booted();
    assert!(booted.console().contains(MOUNTED), "{}", booted.console());
    booted
}

#[test]
fn reverting_to_any_snapshot_boots_as_its_consistency_record_promised() {
    let Some(_conn) = libvirt() else { return };
    let _slot = GuestSlot::acquire();
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let vm = new_id();
    let genid = new_id();

    // The VM's life before the revert: A, a quiesced snapshot under write load, B, one
    // without quiescing under the same load, C.
    let first = boot(&f, &vm, &image, &base, &genid);
    assert_eq!(
        first.genid().as_deref(),
        Some(genid.as_str()),
        "an ordinary boot keeps it"
    );
    start_writer(&first);
    write_marker(|c: &str| first.exec(c), "A");
    let top1 = take_snapshot(&f, &vm, &image, &base, json!({}));
    write_marker(|c: &str| first.exec(c), "B");
    let top2 = take_snapshot(&f, &vm, &image, &top1, json!({"quiesce": "skip"}));
    write_marker(|c: &str| first.exec(c), "C");
    destroy(&f, &vm);
    drop(first);

    // What each snapshot promises, before any revert: in Volume.getInfo and in the CLI.
    let quiesced = f.info(&image, &base);
    assert_eq!(quiesced["revertBoot"]["outcome"], "clean", "{quiesced}");
    let crash = f.info(&image, &top1);
    assert_eq!(
        crash["revertBoot"]["outcome"], "journal-recovery",
        "{crash}"
    );
    assert!(f.info(&image, &top2)["revertBoot"].is_null());
    let (code, out, err) = cli(
        &f.daemon,
        &[
            "Volume",
            "getInfo",
            &format!("storagepoolID={}", f.pool),
            &format!("storagedomainID={}", f.domain),
            &format!("imageID={image}"),
            &format!("volumeID={top1}"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replays its filesystem journals"), "{out}");

    // Preview of the oldest, quiesced snapshot: a second child of the base; the newer
    // snapshots stay.
    let preview = new_top(&f, &image, &base);
    let mut children = f.info(&image, &base)["children"]
        .as_array()
        .unwrap()
        .clone();
    children.sort_by_key(|c| c.to_string());
    let mut expected = vec![json!(top1), json!(preview)];
    expected.sort_by_key(|c| c.to_string());
    assert_eq!(children, expected);
    let reverted = boot(&f, &vm, &image, &preview, &genid);
    let console = reverted.console();
    assert!(
        !console.contains(JOURNAL_RECOVERY),
        "a quiesced snapshot replayed its journal:\n{console}"
    );
    assert_eq!(read_marker(|c: &str| reverted.exec(c)), "A");
    let new_genid = reverted.genid().expect("a generation id");
    assert_ne!(
        new_genid, genid,
        "a revert gives the guest a new generation id"
    );
    destroy(&f, &vm);
    drop(reverted);

    // Undo: the preview goes, the chain is as before.
    f.delete_volumes(&image, &[&preview]);
    assert_eq!(f.info(&image, &base)["children"], json!([top1]));

    // Preview of the snapshot taken without quiescing: the journal is replayed at boot.
    let preview = new_top(&f, &image, &top1);
    let reverted = boot(&f, &vm, &image, &preview, &genid);
    let console = reverted.console();
    assert!(
        console.contains(JOURNAL_RECOVERY),
        "no journal recovery after an unquiesced snapshot:\n{console}"
    );
    assert_eq!(read_marker(|c: &str| reverted.exec(c)), "B");
    destroy(&f, &vm);
    drop(reverted);

    // Commit: the old leaf goes; the preview is the image's leaf, on the chosen snapshot.
    f.delete_volumes(&image, &[&top2]);
    assert_eq!(f.info(&image, &top1)["children"], json!([preview]));
    assert_eq!(f.info(&image, &preview)["voltype"], "LEAF");
    let volumes = f.daemon.ok(
        "StorageDomain.getVolumes",
        json!({"storagepoolID": f.pool, "storagedomainID": f.domain, "imageID": image}),
    );
    assert_eq!(volumes.as_array().unwrap().len(), 3, "{volumes}");

    // The next boot is an ordinary one: the engine's generation id is kept.
    let again = boot(&f, &vm, &image, &preview, &genid);
    assert_eq!(again.genid().as_deref(), Some(genid.as_str()));
    assert_eq!(read_marker(|c: &str| again.exec(c)), "B");
    destroy(&f, &vm);
}
