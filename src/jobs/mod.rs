//! Long operations as tracked units of work: [`tasks`] holds VDSM's storage tasks (`Task.*`,
//! `Host.getAllTasksStatuses`), persisted across restarts; [`vm_jobs`] holds the virt jobs of
//! `Host.getJobs` (snapshots), the per-VM exclusion and the host-wide limit; [`journal`] is the
//! snapshot jobs' journal of intent, read at start to end interrupted jobs truthfully;
//! [`block_jobs`] the live merges each VM's stats show in `vmJobs`; [`records`] the directory of JSON records the other journals of intent are kept in.

pub mod block_jobs;
pub mod journal;
pub mod records;
pub mod tasks;
pub mod vm_jobs;
