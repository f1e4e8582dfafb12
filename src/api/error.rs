//! VDSM's error codes and the one place where every module's errors are mapped onto them.
//!
//! A manager branches on the numeric code, so each failure gets VDSM's code for it; the
//! message follows VDSM's `"<text>: {<details>}"` form where VDSM has one.

use crate::jobs::tasks::TaskError;
use crate::jobs::vm_jobs::JobRefusal;
use crate::storage::StorageError;
use crate::virt::VirtError;

/// VDSM's numeric error codes used by rvdsm (VDSM-REFERENCE §1.5).
pub mod code {
    /// Virtual machine does not exist.
    pub const NO_SUCH_VM: i32 = 1;
    /// Unexpected exception.
    pub const UNEXPECTED: i32 = 16;
    /// Guest agent non-responsive.
    pub const NON_RESPONSIVE_GUEST_AGENT: i32 = 19;
    /// Invalid parameter.
    pub const INVALID_PARAMETER: i32 = 91;
    /// Recovering from crash or Initializing.
    pub const RECOVERY_IN_PROGRESS: i32 = 99;
    /// General Exception.
    pub const GENERAL: i32 = 100;
    /// JSON-RPC: invalid method parameters.
    pub const INVALID_PARAMS: i32 = -32602;
}

/// An error as a manager sees it: VDSM's code and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The VM is unknown to libvirt on this host.
    #[error("Virtual machine does not exist: {{'vmId': '{vm_id}'}}")]
    NoSuchVm {
        /// The id the caller gave.
        vm_id: String,
    },
    /// A parameter is missing, mistyped or out of range (JSON-RPC level).
    #[error("Invalid params: {0}")]
    InvalidParams(String),
    /// The hypervisor is not reachable (libvirtd down); the daemon retries on the next request.
    #[error("General Exception: {{'reason': 'hypervisor unavailable: {0}'}}")]
    HypervisorUnavailable(String),
    /// libvirt refused or failed a call; its own code is kept in the message.
    #[error("General Exception: {{'reason': '{0}'}}")]
    Hypervisor(String),
    /// A libvirt call did not return in time.
    #[error("General Exception: {{'reason': '{0}'}}")]
    Timeout(String),
    /// Anything not foreseen.
    #[error("Unexpected exception: {0}")]
    Unexpected(String),
    /// A storage or task error, with VDSM's code already chosen by its module.
    #[error("{message}")]
    Coded {
        /// VDSM's code.
        code: i32,
        /// The message.
        message: String,
    },
}

impl ApiError {
    /// VDSM's 91 "Invalid parameter", with what is wrong.
    pub fn invalid_parameter(message: impl std::fmt::Display) -> Self {
        Self::Coded {
            code: code::INVALID_PARAMETER,
            message: format!("Invalid parameter: {message}"),
        }
    }

    /// VDSM's numeric code for this error.
    pub fn code(&self) -> i32 {
        match self {
            Self::NoSuchVm { .. } => code::NO_SUCH_VM,
            Self::InvalidParams(_) => code::INVALID_PARAMS,
            Self::HypervisorUnavailable(_) | Self::Hypervisor(_) | Self::Timeout(_) => {
                code::GENERAL
            }
            Self::Unexpected(_) => code::UNEXPECTED,
            Self::Coded { code, .. } => *code,
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        Self::Coded {
            code: err.code(),
            message: err.to_string(),
        }
    }
}

impl From<TaskError> for ApiError {
    fn from(err: TaskError) -> Self {
        Self::Coded {
            code: err.code(),
            message: err.to_string(),
        }
    }
}

impl From<JobRefusal> for ApiError {
    fn from(err: JobRefusal) -> Self {
        Self::Coded {
            code: code::GENERAL,
            message: err.to_string(),
        }
    }
}

impl From<VirtError> for ApiError {
    fn from(err: VirtError) -> Self {
        match err {
            VirtError::NoSuchDomain { uuid } => Self::NoSuchVm { vm_id: uuid },
            VirtError::Connect { .. } => Self::HypervisorUnavailable(err.to_string()),
            VirtError::Libvirt { .. } | VirtError::Xml { .. } | VirtError::Agent { .. } => {
                Self::Hypervisor(err.to_string())
            }
            VirtError::Timeout { .. } => Self::Timeout(err.to_string()),
            VirtError::Panicked { .. } => Self::Unexpected(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_such_vm_has_vdsm_code_and_text() {
        let err = ApiError::from(VirtError::NoSuchDomain {
            uuid: "4d8b1f6e-2f1b-4c4e-9a59-3e0d6c3a1d10".into(),
        });
        assert_eq!(err.code(), 1);
        assert_eq!(
            err.to_string(),
            "Virtual machine does not exist: {'vmId': '4d8b1f6e-2f1b-4c4e-9a59-3e0d6c3a1d10'}"
        );
    }

    #[test]
    fn libvirt_code_survives_mapping() {
        let err = ApiError::from(VirtError::Libvirt {
            op: "list domains",
            code: 55,
            message: "domain is not running".into(),
        });
        assert_eq!(err.code(), code::GENERAL);
        assert!(err.to_string().contains("libvirt error 55"), "{err}");
    }
}
