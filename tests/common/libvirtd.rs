//! Stopping and starting the host's libvirtd, for tests of rvdsm's reconnection. The guard
//! starts libvirtd again when dropped, so a failing test never leaves the host without it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::wait_until;

/// libvirtd stopped until this is dropped (or [`Stopped::start`] is called).
pub struct Stopped {
    started: bool,
}

/// Stops libvirtd (systemctl on a systemd host, else SIGTERM to the pid in its pid file) and
/// waits until it is gone. Running guests keep running.
pub fn stop() -> Stopped {
    end(nix::sys::signal::Signal::SIGTERM)
}

/// Kills libvirtd with SIGKILL, as a crash would, and waits until it is gone. Running guests
/// keep running.
pub fn kill9() -> Stopped {
    end(nix::sys::signal::Signal::SIGKILL)
}

fn end(signal: nix::sys::signal::Signal) -> Stopped {
    if Path::new("/run/systemd/system").exists() {
        let status = Command::new("systemctl")
            .args(["kill", "--signal", signal.as_str(), "libvirtd"])
            .status()
            .unwrap();
        assert!(status.success(), "systemctl kill libvirtd failed");
        let gone = wait_until(Duration::from_secs(30), || {
            !Command::new("systemctl")
                .args(["is-active", "--quiet", "libvirtd"])
                .status()
                .unwrap()
                .success()
        });
        assert!(gone, "libvirtd did not stop on {signal}");
    } else {
        let pid: i32 = std::fs::read_to_string("/run/libvirtd.pid")
            .expect("libvirtd pid file")
            .trim()
            .parse()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(pid);
        nix::sys::signal::kill(pid, signal).unwrap();
        let gone = wait_until(Duration::from_secs(30), || {
            nix::sys::signal::kill(pid, None).is_err()
        });
        assert!(gone, "libvirtd did not exit on {signal}");
        // A killed libvirtd leaves its pid file behind; the next start must not trip on it.
        let _ = std::fs::remove_file("/run/libvirtd.pid");
    }
    Stopped { started: false }
}

impl Stopped {
    /// Starts libvirtd again (through the project's setup script) and waits until it answers.
    pub fn start(mut self) {
        start_libvirtd();
        self.started = true;
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if !self.started {
            start_libvirtd();
        }
    }
}

fn start_libvirtd() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup-host");
    let status = Command::new(script).status().unwrap();
    assert!(status.success(), "setup-host could not start libvirtd");
}
