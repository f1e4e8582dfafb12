//! Memory snapshots beside their floor: rvdsm's `VM.snapshot` with `snapMemory` (the two
//! memory volumes and the disk's new top created first, as an engine does) in both
//! `memoryMode`s, against the same external snapshot with memory issued directly to libvirt
//! (what `virsh snapshot-create --reuse-external --no-metadata [--live]` does with a
//! `<memory snapshot='external'>` element) onto the same kind of files. For each: request to
//! done, and how long the guest stood still, seen from libvirt (its lifecycle events) and
//! from the guest (how far its clock fell behind).
//!
//! The guest cannot time its own pause with timestamps taken in a loop: under TCG its clocks
//! stop with its vCPUs (measured: a 2 s `virsh suspend` left no gap in the guest's clock and
//! put it 2.02 s behind the host's). So the guest's side is its clock's lag: host time minus
//! the guest's (`guest-get-time`, the answer with the shortest round trip of three) just
//! before and just after the snapshot; the difference is the time its vCPUs were stopped.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::sync::Notify;
use virt::connect::Connect;

use crate::host::{Guest, Host};
use crate::snap::{JobWatcher, floor_overlay, millis, switched};
use crate::stats::{Summary, ratio};

/// The small idle guest's RAM, MiB.
const IDLE_MIB: u64 = 256;
/// The large guest's RAM, MiB: it runs a writing workload.
const WRITING_MIB: u64 = 1024;
/// What the workload rewrites over and over in the guest's tmpfs, MiB.
const WORKING_SET_MIB: u64 = 256;
/// The dump volume's size beyond the guest's RAM, as an engine sizes it (ovirt-engine's
/// `MemoryUtils`: 200 MiB, and 64 MiB for one video device).
const DUMP_SLACK_MIB: u64 = 200 + 64;
/// The configuration volume's size (engines round ~10 KiB up).
const CONF_BYTES: u64 = 1 << 20;
/// The longest a snapshot with memory may take before the floor's job is aborted (a live
/// dump that never converges under a writing guest would run forever).
const FLOOR_TIMEOUT: Duration = Duration::from_secs(300);

/// What to measure.
pub struct MemoryArgs {
    /// Repetitions of each measurement (per guest, mode and side).
    pub reps: usize,
    /// The 1 GiB writing guest as well as the idle one.
    pub writing: bool,
}

/// How the RAM is saved (rvdsm's `memoryMode`; libvirt's `LIVE` flag for the floor).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Paused,
    Live,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Paused => "paused",
            Mode::Live => "live",
        }
    }
}

/// One snapshot with memory, measured.
#[derive(Default)]
struct Sample {
    /// Request to done, ms.
    took: f64,
    /// The guest stood still (libvirt's suspended to resumed events, summed), ms.
    pause: f64,
    /// How many suspended-resumed pairs.
    pauses: usize,
    /// How far the guest's clock fell behind the host's, ms.
    guest_lag: f64,
    /// The lag's uncertainty (half the two agent round trips), ms.
    lag_error: f64,
    /// rvdsm's `result.memory.pauseMs` (rvdsm only).
    reported_pause: Option<f64>,
    /// QEMU's downtime of the RAM copy (libvirt's completed job), ms.
    downtime: Option<f64>,
    /// Passes over the RAM (libvirt's completed job).
    iterations: Option<f64>,
    /// The dump's allocated size on disk, MiB.
    dump_mib: f64,
}

/// The lifecycle events of every domain as `virsh event --loop --timestamp` prints them:
/// the same instrument for rvdsm's guests and the floor's.
struct Lifecycle {
    events: Arc<Mutex<Vec<LifecycleEvent>>>,
    notify: Arc<Notify>,
    _virsh: tokio::process::Child,
}

struct LifecycleEvent {
    domain: String,
    /// libvirt's time of the event as virsh received it, ms since the epoch.
    at_ms: f64,
    suspended: bool,
}

