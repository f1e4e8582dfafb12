//! A failed sanlock call, with the codes callers decide on.

use std::ffi::CStr;
use std::os::raw::c_int;

use super::ffi::{SANLOCK_OWN_CODES, sanlock_strerror};

/// A failed sanlock call: which, and the code it returned (a negative errno, or one of
/// sanlock's own codes from -201 down).
#[derive(Debug, Clone, thiserror::Error)]
#[error("sanlock {op}: {message} ({code})")]
pub struct SanlockError {
    /// The call.
    pub op: &'static str,
    /// Its return code.
    pub code: i32,
    /// sanlock's words for the code.
    pub message: String,
}

/// Return codes a caller decides on.
pub mod code {
    /// The lockspace already exists (add).
    pub const EEXIST: i32 = -17;
    /// The lockspace is being added or removed already.
    pub const EINPROGRESS: i32 = -115;
    /// No such lockspace.
    pub const ENOENT: i32 = -2;
    /// The lockspace is being removed (add).
    pub const EAGAIN: i32 = -11;
    /// The lockspace is in use (remove of an unused one).
    pub const EBUSY: i32 = -16;
    /// The lease is held by a live host.
    pub const ACQUIRE_IDLIVE: i32 = -243;
    /// The lease is held by a host whose state is being checked, retry.
    pub const ACQUIRE_OWNED: i32 = -244;
    /// Another host acquired the lease meanwhile.
    pub const ACQUIRE_OTHER: i32 = -245;
    /// The lease's owner may be alive; retry later.
    pub const ACQUIRE_OWNED_RETRY: i32 = -247;
    /// The lockspace of the lease is not joined.
    pub const ACQUIRE_LOCKSPACE: i32 = -241;
}

impl SanlockError {
    pub(super) fn new(op: &'static str, code: c_int) -> Self {
        let message = if code > SANLOCK_OWN_CODES {
            // A negative errno, which sanlock_strerror does not know.
            std::io::Error::from_raw_os_error(-code).to_string()
        } else {
            // SAFETY: sanlock_strerror returns a pointer to a static string for any code.
            unsafe { CStr::from_ptr(sanlock_strerror(code)) }
                .to_string_lossy()
                .into_owned()
        };
        Self { op, code, message }
    }

    pub(super) fn invalid(op: &'static str, message: String) -> Self {
        Self {
            op,
            code: -22,
            message,
        }
    }

    /// Whether the lease is held by another host (alive, or not yet known dead).
    pub fn is_held_elsewhere(&self) -> bool {
        matches!(
            self.code,
            code::ACQUIRE_IDLIVE
                | code::ACQUIRE_OWNED
                | code::ACQUIRE_OTHER
                | code::ACQUIRE_OWNED_RETRY
        )
    }
}

pub(super) fn check(op: &'static str, rc: c_int) -> Result<c_int, SanlockError> {
    if rc < 0 {
        Err(SanlockError::new(op, rc))
    } else {
        Ok(rc)
    }
}
