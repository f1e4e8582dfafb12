//! The libvirt calls the `virt` crate lacks (or gets wrong), wrapped once each, for
//! [`crate::virt`] alone: each `unsafe` block calls one libvirt function on a live handle and
//! reads libvirt's thread-local error on the same thread right after, as libvirt requires.
//!
//! `virt` 0.5 has no domain event registration; [`register_lifecycle`] adds the lifecycle one,
//! [`register_block_job`] the block job one.
//!
//! `virt` 0.5's `Domain::job_stats` builds a `Vec` from libvirt's null parameter list when no
//! job runs, which aborts the process; [`active_job_operation`] replaces it. `virt` 0.5 has no
//! `virDomainGetControlInfo`; [`monitor_held`] adds it. Nor has it the block job calls of a
//! live merge: [`block_commit`], [`block_job_info`], [`block_job_abort`]; nor the memory calls:
//! [`save`], [`abort_job`], [`completed_job_downtime`] (in `memory.rs`).

mod memory;

pub use memory::{abort_job, completed_job_downtime, lifecycle_guard, save};

use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_void};

use virt::domain::Domain;
use virt::sys;

/// A failed libvirt call: what rvdsm was doing, libvirt's `virErrorNumber` and its message.
/// `virt` turns it into its own error; this module imports nothing above it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{op} failed: libvirt error {code}: {message}")]
pub struct LibvirtError {
    /// What rvdsm was doing.
    pub op: &'static str,
    /// libvirt's `virErrorNumber`.
    pub code: i32,
    /// libvirt's message.
    pub message: String,
}

/// libvirt's `virErrorNumber` of `err`.
pub fn error_code(err: &virt::error::Error) -> i32 {
    i32::try_from(err.code().to_raw()).unwrap_or(i32::MAX)
}

impl LibvirtError {
    /// `err`, from a call made for `op`.
    pub fn libvirt(op: &'static str, err: virt::error::Error) -> Self {
        Self {
            op,
            code: error_code(&err),
            message: err.message().to_owned(),
        }
    }
}

/// `virDomainAgentSetResponseTimeout`: how long libvirt waits for the guest agent (its default
/// waits forever, and a hung agent then holds the domain's agent lock).
pub fn set_agent_timeout(domain: &Domain, seconds: i32) -> Result<(), LibvirtError> {
    // SAFETY: `domain` is a live handle owned by the caller for the duration of the call; the
    // call takes no pointers besides it.
    let rc = unsafe { sys::virDomainAgentSetResponseTimeout(domain.as_ptr(), seconds, 0) };
    check("set agent timeout", rc).map(|_| ())
}

/// `virDomainFSFreeze`: freezes the guest's filesystems (all, or `mountpoints`) through the
/// agent; returns how many were frozen.
pub fn fs_freeze(domain: &Domain, mountpoints: &[String]) -> Result<u32, LibvirtError> {
    with_mountpoints("freeze guest filesystems", mountpoints, |points, count| {
        // SAFETY: `domain` is live; `points` is null with `count` 0, or points to `count`
        // valid NUL-terminated strings that outlive the call (owned by `with_mountpoints`).
        unsafe { sys::virDomainFSFreeze(domain.as_ptr(), points, count, 0) }
    })
}

/// `virDomainFSThaw`: thaws the guest's filesystems (all, or `mountpoints`); returns how many
/// were thawed (0 when nothing was frozen).
pub fn fs_thaw(domain: &Domain, mountpoints: &[String]) -> Result<u32, LibvirtError> {
    with_mountpoints("thaw guest filesystems", mountpoints, |points, count| {
        // SAFETY: as in `fs_freeze`.
        unsafe { sys::virDomainFSThaw(domain.as_ptr(), points, count, 0) }
    })
}

/// Whether a block job (copy, commit, mirror, pull) runs on the disk `target`.
pub fn block_job_active(domain: &Domain, target: &str) -> Result<bool, LibvirtError> {
    block_job_info(domain, target).map(|job| job.is_some())
}

/// A block job as `virDomainGetBlockJobInfo` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockJobInfo {
    /// `virDomainBlockJobType` (commit 3, active commit 4).
    pub kind: i32,
    /// Bytes done.
    pub cur: u64,
    /// Bytes to do (it grows while the guest writes).
    pub end: u64,
    /// The speed limit, bytes per second (0: none).
    pub bandwidth: u64,
}

