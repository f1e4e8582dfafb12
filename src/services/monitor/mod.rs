//! The monitoring cache: a background sampler reads every domain (state, live XML, libvirt's
//! bulk statistics in one call) every `vm_sample_interval` (15 s, VDSM's), and whatever just
//! changed a VM (a lifecycle event, a verb of rvdsm's, a snapshot's switch) re-reads that one
//! VM at once. The monitoring verbs (`VM.getStats`, `Host.getAllVmStats`, `Host.getVMList`,
//! `Host.getVMFullList`, `Host.dumpxmls`) answer from the cache and never call libvirt.
//!
//! Each VM's stats are computed and serialized when its sample arrives, not per request. A
//! sample older than three intervals (libvirt not answering) is served as it is, with
//! `monitorResponse: "-1"` and its age in `statsAge`, as VDSM marks an unresponsive VM.
//! `|virt|VM_status|` events are published here, once per change of status, with the VM's
//! stats.

mod vm_stats;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::api::ApiError;
use crate::api::lifecycle_types::{VmShortStatus, VmStats};
use crate::api::types::VmStatus;
use crate::events::EventBus;
use crate::jobs::block_jobs::BlockJobTable;
use crate::services::FreezeService;
use crate::virt::{DomainView, SharedHypervisor, vm_xml, xml};
use serde_json::value::RawValue;
use vm_stats::{Inputs, Sample};

/// How many intervals a sample may age before it is reported stale.
const STALE_INTERVALS: u32 = 3;

/// The cache and its sampler; cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

struct Inner {
    hypervisor: SharedHypervisor,
    interval: Duration,
    freezes: FreezeService,
    events: Option<EventBus>,
    /// The live merges, shown in `vmJobs`.
    block_jobs: BlockJobTable,
    // A std lock: held only to read or swap entries, never across an await or a libvirt call.
    vms: RwLock<HashMap<Uuid, Entry>>,
    /// The host's CPU counters at the last sample, and the percentages (user, system, idle)
    /// over the last interval.
    host_cpu: std::sync::Mutex<(Vec<u64>, Option<[f64; 3]>)>,
    stop: tokio_util::sync::CancellationToken,
}

struct Entry {
    /// When the libvirt read this entry's view came from began: an older read finishing
    /// later (a full sample overtaken by one VM's refresh) must not overwrite it.
    read_at: Instant,
    view: DomainView,
    disks: Vec<crate::api::types::DiskStats>,
    images: BTreeMap<String, Uuid>,
    managed: bool,
    first: Option<Sample>,
    last: Option<Sample>,
    running_since: Option<Instant>,
    status_time: u64,
    stats: Arc<VmStats>,
    /// `stats` serialized once, without the fields that change between requests (`frozen`,
    /// `statsAge`, `monitorResponse`): requests copy text instead of building JSON.
    json: Arc<str>,
}

/// The fields of a VM's stats that change between requests.
struct Dynamic {
    /// `"0"`, or `"-1"` for a stale sample.
    monitor_response: &'static str,
    /// Seconds since the last sample.
    stats_age: Option<f64>,
    /// Who holds the guest frozen.
    frozen: Option<crate::api::types::FrozenBy>,
}

/// The stats without their per-request fields, serialized.
fn static_json(stats: &VmStats) -> Arc<str> {
    let fixed = VmStats {
        monitor_response: None,
        stats_age: None,
        frozen: None,
        vm_jobs: None,
        ..stats.clone()
    };
    serde_json::to_string(&fixed)
        .unwrap_or_else(|_| "{}".to_owned())
        .into()
}

/// Why the cache cannot answer.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// The cache does not know the VM (libvirt did not, at the last sample).
    #[error("no VM {0} in the monitoring cache")]
    NoSuchVm(Uuid),
    /// The answer could not be put together as JSON.
    #[error("cannot encode the stats")]
    Encode(#[source] serde_json::Error),
}

