//! The libvirt calls the `virt` crate lacks (or gets wrong), wrapped once each. This is the
//! only module with `unsafe`: each block calls one libvirt function on a live handle and reads
//! libvirt's thread-local error on the same thread right after, as libvirt requires.
//!
//! `virt` 0.5's `Domain::job_stats` builds a `Vec` from libvirt's null parameter list when no
//! job runs, which aborts the process; [`active_job_operation`] replaces it.

use std::ffi::CString;
use std::os::raw::c_char;

use virt::domain::Domain;
use virt::sys;

use super::error::VirtError;

/// `virDomainAgentSetResponseTimeout`: how long libvirt waits for the guest agent (its default
/// waits forever, and a hung agent then holds the domain's agent lock).
pub fn set_agent_timeout(domain: &Domain, seconds: i32) -> Result<(), VirtError> {
    // SAFETY: `domain` is a live handle owned by the caller for the duration of the call; the
    // call takes no pointers besides it.
    let rc = unsafe { sys::virDomainAgentSetResponseTimeout(domain.as_ptr(), seconds, 0) };
    check("set agent timeout", rc).map(|_| ())
}

/// `virDomainFSFreeze`: freezes the guest's filesystems (all, or `mountpoints`) through the
/// agent; returns how many were frozen.
pub fn fs_freeze(domain: &Domain, mountpoints: &[String]) -> Result<u32, VirtError> {
    with_mountpoints("freeze guest filesystems", mountpoints, |points, count| {
        // SAFETY: `domain` is live; `points` is null with `count` 0, or points to `count`
        // valid NUL-terminated strings that outlive the call (owned by `with_mountpoints`).
        unsafe { sys::virDomainFSFreeze(domain.as_ptr(), points, count, 0) }
    })
}

/// `virDomainFSThaw`: thaws the guest's filesystems (all, or `mountpoints`); returns how many
/// were thawed (0 when nothing was frozen).
pub fn fs_thaw(domain: &Domain, mountpoints: &[String]) -> Result<u32, VirtError> {
    with_mountpoints("thaw guest filesystems", mountpoints, |points, count| {
        // SAFETY: as in `fs_freeze`.
        unsafe { sys::virDomainFSThaw(domain.as_ptr(), points, count, 0) }
    })
}

/// `virDomainGetBlockJobInfo`: whether a block job (copy, commit, mirror, pull) runs on the
/// disk `target`.
pub fn block_job_active(domain: &Domain, target: &str) -> Result<bool, VirtError> {
    let disk = CString::new(target).map_err(|_| VirtError::Libvirt {
        op: "read block job",
        code: 8, // VIR_ERR_INVALID_ARG
        message: "a disk name contains a NUL byte".into(),
    })?;
    let mut info = sys::virDomainBlockJobInfo {
        type_: 0,
        bandwidth: 0,
        cur: 0,
        end: 0,
    };
    // SAFETY: `domain` is live, `disk` is a valid NUL-terminated string and `info` a valid,
    // writable struct, all outliving the call.
    let rc = unsafe { sys::virDomainGetBlockJobInfo(domain.as_ptr(), disk.as_ptr(), &mut info, 0) };
    check("read block job", rc).map(|found| found > 0)
}

/// `virDomainGetJobStats`: `None` when no job runs on the domain, else the job's
/// `virDomainJobOperation` (-1 when libvirt does not say).
pub fn active_job_operation(domain: &Domain) -> Result<Option<i32>, VirtError> {
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

fn with_mountpoints(
    op: &'static str,
    mountpoints: &[String],
    call: impl FnOnce(*mut *const c_char, u32) -> i32,
) -> Result<u32, VirtError> {
    let owned: Vec<CString> = mountpoints
        .iter()
        .map(|m| CString::new(m.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| VirtError::Libvirt {
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

/// A libvirt return code: non-negative is success; else libvirt's last error on this thread.
fn check(op: &'static str, rc: i32) -> Result<u32, VirtError> {
    u32::try_from(rc).map_err(|_| VirtError::libvirt(op, virt::error::Error::last_error()))
}
