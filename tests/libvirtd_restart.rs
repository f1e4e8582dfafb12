//! rvdsmd outlives libvirtd: while libvirtd is down, `Host.ping2` still answers and verbs that
//! need libvirt fail with a clear error; once libvirtd is back, the daemon reconnects by itself
//! and sees the guests that kept running. libvirtd killed in the middle of a snapshot or of a
//! freeze: the job waits for libvirtd and then ends exactly, and the guest is thawed once
//! libvirtd is back. libvirtd killed in the middle of a live merge's commit: the job follows
//! the commit again once libvirtd is back, to its pivot. A test binary of its own, since it stops the host's libvirtd under every
//! other test; its tests run one at a time.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::chain::{
    assert_intact, blob_sum, new_top, snapshot_params, snapshot_paused_at, take_snapshot, wait_job,
    wait_thawed, write_blob,
};
use common::domain::{Fixture, new_id};
use common::{Daemon, Guest, GuestOptions, libvirt, libvirtd, wait_until};
use rvdsm::client::ClientError;
use serde_json::{Value, json};

/// One libvirtd for the host: these tests take turns.
static LIBVIRTD: Mutex<()> = Mutex::new(());

#[test]
fn daemon_survives_and_reconnects_after_a_libvirtd_restart() {
    let _turn = LIBVIRTD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(conn) = libvirt() else { return };
    let guest = Guest::start_ready(&conn);
    let daemon = Daemon::start();
    let listed = |list: &Value| {
        list.as_array()
            .unwrap()
            .iter()
            .any(|vm| vm["vmId"] == guest.uuid.as_str())
    };
    assert!(listed(&daemon.ok("Host.getVMList", Value::Null)));

    let stopped = libvirtd::stop();
    assert_eq!(daemon.ok("Host.ping2", Value::Null), json!(true));
    for _ in 0..2 {
        match daemon.call(
            common::daemon::Via::Unix,
            "Host.getCapabilities",
            Value::Null,
        ) {
            Err(ClientError::Server { code, message }) => {
                assert_eq!(code, 100, "{message}");
                assert!(message.contains("hypervisor unavailable"), "{message}");
            }
            other => panic!("expected a clear error while libvirtd is down, got {other:?}"),
        }
    }
    // The monitoring verbs answer from the last sample, with its age, while libvirtd is down.
    assert!(listed(&daemon.ok("Host.getVMList", Value::Null)));
    let stats = daemon.ok("VM.getStats", json!({"vmID": guest.uuid}));
    assert!(stats[0]["statsAge"].as_f64().is_some(), "{stats}");
    assert_eq!(daemon.ok("Host.ping2", Value::Null), json!(true));

    stopped.start();
    // The guest kept running; the first request after the restart already reconnects.
    let list = daemon.ok("Host.getVMList", Value::Null);
    assert!(listed(&list), "{list}");
    let stats = daemon.ok("VM.getStats", json!({"vmID": guest.uuid}));
    assert_eq!(stats[0]["status"], "Up");
}

#[test]
fn libvirtd_killed_mid_snapshot_the_job_waits_and_ends_exactly() {
    let _turn = LIBVIRTD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let mut leaf = base.clone();
    for point in ["snapshot:frozen", "snapshot:switched"] {
        let top = new_top(&f, &image, &leaf);
        let marker = f.daemon.restart_paused_at(point);
        let job = new_id();
        let params = snapshot_params(&f, &guest.uuid, &image, &leaf, &top, &job);
        assert_eq!(f.daemon.ok("VM.snapshot", params), json!(true));
        assert!(
            wait_until(Duration::from_secs(60), || marker.exists()),
            "{point}"
        );
        let killed = libvirtd::kill9();
        std::fs::remove_file(&marker).unwrap();
        // While libvirtd is down the outcome cannot be known: the job is not ended by a guess.
        std::thread::sleep(Duration::from_secs(3));
        let jobs = f.daemon.ok("Host.getJobs", json!({"job_ids": [job]}));
        if point == "snapshot:frozen" {
            assert_eq!(jobs[&job]["status"], "running", "{point}: {jobs}");
        }
        assert_eq!(f.daemon.ok("Host.ping2", Value::Null), json!(true));
        killed.start();

        let info = wait_job(&f, &job, Duration::from_secs(60));
        if point == "snapshot:frozen" {
            assert_eq!(info["status"], "failed", "{point}: {info}");
            assert_eq!(info["error"]["code"], 48);
            assert_eq!(info["result"]["deleted"], json!([top]), "{info}");
        } else {
            assert_eq!(info["status"], "done", "{point}: {info}");
            assert_eq!(info["result"]["consistency"], "quiesced", "{info}");
            assert!(info["result"]["thawError"].is_string(), "{info}");
            leaf = top;
        }
        assert!(
            wait_thawed(&guest, Duration::from_secs(60)),
            "{point}: guest left frozen after libvirtd came back; log:\n{}",
            f.daemon.log()
        );
        assert_intact(&f, &image, &guest, &leaf, point);
    }
}

