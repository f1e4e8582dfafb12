//! Storage domains and volumes through a real rvdsmd, with real files and real qemu-img:
//! every create variant, snapshot volumes and their chain as qemu-img sees it, tasks, every
//! bad input (refused, nothing changed), parallel creates, and rollback.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::domain::{Fixture, GIB, assert_success, new_id, qemu_info};
use common::guest::qemu_img;
use serde_json::{Value, json};

#[test]
fn domain_is_created_in_vdsm_layout_and_described() {
    let f = Fixture::new();
    let root = f.root();
    for file in ["metadata", "ids", "leases", "inbox", "outbox", "xleases"] {
        assert!(root.join("dom_md").join(file).exists(), "{file}");
    }
    let metadata = std::fs::read_to_string(root.join("dom_md/metadata")).unwrap();
    assert!(metadata.contains("TYPE=LOCALFS\n") && metadata.contains("VERSION=5\n"));
    // The external leases volume: 1 GiB (sparse), its index formatted at slot 1 (VDSM's
    // magic, then the domain as its lockspace).
    let xleases = std::fs::read(root.join("dom_md/xleases")).unwrap();
    assert_eq!(xleases.len() as u64, GIB);
    assert_eq!(&xleases[1 << 20..][..4], &[0x12, 0x15, 0x20, 0x16]);
    assert_eq!(&xleases[(1 << 20) + 10..][..36], f.domain.as_bytes());
    assert!(metadata.lines().last().unwrap().starts_with("_SHA_CKSUM="));
    let link = f
        .daemon
        .repository()
        .join("mnt")
        .join(common::daemon::transform(f.data.path()));
    assert_eq!(std::fs::read_link(&link).unwrap(), f.data.path());

    let info = f.daemon.ok(
        "StorageDomain.getInfo",
        json!({"storagedomainID": f.domain}),
    );
    assert_eq!(info["uuid"], f.domain.as_str());
    assert_eq!(info["type"], "LOCALFS");
    assert_eq!(info["name"], "test-domain");
    assert_eq!(info["version"], "5");
    assert_eq!(info["pool"], json!([f.pool]));
    let stats = f.daemon.ok(
        "StorageDomain.getStats",
        json!({"storagedomainID": f.domain}),
    );
    let free: u64 = stats["diskfree"].as_str().unwrap().parse().unwrap();
    let total: u64 = stats["disktotal"].as_str().unwrap().parse().unwrap();
    assert!(free > 0 && total >= free, "{stats}");
    let domains = f.daemon.ok("Host.getStorageDomains", Value::Null);
    assert_eq!(domains, json!([f.domain]));

    // Known again after a restart, from the repository alone.
    let pool = f.pool.clone();
    let daemon = f.daemon.restart();
    assert_eq!(
        daemon.ok("Host.getStorageDomains", json!({"storagepoolID": pool})),
        json!([f.domain])
    );
}

