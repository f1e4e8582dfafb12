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

impl Stopped {
    /// libvirtd was started by the caller: nothing to do when dropped.
    fn started_elsewhere(mut self) {
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

const QEMU_CONF: &str = "/etc/libvirt/qemu.conf";
const QEMU_SANLOCK_CONF: &str = "/etc/libvirt/qemu-sanlock.conf";

/// libvirtd running with sanlock's lock manager (as oVirt configures its hosts), talking to
/// the sanlock daemon whose run directory is given, until dropped: then libvirtd is stopped,
/// its configuration files restored byte for byte, and it is started as before, panics
/// included. Only leases named in a domain's XML are taken (`auto_disk_leases = 0`).
pub struct SanlockLockManager {
    qemu_conf: Option<String>,
    sanlock_conf: Option<String>,
}

/// Restarts libvirtd with `lock_manager = "sanlock"` and `SANLOCK_RUN_DIR=run_dir` in its
/// environment.
pub fn with_sanlock_lock_manager(run_dir: &Path) -> SanlockLockManager {
    let guard = SanlockLockManager {
        qemu_conf: std::fs::read_to_string(QEMU_CONF).ok(),
        sanlock_conf: std::fs::read_to_string(QEMU_SANLOCK_CONF).ok(),
    };
    let stopped = stop();
    let qemu_conf: String = guard
        .qemu_conf
        .as_deref()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with("lock_manager"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(QEMU_CONF, qemu_conf + "lock_manager = \"sanlock\"\n").unwrap();
    std::fs::write(
        QEMU_SANLOCK_CONF,
        "auto_disk_leases = 0\nrequire_lease_for_disks = 0\n",
    )
    .unwrap();
    start_with_sanlock_dir(stopped, Some(run_dir));
    guard
}

/// Starts libvirtd with `SANLOCK_RUN_DIR=run_dir` in its environment (`None`: without it):
/// through systemd's manager environment on a systemd host, else inherited from setup-host,
/// which starts libvirtd as its child.
fn start_with_sanlock_dir(stopped: Stopped, run_dir: Option<&Path>) {
    if Path::new("/run/systemd/system").exists() {
        let status = match run_dir {
            Some(dir) => Command::new("systemctl")
                .arg("set-environment")
                .arg(format!("SANLOCK_RUN_DIR={}", dir.display()))
                .status(),
            None => Command::new("systemctl")
                .args(["unset-environment", "SANLOCK_RUN_DIR"])
                .status(),
        };
        assert!(
            status.unwrap().success(),
            "systemctl could not set libvirtd's environment"
        );
        stopped.start();
        return;
    }
    let mut command = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup-host"));
    match run_dir {
        Some(dir) => command.env("SANLOCK_RUN_DIR", dir),
        None => command.env_remove("SANLOCK_RUN_DIR"),
    };
    assert!(
        command.status().unwrap().success(),
        "setup-host could not start libvirtd"
    );
    stopped.started_elsewhere();
}

impl Drop for SanlockLockManager {
    fn drop(&mut self) {
        let stopped = stop();
        let restore = |path: &str, content: &Option<String>| match content {
            Some(content) => std::fs::write(path, content).unwrap(),
            None => {
                let _ = std::fs::remove_file(path);
            }
        };
        restore(QEMU_CONF, &self.qemu_conf);
        restore(QEMU_SANLOCK_CONF, &self.sanlock_conf);
        start_with_sanlock_dir(stopped, None);
    }
}
