//! Task records on the shared domain (`<master domain>/master/tasks`) are claims of the hosts
//! that wrote them, not orders: a host that becomes the SPM undoes or finishes what a record
//! says only when the disk still matches it, and a task cleared on one SPM is never recovered
//! again on another. Real rvdsmd, real sanlock daemons (io_timeout 3 s), real files.

mod common;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::SharedHost;
use common::domain::{assert_success, new_id};
use common::hosts::Host;
use common::pool::{create_domain, create_pool};
use common::sanlock::disk_dir;
use common::wait_until;
use serde_json::{Value, json};
use uuid::Uuid;

const BLANK: &str = "00000000-0000-0000-0000-000000000000";

/// Every file of an image directory with its size and a hash of its bytes, to prove nothing
/// was touched.
fn snapshot_of(dir: &Path) -> BTreeMap<PathBuf, (usize, u64)> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|entry| {
            let bytes = std::fs::read(entry.path()).unwrap();
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut hasher);
            (entry.path(), (bytes.len(), hasher.finish()))
        })
        .collect()
}

/// Plants `record` as `<id>.json` in the shared task directory under `root`, as another host
/// (or anyone who can write the export) could.
fn plant(root: &Path, record: &Value) -> String {
    let id = record["id"].as_str().unwrap().to_owned();
    let dir = root.join("master").join("tasks");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{id}.json")),
        serde_json::to_vec_pretty(record).unwrap(),
    )
    .unwrap();
    id
}

