//! The guest fixture and the harness, against a real libvirtd: a guest boots, its agent
//! answers through libvirt, commands run inside it, and each agent scenario behaves as the
//! later snapshot tests rely on.

mod common;

use std::time::Duration;

use common::guest::AGENT_BOOT_TIMEOUT;
use common::{Agent, Guest, GuestOptions, libvirt, wait_until};
use rvdsm::virt::VirtError;

/// libvirt's VIR_ERR_ARGUMENT_UNSUPPORTED: "QEMU guest agent is not configured".
const AGENT_NOT_CONFIGURED: i32 = 74;
/// libvirt's VIR_ERR_AGENT_UNRESPONSIVE: agent not connected or not responding.
const AGENT_UNRESPONSIVE: i32 = 86;

fn wait_for_console(guest: &Guest, text: &str) {
    let seen = wait_until(AGENT_BOOT_TIMEOUT, || guest.console().contains(text));
    assert!(seen, "{text:?} never on the console:\n{}", guest.console());
}

#[test]
fn guest_boots_agent_answers_and_commands_run_inside() {
    let Some(conn) = libvirt() else { return };
    let guest = Guest::start_ready(&conn);

    let (code, out) = guest.exec("echo hello > /mnt/data/probe && sync && cat /mnt/data/probe");
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    let (_, mounts) = guest.exec("cat /proc/mounts");
    assert!(mounts.contains("/dev/vda /mnt/data ext4"), "{mounts}");
    let (code, _) = guest.exec("exit 3");
    assert_eq!(code, 3);

    let disks = guest.disks();
    assert_eq!(disks.len(), 1);
    assert_eq!(disks[0].target, "vda");
    assert_eq!(disks[0].path.as_deref(), guest.disk.to_str());
}

#[test]
fn overlay_guest_reports_its_backing_chain() {
    let Some(conn) = libvirt() else { return };
    let options = GuestOptions {
        with_backing: true,
        ..GuestOptions::default()
    };
    let guest = Guest::start(&conn, &options);
    guest.wait_for_agent(AGENT_BOOT_TIMEOUT);
    let vda = &guest.disks()[0];
    assert_eq!(vda.path.as_deref(), guest.disk.to_str());
    let base = guest.dir.path().join("base.qcow2");
    assert_eq!(vda.backing_chain.len(), 1, "{vda:?}");
    assert_eq!(vda.backing_chain[0].path, base.to_str().unwrap());
}

#[test]
fn guest_without_agent_process_is_unresponsive() {
    let Some(conn) = libvirt() else { return };
    let options = GuestOptions {
        agent: Agent::Absent,
        ..GuestOptions::default()
    };
    let guest = Guest::start(&conn, &options);
    wait_for_console(&guest, "rvdsm-guest: ready");
    match guest.ping() {
        Err(VirtError::Libvirt { code, .. }) => assert_eq!(code, AGENT_UNRESPONSIVE),
        other => panic!("expected agent unresponsive, got {other:?}"),
    }
}

#[test]
fn guest_without_agent_channel_is_not_configured() {
    let Some(conn) = libvirt() else { return };
    let options = GuestOptions {
        agent_channel: false,
        ..GuestOptions::default()
    };
    let guest = Guest::start(&conn, &options);
    wait_for_console(&guest, "rvdsm-guest: ready");
    match guest.ping() {
        Err(VirtError::Libvirt { code, .. }) => assert_eq!(code, AGENT_NOT_CONFIGURED),
        other => panic!("expected agent not configured, got {other:?}"),
    }
}

#[test]
fn late_agent_answers_only_after_its_delay() {
    let Some(conn) = libvirt() else { return };
    let options = GuestOptions {
        agent: Agent::Late(10),
        ..GuestOptions::default()
    };
    let guest = Guest::start(&conn, &options);
    wait_for_console(&guest, "rvdsm-guest: ready");
    assert!(guest.ping().is_err(), "agent answered before its delay");
    guest.wait_for_agent(Duration::from_secs(60));
    assert!(guest.console().contains("agent started"));
}
