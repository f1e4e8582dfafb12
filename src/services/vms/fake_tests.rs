//! The VM lifecycle's decisions on a fake hypervisor and a real volume: what `VM.create`
//! defines, checks and starts, and what it undoes when a step fails; what `VM.destroy`,
//! `VM.pause`, `VM.cont` and `VM.shutdown` ask of libvirt; and how a restart finishes a create
//! or a destroy its journal kept.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::api::codes;
use crate::api::types::VmStatus;
use crate::services::testing::{Bed, params};
use crate::virt::fake::{FakeHypervisor, FakeVm, libvirt_error};

/// Engine-style domain XML for `vm` on `volume` of `image` (oVirt's drive metadata names it;
/// the disk's path is a placeholder rvdsm replaces with the prepared volume's).
fn engine_xml(bed: &Bed, vm: Uuid, image: Uuid, volume: Uuid) -> String {
    format!(
        r#"<domain type='qemu'><name>unit-{vm}</name><uuid>{vm}</uuid><metadata><ovirt-vm:vm xmlns:ovirt-vm="http://ovirt.org/vm/1.0"><ovirt-vm:device devtype="disk" name="vda"><ovirt-vm:poolID>{pool}</ovirt-vm:poolID><ovirt-vm:domainID>{domain}</ovirt-vm:domainID><ovirt-vm:imageID>{image}</ovirt-vm:imageID><ovirt-vm:volumeID>{volume}</ovirt-vm:volumeID></ovirt-vm:device></ovirt-vm:vm></metadata><memory unit='MiB'>128</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/rhev/data-center/{pool}/{domain}/images/{image}/{volume}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"#,
        pool = bed.pool,
        domain = bed.domain,
    )
}

/// A bed with one single-volume image; the VM's id and the `VM.create` parameters for it.
async fn bed_and_vm() -> (Bed, Uuid, crate::api::lifecycle_types::CreateVmParams) {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(1).await;
    let vm = Uuid::new_v4();
    let xml = engine_xml(&bed, vm, image, volumes[0]);
    let create = params(json!({ "vmID": vm, "vmParams": { "xml": xml } }));
    (bed, vm, create)
}

/// The lifecycle calls made, in order (not the reads between them).
fn lifecycle(fake: &FakeHypervisor) -> Vec<String> {
    let kinds = [
        "define",
        "start",
        "destroy",
        "undefine",
        "pause",
        "resume",
        "request_shutdown",
    ];
    fake.calls()
        .into_iter()
        .filter(|c| kinds.contains(&c.split(' ').next().unwrap_or_default()))
        .collect()
}

fn destroy(vm: Uuid) -> crate::api::lifecycle_types::DestroyVmParams {
    params(json!({ "vmID": vm }))
}

/// A create defines the VM on the prepared volume, reads libvirt's parse of it back, and
/// starts it; nothing is left to recover.
#[tokio::test]
async fn a_create_defines_checks_and_starts_the_vm() {
    let (bed, vm, create) = bed_and_vm().await;
    bed.services.vms.create(create).await.expect("VM.create");
    assert_eq!(lifecycle(&bed.fake), ["define", "start"]);
    let calls = bed.fake.calls();
    let define = calls.iter().position(|c| c == "define").unwrap();
    assert!(
        calls[define..].contains(&format!("read_view {vm}")),
        "libvirt's definition is read back before the start: {calls:?}"
    );
    let defined = bed.fake.vm(vm).expect("defined");
    assert_eq!(defined.view.status, VmStatus::Up);
    assert!(
        defined.view.xml.contains(&bed.domain.to_string()),
        "{}",
        defined.view.xml
    );

    let after = FakeHypervisor::new();
    let (services, interrupted) = bed.reopen(&after).await;
    services.recover(interrupted).await;
    assert_eq!(
        lifecycle(&after),
        Vec::<String>::new(),
        "no journal entry is left"
    );
}

