//! JSON-RPC over STOMP against a real rvdsmd: what VDSM's managers send (vdsm-client's frames),
//! each verb family through the same registry, VDSM's ERROR texts, heart-beats, batches,
//! protocol detection on the one port, bad input, slow consumers and the connection limit.
//! Plain TCP here; mutual TLS is in `tls.rs`.

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use common::stomp::{self, Raw, frame};
use rvdsm::client::ClientError;
use serde_json::{Value, json};

const UNKNOWN_VM: &str = "11111111-2222-3333-4444-555555555555";

fn connected(raw: &mut Raw) {
    raw.send(&frame("CONNECT", &[("accept-version", "1.2")], ""))
        .unwrap();
    let answer = raw.read_until("\0", Duration::from_secs(5));
    assert!(answer.starts_with("CONNECTED\n"), "{answer:?}");
}

#[test]
fn verbs_answer_over_stomp_as_vdsm_shapes_them() {
    let Some(_libvirt) = common::libvirt() else {
        return;
    };
    let daemon = Daemon::start();
    let rt = stomp::runtime();
    rt.block_on(async {
        let client = stomp::over_tcp(daemon.port, false).await;
        let pong = client.call("Host.ping2", json!({}), None).await.unwrap();
        assert_eq!(pong, Value::Bool(true));
        let vms = client
            .call("Host.getVMList", json!({}), Some("flow-abc"))
            .await
            .unwrap();
        assert!(vms.is_array(), "{vms}");
        match client
            .call("VM.freeze", json!({"vmID": UNKNOWN_VM}), None)
            .await
        {
            Err(ClientError::Server { code, message }) => {
                assert_eq!(code, 1);
                assert!(
                    message.starts_with("Virtual machine does not exist"),
                    "{message}"
                );
            }
            other => panic!("expected NoSuchVM, got {other:?}"),
        }
        let domains = client
            .call("Host.getStorageDomains", json!([]), None)
            .await
            .unwrap();
        assert!(domains.is_array());
        match client.call("Host.noSuchVerb", json!({}), None).await {
            Err(ClientError::Server { code, .. }) => assert_eq!(code, -32601),
            other => panic!("expected -32601, got {other:?}"),
        }
        let unix = stomp::over_unix(&daemon.socket).await;
        assert_eq!(
            unix.call("Host.ping2", json!({}), None).await.unwrap(),
            Value::Bool(true)
        );
    });
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("flow-abc") && l.contains("Host.getVMList")),
        "the flow id is not in the request's log line:\n{log}"
    );
}

#[test]
fn vdsm_client_frames_get_vdsm_replies() {
    let daemon = Daemon::start();
    let mut raw = Raw::connect(daemon.port);
    // Byte-exact frames captured from vdsm-client (VDSM-REFERENCE §6.2).
    raw.send(b"CONNECT\naccept-version:1.2\nheart-beat:0,24000\n\n\0")
        .unwrap();
    let answer = raw.read_until("\0", Duration::from_secs(5));
    assert_eq!(answer, "CONNECTED\nversion:1.2\nheart-beat:24000,0\n\n\0");
    raw.send(b"SUBSCRIBE\ndestination:reply-q\nack:auto\nid:sub-1\n\n\0")
        .unwrap();
    let body = r#"[{"jsonrpc": "2.0", "method": "Host.ping2", "params": {}, "id": "req-1"}]"#;
    raw.send(&frame(
        "SEND",
        &[
            ("destination", "jms.topic.vdsm_requests"),
            ("content-type", "application/json"),
            ("reply-to", "reply-q"),
            ("content-length", &body.len().to_string()),
        ],
        body,
    ))
    .unwrap();
    let reply = raw.read_until("\0", Duration::from_secs(5));
    // VDSM's text, as vdsm-client received it (Python's separators).
    let expected_body = r#"{"jsonrpc": "2.0", "id": "req-1", "result": true}"#;
    assert_eq!(
        reply,
        format!(
            "MESSAGE\ndestination:reply-q\ncontent-type:application/json\nsubscription:sub-1\n\
             content-length:{}\n\n{expected_body}\0",
            expected_body.len()
        )
    );
}

