//! The pool lives on storage (issue 27): the master domain's metadata says it is the master,
//! of which pool, at which version; `StoragePool.connect` joins only a verified master, and
//! whatever managers tell the hosts, at most one host is ever SPM. Real rvdsmd, one real
//! sanlock daemon per host (io_timeout 3 s, see `common::hosts::io_timeout`), real files.
//!
//! - the audit's case: two hosts told different masters never both become SPM;
//! - three hosts told right masters, wrong masters and stale versions, round after round, with
//!   master switches, watched every ~100 ms: never two SPMs at once;
//! - an engine's data-center setup over STOMP with mutual TLS, in VDSM's shapes;
//! - the refusals that must change nothing on storage.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::daemon::Via;
use common::hosts::{Host, io_timeout};
use common::pool::{
    connect_params, create_domain, create_pool, create_pool_params, metadata, metadata_file,
    spm_start_params,
};
use common::sanlock::disk_dir;
use common::stomp;
use common::vdsm_schema::check_reply;
use common::wait_until;
use rvdsm::client::{ClientError, StompClient};
use serde_json::{Value, json};
use uuid::Uuid;

const BLANK: &str = "00000000-0000-0000-0000-000000000000";
/// VDSM's "Wrong Master domain or its version".
const WRONG_MASTER: i32 = 324;
/// VDSM's "Not SPM".
const NOT_SPM: i32 = 654;

/// A server's refusal: its code and message.
type Refusal = (i32, String);

fn refusal(err: ClientError) -> Refusal {
    match err {
        ClientError::Server { code, message } => (code, message),
        other => panic!("not a server error: {other}"),
    }
}

/// Hosts of one pool on one shared directory, and the domains created in it (each in its own
/// directory, as separate exports would be).
struct Pool {
    hosts: Vec<Host>,
    pool: String,
    shared: tempfile::TempDir,
    /// Each domain's directory (its `typeArgs`).
    dirs: BTreeMap<String, PathBuf>,
}

impl Pool {
    /// `hosts` hosts (ids 1..) of a new pool, and `domains` domains created through the first.
    fn start(hosts: u64, domains: usize) -> Pool {
        let shared = disk_dir("pool-storage");
        let pool = Uuid::new_v4().to_string();
        let hosts: Vec<Host> = (1..=hosts)
            .map(|id| Host::start(id, shared.path(), &pool))
            .collect();
        let mut p = Pool {
            hosts,
            pool,
            shared,
            dirs: BTreeMap::new(),
        };
        for _ in 0..domains {
            p.new_domain(0);
        }
        p
    }

    /// `StorageDomain.create` of a new domain through host `index`; returns its UUID.
    fn new_domain(&mut self, index: usize) -> String {
        let dir = self
            .shared
            .path()
            .join(format!("export{}", self.dirs.len() + 1));
        let domain = create_domain(&self.hosts[index].daemon, &dir, "pool-test");
        self.dirs.insert(domain.clone(), dir);
        domain
    }

    fn dir(&self, domain: &str) -> &Path {
        &self.dirs[domain]
    }

    /// The bytes of every domain's metadata file, to prove a refusal changed nothing.
    fn metadata_bytes(&self) -> BTreeMap<String, Vec<u8>> {
        self.dirs
            .iter()
            .map(|(sd, dir)| (sd.clone(), std::fs::read(metadata_file(dir, sd)).unwrap()))
            .collect()
    }

    /// `StoragePool.connect` of `host` at `master` and `version`.
    fn connect(&self, host: &Host, master: &str, version: i64) -> Result<Value, Refusal> {
        host.daemon
            .call(
                Via::Unix,
                "StoragePool.connect",
                connect_params(&self.pool, host.id, master, version),
            )
            .map_err(refusal)
    }

    /// Waits until `host` holds its lease in `domain`'s lockspace.
    fn wait_joined(&self, host: &Host, domain: &str) {
        let joined = wait_until(Duration::from_secs(60), || {
            host.daemon.ok("Host.getStorageRepoStats", json!({}))[domain]["acquired"] == json!(true)
        });
        assert!(
            joined,
            "host {} never joined {domain}; log:\n{}",
            host.id,
            host.daemon.log()
        );
    }

    /// Domains whose lockspace `host` holds a lease in.
    fn joined(&self, host: &Host) -> Vec<String> {
        joined_in(&host.daemon.ok("Host.getStorageRepoStats", json!({})))
    }

    /// `StoragePool.spmStart` on `host` to its task's end: the task's status, or the verb's
    /// refusal.
    fn spm_start(&self, host: &Host) -> Result<Value, Refusal> {
        let task = host
            .daemon
            .call(
                Via::Unix,
                "StoragePool.spmStart",
                spm_start_params(&self.pool),
            )
            .map_err(refusal)?;
        Ok(host.daemon.wait_task(task.as_str().unwrap()))
    }

    /// `getSpmStatus` of `host`; `None` when it refuses (no pool connected).
    fn spm_status(&self, host: &Host) -> Option<Value> {
        host.daemon
            .call(
                Via::Unix,
                "StoragePool.getSpmStatus",
                json!({"storagepoolID": self.pool}),
            )
            .ok()
    }

    fn is_spm(&self, host: &Host) -> bool {
        self.spm_status(host)
            .is_some_and(|s| s["spmStatus"] == "SPM")
    }