/// A start that fails after the define is rolled back: the definition goes, and the
/// journal with it.
#[tokio::test]
async fn a_start_that_fails_after_the_define_is_rolled_back() {
    let (bed, vm, create) = bed_and_vm().await;
    bed.fake.fail_next("start", libvirt_error("start", 1));
    let err = bed.services.vms.create(create).await.unwrap_err();
    assert_eq!(err.code(), codes::CANNOT_CREATE_VM, "{err}");
    assert_eq!(
        lifecycle(&bed.fake),
        ["define", "start", "destroy", "undefine"]
    );
    assert!(bed.fake.vm(vm).is_none(), "undefined");

    let after = FakeHypervisor::new();
    let (services, interrupted) = bed.reopen(&after).await;
    services.recover(interrupted).await;
    assert_eq!(lifecycle(&after), Vec::<String>::new());
}

/// A VM libvirt knows already is refused before anything is defined.
#[tokio::test]
async fn a_create_of_a_vm_libvirt_knows_is_refused() {
    let (bed, vm, create) = bed_and_vm().await;
    bed.fake.add(FakeVm::running(vm));
    let err = bed.services.vms.create(create).await.unwrap_err();
    assert_eq!(err.code(), codes::VM_EXISTS, "{err}");
    assert_eq!(lifecycle(&bed.fake), Vec::<String>::new());
}

/// A create whose undo could not undefine the VM stays journaled; the next start undoes it
/// if the VM is not running, and keeps it (dropping the entry) if it is.
#[tokio::test]
async fn an_interrupted_create_is_undone_or_kept_at_the_next_start() {
    for running in [false, true] {
        let (bed, vm, create) = bed_and_vm().await;
        bed.fake
            .fail_next("start", libvirt_error("start", 1))
            .fail_next("undefine", libvirt_error("undefine", 1));
        assert!(bed.services.vms.create(create).await.is_err());
        assert!(bed.fake.vm(vm).is_some(), "left defined");

        let after = FakeHypervisor::new();
        let status = if running {
            VmStatus::Up
        } else {
            VmStatus::Down
        };
        after.add(FakeVm::running(vm).with_status(status));
        let (services, interrupted) = bed.reopen(&after).await;
        services.recover(interrupted).await;
        if running {
            assert_eq!(
                lifecycle(&after),
                Vec::<String>::new(),
                "a running VM is kept"
            );
            assert!(after.vm(vm).is_some());
        } else {
            assert_eq!(lifecycle(&after), ["destroy", "undefine"]);
            assert!(after.vm(vm).is_none());
        }
        // Either way the entry is gone: a third start does nothing.
        let third = FakeHypervisor::new();
        let (services, interrupted) = bed.reopen(&third).await;
        services.recover(interrupted).await;
        assert_eq!(lifecycle(&third), Vec::<String>::new());
    }
}

/// A destroy of a VM libvirt does not know is answered 1 and asks nothing.
#[tokio::test]
async fn a_destroy_of_an_unknown_vm_is_refused() {
    let bed = Bed::open().await;
    let err = bed
        .services
        .vms
        .destroy(destroy(Uuid::new_v4()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), codes::NO_SUCH_VM, "{err}");
    assert_eq!(lifecycle(&bed.fake), Vec::<String>::new());
}

/// A destroy stops QEMU and undefines the VM rvdsm created; one whose QEMU cannot be stopped
/// is answered 42 and the VM stays defined.
#[tokio::test]
async fn a_destroy_stops_and_undefines_or_reports_a_vm_it_could_not_stop() {
    let (bed, vm, create) = bed_and_vm().await;
    bed.services.vms.create(create).await.unwrap();
    bed.fake.fail_next("destroy", libvirt_error("destroy", 1));
    let err = bed.services.vms.destroy(destroy(vm)).await.unwrap_err();
    assert_eq!(err.code(), codes::VM_DESTROY_FAILED, "{err}");
    assert_eq!(bed.fake.vm(vm).unwrap().view.status, VmStatus::Up);

    bed.services
        .vms
        .destroy(destroy(vm))
        .await
        .expect("VM.destroy");
    assert_eq!(
        lifecycle(&bed.fake),
        ["define", "start", "destroy", "destroy", "undefine"]
    );
    assert!(bed.fake.vm(vm).is_none());
}

