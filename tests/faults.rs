//! The fault matrix, with real guests: rvdsmd killed before the freeze and during a rollback,
//! QEMU killed mid-snapshot, the guest agent hung, killed and restarted mid-freeze, a new
//! volume missing or on a full filesystem, the manager gone mid-call, a job id retried after a
//! crash, QEMU stopped under the switch (and rvdsmd killed meanwhile). After each: the guest
//! is thawed, the VM runs on a sound chain, nothing leaked, and the job says what happened.
//! (kill -9 in the frozen window and right after the switch: see `recovery.rs`; libvirtd
//! killed: see `libvirtd_restart.rs`.)

mod common;

use std::path::Path;
use std::time::Duration;

use common::chain::{
    assert_intact, freeze_status, new_top, snapshot_params, snapshot_paused_at, volume_of,
    wait_job, wait_thawed, wait_unowned,
};
use common::domain::{Fixture, assert_success, new_id};
use common::{GuestOptions, libvirt, wait_until};
use serde_json::{Value, json};

/// Tests that stop a QEMU (SIGSTOP) run alone: every rvdsmd samples every domain of the host's
/// libvirtd, and a stopped QEMU holds its domain's job for anyone's sample, so another test's
/// daemon would hang on it, and this test's calls behind another daemon's sample (seen in CI:
/// "read domain jobs did not complete within 3 s" with two such tests at once).
static QEMU_STOPS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Taken by a test that stops a QEMU: no other test of this binary runs meanwhile.
fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    QEMU_STOPS.write().unwrap_or_else(|e| e.into_inner())
}

/// Taken by every other test: they run beside each other, never beside a stopped QEMU.
fn beside_others() -> std::sync::RwLockReadGuard<'static, ()> {
    QEMU_STOPS.read().unwrap_or_else(|e| e.into_inner())
}

fn release(marker: &Path) {
    std::fs::remove_file(marker).unwrap();
}

fn reach(f: &Fixture, marker: &Path, point: &str) {
    assert!(
        wait_until(Duration::from_secs(60), || marker.exists()),
        "{point} never reached; log:\n{}",
        f.daemon.log()
    );
}

