//! Errors of the `virt` module. A libvirt error keeps libvirt's own numeric code, so that the
//! layers above (and the manager, through the message) can tell why a call failed.

/// libvirt's `VIR_ERR_NO_DOMAIN`.
pub(crate) const VIR_ERR_NO_DOMAIN: i32 = 42;

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

    /// libvirt's numeric code, if this error came from libvirt.
    pub fn libvirt_code(&self) -> Option<i32> {
        match self {
            Self::Libvirt { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// libvirt's `virErrorNumber` of an error.
pub(crate) fn libvirt_code(err: &virt::error::Error) -> i32 {
    i32::try_from(err.code().to_raw()).unwrap_or(i32::MAX)
}
