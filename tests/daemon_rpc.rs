//! rvdsmd as a manager and an operator meet it: a real daemon process, a real libvirtd and a
//! real guest, over the Unix socket, TCP (HTTP and WebSocket) and the CLI.

mod common;

use common::daemon::{Via, cli};
use common::{Daemon, Guest, GuestOptions, libvirt};
use rvdsm::client::ClientError;
use std::time::Duration;

use serde_json::{Value, json};

const UNKNOWN_VM: &str = "0b5fd8f4-5c5e-4a5e-9d55-9cb1c0b5e1a7";

fn vm_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|vm| vm["vmId"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn vm_list_and_stats_show_a_running_guest_over_unix_and_tcp() {
    let Some(conn) = libvirt() else { return };
    let options = GuestOptions {
        with_backing: true,
        ..GuestOptions::default()
    };
    let guest = Guest::start(&conn, &options);
    let daemon = Daemon::start();

    for via in [Via::Unix, Via::Tcp] {
        let list = daemon.call(via, "Host.getVMList", Value::Null).unwrap();
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|vm| vm["vmId"] == guest.uuid.as_str())
            .unwrap_or_else(|| panic!("{} not listed over {via:?}: {list}", guest.uuid));
        assert_eq!(entry["status"], "Up");
        let time: u64 = entry["statusTime"].as_str().unwrap().parse().unwrap();
        assert!(
            time > 0,
            "statusTime is a string of milliseconds, as VDSM sends it"
        );
    }

    let only = daemon.ok("Host.getVMList", json!({"vmList": [guest.uuid]}));
    assert_eq!(vm_ids(&only), std::slice::from_ref(&guest.uuid));
    let none = daemon.ok("Host.getVMList", json!({"vmList": [UNKNOWN_VM]}));
    assert!(vm_ids(&none).is_empty());

    let stats = daemon.ok("VM.getStats", json!({"vmID": guest.uuid}));
    let stats = &stats.as_array().unwrap()[0];
    assert_eq!(stats["vmId"], guest.uuid.as_str());
    assert_eq!(stats["vmName"], guest.name.as_str());
    assert_eq!(stats["status"], "Up");
    let vda = &stats["disks"]["vda"];
    assert_eq!(vda["path"], guest.disk.to_str().unwrap());
    assert_eq!(vda["format"], "qcow2");
    let base = guest.dir.path().join("base.qcow2");
    assert_eq!(vda["backingChain"][0]["path"], base.to_str().unwrap());
    assert_eq!(vda["backingChain"].as_array().unwrap().len(), 1);

    // Positional parameters, as VDSM also accepts them.
    let positional = daemon.ok("VM.getStats", json!([guest.uuid]));
    assert_eq!(positional[0]["vmId"], guest.uuid.as_str());
}

#[test]
fn paused_guest_is_reported_paused() {
    let Some(conn) = libvirt() else { return };
    let guest = Guest::start(&conn, &GuestOptions::default());
    let daemon = Daemon::start();
    // The stats come from the monitoring cache, which libvirt's lifecycle event updates at
    // once (well within a second), not at the next 15-second sample.
    let status_becomes = |want: &str| {
        common::wait_until(Duration::from_secs(5), || {
            daemon.ok("VM.getStats", json!({"vmID": guest.uuid}))[0]["status"] == want
        })
    };
    guest.domain().suspend().unwrap();
    assert!(status_becomes("Paused"));
    guest.domain().resume().unwrap();
    assert!(status_becomes("Up"));
}

#[test]
fn capabilities_describe_the_host() {
    let Some(_conn) = libvirt() else { return };
    let daemon = Daemon::start();
    let caps = daemon.ok("Host.getCapabilities", Value::Null);
    assert_eq!(caps["liveSnapshot"], "true");
    assert_eq!(caps["software_version"], rvdsm::VERSION);
    assert!(
        uuid::Uuid::parse_str(caps["uuid"].as_str().unwrap()).is_ok(),
        "{caps}"
    );
    let libvirt_version = caps["packages2"]["libvirt"]["version"].as_str().unwrap();
    assert!(libvirt_version.split('.').count() == 3 && !libvirt_version.starts_with("0."));
    assert!(caps["packages2"]["qemu-kvm"]["version"].is_string());
    let verbs: Vec<_> = caps["supportedVerbs"].as_array().unwrap().iter().collect();
    assert!(verbs.contains(&&json!("VM.getStats")));
}