#[test]
fn kill_9_before_the_freeze_and_during_a_rollback_then_the_same_job_id_again() {
    let _others = beside_others();
    let Some(conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    for point in [
        "snapshot:before-freeze",
        "snapshot:rolling-back",
        "delete:data-removed",
    ] {
        let top = new_top(&f, &image, &base);
        if point != "snapshot:before-freeze" {
            // A switch that fails (libvirt: "Image is not in qcow2 format"), so that the job
            // rolls back, and is killed while it does.
            std::fs::write(f.image_dir(&image).join(&top), vec![0xa5u8; 1 << 20]).unwrap();
        }
        let marker = f.daemon.restart_paused_at(point);
        let job = new_id();
        let params = snapshot_params(&f, &guest.uuid, &image, &base, &top, &job);
        assert_eq!(f.daemon.ok("VM.snapshot", params.clone()), json!(true));
        reach(&f, &marker, point);
        f.daemon.restart_in_place(&[]);

        let info = wait_job(&f, &job, Duration::from_secs(60));
        assert_eq!(info["status"], "failed", "{point}: {info}");
        assert_eq!(info["error"]["code"], 48, "{point}: {info}");
        assert!(
            !f.image_dir(&image).join(&top).exists(),
            "{point}: new volume leaked"
        );
        assert_intact(&f, &image, &guest, &base, point);

        // The manager retries with the same job id: refused, the recorded outcome stands.
        let (code, message) = f.daemon.err("VM.snapshot", params);
        assert_eq!(code, 100, "{point}: {message}");
        assert!(message.contains(&job), "{message}");
        assert_eq!(
            wait_job(&f, &job, Duration::from_secs(5))["status"],
            "failed"
        );
    }
}

/// The pid of the guest's QEMU process, from libvirt's pid file.
fn qemu_pid(guest: &common::Guest) -> nix::unistd::Pid {
    let file = format!("/run/libvirt/qemu/{}.pid", guest.name);
    let pid = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
    nix::unistd::Pid::from_raw(pid.trim().parse().unwrap())
}

#[test]
fn qemu_killed_in_the_frozen_window_rolls_back_and_keeps_the_old_volume_sound() {
    let _others = beside_others();
    let Some(conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let p = snapshot_paused_at(&mut f, &conn, "snapshot:frozen");
    nix::sys::signal::kill(qemu_pid(&p.guest), nix::sys::signal::Signal::SIGKILL).unwrap();
    release(&p.marker);

    let info = wait_job(&f, &p.job, Duration::from_secs(60));
    assert_eq!(info["status"], "failed", "{info}");
    assert_eq!(info["error"]["code"], 48);
    // The VM is gone and never wrote to the new volume: it is deleted, the old one is whole.
    assert_eq!(info["result"]["deleted"], json!([p.top]), "{info}");
    assert!(!f.image_dir(&p.image).join(&p.top).exists());
    assert_eq!(f.info(&p.image, &p.base)["voltype"], "LEAF");
    assert_eq!(f.info(&p.image, &p.base)["legality"], "LEGAL");
    let check = common::guest::qemu_img(&[
        "check",
        "-q",
        f.image_dir(&p.image).join(&p.base).to_str().unwrap(),
    ]);
    assert_eq!(check, "");
    let (code, _) = f.daemon.err("VM.getStats", json!({"vmID": p.guest.uuid}));
    assert_eq!(code, 1, "the VM is gone");
    assert_eq!(f.daemon.ok("Host.ping2", Value::Null), json!(true));
}

/// Starts `script` in the guest in the background, detached from the agent that runs it.
fn in_guest_background(guest: &common::Guest, script: &str) {
    guest.spawn(&format!("( {script} ) </dev/null >/dev/null 2>&1 &"));
}

/// Where the guest's agent port is, and how to start the agent on it again.
const START_AGENT: &str = "for p in /sys/class/virtio-ports/vport*; do \
     [ \"$(cat $p/name)\" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}; done; \
     qemu-ga -m virtio-serial -p $port -t /run -d";

#[test]
fn a_hung_killed_or_restarted_agent_mid_freeze_is_thawed_once_it_answers() {
    let _others = beside_others();
    let Some(conn) = libvirt() else { return };
    let f = Fixture::with_config("[libvirt]\nagent_timeout_secs = 2\n");
    let (_, _, guest) = f.guest_on_volume(&conn, GuestOptions::default());

    // Hung: the agent is stopped 2 s after the freeze, past the auto-thaw deadline, for 10 s.
    in_guest_background(
        &guest,
        "sleep 2; kill -STOP $(pidof qemu-ga); sleep 10; kill -CONT $(pidof qemu-ga)",
    );
    let frozen = f.daemon.ok(
        "VM.freeze",
        json!({"vmID": guest.uuid, "autoThawSeconds": 3}),
    );
    assert_eq!(frozen, json!(true));
    std::thread::sleep(Duration::from_secs(4));
    let started = std::time::Instant::now();
    let (code, message) = f.daemon.err("VM.thaw", json!({"vmID": guest.uuid}));
    assert_eq!(code, 19, "a hung agent: {message}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "VM.thaw not bounded"
    );
    assert_eq!(f.daemon.ok("Host.ping2", Value::Null), json!(true));
    let stats = f.daemon.ok("VM.getStats", json!({"vmID": guest.uuid}));
    assert_eq!(
        stats[0]["frozen"]["by"], "VM.freeze",
        "the freeze is still owned: {stats}"
    );
    assert!(
        wait_thawed(&guest, Duration::from_secs(60)),
        "hung agent: never thawed after it woke; log:\n{}",
        f.daemon.log()
    );
    assert!(
        wait_unowned(&f, &guest, Duration::from_secs(30)),
        "the freeze record outlived the thaw; log:\n{}",
        f.daemon.log()
    );

    // Killed, then started again 8 s later: it comes back frozen (its state file) and the
    // retried auto-thaw thaws it.
    in_guest_background(
        &guest,
        &format!("sleep 2; kill -9 $(pidof qemu-ga); sleep 8; {START_AGENT}"),
    );
    let frozen = f.daemon.ok(
        "VM.freeze",
        json!({"vmID": guest.uuid, "autoThawSeconds": 4}),
    );
    assert_eq!(frozen, json!(true));
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(freeze_status(&guest), None, "the agent should be gone now");
    assert!(
        wait_thawed(&guest, Duration::from_secs(60)),
        "killed agent: never thawed after its restart; log:\n{}",
        f.daemon.log()
    );
    assert!(
        f.daemon.log().contains("thaw failed; retrying"),
        "{}",
        f.daemon.log()
    );
    let (code, out) = guest.exec("echo alive > /mnt/data/alive && sync && cat /mnt/data/alive");
    assert_eq!((code, out.as_str()), (0, "alive\n"));
}

#[test]
fn a_snapshot_whose_agent_hangs_mid_freeze_falls_back_and_the_late_freeze_is_undone() {
    let _others = beside_others();
    let Some(conn) = libvirt() else { return };
    let f = Fixture::with_config("[libvirt]\nagent_timeout_secs = 2\n");
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let top = new_top(&f, &image, &base);
    // The agent stops at once and wakes 8 s later, when it runs the freeze it was sent.
    in_guest_background(
        &guest,
        "kill -STOP $(pidof qemu-ga); sleep 8; kill -CONT $(pidof qemu-ga)",
    );
    std::thread::sleep(Duration::from_secs(1));
    let job = new_id();
    let params = snapshot_params(&f, &guest.uuid, &image, &base, &top, &job);
    assert_eq!(f.daemon.ok("VM.snapshot", params), json!(true));
    let info = wait_job(&f, &job, Duration::from_secs(60));
    assert_eq!(info["status"], "done", "{info}");
    assert_eq!(info["result"]["consistency"], "crash-consistent", "{info}");
    assert_eq!(info["result"]["reason"], "agent-not-responding", "{info}");
    assert_intact(&f, &image, &guest, &top, "late freeze");
}

#[test]
fn a_missing_new_volume_is_refused_and_a_full_filesystem_fails_the_create_cleanly() {
    let _others = beside_others();
    let Some(conn) = libvirt() else { return };
    let f = Fixture::new();
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());

    // Missing: the data file of the new volume was removed behind rvdsm's back.
    let top = new_top(&f, &image, &base);
    std::fs::remove_file(f.image_dir(&image).join(&top)).unwrap();
    let before = f.files();
    let job = new_id();
    let (code, message) = f.daemon.err(
        "VM.snapshot",
        snapshot_params(&f, &guest.uuid, &image, &base, &top, &job),
    );
    assert_eq!(code, 1000, "{message}");
    assert!(message.contains("data file is missing"), "{message}");
    assert_eq!(f.files(), before, "a refused snapshot changed files");
    assert_eq!(freeze_status(&guest).as_deref(), Some("thawed"));
    let deleted = f.daemon.ok(
        "Volume.delete",
        json!({"volumeID": top, "storagepoolID": f.pool, "storagedomainID": f.domain,
               "imageID": image, "postZero": false, "force": false}),
    );
    assert_success(&f.daemon.wait_task(deleted.as_str().unwrap()));
    assert_intact(&f, &image, &guest, &base, "missing volume");

    // Full: a second image on a small tmpfs, filled up before the create.
    let image2 = new_id();
    let dir2 = f.image_dir(&image2);
    let _mount = common::Tmpfs::mount(&dir2, "4m");
    let base2 = new_id();
    assert_success(&f.create(&image2, &base2, json!({"size": (64u64 << 20).to_string()})));
    common::fill(&dir2.join("filler"));
    let top2 = new_id();
    let status = f.create(
        &image2,
        &top2,
        json!({"srcVolUUID": base2, "size": (64u64 << 20).to_string()}),
    );
    // VDSM's form of a failed task whose rollback succeeded.
    assert_eq!(status["taskResult"], "cleanSuccess", "{status}");
    assert_eq!(status["code"], 200, "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("space"),
        "the error should say the disk is full: {status}"
    );
    let names: Vec<String> = std::fs::read_dir(&dir2)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(&top2)),
        "a failed create left files: {names:?}"
    );
    assert_eq!(f.info(&image2, &base2)["voltype"], "LEAF");
    std::fs::remove_file(dir2.join("filler")).unwrap();
    assert_success(&f.create(
        &image2,
        &top2,
        json!({"srcVolUUID": base2, "size": (64u64 << 20).to_string()}),
    ));
}

