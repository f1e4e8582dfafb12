//! Security audit of memory snapshots, restores and hibernation (issue 29), with hostile values
//! tried against a real rvdsmd, a real libvirtd and real files. Who owns each input:
//! - the manager: `snapMemory`/`hiberVolHandle` (six ids), `memoryMode`, the restore volumes
//!   of `VM.create`; trusted to run VMs on this host's volumes, not to name host files nor to
//!   make rvdsm overwrite a disk a VM runs on;
//! - another host sharing the storage domain: every file in it, the configuration volume's
//!   bytes included (a valid checksum proves nothing: anyone can compute it), the dump's bytes
//!   and the `.meta` files. What it forges must never name a host file, another VM, or a disk
//!   at another instant; a restore refused leaves no domain defined and nothing touched.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::domain::{Fixture, assert_success, new_id};
use common::engine::{Undefine, engine_xml, vm_name};
use common::{libvirt, wait_until};
use rvdsm::api::snapshot_types::MemoryMode;
use rvdsm::storage::memory_state::{MemoryState, SavedDisk, SavedFor, SavedVolume, try_encode};
use serde_json::{Value, json};
use uuid::Uuid;

const MIB: u64 = 1 << 20;

/// A new RAW sparse volume of `size` in its own new image, as an engine creates a memory
/// volume; returns `(image, volume)`.
fn raw_volume(f: &Fixture, size: u64) -> (String, String) {
    let (image, volume) = (new_id(), new_id());
    assert_success(&f.create(
        &image,
        &volume,
        json!({"size": size.to_string(), "volFormat": 5, "preallocate": 2, "diskType": "MEMM"}),
    ));
    (image, volume)
}

/// A volume spec of `vmParams`.
fn spec(f: &Fixture, (image, volume): &(String, String)) -> Value {
    json!({"poolID": f.pool, "domainID": f.domain, "imageID": image, "volumeID": volume})
}

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

fn saved(f: &Fixture, (image, volume): &(String, String)) -> SavedVolume {
    SavedVolume {
        domain_id: uuid(&f.domain),
        image_id: uuid(image),
        volume_id: uuid(volume),
    }
}

/// Writes `bytes` at the start of the file `path` (its size kept), as another host would.
fn overwrite_start(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
    file.sync_all().unwrap();
}

fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Whether libvirt knows a domain with `uuid` (running or only defined).
fn domain_exists(uuid: &str) -> bool {
    virsh(&["domstate", uuid]).0
}

/// What must stay as it was: the bytes of some files (host files and volumes) and the list of
/// the domain's files.
struct Untouched {
    paths: Vec<PathBuf>,
    bytes: Vec<Vec<u8>>,
    files: std::collections::BTreeSet<PathBuf>,
}

impl Untouched {
    fn of(f: &Fixture, paths: &[&Path]) -> Untouched {
        Untouched {
            paths: paths.iter().map(|p| p.to_path_buf()).collect(),
            bytes: paths.iter().map(|p| std::fs::read(p).unwrap()).collect(),
            files: f.files(),
        }
    }

    fn assert_same(&self, f: &Fixture, what: &str) {
        for (path, bytes) in self.paths.iter().zip(&self.bytes) {
            assert!(
                std::fs::read(path).unwrap() == *bytes,
                "{what}: {} changed",
                path.display()
            );
        }
        assert_eq!(self.files, f.files(), "{what}: the domain's files changed");
    }
}

/// A VM whose saved RAM another host forges: its disk (a fixture data volume), a dump volume
/// (never written by libvirt: what matters is what rvdsm does before libvirt reads it) and the
/// engine XML a manager would send to restore it.
struct Forgery {
    vm: String,
    disk: (String, String),
    dump: (String, String),
    engine_xml: String,
    _dir: tempfile::TempDir,
    _undefine: Undefine,
}

impl Forgery {
    fn new(f: &Fixture) -> Forgery {
        let (image, volume, _) = f.data_volume();
        let vm = new_id();
        let dir = tempfile::tempdir().unwrap();
        let engine_xml = engine_xml(f, &vm, &vm_name("audit"), &image, &volume, dir.path());
        Forgery {
            _undefine: Undefine(vm.clone()),
            vm,
            disk: (image, volume),
            dump: raw_volume(f, 4 * MIB),
            engine_xml,
            _dir: dir,
        }
    }

    /// A configuration as rvdsm writes it (valid header and checksum) for this VM, its dump
    /// and its disk, holding `domain_xml`.
    fn state(&self, f: &Fixture, domain_xml: &str) -> MemoryState {
        MemoryState {
            vm_id: uuid(&self.vm),
            saved_for: SavedFor::Snapshot,
            mode: MemoryMode::Paused,
            saved_at: 1,
            elapsed_time_offset: 0.0,
            domain_xml: domain_xml.to_owned(),
            disks: vec![SavedDisk {
                target: "vda".into(),
                volume: saved(f, &self.disk),
            }],
            dump: saved(f, &self.dump),
        }
    }

    /// A new configuration volume holding `state`, forged.
    fn conf_with(&self, f: &Fixture, state: &MemoryState) -> (String, String) {
        let conf = raw_volume(f, MIB);
        let bytes = try_encode(state).expect("an encodable forged configuration");
        overwrite_start(&f.image_dir(&conf.0).join(&conf.1), &bytes);
        conf
    }