/// A destroy whose undefine failed stays journaled, and the next start finishes it.
#[tokio::test]
async fn an_interrupted_destroy_is_finished_at_the_next_start() {
    let (bed, vm, create) = bed_and_vm().await;
    bed.services.vms.create(create).await.unwrap();
    bed.fake.fail_next("undefine", libvirt_error("undefine", 1));
    bed.services
        .vms
        .destroy(destroy(vm))
        .await
        .expect("stopped");
    assert!(bed.fake.vm(vm).is_some(), "still defined");

    let after = FakeHypervisor::new();
    after.add(FakeVm::running(vm).with_status(VmStatus::Down));
    let (services, interrupted) = bed.reopen(&after).await;
    services.recover(interrupted).await;
    assert_eq!(lifecycle(&after), ["destroy", "undefine"]);
    assert!(after.vm(vm).is_none());
}

/// Pause and cont go to libvirt for a running VM; a stopped one is refused (6).
#[tokio::test]
async fn pause_and_cont_reach_a_running_vm_only() {
    let bed = Bed::open().await;
    let (vm, down) = (Uuid::new_v4(), Uuid::new_v4());
    bed.fake.add(FakeVm::running(vm));
    bed.fake
        .add(FakeVm::running(down).with_status(VmStatus::Down));
    bed.services.vms.pause(vm).await.unwrap();
    assert_eq!(bed.fake.vm(vm).unwrap().view.status, VmStatus::Paused);
    bed.services.vms.cont(vm).await.unwrap();
    assert_eq!(bed.fake.vm(vm).unwrap().view.status, VmStatus::Up);
    let err = bed.services.vms.pause(down).await.unwrap_err();
    assert_eq!(err.code(), codes::VM_IS_DOWN, "{err}");
    let err = bed.services.vms.cont(Uuid::new_v4()).await.unwrap_err();
    assert_eq!(err.code(), codes::NO_SUCH_VM, "{err}");
    assert_eq!(lifecycle(&bed.fake), ["pause", "resume"]);
}

/// A forced shutdown asks the guest, then destroys the VM once the timeout passes with the VM
/// still up; a guest that shut down in time is left alone.
#[tokio::test]
async fn a_forced_shutdown_destroys_only_a_vm_still_up_after_the_timeout() {
    let bed = Bed::open().await;
    let (stubborn, obedient) = (Uuid::new_v4(), Uuid::new_v4());
    bed.fake.add(FakeVm::running(stubborn));
    bed.fake.add(FakeVm::running(obedient));
    tokio::time::pause();
    for vm in [stubborn, obedient] {
        let p = params(json!({ "vmID": vm, "force": true, "timeout": 30 }));
        bed.services.vms.shutdown(p).await.unwrap();
    }
    assert_eq!(
        lifecycle(&bed.fake),
        ["request_shutdown", "request_shutdown"]
    );
    bed.fake.edit(obedient, |v| v.view.status = VmStatus::Down);
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(bed.fake.count("destroy"), 0, "not before the timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(bed.fake.count("destroy"), 1);
    assert_eq!(bed.fake.vm(stubborn).unwrap().view.status, VmStatus::Down);
}

/// A drive on a volume that is not its image's leaf is refused before anything is defined.
#[tokio::test]
async fn a_create_on_a_volume_that_is_not_the_leaf_defines_nothing() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(2).await;
    let vm = Uuid::new_v4();
    let xml = engine_xml(&bed, vm, image, volumes[0]);
    let create = params(json!({ "vmID": vm, "vmParams": { "xml": xml } }));
    let err = bed.services.vms.create(create).await.unwrap_err();
    assert_ne!(err.code(), 0, "{err}");
    assert_eq!(lifecycle(&bed.fake), Vec::<String>::new());
    assert!(bed.fake.vm(vm).is_none());
}

