//! RPC load: closed-loop clients (one request in flight per connection) calling one verb over
//! HTTP, WebSocket, STOMP (all on the TCP port) and WebSocket on the Unix socket; and the
//! shared `stomp-load` client that measured VDSM's server, run against rvdsmd unpinned and with
//! rvdsmd pinned to one CPU as vdsmd pins itself.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rvdsm::client::StompClient;
use rvdsm::client::{Client, Endpoint};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::host::{Host, output};
use crate::stats::percentile;

/// The transports measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// JSON-RPC POSTs on a keep-alive HTTP/1.1 connection.
    Http,
    /// jsonrpsee's WebSocket client on TCP.
    WebSocket,
    /// rvdsm's STOMP client (one-element batches, as vdsm-client).
    Stomp,
    /// WebSocket on the Unix socket.
    Unix,
}

impl Transport {
    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::WebSocket => "WebSocket",
            Self::Stomp => "STOMP",
            Self::Unix => "Unix (WebSocket)",
        }
    }
}

/// One load run's result.
#[derive(Debug, Clone)]
pub struct Load {
    /// Completed requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50: f64,
    /// 99th percentile latency, ms.
    pub p99: f64,
}

enum Conn {
    Http(BufReader<TcpStream>),
    Ws(Client),
    Stomp(StompClient<TcpStream>),
}

impl Conn {
    async fn open(host: &Host, transport: Transport) -> Result<Conn> {
        let tcp = || TcpStream::connect(("127.0.0.1", host.port));
        Ok(match transport {
            Transport::Http => {
                let stream = tcp().await?;
                stream.set_nodelay(true)?;
                Conn::Http(BufReader::new(stream))
            }
            Transport::WebSocket => Conn::Ws(
                Client::connect(
                    &Endpoint::Tcp {
                        host: "127.0.0.1".into(),
                        port: host.port,
                        tls: None,
                    },
                    Duration::from_secs(30),
                )
                .await?,
            ),
            Transport::Stomp => {
                let stream = tcp().await?;
                stream.set_nodelay(true)?;
                Conn::Stomp(StompClient::connect(stream, Duration::from_secs(30), false).await?)
            }
            Transport::Unix => Conn::Ws(
                Client::connect(
                    &Endpoint::Unix(host.socket.clone()),
                    Duration::from_secs(30),
                )
                .await?,
            ),
        })
    }

    async fn call(&mut self, method: &str, params: &Value) -> Result<()> {
        match self {
            Conn::Http(stream) => http_call(stream, method, params).await,
            Conn::Ws(client) => client
                .call(method, params.clone())
                .await
                .map(|_| ())
                .map_err(Into::into),
            Conn::Stomp(client) => client
                .call(method, params.clone(), None)
                .await
                .map(|_| ())
                .map_err(Into::into),
        }
    }
}

async fn http_call(stream: &mut BufReader<TcpStream>, method: &str, params: &Value) -> Result<()> {
    let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1}).to_string();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.get_mut().write_all(request.as_bytes()).await?;
    let mut length = None;
    let mut line = String::new();
    loop {
        line.clear();
        if stream.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length.context("no Content-Length")?];
    stream.read_exact(&mut body).await?;
    if body.windows(8).any(|w| w == b"\"error\":") {
        bail!("error reply: {}", String::from_utf8_lossy(&body));
    }
    Ok(())
}

/// `conns` connections calling `method` back to back for `duration` (after a short warm-up).
pub async fn load(
    host: &Host,
    transport: Transport,
    method: &str,
    params: Value,
    conns: usize,
    duration: Duration,
) -> Result<Load> {
    let warmup = Duration::from_millis(300);
    let mut connections = Vec::new();
    for _ in 0..conns {
        connections.push(Conn::open(host, transport).await?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let measured_from = start + warmup;
    let end = measured_from + duration;
    let method: Arc<str> = method.into();
    let params = Arc::new(params);
    let mut tasks = Vec::new();
    for mut conn in connections {
        let (method, params) = (Arc::clone(&method), Arc::clone(&params));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            let mut latencies = Vec::new();
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                conn.call(&method, &params).await?;
                if sent >= measured_from {
                    latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort_by(f64::total_cmp);
    Ok(Load {
        rps: all.len() as f64 / duration.as_secs_f64(),
        p50: percentile(&all, 50.0),
        p99: percentile(&all, 99.0),
    })
}

/// Builds the shared `stomp-load` client into `target_dir`; `None` if it is not there.
pub fn build_stomp_load(repo: &Path) -> Result<Option<std::path::PathBuf>> {
    let manifest = std::env::var("RVDSM_STOMP_LOAD").map_or_else(
        |_| repo.join("../shared/tools/stomp-load/Cargo.toml"),
        std::path::PathBuf::from,
    );
    if !manifest.exists() {
        return Ok(None);
    }
    let target = repo.join("target/stomp-load");
    output(
        Command::new("cargo")
            .args(["build", "--quiet", "--release", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target),
    )?;
    Ok(Some(target.join("release/stomp-load")))
}

/// Sets the CPUs of every thread of `pid`. Threads that end while `taskset` walks them make it
/// fail; it is tried again (new threads inherit their creator's CPUs).
fn set_affinity(pid: &str, cpus: &str) -> Result<()> {
    let mut last = None;
    for _ in 0..5 {
        match output(Command::new("taskset").args(["-a", "-p", "-c", cpus, pid])) {
            Ok(_) => return Ok(()),
            Err(err) => last = Some(err),
        }
    }
    Err(last.expect("tried at least once"))
}

/// One `stomp-load` run; with `pinned`, rvdsmd runs on CPU 0 and the client on CPU 1.
pub fn stomp_load(
    binary: &Path,
    host: &Host,
    conns: usize,
    seconds: f64,
    pinned: bool,
) -> Result<Value> {
    let pid = host.daemon.id().to_string();
    let cpus = if pinned { "0" } else { "0-1" };
    set_affinity(&pid, cpus)?;
    let mut command = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "1"]).arg(binary);
        c
    } else {
        Command::new(binary)
    };
    command
        .args(["--addr", &format!("127.0.0.1:{}", host.port)])
        .args(["--conns", &conns.to_string()])
        .args(["--duration", &seconds.to_string()])
        .args(["--server-pid", &pid]);
    let text = output(&mut command);
    set_affinity(&pid, "0-1")?;
    let text = text?;
    let line = text.lines().last().context("stomp-load printed nothing")?;
    Ok(serde_json::from_str(line)?)
}