/// `virDomainGetBlockJobInfo` with the bandwidth in bytes: the block job on the disk
/// `target`, if any.
pub fn block_job_info(domain: &Domain, target: &str) -> Result<Option<BlockJobInfo>, LibvirtError> {
    let disk = disk_name("read block job", target)?;
    let mut info = sys::virDomainBlockJobInfo {
        type_: 0,
        bandwidth: 0,
        cur: 0,
        end: 0,
    };
    // SAFETY: `domain` is live, `disk` is a valid NUL-terminated string and `info` a valid,
    // writable struct, all outliving the call.
    let rc = unsafe {
        sys::virDomainGetBlockJobInfo(
            domain.as_ptr(),
            disk.as_ptr(),
            &mut info,
            sys::VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES,
        )
    };
    let found = check("read block job", rc)?;
    Ok((found > 0).then_some(BlockJobInfo {
        kind: info.type_,
        cur: info.cur,
        end: info.end,
        bandwidth: info.bandwidth,
    }))
}

/// `virDomainBlockCommit` of the disk `target`: `top`'s data into `base` (both as the live
/// XML names them), keeping backing names relative; `active` for the disk's active layer
/// (a two-phase job that waits for a pivot). `bandwidth` in MiB/s, 0 for none.
pub fn block_commit(
    domain: &Domain,
    target: &str,
    base: &str,
    top: &str,
    bandwidth_mib: u64,
    active: bool,
) -> Result<(), LibvirtError> {
    let op = "start block commit";
    let disk = disk_name(op, target)?;
    let base = disk_name(op, base)?;
    let top = disk_name(op, top)?;
    let mut flags = sys::VIR_DOMAIN_BLOCK_COMMIT_RELATIVE;
    if active {
        flags |= sys::VIR_DOMAIN_BLOCK_COMMIT_ACTIVE;
    }
    let bandwidth = std::os::raw::c_ulong::try_from(bandwidth_mib).unwrap_or(0);
    // SAFETY: `domain` is live; the three strings are valid NUL-terminated strings owned by
    // this frame and outliving the call.
    let rc = unsafe {
        sys::virDomainBlockCommit(
            domain.as_ptr(),
            disk.as_ptr(),
            base.as_ptr(),
            top.as_ptr(),
            bandwidth,
            flags,
        )
    };
    check(op, rc).map(drop)
}

/// `virDomainBlockJobAbort` of the disk `target`'s job: with `pivot`, the disk switches to
/// the job's destination (an active commit's base); without, the job is cancelled.
pub fn block_job_abort(domain: &Domain, target: &str, pivot: bool) -> Result<(), LibvirtError> {
    let op = if pivot {
        "pivot block job"
    } else {
        "abort block job"
    };
    let disk = disk_name(op, target)?;
    let flags = if pivot {
        sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT
    } else {
        0
    };
    // SAFETY: `domain` is live and `disk` a valid NUL-terminated string outliving the call.
    let rc = unsafe { sys::virDomainBlockJobAbort(domain.as_ptr(), disk.as_ptr(), flags) };
    check(op, rc).map(drop)
}

fn disk_name(op: &'static str, name: &str) -> Result<CString, LibvirtError> {
    CString::new(name).map_err(|_| LibvirtError {
        op,
        code: 8, // VIR_ERR_INVALID_ARG
        message: "a disk name or path contains a NUL byte".into(),
    })
}

/// `virDomainGetJobStats`: `None` when no job runs on the domain, else the job's
/// `virDomainJobOperation` (-1 when libvirt does not say).
pub fn active_job_operation(domain: &Domain) -> Result<Option<i32>, LibvirtError> {
    let mut kind: i32 = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut nparams: i32 = 0;
    // SAFETY: `domain` is live; the three out-pointers point to valid locals; libvirt
    // allocates the parameter list (or leaves it null with a count of 0).
    let rc = unsafe {
        sys::virDomainGetJobStats(domain.as_ptr(), &mut kind, &mut params, &mut nparams, 0)
    };
    check("read domain job", rc)?;
    let mut operation: i32 = -1;
    // SAFETY: `params`/`nparams` are exactly what libvirt returned (null and 0 are accepted),
    // the name is a NUL-terminated literal, `operation` a valid out-pointer.
    let found = unsafe {
        sys::virTypedParamsGetInt(params, nparams, c"operation".as_ptr(), &mut operation)
    };
    // SAFETY: frees the list libvirt allocated above, once; null is accepted.
    unsafe { sys::virTypedParamsFree(params, nparams) };
    if kind == sys::VIR_DOMAIN_JOB_NONE as i32 {
        return Ok(None);
    }
    Ok(Some(if found == 1 { operation } else { -1 }))
}

