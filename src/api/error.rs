//! The error a manager sees: VDSM's code (from [`super::codes`]) and a message in VDSM's
//! `"<text>: {<details>}"` form where VDSM has one. The lower layers' errors are turned into
//! it where the layers meet (`services::errors`), so that this module imports nothing of them.

use super::codes;

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
    #[error("Invalid method parameter(s): {{'reason': '{0}'}}")]
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
            code: codes::INVALID_PARAMETER,
            message: format!("Invalid parameter: {message}"),
        }
    }

    /// VDSM's numeric code for this error.
    pub fn code(&self) -> i32 {
        match self {
            Self::NoSuchVm { .. } => codes::NO_SUCH_VM,
            Self::InvalidParams(_) => codes::INVALID_PARAMS,
            Self::HypervisorUnavailable(_) | Self::Hypervisor(_) | Self::Timeout(_) => {
                codes::GENERAL
            }
            Self::Unexpected(_) => codes::UNEXPECTED,
            Self::Coded { code, .. } => *code,
        }
    }
}