impl From<MonitorError> for ApiError {
    fn from(err: MonitorError) -> Self {
        match err {
            MonitorError::NoSuchVm(vm) => ApiError::NoSuchVm {
                vm_id: vm.to_string(),
            },
            MonitorError::Encode(e) => ApiError::Unexpected(e.to_string()),
        }
    }
}

fn raw(text: String) -> Result<Box<RawValue>, MonitorError> {
    RawValue::from_string(text).map_err(MonitorError::Encode)
}

/// What the cache reads out of a domain's XML, parsed outside its lock.
struct Parsed {
    view: DomainView,
    disks: Vec<crate::api::types::DiskStats>,
    images: BTreeMap<String, Uuid>,
    managed: bool,
}

impl Parsed {
    fn of(view: DomainView) -> Self {
        let disks = xml::parse_disks(&view.xml).unwrap_or_default();
        let drives = vm_xml::managed_drives(&view.xml).unwrap_or_default();
        Self {
            managed: !drives.is_empty(),
            images: drives
                .into_iter()
                .map(|(drive, _)| (drive.target, drive.image))
                .collect(),
            disks,
            view,
        }
    }
}

impl Monitor {
    /// A cache over `hypervisor`, empty until [`Monitor::start`] or a refresh fills it.
    pub fn new(
        hypervisor: SharedHypervisor,
        interval: Duration,
        freezes: FreezeService,
        events: Option<EventBus>,
        block_jobs: BlockJobTable,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                hypervisor,
                interval,
                freezes,
                events,
                block_jobs,
                vms: RwLock::default(),
                host_cpu: std::sync::Mutex::default(),
                stop: tokio_util::sync::CancellationToken::new(),
            }),
        }
    }

    /// Starts the sampler: a first sample now, then one every interval, until [`Monitor::stop`].
    pub fn start(&self) {
        let monitor = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(monitor.inner.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = monitor.inner.stop.cancelled() => return,
                    _ = ticks.tick() => monitor.sample_all().await,
                }
            }
        });
    }

    /// Stops the sampler.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    /// The host's CPU use over the last interval: user, system, idle percent.
    pub fn host_cpu(&self) -> Option<[f64; 3]> {
        self.inner
            .host_cpu
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
    }

    fn sample_host_cpu(&self) {
        let (now, _) = crate::hostinfo::parse_proc_stat(&crate::hostinfo::read("/proc/stat"));
        let mut cpu = self
            .inner
            .host_cpu
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if now.len() >= 4 && cpu.0.len() == now.len() {
            let delta: Vec<f64> = now
                .iter()
                .zip(&cpu.0)
                .map(|(n, p)| n.saturating_sub(*p) as f64)
                .collect();
            let total: f64 = delta.iter().sum::<f64>().max(1.0);
            let pct = |v: f64| 100.0 * v / total;
            cpu.1 = Some([pct(delta[0] + delta[1]), pct(delta[2]), pct(delta[3])]);
        }
        cpu.0 = now;
    }

    /// Samples every domain (and the host's CPU counters) now.
    pub async fn sample_all(&self) {
        self.sample_host_cpu();
        let began = Instant::now();
        let sampled = match self.inner.hypervisor.sample_all().await {
            Ok(sampled) => sampled,
            Err(err) => {
                tracing::warn!(error = %err, "cannot sample the VMs; serving the last sample");
                return;
            }
        };
        let now = Instant::now();
        let status_time = crate::clock::monotonic_millis();
        // The XML is parsed before the lock is taken: readers never wait for it.
        let parsed: Vec<(Parsed, Sample)> = sampled
            .into_iter()
            .map(|(view, stats)| (Parsed::of(view), Sample { at: now, stats }))
            .collect();
        let mut changed = Vec::new();
        {
            let mut vms = self.write();
            let mut seen = std::collections::HashSet::with_capacity(parsed.len());
            for (parsed, sample) in parsed {
                seen.insert(parsed.view.uuid);
                if let Some(event) = self.update(&mut vms, parsed, Some(sample), began, status_time)
                {
                    changed.push(event);
                }
            }
            let gone: Vec<Uuid> = vms.keys().filter(|u| !seen.contains(u)).copied().collect();
            for vm in gone {
                if let Some(event) = self.forget(&mut vms, vm, began, status_time) {
                    changed.push(event);
                }
            }
        }
        self.publish(changed);
    }

    /// Re-reads one VM now (its state and XML; its figures stay those of the last sample).
    pub async fn refresh(&self, vm: Uuid) {
        let began = Instant::now();
        let view = match self.inner.hypervisor.read_view(vm).await {
            Ok(view) => view,
            Err(err) => {
                tracing::debug!(%vm, error = %err, "cannot re-read the VM; the next sample will");
                return;
            }
        };
        let status_time = crate::clock::monotonic_millis();
        let parsed = view.map(Parsed::of);
        let event = {
            let mut vms = self.write();
            match parsed {
                Some(parsed) => self.update(&mut vms, parsed, None, began, status_time),
                None => self.forget(&mut vms, vm, began, status_time),
            }
        };
        self.publish(event.into_iter().collect());
    }

    /// `[VmStats]` of one VM as JSON text (`VM.getStats`), from text made when the sample
    /// arrived; 1 when the cache does not know the VM.
    pub fn vm_stats_json(&self, vm: Uuid) -> Result<Box<RawValue>, MonitorError> {
        let vms = self.read();
        let entry = vms.get(&vm).ok_or(MonitorError::NoSuchVm(vm))?;
        let mut out = String::with_capacity(entry.json.len() + 96);
        out.push('[');
        self.finish_json(entry, &mut out);
        out.push(']');
        raw(out)
    }

    /// Every VM's stats as JSON text (`Host.getAllVmStats`).
    pub fn all_stats_json(&self) -> Result<Box<RawValue>, MonitorError> {
        let vms = self.read();
        let mut out = String::with_capacity(vms.values().map(|e| e.json.len() + 96).sum());
        out.push('[');
        for (i, entry) in vms.values().enumerate() {
            if i > 0 {
                out.push(',');
            }
            self.finish_json(entry, &mut out);
        }
        out.push(']');
        raw(out)
    }

    /// Appends the entry's stats object with the fields that change between requests, as
    /// [`Monitor::finish`] sets them.
    fn finish_json(&self, entry: &Entry, out: &mut String) {
        let text = &entry.json;
        let Some(now) = self.dynamic(entry) else {
            out.push_str(text);
            return;
        };
        // The static text is an object: its closing brace gives way to the dynamic fields.
        out.push_str(&text[..text.len() - 1]);
        out.push_str(&format!(
            ",\"monitorResponse\":\"{}\"",
            now.monitor_response
        ));
        if let Some(age) = now.stats_age {
            out.push_str(&format!(",\"statsAge\":{age}"));
        }
        if let Some(frozen) = now.frozen
            && let Ok(value) = serde_json::to_string(&frozen)
        {
            out.push_str(&format!(",\"frozen\":{value}"));
        }
        if entry.stats.vm_jobs.is_some() {
            out.push_str(",\"vmJobs\":");
            out.push_str(&self.inner.block_jobs.json_of(entry.view.uuid));
        }
        out.push('}');
    }

    /// The short status of every VM, or of those listed.
    pub fn statuses(&self, only: &[Uuid]) -> Vec<VmShortStatus> {
        let vms = self.read();
        vms.values()
            .filter(|e| only.is_empty() || only.contains(&e.view.uuid))
            .map(|e| VmShortStatus {
                vm_id: e.view.uuid,
                status: e.view.status,
                status_time: e.status_time.to_string(),
            })
            .collect()
    }

    /// The live XML of every VM, or of those listed (`Host.dumpxmls`).
    pub fn xmls(&self, only: &[Uuid]) -> Result<BTreeMap<Uuid, String>, MonitorError> {
        let vms = self.read();
        if let Some(missing) = only.iter().find(|u| !vms.contains_key(u)) {
            return Err(MonitorError::NoSuchVm(*missing));
        }
        Ok(vms
            .values()
            .filter(|e| only.is_empty() || only.contains(&e.view.uuid))
            .map(|e| (e.view.uuid, e.view.xml.clone()))
            .collect())
    }

    /// The cached view of one VM.
    pub fn view(&self, vm: Uuid) -> Option<DomainView> {
        self.read().get(&vm).map(|e| e.view.clone())
    }

    /// The precomputed stats with what changes between requests: the freeze and staleness.
    fn finish(&self, entry: &Entry) -> VmStats {
        let mut stats = VmStats::clone(&entry.stats);
        if let Some(now) = self.dynamic(entry) {
            stats.monitor_response = Some(now.monitor_response.to_owned());
            stats.stats_age = now.stats_age;
            stats.frozen = now.frozen;
        }
        if stats.vm_jobs.is_some() {
            stats.vm_jobs = Some(
                self.inner
                    .block_jobs
                    .of(entry.view.uuid)
                    .into_iter()
                    .filter_map(|(id, job)| Some((id, serde_json::to_value(job).ok()?)))
                    .collect(),
            );
        }
        stats
    }

    /// What changes between requests, for a VM that is not down.
    fn dynamic(&self, entry: &Entry) -> Option<Dynamic> {
        if entry.view.status == VmStatus::Down {
            return None;
        }
        let age = entry.last.as_ref().map(|last| last.at.elapsed());
        let stale = age.is_some_and(|age| age > self.inner.interval * STALE_INTERVALS);
        Some(Dynamic {
            monitor_response: if stale { "-1" } else { "0" },
            stats_age: age.map(|age| age.as_secs_f64()),
            frozen: self
                .inner
                .freezes
                .owned_until(entry.view.uuid)
                .map(|(by, until)| crate::api::types::FrozenBy { by, until }),
        })
    }

    /// Takes `view` (and `sample`, if any) into the cache; the status event to publish when
    /// the VM's status changed or it is new.
    fn update(
        &self,
        vms: &mut HashMap<Uuid, Entry>,
        parsed: Parsed,
        sample: Option<Sample>,
        read_at: Instant,
        status_time: u64,
    ) -> Option<(Uuid, VmStats)> {
        let previous = vms.remove(&parsed.view.uuid);
        let old_status = previous.as_ref().map(|e| e.view.status);
        let (read_at, status_time, parsed) = match previous.as_ref() {
            // A newer read of this VM is already in: keep its view, take only the figures.
            Some(newer) if newer.read_at > read_at => (
                newer.read_at,
                newer.status_time,
                Parsed {
                    view: newer.view.clone(),
                    disks: newer.disks.clone(),
                    images: newer.images.clone(),
                    managed: newer.managed,
                },
            ),
            _ => (read_at, status_time, parsed),
        };
        let (mut first, mut last, mut running_since) = previous
            .map(|e| (e.first, e.last, e.running_since))
            .unwrap_or_default();
        if let Some(sample) = sample {
            first = last.take();
            last = Some(sample);
        }
        match parsed.view.status {
            VmStatus::Up | VmStatus::Paused | VmStatus::PoweringDown => {
                running_since.get_or_insert(read_at);
            }
            _ => {
                running_since = None;
                first = None;
                last = None;
            }
        }
        let stats = vm_stats::vm_stats(&Inputs {
            view: &parsed.view,
            disks: &parsed.disks,
            images: &parsed.images,
            first: first.as_ref(),
            last: last.as_ref(),
            running_since,
            status_time,
            managed: parsed.managed,
            now: Instant::now(),
        });
        let json = static_json(&stats);
        let stats = Arc::new(stats);
        // A launch's transient state is not announced, nor a VM first seen down (a definition
        // not started yet): a VM that boots sends one `Up`, one that stops one `Down`.
        let new_status = parsed.view.status;
        let changed = match old_status {
            Some(old) => old != new_status,
            None => new_status != VmStatus::Down,
        } && new_status != VmStatus::WaitForLaunch;
        let uuid = parsed.view.uuid;
        tracing::debug!(vm = %uuid, ?old_status, ?new_status, changed, "VM status read");
        vms.insert(
            uuid,
            Entry {
                read_at,
                view: parsed.view,
                disks: parsed.disks,
                images: parsed.images,
                managed: parsed.managed,
                first,
                last,
                running_since,
                status_time,
                stats,
                json,
            },
        );
        let entry = &vms[&uuid];
        changed.then(|| (uuid, self.finish(entry)))
    }

    /// Drops a VM libvirt no longer knows; a `Down` event if it was not already down.
    fn forget(
        &self,
        vms: &mut HashMap<Uuid, Entry>,
        vm: Uuid,
        read_at: Instant,
        status_time: u64,
    ) -> Option<(Uuid, VmStats)> {
        if vms.get(&vm)?.read_at > read_at {
            return None; // Seen by a newer read: this one is out of date.
        }
        let entry = vms.remove(&vm)?;
        if entry.view.status == VmStatus::Down {
            return None;
        }
        let mut view = entry.view;
        view.status = VmStatus::Down;
        view.exit = view
            .exit
            .or(Some(crate::virt::ExitInfo { code: 0, reason: 0 }));
        Some((
            vm,
            vm_stats::vm_stats(&Inputs {
                view: &view,
                disks: &[],
                images: &BTreeMap::new(),
                first: None,
                last: None,
                running_since: None,
                status_time,
                managed: entry.managed,
                now: Instant::now(),
            }),
        ))
    }

    fn publish(&self, changed: Vec<(Uuid, VmStats)>) {
        let Some(events) = &self.inner.events else {
            return;
        };
        for (vm, stats) in changed {
            events.publish_vm_stats(vm, &stats);
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Uuid, Entry>> {
        self.inner.vms.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Uuid, Entry>> {
        self.inner.vms.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(dir: &std::path::Path) -> Monitor {
        let hv: SharedHypervisor = std::sync::Arc::new(crate::virt::Libvirt::new(
            "qemu+unix:///system?socket=/nonexistent",
            Duration::from_secs(1),
        ));
        let jobs = crate::jobs::vm_jobs::JobRegistry::new(1);
        let secs = Duration::from_secs(1);
        let freezes = FreezeService::start(hv.clone(), jobs, dir.join("freezes"), secs, secs);
        Monitor::new(
            hv,
            Duration::from_secs(15),
            freezes,
            None,
            BlockJobTable::default(),
        )
    }

    fn view(uuid: Uuid, status: VmStatus) -> DomainView {
        DomainView {
            uuid,
            name: "vm".into(),
            status,
            exit: None,
            persistent: true,
            xml: "<domain><devices><disk type='file' device='disk'><source file='/p'/>\
                  <target dev='vda'/></disk></devices></domain>"
                .into(),
        }
    }

    /// The text made ahead, with its per-request fields, is the stats a manager would get by
    /// serializing them now.
    #[tokio::test]
    async fn stats_text_made_ahead_equals_the_stats() {
        let dir = tempfile::tempdir().unwrap();
        let monitor = monitor(dir.path());
        let (up, down) = (Uuid::from_u128(1), Uuid::from_u128(2));
        {
            let mut vms = monitor.write();
            let now = Instant::now();
            monitor.update(&mut vms, Parsed::of(view(up, VmStatus::Up)), None, now, 7);
            monitor.update(
                &mut vms,
                Parsed::of(view(down, VmStatus::Down)),
                None,
                now,
                8,
            );
        }
        for vm in [up, down] {
            let text = monitor.vm_stats_json(vm).unwrap();
            let parsed: serde_json::Value = serde_json::from_str(text.get()).unwrap();
            let expected = {
                let vms = monitor.read();
                serde_json::to_value(vec![monitor.finish(&vms[&vm])]).unwrap()
            };
            assert_eq!(parsed, expected);
        }
        let all: serde_json::Value =
            serde_json::from_str(monitor.all_stats_json().unwrap().get()).unwrap();
        assert_eq!(all.as_array().unwrap().len(), 2);
        assert_eq!(
            ApiError::from(monitor.vm_stats_json(Uuid::from_u128(3)).unwrap_err()).code(),
            crate::api::codes::NO_SUCH_VM
        );
    }
}
