//! The QEMU guest agent, spoken through libvirt's agent channel with typed QGA messages from
//! the `qapi` crate. Every command carries a response timeout: libvirt's default waits
//! forever on a hung agent (HOST-NOTES).

use std::time::Duration;

use qapi::Execute;
use qapi::qga::QgaCommand;
use serde::Deserialize;
use virt::domain::Domain;

use super::error::VirtError;

/// Sends `command` to the domain's guest agent and waits at most `timeout` for its answer.
///
/// This blocks; call it inside [`super::Libvirt::call`] or another blocking context.
pub fn execute<C: QgaCommand>(
    domain: &Domain,
    command: C,
    timeout: Duration,
) -> Result<C::Ok, VirtError> {
    let request =
        serde_json::to_string(&Execute::<C, u32>::from(command)).map_err(|e| VirtError::Agent {
            command: C::NAME,
            message: format!("cannot encode: {e}"),
        })?;
    let secs = i32::try_from(timeout.as_secs().max(1)).unwrap_or(i32::MAX);
    let reply = domain
        .qemu_agent_command(&request, secs, 0)
        .map_err(|e| VirtError::libvirt(C::NAME, e))?;
    let response: Reply<C::Ok> = serde_json::from_str(&reply).map_err(|e| VirtError::Agent {
        command: C::NAME,
        message: format!("unreadable reply {reply:?}: {e}"),
    })?;
    match response {
        Reply::Return { value } => Ok(value),
        Reply::Error { error } => Err(VirtError::Agent {
            command: C::NAME,
            message: format!("{}: {}", error.class, error.desc),
        }),
    }
}

/// A QGA reply: `{"return": ...}` or `{"error": {"class", "desc"}}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Reply<T> {
    Return {
        #[serde(rename = "return")]
        value: T,
    },
    Error {
        error: ReplyError,
    },
}

#[derive(Deserialize)]
struct ReplyError {
    class: String,
    desc: String,
}