#[test]
fn a_manager_that_hangs_up_mid_call_leaves_nothing_half_done() {
    let _others = beside_others();
    let Some(conn) = libvirt() else { return };
    let f = Fixture::with_config("[libvirt]\nagent_timeout_secs = 2\n");
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());

    // Mid-call: VM.freeze on an agent that hangs for 6 s; the manager hangs up after 0.5 s,
    // inside the 2 s agent timeout. The call runs to its end all the same (here a failure:
    // the agent does not answer), says so in the log, and leaves the guest thawed and no
    // freeze recorded.
    in_guest_background(
        &guest,
        "kill -STOP $(pidof qemu-ga); sleep 6; kill -CONT $(pidof qemu-ga)",
    );
    std::thread::sleep(Duration::from_millis(500));
    let freeze = json!({"jsonrpc": "2.0", "id": 1, "method": "VM.freeze",
                        "params": {"vmID": guest.uuid}});
    f.daemon
        .post_and_hang_up(&freeze, Duration::from_millis(500));
    assert!(
        wait_until(Duration::from_secs(30), || f
            .daemon
            .log()
            .contains("failed after its client hung up")),
        "the freeze did not run to its end; log:\n{}",
        f.daemon.log()
    );
    assert_intact(&f, &image, &guest, &base, "hang-up during VM.freeze");

    // A VM.snapshot whose answer is never read: the job runs to its end all the same.
    let top = new_top(&f, &image, &base);
    let job = new_id();
    let request = json!({"jsonrpc": "2.0", "id": 2, "method": "VM.snapshot",
                         "params": snapshot_params(&f, &guest.uuid, &image, &base, &top, &job)});
    f.daemon
        .post_and_hang_up(&request, Duration::from_millis(300));
    let info = wait_job(&f, &job, Duration::from_secs(60));
    assert_eq!(info["status"], "done", "{info}");
    assert_eq!(info["result"]["consistency"], "quiesced");
    assert_intact(&f, &image, &guest, &top, "hang-up");
    assert_eq!(
        volume_of(&common::chain::active_volume(&f, &guest.uuid)),
        top
    );

    // Once the VM is gone its image goes whole, snapshot notes included (the soak found
    // `.snapshot` notes left behind, and Image.delete failing on the non-empty directory).
    drop(guest);
    assert!(
        f.image_dir(&image)
            .join(format!("{base}.snapshot"))
            .exists()
    );
    let task = f.daemon.ok(
        "Image.delete",
        json!({"storagedomainID": f.domain, "storagepoolID": f.pool, "imageID": image,
               "postZero": false, "force": false}),
    );
    assert_success(&f.daemon.wait_task(task.as_str().unwrap()));
    assert!(!f.image_dir(&image).exists(), "{:?}", f.files());
}

