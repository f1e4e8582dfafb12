//! Snapshot measurements: rvdsm's `VM.snapshot` (request to the job's end, seen as its
//! `|jobs|status|` event) against the floor (the same external snapshot issued directly to
//! libvirt, with libvirt's own QUIESCE doing freeze and thaw); the whole flow with volume
//! creation against `qemu-img create` plus the direct call; the stall a writing guest sees;
//! parallel snapshots of several guests; and `Host.ping2` latency while they run.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rvdsm::client::{Client, Endpoint};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::host::{Guest, Host, run};

/// Job ends seen on the event stream, by job id.
#[derive(Clone, Default)]
pub struct JobWatcher {
    ended: Arc<Mutex<HashMap<String, Value>>>,
    notify: Arc<Notify>,
}

impl JobWatcher {
    /// Follows the daemon's events (WebSocket subscription over the Unix socket).
    pub async fn start(host: &Host) -> Result<JobWatcher> {
        let client = Client::connect(
            &Endpoint::Unix(host.socket.clone()),
            Duration::from_secs(60),
        )
        .await?;
        let mut events = client.events().await?;
        let watcher = JobWatcher::default();
        let sink = watcher.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Some(Ok(event)) = events.next().await {
                let Some(job) = event["method"]
                    .as_str()
                    .and_then(|m| m.strip_prefix("|jobs|status|"))
                else {
                    continue;
                };
                let info = event["params"].clone();
                sink.ended.lock().unwrap().insert(job.to_owned(), info);
                sink.notify.notify_waiters();
            }
        });
        Ok(watcher)
    }

    /// Waits for the end of `job`; fails if it failed.
    pub async fn wait(&self, job: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let notified = self.notify.notified();
            if let Some(info) = self.ended.lock().unwrap().remove(job) {
                if info["status"] != "done" {
                    bail!("snapshot job {job} failed: {info}");
                }
                return Ok(info);
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                bail!("snapshot job {job} never ended");
            }
        }
    }
}

/// Asks rvdsm for a snapshot of `guest` onto `top` (already created); returns the job id.
pub async fn request_snapshot(host: &Host, guest: &Guest, top: &str) -> Result<String> {
    let job = uuid::Uuid::new_v4().to_string();
    host.client
        .call(
            "VM.snapshot",
            json!({"vmID": guest.uuid, "jobUUID": job,
                   "snapDrives": [{"domainID": host.domain, "imageID": guest.image,
                                   "baseVolumeID": guest.volume, "volumeID": top}]}),
        )
        .await?;
    Ok(job)
}

/// rvdsm: `VM.snapshot` onto a volume created beforehand; milliseconds to the job's end, and
/// the job's own phase timings (`freeze_ms`, `switch_ms`, `thaw_ms`, `total_ms`).
pub async fn rvdsm_snapshot(
    host: &Host,
    jobs: &JobWatcher,
    guest: &mut Guest,
) -> Result<(f64, Value)> {
    let top = host
        .create_volume(&guest.image, Some(&guest.volume))
        .await?;
    let started = Instant::now();
    let job = request_snapshot(host, guest, &top).await?;
    let info = jobs.wait(&job).await?;
    let took = millis(started);
    if info["result"]["consistency"] != "quiesced" {
        bail!("rvdsm snapshot not quiesced: {info}");
    }
    switched(host, guest, top);
    Ok((took, info["result"]["timings"].clone()))
}

/// rvdsm: `Volume.create` (to its task's end) then `VM.snapshot` (to the job's end).
pub async fn rvdsm_flow(host: &Host, jobs: &JobWatcher, guest: &mut Guest) -> Result<f64> {
    let started = Instant::now();
    let top = host
        .create_volume(&guest.image, Some(&guest.volume))
        .await?;
    let job = request_snapshot(host, guest, &top).await?;
    jobs.wait(&job).await?;
    let took = millis(started);
    switched(host, guest, top);
    Ok(took)
}

pub fn switched(host: &Host, guest: &mut Guest, top: String) {
    guest.path = host.image_dir(&guest.image).join(&top);
    guest.volume = top;
}

