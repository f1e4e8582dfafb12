//! The soak: guests write a numbered, checksummed, fdatasync'd stream to their data disks
//! (`rvdsm-writeprobe`) while cycles of `Volume.create` + `VM.snapshot`, `VM.freeze` /
//! `VM.thaw`, live merges (`VM.merge` of the active layer and of an internal volume), reverts
//! (preview of a quiesced snapshot, commit, boot: the stream holds exactly what was durable at
//! the snapshot), full clones (`SDM.copy_data`, compared with its source) and snapshots with
//! memory (`snapMemory`, paused and live, and rvdsmd killed before the dump: the memory
//! volumes LEGAL with the dump whole when done, ILLEGAL when failed, then deleted as an engine
//! does) run across them
//! with faults from the matrix injected at random: rvdsmd killed at each phase of a snapshot
//! and of a merge, libvirtd killed, a corrupted new volume, a hung agent, a manager that hangs
//! up, a freeze left to its auto-thaw. After every cycle the job's outcome must match what the VM
//! uses; at the end every stream must verify with no record lost (read back through the final
//! chain), no guest frozen, no volume outside a VM's chain, and rvdsmd's descriptors and memory
//! near their baseline. The summary is the last lines of its output.
//!
//! Bounded by count and time: `RVDSM_SOAK_CYCLES` (default 16, the CI run) and
//! `RVDSM_SOAK_MINUTES` (no bound by default); `RVDSM_SOAK_GUESTS` (default 2) and
//! `RVDSM_SOAK_SEED` (default: the clock). `RVDSM_SOAK_FAULTS` (a comma-separated list of
//! cycle names or their beginnings, e.g. `Memory,None`) keeps only those cycles: a run that
//! kills no libvirtd, beside other work. `scripts/soak` runs the long version.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use common::chain::{
    active_volume, chain_problems, freeze_status, new_top, snapshot_params, try_wait_job,
    volume_of, wait_thawed,
};
use common::domain::{Fixture, new_id};
use common::{Guest, GuestOptions, libvirt, libvirtd, wait_until};
use serde_json::{Value, json};

/// The stream each guest writes, on its data disk.
const STREAM: &str = "/mnt/data/stream";
/// Milliseconds between two records of the stream.
const INTERVAL_MS: u32 = 20;

/// What a cycle does to one guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// A plain snapshot.
    None,
    /// VM.freeze, VM.snapshot with frozen=true, VM.thaw: the multi-VM sequence.
    FrozenSet,
    /// rvdsmd killed at a snapshot failpoint, then restarted.
    Kill9(&'static str),
    /// A corrupted new volume: the switch fails and the job rolls back.
    Corrupt,
    /// A corrupted new volume, and rvdsmd killed while rolling back.
    Kill9Rollback,
    /// The guest agent hangs for a few seconds as the snapshot starts.
    AgentHang,
    /// VM.freeze never thawed by the manager: the auto-thaw must do it.
    AutoThaw,
    /// VM.freeze, then rvdsmd killed: the restarted one thaws on time.
    Kill9Frozen,
    /// The manager sends VM.snapshot and hangs up without reading the answer.
    HangUp,
    /// libvirtd killed in the frozen window, started again 2 s later.
    LibvirtdKill,
    /// A live merge of the active layer into its parent.
    MergeActive,
    /// A live merge of the leaf's parent into its own parent.
    MergeInternal,
    /// A live merge of the active layer, rvdsmd killed at a merge failpoint.
    MergeKill9(&'static str),
    /// The guest reverted to a quiesced snapshot of itself (VM stopped, preview, commit).
    Revert,
    /// A full copy of the leaf's parent (a snapshot) into a new image.
    Clone,
    /// A snapshot with memory, in this mode (`paused` or `live`).
    Memory(&'static str),
    /// A snapshot with memory, rvdsmd killed right before libvirt is asked for the dump.
    MemoryKill9,
}

const MERGE_POINTS: [&str; 3] = ["merge:committing", "merge:ready", "merge:pivoted"];

const SNAPSHOT_POINTS: [&str; 3] = [
    "snapshot:before-freeze",
    "snapshot:frozen",
    "snapshot:switched",
];

/// A small deterministic generator (xorshift64*): a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fault(&mut self) -> Fault {
        match self.below(30) {
            0..=5 => Fault::None,
            6 | 7 => Fault::FrozenSet,
            8..=10 => {
                Fault::Kill9(SNAPSHOT_POINTS[usize::try_from(self.below(3)).expect("below 3")])
            }
            11 => Fault::Corrupt,
            12 => Fault::Kill9Rollback,
            13 | 14 => Fault::AgentHang,
            15 => Fault::AutoThaw,
            16 => Fault::Kill9Frozen,
            17 | 18 => Fault::HangUp,
            19 => Fault::LibvirtdKill,
            20 | 21 => Fault::MergeActive,
            22 => Fault::MergeInternal,
            23 => Fault::MergeKill9(MERGE_POINTS[usize::try_from(self.below(3)).expect("below 3")]),
            24 => Fault::Revert,
            25 | 26 => Fault::Clone,
            27 => Fault::Memory("paused"),
            28 => Fault::Memory("live"),
            _ => Fault::MemoryKill9,
        }
    }
}