/// `virDomainGetControlInfo`: whether a job holds the domain's monitor now
/// (`VIR_DOMAIN_CONTROL_JOB` or `_OCCUPIED`). Unlike the job calls it takes no job lock, so
/// it answers while a call on a stopped QEMU holds the domain.
pub fn monitor_held(domain: &Domain) -> Result<bool, LibvirtError> {
    let mut info = sys::virDomainControlInfo {
        state: 0,
        details: 0,
        stateTime: 0,
    };
    // SAFETY: `domain` is live and `info` a valid, writable struct outliving the call.
    let rc = unsafe { sys::virDomainGetControlInfo(domain.as_ptr(), &mut info, 0) };
    check("read domain control state", rc)?;
    Ok(info.state == sys::VIR_DOMAIN_CONTROL_JOB || info.state == sys::VIR_DOMAIN_CONTROL_OCCUPIED)
}

fn with_mountpoints(
    op: &'static str,
    mountpoints: &[String],
    call: impl FnOnce(*mut *const c_char, u32) -> i32,
) -> Result<u32, LibvirtError> {
    let owned: Vec<CString> = mountpoints
        .iter()
        .map(|m| CString::new(m.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| LibvirtError {
            op,
            code: 8, // VIR_ERR_INVALID_ARG
            message: "a mount point contains a NUL byte".into(),
        })?;
    let mut pointers: Vec<*const c_char> = owned.iter().map(|c| c.as_ptr()).collect();
    let (points, count) = if pointers.is_empty() {
        (std::ptr::null_mut(), 0)
    } else {
        (
            pointers.as_mut_ptr(),
            u32::try_from(pointers.len()).unwrap_or(u32::MAX),
        )
    };
    let rc = call(points, count);
    drop(owned);
    check(op, rc)
}

/// Called with (domain UUID, `virDomainEventType`, its detail) for each lifecycle event.
pub type LifecycleHandler = Box<dyn FnMut(uuid::Uuid, i32, i32) + Send>;

/// `virConnectDomainEventRegisterAny(VIR_DOMAIN_EVENT_ID_LIFECYCLE)` for every domain of
/// `conn`; returns the callback id. The handler runs on the thread that runs libvirt's event
/// loop and is freed by libvirt when the callback is deregistered or the connection closes.
pub fn register_lifecycle(
    conn: &virt::connect::Connect,
    handler: LifecycleHandler,
) -> Result<i32, LibvirtError> {
    let opaque = Box::into_raw(Box::new(handler)).cast::<c_void>();
    // SAFETY: libvirt calls a lifecycle callback with the five arguments of
    // `virConnectDomainEventCallback`, whatever type the registration takes; its own
    // VIR_DOMAIN_EVENT_CALLBACK macro casts function pointers exactly this way.
    let callback = unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(
                sys::virConnectPtr,
                sys::virDomainPtr,
                c_int,
                c_int,
                *mut c_void,
            ) -> c_int,
            GenericCallback,
        >(lifecycle_trampoline)
    };
    let event = sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int;
    register_event(conn, event, callback, opaque, free_lifecycle_handler)
}

/// The type `virConnectDomainEventRegisterAny` takes every callback as.
type GenericCallback = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

/// `virConnectDomainEventRegisterAny` of `callback` for `event` on every domain of `conn`;
/// libvirt frees `opaque` with `free` once the callback is gone. When the registration
/// fails, `opaque` is freed here, with `free`.
fn register_event(
    conn: &virt::connect::Connect,
    event: c_int,
    callback: GenericCallback,
    opaque: *mut c_void,
    free: unsafe extern "C" fn(*mut c_void),
) -> Result<i32, LibvirtError> {
    // SAFETY: `conn` is live for the call; `opaque` is a leaked box that libvirt hands back to
    // the callback and frees once through `free`.
    let id = unsafe {
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            event,
            Some(callback),
            opaque,
            Some(free),
        )
    };
    if id < 0 {
        let err = LibvirtError::libvirt(
            "register for domain events",
            virt::error::Error::last_error(),
        );
        // SAFETY: registration failed, so libvirt did not keep `opaque`: it is freed once,
        // here, by the function made for it.
        unsafe { free(opaque) };
        return Err(err);
    }
    Ok(id)
}

