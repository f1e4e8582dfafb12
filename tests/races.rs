//! Operations on one image that race each other, with real guests: every task that changes an
//! image holds its lock for its whole run, and a snapshot job holds its drives' images from its
//! start to its end (issue 13, item 3 and the suspected delete-during-snapshot race).

mod common;

use std::time::Duration;

use common::chain::{assert_intact, freeze_status, snapshot_paused_at, wait_job};
use common::domain::Fixture;
use common::libvirt;
use serde_json::json;

/// A delete of the new volume sent while the snapshot is in its frozen window waits for the
/// job, then finds the VM using the volume and refuses (222): before, its check for use ran
/// before the switch, and its removal could run under it (the VM then writing to an unlinked
/// file).
#[test]
fn a_delete_of_the_new_volume_during_a_snapshot_waits_and_is_then_refused() {
    let Some(conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let paused = snapshot_paused_at(&mut f, &conn, "snapshot:frozen");
    let delete = f
        .daemon
        .ok("Volume.delete", f.volume_ids(&paused.image, &paused.top));
    let delete = delete.as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(2));
    let waiting = f.daemon.ok("Task.getStatus", json!({"taskID": delete}));
    assert_eq!(waiting["taskState"], "running", "{waiting}");

    // A manager's VM.thaw cannot cut the snapshot's frozen window (100, the guest stays
    // frozen until the job thaws it).
    let (code, message) = f.daemon.err("VM.thaw", json!({"vmID": paused.guest.uuid}));
    assert_eq!(code, 100, "{message}");
    assert_eq!(freeze_status(&paused.guest).as_deref(), Some("frozen"));

    std::fs::remove_file(&paused.marker).unwrap();
    let info = wait_job(&f, &paused.job, Duration::from_secs(60));
    assert_eq!(info["status"], "done", "{info}");
    assert_eq!(info["result"]["consistency"], "quiesced", "{info}");
    let status = f.daemon.wait_task(&delete);
    assert_eq!(
        (status["taskResult"].as_str(), status["code"].as_i64()),
        (Some("cleanSuccess"), Some(222)),
        "{status}"
    );
    assert_intact(
        &f,
        &paused.image,
        &paused.guest,
        &paused.top,
        "delete during snapshot",
    );
}
