//! rvdsmd outlives libvirtd: while libvirtd is down, `Host.ping2` still answers and verbs that
//! need libvirt fail with a clear error; once libvirtd is back, the daemon reconnects by itself
//! and sees the guests that kept running. A test binary of its own, since it stops the host's
//! libvirtd under every other test.

mod common;

use common::{Daemon, Guest, libvirt, libvirtd};
use rvdsm::rpc::client::ClientError;
use serde_json::{Value, json};

#[test]
fn daemon_survives_and_reconnects_after_a_libvirtd_restart() {
    let Some(conn) = libvirt() else { return };
    let guest = Guest::start_ready(&conn);
    let daemon = Daemon::start();
    let listed = |list: &Value| {
        list.as_array()
            .unwrap()
            .iter()
            .any(|vm| vm["vmId"] == guest.uuid.as_str())
    };
    assert!(listed(&daemon.ok("Host.getVMList", Value::Null)));

    let stopped = libvirtd::stop();
    assert_eq!(daemon.ok("Host.ping2", Value::Null), json!(true));
    for _ in 0..2 {
        match daemon.call(common::daemon::Via::Unix, "Host.getVMList", Value::Null) {
            Err(ClientError::Server { code, message }) => {
                assert_eq!(code, 100, "{message}");
                assert!(message.contains("hypervisor unavailable"), "{message}");
            }
            other => panic!("expected a clear error while libvirtd is down, got {other:?}"),
        }
    }
    let (code, _) = daemon.err("VM.getStats", json!({"vmID": guest.uuid}));
    assert_eq!(code, 100);
    assert_eq!(daemon.ok("Host.ping2", Value::Null), json!(true));

    stopped.start();
    // The guest kept running; the first request after the restart already reconnects.
    let list = daemon.ok("Host.getVMList", Value::Null);
    assert!(listed(&list), "{list}");
    let stats = daemon.ok("VM.getStats", json!({"vmID": guest.uuid}));
    assert_eq!(stats[0]["status"], "Up");
}
