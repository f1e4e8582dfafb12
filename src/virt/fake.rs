//! A scripted hypervisor for the services' unit tests (the model is youki's `Syscall` trait and
//! its test implementation): VMs a test defines, answers it queues, failures it injects, and a
//! record of every call made, so that a test asserts exactly what a service would have asked
//! of libvirt. Only in test builds; real-guest tests in `tests/` use the real [`Libvirt`].
//!
//! Rules: a VM the test did not add answers [`VirtError::NoSuchDomain`]; an operation with a
//! queued failure ([`FakeHypervisor::fail_next`]) fails once with it, before any effect;
//! block-job answers are a queue whose last entry repeats; `define` adds (or redefines) the
//! VM its XML names, stopped, with that XML as its definition; a pivot answered `Done` moves
//! the disk onto the first volume of its backing chain, as QEMU's does; `freeze_state`
//! answers from [`FakeVm::freeze_states`] while it has answers, then from `frozen`; an
//! operation told to hang ([`FakeHypervisor::hang_next`]; `pivot`, `freeze`, `thaw` and
//! `block_commit`) is recorded and never returns, as a call stuck in libvirt.
//!
//! [`Libvirt`]: super::Libvirt

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::hypervisor::Hypervisor;
use super::memory::{MemoryDump, PauseReport};
use super::xml::vm::NewLeaf;
use super::{
    BlockJob, Conflict, DefinedSwitch, DiskSwitch, DomainInfo, DomainStats, DomainView,
    FreezeState, HostInfo, Pivot, RunState, Stopped, VirtError,
};
use crate::api::types::{ChainLink, DiskStats, VmStatus};

/// A libvirt failure with `code`, as the real connection reports one.
pub fn libvirt_error(op: &'static str, code: i32) -> VirtError {
    VirtError::Libvirt {
        op,
        code,
        message: format!("libvirt error {code}"),
    }
}

/// One VM the fake knows.
#[derive(Debug, Clone)]
pub struct FakeVm {
    /// Name, status, definition.
    pub view: DomainView,
    /// Its disks as the live XML has them.
    pub disks: Vec<DiskStats>,
    /// Whether the guest's filesystems are frozen.
    pub frozen: bool,
    /// Answers to `block_job` by target; the last one repeats.
    pub block_jobs: HashMap<String, VecDeque<Option<BlockJob>>>,
    /// Answers to `pivot`; `Done` when empty.
    pub pivots: VecDeque<Pivot>,
    /// What `conflict` answers.
    pub conflict: Option<Conflict>,
    /// Scripted answers to `freeze_state`, first first; `frozen` answers once they are out.
    pub freeze_states: VecDeque<Result<FreezeState, VirtError>>,
}

impl FakeVm {
    /// A running VM with no disks.
    pub fn running(uuid: Uuid) -> Self {
        Self {
            view: DomainView {
                uuid,
                name: format!("vm-{}", &uuid.simple().to_string()[..8]),
                status: VmStatus::Up,
                exit: None,
                persistent: true,
                xml: String::new(),
            },
            disks: Vec::new(),
            frozen: false,
            block_jobs: HashMap::new(),
            pivots: VecDeque::new(),
            conflict: None,
            freeze_states: VecDeque::new(),
        }
    }

    /// The same VM with `status`.
    pub fn with_status(mut self, status: VmStatus) -> Self {
        self.view.status = status;
        self
    }

    /// The same VM with a file disk `target` whose chain is `chain`, leaf first (the leaf is
    /// the disk's source, the others its backing chain).
    pub fn with_chain(mut self, target: &str, chain: &[String]) -> Self {
        let (leaf, backing) = chain.split_first().expect("a chain has a leaf");
        self = self.with_disk(target, leaf);
        let disk = self.disks.last_mut().expect("just added");
        disk.backing_chain = backing
            .iter()
            .map(|path| ChainLink {
                path: path.clone(),
                format: Some("qcow2".into()),
            })
            .collect();
        self
    }

    /// The same VM with a file disk `target` on `path`.
    pub fn with_disk(mut self, target: &str, path: &str) -> Self {
        self.disks.push(DiskStats {
            target: target.to_owned(),
            device: "disk".into(),
            disk_type: "file".into(),
            path: Some(path.to_owned()),
            format: Some("qcow2".into()),
            readonly: false,
            shareable: false,
            backing_chain: Vec::new(),
        });
        self
    }
}

