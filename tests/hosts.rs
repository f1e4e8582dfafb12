//! Three hosts on one shared storage domain, on one machine: three rvdsmd, each with its own
//! sanlock daemon (own run directory, no watchdog), one shared repository and domain on disk,
//! io_timeout 3 s (see `io_timeout`). What must hold: the hosts elect one SPM through the SDM lease; only the SPM
//! changes the domain's metadata, one change at a time; the role moves on spmStop and on the
//! SPM's death; a host whose sanlock stops renewing stops changing metadata.

mod common;

use std::time::{Duration, Instant};

use common::daemon::Via;
use common::hosts::{Host, io_timeout};
use common::pool::{create_domain, create_pool};
use common::sanlock::disk_dir;
use common::wait_until;
use rvdsm::client::ClientError;
use serde_json::{Value, json};
use uuid::Uuid;

const BLANK: &str = "00000000-0000-0000-0000-000000000000";

/// Three hosts sharing one domain, each connected to the pool.
struct Cluster {
    hosts: Vec<Host>,
    pool: String,
    domain: String,
    shared: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let shared = disk_dir("shared-storage");
        let data = shared.path().join("data");
        let pool = Uuid::new_v4().to_string();
        let hosts: Vec<Host> = (1..=3)
            .map(|id| Host::start(id, shared.path(), &pool))
            .collect();
        let domain = create_domain(&hosts[0].daemon, &data, "shared");
        // The engine's next step: the domain made the pool's master, at version 1.
        create_pool(&hosts[0].daemon, &pool, &domain, &[&domain], 1);
        let cluster = Cluster {
            hosts,
            pool,
            domain,
            shared,
        };
        for host in &cluster.hosts {
            cluster.connect(host);
        }
        cluster
    }

    fn connect(&self, host: &Host) {
        assert_eq!(
            host.daemon.ok(
                "StoragePool.connect",
                json!({"storagepoolID": self.pool, "hostID": host.id, "scsiKey": self.pool,
                       "masterSdUUID": self.domain, "masterVersion": 1}),
            ),
            json!(true)
        );
    }

    /// Waits until every host holds its lease in the domain's lockspace; returns how long.
    fn wait_joined(&self) -> Duration {
        let started = Instant::now();
        for host in &self.hosts {
            let joined = wait_until(Duration::from_secs(60), || self.acquired(host));
            assert!(
                joined,
                "host {} never joined; log:\n{}",
                host.id,
                host.daemon.log()
            );
        }
        started.elapsed()
    }

    fn acquired(&self, host: &Host) -> bool {
        let stats = host.daemon.ok("Host.getStorageRepoStats", json!({}));
        stats[&self.domain]["acquired"] == json!(true)
    }

    fn spm_status(&self, host: &Host) -> Value {
        host.daemon.ok(
            "StoragePool.getSpmStatus",
            json!({"storagepoolID": self.pool}),
        )
    }

    /// `StoragePool.spmStart` on `host`, to its task's end; returns the task's status.
    fn spm_start(&self, host: &Host) -> Value {
        let task = host.daemon.ok(
            "StoragePool.spmStart",
            json!({"storagepoolID": self.pool, "prevID": -1,
                                               "prevLver": "-1", "enableScsiFencing": "false"}),
        );
        host.daemon.wait_task(task.as_str().unwrap())
    }

    fn create_params(&self, image: &str, volume: &str, parent: &str) -> Value {
        json!({
            "volumeID": volume, "storagepoolID": self.pool, "storagedomainID": self.domain,
            "imageID": image, "size": (1u64 << 30).to_string(), "volFormat": 4,
            "preallocate": 2, "diskType": "DATA", "desc": "shared",
            "srcImgUUID": if parent == BLANK { BLANK } else { image },
            "srcVolUUID": parent,
        })
    }

    /// `Volume.create` of `volume` on `parent` through `spm`, to its task's success.
    fn create(&self, spm: &Host, image: &str, volume: &str, parent: &str) {
        let task = spm
            .daemon
            .ok("Volume.create", self.create_params(image, volume, parent));
        let status = spm.daemon.wait_task(task.as_str().unwrap());
        assert_eq!(status["taskResult"], "success", "{status}");
    }

    /// Host 1 made the SPM, with a new image of one volume: `(image, base)`.
    fn spm_with_base(&self) -> (String, String) {
        let spm = &self.hosts[0];
        assert_eq!(self.spm_start(spm)["taskResult"], "success");
        let (image, base) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
        self.create(spm, &image, &base, BLANK);
        (image, base)
    }

    /// `spmStart` on `heir` until it succeeds, once the dead holder's lease expired (up to
    /// 8 × io_timeout + 60 s after its last renewal); returns how many tries it took.
    fn take_over(&self, heir: &Host) -> usize {
        let mut attempts = 0;
        let mut last = Value::Null;
        let taken = wait_until(Duration::from_secs(240), || {
            attempts += 1;
            last = self.spm_start(heir);
            let taken = last["taskResult"] == "success";
            if !taken {
                std::thread::sleep(Duration::from_secs(1));
            }
            taken
        });
        assert!(
            taken,
            "never taken over: {last}; sanlock's log:\n{}\nrvdsmd's log:\n{}",
            heir.sanlock.log(),
            heir.daemon.log()
        );
        attempts
    }

    /// The problems a walk of the image's metadata finds, read through `reader`: every volume
    /// LEGAL, parents present, exactly one LEAF and it has no child, INTERNAL ones have one.
    fn image_problems(&self, reader: &Host, image: &str) -> Vec<String> {
        let ids = reader.daemon.ok(
            "StorageDomain.getVolumes",
            json!({"storagedomainID": self.domain, "storagepoolID": self.pool, "imageID": image}),
        );
        let ids: Vec<String> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        let infos: Vec<Value> = ids
            .iter()
            .map(|v| {
                reader.daemon.ok(
                    "Volume.getInfo",
                    json!({"volumeID": v, "storagepoolID": self.pool,
                           "storagedomainID": self.domain, "imageID": image}),
                )
            })
            .collect();
        let mut problems = Vec::new();
        for (id, info) in ids.iter().zip(&infos) {
            let parent = info["parent"].as_str().unwrap_or_default();
            let children = infos.iter().filter(|i| i["parent"] == json!(id)).count();
            if info["legality"] != "LEGAL" {
                problems.push(format!("{id}: {}", info["legality"]));
            }
            if parent != BLANK && !ids.iter().any(|v| v == parent) {
                problems.push(format!("{id}: parent {parent} missing"));
            }
            match (info["voltype"].as_str(), children) {
                (Some("LEAF"), 0) | (Some("INTERNAL"), 1..) => {}
                (role, n) => problems.push(format!("{id}: {role:?} with {n} children")),
            }
        }
        let leaves = infos.iter().filter(|i| i["voltype"] == "LEAF").count();
        if !ids.is_empty() && leaves != 1 {
            problems.push(format!("{leaves} leaves"));
        }
        problems
    }
}

