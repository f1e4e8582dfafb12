//! The block jobs (live merges) running on each VM, as the VM's stats show them in `vmJobs`:
//! written by the merge jobs as libvirt reports their progress, read by the monitoring cache
//! on each stats request. A std mutex, held only to copy or update an entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::api::merge_types::VmBlockJob;

/// Every VM's running block jobs; cheap to clone.
#[derive(Clone, Default)]
pub struct BlockJobTable {
    jobs: Arc<Mutex<HashMap<Uuid, BTreeMap<Uuid, VmBlockJob>>>>,
}

impl BlockJobTable {
    /// Shows `job` on `vm` (replacing what was shown of it).
    pub fn set(&self, vm: Uuid, job: VmBlockJob) {
        self.lock().entry(vm).or_default().insert(job.id, job);
    }

    /// Updates the progress of `job` on `vm`, if shown.
    pub fn progress(&self, vm: Uuid, job: Uuid, cur: u64, end: u64, bandwidth_mib: u64) {
        if let Some(shown) = self.lock().get_mut(&vm).and_then(|jobs| jobs.get_mut(&job)) {
            shown.cur = cur.to_string();
            shown.end = end.to_string();
            shown.bandwidth = bandwidth_mib;
        }
    }

    /// Stops showing `job` on `vm`.
    pub fn remove(&self, vm: Uuid, job: Uuid) {
        let mut jobs = self.lock();
        if let Some(on_vm) = jobs.get_mut(&vm) {
            on_vm.remove(&job);
            if on_vm.is_empty() {
                jobs.remove(&vm);
            }
        }
    }

    /// The jobs of `vm`, as `vmJobs` shows them (`{}` when none).
    pub fn json_of(&self, vm: Uuid) -> String {
        match self.lock().get(&vm) {
            Some(jobs) => serde_json::to_string(jobs).unwrap_or_else(|_| "{}".to_owned()),
            None => "{}".to_owned(),
        }
    }

    /// The jobs of `vm`.
    pub fn of(&self, vm: Uuid) -> BTreeMap<Uuid, VmBlockJob> {
        self.lock().get(&vm).cloned().unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, BTreeMap<Uuid, VmBlockJob>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_shown_per_vm_until_removed() {
        let table = BlockJobTable::default();
        let (vm, job) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(table.json_of(vm), "{}");
        table.set(
            vm,
            VmBlockJob {
                id: job,
                job_type: "block",
                block_job_type: "commit",
                drive: "vda".into(),
                image: Uuid::from_u128(3),
                bandwidth: 0,
                cur: "0".into(),
                end: "0".into(),
            },
        );
        table.progress(vm, job, 5, 10, 2);
        let shown: serde_json::Value = serde_json::from_str(&table.json_of(vm)).unwrap();
        let entry = &shown[job.to_string()];
        assert_eq!(entry["cur"], "5");
        assert_eq!(entry["end"], "10");
        assert_eq!(entry["jobType"], "block");
        assert_eq!(entry["blockJobType"], "commit");
        assert_eq!(entry["imgUUID"], Uuid::from_u128(3).to_string());
        table.remove(vm, job);
        assert_eq!(table.json_of(vm), "{}");
        assert!(table.of(vm).is_empty());
    }
}
