//! Long operations as tracked units of work: [`tasks`] holds VDSM's storage tasks (`Task.*`,
//! `Host.getAllTasksStatuses`), persisted across restarts; [`vm_jobs`] holds the virt jobs of
//! `Host.getJobs` (snapshots), the per-VM exclusion and the host-wide limit.

pub mod tasks;
pub mod vm_jobs;
