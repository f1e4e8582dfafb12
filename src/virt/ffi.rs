//! The libvirt calls the `virt` crate lacks, wrapped once each. This is the only module with
//! `unsafe`: each block calls one libvirt function on a live handle and reads libvirt's
//! thread-local error on the same thread right after, as libvirt requires.

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
