//! The daemon's configuration: one TOML file (default `/etc/rvdsm/rvdsm.toml`) whose every
//! field has a default that serves a single host out of the box. Unknown fields are refused,
//! naming the field, so that a typo never silently falls back to a default.

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the daemon reads its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rvdsm/rvdsm.toml";
/// VDSM's management port; managers expect it.
pub const DEFAULT_PORT: u16 = 54321;
/// The local socket that the CLI uses by default.
pub const DEFAULT_UNIX_SOCKET: &str = "/run/rvdsm/rvdsm.sock";

/// Errors while loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration file {path}")]
    Read {
        /// The file that was read.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped field.
    #[error("invalid configuration file {path}: {message}")]
    Parse {
        /// The file that was parsed.
        path: PathBuf,
        /// The parser's message, naming the field.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The management listeners.
    pub server: ServerConfig,
    /// The hypervisor connection.
    pub libvirt: LibvirtConfig,
    /// Storage domains.
    pub storage: StorageConfig,
    /// Daemon-wide settings.
    pub daemon: DaemonConfig,
    /// Sharing storage domains with other hosts (sanlock).
    pub cluster: ClusterConfig,
    /// The host files a VM may use, and where rvdsm puts those it names.
    pub vm: VmConfig,
    /// Snapshots with memory.
    pub snapshot: SnapshotConfig,
}

/// Snapshots with memory (`VM.snapshot` with `snapMemory`) and hibernation.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// How the RAM is saved when a request does not say (`memoryMode`): `paused` (VDSM's:
    /// the guest stands still for the whole dump) or `live` (it runs until the last pages).
    pub memory_mode: crate::api::snapshot_types::MemoryMode,
    /// Seconds a live dump may take before rvdsm stops it (the snapshot then fails and the VM
    /// runs on, on its old volumes): a guest that dirties its RAM faster than it is written
    /// would otherwise never let it end.
    pub live_memory_max_secs: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            memory_mode: crate::api::snapshot_types::MemoryMode::Paused,
            live_memory_max_secs: 300,
        }
    }
}

/// The management listeners: JSON-RPC over STOMP, HTTP and WebSocket on one TCP port (mutual
/// TLS) and on a Unix socket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the TCP listener; `::` (all, IPv6 and IPv4) as VDSM's `management_ip`.
    pub address: IpAddr,
    /// Port of the TCP listener (VDSM's 54321); 0 picks a free port (tests).
    pub port: u16,
    /// Whether the TCP listener is started at all.
    pub tcp_enabled: bool,
    /// Path of the Unix socket (mode 0600).
    pub unix_socket: PathBuf,
    /// Largest request body accepted, in bytes; a larger one is refused without being read.
    pub max_request_bytes: u32,
    /// Largest response body sent, in bytes.
    pub max_response_bytes: u32,
    /// Most connections served at once on each listener.
    pub max_connections: u32,
    /// Requests of one STOMP or WebSocket connection running at once, each call of a batch
    /// counted; past it a STOMP connection is not read until one ends, and a WebSocket's next
    /// call waits.
    pub max_pending_requests: u32,
    /// Most calls in one JSON-RPC batch, on every transport; a larger batch is refused whole,
    /// none of its calls run. At most `max_pending_requests`, so that a batch can always run.
    pub max_batch_calls: u32,
    /// How long in-flight requests may run after SIGTERM before the daemon exits anyway.
    pub shutdown_timeout_secs: u64,
    /// Whether plain TCP (`tls.enabled = false`) may listen on an address other than loopback.
    /// Without it, such a configuration is refused at start: plain TCP serves every verb to
    /// anyone who reaches the port.
    pub allow_insecure_network: bool,
    /// TLS on the TCP listener.
    pub tls: TlsConfig,
}

/// Mutual TLS on the management port (VDSM's `[vars] ssl` and `/etc/pki/vdsm`). The files
/// are read again on SIGHUP.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// `false` serves plain TCP (VDSM's `ssl = false`), for isolated labs and tests only: on
    /// loopback, or elsewhere with `server.allow_insecure_network`; the daemon warns at start.
    pub enabled: bool,
    /// The host certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The CA that client certificates must chain to (PEM).
    pub ca: PathBuf,
}

/// Where `rvdsm pki init` and the defaults put the host's certificates.
pub const DEFAULT_PKI_DIR: &str = "/etc/pki/rvdsm";