#[test]
fn batches_notifications_and_child_queues() {
    let daemon = Daemon::start();
    let mut raw = Raw::connect(daemon.port);
    connected(&mut raw);
    raw.send(&frame(
        "SUBSCRIBE",
        &[("destination", "r"), ("id", "s")],
        "",
    ))
    .unwrap();
    let send = |body: &str, destination: &str| {
        frame(
            "SEND",
            &[("destination", destination), ("reply-to", "r")],
            body,
        )
    };
    let two = r#"[{"jsonrpc":"2.0","method":"Host.ping2","id":1},{"jsonrpc":"2.0","method":"Host.ping2","id":2}]"#;
    raw.send(&send(two, "jms.topic.vdsm_irs_requests.child"))
        .unwrap();
    let reply = raw.read_until("\0", Duration::from_secs(5));
    let body = reply.split("\n\n").nth(1).unwrap().trim_end_matches('\0');
    let parsed: Value = serde_json::from_str(body).unwrap();
    assert_eq!(parsed.as_array().map(Vec::len), Some(2), "{body}");
    // A notification runs but gets no reply; the next request's reply comes alone.
    raw.send(&send(
        r#"{"jsonrpc":"2.0","method":"Host.ping2"}"#,
        "jms.topic.vdsm_requests",
    ))
    .unwrap();
    raw.send(&send(
        r#"{"jsonrpc":"2.0","method":"Host.ping2","id":"x"}"#,
        "jms.topic.vdsm_requests",
    ))
    .unwrap();
    let reply = raw.read_until("\0", Duration::from_secs(5));
    assert!(reply.contains(r#""id": "x""#), "{reply}");
    let (more, _) = raw.read_for(Duration::from_millis(300));
    assert!(more.is_empty(), "unexpected frame: {more:?}");
    // Broken JSON gets JSON-RPC's parse error.
    raw.send(&send("{not json", "jms.topic.vdsm_requests"))
        .unwrap();
    let reply = raw.read_until("\0", Duration::from_secs(5));
    assert!(reply.contains("-32700"), "{reply}");
}

#[test]
fn bad_frames_get_vdsm_errors_and_the_connection_stays_when_vdsm_keeps_it() {
    let daemon = Daemon::start();
    let mut raw = Raw::connect(daemon.port);
    let cases: [(Vec<u8>, &str); 5] = [
        (
            frame("CONNECT", &[("accept-version", "1.1")], ""),
            "Version unsupported",
        ),
        (
            frame("SUBSCRIBE", &[("destination", "x")], ""),
            "Missing destination or subscription id header",
        ),
        (frame("UNSUBSCRIBE", &[], ""), "Missing id header"),
        (
            frame("SEND", &[("reply-to", "r")], "{}"),
            "Missing destination header",
        ),
        (
            frame("SEND", &[("destination", "nobody.listens")], "{}"),
            "Subscription not available",
        ),
    ];
    for (bytes, error) in cases {
        raw.send(&bytes).unwrap();
        let answer = raw.read_until("\0", Duration::from_secs(5));
        assert!(
            answer.starts_with("ERROR\n") && answer.contains(error),
            "expected ERROR {error:?}, got {answer:?}"
        );
    }
    raw.send(&frame(
        "SUBSCRIBE",
        &[("destination", "x"), ("id", "1")],
        "",
    ))
    .unwrap();
    raw.send(&frame(
        "SUBSCRIBE",
        &[("destination", "y"), ("id", "1")],
        "",
    ))
    .unwrap();
    let answer = raw.read_until("\0", Duration::from_secs(5));
    assert!(
        answer.contains("Subscription id already exists"),
        "{answer}"
    );
    // DISCONNECT with a receipt: RECEIPT, then the server closes.
    raw.send(&frame("DISCONNECT", &[("receipt", "bye")], ""))
        .unwrap();
    let (answer, closed) = raw.read_for(Duration::from_secs(3));
    assert!(
        answer.starts_with("RECEIPT\nreceipt-id:bye\n"),
        "{answer:?}"
    );
    assert!(closed);
}

#[test]
fn malformed_input_closes_only_that_connection() {
    let daemon = Daemon::start();
    let huge_header = format!("SEND\nk:{}\n\n\0", "v".repeat(70 * 1024));
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "header without colon",
            b"SEND\nnocolon\n\n\0".to_vec(),
            true,
        ),
        ("invalid escape", b"SEND\nk:a\\tb\n\n\0".to_vec(), true),
        (
            "wrong content-length",
            b"SEND\ncontent-length:2\n\nhello\0".to_vec(),
            true,
        ),
        (
            "body over the request limit",
            b"SEND\ncontent-length:100000\n\n".to_vec(),
            true,
        ),
        ("oversized headers", huge_header.into_bytes(), true),
        (
            "unsupported command",
            b"CONNECT\naccept-version:1.2\n\n\0ACK\nid:1\n\n\0".to_vec(),
            false,
        ),
        (
            "not a protocol",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00".to_vec(),
            false,
        ),
        ("lower-case command", b"connect\n\n\0".to_vec(), false),
        (
            "HTTP method it does not serve",
            b"DELETE / HTTP/1.1\r\n\r\n".to_vec(),
            false,
        ),
    ];
    for (what, bytes, error_frame) in cases {
        let mut raw = Raw::connect(daemon.port);
        let _ = raw.send(&bytes);
        let (answer, closed) = raw.read_for(Duration::from_secs(3));
        assert!(closed, "{what}: connection left open; got {answer:?}");
        if error_frame {
            assert!(
                answer.contains("ERROR\n"),
                "{what}: no ERROR frame: {answer:?}"
            );
        } else {
            assert!(!answer.contains("ERROR"), "{what}: {answer:?}");
        }
    }
    let rt = stomp::runtime();
    rt.block_on(async {
        let client = stomp::over_tcp(daemon.port, false).await;
        assert_eq!(
            client.call("Host.ping2", json!({}), None).await.unwrap(),
            Value::Bool(true),
            "the daemon stopped serving after bad input"
        );
    });
}

