//! The verb table: every verb rvdsm serves, defined once. Each entry gives the verb's
//! [`Call`] variant, its name constant (in [`names`]) and wire name, its parameter struct,
//! whether it only `reads` or `changes` something, what it does, and its parameters in VDSM's
//! schema order (the order positional parameters are mapped in). From it come the name
//! constants, the [`Call`] enum every transport dispatches on (a verb without a handler does
//! not compile), the parsing of its parameters, the schema the CLI prints, the API reference
//! (`docs/api.md`, checked by a test), and the test that the schema's names are exactly the
//! struct's serde fields.
//!
//! `reads` or `changes` is said per verb, never guessed from its name: a verb that changes
//! state runs to its end after its client hangs up, and only a verb that reads may be cut
//! short (and has its successes logged at debug level, since managers poll those).

use serde_json::{Map, Value};

use super::ApiError;
use super::lifecycle_types::{
    CreateVmParams, DestroyVmParams, HibernateParams, ShutdownVmParams, VmListParams,
};
use super::merge_types::{
    CopyDataParams, MergeParams, PoolSubchainParams, ReconcileParams, SdmMergeParams,
};
use super::params::{from_object, serde_fields};
use super::pool_types::{
    ConnectPoolParams, CreateLeaseParams, CreatePoolParams, DeactivateDomainParams,
    DestroyPoolParams, DetachDomainParams, DisconnectPoolParams, FormatDomainParams, LeaseParams,
    PoolDomainParams, PoolIdParams, RepoStatsParams, SpmStartParams, SwitchMasterParams,
};
use super::schema::{Param, ParamType, Verb, optional, required};
use super::storage_types::DeleteVolumesParams;
use super::storage_types::{
    CreateDomainParams, CreateVolumeParams, DeleteImageParams, DeleteVolumeParams, DomainParams,
    DomainVolumesParams, GetStorageDomainsParams, ImageParams, PrepareImageParams, TaskParams,
    TeardownImageParams, VolumeParams,
};
use super::types::{GetVmListParams, NoParams, VmIdParams};
use super::vm_types::{FreezeParams, GetJobsParams, SnapshotParams};

/// Whether an entry that says `reads` or `changes` only reads; any other word does not compile.
macro_rules! read_only {
    (reads) => {
        true
    };
    (changes) => {
        false
    };
}

/// Declares every verb: see the module's documentation.
macro_rules! verbs {
    ($(
        $variant:ident $constant:ident $wire:literal ($params:ty) $access:ident
            $description:literal
            [$($param:expr),* $(,)?];
    )*) => {
        /// The method names, so that code never spells a verb twice.
        pub mod names {
            $(
                #[doc = concat!("`", $wire, "`.")]
                pub const $constant: &str = $wire;
            )*
        }

        /// A call to one verb, with its typed parameters.
        #[derive(Debug, Clone)]
        pub enum Call {
            $(
                #[doc = concat!("`", $wire, "`.")]
                $variant($params),
            )*
        }

        /// Every verb rvdsm serves.
        pub static VERBS: &[Verb] = &[
            $(
                Verb {
                    name: names::$constant,
                    read_only: read_only!($access),
                    description: $description,
                    params: &[$($param),*],
                    parse: |object: Map<String, Value>| -> Result<Call, ApiError> {
                        from_object::<$params>($wire, object).map(Call::$variant)
                    },
                    fields: serde_fields::<$params>,
                },
            )*
        ];
    };
}

const VOLUME_ID: Param = required("volumeID", ParamType::Uuid, "The volume.");
const LEASE: Param = required(
    "lease",
    ParamType::Object,
    "{sd_id, lease_id}: the domain and the lease's id (a VM's UUID for its VM lease).",
);
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
const VM_ID: Param = required(
    "vmID",
    ParamType::Uuid,
    "The VM's UUID (the libvirt domain UUID).",
);

