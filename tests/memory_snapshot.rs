//! Memory snapshots, their restore and hibernation on a real guest, as an engine drives them
//! (issue 29): the guest keeps a marker only in RAM (tmpfs), a counter in a running process
//! and files on its ext4 disk; after a memory snapshot (asked over STOMP with mutual TLS), more
//! writes, a revert onto a preview leaf and a restore, the RAM marker and the process are
//! back, the counter goes on from the snapshot's instant, the disk is that of the same
//! instant, the agent answers and the guest's clock is set again. The same in live mode and
//! after a hibernation; configuration volumes rvdsm cannot read (or saved for another VM) are
//! refused with nothing started or changed; a dump volume too small is refused with the VM
//! running on as before.

mod common;

use std::time::Duration;

use common::chain::{active_volume, new_top, try_wait_job, volume_of};
use common::domain::{Fixture, new_id};
use common::guest::GuestSlot;
use common::memory::{
    GUEST_MIB, MEMORY_JOB_TIMEOUT, MemVm, MemoryVolumes, domain_exists, file_sum,
    memory_snapshot_params, overwrite_start, raw_volume,
};
use common::{Daemon, libvirt, stomp, wait_until};
use serde_json::{Value, json};

/// VDSM's `exitReason` of a VM whose RAM was saved (`SAVE_STATE_SUCCEEDED` in
/// `lib/vdsm/virt/vmexitreason.py`; 4 there is `MIGRATION_SUCCEEDED`).
const SAVE_STATE_SUCCEEDED: i64 = 5;
/// How long the VM is left to run (then to stay saved) after the save: without the clock's
/// correction a restored guest lags by at least this much.
const AFTER_SAVE: Duration = Duration::from_secs(10);

/// A guest booted on `(image, volume)` that keeps a RAM marker and a running counter, and can
/// have its clock set by the agent.
fn guest_with_ram_state(f: &Fixture, vm: &str, image: &str, volume: &str) -> MemVm {
    let guest = MemVm::boot(f, vm, image, volume);
    guest.enable_set_time();
    guest.assert_clock_close("before the save (the test's premise)");
    let (code, mounts) = guest.exec("grep '^tmpfs /run tmpfs' /proc/mounts");
    assert_eq!(code, 0, "/run is not a tmpfs in the guest: {mounts}");
    guest.set_ram_marker("ram-at-save");
    guest.start_counter();
    guest
}

/// Waits for a memory job and returns its entry; panics with the log if it never ends.
fn wait_memory_job(f: &Fixture, job: &str) -> Value {
    try_wait_job(f, job, MEMORY_JOB_TIMEOUT)
        .unwrap_or_else(|info| panic!("job {job} never ended: {info}; log:\n{}", f.daemon.log()))
}

/// Asserts the job's result of a memory snapshot into `memory` in `mode`.
fn assert_memory_result(info: &Value, memory: &MemoryVolumes, mode: &str) {
    let result = &info["result"];
    eprintln!("{mode} memory snapshot: {}", result["memory"]);
    assert_eq!(result["consistency"], "with-memory", "{info}");
    assert!(result["reason"].is_null(), "{info}");
    let saved = &result["memory"];
    assert_eq!(saved["mode"], mode, "{info}");
    assert_eq!(saved["dumpVolume"], memory.dump_volume.as_str(), "{info}");
    assert_eq!(saved["confVolume"], memory.conf_volume.as_str(), "{info}");
    assert!(
        saved["dumpBytes"].as_u64().is_some_and(|b| b > 0),
        "no dump size: {info}"
    );
    assert!(
        saved["pauseMs"].as_f64().is_some_and(|p| p >= 0.0),
        "no measured pause: {info}"
    );
    assert_eq!(result["unconfirmedDisks"], json!([]), "{info}");
}

/// The counter's readings around a save: just before the call, right after it ended, and
/// [`AFTER_SAVE`] later (the VM still running on).
struct Counted {
    before: u64,
    done: u64,
    late: u64,
}

