//! The calls of libsanlock_client that rvdsm needs, with safe wrappers: registering the daemon
//! with sanlock, joining and leaving lockspaces, formatting lockspaces and resources on disk,
//! acquiring and releasing resource leases, and reading who holds a lease and which hosts are
//! alive. No crate binds libsanlock; the declarations follow `sanlock.h`, `sanlock_admin.h` and
//! `sanlock_resource.h` of sanlock 3.8. The client library talks to the local sanlock daemon
//! over its socket (in `SANLOCK_RUN_DIR`, default `/run/sanlock`); every call blocks and must
//! run off the async reactor.
//!
//! Lease names are at most 48 bytes and need no terminating NUL on disk; paths at most 1023.

//!
//! - `ffi`: the C declarations;
//! - `error`: [`SanlockError`] and the codes callers decide on;
//! - this file: the safe types and calls.

mod error;
mod ffi;

pub use error::{SanlockError, code};

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use error::check;
use ffi::*;

/// Longest lockspace or resource name.
pub const NAME_LEN: usize = ffi::NAME_LEN;

/// The sector size a lease area is written with; the alignment is always 1 MiB, as VDSM's file
/// domains use (2000 hosts at 512 bytes, 250 at 4 KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sector {
    /// 512-byte sectors.
    B512,
    /// 4 KiB sectors.
    B4K,
}

impl Sector {
    /// The sector size of a domain with this block size.
    pub fn of_block_size(block_size: u32) -> Self {
        if block_size == 4096 {
            Self::B4K
        } else {
            Self::B512
        }
    }

    fn flags(self) -> u32 {
        ALIGN1M
            | match self {
                Self::B512 => SECTOR512,
                Self::B4K => SECTOR4K,
            }
    }
}

/// Where a lease lives: a file (or device) and an offset in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The file.
    pub path: PathBuf,
    /// The offset of the lease area in it, aligned.
    pub offset: u64,
}

/// A lockspace: one delta lease per host id, on `disk`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockspace {
    /// Its name (VDSM: the domain's UUID).
    pub name: String,
    /// This host's id in it, 1 to 2000 (0 when only formatting).
    pub host_id: u64,
    /// Its area.
    pub disk: Disk,
}

/// A resource (paxos) lease in a lockspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The lockspace it belongs to.
    pub lockspace: String,
    /// Its name (VDSM: `SDM`, or the volume's UUID).
    pub name: String,
    /// Its area.
    pub disk: Disk,
}

/// What sanlock knows of a host in a lockspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    /// Its host id.
    pub id: u64,
    /// The generation of its delta lease (bumped at each join).
    pub generation: u64,
    /// The timestamp of its last renewal, as written to disk.
    pub timestamp: u64,
    /// Its io_timeout, seconds.
    pub io_timeout: u32,
    /// Its state as this host's daemon judges it.
    pub state: HostState,
}

/// A host's state in a lockspace (`SANLK_HOST_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// Not watched long enough to say.
    Unknown,
    /// Its delta lease is not held.
    Free,
    /// It renews its lease.
    Live,
    /// It stopped renewing and may be killing its holders.
    Fail,
    /// Its watchdog has fired: its leases can be taken.
    Dead,
}

impl HostState {
    fn from_flags(flags: u32) -> Self {
        match flags & HOST_MASK {
            2 => Self::Free,
            3 => Self::Live,
            4 => Self::Fail,
            5 => Self::Dead,
            _ => Self::Unknown,
        }
    }
}

fn c_name(op: &'static str, name: &str) -> Result<[c_char; NAME_LEN], SanlockError> {
    if name.is_empty() || name.len() > NAME_LEN || name.bytes().any(|b| b == 0 || b == b':') {
        return Err(SanlockError::invalid(
            op,
            format!("lease name {name:?}: 1 to {NAME_LEN} bytes, no NUL or colon"),
        ));
    }
    let mut out = [0 as c_char; NAME_LEN];
    for (slot, byte) in out.iter_mut().zip(name.bytes()) {
        *slot = byte as c_char;
    }
    Ok(out)
}

