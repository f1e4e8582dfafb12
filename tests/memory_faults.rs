//! Snapshots with memory (`snapMemory`) under faults, on real guests whose RAM holds hundreds
//! of MiB of written data (so that the dump lasts): rvdsmd killed (`SIGKILL`) mid-dump, the
//! VM's QEMU killed mid-dump, the dump's filesystem full during the dump (both modes), and a
//! dump volume too small. Each ends with the VM running on a sound chain (or stopped by its
//! own fault), never left paused, the job's outcome true to what the VM uses, the memory
//! volumes ILLEGAL whenever the snapshot failed, and nothing leaked. Run alone: it kills the
//! QEMU it started (by pid).

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::chain::{active_volume, chain_problems, new_top, volume_of, wait_job};
use common::domain::{Fixture, new_id};
use common::engine::{Undefine, engine_xml, vm_name};
use common::guest::{AGENT_BOOT_TIMEOUT, GuestSlot, exec_in, ping_domain};
use common::{libvirt, wait_until};
use serde_json::{Value, json};
use virt::connect::Connect;
use virt::domain::Domain;

const MIB: u64 = 1 << 20;
/// How long a memory snapshot may take under TCG on a shared 2-core machine.
const MEMORY_JOB_TIMEOUT: Duration = Duration::from_secs(300);
/// How much of the dump must be on disk before a kill counts as "mid-dump".
const MID_DUMP: u64 = 32 * MIB;

/// A VM as an engine runs it (`VM.create` on a volume of the fixture's domain, the drive
/// metadata naming it), with `mib` MiB of RAM; undefined when dropped if still there.
struct Vm {
    uuid: String,
    console_log: PathBuf,
    _files: tempfile::TempDir,
    _undefine: Undefine,
    _slot: GuestSlot,
}

impl Vm {
    /// Creates the VM on `(image, volume)` and waits until its guest is ready.
    fn boot(f: &Fixture, image: &str, volume: &str, mib: u64) -> Vm {
        let slot = GuestSlot::acquire();
        let uuid = new_id();
        let files = tempfile::tempdir().unwrap();
        let xml = engine_xml(f, &uuid, &vm_name("memfault"), image, volume, files.path());
        let memory = format!("<memory unit='MiB'>{mib}</memory>");
        let xml = xml.replacen("<memory unit='MiB'>256</memory>", &memory, 1);
        assert!(
            xml.contains(&memory),
            "the fixture's XML changed its <memory>"
        );
        let vm = Vm {
            console_log: common::daemon::console_dir(f.daemon.dir.path())
                .join(format!("{uuid}.log")),
            _undefine: Undefine(uuid.clone()),
            uuid,
            _files: files,
            _slot: slot,
        };
        let created = f.daemon.ok(
            "VM.create",
            json!({"vmID": vm.uuid, "vmParams": {"xml": xml}}),
        );
        assert_eq!(created["status"], "Up", "{created}");
        let ready = wait_until(AGENT_BOOT_TIMEOUT, || {
            vm.console().contains("rvdsm-guest: ready")
        });
        assert!(
            ready,
            "{} did not boot; console:\n{}",
            vm.uuid,
            vm.console()
        );
        vm
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console_log).unwrap_or_default()
    }

    /// The libvirt domain, through a fresh connection.
    fn domain(&self) -> Domain {
        let conn = Connect::open(Some("qemu:///system")).unwrap();
        conn.lookup_domain_by_uuid_string(&self.uuid)
            .unwrap_or_else(|e| panic!("no domain {}: {e}", self.uuid))
    }

    /// Waits (bounded) until the agent answers, then runs `script` in the guest.
    fn exec(&self, script: &str) -> (i64, String) {
        let domain = self.domain();
        assert!(
            wait_until(AGENT_BOOT_TIMEOUT, || ping_domain(&domain).is_ok()),
            "the agent of {} never answered; console:\n{}",
            self.uuid,
            self.console()
        );
        exec_in(&domain, &self.uuid, script)
    }

    /// Puts `mib` MiB of random bytes in a tmpfs of the guest's RAM: a dump that lasts. (A
    /// 16 MiB random file copied: random bytes are slow to make under TCG, and QEMU writes
    /// every copy as it writes any page.)
    fn fill_ram(&self, mib: u64) {
        let copies = mib / 16;
        let (code, out) = self.exec(&format!(
            "(mkdir -p /fill && mount -t tmpfs -o size={}m tmpfs /fill && \
              dd if=/dev/urandom of=/fill/0 bs=1M count=16 2>/dev/null && \
              for i in $(seq 1 {}); do cp /fill/0 /fill/$i; done && touch /fill/done) \
             </dev/null >/dev/null 2>&1 &",
            mib + 32,
            copies - 1
        ));
        assert_eq!(code, 0, "{out}");
        let filled = wait_until(Duration::from_secs(180), || {
            self.exec("test -e /fill/done").0 == 0
        });
        assert!(filled, "the guest never filled its RAM");
    }

    /// libvirt's state of the domain (`running`, `paused`, `shut off`...), from virsh.
    fn libvirt_state(&self) -> String {
        let out = std::process::Command::new("virsh")
            .args(["-c", "qemu:///system", "domstate", &self.uuid])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The pid of the VM's QEMU, from libvirt's pid file.
    fn qemu_pid(&self) -> nix::unistd::Pid {
        let name = self.domain().name().unwrap();
        let file = format!("/run/libvirt/qemu/{name}.pid");
        let pid = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"));
        nix::unistd::Pid::from_raw(pid.trim().parse().unwrap())
    }

    /// Asserts the VM runs (libvirt and rvdsm agree, not paused) and its guest writes to its
    /// disk.
    fn assert_running_and_writing(&self, f: &Fixture, what: &str) {
        assert_eq!(
            self.libvirt_state(),
            "running",
            "{what}: the VM is not running"
        );
        let stats = f.daemon.ok("VM.getStats", json!({"vmID": self.uuid}));
        assert_eq!(stats[0]["status"], "Up", "{what}: {stats}");
        let (code, out) = self.exec("echo alive > /mnt/data/alive && sync && cat /mnt/data/alive");
        assert_eq!(
            (code, out.as_str()),
            (0, "alive\n"),
            "{what}: the guest does not write"
        );
    }
}