/// The cycles `RVDSM_SOAK_FAULTS` keeps (all when unset or empty).
fn kept_faults() -> Vec<String> {
    std::env::var("RVDSM_SOAK_FAULTS")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The next fault among those `kept` (see [`kept_faults`]).
fn next_fault(rng: &mut Rng, kept: &[String]) -> Fault {
    loop {
        let fault = rng.fault();
        let name = format!("{fault:?}");
        if kept.is_empty() || kept.iter().any(|k| name.starts_with(k.as_str())) {
            return fault;
        }
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One guest of the soak and the chain it is on.
struct Writer {
    guest: Guest,
    image: String,
    leaf: String,
    /// Volumes in its chain.
    depth: u64,
}

/// Past this chain depth a guest is retired (its stream verified, the VM destroyed, its image
/// deleted) and a new one takes its place: the merge cycles shorten chains, but at random, and
/// a long soak must not grow them without bound.
const MAX_DEPTH: u64 = 24;

/// Boots a guest on a new base volume and starts its writer. Through a new libvirt
/// connection: a libvirtd fault kills the old ones.
fn new_writer(f: &Fixture) -> Writer {
    let conn = virt::connect::Connect::open(Some("qemu:///system")).expect("libvirt");
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    guest.spawn(&format!(
        "( rvdsm-writeprobe write {STREAM} 1000000 {INTERVAL_MS} > /tmp/probe.out 2>&1 ) \
         </dev/null >/dev/null 2>&1 &"
    ));
    Writer {
        guest,
        image,
        leaf: base,
        depth: 1,
    }
}

/// What retiring a guest found wrong.
enum Broken {
    /// Its stream lost, tore or reordered records.
    Loss(String),
    /// Its chain or image was not sound, or did not go away.
    Leak(String),
}

/// Verifies a writer's stream and chain, destroys its VM and deletes its image; returns the
/// records verified, or what was wrong.
fn retire(f: &Fixture, w: Writer) -> Result<u64, Broken> {
    let records = verify_stream(&w).map_err(Broken::Loss)?;
    let problems = chain_problems(f, &w.image, &w.leaf);
    if !problems.is_empty() {
        return Err(Broken::Leak(format!("{}: {problems:?}", w.image)));
    }
    let Writer { guest, image, .. } = w;
    drop(guest);
    let task = f.daemon.ok(
        "Image.delete",
        json!({"storagedomainID": f.domain, "storagepoolID": f.pool, "imageID": image,
               "postZero": false, "force": false}),
    );
    let status = f.daemon.wait_task(task.as_str().unwrap_or_default());
    if status["taskResult"] != "success" || f.image_dir(&image).exists() {
        return Err(Broken::Leak(format!("Image.delete {image}: {status}")));
    }
    Ok(records)
}

/// What the soak counted.
#[derive(Default)]
struct Tally {
    cycles: u64,
    faults: BTreeMap<String, u64>,
    failures: Vec<String>,
    /// Jobs by kind and outcome (`snapshot done`, `merge failed`...).
    jobs: BTreeMap<String, u64>,
}

impl Tally {
    fn fail(&mut self, cycle: u64, what: String) {
        let _ = writeln!(std::io::stderr(), "soak: cycle {cycle}: FAILURE: {what}");
        self.failures.push(format!("cycle {cycle}: {what}"));
    }
}

/// rvdsmd's open descriptors, resident memory (KiB) and threads.
fn footprint(f: &Fixture) -> (usize, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", f.daemon.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (f.daemon.open_fds(), field("VmRSS:"), field("Threads:"))
}

#[test]
fn soak() {
    if libvirt().is_none() {
        return;
    }
    let cycles = env_number("RVDSM_SOAK_CYCLES", 16);
    let minutes = env_number("RVDSM_SOAK_MINUTES", 0);
    let guests = env_number("RVDSM_SOAK_GUESTS", 2).max(1);
    let seed = env_number(
        "RVDSM_SOAK_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    let say = |line: String| {
        let _ = writeln!(std::io::stderr(), "{line}");
    };
    say(format!(
        "soak: seed {seed}, up to {cycles} cycles{}, {guests} guests",
        if minutes > 0 {
            format!(" or {minutes} minutes")
        } else {
            String::new()
        }
    ));
    let started = Instant::now();
    let mut rng = Rng(seed | 1);
    let kept = kept_faults();
    let mut f = Fixture::with_config("[libvirt]\nagent_timeout_secs = 2\n");
    let mut writers: Vec<Writer> = (0..guests).map(|_| new_writer(&f)).collect();
    // The baseline: the daemon serving every guest once.
    for w in &writers {
        f.daemon.ok("VM.getStats", json!({"vmID": w.guest.uuid}));
    }
    let baseline = footprint(&f);
    let mut tally = Tally::default();
    let mut records = 0u64;
    let mut losses = 0u64;
    let mut leaks = 0u64;
    let mut retired = 0u64;
    let mut deepest = 0u64;

    let deadline = (minutes > 0).then(|| started + Duration::from_secs(minutes * 60));
    for cycle in 0..cycles {
        if deadline.is_some_and(|d| Instant::now() > d) {
            break;
        }
        let fault = next_fault(&mut rng, &kept);
        let slot = usize::try_from(cycle % guests).expect("a guest's slot");
        if writers[slot].depth >= MAX_DEPTH {
            // Retired first: the harness runs a bounded number of guests at once.
            let old = writers.remove(slot);
            retired += 1;
            match retire(&f, old) {
                Ok(n) => records += n,
                Err(Broken::Loss(what)) => {
                    losses += 1;
                    tally.fail(cycle, format!("retiring a guest: {what}"));
                }
                Err(Broken::Leak(what)) => {
                    leaks += 1;
                    tally.fail(cycle, format!("retiring a guest: {what}"));
                }
            }
            writers.insert(slot, new_writer(&f));
        }
        let w = &mut writers[slot];
        let name = format!("{fault:?}");
        *tally.faults.entry(name.clone()).or_default() += 1;
        tally.cycles += 1;
        let ended = run_cycle(&mut f, w, fault);
        deepest = deepest.max(w.depth);
        say(format!(
            "soak: cycle {cycle} on guest {slot}: {name} -> {ended:?}"
        ));
        match ended {
            Ok(Some((kind, done))) => {
                let outcome = if done { "done" } else { "failed" };
                *tally.jobs.entry(format!("{kind} {outcome}")).or_default() += 1;
            }
            Ok(None) => {}
            Err(what) => tally.fail(cycle, format!("{name}: {what}")),
        }
        if !wait_thawed(&w.guest, Duration::from_secs(60)) {
            tally.fail(cycle, format!("{name}: guest left frozen"));
        }
        if cycle % 10 == 9 {
            say(format!(
                "soak: {} cycles in {:.1} min, {} failures",
                cycle + 1,
                started.elapsed().as_secs_f64() / 60.0,
                tally.failures.len()
            ));
        }
    }

    // Hygiene: thousands of calls on the last daemon, then its footprint.
    for i in 0..2000 {
        let w = &writers[i % writers.len()];
        let (method, params) = match i % 4 {
            0 => ("VM.getStats", json!({"vmID": w.guest.uuid})),
            1 => ("Host.getJobs", Value::Null),
            2 => ("Host.getVMList", Value::Null),
            _ => ("Volume.getInfo", f.volume_ids(&w.image, &w.leaf)),
        };
        f.daemon.ok(method, params);
    }
    std::thread::sleep(Duration::from_secs(12)); // idle blocking threads end after 10 s
    let end = footprint(&f);

    // The streams, through the final chains.
    for w in &writers {
        match verify_stream(w) {
            Ok(n) => records += n,
            Err(what) => {
                losses += 1;
                tally.fail(tally.cycles, format!("{}: {what}", w.guest.name));
            }
        }
    }
    let mut frozen = 0u64;
    for w in &writers {
        if freeze_status(&w.guest).as_deref() != Some("thawed") {
            frozen += 1;
        }
        for problem in chain_problems(&f, &w.image, &w.leaf) {
            leaks += 1;
            tally.fail(tally.cycles, format!("{}: {problem}", w.image));
        }
    }
    let images: Vec<&str> = writers.iter().map(|w| w.image.as_str()).collect();
    for entry in std::fs::read_dir(f.root().join("images"))
        .unwrap()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !images.contains(&name.as_str()) {
            leaks += 1;
            tally.fail(tally.cycles, format!("image {name} belongs to no VM"));
        }
    }
    let fd_growth = end.0.saturating_sub(baseline.0);
    let rss_growth_mib = end.1.saturating_sub(baseline.1) / 1024;
    let resources_ok = fd_growth <= 8 && rss_growth_mib <= 24;
    if !resources_ok {
        tally.fail(tally.cycles, format!("footprint {baseline:?} -> {end:?}"));
    }

    let faults: Vec<String> = tally
        .faults
        .iter()
        .filter(|(k, _)| !PLAIN.contains(&k.as_str()))
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let injected: u64 = tally
        .faults
        .iter()
        .filter(|(k, _)| !PLAIN.contains(&k.as_str()))
        .map(|(_, v)| v)
        .sum();
    say(format!("soak: failures: {:#?}", tally.failures));
    say(format!(
        "soak summary: seed {seed}, {} cycles in {:.1} min on {guests} guests; faults {injected} ({}); \
         jobs ({}); guests retired and replaced {retired}; deepest chain {deepest}",
        tally.cycles,
        started.elapsed().as_secs_f64() / 60.0,
        faults.join(", "),
        tally
            .jobs
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    say(format!(
        "soak summary: records verified {records}, losses {losses}, leaks {leaks}, frozen {frozen}; \
         rvdsmd fds {} -> {}, rss {:.1} -> {:.1} MiB, threads {} -> {}",
        baseline.0,
        end.0,
        baseline.1 as f64 / 1024.0,
        end.1 as f64 / 1024.0,
        baseline.2,
        end.2
    ));
    say(format!("soak summary: failures {}", tally.failures.len()));
    assert!(tally.failures.is_empty(), "{:#?}", tally.failures);
}

/// The cycles that are operations, not faults (counted apart in the summary).
const PLAIN: [&str; 8] = [
    "None",
    "MergeActive",
    "MergeInternal",
    "Revert",
    "Clone",
    "FrozenSet",
    "Memory(\"paused\")",
    "Memory(\"live\")",
];

/// What a cycle's job was and whether it was done (`true`) or failed with nothing changed.
type CycleOutcome = Option<(&'static str, bool)>;

/// Runs one cycle on `w`; returns its job's kind and outcome, or none when no job ran; `Err`
/// when rvdsm broke a promise.
fn run_cycle(f: &mut Fixture, w: &mut Writer, fault: Fault) -> Result<CycleOutcome, String> {
    let vm = w.guest.uuid.clone();
    match fault {
        Fault::MergeActive | Fault::MergeInternal | Fault::MergeKill9(_) => {
            return merge_cycle(f, w, fault);
        }
        Fault::Revert => return revert_cycle(f, w),
        Fault::Clone => return clone_cycle(f, w),
        Fault::Memory(mode) => return memory_cycle(f, w, mode, false),
        Fault::MemoryKill9 => return memory_cycle(f, w, "paused", true),
        _ => {}
    }
    match fault {
        Fault::AutoThaw | Fault::Kill9Frozen => {
            let frozen = f
                .daemon
                .ok("VM.freeze", json!({"vmID": vm, "autoThawSeconds": 2}));
            if frozen != json!(true) {
                return Err(format!("VM.freeze: {frozen}"));
            }
            if fault == Fault::Kill9Frozen {
                f.daemon.restart_in_place(&[]);
            }
            if !wait_thawed(&w.guest, Duration::from_secs(30)) {
                return Err("auto-thaw never happened".into());
            }
            return Ok(None);
        }
        _ => {}
    }
    let top = new_top(f, &w.image, &w.leaf);
    let job = new_id();
    let mut params = snapshot_params(f, &vm, &w.image, &w.leaf, &top, &job);
    let corrupt = matches!(fault, Fault::Corrupt | Fault::Kill9Rollback);
    if corrupt {
        std::fs::write(f.image_dir(&w.image).join(&top), vec![0xa5u8; 1 << 20]).unwrap();
    }
    let pause = match fault {
        Fault::Kill9(point) => Some(point),
        Fault::Kill9Rollback => Some("snapshot:rolling-back"),
        Fault::LibvirtdKill => Some("snapshot:frozen"),
        _ => None,
    };
    let marker = pause.map(|point| f.daemon.restart_paused_at(point));
    match fault {
        Fault::FrozenSet => {
            f.daemon
                .ok("VM.freeze", json!({"vmID": vm, "autoThawSeconds": 60}));
            params["frozen"] = json!(true);
        }
        Fault::AgentHang => w.guest.spawn(
            "( kill -STOP $(pidof qemu-ga); sleep 4; kill -CONT $(pidof qemu-ga) ) \
             </dev/null >/dev/null 2>&1 &",
        ),
        _ => {}
    }
    if fault == Fault::HangUp {
        f.daemon.post_and_hang_up(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "VM.snapshot", "params": params}),
            Duration::from_millis(300),
        );
    } else if let Err(e) = f
        .daemon
        .call(common::daemon::Via::Unix, "VM.snapshot", params)
    {
        if pause.is_some() {
            // Disarm the failpoint, or the next cycle stops there.
            f.daemon.restart_in_place(&[]);
        }
        return Err(format!("VM.snapshot refused: {e}"));
    }
    if let (Some(point), Some(marker)) = (pause, marker) {
        if !wait_until(Duration::from_secs(60), || marker.exists()) {
            return Err(format!("{point} never reached"));
        }
        if fault == Fault::LibvirtdKill {
            let killed = libvirtd::kill9();
            std::fs::remove_file(&marker).unwrap();
            std::thread::sleep(Duration::from_secs(2));
            killed.start();
        } else {
            f.daemon.restart_in_place(&[]);
        }
    }
    let info = match try_wait_job(f, &job, Duration::from_secs(120)) {
        Ok(info) => info,
        Err(info) => {
            // Counted, and the daemon restarted so that the next cycles are not stuck behind it.
            f.daemon.restart_in_place(&[]);
            return Err(format!("job {job} never ended: {info}"));
        }
    };
    if fault == Fault::FrozenSet {
        f.daemon.ok("VM.thaw", json!({"vmID": vm}));
    }
    check_truth(f, w, &top, &info).map(|done| done.map(|d| ("snapshot", d)))
}

/// The job's outcome must be what the VM shows: done on the new volume, failed on the old one
/// with the new one deleted. Moves the writer's leaf along.
fn check_truth(
    f: &Fixture,
    w: &mut Writer,
    top: &str,
    info: &Value,
) -> Result<Option<bool>, String> {
    let active = volume_of(&active_volume(f, &w.guest.uuid));
    let top_file = f.image_dir(&w.image).join(top);
    match info["status"].as_str() {
        Some("done") if active == top => {
            w.leaf = top.to_owned();
            w.depth += 1;
            Ok(Some(true))
        }
        Some("failed") if active == w.leaf && !top_file.exists() => Ok(Some(false)),
        _ => Err(format!(
            "job says {info} but the VM uses {active} (old {}, new {top}, new file exists: {})",
            w.leaf,
            top_file.exists()
        )),
    }
}

/// Stops the guest's writer and verifies its stream through the final chain: every record the
/// writer made durable is there, in order, whole. Returns the number of records.
fn verify_stream(w: &Writer) -> Result<u64, String> {
    w.guest.exec(&format!("touch {STREAM}.stop"));
    let mut written = String::new();
    let stopped = wait_until(Duration::from_secs(30), || {
        written = w.guest.exec("cat /tmp/probe.out").1;
        written.starts_with("records")
    });
    if !stopped {
        return Err(format!("the writer did not stop: {written:?}"));
    }
    let durable: u64 = field(&written, "records").ok_or(format!("writer said {written:?}"))?;
    let (code, verified) = w.guest.exec(&format!(
        "sync; echo 3 > /proc/sys/vm/drop_caches; rvdsm-writeprobe verify {STREAM}"
    ));
    let found = field(&verified, "records");
    if code != 0 || found != Some(durable) || !verified.contains(" ok") {
        return Err(format!(
            "stream: writer made {durable} records durable, verify says {verified:?} (exit {code})"
        ));
    }
    Ok(durable)
}

/// The number after `name` in a writeprobe line.
fn field(line: &str, name: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    while let Some(word) = words.next() {
        if word == name {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// The parent of `volume` in the writer's image (`None` for the base).
fn parent_of(f: &Fixture, w: &Writer, volume: &str) -> Option<String> {
    let parent = f.info(&w.image, volume)["parent"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (parent != "00000000-0000-0000-0000-000000000000").then_some(parent)
}

/// A live merge: of the active layer into its parent, or of the leaf's parent into its own;
/// the job's outcome must be what the VM uses, and the chain sound.
fn merge_cycle(f: &mut Fixture, w: &mut Writer, fault: Fault) -> Result<CycleOutcome, String> {
    let internal = fault == Fault::MergeInternal;
    let Some(parent) = parent_of(f, w, &w.leaf) else {
        return Ok(None);
    };
    let (base, top) = if internal {
        let Some(grandparent) = parent_of(f, w, &parent) else {
            return Ok(None);
        };
        (grandparent, parent)
    } else {
        (parent, w.leaf.clone())
    };
    let job = new_id();
    let params = json!({
        "vmID": w.guest.uuid, "jobUUID": job,
        "drive": {"poolID": f.pool, "domainID": f.domain, "imageID": w.image, "volumeID": w.leaf},
        "baseVolUUID": base, "topVolUUID": top,
    });
    let pause = match fault {
        Fault::MergeKill9(point) => Some(point),
        _ => None,
    };
    let marker = pause.map(|point| f.daemon.restart_paused_at(point));
    if let Err(e) = f.daemon.call(common::daemon::Via::Unix, "VM.merge", params) {
        if pause.is_some() {
            f.daemon.restart_in_place(&[]);
        }
        return Err(format!("VM.merge refused: {e}"));
    }
    if let (Some(point), Some(marker)) = (pause, marker) {
        if !wait_until(Duration::from_secs(60), || marker.exists()) {
            f.daemon.restart_in_place(&[]);
            return Err(format!("{point} never reached"));
        }
        f.daemon.restart_in_place(&[]);
    }
    let info = match try_wait_job(f, &job, Duration::from_secs(180)) {
        Ok(info) => info,
        Err(info) => {
            f.daemon.restart_in_place(&[]);
            return Err(format!("merge {job} never ended: {info}"));
        }
    };
    let active = volume_of(&active_volume(f, &w.guest.uuid));
    let top_gone = !f.image_dir(&w.image).join(&top).exists();
    let expected = if internal { &w.leaf } else { &base };
    let done = match info["status"].as_str() {
        Some("done") if top_gone && &active == expected => true,
        Some("failed") if !top_gone && active == w.leaf => false,
        _ => {
            return Err(format!(
                "merge says {info} but the VM uses {active} (leaf {}, base {base}, top {top}, \
                 top deleted: {top_gone})",
                w.leaf
            ));
        }
    };
    if done {
        if !internal {
            w.leaf = base;
        }
        w.depth -= 1;
    }
    let problems = chain_problems(f, &w.image, &w.leaf);
    if !problems.is_empty() {
        return Err(format!("after the merge: {problems:?}"));
    }
    Ok(Some(("merge", done)))
}

/// A revert to a quiesced snapshot taken now: the stream is stopped and verified, the
/// snapshot taken, the VM stopped, a preview made on the snapshot's volume and committed (the
/// newer leaf deleted), and the guest booted on it. It must boot without journal recovery and
/// find exactly the records that were durable; then its writer starts again.
fn revert_cycle(f: &mut Fixture, w: &mut Writer) -> Result<CycleOutcome, String> {
    let durable = verify_stream(w)?;
    let snapshot_of = w.leaf.clone();
    let top = new_top(f, &w.image, &snapshot_of);
    let job = new_id();
    f.daemon.ok(
        "VM.snapshot",
        snapshot_params(f, &w.guest.uuid, &w.image, &snapshot_of, &top, &job),
    );
    let info = try_wait_job(f, &job, Duration::from_secs(120))
        .map_err(|info| format!("snapshot for the revert never ended: {info}"))?;
    if info["status"] != "done" || info["result"]["consistency"] != "quiesced" {
        return Err(format!("snapshot for the revert: {info}"));
    }
    if f.info(&w.image, &snapshot_of)["revertBoot"]["outcome"] != "clean" {
        return Err("a quiesced snapshot does not promise a clean boot".into());
    }
    let preview = new_top(f, &w.image, &snapshot_of);
    // The VM stops: the image's newer leaf can go (the commit of the preview).
    w.guest.stop();
    let task = f.daemon.ok(
        "Image.deleteVolumes",
        json!({"storagepoolID": f.pool, "storagedomainID": f.domain, "imageID": w.image,
               "volumeList": [top], "postZero": false, "force": true}),
    );
    let status = f.daemon.wait_task(task.as_str().unwrap_or_default());
    if status["taskResult"] != "success" {
        return Err(format!("commit of the preview: {status}"));
    }
    let prepared = f.daemon.ok(
        "Image.prepare",
        json!({"storagepoolID": f.pool, "storagedomainID": f.domain, "imageID": w.image,
               "volumeID": preview}),
    );
    let conn = virt::connect::Connect::open(Some("qemu:///system")).expect("libvirt");
    w.guest
        .reboot_on(&conn, prepared["path"].as_str().unwrap_or_default().into());
    w.leaf = preview;
    w.depth += 1;
    let guest = &w.guest;
    guest.wait_for_agent(Duration::from_secs(60));
    let console = guest.console();
    if console.contains("recovery complete") {
        return Err(format!(
            "a quiesced snapshot's revert replayed its journal:\n{console}"
        ));
    }
    let (code, verified) = guest.exec(&format!("rvdsm-writeprobe verify {STREAM}"));
    if code != 0 || field(&verified, "records") != Some(durable) {
        return Err(format!(
            "after the revert the stream says {verified:?}; {durable} records were durable"
        ));
    }
    guest.spawn(&format!(
        "( rvdsm-writeprobe write {STREAM} 1000000 {INTERVAL_MS} > /tmp/probe.out 2>&1 ) \
         </dev/null >/dev/null 2>&1 &"
    ));
    Ok(Some(("revert", true)))
}

/// A full copy of the leaf's parent (a snapshot) into a new image; it must hold what the
/// snapshot holds, and goes again.
fn clone_cycle(f: &mut Fixture, w: &mut Writer) -> Result<CycleOutcome, String> {
    let Some(source) = parent_of(f, w, &w.leaf) else {
        return Ok(None);
    };
    let (image, volume) = (new_id(), new_id());
    let created = f.create(&image, &volume, json!({"size": (64u64 << 20).to_string()}));
    if created["taskResult"] != "success" {
        return Err(format!("clone destination: {created}"));
    }
    let job = new_id();
    let endpoint = |img: &str, vol: &str| json!({"endpoint_type": "div", "sd_id": f.domain, "img_id": img, "vol_id": vol});
    f.daemon.ok(
        "SDM.copy_data",
        json!({"job_id": job, "source": endpoint(&w.image, &source),
               "destination": endpoint(&image, &volume)}),
    );
    let info = try_wait_job(f, &job, Duration::from_secs(180))
        .map_err(|info| format!("copy never ended: {info}"))?;
    let done = info["status"] == "done";
    if done {
        let compared = std::process::Command::new("qemu-img")
            .args(["compare", "-U"])
            .arg(f.image_dir(&w.image).join(&source))
            .arg(f.image_dir(&image).join(&volume))
            .output()
            .map_err(|e| e.to_string())?;
        if !compared.status.success() {
            return Err(format!(
                "the clone differs from its snapshot: {}",
                String::from_utf8_lossy(&compared.stdout)
            ));
        }
    }
    let task = f.daemon.ok(
        "Image.delete",
        json!({"storagedomainID": f.domain, "storagepoolID": f.pool, "imageID": image,
               "postZero": false, "force": false}),
    );
    f.daemon.wait_task(task.as_str().unwrap_or_default());
    Ok(Some(("clone", done)))
}

/// The RAM of the soak's guests (the fixture's default), in MiB.
const GUEST_MIB: u64 = 256;

/// A snapshot with memory in `mode`, as an engine takes it: a dump volume (RAM + 200 MiB +
/// 64 MiB, RAW, sparse) and a configuration volume (1 MiB), each alone in a new image, then
/// `VM.snapshot` with `snapMemory`. The job's outcome must be what the VM uses (as for any
/// snapshot); done, its result names the mode and the volumes, and both volumes are LEGAL
/// with the dump given its capacity back; failed, both are ILLEGAL. Then the engine deletes
/// them (their images must go whole). With `kill`, rvdsmd is killed at
/// `snapshot:before-dump` and restarted: the job must end failed, rolled back.
fn memory_cycle(
    f: &mut Fixture,
    w: &mut Writer,
    mode: &str,
    kill: bool,
) -> Result<CycleOutcome, String> {
    let top = new_top(f, &w.image, &w.leaf);
    let dump = memory_volume(f, (GUEST_MIB + 264) << 20, "MEMD")?;
    let conf = memory_volume(f, 1 << 20, "MEMM")?;
    let job = new_id();
    let mut params = snapshot_params(f, &w.guest.uuid, &w.image, &w.leaf, &top, &job);
    params["snapMemory"] = json!(format!(
        "{},{},{},{},{},{}",
        f.domain, f.pool, dump.0, dump.1, conf.0, conf.1
    ));
    params["memoryMode"] = json!(mode);
    params["frozen"] = json!(false);
    let marker = kill.then(|| f.daemon.restart_paused_at("snapshot:before-dump"));
    if let Err(e) = f
        .daemon
        .call(common::daemon::Via::Unix, "VM.snapshot", params)
    {
        if kill {
            f.daemon.restart_in_place(&[]);
        }
        return Err(format!("VM.snapshot with memory refused: {e}"));
    }
    if let Some(marker) = marker {
        let reached = wait_until(Duration::from_secs(60), || marker.exists());
        f.daemon.restart_in_place(&[]);
        if !reached {
            return Err("snapshot:before-dump never reached".into());
        }
    }
    let info = match try_wait_job(f, &job, Duration::from_secs(300)) {
        Ok(info) => info,
        Err(info) => {
            f.daemon.restart_in_place(&[]);
            return Err(format!("memory snapshot {job} never ended: {info}"));
        }
    };
    let done = check_truth(f, w, &top, &info)?;
    if kill && done != Some(false) {
        return Err(format!(
            "rvdsmd killed before the dump, yet the job says {info}"
        ));
    }
    let legality = |(image, volume): &(String, String)| {
        f.info(image, volume)["legality"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let expected = if done == Some(true) {
        "LEGAL"
    } else {
        "ILLEGAL"
    };
    for volume in [&dump, &conf] {
        if legality(volume) != expected {
            return Err(format!(
                "memory volume {} is {} after a job that says {info}",
                volume.1,
                legality(volume)
            ));
        }
    }
    if done == Some(true) {
        let memory = &info["result"]["memory"];
        let dump_file = f.image_dir(&dump.0).join(&dump.1);
        let capacity = (GUEST_MIB + 264) << 20;
        let length = std::fs::metadata(&dump_file).map_or(0, |m| m.len());
        if memory["mode"] != mode
            || memory["dumpVolume"] != json!(dump.1)
            || memory["dumpBytes"].as_u64().unwrap_or(0) == 0
            || length != capacity
        {
            return Err(format!(
                "memory snapshot done, but its result says {memory} and the dump is {length} \
                 bytes long (capacity {capacity})"
            ));
        }
    }
    for (image, _) in [&dump, &conf] {
        let task = f.daemon.ok(
            "Image.delete",
            json!({"storagedomainID": f.domain, "storagepoolID": f.pool, "imageID": image,
                   "postZero": false, "force": false}),
        );
        let status = f.daemon.wait_task(task.as_str().unwrap_or_default());
        if status["taskResult"] != "success" || f.image_dir(image).exists() {
            return Err(format!("Image.delete of memory image {image}: {status}"));
        }
    }
    Ok(done.map(|d| ("memory snapshot", d)))
}

/// A RAW sparse volume of `size` alone in a new image; returns `(image, volume)`.
fn memory_volume(f: &Fixture, size: u64, disk_type: &str) -> Result<(String, String), String> {
    let (image, volume) = (new_id(), new_id());
    let status = f.create(
        &image,
        &volume,
        json!({"size": size.to_string(), "volFormat": 5, "preallocate": 2, "diskType": disk_type}),
    );
    if status["taskResult"] != "success" {
        return Err(format!("memory volume: {status}"));
    }
    Ok((image, volume))
}
