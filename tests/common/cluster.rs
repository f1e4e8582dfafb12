//! One host that shares its storage domain through sanlock (io_timeout 3 s): its own sanlock
//! daemon, an rvdsmd with host id 1, a domain made the master of the pool (`StoragePool.create`,
//! version 1), connected to the pool, joined and SPM.

use std::time::Duration;

use serde_json::json;

use super::daemon::{Daemon, test_config};
use super::domain::{Fixture, assert_success};
use super::pool::create_pool;
use super::sanlock::Sanlock;
use super::wait_until;

/// One host sharing its domain through sanlock: its sanlock daemon, its rvdsmd (host id 1,
/// io_timeout 3 s) connected to the pool and SPM, and a domain.
pub struct SharedHost {
    /// The daemon and its domain.
    pub f: Fixture,
    /// Its sanlock daemon.
    pub sanlock: Sanlock,
}

impl SharedHost {
    /// Starts it: sanlock, rvdsmd, the domain, the pool created on it (master version 1),
    /// connected, joined, SPM.
    pub fn start() -> SharedHost {
        let sanlock = Sanlock::start();
        let dir = tempfile::Builder::new()
            .prefix("rvdsmd-test")
            .tempdir()
            .unwrap();
        let config = test_config(dir.path(), "[cluster]\nhost_id = 1\nio_timeout_secs = 3\n");
        std::fs::write(dir.path().join("rvdsm.toml"), config).unwrap();
        let mut daemon = Daemon::spawn(dir, &[sanlock.env()]);
        daemon.wait_ready();
        let host = SharedHost {
            f: Fixture::on(daemon),
            sanlock,
        };
        // On a `[cluster]` host a new domain belongs to no pool until the pool is created.
        let f = &host.f;
        create_pool(&f.daemon, &f.pool, &f.domain, &[&f.domain], 1);
        host.connect();
        let f = &host.f;
        let task = f.daemon.ok(
            "StoragePool.spmStart",
            json!({"storagepoolID": f.pool, "prevID": -1, "prevLver": "-1",
                   "enableScsiFencing": "false"}),
        );
        assert_success(&f.daemon.wait_task(task.as_str().unwrap()));
        host
    }

    /// `StoragePool.connect`, then waits until the host holds its lease in the domain's
    /// lockspace.
    pub fn connect(&self) {
        let f = &self.f;
        let connected = f.daemon.ok(
            "StoragePool.connect",
            json!({"storagepoolID": f.pool, "hostID": 1, "scsiKey": f.pool,
                   "masterSdUUID": f.domain, "masterVersion": 1}),
        );
        assert_eq!(connected, json!(true));
        let joined = wait_until(Duration::from_secs(60), || {
            f.daemon.ok("Host.getStorageRepoStats", json!({}))[&f.domain]["acquired"] == json!(true)
        });
        assert!(joined, "never joined; log:\n{}", f.daemon.log());
    }
}
