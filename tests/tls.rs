//! Mutual TLS on the management port against a real rvdsmd, with certificates made in the
//! test: a valid client gets STOMP and WebSocket; a client with no certificate, an untrusted
//! one or an expired one, and a plain-text client, get no byte of the API; certificates are
//! reloaded on SIGHUP without dropping open connections; the CLI speaks TLS.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::Daemon;
use common::stomp::{self, Raw};
use rvdsm::client::{Client, Endpoint};
use rvdsm::pki::{Authority, Role, write_new};
use rvdsm::rpc::tls::TlsFiles;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// Writes a CA's certificate and a certificate it issued for `role` into `dir`.
fn issue(
    dir: &Path,
    ca: &Authority,
    role: Role,
    not_after: OffsetDateTime,
    name: &str,
) -> TlsFiles {
    let names = ["localhost".to_owned(), "127.0.0.1".to_owned()];
    let issued = ca.issue(name, &names, role, not_after).unwrap();
    let files = TlsFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
        ca: dir.join(format!("{name}-ca.pem")),
    };
    write_new(&files.cert, &issued.cert_pem, 0o644).unwrap();
    write_new(&files.key, &issued.key_pem, 0o600).unwrap();
    write_new(&files.ca, &ca.certificate().cert_pem, 0o644).unwrap();
    files
}

fn in_ten_years() -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::days(3650)
}

/// A daemon with mutual TLS, its server files issued by `ca`.
fn tls_daemon(pki: &Path, ca: &Authority) -> Daemon {
    let server = issue(pki, ca, Role::Server, in_ten_years(), "server");
    Daemon::start_tls(&server)
}