impl Lifecycle {
    async fn start() -> Result<Lifecycle> {
        let mut virsh = tokio::process::Command::new("virsh")
            .args([
                "-c",
                "qemu:///system",
                "event",
                "--event",
                "lifecycle",
                "--loop",
                "--timestamp",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("virsh event")?;
        let stdout = virsh.stdout.take().context("virsh event's output")?;
        let events = Arc::new(Mutex::new(Vec::new()));
        let notify = Arc::new(Notify::new());
        let (sink, woken) = (events.clone(), notify.clone());
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(event) = parse_event(&line) {
                    sink.lock().unwrap().push(event);
                    woken.notify_waiters();
                }
            }
        });
        // virsh registers its callback after connecting: give it the time to.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(Lifecycle {
            events,
            notify,
            _virsh: virsh,
        })
    }

    /// Where the events seen so far end.
    fn mark(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// The time `domain` stood still since `mark`: the suspended-to-resumed spans summed, and
    /// how many; waits (up to 5 s) for a resumed event to end every suspended one.
    async fn pause_since(&self, domain: &str, mark: usize) -> Result<(f64, usize)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let notified = self.notify.notified();
            if let Some(pause) = self.balanced(domain, mark) {
                return Ok(pause);
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                bail!("libvirt's lifecycle events of {domain} show no suspended-resumed pair");
            }
        }
    }

    fn balanced(&self, domain: &str, mark: usize) -> Option<(f64, usize)> {
        let events = self.events.lock().unwrap();
        let (mut total, mut pairs, mut since) = (0.0, 0, None);
        for event in events[mark..].iter().filter(|e| e.domain == domain) {
            match (event.suspended, since) {
                (true, None) => since = Some(event.at_ms),
                (false, Some(at)) => {
                    total += event.at_ms - at;
                    pairs += 1;
                    since = None;
                }
                _ => {}
            }
        }
        (pairs > 0 && since.is_none()).then_some((total, pairs))
    }
}

/// `2026-12-07 23:45:30.383+0000: event 'lifecycle' for domain 'NAME': Suspended Paused`.
fn parse_event(line: &str) -> Option<LifecycleEvent> {
    let (stamp, rest) = line.split_once(": event 'lifecycle' for domain '")?;
    let (domain, what) = rest.split_once("': ")?;
    let suspended = match what.split_whitespace().next()? {
        "Suspended" => true,
        "Resumed" => false,
        _ => return None,
    };
    Some(LifecycleEvent {
        domain: domain.to_owned(),
        at_ms: parse_stamp(stamp)?,
        suspended,
    })
}

/// virsh's `YYYY-MM-DD HH:MM:SS.mmm+hhmm`, in ms since the epoch.
fn parse_stamp(stamp: &str) -> Option<f64> {
    let (date, time) = stamp.split_once(' ')?;
    let mut ymd = date.split('-').map(str::parse::<i64>);
    let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
    let split = time.rfind(['+', '-'])?;
    let (clock, zone) = time.split_at(split);
    let mut hms = clock.split(':');
    let (h, min) = (
        hms.next()?.parse::<f64>().ok()?,
        hms.next()?.parse::<f64>().ok()?,
    );
    let s = hms.next()?.parse::<f64>().ok()?;
    let sign = if zone.starts_with('-') { -1.0 } else { 1.0 };
    let zone: f64 = zone[1..].parse().ok()?;
    let zone_minutes = sign * ((zone / 100.0).trunc() * 60.0 + zone % 100.0);
    // Days since the epoch of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    #[allow(clippy::cast_precision_loss)] // Days since 1970 are far below 2^52.
    let seconds = days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s - zone_minutes * 60.0;
    Some(seconds * 1000.0)
}