fn raw_disk(op: &'static str, disk: &Disk) -> Result<RawDisk, SanlockError> {
    let bytes = disk.path.as_os_str().as_bytes();
    if bytes.is_empty() || bytes.len() >= PATH_LEN || bytes.contains(&0) {
        return Err(SanlockError::invalid(
            op,
            format!(
                "lease path {}: 1 to {} bytes",
                disk.path.display(),
                PATH_LEN - 1
            ),
        ));
    }
    let mut path = [0 as c_char; PATH_LEN];
    for (slot, byte) in path.iter_mut().zip(bytes) {
        *slot = *byte as c_char;
    }
    Ok(RawDisk {
        path,
        offset: disk.offset,
        pad1: 0,
        pad2: 0,
    })
}

impl Lockspace {
    fn raw(&self, op: &'static str) -> Result<RawLockspace, SanlockError> {
        Ok(RawLockspace {
            name: c_name(op, &self.name)?,
            host_id: self.host_id,
            flags: 0,
            host_id_disk: raw_disk(op, &self.disk)?,
        })
    }

    /// Formats the lockspace's area (every host's delta lease free).
    pub fn format(&self, sector: Sector, io_timeout: u32) -> Result<(), SanlockError> {
        let op = "write lockspace";
        let mut raw = self.raw(op)?;
        raw.flags = sector.flags();
        // SAFETY: `raw` is a valid, fully initialised sanlk_lockspace that outlives the call.
        check(op, unsafe {
            sanlock_write_lockspace(&mut raw, 0, 0, io_timeout)
        })
        .map(drop)
    }

    /// Joins the lockspace with `host_id` (acquires its delta lease). Without `wait`, returns
    /// once the join has begun; [`Lockspace::joined`] says when it is done. A join takes
    /// about 2 × io_timeout + a few seconds when the host id was free.
    pub fn join(&self, io_timeout: u32, wait: bool) -> Result<(), SanlockError> {
        let op = "add lockspace";
        let mut raw = self.raw(op)?;
        let flags = if wait { 0 } else { ADD_ASYNC };
        // SAFETY: `raw` is a valid sanlk_lockspace that outlives the call.
        check(op, unsafe {
            sanlock_add_lockspace_timeout(&mut raw, flags, io_timeout)
        })
        .map(drop)
    }

    /// Whether this host holds its delta lease in the lockspace now: `Some(true)` joined,
    /// `Some(false)` still joining, `None` not joined (never, or lost).
    pub fn joined(&self) -> Result<Option<bool>, SanlockError> {
        let op = "inquire lockspace";
        let mut raw = self.raw(op)?;
        // SAFETY: `raw` is a valid sanlk_lockspace that outlives the call.
        match unsafe { sanlock_inq_lockspace(&mut raw, 0) } {
            0 => Ok(Some(true)),
            code::EINPROGRESS => Ok(Some(false)),
            code::ENOENT => Ok(None),
            rc => Err(SanlockError::new(op, rc)),
        }
    }

    /// Leaves the lockspace (releases the delta lease). With `only_unused`, refused (EBUSY)
    /// while resources of it are held; without, sanlock kills the processes holding them.
    pub fn leave(&self, only_unused: bool) -> Result<(), SanlockError> {
        let op = "remove lockspace";
        let mut raw = self.raw(op)?;
        let flags = if only_unused { REM_UNUSED } else { 0 };
        // SAFETY: `raw` is a valid sanlk_lockspace that outlives the call.
        match unsafe { sanlock_rem_lockspace(&mut raw, flags) } {
            0 | code::ENOENT => Ok(()),
            rc => Err(SanlockError::new(op, rc)),
        }
    }

    /// The hosts seen in the lockspace (`host_id` 0: every host seen alive; else that one).
    /// Right after a join the daemon has not watched the hosts long enough: `EAGAIN`.
    pub fn hosts(&self, host_id: u64) -> Result<Vec<Host>, SanlockError> {
        let op = "get hosts";
        let name = CString::new(self.name.as_str())
            .map_err(|_| SanlockError::invalid(op, "NUL in lockspace name".into()))?;
        let mut hosts: *mut RawHost = std::ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: `name` is NUL-terminated and outlives the call; sanlock writes a malloc'd
        // array and its length to the two out-pointers, which point to live locals.
        let rc = unsafe { sanlock_get_hosts(name.as_ptr(), host_id, &mut hosts, &mut count, 0) };
        // SAFETY: on success `hosts` is null or a malloc'd array of `count` hosts.
        let hosts = unsafe { take_hosts(hosts, count) };
        check(op, rc)?;
        Ok(hosts)
    }
}