#[test]
fn every_base_volume_variant_is_created_as_asked() {
    let f = Fixture::new();
    for (format, prealloc, qemu_format) in [
        (4, 2, "qcow2"),
        (4, 1, "qcow2"),
        (5, 2, "raw"),
        (5, 1, "raw"),
    ] {
        let (image, volume) = (new_id(), new_id());
        let size = 64 * 1024 * 1024 + 1; // rounded up to 4 KiB
        let status = f.create(
            &image,
            &volume,
            json!({"volFormat": format, "preallocate": prealloc, "size": size.to_string()}),
        );
        assert_success(&status);
        let info = f.info(&image, &volume);
        let expected_capacity = (size as u64).div_ceil(4096) * 4096;
        assert_eq!(info["capacity"], expected_capacity.to_string());
        assert_eq!(info["format"], if format == 4 { "COW" } else { "RAW" });
        assert_eq!(
            info["type"],
            if prealloc == 1 {
                "PREALLOCATED"
            } else {
                "SPARSE"
            }
        );
        assert_eq!(
            (info["legality"].as_str(), info["voltype"].as_str()),
            (Some("LEGAL"), Some("LEAF"))
        );
        assert_eq!(info["status"], "OK");
        assert_eq!(info["parent"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(info["description"], "test volume");

        let data = f.image_dir(&image).join(&volume);
        let qemu = qemu_info(&data);
        assert_eq!(qemu["format"], qemu_format);
        assert_eq!(qemu["virtual-size"], expected_capacity);
        let true_size: u64 = info["truesize"].as_str().unwrap().parse().unwrap();
        if prealloc == 1 {
            assert!(
                true_size >= expected_capacity,
                "{format}/{prealloc}: {info}"
            );
        } else {
            assert!(
                true_size < expected_capacity / 2,
                "{format}/{prealloc}: {info}"
            );
        }
        assert!(f.image_dir(&image).join(format!("{volume}.lease")).exists());
        let meta =
            std::fs::read_to_string(f.image_dir(&image).join(format!("{volume}.meta"))).unwrap();
        assert!(meta.ends_with("EOF\n") && meta.len() <= 512, "{meta}");
        let keys: Vec<&str> = meta
            .lines()
            .filter_map(|l| l.split_once('=').map(|kv| kv.0))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
}

#[test]
fn snapshot_volume_is_a_qcow2_overlay_on_its_parent() {
    let f = Fixture::new();
    let (image, base, top) = (new_id(), new_id(), new_id());
    assert_success(&f.create(&image, &base, json!({"volFormat": 5})));
    assert_success(&f.create(
        &image,
        &top,
        json!({"srcImgUUID": image, "srcVolUUID": base}),
    ));

    let parent = f.info(&image, &base);
    assert_eq!(parent["voltype"], "INTERNAL");
    assert_eq!(parent["children"], json!([top]));
    let child = f.info(&image, &top);
    assert_eq!(child["parent"], base.as_str());
    assert_eq!(child["voltype"], "LEAF");
    assert_eq!(child["capacity"], GIB.to_string());

    let top_path = f.image_dir(&image).join(&top);
    let chain: Value = serde_json::from_str(&qemu_img(&[
        "info",
        "-U",
        "--backing-chain",
        "--output=json",
        top_path.to_str().unwrap(),
    ]))
    .unwrap();
    let chain = chain.as_array().unwrap();
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert_eq!(chain[0]["format"], "qcow2");
    assert_eq!(
        chain[0]["backing-filename"],
        base.as_str(),
        "backing file is the bare parent UUID"
    );
    assert_eq!(chain[0]["backing-filename-format"], "raw");
    assert_eq!(chain[0]["format-specific"]["data"]["compat"], "1.1");
    assert_eq!(
        chain[1]["filename"],
        f.image_dir(&image).join(&base).to_str().unwrap()
    );

    let volumes = f.daemon.ok(
        "Image.getVolumes",
        json!({"imageID": image, "storagepoolID": f.pool, "storagedomainID": f.domain}),
    );
    let mut expected = vec![base.clone(), top.clone()];
    expected.sort();
    assert_eq!(volumes, json!(expected));
    let all = f.daemon.ok(
        "StorageDomain.getVolumes",
        json!({"storagedomainID": f.domain, "storagepoolID": f.pool}),
    );
    assert_eq!(all, json!(expected));
}

#[test]
fn bad_input_is_refused_with_vdsm_codes_and_changes_nothing() {
    let f = Fixture::new();
    let (image, base, internal_child) = (new_id(), new_id(), new_id());
    assert_success(&f.create(&image, &base, json!({})));
    let (illegal_image, illegal) = (new_id(), new_id());
    assert_success(&f.create(&illegal_image, &illegal, json!({"legal": false})));
    assert_eq!(f.info(&illegal_image, &illegal)["legality"], "ILLEGAL");
    let before = f.files();

    let cases: Vec<(&str, Value, i32)> = vec![
        (
            "malformed volume id",
            json!({"volumeID": "../../etc"}),
            -32602,
        ),
        (
            "malformed image id",
            json!({"imageID": "x/../../y"}),
            -32602,
        ),
        ("unknown pool", json!({"storagepoolID": new_id()}), 309),
        ("unknown domain", json!({"storagedomainID": new_id()}), 358),
        ("format out of range", json!({"volFormat": 3}), -32602),
        (
            "preallocate out of range",
            json!({"preallocate": 7}),
            -32602,
        ),
        ("unknown disk type", json!({"diskType": "NOPE"}), 1000),
        ("size not a number", json!({"size": "12abc"}), 1000),
        ("size zero", json!({"size": "0"}), 229),
        (
            "preallocated larger than free space",
            json!({"preallocate": 1, "size": (1u64 << 60).to_string()}),
            397,
        ),
        (
            "volume exists",
            json!({"volumeID": base, "imageID": image}),
            212,
        ),
        (
            "parent unknown",
            json!({"imageID": image, "srcVolUUID": new_id()}),
            201,
        ),
        (
            "parent in an unknown image",
            json!({"srcVolUUID": base}),
            268,
        ),
        (
            "raw volume on a parent",
            json!({"imageID": image, "srcVolUUID": base, "volFormat": 5}),
            202,
        ),
        (
            "smaller than the parent",
            json!({"imageID": image, "srcVolUUID": base, "size": "4096"}),
            229,
        ),
        (
            "illegal parent",
            json!({"imageID": illegal_image, "srcVolUUID": illegal}),
            226,
        ),
        ("initialSize on COW", json!({"initialSize": "4096"}), 1000),
        (
            "template in another image",
            json!({"srcImgUUID": illegal_image, "srcVolUUID": illegal}),
            1000,
        ),
    ];
    for (what, extra, code) in cases {
        let params = f.create_params(&new_id(), &new_id(), extra);
        let (got, message) = f.daemon.err("Volume.create", params);
        assert_eq!(got, code, "{what}: {message}");
        assert_eq!(f.files(), before, "{what} changed the domain");
    }

    // A parent that already has a child takes a second one, as VDSM allows (issue 13: a
    // snapshot's preview is a second child of an older volume; images are trees). It stays
    // INTERNAL until its last child goes.
    assert_success(&f.create(&image, &internal_child, json!({"srcVolUUID": base})));
    let sibling = new_id();
    assert_success(&f.create(&image, &sibling, json!({"srcVolUUID": base})));
    assert_eq!(f.info(&image, &base)["voltype"], "INTERNAL");
    let mut children = f.info(&image, &base)["children"]
        .as_array()
        .unwrap()
        .clone();
    children.sort_by_key(|c| c.as_str().unwrap().to_owned());
    let mut expected = vec![json!(internal_child), json!(sibling)];
    expected.sort_by_key(|c| c.as_str().unwrap().to_owned());
    assert_eq!(children, expected);
    let task = f.daemon.ok("Volume.delete", f.volume_ids(&image, &sibling));
    assert_success(&f.daemon.wait_task(task.as_str().unwrap()));
    assert_eq!(
        f.info(&image, &base)["voltype"],
        "INTERNAL",
        "one child left"
    );

    let unknown = json!({"volumeID": new_id(), "storagepoolID": f.pool,
                         "storagedomainID": f.domain, "imageID": image});
    assert_eq!(f.daemon.err("Volume.getInfo", unknown.clone()).0, 201);
    let unknown_image = f.volume_ids(&new_id(), &base);
    assert_eq!(f.daemon.err("Volume.getInfo", unknown_image).0, 268);
    assert_eq!(
        f.daemon
            .err("Task.getStatus", json!({"taskID": new_id()}))
            .0,
        401
    );
    assert_eq!(
        f.daemon.err("Task.clear", json!({"taskID": new_id()})).0,
        401
    );
    assert_eq!(
        f.daemon
            .err(
                "StorageDomain.getInfo",
                json!({"storagedomainID": new_id()})
            )
            .0,
        358
    );
    let (code, _) = f.daemon.err(
        "StorageDomain.create",
        json!({"storagedomainID": new_id(), "domainType": 4, "typeArgs": "relative/path",
               "name": "x", "domainClass": 1, "version": 5}),
    );
    assert_eq!(code, 1000);
}

#[test]
fn failed_qemu_img_rolls_back_everything() {
    let f = Fixture::new();
    let (image, volume) = (new_id(), new_id());
    let before = f.files();
    // qcow2 cannot hold 2^60 bytes with its default clusters: qemu-img fails after rvdsm has
    // reserved the volume.
    let status = f.create(&image, &volume, json!({"size": (1u64 << 60).to_string()}));
    assert_eq!(status["taskState"], "finished");
    assert_eq!(status["taskResult"], "cleanSuccess", "{status}");
    assert_eq!(status["code"], 205);
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains("too large") && message.ends_with("abortedcode=205"),
        "{message}"
    );
    assert_eq!(f.files(), before, "rollback left files");

    // Same on a parent: the parent is a LEAF again.
    let (image, base, top) = (new_id(), new_id(), new_id());
    assert_success(&f.create(&image, &base, json!({})));
    let status = f.create(
        &image,
        &top,
        json!({"srcVolUUID": base, "size": (1u64 << 60).to_string()}),
    );
    assert_eq!(status["code"], 217, "{status}");
    assert_eq!(f.info(&image, &base)["voltype"], "LEAF");
    assert!(!f.image_dir(&image).join(&top).exists());
    assert!(f.image_dir(&image).exists(), "the parent's image stays");
}

#[test]
fn tasks_stay_until_cleared() {
    let f = Fixture::new();
    let (image, volume) = (new_id(), new_id());
    let task = f
        .daemon
        .ok("Volume.create", f.create_params(&image, &volume, json!({})));
    let task = task.as_str().unwrap().to_owned();
    f.daemon.wait_task(&task);
    let all = f.daemon.ok("Host.getAllTasksStatuses", Value::Null);
    assert_eq!(all[&task]["taskResult"], "success", "{all}");
    let info = f.daemon.ok("Task.getInfo", json!({"taskID": task}));
    assert_eq!(info, json!({"id": task, "verb": "Volume.create"}));
    // Finished tasks survive a restart until cleared.
    let daemon = f.daemon.restart();
    assert_eq!(
        daemon.ok("Task.getStatus", json!({"taskID": task}))["taskResult"],
        "success"
    );
    assert_eq!(
        daemon.ok("Task.clear", json!({"taskID": task})),
        json!(true)
    );
    assert_eq!(daemon.err("Task.getStatus", json!({"taskID": task})).0, 401);
    assert_eq!(daemon.err("Task.stop", json!({"taskID": new_id()})).0, 401);
}

#[test]
fn creates_in_different_images_run_in_parallel() {
    let f = Fixture::new();
    let volumes: Vec<(String, String)> = (0..6).map(|_| (new_id(), new_id())).collect();
    let tasks: Vec<String> = volumes
        .iter()
        .map(|(image, volume)| {
            let params = f.create_params(
                image,
                volume,
                json!({"volFormat": 5, "preallocate": 1, "size": "33554432"}),
            );
            f.daemon
                .ok("Volume.create", params)
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for task in &tasks {
        assert_success(&f.daemon.wait_task(task));
    }
    for (image, volume) in &volumes {
        assert_eq!(f.info(image, volume)["legality"], "LEGAL");
    }
}

#[test]
fn kill_9_at_each_step_of_a_create_leaves_the_domain_consistent() {
    for point in ["create:reserved", "create:data-written", "create:published"] {
        let mut f = Fixture::new();
        let (image, base, top) = (new_id(), new_id(), new_id());
        assert_success(&f.create(&image, &base, json!({})));
        let before = f.files();

        let marker = f.daemon.restart_paused_at(point);
        let task = f.daemon.ok(
            "Volume.create",
            f.create_params(&image, &top, json!({"srcVolUUID": base})),
        );
        let task = task.as_str().unwrap().to_owned();
        assert!(
            common::wait_until(std::time::Duration::from_secs(60), || marker.exists()),
            "{point} never reached; log:\n{}",
            f.daemon.log()
        );
        f.daemon.restart_in_place(&[]);

        let status = f.daemon.ok("Task.getStatus", json!({"taskID": task}));
        assert_eq!(status["taskState"], "finished", "{point}: {status}");
        assert_eq!(status["taskResult"], "cleanSuccess", "{point}: {status}");
        assert_eq!(status["code"], 411, "{point}: {status}");
        assert_eq!(
            f.files(),
            before,
            "{point}: the interrupted create left files"
        );
        let parent = f.info(&image, &base);
        assert_eq!(parent["voltype"], "LEAF", "{point}: parent stuck INTERNAL");
        assert_eq!(parent["legality"], "LEGAL");
        assert_eq!(parent["children"], json!([]));
    }
}

#[test]
fn delete_and_prepare_follow_the_chain_rules() {
    let f = Fixture::new();
    let (image, base, top) = (new_id(), new_id(), new_id());
    assert_success(&f.create(&image, &base, json!({})));
    assert_success(&f.create(&image, &top, json!({"srcVolUUID": base})));

    let prepared = f.daemon.ok(
        "Image.prepare",
        json!({"storagepoolID": f.pool, "storagedomainID": f.domain, "imageID": image, "volumeID": top}),
    );
    let path = PathBuf::from(prepared["path"].as_str().unwrap());
    assert!(
        path.starts_with(f.daemon.repository().join(&f.pool)),
        "{path:?}"
    );
    assert_eq!(
        std::fs::canonicalize(&path).unwrap(),
        std::fs::canonicalize(f.image_dir(&image).join(&top)).unwrap()
    );
    assert_eq!(
        f.daemon.ok(
            "Image.teardown",
            json!({"storagepoolID": f.pool, "storagedomainID": f.domain, "imageID": image})
        ),
        json!(true)
    );

    let (code, message) = f.daemon.err("Volume.delete", f.volume_ids(&image, &base));
    assert_eq!(code, 204, "{message}");
    let task = f.daemon.ok("Volume.delete", f.volume_ids(&image, &top));
    assert_success(&f.daemon.wait_task(task.as_str().unwrap()));
    for suffix in ["", ".meta", ".lease"] {
        assert!(
            !f.image_dir(&image).join(format!("{top}{suffix}")).exists(),
            "{suffix}"
        );
    }
    assert_eq!(f.info(&image, &base)["voltype"], "LEAF");
    assert_eq!(
        f.daemon.err("Volume.delete", f.volume_ids(&image, &top)).0,
        201
    );

    let (illegal_image, illegal) = (new_id(), new_id());
    assert_success(&f.create(&illegal_image, &illegal, json!({"legal": false})));
    let prepare = json!({"storagepoolID": f.pool, "storagedomainID": f.domain,
                         "imageID": illegal_image, "volumeID": illegal});
    assert_eq!(f.daemon.err("Image.prepare", prepare.clone()).0, 227);
    let mut allowed = prepare;
    allowed["allowIllegal"] = json!(true);
    assert!(f.daemon.ok("Image.prepare", allowed)["path"].is_string());

    let task = f.daemon.ok(
        "Image.delete",
        json!({"imageID": image, "storagepoolID": f.pool, "storagedomainID": f.domain}),
    );
    assert_success(&f.daemon.wait_task(task.as_str().unwrap()));
    assert!(!f.image_dir(&image).exists());
    let unknown = json!({"imageID": image, "storagepoolID": f.pool, "storagedomainID": f.domain});
    assert_eq!(f.daemon.err("Image.delete", unknown).0, 268);
}

#[test]
fn kill_9_during_a_delete_finishes_it_at_restart() {
    for point in ["delete:illegal", "delete:data-removed"] {
        let mut f = Fixture::new();
        let (image, base, top) = (new_id(), new_id(), new_id());
        assert_success(&f.create(&image, &base, json!({})));
        assert_success(&f.create(&image, &top, json!({"srcVolUUID": base})));
        let marker = f.daemon.restart_paused_at(point);
        let task = f.daemon.ok("Volume.delete", f.volume_ids(&image, &top));
        let task = task.as_str().unwrap().to_owned();
        assert!(
            common::wait_until(std::time::Duration::from_secs(60), || marker.exists()),
            "{point}"
        );
        f.daemon.restart_in_place(&[]);

        let status = f.daemon.ok("Task.getStatus", json!({"taskID": task}));
        assert_eq!(
            (status["taskResult"].as_str(), status["code"].as_i64()),
            (Some("cleanSuccess"), Some(411)),
            "{point}: {status}"
        );
        for suffix in ["", ".meta", ".lease"] {
            assert!(
                !f.image_dir(&image).join(format!("{top}{suffix}")).exists(),
                "{point}: {suffix} left"
            );
        }
        assert_eq!(f.info(&image, &base)["voltype"], "LEAF", "{point}");
    }
}

#[test]
fn volumes_a_running_guest_uses_are_not_deleted() {
    let Some(conn) = common::libvirt() else {
        return;
    };
    let f = Fixture::new();
    let (image, volume, guest) = f.guest_on_volume(&conn, common::GuestOptions::default());
    let before = f.files();

    let (code, message) = f.daemon.err("Volume.delete", f.volume_ids(&image, &volume));
    assert_eq!(code, 222, "{message}");
    let (code, _) = f.daemon.err(
        "Image.delete",
        json!({"imageID": image, "storagepoolID": f.pool, "storagedomainID": f.domain}),
    );
    assert_eq!(code, 222);
    assert_eq!(f.files(), before);
    let (status, _) = guest.exec("echo still-here > /mnt/data/x && cat /mnt/data/x");
    assert_eq!(status, 0);
}

/// Issue 13, item 3: a delete sent while a create runs on the same image waits for it (one
/// exclusive lock per image for the whole of each task) and checks again under the lock.
/// Before, the delete ran inside the create: it reported success, then the create published a
/// LEGAL `.meta` with no data file, and its parent was a LEAF with a child.
#[test]
fn a_delete_waits_for_the_create_on_its_image_and_checks_again() {
    let mut f = Fixture::new();
    let (image, base, top) = (new_id(), new_id(), new_id());
    assert_success(&f.create(&image, &base, json!({})));
    let before = f.files();
    let (create, marker) = f.create_paused_at("create:reserved", &image, &base, &top);
    let delete = f.daemon.ok("Volume.delete", f.volume_ids(&image, &top));
    let delete = delete.as_str().unwrap().to_owned();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let waiting = f.daemon.ok("Task.getStatus", json!({"taskID": delete}));
    assert_eq!(waiting["taskState"], "running", "{waiting}");
    assert_ne!(
        f.files(),
        before,
        "the delete waits: the create's files are there"
    );

    std::fs::remove_file(&marker).unwrap();
    assert_success(&f.daemon.wait_task(&create));
    assert_success(&f.daemon.wait_task(&delete));
    assert_eq!(f.files(), before, "the created volume, then deleted whole");
    assert_eq!(f.info(&image, &base)["voltype"], "LEAF");
    let ids = f.volume_ids(&image, &top);
    assert_eq!(f.daemon.err("Volume.getInfo", ids).0, 201);
}

/// Issue 13 (suspected: filesystem calls on the reactor): a storage call blocked in the
/// filesystem (a hung mount, here a failpoint in the image look-up) holds a thread of the
/// blocking pool, never the reactor: with a one-thread reactor, `Host.ping2` and the verbs of
/// other images keep answering at once.
#[test]
fn a_storage_call_hung_in_the_filesystem_stalls_nothing_else() {
    let mut f = Fixture::new();
    let (image, base, other, other_volume) = (new_id(), new_id(), new_id(), new_id());
    assert_success(&f.create(&image, &base, json!({})));
    assert_success(&f.create(&other, &other_volume, json!({})));
    let marker = f.daemon.dir.path().join("paused");
    let marker_text = marker.to_str().unwrap().to_owned();
    f.daemon.restart_in_place(&[
        ("RVDSM_TEST_PAUSE_AT", "storage:stat"),
        ("RVDSM_TEST_PAUSE_MARKER", marker_text.as_str()),
        ("TOKIO_WORKER_THREADS", "1"),
    ]);
    let socket = f.daemon.socket.clone();
    let ids = f.volume_ids(&image, &base);
    let hung = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = rvdsm::client::Client::connect(
                &rvdsm::client::Endpoint::Unix(socket),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            client.call("Volume.getInfo", ids).await
        })
    });
    assert!(common::wait_until(Duration::from_secs(30), || marker.exists()));
    let started = std::time::Instant::now();
    assert_eq!(f.daemon.ok("Host.ping2", Value::Null), json!(true));
    let ids = json!({"storagepoolID": f.pool, "storagedomainID": f.domain, "imageID": other});
    assert_eq!(f.daemon.ok("Image.getVolumes", ids), json!([other_volume]));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    std::fs::remove_file(&marker).unwrap();
    let info = hung.join().unwrap().unwrap();
    assert_eq!(info["legality"], "LEGAL");
}

#[test]
fn task_stop_rolls_a_create_back() {
    let mut f = Fixture::new();
    let (image, base, top) = (new_id(), new_id(), new_id());
    assert_success(&f.create(&image, &base, json!({})));
    let before = f.files();
    let (task, _marker) = f.create_paused_at("create:writing", &image, &base, &top);
    let running = f.daemon.ok("Task.getStatus", json!({"taskID": task}));
    assert_eq!(running["taskState"], "running");
    assert_eq!(running["message"], "running job 1 of 1");
    assert_eq!(f.daemon.err("Task.clear", json!({"taskID": task})).0, 410);
    assert_eq!(
        f.info(&image, &top)["legality"],
        "ILLEGAL",
        "unfinished volume must not be usable"
    );

    assert_eq!(
        f.daemon.ok("Task.stop", json!({"taskID": task})),
        json!(true)
    );
    let status = f.daemon.wait_task(&task);
    assert_eq!(
        (status["taskResult"].as_str(), status["code"].as_i64()),
        (Some("cleanSuccess"), Some(411)),
        "{status}"
    );
    assert_eq!(f.files(), before);
    assert_eq!(f.info(&image, &base)["voltype"], "LEAF");
}

/// Issue 13, item 2: a link planted at any name rvdsm reads or writes in a domain (another
/// host on the same export could plant one) is never followed by rvdsmd, which runs as root:
/// the file the links point at keeps its content and mode, and no reply shows its content.
#[test]
fn links_planted_at_every_name_in_a_domain_are_never_followed() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let f = Fixture::new();
    let outside_dir = tempfile::tempdir().unwrap();
    let outside = outside_dir.path().join("precious");
    // Valid as a snapshot note, so that a followed read would show in Volume.getInfo.
    let content = json!({"consistency": "quiesced", "reason": null, "time": 1,
        "vmId": new_id(), "volumeID": new_id()})
    .to_string();
    std::fs::write(&outside, &content).unwrap();
    std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o600)).unwrap();
    let untouched = |what: &str| {
        assert_eq!(
            std::fs::read_to_string(&outside).unwrap(),
            content,
            "{what}"
        );
        let mode = std::fs::metadata(&outside).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{what}");
    };
    let plant = |at: &std::path::Path| symlink(&outside, at).unwrap();
    let (image, base) = (new_id(), new_id());
    assert_success(&f.create(&image, &base, json!({})));
    let dir = f.image_dir(&image);

    // The new volume's data file: someone else's name, refused (212), the link left alone.
    let top = new_id();
    plant(&dir.join(&top));
    let params = f.create_params(&image, &top, json!({"srcVolUUID": base}));
    let (code, message) = f.daemon.err("Volume.create", params);
    assert_eq!(code, 212, "{message}");
    untouched("data file");
    std::fs::remove_file(dir.join(&top)).unwrap();

    // The `.meta`'s temporary: replaced by a fresh file, the create works.
    plant(&dir.join(format!("{top}.meta.new")));
    assert_success(&f.create(&image, &top, json!({"srcVolUUID": base})));
    untouched(".meta.new on create");

    // A `.lease` (even one whose target is gone) holds the name: refused (212).
    let other = new_id();
    plant(&dir.join(format!("{other}.lease")));
    let params = f.create_params(&image, &other, json!({"srcVolUUID": top}));
    let (code, message) = f.daemon.err("Volume.create", params);
    assert_eq!(code, 212, "{message}");
    untouched(".lease");
    std::fs::remove_file(dir.join(format!("{other}.lease"))).unwrap();

    // The snapshot note: never read through a link.
    plant(&dir.join(format!("{base}.snapshot")));
    assert!(
        f.info(&image, &base)["snapshot"].is_null(),
        "the note came from the link"
    );
    std::fs::remove_file(dir.join(format!("{base}.snapshot"))).unwrap();

    // A `.meta` that is a link: refused, its target never shown.
    let linked = new_id();
    plant(&dir.join(format!("{linked}.meta")));
    let (code, message) = f
        .daemon
        .err("Volume.getInfo", f.volume_ids(&image, &linked));
    assert!(!message.contains("quiesced"), "{code}: {message}");
    std::fs::remove_file(dir.join(format!("{linked}.meta"))).unwrap();

    // The audit's case: `<vol>.meta.new` linked out, then Volume.delete writes the `.meta`.
    plant(&dir.join(format!("{top}.meta.new")));
    let task = f.daemon.ok("Volume.delete", f.volume_ids(&image, &top));
    assert_success(&f.daemon.wait_task(task.as_str().unwrap()));
    untouched(".meta.new on delete");

    // The domain's lock file: a metadata change refuses to open it through a link.
    let lock = f.root().join("dom_md").join("rvdsm.lock");
    let _ = std::fs::remove_file(&lock);
    plant(&lock);
    let status = f.create(&image, &new_id(), json!({"srcVolUUID": base}));
    assert_ne!(status["taskResult"], "success", "{status}");
    untouched("lock file");
    std::fs::remove_file(&lock).unwrap();
    assert_success(&f.create(&image, &new_id(), json!({"srcVolUUID": base})));
    untouched("at the end");
}

