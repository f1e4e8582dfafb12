//! A manager's whole session with VDSM's verbs, over STOMP with mutual TLS: `VM.create` from
//! engine-style XML (ovirt-vm metadata naming the drive's volume), the monitoring verbs,
//! a snapshot, `Host.dumpxmls` showing the new chain, `VM.destroy`, `Image.deleteVolumes`;
//! every reply checked against VDSM's schema facts. And the refusals of `VM.create`.

mod common;

use std::time::Duration;

use common::domain::{Fixture, assert_success, new_id};
use common::engine::{Undefine, engine_xml, vm_name};
use common::stomp;
use common::vdsm_schema::check_reply;
use common::{Daemon, libvirt};
use rvdsm::client::{ClientError, StompClient};
use serde_json::{Value, json};

async fn call<S>(client: &StompClient<S>, method: &str, params: Value) -> Result<Value, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let reply = client.call(method, params, Some("manager-flow")).await;
    if let Ok(value) = &reply
        && let Err(problem) = check_reply(method, value)
    {
        panic!("{method}'s reply breaks VDSM's schema: {problem}");
    }
    reply
}

#[test]
fn a_manager_runs_a_vm_on_rvdsm_volumes_over_stomp_and_tls() {
    let Some(conn) = libvirt() else { return };
    let _slot = common::guest::GuestSlot::acquire();
    let pki = tempfile::tempdir().unwrap();
    let lab = rvdsm::pki::init(pki.path(), &[]).unwrap();
    let f = Fixture::on(Daemon::start_tls(&lab.server));
    let (image, base, _) = f.data_volume();
    let vm = new_id();
    let _cleanup = Undefine(vm.clone());
    let files = tempfile::tempdir().unwrap();
    let xml = engine_xml(&f, &vm, &vm_name("manager"), &image, &base, files.path());
    let rt = stomp::runtime();
    let manager = rt.block_on(stomp::manager_over_tls(f.daemon.port, &lab.client, false));
    let mut subscriber = rt.block_on(stomp::manager_over_tls(f.daemon.port, &lab.client, true));
    let (tx, events) = std::sync::mpsc::channel::<Value>();
    rt.spawn(async move {
        while let Some(event) = subscriber.next_event().await {
            let _ = tx.send(event);
        }
    });
    let status_events = |wait: Duration| -> Vec<Value> {
        let deadline = std::time::Instant::now() + wait;
        let mut seen = Vec::new();
        while let Ok(event) =
            events.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            if event["method"] == format!("|virt|VM_status|{vm}") {
                seen.push(event["params"][&vm].clone());
            }
        }
        seen
    };
    let ok = |method: &str, params: Value| {
        rt.block_on(call(&manager, method, params))
            .unwrap_or_else(|e| panic!("{method}: {e}; log:\n{}", f.daemon.log()))
    };

    // VM.create: rvdsm prepares the drive and records its chain in the definition.
    let created = ok("VM.create", json!({"vmID": vm, "vmParams": {"xml": xml}}));
    assert_eq!(created["vmId"], vm.as_str());
    assert_eq!(created["status"], "Up", "{created}");
    let defined = conn.lookup_domain_by_uuid_string(&vm).unwrap();
    assert!(defined.is_persistent().unwrap());
    let live = defined.xml_desc(0).unwrap();
    assert!(live.contains(&format!("images/{image}/{base}")), "{live}");
    assert!(
        live.contains("volumeChain"),
        "the chain is recorded: {live}"
    );
    // One status event for the boot, with the VM's stats as VDSM's carry them.
    let booted = status_events(Duration::from_secs(3));
    assert_eq!(
        booted.len(),
        1,
        "one Up event at boot: {booted:?}; log:\n{}",
        f.daemon.log()
    );
    assert_eq!(booted[0]["status"], "Up");
    check_reply("VM.getStats", &json!([booted[0]])).unwrap();
    // The same VM twice is refused with VDSM's code.
    let again = rt.block_on(call(
        &manager,
        "VM.create",
        json!({"vmID": vm, "vmParams": {"xml": xml}}),
    ));
    assert!(
        matches!(again, Err(ClientError::Server { code: 4, .. })),
        "{again:?}"
    );

    // The monitoring verbs see it, from the cache.
    let all = ok("Host.getAllVmStats", json!({}));
    let mine = all
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["vmId"] == vm.as_str())
        .cloned();
    let mine = mine.unwrap_or_else(|| panic!("{vm} not in {all}"));
    assert_eq!(mine["disks"]["vda"]["imageID"], image.as_str(), "{mine}");
    assert_eq!(mine["managed"], true);
    let listed = ok("Host.getVMFullList", json!({"vmList": [vm]}));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    ok("Host.getStats", json!({}));
    ok("Host.getCapabilities", json!({}));

    // Pause and resume, as VDSM answers them.
    assert_eq!(ok("VM.pause", json!({"vmID": vm})), json!({"vmList": {}}));
    assert_eq!(
        ok("VM.getStats", json!({"vmID": vm}))[0]["status"],
        "Paused"
    );
    assert_eq!(ok("VM.cont", json!({"vmID": vm})), json!({"vmList": {}}));

    // A snapshot onto a new volume; Host.dumpxmls shows the new chain once the job is done.
    let top = new_id();
    let task = ok(
        "Volume.create",
        f.create_params(
            &image,
            &top,
            json!({"srcVolUUID": base, "size": (64u64 << 20).to_string()}),
        ),
    );
    assert_success(&f.daemon.wait_task(task.as_str().unwrap()));
    let job = new_id();
    ok(
        "VM.snapshot",
        json!({"vmID": vm, "jobUUID": job, "snapDrives": [
            {"domainID": f.domain, "imageID": image, "baseVolumeID": base, "volumeID": top}]}),
    );
    let done = common::wait_until(Duration::from_secs(120), || {
        ok("Host.getJobs", json!({"job_ids": [job]}))[&job]["status"] == "done"
    });
    assert!(done, "{}", f.daemon.log());
    let xmls = ok("Host.dumpxmls", json!({"vmList": [vm]}));
    let dumped = xmls[&vm].as_str().unwrap();
    let disk = &dumped[dumped.find("<disk").unwrap()..];
    let source_at = disk.find("<source").unwrap();
    let backing_at = disk.find("<backingStore").unwrap();
    assert!(
        disk[source_at..backing_at].contains(&top),
        "the VM writes to the new volume: {disk}"
    );
    assert!(
        disk[backing_at..].contains(&base),
        "the old one backs it: {disk}"
    );

    // VM.destroy: the VM goes, and so does its definition.
    assert_eq!(
        ok("VM.destroy", json!({"vmID": vm, "gracefulAttempts": "1"})),
        json!(true)
    );
    assert!(
        conn.lookup_domain_by_uuid_string(&vm).is_err(),
        "the definition is gone"
    );
    let after = ok("Host.getVMList", json!({}));
    assert!(
        !after
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["vmId"] == vm.as_str()),
        "{after}"
    );
    let gone = rt.block_on(call(&manager, "VM.destroy", json!({"vmID": vm})));
    assert!(
        matches!(gone, Err(ClientError::Server { code: 1, .. })),
        "{gone:?}"
    );

    // Image.deleteVolumes of the whole chain, as one task; strings for booleans are taken.
    let task = ok(
        "Image.deleteVolumes",
        json!({"imageID": image, "storagepoolID": f.pool, "storagedomainID": f.domain,
               "volumeList": [base, top], "postZero": "false", "force": "false"}),
    );
    let status = f.daemon.wait_task(task.as_str().unwrap());
    assert_eq!(
        status["taskResult"],
        "success",
        "{status}; log:\n{}",
        f.daemon.log()
    );
    let volumes = ok(
        "Image.getVolumes",
        json!({"imageID": image, "storagepoolID": f.pool, "storagedomainID": f.domain}),
    );
    assert_eq!(volumes, json!([]), "{volumes}");
    // As an engine does after a failed snapshot, whose new volume rvdsm already deleted: a
    // listed volume that no longer exists counts as deleted.
    let task = ok(
        "Image.deleteVolumes",
        json!({"imageID": image, "storagepoolID": f.pool, "storagedomainID": f.domain,
               "volumeList": [new_id()]}),
    );
    assert_success(&f.daemon.wait_task(task.as_str().unwrap()));
}

