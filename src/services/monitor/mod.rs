//! The monitoring cache: a background sampler reads every domain (state, live XML, libvirt's
//! bulk statistics in one call) every `vm_sample_interval` (15 s, VDSM's), and whatever just
//! changed a VM (a lifecycle event, a verb of rvdsm's, a snapshot's switch) re-reads that one
//! VM at once. The monitoring verbs (`VM.getStats`, `Host.getAllVmStats`, `Host.getVMList`,
//! `Host.getVMFullList`, `Host.dumpxmls`) answer from the cache and never call libvirt.
//!
//! Each VM's stats are computed when its sample arrives, not per request. A sample older than
//! three intervals (libvirt not answering) is served as it is, with `monitorResponse: "-1"`
//! and its age in `statsAge`, as VDSM marks an unresponsive VM. `|virt|VM_status|` events are
//! published here, once per change of status, with the VM's stats.

mod vm_stats;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::api::ApiError;
use crate::api::lifecycle_types::{VmShortStatus, VmStats};
use crate::api::types::VmStatus;
use crate::events::EventBus;
use crate::services::FreezeService;
use crate::virt::{DomainView, Hypervisor, vm_xml, xml};
use vm_stats::{Inputs, Sample};

/// How many intervals a sample may age before it is reported stale.
const STALE_INTERVALS: u32 = 3;

/// The cache and its sampler; cheap to clone.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<Inner>,
}

struct Inner {
    hypervisor: Hypervisor,
    interval: Duration,
    freezes: FreezeService,
    events: Option<EventBus>,
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
        hypervisor: Hypervisor,
        interval: Duration,
        freezes: FreezeService,
        events: Option<EventBus>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                hypervisor,
                interval,
                freezes,
                events,
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

    /// The VM's stats (`VM.getStats`); 1 when the cache does not know it.
    pub fn vm_stats(&self, vm: Uuid) -> Result<VmStats, ApiError> {
        let vms = self.read();
        let entry = vms.get(&vm).ok_or(ApiError::NoSuchVm {
            vm_id: vm.to_string(),
        })?;
        Ok(self.finish(entry))
    }

    /// Every VM's stats (`Host.getAllVmStats`).
    pub fn all_stats(&self) -> Vec<VmStats> {
        let vms = self.read();
        vms.values().map(|e| self.finish(e)).collect()
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
    pub fn xmls(&self, only: &[Uuid]) -> Result<BTreeMap<Uuid, String>, ApiError> {
        let vms = self.read();
        if let Some(missing) = only.iter().find(|u| !vms.contains_key(u)) {
            return Err(ApiError::NoSuchVm {
                vm_id: missing.to_string(),
            });
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

    /// The precomputed stats with what changes between samples: the freeze and staleness.
    fn finish(&self, entry: &Entry) -> VmStats {
        let mut stats = VmStats::clone(&entry.stats);
        if stats.status == VmStatus::Down {
            return stats;
        }
        stats.frozen = self
            .inner
            .freezes
            .owned_until(entry.view.uuid)
            .map(|(by, until)| crate::api::types::FrozenBy { by, until });
        if let Some(last) = &entry.last {
            let age = last.at.elapsed();
            stats.stats_age = Some(age.as_secs_f64());
            if age > self.inner.interval * STALE_INTERVALS {
                stats.monitor_response = Some("-1".into());
            }
        }
        stats
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
        let stats = Arc::new(vm_stats::vm_stats(&Inputs {
            view: &parsed.view,
            disks: &parsed.disks,
            images: &parsed.images,
            first: first.as_ref(),
            last: last.as_ref(),
            running_since,
            status_time,
            managed: parsed.managed,
            now: Instant::now(),
        }));
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