/// One host's try in a race: its id, the volume it asked for, the answer.
type Attempt = (u64, String, Result<Value, (i32, String)>);

fn server_error(err: ClientError) -> (i32, String) {
    match err {
        ClientError::Server { code, message } => (code, message),
        other => panic!("not a server error: {other}"),
    }
}

fn spm_host(cluster: &Cluster) -> &Host {
    let spm: Vec<&Host> = cluster
        .hosts
        .iter()
        .filter(|h| cluster.spm_status(h)["spmStatus"] == "SPM")
        .collect();
    assert_eq!(spm.len(), 1, "not exactly one SPM");
    spm[0]
}

#[test]
fn three_hosts_elect_one_spm_and_only_it_changes_the_shared_metadata() {
    let mut cluster = Cluster::start();
    let joined = cluster.wait_joined();
    eprintln!(
        "hosts: three joined the lockspace in {joined:?} (io_timeout {} s)",
        io_timeout()
    );

    // Before anyone is the SPM, nobody changes metadata.
    let image = Uuid::new_v4().to_string();
    let (code, message) = cluster.hosts[0].daemon.err(
        "Volume.create",
        cluster.create_params(&image, &Uuid::new_v4().to_string(), BLANK),
    );
    assert_eq!(code, 654, "{message}");

    // All three contend at once: one wins, the others are told who holds it.
    let outcomes: Vec<Value> = std::thread::scope(|s| {
        let running: Vec<_> = cluster
            .hosts
            .iter()
            .map(|h| s.spawn(|| cluster.spm_start(h)))
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let winners = outcomes
        .iter()
        .filter(|o| o["taskResult"] == "success")
        .count();
    assert_eq!(winners, 1, "{outcomes:?}");
    for lost in outcomes.iter().filter(|o| o["taskResult"] != "success") {
        assert_eq!(lost["code"], 651, "{lost}");
    }
    let spm = spm_host(&cluster);
    let spm_id = spm.id;
    let first = cluster.spm_status(spm);
    for host in &cluster.hosts {
        let status = cluster.spm_status(host);
        assert_eq!(status["spmId"], json!(spm_id), "host {}: {status}", host.id);
        assert_eq!(
            status["spmLver"], first["spmLver"],
            "host {}: {status}",
            host.id
        );
    }

    // Rounds of Volume.create raced from the three hosts on one image: only the SPM's
    // happen, and after each round the metadata every host reads is valid.
    let mut leaf = BLANK.to_owned();
    for round in 0..4 {
        let attempts: Vec<Attempt> = std::thread::scope(|s| {
            let running: Vec<_> = cluster
                .hosts
                .iter()
                .map(|h| {
                    let volume = Uuid::new_v4().to_string();
                    let params = cluster.create_params(&image, &volume, &leaf);
                    s.spawn(move || {
                        let answer = h
                            .daemon
                            .call(Via::Unix, "Volume.create", params)
                            .map_err(server_error);
                        (h.id, volume, answer)
                    })
                })
                .collect();
            running.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for (id, volume, answer) in attempts {
            if id == spm_id {
                let task = answer.unwrap_or_else(|e| panic!("round {round}: SPM refused: {e:?}"));
                let status = spm.daemon.wait_task(task.as_str().unwrap());
                assert_eq!(status["taskResult"], "success", "{status}");
                leaf = volume;
            } else {
                let (code, message) = answer.expect_err("a host that is not the SPM created");
                assert_eq!(code, 654, "host {id}: {message}");
            }
        }
        for reader in &cluster.hosts {
            let problems = cluster.image_problems(reader, &image);
            assert!(
                problems.is_empty(),
                "round {round}, read by host {}: {problems:?}",
                reader.id
            );
        }
    }

    // The role moves on spmStop: the next SPM's lease version is higher, the old SPM can no
    // longer change anything.
    let (code, _) = spm.daemon.err(
        "StoragePool.disconnect",
        json!({"storagepoolID": cluster.pool, "hostID": spm_id, "scsiKey": cluster.pool}),
    );
    assert_eq!(code, 656, "the SPM disconnected");
    assert_eq!(
        spm.daemon.ok(
            "StoragePool.spmStop",
            json!({"storagepoolID": cluster.pool})
        ),
        json!(true)
    );
    let next = cluster.hosts.iter().find(|h| h.id != spm_id).unwrap();
    let started = cluster.spm_start(next);
    assert_eq!(started["taskResult"], "success", "{started}");
    let second = cluster.spm_status(next);
    assert_eq!(second["spmId"], json!(next.id));
    assert!(
        second["spmLver"].as_i64() > first["spmLver"].as_i64(),
        "{first} then {second}"
    );
    let old = cluster.hosts.iter().find(|h| h.id == spm_id).unwrap();
    let (code, _) = old.daemon.err(
        "Volume.create",
        cluster.create_params(&image, &Uuid::new_v4().to_string(), &leaf),
    );
    assert_eq!(code, 654);

    // The SPM's rvdsmd dies: sanlock frees its lease with the process, and another host takes
    // the role at once; the dead one comes back as a plain host, holding its lockspace lease.
    let next_id = next.id;
    let dead = cluster.hosts.iter().position(|h| h.id == next_id).unwrap();
    cluster.hosts[dead].daemon.kill9();
    let heir = cluster.hosts.iter().find(|h| h.id != next_id).unwrap();
    let taken = Instant::now();
    let started = cluster.spm_start(heir);
    assert_eq!(started["taskResult"], "success", "{started}");
    eprintln!(
        "hosts: SPM role taken over {:?} after its holder's rvdsmd was killed",
        taken.elapsed()
    );
    let heir_id = heir.id;
    cluster.hosts[dead].restart_rvdsmd();
    let back = &cluster.hosts[dead];
    cluster.connect(back);
    assert!(wait_until(Duration::from_secs(30), || cluster.acquired(back)));
    let status = cluster.spm_status(back);
    assert_eq!(status["spmStatus"], "Free", "{status}");
    assert_eq!(status["spmId"], json!(heir_id), "{status}");
    for reader in &cluster.hosts {
        assert!(cluster.image_problems(reader, &image).is_empty());
    }

    // A host that is not the SPM leaves the lockspace on disconnect.
    let (code, message) = back.daemon.err(
        "StoragePool.disconnect",
        json!({"storagepoolID": cluster.pool, "hostID": back.id + 10, "scsiKey": ""}),
    );
    assert_eq!(code, 700, "{message}");
    assert_eq!(
        back.daemon.ok(
            "StoragePool.disconnect",
            json!({"storagepoolID": cluster.pool, "hostID": back.id, "scsiKey": ""}),
        ),
        json!(true)
    );
    assert!(!cluster.acquired(back));
    // Disconnected, it knows no pool (VDSM's 309).
    let pool = json!({"storagepoolID": cluster.pool});
    assert_eq!(
        back.daemon.err("StoragePool.getSpmStatus", pool.clone()).0,
        309
    );
    assert_eq!(back.daemon.err("StoragePool.spmStart", pool).0, 309);
}

#[test]
fn an_spm_whose_sanlock_stops_renewing_stops_changing_metadata_and_its_lease_is_taken_over() {
    let mut cluster = Cluster::start();
    cluster.wait_joined();
    let (image, base) = cluster.spm_with_base();
    let first = &cluster.hosts[0];

    // Its sanlock dies: no more renewals. rvdsmd sees it within its poll and refuses. (The
    // probe names a parent that does not exist: the SPM answers 201 and changes nothing.)
    let probe = cluster.create_params(
        &image,
        &Uuid::new_v4().to_string(),
        &Uuid::new_v4().to_string(),
    );
    let (code, _) = first.daemon.err("Volume.create", probe.clone());
    assert_eq!(code, 201);
    cluster.hosts[0].sanlock.kill9();
    let killed = Instant::now();
    let first = &cluster.hosts[0];
    let refused = wait_until(Duration::from_secs(10), || {
        matches!(
            first.daemon.call(Via::Unix, "Volume.create", probe.clone()),
            Err(ClientError::Server { code: 661, .. })
        )
    });
    assert!(refused, "log:\n{}", first.daemon.log());
    eprintln!(
        "hosts: the SPM refused metadata changes {:?} after its sanlock died",
        killed.elapsed()
    );
    let stats = first.daemon.ok("Host.getStorageRepoStats", json!({}));
    assert_eq!(stats[&cluster.domain]["valid"], json!(false), "{stats}");
    let problems = cluster.image_problems(&cluster.hosts[1], &image);
    assert!(problems.is_empty(), "{problems:?}");

    // The other hosts see the SPM lease held until the dead host's lease expires; then one
    // of them takes it over.
    let heir = &cluster.hosts[1];
    let attempts = cluster.take_over(heir);
    assert!(
        attempts > 1,
        "the lease of a host just killed was free at once"
    );
    eprintln!(
        "hosts: SPM lease taken over {:?} after the holder's sanlock died ({attempts} attempts)",
        killed.elapsed()
    );
    let status = cluster.spm_status(&cluster.hosts[2]);
    assert_eq!(status["spmId"], json!(heir.id), "{status}");
    let volume = Uuid::new_v4().to_string();
    cluster.create(heir, &image, &volume, &base);
    assert!(cluster.image_problems(heir, &image).is_empty());
}

#[test]
fn a_host_killed_mid_create_is_taken_over_and_comes_back_without_undoing_the_others_work() {
    let mut cluster = Cluster::start();
    cluster.wait_joined();
    let (image, base) = cluster.spm_with_base();

    // Its rvdsmd restarts to stop in the next create, the data file written, not its metadata;
    // there the whole host dies.
    let marker = cluster.hosts[0]
        .daemon
        .restart_paused_at("create:data-written");
    let spm = &cluster.hosts[0];
    cluster.connect(spm);
    assert!(wait_until(Duration::from_secs(30), || cluster.acquired(spm)));
    assert_eq!(cluster.spm_start(spm)["taskResult"], "success");
    let top = Uuid::new_v4().to_string();
    let interrupted = spm
        .daemon
        .ok("Volume.create", cluster.create_params(&image, &top, &base));
    let interrupted = interrupted.as_str().unwrap().to_owned();
    assert!(
        wait_until(Duration::from_secs(30), || marker.exists()),
        "the create never reached its failpoint"
    );
    let image_dir = cluster
        .shared
        .path()
        .join("data")
        .join(&cluster.domain)
        .join("images")
        .join(&image);
    assert!(
        image_dir.join(&top).exists(),
        "the data file is not there yet"
    );
    cluster.hosts[0].kill();
    let killed = Instant::now();

    // Another host takes the SPM role once the dead host's lease expired, and rolls the dead
    // SPM's create back: the image is as before it.
    let heir = &cluster.hosts[1];
    cluster.take_over(heir);
    eprintln!(
        "hosts: a dead SPM's role and task taken over {:?} after its death",
        killed.elapsed()
    );
    let statuses = heir.daemon.ok("Host.getAllTasksStatuses", json!({}));
    let ended = &statuses[&interrupted];
    assert_eq!(ended["taskState"], "finished", "{statuses}");
    assert_ne!(ended["taskResult"], "success", "{statuses}");
    assert!(
        !image_dir.join(&top).exists(),
        "the dead SPM's half volume is left"
    );
    let problems = cluster.image_problems(heir, &image);
    assert!(problems.is_empty(), "{problems:?}");
    let info = heir.daemon.ok(
        "Volume.getInfo",
        json!({"volumeID": base, "storagepoolID": cluster.pool,
               "storagedomainID": cluster.domain, "imageID": image}),
    );
    assert_eq!(info["voltype"], "LEAF", "{info}");

    // The new SPM works on the image.
    let later = Uuid::new_v4().to_string();
    cluster.create(heir, &image, &later, &base);

    // The dead host comes back, rejoins and becomes the SPM again: its own record of the
    // interrupted create is closed as the other SPM ended it, and nothing the other SPM did
    // is undone.
    cluster.hosts[0].boot();
    let (back, heir) = (&cluster.hosts[0], &cluster.hosts[1]);
    cluster.connect(back);
    assert!(
        wait_until(Duration::from_secs(120), || cluster.acquired(back)),
        "never joined again; log:\n{}",
        back.daemon.log()
    );
    assert_eq!(
        heir.daemon.ok(
            "StoragePool.spmStop",
            json!({"storagepoolID": cluster.pool})
        ),
        json!(true)
    );
    assert_eq!(cluster.spm_start(back)["taskResult"], "success");
    let status = back
        .daemon
        .ok("Task.getStatus", json!({"taskID": interrupted}));
    assert_eq!(status["taskState"], "finished", "{status}");
    assert_ne!(status["taskResult"], "success", "{status}");
    for reader in &cluster.hosts {
        let problems = cluster.image_problems(reader, &image);
        assert!(problems.is_empty(), "host {}: {problems:?}", reader.id);
    }
    let info = back.daemon.ok(
        "Volume.getInfo",
        json!({"volumeID": later, "storagepoolID": cluster.pool,
               "storagedomainID": cluster.domain, "imageID": image}),
    );
    assert_eq!(info["legality"], "LEGAL", "{info}");
    assert_eq!(info["parent"], json!(base), "{info}");
}

#[test]
fn an_sdm_job_on_any_host_writes_its_volume_under_the_volume_s_lease() {
    let mut cluster = Cluster::start();
    cluster.wait_joined();
    let spm = &cluster.hosts[0];
    assert_eq!(cluster.spm_start(spm)["taskResult"], "success");
    let (src_image, src, dst_image, dst) = (
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
    );
    for (image, volume) in [(&src_image, &src), (&dst_image, &dst)] {
        let mut params = cluster.create_params(image, volume, BLANK);
        params["size"] = json!((16u64 << 20).to_string());
        let task = spm.daemon.ok("Volume.create", params);
        assert_eq!(
            spm.daemon.wait_task(task.as_str().unwrap())["taskResult"],
            "success"
        );
    }
    let endpoint = |image: &str, volume: &str| json!({"endpoint_type": "div", "sd_id": cluster.domain, "img_id": image, "vol_id": volume});
    let copy = |host: &Host| {
        let job = Uuid::new_v4().to_string();
        let params = json!({"job_id": job, "source": endpoint(&src_image, &src),
                            "destination": endpoint(&dst_image, &dst)});
        assert_eq!(host.daemon.ok("SDM.copy_data", params), json!(true));
        job
    };
    let wait_job = |host: &Host, job: &str| {
        let mut info = Value::Null;
        let ended = wait_until(Duration::from_secs(60), || {
            info = host.daemon.ok("Host.getJobs", json!({"job_ids": [job]}))[job].clone();
            info["status"] == "done" || info["status"] == "failed"
        });
        assert!(ended, "job {job}: {info}");
        info
    };

    // Host 2, not the SPM, copies into the volume; paused there, it holds the volume's lease.
    let marker = cluster.hosts[1].daemon.restart_paused_at("sdm:copy");
    let writer = &cluster.hosts[1];
    cluster.connect(writer);
    assert!(wait_until(Duration::from_secs(30), || cluster.acquired(writer)));
    let first = copy(writer);
    assert!(wait_until(Duration::from_secs(30), || marker.exists()));

    // Host 3's copy into the same volume is refused while the lease is held.
    let other = &cluster.hosts[2];
    let refused = wait_job(other, &copy(other));
    assert_eq!(refused["status"], "failed", "{refused}");
    assert_eq!(refused["error"]["code"], 651, "{refused}");

    // Released, the first copy ends, and then the other host's copy runs.
    std::fs::remove_file(&marker).unwrap();
    assert_eq!(wait_job(writer, &first)["status"], "done");
    assert_eq!(wait_job(other, &copy(other))["status"], "done");
    let info = other.daemon.ok(
        "Volume.getInfo",
        json!({"volumeID": dst, "storagepoolID": cluster.pool,
               "storagedomainID": cluster.domain, "imageID": dst_image}),
    );
    assert_eq!(info["legality"], "LEGAL", "{info}");
    assert_eq!(info["generation"], json!(2), "{info}");

    // A cold merge across hosts, as an engine runs it: prepare and finalize on the SPM, the
    // merge itself on another host.
    let spm = &cluster.hosts[0];
    let top = Uuid::new_v4().to_string();
    cluster.create(spm, &src_image, &top, &src);
    let subchain = json!({"sd_id": cluster.domain, "img_id": src_image, "top_id": top,
                          "base_id": src, "base_generation": 0});
    let pool_step = |verb: &str| {
        let task = spm.daemon.ok(
            verb,
            json!({"storagepoolID": cluster.pool, "subchainInfo": subchain}),
        );
        spm.daemon.wait_task(task.as_str().unwrap())
    };
    assert_eq!(
        pool_step("StoragePool.prepareMerge")["taskResult"],
        "success"
    );
    let job = Uuid::new_v4().to_string();
    assert_eq!(
        other.daemon.ok(
            "SDM.merge",
            json!({"job_id": job, "subchain_info": subchain}),
        ),
        json!(true)
    );
    assert_eq!(wait_job(other, &job)["status"], "done");
    assert_eq!(
        pool_step("StoragePool.finalizeMerge")["taskResult"],
        "success"
    );
    let volumes = other.daemon.ok(
        "StorageDomain.getVolumes",
        json!({"storagedomainID": cluster.domain, "storagepoolID": cluster.pool,
               "imageID": src_image}),
    );
    assert_eq!(volumes, json!([src]), "the top is not gone");
    assert!(cluster.image_problems(other, &src_image).is_empty());
}
