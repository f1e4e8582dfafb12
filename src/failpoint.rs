//! Test-only pauses at exact points of multi-step operations, so that crash tests can kill
//! rvdsmd there instead of sleeping and hoping. Inert unless `RVDSM_TEST_PAUSE_AT` names the
//! point: then the thread reaching it creates the file named by `RVDSM_TEST_PAUSE_MARKER`
//! and blocks forever, waiting for the test's `kill -9`.

use std::time::Duration;

/// Pauses here forever when the environment asks for `point`.
pub fn pause_if_requested(point: &str) {
    if !reached(point) {
        return;
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Whether the environment asks to pause at `point`; if so, announces it (log and marker
/// file) and the caller pauses in its own way (an async step waits for its stop signal).
pub fn reached(point: &str) -> bool {
    if std::env::var("RVDSM_TEST_PAUSE_AT").as_deref() != Ok(point) {
        return false;
    }
    tracing::warn!(point, "paused at test failpoint");
    if let Ok(marker) = std::env::var("RVDSM_TEST_PAUSE_MARKER") {
        let _ = std::fs::write(marker, point);
    }
    true
}
