//! The verb table: every verb rvdsm serves, with its parameters in VDSM's schema order (the
//! order positional parameters are mapped in). The server registers exactly these verbs; the
//! CLI's `--list` and `Namespace method --help` print them.

/// The JSON type a parameter takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    /// An RFC 4122 UUID string.
    Uuid,
    /// A list of UUID strings.
    UuidList,
    /// `true` or `false`.
    Bool,
    /// A non-negative integer.
    UInt,
    /// A string.
    String,
    /// A JSON list.
    List,
}

impl ParamType {
    /// The type's name in help texts.
    pub fn name(self) -> &'static str {
        match self {
            Self::Uuid => "UUID",
            Self::UuidList => "[UUID]",
            Self::Bool => "boolean",
            Self::UInt => "uint",
            Self::String => "string",
            Self::List => "list",
        }
    }

    /// A placeholder value for the JSON template in help texts.
    pub fn template(self) -> &'static str {
        match self {
            Self::Uuid => "\"00000000-0000-0000-0000-000000000000\"",
            Self::UuidList => "[]",
            Self::Bool => "false",
            Self::UInt => "0",
            Self::String => "\"\"",
            Self::List => "[]",
        }
    }
}

/// One parameter of a verb.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// The wire name (VDSM's spelling).
    pub name: &'static str,
    /// Its JSON type.
    pub ty: ParamType,
    /// Whether a call without it is refused.
    pub required: bool,
    /// What it means.
    pub description: &'static str,
}

/// One verb: `Namespace.method`.
#[derive(Debug, Clone, Copy)]
pub struct Verb {
    /// The full method name, e.g. `Host.getVMList`.
    pub name: &'static str,
    /// What it does and returns.
    pub description: &'static str,
    /// Its parameters, in VDSM's schema order.
    pub params: &'static [Param],
}

impl Verb {
    /// The namespace part (`Host`).
    pub fn namespace(&self) -> &'static str {
        self.name.split_once('.').map_or(self.name, |(ns, _)| ns)
    }

    /// The method part (`getVMList`).
    pub fn method(&self) -> &'static str {
        self.name.split_once('.').map_or("", |(_, m)| m)
    }

    /// Whether the verb only reads (`get*`, `ping2`): managers poll these.
    pub fn is_read_only(&self) -> bool {
        self.method().starts_with("get") || self.name == names::HOST_PING2
    }
}

/// The method names, so that code never spells a verb twice.
pub mod names {
    /// `Host.ping2`.
    pub const HOST_PING2: &str = "Host.ping2";
    /// `Host.getCapabilities`.
    pub const HOST_GET_CAPABILITIES: &str = "Host.getCapabilities";
    /// `Host.getVMList`.
    pub const HOST_GET_VM_LIST: &str = "Host.getVMList";
    /// `VM.getStats`.
    pub const VM_GET_STATS: &str = "VM.getStats";
    /// `VM.snapshot`.
    pub const VM_SNAPSHOT: &str = "VM.snapshot";
    /// `VM.freeze`.
    pub const VM_FREEZE: &str = "VM.freeze";
    /// `VM.thaw`.
    pub const VM_THAW: &str = "VM.thaw";
    /// `Host.getJobs`.
    pub const HOST_GET_JOBS: &str = "Host.getJobs";
    /// `StorageDomain.create`.
    pub const SD_CREATE: &str = "StorageDomain.create";
    /// `StorageDomain.getInfo`.
    pub const SD_GET_INFO: &str = "StorageDomain.getInfo";
    /// `StorageDomain.getStats`.
    pub const SD_GET_STATS: &str = "StorageDomain.getStats";
    /// `StorageDomain.getVolumes`.
    pub const SD_GET_VOLUMES: &str = "StorageDomain.getVolumes";
    /// `Host.getStorageDomains`.
    pub const HOST_GET_STORAGE_DOMAINS: &str = "Host.getStorageDomains";
    /// `Image.getVolumes`.
    pub const IMAGE_GET_VOLUMES: &str = "Image.getVolumes";
    /// `Volume.create`.
    pub const VOLUME_CREATE: &str = "Volume.create";
    /// `Volume.getInfo`.
    pub const VOLUME_GET_INFO: &str = "Volume.getInfo";
    /// `Volume.getSize`.
    pub const VOLUME_GET_SIZE: &str = "Volume.getSize";
    /// `Volume.delete`.
    pub const VOLUME_DELETE: &str = "Volume.delete";
    /// `Image.delete`.
    pub const IMAGE_DELETE: &str = "Image.delete";
    /// `Image.prepare`.
    pub const IMAGE_PREPARE: &str = "Image.prepare";
    /// `Image.teardown`.
    pub const IMAGE_TEARDOWN: &str = "Image.teardown";
    /// `Task.getStatus`.
    pub const TASK_GET_STATUS: &str = "Task.getStatus";
    /// `Task.getInfo`.
    pub const TASK_GET_INFO: &str = "Task.getInfo";
    /// `Task.clear`.
    pub const TASK_CLEAR: &str = "Task.clear";
    /// `Task.stop`.
    pub const TASK_STOP: &str = "Task.stop";
    /// `Host.getAllTasksStatuses`.
    pub const HOST_GET_ALL_TASKS_STATUSES: &str = "Host.getAllTasksStatuses";
}