/// Host time minus the guest's, ms, from the `guest-get-time` answer with the shortest
/// round trip of three; and that round trip, ms.
async fn clock_offset(guest: &Guest) -> Result<(f64, f64)> {
    let domain = guest.domain.clone();
    tokio::task::spawn_blocking(move || {
        let mut best: Option<(f64, f64)> = None;
        for _ in 0..3 {
            let sent = epoch_ms();
            let reply = domain
                .qemu_agent_command("{\"execute\":\"guest-get-time\"}", 10, 0)
                .map_err(|e| anyhow::anyhow!("guest-get-time: {e}"))?;
            let received = epoch_ms();
            let reply: Value = serde_json::from_str(&reply)?;
            let guest_ns = reply["return"]
                .as_f64()
                .context("guest-get-time's answer")?;
            let offset = (sent + received) / 2.0 - guest_ns / 1e6;
            let rtt = received - sent;
            if best.is_none_or(|(_, shortest)| rtt < shortest) {
                best = Some((offset, rtt));
            }
        }
        best.context("no answer")
    })
    .await?
}

fn epoch_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// libvirt's record of the domain's last completed job (kept for the next reader): QEMU's
/// downtime (ms) and the passes over the RAM.
async fn completed_job(guest: &Guest) -> (Option<f64>, Option<f64>) {
    let domain = guest.domain.clone();
    let stats = tokio::task::spawn_blocking(move || {
        domain.job_stats(
            virt::sys::VIR_DOMAIN_JOB_STATS_COMPLETED
                | virt::sys::VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED,
        )
    })
    .await;
    #[allow(clippy::cast_precision_loss)] // Milliseconds and passes are far below 2^52.
    match stats {
        Ok(Ok(stats)) => (
            stats.downtime.map(|v| v as f64),
            stats.mem_iteration.map(|v| v as f64),
        ),
        _ => (None, None),
    }
}

/// A file's allocated size, MiB (the dumps are sparse files written once).
fn allocated_mib(path: &Path) -> f64 {
    use std::os::unix::fs::MetadataExt;
    #[allow(clippy::cast_precision_loss)] // Blocks of a dump are far below 2^52.
    std::fs::metadata(path).map_or(f64::NAN, |m| m.blocks() as f64 * 512.0 / 1048576.0)
}

/// The dump volume's size as an engine makes it: the guest's RAM and what it adds.
fn engine_dump_size(guest: &Guest) -> u64 {
    (guest.memory_mib + DUMP_SLACK_MIB) << 20
}

/// The dump volume's (and the floor's dump file's) size in this bench: the engine's for the
/// paused mode (the dump holds each page once); for the live mode three times the RAM and
/// the engine's slack, since a live dump holds again every page the guest dirtied while it
/// was written (measured with virsh alone: 1.85 GiB for the 1 GiB writing guest), and rvdsm
/// refuses a dump that outgrew its volume. Whether the engine's size suffices for a live
/// snapshot is measured apart (`engine_sized_live`).
fn dump_size(guest: &Guest, mode: Mode) -> u64 {
    match mode {
        Mode::Paused => engine_dump_size(guest),
        Mode::Live => (3 * guest.memory_mib + DUMP_SLACK_MIB) << 20,
    }
}

/// rvdsm: the dump and configuration volumes (RAW, sparse, each in a new image) and the
/// disk's new top created (not timed), then `VM.snapshot` with `snapMemory` and `memoryMode`
/// to its job's end; the memory volumes deleted afterwards, whatever the outcome (not timed).
async fn rvdsm_memory(
    host: &Host,
    jobs: &JobWatcher,
    watch: &Lifecycle,
    guest: &mut Guest,
    mode: Mode,
    dump_bytes: u64,
) -> Result<Sample> {
    let dump_image = uuid::Uuid::new_v4().to_string();
    let conf_image = uuid::Uuid::new_v4().to_string();
    let images = (dump_image.as_str(), conf_image.as_str());
    let sample = rvdsm_memory_onto(host, jobs, watch, guest, mode, images, dump_bytes).await;
    for image in [&dump_image, &conf_image] {
        if let Err(err) = host.delete_image(image).await {
            eprintln!("  could not delete memory image {image}: {err:#}");
        }
    }
    sample
}

