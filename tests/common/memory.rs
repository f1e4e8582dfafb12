//! Memory snapshots as an engine drives them: the two RAW volumes it creates first (the RAM
//! dump and the configuration), the six-id string and the volume specs that name them, a VM
//! created or restored by `VM.create` with a small RAM, and the guest state a restore must
//! bring back: a marker only in RAM (a tmpfs), a counter kept by a running process, the clock.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use virt::connect::Connect;
use virt::domain::Domain;

use super::daemon::Via;
use super::domain::{Fixture, assert_success, new_id};
use super::engine::{Undefine, engine_xml, vm_name};
use super::guest::{AGENT_BOOT_TIMEOUT, exec_in, ping_domain};
use super::wait_until;

const MIB: u64 = 1 << 20;
/// The RAM of the guests of these tests: more than the 96 MiB the fixture needs, small enough
/// for a quick dump under TCG.
pub const GUEST_MIB: u64 = 128;
/// Where the guest keeps its marker only in RAM (`/run` is a tmpfs in the fixture's init).
pub const RAM_MARKER: &str = "/run/m";
const COUNTER: &str = "/run/counter";
const COUNTER_PID: &str = "/run/counter.pid";

/// The dump and configuration volumes of one memory snapshot or hibernation, each in its own
/// new image of the fixture's domain, as an engine creates them before its call.
pub struct MemoryVolumes {
    pub dump_image: String,
    pub dump_volume: String,
    pub conf_image: String,
    pub conf_volume: String,
}

impl MemoryVolumes {
    /// The engine's sizes for a guest of [`GUEST_MIB`]: RAM + 200 MiB + 64 MiB for its one
    /// monitor (`MemoryUtils.java`), and a configuration volume of 1 MiB.
    pub fn for_guest(f: &Fixture) -> MemoryVolumes {
        MemoryVolumes::with_dump_size(f, (GUEST_MIB + 200 + 64) * MIB)
    }

    /// The two volumes, the dump one of `dump_bytes`.
    pub fn with_dump_size(f: &Fixture, dump_bytes: u64) -> MemoryVolumes {
        let (dump_image, dump_volume) = raw_volume(f, dump_bytes, "MEMD");
        let (conf_image, conf_volume) = raw_volume(f, MIB, "MEMM");
        MemoryVolumes {
            dump_image,
            dump_volume,
            conf_image,
            conf_volume,
        }
    }

    /// The same dump with another configuration volume (`conf`: image and volume).
    pub fn with_conf(&self, conf: &(String, String)) -> MemoryVolumes {
        MemoryVolumes {
            dump_image: self.dump_image.clone(),
            dump_volume: self.dump_volume.clone(),
            conf_image: conf.0.clone(),
            conf_volume: conf.1.clone(),
        }
    }

    /// VDSM's `sdUUID,spUUID,dumpImg,dumpVol,confImg,confVol` (`snapMemory`,
    /// `hiberVolHandle`).
    pub fn handle(&self, f: &Fixture) -> String {
        format!(
            "{},{},{},{},{},{}",
            f.domain, f.pool, self.dump_image, self.dump_volume, self.conf_image, self.conf_volume
        )
    }

    /// `vmParams` of a restore in VDSM 4.2+'s form (`memoryDumpVolume`, `memoryConfVolume`).
    pub fn restore_params(&self, f: &Fixture) -> Value {
        json!({
            "memoryDumpVolume": spec(f, &self.dump_image, &self.dump_volume),
            "memoryConfVolume": spec(f, &self.conf_image, &self.conf_volume),
        })
    }

    /// `vmParams` of a resume after hibernation (`hiberVolHandle`).
    pub fn hiber_params(&self, f: &Fixture) -> Value {
        json!({"hiberVolHandle": self.handle(f)})
    }

    pub fn dump_path(&self, f: &Fixture) -> PathBuf {
        f.image_dir(&self.dump_image).join(&self.dump_volume)
    }

    pub fn conf_path(&self, f: &Fixture) -> PathBuf {
        f.image_dir(&self.conf_image).join(&self.conf_volume)
    }
}

/// A volume spec of `vmParams` (`poolID`, `domainID`, `imageID`, `volumeID`).
fn spec(f: &Fixture, image: &str, volume: &str) -> Value {
    json!({"poolID": f.pool, "domainID": f.domain, "imageID": image, "volumeID": volume})
}

