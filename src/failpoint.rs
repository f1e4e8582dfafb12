//! Test-only pauses at exact points of multi-step operations, so that fault tests can act there
//! (kill rvdsmd, stop libvirtd, kill QEMU, hang the guest agent) instead of sleeping and
//! hoping. Inert unless `RVDSM_TEST_PAUSE_AT` names the point: then the first operation
//! reaching it creates the file named by `RVDSM_TEST_PAUSE_MARKER` and waits until the test
//! removes that file (or kills the daemon). Once released, the point is disarmed, so the
//! fault is injected once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a paused operation looks whether the test released it.
const POLL: Duration = Duration::from_millis(20);

/// Set once a pause was taken: every point pauses at most once per process.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Pauses this (blocking) thread at `point` when the environment asks for it.
pub fn pause_if_requested(point: &str) {
    if let Some(marker) = take(point) {
        while marker.exists() {
            std::thread::sleep(POLL);
        }
        tracing::warn!(point, "released from test failpoint");
    }
}

/// Pauses this task at `point` when the environment asks for it, without holding a thread.
pub async fn pause(point: &str) {
    if let Some(marker) = take(point) {
        while tokio::fs::try_exists(&marker).await.unwrap_or(false) {
            tokio::time::sleep(POLL).await;
        }
        tracing::warn!(point, "released from test failpoint");
    }
}

/// Whether the environment asks to stop at `point`; if so, announces it (log and marker file)
/// and the caller waits in its own way (an async step may wait for its stop signal).
pub fn reached(point: &str) -> bool {
    take(point).is_some()
}

/// Takes the pause at `point` if it is the one asked for and was not taken yet; returns the
/// marker file the test removes to release it.
fn take(point: &str) -> Option<std::path::PathBuf> {
    if std::env::var("RVDSM_TEST_PAUSE_AT").as_deref() != Ok(point)
        || TAKEN.swap(true, Ordering::SeqCst)
    {
        return None;
    }
    tracing::warn!(point, "paused at test failpoint");
    let marker = std::path::PathBuf::from(std::env::var_os("RVDSM_TEST_PAUSE_MARKER")?);
    let _ = std::fs::write(&marker, point);
    Some(marker)
}
