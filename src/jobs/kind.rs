//! The kinds of job `Host.getJobs` shows: each carries its VDSM job type and its description
//! together, so that neither is ever spelled as a string anywhere else. A new long operation
//! (a memory snapshot, a backup, an image transfer) adds a kind here, and keeps its intent in
//! the one [`super::journal::Journal`].

/// VDSM's `job_type` of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobType {
    /// A job on a VM (`virt`).
    Virt,
    /// A job on a storage domain's volumes (`storage`).
    Storage,
}

impl JobType {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Virt => "virt",
            Self::Storage => "storage",
        }
    }
}

/// What a job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// `VM.snapshot`: a live snapshot of a VM's disks.
    Snapshot,
    /// `VM.merge`: a live merge (a block commit) of a VM's disk.
    LiveMerge,
    /// `SDM.merge`: the data step of a cold merge.
    ColdMerge,
    /// `SDM.copy_data`: a full clone of a volume's chain.
    CopyData,
}

impl JobKind {
    /// VDSM's `job_type`.
    pub const fn job_type(self) -> JobType {
        match self {
            Self::Snapshot | Self::LiveMerge => JobType::Virt,
            Self::ColdMerge | Self::CopyData => JobType::Storage,
        }
    }

    /// VDSM's `description` (the name VDSM gives the job).
    pub const fn description(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot_vm",
            Self::LiveMerge => "merge_vm",
            Self::ColdMerge => "merge_subchain",
            Self::CopyData => "copy_data",
        }
    }

    /// How a VM's stats show the job in `vmJobs` (`jobType`, `blockJobType`), for a job that
    /// runs as a libvirt block job; `None` for the others.
    pub const fn vm_block_job(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::LiveMerge => Some(("block", "commit")),
            Self::Snapshot | Self::ColdMerge | Self::CopyData => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names managers match on: VDSM's, unchanged.
    #[test]
    fn kinds_keep_vdsm_names() {
        let names: Vec<(&str, &str)> = [
            JobKind::Snapshot,
            JobKind::LiveMerge,
            JobKind::ColdMerge,
            JobKind::CopyData,
        ]
        .into_iter()
        .map(|k| (k.job_type().as_str(), k.description()))
        .collect();
        assert_eq!(JobKind::LiveMerge.vm_block_job(), Some(("block", "commit")));
        assert_eq!(
            names,
            [
                ("virt", "snapshot_vm"),
                ("virt", "merge_vm"),
                ("storage", "merge_subchain"),
                ("storage", "copy_data"),
            ]
        );
    }
}