    /// `Volume.create` of a new image on `domain` through `host`, to its task's end: `Ok` when
    /// the task succeeded, else the refusal (the verb's or the task's).
    fn create_volume(&self, host: &Host, domain: &str) -> Result<(), Refusal> {
        let params = json!({
            "volumeID": Uuid::new_v4().to_string(), "storagepoolID": self.pool,
            "storagedomainID": domain, "imageID": Uuid::new_v4().to_string(),
            "size": (1u64 << 30).to_string(), "volFormat": 4, "preallocate": 2,
            "diskType": "DATA", "desc": "pool test", "srcImgUUID": BLANK, "srcVolUUID": BLANK,
        });
        let task = host
            .daemon
            .call(Via::Unix, "Volume.create", params)
            .map_err(refusal)?;
        let status = host.daemon.wait_task(task.as_str().unwrap());
        if status["taskResult"] == "success" {
            Ok(())
        } else {
            Err((
                status["code"]
                    .as_i64()
                    .and_then(|c| i32::try_from(c).ok())
                    .unwrap_or(-1),
                status["message"].as_str().unwrap_or_default().to_owned(),
            ))
        }
    }

    fn spm_stop(&self, host: &Host) {
        assert_eq!(
            host.daemon
                .ok("StoragePool.spmStop", json!({"storagepoolID": self.pool})),
            json!(true)
        );
    }

    fn disconnect(&self, host: &Host) {
        assert_eq!(
            host.daemon.ok(
                "StoragePool.disconnect",
                json!({"storagepoolID": self.pool, "hostID": host.id, "scsiKey": self.pool}),
            ),
            json!(true)
        );
    }

    /// A pool verb on `host` (`StorageDomain.attach` and the like).
    fn call(&self, host: &Host, verb: &str, params: Value) -> Result<Value, Refusal> {
        host.daemon.call(Via::Unix, verb, params).map_err(refusal)
    }

    /// `StoragePool.getInfo` through `host`.
    fn info(&self, host: &Host) -> Value {
        host.daemon
            .ok("StoragePool.getInfo", json!({"storagepoolID": self.pool}))
    }
}

/// The status of a task or the refusal of its verb, as its VDSM code: 0 for success.
fn code_of(outcome: &Result<Value, Refusal>) -> i64 {
    match outcome {
        Ok(status) if status["taskResult"] == "success" => 0,
        Ok(status) => status["code"].as_i64().unwrap_or(-1),
        Err((code, _)) => i64::from(*code),
    }
}

/// `spmStart` on every host at once (one thread each); the outcomes in the hosts' order.
fn spm_start_all(p: &Pool) -> Vec<Result<Value, Refusal>> {
    std::thread::scope(|s| {
        let running: Vec<_> = p.hosts.iter().map(|h| s.spawn(|| p.spm_start(h))).collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    })
}

#[test]
fn two_hosts_told_different_masters_never_both_become_spm() {
    let p = Pool::start(2, 2);
    let (a, b) = (&p.hosts[0], &p.hosts[1]);
    let ids: Vec<String> = p.dirs.keys().cloned().collect();
    let (d1, d2) = (ids[0].as_str(), ids[1].as_str());

    // The engine's pool: D1 the master at version 1, D2 a regular domain of it.
    create_pool(&a.daemon, &p.pool, d1, &[d1, d2], 1);
    let master = metadata(p.dir(d1), d1);
    assert_eq!(master["ROLE"], "Master", "{master:?}");
    assert_eq!(master["POOL_UUID"], p.pool, "{master:?}");
    assert_eq!(master["MASTER_VERSION"], "1", "{master:?}");
    assert_eq!(master["POOL_SPM_ID"], "-1", "{master:?}");
    assert_eq!(master["POOL_SPM_LVER"], "-1", "{master:?}");
    let listed: BTreeSet<&str> = master["POOL_DOMAINS"].split(',').collect();
    let expected: BTreeSet<String> = [d1, d2].iter().map(|d| format!("{d}:Active")).collect();
    assert_eq!(
        listed,
        expected.iter().map(String::as_str).collect(),
        "{master:?}"
    );
    let regular = metadata(p.dir(d2), d2);
    assert_eq!(regular["POOL_UUID"], p.pool, "{regular:?}");
    assert_eq!(regular["ROLE"], "Regular", "{regular:?}");

    // Host A is told the truth; host B, by a stale manager, another version of the master,
    // then the other domain as the master.
    assert_eq!(p.connect(a, d1, 1), Ok(json!(true)));
    let b_other_version = p.connect(b, d1, 2);
    let b_other_master = p.connect(b, d2, 1);
    p.wait_joined(a, d1);
    if b_other_master.is_ok() {
        // Whoever let B in, let it join, so that its spmStart is a real contender.
        p.wait_joined(b, d2);
    }

    let outcomes = spm_start_all(&p);
    let statuses: Vec<Option<Value>> = p.hosts.iter().map(|h| p.spm_status(h)).collect();
    let spms = statuses
        .iter()
        .filter(|s| s.as_ref().is_some_and(|s| s["spmStatus"] == "SPM"))
        .count();
    assert_eq!(
        spms, 1,
        "hosts told different masters: getSpmStatus {statuses:?}; spmStart {outcomes:?}"
    );
    assert_eq!(code_of(&outcomes[0]), 0, "{:?}", outcomes[0]);
    assert_ne!(code_of(&outcomes[1]), 0, "{:?}", outcomes[1]);
    assert_eq!(
        b_other_version.as_ref().map_err(|e| e.0),
        Err(WRONG_MASTER),
        "{b_other_version:?}"
    );
    assert_eq!(
        b_other_master.as_ref().map_err(|e| e.0),
        Err(WRONG_MASTER),
        "{b_other_master:?}"
    );
    // Nothing joined on a refusal.
    assert!(p.joined(b).is_empty(), "{:?}", p.joined(b));

    // A metadata verb succeeds only on the SPM.
    p.create_volume(a, d1).expect("the SPM's Volume.create");
    for domain in [d1, d2] {
        let refused = p.create_volume(b, domain);
        assert!(refused.is_err(), "host B created a volume on {domain}");
    }

    // Told the truth, B contends for the SDM lease A holds: refused, A stays the SPM.
    assert_eq!(p.connect(b, d1, 1), Ok(json!(true)));
    p.wait_joined(b, d1);
    let second = p.spm_start(b);
    assert_eq!(code_of(&second), 651, "{second:?}");
    assert!(p.is_spm(a));
    assert!(!p.is_spm(b));
    assert_eq!(p.create_volume(b, d1).map_err(|e| e.0), Err(NOT_SPM));
    let status = p.spm_status(b).unwrap();
    assert_eq!(status["spmId"], json!(a.id), "{status}");

    // The SPM's role is on storage, in the master.
    let master = metadata(p.dir(d1), d1);
    assert_eq!(master["POOL_SPM_ID"], a.id.to_string(), "{master:?}");
    assert_eq!(
        master["POOL_SPM_LVER"],
        p.spm_status(a).unwrap()["spmLver"].to_string(),
        "{master:?}"
    );

    p.spm_stop(a);
    p.disconnect(a);
    p.disconnect(b);
}

