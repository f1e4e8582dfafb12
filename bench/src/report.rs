//! The report: a Markdown table of every figure beside its floor and target, and the same
//! numbers as JSON.

use std::path::Path;

use serde_json::{Map, Value, json};

use crate::host::output;
use crate::stats::{Summary, ratio};

/// VDSM's server under the same STOMP client (from the Performance issue): req/s and p99 ms at
/// 1, 8 and 64 connections, pinned to one CPU.
const VDSM: [(usize, f64, f64); 3] = [(1, 4530.0, 0.32), (8, 9210.0, 1.53), (64, 12529.0, 8.32)];

/// What the machine is.
pub fn machine(repo: &Path) -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = read("/proc/meminfo")
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let commit = output(std::process::Command::new("git").arg("-C").arg(repo).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]))
    .unwrap_or_default();
    let date = output(std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .unwrap_or_default();
    let kernel = output(std::process::Command::new("uname").arg("-r")).unwrap_or_default();
    json!({"cpu": cpu, "cpus": cpus, "memory": memory, "kernel": kernel.trim(),
           "commit": commit.trim(), "date": date.trim(),
           "guests": "fixture guests under TCG (no KVM on this machine)"})
}

/// Everything measured.
pub struct Bench {
    /// rvdsm vs floor snapshot latency, ms.
    pub latency: (Summary, Summary),
    /// rvdsm vs floor whole flow, ms.
    pub flow: (Summary, Summary),
    /// Snapshot latency by chain depth: (depth, rvdsm, floor, rvdsm's own flow), ms.
    pub depths: Vec<(usize, Summary, Summary, Summary)>,
    /// rvdsm stall, floor stall, typical gap between guest writes, ms.
    pub stall: (Summary, Summary, Summary),
    /// RPC load rows.
    pub rpc: Vec<Value>,
    /// stomp-load rows.
    pub stomp_load: Vec<Value>,
    /// (guests, parallel wall, sequential wall), ms.
    pub parallel: Vec<(usize, Summary, Summary)>,
    /// (guests, floor wall with all at once), ms.
    pub floor_parallel: Vec<(usize, Summary)>,
    /// rvdsm's own phase timings from the job results: freeze, switch, thaw, flow total, ms.
    pub phases: [Summary; 4],
    /// `Host.ping2` p99 while the largest parallel run ran, ms.
    pub ping_p99_during: f64,
    /// Start-up and memory.
    pub footprint: Value,
    /// `Host.getAllVmStats` with many VMs, and memory per VM.
    pub monitoring: Value,
    /// Live merge, full clone and revert beside their floors.
    pub life: Value,
    /// Snapshots with memory beside their floor (`memory::measure`).
    pub memory: Value,
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

impl Bench {
    /// JSON results and the Markdown report.
    pub fn render(&self, mut results: Map<String, Value>) -> (Map<String, Value>, String) {
        let m = &results["machine"];
        let mut md = format!(
            "# rvdsm benchmark report\n\n{} · commit {} · {} CPUs ({}) · {} · kernel {} · {}\n\n\
             Each figure: median (min-max) over the runs; every rvdsm figure beside its floor \
             measured in the same run.\n\n",
            m["date"].as_str().unwrap_or(""),
            m["commit"].as_str().unwrap_or(""),
            m["cpus"],
            m["cpu"].as_str().unwrap_or(""),
            m["memory"]
                .as_str()
                .unwrap_or("")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
            m["kernel"].as_str().unwrap_or(""),
            m["guests"].as_str().unwrap_or(""),
        );
        let (ours, floor) = self.latency;
        let latency_ratio = ratio(ours.median, floor.median);
        let (f_ours, f_floor) = self.flow;
        let flow_ratio = ratio(f_ours.median, f_floor.median);
        let (s_ours, s_floor, gap) = self.stall;
        md +=
            "## Snapshots\n\n| measure | rvdsm | floor | ratio | target |\n|---|---|---|---|---|\n";
        md += &format!(
            "| quiesced snapshot, request to job done (ms) | {} | {} | {:.2} | ≤ 1.10: {} |\n",
            ours.show(),
            floor.show(),
            latency_ratio,
            verdict(latency_ratio <= 1.10)
        );
        md += &format!(
            "| whole flow: Volume.create + VM.snapshot (ms) | {} | {} | {:.2} | ≤ 1.15: {} |\n",
            f_ours.show(),
            f_floor.show(),
            flow_ratio,
            verdict(flow_ratio <= 1.15)
        );
        md += &format!(
            "| longest gap between a guest's fsync'd writes (ms) | {} | {} | +{:.1} ms | ≤ floor + 5 ms: {} |\n",
            s_ours.show(),
            s_floor.show(),
            s_ours.median - s_floor.median,
            verdict(s_ours.median <= s_floor.median + 5.0)
        );
        md += &format!(
            "\nFloor: the same external disk-only snapshot (REUSE_EXT, NO_METADATA, DISK_ONLY, \
             ATOMIC) issued directly through the `virt` crate with libvirt's QUIESCE flag (libvirt \
             freezes and thaws around the switch in the same call); for the flow, `qemu-img create` \
             of the overlay first. rvdsm's latency is from the `VM.snapshot` request to the job's \
             `|jobs|status|` event. Typical gap between the guest's writes outside a snapshot: {} ms.\n\n",
            gap.show()
        );
        let [freeze, switch, thaw, total] = self.phases;
        md += &format!(
            "Inside rvdsm's job (its result's timings): freeze {} ms, switch {} ms, thaw {} ms, \
             the whole quiesce-switch-thaw flow {} ms; the rest of the request-to-done time is \
             validation against the live domain and the volumes, the journal writes, the \
             consistency note, the read-back of the live domain and the event.\n\n",
            freeze.show(),
            switch.show(),
            thaw.show(),
            total.show()
        );
        md += &memory_section(&self.memory, None);
        md += "\n## Snapshot latency by chain depth\n\n| volumes in the chain | rvdsm (ms) | floor (ms) | ratio | target | rvdsm's freeze-switch-thaw (ms) |\n|---|---|---|---|---|---|\n";
        for (depth, ours, floor, flow) in &self.depths {
            let r = ratio(ours.median, floor.median);
            md += &format!(
                "| {depth} | {} | {} | {r:.2} | ≤ 1.10: {} | {} |\n",
                ours.show(),
                floor.show(),
                verdict(r <= 1.10),
                flow.show()
            );
        }
        md += "\nEach row: a guest of rvdsm's and a floor guest, both grown to that many volumes \
               (rvdsm's through rvdsm's snapshots, the floor's through the direct call), then \
               snapshots of each in turn. Both grow with the chain: the time is libvirt's and \
               QEMU's snapshot call (the rvdsm job's own steps outside its libvirt calls stay \
               flat; see the libvirt calls' durations with `RUST_LOG=rvdsm::virt=debug`).\n\n";
        md += "## Parallel snapshots\n\n| guests | all at once (ms) | one after another (ms) | at once vs one guest | floor: direct libvirt, all at once (ms) | floor vs one guest |\n|---|---|---|---|---|---|\n";
        let one = self.parallel.first().map_or(f64::NAN, |p| p.1.median);
        let floor_one = self.floor_parallel.first().map_or(f64::NAN, |p| p.1.median);
        for (n, par, seq) in &self.parallel {
            let floor = self.floor_parallel.iter().find(|f| f.0 == *n).map(|f| f.1);
            md += &format!(
                "| {n} | {} | {} | {:.2}x | {} | {:.2}x |\n",
                par.show(),
                seq.show(),
                ratio(par.median, one),
                floor.map_or("-".into(), |f| f.show()),
                floor.map_or(f64::NAN, |f| ratio(f.median, floor_one))
            );
        }
        if let Some((n, par, _)) = self.parallel.last() {
            let r = ratio(par.median, one);
            let floor = self.floor_parallel.iter().find(|f| f.0 == *n).map(|f| f.1);
            let floor_r = floor.map_or(f64::NAN, |f| ratio(f.median, floor_one));
            md += &format!(
                "\nEach count runs rvdsm's snapshots all at once, then the floor's (the direct call \
                 for every guest at once onto volumes rvdsm created), then rvdsm's one after \
                 another, on the same guests: both sides at the same chain depth.\n\n\
                 Target: {n} at once in no more than 2x the wall time of one, or no worse than \
                 the floor's own ratio: {r:.2}x against the floor's {floor_r:.2}x, {}; in wall \
                 time, {n} at once {:.0} ms against the floor's {:.0} ms ({:.2}x).\n\
                 `Host.ping2` p99 while {n} snapshots ran: {:.3} ms (target < 5 ms: {}).\n\n",
                verdict(r <= 2.0 || r <= floor_r),
                par.median,
                floor.map_or(f64::NAN, |f| f.median),
                floor.map_or(f64::NAN, |f| ratio(par.median, f.median)),
                self.ping_p99_during,
                verdict(self.ping_p99_during < 5.0)
            );
        }
        md += "## RPC (closed loop, one request in flight per connection)\n\n| transport | verb | connections | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|\n";
        for row in &self.rpc {
            md += &format!(
                "| {} | {} | {} | {:.0} | {:.3} | {:.3} |\n",
                row["transport"].as_str().unwrap_or(""),
                row["method"].as_str().unwrap_or(""),
                row["conns"],
                row["rps"].as_f64().unwrap_or(f64::NAN),
                row["p50_ms"].as_f64().unwrap_or(f64::NAN),
                row["p99_ms"].as_f64().unwrap_or(f64::NAN)
            );
        }
        if !self.stomp_load.is_empty() {
            md += "\n## VDSM's load client (`stomp-load`, Host.ping2 over STOMP)\n\n| rvdsmd | connections | req/s | vs VDSM | p50 / p99 ms | VDSM p99 | rvdsmd RSS under load |\n|---|---|---|---|---|---|---|\n";
            for row in &self.stomp_load {
                let conns = row["conns"]
                    .as_u64()
                    .and_then(|c| usize::try_from(c).ok())
                    .unwrap_or(0);
                let r = &row["result"];
                let rps = r["rps"].as_f64().unwrap_or(f64::NAN);
                let (_, vdsm_rps, vdsm_p99) = VDSM
                    .iter()
                    .copied()
                    .find(|v| v.0 == conns)
                    .unwrap_or((0, f64::NAN, f64::NAN));
                md += &format!(
                    "| {} | {conns} | {rps:.0} | {:.1}x | {:.3} / {:.3} | {vdsm_p99} | {} KiB |\n",
                    if row["pinned"] == true {
                        "started on 1 CPU"
                    } else {
                        "unpinned"
                    },
                    rps / vdsm_rps,
                    r["p50_ms"].as_f64().unwrap_or(f64::NAN),
                    r["p99_ms"].as_f64().unwrap_or(f64::NAN),
                    r["rss_load_max_kb"]
                );
            }
            let pinned = |conns: u64| {
                self.stomp_load
                    .iter()
                    .find(|r| r["pinned"] == true && r["conns"] == conns)
                    .map(|r| {
                        (
                            r["result"]["rps"].as_f64().unwrap_or(0.0),
                            r["result"]["p99_ms"].as_f64().unwrap_or(f64::MAX),
                        )
                    })
            };
            if let (Some((rps64, p99_64)), Some((rps1, _))) = (pinned(64), pinned(1)) {
                md += &format!(
                    "\nTargets (pinned, as VDSM was): 64 connections ≥ 5x VDSM's req/s ({:.1}x: {}) with p99 ≤ a quarter of VDSM's 8.32 ms ({:.3} ms: {}); 1 connection ≥ 3x ({:.1}x: {}).\n",
                    rps64 / 12529.0,
                    verdict(rps64 >= 5.0 * 12529.0),
                    p99_64,
                    verdict(p99_64 <= 8.32 / 4.0),
                    rps1 / 4530.0,
                    verdict(rps1 >= 3.0 * 4530.0)
                );
            }
        }
        md += &self.life_section();
        md += &self.monitoring_section();
        let fp = &self.footprint;
        let idle = fp["rss_idle_kib"].as_f64().unwrap_or(f64::NAN);
        let anon_idle = fp["rss_idle_anon_kib"].as_f64().unwrap_or(f64::NAN);
        let anon_after = fp["anon_after_rpc_load_kib"].as_f64().unwrap_or(f64::NAN);
        let anon_before_load = fp["anon_before_rpc_load_kib"].as_f64().unwrap_or(f64::NAN);
        md += &format!(
            "\n## Footprint\n\n| measure | value | target |\n|---|---|---|\n\
             | start-up to ready (all verbs served) | {:.0} ms | |\n\
             | resident memory, idle | {:.1} MiB ({:.1} anonymous, {:.1} file-backed code) | < 14 MiB: {} |\n\
             | floor: `virsh` connected to qemu:///system, idle | {:.1} MiB ({:.1} anonymous, {:.1} file-backed code) | |\n\
             | resident memory, peak under RPC load | {:.1} MiB | |\n\
             | resident memory, 15 s after RPC load | {:.1} MiB | back within 2 MiB of idle: {} |\n\
             | anonymous memory, idle / 15 s after RPC load | {:.1} / {:.1} MiB | ≤ 4 MiB idle: {}; back within 1 MiB of idle: {} |\n\
             | anonymous memory, just before the RPC load (2 guests running, the jobs and tasks so far) / 15 s after it | {:.1} / {:.1} MiB | back within 1 MiB of before the load: {} |\n\
             | resident memory with {} VMs | {:.1} MiB | |\n",
            fp["startup_ms"].as_f64().unwrap_or(f64::NAN),
            idle / 1024.0,
            fp["rss_idle_anon_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            fp["rss_idle_file_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            verdict(idle < 14.0 * 1024.0),
            fp["libvirt_client_floor_kib"]["rss"]
                .as_f64()
                .unwrap_or(f64::NAN)
                / 1024.0,
            fp["libvirt_client_floor_kib"]["anon"]
                .as_f64()
                .unwrap_or(f64::NAN)
                / 1024.0,
            fp["libvirt_client_floor_kib"]["file"]
                .as_f64()
                .unwrap_or(f64::NAN)
                / 1024.0,
            fp["rss_rpc_load_max_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            fp["rss_after_rpc_load_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            verdict(fp["rss_after_rpc_load_kib"].as_f64().unwrap_or(f64::MAX) <= idle + 2048.0),
            anon_idle / 1024.0,
            anon_after / 1024.0,
            verdict(anon_idle <= 4096.0),
            verdict(anon_after <= anon_idle + 1024.0),
            anon_before_load / 1024.0,
            anon_after / 1024.0,
            verdict(anon_after <= anon_before_load + 1024.0),
            fp["vms"],
            fp["rss_with_vms_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
        );
        results.insert(
            "snapshot_latency_ms".into(),
            json!({"rvdsm": ours.json(), "floor": floor.json(), "ratio": latency_ratio}),
        );
        results.insert(
            "flow_ms".into(),
            json!({"rvdsm": f_ours.json(), "floor": f_floor.json(), "ratio": flow_ratio}),
        );
        results.insert(
            "depth_ms".into(),
            Value::Array(
                self.depths
                    .iter()
                    .map(|(d, o, f, fl)| {
                        json!({"volumes": d, "rvdsm": o.json(), "floor": f.json(),
                               "rvdsm_flow": fl.json(), "ratio": ratio(o.median, f.median)})
                    })
                    .collect(),
            ),
        );
        results.insert(
            "stall_ms".into(),
            json!({"rvdsm": s_ours.json(), "floor": s_floor.json(), "typical_gap": gap.json()}),
        );
        results.insert(
            "parallel_ms".into(),
            Value::Array(self.parallel.iter().map(|(n, p, s)| json!({"guests": n, "parallel": p.json(), "sequential": s.json()})).collect()),
        );
        results.insert(
            "ping_p99_during_snapshots_ms".into(),
            json!(self.ping_p99_during),
        );
        results.insert(
            "floor_parallel_ms".into(),
            Value::Array(
                self.floor_parallel
                    .iter()
                    .map(|(n, f)| json!({"guests": n, "parallel": f.json()}))
                    .collect(),
            ),
        );
        results.insert(
            "rvdsm_phases_ms".into(),
            json!({"freeze": freeze.json(), "switch": switch.json(), "thaw": thaw.json(), "flow_total": total.json()}),
        );
        results.insert("rpc".into(), Value::Array(self.rpc.clone()));
        results.insert("stomp_load".into(), Value::Array(self.stomp_load.clone()));
        results.insert("footprint".into(), self.footprint.clone());
        results.insert("monitoring".into(), self.monitoring.clone());
        results.insert("snapshot_life".into(), self.life.clone());
        results.insert("memory_snapshots".into(), self.memory.clone());
        (results, md)
    }

    /// Live merge, full clone and revert beside their floors and targets.
    fn life_section(&self) -> String {
        let l = &self.life;
        let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let row = |key: &str| {
            let (o, f) = (&l[key]["rvdsm"], &l[key]["floor"]);
            format!(
                "{:.0} ({:.0}-{:.0}) ms | {:.0} ({:.0}-{:.0}) ms | {:.2}x",
                num(&o["median"]),
                num(&o["min"]),
                num(&o["max"]),
                num(&f["median"]),
                num(&f["min"]),
                num(&f["max"]),
                num(&l[key]["ratio"])
            )
        };
        let merge_ratio = num(&l["merge"]["ratio"]);
        let clone_throughput = num(&l["clone"]["throughput_ratio"]);
        format!(
            "\n## A snapshot's later life ({} MiB of data)\n\n| operation | rvdsm | floor | ratio | target |\n|---|---|---|---|---|\n\
             | live merge of the active layer (`VM.merge` to the job's end, top deleted) vs `virsh blockcommit --active --pivot --wait` | {} | ≤ 1.10x: {} |\n\
             | full clone (`SDM.copy_data` to the job's end) vs `qemu-img convert -t writeback -n` into the same kind of volume | {} | throughput ≥ 0.95x: {:.2}x, {} |\n\
             | revert: preview volume + `VM.create` + agent answering vs `qemu-img create` + `virsh create` + agent | {} | |\n\
             | `VM.create` alone, request to reply (domain defined and started; engine XML checked, drives prepared, journaled) vs libvirt's `virDomainCreateXML` (what `virsh create` calls) | {} | |\n",
            l["mib"],
            row("merge"),
            verdict(merge_ratio <= 1.10),
            row("clone"),
            clone_throughput,
            verdict(clone_throughput >= 0.95),
            row("revert"),
            row("vm_create"),
        )
    }

    /// The monitoring verbs beside their targets.
    fn monitoring_section(&self) -> String {
        let m = &self.monitoring;
        let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let vms = num(&m["vms"]);
        let p99 = num(&m["get_all_vm_stats_1"]["p99_ms"]);
        let per_vm = (num(&m["anon_with_vms_kib"]) - num(&m["anon_before_kib"])) / vms;
        let stats8 = self
            .rpc
            .iter()
            .find(|r| r["method"] == "VM.getStats" && r["conns"] == 8 && r["transport"] == "STOMP")
            .map_or(f64::NAN, |r| num(&r["rps"]));
        format!(
            "\n## Monitoring (answered from the sampled cache)\n\n| measure | value | target |\n|---|---|---|\n\
             | `Host.getAllVmStats`, {} paused VMs, 1 connection: p50 / p99 | {:.3} / {:.3} ms ({:.0} req/s) | |\n\
             | `Host.getAllVmStats`, {vms} paused VMs, 1 connection: p50 / p99 | {:.3} / {p99:.3} ms ({:.0} req/s) | p99 < 5 ms: {} |\n\
             | `Host.getAllVmStats`, {vms} VMs, 8 connections | {:.0} req/s, p99 {:.3} ms | |\n\
             | `VM.getStats`, 8 connections (STOMP) | {stats8:.0} req/s | ≥ 20,000: {} |\n\
             | rvdsmd anonymous memory per VM watched | {per_vm:.1} KiB | ≤ 64 KiB: {} |\n",
            m["few_vms"],
            num(&m["get_all_vm_stats_few_1"]["p50_ms"]),
            num(&m["get_all_vm_stats_few_1"]["p99_ms"]),
            num(&m["get_all_vm_stats_few_1"]["rps"]),
            num(&m["get_all_vm_stats_1"]["p50_ms"]),
            num(&m["get_all_vm_stats_1"]["rps"]),
            verdict(p99 < 5.0),
            num(&m["get_all_vm_stats_8"]["rps"]),
            num(&m["get_all_vm_stats_8"]["p99_ms"]),
            verdict(stats8 >= 20_000.0),
            verdict(per_vm <= 64.0),
        )
    }
}

/// The memory snapshots beside their floor and targets (`memory::measure`'s JSON).
/// `provenance`, when given, says where the figures come from (a run of `--only memory`).
pub fn memory_section(memory: &Value, provenance: Option<&str>) -> String {
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let show = |v: &Value| {
        if v.is_null() {
            "-".to_owned()
        } else {
            format!(
                "{:.1} ({:.1}-{:.1})",
                num(&v["median"]),
                num(&v["min"]),
                num(&v["max"])
            )
        }
    };
    let mut md = format!(
        "\n## Memory snapshots (`VM.snapshot` with `snapMemory`)\n\n{}\
         {} runs of each, rvdsm's and the floor's in turn on two guests of the same size.\n\n\
         | guest | mode | measure | rvdsm | floor | ratio | target |\n|---|---|---|---|---|---|---|\n",
        provenance.map_or(String::new(), |p| format!("{p}\n\n")),
        memory["reps"]
    );
    let mut notes = Vec::new();
    for case in memory["cases"].as_array().into_iter().flatten() {
        let guest = format!(
            "{} MiB, {}",
            case["memory_mib"],
            if case["writing"] == true {
                "writing"
            } else {
                "idle"
            }
        );
        if case["writing"] == true {
            notes.push(format!(
                "The writing guest copies 32 MiB of random bytes over and over onto a {} MiB \
                 file in its tmpfs (non-zero pages, so QEMU cannot send them as zero pages); one \
                 pass alone takes {:.0} ms ({:.0} MiB/s, timed from the host through the \
                 agent). Under TCG its one vCPU then keeps one of the host's 2 cores busy, and \
                 only the guest being measured writes (its workload starts 2 s before each \
                 snapshot and stops after it).",
                case["working_set_mib"],
                num(&case["writer_pass_ms"]),
                num(&case["working_set_mib"]) / num(&case["writer_pass_ms"]) * 1000.0
            ));
        }
        for mode in ["paused", "live"] {
            let m = &case["modes"][mode];
            let (ours, floor) = (&m["rvdsm"], &m["floor"]);
            let row = |measure: &str, key: &str, ratio: Option<&str>, target: String| {
                format!(
                    "| {guest} | {mode} | {measure} | {} | {} | {} | {target} |\n",
                    show(&ours[key]),
                    show(&floor[key]),
                    ratio.map_or("-".into(), |r| format!("{:.2}", num(&m["ratio"][r])))
                )
            };
            let took_ratio = num(&m["ratio"]["request_to_done"]);
            let pause_ratio = num(&m["ratio"]["pause_events"]);
            md += &row(
                "request to done (ms)",
                "request_to_done_ms",
                Some("request_to_done"),
                format!("≤ 1.10: {}", verdict(took_ratio <= 1.10)),
            );
            let pause_target = match mode {
                "paused" => format!("≤ 1.10: {}", verdict(pause_ratio <= 1.10)),
                _ if case["writing"] == true => {
                    let median = num(&ours["pause_events_ms"]["median"]);
                    format!("≤ 300 ms: {}", verdict(median <= 300.0))
                }
                _ => String::new(),
            };
            md += &row(
                "**guest paused**: libvirt's suspended → resumed events (ms)",
                "pause_events_ms",
                Some("pause_events"),
                pause_target,
            );
            md += &row(
                "guest's clock fallen behind the host's (ms)",
                "guest_clock_lag_ms",
                Some("guest_clock_lag"),
                String::new(),
            );
            md += &row(
                "± of that (half the agent's two round trips, ms)",
                "guest_clock_lag_error_ms",
                None,
                String::new(),
            );
            md += &row(
                "rvdsm's own `result.memory.pauseMs`",
                "reported_pause_ms",
                None,
                String::new(),
            );
            md += &row(
                "QEMU's downtime (libvirt's completed job, ms)",
                "downtime_ms",
                None,
                String::new(),
            );
            md += &row("passes over the RAM", "iterations", None, String::new());
            md += &row("dump on disk (MiB)", "dump_mib", None, String::new());
        }
    }
    md += "\nFloor: the same external snapshot with memory issued directly through the `virt` \
           crate, as `virsh snapshot-create --reuse-external --no-metadata [--live]` issues it: \
           a `<domainsnapshot>` with the disk `snapshot='external'` onto a qcow2 overlay made \
           beforehand (`qemu-img create -b <current> -F qcow2`) and `<memory \
           snapshot='external' file=...>` onto a sparse RAW file of the dump volume's size made \
           beforehand in the guest's image directory; flags REUSE_EXT | NO_METADATA | ATOMIC \
           (rvdsm's own), and LIVE for the live mode. Dump volumes and files: the engine's \
           size (RAM + 264 MiB) in paused mode; 3 × RAM + 264 MiB in live mode, on both \
           sides, since a live dump holds again the pages dirtied while it is written and \
           rvdsm stops a dump that reaches its volume's capacity. rvdsm's side: \
           the dump and configuration volumes (RAW, sparse, each in a new image) and the disk's \
           new top created with `Volume.create` first (not timed), then `VM.snapshot` with \
           `snapMemory` and `memoryMode`, timed from the request to the job's `|jobs|status|` \
           event. The dumps are deleted after each run (not timed).\n\n\
           The pause the targets use: libvirt's lifecycle events, suspended → resumed, for both \
           sides from one `virsh event --loop --timestamp` watcher (the same instrument for \
           both). The guest's own view: under TCG the guest's clocks stop with its vCPUs, so a \
           probe timestamping in a loop (or the write probe's largest gap) sees no gap at all; \
           instead the guest's clock falls behind the host's by the time it stood still, read \
           through the agent's `guest-get-time` just before and after each snapshot. It \
           matches the events within a few ms when the guest's vCPU gets a core; it falls \
           further behind when the vCPU is starved (the live mode of the writing guest above \
           all), because the fixture's kernel finds no HPET or PM timer under TCG, marks the \
           TSC unstable and keeps time by ticks (`refined-jiffies`), and ticks are lost while \
           its vCPU waits for a core: the guest's clock is shown beside, the events are the \
           measure. QEMU's downtime is only the last stop-and-copy of the RAM (in paused mode, \
           the whole copy); the events add libvirt's disks' switch and the resume.\n";
    for case in memory["cases"].as_array().into_iter().flatten() {
        let engine = &case["engine_sized_live"];
        if engine.is_object() {
            notes.push(if engine["ok"] == true {
                format!(
                    "A live snapshot of the {} MiB writing guest onto a dump volume of the \
                     engine's size ({} MiB): done, its dump {:.0} MiB, the guest paused {:.0} ms.",
                    case["memory_mib"],
                    engine["volume_mib"],
                    num(&engine["dump_mib"]),
                    num(&engine["pause_events_ms"])
                )
            } else {
                format!(
                    "A live snapshot of the {} MiB writing guest onto a dump volume of the \
                     engine's size ({} MiB) failed: {}",
                    case["memory_mib"],
                    engine["volume_mib"],
                    engine["error"].as_str().unwrap_or("")
                )
            });
        }
        for failure in case["failures"].as_array().into_iter().flatten() {
            notes.push(format!(
                "Failed run ({} MiB guest): {}",
                case["memory_mib"],
                failure.as_str().unwrap_or("")
            ));
        }
    }
    for note in notes {
        md += &format!("\n{note}\n");
    }
    md
}

/// Puts the memory section into an existing report, replacing its previous one (a run of
/// `--only memory` updates that section alone), or after the snapshots section.
pub fn splice_memory_section(report: &str, section: &str) -> String {
    const HEADING: &str = "\n## Memory snapshots";
    if let Some(start) = report.find(HEADING) {
        let rest = &report[start + 1..];
        let end = rest.find("\n## ").map_or(report.len(), |e| start + 1 + e);
        return format!("{}{section}{}", &report[..start], &report[end..]);
    }
    match report.find("\n## Snapshot latency by chain depth") {
        Some(at) => format!("{}{section}{}", &report[..at], &report[at..]),
        None => format!("{report}{section}"),
    }
}
