//! How a `VM.freeze` or `VM.thaw` fails, and VDSM's code for each way (VDSM-REFERENCE §2.1):
//! 19 the agent did not answer, 75 no agent can do it, 76/77 the freeze/thaw failed, 1 no
//! such VM, 100 another operation holds the VM.

use crate::api::{ApiError, codes};
use crate::jobs::vm_jobs::JobRefusal;
use crate::virt::{VirtError, VirtErrorKind};

/// The agent call that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentOp {
    /// `guest-fsfreeze-freeze`.
    Freeze,
    /// `guest-fsfreeze-thaw`.
    Thaw,
}

/// A failed freeze or thaw.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FreezeError {
    /// libvirt failed before the agent was asked (the VM is unknown, libvirtd is down).
    #[error(transparent)]
    Virt(#[from] VirtError),
    /// Another operation holds the VM.
    #[error(transparent)]
    Busy(#[from] JobRefusal),
    /// A parameter is out of range (91).
    #[error("Invalid parameter: {0}")]
    InvalidParameter(String),
    /// The guest is frozen by another tool; rvdsm never takes such a freeze over.
    #[error(
        "Unable to freeze guest filesystems: the guest is already frozen by another tool; \
         rvdsm does not take that freeze over"
    )]
    ForeignFreeze,
    /// The agent call failed.
    #[error("{}: {source}", op_text(*.op, source.kind()))]
    Agent {
        /// Which call.
        op: AgentOp,
        /// Why.
        source: VirtError,
    },
}

/// What kind of failure a [`FreezeError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeErrorKind {
    /// The VM does not exist.
    NoSuchVm,
    /// The agent did not answer in time.
    AgentUnresponsive,
    /// No agent channel, or the agent cannot freeze: nothing can be frozen.
    Unsupported,
    /// Anything else.
    Failed,
}

impl FreezeError {
    /// Wraps a failed agent call.
    pub fn agent(op: AgentOp) -> impl FnOnce(VirtError) -> Self {
        move |source| Self::Agent { op, source }
    }

    /// The kind of failure.
    pub fn kind(&self) -> FreezeErrorKind {
        let virt = match self {
            Self::Virt(err) | Self::Agent { source: err, .. } => err.kind(),
            Self::Busy(_) | Self::ForeignFreeze | Self::InvalidParameter(_) => {
                return FreezeErrorKind::Failed;
            }
        };
        match virt {
            VirtErrorKind::NoSuchDomain => FreezeErrorKind::NoSuchVm,
            VirtErrorKind::AgentUnresponsive if matches!(self, Self::Agent { .. }) => {
                FreezeErrorKind::AgentUnresponsive
            }
            VirtErrorKind::AgentUnsupported if matches!(self, Self::Agent { .. }) => {
                FreezeErrorKind::Unsupported
            }
            _ => FreezeErrorKind::Failed,
        }
    }
}

fn op_text(op: AgentOp, kind: VirtErrorKind) -> &'static str {
    match (kind, op) {
        (VirtErrorKind::AgentUnresponsive, _) => "Guest agent non-responsive",
        (VirtErrorKind::AgentUnsupported, _) => "Operation not supported",
        (_, AgentOp::Freeze) => "Unable to freeze guest filesystems",
        (_, AgentOp::Thaw) => "Unable to thaw guest filesystems",
    }
}

impl From<FreezeError> for ApiError {
    fn from(err: FreezeError) -> Self {
        let kind = err.kind();
        let code = match err {
            FreezeError::Virt(err) | FreezeError::Agent { source: err, .. }
                if kind == FreezeErrorKind::NoSuchVm =>
            {
                return err.into();
            }
            FreezeError::Virt(err) => return err.into(),
            FreezeError::Busy(err) => return err.into(),
            FreezeError::ForeignFreeze => codes::FREEZE_GUEST_FS_FAILED,
            FreezeError::InvalidParameter(_) => codes::INVALID_PARAMETER,
            FreezeError::Agent { op, ref source } => match (source.kind(), op) {
                (VirtErrorKind::AgentUnresponsive, _) => codes::NON_RESPONSIVE_GUEST_AGENT,
                (VirtErrorKind::AgentUnsupported, _) => codes::UNSUPPORTED_OPERATION,
                (_, AgentOp::Freeze) => codes::FREEZE_GUEST_FS_FAILED,
                (_, AgentOp::Thaw) => codes::THAW_GUEST_FS_FAILED,
            },
        };
        Self::Coded {
            code,
            message: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libvirt(code: i32) -> VirtError {
        VirtError::Libvirt {
            op: "freeze",
            code,
            message: "m".into(),
        }
    }

    #[test]
    fn agent_failures_get_vdsm_codes_and_words() {
        for (op, code, want, words) in [
            (AgentOp::Freeze, 86, 19, "Guest agent non-responsive: "),
            (AgentOp::Thaw, 74, 75, "Operation not supported: "),
            (AgentOp::Freeze, 3, 75, "Operation not supported: "),
            (
                AgentOp::Freeze,
                1,
                76,
                "Unable to freeze guest filesystems: ",
            ),
            (AgentOp::Thaw, 1, 77, "Unable to thaw guest filesystems: "),
        ] {
            let err = ApiError::from(FreezeError::agent(op)(libvirt(code)));
            assert_eq!(err.code(), want, "{op:?} {code}");
            assert!(err.to_string().starts_with(words), "{err}");
        }
        let gone = FreezeError::agent(AgentOp::Thaw)(VirtError::NoSuchDomain { uuid: "x".into() });
        assert_eq!(gone.kind(), FreezeErrorKind::NoSuchVm);
        assert_eq!(ApiError::from(gone).code(), codes::NO_SUCH_VM);
        assert_eq!(ApiError::from(FreezeError::ForeignFreeze).code(), 76);
    }
}