impl Default for TlsConfig {
    fn default() -> Self {
        let dir = Path::new(DEFAULT_PKI_DIR);
        Self {
            enabled: true,
            cert: dir.join("certs/vdsmcert.pem"),
            key: dir.join("keys/vdsmkey.pem"),
            ca: dir.join("certs/cacert.pem"),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            address: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            port: DEFAULT_PORT,
            tcp_enabled: true,
            unix_socket: PathBuf::from(DEFAULT_UNIX_SOCKET),
            max_request_bytes: 1024 * 1024,
            max_response_bytes: 16 * 1024 * 1024,
            max_connections: 256,
            max_pending_requests: 64,
            max_batch_calls: 64,
            shutdown_timeout_secs: 30,
            allow_insecure_network: false,
            tls: TlsConfig::default(),
        }
    }
}

impl ServerConfig {
    /// A batch counts one pending request per call: one larger than `max_pending_requests`
    /// could never run.
    fn validate_batches(&self) -> Result<(), ConfigError> {
        if self.max_batch_calls == 0 || self.max_batch_calls > self.max_pending_requests {
            return Err(ConfigError::Invalid(format!(
                "server.max_batch_calls must be 1 to server.max_pending_requests ({}), not {}",
                self.max_pending_requests, self.max_batch_calls
            )));
        }
        Ok(())
    }

    /// Plain TCP serves every verb, `VM.create` included, to anyone who reaches the port: it
    /// is refused on a non-loopback address unless the file says it is meant.
    fn validate_exposure(&self) -> Result<(), ConfigError> {
        if self.exposes_plain_tcp() && !self.allow_insecure_network {
            return Err(ConfigError::Invalid(format!(
                "server.tls.enabled = false with server.address = {} would serve every verb \
                 without authentication to the network; enable TLS, listen on loopback \
                 (server.address = \"::1\" or \"127.0.0.1\"), or set \
                 server.allow_insecure_network = true for an isolated network",
                self.address
            )));
        }
        Ok(())
    }

    /// Whether the TCP listener is plain and reachable from other hosts.
    pub fn exposes_plain_tcp(&self) -> bool {
        self.tcp_enabled && !self.tls.enabled && !self.address.to_canonical().is_loopback()
    }
}

/// The libvirt connection.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LibvirtConfig {
    /// libvirt URI of the local hypervisor.
    pub uri: String,
    /// Upper bound of one libvirt call; past it the request fails (the call's thread may stay
    /// blocked in libvirt, but nothing waits on it).
    pub call_timeout_secs: u64,
    /// libvirt's response timeout for guest agent commands (its default blocks forever).
    pub agent_timeout_secs: u64,
    /// Seconds between two samples of every VM's state and statistics, which the monitoring
    /// verbs answer from (VDSM's `vm_sample_interval`).
    pub vm_sample_interval_secs: u64,
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        Self {
            uri: "qemu:///system".into(),
            call_timeout_secs: 30,
            agent_timeout_secs: 10,
            vm_sample_interval_secs: 15,
        }
    }
}

/// Storage domains.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The repository under which storage domains are mounted (VDSM's `/rhev/data-center`).
    pub repository: PathBuf,
    /// The UUID of the host's storage pool. When absent, one is generated on first start and
    /// kept in `<state_dir>/pool_uuid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pool_uuid: Option<uuid::Uuid>,
    /// Upper bound of one qemu-img run; past it qemu-img is killed and the task rolled back.
    pub qemu_img_timeout_secs: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            repository: PathBuf::from("/rhev/data-center"),
            pool_uuid: None,
            qemu_img_timeout_secs: 3600,
        }
    }
}

/// Sharing storage domains with other hosts. Without a host id the host runs alone: no
/// sanlock, and nothing stops another host from changing the same domains.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// This host's id in the lockspaces of shared domains, 1 to 250, unique among the hosts
    /// sharing them (in oVirt the engine assigns it and sends it in `StoragePool.connect`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_id: Option<u64>,
    /// sanlock's I/O timeout for the lockspaces this host formats and joins, seconds. Every
    /// host of a lockspace must use the same. VDSM's is 10; a host that cannot renew its lease
    /// for 8 × this long is killed by sanlock, and its leases free 60 s later.
    pub io_timeout_secs: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            host_id: None,
            io_timeout_secs: 10,
        }
    }
}

/// Daemon-wide settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Where the daemon keeps its state (host identity, journals).
    pub state_dir: PathBuf,
    /// Log filter, `RUST_LOG` syntax (`info`, `rvdsm=debug,jsonrpsee=info`); the `RUST_LOG`
    /// environment variable overrides it.
    pub log_filter: String,
    /// Seconds after which a guest frozen by `VM.freeze` is thawed by rvdsmd itself (per call:
    /// `autoThawSeconds`).
    pub auto_thaw_secs: u64,
    /// Snapshots running at once on the host; more wait as `pending` jobs.
    pub max_parallel_snapshots: u32,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/rvdsm"),
            log_filter: "info".into(),
            auto_thaw_secs: 60,
            max_parallel_snapshots: 8,
        }
    }
}

