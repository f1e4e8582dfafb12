//! The monitoring figures: `Host.getAllVmStats` with 10 and with many VMs (paused guests:
//! started paused, they cost QEMU's start and no guest boot), and rvdsmd's memory per VM it
//! watches.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use virt::connect::Connect;
use virt::domain::Domain;

use crate::host::{Host, output, run, status_kib};
use crate::rpc::{self, Transport};

/// Paused transient VMs, destroyed when dropped.
pub struct PausedVms(Vec<Domain>);

impl Drop for PausedVms {
    fn drop(&mut self) {
        for domain in &self.0 {
            let _ = domain.destroy();
        }
    }
}

/// Starts paused VMs numbered `numbers`, each on its own qcow2 overlay of the fixture's data
/// disk.
pub fn start_paused(
    host: &Host,
    conn: &Connect,
    numbers: std::ops::Range<usize>,
) -> Result<PausedVms> {
    let dir = host.dir.path().join("paused");
    std::fs::create_dir_all(&dir)?;
    let base = host.repo.join("fixtures/build/data.qcow2");
    let mut vms = PausedVms(Vec::with_capacity(numbers.len()));
    for i in numbers {
        let disk = dir.join(format!("vm-{i}.qcow2"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&disk))?;
        let name = format!("rvdsm-bench-{}-paused-{i}", std::process::id());
        let xml = output(
            Command::new(host.repo.join("fixtures/guest-xml"))
                .args(["--name", &name, "--memory", "64", "--console"])
                .arg(dir.join(format!("console-{i}.log")))
                .arg("--disk")
                .arg(&disk),
        )?;
        let domain = conn
            .create_domain_xml(&xml, virt::sys::VIR_DOMAIN_START_PAUSED)
            .with_context(|| format!("start paused VM {i}"))?;
        vms.0.push(domain);
    }
    Ok(vms)
}

/// Waits until `Host.getVMList` lists at least `count` VMs.
pub async fn wait_listed(host: &Host, count: usize) -> Result<()> {
    let started = Instant::now();
    loop {
        let list = host.client.call("Host.getVMList", json!({})).await?;
        if list.as_array().map_or(0, Vec::len) >= count {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the cache never listed {count} VMs: {list}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `Host.getAllVmStats` under load with 10 paused VMs, then with `vms`; rvdsmd's anonymous
/// memory with them.
pub async fn measure(host: &Host, conn: &Connect, vms: usize, seconds: f64) -> Result<Value> {
    let pid = host.daemon.id();
    let anon_before = status_kib(pid, "RssAnon:");
    let listed_before = host
        .client
        .call("Host.getVMList", json!({}))
        .await?
        .as_array()
        .map_or(0, Vec::len);
    let few = vms.min(10);
    let mut loads = Vec::new();
    let mut paused = Vec::new();
    for (numbers, conns) in [(0..few, &[1][..]), (few..vms, &[1, 8][..])] {
        let started_any = !numbers.is_empty();
        paused.push(start_paused(host, conn, numbers)?);
        let listed: usize = paused.iter().map(|p| p.0.len()).sum();
        wait_listed(host, listed_before + listed).await?;
        // One full sample of them all (the cache's interval is 15 s; two samples give rates);
        // with no VM added (the smoke run's second batch) the last one stands.
        if started_any {
            tokio::time::sleep(Duration::from_secs(16)).await;
        }
        for &conns in conns {
            let load = rpc::load(
                host,
                Transport::Stomp,
                "Host.getAllVmStats",
                json!({}),
                conns,
                Duration::from_secs_f64(seconds),
            )
            .await?;
            eprintln!(
                "  Host.getAllVmStats, {listed} VMs, {conns} conns: {:.0} req/s p50 {:.3} ms p99 {:.3} ms",
                load.rps, load.p50, load.p99
            );
            loads.push(load);
        }
    }
    let (few_1, all_1, all_8) = (&loads[0], &loads[1], &loads[2]);
    let anon_with = status_kib(pid, "RssAnon:");
    drop(paused);
    eprintln!("  anon {anon_before} -> {anon_with} KiB");
    Ok(json!({
        "vms": vms,
        "few_vms": few,
        "get_all_vm_stats_few_1": {"rps": few_1.rps, "p50_ms": few_1.p50, "p99_ms": few_1.p99},
        "get_all_vm_stats_1": {"rps": all_1.rps, "p50_ms": all_1.p50, "p99_ms": all_1.p99},
        "get_all_vm_stats_8": {"rps": all_8.rps, "p50_ms": all_8.p50, "p99_ms": all_8.p99},
        "anon_before_kib": anon_before,
        "anon_with_vms_kib": anon_with,
    }))
}
