//! Long operations as tracked units of work: [`kind`] names each kind of job (its VDSM job type
//! and description together); [`journal`] is the one journal of intent every job keeps, read at
//! start to end interrupted jobs truthfully, with one encoding of a job's end and one pruning
//! rule; [`results`] what each kind of job did; [`tasks`] holds VDSM's storage tasks
//! (`Task.*`, `Host.getAllTasksStatuses`), persisted across restarts; [`vm_jobs`] the jobs of
//! `Host.getJobs`, the per-VM exclusion and the host-wide limit; [`block_jobs`] the live merges
//! each VM's stats show in `vmJobs`.

pub mod block_jobs;
pub mod journal;
pub mod kind;
pub mod results;
pub mod tasks;
pub mod vm_jobs;