#[test]
fn identifiers_never_lead_outside_the_domain_through_symlinks() {
    let f = Fixture::new();
    let outside = tempfile::tempdir().unwrap();
    // An image directory that is a symlink out of the domain.
    let image = new_id();
    std::os::unix::fs::symlink(outside.path(), f.root().join("images").join(&image)).unwrap();
    let volume = new_id();
    let (code, message) = f
        .daemon
        .err("Volume.create", f.create_params(&image, &volume, json!({})));
    assert_eq!(code, 254, "{message}");
    let ids = json!({"storagepoolID": f.pool, "storagedomainID": f.domain, "imageID": image});
    let with_volume = {
        let mut ids = ids.clone();
        ids["volumeID"] = json!(volume);
        ids
    };
    for (verb, params) in [
        ("Image.prepare", &with_volume),
        ("Volume.getInfo", &with_volume),
        ("Volume.delete", &with_volume),
        ("Image.getVolumes", &ids),
        ("Image.delete", &ids),
    ] {
        let (code, message) = f.daemon.err(verb, params.clone());
        assert_eq!(code, 254, "{verb}: {message}");
    }
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "a file was written outside the domain"
    );
    assert!(
        std::fs::symlink_metadata(f.root().join("images").join(&image))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link itself was touched"
    );

    // A volume id whose data file is a symlink planted in a real image: never written through.
    let real_image = new_id();
    let base = new_id();
    assert_success(&f.create(&real_image, &base, json!({})));
    let target = outside.path().join("target");
    let planted = new_id();
    std::os::unix::fs::symlink(&target, f.image_dir(&real_image).join(&planted)).unwrap();
    // A link at the name holds it, dangling or not: refused before any task (the data file
    // would be created with O_EXCL, which never follows a link, anyway).
    let (code, message) = f.daemon.err(
        "Volume.create",
        f.create_params(
            &real_image,
            &planted,
            json!({"srcImgUUID": real_image, "srcVolUUID": base, "volFormat": 4}),
        ),
    );
    assert_eq!(code, 212, "{message}");
    assert!(
        !target.exists(),
        "a volume was written through a planted symlink"
    );
    assert!(
        std::fs::symlink_metadata(f.image_dir(&real_image).join(&planted)).is_ok(),
        "the planted link, not rvdsm's, was removed by the rollback"
    );
}