#[test]
fn bad_input_gets_a_clear_error_and_disturbs_nothing() {
    let Some(_conn) = libvirt() else { return };
    let daemon = Daemon::start();

    let (code, message) = daemon.err("VM.noSuchVerb", Value::Null);
    assert_eq!(code, -32601);
    assert_eq!(
        message,
        "The method does not exist or is not available: {'method': 'VM.noSuchVerb'}"
    );

    let (code, message) = daemon.err("VM.getStats", json!({}));
    assert_eq!(code, -32602);
    assert!(message.contains("vmID"), "{message}");
    assert!(
        message.starts_with("Invalid method parameter(s): {'reason': "),
        "{message}"
    );

    // VDSM looks the VM up first: an unknown VM is 1 even when the request is also invalid.
    let (code, message) = daemon.err("VM.snapshot", json!({"vmID": UNKNOWN_VM, "snapDrives": []}));
    assert_eq!(code, 1, "{message}");
    // A string for a number is taken as VDSM takes it, and the value's rule then applies.
    let (code, message) = daemon.err(
        "VM.snapshot",
        json!({"vmID": UNKNOWN_VM, "snapDrives": [], "timeout": "0"}),
    );
    assert_eq!(code, 1, "{message}");

    let (code, message) = daemon.err("VM.getStats", json!({"vmID": "../../etc/passwd"}));
    assert_eq!(code, -32602);
    assert!(message.contains("'vmID'"), "{message}");

    let (code, message) = daemon.err("VM.getStats", json!({"vmID": 42}));
    assert_eq!(code, -32602);
    assert!(message.contains("'vmID'"), "{message}");

    let (code, message) = daemon.err("Host.getVMList", json!({"vmList": "not a list"}));
    assert_eq!(code, -32602);
    assert!(message.contains("vmList"), "{message}");

    let (code, message) = daemon.err("VM.getStats", json!({"vmID": UNKNOWN_VM}));
    assert_eq!(code, 1);
    assert_eq!(
        message,
        format!("Virtual machine does not exist: {{'vmId': '{UNKNOWN_VM}'}}")
    );

    let body = r#"{"jsonrpc":"2.0","id":1,"method":"Host.ping2""#;
    let answer = daemon.raw_tcp(http_post(body, body.len()).as_bytes());
    assert!(answer.contains("-32700"), "{answer}");

    // A declared body over the limit is refused from its headers, before any of it is sent.
    let answer = daemon.raw_tcp(http_post("", 10 * 1024 * 1024).as_bytes());
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A body without a declared length is refused before it is read.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"Host.ping2","params":{{"pad":"{}"}}}}"#,
        "x".repeat(100 * 1024)
    );
    let chunked = format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let answer = daemon.raw_tcp(chunked.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 411"), "{answer}");

    // The daemon still serves everyone.
    assert_eq!(daemon.ok("Host.ping2", Value::Null), json!(true));
    assert!(daemon.call(Via::Tcp, "Host.getVMList", Value::Null).is_ok());
}

fn http_post(body: &str, declared_length: usize) -> String {
    format!(
        "POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {declared_length}\r\n\r\n{body}"
    )
}

