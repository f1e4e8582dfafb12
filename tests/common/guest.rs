//! Fixture guests: boot, agent, commands inside the guest, disks, and cleanup.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use qapi::qga::{GuestExecCaptureOutput, guest_exec, guest_exec_status, guest_ping};
use rvdsm::api::types::DiskStats;
use rvdsm::virt::{VirtError, agent, xml};
use tempfile::TempDir;
use virt::connect::Connect;
use virt::domain::Domain;

use super::{fixture_dir, wait_until};

/// Names of test guests start with this, followed by the test process id.
const NAME_PREFIX: &str = "rvdsm-test-";
/// How long a fixture guest may take to answer through its agent (measured: 6-9 s under TCG).
pub const AGENT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const AGENT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// When the guest starts its agent (the fixture's `rvdsm.agent=` switch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// At boot.
    Running,
    /// Never: the channel exists, nobody answers.
    Absent,
    /// This many seconds after boot.
    Late(u32),
}

/// How to build a guest.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// Agent scenario.
    pub agent: Agent,
    /// Whether the domain has a guest agent channel at all.
    pub agent_channel: bool,
    /// Extra qcow2 disks besides the data disk (vdb, vdc, ...).
    pub extra_disks: usize,
    /// Make the data disk a qcow2 overlay on a copy of the fixture disk, so the VM starts
    /// with a two-image chain.
    pub with_backing: bool,
    /// Use this qcow2 file (holding the fixture's data disk) as vda instead of a copy; the
    /// caller owns it.
    pub disk: Option<PathBuf>,
    /// More qcow2 files the caller owns, attached after vda (and after `extra_disks`).
    pub more_disks: Vec<PathBuf>,
}

impl Default for GuestOptions {
    fn default() -> Self {
        Self {
            agent: Agent::Running,
            agent_channel: true,
            extra_disks: 0,
            with_backing: false,
            disk: None,
            more_disks: Vec::new(),
        }
    }
}

/// A running fixture guest, destroyed with its files when dropped.
pub struct Guest {
    /// The libvirt domain name.
    pub name: String,
    /// The libvirt domain UUID (rvdsm's vmId).
    pub uuid: String,
    /// The guest's files: disks and console log.
    pub dir: TempDir,
    /// The data disk (vda), a copy of the fixture's.
    pub disk: PathBuf,
    domain: Domain,
    _slot: GuestSlot,
}

impl Guest {
    /// Boots a guest with `options` (it may not be answering yet; see [`Guest::wait_for_agent`]).
    pub fn start(conn: &Connect, options: &GuestOptions) -> Guest {
        let slot = GuestSlot::acquire();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{NAME_PREFIX}{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let fixture = fixture_dir();
        let dir = tempfile::Builder::new().prefix(&name).tempdir().unwrap();
        let mut disk = dir.path().join("data.qcow2");
        if let Some(given) = &options.disk {
            disk = given.clone();
        } else if options.with_backing {
            let base = dir.path().join("base.qcow2");
            std::fs::copy(fixture.join("data.qcow2"), &base).unwrap();
            let backing = path_str(&base);
            qemu_img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                backing,
                "-F",
                "qcow2",
                path_str(&disk),
            ]);
        } else {
            std::fs::copy(fixture.join("data.qcow2"), &disk).unwrap();
        }
        let mut disks = vec![disk.clone()];
        for i in 0..options.extra_disks {
            let extra = dir.path().join(format!("extra{i}.qcow2"));
            qemu_img(&["create", "-q", "-f", "qcow2", path_str(&extra), "64M"]);
            disks.push(extra);
        }
        disks.extend(options.more_disks.iter().cloned());
        let xml = domain_xml(&name, dir.path(), &disks, options);
        let domain = conn
            .create_domain_xml(&xml, 0)
            .unwrap_or_else(|e| panic!("cannot start guest {name}: {e}"));
        let uuid = domain.uuid_string().unwrap();
        Guest {
            name,
            uuid,
            dir,
            disk,
            domain,
            _slot: slot,
        }
    }

    /// Boots a guest with its agent running and waits until the agent answers.
    pub fn start_ready(conn: &Connect) -> Guest {
        let guest = Guest::start(conn, &GuestOptions::default());
        guest.wait_for_agent(AGENT_BOOT_TIMEOUT);
        guest
    }

    /// Waits (bounded) until the agent answers `guest-ping`; panics with the console log if not.
    pub fn wait_for_agent(&self, timeout: Duration) {
        if !wait_until(timeout, || self.ping().is_ok()) {
            panic!(
                "agent of {} did not answer within {timeout:?}; console:\n{}",
                self.name,
                self.console()
            );
        }
    }

    /// One `guest-ping` through libvirt's agent channel.
    pub fn ping(&self) -> Result<(), VirtError> {
        ping_domain(&self.domain)
    }

    /// Runs `script` with the guest's `/bin/sh -c` through `guest-exec`, waits (bounded) for it
    /// to end, and returns its exit code and standard output.
    pub fn exec(&self, script: &str) -> (i64, String) {
        exec_in(&self.domain_now(), &self.name, script)
    }

    /// Starts `script` in the guest and returns at once, without waiting for it (for scripts
    /// that stop the agent itself).
    pub fn spawn(&self, script: &str) {
        let command = guest_exec {
            path: "/bin/sh".into(),
            arg: Some(vec!["-c".into(), script.into()]),
            env: None,
            input_data: None,
            capture_output: None,
        };
        agent::execute(&self.domain_now(), command, AGENT_CALL_TIMEOUT)
            .unwrap_or_else(|e| panic!("guest-exec {script:?} in {}: {e}", self.name));
    }
    /// The guest's disks as its live XML describes them, with their backing chains.
    pub fn disks(&self) -> Vec<DiskStats> {
        xml::parse_disks(&self.domain.xml_desc(0).unwrap()).unwrap()
    }

    /// The serial console log (for failure messages).
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// The domain on a live connection: the one it was started on, or a new one when a test
    /// restarted libvirtd since.
    fn domain_now(&self) -> Domain {
        if self.domain.is_active().is_ok() {
            return self.domain.clone();
        }
        Connect::open(Some("qemu:///system"))
            .and_then(|conn| conn.lookup_domain_by_name(&self.name))
            .unwrap_or_else(|_| self.domain.clone())
    }

    /// The libvirt domain, for tests that need a call the harness lacks.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// Stops this guest and boots it again, under the same name and slot, on the single disk
    /// `disk` (a revert: the same VM on another volume). A new console log.
    pub fn reboot_on(&mut self, conn: &Connect, disk: PathBuf) {
        self.stop();
        let _ = std::fs::remove_file(self.dir.path().join("console.log"));
        let options = GuestOptions {
            disk: Some(disk.clone()),
            ..GuestOptions::default()
        };
        let xml = domain_xml(
            &self.name,
            self.dir.path(),
            std::slice::from_ref(&disk),
            &options,
        );
        self.domain = conn
            .create_domain_xml(&xml, 0)
            .unwrap_or_else(|e| panic!("cannot boot guest {} again: {e}", self.name));
        self.uuid = self.domain.uuid_string().unwrap();
        self.disk = disk;
    }
}