#[test]
fn vm_create_refuses_bad_definitions_and_leaves_nothing_behind() {
    let Some(conn) = libvirt() else { return };
    let f = Fixture::new();
    let (image, base, _) = f.data_volume();
    let files = tempfile::tempdir().unwrap();
    let vm = new_id();
    let _cleanup = Undefine(vm.clone());
    let xml = engine_xml(&f, &vm, &vm_name("manager"), &image, &base, files.path());
    let before = f.files();

    // The vmID must be the XML's.
    let (code, message) = f.daemon.err(
        "VM.create",
        json!({"vmID": new_id(), "vmParams": {"xml": xml}}),
    );
    assert_eq!(code, 91, "{message}");
    // No XML at all.
    let (code, message) = f
        .daemon
        .err("VM.create", json!({"vmID": vm, "vmParams": {}}));
    assert_eq!(code, 91, "{message}");
    assert!(message.contains("xml"), "{message}");
    // A drive on a volume that does not exist: the storage's code, nothing defined.
    let missing = xml.replace(&base, &new_id());
    let (code, message) = f.daemon.err(
        "VM.create",
        json!({"vmID": vm, "vmParams": {"xml": missing}}),
    );
    assert_eq!(code, 201, "{message}");
    // A definition libvirt refuses (an action it does not know): undone, code 9.
    let broken = xml.replace(
        "<on_crash>destroy</on_crash>",
        "<on_crash>explode</on_crash>",
    );
    assert_ne!(broken, xml);
    let (code, message) = f.daemon.err(
        "VM.create",
        json!({"vmID": vm, "vmParams": {"xml": broken}}),
    );
    assert_eq!(code, 9, "{message}");
    assert!(
        conn.lookup_domain_by_uuid_string(&vm).is_err(),
        "nothing stays defined"
    );
    assert_eq!(f.files(), before, "the domain's files are as they were");
    let journal = f.daemon.repository().parent().unwrap().join("state/vms");
    let left = std::fs::read_dir(&journal).unwrap().count();
    assert_eq!(left, 0, "no journal entry stays in {}", journal.display());
}