/// The dump and configuration volumes of one snapshot, each alone in its own new image, as an
/// engine creates them.
struct MemoryVolumes {
    dump: (String, String),
    conf: (String, String),
    dump_capacity: u64,
}

impl MemoryVolumes {
    /// The engine's sizes for a guest of `ram_mib`: RAM + 200 MiB + 64 MiB for its one
    /// monitor, and 1 MiB of configuration. `before` runs on the dump's image directory
    /// before its volume is created (to mount a small filesystem there).
    fn create(f: &Fixture, ram_mib: u64, before: impl FnOnce(&Path)) -> MemoryVolumes {
        Self::with_dump_size(f, (ram_mib + 200 + 64) * MIB, before)
    }

    fn with_dump_size(f: &Fixture, dump_capacity: u64, before: impl FnOnce(&Path)) -> Self {
        let dump = (new_id(), new_id());
        before(&f.image_dir(&dump.0));
        raw_volume(f, &dump, dump_capacity, "MEMD");
        let conf = (new_id(), new_id());
        raw_volume(f, &conf, MIB, "MEMM");
        MemoryVolumes {
            dump,
            conf,
            dump_capacity,
        }
    }

    /// VDSM's `sdUUID,spUUID,dumpImg,dumpVol,confImg,confVol`.
    fn handle(&self, f: &Fixture) -> String {
        format!(
            "{},{},{},{},{},{}",
            f.domain, f.pool, self.dump.0, self.dump.1, self.conf.0, self.conf.1
        )
    }

    fn dump_path(&self, f: &Fixture) -> PathBuf {
        f.image_dir(&self.dump.0).join(&self.dump.1)
    }

    /// The bytes of the dump on disk now (its file is sparse: its length says nothing).
    fn dump_allocated(&self, f: &Fixture) -> u64 {
        std::fs::metadata(self.dump_path(f)).map_or(0, |m| m.blocks() * 512)
    }

    /// The legality of both volumes (`Volume.getInfo`).
    fn legality(&self, f: &Fixture) -> [Value; 2] {
        [
            f.info(&self.dump.0, &self.dump.1)["legality"].clone(),
            f.info(&self.conf.0, &self.conf.1)["legality"].clone(),
        ]
    }

    fn assert_legality(&self, f: &Fixture, legality: &str, what: &str) {
        assert_eq!(
            self.legality(f),
            [json!(legality), json!(legality)],
            "{what}: the memory volumes; log:\n{}",
            f.daemon.log()
        );
    }
}

/// A RAW sparse volume `(image, volume)` of `size` alone in its new image.
fn raw_volume(f: &Fixture, (image, volume): &(String, String), size: u64, disk_type: &str) {
    common::domain::assert_success(&f.create(
        image,
        volume,
        json!({"size": size.to_string(), "volFormat": 5, "preallocate": 2, "diskType": disk_type}),
    ));
}