impl Counted {
    /// Asserts that a restored guest's counter goes on from the save's instant: not below the
    /// value before the save, well below where the running VM had taken it since, increasing,
    /// and its process alive.
    fn assert_resumed(&self, restored: &MemVm) {
        assert_ram_kept(restored);
        let first = restored.counter();
        eprintln!(
            "counter: {} before the save, {} when it ended, {} later; {first} after the restore",
            self.before, self.done, self.late
        );
        let ran = self.late - self.done;
        assert!(
            ran >= 20,
            "the counter hardly ran in the VM ({} then {})",
            self.done,
            self.late
        );
        assert!(
            first >= self.before && first < self.done + ran / 2,
            "the restored counter is at {first}: the save was between {} and {}, and the VM \
             counted on to {} afterwards",
            self.before,
            self.done,
            self.late
        );
        assert!(
            restored.counter_alive(),
            "the counting process is gone after the restore"
        );
        let moved = wait_until(Duration::from_secs(10), || restored.counter() > first);
        assert!(moved, "the restored counter stays at {first}");
    }
}

/// Fails at once, saying so, when a guest that should have been restored booted afresh: the
/// counter's file in its tmpfs is gone.
fn assert_ram_kept(restored: &MemVm) {
    let (code, out) = restored.exec("cat /run/counter");
    assert_eq!(
        code,
        0,
        "no counter in the guest's tmpfs ({out}): it booted afresh instead of resuming; \
         console:\n{}",
        restored.console()
    );
}

/// Reverts the destroyed `vm` to its memory snapshot as an engine does: a preview leaf on the
/// snapshot's base volume, VM.create naming it and the memory volumes. Returns the VM and the
/// preview.
fn revert(
    f: &Fixture,
    vm: &str,
    image: &str,
    base: &str,
    memory: &MemoryVolumes,
) -> (MemVm, String) {
    let preview = new_top(f, image, base);
    let (restored, created) = MemVm::start(f, vm, image, &preview, memory.restore_params(f));
    let created = created
        .unwrap_or_else(|e| panic!("the restore was refused: {e:?}; log:\n{}", f.daemon.log()));
    assert_eq!(created["status"], "Up", "{created}");
    (restored, preview)
}

/// Asserts a restored guest's clock is set again (bounded: rvdsm sets it once the agent
/// answers after the resume).
fn assert_clock_corrected(restored: &MemVm) {
    let close = wait_until(Duration::from_secs(10), || {
        restored.clock_offset().abs() <= 3
    });
    assert!(
        close,
        "the restored guest's clock is {} s off the host's",
        restored.clock_offset()
    );
}

