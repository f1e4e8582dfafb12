//! sanlock daemons for the tests of hosts sharing domains: one per simulated host, each with
//! its own run directory (`SANLOCK_RUN_DIR`, where its socket is), no watchdog, and the
//! test-only shim `fixtures/sanlock-shim.c` preloaded (this container cannot raise the memlock
//! limit the daemon asks for; on a real host sanlock runs as its own service with wdmd).
//! Each daemon is shut down, then killed, when dropped, panics included.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use super::wait_until;

/// A directory on disk for lease areas: sanlock opens them with direct I/O, which tmpfs
/// refuses.
pub fn disk_dir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// The memlock shim, built once per test binary.
fn shim() -> &'static Path {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(|| {
        let source = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/sanlock-shim.c");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        // Built aside, then renamed over: test binaries running at once never load a
        // half-written library.
        let building = dir.join(format!("sanlock-shim.{}.so", std::process::id()));
        let status = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&building)
            .arg(source)
            .arg("-ldl")
            .status()
            .expect("cc, to build the sanlock test shim");
        assert!(status.success(), "the sanlock test shim does not build");
        let out = dir.join("sanlock-shim.so");
        std::fs::rename(&building, &out).unwrap();
        out
    })
}

/// One host's sanlock daemon.
pub struct Sanlock {
    child: Option<Child>,
    dir: TempDir,
}

impl Sanlock {
    /// Starts a daemon and waits for its socket. Fails the test when sanlock is missing
    /// (`scripts/setup-host` installs it).
    pub fn start() -> Sanlock {
        let dir = disk_dir("sanlock-run");
        let log = std::fs::File::create(dir.path().join("sanlock.log")).unwrap();
        let child = Command::new("sanlock")
            // -D: foreground, logging to stderr; -w 0: no watchdog (no wdmd here); -l 0: no
            // mlockall; root's ids (the test's files are root's).
            .args([
                "daemon", "-D", "-w", "0", "-l", "0", "-U", "root", "-G", "root",
            ])
            .env("SANLOCK_RUN_DIR", dir.path())
            .env("LD_PRELOAD", shim())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the sanlock daemon (scripts/setup-host installs it)");
        let daemon = Sanlock {
            child: Some(child),
            dir,
        };
        let socket = daemon.dir.path().join("sanlock.sock");
        let up = wait_until(Duration::from_secs(20), || {
            socket.exists() && daemon.client(&["status"]).status.success()
        });
        assert!(up, "sanlock did not start; log:\n{}", daemon.log());
        daemon
    }

    /// Its run directory: the value of `SANLOCK_RUN_DIR` for its clients.
    pub fn run_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The environment a client of this daemon needs.
    pub fn env(&self) -> (&'static str, &str) {
        ("SANLOCK_RUN_DIR", self.run_dir().to_str().unwrap())
    }

    /// Runs `sanlock client <args>` against this daemon.
    pub fn client(&self, args: &[&str]) -> std::process::Output {
        Command::new("sanlock")
            .arg("client")
            .args(args)
            .env("SANLOCK_RUN_DIR", self.dir.path())
            .output()
            .unwrap()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sanlock.log")).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL: its delta leases stop being renewed and expire.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sanlock {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A daemon holding a lockspace ignores SIGTERM; a forced shutdown releases it.
            let _ = Command::new("sanlock")
                .args(["client", "shutdown", "-f", "1"])
                .env("SANLOCK_RUN_DIR", self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let stopped = wait_until(Duration::from_secs(10), || {
                child.try_wait().ok().flatten().is_some()
            });
            if !stopped {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}
