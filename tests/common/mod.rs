//! The shared test harness: real guests from the fixture through a real libvirtd, and a real
//! rvdsmd child process with a temporary configuration.
//!
//! - [`libvirt`] opens `qemu:///system`, or fails the test when libvirt is required
//!   (`RVDSM_REQUIRE_LIBVIRT=1` or `CI` set) and skips it otherwise.
//! - [`Guest`] boots a fixture guest under a unique name, waits for its agent, runs commands
//!   inside it through the agent, reads its disks, and always destroys it and removes its
//!   files when dropped, panics included. At most `RVDSM_TEST_MAX_GUESTS` (default 2) guests
//!   run at once per test binary, so a 2-core machine is not overloaded.
//! - [`Daemon`] runs `rvdsmd` on a free port and a temporary socket and calls it.
//! - [`hosts`] simulated hosts sharing storage (rvdsmd with `[cluster]`, each with its own
//!   sanlock daemon); [`pool`] the engine's verbs that set a pool up on them.
//! - [`stomp`] STOMP clients (rvdsm's own, over TCP, TLS or Unix; and a raw socket).
#![allow(dead_code, unused_imports)] // Each test binary uses a different part of the harness.

pub mod chain;
pub mod cluster;
pub mod daemon;
pub mod domain;
pub mod engine;
pub mod guest;
pub mod hosts;
pub mod libvirtd;
pub mod memory;
pub mod pool;
pub mod sanlock;
pub mod stomp;
pub mod vdsm_schema;

pub use daemon::Daemon;
pub use guest::{Agent, Guest, GuestOptions};

use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use virt::connect::Connect;

/// Whether a missing libvirt or fixture must fail the test instead of skipping it.
pub fn libvirt_required() -> bool {
    std::env::var("RVDSM_REQUIRE_LIBVIRT").is_ok_and(|v| v == "1")
        || std::env::var("CI").is_ok_and(|v| !v.is_empty())
}

/// A connection to the local libvirtd; `None` (the test then returns early) only when libvirt
/// is not required. Also removes guests that an earlier, killed test run left behind.
pub fn libvirt() -> Option<Connect> {
    virt::error::clear_error_callback();
    match Connect::open(Some("qemu:///system")) {
        Ok(conn) => {
            guest::remove_leftovers(&conn);
            Some(conn)
        }
        Err(err) if libvirt_required() => {
            panic!("libvirt is required (RVDSM_REQUIRE_LIBVIRT/CI) but unreachable: {err}")
        }
        Err(err) => {
            eprintln!("SKIPPED: libvirt unreachable ({err}); run scripts/setup-host");
            None
        }
    }
}

/// The fixture directory, built (or found up to date) once per test binary.
pub fn fixture_dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/build-guest");
        let output = Command::new(script)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            output.status.success(),
            "the guest fixture does not build: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::path::PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
    })
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes zeros to `path` until the filesystem is full.
pub fn fill(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
}

/// Fills the filesystem with `path`, then gives `leave` bytes back.
pub fn fill_but(path: &std::path::Path, leave: u64) {
    fill(path);
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(leave)).unwrap();
}

/// A tmpfs mounted for the test, unmounted when dropped.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`4m`) on `dir` (created if missing).
    pub fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "cannot mount a tmpfs (run as root)");
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
