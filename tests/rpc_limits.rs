//! Issue 26 ("What to build", item 6): what one client can make rvdsmd run, and who can reach
//! it without TLS. A JSON-RPC batch of more than `server.max_batch_calls` is refused whole,
//! none of its calls run, on every transport (STOMP, HTTP, WebSocket; TCP and the Unix
//! socket); an empty batch is an invalid request; a batch over `max_request_bytes` is refused
//! on every transport; each call of a batch counts toward `max_pending_requests` on STOMP; and
//! plain TCP on an address other than loopback stops the daemon at start unless
//! `server.allow_insecure_network` says so.
//!
//! The calls used are harmless (`Host.getVMList`, `Host.ping2`); that no call of a refused batch
//! ran is read from the daemon's request counter (`rvdsm_rpc_requests_total`), which counts
//! every call that reached the registry, whatever its outcome.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Daemon;
use common::daemon::test_config;
use common::domain::Fixture;
use common::stomp::frame;
use serde_json::{Value, json};

/// jsonrpsee's code for a batch over the limit ("The batch request was too large").
const BATCH_TOO_LARGE: i64 = -32010;
/// JSON-RPC 2.0's invalid request.
const INVALID_REQUEST: i64 = -32600;
/// jsonrpsee's code for a request over the size limit ("Request is too big").
const REQUEST_TOO_BIG: i64 = -32007;

/// The test configuration with `settings` added to its `[server]` table.
fn with_server(dir: &Path, settings: &str) -> String {
    test_config(dir, "").replacen("[server]\n", &format!("[server]\n{settings}"), 1)
}

/// A JSON-RPC batch of `calls` calls of `method`, each with `params`.
fn batch(method: &str, calls: usize, params: &Value) -> String {
    let calls: Vec<Value> = (0..calls)
        .map(|id| json!({"jsonrpc": "2.0", "method": method, "params": params, "id": id}))
        .collect();
    Value::Array(calls).to_string()
}

/// How many calls of `method` reached the registry, whatever their outcome.
fn served(daemon: &Daemon, method: &str) -> u64 {
    let prefix = format!("rvdsm_rpc_requests_total{{method=\"{method}\"");
    daemon
        .metrics()
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A connection to the daemon, over TCP on loopback or the Unix socket.
enum Wire {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Wire {
    fn tcp(port: u16) -> Wire {
        Wire::Tcp(TcpStream::connect(("127.0.0.1", port)).unwrap())
    }

    fn unix(socket: &Path) -> Wire {
        Wire::Unix(UnixStream::connect(socket).unwrap())
    }

    fn set_read_timeout(&self, timeout: Duration) {
        match self {
            Wire::Tcp(s) => s.set_read_timeout(Some(timeout)).unwrap(),
            Wire::Unix(s) => s.set_read_timeout(Some(timeout)).unwrap(),
        }
    }

    /// Reads until `done` holds for what was read, the peer closes, or `time` passes; returns
    /// what was read and whether the peer closed.
    fn read_until(&mut self, time: Duration, done: impl Fn(&[u8]) -> bool) -> (Vec<u8>, bool) {
        let end = Instant::now() + time;
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        while !done(&got) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (got, false);
            }
            self.set_read_timeout(left);
            match self.read(&mut buf) {
                Ok(0) => return (got, true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return (got, true),
            }
        }
        (got, false)
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Wire::Tcp(s) => s.read(buf),
            Wire::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Wire::Tcp(s) => s.write(buf),
            Wire::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Wire::Tcp(s) => s.flush(),
            Wire::Unix(s) => s.flush(),
        }
    }
}

/// A STOMP session as a manager opens it: connected, its replies subscribed on `r`.
struct Stomp {
    wire: Wire,
    /// Bytes read past the last frame returned.
    buffered: Vec<u8>,
}