#[allow(clippy::too_many_arguments)]
async fn rvdsm_memory_onto(
    host: &Host,
    jobs: &JobWatcher,
    watch: &Lifecycle,
    guest: &mut Guest,
    mode: Mode,
    (dump_image, conf_image): (&str, &str),
    dump_bytes: u64,
) -> Result<Sample> {
    let dump = host.create_raw_volume(dump_image, dump_bytes).await?;
    let conf = host.create_raw_volume(conf_image, CONF_BYTES).await?;
    let top = host
        .create_volume(&guest.image, Some(&guest.volume))
        .await?;
    let snap_memory = format!(
        "{},{},{dump_image},{dump},{conf_image},{conf}",
        host.domain, host.pool
    );
    let (offset_before, rtt_before) = clock_offset(guest).await?;
    let mark = watch.mark();
    let job = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    host.client
        .call(
            "VM.snapshot",
            json!({"vmID": guest.uuid, "jobUUID": job, "snapMemory": snap_memory,
                   "memoryMode": mode.name(),
                   "snapDrives": [{"domainID": host.domain, "imageID": guest.image,
                                   "baseVolumeID": guest.volume, "volumeID": top}]}),
        )
        .await?;
    let info = jobs.wait(&job).await?;
    let took = millis(started);
    let memory = &info["result"]["memory"];
    if info["result"]["consistency"] != "with-memory" || memory["mode"] != mode.name() {
        bail!(
            "rvdsm's memory snapshot is not one with memory in {} mode: {info}",
            mode.name()
        );
    }
    switched(host, guest, top);
    let (pause, pauses) = watch.pause_since(&guest.name, mark).await?;
    let (offset_after, rtt_after) = clock_offset(guest).await?;
    let (downtime, iterations) = completed_job(guest).await;
    let dump_mib = allocated_mib(&host.image_dir(dump_image).join(&dump));
    Ok(Sample {
        took,
        pause,
        pauses,
        guest_lag: offset_after - offset_before,
        lag_error: (rtt_before + rtt_after) / 2.0,
        reported_pause: memory["pauseMs"].as_f64(),
        downtime: memory["downtimeMs"].as_f64().or(downtime),
        iterations,
        dump_mib,
    })
}

/// The floor: a qcow2 overlay (`qemu-img create -b <current> -F qcow2`) and a sparse RAW
/// dump file of the dump volume's size, in the guest's image directory (the same
/// filesystem, files of the same kind as rvdsm's volumes), made beforehand (not timed); then
/// one libvirt call with rvdsm's flags, REUSE_EXT | NO_METADATA | ATOMIC (and LIVE for the
/// live mode), straight through the `virt` crate; the dump deleted afterwards.
async fn floor_memory(
    host: &Host,
    watch: &Lifecycle,
    guest: &mut Guest,
    mode: Mode,
    n: usize,
) -> Result<Sample> {
    let overlay = floor_overlay(host, guest, 30_000 + n)?;
    let dump = host
        .image_dir(&guest.image)
        .join(format!("floor-memory-{n}.raw"));
    std::fs::File::create(&dump)?.set_len(dump_size(guest, mode))?;
    let xml = format!(
        "<domainsnapshot><memory snapshot='external' file='{}'/><disks>\
         <disk name='vda' snapshot='external' type='file'><driver type='qcow2'/>\
         <source file='{}'/></disk></disks></domainsnapshot>",
        dump.display(),
        overlay.display()
    );
    let mut flags = virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
        | virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
        | virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
    if mode == Mode::Live {
        flags |= virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_LIVE;
    }
    let sample = floor_call(watch, guest, &xml, flags).await;
    let dump_mib = allocated_mib(&dump);
    std::fs::remove_file(&dump)?;
    let sample = sample?;
    guest.path = overlay;
    Ok(Sample { dump_mib, ..sample })
}

