//! kill -9 of rvdsmd in the middle of a live snapshot, then a restart: the guest is thawed,
//! the VM runs on a consistent chain, no new volume leaks, and the job's outcome is truthful
//! under its original id.

mod common;

use std::time::Duration;

use common::domain::{Fixture, assert_success, new_id};
use common::{GuestOptions, libvirt, wait_until};
use serde_json::{Value, json};

fn freeze_status(guest: &common::Guest) -> String {
    let reply = guest
        .domain()
        .qemu_agent_command(r#"{"execute":"guest-fsfreeze-status"}"#, 5, 0)
        .unwrap();
    serde_json::from_str::<Value>(&reply).unwrap()["return"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn real(path: &std::path::Path) -> std::path::PathBuf {
    std::fs::canonicalize(path).unwrap()
}

#[test]
fn kill_9_while_frozen_and_right_after_the_switch() {
    let Some(conn) = libvirt() else { return };
    for point in ["snapshot:frozen", "snapshot:switched"] {
        let mut f = Fixture::new();
        let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
        let top = new_id();
        assert_success(&f.create(
            &image,
            &top,
            json!({"srcVolUUID": base, "size": (64u64 << 20).to_string()}),
        ));

        let marker = f.daemon.restart_paused_at(point);
        let job = new_id();
        let params = json!({
            "vmID": guest.uuid, "jobUUID": job,
            "snapDrives": [{"domainID": f.domain, "imageID": image, "baseVolumeID": base, "volumeID": top}],
        });
        assert_eq!(f.daemon.ok("VM.snapshot", params), json!(true));
        assert!(
            wait_until(Duration::from_secs(60), || marker.exists()),
            "{point} never reached"
        );
        assert_eq!(
            freeze_status(&guest),
            "frozen",
            "{point}: the guest should be frozen now"
        );

        f.daemon.restart_in_place(&[]);

        assert_eq!(
            freeze_status(&guest),
            "thawed",
            "{point}: guest left frozen"
        );
        // Recovery ends the job at once, or, while libvirt still holds the VM's monitor (the
        // monitoring's first samples after the restart, say), shows it running and ends it as
        // soon as libvirt is done: either way it ends.
        let mut jobs = f.daemon.ok("Host.getJobs", json!({"job_ids": [job]}));
        assert!(
            wait_until(Duration::from_secs(60), || {
                jobs = f.daemon.ok("Host.getJobs", json!({"job_ids": [job]}));
                jobs[&job]["status"] != "running"
            }),
            "{point}: the interrupted job never ended: {jobs}"
        );
        let info = &jobs[&job];
        let stats = f.daemon.ok("VM.getStats", json!({"vmID": guest.uuid}));
        let active = real(std::path::Path::new(
            stats[0]["disks"]["vda"]["path"].as_str().unwrap(),
        ));
        if point == "snapshot:frozen" {
            assert_eq!(info["status"], "failed", "{point}: {info}");
            assert_eq!(info["error"]["code"], 48);
            assert!(
                info["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("interrupted"),
                "{info}"
            );
            assert_eq!(active, real(&f.image_dir(&image).join(&base)));
            assert!(
                !f.image_dir(&image).join(&top).exists(),
                "{point}: new volume leaked"
            );
            assert_eq!(f.info(&image, &base)["voltype"], "LEAF");
        } else {
            assert_eq!(info["status"], "done", "{point}: {info}");
            assert_eq!(info["result"]["consistency"], "unknown");
            assert_eq!(active, real(&f.image_dir(&image).join(&top)));
            assert_eq!(f.info(&image, &base)["voltype"], "INTERNAL");
        }
        let (code, out) = guest.exec("echo alive > /mnt/data/alive && sync && cat /mnt/data/alive");
        assert_eq!((code, out.as_str()), (0, "alive\n"), "{point}");
    }
}

#[test]
fn finished_jobs_stay_visible_across_a_restart() {
    let Some(conn) = libvirt() else { return };
    let f = Fixture::new();
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let top = new_id();
    assert_success(&f.create(
        &image,
        &top,
        json!({"srcVolUUID": base, "size": (64u64 << 20).to_string()}),
    ));
    let job = new_id();
    let params = json!({
        "vmID": guest.uuid, "jobUUID": job,
        "snapDrives": [{"domainID": f.domain, "imageID": image, "baseVolumeID": base, "volumeID": top}],
    });
    assert_eq!(f.daemon.ok("VM.snapshot", params.clone()), json!(true));
    assert!(wait_until(Duration::from_secs(60), || {
        f.daemon.ok("Host.getJobs", json!({"job_ids": [job]}))[&job]["status"] == "done"
    }));
    let Fixture { daemon, .. } = f;
    let daemon = daemon.restart();
    let info = &daemon.ok("Host.getJobs", json!({"job_ids": [job]}))[&job];
    assert_eq!(info["status"], "done", "{info}");
    assert_eq!(info["result"]["consistency"], "quiesced");
    // The same job id is still known: a retry with it is refused rather than run twice.
    let (code, _) = daemon.err("VM.snapshot", params);
    assert_eq!(code, 100);
}

#[test]
fn a_freeze_survives_a_kill_9_and_is_still_thawed_on_time() {
    let Some(conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let (_, _, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let frozen = f.daemon.ok(
        "VM.freeze",
        json!({"vmID": guest.uuid, "autoThawSeconds": 10}),
    );
    assert_eq!(frozen, json!(true));
    assert_eq!(freeze_status(&guest), "frozen");

    f.daemon.restart_in_place(&[]);
    assert!(
        f.daemon.log().contains("re-arming auto-thaw"),
        "{}",
        f.daemon.log()
    );
    let stats = f.daemon.ok("VM.getStats", json!({"vmID": guest.uuid}));
    assert_eq!(stats[0]["frozen"]["by"], "VM.freeze", "{stats}");
    assert_eq!(
        freeze_status(&guest),
        "frozen",
        "thawed before its deadline"
    );
    assert!(
        wait_until(Duration::from_secs(30), || freeze_status(&guest)
            == "thawed"),
        "the restarted daemon never thawed the guest"
    );
    assert!(
        !f.daemon
            .dir
            .path()
            .join("state/freezes")
            .read_dir()
            .unwrap()
            .any(|_| true)
    );
}

#[test]
fn while_recovering_only_ping_is_served() {
    let mut f = Fixture::new();
    let marker = f.daemon.restart_paused_at("recovery:start");
    assert!(wait_until(Duration::from_secs(30), || marker.exists()));
    assert_eq!(f.daemon.ok("Host.ping2", Value::Null), json!(true));
    for verb in ["Host.getVMList", "Host.getStorageDomains", "Host.getJobs"] {
        let (code, message) = f.daemon.err(verb, Value::Null);
        assert_eq!(code, 99, "{verb}: {message}");
        assert_eq!(message, "Recovering from crash or Initializing");
    }
    // VDSM's managers send batches over STOMP: every call in one is gated too.
    let mut raw = common::stomp::Raw::connect(f.daemon.port);
    let batch = r#"[{"jsonrpc":"2.0","method":"Host.getVMList","id":1},{"jsonrpc":"2.0","method":"Host.ping2","id":2}]"#;
    let _ = raw.send(&common::stomp::frame(
        "CONNECT",
        &[("accept-version", "1.2")],
        "",
    ));
    let _ = raw.send(&common::stomp::frame(
        "SUBSCRIBE",
        &[("destination", "r"), ("id", "s")],
        "",
    ));
    let _ = raw.send(&common::stomp::frame(
        "SEND",
        &[
            ("destination", "jms.topic.vdsm_requests"),
            ("reply-to", "r"),
        ],
        batch,
    ));
    let reply = raw.read_until("MESSAGE", Duration::from_secs(10));
    let reply = reply + &raw.read_until("\0", Duration::from_secs(5));
    let body = reply.rsplit("\n\n").next().unwrap().trim_end_matches('\0');
    let replies: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
    let by_id = |id: i64| {
        replies
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_id(1)["error"]["code"], 99, "{replies}");
    assert_eq!(by_id(2)["result"], true, "{replies}");
    f.daemon.restart_in_place(&[]);
    assert_eq!(
        f.daemon.ok("Host.getStorageDomains", Value::Null),
        json!([f.domain])
    );
}

#[test]
fn a_vm_destroyed_while_rvdsmd_was_down_is_recovered_by_what_its_volume_holds() {
    let Some(conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let p = common::chain::snapshot_paused_at(&mut f, &conn, "snapshot:frozen");
    f.daemon.kill9();
    p.guest.domain().destroy().unwrap();
    f.daemon.restart_in_place(&[]);

    // The VM is gone and never wrote to the new volume: deleted, and the job says why.
    let info = &f.daemon.ok("Host.getJobs", json!({"job_ids": [p.job]}))[&p.job];
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(info["error"]["code"], 48);
    assert!(!f.image_dir(&p.image).join(&p.top).exists(), "{info}");
    let base = f.info(&p.image, &p.base);
    assert_eq!(
        (&base["voltype"], &base["legality"]),
        (&json!("LEAF"), &json!("LEGAL"))
    );
    let problems = common::chain::chain_problems(&f, &p.image, &p.base);
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn on_a_shared_domain_an_interrupted_snapshot_waits_for_the_host_s_lease_then_rolls_back() {
    use common::chain::{assert_intact, new_top, snapshot_params, wait_job};
    let Some(conn) = libvirt() else { return };
    let mut host = common::cluster::SharedHost::start();
    let (image, base, guest) = host.f.guest_on_volume(&conn, GuestOptions::default());
    let top = new_top(&host.f, &image, &base);
    let point = "snapshot:before-freeze";
    let marker = host.f.daemon.restart_paused_at(point);
    // The engine connects a restarted host again.
    host.connect();
    let job = new_id();
    let params = snapshot_params(&host.f, &guest.uuid, &image, &base, &top, &job);
    assert_eq!(host.f.daemon.ok("VM.snapshot", params), json!(true));
    assert!(
        wait_until(Duration::from_secs(60), || marker.exists()),
        "{point} never reached; log:\n{}",
        host.f.daemon.log()
    );
    host.f.daemon.restart_in_place(&[]);

    // Not connected yet: the domain's metadata cannot be changed, so the job waits, shown
    // running, its new volume still there.
    std::thread::sleep(Duration::from_secs(3));
    let jobs = host
        .f
        .daemon
        .ok("Host.getJobs", json!({"job_ids": [job.clone()]}));
    assert_eq!(jobs[&job]["status"], "running", "{jobs}");
    assert!(host.f.image_dir(&image).join(&top).exists());

    host.connect();
    let info = wait_job(&host.f, &job, Duration::from_secs(60));
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(info["error"]["code"], 48, "{info}");
    assert!(
        !host.f.image_dir(&image).join(&top).exists(),
        "the new volume leaked: {info}"
    );
    assert_intact(&host.f, &image, &guest, &base, point);
}
