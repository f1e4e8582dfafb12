//! `VM.create` with hostile definitions, against a real rvdsmd and libvirtd: a manager is
//! trusted to run VMs on this host's volumes, not to name host files. Each refused case has a
//! victim file outside the storage domain that must stay byte-identical, and leaves no
//! definition, no domain file and no journal entry; the case rvdsm places instead of refusing
//! (a console log named by the definition) is booted.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::daemon::{Via, console_dir};
use common::domain::{Fixture, assert_success, new_id};
use common::engine::{Undefine, engine_xml, vm_name};
use common::{libvirt, wait_until};
use rvdsm::client::ClientError;
use serde_json::json;

/// A host file an attack aims at, and what it held.
struct Victim {
    _dir: tempfile::TempDir,
    path: PathBuf,
    bytes: Vec<u8>,
}

impl Victim {
    fn new() -> Victim {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("victim");
        let bytes = format!("precious host file {}\n", new_id()).into_bytes();
        std::fs::write(&path, &bytes).unwrap();
        Victim {
            _dir: dir,
            path,
            bytes,
        }
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// A name next to the victim that must never come to exist.
    fn sibling(&self, name: &str) -> PathBuf {
        self.path.with_file_name(name)
    }

    fn assert_intact(&self, case: &str) {
        let now = std::fs::read(&self.path).unwrap();
        assert_eq!(now, self.bytes, "{case}: the victim file changed");
        let names: Vec<_> = std::fs::read_dir(self.path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "{case}: files appeared beside the victim: {names:?}"
        );
    }
}

/// The hostile cases: the engine's definition changed by `edit`, and the text the refusal
/// must name.
fn hostile_cases(xml: &str, victim: &Victim) -> Vec<(&'static str, String, &'static str)> {
    let v = victim.path();
    let log = victim.sibling("serial.log");
    let log = log.to_str().unwrap();
    let add_device = |device: String| xml.replace("</devices>", &format!("{device}</devices>"));
    let in_drive = |extra: String| {
        xml.replacen(
            "<target dev='vda' bus='virtio'/>",
            &format!("<target dev='vda' bus='virtio'/>{extra}"),
            1,
        )
    };
    let in_os = |extra: String| xml.replace("</os>", &format!("{extra}</os>"));
    vec![
        (
            "a disk with no oVirt metadata on a host file",
            add_device(format!(
                "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
                 <source file='{v}'/><target dev='vdb' bus='virtio'/></disk>"
            )),
            "disk vdb",
        ),
        (
            "a backing store under a managed drive",
            in_drive(format!(
                "<backingStore type='file'><format type='raw'/><source file='{v}'/></backingStore>"
            )),
            "<backingStore>",
        ),
        (
            "a second backing store under a managed drive",
            in_drive(format!(
                "<backingStore/><backingStore type='file'><format type='raw'/>\
                 <source file='{v}'/></backingStore>"
            )),
            "<backingStore>",
        ),
        (
            "a decoy disk in another namespace with the managed drive's target",
            xml.replacen(
                "<disk type='file' device='disk'>",
                "<x:disk xmlns:x='urn:decoy' type='file' device='disk'><x:target dev='vda'/>\
                 <x:source file='/decoy'/></x:disk><disk type='file' device='disk'>",
                1,
            )
            .replace("<driver name='qemu' type='qcow2'/><source file='", &format!("<driver name='qemu' type='raw'/><source file='{v}' x='")),
            "urn:decoy",
        ),
        (
            "a serial log file",
            xml.replace(
                "<target port='0'/>",
                &format!("<target port='0'/><log file='{log}'/>"),
            ),
            "<log>",
        ),
        (
            "a kernel outside the boot directories",
            xml.replace(
                &format!("<kernel>{}/vmlinuz</kernel>", common::fixture_dir().display()),
                &format!("<kernel>{v}</kernel>"),
            ),
            "<kernel>",
        ),
        (
            "a kernel reached through .. from a boot directory",
            xml.replace(
                &format!("<kernel>{}/vmlinuz</kernel>", common::fixture_dir().display()),
                &format!("<kernel>{}/../../..{v}</kernel>", common::fixture_dir().display()),
            ),
            "<kernel>",
        ),
        (
            "a firmware loader outside the firmware directories",
            in_os(format!("<loader readonly='yes' type='rom'>{v}</loader>")),
            "<loader>",
        ),
        (
            "an NVRAM template outside the firmware directories",
            in_os(format!("<nvram template='{v}'/>")),
            "template",
        ),
        (
            "a host filesystem",
            add_device(
                "<filesystem type='mount' accessmode='passthrough'><source dir='/'/>\
                 <target dir='host'/></filesystem>"
                    .to_owned(),
            ),
            "<filesystem>",
        ),
        (
            "a host PCI device",
            add_device(
                "<hostdev mode='subsystem' type='pci' managed='yes'><source>\
                 <address domain='0x0000' bus='0x00' slot='0x01' function='0x0'/></source></hostdev>"
                    .to_owned(),
            ),
            "<hostdev>",
        ),
        (
            "QEMU arguments",
            xml.replace(
                "</domain>",
                &format!(
                    "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\
                     <qemu:arg value='-drive'/><qemu:arg value='file={v},if=virtio,format=raw'/>\
                     </qemu:commandline></domain>"
                ),
            ),
            "qemu/1.0",
        ),
        (
            "a network disk",
            add_device(
                "<disk type='network' device='disk'><driver name='qemu' type='raw'/>\
                 <source protocol='nbd' name='x'><host name='127.0.0.1' port='10809'/></source>\
                 <target dev='vdc' bus='virtio'/></disk>"
                    .to_owned(),
            ),
            "<disk>",
        ),
        (
            "a block disk on a host device",
            add_device(format!(
                "<disk type='block' device='disk'><driver name='qemu' type='raw'/>\
                 <source dev='{v}'/><target dev='vdd' bus='virtio'/></disk>"
            )),
            "disk vdd",
        ),
        (
            "a CD-ROM with a host file in it",
            add_device(format!(
                "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>\
                 <source file='{v}'/><target dev='hdc' bus='ide'/><readonly/></disk>"
            )),
            "CD-ROM",
        ),
        (
            "an emulator of the manager's choosing",
            add_device(format!("<emulator>{v}</emulator>")),
            "<emulator>",
        ),
        (
            "a writable flash on a host firmware file",
            in_os(
                "<loader readonly='no' type='pflash'>/usr/share/seabios/bios-256k.bin</loader>"
                    .to_owned(),
            ),
            "read-only",
        ),
        (
            "a render node named by the definition",
            add_device(format!(
                "<graphics type='egl-headless'><gl rendernode='{v}'/></graphics>"
            )),
            "<graphics>",
        ),
        (
            "a definition nested five thousand deep (two thousand overflowed rvdsmd's stack)",
            xml.replace(
                "<on_crash>",
                &format!("{}{}<on_crash>", "<a>".repeat(5_000), "</a>".repeat(5_000)),
            ),
            "deeper",
        ),
        (
            "a serial port on a TCP socket",
            add_device(
                "<serial type='tcp'><source mode='connect' host='127.0.0.1' service='9'/>\
                 <target port='1'/></serial>"
                    .to_owned(),
            ),
            "<serial>",
        ),
    ]
}

#[test]
fn hostile_definitions_are_refused_and_leave_nothing_behind() {
    let Some(conn) = libvirt() else { return };
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let files = tempfile::tempdir().unwrap();
    let vm = new_id();
    let _cleanup = Undefine(vm.clone());
    let xml = engine_xml(&f, &vm, &vm_name("hostile"), &image, &base, files.path());
    let victim = Victim::new();
    let journal = f.daemon.repository().parent().unwrap().join("state/vms");
    let before = f.files();
    let mut failures = Vec::new();
    for (case, hostile, named) in hostile_cases(&xml, &victim) {
        assert_ne!(hostile, xml, "{case}: the edit did not apply");
        let reply = f.daemon.call(
            Via::Unix,
            "VM.create",
            json!({"vmID": vm, "vmParams": {"xml": hostile}}),
        );
        match reply {
            Ok(_) => {
                failures.push(format!("{case}: accepted"));
                // Out of the way of the next case.
                let _ = f.daemon.call(Via::Unix, "VM.destroy", json!({"vmID": vm}));
                if let Ok(domain) = conn.lookup_domain_by_uuid_string(&vm) {
                    let _ = domain.destroy();
                    let _ = domain.undefine();
                }
            }
            Err(ClientError::Server { code, message }) => {
                if code != 9 || !message.contains(named) {
                    failures.push(format!(
                        "{case}: refused with {code} {message:?}, not 9 naming {named}"
                    ));
                }
            }
            Err(err) => failures.push(format!("{case}: {err}")),
        }
        if conn.lookup_domain_by_uuid_string(&vm).is_ok() {
            failures.push(format!("{case}: a definition stayed"));
        }
        if std::fs::read(&victim.path).unwrap() != victim.bytes {
            failures.push(format!("{case}: the victim file changed"));
        }
        if f.files() != before {
            failures.push(format!("{case}: the domain's files changed"));
        }
        if std::fs::read_dir(&journal).map_or(0, |d| d.count()) != 0 {
            failures.push(format!("{case}: a journal entry stayed"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    f.daemon.ok("Host.ping2", json!({}));
    victim.assert_intact("all cases");
}

#[test]
fn a_volume_under_a_snapshot_is_no_vms_disk() {
    let Some(conn) = libvirt() else { return };
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let top = new_id();
    assert_success(&f.create(&image, &top, json!({"srcVolUUID": base})));
    let base_file = f.image_dir(&image).join(&base);
    let base_bytes = std::fs::read(&base_file).unwrap();
    let files = tempfile::tempdir().unwrap();
    let vm = new_id();
    let _cleanup = Undefine(vm.clone());
    // The snapshot's base is INTERNAL now: a VM writing to it corrupts the top.
    let xml = engine_xml(&f, &vm, &vm_name("internal"), &image, &base, files.path());
    let (code, message) = f
        .daemon
        .err("VM.create", json!({"vmID": vm, "vmParams": {"xml": xml}}));
    assert_eq!(code, 204, "{message}");
    assert!(message.contains(&base), "{message}");
    assert!(conn.lookup_domain_by_uuid_string(&vm).is_err());
    assert_eq!(std::fs::read(&base_file).unwrap(), base_bytes);
    assert_eq!(f.info(&image, &base)["voltype"], "INTERNAL");
}

/// A console log the definition names goes where rvdsm says; the VM boots and logs there.
#[test]
fn a_console_log_named_by_the_definition_is_placed_by_rvdsm() {
    let Some(conn) = libvirt() else { return };
    let _slot = common::guest::GuestSlot::acquire();
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let files = tempfile::tempdir().unwrap();
    let vm = new_id();
    let _cleanup = Undefine(vm.clone());
    let victim = Victim::new();
    let xml = engine_xml(&f, &vm, &vm_name("console"), &image, &base, files.path());
    let aimed = xml.replace(
        files.path().join("console.log").to_str().unwrap(),
        victim.path(),
    );
    assert_ne!(aimed, xml);
    f.daemon
        .ok("VM.create", json!({"vmID": vm, "vmParams": {"xml": aimed}}));
    let log = console_dir(f.daemon.dir.path()).join(format!("{vm}.log"));
    let booted = wait_until(Duration::from_secs(120), || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("rvdsm-guest: ready"))
    });
    assert!(booted, "the guest never logged to {}", log.display());
    victim.assert_intact("a console log aimed at a host file");
    let live = conn
        .lookup_domain_by_uuid_string(&vm)
        .unwrap()
        .xml_desc(0)
        .unwrap();
    assert!(!live.contains(victim.path()), "{live}");
    assert!(!Path::new(&files.path().join("console.log")).exists());
    f.daemon.ok("VM.destroy", json!({"vmID": vm}));
}
