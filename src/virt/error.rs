//! Errors of the `virt` module. A libvirt error keeps libvirt's own numeric code, so that the
//! layers above (and the manager, through the message) can tell why a call failed.

/// libvirt's `virErrorNumber` values that change what rvdsm does (HOST-NOTES).
pub(crate) mod code {
    /// `VIR_ERR_NO_SUPPORT`: the hypervisor does not support the call (no agent channel).
    pub const NO_SUPPORT: i32 = 3;
    /// `VIR_ERR_NO_DOMAIN`.
    pub const NO_DOMAIN: i32 = 42;
    /// `VIR_ERR_OPERATION_INVALID`: not in this state (a paused VM's agent).
    pub const OPERATION_INVALID: i32 = 55;
    /// `VIR_ERR_ARGUMENT_UNSUPPORTED`: the agent is not configured or not connected.
    pub const ARGUMENT_UNSUPPORTED: i32 = 74;
    /// `VIR_ERR_AGENT_UNRESPONSIVE`.
    pub const AGENT_UNRESPONSIVE: i32 = 86;
}

/// What QEMU's guest agent answers to a command it refuses while the guest is frozen
/// ("Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state").
const AGENT_FROZEN: &str = "the agent is in frozen state";

/// What kind of failure a [`VirtError`] is: what callers match on, so that no layer above
/// this one reads libvirt's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VirtErrorKind {
    /// libvirtd cannot be reached.
    Unavailable,
    /// No such VM.
    NoSuchDomain,
    /// No guest agent can serve the call: none configured, not connected, or the hypervisor
    /// does not support it (libvirt 3, 74).
    AgentUnsupported,
    /// The guest agent did not answer in time (libvirt 86).
    AgentUnresponsive,
    /// Not possible in the VM's state, such as an agent call on a paused VM (libvirt 55).
    InvalidState,
    /// The guest agent answered with an error or with something that is not QGA.
    AgentFailed,
    /// The guest agent refused a freeze at once because the guest is frozen already (by
    /// another tool): it froze nothing.
    AgentFrozen,
    /// A libvirt call did not return within its deadline.
    Timeout,
    /// Any other failure.
    Other,
}

/// An error while talking to libvirt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtError {
    /// The connection to libvirtd could not be opened (libvirtd down or refusing).
    #[error("cannot connect to libvirt at {uri}: {message}")]
    Connect {
        /// The URI that was tried.
        uri: String,
        /// libvirt's message.
        message: String,
    },
    /// No domain with this UUID is known to libvirt.
    #[error("no domain with UUID {uuid}")]
    NoSuchDomain {
        /// The UUID looked up.
        uuid: String,
    },
    /// libvirt failed a call.
    #[error("{op} failed: libvirt error {code}: {message}")]
    Libvirt {
        /// What rvdsm was doing.
        op: &'static str,
        /// libvirt's `virErrorNumber`.
        code: i32,
        /// libvirt's message.
        message: String,
    },
    /// A libvirt call did not return within its deadline.
    #[error("{op} did not complete within {secs} s")]
    Timeout {
        /// What rvdsm was doing.
        op: &'static str,
        /// The deadline.
        secs: u64,
    },
    /// libvirt returned XML that rvdsm cannot read.
    #[error("cannot parse the XML of {what}: {message}")]
    Xml {
        /// Which document.
        what: &'static str,
        /// The parser's message.
        message: String,
    },
    /// A definition holds something rvdsm cannot place or verify (a host path, a device that
    /// reaches the host, an element in another namespace).
    #[error("the domain XML is refused: {element}: {reason}")]
    Refused {
        /// The element, as the definition has it.
        element: String,
        /// Why.
        reason: String,
    },
    /// The guest agent answered with an error, or with something that is not QGA.
    #[error("guest agent command {command} failed: {message}")]
    Agent {
        /// The QGA command.
        command: &'static str,
        /// The agent's error description.
        message: String,
    },
    /// The blocking task running a libvirt call panicked.
    #[error("{op} panicked")]
    Panicked {
        /// What rvdsm was doing.
        op: &'static str,
    },
}

impl VirtError {
    /// Wraps a libvirt error from the call named `op`.
    pub fn libvirt(op: &'static str, err: virt::error::Error) -> Self {
        Self::Libvirt {
            op,
            code: libvirt_code(&err),
            message: err.message().to_owned(),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> VirtErrorKind {
        match self {
            Self::Connect { .. } => VirtErrorKind::Unavailable,
            Self::NoSuchDomain { .. } => VirtErrorKind::NoSuchDomain,
            // QEMU's guest agent disables every command but status and thaw while frozen.
            Self::Libvirt { message, .. } if message.contains(AGENT_FROZEN) => {
                VirtErrorKind::AgentFrozen
            }
            Self::Libvirt { code, .. } => match *code {
                code::NO_SUPPORT | code::ARGUMENT_UNSUPPORTED => VirtErrorKind::AgentUnsupported,
                code::AGENT_UNRESPONSIVE => VirtErrorKind::AgentUnresponsive,
                code::OPERATION_INVALID => VirtErrorKind::InvalidState,
                code::NO_DOMAIN => VirtErrorKind::NoSuchDomain,
                _ => VirtErrorKind::Other,
            },
            Self::Agent { .. } => VirtErrorKind::AgentFailed,
            Self::Timeout { .. } => VirtErrorKind::Timeout,
            Self::Xml { .. } | Self::Refused { .. } | Self::Panicked { .. } => VirtErrorKind::Other,
        }
    }

    /// Whether the failure means "no compatible guest agent here" (none, not answering, or
    /// the VM paused) rather than a failure of the agent's work.
    pub fn is_agent_unavailable(&self) -> bool {
        matches!(
            self.kind(),
            VirtErrorKind::AgentUnsupported
                | VirtErrorKind::AgentUnresponsive
                | VirtErrorKind::InvalidState
                | VirtErrorKind::AgentFailed
        )
    }

    /// libvirt's numeric code, if this error came from libvirt (for messages).
    pub fn libvirt_code(&self) -> Option<i32> {
        match self {
            Self::Libvirt { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// libvirt's `virErrorNumber` of an error.
impl From<crate::sys::libvirt::LibvirtError> for VirtError {
    fn from(err: crate::sys::libvirt::LibvirtError) -> Self {
        Self::Libvirt {
            op: err.op,
            code: err.code,
            message: err.message,
        }
    }
}

pub(crate) use crate::sys::libvirt::error_code as libvirt_code;

#[cfg(test)]
mod tests {
    use super::*;

    fn libvirt(code: i32) -> VirtError {
        VirtError::Libvirt {
            op: "test",
            code,
            message: String::new(),
        }
    }

    #[test]
    fn libvirt_numbers_are_classified_here() {
        assert_eq!(libvirt(3).kind(), VirtErrorKind::AgentUnsupported);
        assert_eq!(libvirt(74).kind(), VirtErrorKind::AgentUnsupported);
        assert_eq!(libvirt(86).kind(), VirtErrorKind::AgentUnresponsive);
        assert_eq!(libvirt(55).kind(), VirtErrorKind::InvalidState);
        assert_eq!(libvirt(42).kind(), VirtErrorKind::NoSuchDomain);
        assert_eq!(libvirt(1).kind(), VirtErrorKind::Other);
        assert!(libvirt(86).is_agent_unavailable());
        assert!(!libvirt(1).is_agent_unavailable());
        let timeout = VirtError::Timeout {
            op: "freeze",
            secs: 5,
        };
        assert!(
            !timeout.is_agent_unavailable(),
            "a timed-out freeze may have frozen"
        );
    }
}
