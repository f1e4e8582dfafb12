//! The bench's host: a release rvdsmd with a LOCALFS storage domain, and fixture guests booted
//! from volumes rvdsm created, destroyed when the bench ends (panics included).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use rvdsm::client::{Client, Endpoint};
use serde_json::{Value, json};
use virt::connect::Connect;
use virt::domain::Domain;

/// VDSM's volume formats (`volFormat`).
const COW: u32 = 4;
const RAW: u32 = 5;

/// The fixture guest's RAM (`fixtures/guest-xml`'s default), MiB.
pub const FIXTURE_MEMORY_MIB: u64 = 256;

/// A running rvdsmd with one storage domain.
pub struct Host {
    pub repo: PathBuf,
    pub dir: tempfile::TempDir,
    pub daemon: Child,
    pub port: u16,
    pub socket: PathBuf,
    pub pool: String,
    pub domain: String,
    pub startup: Duration,
    pub client: Client,
}

/// A fixture guest on an rvdsm volume.
pub struct Guest {
    pub name: String,
    pub uuid: String,
    pub image: String,
    /// The volume the guest writes to now.
    pub volume: String,
    /// The file it writes to now.
    pub path: PathBuf,
    pub domain: Domain,
    /// Its RAM, MiB.
    pub memory_mib: u64,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.domain.destroy();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // RVDSM_BENCH_LOG=path keeps rvdsmd's log (run with RUST_LOG=rvdsm=debug for the
        // duration of each libvirt call).
        if let Ok(keep) = std::env::var("RVDSM_BENCH_LOG") {
            let _ = std::fs::copy(self.dir.path().join("rvdsmd.log"), keep);
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Host {
    /// Starts the release rvdsmd on a plain loopback port (as VDSM's server was measured) and
    /// creates a storage domain. With `cpus`, rvdsmd starts pinned to them (`taskset`, which
    /// execs it: the same process), as vdsmd pins itself at start.
    pub async fn start(repo: &Path, cpus: Option<&str>) -> Result<Host> {
        let dir = tempfile::Builder::new()
            .prefix("rvdsm-bench")
            .tempdir_in("/var/tmp")?;
        let port = free_port()?;
        let socket = dir.path().join("rvdsm.sock");
        let config = format!(
            "[server]\naddress = \"127.0.0.1\"\nport = {port}\nunix_socket = \"{}\"\n\
             [server.tls]\nenabled = false\n[storage]\nrepository = \"{}\"\n\
             [daemon]\nstate_dir = \"{}\"\n\
             [vm]\nboot_dirs = [\"{}\"]\nconsole_log_dir = \"{}\"\n",
            socket.display(),
            dir.path().join("repo").display(),
            dir.path().join("state").display(),
            repo.join("fixtures/build").display(),
            dir.path().join("console").display()
        );
        std::fs::write(dir.path().join("rvdsm.toml"), config)?;
        let log = std::fs::File::create(dir.path().join("rvdsmd.log"))?;
        let started = Instant::now();
        let binary = repo.join("target/release/rvdsmd");
        let mut command = match cpus {
            Some(cpus) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", cpus]).arg(&binary);
                taskset
            }
            None => Command::new(&binary),
        };
        let daemon = command
            // As the systemd unit starts it: memory freed after load goes back at once.
            .env("MIMALLOC_PURGE_DELAY", "0")
            .arg("--config")
            .arg(dir.path().join("rvdsm.toml"))
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()
            .context("start target/release/rvdsmd (build it first)")?;
        let client = loop {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("rvdsmd did not become ready");
            }
            if let Ok(client) =
                Client::connect(&Endpoint::Unix(socket.clone()), Duration::from_secs(60)).await
                && client
                    .call("Host.getStorageDomains", json!({}))
                    .await
                    .is_ok()
            {
                break client;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let startup = started.elapsed();
        let caps = client.call("Host.getCapabilities", json!({})).await?;
        let pool = caps["storagePool"]
            .as_str()
            .context("no storagePool")?
            .to_owned();
        let domain = uuid::Uuid::new_v4().to_string();
        let sd_dir = dir.path().join("sd");
        std::fs::create_dir_all(&sd_dir)?;
        client
            .call(
                "StorageDomain.create",
                json!({"storagedomainID": domain, "domainType": 4,
                       "typeArgs": sd_dir, "name": "bench", "domainClass": 1, "version": "5"}),
            )
            .await?;
        Ok(Host {
            repo: repo.to_owned(),
            dir,
            daemon,
            port,
            socket,
            pool,
            domain,
            startup,
            client,
        })
    }

    /// rvdsmd's resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.daemon.id())
    }

    /// Creates a 64 MiB volume (on `parent` when given) and waits for its task; returns its
    /// id.
    pub async fn create_volume(&self, image: &str, parent: Option<&str>) -> Result<String> {
        self.create_volume_sized(image, parent, 64 << 20).await
    }

    /// Creates a volume of `size` bytes (on `parent` when given) and waits for its task.
    pub async fn create_volume_sized(
        &self,
        image: &str,
        parent: Option<&str>,
        size: u64,
    ) -> Result<String> {
        self.create_volume_of(image, parent, size, COW).await
    }

    /// Creates a RAW sparse volume of `size` bytes in a new image `image` (as an engine
    /// creates the two volumes of a memory snapshot) and waits for its task.
    pub async fn create_raw_volume(&self, image: &str, size: u64) -> Result<String> {
        self.create_volume_of(image, None, size, RAW).await
    }

    async fn create_volume_of(
        &self,
        image: &str,
        parent: Option<&str>,
        size: u64,
        format: u32,
    ) -> Result<String> {
        let volume = uuid::Uuid::new_v4().to_string();
        let nil = "00000000-0000-0000-0000-000000000000";
        let task = self
            .client
            .call(
                "Volume.create",
                json!({"volumeID": volume, "storagepoolID": self.pool,
                       "storagedomainID": self.domain, "imageID": image,
                       "size": size.to_string(), "volFormat": format, "preallocate": 2,
                       "diskType": "DATA", "desc": "bench",
                       "srcImgUUID": if parent.is_some() { image } else { nil },
                       "srcVolUUID": parent.unwrap_or(nil)}),
            )
            .await?;
        self.wait_task(task.as_str().context("no task id")?).await?;
        Ok(volume)
    }

    /// Deletes an image and all its volumes (`Image.delete`) and waits for its task.
    pub async fn delete_image(&self, image: &str) -> Result<()> {
        let task = self
            .client
            .call(
                "Image.delete",
                json!({"storagepoolID": self.pool, "storagedomainID": self.domain,
                       "imageID": image, "postZero": false, "force": false}),
            )
            .await?;
        self.wait_task(task.as_str().context("no task id")?).await
    }

    /// Polls a task every 2 ms until it finished; fails unless it succeeded; clears it.
    pub async fn wait_task(&self, task: &str) -> Result<()> {
        loop {
            let status = self
                .client
                .call("Task.getStatus", json!({"taskID": task}))
                .await?;
            if status["taskState"] == "finished" {
                if status["taskResult"] != "success" {
                    bail!("task {task} failed: {status}");
                }
                self.client
                    .call("Task.clear", json!({"taskID": task}))
                    .await?;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A base volume with the fixture's data disk, and a guest booted from it.
    pub async fn boot_guest(&self, conn: &Connect, index: usize) -> Result<Guest> {
        self.boot_guest_sized(conn, index, 64 << 20).await
    }

    /// [`Host::boot_guest`] on a volume of `size` bytes (the fixture's ext4 uses the first
    /// 64 MiB; the rest is room for a bench's data).
    pub async fn boot_guest_sized(&self, conn: &Connect, index: usize, size: u64) -> Result<Guest> {
        self.boot_guest_with_memory(conn, index, size, FIXTURE_MEMORY_MIB)
            .await
    }

    /// [`Host::boot_guest_sized`] with `memory_mib` MiB of RAM.
    pub async fn boot_guest_with_memory(
        &self,
        conn: &Connect,
        index: usize,
        size: u64,
        memory_mib: u64,
    ) -> Result<Guest> {
        let image = uuid::Uuid::new_v4().to_string();
        let volume = self.create_volume_sized(&image, None, size).await?;
        let prepared = self
            .client
            .call(
                "Image.prepare",
                json!({"storagepoolID": self.pool, "storagedomainID": self.domain,
                       "imageID": image, "volumeID": volume}),
            )
            .await?;
        let path = PathBuf::from(prepared["path"].as_str().context("no path")?);
        run(Command::new("qemu-img")
            .args(["convert", "-q", "-O", "qcow2"])
            .arg(self.repo.join("fixtures/build/data.qcow2"))
            .arg(&path))?;
        if size > 64 << 20 {
            run(Command::new("qemu-img")
                .args(["resize", "-q", "-f", "qcow2"])
                .arg(&path)
                .arg(size.to_string()))?;
        }
        let name = format!("rvdsm-bench-{}-{index}", std::process::id());
        let xml = output(
            Command::new(self.repo.join("fixtures/guest-xml"))
                .args(["--name", &name, "--memory", &memory_mib.to_string()])
                .arg("--console")
                .arg(self.dir.path().join(format!("console-{index}.log")))
                .arg("--disk")
                .arg(&path),
        )?;
        let domain = conn.create_domain_xml(&xml, 0).context("boot guest")?;
        let uuid = domain.uuid_string()?;
        let guest = Guest {
            name,
            uuid,
            image,
            volume,
            path: std::fs::canonicalize(&path)?,
            domain,
            memory_mib,
        };
        let started = Instant::now();
        while guest.agent("{\"execute\":\"guest-ping\"}", 2).is_err() {
            if started.elapsed() > Duration::from_secs(180) {
                bail!("guest {} agent never answered", guest.name);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Ok(guest)
    }

    /// The directory of an image.
    pub fn image_dir(&self, image: &str) -> PathBuf {
        self.dir
            .path()
            .join("sd")
            .join(&self.domain)
            .join("images")
            .join(image)
    }
}

impl Guest {
    /// One guest agent command, `timeout` seconds.
    pub fn agent(&self, command: &str, timeout: i32) -> Result<Value> {
        let reply = self
            .domain
            .qemu_agent_command(command, timeout, 0)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(serde_json::from_str(&reply)?)
    }

    /// Runs a shell script in the guest; returns its standard output.
    pub async fn exec(&self, script: &str) -> Result<String> {
        let started = self.agent(
            &json!({"execute": "guest-exec", "arguments": {"path": "/bin/sh",
                    "arg": ["-c", script], "capture-output": true}})
            .to_string(),
            10,
        )?;
        let pid = started["return"]["pid"].as_i64().context("no pid")?;
        let begun = Instant::now();
        loop {
            let status = self.agent(
                &json!({"execute": "guest-exec-status", "arguments": {"pid": pid}}).to_string(),
                10,
            )?;
            if status["return"]["exited"] == true {
                let data = status["return"]["out-data"].as_str().unwrap_or("");
                let bytes = base64::engine::general_purpose::STANDARD.decode(data)?;
                return Ok(String::from_utf8_lossy(&bytes).into_owned());
            }
            if begun.elapsed() > Duration::from_secs(120) {
                bail!("guest command did not end: {script}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Resident memory of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `RssAnon:`, `RssFile:`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The memory floor of any libvirt client on this host: `virsh` connected to
/// `qemu:///system` and idle (waiting for events); (resident, anonymous, file-backed) KiB.
pub async fn libvirt_client_floor() -> Result<(u64, u64, u64)> {
    let mut virsh = tokio::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "event", "--all", "--loop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = virsh.id().context("virsh exited")?;
    let floor = (
        rss_kib(pid),
        status_kib(pid, "RssAnon:"),
        status_kib(pid, "RssFile:"),
    );
    virsh.kill().await?;
    Ok(floor)
}

/// Runs a command; fails with its stderr.
pub fn run(command: &mut Command) -> Result<()> {
    output(command).map(|_| ())
}

/// Runs a command; returns its stdout or fails with its stderr.
pub fn output(command: &mut Command) -> Result<String> {
    let out = command.output().with_context(|| format!("{command:?}"))?;
    if !out.status.success() {
        bail!("{command:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