/// Copies and frees a host array sanlock allocated.
///
/// # Safety
/// `hosts` is null or a `malloc`ed array of at least `count` initialised hosts, not used after.
unsafe fn take_hosts(hosts: *mut RawHost, count: c_int) -> Vec<Host> {
    if hosts.is_null() {
        return Vec::new();
    }
    let len = usize::try_from(count).unwrap_or(0);
    // SAFETY: the caller guarantees `count` initialised hosts at `hosts`.
    let out = unsafe { std::slice::from_raw_parts(hosts, len) }
        .iter()
        .map(|h| Host {
            id: h.host_id,
            generation: h.generation,
            timestamp: h.timestamp,
            io_timeout: h.io_timeout,
            state: HostState::from_flags(h.flags),
        })
        .collect();
    // SAFETY: allocated by sanlock with malloc, freed once here.
    unsafe { nix::libc::free(hosts.cast()) };
    out
}

impl Resource {
    fn raw(&self, op: &'static str) -> Result<RawResourceOneDisk, SanlockError> {
        Ok(RawResourceOneDisk {
            resource: RawResource {
                lockspace_name: c_name(op, &self.lockspace)?,
                name: c_name(op, &self.name)?,
                lver: 0,
                data64: 0,
                data32: 0,
                unused: 0,
                flags: 0,
                num_disks: 1,
            },
            disk: raw_disk(op, &self.disk)?,
        })
    }

    /// Formats the lease's area: free, version 0.
    pub fn format(&self, sector: Sector) -> Result<(), SanlockError> {
        let op = "write resource";
        let mut raw = self.raw(op)?;
        raw.resource.flags = sector.flags();
        // SAFETY: `raw` is a sanlk_resource followed by its one disk, as `num_disks` says; it
        // outlives the call.
        check(op, unsafe {
            sanlock_write_resource(&mut raw.resource, 0, 0, 0)
        })
        .map(drop)
    }

    /// Clears the lease's area: a later read or acquire finds no lease there
    /// (`SANLK_WRITE_CLEAR`).
    pub fn clear(&self, sector: Sector) -> Result<(), SanlockError> {
        let op = "clear resource";
        let mut raw = self.raw(op)?;
        raw.resource.flags = sector.flags();
        // SAFETY: as in `format`.
        check(op, unsafe {
            sanlock_write_resource(&mut raw.resource, 0, 0, WRITE_CLEAR)
        })
        .map(drop)
    }

    /// The lease's version on disk (bumped at each acquire).
    pub fn version(&self) -> Result<u64, SanlockError> {
        let op = "read resource";
        let mut raw = self.raw(op)?;
        // SAFETY: as in `format`; sanlock fills the resource's fields in place.
        check(op, unsafe { sanlock_read_resource(&mut raw.resource, 0) })?;
        Ok(raw.resource.lver)
    }

    /// The hosts holding the lease now, as its area says (empty when free).
    pub fn owners(&self) -> Result<Vec<Host>, SanlockError> {
        let op = "read resource owners";
        let mut raw = self.raw(op)?;
        let mut hosts: *mut RawHost = std::ptr::null_mut();
        let mut count: c_int = 0;
        // SAFETY: as in `format`; the out-pointers point to live locals and receive a malloc'd
        // array and its length.
        let rc =
            unsafe { sanlock_read_resource_owners(&mut raw.resource, 0, &mut hosts, &mut count) };
        // SAFETY: on success `hosts` is null or a malloc'd array of `count` hosts.
        let hosts = unsafe { take_hosts(hosts, count) };
        check(op, rc)?;
        Ok(hosts)
    }
}

/// This process registered with the local sanlock daemon: the leases it acquires are held for
/// it, and released by the daemon when the registration's socket closes (the process ended or
/// dropped it). When the lockspace of a held lease fails, the daemon kills the process.
#[derive(Debug)]
pub struct Registration {
    socket: OwnedFd,
}