impl Guest {
    /// Stops the guest's QEMU (a transient domain then disappears). When the test restarted
    /// libvirtd, this handle's connection is dead: the domain is destroyed by name instead.
    pub fn stop(&self) {
        if self.domain.destroy().is_ok() {
            return;
        }
        if let Ok(conn) = Connect::open(Some("qemu:///system"))
            && let Ok(domain) = conn.lookup_domain_by_name(&self.name)
        {
            let _ = domain.destroy();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // Its files go with the TempDir.
        self.stop();
    }
}

fn domain_xml(name: &str, dir: &Path, disks: &[PathBuf], options: &GuestOptions) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/guest-xml");
    let agent = match options.agent {
        Agent::Running => "on".to_owned(),
        Agent::Absent => "off".to_owned(),
        Agent::Late(secs) => format!("late:{secs}"),
    };
    let console = dir.join("console.log");
    let mut command = Command::new(script);
    command.args([
        "--name",
        name,
        "--console",
        path_str(&console),
        "--agent",
        &agent,
    ]);
    for disk in disks {
        command.args(["--disk", path_str(disk)]);
    }
    if !options.agent_channel {
        command.arg("--no-agent-channel");
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "guest-xml failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs qemu-io with `args` (the image last), panicking with its message on failure.
pub fn qemu_io(args: &[&str]) -> String {
    let output = Command::new("qemu-io").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "qemu-io {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs qemu-img with `args`, panicking with its message on failure.
pub fn qemu_img(args: &[&str]) -> String {
    let output = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Destroys test guests whose test process is gone (a run killed before its cleanup).
pub fn remove_leftovers(conn: &Connect) {
    let Ok(domains) = conn.list_all_domains(0) else {
        return;
    };
    for domain in domains {
        let Ok(name) = domain.name() else { continue };
        let Some(rest) = name.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if !alive {
            let _ = domain.destroy();
            let _ = domain.undefine();
        }
    }
}

/// A place among the guests allowed to run at once in this test binary.
pub struct GuestSlot;

static RUNNING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

impl GuestSlot {
    pub fn acquire() -> GuestSlot {
        let limit = std::env::var("RVDSM_TEST_MAX_GUESTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2usize);
        let (count, freed) = &RUNNING;
        let mut running = count.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= limit {
            running = freed.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        GuestSlot
    }
}

impl Drop for GuestSlot {
    fn drop(&mut self) {
        let (count, freed) = &RUNNING;
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
    }
}

/// One `guest-ping` to the agent of `domain`.
pub fn ping_domain(domain: &Domain) -> Result<(), VirtError> {
    agent::execute(domain, guest_ping {}, AGENT_CALL_TIMEOUT).map(|_| ())
}

/// Runs `script` with `/bin/sh -c` in the guest of `domain` (called `name` in messages)
/// through `guest-exec`, waits (bounded) for it to end, and returns its exit code and standard
/// output.
pub fn exec_in(domain: &Domain, name: &str, script: &str) -> (i64, String) {
    let command = guest_exec {
        path: "/bin/sh".into(),
        arg: Some(vec!["-c".into(), script.into()]),
        env: None,
        input_data: None,
        capture_output: Some(GuestExecCaptureOutput::flag(true)),
    };
    let pid = agent::execute(domain, command, AGENT_CALL_TIMEOUT)
        .unwrap_or_else(|e| panic!("guest-exec {script:?} in {name}: {e}"))
        .pid;
    let mut status = None;
    let finished = wait_until(Duration::from_secs(30), || {
        let s = agent::execute(domain, guest_exec_status { pid }, AGENT_CALL_TIMEOUT)
            .unwrap_or_else(|e| panic!("guest-exec-status in {name}: {e}"));
        let exited = s.exited;
        status = Some(s);
        exited
    });
    assert!(finished, "{script:?} did not finish in {name}");
    let status = status.unwrap();
    let out = String::from_utf8_lossy(&status.out_data.unwrap_or_default()).into_owned();
    (status.exitcode.unwrap_or(-1), out)
}