#[derive(Default)]
struct State {
    vms: HashMap<Uuid, FakeVm>,
    failures: HashMap<&'static str, VecDeque<VirtError>>,
    /// How many of the next calls of each operation hang.
    hangs: HashMap<&'static str, usize>,
    calls: Vec<String>,
}

/// The scripted hypervisor. Cheap to clone; clones share their state.
#[derive(Clone, Default)]
pub struct FakeHypervisor {
    state: Arc<Mutex<State>>,
}

impl FakeHypervisor {
    /// A hypervisor that knows no VM.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a VM.
    pub fn add(&self, vm: FakeVm) -> &Self {
        self.lock().vms.insert(vm.view.uuid, vm);
        self
    }

    /// Changes a known VM.
    pub fn edit(&self, vm: Uuid, change: impl FnOnce(&mut FakeVm)) {
        change(
            self.lock()
                .vms
                .get_mut(&vm)
                .expect("the test added this VM"),
        );
    }

    /// A copy of a known VM as it is now.
    pub fn vm(&self, vm: Uuid) -> Option<FakeVm> {
        self.lock().vms.get(&vm).cloned()
    }

    /// The next call of `op` (the trait method's name) fails with `error`, changing nothing.
    pub fn fail_next(&self, op: &'static str, error: VirtError) -> &Self {
        self.lock().failures.entry(op).or_default().push_back(error);
        self
    }

    /// The next call of `op` (one of those the module's rules name) is recorded and never
    /// returns.
    pub fn hang_next(&self, op: &'static str) -> &Self {
        *self.lock().hangs.entry(op).or_default() += 1;
        self
    }

    /// Every call so far, as `op` or `op target`, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// How many calls of `op` were made.
    pub fn count(&self, op: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.split(' ').next() == Some(op))
            .count()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// If the call's operation was told to hang: records the call and never returns.
    async fn hang_if_told(&self, call: &str) {
        let op = call.split(' ').next().unwrap_or_default();
        let hang = {
            let mut state = self.lock();
            match state.hangs.get_mut(op) {
                Some(left) if *left > 0 => {
                    *left -= 1;
                    state.calls.push(call.to_owned());
                    true
                }
                _ => false,
            }
        };
        if hang {
            std::future::pending::<()>().await;
        }
    }

    /// Records the call, then answers the injected failure, if any.
    fn enter(&self, call: String) -> Result<MutexGuard<'_, State>, VirtError> {
        let mut state = self.lock();
        let op = call.split(' ').next().unwrap_or_default().to_owned();
        state.calls.push(call);
        let failure = state
            .failures
            .get_mut(op.as_str())
            .and_then(VecDeque::pop_front);
        match failure {
            Some(error) => Err(error),
            None => Ok(state),
        }
    }

    /// Runs `f` on the VM after recording the call.
    fn on_vm<T>(
        &self,
        call: String,
        vm: Uuid,
        f: impl FnOnce(&mut FakeVm) -> T,
    ) -> Result<T, VirtError> {
        let mut state = self.enter(call)?;
        match state.vms.get_mut(&vm) {
            Some(found) => Ok(f(found)),
            None => Err(VirtError::NoSuchDomain {
                uuid: vm.to_string(),
            }),
        }
    }
}

/// The text of the first `<tag>` element of `xml` (enough for a domain's `<uuid>` and `<name>`).
fn element_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + end].trim())
}

/// What the fake's memory calls report.
const FAKE_PAUSE: PauseReport = PauseReport {
    pause_ms: Some(1.0),
    downtime_ms: Some(1.0),
};

fn info(vm: &FakeVm) -> DomainInfo {
    DomainInfo {
        uuid: vm.view.uuid,
        name: vm.view.name.clone(),
        status: vm.view.status,
    }
}