impl Stomp {
    fn open(wire: Wire) -> Stomp {
        let mut stomp = Stomp {
            wire,
            buffered: Vec::new(),
        };
        stomp.write(&frame("CONNECT", &[("accept-version", "1.2")], ""));
        let (answer, _) = stomp.next_frame(Duration::from_secs(10));
        let answer = answer.unwrap_or_default();
        assert!(answer.starts_with("CONNECTED\n"), "{answer:?}");
        stomp.write(&frame(
            "SUBSCRIBE",
            &[("destination", "r"), ("id", "s")],
            "",
        ));
        stomp
    }

    fn write(&mut self, bytes: &[u8]) {
        self.wire.write_all(bytes).unwrap();
    }

    /// Sends `body` as a request whose reply goes to `r`.
    fn send(&mut self, body: &str) {
        self.write(&frame(
            "SEND",
            &[
                ("destination", "jms.topic.vdsm_requests"),
                ("reply-to", "r"),
            ],
            body,
        ));
    }

    /// The next frame within `time` (its text up to its NUL), and whether the daemon closed.
    fn next_frame(&mut self, time: Duration) -> (Option<String>, bool) {
        let mut closed = false;
        if !self.buffered.contains(&0) {
            let (got, eof) = self.wire.read_until(time, |got| got.contains(&0));
            self.buffered.extend_from_slice(&got);
            closed = eof;
        }
        let Some(end) = self.buffered.iter().position(|&b| b == 0) else {
            return (None, closed);
        };
        let frame: Vec<u8> = self.buffered.drain(..=end).collect();
        let text = String::from_utf8_lossy(&frame);
        (Some(text.trim_start_matches('\n').to_owned()), closed)
    }

    /// Sends `body` and returns the reply's JSON.
    fn call(&mut self, body: &str) -> Value {
        self.send(body);
        let (frame, _) = self.next_frame(Duration::from_secs(30));
        let frame = frame.expect("a reply within 30 s");
        reply_body(&frame)
    }
}

