//! `bench/run`: rvdsm's benchmark suite against real fixture guests. Each rvdsm figure stands
//! next to its floor measured in the same run on the same kind of guest: snapshot latency and
//! the whole flow against direct libvirt (and `qemu-img`), the stall a writing guest sees,
//! parallel snapshots, a snapshot's later life (live merge, full clone, revert) beside
//! `virsh blockcommit`, `qemu-img convert` and `virsh create`, RPC throughput and latency per
//! transport (and with VDSM's own load client), `Host.ping2` while snapshots run, and
//! rvdsmd's footprint. Prints a table and writes
//! `results.json` and `REPORT.md`.

mod host;
mod life;
mod memory;
mod monitoring;
mod parallel;
mod report;
mod rpc;
mod snap;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{Value, json};

use host::Host;
use rpc::Transport;
use stats::Summary;

/// Runs the benchmark suite.
#[derive(Parser)]
struct Args {
    /// A small run that checks the suite works (CI), not its timings.
    #[arg(long)]
    smoke: bool,
    /// Repetitions of each snapshot measurement.
    #[arg(long, default_value_t = 9)]
    reps: usize,
    /// Seconds of each RPC load run.
    #[arg(long, default_value_t = 5.0)]
    rpc_seconds: f64,
    /// Seconds of each stomp-load run.
    #[arg(long, default_value_t = 10.0)]
    stomp_load_seconds: f64,
    /// Most guests booted for the parallel measurement.
    #[arg(long, default_value_t = 8)]
    max_guests: usize,
    /// MiB of data in a merged top and in a cloned chain.
    #[arg(long, default_value_t = 1024)]
    life_mib: u64,
    /// Paused VMs for the monitoring measurement.
    #[arg(long, default_value_t = 100)]
    monitor_vms: usize,
    /// Chain depths at which snapshot latency is measured (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 25, 50, 100])]
    depths: Vec<usize>,
    /// Only one part: the snapshot latency at chain depths, or the parallel snapshots
    /// (printed, nothing written: a quick look while working on it); or the snapshots with
    /// memory (printed, written to `memory.json` and as the memory section of `REPORT.md`,
    /// the rest of the report kept; with `--smoke`, the idle guest only and nothing written).
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// Where results.json and REPORT.md go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

/// The parts `--only` can run alone.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Only {
    Depths,
    Parallel,
    Memory,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.reps = 1;
        args.rpc_seconds = 0.3;
        args.stomp_load_seconds = 1.0;
        args.max_guests = 2;
        args.monitor_vms = 4;
        args.life_mib = 16;
        args.depths = vec![1, 3];
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("bench/ has a parent")?
        .to_owned();
    virt::error::clear_error_callback();
    let conn = virt::connect::Connect::open(Some("qemu:///system")).context("libvirt")?;
    let mut results = serde_json::Map::new();
    results.insert("machine".into(), report::machine(&repo));
    results.insert("smoke".into(), json!(args.smoke));

    let host = Host::start(&repo, None).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = host.rss_kib();
    let pid = host.daemon.id();
    let idle_split = (
        host::status_kib(pid, "RssAnon:"),
        host::status_kib(pid, "RssFile:"),
    );
    let libvirt_floor = host::libvirt_client_floor().await?;
    eprintln!(
        "rvdsmd ready in {:?}, {} KiB resident",
        host.startup, idle_rss
    );
    let jobs = snap::JobWatcher::start(&host).await?;

    if args.only == Some(Only::Parallel) {
        return only_parallel(&host, &conn, &jobs, &args).await;
    }
    if args.only == Some(Only::Memory) {
        return only_memory(&host, &conn, &jobs, &args, &results).await;
    }

    let depth_reps = args.reps.clamp(1, 5);
    eprintln!("snapshot latency by chain depth ({depth_reps} runs at each)");
    let depths = {
        let mut ours = host.boot_guest(&conn, 100).await?;
        let mut floor = host.boot_guest(&conn, 101).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        snap::at_depths(
            &host,
            &jobs,
            &mut ours,
            &mut floor,
            &args.depths,
            depth_reps,
        )
        .await?
    };
    let depths: Vec<_> = depths
        .iter()
        .map(|row| {
            (
                row.depth,
                Summary::of(&row.ours),
                Summary::of(&row.floor),
                Summary::of(&row.flow),
            )
        })
        .collect();
    if args.only == Some(Only::Depths) {
        for (depth, ours, floor, flow) in &depths {
            println!(
                "depth {depth}: rvdsm {} ms (flow {}), floor {} ms, ratio {:.2}",
                ours.show(),
                flow.show(),
                floor.show(),
                ours.median / floor.median
            );
        }
        return Ok(());
    }

