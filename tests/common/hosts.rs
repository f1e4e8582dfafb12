//! Simulated hosts that share storage, on one machine: each [`Host`] is an rvdsmd with
//! `[cluster]` (its own host id) and its own sanlock daemon, all of them on one repository in
//! a directory on disk (the shared mounts, as `/rhev/data-center` on each host).

use std::path::Path;

use rvdsm::rpc::tls::TlsFiles;

use super::daemon::{Daemon, test_config_tls};
use super::sanlock::Sanlock;

/// sanlock's io_timeout in these tests: 3 s, so that a dead host's lease expires in 84 s.
/// `RVDSM_HOSTS_IO_TIMEOUT=10` runs them with VDSM's production value (by hand: a takeover
/// then takes 140 s).
pub fn io_timeout() -> u32 {
    std::env::var("RVDSM_HOSTS_IO_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// One simulated host: its sanlock daemon and its rvdsmd.
pub struct Host {
    /// Its host id (`[cluster] host_id`).
    pub id: u64,
    /// Its rvdsmd.
    pub daemon: Daemon,
    /// Its sanlock daemon.
    pub sanlock: Sanlock,
}

impl Host {
    /// Starts host `id` of the pool `pool` on the repository under `shared`.
    pub fn start(id: u64, shared: &Path, pool: &str) -> Host {
        Host::start_configured(id, shared, pool, None)
    }

    /// [`Host::start`] with mutual TLS on TCP, the daemon's side of `tls`.
    pub fn start_tls(id: u64, shared: &Path, pool: &str, tls: &TlsFiles) -> Host {
        Host::start_configured(id, shared, pool, Some(tls))
    }

    fn start_configured(id: u64, shared: &Path, pool: &str, tls: Option<&TlsFiles>) -> Host {
        let sanlock = Sanlock::start();
        let dir = tempfile::Builder::new()
            .prefix("rvdsmd-test")
            .tempdir()
            .unwrap();
        let config = test_config_tls(
            dir.path(),
            &format!(
                "[cluster]\nhost_id = {id}\nio_timeout_secs = {}\n",
                io_timeout()
            ),
            tls,
        );
        // One repository for all: the shared mounts, as /rhev/data-center on each host.
        let own_repo = format!("repository = \"{}\"", dir.path().join("repo").display());
        assert!(config.contains(&own_repo));
        let config = config.replace(
            &own_repo,
            &format!(
                "repository = \"{}\"\npool_uuid = \"{pool}\"",
                shared.join("repo").display()
            ),
        );
        std::fs::write(dir.path().join("rvdsm.toml"), config).unwrap();
        let mut daemon = Daemon::spawn(dir, &[sanlock.env()]);
        daemon.wait_ready();
        Host {
            id,
            daemon,
            sanlock,
        }
    }

    /// Kills rvdsmd (not its sanlock) and starts it again on the same state.
    pub fn restart_rvdsmd(&mut self) {
        self.daemon.restart_in_place(&[]);
    }

    /// The whole host dies: its rvdsmd and its sanlock killed with SIGKILL.
    pub fn kill(&mut self) {
        self.daemon.kill9();
        self.sanlock.kill9();
    }

    /// The host comes back: a new sanlock daemon, rvdsmd started again on its state.
    pub fn boot(&mut self) {
        self.sanlock = Sanlock::start();
        let (key, value) = self.sanlock.env();
        let value = value.to_owned();
        self.daemon.keep_env(key, &value);
        self.daemon.restart_in_place(&[]);
    }
}