#[async_trait]
impl Hypervisor for FakeHypervisor {
    fn uri(&self) -> &str {
        "fake:///"
    }
    async fn list_domains(&self) -> Result<Vec<DomainInfo>, VirtError> {
        let state = self.enter("list_domains".into())?;
        Ok(state.vms.values().map(info).collect())
    }
    async fn domain_disks(&self, vm: Uuid) -> Result<(DomainInfo, Vec<DiskStats>), VirtError> {
        self.on_vm("domain_disks".into(), vm, |v| (info(v), v.disks.clone()))
    }
    async fn disk_paths_in_use(&self) -> Result<Vec<String>, VirtError> {
        let state = self.enter("disk_paths_in_use".into())?;
        let disks = state.vms.values().flat_map(|v| v.disks.iter());
        Ok(disks.filter_map(|d| d.path.clone()).collect())
    }
    async fn host_info(&self) -> Result<HostInfo, VirtError> {
        drop(self.enter("host_info".into())?);
        Ok(HostInfo {
            uuid: Uuid::nil().to_string(),
            libvirt_version: "0.0.0".into(),
            qemu_version: "0.0.0".into(),
        })
    }
    async fn sample_all(&self) -> Result<Vec<(DomainView, DomainStats)>, VirtError> {
        let state = self.enter("sample_all".into())?;
        let views = state
            .vms
            .values()
            .map(|v| (v.view.clone(), DomainStats::new()));
        Ok(views.collect())
    }
    async fn read_view(&self, vm: Uuid) -> Result<Option<DomainView>, VirtError> {
        let state = self.enter(format!("read_view {vm}"))?;
        Ok(state.vms.get(&vm).map(|v| v.view.clone()))
    }
    async fn settled(&self, vm: Uuid) {
        self.lock().calls.push(format!("settled {vm}"));
    }
    async fn define(&self, xml: String) -> Result<(), VirtError> {
        let mut state = self.enter("define".into())?;
        let uuid = element_text(&xml, "uuid")
            .and_then(|u| Uuid::parse_str(u).ok())
            .ok_or_else(|| VirtError::Refused {
                element: "the definition".into(),
                reason: "the fake found no <uuid> in it".into(),
            })?;
        let vm = state
            .vms
            .entry(uuid)
            .or_insert_with(|| FakeVm::running(uuid).with_status(VmStatus::Down));
        if let Some(name) = element_text(&xml, "name") {
            vm.view.name = name.to_owned();
        }
        vm.view.xml = xml;
        Ok(())
    }
    async fn start(&self, vm: Uuid) -> Result<(), VirtError> {
        self.on_vm("start".into(), vm, |v| v.view.status = VmStatus::Up)
    }
    async fn undefine(&self, vm: Uuid) -> Result<(), VirtError> {
        let mut state = self.enter("undefine".into())?;
        state.vms.remove(&vm);
        Ok(())
    }
    async fn pause(&self, vm: Uuid) -> Result<(), VirtError> {
        self.on_vm("pause".into(), vm, |v| v.view.status = VmStatus::Paused)
    }
    async fn resume(&self, vm: Uuid) -> Result<(), VirtError> {
        self.on_vm("resume".into(), vm, |v| v.view.status = VmStatus::Up)
    }
    async fn request_shutdown(&self, vm: Uuid, reboot: bool) -> Result<(), VirtError> {
        let call = if reboot { "reboot" } else { "request_shutdown" };
        self.on_vm(call.into(), vm, |_| ())
    }
    async fn destroy(&self, vm: Uuid, graceful_attempts: u32) -> Result<Stopped, VirtError> {
        let _ = graceful_attempts;
        let mut state = self.enter("destroy".into())?;
        Ok(match state.vms.get_mut(&vm) {
            Some(v) if v.view.status != VmStatus::Down => {
                v.view.status = VmStatus::Down;
                Stopped::Gracefully
            }
            _ => Stopped::AlreadyDown,
        })
    }
    async fn record_new_leaves(&self, vm: Uuid, leaves: Vec<NewLeaf>) -> Result<(), VirtError> {
        let _ = leaves;
        self.on_vm("record_new_leaves".into(), vm, |_| ())
    }
    async fn record_merge(
        &self,
        vm: Uuid,
        target: String,
        merged: Uuid,
        base: Uuid,
    ) -> Result<(), VirtError> {
        let _ = (merged, base);
        self.on_vm(format!("record_merge {target}"), vm, |_| ())
    }
    async fn conflict(
        &self,
        vm: Uuid,
        targets: Vec<String>,
    ) -> Result<Option<Conflict>, VirtError> {
        let _ = targets;
        self.on_vm("conflict".into(), vm, |v| v.conflict.clone())
    }
    async fn snapshot_running(&self, vm: Uuid) -> Result<bool, VirtError> {
        self.on_vm("snapshot_running".into(), vm, |_| false)
    }
    async fn run_state(&self, vm: Uuid) -> Result<RunState, VirtError> {
        self.on_vm("run_state".into(), vm, |v| match v.view.status {
            VmStatus::Paused => RunState::Paused,
            VmStatus::Down => RunState::Stopped,
            _ => RunState::Running,
        })
    }
    async fn set_agent_timeout(&self, vm: Uuid, timeout: Duration) -> Result<(), VirtError> {
        let _ = timeout;
        self.on_vm("set_agent_timeout".into(), vm, |_| ())
    }
    async fn freeze_state(&self, vm: Uuid, timeout: Duration) -> Result<FreezeState, VirtError> {
        let _ = timeout;
        self.on_vm("freeze_state".into(), vm, |v| {
            v.freeze_states.pop_front().unwrap_or(if v.frozen {
                Ok(FreezeState::Frozen)
            } else {
                Ok(FreezeState::Thawed)
            })
        })?
    }
    async fn freeze(&self, vm: Uuid, mountpoints: Vec<String>) -> Result<u32, VirtError> {
        let _ = mountpoints;
        self.hang_if_told("freeze").await;
        self.on_vm("freeze".into(), vm, |v| {
            v.frozen = true;
            1
        })
    }
    async fn thaw(&self, vm: Uuid, mountpoints: Vec<String>) -> Result<u32, VirtError> {
        let _ = mountpoints;
        self.hang_if_told("thaw").await;
        self.on_vm("thaw".into(), vm, |v| {
            u32::from(std::mem::take(&mut v.frozen))
        })
    }
    async fn external_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
    ) -> Result<(), VirtError> {
        let _ = all_targets;
        self.on_vm("external_snapshot".into(), vm, |v| {
            for switch in switches {
                if let Some(disk) = v.disks.iter_mut().find(|d| d.target == switch.target) {
                    disk.path = Some(switch.new_path);
                }
            }
        })
    }
    async fn switch_defined_disks(
        &self,
        vm: Uuid,
        switches: Vec<DefinedSwitch>,
    ) -> Result<(), VirtError> {
        let _ = switches;
        self.on_vm("switch_defined_disks".into(), vm, |_| ())
    }
    async fn migratable_xml(&self, vm: Uuid) -> Result<String, VirtError> {
        self.on_vm("migratable_xml".into(), vm, |v| v.view.xml.clone())
    }
    async fn memory_snapshot(
        &self,
        vm: Uuid,
        switches: Vec<DiskSwitch>,
        all_targets: Vec<String>,
        dump: MemoryDump,
    ) -> Result<PauseReport, VirtError> {
        let _ = (all_targets, dump);
        let call = "memory_snapshot".to_owned();
        self.hang_if_told(&call).await;
        self.on_vm(call, vm, |v| {
            for switch in switches {
                if let Some(disk) = v.disks.iter_mut().find(|d| d.target == switch.target) {
                    disk.path = Some(switch.new_path);
                }
            }
            FAKE_PAUSE
        })
    }
    async fn save_memory(&self, vm: Uuid, dump: MemoryDump) -> Result<PauseReport, VirtError> {
        let _ = dump;
        self.on_vm("save_memory".into(), vm, |v| {
            v.view.status = VmStatus::Down;
            FAKE_PAUSE
        })
    }
    async fn restore_paused(
        &self,
        vm: Uuid,
        file: String,
        xml: String,
        timeout: Duration,
    ) -> Result<(), VirtError> {
        let _ = (file, xml, timeout);
        self.on_vm("restore_paused".into(), vm, |v| {
            v.view.status = VmStatus::Paused;
        })
    }
    async fn set_guest_time(&self, vm: Uuid) -> Result<(), VirtError> {
        self.on_vm("set_guest_time".into(), vm, |_| ())
    }
    async fn abort_job(&self, vm: Uuid) -> Result<(), VirtError> {
        self.on_vm("abort_job".into(), vm, |_| ())
    }
    async fn block_commit(
        &self,
        vm: Uuid,
        target: String,
        base: String,
        top: String,
        bandwidth_mib: u64,
        active: bool,
    ) -> Result<(), VirtError> {
        let _ = (base, top, bandwidth_mib, active);
        let call = format!("block_commit {target}");
        self.hang_if_told(&call).await;
        self.on_vm(call, vm, |_| ())
    }
    async fn block_job(&self, vm: Uuid, target: String) -> Result<Option<BlockJob>, VirtError> {
        self.on_vm(format!("block_job {target}"), vm, |v| {
            let answers = v.block_jobs.entry(target).or_default();
            if answers.len() > 1 {
                answers.pop_front().flatten()
            } else {
                answers.front().cloned().flatten()
            }
        })
    }
    async fn pivot(&self, vm: Uuid, target: String) -> Result<Pivot, VirtError> {
        let call = format!("pivot {target}");
        self.hang_if_told(&call).await;
        self.on_vm(call, vm, |v| {
            let answer = v.pivots.pop_front().unwrap_or(Pivot::Done);
            if answer == Pivot::Done
                && let Some(disk) = v.disks.iter_mut().find(|d| d.target == target)
                && !disk.backing_chain.is_empty()
            {
                disk.path = Some(disk.backing_chain.remove(0).path);
            }
            answer
        })
    }
    async fn abort_block_job(&self, vm: Uuid, target: String) -> Result<(), VirtError> {
        self.on_vm(format!("abort_block_job {target}"), vm, |v| {
            v.block_jobs.remove(&target);
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_vm_answers_records_and_fails_once_when_told() {
        let hv = FakeHypervisor::new();
        let vm = Uuid::from_u128(7);
        hv.add(FakeVm::running(vm).with_disk("vda", "/d/a"));
        hv.fail_next("freeze", libvirt_error("freeze", 86));
        assert!(hv.freeze(vm, vec![]).await.is_err());
        assert_eq!(hv.freeze(vm, vec![]).await.unwrap(), 1);
        assert_eq!(
            hv.freeze_state(vm, Duration::ZERO).await.unwrap(),
            FreezeState::Frozen
        );
        assert_eq!(hv.thaw(vm, vec![]).await.unwrap(), 1);
        assert_eq!(hv.count("freeze"), 2);
        let other = Uuid::from_u128(8);
        assert!(matches!(
            hv.run_state(other).await,
            Err(VirtError::NoSuchDomain { .. })
        ));
        assert_eq!(
            hv.disk(vm, "vda".into())
                .await
                .unwrap()
                .unwrap()
                .path
                .as_deref(),
            Some("/d/a")
        );
    }

    #[tokio::test]
    async fn define_pivot_freeze_states_and_hangs_follow_the_rules() {
        use futures_util::FutureExt;
        let hv = FakeHypervisor::new();
        let vm = Uuid::from_u128(7);
        hv.define(format!("<domain><name>n</name><uuid>{vm}</uuid></domain>"))
            .await
            .unwrap();
        let defined = hv.vm(vm).expect("define adds the VM");
        assert_eq!(
            (defined.view.status, defined.view.name.as_str()),
            (VmStatus::Down, "n")
        );
        assert!(hv.define("<domain/>".into()).await.is_err(), "no <uuid>");

        hv.add(FakeVm::running(vm).with_chain("vda", &["/i/top".into(), "/i/base".into()]));
        hv.edit(vm, |v| v.pivots = VecDeque::from([Pivot::NotReady]));
        assert_eq!(hv.pivot(vm, "vda".into()).await.unwrap(), Pivot::NotReady);
        let disk = hv.vm(vm).unwrap().disks[0].clone();
        assert_eq!(
            disk.path.as_deref(),
            Some("/i/top"),
            "not moved by a pivot not done"
        );
        assert_eq!(hv.pivot(vm, "vda".into()).await.unwrap(), Pivot::Done);
        let disk = hv.vm(vm).unwrap().disks[0].clone();
        assert_eq!(disk.path.as_deref(), Some("/i/base"));
        assert!(disk.backing_chain.is_empty());

        hv.edit(vm, |v| {
            v.freeze_states = VecDeque::from([Err(libvirt_error("s", 86))]);
        });
        assert!(hv.freeze_state(vm, Duration::ZERO).await.is_err());
        assert_eq!(
            hv.freeze_state(vm, Duration::ZERO).await.unwrap(),
            FreezeState::Thawed
        );

        hv.hang_next("thaw");
        assert!(hv.thaw(vm, vec![]).now_or_never().is_none(), "hangs");
        assert_eq!(hv.count("thaw"), 1, "recorded");
        assert!(hv.thaw(vm, vec![]).now_or_never().is_some(), "only once");
    }

    #[tokio::test]
    async fn block_job_answers_are_a_queue_whose_last_entry_repeats() {
        let hv = FakeHypervisor::new();
        let vm = Uuid::from_u128(7);
        let job = |cur| BlockJob {
            cur,
            end: 10,
            bandwidth: 0,
            ready: cur == 10,
        };
        hv.add(FakeVm::running(vm));
        hv.edit(vm, |v| {
            v.block_jobs
                .insert("vda".into(), VecDeque::from([Some(job(5)), Some(job(10))]));
        });
        assert_eq!(hv.block_job(vm, "vda".into()).await.unwrap(), Some(job(5)));
        assert_eq!(hv.block_job(vm, "vda".into()).await.unwrap(), Some(job(10)));
        assert_eq!(hv.block_job(vm, "vda".into()).await.unwrap(), Some(job(10)));
    }
}
