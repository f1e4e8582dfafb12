//! A real `rvdsmd` child process on a free TCP port and a temporary Unix socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use rvdsm::client::{Client, ClientError, Endpoint};
use serde_json::Value;
use tempfile::TempDir;

use super::wait_until;

/// Which listener a call goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The Unix socket.
    Unix,
    /// TCP on loopback.
    Tcp,
}

/// A running daemon, killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// Its temporary directory (configuration, socket, log).
    pub dir: TempDir,
    /// Its Unix socket.
    pub socket: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    runtime: tokio::runtime::Runtime,
    /// Environment it is started with every time (its sanlock daemon's run directory).
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Starts rvdsmd with the default test configuration and waits until it answers.
    pub fn start() -> Daemon {
        Daemon::start_with("")
    }

    /// Starts rvdsmd with `extra` TOML appended to the test configuration (sections not used by
    /// the base configuration, such as `[libvirt]`). Its storage repository and state
    /// directory are in its temporary directory.
    pub fn start_with(extra: &str) -> Daemon {
        Daemon::start_configured(|dir| test_config(dir, extra))
    }

    /// Starts rvdsmd with mutual TLS on TCP, with the daemon's side of `tls`.
    pub fn start_tls(tls: &rvdsm::rpc::tls::TlsFiles) -> Daemon {
        Daemon::start_configured(|dir| test_config_tls(dir, "", Some(tls)))
    }

    /// Starts rvdsmd on the configuration `config` writes for its temporary directory, and
    /// waits until it serves every verb.
    pub fn start_configured(config: impl FnOnce(&std::path::Path) -> String) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("rvdsmd-test")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("rvdsm.toml"), config(dir.path())).unwrap();
        let mut daemon = Daemon::spawn(dir, &[]);
        daemon.wait_ready();
        daemon
    }

    /// Asserts that `Host.ping2` answers `true` over TCP.
    pub fn assert_pings_over_tcp(&self) {
        assert_eq!(
            self.call(Via::Tcp, "Host.ping2", serde_json::json!({}))
                .unwrap(),
            Value::Bool(true)
        );
    }

    /// Starts rvdsmd again on the directory of this daemon (its state, storage, socket and
    /// port), after killing it if it still runs, as systemd would restart it.
    pub fn restart(self) -> Daemon {
        self.restart_with(&[])
    }

    /// [`Daemon::restart`] with extra environment variables (test failpoints).
    pub fn restart_with(mut self, env: &[(&str, &str)]) -> Daemon {
        self.restart_in_place(env);
        self
    }

    /// Kills the daemon and starts it again on the same directory, in place; returns once it
    /// has recovered and serves every verb.
    pub fn restart_in_place(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        self.child = Some(self.start_child(env));
        self.wait_ready();
    }

    /// Sets `key = value` in the `[server]` table of the daemon's configuration (replacing a
    /// line that sets it) and restarts the daemon in place to read it.
    pub fn set_server_setting(&mut self, key: &str, value: &str) {
        let path = self.dir.path().join("rvdsm.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let line = format!("{key} = {value}\n");
        let text = match text.lines().find(|l| l.starts_with(&format!("{key} = "))) {
            Some(old) => text.replacen(&format!("{old}\n"), &line, 1),
            None => text.replacen("[server]\n", &format!("[server]\n{line}"), 1),
        };
        std::fs::write(&path, text).unwrap();
        self.restart_in_place(&[]);
    }

    /// Restarts the daemon so that it pauses at the test failpoint `point`; returns the
    /// marker file it creates once there (then kill it with [`Daemon::restart_in_place`]).
    pub fn restart_paused_at(&mut self, point: &str) -> PathBuf {
        let marker = self.dir.path().join("paused");
        let _ = std::fs::remove_file(&marker);
        let marker_text = marker.to_str().unwrap().to_owned();
        self.kill9();
        let env = [
            ("RVDSM_TEST_PAUSE_AT", point),
            ("RVDSM_TEST_PAUSE_MARKER", marker_text.as_str()),
        ];
        self.child = Some(self.start_child(&env));
        if point == "recovery:start" {
            // Paused in its recovery, it serves Host.ping2 alone.
            self.wait_answering();
        } else {
            self.wait_ready();
        }
        marker
    }

    /// Kills the daemon with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sets a variable of the environment it is started with from its next restart on.
    pub fn keep_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Starts rvdsmd with the environment it keeps (see [`Daemon::spawn`]) and `env`.
    fn start_child(&self, env: &[(&str, &str)]) -> Child {
        let mut all: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all.extend_from_slice(env);
        start_child(self.dir.path(), &all)
    }

    /// Starts rvdsmd on the configuration in `dir` with extra environment variables (kept for
    /// its restarts), without waiting for it to answer.
    pub fn spawn(dir: TempDir, env: &[(&str, &str)]) -> Daemon {
        let config = dir.path().join("rvdsm.toml");
        let port = std::fs::read_to_string(&config)
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("port = ")
                    .and_then(|p| p.trim().parse().ok())
            })
            .expect("test configuration has a port");
        let child = start_child(dir.path(), env);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Daemon {
            child: Some(child),
            socket: dir.path().join("rvdsm.sock"),
            dir,
            port,
            runtime,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// Waits (bounded) until the daemon answers `Host.ping2` (it may still be recovering).
    pub fn wait_answering(&mut self) {
        self.wait_for("Host.ping2");
    }

    /// Waits (bounded) until the daemon has recovered and serves every verb.
    pub fn wait_ready(&mut self) {
        self.wait_for("Host.getStorageDomains");
    }

    fn wait_for(&mut self, verb: &str) {
        let ready = wait_until(Duration::from_secs(30), || {
            self.has_exited().is_none() && self.call(Via::Unix, verb, Value::Null).is_ok()
        });
        assert!(ready, "rvdsmd did not serve {verb}; log:\n{}", self.log());
    }

    /// The storage repository of this daemon.
    pub fn repository(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// The host's pool UUID, as `Host.getCapabilities` reports it.
    pub fn pool(&self) -> String {
        self.ok("Host.getCapabilities", Value::Null)["storagePool"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Polls `Task.getStatus` until the task is finished; returns the final status.
    pub fn wait_task(&self, task: &str) -> Value {
        let mut status = Value::Null;
        let done = wait_until(Duration::from_secs(120), || {
            status = self.ok("Task.getStatus", serde_json::json!({"taskID": task}));
            status["taskState"] == "finished"
        });
        assert!(
            done,
            "task {task} never finished: {status}; log:\n{}",
            self.log()
        );
        status
    }

    /// Calls `method` through `via`; `params` is an object, a list or null.
    pub fn call(&self, via: Via, method: &str, params: Value) -> Result<Value, ClientError> {
        let endpoint = match via {
            Via::Unix => Endpoint::Unix(self.socket.clone()),
            Via::Tcp => Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: self.port,
                tls: None,
            },
        };
        let reply = self.runtime.block_on(async {
            let client = Client::connect(&endpoint, Duration::from_secs(30)).await?;
            client.call(method, params).await
        });
        if let Ok(value) = &reply
            && let Err(problem) = super::vdsm_schema::check_reply(method, value)
        {
            panic!("{method}'s reply breaks VDSM's schema: {problem}");
        }
        reply
    }

    /// Calls through the Unix socket and expects success.
    pub fn ok(&self, method: &str, params: Value) -> Value {
        self.call(Via::Unix, method, params)
            .unwrap_or_else(|e| panic!("{method} failed: {e}; log:\n{}", self.log()))
    }

    /// Waits (bounded) until the monitoring cache knows `vm`: a VM defined or started behind
    /// rvdsm's back a moment ago is in it once libvirt's event has been handled (milliseconds).
    pub fn wait_known(&self, vm: &str) {
        let known = super::wait_until(Duration::from_secs(10), || {
            self.call(Via::Unix, "VM.getStats", serde_json::json!({"vmID": vm}))
                .is_ok()
        });
        assert!(known, "rvdsm never saw VM {vm}; log:\n{}", self.log());
    }

    /// Calls through the Unix socket and expects a server error; returns its code and message.
    pub fn err(&self, method: &str, params: Value) -> (i32, String) {
        match self.call(Via::Unix, method, params) {
            Err(ClientError::Server { code, message }) => (code, message),
            other => panic!("{method}: expected a server error, got {other:?}"),
        }
    }

    /// Sends raw bytes over TCP and returns everything the daemon answers before closing or
    /// going quiet for a second (for malformed and oversized requests).
    pub fn raw_tcp(&self, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") && ends_body(&answer) {
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Sends `request` as a plain HTTP POST on TCP and hangs up `after` this long, without
    /// reading the answer: a manager that goes away mid-call.
    pub fn post_and_hang_up(&self, request: &Value, after: Duration) {
        use std::io::Write;
        let body = request.to_string();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        std::thread::sleep(after);
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon stopped").id()
    }

    /// How many file descriptors the daemon has open.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |dir| dir.count())
    }

    /// `GET /metrics` over the Unix socket: the Prometheus text.
    pub fn metrics(&self) -> String {
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        answer
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let child = self.child.as_ref().expect("daemon stopped");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon already stopped");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let mut status = None;
        let exited = wait_until(Duration::from_secs(40), || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        assert!(exited, "rvdsmd ignored SIGTERM; log:\n{}", self.log());
        self.child = None;
        status.unwrap()
    }

    /// The exit status, if the daemon has exited.
    pub fn has_exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rvdsmd.log")).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts rvdsmd on the configuration in `dir`, logging to `dir/rvdsmd.log`.
fn start_child(dir: &std::path::Path, env: &[(&str, &str)]) -> Child {
    if let Some((_, point)) = env.iter().find(|(k, _)| *k == "RVDSM_TEST_PAUSE_AT") {
        assert_failpoints_built(point);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("rvdsmd.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_rvdsmd"))
        .arg("--config")
        .arg(dir.join("rvdsm.toml"))
        .env("RUST_LOG", "debug")
        // As the systemd unit starts it.
        .env("MIMALLOC_PURGE_DELAY", "0")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Panics, saying how to fix it, unless the rvdsmd under test was built with the cargo feature
/// `failpoints`: without it the daemon never pauses at `point`, and a test arming one would
/// fail later and obscurely (or, worse, test nothing).
fn assert_failpoints_built(point: &str) {
    static HAS_FAILPOINTS: std::sync::OnceLock<Result<bool, String>> = std::sync::OnceLock::new();
    let built = HAS_FAILPOINTS.get_or_init(|| {
        let output = Command::new(env!("CARGO_BIN_EXE_rvdsmd"))
            .arg("--version")
            .output()
            .map_err(|e| format!("cannot run rvdsmd --version: {e}"))?;
        let version = String::from_utf8_lossy(&output.stdout);
        Ok(version.contains("(test build: failpoints)"))
    });
    match built {
        Ok(true) => {}
        Ok(false) => panic!(
            "this test arms the failpoint {point:?}, but rvdsmd was built without the cargo \
             feature `failpoints` (`rvdsmd --version` does not report it): run the tests with \
             `cargo test --features failpoints` (scripts/test does)"
        ),
        Err(problem) => panic!("{problem}"),
    }
}

/// The test configuration of a daemon whose files live in `dir`.
pub fn test_config(dir: &std::path::Path, extra: &str) -> String {
    test_config_tls(dir, extra, None)
}

/// Where a test daemon whose files are in `dir` puts its VMs' console logs.
pub fn console_dir(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("console")
}

/// [`test_config`] with mutual TLS on TCP with the daemon's side of `tls`; plain TCP without.
pub fn test_config_tls(
    dir: &std::path::Path,
    extra: &str,
    tls: Option<&rvdsm::rpc::tls::TlsFiles>,
) -> String {
    let tls = match tls {
        None => "enabled = false\n".to_owned(),
        Some(files) => format!(
            "enabled = true\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            files.cert.display(),
            files.key.display(),
            files.ca.display()
        ),
    };
    format!(
        "[server]\naddress = \"127.0.0.1\"\nport = {}\nunix_socket = \"{}\"\n\
         max_request_bytes = 65536\n[server.tls]\n{tls}\
         [vm]\nboot_dirs = [\"{}\"]\nconsole_log_dir = \"{}\"\n\
         [storage]\nrepository = \"{}\"\n[daemon]\nstate_dir = \"{}\"\n{extra}",
        free_port(),
        dir.join("rvdsm.sock").display(),
        super::fixture_dir().display(),
        console_dir(dir).display(),
        dir.join("repo").display(),
        dir.join("state").display(),
    )
}

/// Whether an HTTP answer holds its whole body (by Content-Length).
fn ends_body(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    body.len() >= length
}

/// A TCP port free at the time of the call.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the `rvdsm` CLI against `daemon`'s socket; returns exit code, stdout, stderr.
pub fn cli(daemon: &Daemon, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_rvdsm"))
        .arg("--socket")
        .arg(&daemon.socket)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// VDSM's `transformPath` of a local directory: the name of its link under `<repository>/mnt`.
pub fn transform(path: &std::path::Path) -> String {
    path.to_str().unwrap().replace('_', "__").replace('/', "_")
}