    /// `VM.create` restoring this VM from `conf` and the dump; the outcome.
    fn restore(&self, f: &Fixture, conf: &(String, String)) -> Result<Value, (i32, String)> {
        let params = json!({
            "xml": self.engine_xml,
            "memoryDumpVolume": spec(f, &self.dump),
            "memoryConfVolume": spec(f, conf),
        });
        match f.daemon.call(
            common::daemon::Via::Unix,
            "VM.create",
            json!({"vmID": self.vm, "vmParams": params}),
        ) {
            Ok(reply) => Ok(reply),
            Err(rvdsm::client::ClientError::Server { code, message }) => Err((code, message)),
            Err(other) => panic!("VM.create: {other}; log:\n{}", f.daemon.log()),
        }
    }

    /// Asserts that a restore from `conf` is refused, with an error saying one of `words`,
    /// that no domain of the VM is left, and that `keep` and the domain's files are as they
    /// were.
    fn assert_refused(
        &self,
        f: &Fixture,
        conf: &(String, String),
        what: &str,
        words: &[&str],
        keep: &[&Path],
    ) {
        let untouched = Untouched::of(f, keep);
        let message = match self.restore(f, conf) {
            Ok(reply) => panic!("{what}: the restore was accepted: {reply}"),
            Err((code, message)) => {
                eprintln!("{what}: refused with {code}: {message}");
                message
            }
        };
        let lower = message.to_lowercase();
        assert!(
            words.iter().any(|w| lower.contains(w)),
            "{what}: the error does not say why ({words:?}): {message}"
        );
        assert!(
            !domain_exists(&self.vm),
            "{what}: a domain of {} is left after the refusal: {}",
            self.vm,
            virsh(&["dumpxml", &self.vm]).1
        );
        untouched.assert_same(f, what);
    }
}

/// The engine XML with its `<devices>` ending in `extra`.
fn with_device(xml: &str, extra: &str) -> String {
    xml.replacen("</devices>", &format!("{extra}</devices>"), 1)
}

/// A host file standing for /etc/shadow, outside the domain.
fn host_file(dir: &Path) -> PathBuf {
    let path = dir.join("shadow");
    std::fs::write(&path, b"root:secret-hash:19000:0:99999:7:::\n").unwrap();
    path
}