/// A destroy while a live merge runs on the VM is refused (42) and stops nothing: a merge
/// whose VM was killed and undefined could no longer tell whether QEMU pivoted.
#[tokio::test]
async fn a_destroy_during_a_live_merge_is_refused() {
    let bed = Bed::open().await;
    let (image, volumes) = bed.chain(2).await;
    let vm = Uuid::new_v4();
    let chain = bed.leaf_first(image, &volumes);
    bed.fake.add(FakeVm::running(vm).with_chain("vda", &chain));
    let running = crate::virt::BlockJob {
        cur: 1,
        end: 100,
        bandwidth: 0,
        ready: false,
    };
    bed.fake.edit(vm, |v| {
        v.block_jobs.insert(
            "vda".into(),
            std::collections::VecDeque::from([Some(running)]),
        );
    });
    let merge = params(json!({
        "vmID": vm,
        "drive": {"poolID": bed.pool, "domainID": bed.domain, "imageID": image, "volumeID": volumes[1]},
        "baseVolUUID": volumes[0], "topVolUUID": volumes[1],
    }));
    bed.services.merge.merge(merge).await.expect("VM.merge");
    let err = bed.services.vms.destroy(destroy(vm)).await.unwrap_err();
    assert_eq!(err.code(), codes::VM_DESTROY_FAILED, "{err}");
    assert_eq!(bed.fake.count("destroy"), 0);
    assert_eq!(bed.fake.vm(vm).unwrap().view.status, VmStatus::Up);
    bed.services.merge.stop();
}

/// Two RAW memory volumes (dump, configuration), each alone in a new image: `(dump, conf)` as
/// `(image, volume)`.
async fn memory_volumes(bed: &Bed) -> ((Uuid, Uuid), (Uuid, Uuid)) {
    (bed.raw_volume(1 << 30).await, bed.raw_volume(1 << 30).await)
}