/// Sends SIGCONT to a stopped process when dropped, so a failing test never leaves a guest's
/// QEMU stopped.
struct Stopped(nix::unistd::Pid);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// Stops the guest's QEMU and starts an unquiesced snapshot onto a new volume: libvirt's
/// snapshot call waits on the monitor, past rvdsm's 3 s bound. Returns the job, the new volume
/// and the stop, undone when dropped.
fn hang_the_switch(
    f: &Fixture,
    image: &str,
    base: &str,
    guest: &common::Guest,
) -> (String, String, Stopped) {
    let top = new_top(f, image, base);
    let job = new_id();
    let mut params = snapshot_params(f, &guest.uuid, image, base, &top, &job);
    params["quiesce"] = json!("skip");
    let qemu = qemu_pid(guest);
    nix::sys::signal::kill(qemu, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let stopped = Stopped(qemu);
    assert_eq!(f.daemon.ok("VM.snapshot", params), json!(true));
    assert!(
        wait_until(Duration::from_secs(20), || f
            .daemon
            .log()
            .contains("still running past its timeout")),
        "{}",
        f.daemon.log()
    );
    (job, top, stopped)
}

/// The job of a switch libvirt still runs is not decided: it is running, its volume is there.
fn assert_undecided(f: &Fixture, job: &str, image: &str, top: &str) {
    let info = &f.daemon.ok("Host.getJobs", json!({"job_ids": [job]}))[job];
    assert_eq!(
        info["status"], "running",
        "decided while libvirt still runs the switch: {info}"
    );
    assert!(
        f.image_dir(image).join(top).exists(),
        "the new volume was deleted under a pending switch; log:\n{}",
        f.daemon.log()
    );
}

#[test]
fn a_hung_qemu_holds_one_call_and_only_its_vm_busy_and_a_late_switch_is_not_undone() {
    let _alone = alone();
    let Some(conn) = libvirt() else { return };
    let f = Fixture::with_config("[libvirt]\ncall_timeout_secs = 3\nagent_timeout_secs = 2\n");
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let (_, _, other) = f.guest_on_volume(&conn, GuestOptions::default());
    let (job, top, stopped) = hang_the_switch(&f, &image, &base, &guest);
    std::thread::sleep(Duration::from_secs(1));
    assert_undecided(&f, &job, &image, &top);

    // Only that VM is held: the other VM and the host answer at once.
    let started = std::time::Instant::now();
    let stats = f.daemon.ok("VM.getStats", json!({"vmID": other.uuid}));
    assert_eq!(stats[0]["status"], "Up");
    assert_eq!(
        f.daemon.ok("VM.freeze", json!({"vmID": other.uuid})),
        json!(true)
    );
    assert_eq!(
        f.daemon.ok("VM.thaw", json!({"vmID": other.uuid})),
        json!(true)
    );
    assert_eq!(f.daemon.ok("Host.ping2", Value::Null), json!(true));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let again = snapshot_params(&f, &guest.uuid, &image, &base, &top, &new_id());
    let (code, message) = f.daemon.err("VM.snapshot", again);
    assert_eq!(code, 100, "{message}");
    assert!(message.contains("busy"), "{message}");

    // QEMU wakes, libvirt finishes the switch: the job says so, and the volume stays.
    drop(stopped);
    let info = wait_job(&f, &job, Duration::from_secs(60));
    assert_eq!(info["status"], "done", "{info}");
    assert_eq!(info["result"]["consistency"], "unknown", "{info}");
    assert!(info["result"]["lateSwitch"].is_string(), "{info}");
    assert_eq!(f.info(&image, &base)["snapshot"]["reason"], "late-switch");
    assert_intact(&f, &image, &guest, &top, "hung QEMU");
}

#[test]
fn rvdsmd_killed_while_a_hung_qemu_holds_the_switch_waits_for_libvirt_before_judging() {
    let _alone = alone();
    let Some(conn) = libvirt() else { return };
    let mut f = Fixture::with_config("[libvirt]\ncall_timeout_secs = 3\nagent_timeout_secs = 2\n");
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    // rvdsmd dies while the switch hangs; libvirtd goes on with it when QEMU wakes, whoever
    // asked for it.
    let (job, top, stopped) = hang_the_switch(&f, &image, &base, &guest);
    f.daemon.restart_in_place(&[]);

    // Recovery sees libvirt's snapshot job: it decides nothing yet.
    assert_undecided(&f, &job, &image, &top);
    assert!(
        f.daemon.log().contains("still runs a snapshot on the VM"),
        "{}",
        f.daemon.log()
    );

    // QEMU wakes, libvirt finishes the switch: the recovered job is done, the volume kept.
    drop(stopped);
    let info = wait_job(&f, &job, Duration::from_secs(60));
    assert_eq!(info["status"], "done", "{info}");
    assert_eq!(info["result"]["consistency"], "unknown", "{info}");
    assert_eq!(info["result"]["recovered"], true, "{info}");
    let note = &f.info(&image, &base)["snapshot"];
    assert_eq!(note["consistency"], "unknown", "{note}");
    assert_eq!(note["reason"], "recovered", "{note}");
    assert_intact(
        &f,
        &image,
        &guest,
        &top,
        "rvdsmd killed under a hung switch",
    );
}