/// A VM on a new base volume of its own image, a new top volume for its disk, and the memory
/// volumes of a snapshot of it.
struct Scene {
    vm: Vm,
    image: String,
    base: String,
    top: String,
    memory: MemoryVolumes,
}

impl Scene {
    /// `ram_mib` of RAM, `fill_mib` of them written; `before_dump` as in
    /// [`MemoryVolumes::create`].
    fn new(f: &Fixture, ram_mib: u64, fill_mib: u64, before_dump: impl FnOnce(&Path)) -> Scene {
        let (image, base, _) = f.data_volume();
        let vm = Vm::boot(f, &image, &base, ram_mib);
        if fill_mib > 0 {
            vm.fill_ram(fill_mib);
        }
        let top = new_top(f, &image, &base);
        let memory = MemoryVolumes::create(f, ram_mib, before_dump);
        Scene {
            vm,
            image,
            base,
            top,
            memory,
        }
    }

    /// `VM.snapshot` in the engine's form with memory, under `job`.
    fn params(&self, f: &Fixture, job: &str, mode: &str) -> Value {
        json!({
            "vmID": self.vm.uuid, "jobUUID": job, "frozen": false,
            "snapDrives": [{"domainID": f.domain, "imageID": self.image,
                            "baseVolumeID": self.base, "volumeID": self.top}],
            "snapMemory": self.memory.handle(f),
            "memoryMode": mode,
        })
    }

    /// Starts a snapshot with memory that stops at `snapshot:before-dump` (the daemon
    /// restarted to arm it), lets it go on, and returns once `MID_DUMP` bytes of the dump are
    /// on disk; returns the job.
    fn snapshot_until_mid_dump(&self, f: &mut Fixture, mode: &str) -> String {
        let marker = f.daemon.restart_paused_at("snapshot:before-dump");
        let job = new_id();
        assert_eq!(
            f.daemon.ok("VM.snapshot", self.params(f, &job, mode)),
            json!(true)
        );
        assert!(
            wait_until(Duration::from_secs(60), || marker.exists()),
            "snapshot:before-dump never reached; log:\n{}",
            f.daemon.log()
        );
        let before = self.memory.dump_allocated(f);
        assert!(
            before < MID_DUMP,
            "{before} bytes of a dump before libvirt's call"
        );
        std::fs::remove_file(&marker).unwrap();
        let dumping = wait_until_fine(Duration::from_secs(60), || {
            self.memory.dump_allocated(f) >= MID_DUMP
        });
        assert!(dumping, "the dump never started; log:\n{}", f.daemon.log());
        job
    }

    /// The chain of the disk ends at `leaf` and is sound, with nothing leaked.
    fn assert_chain(&self, f: &Fixture, leaf: &str, what: &str) {
        assert_eq!(
            volume_of(&active_volume(f, &self.vm.uuid)),
            leaf,
            "{what}: the VM is on the wrong volume"
        );
        let problems = chain_problems(f, &self.image, leaf);
        assert!(problems.is_empty(), "{what}: {problems:#?}");
    }
}