#[test]
fn memory_snapshot_then_revert_restores_ram_disk_and_clock() {
    let Some(_conn) = libvirt() else { return };
    let _slot = GuestSlot::acquire();
    // The snapshot is asked as an engine asks it: STOMP over mutual TLS.
    let pki = tempfile::tempdir().unwrap();
    let lab = rvdsm::pki::init(pki.path(), &[]).unwrap();
    let f = Fixture::on(Daemon::start_tls(&lab.server));
    let (image, base, _) = f.data_volume();
    let vm = new_id();
    let first = guest_with_ram_state(&f, &vm, &image, &base);
    first.run("echo one > /mnt/data/first && sync");

    let memory = MemoryVolumes::for_guest(&f);
    let top = new_top(&f, &image, &base);
    let job = new_id();
    let params = memory_snapshot_params(&f, &vm, (&image, &base, &top), &memory, &job, None);
    let before = first.counter();
    let rt = stomp::runtime();
    let scheduled = rt.block_on(async {
        let engine = stomp::manager_over_tls(f.daemon.port, &lab.client, false).await;
        engine.call("VM.snapshot", params, None).await
    });
    let scheduled =
        scheduled.unwrap_or_else(|e| panic!("VM.snapshot over TLS: {e}; log:\n{}", f.daemon.log()));
    assert_eq!(scheduled, json!(true));
    let info = wait_memory_job(&f, &job);
    let done = first.counter();
    assert_eq!(info["status"], "done", "{info}; log:\n{}", f.daemon.log());
    assert_memory_result(&info, &memory, "paused");
    assert_eq!(volume_of(&active_volume(&f, &vm)), top);
    assert_eq!(
        f.info(&memory.dump_image, &memory.dump_volume)["legality"],
        "LEGAL"
    );
    assert_eq!(
        f.info(&memory.conf_image, &memory.conf_volume)["legality"],
        "LEGAL"
    );

    // The VM's life after the snapshot: other RAM, another file, time passing.
    first.set_ram_marker("ram-after-save");
    first.run("echo two > /mnt/data/second && sync");
    std::thread::sleep(AFTER_SAVE);
    let counted = Counted {
        before,
        done,
        late: first.counter(),
    };
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
    drop(first);

    let (restored, preview) = revert(&f, &vm, &image, &base, &memory);
    counted.assert_resumed(&restored);
    assert_eq!(restored.ram_marker(), "ram-at-save");
    assert_eq!(restored.run("cat /mnt/data/first"), "one");
    let (code, out) = restored.exec("[ ! -e /mnt/data/second ]");
    assert_eq!(
        code, 0,
        "the file written after the snapshot is there: {out}"
    );
    assert_eq!(volume_of(&active_volume(&f, &vm)), preview);
    let stats = f.daemon.ok("VM.getStats", json!({"vmID": vm}));
    assert_eq!(stats[0]["status"], "Up", "{stats}");
    assert_eq!(restored.libvirt_state(), "running");
    assert!(restored.pings(Duration::from_secs(10)), "no guest-ping");
    assert_clock_corrected(&restored);
    // The guest's writes after the restore land on the preview leaf.
    restored.run("echo three > /mnt/data/third && sync");
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
}

#[test]
fn live_memory_snapshot_then_revert_restores_ram_and_process() {
    let Some(_conn) = libvirt() else { return };
    let _slot = GuestSlot::acquire();
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let vm = new_id();
    let first = guest_with_ram_state(&f, &vm, &image, &base);

    let memory = MemoryVolumes::for_guest(&f);
    let top = new_top(&f, &image, &base);
    let job = new_id();
    let params =
        memory_snapshot_params(&f, &vm, (&image, &base, &top), &memory, &job, Some("live"));
    let before = first.counter();
    assert_eq!(f.daemon.ok("VM.snapshot", params), json!(true));
    let info = wait_memory_job(&f, &job);
    let done = first.counter();
    assert_eq!(info["status"], "done", "{info}; log:\n{}", f.daemon.log());
    assert_memory_result(&info, &memory, "live");
    assert_eq!(volume_of(&active_volume(&f, &vm)), top);

    first.set_ram_marker("ram-after-save");
    std::thread::sleep(AFTER_SAVE);
    let counted = Counted {
        before,
        done,
        late: first.counter(),
    };
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
    drop(first);

    let (restored, _) = revert(&f, &vm, &image, &base, &memory);
    counted.assert_resumed(&restored);
    assert_eq!(restored.ram_marker(), "ram-at-save");
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
}