verbs! {
    HostPing2 HOST_PING2 "Host.ping2" (NoParams) reads
        "Checks that the daemon answers. Returns true."
        [];
    HostGetCapabilities HOST_GET_CAPABILITIES "Host.getCapabilities" (NoParams) reads
        "Describes the host as VDSM does: CPU, memory, OS, packages2, NICs (read-only), \
        cluster levels, liveSnapshot; plus the storage pool and the verbs served."
        [];
    HostGetStats HOST_GET_STATS "Host.getStats" (NoParams) reads
        "The host's CPU (over the last sampling interval), memory, VM counts and boot time."
        [];
    HostGetAllVmStats HOST_GET_ALL_VM_STATS "Host.getAllVmStats" (NoParams) reads
        "[VmStats] of every VM, from the monitoring cache (see VM.getStats)."
        [];
    HostGetVmFullList HOST_GET_VM_FULL_LIST "Host.getVMFullList" (VmListParams) reads
        "[{vmId, status, statusTime}] of every VM (or of vmList), as VDSM answers it."
        [
            optional("vmList", ParamType::UuidList, "Only these VMs (all when empty)."),
        ];
    HostDumpxmls HOST_DUMPXMLS "Host.dumpxmls" (VmListParams) reads
        "{vmId: domain XML} of every VM (or of vmList), as last sampled."
        [
            optional("vmList", ParamType::UuidList, "Only these VMs (all when empty)."),
        ];
    HostGetVmList HOST_GET_VM_LIST "Host.getVMList" (GetVmListParams) reads
        "Lists the host's VMs as [{vmId, status, statusTime}]."
        [
            optional("fullStatus", ParamType::Bool,
                "Accepted for VDSM compatibility; the list has the same shape."),
            optional("vmList", ParamType::UuidList, "Only these VMs (all when empty)."),
            optional("onlyUUID", ParamType::Bool,
                "Accepted for VDSM compatibility; the list has the same shape."),
        ];
    VmGetStats VM_GET_STATS "VM.getStats" (VmIdParams) reads
        "Returns [VmStats] in VDSM's shape, from the monitoring cache: status, CPU, \
        memory, network, vmJobs, and for each disk its I/O figures, source and backing \
        chain."
        [
            VM_ID,
        ];
    VmCreate VM_CREATE "VM.create" (CreateVmParams) changes
        "Prepares the drives an engine's domain XML names (ovirt-vm metadata), records \
        their chains in the definition, defines and starts the VM; undoes every step \
        when one fails. With saved RAM (a snapshot with memory, a hibernation), restores \
        the VM from it instead of booting it: the definition saved with the RAM, checked \
        as a manager's, on the volumes the XML names (the saved volume or an unwritten \
        child of it), resumed and its clock set. Returns {vmId, status, statusTime}."
        [
            VM_ID,
            required("vmParams", ParamType::Object,
                "{xml: the libvirt domain XML; to restore saved RAM, memoryDumpVolume and \
                memoryConfVolume ({poolID, domainID, imageID, volumeID} each), or \
                hiberVolHandle (sdUUID,spUUID,dumpImg,dumpVol,confImg,confVol)}."),
        ];
    VmDestroy VM_DESTROY "VM.destroy" (DestroyVmParams) changes
        "Stops QEMU (SIGTERM, then SIGKILL), undefines a VM rvdsm created and releases \
        its images. Returns true."
        [
            VM_ID,
            optional("gracefulAttempts", ParamType::UInt, "SIGTERM attempts first (1)."),
        ];
    VmPause VM_PAUSE "VM.pause" (VmIdParams) changes
        "Pauses the VM's CPUs. Returns {vmList: {}}."
        [
            VM_ID,
        ];
    VmCont VM_CONT "VM.cont" (VmIdParams) changes
        "Resumes a paused VM. Returns {vmList: {}}."
        [
            VM_ID,
        ];
    VmShutdown VM_SHUTDOWN "VM.shutdown" (ShutdownVmParams) changes
        "Asks the guest to power off (or reboot), through its agent or ACPI. Returns true."
        [
            VM_ID,
            optional("delay", ParamType::Int, "Accepted; the guest is asked at once."),
            optional("message", ParamType::String, "Accepted; not shown."),
            optional("reboot", ParamType::Bool, "Reboot instead (false)."),
            optional("timeout", ParamType::Int, "Seconds before force destroys it (120)."),
            optional("force", ParamType::Bool, "Destroy the VM if still up after timeout."),
        ];
    VmSnapshot VM_SNAPSHOT "VM.snapshot" (SnapshotParams) changes
        "Switches the VM's listed disks to their pre-created volumes in one atomic \
        external disk-only snapshot, quiesced through the guest agent when \
        possible. Returns true once the job is scheduled; follow it with \
        Host.getJobs (or rvdsm --wait)."
        [
            VM_ID,
            required("snapDrives", ParamType::List,
                "[{domainID, imageID, baseVolumeID, volumeID}]: for each disk, the volume it \
                uses now and the new volume (its child) to switch to."),
            optional("snapMemory", ParamType::String,
                "sdUUID,spUUID,dumpImg,dumpVol,confImg,confVol: save the guest's RAM too, \
                into the dump volume (RAW, alone in its image, at least the RAM + 64 MiB), \
                with what restoring needs in the configuration volume; no freeze then."),
            optional("memoryMode", ParamType::String,
                "rvdsm's: paused (VDSM's: the guest stands still for the whole dump) or live \
                (it runs until the last pages); config [snapshot] memory_mode (paused)."),
            optional("frozen", ParamType::Bool, "The caller froze the guest: no freeze, no thaw."),
            optional("jobUUID", ParamType::Uuid, "The job id (generated when absent)."),
            optional("timeout", ParamType::UInt, "Minutes; must be positive (30)."),
            optional("freeze_timeout", ParamType::UInt,
                "Minutes after the job's start past which the switch is not attempted (8)."),
            optional("quiesce", ParamType::String,
                "prefer (default): quiesce if an agent can, else go on and say why; \
                require: fail instead; skip: never freeze."),
        ];
    VmMerge VM_MERGE "VM.merge" (MergeParams) changes
        "Merges topVolUUID into its parent baseVolUUID while the VM runs (libvirt's \
        block commit; for the active layer, then a pivot of the disk to the base), and \
        deletes topVolUUID. Returns true once the job has started; follow it in \
        Host.getJobs (or rvdsm --wait) and in the VM's vmJobs."
        [
            VM_ID,
            required("drive", ParamType::Object,
                "{poolID, domainID, imageID, volumeID}: the disk, by the volume it uses."),
            required("baseVolUUID", ParamType::Uuid, "The volume that receives the data."),
            required("topVolUUID", ParamType::Uuid, "The volume merged away (base's child)."),
            optional("bandwidth", ParamType::UInt, "I/O limit in MiB/s (0: none)."),
            optional("jobUUID", ParamType::Uuid, "The job id (generated when absent)."),
        ];
    StoragePoolCreate SP_CREATE "StoragePool.create" (CreatePoolParams) changes
        "Creates the pool on storage: the master domain records the pool (role \
        Master, its version, its domains Active) and every listed domain names it; \
        written under the master's SDM lease. The same call again returns true. \
        Returns true."
        [
            POOL_ID,
            required("name", ParamType::String,
                "The pool's name (50 characters at most; newlines and commas become spaces)."),
            required("masterSdUUID", ParamType::Uuid, "The master domain (in domainList)."),
            required("masterVersion", ParamType::Int, "The master's first version."),
            required("domainList", ParamType::UuidList, "The pool's domains."),
            optional("lockRenewalIntervalSec", ParamType::Int, "Unused ([cluster])."),
            optional("leaseTimeSec", ParamType::Int, "Unused ([cluster])."),
            optional("ioOpTimeoutSec", ParamType::Int, "Unused ([cluster])."),
            optional("leaseRetries", ParamType::Int, "Unused ([cluster])."),
        ];
    StoragePoolGetInfo SP_GET_INFO "StoragePool.getInfo" (PoolIdParams) reads
        "{info: {master_uuid, master_ver, name, domains, spm_id, lver, version, type, \
        isoprefix, pool_status}, dominfo: {sdUUID: {status, alerts, isoprefix, \
        version, diskfree, disktotal}}}: the pool as its master records it now."
        [
            POOL_ID,
        ];
    StoragePoolSwitchMaster SP_SWITCH_MASTER "StoragePool.switchMaster" (SwitchMasterParams) changes
        "On the SPM: moves the master to another active domain at a higher version, \
        the SPM role with it; hosts connected at the old master or version are \
        refused after (324). Returns a task id."
        [
            POOL_ID,
            required("oldMasterUUID", ParamType::Uuid, "The master now."),
            required("newMasterUUID", ParamType::Uuid, "The master after."),
            required("masterVersion", ParamType::Int, "The version after (higher)."),
        ];
    StoragePoolDestroy SP_DESTROY "StoragePool.destroy" (DestroyPoolParams) changes
        "On the SPM of a pool whose only domain is its master: the master becomes an \
        unattached domain, the SPM role is given up and the lockspaces left. \
        Returns true."
        [
            POOL_ID,
            required("hostID", ParamType::Int, "This host's id."),
            optional("scsiKey", ParamType::String, "Unused."),
        ];
    StoragePoolConnect SP_CONNECT "StoragePool.connect" (ConnectPoolParams) changes
        "Connects this host to its pool: verifies on storage that masterSdUUID is the \
        pool's master at masterVersion (304 when not found, 324 when not), then begins \
        joining the sanlock lockspace of each active domain the master lists, with \
        hostID (the host's [cluster] host_id). Returns true at once; \
        Host.getStorageRepoStats shows each join (acquired)."
        [
            POOL_ID,
            required("hostID", ParamType::Int, "This host's id (1-250), as configured."),
            optional("scsiKey", ParamType::String, "Unused."),
            required("masterSdUUID", ParamType::Uuid, "The domain holding the SPM lease."),
            required("masterVersion", ParamType::Int, "The master domain's version."),
            optional("domainDict", ParamType::Object,
                "Unused: the master's record on storage lists the pool's domains."),
        ];
    StoragePoolDisconnect SP_DISCONNECT "StoragePool.disconnect" (DisconnectPoolParams) changes
        "Leaves the lockspaces of the pool's domains (refused while this host is the \
        SPM, 656). Returns true."
        [
            POOL_ID,
            required("hostID", ParamType::Int, "This host's id."),
            optional("scsiKey", ParamType::String, "Unused."),
            optional("remove", ParamType::Bool, "Unused."),
        ];
    StoragePoolSpmStart SP_SPM_START "StoragePool.spmStart" (SpmStartParams) changes
        "Contends for the pool's SPM role: the SDM lease of the master domain, held by \
        this host until spmStop or its death, taken only while the master is still \
        the pool's at the connected version (else the task fails, 324). Returns a \
        task id; the task fails (651) when another live host holds it."
        [
            POOL_ID,
            optional("prevID", ParamType::Int, "Deprecated."),
            optional("prevLver", ParamType::String, "Deprecated."),
            optional("enableScsiFencing", ParamType::String, "Unused."),
            optional("maxHostID", ParamType::Int, "Unused (lockspaces hold 2000 hosts)."),
            optional("domVersion", ParamType::String, "Unused."),
        ];
    StoragePoolSpmStop SP_SPM_STOP "StoragePool.spmStop" (PoolIdParams) changes
        "Gives the SPM role up (refused while SPM tasks run, 653). Returns true."
        [
            POOL_ID,
        ];
    StoragePoolGetSpmStatus SP_GET_SPM_STATUS "StoragePool.getSpmStatus" (PoolIdParams) reads
        "{spmStatus: SPM|Free|Contend, spmLver, spmId}: this host's role, the SPM \
        lease's version and holder."
        [
            POOL_ID,
        ];
    HostGetStorageRepoStats HOST_GET_STORAGE_REPO_STATS "Host.getStorageRepoStats"
        (RepoStatsParams) reads
        "{sdUUID: {code, lastCheck, delay, valid, version, acquired, actual}}: each \
        attached domain's last check and this host's lease in its lockspace."
        [
            optional("domains", ParamType::UuidList, "Only these domains."),
        ];
    LeaseCreate LEASE_CREATE "Lease.create" (CreateLeaseParams) changes
        "Creates an external lease (a VM lease) in the domain's xleases volume, on the \
        SPM: its sanlock resource, then its index record. Returns a task id."
        [
            LEASE,
            optional("metadata", ParamType::Object,
                "The lease's value block (job fencing): not supported, refused."),
        ];
    LeaseDelete LEASE_DELETE "Lease.delete" (LeaseParams) changes
        "Deletes an external lease, on the SPM. Returns a task id."
        [
            LEASE,
        ];
    LeaseInfo LEASE_INFO "Lease.info" (LeaseParams) changes
        "{sd_id, lease_id, path, offset}: where the lease lives, for a VM's <lease> \
        (936 when it does not exist)."
        [
            LEASE,
        ];
    LeaseStatus LEASE_STATUS "Lease.status" (LeaseParams) changes
        "{owners, version}: the host ids holding the lease now and its version."
        [
            LEASE,
        ];
    StoragePoolPrepareMerge SP_PREPARE_MERGE "StoragePool.prepareMerge" (PoolSubchainParams) changes
        "The first step of a cold merge (VM stopped): checks the subchain and grows the \
        base's capacity to the top's. Returns a task id."
        [
            POOL_ID,
            required("subchainInfo", ParamType::Object,
                "{sd_id, img_id, top_id, base_id, base_generation?}: top_id is merged into \
                its parent base_id."),
        ];
    SdmMerge SDM_MERGE "SDM.merge" (SdmMergeParams) changes
        "The second step of a cold merge: top's data committed into base (qemu-img \
        commit), as a storage job in Host.getJobs. Returns true."
        [
            required("job_id", ParamType::Uuid, "The job id."),
            required("subchain_info", ParamType::Object,
                "{sd_id, img_id, top_id, base_id, base_generation?}."),
            optional("merge_bitmaps", ParamType::Bool, "Merge top's dirty bitmaps into base."),
        ];
    StoragePoolFinalizeMerge SP_FINALIZE_MERGE "StoragePool.finalizeMerge"
        (PoolSubchainParams) changes
        "The last step of a cold merge, after SDM.merge succeeded: top's child rebased \
        on base, the metadata updated, top deleted. Returns a task id."
        [
            POOL_ID,
            required("subchainInfo", ParamType::Object,
                "{sd_id, img_id, top_id, base_id, base_generation?}."),
        ];
    SdmCopyData SDM_COPY_DATA "SDM.copy_data" (CopyDataParams) changes
        "A full clone: the source's whole chain, as the guest sees it, copied into the \
        destination volume (qemu-img convert, lowest I/O priority, with a deadline), as \
        a storage job in Host.getJobs. Returns true."
        [
            required("job_id", ParamType::Uuid, "The job id."),
            required("source", ParamType::Object,
                "{endpoint_type: div, sd_id, img_id, vol_id, generation?}."),
            required("destination", ParamType::Object,
                "{endpoint_type: div, sd_id, img_id, vol_id, generation?}: an existing \
                volume, ILLEGAL while written."),
            optional("copy_bitmaps", ParamType::Bool, "Refused: bitmaps are not copied."),
        ];
    ImageReconcileVolumeChain IMAGE_RECONCILE "Image.reconcileVolumeChain" (ReconcileParams) changes
        "The image's chain as its qcow2 headers have it (a stopped VM), from leafVolID \
        down (an ILLEGAL leaf left out), with the metadata brought to agree. Returns the \
        chain, base first."
        [
            POOL_ID,
            DOMAIN_ID,
            IMAGE_ID,
            required("leafVolID", ParamType::Uuid, "The leaf the caller last knew."),
        ];
    VmFreeze VM_FREEZE "VM.freeze" (FreezeParams) changes
        "Freezes the guest's filesystems through its agent, until VM.thaw or the \
        auto-thaw deadline. Returns true."
        [
            VM_ID,
            optional("mountpoints", ParamType::List, "Only these mount points."),
            optional("autoThawSeconds", ParamType::UInt, "Auto-thaw deadline (config: 60)."),
        ];
    VmHibernate VM_HIBERNATE "VM.hibernate" (HibernateParams) changes
        "Saves the VM's RAM and stops it: the configuration written at once, the RAM in \
        the background (the VM is Down once saved; on failure it runs on and the volumes \
        are marked ILLEGAL). Resume it with VM.destroy, then VM.create with the same \
        hiberVolHandle. Returns true."
        [
            VM_ID,
            required("hiberVolHandle", ParamType::String,
                "sdUUID,spUUID,dumpImg,dumpVol,confImg,confVol: the dump volume (RAW, at \
                least the RAM + 64 MiB) and the configuration volume."),
        ];
    VmThaw VM_THAW "VM.thaw" (VmIdParams) changes
        "Thaws the guest's filesystems (true on a thawed guest too)."
        [
            VM_ID,
        ];
    HostGetJobs HOST_GET_JOBS "Host.getJobs" (GetJobsParams) reads
        "{jobId: {id, status, description, job_type, progress, error?, result?}} \
        of the virt jobs; finished jobs stay an hour."
        [
            optional("job_type", ParamType::String, "Only this type (virt)."),
            optional("job_ids", ParamType::UuidList, "Only these jobs."),
        ];
    StorageDomainCreate SD_CREATE "StorageDomain.create" (CreateDomainParams) changes
        "Creates a file storage domain in VDSM's layout in a directory (LOCALFS) \
        or a mounted export (NFS, POSIXFS). With [cluster] it is unattached until \
        StoragePool.create or StorageDomain.attach; a host that runs alone keeps it \
        in its own pool. Returns true."
        [
            DOMAIN_ID,
            required("domainType", ParamType::UInt, "1 NFS, 4 LOCALFS, 6 POSIXFS."),
            required("typeArgs", ParamType::String,
                "The directory or remote path (or {\"remotePath\": ...})."),
            required("name", ParamType::String, "The domain's name."),
            required("domainClass", ParamType::UInt, "1 (DATA)."),
            required("version", ParamType::UInt, "5."),
            optional("blockSize", ParamType::UInt, "512 (default) or 4096."),
            optional("maxHosts", ParamType::UInt, "Most hosts sharing it (250)."),
        ];
    StorageDomainAttach SD_ATTACH "StorageDomain.attach" (PoolDomainParams) changes
        "On the SPM: attaches an unattached domain to the pool (its metadata names \
        the pool, the master lists it Attached; 380 when another pool has it). \
        Returns true."
        [
            DOMAIN_ID,
            POOL_ID,
        ];
    StorageDomainActivate SD_ACTIVATE "StorageDomain.activate" (PoolDomainParams) changes
        "On the SPM: an attached domain of the pool becomes Active (353 when it is \
        not the pool's). Returns true."
        [
            DOMAIN_ID,
            POOL_ID,
        ];
    StorageDomainDeactivate SD_DEACTIVATE "StorageDomain.deactivate"
        (DeactivateDomainParams) changes
        "On the SPM: an active domain becomes Attached (refused while a VM of this \
        host or a task uses it). For the master, masterSdUUID (another active \
        domain) and a higher masterVersion move the master there first; without \
        them the request is ignored, as VDSM does. Returns true."
        [
            DOMAIN_ID,
            POOL_ID,
            required("masterSdUUID", ParamType::Uuid, "The master after the change."),
            required("masterVersion", ParamType::Int, "The master's version after."),
        ];
    StorageDomainDetach SD_DETACH "StorageDomain.detach" (DetachDomainParams) changes
        "On the SPM: a deactivated domain leaves the pool (381 while Active, 383 for \
        the master); its metadata names no pool after. Returns true."
        [
            DOMAIN_ID,
            POOL_ID,
            optional("masterSdUUID", ParamType::Uuid, "Unused."),
            optional("masterVersion", ParamType::Int, "Unused."),
            optional("force", ParamType::Bool, "Unused: no forced detach."),
        ];
    StorageDomainFormat SD_FORMAT "StorageDomain.format" (FormatDomainParams) changes
        "Removes a domain and everything in it: refused for a domain a master of \
        this host's pool lists (392), for a pool's master on a [cluster] host (392, \
        even with autoDetach), for one attached to a pool without autoDetach (391; a \
        host that runs alone keeps its domains in its own pool: autoDetach=true), or \
        used by a VM or a task here (392). Returns true."
        [
            DOMAIN_ID,
            required("autoDetach", ParamType::Bool,
                "Format a domain still attached to a pool this host is not connected to."),
        ];
    StorageDomainGetInfo SD_GET_INFO "StorageDomain.getInfo" (DomainParams) reads
        "Describes a storage domain: uuid, type, class, name, role, pool, \
        version, block_size, alignment, remotePath."
        [
            DOMAIN_ID,
        ];
    StorageDomainGetStats SD_GET_STATS "StorageDomain.getStats" (DomainParams) reads
        "Space of a storage domain: {disktotal, diskfree} in bytes (strings)."
        [
            DOMAIN_ID,
        ];
    StorageDomainGetVolumes SD_GET_VOLUMES "StorageDomain.getVolumes" (DomainVolumesParams) reads
        "The volumes of a domain, or of one image of it: [volumeID]."
        [
            DOMAIN_ID,
            POOL_ID,
            optional("imageID", ParamType::Uuid, "Only this image (BLANK: all)."),
        ];
    HostGetStorageDomains HOST_GET_STORAGE_DOMAINS "Host.getStorageDomains"
        (GetStorageDomainsParams) reads
        "The storage domains attached to this host: [storagedomainID]."
        [
            optional("storagepoolID", ParamType::Uuid, "Only the domains of this pool."),
        ];
    ImageGetVolumes IMAGE_GET_VOLUMES "Image.getVolumes" (ImageParams) reads
        "The volumes of an image: [volumeID]."
        [
            IMAGE_ID,
            POOL_ID,
            DOMAIN_ID,
        ];
    VolumeCreate VOLUME_CREATE "Volume.create" (CreateVolumeParams) changes
        "Creates a volume as a storage task and returns the task id at once. \
        With srcVolUUID, a qcow2 snapshot volume on top of that parent."
        [
            VOLUME_ID,
            POOL_ID,
            DOMAIN_ID,
            IMAGE_ID,
            required("size", ParamType::String, "Capacity in bytes (decimal string)."),
            required("volFormat", ParamType::UInt, "4 COW (qcow2) or 5 RAW."),
            required("preallocate", ParamType::UInt, "1 PREALLOCATED or 2 SPARSE."),
            required("diskType", ParamType::String, "DATA (or ISOF, MEMD, MEMM, OVFS...)."),
            optional("desc", ParamType::String, "Description (210 bytes at most)."),
            optional("srcImgUUID", ParamType::Uuid, "The parent's image (BLANK: same)."),
            optional("srcVolUUID", ParamType::Uuid, "The parent (BLANK: a base volume)."),
            optional("initialSize", ParamType::String, "RAW preallocated only; ignored."),
            optional("legal", ParamType::Bool, "Whether it ends LEGAL (true)."),
            optional("sequence", ParamType::UInt, "SEQ (0)."),
        ];
    VolumeGetInfo VOLUME_GET_INFO "Volume.getInfo" (VolumeParams) reads
        "Describes a volume as VDSM does, plus its children."
        [
            VOLUME_ID,
            POOL_ID,
            DOMAIN_ID,
            IMAGE_ID,
        ];
    VolumeGetSize VOLUME_GET_SIZE "Volume.getSize" (VolumeParams) reads
        "{apparentsize, truesize} of a volume, in bytes (strings)."
        [
            VOLUME_ID,
            POOL_ID,
            DOMAIN_ID,
            IMAGE_ID,
        ];
    VolumeDelete VOLUME_DELETE "Volume.delete" (DeleteVolumeParams) changes
        "Deletes a volume as a storage task (ILLEGAL first, .meta last) and \
        returns the task id. Refused for a volume with children or used by a VM."
        [
            VOLUME_ID,
            POOL_ID,
            DOMAIN_ID,
            IMAGE_ID,
            optional("postZero", ParamType::Bool, "Accepted; file domains do not zero."),
            optional("force", ParamType::Bool, "Accepted; the refusals still apply."),
            optional("discard", ParamType::Bool, "Accepted; file domains do not discard."),
        ];
    ImageDelete IMAGE_DELETE "Image.delete" (DeleteImageParams) changes
        "Deletes every volume of an image (leaf first) and the image, as a \
        storage task; returns the task id. Refused if a VM uses any of them."
        [
            IMAGE_ID,
            POOL_ID,
            DOMAIN_ID,
            optional("postZero", ParamType::Bool, "Accepted; file domains do not zero."),
            optional("force", ParamType::Bool, "Accepted; the refusal still applies."),
            optional("discard", ParamType::Bool, "Accepted; file domains do not discard."),
        ];
    ImageDeleteVolumes IMAGE_DELETE_VOLUMES "Image.deleteVolumes" (DeleteVolumesParams) changes
        "Deletes the listed volumes of an image (leaf first) as one storage task; \
        returns the task id. Refused for a volume with children outside the list or \
        used by a VM."
        [
            IMAGE_ID,
            POOL_ID,
            DOMAIN_ID,
            required("volumeList", ParamType::UuidList, "The volumes to delete."),
            optional("postZero", ParamType::Bool, "Accepted; file domains do not zero."),
            optional("force", ParamType::Bool, "Accepted; the refusals still apply."),
            optional("discard", ParamType::Bool, "Accepted; file domains do not discard."),
        ];
    ImagePrepare IMAGE_PREPARE "Image.prepare" (PrepareImageParams) changes
        "Checks that every volume of the image is usable and returns {path}, \
        the path a VM should use for the volume."
        [
            POOL_ID,
            DOMAIN_ID,
            IMAGE_ID,
            VOLUME_ID,
            optional("allowIllegal", ParamType::Bool, "Prepare despite ILLEGAL volumes."),
        ];
    ImageTeardown IMAGE_TEARDOWN "Image.teardown" (TeardownImageParams) changes
        "Releases a prepared image (nothing to release on file domains). \
        Returns true."
        [
            POOL_ID,
            DOMAIN_ID,
            IMAGE_ID,
            optional("volumeID", ParamType::Uuid, "Accepted for VDSM compatibility."),
        ];
    TaskGetStatus TASK_GET_STATUS "Task.getStatus" (TaskParams) reads
        "{taskID, taskState, taskResult, code, message} of a task."
        [
            TASK_ID,
        ];
    TaskGetInfo TASK_GET_INFO "Task.getInfo" (TaskParams) reads
        "{id, verb} of a task."
        [
            TASK_ID,
        ];
    TaskClear TASK_CLEAR "Task.clear" (TaskParams) changes
        "Forgets a finished task. Returns true."
        [
            TASK_ID,
        ];
    TaskStop TASK_STOP "Task.stop" (TaskParams) changes
        "Stops a running task (its work is rolled back). Returns true."
        [
            TASK_ID,
        ];
    HostGetAllTasksStatuses HOST_GET_ALL_TASKS_STATUSES "Host.getAllTasksStatuses" (NoParams) reads
        "{taskID: status} of every task."
        [];
}

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

    /// The column replaced a guess from the name (`get*`, `Host.ping2`, `Host.dumpxmls`); the
    /// verbs that may be cut short when their client hangs up are exactly those it chose, so
    /// that the column changed no verb's behaviour. A verb that reads without a `get` name
    /// (`Lease.info`, `Lease.status`) stays `changes` until someone decides otherwise.
    #[test]
    fn read_only_verbs_are_those_the_name_rule_chose() {
        let by_name_rule = |verb: &Verb| {
            verb.method().starts_with("get")
                || verb.name == names::HOST_PING2
                || verb.name == names::HOST_DUMPXMLS
        };
        let wrong: Vec<String> = VERBS
            .iter()
            .filter(|verb| verb.is_read_only() != by_name_rule(verb))
            .map(|verb| format!("{} (read_only: {})", verb.name, verb.read_only))
            .collect();
        assert!(
            wrong.is_empty(),
            "read-only column differs from the name rule: {wrong:?}"
        );
        // Both kinds exist: the comparison above could not pass on a constant column.
        assert!(VERBS.iter().any(|v| v.read_only) && VERBS.iter().any(|v| !v.read_only));
    }

    #[test]
    fn find_knows_only_served_verbs() {
        assert_eq!(find("VM.getStats").unwrap().params[0].name, "vmID");
        assert!(find("VM.nope").is_none());
    }

    /// The schema a manager and the CLI see names exactly the parameters the verb's struct
    /// takes: none missing (a parameter the server would ignore), none extra (one the CLI
    /// would never offer), and the required ones are those the struct cannot do without.
    #[test]
    fn every_verb_schema_names_exactly_its_struct_fields() {
        for verb in VERBS {
            let mut schema: Vec<&str> = verb.params.iter().map(|p| p.name).collect();
            let mut fields = (verb.fields)().to_vec();
            schema.sort_unstable();
            fields.sort_unstable();
            assert_eq!(schema, fields, "{}: schema vs serde fields", verb.name);
            // A call with only the required parameters (as placeholders of their type)
            // reaches the struct: no required field is missing from the schema's list.
            let object: Map<String, Value> = verb
                .params
                .iter()
                .filter(|p| p.required)
                .map(|p| (p.name.to_owned(), placeholder(p.ty)))
                .collect();
            if let Err(err) = (verb.parse)(object.clone()) {
                // A placeholder object lacks the fields of its own type (`drive`'s poolID...):
                // that is the placeholder's shortcoming, not the schema's.
                let inside_a_parameter = verb
                    .params
                    .iter()
                    .any(|p| err.to_string().contains(&format!("parameter '{}'", p.name)));
                assert!(
                    inside_a_parameter || !err.to_string().contains("missing field"),
                    "{}: a field the schema calls optional is required: {err}",
                    verb.name
                );
            }
            // Without one required parameter, the call is refused.
            for param in verb.params.iter().filter(|p| p.required) {
                let mut without = object.clone();
                without.remove(param.name);
                assert!(
                    (verb.parse)(without).is_err(),
                    "{}: {} is required by the schema but not by the struct",
                    verb.name,
                    param.name
                );
            }
        }
    }

    fn placeholder(ty: ParamType) -> Value {
        serde_json::from_str(ty.template()).unwrap()
    }
}