/// What a manager tells a host in a round of [`never_two_spms_while_managers_disagree`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    /// The master and its version.
    Right,
    /// Another domain of the pool as the master, at the master's version.
    WrongMaster,
    /// The master of before the last switch at its version (before any switch: the master
    /// at another version).
    Stale,
}

/// How the SPM moves the master in a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Switch {
    /// `StorageDomain.deactivate` of the master naming the new one.
    Deactivate,
    /// `StoragePool.switchMaster`.
    SwitchMaster,
}

/// The master as the test knows it, and the one before the last switch.
#[derive(Debug, Clone)]
struct Master {
    uuid: String,
    version: i64,
    old: Option<(String, i64)>,
}

/// What the sampler saw.
#[derive(Debug, Default)]
struct Samples {
    /// Rounds of getSpmStatus on every host.
    count: usize,
    /// The most hosts answering SPM in one sample, per round.
    max_per_round: BTreeMap<usize, usize>,
    /// Samples where two hosts answered SPM and still did when asked again in reverse order:
    /// their SPM times overlapped.
    two_at_once: Vec<String>,
    /// Samples where two hosts answered SPM one after the other but not on the second ask (a
    /// handover between the two answers, not proof of two SPMs at once).
    unconfirmed: Vec<String>,
}

/// Asks every host for its SPM status every ~100 ms until `stop`, and records what it sees.
fn sample(p: &Pool, round: &AtomicUsize, stop: &AtomicBool, seen: &Mutex<Samples>) {
    while !stop.load(Ordering::SeqCst) {
        let spms: Vec<&Host> = p.hosts.iter().filter(|h| p.is_spm(h)).collect();
        let r = round.load(Ordering::SeqCst);
        let mut samples = seen.lock().unwrap();
        samples.count += 1;
        let max = samples.max_per_round.entry(r).or_default();
        *max = (*max).max(spms.len());
        if spms.len() > 1 {
            let ids: Vec<u64> = spms.iter().map(|h| h.id).collect();
            let still = spms.iter().rev().all(|h| p.is_spm(h));
            let line = format!("round {r}: hosts {ids:?} answered SPM");
            if still {
                samples.two_at_once.push(line);
            } else {
                samples.unconfirmed.push(line);
            }
        }
        drop(samples);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn never_two_spms_while_managers_disagree() {
    use Told::{Right, Stale, WrongMaster};
    let started = Instant::now();
    let p = Pool::start(3, 2);
    let ids: Vec<String> = p.dirs.keys().cloned().collect();
    create_pool(&p.hosts[0].daemon, &p.pool, &ids[0], &[&ids[0], &ids[1]], 1);
    let mut master = Master {
        uuid: ids[0].clone(),
        version: 1,
        old: None,
    };
    let rounds: [([Told; 3], Option<Switch>); 6] = [
        ([Right, Right, Right], None),
        ([Right, WrongMaster, Stale], None),
        ([Right, Right, Right], Some(Switch::Deactivate)),
        ([Stale, Right, WrongMaster], None),
        // (`StoragePool.switchMaster` has its own test below.)
        ([Right, Right, Right], Some(Switch::Deactivate)),
        ([WrongMaster, Stale, Right], None),
    ];
    let round = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let seen = Mutex::new(Samples::default());
    let mut timings = Vec::new();
    std::thread::scope(|s| {
        let sampler = s.spawn(|| sample(&p, &round, &stop, &seen));
        // The sampler stops even when a round panics, so that the scope can end.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop = StopOnDrop(&stop);
        for (index, (told, switch)) in rounds.iter().enumerate() {
            round.store(index, Ordering::SeqCst);
            let t = play_round(&p, &ids, &mut master, index, told, *switch);
            eprintln!(
                "pool: round {index} {told:?}: SPM elected in {:?}; master moved ({switch:?}) in \
                 {:?}, taken over {:?} after the SPM's stop",
                t.elect, t.switch, t.takeover
            );
            timings.push(t);
        }
        stop.store(true, Ordering::SeqCst);
        sampler.join().unwrap();
    });
    let samples = seen.into_inner().unwrap();
    eprintln!(
        "pool: {} samples of getSpmStatus on 3 hosts; most SPMs per round {:?}; \
         unconfirmed double answers {:?}; {} rounds in {:?} (io_timeout {} s)",
        samples.count,
        samples.max_per_round,
        samples.unconfirmed,
        timings.len(),
        started.elapsed(),
        io_timeout()
    );
    assert!(
        samples.two_at_once.is_empty(),
        "two SPMs at once: {:?}",
        samples.two_at_once
    );
    // In this test the role changes hands seconds apart (a stop, then connects and joins),
    // never between two answers of one sample: two answers of SPM in one sample are two SPMs
    // too, even when the second ask no longer shows both.
    assert!(
        samples.unconfirmed.is_empty(),
        "two hosts answered SPM in one sample: {:?}",
        samples.unconfirmed
    );
    assert!(samples.count > 100, "the sampler hardly ran: {samples:?}");
    assert_eq!(
        samples.max_per_round.len(),
        rounds.len(),
        "the sampler missed rounds: {samples:?}"
    );
}

#[test]
fn switch_master_moves_the_master_and_a_host_at_the_old_one_never_becomes_spm() {
    let p = Pool::start(3, 2);
    let ids: Vec<String> = p.dirs.keys().cloned().collect();
    create_pool(&p.hosts[0].daemon, &p.pool, &ids[0], &[&ids[0], &ids[1]], 1);
    let mut master = Master {
        uuid: ids[0].clone(),
        version: 1,
        old: None,
    };
    for host in &p.hosts {
        assert_eq!(p.connect(host, &ids[0], 1), Ok(json!(true)));
        p.wait_joined(host, &ids[0]);
    }
    assert_eq!(code_of(&p.spm_start(&p.hosts[0])), 0);
    let (switched, takeover) = switch_master(
        &p,
        &mut master,
        &ids[1],
        0,
        &[true; 3],
        Switch::SwitchMaster,
    );
    eprintln!(
        "pool: switchMaster's task ended in {switched:?}; a new SPM {takeover:?} after the old \
         one's stop (io_timeout {} s)",
        io_timeout()
    );
    assert_eq!(master.uuid, ids[1]);
    for host in &p.hosts {
        p.disconnect(host);
    }
}

/// How long a round's steps took.
#[derive(Debug)]
struct RoundTimes {
    /// From the spmStart of all hosts to the winner's task end.
    elect: Duration,
    /// The master's move (switch rounds).
    switch: Option<Duration>,
    /// From the SPM's spmStop to another host's spmStart task end (switch rounds).
    takeover: Option<Duration>,
}

/// One round: each host connects as it is told, all three start the SPM at once, exactly one
/// wins and only it creates volumes; a switch round moves the master and checks that a host
/// still connected at the old one never becomes SPM; then the SPM stops and all disconnect.
fn play_round(
    p: &Pool,
    ids: &[String],
    master: &mut Master,
    index: usize,
    told: &[Told; 3],
    switch: Option<Switch>,
) -> RoundTimes {
    assert!(
        switch.is_none() || told.iter().all(|t| *t == Told::Right),
        "a switch round needs every host connected"
    );
    let other = ids.iter().find(|d| **d != master.uuid).unwrap().clone();
    let connected: Vec<bool> = std::thread::scope(|s| {
        let running: Vec<_> = p
            .hosts
            .iter()
            .zip(told)
            .map(|(host, told)| {
                let (sd, version) = match told {
                    Told::Right => (master.uuid.clone(), master.version),
                    Told::WrongMaster => (other.clone(), master.version),
                    Told::Stale => master
                        .old
                        .clone()
                        .unwrap_or((master.uuid.clone(), master.version + 1)),
                };
                let master = master.uuid.clone();
                s.spawn(move || {
                    let answer = p.connect(host, &sd, version);
                    match told {
                        Told::Right => {
                            assert_eq!(answer, Ok(json!(true)), "round {index}, host {}", host.id);
                            p.wait_joined(host, &master);
                            true
                        }
                        _ => {
                            assert_eq!(
                                answer.as_ref().map_err(|e| e.0),
                                Err(WRONG_MASTER),
                                "round {index}, host {} told {told:?} ({sd}, {version}): {answer:?}",
                                host.id
                            );
                            assert!(p.joined(host).is_empty(), "joined on a refusal");
                            false
                        }
                    }
                })
            })
            .collect();
        running.into_iter().map(|t| t.join().unwrap()).collect()
    });

    let elect = Instant::now();
    let outcomes = spm_start_all(p);
    let elect = elect.elapsed();
    let winners: Vec<usize> = (0..3).filter(|&i| code_of(&outcomes[i]) == 0).collect();
    assert_eq!(winners.len(), 1, "round {index}: {outcomes:?}");
    let spm = winners[0];
    assert!(
        connected[spm],
        "round {index}: a host told a wrong master won"
    );
    for (i, outcome) in outcomes.iter().enumerate().filter(|(i, _)| *i != spm) {
        let expected: &[i64] = if connected[i] { &[651] } else { &[309, 324] };
        assert!(
            expected.contains(&code_of(outcome)),
            "round {index}, host {}: {outcome:?}",
            p.hosts[i].id
        );
    }
    for (i, host) in p.hosts.iter().enumerate() {
        assert_eq!(p.is_spm(host), i == spm, "round {index}, host {}", host.id);
        let created = p.create_volume(host, &master.uuid);
        if i == spm {
            created.unwrap_or_else(|e| panic!("round {index}: the SPM's create: {e:?}"));
        } else {
            assert!(created.is_err(), "round {index}: host {} created", host.id);
        }
    }

    let (switch, takeover) = match switch {
        None => (None, None),
        Some(how) => {
            let (switched, takeover) = switch_master(p, master, &other, spm, &connected, how);
            (Some(switched), Some(takeover))
        }
    };
    if switch.is_none() {
        p.spm_stop(&p.hosts[spm]);
    }
    for (i, host) in p.hosts.iter().enumerate() {
        // After a switch every host is connected: the SPM, the stale one, the heir.
        if connected[i] || switch.is_some() {
            p.disconnect(host);
        }
    }
    RoundTimes {
        elect,
        switch,
        takeover,
    }
}

/// The SPM moves the master to `new`, version bumped, and reactivates the old one as a
/// regular domain; a host still connected at the old master never becomes SPM, not even once
/// the old master's lease is free; a new connect with the old values is refused; with the new
/// ones, a host takes the role over. Returns how long the move and the takeover took; the
/// SPM has stopped.
fn switch_master(
    p: &Pool,
    master: &mut Master,
    new: &str,
    spm: usize,
    connected: &[bool],
    how: Switch,
) -> (Duration, Duration) {
    let host = &p.hosts[spm];
    assert!(connected.iter().all(|c| *c));
    let (old, version) = (master.uuid.clone(), master.version + 1);
    let switching = Instant::now();
    match how {
        Switch::Deactivate => {
            let answer = p.call(
                host,
                "StorageDomain.deactivate",
                json!({"storagedomainID": old, "storagepoolID": p.pool,
                       "masterSdUUID": new, "masterVersion": version}),
            );
            assert_eq!(answer, Ok(json!(true)));
        }
        Switch::SwitchMaster => {
            let task = p
                .call(
                    host,
                    "StoragePool.switchMaster",
                    json!({"storagepoolID": p.pool, "oldMasterUUID": old,
                           "newMasterUUID": new, "masterVersion": version}),
                )
                .unwrap();
            let status = host.daemon.wait_task(task.as_str().unwrap());
            assert_eq!(status["taskResult"], "success", "{status}");
        }
    }
    let switched = switching.elapsed();
    let info = p.info(host);
    assert_eq!(info["info"]["master_uuid"], new, "{info}");
    assert_eq!(info["info"]["master_ver"], json!(version), "{info}");
    let moved = metadata(p.dir(new), new);
    assert_eq!(moved["ROLE"], "Master", "{moved:?}");
    assert_eq!(moved["MASTER_VERSION"], version.to_string(), "{moved:?}");
    assert_ne!(metadata(p.dir(&old), &old)["ROLE"], "Master");
    if how == Switch::Deactivate {
        assert_eq!(info["dominfo"][&old]["status"], "Attached", "{info}");
        let activated = p.call(
            host,
            "StorageDomain.activate",
            json!({"storagedomainID": old, "storagepoolID": p.pool}),
        );
        assert_eq!(activated, Ok(json!(true)));
    }
    master.old = Some((old.clone(), master.version));
    master.uuid = new.to_owned();
    master.version = version;
    p.create_volume(host, new)
        .expect("the SPM's create on the new master");

    // A host still connected at the old master: refused while the SPM holds the role, and
    // once the SPM has stopped.
    let stale = (0..3).find(|&i| i != spm).unwrap();
    let stale_host = &p.hosts[stale];
    let refused = p.spm_start(stale_host);
    assert_eq!(code_of(&refused), i64::from(WRONG_MASTER), "{refused:?}");
    p.spm_stop(host);
    let stopped = Instant::now();
    let refused = p.spm_start(stale_host);
    assert_eq!(code_of(&refused), i64::from(WRONG_MASTER), "{refused:?}");
    assert!(!p.is_spm(stale_host));

    // A new connect with the old values is refused; with the new ones the host takes over.
    let heir = &p.hosts[(0..3).find(|&i| i != spm && i != stale).unwrap()];
    p.disconnect(heir);
    assert_eq!(
        p.connect(heir, &old, version - 1).map_err(|e| e.0),
        Err(WRONG_MASTER)
    );
    assert_eq!(p.connect(heir, new, version), Ok(json!(true)));
    p.wait_joined(heir, new);
    let starting = Instant::now();
    let taken = p.spm_start(heir);
    assert_eq!(code_of(&taken), 0, "{taken:?}");
    eprintln!(
        "pool: after the switch, the heir's spmStart took {:?}; {:?} from the old SPM's stop \
         (with the heir's disconnect, connect and join)",
        starting.elapsed(),
        stopped.elapsed()
    );
    let takeover = stopped.elapsed();
    p.create_volume(heir, new)
        .expect("the new SPM's create on the new master");
    p.spm_stop(heir);
    (switched, takeover)
}

/// A call over STOMP whose reply must satisfy VDSM's schema facts.
async fn stomp_call<S>(
    client: &StompClient<S>,
    method: &str,
    params: Value,
) -> Result<Value, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let reply = client.call(method, params, Some("pool-setup")).await;
    if let Ok(value) = &reply
        && let Err(problem) = check_reply(method, value)
    {
        panic!("{method}'s reply breaks VDSM's schema: {problem}");
    }
    reply
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// Checks `StoragePool.getInfo`'s answer key by key and type by type (VDSM's shape), for a
/// pool `name` whose master is `master` at version 1, SPM host 1, and whose domains are
/// `domains` in their states.
fn check_pool_info(info: &Value, name: &str, master: &str, domains: &[(&str, &str)]) {
    assert_eq!(keys(info), BTreeSet::from(["info", "dominfo"]), "{info}");
    let pool = &info["info"];
    assert_eq!(
        keys(pool),
        BTreeSet::from([
            "master_uuid",
            "master_ver",
            "name",
            "domains",
            "spm_id",
            "lver",
            "version",
            "type",
            "isoprefix",
            "pool_status",
        ]),
        "{info}"
    );
    assert_eq!(pool["master_uuid"], master, "{info}");
    assert_eq!(pool["master_ver"], json!(1), "{info}");
    assert_eq!(pool["name"], name, "{info}");
    assert_eq!(pool["spm_id"], json!(1), "{info}");
    assert!(pool["lver"].is_i64(), "{info}");
    assert_eq!(pool["version"], "5", "{info}");
    assert_eq!(pool["type"], "LOCALFS", "{info}");
    assert_eq!(pool["isoprefix"], "", "{info}");
    assert_eq!(pool["pool_status"], "connected", "{info}");
    let listed: BTreeSet<&str> = pool["domains"].as_str().unwrap().split(',').collect();
    let expected: Vec<String> = domains.iter().map(|(d, s)| format!("{d}:{s}")).collect();
    assert_eq!(
        listed,
        expected.iter().map(String::as_str).collect(),
        "{info}"
    );
    let dominfo = &info["dominfo"];
    assert_eq!(
        keys(dominfo),
        domains.iter().map(|(d, _)| *d).collect(),
        "{info}"
    );
    for (domain, state) in domains {
        let dom = &dominfo[*domain];
        assert_eq!(
            keys(dom),
            BTreeSet::from([
                "status",
                "alerts",
                "isoprefix",
                "version",
                "diskfree",
                "disktotal"
            ]),
            "{info}"
        );
        assert_eq!(dom["status"], *state, "{info}");
        assert_eq!(dom["alerts"], json!([]), "{info}");
        assert_eq!(dom["isoprefix"], "", "{info}");
        assert_eq!(dom["version"], json!(5), "{info}");
        let free: u64 = dom["diskfree"].as_str().unwrap().parse().unwrap();
        let total: u64 = dom["disktotal"].as_str().unwrap().parse().unwrap();
        assert!(free > 0 && total >= free, "{info}");
    }
}

#[test]
fn an_engine_sets_up_a_data_center_over_stomp_with_mutual_tls() {
    let pki = tempfile::tempdir().unwrap();
    let lab = rvdsm::pki::init(pki.path(), &[]).unwrap();
    let shared = disk_dir("pool-storage");
    let pool = Uuid::new_v4().to_string();
    let host = Host::start_tls(1, shared.path(), &pool, &lab.server);
    let rt = stomp::runtime();
    let engine = rt.block_on(stomp::manager_over_tls(
        host.daemon.port,
        &lab.client,
        false,
    ));
    let call = |method: &str, params: Value| rt.block_on(stomp_call(&engine, method, params));
    let ok = |method: &str, params: Value| {
        call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}; log:\n{}", host.daemon.log()))
    };
    let err = |method: &str, params: Value| match call(method, params) {
        Err(ClientError::Server { code, message }) => (code, message),
        other => panic!("{method}: expected a refusal, got {other:?}"),
    };
    let pool_id = json!({"storagepoolID": pool});

    // Two new domains: on a host of a cluster, neither belongs to a pool yet.
    let (d1, d2) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let (dir1, dir2) = (shared.path().join("export1"), shared.path().join("export2"));
    for (domain, dir) in [(&d1, &dir1), (&d2, &dir2)] {
        std::fs::create_dir_all(dir).unwrap();
        let params = common::pool::create_domain_params(domain, dir, "engine-domain");
        assert_eq!(ok("StorageDomain.create", params), json!(true));
        let info = ok("StorageDomain.getInfo", json!({"storagedomainID": domain}));
        assert_eq!(info["pool"], json!([]), "{info}");
        assert_eq!(info["role"], "Regular", "{info}");
    }
    assert_eq!(metadata(&dir2, &d2)["POOL_UUID"], "");
    assert_eq!(err("StoragePool.getInfo", pool_id.clone()).0, 309);

    // The pool on D1, twice (an engine retries): the same answer.
    let mut create = create_pool_params(&pool, &d1, &[&d1], 1);
    create["name"] = json!("engine-dc");
    assert_eq!(ok("StoragePool.create", create.clone()), json!(true));
    assert_eq!(ok("StoragePool.create", create), json!(true));
    let info = ok("StorageDomain.getInfo", json!({"storagedomainID": d1}));
    assert_eq!(info["pool"], json!([pool]), "{info}");
    assert_eq!(info["role"], "Master", "{info}");

    // Connected and SPM, the task polled as the engine polls it.
    assert_eq!(
        ok("StoragePool.connect", connect_params(&pool, 1, &d1, 1)),
        json!(true)
    );
    let joined = wait_until(Duration::from_secs(60), || {
        ok("Host.getStorageRepoStats", json!({}))[&d1]["acquired"] == json!(true)
    });
    assert!(joined, "never joined; log:\n{}", host.daemon.log());
    let task = ok("StoragePool.spmStart", spm_start_params(&pool));
    let task = task.as_str().unwrap().to_owned();
    let finished = wait_until(Duration::from_secs(120), || {
        ok("Host.getAllTasksStatuses", json!({}))[&task]["taskState"] == "finished"
    });
    assert!(finished, "spmStart never finished");
    let status = ok("Task.getStatus", json!({"taskID": task}));
    assert_eq!(status["taskResult"], "success", "{status}");
    assert_eq!(ok("Task.clear", json!({"taskID": task})), json!(true));
    let spm = ok("StoragePool.getSpmStatus", pool_id.clone());
    assert_eq!(spm["spmStatus"], "SPM", "{spm}");
    assert_eq!(spm["spmId"], json!(1), "{spm}");

    // D2 attached, then activated.
    let d2_in_pool = json!({"storagedomainID": d2, "storagepoolID": pool});
    assert_eq!(ok("StorageDomain.attach", d2_in_pool.clone()), json!(true));
    let info = ok("StoragePool.getInfo", pool_id.clone());
    check_pool_info(
        &info,
        "engine-dc",
        &d1,
        &[(&d1, "Active"), (&d2, "Attached")],
    );
    assert_eq!(ok("StorageDomain.attach", d2_in_pool.clone()), json!(true));
    assert_eq!(
        ok("StorageDomain.activate", d2_in_pool.clone()),
        json!(true)
    );
    let info = ok("StoragePool.getInfo", pool_id.clone());
    check_pool_info(&info, "engine-dc", &d1, &[(&d1, "Active"), (&d2, "Active")]);
    assert_eq!(
        ok("StorageDomain.getInfo", json!({"storagedomainID": d2}))["pool"],
        json!([pool])
    );

    // And taken away: deactivated, detached, formatted.
    let with_master = json!({"storagedomainID": d2, "storagepoolID": pool,
                             "masterSdUUID": d1, "masterVersion": 1});
    assert_eq!(
        ok("StorageDomain.deactivate", with_master.clone()),
        json!(true)
    );
    let info = ok("StoragePool.getInfo", pool_id.clone());
    check_pool_info(
        &info,
        "engine-dc",
        &d1,
        &[(&d1, "Active"), (&d2, "Attached")],
    );
    assert_eq!(ok("StorageDomain.detach", with_master), json!(true));
    let info = ok("StoragePool.getInfo", pool_id.clone());
    check_pool_info(&info, "engine-dc", &d1, &[(&d1, "Active")]);
    assert_eq!(
        ok("StorageDomain.getInfo", json!({"storagedomainID": d2}))["pool"],
        json!([])
    );
    assert_eq!(metadata(&dir2, &d2)["POOL_UUID"], "");
    assert_eq!(
        ok(
            "StorageDomain.format",
            json!({"storagedomainID": d2, "autoDetach": false})
        ),
        json!(true)
    );
    let left = ok("Host.getStorageDomains", Value::Null);
    assert_eq!(left, json!([d1]), "{left}");
    assert!(!dir2.join(&d2).exists(), "D2's directory is left");
    assert_eq!(
        err("StorageDomain.getInfo", json!({"storagedomainID": d2})).0,
        358
    );

    // The engine leaves: SPM stopped, disconnected; the pool unknown here again.
    assert_eq!(ok("StoragePool.spmStop", pool_id.clone()), json!(true));
    assert_eq!(
        ok(
            "StoragePool.disconnect",
            json!({"storagepoolID": pool, "hostID": 1, "scsiKey": pool})
        ),
        json!(true)
    );
    assert_eq!(err("StoragePool.getInfo", pool_id).0, 309);
    assert!(
        joined_in(&ok("Host.getStorageRepoStats", json!({}))).is_empty(),
        "a lockspace is left after the disconnect"
    );
}

/// The domains a `Host.getStorageRepoStats` answer says this host holds a lease in.
fn joined_in(stats: &Value) -> Vec<String> {
    stats
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["acquired"] == json!(true))
        .map(|(sd, _)| sd.clone())
        .collect()
}