#[test]
fn hibernate_and_resume() {
    let Some(_conn) = libvirt() else { return };
    let _slot = GuestSlot::acquire();
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let vm = new_id();
    let guest = guest_with_ram_state(&f, &vm, &image, &base);
    guest.run("echo one > /mnt/data/first && sync");
    // The counter's pace, to bound how far it may be found after the resume.
    let start = guest.counter();
    std::thread::sleep(Duration::from_secs(3));
    let in_three_seconds = guest.counter() - start;
    assert!(
        in_three_seconds >= 6,
        "the counter hardly runs: {in_three_seconds} in 3 s"
    );

    let memory = MemoryVolumes::for_guest(&f);
    let before = guest.counter();
    let started = f.daemon.ok(
        "VM.hibernate",
        json!({"vmID": vm, "hiberVolHandle": memory.handle(&f)}),
    );
    assert_eq!(started, json!(true));
    let (seen, stats) = statuses_until_down(&f, &vm);
    eprintln!("VM.getStats after VM.hibernate: {seen:?}");
    assert!(
        seen.iter().any(|s| s == "Saving State"),
        "the VM was never \"Saving State\" while its RAM was saved: {seen:?}"
    );
    let order = ["Up", "Saving State", "Down"];
    let ranks: Vec<Option<usize>> = seen
        .iter()
        .map(|s| order.iter().position(|o| o == s))
        .collect();
    assert!(
        ranks.iter().all(Option::is_some) && ranks.windows(2).all(|w| w[0] < w[1]),
        "VM.getStats went {seen:?} after VM.hibernate, not Up, Saving State, Down"
    );
    assert_eq!(stats["exitReason"], SAVE_STATE_SUCCEEDED, "{stats}");
    assert!(
        domain_exists(&vm),
        "the hibernated domain should stay defined until VM.destroy"
    );
    assert_eq!(guest.libvirt_state(), "shut off");
    assert_eq!(
        f.info(&memory.dump_image, &memory.dump_volume)["legality"],
        "LEGAL"
    );
    std::thread::sleep(AFTER_SAVE);
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
    drop(guest);

    let (resumed, created) = MemVm::start(&f, &vm, &image, &base, memory.hiber_params(&f));
    let created = created
        .unwrap_or_else(|e| panic!("the resume was refused: {e:?}; log:\n{}", f.daemon.log()));
    assert_eq!(created["status"], "Up", "{created}");
    assert_ram_kept(&resumed);
    let first = resumed.counter();
    // Five seconds' worth: the save begins right after the call.
    let margin = (in_three_seconds * 5 / 3).max(10);
    assert!(
        first >= before && first < before + margin,
        "the resumed counter is at {first}, the hibernation began at {before} \
         (margin {margin})"
    );
    assert!(resumed.counter_alive(), "the counting process is gone");
    assert!(
        wait_until(Duration::from_secs(10), || resumed.counter() > first),
        "the resumed counter stays at {first}"
    );
    assert_eq!(resumed.ram_marker(), "ram-at-save");
    assert_eq!(resumed.run("cat /mnt/data/first"), "one");
    assert_eq!(volume_of(&active_volume(&f, &vm)), base);
    assert!(resumed.pings(Duration::from_secs(10)), "no guest-ping");
    assert_clock_corrected(&resumed);
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
}

/// The distinct statuses `VM.getStats` shows for `vm`, polled closely, until it is Down (at
/// most [`MEMORY_JOB_TIMEOUT`]); and its stats then.
fn statuses_until_down(f: &Fixture, vm: &str) -> (Vec<String>, Value) {
    let mut seen: Vec<String> = Vec::new();
    let mut last = Value::Null;
    let down = wait_until(MEMORY_JOB_TIMEOUT, || {
        let stats = f.daemon.ok("VM.getStats", json!({"vmID": vm}));
        last = stats[0].clone();
        let status = last["status"].as_str().unwrap_or_default().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        last["status"] == "Down"
    });
    assert!(
        down,
        "{vm} never Down after VM.hibernate ({seen:?}); log:\n{}",
        f.daemon.log()
    );
    (seen, last)
}

/// What a refused restore must leave as it was: the memory volumes' and the leaf's bytes and
/// legality, and the domain's files.
struct Untouched {
    sums: Vec<String>,
    legality: Vec<Value>,
    files: std::collections::BTreeSet<std::path::PathBuf>,
}

impl Untouched {
    fn of(f: &Fixture, volumes: &[(&str, &str)]) -> Untouched {
        Untouched {
            sums: volumes
                .iter()
                .map(|(i, v)| file_sum(&f.image_dir(i).join(v)))
                .collect(),
            legality: volumes
                .iter()
                .map(|(i, v)| f.info(i, v)["legality"].clone())
                .collect(),
            files: f.files(),
        }
    }
}

/// A protocol-2 pickle of a dictionary, as VDSM writes its memory configuration.
const VDSM_PICKLE: &[u8] =
    b"\x80\x02}q\x00X\x03\x00\x00\x00xmlq\x01X\t\x00\x00\x00<domain/>q\x02s.";

/// The written part of a configuration volume (up to its last non-zero byte).
fn written_part(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    &bytes[..end]
}

