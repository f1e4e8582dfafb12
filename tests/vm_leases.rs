//! VM leases, as oVirt uses them: an external lease per VM in the domain's `xleases` volume
//! (`Lease.create`, `Lease.info`, `Lease.status`, `Lease.delete`), and a VM whose definition
//! carries a `<lease>` that runs only while its QEMU holds it through libvirt's sanlock lock
//! manager, so a second QEMU with the same lease (another host starting the same VM) is
//! refused. One host here: one sanlock daemon, libvirtd restarted with
//! `lock_manager = "sanlock"` pointed at it for the test and restored after it, panics
//! included. The tests of this binary run one at a time: they reconfigure the host's libvirtd.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::cluster::SharedHost;
use common::domain::{assert_success, new_id};
use common::engine::{Undefine, engine_xml, vm_name, wait_status};
use common::{libvirt, libvirtd, wait_until};
use serde_json::{Value, json};

/// The tests of this binary reconfigure libvirtd: one at a time.
static ALONE: Mutex<()> = Mutex::new(());

/// One host sharing its domain through sanlock, with the lease verbs.
struct Host(SharedHost);

impl std::ops::Deref for Host {
    type Target = SharedHost;
    fn deref(&self) -> &SharedHost {
        &self.0
    }
}

impl Host {
    fn start() -> Host {
        Host(SharedHost::start())
    }

    fn lease(&self, vm: &str) -> Value {
        json!({"sd_id": self.f.domain, "lease_id": vm})
    }

    fn create_lease(&self, vm: &str) {
        let task = self
            .f
            .daemon
            .ok("Lease.create", json!({"lease": self.lease(vm)}));
        assert_success(&self.f.daemon.wait_task(task.as_str().unwrap()));
    }

    fn status(&self, vm: &str) -> Value {
        self.f
            .daemon
            .ok("Lease.status", json!({"lease": self.lease(vm)}))
    }

    /// Engine-style XML of a fixture guest `vm` on a new data volume, with the `<lease>` of
    /// `lease_vm` as oVirt's engine writes it (placeholders for the host to fill).
    fn vm_xml(&self, vm: &str, lease_vm: &str, dir: &std::path::Path) -> String {
        let (image, volume, _) = self.f.data_volume();
        let xml = engine_xml(&self.f, vm, &vm_name("lease"), &image, &volume, dir);
        let lease = format!(
            "<lease><key>{lease_vm}</key><lockspace>{}</lockspace>\
             <target offset=\"LEASE-OFFSET:{lease_vm}:{0}\" path=\"LEASE-PATH:{lease_vm}:{0}\"/>\
             </lease>",
            self.f.domain
        );
        xml.replacen("</devices>", &format!("{lease}</devices>"), 1)
    }

    fn create_vm(&self, vm: &str, xml: &str) -> Result<Value, (i32, String)> {
        self.f
            .daemon
            .call(
                common::daemon::Via::Tcp,
                "VM.create",
                json!({"vmID": vm, "vmParams": {"xml": xml}}),
            )
            .map_err(|e| match e {
                rvdsm::client::ClientError::Server { code, message } => (code, message),
                other => panic!("VM.create: {other}"),
            })
    }

    fn defined(&self, vm: &str) -> bool {
        let conn = libvirt().unwrap();
        conn.lookup_domain_by_uuid_string(vm).is_ok()
    }
}

#[test]
fn a_vm_runs_only_while_its_qemu_holds_its_lease_and_a_second_qemu_is_refused_it() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(_conn) = libvirt() else { return };
    let host = Host::start();
    let (vm, other) = (new_id(), new_id());
    let files = tempfile::tempdir().unwrap();
    let (_undefine, _undefine_other) = (Undefine(vm.clone()), Undefine(other.clone()));

    // The lease: in the domain's xleases volume, free.
    host.create_lease(&vm);
    let info = host
        .f
        .daemon
        .ok("Lease.info", json!({"lease": host.lease(&vm)}));
    assert_eq!(info["lease_id"], json!(vm));
    assert!(
        info["path"].as_str().unwrap().ends_with("/dom_md/xleases"),
        "{info}"
    );
    assert_eq!(
        info["offset"],
        json!(3 << 20),
        "the first user slot: {info}"
    );
    assert_eq!(host.status(&vm), json!({"owners": [], "version": null}));

    // With libvirtd's default lock manager the VM would run without holding its lease:
    // refused, and nothing stays defined.
    let xml = host.vm_xml(&vm, &vm, files.path());
    let (code, message) = host.create_vm(&vm, &xml).unwrap_err();
    assert_eq!(code, 9, "{message}");
    assert!(message.contains("lock_manager"), "{message}");
    assert!(!host.defined(&vm), "the refused VM stays defined");
    assert_eq!(host.status(&vm)["owners"], json!([]));

    // With sanlock's lock manager: the VM's QEMU holds the lease while it runs.
    let _lock_manager = libvirtd::with_sanlock_lock_manager(host.sanlock.run_dir());
    let created = host.create_vm(&vm, &xml).expect("VM.create with its lease");
    assert_eq!(created["vmId"], json!(vm), "{created}");
    let status = host.status(&vm);
    assert_eq!(status["owners"], json!([1]), "{status}");
    assert!(status["version"].as_u64().unwrap() >= 1, "{status}");
    let conn = libvirt().unwrap();
    let live = conn
        .lookup_domain_by_uuid_string(&vm)
        .unwrap()
        .xml_desc(0)
        .unwrap();
    assert!(
        live.contains(&format!("offset='{}'", 3 << 20)) && live.contains("dom_md/xleases"),
        "the lease's target is placed: {live}"
    );

    // A second QEMU with the same lease (another VM definition naming it, as a second host
    // starting the same VM would): refused by sanlock, undone; the first runs on.
    let second = host.vm_xml(&other, &vm, files.path());
    let (code, message) = host.create_vm(&other, &second).unwrap_err();
    assert_eq!(code, 9, "{message}");
    assert!(
        message.to_lowercase().contains("lock"),
        "libvirt's refusal is passed on: {message}"
    );
    assert!(!host.defined(&other), "the refused VM stays defined");
    assert!(wait_status(&host.f, &vm, "Up", Duration::from_secs(10)));
    assert_eq!(host.status(&vm)["owners"], json!([1]));

    // The VM's end releases the lease; then the lease can go.
    host.f.daemon.ok("VM.destroy", json!({"vmID": vm}));
    let released = wait_until(Duration::from_secs(10), || {
        host.status(&vm)["owners"] == json!([])
    });
    assert!(released, "{}", host.status(&vm));
    let task = host
        .f
        .daemon
        .ok("Lease.delete", json!({"lease": host.lease(&vm)}));
    assert_success(&host.f.daemon.wait_task(task.as_str().unwrap()));
    let gone = host
        .f
        .daemon
        .call(
            common::daemon::Via::Tcp,
            "Lease.info",
            json!({"lease": host.lease(&vm)}),
        )
        .unwrap_err();
    assert!(
        matches!(gone, rvdsm::client::ClientError::Server { code: 936, .. }),
        "{gone}"
    );
    // A VM naming a lease that does not exist is refused before it starts.
    let (code, message) = host.create_vm(&vm, &xml).unwrap_err();
    assert_eq!(code, 936, "{message}");
    assert!(!host.defined(&vm));
}
