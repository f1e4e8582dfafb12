//! VDSM's VM stats from two consecutive bulk samples: the figures VDSM's `vmstats` computes
//! (CPU percentages over the interval, disk and network counters, rates and latencies) from
//! libvirt's field names. Pure: tested with hand-made samples.

use std::collections::BTreeMap;
use std::time::Instant;

use uuid::Uuid;

use crate::api::lifecycle_types::{VmDiskStats, VmNicStats, VmStats, exit_message};
use crate::api::types::{DiskStats, VmStatus};
use crate::virt::{DomainStats, DomainView, StatValue};

/// One bulk sample of a domain and when it was taken.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When.
    pub at: Instant,
    /// libvirt's fields.
    pub stats: DomainStats,
}

/// What the stats of one VM are computed from.
pub struct Inputs<'a> {
    /// The domain now.
    pub view: &'a DomainView,
    /// Its disks, parsed from the XML.
    pub disks: &'a [DiskStats],
    /// The image of each drive on a storage volume, by target.
    pub images: &'a BTreeMap<String, Uuid>,
    /// The two latest samples (older first), when there are.
    pub first: Option<&'a Sample>,
    /// The latest sample.
    pub last: Option<&'a Sample>,
    /// When rvdsm first saw it running.
    pub running_since: Option<Instant>,
    /// Sample time, monotonic milliseconds.
    pub status_time: u64,
    /// Whether rvdsm created it.
    pub managed: bool,
    /// Now.
    pub now: Instant,
}

/// The VM's stats in VDSM's shape.
pub fn vm_stats(input: &Inputs) -> VmStats {
    let view = input.view;
    let mut stats = VmStats {
        vm_id: view.uuid,
        status: view.status,
        status_time: input.status_time.to_string(),
        vm_name: Some(view.name.clone()),
        vm_type: None,
        kvm_enable: None,
        acpi_enable: None,
        elapsed_time: None,
        monitor_response: None,
        cpu_user: None,
        cpu_sys: None,
        cpu_usage: None,
        cpu_actual: None,
        vcpu_count: None,
        mem_usage: None,
        balloon_info: None,
        time_offset: None,
        disks: None,
        network: None,
        vm_jobs: None,
        exit_code: None,
        exit_message: None,
        exit_reason: None,
        frozen: None,
        stats_age: None,
        managed: Some(input.managed),
    };
    if view.status == VmStatus::Down {
        let exit = view
            .exit
            .unwrap_or(crate::virt::ExitInfo { code: 0, reason: 0 });
        stats.exit_code = Some(exit.code);
        stats.exit_reason = Some(exit.reason);
        stats.exit_message = Some(exit_message(exit.reason).to_owned());
        stats.time_offset = Some("0".into());
        // rvdsm's addition: a stopped VM's disks as its definition has them (no figures), which
        // an offline snapshot works from.
        stats.disks = Some(disks(input, None, None));
        return stats;
    }
    stats.vm_type = Some("kvm".into());
    stats.kvm_enable = Some("true".into());
    stats.acpi_enable = Some("true".into());
    stats.time_offset = Some("0".into());
    stats.monitor_response = Some("0".into());
    stats.elapsed_time = Some(
        input
            .running_since
            .map_or(0, |t| input.now.saturating_duration_since(t).as_secs())
            .to_string(),
    );
    stats.vm_jobs = Some(BTreeMap::new());
    stats.stats_age = input
        .last
        .map(|s| input.now.saturating_duration_since(s.at).as_secs_f64());
    let last = input.last.map(|s| &s.stats);
    let pair = match (input.first, input.last) {
        (Some(f), Some(l)) if l.at > f.at => {
            Some((&f.stats, &l.stats, (l.at - f.at).as_secs_f64()))
        }
        _ => None,
    };
    cpu(&mut stats, last, pair);
    memory(&mut stats, last);
    stats.disks = Some(disks(input, last, pair));
    stats.network = Some(network(last, input.status_time as f64 / 1000.0));
    stats
}

