//! The C side of libsanlock_client: its constants, the layouts of its structures and its
//! functions, as `sanlock.h`, `sanlock_admin.h` and `sanlock_resource.h` of sanlock 3.8 declare
//! them. Nothing here is safe to call directly: the wrappers in the parent module are.

use std::os::raw::{c_char, c_int};

/// Longest lockspace or resource name (the parent re-exports it).
pub(super) const NAME_LEN: usize = 48;
pub(super) const PATH_LEN: usize = 1024;

pub(super) const RES_LVER: u32 = 0x1;
pub(super) const ACQUIRE_OWNER_NOWAIT: u32 = 0x8;
pub(super) const ALIGN1M: u32 = 0x10;
/// `SANLK_WRITE_CLEAR`: the written area reads as no lease.
pub(super) const WRITE_CLEAR: u32 = 0x1;
pub(super) const SECTOR512: u32 = 0x100;
pub(super) const SECTOR4K: u32 = 0x200;
pub(super) const ADD_ASYNC: u32 = 0x1;
pub(super) const REM_UNUSED: u32 = 0x2;
pub(super) const HOST_MASK: u32 = 0xf;
/// sanlock's own return codes are -201 and below; above are negative errnos.
pub(super) const SANLOCK_OWN_CODES: c_int = -200;

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RawDisk {
    pub(super) path: [c_char; PATH_LEN],
    pub(super) offset: u64,
    pub(super) pad1: u32,
    pub(super) pad2: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RawResource {
    pub(super) lockspace_name: [c_char; NAME_LEN],
    pub(super) name: [c_char; NAME_LEN],
    pub(super) lver: u64,
    pub(super) data64: u64,
    pub(super) data32: u32,
    pub(super) unused: u32,
    pub(super) flags: u32,
    pub(super) num_disks: u32,
    // A flexible array of `num_disks` disks follows in C.
}

/// `struct sanlk_resource` followed by its one disk, as C lays a flexible array out.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RawResourceOneDisk {
    pub(super) resource: RawResource,
    pub(super) disk: RawDisk,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RawLockspace {
    pub(super) name: [c_char; NAME_LEN],
    pub(super) host_id: u64,
    pub(super) flags: u32,
    pub(super) host_id_disk: RawDisk,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RawHost {
    pub(super) host_id: u64,
    pub(super) generation: u64,
    pub(super) timestamp: u64,
    pub(super) io_timeout: u32,
    pub(super) flags: u32,
}

#[link(name = "sanlock_client")]
unsafe extern "C" {
    pub(super) fn sanlock_register() -> c_int;
    pub(super) fn sanlock_acquire(
        sock: c_int,
        pid: c_int,
        flags: u32,
        res_count: c_int,
        res_args: *mut *mut RawResource,
        opt_in: *mut std::ffi::c_void,
    ) -> c_int;
    pub(super) fn sanlock_release(
        sock: c_int,
        pid: c_int,
        flags: u32,
        res_count: c_int,
        res_args: *mut *mut RawResource,
    ) -> c_int;
    pub(super) fn sanlock_add_lockspace_timeout(
        ls: *mut RawLockspace,
        flags: u32,
        io_timeout: u32,
    ) -> c_int;
    pub(super) fn sanlock_inq_lockspace(ls: *mut RawLockspace, flags: u32) -> c_int;
    pub(super) fn sanlock_rem_lockspace(ls: *mut RawLockspace, flags: u32) -> c_int;
    pub(super) fn sanlock_write_lockspace(
        ls: *mut RawLockspace,
        max_hosts: c_int,
        flags: u32,
        io_timeout: u32,
    ) -> c_int;
    pub(super) fn sanlock_write_resource(
        res: *mut RawResource,
        max_hosts: c_int,
        num_hosts: c_int,
        flags: u32,
    ) -> c_int;
    pub(super) fn sanlock_read_resource(res: *mut RawResource, flags: u32) -> c_int;
    pub(super) fn sanlock_read_resource_owners(
        res: *mut RawResource,
        flags: u32,
        hss: *mut *mut RawHost,
        hss_count: *mut c_int,
    ) -> c_int;
    pub(super) fn sanlock_get_hosts(
        ls_name: *const c_char,
        host_id: u64,
        hss: *mut *mut RawHost,
        hss_count: *mut c_int,
        flags: u32,
    ) -> c_int;
    pub(super) fn sanlock_strerror(rv: c_int) -> *const c_char;
}