    eprintln!("booting the two latency guests");
    let mut guests = vec![
        host.boot_guest(&conn, 0).await?,
        host.boot_guest(&conn, 1).await?,
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;

    eprintln!("snapshot latency ({} runs each)", args.reps);
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    let mut phases: [Vec<f64>; 4] = Default::default();
    for n in 0..args.reps {
        let (took, timings) = snap::rvdsm_snapshot(&host, &jobs, &mut guests[0]).await?;
        ours.push(took);
        for (i, phase) in ["freeze_ms", "switch_ms", "thaw_ms", "total_ms"]
            .iter()
            .enumerate()
        {
            phases[i].push(timings[phase].as_f64().unwrap_or(f64::NAN));
        }
        floor.push(snap::floor_snapshot(&host, &mut guests[1], n).await?);
    }
    let latency = (Summary::of(&ours), Summary::of(&floor));
    let phases = phases.map(|p| Summary::of(&p));
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for n in 0..args.reps {
        ours.push(snap::rvdsm_flow(&host, &jobs, &mut guests[0]).await?);
        floor.push(snap::floor_flow(&host, &mut guests[1], 1000 + n).await?);
    }
    let flow = (Summary::of(&ours), Summary::of(&floor));

    let stall_reps = args.reps.clamp(1, 5);
    eprintln!("guest-visible stall ({stall_reps} runs each)");
    let (mut ours, mut floor, mut base_gap) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..stall_reps {
        snap::start_writer(&guests[0]).await?;
        snap::rvdsm_snapshot(&host, &jobs, &mut guests[0]).await?;
        let (stall, gap) = snap::read_stall(&guests[0]).await?;
        ours.push(stall);
        base_gap.push(gap);
        snap::start_writer(&guests[1]).await?;
        snap::floor_snapshot(&host, &mut guests[1], 2000 + n).await?;
        let (stall, gap) = snap::read_stall(&guests[1]).await?;
        floor.push(stall);
        base_gap.push(gap);
    }
    let stall = (
        Summary::of(&ours),
        Summary::of(&floor),
        Summary::of(&base_gap),
    );

    let memory = memory::measure(&host, &conn, &jobs, &memory_args(&args)).await?;

    let life_args = life::LifeArgs {
        mib: args.life_mib,
        reps: args.reps.clamp(1, 3),
    };
    let life = life::measure(&host, &conn, &jobs, &life_args).await?;

    // The state the load finds (two running VMs, the jobs and tasks so far): what it leaves
    // is measured against this, as well as against the empty daemon at start.
    let anon_before_load = host::status_kib(pid, "RssAnon:");
    eprintln!("RPC load");
    let mut rpc_rows = Vec::new();
    let stats_params = json!({"vmID": guests[0].uuid});
    let mut rss_under_load = 0;
    for transport in [
        Transport::Http,
        Transport::WebSocket,
        Transport::Stomp,
        Transport::Unix,
    ] {
        for (method, params) in [
            ("Host.ping2", json!({})),
            ("VM.getStats", stats_params.clone()),
        ] {
            for conns in [1, 8, 64] {
                let load = rpc::load(
                    &host,
                    transport,
                    method,
                    params.clone(),
                    conns,
                    Duration::from_secs_f64(args.rpc_seconds),
                )
                .await
                .with_context(|| format!("{} {method} x{conns}", transport.name()))?;
                rss_under_load = rss_under_load.max(host.rss_kib());
                eprintln!(
                    "  {:<16} {method:<12} {conns:>3} conns: {:>9.0} req/s  p50 {:.3} ms  p99 {:.3} ms",
                    transport.name(),
                    load.rps,
                    load.p50,
                    load.p99
                );
                rpc_rows.push(json!({"transport": transport.name(), "method": method,
                    "conns": conns, "rps": load.rps, "p50_ms": load.p50, "p99_ms": load.p99}));
            }
        }
    }
    let mut stomp_load_rows = Vec::new();
    match rpc::build_stomp_load(&repo)? {
        None => eprintln!("stomp-load not found (../shared/tools/stomp-load); skipped"),
        Some(binary) => {
            // As VDSM was measured: a daemon started on one CPU (as vdsmd pins itself), the
            // client on the other; then the daemon as it runs by default.
            let pinned_host = Host::start(&repo, Some("0")).await?;
            for pinned in [true, false] {
                for conns in [1, 8, 64] {
                    let target = if pinned { &pinned_host } else { &host };
                    let row =
                        rpc::stomp_load(&binary, target, conns, args.stomp_load_seconds, pinned)?;
                    eprintln!(
                        "  stomp-load {} {conns:>3} conns: {} req/s p50 {} p99 {} ms",
                        if pinned { "pinned  " } else { "unpinned" },
                        row["rps"],
                        row["p50_ms"],
                        row["p99_ms"]
                    );
                    stomp_load_rows.push(json!({"pinned": pinned, "conns": conns, "result": row}));
                }
            }
        }
    }
    // Past tokio's 10 s keep-alive of idle blocking threads (libvirt calls ran on up to 64).
    tokio::time::sleep(Duration::from_secs(15)).await;
    let rss_after_load = host.rss_kib();
    let anon_after_load = host::status_kib(pid, "RssAnon:");

    eprintln!("monitoring with {} paused VMs", args.monitor_vms);
    let monitoring = monitoring::measure(&host, &conn, args.monitor_vms, args.rpc_seconds).await?;

    // The floor's guest now writes to files rvdsm does not manage: it leaves.
    drop(guests.remove(1));
    eprintln!(
        "booting guests for the parallel runs (up to {})",
        args.max_guests
    );
    while guests.len() < args.max_guests {
        let index = guests.len();
        guests.push(host.boot_guest(&conn, index).await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let parallel = parallel::measure(&host, &jobs, &mut guests, args.reps.clamp(1, 3)).await?;

    let footprint = json!({
        "startup_ms": host.startup.as_secs_f64() * 1000.0,
        "rss_idle_kib": idle_rss,
        "rss_idle_anon_kib": idle_split.0,
        "rss_idle_file_kib": idle_split.1,
        "libvirt_client_floor_kib": {"rss": libvirt_floor.0, "anon": libvirt_floor.1, "file": libvirt_floor.2},
        "rss_rpc_load_max_kib": rss_under_load,
        "rss_after_rpc_load_kib": rss_after_load,
        "anon_before_rpc_load_kib": anon_before_load,
        "anon_after_rpc_load_kib": anon_after_load,
        "rss_with_vms_kib": parallel.rss_with_vms,
        "vms": guests.len(),
    });
    let bench = report::Bench {
        latency,
        flow,
        depths,
        stall,
        rpc: rpc_rows,
        stomp_load: stomp_load_rows,
        parallel: parallel.rows,
        floor_parallel: parallel.floor,
        phases,
        ping_p99_during: parallel.ping_p99,
        footprint,
        monitoring,
        life,
        memory,
    };
    let (json_results, markdown) = bench.render(results);
    println!("{markdown}");
    std::fs::create_dir_all(&args.out)?;
    let name = if args.smoke { "smoke" } else { "results" };
    std::fs::write(
        args.out.join(format!("{name}.json")),
        serde_json::to_string_pretty(&Value::Object(json_results))?,
    )?;
    if !args.smoke {
        std::fs::write(args.out.join("REPORT.md"), markdown)?;
    }
    Ok(())
}

/// `--only parallel`: the parallel snapshots on `max_guests` fresh guests, printed.
async fn only_parallel(
    host: &Host,
    conn: &virt::connect::Connect,
    jobs: &snap::JobWatcher,
    args: &Args,
) -> Result<()> {
    let mut guests = Vec::new();
    for index in 0..args.max_guests {
        guests.push(host.boot_guest(conn, index).await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let parallel = parallel::measure(host, jobs, &mut guests, args.reps.clamp(1, 3)).await?;
    let one = parallel.rows.first().map_or(f64::NAN, |r| r.1.median);
    let floor_one = parallel.floor.first().map_or(f64::NAN, |r| r.1.median);
    for ((n, par, _), (_, floor)) in parallel.rows.iter().zip(&parallel.floor) {
        println!(
            "{n} guests: rvdsm {} ms ({:.2}x one), floor {} ms ({:.2}x one)",
            par.show(),
            par.median / one,
            floor.show(),
            floor.median / floor_one
        );
    }
    Ok(())
}

/// The memory snapshots' runs: a few, as the guest-visible stall's; the 1 GiB writing guest
/// in a full run only.
fn memory_args(args: &Args) -> memory::MemoryArgs {
    memory::MemoryArgs {
        reps: args.reps.clamp(1, 5),
        writing: !args.smoke,
    }
}

/// `--only memory`: the snapshots with memory, printed; outside a smoke run, written to
/// `memory.json` and as the memory section of `REPORT.md` (the rest of it kept).
async fn only_memory(
    host: &Host,
    conn: &virt::connect::Connect,
    jobs: &snap::JobWatcher,
    args: &Args,
    results: &serde_json::Map<String, Value>,
) -> Result<()> {
    let measured = memory::measure(host, conn, jobs, &memory_args(args)).await?;
    let machine = &results["machine"];
    let provenance = format!(
        "Measured alone by `bench/run --only memory --reps {}` on {}, commit {} (the other \
         sections are from the full run named at the top).",
        args.reps,
        machine["date"].as_str().unwrap_or(""),
        machine["commit"].as_str().unwrap_or("")
    );
    let section = report::memory_section(&measured, Some(&provenance));
    println!("{section}");
    if args.smoke {
        return Ok(());
    }
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("memory.json"),
        serde_json::to_string_pretty(&json!({"machine": machine, "memory_snapshots": measured}))?,
    )?;
    let path = args.out.join("REPORT.md");
    let report = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, report::splice_memory_section(&report, &section))?;
    Ok(())
}