impl Registration {
    /// Registers with the daemon.
    pub fn new() -> Result<Self, SanlockError> {
        // SAFETY: no arguments; returns a new socket descriptor or a negative code.
        let fd = check("register", unsafe { sanlock_register() })?;
        // SAFETY: `fd` was just returned by sanlock for this process; nothing else owns it.
        let socket = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Self { socket })
    }

    fn fd(&self) -> c_int {
        use std::os::fd::AsRawFd;
        self.socket.as_raw_fd()
    }

    /// Acquires `resource` for this process, failing at once if another host holds it
    /// ([`SanlockError::is_held_elsewhere`]), also when that host is failing and its lease
    /// must expire first (sanlock's OWNER_NOWAIT: the call never waits for an expiry). With
    /// `version`, only if the lease is at that version (nobody acquired it since). `EEXIST`:
    /// this process holds it already.
    pub fn acquire(&self, resource: &Resource, version: Option<u64>) -> Result<(), SanlockError> {
        let op = "acquire";
        let mut raw = resource.raw(op)?;
        if let Some(lver) = version {
            raw.resource.lver = lver;
            raw.resource.flags |= RES_LVER;
        }
        let mut args = [&mut raw.resource as *mut RawResource];
        // SAFETY: `args` holds one pointer to a sanlk_resource followed by its one disk; both
        // outlive the call; no options.
        check(op, unsafe {
            sanlock_acquire(
                self.fd(),
                -1,
                ACQUIRE_OWNER_NOWAIT,
                1,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        })
        .map(drop)
    }

    /// Releases `resource`, held by this process.
    pub fn release(&self, resource: &Resource) -> Result<(), SanlockError> {
        let op = "release";
        let mut raw = resource.raw(op)?;
        let mut args = [&mut raw.resource as *mut RawResource];
        // SAFETY: as in `acquire`.
        check(op, unsafe {
            sanlock_release(self.fd(), -1, 0, 1, args.as_mut_ptr())
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_sanlock_h() {
        assert_eq!(std::mem::size_of::<RawDisk>(), 1040);
        assert_eq!(std::mem::size_of::<RawResource>(), 128);
        assert_eq!(std::mem::offset_of!(RawResourceOneDisk, disk), 128);
        assert_eq!(std::mem::offset_of!(RawLockspace, host_id_disk), 64);
        assert_eq!(std::mem::size_of::<RawHost>(), 32);
    }

    #[test]
    fn names_are_checked_before_any_call() {
        assert!(c_name("t", "SDM").is_ok());
        assert!(c_name("t", &"a".repeat(48)).is_ok());
        for bad in ["", "a:b", "a\0b"] {
            assert_eq!(c_name("t", bad).unwrap_err().code, -22, "{bad:?}");
        }
        assert!(c_name("t", &"a".repeat(49)).is_err());
        let long = Disk {
            path: PathBuf::from("/".repeat(1024)),
            offset: 0,
        };
        assert!(raw_disk("t", &long).is_err());
    }

    #[test]
    fn errors_carry_sanlock_s_words() {
        let err = SanlockError::new("acquire", code::ACQUIRE_IDLIVE);
        assert!(err.is_held_elsewhere());
        assert!(!err.message.is_empty());
        assert!(!SanlockError::new("acquire", code::ENOENT).is_held_elsewhere());
        let errno = SanlockError::new("get hosts", code::EAGAIN);
        assert!(errno.message.contains("temporarily unavailable"), "{errno}");
    }

    #[test]
    fn host_states_from_flags() {
        assert_eq!(HostState::from_flags(0x13), HostState::Live);
        assert_eq!(HostState::from_flags(5), HostState::Dead);
        assert_eq!(HostState::from_flags(0), HostState::Unknown);
    }

    #[test]
    fn sector_follows_the_domain_s_block_size() {
        assert_eq!(Sector::of_block_size(512), Sector::B512);
        assert_eq!(Sector::of_block_size(4096), Sector::B4K);
        assert_eq!(Sector::B4K.flags(), 0x210);
    }
}