#[test]
fn refusals_of_the_pool_s_verbs_change_nothing_on_storage() {
    // Host 1 of our pool, and host 2 of another pool on the same storage.
    let mut p = Pool::start(1, 3);
    let other_pool = Uuid::new_v4().to_string();
    p.hosts.push(Host::start(2, p.shared.path(), &other_pool));
    let ids: Vec<String> = p.dirs.keys().cloned().collect();
    let (d1, d2, d3) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let foreign = p.new_domain(1);
    create_pool(&p.hosts[1].daemon, &other_pool, &foreign, &[&foreign], 1);
    // Our host learns of the other pool's domain as it would after a reboot.
    p.hosts[0].restart_rvdsmd();
    let ours = &p.hosts[0];
    let dir_of = |sd: &str| p.dir(sd).join(sd);

    // Each refusal: its code, and every domain's metadata byte for byte as before.
    let refused = |host: &Host, verb: &str, params: Value, codes: &[i32]| {
        let before = p.metadata_bytes();
        let answer = p.call(host, verb, params.clone());
        match &answer {
            Err((code, _)) if codes.is_empty() || codes.contains(code) => {}
            _ => panic!("{verb} {params}: expected a refusal {codes:?}, got {answer:?}"),
        }
        assert!(
            p.metadata_bytes() == before,
            "{verb} {params} was refused but changed a domain's metadata"
        );
    };

    // Formatting a domain attached to a pool needs autoDetach. (Asked of the host of its own
    // pool, never connected, VDSM answers 391 too; rvdsm answers 392 there: it counts the
    // host's configured pool as connected.)
    refused(
        ours,
        "StorageDomain.format",
        json!({"storagedomainID": foreign, "autoDetach": false}),
        &[391],
    );
    assert!(dir_of(&foreign).exists());

    // A pool cannot take a domain of another pool.
    refused(
        ours,
        "StoragePool.create",
        create_pool_params(&p.pool, &d1, &[&d1, &d2, &foreign], 1),
        &[380],
    );
    refused(
        ours,
        "StoragePool.create",
        create_pool_params(&p.pool, &d3, &[&d1, &d2], 1),
        &[1000],
    );
    create_pool(&ours.daemon, &p.pool, &d1, &[&d1, &d2], 1);

    // Connecting to a domain that is not the master joins nothing.
    let joined = p.joined(ours);
    refused(
        ours,
        "StoragePool.connect",
        connect_params(&p.pool, ours.id, &d2, 1),
        &[WRONG_MASTER],
    );
    refused(
        ours,
        "StoragePool.connect",
        connect_params(&p.pool, ours.id, &d3, 1),
        &[WRONG_MASTER],
    );
    assert_eq!(
        p.joined(ours),
        joined,
        "a refused connect joined a lockspace"
    );
    assert_eq!(p.connect(ours, &d1, 1), Ok(json!(true)));
    p.wait_joined(ours, &d1);

    // Only the SPM attaches.
    let d3_in_pool = json!({"storagedomainID": d3, "storagepoolID": p.pool});
    refused(ours, "StorageDomain.attach", d3_in_pool.clone(), &[NOT_SPM]);
    assert_eq!(code_of(&p.spm_start(ours)), 0);

    // The SPM's refusals.
    refused(
        ours,
        "StorageDomain.attach",
        json!({"storagedomainID": foreign, "storagepoolID": p.pool}),
        &[380],
    );
    refused(ours, "StorageDomain.activate", d3_in_pool, &[353]);
    let detach = |sd: &str| {
        json!({"storagedomainID": sd, "storagepoolID": p.pool,
               "masterSdUUID": d1, "masterVersion": 1})
    };
    // An Active domain is deactivated before it is detached.
    refused(ours, "StorageDomain.detach", detach(&d2), &[]);
    refused(ours, "StorageDomain.detach", detach(&d1), &[383]);
    refused(
        ours,
        "StorageDomain.format",
        json!({"storagedomainID": d2, "autoDetach": true}),
        &[392],
    );
    assert!(dir_of(&d2).exists());
    let info = p.info(ours);
    assert_eq!(info["dominfo"][&d2]["status"], "Active", "{info}");
    assert_eq!(info["info"]["master_uuid"], d1, "{info}");

    p.spm_stop(ours);
    p.disconnect(ours);
}

#[test]
fn creating_a_pool_leaves_no_lockspace_behind() {
    // VDSM's `StoragePool.create` holds the master's lockspace and SDM lease only for the
    // write (`_acquireTemporaryClusterLock`, then `_releaseTemporaryClusterLock`): a host joins
    // the pool's lockspaces when it connects, and leaves them when it disconnects.
    let p = Pool::start(1, 2);
    let host = &p.hosts[0];
    let ids: Vec<String> = p.dirs.keys().cloned().collect();
    create_pool(&host.daemon, &p.pool, &ids[0], &[&ids[0], &ids[1]], 1);
    assert_eq!(metadata(p.dir(&ids[0]), &ids[0])["ROLE"], "Master");
    assert!(
        p.joined(host).is_empty(),
        "StoragePool.create left this host in the lockspaces of {:?}",
        p.joined(host)
    );
}