/// The floor's overlay: `qemu-img create` on top of what the guest writes to now, named in
/// its header by its file name, as rvdsm's volumes name their parent (VDSM's layout): libvirt
/// walks a chain of relative names at each snapshot, and at depth that costs far more than
/// absolute ones (measured with virsh alone at 50 volumes: 48 ms absolute, 98-111 ms
/// relative), so the floor's chain is of the same kind as rvdsm's.
pub fn floor_overlay(host: &Host, guest: &Guest, n: usize) -> Result<std::path::PathBuf> {
    let overlay = host
        .image_dir(&guest.image)
        .join(format!("floor-{n}.qcow2"));
    let parent = guest
        .path
        .file_name()
        .context("the guest's volume has a file name")?;
    run(Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "compat=1.1",
            "-F",
            "qcow2",
            "-u",
            "-b",
        ])
        .arg(parent)
        .arg(&overlay)
        .arg((64u64 << 20).to_string()))?;
    Ok(overlay)
}

/// The floor's switch: one libvirt call, REUSE_EXT | NO_METADATA | DISK_ONLY | ATOMIC |
/// QUIESCE (libvirt freezes and thaws around it), straight through the `virt` crate.
async fn floor_switch(guest: &Guest, overlay: &std::path::Path) -> Result<()> {
    let xml = format!(
        "<domainsnapshot><disks><disk name='vda' snapshot='external' type='file'>\
         <driver type='qcow2'/><source file='{}'/></disk></disks></domainsnapshot>",
        overlay.display()
    );
    let domain = guest.domain.clone();
    tokio::task::spawn_blocking(move || {
        let flags = virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
            | virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
            | virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
            | virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
            | virt::sys::VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE;
        domain
            .create_snapshot_xml(&xml, flags)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("floor snapshot: {e}"))
    })
    .await?
}

/// Floor: the direct call onto an overlay made beforehand; milliseconds.
pub async fn floor_snapshot(host: &Host, guest: &mut Guest, n: usize) -> Result<f64> {
    let overlay = floor_overlay(host, guest, n)?;
    let started = Instant::now();
    floor_switch(guest, &overlay).await?;
    let took = millis(started);
    guest.path = overlay;
    Ok(took)
}

/// Floor of the whole flow: `qemu-img create` then the direct call; milliseconds.
pub async fn floor_flow(host: &Host, guest: &mut Guest, n: usize) -> Result<f64> {
    let started = Instant::now();
    let overlay = floor_overlay(host, guest, n)?;
    floor_switch(guest, &overlay).await?;
    let took = millis(started);
    guest.path = overlay;
    Ok(took)
}