#[test]
fn forged_configuration_naming_host_files_or_another_instant_is_refused() {
    let Some(_conn) = libvirt() else { return };
    let f = Fixture::new();
    let forgery = Forgery::new(&f);
    let host = tempfile::tempdir().unwrap();
    let shadow = host_file(host.path());
    let shadow_s = shadow.to_str().unwrap();
    let disk_path = f.image_dir(&forgery.disk.0).join(&forgery.disk.1);
    let dump_path = f.image_dir(&forgery.dump.0).join(&forgery.dump.1);
    let keep: &[&Path] = &[&shadow, &disk_path, &dump_path];
    let base = forgery.engine_xml.clone();

    let deep = "<a>".repeat(5000) + &"</a>".repeat(5000);
    let deep_xml = base.replacen(
        "</domain>",
        &format!("<metadata2>{deep}</metadata2></domain>"),
        1,
    );
    let huge_xml = base.replacen(
        "</domain>",
        &format!(
            "<description>{}</description></domain>",
            "A".repeat(5 << 20)
        ),
        1,
    );
    let cases: Vec<(&str, String, &[&str])> = vec![
        (
            "an extra disk on a host file",
            with_device(
                &base,
                &format!(
                    "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
                     <source file='{shadow_s}'/><target dev='vdz' bus='virtio'/></disk>"
                ),
            ),
            &["vdz", "host path", "disk"],
        ),
        (
            "a CD-ROM on a host file",
            with_device(
                &base,
                &format!(
                    "<disk type='file' device='cdrom'><source file='{shadow_s}'/>\
                     <target dev='sdz' bus='sata'/><readonly/></disk>"
                ),
            ),
            &["sdz", "host path", "cd"],
        ),
        (
            "qemu:commandline",
            base.replacen(
                "<domain ",
                "<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0' ",
                1,
            )
            .replacen(
                "</domain>",
                &format!(
                    "<qemu:commandline><qemu:arg value='-drive'/>\
                     <qemu:arg value='file={shadow_s},format=raw,if=virtio'/></qemu:commandline></domain>"
                ),
                1,
            ),
            &["commandline", "namespace", "qemu"],
        ),
        (
            "a serial console logging into a host file",
            with_device(
                &base,
                &format!(
                    "<serial type='file'><source path='{shadow_s}'/><target port='1'/></serial>"
                ),
            ),
            &["serial", "host path", "second", "twice"],
        ),
        (
            "a kernel outside the boot directories",
            {
                let at = base.find("<kernel>").expect("a <kernel>") + "<kernel>".len();
                let end = base.find("</kernel>").unwrap();
                format!("{}{shadow_s}{}", &base[..at], &base[end..])
            },
            &["kernel", "boot", "host path", "director"],
        ),
        (
            "a second <devices>",
            base.replacen(
                "</domain>",
                &format!(
                    "<devices><disk type='file' device='disk'><source file='{shadow_s}'/>\
                     <target dev='vdy' bus='virtio'/></disk></devices></domain>"
                ),
                1,
            ),
            &["devices", "second", "twice", "once"],
        ),
        ("deep nesting", deep_xml, &["deep", "nest"]),
        ("a huge definition", huge_xml, &["large", "long", "bytes", "too", "size", "bound"]),
    ];
    for (what, xml, words) in &cases {
        assert_ne!(xml, &base, "{what}: the forged XML is the engine's");
        let state = forgery.state(&f, xml);
        let conf = match try_encode(&state) {
            Ok(_) => forgery.conf_with(&f, &state),
            // rvdsm cannot even write it: a reader refuses it as over its bound (tested below
            // with the header forged by hand).
            Err(err) => {
                eprintln!("{what}: not encodable ({err}); forged by hand");
                let conf = raw_volume(&f, 8 * MIB);
                let payload = serde_json::to_vec(&state).unwrap();
                let header = format!(
                    "{} {} {} {}\n",
                    rvdsm::storage::memory_state::MAGIC,
                    rvdsm::storage::memory_state::VERSION,
                    payload.len(),
                    sha256_hex(&payload)
                );
                let mut bytes = header.into_bytes();
                bytes.extend_from_slice(&payload);
                overwrite_start(&f.image_dir(&conf.0).join(&conf.1), &bytes);
                conf
            }
        };
        forgery.assert_refused(&f, &conf, what, words, keep);
    }

    // Rvdsm's own format, but not this VM's dump, nor its disks.
    let mut other_dump = forgery.state(&f, &base);
    other_dump.dump = saved(&f, &raw_volume(&f, 4 * MIB));
    let conf = forgery.conf_with(&f, &other_dump);
    forgery.assert_refused(&f, &conf, "another dump", &["dump"], keep);

    let mut other_disk = forgery.state(&f, &base);
    other_disk.disks[0].volume.volume_id = Uuid::new_v4();
    let conf = forgery.conf_with(&f, &other_disk);
    forgery.assert_refused(
        &f,
        &conf,
        "another volume of the disk",
        &["saved instant", "vda"],
        keep,
    );

    let mut two_disks = forgery.state(&f, &base);
    two_disks.disks.push(SavedDisk {
        target: "vdb".into(),
        volume: saved(&f, &forgery.disk),
    });
    let conf = forgery.conf_with(&f, &two_disks);
    forgery.assert_refused(
        &f,
        &conf,
        "a second saved disk",
        &["disks", "saved with"],
        keep,
    );

    let mut other_vm = forgery.state(&f, &base);
    other_vm.vm_id = Uuid::new_v4();
    let conf = forgery.conf_with(&f, &other_vm);
    forgery.assert_refused(&f, &conf, "another VM's", &["saved for"], keep);
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Finding 1: the saved definition's own `<uuid>` is never compared with the VM's. A
/// configuration forged by another host for VM A (its id is in A's own configuration volume,
/// readable by every host of the domain) whose definition carries the uuid and name of
/// another domain B of this host makes `VM.create(A)` define B: B's definition is replaced by
/// the forger's (on A's disk), and the undo of the failed create undefines A, not B. With a
/// uuid no domain has, a stray domain is left defined.
#[test]
fn forged_configuration_with_another_domains_uuid_defines_nothing() {
    let Some(_conn) = libvirt() else { return };
    let f = Fixture::new();
    let forgery = Forgery::new(&f);
    let disk_path = f.image_dir(&forgery.disk.0).join(&forgery.disk.1);
    let disk_before = std::fs::read(&disk_path).unwrap();

    // A domain of this host, defined and shut off: another VM the forger targets.
    let victim = new_id();
    let victim_name = vm_name("victim");
    let _victim_guard = Undefine(victim.clone());
    let victim_xml = format!(
        "<domain type='qemu'><name>{victim_name}</name><uuid>{victim}</uuid>\
         <memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os>\
         <description>the victim's own definition</description></domain>"
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &victim_xml).unwrap();
    let (ok, out) = virsh(&["define", file.path().to_str().unwrap()]);
    assert!(ok, "virsh define: {out}");
    let victim_before = virsh(&["dumpxml", &victim]).1;

    let retarget = |xml: &str, to: &str, name: &str| {
        let at = xml.find("<name>").unwrap();
        let end = xml.find("</name>").unwrap() + "</name>".len();
        let xml = format!("{}<name>{name}</name>{}", &xml[..at], &xml[end..]);
        xml.replacen(
            &format!("<uuid>{}</uuid>", forgery.vm),
            &format!("<uuid>{to}</uuid>"),
            1,
        )
    };
    let onto_victim = retarget(&forgery.engine_xml, &victim, &victim_name);
    assert!(onto_victim.contains(&victim) && !onto_victim.contains(&forgery.vm));
    let conf = forgery.conf_with(&f, &forgery.state(&f, &onto_victim));
    let result = forgery.restore(&f, &conf);
    let victim_after = virsh(&["dumpxml", &victim]).1;

    let stray = new_id();
    let _stray_guard = Undefine(stray.clone());
    let onto_stray = retarget(&forgery.engine_xml, &stray, &vm_name("stray"));
    let conf2 = forgery.conf_with(&f, &forgery.state(&f, &onto_stray));
    let result2 = forgery.restore(&f, &conf2);
    eprintln!("onto another domain: {result:?}\nonto a new uuid: {result2:?}");

    let stray_left = domain_exists(&stray);
    assert!(
        result.is_err(),
        "the restore onto another domain's uuid was accepted"
    );
    assert!(result2.is_err(), "the restore with a new uuid was accepted");
    assert!(
        victim_before == victim_after && !stray_left,
        "another domain's definition replaced by a forged configuration: {}; a domain of \
         the forged uuid {stray} left defined: {stray_left}; the victim's definition now:\n\
         {victim_after}",
        victim_before != victim_after
    );
    assert!(!domain_exists(&forgery.vm));
    assert!(
        std::fs::read(&disk_path).unwrap() == disk_before,
        "the VM's disk changed"
    );
}

/// The configuration or dump volume replaced, before the call, by what another host may put
/// at its name: a link to a host file, a FIFO, a device node. Each is refused with nothing
/// started, the host file untouched.
#[test]
fn restore_refuses_links_fifos_and_devices_in_place_of_memory_volumes() {
    let Some(_conn) = libvirt() else { return };
    let f = Fixture::new();
    let forgery = Forgery::new(&f);
    let host = tempfile::tempdir().unwrap();
    let shadow = host_file(host.path());
    let good = forgery.state(&f, &forgery.engine_xml);
    let conf = forgery.conf_with(&f, &good);
    let conf_path = f.image_dir(&conf.0).join(&conf.1);
    let dump_path = f.image_dir(&forgery.dump.0).join(&forgery.dump.1);
    // The host file holds a good configuration: only a followed link could make it read.
    std::fs::write(&shadow, try_encode(&good).unwrap()).unwrap();

    let replace = |path: &Path, how: &str| {
        let _ = std::fs::remove_file(path);
        let ok = match how {
            "link" => std::os::unix::fs::symlink(&shadow, path).is_ok(),
            "fifo" => Command::new("mkfifo").arg(path).status().unwrap().success(),
            // /dev/null's numbers: a device node whose driver accepts every write.
            "device" => Command::new("mknod")
                .arg(path)
                .args(["c", "1", "3"])
                .status()
                .unwrap()
                .success(),
            _ => unreachable!(),
        };
        assert!(ok, "cannot put a {how} at {}", path.display());
    };
    for (which, path) in [("configuration", &conf_path), ("dump", &dump_path)] {
        let original = std::fs::read(path).unwrap();
        for how in ["link", "fifo", "device"] {
            let what = format!("the {which} volume as a {how}");
            replace(path, how);
            let untouched = Untouched::of(&f, &[&shadow]);
            let refused = std::thread::scope(|s| {
                // A FIFO opened for reading blocks its opener: bounded here, so that a hang
                // is a failure, not a stuck test.
                let call = s.spawn(|| forgery.restore(&f, &conf));
                let done = wait_until(std::time::Duration::from_secs(60), || call.is_finished());
                assert!(done, "{what}: VM.create hangs");
                call.join().unwrap()
            });
            let message = match refused {
                Ok(reply) => panic!("{what}: accepted: {reply}"),
                Err((_, message)) => message,
            };
            eprintln!("{what}: {message}");
            let lower = message.to_lowercase();
            assert!(
                ["link", "regular", "not a"]
                    .iter()
                    .any(|w| lower.contains(w)),
                "{what}: the error does not say why: {message}"
            );
            assert!(!domain_exists(&forgery.vm), "{what}: a domain is left");
            untouched.assert_same(&f, &what);
            let _ = std::fs::remove_file(path);
            std::fs::write(path, &original).unwrap();
        }
    }
}

/// A VM on a RAW disk alone in its image (what an engine's preallocated disk without
/// snapshots is), running: the one volume a dump check by form alone would accept.
fn raw_disk_vm(f: &Fixture) -> (common::engine::EngineVm, (String, String)) {
    let fixture = common::fixture_dir().join("data.qcow2");
    let info = common::domain::qemu_info(&fixture);
    let size = info["virtual-size"].as_u64().unwrap();
    let disk = raw_volume(f, size);
    let path = f.image_dir(&disk.0).join(&disk.1);
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-O", "raw"])
        .arg(&fixture)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vm = new_id();
    let (guest, created) = common::engine::EngineVm::create(f, &vm, &disk.0, &disk.1, None);
    assert_eq!(created["status"], "Up", "{created}");
    (guest, disk)
}

/// Sets `key` of a volume's `.meta` to `value`, as another host (or a broken one) would.
fn edit_meta(f: &Fixture, (image, volume): &(String, String), key: &str, value: &str) {
    let path = f.image_dir(image).join(format!("{volume}.meta"));
    let text = std::fs::read_to_string(&path).unwrap();
    let mut found = false;
    let edited: String = text
        .lines()
        .map(|line| match line.split_once('=') {
            Some((k, _)) if k == key => {
                found = true;
                format!("{k}={value}\n")
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert!(found, "no {key} in {}", path.display());
    std::fs::write(&path, edited).unwrap();
}

/// The manager's inputs to `VM.hibernate` and `VM.snapshot` with memory, and what another
/// host can do to the volumes they name: each refused at the call, the VM running on as
/// before (not paused, same disk), the host file and the domain's files untouched.
#[test]
fn hostile_memory_volumes_are_refused_with_the_vm_untouched() {
    let Some(_conn) = libvirt() else { return };
    let _slot = common::guest::GuestSlot::acquire();
    let f = Fixture::new();
    let (guest, disk) = raw_disk_vm(&f);
    let vm = guest.uuid.clone();
    let host = tempfile::tempdir().unwrap();
    let shadow = host_file(host.path());
    let disk_path = f.image_dir(&disk.0).join(&disk.1);
    // The guest's RAM (the fixture's 256 MiB) and what rvdsm asks beyond it.
    let minimum = (256 + 64) * MIB;

    let dump = raw_volume(&f, minimum + 200 * MIB);
    let conf = raw_volume(&f, MIB);
    let handle = |d: &(String, String), c: &(String, String)| {
        format!("{},{},{},{},{},{}", f.domain, f.pool, d.0, d.1, c.0, c.1)
    };
    let qcow2 = {
        let (image, volume) = (new_id(), new_id());
        assert_success(&f.create(&image, &volume, json!({"size": (512 * MIB).to_string()})));
        (image, volume)
    };
    let with_child = raw_volume(&f, 512 * MIB);
    let child = new_id();
    assert_success(&f.create(
        &with_child.0,
        &child,
        json!({"size": (512 * MIB).to_string(), "srcImgUUID": with_child.0, "srcVolUUID": with_child.1}),
    ));
    let child = (with_child.0.clone(), child);
    // Volume.create makes a child COW; another host's .meta can call it RAW.
    edit_meta(&f, &child, "FORMAT", "RAW");
    let illegal = raw_volume(&f, 512 * MIB);
    edit_meta(&f, &illegal, "LEGALITY", "ILLEGAL");
    let template = raw_volume(&f, 512 * MIB);
    edit_meta(&f, &template, "VOLTYPE", "SHARED");
    let short = raw_volume(&f, 512 * MIB);
    edit_meta(&f, &short, "CAP", &(minimum - 1).to_string());
    let fifo = raw_volume(&f, 512 * MIB);
    let fifo_path = f.image_dir(&fifo.0).join(&fifo.1);
    std::fs::remove_file(&fifo_path).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(&fifo_path)
            .status()
            .unwrap()
            .success()
    );
    let device = raw_volume(&f, 512 * MIB);
    let device_path = f.image_dir(&device.0).join(&device.1);
    std::fs::remove_file(&device_path).unwrap();
    assert!(
        Command::new("mknod")
            .arg(&device_path)
            .args(["c", "1", "3"])
            .status()
            .unwrap()
            .success()
    );
    let linked = raw_volume(&f, 512 * MIB);
    let linked_path = f.image_dir(&linked.0).join(&linked.1);
    std::fs::remove_file(&linked_path).unwrap();
    std::os::unix::fs::symlink(&shadow, &linked_path).unwrap();

    let ids = |n: usize| vec![new_id(); n].join(",");
    let good = handle(&dump, &conf);
    let cases: Vec<(&str, String, &[&str])> = vec![
        ("five ids", ids(5), &["six", "6", "id"]),
        ("seven ids", ids(7), &["six", "6", "id"]),
        (
            "non-UUIDs",
            good.replacen(&dump.1, "../../../etc/shadow", 1),
            &["uuid", "id"],
        ),
        ("empty", String::new(), &["six", "6", "id", "empty"]),
        (
            "the same volume twice",
            handle(&dump, &dump),
            &["same", "twice"],
        ),
        (
            "the VM's own disk as the dump",
            handle(&disk, &conf),
            &[
                "disk of a vm",
                "disk of the snapshot",
                "in use",
                "child",
                "shares",
            ],
        ),
        (
            "the VM's own disk as the configuration",
            handle(&dump, &disk),
            &[
                "disk of a vm",
                "disk of the snapshot",
                "in use",
                "child",
                "shares",
            ],
        ),
        ("a QCOW2 volume", handle(&qcow2, &conf), &["raw"]),
        (
            "a volume with a child",
            handle(&with_child, &conf),
            &["child"],
        ),
        ("a volume with a parent", handle(&child, &conf), &["parent"]),
        ("an ILLEGAL volume", handle(&illegal, &conf), &["illegal"]),
        ("a template", handle(&template, &conf), &["template"]),
        ("a dump one byte short", handle(&short, &conf), &["small"]),
        ("a FIFO", handle(&fifo, &conf), &["regular"]),
        ("a device node", handle(&device, &conf), &["regular"]),
        ("a link to a host file", handle(&linked, &conf), &["link"]),
        (
            "a volume of no image",
            handle(&(new_id(), new_id()), &conf),
            &["not", "no such", "exist"],
        ),
    ];
    let assert_untouched = |what: &str, before: &Untouched| {
        let stats = f.daemon.ok("VM.getStats", json!({"vmID": vm}));
        assert_eq!(stats[0]["status"], "Up", "{what}: {stats}");
        assert_eq!(virsh(&["domstate", &vm]).1.trim(), "running", "{what}");
        let blk = virsh(&["domblklist", &vm]).1;
        assert!(
            blk.contains(disk_path.file_name().unwrap().to_str().unwrap()),
            "{what}: the VM left its disk: {blk}"
        );
        before.assert_same(&f, what);
        for volume in [&dump, &conf] {
            assert_eq!(f.info(&volume.0, &volume.1)["legality"], "LEGAL", "{what}");
        }
    };
    let top = new_id();
    for verb in ["VM.hibernate", "VM.snapshot"] {
        if verb == "VM.snapshot" {
            // The disk's new volume, as an engine creates it before a snapshot (from here on
            // the VM's disk has a child: refused for that too).
            let size = f.info(&disk.0, &disk.1)["capacity"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_success(&f.create(&disk.0, &top, json!({"srcVolUUID": disk.1, "size": size})));
        }
        for (what, handle, words) in &cases {
            if verb == "VM.snapshot" && handle.is_empty() {
                // VDSM's: an empty snapMemory is a snapshot without memory.
                continue;
            }
            let before = Untouched::of(&f, &[&shadow]);
            let params = if verb == "VM.hibernate" {
                json!({"vmID": vm, "hiberVolHandle": handle})
            } else {
                json!({"vmID": vm, "jobUUID": new_id(), "frozen": false, "snapMemory": handle,
                       "snapDrives": [{"domainID": f.domain, "imageID": disk.0,
                                       "baseVolumeID": disk.1, "volumeID": top}]})
            };
            let outcome = f.daemon.call(common::daemon::Via::Unix, verb, params);
            let message = match outcome {
                Err(rvdsm::client::ClientError::Server { code, message }) => {
                    eprintln!("{verb} with {what}: refused with {code}: {message}");
                    message
                }
                other => panic!(
                    "{verb} with {what}: not refused: {other:?}; log:\n{}",
                    f.daemon.log()
                ),
            };
            let lower = message.to_lowercase();
            assert!(
                words.iter().any(|w| lower.contains(w)),
                "{verb} with {what}: the error does not say why ({words:?}): {message}"
            );
            assert_untouched(&format!("{verb} with {what}"), &before);
        }
    }
    // memoryMode garbage with good volumes.
    for mode in ["pause", "LIVE", "", "live; rm -rf /"] {
        let before = Untouched::of(&f, &[&shadow]);
        let outcome = f.daemon.call(
            common::daemon::Via::Unix,
            "VM.snapshot",
            json!({"vmID": vm, "jobUUID": new_id(), "frozen": false, "snapMemory": good,
                   "memoryMode": mode,
                   "snapDrives": [{"domainID": f.domain, "imageID": disk.0,
                                   "baseVolumeID": disk.1, "volumeID": top}]}),
        );
        assert!(
            matches!(outcome, Err(rvdsm::client::ClientError::Server { .. })),
            "memoryMode {mode:?}: {outcome:?}"
        );
        assert_untouched(&format!("memoryMode {mode:?}"), &before);
    }
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
}

/// Waits (bounded) until `VM.getStats` of `vm` says `status`.
fn wait_status(f: &Fixture, vm: &str, status: &str) -> bool {
    wait_until(std::time::Duration::from_secs(300), || {
        f.daemon
            .call(
                common::daemon::Via::Unix,
                "VM.getStats",
                json!({"vmID": vm}),
            )
            .is_ok_and(|s| s[0]["status"] == status)
    })
}

/// Another host swaps the dump volume's file for a link to a host file after rvdsm checked
/// it and before libvirt writes the dump (the failpoint `snapshot:before-dump`): libvirt
/// writes through rvdsmd's descriptor, into the file rvdsm checked; the host file is
/// untouched.
#[test]
fn dump_swapped_for_a_link_between_the_check_and_the_write_leaves_the_host_file_alone() {
    let Some(_conn) = libvirt() else { return };
    let _slot = common::guest::GuestSlot::acquire();
    let mut f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let vm = new_id();
    let (guest, created) = common::engine::EngineVm::create(&f, &vm, &image, &base, None);
    assert_eq!(created["status"], "Up", "{created}");
    let host = tempfile::tempdir().unwrap();
    let shadow = host_file(host.path());
    let shadow_before = std::fs::read(&shadow).unwrap();
    let dump = raw_volume(&f, (256 + 264) * MIB);
    let conf = raw_volume(&f, MIB);
    let top = common::chain::new_top(&f, &image, &base);
    let marker = f.daemon.restart_paused_at("snapshot:before-dump");
    let job = new_id();
    let scheduled = f.daemon.ok(
        "VM.snapshot",
        json!({"vmID": vm, "jobUUID": job, "frozen": false,
               "snapMemory": format!("{},{},{},{},{},{}", f.domain, f.pool, dump.0, dump.1, conf.0, conf.1),
               "snapDrives": [{"domainID": f.domain, "imageID": image,
                               "baseVolumeID": base, "volumeID": top}]}),
    );
    assert_eq!(scheduled, json!(true));
    assert!(
        wait_until(std::time::Duration::from_secs(120), || marker.exists()),
        "snapshot:before-dump never reached; log:\n{}",
        f.daemon.log()
    );
    let dump_path = f.image_dir(&dump.0).join(&dump.1);
    let moved = f.image_dir(&dump.0).join("moved-away");
    std::fs::rename(&dump_path, &moved).unwrap();
    std::os::unix::fs::symlink(&shadow, &dump_path).unwrap();
    std::fs::remove_file(&marker).unwrap();
    let info = common::chain::try_wait_job(&f, &job, std::time::Duration::from_secs(300))
        .unwrap_or_else(|i| panic!("the job never ended: {i}; log:\n{}", f.daemon.log()));
    eprintln!("the job: {info}");
    assert!(
        std::fs::read(&shadow).unwrap() == shadow_before,
        "the host file was written through the link"
    );
    let written = std::fs::metadata(&moved).unwrap().len();
    if info["status"] == "done" {
        assert!(
            written > 0,
            "the job is done but the checked file holds no dump"
        );
    }
    // The VM runs on, not paused.
    assert!(wait_status(&f, &vm, "Up"), "the VM is not Up");
    assert_eq!(virsh(&["domstate", &vm]).1.trim(), "running");
    std::fs::remove_file(&dump_path).unwrap();
    std::fs::rename(&moved, &dump_path).unwrap();
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
    drop(guest);
}

/// Finding 2: a resume after hibernation runs the saved RAM on the volume the disk was on,
/// without checking that the volume still holds the data of the saved instant. Between the
/// hibernation and the resume the volume can be written (the VM started afresh on it, as an
/// engine's "discard suspended state" without deleting the memory volumes, or a co-tenant's
/// qemu-io): the restored guest then finds its disk changed under its page cache and
/// filesystem state, and corrupts it. A snapshot's preview leaf is checked (unwritten child);
/// the hibernation's own leaf is not.
#[test]
fn resume_refused_when_the_hibernated_volume_was_written_since() {
    resume_after_hibernation(true);
}

/// The control of finding 2's test: the same resume without the write is accepted (a fix
/// must not refuse the volume the VM stopped on).
#[test]
fn resume_accepted_when_the_hibernated_volume_is_as_saved() {
    resume_after_hibernation(false);
}

fn resume_after_hibernation(written: bool) {
    let Some(_conn) = libvirt() else { return };
    let _slot = common::guest::GuestSlot::acquire();
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let vm = new_id();
    let dir = tempfile::tempdir().unwrap();
    let xml = engine_xml(&f, &vm, &vm_name("hiber"), &image, &base, dir.path());
    let _undefine = Undefine(vm.clone());
    f.daemon
        .ok("VM.create", json!({"vmID": vm, "vmParams": {"xml": xml}}));
    let dump = raw_volume(&f, (256 + 264) * MIB);
    let conf = raw_volume(&f, MIB);
    let handle = format!(
        "{},{},{},{},{},{}",
        f.domain, f.pool, dump.0, dump.1, conf.0, conf.1
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    f.daemon.ok(
        "VM.hibernate",
        json!({"vmID": vm, "hiberVolHandle": handle}),
    );
    assert!(
        wait_status(&f, &vm, "Down"),
        "never hibernated; log:\n{}",
        f.daemon.log()
    );
    // Down shows before the hibernation lets go of the VM: a destroy may be refused (42) a
    // moment; an engine retries.
    let destroyed = wait_until(std::time::Duration::from_secs(30), || {
        f.daemon
            .call(common::daemon::Via::Unix, "VM.destroy", json!({"vmID": vm}))
            .is_ok()
    });
    assert!(destroyed, "VM.destroy never succeeded");

    if !written {
        let outcome = f.daemon.call(
            common::daemon::Via::Unix,
            "VM.create",
            json!({"vmID": vm, "vmParams": {"xml": xml, "hiberVolHandle": handle}}),
        );
        let outcome = outcome
            .unwrap_or_else(|e| panic!("the resume was refused: {e}; log:\n{}", f.daemon.log()));
        assert_eq!(outcome["status"], "Up", "{outcome}");
        f.daemon.ok("VM.destroy", json!({"vmID": vm}));
        return;
    }
    // The volume written after the save, as the VM booted afresh on it would.
    let leaf = f.image_dir(&image).join(&base);
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 1M 1M"])
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let outcome = f.daemon.call(
        common::daemon::Via::Unix,
        "VM.create",
        json!({"vmID": vm, "vmParams": {"xml": xml, "hiberVolHandle": handle}}),
    );
    let running = domain_exists(&vm);
    if outcome.is_ok() {
        let _ = f
            .daemon
            .call(common::daemon::Via::Unix, "VM.destroy", json!({"vmID": vm}));
    }
    eprintln!("resume onto the written volume: {outcome:?}");
    assert!(
        matches!(outcome, Err(rvdsm::client::ClientError::Server { .. })) && !running,
        "the saved RAM was restored onto a volume written since the save: {outcome:?}"
    );
}

/// libvirt's save image header (`virQEMUSaveHeader`, native byte order): magic, version,
/// data length, was-running, compressed, cookie offset, 14 unused words (92 bytes in libvirt
/// 9.0; the cookie offset found 4 bytes off proved it); then the data: the
/// domain XML and the cookie, each NUL-terminated, zero-padded to the data length.
const SAVE_HEADER_LEN: usize = 16 + 4 * 19;

/// Forges the dump's own XML as another host would: `extra` inserted before `</devices>`,
/// the cookie moved after it, within the header's padding.
fn forge_dump_xml(path: &Path, extra: &str) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut header = [0u8; SAVE_HEADER_LEN];
    file.read_exact_at(&mut header, 0).unwrap();
    assert_eq!(
        &header[..16],
        b"LibvirtQemudSave",
        "not a libvirt save image"
    );
    let word = |i: usize| u32::from_ne_bytes(header[16 + 4 * i..20 + 4 * i].try_into().unwrap());
    let (data_len, cookie_at) = (word(1) as usize, word(4) as usize);
    let mut data = vec![0u8; data_len];
    file.read_exact_at(&mut data, SAVE_HEADER_LEN as u64)
        .unwrap();
    let nul = |from: usize| from + data[from..].iter().position(|b| *b == 0).unwrap();
    let xml = String::from_utf8(data[..nul(0)].to_vec()).unwrap();
    let cookie = if cookie_at > 0 {
        data[cookie_at..nul(cookie_at)].to_vec()
    } else {
        Vec::new()
    };
    eprintln!(
        "save header: words {:?}, xml {} bytes, cookie {} bytes: {:?}",
        (0..5).map(word).collect::<Vec<_>>(),
        xml.len(),
        cookie.len(),
        String::from_utf8_lossy(&cookie)
    );
    let forged = xml.replacen("</devices>", &format!("{extra}</devices>"), 1);
    assert_ne!(forged, xml);
    let mut new = forged.into_bytes();
    new.push(0);
    let new_cookie_at = new.len();
    if cookie_at > 0 {
        new.extend_from_slice(&cookie);
        new.push(0);
    }
    assert!(new.len() <= data_len, "no room in the header's padding");
    new.resize(data_len, 0);
    file.write_all_at(&new, SAVE_HEADER_LEN as u64).unwrap();
    if cookie_at > 0 {
        file.write_all_at(
            &u32::try_from(new_cookie_at).unwrap().to_ne_bytes(),
            16 + 4 * 4,
        )
        .unwrap();
    }
    file.sync_all().unwrap();
}

/// The dump's own XML (libvirt's save image header) forged by another host to add a disk on
/// a host file: rvdsm restores with its own definition (`virDomainRestoreFlags`' `dxml`), so
/// whatever libvirt does with the header, QEMU never opens the host file: the restore is
/// refused or runs rvdsm's definition alone.
#[test]
fn dump_header_naming_a_host_file_is_not_what_qemu_runs() {
    let Some(_conn) = libvirt() else { return };
    let _slot = common::guest::GuestSlot::acquire();
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let vm = new_id();
    let dir = tempfile::tempdir().unwrap();
    let xml = engine_xml(&f, &vm, &vm_name("header"), &image, &base, dir.path());
    let _undefine = Undefine(vm.clone());
    f.daemon
        .ok("VM.create", json!({"vmID": vm, "vmParams": {"xml": xml}}));
    let host = tempfile::tempdir().unwrap();
    let shadow = host_file(host.path());
    let shadow_before = std::fs::read(&shadow).unwrap();
    let dump = raw_volume(&f, (256 + 264) * MIB);
    let conf = raw_volume(&f, MIB);
    let top = common::chain::new_top(&f, &image, &base);
    let job = new_id();
    f.daemon.ok(
        "VM.snapshot",
        json!({"vmID": vm, "jobUUID": job, "frozen": false,
               "snapMemory": format!("{},{},{},{},{},{}", f.domain, f.pool, dump.0, dump.1, conf.0, conf.1),
               "snapDrives": [{"domainID": f.domain, "imageID": image,
                               "baseVolumeID": base, "volumeID": top}]}),
    );
    let info = common::chain::try_wait_job(&f, &job, std::time::Duration::from_secs(300))
        .unwrap_or_else(|i| panic!("the job never ended: {i}"));
    assert_eq!(info["status"], "done", "{info}; log:\n{}", f.daemon.log());
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));

    let shadow_s = shadow.to_str().unwrap();
    forge_dump_xml(
        &f.image_dir(&dump.0).join(&dump.1),
        &format!(
            "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
             <source file='{shadow_s}'/><target dev='vdz' bus='virtio'/></disk>"
        ),
    );
    let preview = common::chain::new_top(&f, &image, &base);
    let preview_xml = engine_xml(&f, &vm, &vm_name("header"), &image, &preview, dir.path());
    let outcome = f.daemon.call(
        common::daemon::Via::Unix,
        "VM.create",
        json!({"vmID": vm, "vmParams": {"xml": preview_xml,
               "memoryDumpVolume": spec(&f, &dump), "memoryConfVolume": spec(&f, &conf)}}),
    );
    eprintln!("the restore from a forged header: {outcome:?}");
    let running = virsh(&["dumpxml", &vm]);
    let blocks = virsh(&["domblklist", &vm]).1;
    if outcome.is_ok() {
        let _ = f
            .daemon
            .call(common::daemon::Via::Unix, "VM.destroy", json!({"vmID": vm}));
    } else {
        assert!(!running.0, "refused, yet a domain is left: {}", running.1);
    }
    assert!(
        !running.1.contains(shadow_s) && !blocks.contains(shadow_s),
        "the restored domain has the forged header's host file: {}",
        running.1
    );
    assert!(
        std::fs::read(&shadow).unwrap() == shadow_before,
        "the host file changed"
    );
}