const fn required(name: &'static str, ty: ParamType, description: &'static str) -> Param {
    Param {
        name,
        ty,
        required: true,
        description,
    }
}

const fn optional(name: &'static str, ty: ParamType, description: &'static str) -> Param {
    Param {
        name,
        ty,
        required: false,
        description,
    }
}

const VOLUME_ID: Param = required("volumeID", ParamType::Uuid, "The volume.");
const POOL_ID: Param = required(
    "storagepoolID",
    ParamType::Uuid,
    "The host's storage pool (Host.getCapabilities shows it).",
);
const DOMAIN_ID: Param = required("storagedomainID", ParamType::Uuid, "The storage domain.");
const IMAGE_ID: Param = required(
    "imageID",
    ParamType::Uuid,
    "The image (a disk and its chain).",
);
const TASK_ID: Param = required("taskID", ParamType::Uuid, "The task.");

const VM_ID: Param = Param {
    name: "vmID",
    ty: ParamType::Uuid,
    required: true,
    description: "The VM's UUID (the libvirt domain UUID).",
};

/// Every verb rvdsm serves.
pub static VERBS: &[Verb] = &[
    Verb {
        name: names::HOST_PING2,
        description: "Checks that the daemon answers. Returns true.",
        params: &[],
    },
    Verb {
        name: names::HOST_GET_CAPABILITIES,
        description: "Describes the host: rvdsm, libvirt and QEMU versions, host UUID, \
                      liveSnapshot, and the verbs served.",
        params: &[],
    },
    Verb {
        name: names::HOST_GET_VM_LIST,
        description: "Lists the host's VMs as [{vmId, status, statusTime}].",
        params: &[
            Param {
                name: "fullStatus",
                ty: ParamType::Bool,
                required: false,
                description: "Accepted for VDSM compatibility; the list has the same shape.",
            },
            Param {
                name: "vmList",
                ty: ParamType::UuidList,
                required: false,
                description: "Only these VMs (all when empty).",
            },
            Param {
                name: "onlyUUID",
                ty: ParamType::Bool,
                required: false,
                description: "Accepted for VDSM compatibility; the list has the same shape.",
            },
        ],
    },
    Verb {
        name: names::VM_GET_STATS,
        description: "Returns [VmStats]: status, and for each disk its source and the \
                      backing chain libvirt reports.",
        params: &[VM_ID],
    },
    Verb {
        name: names::VM_SNAPSHOT,
        description: "Switches the VM's listed disks to their pre-created volumes in one atomic \
                      external disk-only snapshot, quiesced through the guest agent when \
                      possible. Returns true once the job is scheduled; follow it with \
                      Host.getJobs (or rvdsm --wait).",
        params: &[
            VM_ID,
            required(
                "snapDrives",
                ParamType::List,
                "[{domainID, imageID, baseVolumeID, volumeID}]: for each disk, the volume it \
                 uses now and the new volume (its child) to switch to.",
            ),
            optional(
                "snapMemory",
                ParamType::String,
                "Refused: memory snapshots are not supported.",
            ),
            optional(
                "frozen",
                ParamType::Bool,
                "The caller froze the guest: no freeze, no thaw.",
            ),
            optional(
                "jobUUID",
                ParamType::Uuid,
                "The job id (generated when absent).",
            ),
            optional(
                "timeout",
                ParamType::UInt,
                "Minutes; must be positive (30).",
            ),
            optional(
                "freeze_timeout",
                ParamType::UInt,
                "Minutes after the job's start past which the switch is not attempted (8).",
            ),
            optional(
                "quiesce",
                ParamType::String,
                "prefer (default): quiesce if an agent can, else go on and say why; \
                 require: fail instead; skip: never freeze.",
            ),
        ],
    },
    Verb {
        name: names::VM_FREEZE,
        description: "Freezes the guest's filesystems through its agent, until VM.thaw or the \
                      auto-thaw deadline. Returns true.",
        params: &[
            VM_ID,
            optional("mountpoints", ParamType::List, "Only these mount points."),
            optional(
                "autoThawSeconds",
                ParamType::UInt,
                "Auto-thaw deadline (config: 60).",
            ),
        ],
    },
    Verb {
        name: names::VM_THAW,
        description: "Thaws the guest's filesystems (true on a thawed guest too).",
        params: &[VM_ID],
    },
    Verb {
        name: names::HOST_GET_JOBS,
        description: "{jobId: {id, status, description, job_type, progress, error?, result?}} \
                      of the virt jobs; finished jobs stay an hour.",
        params: &[
            optional("job_type", ParamType::String, "Only this type (virt)."),
            optional("job_ids", ParamType::UuidList, "Only these jobs."),
        ],
    },
    Verb {
        name: names::SD_CREATE,
        description: "Creates a file storage domain in VDSM's layout in a directory (LOCALFS) \
                      or a mounted export (NFS, POSIXFS), attached to the host's pool. \
                      Returns true.",
        params: &[
            DOMAIN_ID,
            required(
                "domainType",
                ParamType::UInt,
                "1 NFS, 4 LOCALFS, 6 POSIXFS.",
            ),
            required(
                "typeArgs",
                ParamType::String,
                "The directory or remote path (or {\"remotePath\": ...}).",
            ),
            required("name", ParamType::String, "The domain's name."),
            required("domainClass", ParamType::UInt, "1 (DATA)."),
            required("version", ParamType::UInt, "5."),
            optional("blockSize", ParamType::UInt, "512 (default) or 4096."),
            optional("maxHosts", ParamType::UInt, "Most hosts sharing it (250)."),
        ],
    },
    Verb {
        name: names::SD_GET_INFO,
        description: "Describes a storage domain: uuid, type, class, name, role, pool, \
                      version, block_size, alignment, remotePath.",
        params: &[DOMAIN_ID],
    },
    Verb {
        name: names::SD_GET_STATS,
        description: "Space of a storage domain: {disktotal, diskfree} in bytes (strings).",
        params: &[DOMAIN_ID],
    },
    Verb {
        name: names::SD_GET_VOLUMES,
        description: "The volumes of a domain, or of one image of it: [volumeID].",
        params: &[
            DOMAIN_ID,
            POOL_ID,
            optional("imageID", ParamType::Uuid, "Only this image (BLANK: all)."),
        ],
    },
    Verb {
        name: names::HOST_GET_STORAGE_DOMAINS,
        description: "The storage domains attached to this host: [storagedomainID].",
        params: &[optional(
            "storagepoolID",
            ParamType::Uuid,
            "Only the domains of this pool.",
        )],
    },
    Verb {
        name: names::IMAGE_GET_VOLUMES,
        description: "The volumes of an image: [volumeID].",
        params: &[IMAGE_ID, POOL_ID, DOMAIN_ID],
    },
    Verb {
        name: names::VOLUME_CREATE,
        description: "Creates a volume as a storage task and returns the task id at once. \
                      With srcVolUUID, a qcow2 snapshot volume on top of that parent.",
        params: &[
            VOLUME_ID,
            POOL_ID,
            DOMAIN_ID,
            IMAGE_ID,
            required(
                "size",
                ParamType::String,
                "Capacity in bytes (decimal string).",
            ),
            required("volFormat", ParamType::UInt, "4 COW (qcow2) or 5 RAW."),
            required(
                "preallocate",
                ParamType::UInt,
                "1 PREALLOCATED or 2 SPARSE.",
            ),
            required(
                "diskType",
                ParamType::String,
                "DATA (or ISOF, MEMD, MEMM, OVFS...).",
            ),
            optional(
                "desc",
                ParamType::String,
                "Description (210 bytes at most).",
            ),
            optional(
                "srcImgUUID",
                ParamType::Uuid,
                "The parent's image (BLANK: same).",
            ),
            optional(
                "srcVolUUID",
                ParamType::Uuid,
                "The parent (BLANK: a base volume).",
            ),
            optional(
                "initialSize",
                ParamType::String,
                "RAW preallocated only; ignored.",
            ),
            optional("legal", ParamType::Bool, "Whether it ends LEGAL (true)."),
            optional("sequence", ParamType::UInt, "SEQ (0)."),
        ],
    },
    Verb {
        name: names::VOLUME_GET_INFO,
        description: "Describes a volume as VDSM does, plus its children.",
        params: &[VOLUME_ID, POOL_ID, DOMAIN_ID, IMAGE_ID],
    },
    Verb {
        name: names::VOLUME_GET_SIZE,
        description: "{apparentsize, truesize} of a volume, in bytes (strings).",
        params: &[VOLUME_ID, POOL_ID, DOMAIN_ID, IMAGE_ID],
    },
    Verb {
        name: names::VOLUME_DELETE,
        description: "Deletes a volume as a storage task (ILLEGAL first, .meta last) and \
                      returns the task id. Refused for a volume with children or used by a VM.",
        params: &[
            VOLUME_ID,
            POOL_ID,
            DOMAIN_ID,
            IMAGE_ID,
            optional(
                "postZero",
                ParamType::Bool,
                "Accepted; file domains do not zero.",
            ),
            optional(
                "force",
                ParamType::Bool,
                "Accepted; the refusals still apply.",
            ),
            optional(
                "discard",
                ParamType::Bool,
                "Accepted; file domains do not discard.",
            ),
        ],
    },
    Verb {
        name: names::IMAGE_DELETE,
        description: "Deletes every volume of an image (leaf first) and the image, as a \
                      storage task; returns the task id. Refused if a VM uses any of them.",
        params: &[
            IMAGE_ID,
            POOL_ID,
            DOMAIN_ID,
            optional(
                "postZero",
                ParamType::Bool,
                "Accepted; file domains do not zero.",
            ),
            optional(
                "force",
                ParamType::Bool,
                "Accepted; the refusal still applies.",
            ),
            optional(
                "discard",
                ParamType::Bool,
                "Accepted; file domains do not discard.",
            ),
        ],
    },
    Verb {
        name: names::IMAGE_PREPARE,
        description: "Checks that every volume of the image is usable and returns {path}, \
                      the path a VM should use for the volume.",
        params: &[
            POOL_ID,
            DOMAIN_ID,
            IMAGE_ID,
            VOLUME_ID,
            optional(
                "allowIllegal",
                ParamType::Bool,
                "Prepare despite ILLEGAL volumes.",
            ),
        ],
    },
    Verb {
        name: names::IMAGE_TEARDOWN,
        description: "Releases a prepared image (nothing to release on file domains). \
                      Returns true.",
        params: &[
            POOL_ID,
            DOMAIN_ID,
            IMAGE_ID,
            optional(
                "volumeID",
                ParamType::Uuid,
                "Accepted for VDSM compatibility.",
            ),
        ],
    },
    Verb {
        name: names::TASK_GET_STATUS,
        description: "{taskID, taskState, taskResult, code, message} of a task.",
        params: &[TASK_ID],
    },
    Verb {
        name: names::TASK_GET_INFO,
        description: "{id, verb} of a task.",
        params: &[TASK_ID],
    },
    Verb {
        name: names::TASK_CLEAR,
        description: "Forgets a finished task. Returns true.",
        params: &[TASK_ID],
    },
    Verb {
        name: names::TASK_STOP,
        description: "Stops a running task (its work is rolled back). Returns true.",
        params: &[TASK_ID],
    },
    Verb {
        name: names::HOST_GET_ALL_TASKS_STATUSES,
        description: "{taskID: status} of every task.",
        params: &[],
    },
];

/// The verb called `name`, if rvdsm serves it.
pub fn find(name: &str) -> Option<&'static Verb> {
    VERBS.iter().find(|v| v.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_and_namespaced() {
        let mut seen = HashSet::new();
        for verb in VERBS {
            assert!(seen.insert(verb.name), "{} twice", verb.name);
            assert!(!verb.namespace().is_empty() && !verb.method().is_empty());
        }
    }

    #[test]
    fn find_knows_only_served_verbs() {
        assert_eq!(find("VM.getStats").unwrap().params[0].name, "vmID");
        assert!(find("VM.nope").is_none());
    }
}