/// The same configuration claiming a newer format version (its header's second word).
fn newer_version(good: &[u8]) -> Vec<u8> {
    let newline = good
        .iter()
        .position(|b| *b == b'\n')
        .expect("a header line");
    let header = std::str::from_utf8(&good[..newline]).expect("a text header");
    let mut words: Vec<&str> = header.split(' ').collect();
    assert!(words.len() >= 2, "header {header:?}");
    words[1] = "999";
    let mut out = words.join(" ").into_bytes();
    out.extend_from_slice(&good[newline..]);
    out
}

#[test]
fn restore_refuses_what_it_cannot_read() {
    let Some(_conn) = libvirt() else { return };
    let _slot = GuestSlot::acquire();
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let saved_vm = new_id();
    let guest = MemVm::boot(&f, &saved_vm, &image, &base);
    guest.set_ram_marker("ram-at-save");
    let memory = MemoryVolumes::for_guest(&f);
    let top = new_top(&f, &image, &base);
    let job = new_id();
    let params = memory_snapshot_params(&f, &saved_vm, (&image, &base, &top), &memory, &job, None);
    assert_eq!(f.daemon.ok("VM.snapshot", params), json!(true));
    let info = wait_memory_job(&f, &job);
    assert_eq!(info["status"], "done", "{info}; log:\n{}", f.daemon.log());
    f.daemon.ok("VM.destroy", json!({"vmID": saved_vm}));
    drop(guest);
    let preview = new_top(&f, &image, &base);
    let good = std::fs::read(memory.conf_path(&f)).unwrap();
    let good = written_part(&good).to_vec();
    assert!(good.len() > 100, "a configuration of {} bytes", good.len());

    // Each bad configuration in a fresh configuration volume beside the good dump.
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("zeros", vec![0u8; 64 << 10], &["empty"]),
        ("VDSM's pickle", VDSM_PICKLE.to_vec(), &["format"]),
        ("torn", good[..good.len() / 2].to_vec(), &["torn"]),
        ("newer", newer_version(&good), &["version"]),
    ];
    for (what, bytes, words) in cases {
        let conf = raw_volume(&f, 1 << 20, "MEMM");
        let bad = memory.with_conf(&conf);
        overwrite_start(&bad.conf_path(&f), &bytes);
        let volumes = [
            (bad.dump_image.as_str(), bad.dump_volume.as_str()),
            (conf.0.as_str(), conf.1.as_str()),
            (image.as_str(), preview.as_str()),
        ];
        assert_refused(&f, &saved_vm, &image, &preview, &bad, &volumes, what, words);
    }

    // A good configuration, but saved for another VM.
    let other_vm = new_id();
    let volumes = [
        (memory.dump_image.as_str(), memory.dump_volume.as_str()),
        (memory.conf_image.as_str(), memory.conf_volume.as_str()),
        (image.as_str(), preview.as_str()),
    ];
    let lower = saved_vm.to_lowercase();
    assert_refused(
        &f,
        &other_vm,
        &image,
        &preview,
        &memory,
        &volumes,
        "saved for another VM",
        &[lower.as_str(), "another vm", "other vm", "saved for"],
    );

    // The same volumes restore the VM they were saved for: the refusals above were about the
    // bytes and the VM, nothing else.
    let (restored, created) =
        MemVm::start(&f, &saved_vm, &image, &preview, memory.restore_params(&f));
    let created = created.unwrap_or_else(|e| {
        panic!(
            "the good restore was refused: {e:?}; log:\n{}",
            f.daemon.log()
        )
    });
    assert_eq!(created["status"], "Up", "{created}");
    assert_eq!(restored.ram_marker(), "ram-at-save");
    f.daemon.ok("VM.destroy", json!({"vmID": saved_vm}));
}