type Pair<'a> = Option<(&'a DomainStats, &'a DomainStats, f64)>;

fn number(stats: &DomainStats, key: &str) -> Option<f64> {
    match stats.get(key)? {
        StatValue::Int(v) => Some(*v as f64),
        StatValue::UInt(v) => Some(*v as f64),
        StatValue::Double(v) => Some(*v),
        StatValue::Bool(_) | StatValue::Str(_) => None,
    }
}

/// An integer field as a count.
fn count(stats: &DomainStats, key: &str) -> Option<usize> {
    match stats.get(key)? {
        StatValue::UInt(n) => usize::try_from(*n).ok(),
        StatValue::Int(n) => usize::try_from(*n).ok(),
        _ => None,
    }
}

fn text<'a>(stats: &'a DomainStats, key: &str) -> Option<&'a str> {
    match stats.get(key)? {
        StatValue::Str(s) => Some(s),
        _ => None,
    }
}

/// A counter as VDSM prints it: an integer string.
fn counter(value: Option<f64>) -> String {
    format!("{:.0}", value.unwrap_or(0.0).max(0.0).trunc())
}

/// Percent of one CPU that `nanos` over `seconds` is.
fn percent(nanos: f64, seconds: f64) -> f64 {
    100.0 * nanos / seconds / 1e9
}

fn cpu(stats: &mut VmStats, last: Option<&DomainStats>, pair: Pair) {
    stats.cpu_user = Some("0.00".into());
    stats.cpu_sys = Some("0.00".into());
    stats.cpu_actual = Some(false);
    if let Some(last) = last {
        let total =
            number(last, "cpu.user").unwrap_or(0.0) + number(last, "cpu.system").unwrap_or(0.0);
        stats.cpu_usage = Some(counter(Some(total)));
        stats.vcpu_count = number(last, "vcpu.current").map(|v| counter(Some(v)));
    }
    let Some((first, last, seconds)) = pair else {
        return;
    };
    let delta = |key: &str| Some(number(last, key)? - number(first, key)?);
    let (Some(user), Some(system)) = (delta("cpu.user"), delta("cpu.system")) else {
        return;
    };
    // As VDSM: "cpuSys" is the host's user + system time of the QEMU process, "cpuUser" the
    // rest of the guest's CPU time.
    let host = user + system;
    stats.cpu_sys = Some(format!("{:.2}", percent(host, seconds)));
    if let Some(time) = delta("cpu.time") {
        stats.cpu_user = Some(format!("{:.2}", percent(time - host, seconds).max(0.0)));
        stats.cpu_actual = Some(true);
    }
}

fn memory(stats: &mut VmStats, last: Option<&DomainStats>) {
    stats.mem_usage = Some("0".into());
    let Some(last) = last else { return };
    let mut balloon = BTreeMap::new();
    if let Some(max) = number(last, "balloon.maximum") {
        balloon.insert("balloon_max".to_owned(), counter(Some(max)));
    }
    if let Some(current) = number(last, "balloon.current") {
        balloon.insert("balloon_cur".to_owned(), counter(Some(current)));
    }
    if let (Some(available), Some(unused)) = (
        number(last, "balloon.available"),
        number(last, "balloon.unused"),
    ) && available > 0.0
    {
        stats.mem_usage = Some(format!(
            "{:.0}",
            (100.0 * (available - unused) / available).max(0.0).trunc()
        ));
    }
    stats.balloon_info = Some(balloon);
}

/// libvirt's `block.<i>.name` index of each target.
fn block_index(stats: &DomainStats, target: &str) -> Option<usize> {
    let count = count(stats, "block.count")?;
    (0..count).find(|i| text(stats, &format!("block.{i}.name")) == Some(target))
}