/// [`wait_until`] polling every 5 ms: a dump is written at hundreds of MiB per second.
fn wait_until_fine(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn rvdsmd_killed_mid_dump_ends_the_job_truthfully_and_leaves_the_vm_running() {
    let Some(_conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let scene = Scene::new(&f, 512, 320, |_| {});
    let job = scene.snapshot_until_mid_dump(&mut f, "paused");
    let at_kill = scene.memory.dump_allocated(&f);
    f.daemon.restart_in_place(&[]);

    let info = wait_job(&f, &job, MEMORY_JOB_TIMEOUT);
    let what = "rvdsmd killed mid-dump";
    match info["status"].as_str() {
        Some("done") => {
            eprintln!(
                "{what} ({at_kill} bytes of the dump written): libvirt finished the snapshot on \
                 its own; the restarted rvdsmd ended the job done, recovered: {info}"
            );
            assert_eq!(info["result"]["recovered"], true, "{info}");
            scene.assert_chain(&f, &scene.top, what);
            assert_eq!(
                f.info(&scene.image, &scene.base)["snapshot"]["reason"],
                "recovered"
            );
            let dump = std::fs::metadata(scene.memory.dump_path(&f)).unwrap();
            assert_eq!(
                dump.len(),
                scene.memory.dump_capacity,
                "the dump's size is not back to its capacity"
            );
            assert!(dump.blocks() * 512 > 320 * MIB, "the dump is not whole");
            scene.memory.assert_legality(&f, "LEGAL", what);
        }
        Some("failed") => {
            eprintln!("{what} ({at_kill} bytes of the dump written): rolled back: {info}");
            scene.assert_chain(&f, &scene.base, what);
            assert!(!f.image_dir(&scene.image).join(&scene.top).exists());
            scene.memory.assert_legality(&f, "ILLEGAL", what);
        }
        _ => panic!("{what}: {info}"),
    }
    scene.vm.assert_running_and_writing(&f, what);
}

#[test]
fn qemu_killed_mid_dump_fails_the_job_and_leaves_the_old_leaf_sound() {
    let Some(_conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let scene = Scene::new(&f, 512, 320, |_| {});
    let job = scene.snapshot_until_mid_dump(&mut f, "paused");
    nix::sys::signal::kill(scene.vm.qemu_pid(), nix::sys::signal::Signal::SIGKILL).unwrap();

    let info = wait_job(&f, &job, MEMORY_JOB_TIMEOUT);
    let what = "QEMU killed mid-dump";
    assert_eq!(info["status"], "failed", "{what}: {info}");
    assert_eq!(info["error"]["code"], 48, "{info}");
    // Down by its own fault: rvdsm says so and does not start it again.
    let mut stats = Value::Null;
    let down = wait_until(Duration::from_secs(30), || {
        stats = f.daemon.ok("VM.getStats", json!({"vmID": scene.vm.uuid}));
        stats[0]["status"] == "Down"
    });
    assert!(down, "{what}: {stats}");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        scene.vm.libvirt_state(),
        "shut off",
        "{what}: started again"
    );
    // The new volume was never written: deleted; the old leaf a LEAF again, LEGAL, sound.
    assert!(
        !f.image_dir(&scene.image).join(&scene.top).exists(),
        "{what}: the new volume leaked; log:\n{}",
        f.daemon.log()
    );
    let problems = chain_problems(&f, &scene.image, &scene.base);
    assert!(problems.is_empty(), "{what}: {problems:#?}");
    let check = common::guest::qemu_img(&[
        "check",
        "-q",
        f.image_dir(&scene.image)
            .join(&scene.base)
            .to_str()
            .unwrap(),
    ]);
    assert_eq!(check, "", "{what}: qemu-img check of the old leaf");
    scene.memory.assert_legality(&f, "ILLEGAL", what);
    let _ = f.daemon.call(
        common::daemon::Via::Unix,
        "VM.destroy",
        json!({"vmID": scene.vm.uuid}),
    );
}

#[test]
fn a_full_filesystem_under_the_dump_fails_the_job_and_the_vm_runs_on() {
    let Some(_conn) = libvirt() else { return };
    let f = Fixture::new();
    // The dump's image on a 48 MiB tmpfs: its volume is sparse, of the engine's size, and the
    // guest's RAM holds more than 48 MiB of written data.
    let mut mounts = Vec::new();
    let scene = Scene::new(&f, 256, 128, |dir| {
        mounts.push(common::Tmpfs::mount(dir, "48m"));
    });
    let leaf = &scene.base;
    for mode in ["paused", "live"] {
        let what = format!("a full filesystem under a {mode} dump");
        // The first round uses the scene's volumes, the second new ones.
        let (top, memory) = if mode == "paused" {
            (scene.top.clone(), None)
        } else {
            let memory = MemoryVolumes::create(&f, 256, |dir| {
                mounts.push(common::Tmpfs::mount(dir, "48m"));
            });
            (new_top(&f, &scene.image, leaf), Some(memory))
        };
        let memory = memory.as_ref().unwrap_or(&scene.memory);
        let files_in_dump_dir = files_in(&f.image_dir(&memory.dump.0));
        let job = new_id();
        let mut params = scene.params(&f, &job, mode);
        params["snapDrives"][0]["baseVolumeID"] = json!(leaf);
        params["snapDrives"][0]["volumeID"] = json!(top);
        params["snapMemory"] = json!(memory.handle(&f));
        assert_eq!(f.daemon.ok("VM.snapshot", params), json!(true));
        let info = wait_job(&f, &job, MEMORY_JOB_TIMEOUT);
        eprintln!("{what}: {info}");
        for line in f.daemon.log().lines().filter(|l| l.contains("RAM dump")) {
            eprintln!("{what}: rvdsmd: {line}");
        }
        assert_eq!(info["status"], "failed", "{what}: {info}");
        assert_eq!(info["error"]["code"], 48, "{info}");
        assert!(
            !f.image_dir(&scene.image).join(&top).exists(),
            "{what}: the new volume leaked"
        );
        scene.assert_chain(&f, leaf, &what);
        memory.assert_legality(&f, "ILLEGAL", &what);
        assert_eq!(
            files_in(&f.image_dir(&memory.dump.0)),
            files_in_dump_dir,
            "{what}: files left beside the dump"
        );
        scene.vm.assert_running_and_writing(&f, &what);
    }
    assert_eq!(
        f.info(&scene.image, &scene.base)["voltype"],
        "LEAF",
        "the old leaf is a LEAF again"
    );
}

/// The names of the files in `dir`.
fn files_in(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Every file under `dir` whose name or content names `needle`.
fn files_naming(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_naming(&path, needle));
        } else if path.to_string_lossy().contains(needle)
            || std::fs::read(&path)
                .is_ok_and(|bytes| String::from_utf8_lossy(&bytes).contains(needle))
        {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_dump_volume_too_small_is_refused_and_nothing_changes() {
    let Some(_conn) = libvirt() else { return };
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let vm = Vm::boot(&f, &image, &base, 256);
    let top = new_top(&f, &image, &base);
    // 16 MiB: less than the guest's RAM + 64 MiB.
    let memory = MemoryVolumes::with_dump_size(&f, 16 * MIB, |_| {});
    let scene = Scene {
        vm,
        image,
        base,
        top,
        memory,
    };
    let volumes = [
        (&scene.image, &scene.base),
        (&scene.image, &scene.top),
        (&scene.memory.dump.0, &scene.memory.dump.1),
        (&scene.memory.conf.0, &scene.memory.conf.1),
    ];
    let infos = |f: &Fixture| -> Vec<(Value, Value)> {
        volumes
            .iter()
            .map(|(i, v)| {
                let info = f.info(i, v);
                (info["legality"].clone(), info["voltype"].clone())
            })
            .collect()
    };
    let infos_before = infos(&f);
    let xml_before = scene.vm.domain().xml_desc(0).unwrap();
    let files_before = f.files();

    for mode in ["paused", "live"] {
        let job = new_id();
        let (code, message) = f.daemon.err("VM.snapshot", scene.params(&f, &job, mode));
        eprintln!("{mode}: refused with {code}: {message}");
        assert!(message.contains("too small"), "{message}");
        let jobs = f.daemon.ok("Host.getJobs", Value::Null);
        assert!(
            jobs.get(&job).is_none(),
            "{mode}: a job for a refusal: {jobs}"
        );
        let state = f.daemon.dir.path().join("state");
        assert_eq!(
            files_naming(&state, &job),
            Vec::<PathBuf>::new(),
            "{mode}: a refusal journaled"
        );
    }
    assert_eq!(
        infos(&f),
        infos_before,
        "the volumes' legality or role changed"
    );
    assert_eq!(
        scene.vm.domain().xml_desc(0).unwrap(),
        xml_before,
        "the VM's XML changed"
    );
    assert_eq!(f.files(), files_before, "a refusal changed files");
    assert_eq!(volume_of(&active_volume(&f, &scene.vm.uuid)), scene.base);
    scene.vm.assert_running_and_writing(&f, "refused");
}

/// Sends SIGCONT to a stopped process when dropped: a failing test never leaves a QEMU
/// stopped.
struct Stopped(nix::unistd::Pid);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

#[test]
fn a_dump_that_starts_late_is_not_taken_for_a_full_one() {
    let Some(_conn) = libvirt() else { return };
    let mut f = Fixture::new();
    let scene = Scene::new(&f, 256, 0, |_| {});
    let marker = f.daemon.restart_paused_at("snapshot:before-dump");
    let job = new_id();
    assert_eq!(
        f.daemon.ok("VM.snapshot", scene.params(&f, &job, "paused")),
        json!(true)
    );
    assert!(
        wait_until(Duration::from_secs(60), || marker.exists()),
        "snapshot:before-dump never reached; log:\n{}",
        f.daemon.log()
    );
    // A QEMU that stops answering for a second as the dump starts (a loaded host): libvirt's
    // call waits on its monitor; the dump's file may still have its volume's length (sparse,
    // nothing written), which must not read as a dump that filled its volume.
    let qemu = scene.vm.qemu_pid();
    nix::sys::signal::kill(qemu, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let stopped = Stopped(qemu);
    std::fs::remove_file(&marker).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    drop(stopped);

    let info = wait_job(&f, &job, MEMORY_JOB_TIMEOUT);
    assert_eq!(
        info["status"],
        "done",
        "a healthy snapshot failed: {info}; log:\n{}",
        f.daemon.log()
    );
    assert_eq!(info["result"]["memory"]["mode"], "paused", "{info}");
    scene.assert_chain(&f, &scene.top, "a late dump");
    scene.memory.assert_legality(&f, "LEGAL", "a late dump");
    scene.vm.assert_running_and_writing(&f, "a late dump");
}