#[test]
fn a_host_without_a_host_id_runs_alone_and_says_so() {
    let f = Fixture::new();
    let stats = f.daemon.ok("Host.getStorageRepoStats", json!({}));
    let vitals = &stats[&f.domain];
    assert_eq!(vitals["acquired"], json!(false), "{stats}");
    assert_eq!(vitals["valid"], json!(true), "{stats}");
    assert_eq!(vitals["code"], json!(0), "{stats}");
    assert_eq!(vitals["version"], json!(5), "{stats}");
    let only_other = f
        .daemon
        .ok("Host.getStorageRepoStats", json!({"domains": [new_id()]}));
    assert_eq!(only_other, json!({}));

    // The pool verbs of shared domains are refused, naming the setting.
    let (code, message) = f.daemon.err(
        "StoragePool.create",
        common::pool::create_pool_params(&f.pool, &f.domain, &[&f.domain], 1),
    );
    assert_eq!(code, 91, "{message}");
    let (code, message) = f.daemon.err(
        "StoragePool.connect",
        json!({"storagepoolID": f.pool, "hostID": 1, "scsiKey": "",
               "masterSdUUID": f.domain, "masterVersion": 1}),
    );
    assert_eq!(code, 91);
    assert!(message.contains("host_id"), "{message}");
    let (code, _) = f
        .daemon
        .err("StoragePool.spmStart", json!({"storagepoolID": f.pool}));
    assert_eq!(code, 91);
    let (code, _) = f.daemon.err(
        "StoragePool.getSpmStatus",
        json!({"storagepoolID": new_id()}),
    );
    assert_eq!(code, 309);

    // Its metadata verbs need no SPM.
    assert_success(&f.create(&new_id(), &new_id(), json!({})));
}

#[test]
fn vm_leases_need_a_host_that_shares_its_domains_through_sanlock() {
    let f = Fixture::new();
    let lease = json!({"lease": {"sd_id": f.domain, "lease_id": new_id()}});
    for verb in ["Lease.create", "Lease.delete"] {
        let err = f
            .daemon
            .call(common::daemon::Via::Unix, verb, lease.clone())
            .unwrap_err();
        assert!(
            matches!(&err, rvdsm::client::ClientError::Server { code: 100, message }
                if message.contains("host_id")),
            "{verb}: {err}"
        );
    }
    let err = f
        .daemon
        .call(common::daemon::Via::Unix, "Lease.info", lease)
        .unwrap_err();
    assert!(
        matches!(err, rvdsm::client::ClientError::Server { code: 936, .. }),
        "{err}"
    );
    assert!(
        f.daemon
            .ok("Host.getAllTasksStatuses", json!({}))
            .as_object()
            .unwrap()
            .is_empty()
    );
}
