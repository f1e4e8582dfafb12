//! VMs as an engine runs them on rvdsm: engine-style domain XML for a fixture guest on a
//! volume of the fixture's domain (oVirt's drive metadata naming it), and [`EngineVm`], a VM
//! created through `VM.create` that is destroyed (or at least undefined) when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::domain::{Fixture, new_id};
use super::guest::{AGENT_BOOT_TIMEOUT, exec_in};
use super::wait_until;

/// Engine-style domain XML for a fixture guest on `(image, volume)` of the fixture's domain:
/// the fixture's definition with a `<uuid>`, a placeholder disk path (rvdsm puts the prepared
/// one) and oVirt's drive metadata. The console log it names, `dir/console.log`, is replaced
/// by rvdsm's own.
pub fn engine_xml(
    f: &Fixture,
    vm: &str,
    name: &str,
    image: &str,
    volume: &str,
    dir: &Path,
) -> String {
    let placeholder = format!(
        "/rhev/data-center/{}/{}/images/{image}/{volume}",
        f.pool, f.domain
    );
    let output = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/guest-xml"))
        .args(["--name", name, "--console"])
        .arg(dir.join("console.log"))
        .args(["--disk", &placeholder])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let xml = String::from_utf8(output.stdout).unwrap();
    let metadata = format!(
        r#"<uuid>{vm}</uuid><metadata><ovirt-vm:vm xmlns:ovirt-vm="http://ovirt.org/vm/1.0"><ovirt-vm:device devtype="disk" name="vda"><ovirt-vm:poolID>{}</ovirt-vm:poolID><ovirt-vm:domainID>{}</ovirt-vm:domainID><ovirt-vm:imageID>{image}</ovirt-vm:imageID><ovirt-vm:volumeID>{volume}</ovirt-vm:volumeID></ovirt-vm:device></ovirt-vm:vm></metadata>"#,
        f.pool, f.domain
    );
    let at = xml.find("</name>").expect("a <name>") + "</name>".len();
    format!("{}{metadata}{}", &xml[..at], &xml[at..])
}

/// A unique libvirt name for a test VM (`what` says which test).
pub fn vm_name(what: &str) -> String {
    format!(
        "rvdsm-test-{}-{what}-{}",
        std::process::id(),
        &new_id()[..8]
    )
}

/// Undefines (and stops) the VM `uuid` if the test did not get to destroy it.
pub struct Undefine(pub String);

impl Drop for Undefine {
    fn drop(&mut self) {
        if let Ok(conn) = virt::connect::Connect::open(Some("qemu:///system"))
            && let Ok(domain) = conn.lookup_domain_by_uuid_string(&self.0)
        {
            let _ = domain.destroy();
            let _ = domain.undefine();
        }
    }
}

/// A fixture guest created by `VM.create` on a volume of the fixture's domain; its console
/// log is where rvdsm puts it. Undefined when dropped if still there.
pub struct EngineVm {
    /// The VM's id.
    pub uuid: String,
    /// Its console log.
    pub console_log: PathBuf,
    _files: tempfile::TempDir,
    _undefine: Undefine,
}

impl EngineVm {
    /// Creates a VM `vm` on `(image, volume)` with `VM.create`, its XML carrying the
    /// generation id `genid` if given, as an engine's does; returns it with the reply.
    pub fn create(
        f: &Fixture,
        vm: &str,
        image: &str,
        volume: &str,
        genid: Option<&str>,
    ) -> (EngineVm, Value) {
        let files = tempfile::tempdir().unwrap();
        let mut xml = engine_xml(f, vm, &vm_name("engine"), image, volume, files.path());
        if let Some(genid) = genid {
            xml = xml.replacen("</uuid>", &format!("</uuid><genid>{genid}</genid>"), 1);
        }
        let undefine = Undefine(vm.to_owned());
        let created = f
            .daemon
            .ok("VM.create", json!({"vmID": vm, "vmParams": {"xml": xml}}));
        let engine_vm = EngineVm {
            uuid: vm.to_owned(),
            // rvdsm names the console log, never the definition.
            console_log: super::daemon::console_dir(f.daemon.dir.path()).join(format!("{vm}.log")),
            _files: files,
            _undefine: undefine,
        };
        (engine_vm, created)
    }

    /// The console log so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console_log).unwrap_or_default()
    }

    /// Waits (bounded) until the guest's init says it is ready; panics with the console if
    /// not.
    pub fn wait_booted(&self) {
        let ready = wait_until(AGENT_BOOT_TIMEOUT, || {
            self.console().contains("rvdsm-guest: ready")
        });
        assert!(
            ready,
            "{} did not boot; console:\n{}",
            self.uuid,
            self.console()
        );
    }

    /// Waits (bounded) until the agent answers, then runs `script` in the guest.
    pub fn exec(&self, script: &str) -> (i64, String) {
        let conn = virt::connect::Connect::open(Some("qemu:///system")).unwrap();
        let domain = conn.lookup_domain_by_uuid_string(&self.uuid).unwrap();
        let answering = wait_until(AGENT_BOOT_TIMEOUT, || {
            super::guest::ping_domain(&domain).is_ok()
        });
        assert!(
            answering,
            "the agent of {} never answered; console:\n{}",
            self.uuid,
            self.console()
        );
        exec_in(&domain, &self.uuid, script)
    }

    /// The VM's generation id, from its live XML.
    pub fn genid(&self) -> Option<String> {
        let xml = self.live_xml();
        let start = xml.find("<genid>")? + "<genid>".len();
        let end = start + xml[start..].find("</genid>")?;
        Some(xml[start..end].to_owned())
    }

    /// The live domain XML.
    pub fn live_xml(&self) -> String {
        let conn = virt::connect::Connect::open(Some("qemu:///system")).unwrap();
        let domain = conn.lookup_domain_by_uuid_string(&self.uuid).unwrap();
        domain.xml_desc(0).unwrap()
    }
}

/// Waits `wait` at most for `f`'s `VM.getStats` to show `vm` in `status`.
pub fn wait_status(f: &Fixture, vm: &str, status: &str, wait: Duration) -> bool {
    wait_until(wait, || {
        f.daemon
            .call(super::daemon::Via::Unix, "VM.getStats", json!({"vmID": vm}))
            .is_ok_and(|s| s[0]["status"] == status)
    })
}

/// A VM created on a new volume of the fixture's data that wrote marker A, took a snapshot
/// (`base <- top1`), wrote a blob of `blob_mib` MiB and marker B, took a second one
/// (`top1 <- top2`, the VM on `top2`) and wrote marker C.
pub struct TwoSnapshots {
    pub vm: EngineVm,
    pub image: String,
    pub base: String,
    pub top1: String,
    pub top2: String,
    /// The blob's checksum.
    pub blob: String,
}

impl TwoSnapshots {
    /// Builds it (see the type).
    pub fn take(f: &Fixture, blob_mib: u32) -> TwoSnapshots {
        use super::chain::{take_snapshot, write_blob, write_marker};
        let (image, base, _) = f.data_volume();
        let vm_id = new_id();
        let (vm, _) = EngineVm::create(f, &vm_id, &image, &base, None);
        let exec = |c: &str| vm.exec(c);
        write_marker(exec, "A");
        let top1 = take_snapshot(f, &vm_id, &image, &base, json!({}));
        let blob = write_blob(exec, blob_mib);
        write_marker(exec, "B");
        let top2 = take_snapshot(f, &vm_id, &image, &top1, json!({}));
        write_marker(exec, "C");
        TwoSnapshots {
            vm,
            image,
            base,
            top1,
            top2,
            blob,
        }
    }
}
