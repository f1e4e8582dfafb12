//! Test-only pauses at exact points of multi-step operations, so that fault tests can act there
//! (kill rvdsmd, stop libvirtd, kill QEMU, hang the guest agent) instead of sleeping and
//! hoping. Compiled only with the cargo feature `failpoints` (the tests enable it): without it
//! the macros below expand to nothing (`reached!` to `false`), and neither the points' names
//! nor the variables that arm them are in the binary. With it, a point is inert unless
//! `RVDSM_TEST_PAUSE_AT` names it: then the first operation reaching it creates the file named
//! by `RVDSM_TEST_PAUSE_MARKER` and waits until the test removes that file (or kills the
//! daemon). Once released, the point is disarmed, so the fault is injected once.

/// Pauses this task at the point named by the string expression (it must be in an async
/// function: the pause does not hold a thread).
#[cfg(feature = "failpoints")]
macro_rules! pause {
    ($point:expr) => {
        $crate::failpoint::wait_in_task($point).await
    };
}

/// Pauses this task at a point (no-op: built without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
macro_rules! pause {
    ($point:expr) => {};
}

/// Pauses this (blocking) thread at the point named by the string expression.
#[cfg(feature = "failpoints")]
macro_rules! pause_thread {
    ($point:expr) => {
        $crate::failpoint::wait_in_thread($point)
    };
}

/// Pauses this thread at a point (no-op: built without the `failpoints` feature).
#[cfg(not(feature = "failpoints"))]
macro_rules! pause_thread {
    ($point:expr) => {};
}

/// Whether the test asks to stop at the point named by the string expression; if so, the
/// stop is announced (log and marker file) and the caller waits in its own way (an async
/// step may wait for its stop signal).
#[cfg(feature = "failpoints")]
macro_rules! reached {
    ($point:expr) => {
        $crate::failpoint::armed($point)
    };
}

/// Whether the test asks to stop at a point: never, built without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
macro_rules! reached {
    ($point:expr) => {
        false
    };
}

pub(crate) use {pause, pause_thread, reached};

/// What `rvdsmd --version` reports: the version, and whether this build has the test
/// failpoints (the tests that arm one check it first, to fail clearly instead of waiting).
#[cfg(feature = "failpoints")]
pub const VERSION_LINE: &str = concat!(env!("CARGO_PKG_VERSION"), " (test build: failpoints)");

/// What `rvdsmd --version` reports: the version (a build without test failpoints).
#[cfg(not(feature = "failpoints"))]
pub const VERSION_LINE: &str = env!("CARGO_PKG_VERSION");

#[cfg(feature = "failpoints")]
pub(crate) use armed_points::{armed, wait_in_task, wait_in_thread};

/// The failpoints themselves, compiled only for tests.
#[cfg(feature = "failpoints")]
mod armed_points {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    /// How often a paused operation looks whether the test released it.
    const POLL: Duration = Duration::from_millis(20);

    /// Set once a pause was taken: every point pauses at most once per process.
    static TAKEN: AtomicBool = AtomicBool::new(false);

    /// Pauses this (blocking) thread at `point` when the environment asks for it.
    pub fn wait_in_thread(point: &str) {
        if let Some(marker) = take(point) {
            while marker.exists() {
                std::thread::sleep(POLL);
            }
            tracing::warn!(point, "released from test failpoint");
        }
    }

    /// Pauses this task at `point` when the environment asks for it, without holding a thread.
    pub async fn wait_in_task(point: &str) {
        if let Some(marker) = take(point) {
            while tokio::fs::try_exists(&marker).await.unwrap_or(false) {
                tokio::time::sleep(POLL).await;
            }
            tracing::warn!(point, "released from test failpoint");
        }
    }

    /// Whether the environment asks to stop at `point`; if so, announces it (log and marker
    /// file) and the caller waits in its own way.
    pub fn armed(point: &str) -> bool {
        take(point).is_some()
    }

    /// Takes the pause at `point` if it is the one asked for and was not taken yet; returns
    /// the marker file the test removes to release it.
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
}