/// The record a real task of this host left in the shared task directory.
fn shared_record(root: &Path, task: &str) -> Value {
    let path = root.join("master/tasks").join(format!("{task}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// `spmStop`, then `spmStart` again: the host becomes the SPM anew and takes over what the
/// shared task directory holds.
fn become_spm_again(host: &SharedHost) {
    let f = &host.f;
    assert_eq!(
        f.daemon
            .ok("StoragePool.spmStop", json!({"storagepoolID": f.pool})),
        json!(true)
    );
    let task = f.daemon.ok(
        "StoragePool.spmStart",
        json!({"storagepoolID": f.pool, "prevID": -1, "prevLver": "-1",
               "enableScsiFencing": "false"}),
    );
    assert_success(&f.daemon.wait_task(task.as_str().unwrap()));
}

#[test]
fn forged_begun_deletes_and_finalize_touch_neither_a_legal_image_nor_a_volume_in_its_create() {
    let _conn = common::libvirt();
    let host = SharedHost::start();
    let f = &host.f;
    let (image, base, top) = (new_id(), new_id(), new_id());
    assert_success(&f.create(&image, &base, json!({})));
    assert_success(&f.create(&image, &top, json!({"srcVolUUID": base})));
    let before = snapshot_of(&f.image_dir(&image));
    // An ILLEGAL volume as a create under way leaves it: its creation nonce beside it.
    let (pending_image, pending) = (new_id(), new_id());
    assert_success(&f.create(&pending_image, &pending, json!({"legal": false})));
    std::fs::write(
        f.image_dir(&pending_image)
            .join(format!("{pending}.creating")),
        Uuid::new_v4().to_string(),
    )
    .unwrap();
    let pending_before = snapshot_of(&f.image_dir(&pending_image));

    // A record that says an Image.delete of that image had begun (its volumes ILLEGAL), left
    // by some other SPM. The image says otherwise: every volume is LEGAL.
    let forged = plant(
        &f.root(),
        &json!({
            "id": Uuid::new_v4(), "verb": "Image.delete", "state": "running", "code": 0,
            "error": "",
            "work": {"kind": "deleteImage", "domain": f.domain, "image": image, "started": true},
        }),
    );
    // And one that says a finalize of a cold merge of top into base had rebased top's child:
    // finished forward, it would delete top.
    let finalize = plant(
        &f.root(),
        &json!({
            "id": Uuid::new_v4(), "verb": "StoragePool.finalizeMerge", "state": "running",
            "code": 0, "error": "",
            "work": {"kind": "finalizeMerge", "domain": f.domain, "image": image, "base": base,
                     "top": top, "child": null, "started": true},
        }),
    );
    // And one that says a Volume.delete of the volume in its create had begun.
    let in_create = plant(
        &f.root(),
        &json!({
            "id": Uuid::new_v4(), "verb": "Volume.delete", "state": "running", "code": 0,
            "error": "",
            "work": {"kind": "deleteVolume", "domain": f.domain, "image": pending_image,
                     "volume": pending, "started": true},
        }),
    );
    become_spm_again(&host);

    let status = f.daemon.ok("Task.getStatus", json!({"taskID": in_create}));
    assert_eq!(status["taskResult"], "cleanFailure", "{status}");
    assert_eq!(
        snapshot_of(&f.image_dir(&pending_image)),
        pending_before,
        "a volume in its create was deleted"
    );
    for task in [&forged, &finalize] {
        let status = f.daemon.ok("Task.getStatus", json!({"taskID": task}));
        assert_eq!(status["taskState"], "finished", "{status}");
        assert_eq!(status["taskResult"], "cleanFailure", "{status}");
        assert!(
            status["message"].as_str().unwrap().contains("is LEGAL"),
            "{status}"
        );
    }
    assert_eq!(
        snapshot_of(&f.image_dir(&image)),
        before,
        "the image was touched"
    );
    assert_eq!(f.info(&image, &top)["legality"], "LEGAL");
}

#[test]
fn a_forged_create_rollback_keeps_a_volume_it_cannot_prove_half_made() {
    let _conn = common::libvirt();
    let host = SharedHost::start();
    let f = &host.f;
    let (image, legal) = (new_id(), new_id());
    let (other, illegal) = (new_id(), new_id());
    let task = f
        .daemon
        .ok("Volume.create", f.create_params(&image, &legal, json!({})));
    let task = task.as_str().unwrap().to_owned();
    assert_success(&f.daemon.wait_task(&task));
    let illegal_task = f.daemon.ok(
        "Volume.create",
        f.create_params(&other, &illegal, json!({"legal": false})),
    );
    let illegal_task = illegal_task.as_str().unwrap().to_owned();
    assert_success(&f.daemon.wait_task(&illegal_task));
    let before = (
        snapshot_of(&f.image_dir(&image)),
        snapshot_of(&f.image_dir(&other)),
    );

    // Each create's own record, replayed as an unfinished task of another id: one names a
    // complete LEGAL volume, the other an ILLEGAL one (made so on request) whose create
    // ended long ago.
    let forged: Vec<String> = [&task, &illegal_task]
        .iter()
        .map(|real| {
            let mut record = shared_record(&f.root(), real);
            record["id"] = json!(Uuid::new_v4());
            record["state"] = json!("running");
            plant(&f.root(), &record)
        })
        .collect();
    become_spm_again(&host);

    for id in &forged {
        let status = f.daemon.ok("Task.getStatus", json!({"taskID": id}));
        assert_eq!(status["taskState"], "finished", "{status}");
        assert_eq!(status["taskResult"], "cleanFailure", "{status}");
    }
    assert_eq!(
        (
            snapshot_of(&f.image_dir(&image)),
            snapshot_of(&f.image_dir(&other))
        ),
        before,
        "a volume was rolled back on a forged record"
    );
    assert_eq!(f.info(&image, &legal)["legality"], "LEGAL");
    assert_eq!(f.info(&other, &illegal)["legality"], "ILLEGAL");
}

/// Two hosts on one shared domain.
struct Pair {
    hosts: [Host; 2],
    pool: String,
    domain: String,
    shared: tempfile::TempDir,
}

impl Pair {
    fn start() -> Pair {
        let shared = disk_dir("shared-storage");
        let data = shared.path().join("data");
        let pool = Uuid::new_v4().to_string();
        let hosts = [
            Host::start(1, shared.path(), &pool),
            Host::start(2, shared.path(), &pool),
        ];
        let domain = create_domain(&hosts[0].daemon, &data, "shared");
        // The engine's next step: the domain made the pool's master, at version 1.
        create_pool(&hosts[0].daemon, &pool, &domain, &[&domain], 1);
        let pair = Pair {
            hosts,
            pool,
            domain,
            shared,
        };
        for host in &pair.hosts {
            pair.connect(host);
        }
        pair
    }

    /// `StoragePool.connect`, then waits until the host holds its lease in the lockspace.
    fn connect(&self, host: &Host) {
        assert_eq!(
            host.daemon.ok(
                "StoragePool.connect",
                json!({"storagepoolID": self.pool, "hostID": host.id, "scsiKey": self.pool,
                       "masterSdUUID": self.domain, "masterVersion": 1}),
            ),
            json!(true)
        );
        let joined = wait_until(Duration::from_secs(60), || {
            host.daemon.ok("Host.getStorageRepoStats", json!({}))[&self.domain]["acquired"]
                == json!(true)
        });
        assert!(
            joined,
            "host {} never joined; log:\n{}",
            host.id,
            host.daemon.log()
        );
    }

    /// `spmStart` on `host` until it succeeds (a killed holder's lease is freed at once).
    fn spm_start(&self, host: &Host) {
        let mut last = Value::Null;
        let started = wait_until(Duration::from_secs(60), || {
            let task = host.daemon.ok(
                "StoragePool.spmStart",
                json!({"storagepoolID": self.pool, "prevID": -1, "prevLver": "-1",
                       "enableScsiFencing": "false"}),
            );
            last = host.daemon.wait_task(task.as_str().unwrap());
            let ok = last["taskResult"] == "success";
            if !ok {
                std::thread::sleep(Duration::from_secs(1));
            }
            ok
        });
        assert!(started, "host {} never SPM: {last}", host.id);
    }

    fn create_params(&self, image: &str, volume: &str, parent: &str) -> Value {
        json!({
            "volumeID": volume, "storagepoolID": self.pool, "storagedomainID": self.domain,
            "imageID": image, "size": (1u64 << 30).to_string(), "volFormat": 4,
            "preallocate": 2, "diskType": "DATA", "desc": "records",
            "srcImgUUID": if parent == BLANK { BLANK } else { image },
            "srcVolUUID": parent,
        })
    }

    fn create(&self, spm: &Host, image: &str, volume: &str, parent: &str) {
        let task = spm
            .daemon
            .ok("Volume.create", self.create_params(image, volume, parent));
        assert_success(&spm.daemon.wait_task(task.as_str().unwrap()));
    }

    fn image_dir(&self, image: &str) -> PathBuf {
        self.shared
            .path()
            .join("data")
            .join(&self.domain)
            .join("images")
            .join(image)
    }

    fn info(&self, host: &Host, image: &str, volume: &str) -> Value {
        host.daemon.ok(
            "Volume.getInfo",
            json!({"volumeID": volume, "storagepoolID": self.pool,
                   "storagedomainID": self.domain, "imageID": image}),
        )
    }
}

#[test]
fn a_task_cleared_by_the_next_spm_is_not_recovered_again_and_a_confirmed_begun_delete_is_finished()
{
    let _conn = common::libvirt();
    let mut pair = Pair::start();
    pair.spm_start(&pair.hosts[0]);
    let (image, base, top) = (new_id(), new_id(), new_id());
    pair.create(&pair.hosts[0], &image, &base, BLANK);

    // Host 1's rvdsmd stops in a create (data file written, metadata ILLEGAL) and dies there;
    // its sanlock lives on, so its SPM lease is freed at once.
    let marker = pair.hosts[0]
        .daemon
        .restart_paused_at("create:data-written");
    pair.connect(&pair.hosts[0]);
    pair.spm_start(&pair.hosts[0]);
    let interrupted = pair.hosts[0]
        .daemon
        .ok("Volume.create", pair.create_params(&image, &top, &base));
    let interrupted = interrupted.as_str().unwrap().to_owned();
    assert!(
        wait_until(Duration::from_secs(30), || marker.exists()),
        "the create never reached its failpoint"
    );
    pair.hosts[0].daemon.kill9();

    // Host 2 becomes the SPM and rolls the create back; the engine creates the volume again
    // (same id, as a retry does), and clears the interrupted task.
    pair.spm_start(&pair.hosts[1]);
    let b = &pair.hosts[1];
    let status = b
        .daemon
        .ok("Task.getStatus", json!({"taskID": interrupted}));
    assert_eq!(status["taskState"], "finished", "{status}");
    assert!(!pair.image_dir(&image).join(&top).exists());
    pair.create(b, &image, &top, &base);
    assert_eq!(
        b.daemon.ok("Task.clear", json!({"taskID": interrupted})),
        json!(true)
    );
    let retried = snapshot_of(&pair.image_dir(&image));

    // Host 2 then dies in a delete it began (the volume ILLEGAL, its files still there).
    let (other, doomed) = (new_id(), new_id());
    pair.create(&pair.hosts[1], &other, &doomed, BLANK);
    let marker = pair.hosts[1].daemon.restart_paused_at("delete:illegal");
    pair.connect(&pair.hosts[1]);
    pair.spm_start(&pair.hosts[1]);
    let delete = pair.hosts[1].daemon.ok(
        "Volume.delete",
        json!({"volumeID": doomed, "storagepoolID": pair.pool,
               "storagedomainID": pair.domain, "imageID": other}),
    );
    let delete = delete.as_str().unwrap().to_owned();
    assert!(
        wait_until(Duration::from_secs(30), || marker.exists()),
        "the delete never reached its failpoint"
    );
    pair.hosts[1].daemon.kill9();

    // Host 1 comes back and becomes the SPM again: its own record of the create is not
    // recovered a second time (the retried volume stays, the cleared task stays cleared),
    // and host 2's begun delete, which the disk confirms, is finished.
    pair.hosts[0].daemon.restart_in_place(&[]);
    let a = &pair.hosts[0];
    pair.connect(a);
    pair.spm_start(a);
    assert_eq!(
        snapshot_of(&pair.image_dir(&image)),
        retried,
        "the retried volume was touched; log:\n{}",
        a.daemon.log()
    );
    assert_eq!(pair.info(a, &image, &top)["legality"], "LEGAL");
    let (code, message) = a
        .daemon
        .err("Task.getStatus", json!({"taskID": interrupted}));
    assert_eq!(code, 401, "{message}");
    let status = a.daemon.ok("Task.getStatus", json!({"taskID": delete}));
    assert_eq!(status["taskResult"], "cleanSuccess", "{status}");
    for suffix in ["", ".meta", ".lease"] {
        assert!(
            !pair
                .image_dir(&other)
                .join(format!("{doomed}{suffix}"))
                .exists(),
            "{suffix} of the begun delete left"
        );
    }
}