/// A new RAW sparse volume of `size` in its own new image (`disk_type`: MEMD or MEMM, as an
/// engine's); returns `(image, volume)`.
pub fn raw_volume(f: &Fixture, size: u64, disk_type: &str) -> (String, String) {
    let (image, volume) = (new_id(), new_id());
    assert_success(&f.create(
        &image,
        &volume,
        json!({"size": size.to_string(), "volFormat": 5, "preallocate": 2, "diskType": disk_type}),
    ));
    (image, volume)
}

/// Writes `bytes` at the start of the volume file `path` (its size kept) and syncs it: a
/// hostile or broken host sharing the domain.
pub fn overwrite_start(path: &std::path::Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

/// The SHA-256 of a file (`sha256sum`: the dump is hundreds of MiB).
pub fn file_sum(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// `VM.snapshot` in the engine's form with memory: the disk from `base` to `top`, the RAM into
/// `memory`, under `job`; `mode` is rvdsm's `memoryMode` (absent: the default).
pub fn memory_snapshot_params(
    f: &Fixture,
    vm: &str,
    (image, base, top): (&str, &str, &str),
    memory: &MemoryVolumes,
    job: &str,
    mode: Option<&str>,
) -> Value {
    let mut params = json!({
        "vmID": vm, "jobUUID": job, "frozen": false,
        "snapDrives": [{"domainID": f.domain, "imageID": image, "baseVolumeID": base, "volumeID": top}],
        "snapMemory": memory.handle(f),
    });
    if let Some(mode) = mode {
        params["memoryMode"] = json!(mode);
    }
    params
}

/// How long a memory snapshot, a hibernation or a restore may take under TCG on a shared
/// 2-core machine.
pub const MEMORY_JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// A fixture guest of [`GUEST_MIB`] created (or restored) by `VM.create` on `(image, volume)`
/// of the fixture's domain; undefined when dropped if still there.
pub struct MemVm {
    pub uuid: String,
    pub console_log: PathBuf,
    _files: tempfile::TempDir,
    _undefine: Undefine,
}

impl MemVm {
    /// `VM.create` of `vm` on `(image, volume)` with `extra` added to its `vmParams` (the
    /// restore volumes); returns the VM's guard (held even when refused, so that a test can
    /// look for leftovers first) and the call's outcome.
    pub fn start(
        f: &Fixture,
        vm: &str,
        image: &str,
        volume: &str,
        extra: Value,
    ) -> (MemVm, Result<Value, (i32, String)>) {
        let files = tempfile::tempdir().unwrap();
        let xml = engine_xml(f, vm, &vm_name("memory"), image, volume, files.path());
        let full = format!("<memory unit='MiB'>{GUEST_MIB}</memory>");
        let xml = xml.replacen("<memory unit='MiB'>256</memory>", &full, 1);
        assert!(
            xml.contains(&full),
            "the fixture's XML changed its <memory>"
        );
        let mut params = json!({"xml": xml});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            params[k] = v;
        }
        let guard = MemVm {
            uuid: vm.to_owned(),
            console_log: super::daemon::console_dir(f.daemon.dir.path()).join(format!("{vm}.log")),
            _files: files,
            _undefine: Undefine(vm.to_owned()),
        };
        let outcome = match f.daemon.call(
            Via::Unix,
            "VM.create",
            json!({"vmID": vm, "vmParams": params}),
        ) {
            Ok(reply) => Ok(reply),
            Err(rvdsm::client::ClientError::Server { code, message }) => Err((code, message)),
            Err(other) => panic!("VM.create: {other}; log:\n{}", f.daemon.log()),
        };
        (guard, outcome)
    }

    /// Boots `vm` on `(image, volume)` and waits until its guest is ready.
    pub fn boot(f: &Fixture, vm: &str, image: &str, volume: &str) -> MemVm {
        let (booted, created) = MemVm::start(f, vm, image, volume, json!({}));
        let created = created.unwrap_or_else(|e| panic!("VM.create: {e:?}"));
        assert_eq!(created["status"], "Up", "{created}");
        let ready = wait_until(AGENT_BOOT_TIMEOUT, || {
            booted.console().contains("rvdsm-guest: ready")
        });
        assert!(ready, "{vm} did not boot; console:\n{}", booted.console());
        booted
    }

    /// The console log so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console_log).unwrap_or_default()
    }

    /// The libvirt domain of the VM, through a fresh connection.
    pub fn domain(&self) -> Domain {
        let conn = Connect::open(Some("qemu:///system")).unwrap();
        conn.lookup_domain_by_uuid_string(&self.uuid)
            .unwrap_or_else(|e| panic!("no domain {}: {e}", self.uuid))
    }

    /// Whether the agent answers `guest-ping` within `wait`.
    pub fn pings(&self, wait: Duration) -> bool {
        let domain = self.domain();
        wait_until(wait, || ping_domain(&domain).is_ok())
    }

    /// Waits (bounded) until the agent answers, then runs `script` in the guest.
    pub fn exec(&self, script: &str) -> (i64, String) {
        assert!(
            self.pings(AGENT_BOOT_TIMEOUT),
            "the agent of {} never answered; console:\n{}",
            self.uuid,
            self.console()
        );
        exec_in(&self.domain(), &self.uuid, script)
    }

    /// Runs `script` and expects it to succeed; returns its output, trimmed.
    pub fn run(&self, script: &str) -> String {
        let (code, out) = self.exec(script);
        assert_eq!(code, 0, "{script}: {out}");
        out.trim().to_owned()
    }

    /// libvirt's word for the domain's state (`running`, `paused`, `shut off`), from virsh.
    pub fn libvirt_state(&self) -> String {
        let out = Command::new("virsh")
            .args(["-c", "qemu:///system", "domstate", &self.uuid])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Sets the marker kept only in RAM.
    pub fn set_ram_marker(&self, text: &str) {
        self.run(&format!("echo {text} > {RAM_MARKER}"));
    }

    /// The marker kept only in RAM.
    pub fn ram_marker(&self) -> String {
        self.run(&format!("cat {RAM_MARKER}"))
    }

    /// Starts, in the background of a `guest-exec` (so that it outlives it), a shell loop
    /// that counts and writes its count to a tmpfs file every 100 ms; its pid is kept beside.
    pub fn start_counter(&self) {
        self.run(&format!(
            "(i=0; while :; do i=$((i+1)); echo $i > {COUNTER}.new; mv {COUNTER}.new {COUNTER}; \
             sleep 0.1; done) >/dev/null 2>&1 </dev/null & echo $! > {COUNTER_PID}"
        ));
        let started = wait_until(Duration::from_secs(10), || {
            self.exec(&format!("cat {COUNTER}")).0 == 0
        });
        assert!(started, "the counter never wrote");
    }

    /// The counter's last written value.
    pub fn counter(&self) -> u64 {
        let out = self.run(&format!("cat {COUNTER}"));
        out.parse()
            .unwrap_or_else(|e| panic!("counter {out:?}: {e}"))
    }

    /// Whether the process started by [`MemVm::start_counter`] still runs.
    pub fn counter_alive(&self) -> bool {
        self.exec(&format!("kill -0 $(cat {COUNTER_PID})")).0 == 0
    }

    /// Gives the guest the `/sbin/hwclock` without which qemu-ga 7.2 answers `guest-set-time`
    /// with "not currently supported" (a real distribution has it; the fixture's busybox links
    /// its applets into /bin only), then sets the guest's clock to the host's through libvirt
    /// (`virsh domtime --now`): the premise of the clock checks. qemu-ga looks for hwclock once
    /// per process, so this comes before any other `guest-set-time`. The link lives in the
    /// initramfs, in RAM: a restore brings it back with the rest.
    pub fn enable_set_time(&self) {
        self.run("[ -e /sbin/hwclock ] || ln -s /bin/busybox /sbin/hwclock");
        let out = Command::new("virsh")
            .args(["-c", "qemu:///system", "domtime", &self.uuid, "--now"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the guest's clock cannot be set: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// How far the guest's clock (`date +%s`) is from the host's, in seconds: negative when
    /// it lags. 0 when within the time the call took.
    pub fn clock_offset(&self) -> i64 {
        let before = unix_now().as_secs() as i64;
        let guest: i64 = self.run("date +%s").parse().unwrap();
        let after = unix_now().as_secs() as i64 + 1;
        if guest < before {
            guest - before
        } else if guest > after {
            guest - after
        } else {
            0
        }
    }

    /// Asserts that the guest's clock is within 3 s of the host's.
    pub fn assert_clock_close(&self, what: &str) {
        let offset = self.clock_offset();
        assert!(
            offset.abs() <= 3,
            "{what}: the guest's clock is {offset} s off the host's"
        );
    }
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
}

/// Whether libvirt knows a domain with `uuid` (running or only defined).
pub fn domain_exists(uuid: &str) -> bool {
    let conn = Connect::open(Some("qemu:///system")).unwrap();
    conn.lookup_domain_by_uuid_string(uuid).is_ok()
}