#[test]
fn cli_works_as_an_operator_uses_it() {
    let Some(conn) = libvirt() else { return };
    let guest = Guest::start(&conn, &GuestOptions::default());
    let daemon = Daemon::start();

    let (code, out, err) = cli(&daemon, &["Host", "getVMList"]);
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert!(vm_ids(&list).contains(&guest.uuid), "{out}");

    let vm_id = format!("vmID={}", guest.uuid);
    let (code, out, _) = cli(&daemon, &["VM", "getStats", &vm_id]);
    assert_eq!(code, 0);
    assert!(out.contains("\"vda\""), "{out}");

    let list_filter = format!("vmList=[\"{}\"]", guest.uuid);
    let (code, out, _) = cli(&daemon, &["Host", "getVMList", &list_filter]);
    assert_eq!(code, 0);
    let listed = vm_ids(&serde_json::from_str(&out).unwrap());
    assert_eq!(listed, std::slice::from_ref(&guest.uuid));

    let unknown = format!("vmID={UNKNOWN_VM}");
    let (code, out, err) = cli(&daemon, &["VM", "getStats", &unknown]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("code=1") && err.contains(UNKNOWN_VM), "{err}");

    let (code, _, err) = cli(&daemon, &["VM", "getStats", "novalue"]);
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = cli(&daemon, &["VM", "getStats", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("vmID (UUID, required)"), "{out}");
    let (code, out, _) = cli(&daemon, &["--list"]);
    assert_eq!(code, 0);
    assert!(out.contains("Host.getVMList"));

    let params = daemon.dir.path().join("params.json");
    std::fs::write(&params, format!(r#"{{"vmID": "{}"}}"#, guest.uuid)).unwrap();
    let (code, out, _) = cli(&daemon, &["VM", "getStats", "-f", params.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains(&guest.uuid));
}

#[test]
fn cli_without_daemon_exits_3() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rvdsm"))
        .args(["--socket", "/nonexistent/rvdsm.sock", "Host", "ping2"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot connect"));
}

#[test]
fn socket_is_private_and_sigterm_exits_cleanly() {
    use std::os::unix::fs::PermissionsExt;
    let mut daemon = Daemon::start();
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let status = daemon.terminate();
    assert!(status.success(), "exit {status:?}; log:\n{}", daemon.log());
    assert!(!daemon.socket.exists(), "socket left behind");
    assert!(matches!(
        daemon.call(Via::Unix, "Host.ping2", Value::Null),
        Err(ClientError::Connect { .. })
    ));
}

#[test]
fn unknown_config_field_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rvdsm.toml");
    std::fs::write(&config, "[server]\nprot = 1\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rvdsmd"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("prot"), "{stderr}");
}

#[test]
fn a_second_daemon_does_not_steal_the_socket() {
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rvdsm.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ntcp_enabled = false\nunix_socket = \"{}\"\n[daemon]\nstate_dir = \"{}\"\n",
            daemon.socket.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rvdsmd"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already listening"));
    assert_eq!(daemon.ok("Host.ping2", Value::Null), json!(true));
}

#[test]
fn plain_http_posts_work_on_tcp_and_on_the_unix_socket() {
    use std::io::{Read, Write};
    let daemon = Daemon::start();
    let body = r#"{"jsonrpc":"2.0","id":7,"method":"Host.ping2"}"#;
    let request = http_post(body, body.len());

    let answer = daemon.raw_tcp(request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with(r#"{"jsonrpc":"2.0","id":7,"result":true}"#),
        "{answer}"
    );

    let mut stream = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let closing = request.replacen(
        "Host: localhost\r\n",
        "Host: localhost\r\nConnection: close\r\n",
        1,
    );
    stream.write_all(closing.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.ends_with(r#"{"jsonrpc":"2.0","id":7,"result":true}"#),
        "{answer}"
    );
}

#[test]
fn daemon_tells_systemd_it_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    let config = dir.path().join("rvdsm.toml");
    let socket = dir.path().join("rvdsm.sock");
    std::fs::write(
        &config,
        format!(
            "[server]\ntcp_enabled = false\nunix_socket = \"{}\"\n[daemon]\nstate_dir = \"{}\"\n",
            socket.display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rvdsmd"))
        .arg("--config")
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let received = listener.recv(&mut buf);
    // Ready means ready: the socket is in place once the notification is sent.
    let socket_ready = socket.exists();
    let _ = child.kill();
    let _ = child.wait();
    let n = received.expect("no readiness notification");
    let message = String::from_utf8_lossy(&buf[..n]);
    assert!(message.contains("READY=1"), "{message}");
    assert!(socket_ready, "READY=1 sent before the socket was bound");
}
