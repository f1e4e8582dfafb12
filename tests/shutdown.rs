//! Stopping rvdsmd (SIGTERM, as `systemctl stop` sends it) with work in flight, with real
//! guests (issue 13, item 4). A stopped daemon keeps no auto-thaw deadline and, stopped
//! cleanly, is not restarted by systemd: so it thaws every guest it froze before it exits,
//! stops and rolls back its storage tasks, and journals what it cannot end for the next start.

mod common;

use std::time::{Duration, Instant};

use common::chain::{assert_intact, freeze_status, snapshot_paused_at, wait_job, wait_thawed};
use common::domain::{Fixture, assert_success, new_id};
use common::{GuestOptions, libvirt};
use serde_json::json;

/// Sends SIGTERM and checks that rvdsmd exits cleanly, well within its grace.
fn stop_cleanly(f: &mut Fixture) {
    let stopping = Instant::now();
    let status = f.daemon.terminate();
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        f.daemon.log()
    );
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn sigterm_thaws_a_guest_frozen_by_vm_freeze() {
    let Some(conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let (_, _, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let params = json!({"vmID": guest.uuid, "autoThawSeconds": 600});
    assert_eq!(f.daemon.ok("VM.freeze", params), json!(true));
    assert_eq!(freeze_status(&guest).as_deref(), Some("frozen"));

    let status = f.daemon.terminate();
    assert!(
        status.success(),
        "exit {status:?}; log:\n{}",
        f.daemon.log()
    );
    assert_eq!(
        freeze_status(&guest).as_deref(),
        Some("thawed"),
        "thawed before rvdsmd exited; log:\n{}",
        f.daemon.log()
    );
    // Its record went with the freeze: the next start owes no thaw.
    f.daemon.restart_in_place(&[]);
    let stats = f.daemon.ok("VM.getStats", json!({"vmID": guest.uuid}));
    assert!(stats[0]["frozen"].is_null(), "{stats}");
}

#[test]
fn sigterm_in_a_snapshots_frozen_window_thaws_the_guest_and_the_next_start_ends_the_job() {
    let Some(conn) = libvirt() else { return };
    let mut f = Fixture::new();
    f.daemon.set_server_setting("shutdown_timeout_secs", "3");
    let paused = snapshot_paused_at(&mut f, &conn, "snapshot:frozen");
    assert_eq!(freeze_status(&paused.guest).as_deref(), Some("frozen"));

    stop_cleanly(&mut f);
    assert!(
        wait_thawed(&paused.guest, Duration::from_secs(5)),
        "the guest stayed frozen after rvdsmd stopped; log:\n{}",
        f.daemon.log()
    );

    // The next start ends the job truthfully: the switch never happened.
    f.daemon.restart_in_place(&[]);
    let info = wait_job(&f, &paused.job, Duration::from_secs(60));
    assert_eq!(info["status"], "failed", "{info}");
    assert!(!f.image_dir(&paused.image).join(&paused.top).exists());
    assert_intact(&f, &paused.image, &paused.guest, &paused.base, "SIGTERM");
}

#[test]
fn sigterm_stops_and_rolls_back_a_running_create() {
    let mut f = Fixture::new();
    let (image, base, top) = (new_id(), new_id(), new_id());
    assert_success(&f.create(&image, &base, json!({})));
    let before = f.files();
    let (task, _marker) = f.create_paused_at("create:writing", &image, &base, &top);

    stop_cleanly(&mut f);
    assert_eq!(f.files(), before, "rolled back before exiting");

    f.daemon.restart_in_place(&[]);
    let status = f.daemon.ok("Task.getStatus", json!({"taskID": task}));
    assert_eq!(
        (
            status["taskState"].as_str(),
            status["taskResult"].as_str(),
            status["code"].as_i64()
        ),
        (Some("finished"), Some("cleanSuccess"), Some(411)),
        "{status}"
    );
    let message = status["message"].as_str().unwrap();
    assert!(
        !message.contains("interrupted"),
        "ended before the exit: {message}"
    );
    assert_eq!(f.info(&image, &base)["voltype"], "LEAF");
}