/// The floor's call, timed, and what libvirt and the guest saw of it.
async fn floor_call(watch: &Lifecycle, guest: &Guest, xml: &str, flags: u32) -> Result<Sample> {
    let (offset_before, rtt_before) = clock_offset(guest).await?;
    let mark = watch.mark();
    let domain = guest.domain.clone();
    let xml = xml.to_owned();
    let started = Instant::now();
    let call = tokio::task::spawn_blocking(move || {
        domain
            .create_snapshot_xml(&xml, flags)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("floor snapshot with memory: {e}"))
    });
    match tokio::time::timeout(FLOOR_TIMEOUT, call).await {
        Ok(done) => done??,
        Err(_) => {
            // libvirt's call ends once its job is aborted (the `virt` crate has no binding).
            let _ = crate::host::run(
                std::process::Command::new("virsh")
                    .args(["-c", "qemu:///system", "domjobabort"])
                    .arg(&guest.name),
            );
            bail!("the floor's snapshot with memory did not end in {FLOOR_TIMEOUT:?}");
        }
    }
    let took = millis(started);
    let (pause, pauses) = watch.pause_since(&guest.name, mark).await?;
    let (offset_after, rtt_after) = clock_offset(guest).await?;
    let (downtime, iterations) = completed_job(guest).await;
    Ok(Sample {
        took,
        pause,
        pauses,
        guest_lag: offset_after - offset_before,
        lag_error: (rtt_before + rtt_after) / 2.0,
        reported_pause: None,
        downtime,
        iterations,
        dump_mib: f64::NAN,
    })
}

/// The writing workload: 32 MiB of random bytes in the guest's tmpfs, copied over and over
/// onto a 256 MiB tmpfs file (non-zero pages: QEMU cannot skip them as zero pages) by the
/// guest's only vCPU, which then keeps one of the host's cores busy (TCG). Returns the
/// time of one pass alone (ms), for the report: how fast the guest dirties its RAM.
async fn prepare_writer(guest: &Guest) -> Result<f64> {
    guest
        .exec(&format!(
            "dd if=/dev/urandom of=/tmp/src bs=1M count=32 2>/dev/null; \
             cat > /tmp/dirtier <<'EOF'\n\
             echo $$ > /tmp/dirtier.pid\n\
             while :; do i=0; while [ $i -lt {passes} ]; do \
             dd if=/tmp/src of=/tmp/dirty bs=1M seek=$((i*32)) conv=notrunc 2>/dev/null; \
             i=$((i+1)); done; [ -n \"$ONCE\" ] && break; done\n\
             EOF\n\
             ONCE=1 sh /tmp/dirtier",
            passes = WORKING_SET_MIB / 32
        ))
        .await?;
    let started = Instant::now();
    guest.exec("ONCE=1 sh /tmp/dirtier").await?;
    Ok(millis(started))
}

