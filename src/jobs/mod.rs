//! Long operations as tracked, persisted units of work. [`tasks`] holds VDSM's storage tasks
//! (`Task.*`, `Host.getAllTasksStatuses`); the snapshot jobs of `Host.getJobs` join it with the
//! snapshot issue.

pub mod tasks;