/// The host files a VM may use: a manager names volumes, never host paths, so the few host
/// files a definition may name lie in directories listed here, and the files rvdsm makes for
/// a VM go where this says.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    /// Directories a VM may boot a kernel and initrd from (`<os><kernel>`, `<initrd>`); none
    /// by default.
    pub boot_dirs: Vec<PathBuf>,
    /// Directories of firmware images (`<loader>`, `<nvram template=...>`).
    pub firmware_dirs: Vec<PathBuf>,
    /// Where a VM's serial console log goes, as `<vmUUID>.log`, when its definition has a
    /// file console.
    pub console_log_dir: PathBuf,
    /// Where a VM's serial console socket goes, as `<vmUUID>.sock` (ovirt-vmconsole's
    /// directory), when its definition has a unix console.
    pub console_socket_dir: PathBuf,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            boot_dirs: Vec::new(),
            firmware_dirs: [
                "/usr/share/OVMF",
                "/usr/share/AAVMF",
                "/usr/share/edk2",
                "/usr/share/seabios",
            ]
            .map(PathBuf::from)
            .to_vec(),
            console_log_dir: PathBuf::from("/var/log/rvdsm/console"),
            console_socket_dir: PathBuf::from("/run/ovirt-vmconsole-console"),
        }
    }
}

impl VmConfig {
    /// Every directory is absolute with no `.` or `..` in it: each is compared, as a prefix,
    /// with the paths a definition names.
    fn validate(&self) -> Result<(), ConfigError> {
        let dirs = self
            .boot_dirs
            .iter()
            .chain(&self.firmware_dirs)
            .chain([&self.console_log_dir, &self.console_socket_dir]);
        for dir in dirs {
            if !crate::fsutil::is_plain_absolute(dir) || dir == Path::new("/") {
                return Err(ConfigError::Invalid(format!(
                    "[vm]: {} must be an absolute directory other than / with no . or ..",
                    dir.display()
                )));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads the file at `path` if given, else the default file if it exists, else defaults.
    pub fn load_or_default(path: Option<&Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => Self::load(path),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Self::load(Path::new(DEFAULT_CONFIG_PATH))
            }
            None => Ok(Self::default()),
        }
    }

    /// Parses TOML text; the error text names the offending field.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.message().to_owned())
    }