#[test]
fn libvirtd_killed_mid_merge_the_job_follows_the_commit_to_its_end() {
    let _turn = LIBVIRTD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let top = take_snapshot(&f, &guest.uuid, &image, &base, json!({}));
    let sum = write_blob(|s: &str| guest.exec(s), 4);
    let marker = f.daemon.restart_paused_at("merge:committing");
    let job = new_id();
    let params = json!({
        "vmID": guest.uuid, "jobUUID": job, "bandwidth": 1,
        "drive": {"poolID": f.pool, "domainID": f.domain, "imageID": image, "volumeID": top},
        "baseVolUUID": base, "topVolUUID": top,
    });
    assert_eq!(f.daemon.ok("VM.merge", params), json!(true));
    assert!(wait_until(Duration::from_secs(60), || marker.exists()));
    let killed = libvirtd::kill9();
    std::fs::remove_file(&marker).unwrap();
    // While libvirtd is down the commit goes on in QEMU; the job waits, it does not guess.
    std::thread::sleep(Duration::from_secs(3));
    let jobs = f.daemon.ok("Host.getJobs", json!({"job_ids": [job]}));
    assert_eq!(jobs[&job]["status"], "running", "{jobs}");
    killed.start();
    let info = wait_job(&f, &job, Duration::from_secs(120));
    assert_eq!(info["status"], "done", "{info}; log:\n{}", f.daemon.log());
    assert_intact(&f, &image, &guest, &base, "libvirtd killed mid-merge");
    assert_eq!(blob_sum(|s: &str| guest.exec(s)), sum);
}

#[test]
fn libvirtd_killed_during_a_freeze_the_auto_thaw_still_happens() {
    let _turn = LIBVIRTD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(conn) = libvirt() else { return };
    let f = Fixture::new();
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let frozen = f.daemon.ok(
        "VM.freeze",
        json!({"vmID": guest.uuid, "autoThawSeconds": 2}),
    );
    assert_eq!(frozen, json!(true));
    let killed = libvirtd::kill9();
    // The deadline passes while libvirtd is down: the thaw fails, and is retried.
    std::thread::sleep(Duration::from_secs(5));
    killed.start();
    assert!(
        wait_thawed(&guest, Duration::from_secs(60)),
        "guest left frozen; log:\n{}",
        f.daemon.log()
    );
    assert_intact(&f, &image, &guest, &base, "freeze");
}

#[test]
fn rvdsmd_restarted_while_libvirtd_is_down_ends_the_job_once_libvirtd_is_back() {
    let _turn = LIBVIRTD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let p = snapshot_paused_at(&mut f, &conn, "snapshot:frozen");

    // Both crash while the guest is frozen; rvdsmd comes back first.
    let killed = libvirtd::kill9();
    f.daemon.restart_in_place(&[]);
    // Recovery could not read the VM: the gate is open, the job is shown running, not guessed.
    let info = &f.daemon.ok("Host.getJobs", json!({"job_ids": [p.job]}))[&p.job];
    assert!(
        info["status"] == "running" || info["status"] == "pending",
        "{info}"
    );
    assert!(f.image_dir(&p.image).join(&p.top).exists());
    killed.start();

    let info = wait_job(&f, &p.job, Duration::from_secs(60));
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(info["error"]["code"], 48);
    assert!(
        wait_thawed(&p.guest, Duration::from_secs(60)),
        "guest left frozen; log:\n{}",
        f.daemon.log()
    );
    assert_intact(
        &f,
        &p.image,
        &p.guest,
        &p.base,
        "rvdsmd and libvirtd killed",
    );
}
