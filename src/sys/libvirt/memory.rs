//! The libvirt calls of saving a guest's RAM that the `virt` crate lacks: a save
//! (hibernation), the abort of a running save or dump, the completed job's downtime, and a
//! lifecycle event registration undone on drop (to time the guest's pause during a call).

use std::ffi::CString;

use virt::domain::Domain;
use virt::sys;

use super::{LibvirtError, LifecycleHandler, check, deregister_event, register_lifecycle};

/// `virDomainGetJobStats(VIR_DOMAIN_JOB_STATS_COMPLETED)`: the last completed job's
/// `downtime` (milliseconds the guest stood still for its final copy, as QEMU measures it),
/// when libvirt kept one.
pub fn completed_job_downtime(domain: &Domain) -> Result<Option<u64>, LibvirtError> {
    let mut kind: i32 = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut nparams: i32 = 0;
    // SAFETY: as in `active_job_operation`: live domain, valid out-pointers, libvirt
    // allocates the list.
    let rc = unsafe {
        sys::virDomainGetJobStats(
            domain.as_ptr(),
            &mut kind,
            &mut params,
            &mut nparams,
            // Kept for others to read too (a monitor, `virsh domjobinfo --completed`).
            sys::VIR_DOMAIN_JOB_STATS_COMPLETED | sys::VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED,
        )
    };
    check("read the completed job", rc)?;
    let mut downtime: u64 = 0;
    // SAFETY: `params`/`nparams` as libvirt returned them; a NUL-terminated literal name; a
    // valid out-pointer.
    let found = unsafe {
        sys::virTypedParamsGetULLong(params, nparams, c"downtime".as_ptr(), &mut downtime)
    };
    // SAFETY: frees the list libvirt allocated above, once; null is accepted.
    unsafe { sys::virTypedParamsFree(params, nparams) };
    Ok((found == 1).then_some(downtime))
}

/// `virDomainSaveFlags`: the guest's RAM and device state into `path` (libvirt's save image,
/// the domain's XML in its header); the domain stops once saved.
pub fn save(domain: &Domain, path: &str, flags: u32) -> Result<(), LibvirtError> {
    let path = CString::new(path).map_err(|_| LibvirtError {
        op: "save the domain",
        code: 8, // VIR_ERR_INVALID_ARG
        message: "the save path contains a NUL byte".into(),
    })?;
    // SAFETY: `domain` is live, `path` a NUL-terminated string outliving the call; a null
    // `dxml` asks libvirt for the domain's own XML.
    let rc =
        unsafe { sys::virDomainSaveFlags(domain.as_ptr(), path.as_ptr(), std::ptr::null(), flags) };
    check("save the domain", rc).map(|_| ())
}

/// `virDomainAbortJob`: stops the domain's running async job (a save, a snapshot's dump);
/// libvirt undoes what that job began.
pub fn abort_job(domain: &Domain) -> Result<(), LibvirtError> {
    // SAFETY: `domain` is live for the call.
    let rc = unsafe { sys::virDomainAbortJob(domain.as_ptr()) };
    check("abort the domain's job", rc).map(|_| ())
}

/// Registers `handler` for the lifecycle events of every domain of `conn` (see
/// [`register_lifecycle`]) and deregisters it when the returned guard drops.
pub fn lifecycle_guard<'c>(
    conn: &'c virt::connect::Connect,
    handler: LifecycleHandler,
) -> Result<EventGuard<'c>, LibvirtError> {
    let id = register_lifecycle(conn, handler)?;
    Ok(EventGuard { conn, id })
}

/// An event registration undone on drop.
pub struct EventGuard<'c> {
    conn: &'c virt::connect::Connect,
    id: i32,
}

impl Drop for EventGuard<'_> {
    fn drop(&mut self) {
        if let Err(err) = deregister_event(self.conn, self.id) {
            tracing::debug!(error = %err, "cannot deregister a domain event callback");
        }
    }
}