    /// Checks ranges that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: &str| Err(ConfigError::Invalid(msg.to_owned()));
        if self.server.max_request_bytes < 1024 {
            return invalid("server.max_request_bytes must be at least 1024");
        }
        if self.server.max_connections == 0 || self.server.max_pending_requests == 0 {
            return invalid(
                "server.max_connections and server.max_pending_requests must be at least 1",
            );
        }
        self.server.validate_batches()?;
        self.server.validate_exposure()?;
        if self.libvirt.call_timeout_secs == 0
            || self.libvirt.agent_timeout_secs == 0
            || self.libvirt.vm_sample_interval_secs == 0
        {
            return invalid("libvirt timeouts and intervals must be at least 1 second");
        }
        if self.daemon.auto_thaw_secs == 0 || self.daemon.max_parallel_snapshots == 0 {
            return invalid(
                "daemon.auto_thaw_secs and daemon.max_parallel_snapshots must be at least 1",
            );
        }
        if self.snapshot.live_memory_max_secs == 0 {
            return invalid("snapshot.live_memory_max_secs must be at least 1 second");
        }
        if self.storage.qemu_img_timeout_secs == 0 {
            return invalid("storage.qemu_img_timeout_secs must be at least 1 second");
        }
        if self
            .cluster
            .host_id
            .is_some_and(|id| !(1..=250).contains(&id))
        {
            return invalid("cluster.host_id must be 1 to 250");
        }
        if !(1..=60).contains(&self.cluster.io_timeout_secs) {
            return invalid("cluster.io_timeout_secs must be 1 to 60");
        }
        if self.libvirt.uri.is_empty() {
            return invalid("libvirt.uri must not be empty");
        }
        self.vm.validate()
    }

    /// The bound of one libvirt call.
    pub fn libvirt_call_timeout(&self) -> Duration {
        Duration::from_secs(self.libvirt.call_timeout_secs)
    }

    /// The host's pool UUID: from the configuration, else from `<state_dir>/pool_uuid`, else a
    /// new one persisted there.
    pub fn pool_uuid(&self) -> Result<uuid::Uuid, ConfigError> {
        if let Some(pool) = self.storage.pool_uuid {
            return Ok(pool);
        }
        let path = self.daemon.state_dir.join("pool_uuid");
        let read_error = |source| ConfigError::Read {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => uuid::Uuid::parse_str(text.trim()).map_err(|e| ConfigError::Parse {
                path: path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pool = uuid::Uuid::new_v4();
                std::fs::create_dir_all(&self.daemon.state_dir).map_err(read_error)?;
                crate::fsutil::write_atomic(&path, format!("{pool}\n").as_bytes(), 0o644)
                    .map_err(read_error)?;
                Ok(pool)
            }
            Err(e) => Err(read_error(e)),
        }
    }

    /// The example file: every field at its default, as documentation.
    pub fn example_toml() -> String {
        toml::to_string_pretty(&Self::default()).expect("the default configuration serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Config::parse("[server]\nprot = 1\n").unwrap_err();
        assert!(err.contains("prot"), "{err}");
        let err = Config::parse("colour = 1\n").unwrap_err();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn mistyped_field_is_refused() {
        assert!(Config::parse("[server]\nport = \"x\"\n").is_err());
        assert!(Config::parse("[server]\nport = 70000\n").is_err());
    }

    #[test]
    fn partial_section_keeps_other_defaults() {
        let c = Config::parse("[server]\nport = 1234\n").unwrap();
        assert_eq!(c.server.port, 1234);
        assert_eq!(c.server.unix_socket, PathBuf::from(DEFAULT_UNIX_SOCKET));
        assert_eq!(c.libvirt, LibvirtConfig::default());
    }

    #[test]
    fn example_round_trips() {
        assert_eq!(
            Config::parse(&Config::example_toml()).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn shipped_example_is_the_defaults() {
        let text = include_str!("../systemd/rvdsm.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn pool_uuid_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.daemon.state_dir = dir.path().join("state");
        let first = config.pool_uuid().unwrap();
        assert_eq!(config.pool_uuid().unwrap(), first);
        let fixed = uuid::Uuid::new_v4();
        config.storage.pool_uuid = Some(fixed);
        assert_eq!(config.pool_uuid().unwrap(), fixed);
    }

    fn invalid_message(text: &str) -> String {
        match Config::parse(text).unwrap().validate() {
            Err(ConfigError::Invalid(message)) => message,
            other => panic!("{text:?}: expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn batch_limit_is_1_to_max_pending_requests() {
        assert_eq!(Config::default().server.max_batch_calls, 64);
        let message = invalid_message("[server]\nmax_batch_calls = 0\n");
        assert!(message.contains("server.max_batch_calls"), "{message}");
        let message = invalid_message("[server]\nmax_pending_requests = 8\n");
        assert!(
            message.contains("server.max_batch_calls") && message.contains("(8)"),
            "{message}"
        );
        let c = Config::parse("[server]\nmax_pending_requests = 8\nmax_batch_calls = 8\n").unwrap();
        assert!(c.validate().is_ok());
        let c = Config::parse("[server]\nmax_batch_calls = 1\n").unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn plain_tcp_off_loopback_is_refused_unless_allowed() {
        for address in ["::", "0.0.0.0", "192.0.2.7", "::ffff:192.0.2.7"] {
            let text =
                format!("[server]\naddress = \"{address}\"\n[server.tls]\nenabled = false\n");
            let message = invalid_message(&text);
            for field in [
                "server.tls.enabled",
                "server.address",
                "server.allow_insecure_network",
            ] {
                assert!(message.contains(field), "{address}: {message}");
            }
            let allowed = text.replace("[server]\n", "[server]\nallow_insecure_network = true\n");
            assert!(
                Config::parse(&allowed).unwrap().validate().is_ok(),
                "{address}"
            );
        }
        for address in ["::1", "127.0.0.1", "127.1.2.3", "::ffff:127.0.0.1"] {
            let text =
                format!("[server]\naddress = \"{address}\"\n[server.tls]\nenabled = false\n");
            let c = Config::parse(&text).unwrap();
            assert!(c.validate().is_ok(), "{address}");
            assert!(!c.server.exposes_plain_tcp(), "{address}");
        }
        // No plain TCP on the network: TLS on, or no TCP listener at all.
        assert!(Config::default().validate().is_ok());
        let no_tcp = "[server]\ntcp_enabled = false\n[server.tls]\nenabled = false\n";
        assert!(Config::parse(no_tcp).unwrap().validate().is_ok());
    }

    #[test]
    fn vm_directories_must_be_plain_and_absolute() {
        for bad in [
            "boot_dirs = [\"boot\"]",
            "boot_dirs = [\"/srv/../etc\"]",
            "console_log_dir = \"/\"",
        ] {
            let c = Config::parse(&format!("[vm]\n{bad}\n")).unwrap();
            assert!(c.validate().is_err(), "{bad}");
        }
        let c = Config::parse("[vm]\nboot_dirs = [\"/srv/boot\"]\n").unwrap();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn zero_timeout_is_invalid() {
        let c = Config::parse("[libvirt]\ncall_timeout_secs = 0\n").unwrap();
        assert!(c.validate().is_err());
        assert!(Config::default().validate().is_ok());
    }
}