/// The JSON body of a STOMP MESSAGE.
fn reply_body(frame: &str) -> Value {
    assert!(frame.starts_with("MESSAGE\n"), "{frame:?}");
    let body = frame.split_once("\n\n").unwrap().1.trim_end_matches('\0');
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// POSTs `body` over HTTP/1.1 and returns the status line and the body.
fn http_post(mut wire: Wire, body: &str) -> (String, String) {
    let request = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // A daemon that refuses from the headers may close before the whole body is written.
    let _ = wire.write_all(request.as_bytes());
    let (answer, _) = wire.read_until(Duration::from_secs(30), |_| false);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer: {answer:?}"));
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// POSTs `body` and returns the JSON reply of a 200.
fn http_call(wire: Wire, body: &str) -> Value {
    let (status, body) = http_post(wire, body);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A WebSocket session (RFC 6455, text frames), enough for one request at a time.
struct WebSocket {
    wire: Wire,
    /// Bytes read past the last message returned.
    buffered: Vec<u8>,
}

impl WebSocket {
    fn open(mut wire: Wire) -> WebSocket {
        wire.write_all(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap();
        let (answer, _) = wire.read_until(Duration::from_secs(10), |got| {
            got.windows(4).any(|w| w == b"\r\n\r\n")
        });
        assert!(
            answer.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let head = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        WebSocket {
            wire,
            buffered: answer[head..].to_vec(),
        }
    }

    /// Sends `text` as one masked text frame (the mask is zero: the payload goes as it is).
    fn send(&mut self, text: &str) {
        let mut out = vec![0x81u8];
        let len = text.len();
        if let Ok(short) = u8::try_from(len)
            && short < 126
        {
            out.push(0x80 | short);
        } else if let Ok(medium) = u16::try_from(len) {
            out.push(0x80 | 126);
            out.extend_from_slice(&medium.to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(text.as_bytes());
        // A daemon that refuses a message too large may close before it is all written.
        let _ = self.wire.write_all(&out);
    }

    /// The next text message within `time`, or `None` if the daemon closed or sent none.
    fn receive_within(&mut self, time: Duration) -> Option<String> {
        let end = Instant::now() + time;
        loop {
            if let Some((opcode, payload, used)) = whole_frame(&self.buffered) {
                self.buffered.drain(..used);
                match opcode {
                    1 => return Some(String::from_utf8(payload).unwrap()),
                    8 => return None,
                    _ => continue,
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            let (got, _) = self.wire.read_until(left, |got| !got.is_empty());
            if got.is_empty() {
                return None;
            }
            self.buffered.extend_from_slice(&got);
        }
    }

    fn receive(&mut self) -> Option<String> {
        self.receive_within(Duration::from_secs(30))
    }

    fn call(&mut self, body: &str) -> Value {
        self.send(body);
        let text = self.receive().expect("a WebSocket reply within 30 s");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

/// The opcode, payload and length of the first whole (unmasked, unfragmented) frame in
/// `bytes`.
fn whole_frame(bytes: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let (&first, rest) = bytes.split_first()?;
    let (&second, rest) = rest.split_first()?;
    let (len, rest) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            &rest[2..],
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)).ok()?,
            &rest[8..],
        ),
        short => (usize::from(short), rest),
    };
    let payload = rest.get(..len)?.to_vec();
    let used = bytes.len() - rest.len() + len;
    Some((first & 0x0f, payload, used))
}

/// Asserts that `reply` is one JSON-RPC error object, id null, with `code`.
fn assert_error(transport: &str, reply: &Value, code: i64) {
    assert!(
        reply.is_object() && reply["id"].is_null() && reply["error"]["code"] == code,
        "{transport}: expected error {code} with id null, got {reply}"
    );
}

#[test]
fn a_batch_over_max_batch_calls_is_refused_whole_on_every_transport() {
    let Some(_libvirt) = common::libvirt() else {
        return;
    };
    let daemon = Daemon::start_configured(|dir| {
        with_server(dir, "max_pending_requests = 4\nmax_batch_calls = 4\n")
    });
    let over = batch("Host.getVMList", 5, &json!({}));
    let replies = [
        (
            "STOMP over TCP",
            Stomp::open(Wire::tcp(daemon.port)).call(&over),
        ),
        (
            "STOMP over the Unix socket",
            Stomp::open(Wire::unix(&daemon.socket)).call(&over),
        ),
        ("HTTP over TCP", http_call(Wire::tcp(daemon.port), &over)),
        (
            "HTTP over the Unix socket",
            http_call(Wire::unix(&daemon.socket), &over),
        ),
        (
            "WebSocket over TCP",
            WebSocket::open(Wire::tcp(daemon.port)).call(&over),
        ),
        (
            "WebSocket over the Unix socket",
            WebSocket::open(Wire::unix(&daemon.socket)).call(&over),
        ),
    ];
    for (transport, reply) in &replies {
        assert_error(transport, reply, BATCH_TOO_LARGE);
        assert_eq!(
            reply["error"]["message"], "The batch request was too large",
            "{transport}: {reply}"
        );
    }
    assert_eq!(
        served(&daemon, "Host.getVMList"),
        0,
        "no call of a refused batch ran; log:\n{}",
        daemon.log()
    );

    // At the limit, a batch runs whole: the counter sees each of its calls.
    let at_limit = batch("Host.getVMList", 4, &json!({}));
    let reply = Stomp::open(Wire::unix(&daemon.socket)).call(&at_limit);
    let replies = reply.as_array().unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(replies.len(), 4, "{reply}");
    assert!(replies.iter().all(|r| r["result"].is_array()), "{reply}");
    let reply = http_call(Wire::unix(&daemon.socket), &at_limit);
    assert_eq!(reply.as_array().map(Vec::len), Some(4), "{reply}");
    assert_eq!(served(&daemon, "Host.getVMList"), 8);
}

#[test]
fn an_empty_batch_is_an_invalid_request() {
    let Some(_libvirt) = common::libvirt() else {
        return;
    };
    let daemon = Daemon::start();
    let replies = [
        (
            "STOMP over the Unix socket",
            Stomp::open(Wire::unix(&daemon.socket)).call("[]"),
        ),
        (
            "HTTP over the Unix socket",
            http_call(Wire::unix(&daemon.socket), "[]"),
        ),
        (
            "WebSocket over the Unix socket",
            WebSocket::open(Wire::unix(&daemon.socket)).call("[]"),
        ),
    ];
    for (transport, reply) in &replies {
        assert_error(transport, reply, INVALID_REQUEST);
    }
}

/// `max_request_bytes` (65536 in the test configuration) bounds a batch's text on every
/// transport, before anything of it runs: a batch of 3 calls (under `max_batch_calls`) of
/// 30000 bytes each.
#[test]
fn a_batch_over_max_request_bytes_is_refused_on_every_transport() {
    let Some(_libvirt) = common::libvirt() else {
        return;
    };
    let daemon = Daemon::start();
    let big = batch("Host.getVMList", 3, &json!({"pad": "x".repeat(30000)}));
    assert!(big.len() > 65536);

    for (transport, wire) in [
        ("STOMP over TCP", Wire::tcp(daemon.port)),
        ("STOMP over the Unix socket", Wire::unix(&daemon.socket)),
    ] {
        let mut stomp = Stomp::open(wire);
        stomp.send(&big);
        let (frame, closed) = stomp.next_frame(Duration::from_secs(10));
        let frame = frame.unwrap_or_default();
        assert!(
            frame.starts_with("ERROR\n") && frame.contains("frame body larger than 65536 bytes"),
            "{transport}: {frame:?}"
        );
        let (_, closed_after) = stomp.next_frame(Duration::from_secs(5));
        assert!(closed || closed_after, "{transport}: connection left open");
    }
    for (transport, wire) in [
        ("HTTP over TCP", Wire::tcp(daemon.port)),
        ("HTTP over the Unix socket", Wire::unix(&daemon.socket)),
    ] {
        let (status, body) = http_post(wire, &big);
        assert!(
            status.starts_with("HTTP/1.1 413"),
            "{transport}: {status}: {body}"
        );
    }
    for (transport, wire) in [
        ("WebSocket over TCP", Wire::tcp(daemon.port)),
        ("WebSocket over the Unix socket", Wire::unix(&daemon.socket)),
    ] {
        let mut ws = WebSocket::open(wire);
        ws.send(&big);
        if let Some(text) = ws.receive() {
            let reply: Value = serde_json::from_str(&text).unwrap();
            assert_error(transport, &reply, REQUEST_TOO_BIG);
        }
    }
    assert_eq!(
        served(&daemon, "Host.getVMList"),
        0,
        "no call of an oversized batch ran; log:\n{}",
        daemon.log()
    );
}

/// A daemon with `max_pending_requests = 2` that will pause the first storage look-up (the
/// failpoint `storage:stat`, as a hung mount would), and a batch of 2 calls whose first hangs
/// there.
struct HungBatch {
    f: Fixture,
    batch: String,
    marker: std::path::PathBuf,
}

impl HungBatch {
    fn new() -> HungBatch {
        let mut f = Fixture::on(Daemon::start_configured(|dir| {
            with_server(dir, "max_pending_requests = 2\nmax_batch_calls = 2\n")
        }));
        let (image, volume) = (
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
        );
        let created = f.create(&image, &volume, json!({}));
        assert_eq!(created["taskResult"], "success", "{created}");
        let marker = f.daemon.dir.path().join("paused");
        let marker_text = marker.to_str().unwrap().to_owned();
        f.daemon.restart_in_place(&[
            ("RVDSM_TEST_PAUSE_AT", "storage:stat"),
            ("RVDSM_TEST_PAUSE_MARKER", marker_text.as_str()),
        ]);
        let info = f.volume_ids(&image, &volume);
        let batch = Value::Array(vec![
            json!({"jsonrpc": "2.0", "method": "Volume.getInfo", "params": info, "id": "hung"}),
            json!({"jsonrpc": "2.0", "method": "Host.ping2", "params": {}, "id": "second"}),
        ]);
        HungBatch {
            f,
            batch: batch.to_string(),
            marker,
        }
    }

    /// Waits until the batch's first call hangs at the failpoint.
    fn wait_hung(&self) {
        assert!(
            common::wait_until(Duration::from_secs(30), || self.marker.exists()),
            "the batch's first call never reached the failpoint; log:\n{}",
            self.f.daemon.log()
        );
    }

    fn release(&self) {
        std::fs::remove_file(&self.marker).unwrap();
    }
}

/// The request sent on the connection while the batch hangs.
const AFTER: &str = r#"{"jsonrpc": "2.0", "method": "Host.ping2", "params": {}, "id": "after"}"#;

fn assert_batch_replied(reply: &Value) {
    let replies = reply.as_array().unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(replies[0]["id"], "hung", "{reply}");
    assert_eq!(replies[0]["result"]["legality"], "LEGAL", "{reply}");
    assert_eq!(replies[1]["result"], true, "{reply}");
}

fn assert_after_replied(reply: &Value) {
    assert_eq!(reply["id"], "after", "{reply}");
    assert_eq!(reply["result"], true, "{reply}");
}

/// With `max_pending_requests = 2`, a STOMP batch of 2 calls whose first hangs holds the
/// connection's whole budget: the next request of that connection waits until the batch
/// ends, then runs.
#[test]
fn each_call_of_a_stomp_batch_counts_toward_max_pending_requests() {
    let Some(_libvirt) = common::libvirt() else {
        return;
    };
    let hung = HungBatch::new();
    let mut stomp = Stomp::open(Wire::tcp(hung.f.daemon.port));
    stomp.send(&hung.batch);
    hung.wait_hung();
    stomp.send(AFTER);
    let (early, _) = stomp.next_frame(Duration::from_secs(3));
    assert!(
        early.is_none(),
        "a request ran while a batch of max_pending_requests calls was in flight: {early:?}"
    );

    hung.release();
    let (first, _) = stomp.next_frame(Duration::from_secs(30));
    assert_batch_replied(&reply_body(&first.expect("the batch's reply")));
    let (after, _) = stomp.next_frame(Duration::from_secs(30));
    assert_after_replied(&reply_body(&after.expect("the waiting request's reply")));
}

/// The same on a WebSocket, whose reader (jsonrpsee's) starts every message it reads at once:
/// the bound is kept by the RPC middleware, per connection.
#[test]
fn each_call_of_a_websocket_batch_counts_toward_max_pending_requests() {
    let Some(_libvirt) = common::libvirt() else {
        return;
    };
    let hung = HungBatch::new();
    let mut ws = WebSocket::open(Wire::unix(&hung.f.daemon.socket));
    ws.send(&hung.batch);
    hung.wait_hung();
    ws.send(AFTER);
    let early = ws.receive_within(Duration::from_secs(3));
    assert!(
        early.is_none(),
        "a request ran while a batch of max_pending_requests calls was in flight: {early:?}"
    );
    // Another connection is not held up by this one's budget.
    assert_eq!(hung.f.daemon.ok("Host.ping2", Value::Null), json!(true));

    hung.release();
    let first = ws.receive().expect("the batch's reply");
    assert_batch_replied(&serde_json::from_str(&first).unwrap());
    let after = ws.receive().expect("the waiting request's reply");
    assert_after_replied(&serde_json::from_str(&after).unwrap());
}

/// An address of this machine other than loopback, for a listener the test starts (only
/// connections from this machine to itself: nothing leaves it). On a machine with loopback
/// alone, a documentation address (TEST-NET-2) is put on `lo` for the test's duration: it is
/// not a loopback address, yet reachable only from this machine.
struct OutsideAddress {
    ip: IpAddr,
    added: bool,
}

impl OutsideAddress {
    const FALLBACK: &str = "198.51.100.26";

    fn find() -> OutsideAddress {
        let output = std::process::Command::new("ip")
            .args(["-o", "addr", "show", "scope", "global"])
            .output()
            .expect("ip(8) runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let found = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.split_whitespace();
                fields.find(|f| *f == "inet" || *f == "inet6")?;
                fields.next()?.split('/').next()?.parse::<IpAddr>().ok()
            })
            .find(|ip| !ip.is_loopback());
        if let Some(ip) = found {
            return OutsideAddress { ip, added: false };
        }
        let status = std::process::Command::new("ip")
            .args([
                "addr",
                "add",
                &format!("{}/32", Self::FALLBACK),
                "dev",
                "lo",
            ])
            .status()
            .expect("ip(8) runs");
        assert!(
            status.success(),
            "no address besides loopback, and none could be added"
        );
        OutsideAddress {
            ip: Self::FALLBACK.parse().unwrap(),
            added: true,
        }
    }
}

impl Drop for OutsideAddress {
    fn drop(&mut self) {
        if self.added {
            let _ = std::process::Command::new("ip")
                .args([
                    "addr",
                    "del",
                    &format!("{}/32", Self::FALLBACK),
                    "dev",
                    "lo",
                ])
                .status();
        }
    }
}

/// Plain TCP (`tls.enabled = false`) on the default address `::` stops rvdsmd at start, with an
/// error naming the fields, and nothing listens on the machine's other address; with
/// `allow_insecure_network = true` it starts, warns, and answers there.
#[test]
fn plain_tcp_off_loopback_stops_the_daemon_unless_allowed() {
    let Some(_libvirt) = common::libvirt() else {
        return;
    };
    let address = OutsideAddress::find();
    let outside = address.ip;
    let dir = tempfile::Builder::new()
        .prefix("rvdsmd-test")
        .tempdir()
        .unwrap();
    let config =
        with_server(dir.path(), "").replacen("address = \"127.0.0.1\"", "address = \"::\"", 1);
    std::fs::write(dir.path().join("rvdsm.toml"), &config).unwrap();
    let mut daemon = Daemon::spawn(dir, &[]);
    let port = daemon.port;
    let reachable = || TcpStream::connect_timeout(&(outside, port).into(), Duration::from_secs(2));
    let mut status = None;
    let stopped = common::wait_until(Duration::from_secs(20), || {
        status = daemon.has_exited();
        status.is_some() || reachable().is_ok()
    });
    assert!(
        stopped,
        "rvdsmd neither stopped nor listened; log:\n{}",
        daemon.log()
    );
    assert!(
        reachable().is_err(),
        "plain TCP is served on {outside} without allow_insecure_network; log:\n{}",
        daemon.log()
    );
    let status = status.expect("rvdsmd stopped");
    assert!(!status.success(), "{status}");
    let log = daemon.log();
    for field in [
        "server.tls.enabled = false",
        "server.address = ::",
        "server.allow_insecure_network",
    ] {
        assert!(log.contains(field), "{field} not named; log:\n{log}");
    }
    assert!(
        !daemon.socket.exists(),
        "a refused configuration must not start any listener"
    );

    // Said on purpose: it serves on the network, with a warning.
    let config = config.replacen("[server]\n", "[server]\nallow_insecure_network = true\n", 1);
    std::fs::write(daemon.dir.path().join("rvdsm.toml"), config).unwrap();
    daemon.restart_in_place(&[]);
    let mut stream = reachable()
        .unwrap_or_else(|e| panic!("not served on {outside}: {e}; log:\n{}", daemon.log()));
    let body = r#"{"jsonrpc":"2.0","method":"Host.ping2","id":1}"#;
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.contains(r#""result":true"#), "{answer}");
    assert!(
        daemon.log().contains("TLS is disabled"),
        "no warning at start; log:\n{}",
        daemon.log()
    );
}