#[test]
fn silent_clients_are_dropped_and_http_shares_the_port() {
    let daemon = Daemon::start();
    let mut silent = Raw::connect(daemon.port);
    let started = Instant::now();
    let (answer, closed) = silent.read_for(Duration::from_secs(15));
    assert!(closed && answer.is_empty(), "{answer:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(13),
        "closed after {waited:?}, expected about 10 s"
    );
    // The same port serves JSON-RPC over HTTP and WebSocket.
    let body = r#"{"jsonrpc":"2.0","method":"Host.ping2","id":7}"#;
    let answer = daemon.raw_tcp(
        format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert!(answer.contains(r#""result":true"#), "{answer}");
    daemon.assert_pings_over_tcp();
}

#[test]
fn heart_beats_are_negotiated_sent_and_enforced() {
    let daemon = Daemon::start();
    let mut raw = Raw::connect(daemon.port);
    // The client promises a beat every 200 ms (raised to 1000) and wants one every 300 (1000).
    raw.send(&frame(
        "CONNECT",
        &[("accept-version", "1.0,1.2"), ("heart-beat", "200,300")],
        "",
    ))
    .unwrap();
    let answer = raw.read_until("\0", Duration::from_secs(5));
    assert!(answer.contains("heart-beat:1000,1000"), "{answer:?}");
    // Keep beating for 2.5 s: the server beats too, and keeps the connection.
    let mut beats = 0;
    for _ in 0..5 {
        raw.send(b"\n").unwrap();
        let (got, closed) = raw.read_for(Duration::from_millis(500));
        assert!(!closed, "closed although the client beat");
        beats += got.matches('\n').count();
    }
    assert!(beats >= 2, "server sent {beats} heart-beats in 2.5 s");
    // Stop beating: the server closes within two promised intervals (plus slack).
    let started = Instant::now();
    let (_, closed) = raw.read_for(Duration::from_secs(5));
    assert!(
        closed,
        "connection kept although the client stopped beating"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn a_client_that_stops_reading_does_not_stall_others() {
    let daemon = Daemon::start();
    let mut hog = Raw::connect(daemon.port);
    connected(&mut hog);
    hog.send(&frame(
        "SUBSCRIBE",
        &[("destination", "r"), ("id", "s")],
        "",
    ))
    .unwrap();
    // Many requests whose replies the hog never reads: its socket buffers fill, its
    // queue fills, its replies are dropped and its reading paused; nobody else notices.
    let request = frame(
        "SEND",
        &[
            ("destination", "jms.topic.vdsm_requests"),
            ("reply-to", "r"),
        ],
        r#"{"jsonrpc":"2.0","method":"Host.ping2","id":1}"#,
    );
    // Far more replies than loopback socket buffers hold (about 20 MiB of them).
    let flood: Vec<u8> = request.repeat(200_000);
    let writer = std::thread::spawn(move || {
        let _ = hog.send(&flood);
        hog
    });
    std::thread::sleep(Duration::from_secs(2));
    let rt = stomp::runtime();
    rt.block_on(async {
        let client = stomp::over_tcp(daemon.port, false).await;
        for _ in 0..20 {
            let started = Instant::now();
            assert_eq!(
                client.call("Host.ping2", json!({}), None).await.unwrap(),
                Value::Bool(true)
            );
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "a ping took {:?} behind a stalled client",
                started.elapsed()
            );
        }
    });
    drop(writer);
    let logged = common::wait_until(Duration::from_secs(30), || {
        daemon.log().contains("not reading")
    });
    assert!(logged, "the dropped replies were not logged");
}

#[test]
fn connections_over_the_limit_are_closed_at_once() {
    let daemon = Daemon::start_configured(|dir| {
        common::daemon::test_config(dir, "")
            .replace("[server]\n", "[server]\nmax_connections = 8\n")
    });
    let mut idle: Vec<Raw> = (0..8).map(|_| Raw::connect(daemon.port)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = Raw::connect(daemon.port);
    let (_, closed) = extra.read_for(Duration::from_secs(2));
    assert!(closed, "the ninth connection was served");
    // The Unix socket has its own limit; and once the idle ones leave, TCP serves again.
    assert_eq!(daemon.ok("Host.ping2", json!({})), Value::Bool(true));
    idle.clear();
    std::thread::sleep(Duration::from_millis(300));
    daemon.assert_pings_over_tcp();
}

#[test]
fn ten_thousand_idle_connections_are_bounded_by_the_limit() {
    let daemon = Daemon::start();
    let baseline = daemon.open_fds();
    let mut idle = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        match std::net::TcpStream::connect(("127.0.0.1", daemon.port)) {
            Ok(stream) => idle.push(stream),
            Err(err) => panic!("connect failed after {} connections: {err}", idle.len()),
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let open = daemon.open_fds();
    assert!(
        open <= baseline + 256 + 16,
        "{open} descriptors open with 10000 idle clients (baseline {baseline}, limit 256)"
    );
    // The Unix socket has its own limit and still serves.
    let rt = stomp::runtime();
    rt.block_on(async {
        let client = stomp::over_unix(&daemon.socket).await;
        assert_eq!(
            client.call("Host.ping2", json!({}), None).await.unwrap(),
            Value::Bool(true)
        );
    });
    // Idle connections are dropped after the detection deadline; then TCP serves again.
    let drained = common::wait_until(Duration::from_secs(20), || {
        daemon.open_fds() <= baseline + 16
    });
    assert!(drained, "{} descriptors still open", daemon.open_fds());
    drop(idle);
    daemon.assert_pings_over_tcp();
}

/// rvdsmd's resident memory, in MiB.
fn rss_mib(daemon: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// Issue 13, item 6: an authenticated STOMP client cannot grow rvdsmd without bound. Before,
/// 400 frames of 1 MiB sent to a destination the client subscribed to but never read took
/// rvdsmd from 26 to 439 MB, and 10,000 SUBSCRIBEs with 8 KB destinations to 191 MB. Now a
/// connection's queue holds at most 32 MiB (messages beyond are dropped), a connection holds
/// at most 64 subscriptions, and destinations are at most 256 bytes.
#[test]
fn a_client_that_never_reads_or_subscribes_without_end_keeps_rvdsmd_bounded() {
    let mut daemon = Daemon::start();
    daemon.set_server_setting("max_request_bytes", "2097152");
    let baseline = rss_mib(&daemon);

    let mut raw = Raw::connect(daemon.port);
    connected(&mut raw);
    raw.send(&frame(
        "SUBSCRIBE",
        &[("destination", "x"), ("id", "1")],
        "",
    ))
    .unwrap();
    let body = "m".repeat(1 << 20);
    let message = frame("SEND", &[("destination", "x")], &body);
    for _ in 0..400 {
        raw.send(&message).unwrap();
    }
    // Every frame was read (the broker never waits on a reader): the daemon still answers.
    let rt = stomp::runtime();
    rt.block_on(async {
        let client = stomp::over_tcp(daemon.port, false).await;
        assert_eq!(
            client.call("Host.ping2", json!({}), None).await.unwrap(),
            Value::Bool(true)
        );
    });
    let grown = rss_mib(&daemon).saturating_sub(baseline);
    assert!(
        grown < 96,
        "rvdsmd grew {grown} MiB for a client that never reads"
    );
    assert!(daemon.log().contains("messages dropped"));

    // Subscriptions: 10,000 with 8 KB destinations, the answers read as they come.
    let mut subscriber = Raw::connect(daemon.port);
    connected(&mut subscriber);
    let long = "d".repeat(8192);
    let mut refused = 0;
    for i in 0..10_000 {
        let id = i.to_string();
        let destination = if i % 2 == 0 {
            long.as_str()
        } else {
            "jms.topic.y"
        };
        subscriber
            .send(&frame(
                "SUBSCRIBE",
                &[("destination", destination), ("id", &id)],
                "",
            ))
            .unwrap();
        if i % 100 == 99 {
            let (answers, closed) = subscriber.read_for(Duration::from_millis(20));
            assert!(!closed);
            refused += answers.matches("ERROR").count();
        }
    }
    let (answers, _) = subscriber.read_for(Duration::from_millis(500));
    refused += answers.matches("ERROR").count();
    assert!(refused >= 10_000 - 64, "{refused} refusals");
    let grown = rss_mib(&daemon).saturating_sub(baseline);
    assert!(grown < 96, "rvdsmd grew {grown} MiB with subscriptions");
    drop(raw);
}