/// Starts the stall probe in the guest (`rvdsm-writeprobe`, from the fixture): records
/// appended and fdatasync'd back to back for three seconds. The snapshot goes a second in.
pub async fn start_writer(guest: &Guest) -> Result<()> {
    guest
        .exec(
            "rm -f /mnt/data/probe /tmp/probe.out; \
             (rvdsm-writeprobe write /mnt/data/probe 3 > /tmp/probe.out.tmp && \
              mv /tmp/probe.out.tmp /tmp/probe.out) >/dev/null 2>&1 &",
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// Waits for the probe's end; returns the longest gap between two durable writes (the stall)
/// and the median gap, in milliseconds.
pub async fn read_stall(guest: &Guest) -> Result<(f64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = guest.exec("cat /tmp/probe.out 2>/dev/null").await?;
        let words: Vec<&str> = out.split_whitespace().collect();
        if let ["records", _, "max_gap_us", max, "median_gap_us", median] = words.as_slice() {
            let us = |s: &str| s.parse::<f64>().map(|v| v / 1000.0);
            return Ok((us(max)?, us(median)?));
        }
        if Instant::now() > deadline {
            bail!("the guest's write probe did not finish: {out:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Snapshots `guests` through rvdsm all at once (or one after another); wall milliseconds.
pub async fn many(
    host: &Host,
    jobs: &JobWatcher,
    guests: &mut [Guest],
    parallel: bool,
) -> Result<f64> {
    let mut tops = Vec::new();
    for guest in guests.iter() {
        tops.push(
            host.create_volume(&guest.image, Some(&guest.volume))
                .await?,
        );
    }
    let started = Instant::now();
    if parallel {
        // All requests in flight at once, as the floor issues its calls.
        let requests = guests
            .iter()
            .zip(&tops)
            .map(|(guest, top)| request_snapshot(host, guest, top));
        let ids = futures_util::future::try_join_all(requests).await?;
        let mut flows = Vec::new();
        for id in &ids {
            let info = jobs.wait(id).await?;
            flows.push(
                info["result"]["timings"]["total_ms"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
            );
        }
        show_flows(millis(started), &flows);
    } else {
        for (guest, top) in guests.iter().zip(&tops) {
            let id = request_snapshot(host, guest, top).await?;
            jobs.wait(&id).await?;
        }
    }
    let took = millis(started);
    for (guest, top) in guests.iter_mut().zip(tops) {
        switched(host, guest, top);
    }
    Ok(took)
}

/// The jobs' own freeze-switch-thaw times beside the wall time of a parallel run, for a look
/// at where the wall time goes (`RVDSM_BENCH_VERBOSE=1`).
fn show_flows(wall: f64, flows: &[f64]) {
    if std::env::var_os("RVDSM_BENCH_VERBOSE").is_some() {
        let rounded: Vec<f64> = flows.iter().map(|v| v.round()).collect();
        eprintln!("    wall {wall:.0} ms; the jobs' freeze-switch-thaw: {rounded:?} ms");
    }
}

/// The floor of `many`: the direct libvirt call for every guest at once, onto volumes rvdsm
/// created beforehand (not timed), so that rvdsm's runs and the floor's can alternate on the
/// same guests at the same chain depth; wall milliseconds.
pub async fn floor_many(host: &Host, guests: &mut [Guest]) -> Result<f64> {
    let mut tops = Vec::new();
    for guest in guests.iter() {
        tops.push(
            host.create_volume(&guest.image, Some(&guest.volume))
                .await?,
        );
    }
    let overlays: Vec<_> = guests
        .iter()
        .zip(&tops)
        .map(|(guest, top)| host.image_dir(&guest.image).join(top))
        .collect();
    let started = Instant::now();
    let switches = guests
        .iter()
        .zip(&overlays)
        .map(|(guest, overlay)| floor_switch(guest, overlay));
    for result in futures_util::future::join_all(switches).await {
        result?;
    }
    let took = millis(started);
    for (guest, top) in guests.iter_mut().zip(tops) {
        switched(host, guest, top);
    }
    Ok(took)
}

/// `Host.ping2` latencies (ms) over STOMP, back to back, until `stop` is notified.
pub async fn ping_during(host: &Host, stop: Arc<Notify>) -> Result<Vec<f64>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", host.port)).await?;
    let client = rvdsm::client::StompClient::connect(stream, Duration::from_secs(30), false)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut latencies = Vec::new();
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let started = Instant::now();
        tokio::select! {
            () = &mut stopped => break,
            reply = client.call("Host.ping2", json!({}), None) => {
                reply.map_err(|e| anyhow::anyhow!("{e}")).context("ping during snapshots")?;
                latencies.push(millis(started));
            }
        }
    }
    Ok(latencies)
}

pub fn millis(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Snapshot latency at one chain depth: rvdsm's and the floor's, and the job's own
/// quiesce-switch-thaw time (milliseconds).
pub struct DepthRow {
    /// Volumes in the chain before the snapshot (the first of the measured ones).
    pub depth: usize,
    pub ours: Vec<f64>,
    pub floor: Vec<f64>,
    pub flow: Vec<f64>,
}

/// Snapshot latency as chains grow: for each of `depths`, both guests' chains are first grown
/// to it (rvdsm's guest through rvdsm's snapshots, the floor's through the direct call), then
/// `reps` snapshots of each alternate (so the chain holds `depth` to `depth + reps - 1`
/// volumes while measured). Both guests start on a chain of one volume.
pub async fn at_depths(
    host: &Host,
    jobs: &JobWatcher,
    ours: &mut Guest,
    floor: &mut Guest,
    depths: &[usize],
    reps: usize,
) -> Result<Vec<DepthRow>> {
    let mut chain = 1;
    let mut overlay = 20_000;
    let mut rows = Vec::new();
    for &depth in depths {
        while chain < depth {
            rvdsm_snapshot(host, jobs, ours).await?;
            floor_snapshot(host, floor, overlay).await?;
            overlay += 1;
            chain += 1;
        }
        let mut row = DepthRow {
            depth,
            ours: Vec::new(),
            floor: Vec::new(),
            flow: Vec::new(),
        };
        for _ in 0..reps {
            let (took, timings) = rvdsm_snapshot(host, jobs, ours).await?;
            row.ours.push(took);
            row.flow
                .push(timings["total_ms"].as_f64().unwrap_or(f64::NAN));
            row.floor.push(floor_snapshot(host, floor, overlay).await?);
            overlay += 1;
            chain += 1;
        }
        eprintln!(
            "  depth {depth}: rvdsm {:?} ms, floor {:?} ms",
            row.ours.iter().map(|v| v.round()).collect::<Vec<_>>(),
            row.floor.iter().map(|v| v.round()).collect::<Vec<_>>()
        );
        rows.push(row);
    }
    Ok(rows)
}