#[test]
fn only_clients_with_a_trusted_valid_certificate_reach_the_api() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Authority::new("test CA").unwrap();
    let daemon = tls_daemon(pki.path(), &ca);
    let good = issue(pki.path(), &ca, Role::Client, in_ten_years(), "good");
    let stranger_ca = Authority::new("stranger CA").unwrap();
    let untrusted = issue(
        pki.path(),
        &stranger_ca,
        Role::Client,
        in_ten_years(),
        "untrusted",
    );
    let mut expired = issue(
        pki.path(),
        &ca,
        Role::Client,
        OffsetDateTime::now_utc() - time::Duration::hours(1),
        "expired",
    );
    // The expired client still trusts the right CA: only its own certificate is at fault.
    expired.ca = good.ca.clone();
    let mut untrusted_client = untrusted.clone();
    untrusted_client.ca = good.ca.clone();

    let rt = stomp::runtime();
    rt.block_on(async {
        let client = stomp::over_tls(daemon.port, &good).await.unwrap();
        assert_eq!(
            client.call("Host.ping2", json!({}), None).await.unwrap(),
            Value::Bool(true)
        );
        let ws = Client::connect(
            &Endpoint::Tcp {
                host: "localhost".into(),
                port: daemon.port,
                tls: Some(good.clone()),
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(
            ws.call("Host.ping2", json!({})).await.unwrap(),
            Value::Bool(true)
        );
        for (what, files) in [("untrusted", &untrusted_client), ("expired", &expired)] {
            let result = stomp::over_tls(daemon.port, files).await;
            assert!(result.is_err(), "{what} certificate was accepted");
        }
        // A client that trusts the server but presents no certificate at all.
        let no_cert = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates({
                let mut roots = rustls::RootCertStore::empty();
                let pem = std::fs::read(&good.ca).unwrap();
                for cert in rustls_pemfile_certs(&pem) {
                    roots.add(cert).unwrap();
                }
                roots
            })
            .with_no_client_auth(),
        );
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", daemon.port))
            .await
            .unwrap();
        let connected = tokio_rustls::TlsConnector::from(no_cert)
            .connect(rvdsm::rpc::tls::server_name("localhost").unwrap(), stream)
            .await;
        if let Ok(stream) = connected {
            let result =
                rvdsm::client::StompClient::connect(stream, Duration::from_secs(5), false).await;
            assert!(result.is_err(), "a client without a certificate was served");
        }
    });
    // A plain-text client on the TLS port gets nothing of the API.
    let mut plain = Raw::connect(daemon.port);
    plain.send(b"CONNECT\naccept-version:1.2\n\n\0").unwrap();
    let (answer, closed) = plain.read_for(Duration::from_secs(3));
    assert!(closed, "plain client kept open");
    assert!(!answer.contains("CONNECTED"), "{answer:?}");
    let log = daemon.log();
    assert!(log.contains("TLS handshake failed"), "{log}");
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn sighup_reloads_certificates_without_dropping_connections() {
    let pki = tempfile::tempdir().unwrap();
    let old_ca = Authority::new("old CA").unwrap();
    let daemon = tls_daemon(pki.path(), &old_ca);
    let old_client = issue(pki.path(), &old_ca, Role::Client, in_ten_years(), "old");
    let rt = stomp::runtime();
    let open = rt.block_on(async { stomp::over_tls(daemon.port, &old_client).await.unwrap() });

    // New CA: rewrite the server's files in place, then SIGHUP.
    let new_ca = Authority::new("new CA").unwrap();
    let staged = tempfile::tempdir().unwrap();
    let new_server = issue(
        staged.path(),
        &new_ca,
        Role::Server,
        in_ten_years(),
        "server",
    );
    for (from, to) in [
        (&new_server.cert, "server.pem"),
        (&new_server.key, "server-key.pem"),
        (&new_server.ca, "server-ca.pem"),
    ] {
        std::fs::copy(from, pki.path().join(to)).unwrap();
    }
    let new_client = issue(pki.path(), &new_ca, Role::Client, in_ten_years(), "new");
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let reloaded = common::wait_until(Duration::from_secs(10), || {
        daemon.log().contains("TLS certificates reloaded")
    });
    assert!(reloaded, "no reload logged:\n{}", daemon.log());

    rt.block_on(async {
        let client = stomp::over_tls(daemon.port, &new_client).await.unwrap();
        assert_eq!(
            client.call("Host.ping2", json!({}), None).await.unwrap(),
            Value::Bool(true)
        );
        assert!(
            stomp::over_tls(daemon.port, &old_client).await.is_err(),
            "the old CA is still trusted after the reload"
        );
        assert_eq!(
            open.call("Host.ping2", json!({}), None).await.unwrap(),
            Value::Bool(true),
            "the connection opened before the reload was dropped"
        );
    });

    // A broken file on reload keeps the working certificates.
    std::fs::write(pki.path().join("server.pem"), "garbage").unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let refused = common::wait_until(Duration::from_secs(10), || {
        daemon.log().contains("certificates NOT reloaded")
    });
    assert!(refused, "{}", daemon.log());
    rt.block_on(async {
        let client = stomp::over_tls(daemon.port, &new_client).await.unwrap();
        assert_eq!(
            client.call("Host.ping2", json!({}), None).await.unwrap(),
            Value::Bool(true)
        );
    });
}

#[test]
fn cli_speaks_tls_and_pki_init_makes_working_certificates() {
    let pki = tempfile::tempdir().unwrap();
    let lab = pki.path().join("lab");
    let rvdsm = env!("CARGO_BIN_EXE_rvdsm");
    let made = Command::new(rvdsm)
        .args(["pki", "init", lab.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let again = Command::new(rvdsm)
        .args(["pki", "init", lab.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success(), "pki init overwrote its files");
    let files = rvdsm::pki::LabFiles::in_dir(&lab);

    let daemon = Daemon::start_tls(&files.server);
    let port = daemon.port.to_string();
    let run = |extra: &[&str]| {
        Command::new(rvdsm)
            .args(["--host", "localhost", "--port", &port, "--timeout", "10"])
            .args(extra)
            .args(["Host", "ping2"])
            .output()
            .unwrap()
    };
    let client = &files.client;
    let ok = run(&[
        "--cert",
        client.cert.to_str().unwrap(),
        "--key",
        client.key.to_str().unwrap(),
        "--ca",
        client.ca.to_str().unwrap(),
    ]);
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "true");
    // The host's own certificate works as a client certificate too (as vdsm-client uses it).
    let host = run(&[
        "--cert",
        files.server.cert.to_str().unwrap(),
        "--key",
        files.server.key.to_str().unwrap(),
        "--ca",
        files.server.ca.to_str().unwrap(),
    ]);
    assert!(host.status.success(), "{host:?}");
    let plain = run(&["--insecure"]);
    assert_eq!(plain.status.code(), Some(3), "{plain:?}");
}

#[test]
fn an_independent_stomp_client_drives_the_daemon_over_tls() {
    let pki = tempfile::tempdir().unwrap();
    let lab = rvdsm::pki::init(pki.path(), &[]).unwrap();
    let daemon = Daemon::start_tls(&lab.server);
    let client = &lab.client;
    let output = Command::new("/usr/bin/python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/stomp_py_client.py"
        ))
        .arg(daemon.port.to_string())
        .args([&client.cert, &client.key, &client.ca])
        .args(["Host.ping2", "{}"])
        .args(["Host.getStorageDomains", "{}"])
        .args([
            "VM.thaw",
            r#"{"vmID": "11111111-2222-3333-4444-555555555555"}"#,
        ])
        .output()
        .expect("python3 with python3-stomp (scripts/test installs it)");
    assert!(
        output.status.success(),
        "stomp.py client failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.log()
    );
    let replies: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(replies.len(), 3, "{replies:?}");
    assert_eq!(replies[0]["result"], json!(true));
    assert!(replies[1]["result"].is_array(), "{}", replies[1]);
    assert_eq!(replies[2]["error"]["code"], 1, "{}", replies[2]);
    assert!(
        daemon.log().contains("stomp.py"),
        "the flow id was not logged"
    );
}

/// Issue 13, item 5: unauthenticated peers never take an authenticated client's place. With
/// `max_connections = 8`, more idle TCP sockets than the handshake budget (64) sit on the
/// port; a client with a valid certificate still gets in, at once, and so does a second one.
#[test]
fn idle_unauthenticated_sockets_never_keep_a_valid_client_out() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Authority::new("test CA").unwrap();
    let mut daemon = tls_daemon(pki.path(), &ca);
    daemon.set_server_setting("max_connections", "8");
    let good = issue(pki.path(), &ca, Role::Client, in_ten_years(), "good");

    let idle: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", daemon.port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let rt = stomp::runtime();
    rt.block_on(async {
        for _ in 0..2 {
            let started = std::time::Instant::now();
            let client =
                tokio::time::timeout(Duration::from_secs(5), stomp::over_tls(daemon.port, &good))
                    .await
                    .expect("the valid client waited behind idle sockets")
                    .unwrap();
            assert_eq!(
                client.call("Host.ping2", json!({}), None).await.unwrap(),
                Value::Bool(true)
            );
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{:?}",
                started.elapsed()
            );
        }
    });
    drop(idle);
}