/// Asserts that restoring `vm` on `(image, leaf)` from `memory` is refused with an error
/// naming the problem (one of `words`), that no domain of `vm` is left and that `volumes`
/// are as they were.
#[allow(clippy::too_many_arguments)]
fn assert_refused(
    f: &Fixture,
    vm: &str,
    image: &str,
    leaf: &str,
    memory: &MemoryVolumes,
    volumes: &[(&str, &str)],
    what: &str,
    words: &[&str],
) {
    let before = Untouched::of(f, volumes);
    let (guard, outcome) = MemVm::start(f, vm, image, leaf, memory.restore_params(f));
    let (code, message) = match outcome {
        Err(refused) => refused,
        Ok(reply) => panic!("{what}: the restore was accepted: {reply}"),
    };
    let lower = message.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(w)),
        "{what}: the error ({code}) does not name the problem ({words:?}): {message}"
    );
    assert!(
        !domain_exists(vm),
        "{what}: a domain of {vm} is left after the refusal ({})",
        guard.libvirt_state()
    );
    drop(guard);
    let after = Untouched::of(f, volumes);
    assert_eq!(before.sums, after.sums, "{what}: a volume's bytes changed");
    assert_eq!(
        before.legality, after.legality,
        "{what}: a legality changed"
    );
    assert_eq!(
        before.files, after.files,
        "{what}: the domain's files changed"
    );
    eprintln!("{what}: refused with {code}: {message}");
}

#[test]
fn memory_snapshot_refused_when_the_dump_volume_is_too_small() {
    let Some(_conn) = libvirt() else { return };
    let _slot = GuestSlot::acquire();
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let vm = new_id();
    let guest = MemVm::boot(&f, &vm, &image, &base);
    guest.start_counter();
    const { assert!(16 < GUEST_MIB + 64) };
    let memory = MemoryVolumes::with_dump_size(&f, 16 << 20);
    let top = new_top(&f, &image, &base);
    let files_before = f.files();
    let job = new_id();
    let params = memory_snapshot_params(&f, &vm, (&image, &base, &top), &memory, &job, None);
    let refused_at_call = match f
        .daemon
        .call(common::daemon::Via::Unix, "VM.snapshot", params)
    {
        Err(rvdsm::client::ClientError::Server { code, message }) => {
            eprintln!("refused at the call with {code}: {message}");
            let lower = message.to_lowercase();
            assert!(
                lower.contains("small") || lower.contains("size"),
                "the refusal does not say the dump volume is too small: {message}"
            );
            true
        }
        Ok(scheduled) => {
            assert_eq!(scheduled, json!(true));
            let info = wait_memory_job(&f, &job);
            eprintln!("the job ended: {info}");
            assert_eq!(info["status"], "failed", "{info}");
            false
        }
        Err(other) => panic!("VM.snapshot: {other}"),
    };

    // The VM runs on its old leaf, not paused, and goes on writing and counting.
    assert_eq!(volume_of(&active_volume(&f, &vm)), base);
    let stats = f.daemon.ok("VM.getStats", json!({"vmID": vm}));
    assert_eq!(stats[0]["status"], "Up", "{stats}");
    assert_eq!(guest.libvirt_state(), "running");
    let counted = guest.counter();
    assert!(
        wait_until(Duration::from_secs(10), || guest.counter() > counted),
        "the guest's counter stopped"
    );
    assert_eq!(
        guest.run("echo alive > /mnt/data/alive && sync && cat /mnt/data/alive"),
        "alive"
    );
    // No volume left by rvdsm; only the disk's unused new volume may have gone.
    let files_after = f.files();
    let added: Vec<_> = files_after.difference(&files_before).collect();
    assert!(added.is_empty(), "new files: {added:?}");
    let top_dir = f.image_dir(&image);
    for gone in files_before.difference(&files_after) {
        let name = gone.file_name().unwrap().to_string_lossy();
        assert!(
            gone.parent() == Some(top_dir.as_path()) && name.starts_with(top.as_str()),
            "{} is gone",
            gone.display()
        );
    }
    let expected = if refused_at_call { "LEGAL" } else { "ILLEGAL" };
    assert_eq!(
        f.info(&memory.dump_image, &memory.dump_volume)["legality"],
        expected
    );
    assert_eq!(
        f.info(&memory.conf_image, &memory.conf_volume)["legality"],
        expected
    );
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
}