/// The journal directory of a test daemon.
fn vm_journal(f: &Fixture) -> std::path::PathBuf {
    f.daemon.repository().parent().unwrap().join("state/vms")
}

fn create_request(vm: &str, xml: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "VM.create",
           "params": {"vmID": vm, "vmParams": {"xml": xml}}})
}

#[test]
fn vms_outlive_rvdsmd_and_crashes_mid_create_or_destroy_are_finished_at_start() {
    let Some(conn) = libvirt() else { return };
    let _slot = common::guest::GuestSlot::acquire();
    let mut f = Fixture::new();
    let files = tempfile::tempdir().unwrap();

    // A VM created by rvdsm keeps running across a crash of rvdsmd, which knows it again
    // (its drives from libvirt's definition alone) and can destroy it.
    let (image, base, _) = f.data_volume();
    let vm = new_id();
    let _cleanup = Undefine(vm.clone());
    let xml = engine_xml(&f, &vm, &vm_name("manager"), &image, &base, files.path());
    f.daemon
        .ok("VM.create", json!({"vmID": vm, "vmParams": {"xml": xml}}));
    f.daemon.restart_in_place(&[]);
    let stats = f.daemon.ok("VM.getStats", json!({"vmID": vm}));
    assert_eq!(stats[0]["status"], "Up", "{stats}");
    assert_eq!(stats[0]["managed"], true, "{stats}");
    assert_eq!(stats[0]["disks"]["vda"]["imageID"], image.as_str());
    // rvdsmd crashes after QEMU stopped, before the definition went: the next start ends it.
    let marker = f.daemon.restart_paused_at("vm-destroy:stopped");
    f.daemon.post_and_hang_up(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "VM.destroy", "params": {"vmID": vm}}),
        Duration::from_millis(100),
    );
    assert!(common::wait_until(Duration::from_secs(60), || marker.exists()));
    f.daemon.restart_in_place(&[]);
    assert!(
        conn.lookup_domain_by_uuid_string(&vm).is_err(),
        "the destroy was finished"
    );
    assert_eq!(std::fs::read_dir(vm_journal(&f)).unwrap().count(), 0);

    // rvdsmd crashes between the definition and the start: the next start undoes the create.
    let (image, base, _) = f.data_volume();
    let vm = new_id();
    let _cleanup2 = Undefine(vm.clone());
    let xml = engine_xml(&f, &vm, &vm_name("manager"), &image, &base, files.path());
    let marker = f.daemon.restart_paused_at("vm-create:defined");
    f.daemon
        .post_and_hang_up(&create_request(&vm, &xml), Duration::from_millis(100));
    assert!(common::wait_until(Duration::from_secs(60), || marker.exists()));
    assert!(
        conn.lookup_domain_by_uuid_string(&vm).is_ok(),
        "paused after the definition"
    );
    assert_eq!(
        std::fs::read_dir(vm_journal(&f)).unwrap().count(),
        1,
        "journaled"
    );
    f.daemon.restart_in_place(&[]);
    assert!(
        conn.lookup_domain_by_uuid_string(&vm).is_err(),
        "the create was undone"
    );
    assert_eq!(std::fs::read_dir(vm_journal(&f)).unwrap().count(), 0);
    // The volume is free again: the same create now succeeds, through the CLI as an operator
    // runs it (`rvdsm VM create -f vm.json`), and its VM runs.
    let file = files.path().join("vm.json");
    std::fs::write(
        &file,
        json!({"vmID": vm, "vmParams": {"xml": xml}}).to_string(),
    )
    .unwrap();
    let (code, out, err) =
        common::daemon::cli(&f.daemon, &["VM", "create", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"Up\""), "{out}");
    let (code, out, err) =
        common::daemon::cli(&f.daemon, &["VM", "destroy", &format!("vmID={vm}")]);
    assert_eq!(code, 0, "{out}{err}");
}