/// Starts the writing workload in the background; gives it two seconds to run.
async fn start_writer(guest: &Guest) -> Result<()> {
    guest
        .exec("(sh /tmp/dirtier >/dev/null 2>&1 &) ; sleep 0.2; cat /tmp/dirtier.pid")
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

/// Stops the writing workload (the other guest must not compete with the measured one).
async fn stop_writer(guest: &Guest) -> Result<()> {
    guest
        .exec("kill $(cat /tmp/dirtier.pid) 2>/dev/null; killall dd 2>/dev/null; true")
        .await?;
    Ok(())
}

/// One guest size and workload: rvdsm's and the floor's samples in both modes.
struct Case {
    memory_mib: u64,
    writing: bool,
    samples: HashMap<(&'static str, &'static str), Vec<Sample>>,
    /// Runs that failed: mode, side, error.
    failures: Vec<String>,
    /// A live snapshot of the writing guest onto a dump volume of the engine's size.
    engine_sized_live: Option<Value>,
    writer_pass_ms: Option<f64>,
}

/// Every measurement, as JSON for the report.
pub async fn measure(
    host: &Host,
    conn: &Connect,
    jobs: &JobWatcher,
    args: &MemoryArgs,
) -> Result<Value> {
    let watch = Lifecycle::start().await?;
    let mut cases = vec![(IDLE_MIB, false)];
    if args.writing {
        cases.push((WRITING_MIB, true));
    }
    let mut rows = Vec::new();
    for (index, (memory_mib, writing)) in cases.into_iter().enumerate() {
        eprintln!(
            "memory snapshots of a {memory_mib} MiB {} guest ({} runs each)",
            if writing { "writing" } else { "idle" },
            args.reps
        );
        let case = one_case(host, conn, jobs, &watch, args, index, memory_mib, writing).await?;
        rows.push(case_json(&case));
    }
    Ok(json!({"reps": args.reps, "cases": rows}))
}

#[allow(clippy::too_many_arguments)]
async fn one_case(
    host: &Host,
    conn: &Connect,
    jobs: &JobWatcher,
    watch: &Lifecycle,
    args: &MemoryArgs,
    index: usize,
    memory_mib: u64,
    writing: bool,
) -> Result<Case> {
    let mut ours = host
        .boot_guest_with_memory(conn, 40 + 2 * index, 64 << 20, memory_mib)
        .await?;
    let mut floor = host
        .boot_guest_with_memory(conn, 41 + 2 * index, 64 << 20, memory_mib)
        .await?;
    for guest in [&ours, &floor] {
        let kib = guest.domain.info()?.max_mem;
        if kib != memory_mib << 10 {
            bail!(
                "guest {} has {kib} KiB of RAM, not {memory_mib} MiB",
                guest.name
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut case = Case {
        memory_mib,
        writing,
        samples: HashMap::new(),
        failures: Vec::new(),
        engine_sized_live: None,
        writer_pass_ms: None,
    };
    if writing {
        case.writer_pass_ms = Some(prepare_writer(&ours).await?);
        prepare_writer(&floor).await?;
    }
    if writing {
        case.engine_sized_live = Some(engine_sized_live(host, jobs, watch, &mut ours).await?);
    }
    let mut n = 0;
    for mode in [Mode::Paused, Mode::Live] {
        for _ in 0..args.reps {
            if writing {
                start_writer(&ours).await?;
            }
            let size = dump_size(&ours, mode);
            let sample = rvdsm_memory(host, jobs, watch, &mut ours, mode, size).await;
            if writing {
                stop_writer(&ours).await?;
                start_writer(&floor).await?;
            }
            let floor_sample = floor_memory(host, watch, &mut floor, mode, n).await;
            if writing {
                stop_writer(&floor).await?;
            }
            n += 1;
            for (side, sample) in [("rvdsm", sample), ("floor", floor_sample)] {
                case.record(mode, side, sample);
            }
        }
    }
    Ok(case)
}

/// One live snapshot of the writing guest onto a dump volume of the engine's size (RAM +
/// 264 MiB): whether rvdsm's live mode fits in what an engine creates.
async fn engine_sized_live(
    host: &Host,
    jobs: &JobWatcher,
    watch: &Lifecycle,
    guest: &mut Guest,
) -> Result<Value> {
    let size = engine_dump_size(guest);
    start_writer(guest).await?;
    let sample = rvdsm_memory(host, jobs, watch, guest, Mode::Live, size).await;
    stop_writer(guest).await?;
    let outcome = match sample {
        Ok(s) => json!({"volume_mib": size >> 20, "ok": true, "dump_mib": s.dump_mib,
                        "pause_events_ms": s.pause, "request_to_done_ms": s.took}),
        Err(err) => json!({"volume_mib": size >> 20, "ok": false, "error": format!("{err:#}")}),
    };
    eprintln!("  live onto an engine-sized dump volume: {outcome}");
    Ok(outcome)
}

impl Case {
    /// Keeps a sample, or the reason it failed (a run goes on: a failure is a finding).
    fn record(&mut self, mode: Mode, side: &'static str, sample: Result<Sample>) {
        match sample {
            Ok(sample) => {
                eprintln!(
                    "  {} {} MiB {side}: {:.0} ms, paused {:.0} ms (guest's clock {:.0}±{:.0} ms), \
                     dump {:.0} MiB",
                    mode.name(),
                    self.memory_mib,
                    sample.took,
                    sample.pause,
                    sample.guest_lag,
                    sample.lag_error,
                    sample.dump_mib
                );
                self.samples
                    .entry((mode.name(), side))
                    .or_default()
                    .push(sample);
            }
            Err(err) => {
                let failure = format!("{} mode, {side}: {err:#}", mode.name());
                eprintln!("  FAILED: {failure}");
                self.failures.push(failure);
            }
        }
    }
}

fn summary_of(samples: &[Sample], field: impl Fn(&Sample) -> Option<f64>) -> Value {
    let values: Vec<f64> = samples.iter().filter_map(field).collect();
    if values.is_empty() {
        Value::Null
    } else {
        Summary::of(&values).json()
    }
}

fn side_json(samples: &[Sample]) -> Value {
    json!({
        "request_to_done_ms": summary_of(samples, |s| Some(s.took)),
        "pause_events_ms": summary_of(samples, |s| Some(s.pause)),
        "pauses": summary_of(samples, |s| {
            #[allow(clippy::cast_precision_loss)] // A handful of pauses.
            Some(s.pauses as f64)
        }),
        "guest_clock_lag_ms": summary_of(samples, |s| Some(s.guest_lag)),
        "guest_clock_lag_error_ms": summary_of(samples, |s| Some(s.lag_error)),
        "reported_pause_ms": summary_of(samples, |s| s.reported_pause),
        "downtime_ms": summary_of(samples, |s| s.downtime),
        "iterations": summary_of(samples, |s| s.iterations),
        "dump_mib": summary_of(samples, |s| Some(s.dump_mib)),
    })
}

fn case_json(case: &Case) -> Value {
    let mut modes = serde_json::Map::new();
    for mode in [Mode::Paused, Mode::Live] {
        let side = |name| {
            case.samples
                .get(&(mode.name(), name))
                .map_or(Value::Null, |s| side_json(s))
        };
        let (ours, floor) = (side("rvdsm"), side("floor"));
        let median = |v: &Value, key: &str| v[key]["median"].as_f64().unwrap_or(f64::NAN);
        let ratios = json!({
            "request_to_done": ratio(median(&ours, "request_to_done_ms"), median(&floor, "request_to_done_ms")),
            "pause_events": ratio(median(&ours, "pause_events_ms"), median(&floor, "pause_events_ms")),
            "guest_clock_lag": ratio(median(&ours, "guest_clock_lag_ms"), median(&floor, "guest_clock_lag_ms")),
        });
        modes.insert(
            mode.name().into(),
            json!({"rvdsm": ours, "floor": floor, "ratio": ratios}),
        );
    }
    json!({"memory_mib": case.memory_mib, "writing": case.writing,
           "writer_pass_ms": case.writer_pass_ms,
           "working_set_mib": if case.writing { Some(WORKING_SET_MIB) } else { None },
           "failures": case.failures, "engine_sized_live": case.engine_sized_live,
           "modes": modes})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virsh_event_lines_parse() {
        let event = parse_event(
            "2026-12-07 23:45:30.383+0000: event 'lifecycle' for domain 'i29b-probe': Suspended Paused",
        )
        .unwrap();
        assert_eq!(event.domain, "i29b-probe");
        assert!(event.suspended);
        let resumed = parse_event(
            "2026-12-08 00:00:00.598+0100: event 'lifecycle' for domain 'x': Resumed Unpaused",
        )
        .unwrap();
        assert!(!resumed.suspended);
        // 2026-12-07T23:00:00.598Z, across midnight in the line's own zone.
        assert!(
            (resumed.at_ms - event.at_ms - (-(45.0 * 60.0 + 30.0) * 1000.0 + 215.0)).abs() < 0.01
        );
        assert!((event.at_ms - 1_796_687_130_383.0).abs() < 0.01);
        assert!(
            parse_event(
                "2026-12-07 23:45:30.383+0000: event 'lifecycle' for domain 'x': Started Booted"
            )
            .is_none()
        );
    }
}