/// Called with (domain UUID, disk target, `virDomainBlockJobType`, `virConnectDomainEventBlockJobStatus`)
/// for each block job event.
pub type BlockJobHandler = Box<dyn FnMut(uuid::Uuid, String, i32, i32) + Send>;

/// `virConnectDomainEventRegisterAny(VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2)` for every domain of
/// `conn` (the disk named by its target, `vda`); returns the callback id. As
/// [`register_lifecycle`] for the handler's thread and lifetime.
pub fn register_block_job(
    conn: &virt::connect::Connect,
    handler: BlockJobHandler,
) -> Result<i32, LibvirtError> {
    let opaque = Box::into_raw(Box::new(handler)).cast::<c_void>();
    // SAFETY: libvirt calls a block job callback with the six arguments of
    // `virConnectDomainEventBlockJobCallback`; the registration takes the generic type, cast
    // as libvirt's VIR_DOMAIN_EVENT_CALLBACK macro does.
    let callback = unsafe {
        std::mem::transmute::<
            unsafe extern "C" fn(
                sys::virConnectPtr,
                sys::virDomainPtr,
                *const c_char,
                c_int,
                c_int,
                *mut c_void,
            ),
            GenericCallback,
        >(block_job_trampoline)
    };
    let event = sys::VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2 as c_int;
    register_event(conn, event, callback, opaque, free_block_job_handler)
}

unsafe extern "C" fn block_job_trampoline(
    _conn: sys::virConnectPtr,
    domain: sys::virDomainPtr,
    disk: *const c_char,
    kind: c_int,
    status: c_int,
    opaque: *mut c_void,
) {
    let Some(uuid) = domain_uuid(domain) else {
        return;
    };
    if disk.is_null() {
        return;
    }
    // SAFETY: libvirt passes the disk's target as a NUL-terminated string valid for the call.
    let disk = unsafe { std::ffi::CStr::from_ptr(disk) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: `opaque` is the handler registered with this callback; libvirt frees it only
    // after the callback can no longer run, and calls it from one thread at a time.
    let handler = unsafe { &mut *opaque.cast::<BlockJobHandler>() };
    // A panic must not unwind into libvirt's C frames.
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler(uuid, disk, kind, status);
    }))
    .is_err()
    {
        tracing::error!("block job event handler panicked");
    }
}

unsafe extern "C" fn free_block_job_handler(opaque: *mut c_void) {
    // SAFETY: libvirt calls this once, with the pointer `register_block_job` leaked.
    drop(unsafe { Box::from_raw(opaque.cast::<BlockJobHandler>()) });
}

/// Undoes [`register_lifecycle`] or [`register_block_job`].
pub fn deregister_event(conn: &virt::connect::Connect, id: i32) -> Result<(), LibvirtError> {
    // SAFETY: `conn` is live; an unknown id is reported by libvirt as an error, not UB.
    let rc = unsafe { sys::virConnectDomainEventDeregisterAny(conn.as_ptr(), id) };
    check("deregister domain events", rc).map(|_| ())
}

unsafe extern "C" fn lifecycle_trampoline(
    _conn: sys::virConnectPtr,
    domain: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    let Some(uuid) = domain_uuid(domain) else {
        return 0;
    };
    // SAFETY: `opaque` is the handler registered with this callback; libvirt frees it only
    // after the callback can no longer run, and calls it from one thread at a time.
    let handler = unsafe { &mut *opaque.cast::<LifecycleHandler>() };
    // A panic must not unwind into libvirt's C frames.
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler(uuid, event, detail);
    }))
    .is_err()
    {
        tracing::error!("domain event handler panicked");
    }
    0
}

unsafe extern "C" fn free_lifecycle_handler(opaque: *mut c_void) {
    // SAFETY: libvirt calls this once, with the pointer `register_lifecycle` leaked.
    drop(unsafe { Box::from_raw(opaque.cast::<LifecycleHandler>()) });
}

/// A libvirt return code: non-negative is success; else libvirt's last error on this thread.
fn check(op: &'static str, rc: i32) -> Result<u32, LibvirtError> {
    u32::try_from(rc).map_err(|_| LibvirtError::libvirt(op, virt::error::Error::last_error()))
}