/// Hibernates the running `vm` onto new memory volumes and waits until it is down; the
/// volumes' `(image, volume)`, dump first.
async fn hibernated(bed: &Bed, vm: Uuid) -> ((Uuid, Uuid), (Uuid, Uuid)) {
    let (dump, conf) = memory_volumes(bed).await;
    let hibernate = params(json!({ "vmID": vm, "hiberVolHandle": handle(bed, dump, conf) }));
    bed.services
        .vms
        .hibernate(hibernate)
        .await
        .expect("VM.hibernate");
    for _ in 0..200 {
        if bed.fake.vm(vm).unwrap().view.status == VmStatus::Down {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bed.fake.vm(vm).unwrap().view.status, VmStatus::Down);
    (dump, conf)
}

fn handle(bed: &Bed, dump: (Uuid, Uuid), conf: (Uuid, Uuid)) -> String {
    format!(
        "{},{},{},{},{},{}",
        bed.domain, bed.pool, dump.0, dump.1, conf.0, conf.1
    )
}

/// A hibernation writes the configuration, saves the RAM and leaves the VM down; a restore
/// from it (VM.create with hiberVolHandle) defines the saved definition, restores it paused,
/// resumes it and sets its clock, in that order.
#[tokio::test]
async fn a_hibernation_and_its_restore_make_the_calls_in_order() {
    let (bed, vm, create) = bed_and_vm().await;
    bed.services
        .vms
        .create(create.clone())
        .await
        .expect("VM.create");
    let (dump, conf) = hibernated(&bed, vm).await;
    assert_eq!(bed.fake.count("save_memory"), 1);
    assert_eq!(bed.legality(dump).await, "LEGAL");
    bed.services
        .vms
        .destroy(destroy(vm))
        .await
        .expect("VM.destroy");

    let mut restore = create.clone();
    restore.vm_params.hiber_vol_handle = Some(handle(&bed, dump, conf));
    bed.services.vms.create(restore).await.expect("the restore");
    let restored: Vec<String> = bed
        .fake
        .calls()
        .into_iter()
        .skip_while(|c| c != "undefine")
        .filter(|c| {
            [
                "define",
                "start",
                "restore_paused",
                "resume",
                "set_guest_time",
            ]
            .contains(&c.split(' ').next().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        restored,
        ["define", "restore_paused", "resume", "set_guest_time"],
        "restored, never booted"
    );
    assert_eq!(bed.fake.vm(vm).unwrap().view.status, VmStatus::Up);
}

/// A failed save leaves the VM running and both memory volumes ILLEGAL: nothing restores a
/// dump cut short.
#[tokio::test]
async fn a_failed_hibernation_marks_the_memory_volumes_illegal() {
    let (bed, vm, create) = bed_and_vm().await;
    bed.services.vms.create(create).await.expect("VM.create");
    let (dump, conf) = memory_volumes(&bed).await;
    bed.fake
        .fail_next("save_memory", libvirt_error("save the domain", 1));
    let hibernate = params(json!({ "vmID": vm, "hiberVolHandle": handle(&bed, dump, conf) }));
    bed.services
        .vms
        .hibernate(hibernate)
        .await
        .expect("VM.hibernate");
    for _ in 0..200 {
        if bed.legality(conf).await == "ILLEGAL" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bed.legality(dump).await, "ILLEGAL");
    assert_eq!(bed.legality(conf).await, "ILLEGAL");
    assert_eq!(bed.fake.vm(vm).unwrap().view.status, VmStatus::Up);
}

/// A restore whose configuration was saved for another VM, or whose disk moved on from the
/// saved instant, is refused before anything is defined.
#[tokio::test]
async fn a_restore_of_another_vms_ram_or_onto_a_later_disk_defines_nothing() {
    let (bed, vm, create) = bed_and_vm().await;
    bed.services
        .vms
        .create(create.clone())
        .await
        .expect("VM.create");
    let (dump, conf) = hibernated(&bed, vm).await;
    bed.services
        .vms
        .destroy(destroy(vm))
        .await
        .expect("VM.destroy");

    // Another VM's definition naming the same disk and this RAM.
    let other = Uuid::new_v4();
    let image = create
        .vm_params
        .xml
        .split("<ovirt-vm:imageID>")
        .nth(1)
        .unwrap()[..36]
        .parse::<Uuid>()
        .unwrap();
    let volume = create
        .vm_params
        .xml
        .split("<ovirt-vm:volumeID>")
        .nth(1)
        .unwrap()[..36]
        .parse::<Uuid>()
        .unwrap();
    let mut foreign: crate::api::lifecycle_types::CreateVmParams = params(json!({
        "vmID": other, "vmParams": { "xml": engine_xml(&bed, other, image, volume) }
    }));
    foreign.vm_params.hiber_vol_handle = Some(handle(&bed, dump, conf));
    let defines = bed.fake.count("define");
    let err = bed.services.vms.create(foreign).await.unwrap_err();
    assert!(err.to_string().contains("saved for VM"), "{err}");

    // This VM, on a grandchild of the saved volume: a disk that moved on.
    let (child, grandchild) = (Uuid::new_v4(), Uuid::new_v4());
    bed.volume(image, child, Some(volume)).await;
    bed.volume(image, grandchild, Some(child)).await;
    let mut later: crate::api::lifecycle_types::CreateVmParams = params(json!({
        "vmID": vm, "vmParams": { "xml": engine_xml(&bed, vm, image, grandchild) }
    }));
    later.vm_params.hiber_vol_handle = Some(handle(&bed, dump, conf));
    let err = bed.services.vms.create(later).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("does not hold the data of the saved instant"),
        "{err}"
    );
    assert_eq!(bed.fake.count("define"), defines, "nothing defined");
    assert!(bed.fake.vm(vm).is_none() && bed.fake.vm(other).is_none());
}
