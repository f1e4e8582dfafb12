//! STOMP clients for the tests: rvdsm's own client (as `vdsm.client` behaves) over TCP, TLS or
//! the Unix socket, and a raw socket for malformed input.

use std::io::{Read, Write};
use std::net::TcpStream as StdTcpStream;
use std::time::{Duration, Instant};

use rvdsm::client::ClientError;
use rvdsm::client::StompClient;
use rvdsm::rpc::tls::{TlsFiles, client_connector, server_name};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

/// How long a STOMP call may take in the tests.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A multi-threaded runtime for a test's async part.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A STOMP client over plain TCP.
pub async fn over_tcp(port: u16, events: bool) -> StompClient<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    StompClient::connect(stream, CALL_TIMEOUT, events)
        .await
        .unwrap()
}

/// A STOMP client over the Unix socket.
pub async fn over_unix(socket: &std::path::Path) -> StompClient<UnixStream> {
    let stream = UnixStream::connect(socket).await.unwrap();
    StompClient::connect(stream, CALL_TIMEOUT, false)
        .await
        .unwrap()
}

/// A TLS connection with `files` (the client's side), or why it failed.
pub async fn tls_stream(
    port: u16,
    files: &TlsFiles,
) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let connector = client_connector(files).unwrap();
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    connector
        .connect(server_name("localhost").unwrap(), stream)
        .await
}

/// A STOMP client over TLS, or why it could not connect (a refused certificate may only show
/// when the server first answers, as TLS 1.3 ends the handshake on the client's side first).
pub async fn over_tls(
    port: u16,
    files: &TlsFiles,
) -> Result<StompClient<TlsStream<TcpStream>>, ClientError> {
    let stream = tls_stream(port, files)
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))?;
    StompClient::connect(stream, Duration::from_secs(10), false).await
}

/// A manager's STOMP client over mutual TLS (`events`: subscribed to the event queue).
pub async fn manager_over_tls(
    port: u16,
    files: &TlsFiles,
    events: bool,
) -> StompClient<TlsStream<TcpStream>> {
    let stream = tls_stream(port, files).await.unwrap();
    StompClient::connect(stream, CALL_TIMEOUT, events)
        .await
        .unwrap()
}

/// A raw TCP connection, for bytes no client would send.
pub struct Raw {
    stream: StdTcpStream,
}

impl Raw {
    /// Connects to the daemon's TCP port.
    pub fn connect(port: u16) -> Raw {
        let stream = StdTcpStream::connect(("127.0.0.1", port)).unwrap();
        Raw { stream }
    }

    /// Sends bytes (a failure means the server closed the connection).
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads what the server sends for `time`; returns the bytes and whether it closed.
    pub fn read_for(&mut self, time: Duration) -> (String, bool) {
        let end = Instant::now() + time;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (String::from_utf8_lossy(&got).into_owned(), false);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
            }
        }
    }

    /// Reads until `needle` appears (or `time` passes); returns everything read.
    pub fn read_until(&mut self, needle: &str, time: Duration) -> String {
        let end = Instant::now() + time;
        let mut got = String::new();
        while !got.contains(needle) && Instant::now() < end {
            let (more, closed) = self.read_for(Duration::from_millis(100));
            got.push_str(&more);
            if closed {
                break;
            }
        }
        got
    }
}

/// A STOMP frame as bytes.
pub fn frame(command: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!("{command}\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}:{value}\n"));
    }
    out.push('\n');
    out.push_str(body);
    out.push('\0');
    out.into_bytes()
}