/// One typed value of libvirt's bulk domain statistics.
#[derive(Debug, Clone, PartialEq)]
pub enum StatValue {
    /// A signed integer (`int` or `long long`).
    Int(i64),
    /// An unsigned integer (`unsigned int` or `unsigned long long`).
    UInt(u64),
    /// A floating point number.
    Double(f64),
    /// A boolean.
    Bool(bool),
    /// A string (names, paths).
    Str(String),
}

/// The statistics of one domain, as `(field, value)` pairs in libvirt's order.
pub type DomainStatsRecord = (uuid::Uuid, Vec<(String, StatValue)>);

/// `virConnectGetAllDomainStats`: the statistics groups `stats` (`VIR_DOMAIN_STATS_*`) of
/// every domain selected by `flags`, in one call. The `virt` crate declares the record type
/// but cannot read it.
pub fn all_domain_stats(
    conn: &virt::connect::Connect,
    stats: u32,
    flags: u32,
) -> Result<Vec<DomainStatsRecord>, LibvirtError> {
    let mut records: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
    // SAFETY: `conn` is live for the call and `records` a valid out-pointer; libvirt allocates
    // a NULL-terminated array of records (freed below) or leaves it untouched on failure.
    let rc = unsafe { sys::virConnectGetAllDomainStats(conn.as_ptr(), stats, &mut records, flags) };
    let count = check("read domain statistics", rc)? as usize;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: libvirt returned `count` valid record pointers at `records`.
        let record = unsafe { &**records.add(i) };
        if let Some(uuid) = domain_uuid(record.dom) {
            let n = usize::try_from(record.nparams).unwrap_or(0);
            let params = (0..n)
                // SAFETY: `params` holds `nparams` initialised entries owned by the record.
                .filter_map(|j| typed_param(unsafe { &*record.params.add(j) }))
                .collect();
            out.push((uuid, params));
        }
    }
    if !records.is_null() {
        // SAFETY: frees the list libvirt allocated above, once, after the last read of it.
        unsafe { sys::virDomainStatsRecordListFree(records) };
    }
    Ok(out)
}

/// A domain pointer's UUID, through libvirt's string form; the pointer must be valid for the
/// call (a live record's or an event callback's domain).
fn domain_uuid(domain: sys::virDomainPtr) -> Option<uuid::Uuid> {
    let mut buf = [0 as c_char; sys::VIR_UUID_STRING_BUFLEN as usize];
    // SAFETY: `domain` is valid while its record lives; `buf` has the VIR_UUID_STRING_BUFLEN
    // bytes libvirt writes.
    if unsafe { sys::virDomainGetUUIDString(domain, buf.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: libvirt NUL-terminated the string it wrote into `buf`.
    let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    text.to_str()
        .ok()
        .and_then(|t| uuid::Uuid::parse_str(t).ok())
}

/// One typed parameter as a `(field, value)` pair; `None` for a type libvirt added later.
fn typed_param(param: &sys::virTypedParameter) -> Option<(String, StatValue)> {
    // SAFETY: libvirt NUL-terminates `field` within its 80 bytes.
    let field = unsafe { std::ffi::CStr::from_ptr(param.field.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let kind = u32::try_from(param.type_).ok()?;
    // SAFETY: `type_` says which member of the union libvirt wrote; a string member is a
    // NUL-terminated string owned by the record, or null.
    let value = unsafe {
        match kind {
            sys::VIR_TYPED_PARAM_INT => StatValue::Int(i64::from(param.value.i)),
            sys::VIR_TYPED_PARAM_UINT => StatValue::UInt(u64::from(param.value.ui)),
            sys::VIR_TYPED_PARAM_LLONG => StatValue::Int(param.value.l),
            sys::VIR_TYPED_PARAM_ULLONG => StatValue::UInt(param.value.ul),
            sys::VIR_TYPED_PARAM_DOUBLE => StatValue::Double(param.value.d),
            sys::VIR_TYPED_PARAM_BOOLEAN => StatValue::Bool(param.value.b != 0),
            sys::VIR_TYPED_PARAM_STRING if !param.value.s.is_null() => StatValue::Str(
                std::ffi::CStr::from_ptr(param.value.s)
                    .to_string_lossy()
                    .into_owned(),
            ),
            _ => return None,
        }
    };
    Some((field, value))
}
