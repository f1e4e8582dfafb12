//! Events from a real rvdsmd and a real guest: `|virt|VM_status|<vmId>` when the VM is paused
//! and resumed, and `|jobs|status|<jobId>` when a snapshot job ends, each received by a STOMP
//! subscriber of `jms.queue.events`, a WebSocket subscriber and the CLI's `--events`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::domain::{Fixture, assert_success, new_id};
use common::stomp;
use common::{GuestOptions, libvirt};
use rvdsm::rpc::client::{Client, Endpoint};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const EVENT_WAIT: Duration = Duration::from_secs(60);

/// Takes events from `events` until one satisfies `wanted`; fails after [`EVENT_WAIT`].
async fn wait_for(
    what: &str,
    events: &mut mpsc::Receiver<Value>,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + EVENT_WAIT;
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        events.recv(),
    )
    .await
    {
        if wanted(&event) {
            return event;
        }
        seen.push(event);
    }
    panic!("no {what} event; saw {seen:?}");
}

fn is_status(event: &Value, vm: &str, status: &str) -> bool {
    event["method"] == format!("|virt|VM_status|{vm}")
        && event["params"][vm]["status"] == status
        && event["params"]["notify_time"].as_u64().is_some()
}

#[test]
fn vm_status_and_job_events_reach_every_kind_of_subscriber() {
    let Some(conn) = libvirt() else { return };
    let f = Fixture::new();
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let vm = guest.uuid.clone();
    let rt = stomp::runtime();
    let stomp_client = rt.block_on(stomp::over_tcp(f.daemon.port, false));
    let mut stomp_subscriber = rt.block_on(stomp::over_tcp(f.daemon.port, true));
    let (tx, mut stomp_events) = mpsc::channel(1024);
    rt.spawn(async move {
        while let Some(event) = stomp_subscriber.next_event().await {
            let _ = tx.send(event).await;
        }
    });
    let ws = rt
        .block_on(Client::connect(
            &Endpoint::Unix(f.daemon.socket.clone()),
            Duration::from_secs(30),
        ))
        .unwrap();
    let mut subscription = rt.block_on(ws.events()).unwrap();
    let (tx, mut ws_events) = mpsc::channel(1024);
    rt.spawn(async move {
        while let Some(Ok(event)) = subscription.next().await {
            let _ = tx.send(event).await;
        }
    });
    let cli = Command::new(env!("CARGO_BIN_EXE_rvdsm"))
        .args(["--socket", f.daemon.socket.to_str().unwrap()])
        .args(["--events", "--max-events", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    guest.domain().suspend().unwrap();
    rt.block_on(wait_for("STOMP Paused", &mut stomp_events, |e| {
        is_status(e, &vm, "Paused")
    }));
    guest.domain().resume().unwrap();
    rt.block_on(wait_for("STOMP Up", &mut stomp_events, |e| {
        is_status(e, &vm, "Up")
    }));
    rt.block_on(wait_for("WebSocket Paused", &mut ws_events, |e| {
        is_status(e, &vm, "Paused")
    }));

    let cli_out = cli.wait_with_output().unwrap();
    assert!(cli_out.status.success(), "{cli_out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&cli_out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(is_status(&lines[0], &vm, "Paused"), "{lines:?}");
    assert!(is_status(&lines[1], &vm, "Up"), "{lines:?}");

    let top = new_id();
    assert_success(&f.create(
        &image,
        &top,
        json!({"srcVolUUID": base, "size": (64u64 << 20).to_string()}),
    ));
    let job = new_id();
    let started = rt.block_on(stomp_client.call(
        "VM.snapshot",
        json!({
            "vmID": vm,
            "snapDrives": [{"domainID": f.domain, "imageID": image, "baseVolumeID": base, "volumeID": top}],
            "jobUUID": job,
        }),
        None,
    ));
    assert_eq!(started.unwrap(), Value::Bool(true));
    let ended = rt.block_on(wait_for("job status", &mut stomp_events, |e| {
        e["method"] == format!("|jobs|status|{job}")
    }));
    assert_eq!(ended["params"][&job]["status"], "done", "{ended}");
    assert_eq!(ended["params"][&job]["id"], job);
    assert!(ended["params"]["notify_time"].as_u64().is_some());
    let via_ws = rt.block_on(wait_for("WebSocket job status", &mut ws_events, |e| {
        e["method"] == format!("|jobs|status|{job}")
    }));
    assert_eq!(via_ws["params"][&job]["status"], "done");
}
