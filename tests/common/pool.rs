//! A pool set up the engine's way, with VDSM's verbs and parameters: `StorageDomain.create`
//! of each domain, then `StoragePool.create` naming the master, its version and the pool's
//! domains, then `StoragePool.connect` of each host at that master and version.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use uuid::Uuid;

use super::Daemon;

/// VDSM's parameters of `StorageDomain.create` for a LOCALFS domain `domain` in `dir`.
pub fn create_domain_params(domain: &str, dir: &Path, name: &str) -> Value {
    json!({
        "storagedomainID": domain, "domainType": 4,
        "typeArgs": dir.to_str().unwrap(), "name": name,
        "domainClass": 1, "version": "5",
    })
}

/// `StorageDomain.create` of a new LOCALFS domain in `dir` (created if missing) through
/// `daemon`; returns its UUID.
pub fn create_domain(daemon: &Daemon, dir: &Path, name: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let domain = Uuid::new_v4().to_string();
    let created = daemon.ok(
        "StorageDomain.create",
        create_domain_params(&domain, dir, name),
    );
    assert_eq!(created, json!(true));
    domain
}

/// VDSM's parameters of `StoragePool.create` (the lease settings an engine sends too, which
/// rvdsm accepts and ignores).
pub fn create_pool_params(pool: &str, master: &str, domains: &[&str], version: i64) -> Value {
    json!({
        "storagepoolID": pool, "name": "test-pool", "masterSdUUID": master,
        "masterVersion": version, "domainList": domains,
        "lockRenewalIntervalSec": 5, "leaseTimeSec": 60, "ioOpTimeoutSec": 10,
        "leaseRetries": 3,
    })
}

/// `StoragePool.create` of `pool` with `master` at `version` and `domains` (the master among
/// them) through `daemon`, expecting `true`.
pub fn create_pool(daemon: &Daemon, pool: &str, master: &str, domains: &[&str], version: i64) {
    let created = daemon.ok(
        "StoragePool.create",
        create_pool_params(pool, master, domains, version),
    );
    assert_eq!(created, json!(true));
}

/// VDSM's parameters of `StoragePool.connect` for host `host_id` at `master` and `version`.
pub fn connect_params(pool: &str, host_id: u64, master: &str, version: i64) -> Value {
    json!({"storagepoolID": pool, "hostID": host_id, "scsiKey": pool,
           "masterSdUUID": master, "masterVersion": version})
}

/// VDSM's parameters of `StoragePool.spmStart` as an engine sends them on a fresh pool.
pub fn spm_start_params(pool: &str) -> Value {
    json!({"storagepoolID": pool, "prevID": -1, "prevLver": "-1",
           "enableScsiFencing": "false"})
}

/// A domain's `dom_md/metadata` file, for a domain created in `dir`.
pub fn metadata_file(dir: &Path, domain: &str) -> PathBuf {
    dir.join(domain).join("dom_md").join("metadata")
}

/// The `KEY=value` lines of a domain's metadata file, without the checksum.
pub fn metadata(dir: &Path, domain: &str) -> std::collections::BTreeMap<String, String> {
    let path = metadata_file(dir, domain);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| *k != "_SHA_CKSUM")
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