fn disks(input: &Inputs, last: Option<&DomainStats>, pair: Pair) -> BTreeMap<String, VmDiskStats> {
    let mut out = BTreeMap::new();
    for disk in input.disks {
        let mut entry = VmDiskStats {
            read_bytes: "0".into(),
            written_bytes: "0".into(),
            read_ops: "0".into(),
            write_ops: "0".into(),
            read_rate: "0.0".into(),
            write_rate: "0.0".into(),
            read_latency: "0".into(),
            write_latency: "0".into(),
            flush_latency: "0".into(),
            truesize: "0".into(),
            apparentsize: "0".into(),
            image_id: input.images.get(&disk.target).copied(),
            device: disk.clone(),
        };
        if let Some(last) = last
            && let Some(i) = block_index(last, &disk.target)
        {
            let field = |name: &str| number(last, &format!("block.{i}.{name}"));
            entry.read_bytes = counter(field("rd.bytes"));
            entry.written_bytes = counter(field("wr.bytes"));
            entry.read_ops = counter(field("rd.reqs"));
            entry.write_ops = counter(field("wr.reqs"));
            entry.truesize = counter(field("allocation"));
            entry.apparentsize = counter(field("physical").or(field("capacity")));
        }
        if let Some((first, last, seconds)) = pair
            && let (Some(a), Some(b)) = (
                block_index(first, &disk.target),
                block_index(last, &disk.target),
            )
        {
            let delta = |name: &str| {
                Some(
                    number(last, &format!("block.{b}.{name}"))?
                        - number(first, &format!("block.{a}.{name}"))?,
                )
            };
            if let Some(bytes) = delta("rd.bytes") {
                entry.read_rate = format!("{:.1}", bytes / seconds);
            }
            if let Some(bytes) = delta("wr.bytes") {
                entry.write_rate = format!("{:.1}", bytes / seconds);
            }
            for (slot, mode) in [
                (&mut entry.read_latency, "rd"),
                (&mut entry.write_latency, "wr"),
                (&mut entry.flush_latency, "fl"),
            ] {
                if let (Some(reqs), Some(times)) = (
                    delta(&format!("{mode}.reqs")),
                    delta(&format!("{mode}.times")),
                ) && reqs > 0.0
                {
                    *slot = counter(Some(times / reqs));
                }
            }
        }
        out.insert(disk.target.clone(), entry);
    }
    out
}

fn network(last: Option<&DomainStats>, sample_time: f64) -> BTreeMap<String, VmNicStats> {
    let mut out = BTreeMap::new();
    let Some(last) = last else { return out };
    let count = count(last, "net.count").unwrap_or(0);
    for i in 0..count {
        let Some(name) = text(last, &format!("net.{i}.name")) else {
            continue;
        };
        let field = |f: &str| counter(number(last, &format!("net.{i}.{f}")));
        out.insert(
            name.to_owned(),
            VmNicStats {
                name: name.to_owned(),
                rx: field("rx.bytes"),
                tx: field("tx.bytes"),
                rx_errors: field("rx.errs"),
                rx_dropped: field("rx.drop"),
                tx_errors: field("tx.errs"),
                tx_dropped: field("tx.drop"),
                sample_time,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn view(status: VmStatus) -> DomainView {
        DomainView {
            uuid: Uuid::from_u128(1),
            name: "vm".into(),
            status,
            exit: None,
            persistent: true,
            xml: String::new(),
        }
    }

    fn sample(at: Instant, fields: &[(&str, StatValue)]) -> Sample {
        Sample {
            at,
            stats: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    fn disk(target: &str) -> DiskStats {
        DiskStats {
            target: target.into(),
            device: "disk".into(),
            disk_type: "file".into(),
            path: Some("/p".into()),
            format: Some("qcow2".into()),
            readonly: false,
            shareable: false,
            backing_chain: Vec::new(),
        }
    }

    #[test]
    fn rates_and_percentages_come_from_two_samples() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        let first = sample(
            t0,
            &[
                ("cpu.time", StatValue::UInt(1_000_000_000)),
                ("cpu.user", StatValue::UInt(100_000_000)),
                ("cpu.system", StatValue::UInt(100_000_000)),
                ("block.count", StatValue::UInt(1)),
                ("block.0.name", StatValue::Str("vda".into())),
                ("block.0.wr.bytes", StatValue::UInt(1_000)),
                ("block.0.wr.reqs", StatValue::UInt(10)),
                ("block.0.wr.times", StatValue::UInt(1_000)),
            ],
        );
        let last = sample(
            t1,
            &[
                ("cpu.time", StatValue::UInt(6_000_000_000)),
                ("cpu.user", StatValue::UInt(600_000_000)),
                ("cpu.system", StatValue::UInt(600_000_000)),
                ("block.count", StatValue::UInt(1)),
                ("block.0.name", StatValue::Str("vda".into())),
                ("block.0.wr.bytes", StatValue::UInt(101_000)),
                ("block.0.wr.reqs", StatValue::UInt(20)),
                ("block.0.wr.times", StatValue::UInt(51_000)),
                ("block.0.allocation", StatValue::UInt(4096)),
            ],
        );
        let images = BTreeMap::from([("vda".to_owned(), Uuid::from_u128(9))]);
        let disks = [disk("vda")];
        let v = view(VmStatus::Up);
        let stats = vm_stats(&Inputs {
            view: &v,
            disks: &disks,
            images: &images,
            first: Some(&first),
            last: Some(&last),
            running_since: Some(t0),
            status_time: 5,
            managed: true,
            now: t1,
        });
        // 1 s of host time over 10 s = 10 %; the guest's other 4 s = 40 %.
        assert_eq!(stats.cpu_sys.as_deref(), Some("10.00"));
        assert_eq!(stats.cpu_user.as_deref(), Some("40.00"));
        assert_eq!(stats.cpu_actual, Some(true));
        let vda = &stats.disks.as_ref().unwrap()["vda"];
        assert_eq!(vda.write_rate, "10000.0");
        assert_eq!(vda.write_latency, "5000");
        assert_eq!(vda.written_bytes, "101000");
        assert_eq!(vda.truesize, "4096");
        assert_eq!(vda.image_id, Some(Uuid::from_u128(9)));
        assert_eq!(stats.elapsed_time.as_deref(), Some("10"));
        assert_eq!(stats.vm_jobs, Some(BTreeMap::new()));
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["statusTime"], "5");
        assert_eq!(
            json["disks"]["vda"]["target"], "vda",
            "our fields stay: {json}"
        );
    }

    #[test]
    fn one_sample_gives_zero_rates_and_a_down_vm_its_exit() {
        let now = Instant::now();
        let v = view(VmStatus::Up);
        let stats = vm_stats(&Inputs {
            view: &v,
            disks: &[disk("vda")],
            images: &BTreeMap::new(),
            first: None,
            last: None,
            running_since: None,
            status_time: 1,
            managed: false,
            now,
        });
        assert_eq!(stats.cpu_actual, Some(false));
        assert_eq!(stats.disks.unwrap()["vda"].read_rate, "0.0");
        let mut down = view(VmStatus::Down);
        down.exit = Some(crate::virt::ExitInfo { code: 1, reason: 2 });
        let stats = vm_stats(&Inputs {
            view: &down,
            disks: &[],
            images: &BTreeMap::new(),
            first: None,
            last: None,
            running_since: None,
            status_time: 1,
            managed: true,
            now,
        });
        assert_eq!(stats.exit_code, Some(1));
        assert_eq!(
            stats.exit_message.as_deref(),
            Some("Lost connection with qemu process")
        );
        assert_eq!(
            stats.disks,
            Some(BTreeMap::new()),
            "the definition's disks, none here"
        );
    }
}
