//! A manager's whole session as VDSM's managers hold it, against a real rvdsmd and a real
//! guest: STOMP over mutual TLS with a client certificate, driving `Host.ping2`,
//! `Host.getVMList`, `Volume.create` and its task, `VM.snapshot` with `Host.getJobs`, and
//! `VM.freeze` / `VM.thaw`; and the events: `|virt|VM_status|<vmId>` when the VM is paused and
//! resumed, `|jobs|status|<jobId>` when the snapshot job ends, received by a STOMP subscriber
//! of `jms.queue.events`, a WebSocket subscriber and the CLI's `--events`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::domain::{Fixture, assert_success, new_id};
use common::stomp;
use common::{Daemon, GuestOptions, libvirt};
use rvdsm::client::StompClient;
use rvdsm::client::{Client, ClientError, Endpoint};
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

/// The result of a call that must succeed.
async fn ok<S>(client: &StompClient<S>, method: &str, params: Value) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    client
        .call(method, params, Some("test-flow"))
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"))
}

#[test]
fn a_manager_session_over_stomp_and_tls_with_events() {
    let Some(conn) = libvirt() else { return };
    let pki = tempfile::tempdir().unwrap();
    let lab = rvdsm::pki::init(pki.path(), &[]).unwrap();
    let f = Fixture::on(Daemon::start_tls(&lab.server));
    let (image, base, guest) = f.guest_on_volume(&conn, GuestOptions::default());
    let vm = guest.uuid.clone();
    let rt = stomp::runtime();
    let manager = rt.block_on(stomp::manager_over_tls(f.daemon.port, &lab.client, false));
    let mut stomp_subscriber =
        rt.block_on(stomp::manager_over_tls(f.daemon.port, &lab.client, true));
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

    assert_eq!(
        rt.block_on(ok(&manager, "Host.ping2", json!({}))),
        json!(true)
    );
    let vms = rt.block_on(ok(&manager, "Host.getVMList", json!({})));
    assert!(
        vms.as_array().unwrap().iter().any(|v| v["vmId"] == vm),
        "{vms}"
    );

    // Volume.create as a storage task, polled as the engine polls it.
    let top = new_id();
    let params = f.create_params(
        &image,
        &top,
        json!({"srcImgUUID": image, "srcVolUUID": base, "size": (64u64 << 20).to_string()}),
    );
    let task = rt.block_on(ok(&manager, "Volume.create", params));
    let task = task.as_str().unwrap().to_owned();
    let mut status = Value::Null;
    let finished = common::wait_until(Duration::from_secs(60), || {
        status = rt.block_on(ok(&manager, "Task.getStatus", json!({"taskID": task})));
        status["taskState"] == "finished"
    });
    assert!(finished, "{status}");
    assert_success(&status);
    assert_eq!(
        rt.block_on(ok(&manager, "Task.clear", json!({"taskID": task}))),
        json!(true)
    );

    // VM.snapshot, its event, and Host.getJobs.
    let job = new_id();
    let started = rt.block_on(ok(
        &manager,
        "VM.snapshot",
        json!({
            "vmID": vm,
            "snapDrives": [{"domainID": f.domain, "imageID": image, "baseVolumeID": base, "volumeID": top}],
            "jobUUID": job,
        }),
    ));
    assert_eq!(started, Value::Bool(true));
    let ended = rt.block_on(wait_for("job status", &mut stomp_events, |e| {
        e["method"] == format!("|jobs|status|{job}")
    }));
    assert_eq!(ended["params"]["status"], "done", "{ended}");
    assert_eq!(ended["params"]["id"], job);
    assert!(ended["params"]["notify_time"].as_u64().is_some());
    let via_ws = rt.block_on(wait_for("WebSocket job status", &mut ws_events, |e| {
        e["method"] == format!("|jobs|status|{job}")
    }));
    assert_eq!(via_ws["params"]["status"], "done");
    let jobs = rt.block_on(ok(&manager, "Host.getJobs", json!({"job_ids": [job]})));
    assert_eq!(jobs[&job]["status"], "done", "{jobs}");
    assert_eq!(jobs[&job]["result"]["consistency"], "quiesced", "{jobs}");

    // VM.freeze / VM.thaw, and VDSM's code for an unknown VM.
    assert_eq!(
        rt.block_on(ok(&manager, "VM.freeze", json!({"vmID": vm}))),
        json!(true)
    );
    assert_eq!(
        rt.block_on(ok(&manager, "VM.thaw", json!({"vmID": vm}))),
        json!(true)
    );
    let unknown = rt.block_on(manager.call(
        "VM.freeze",
        json!({"vmID": "11111111-2222-3333-4444-555555555555"}),
        None,
    ));
    assert!(
        matches!(unknown, Err(ClientError::Server { code: 1, .. })),
        "{unknown:?}"
    );
    assert!(f.daemon.log().contains("test-flow"));

    // What an operator's Prometheus scrapes.
    let metrics = f.daemon.metrics();
    for expected in [
        r#"rvdsm_snapshots_total{outcome="done",consistency="quiesced"} 1"#,
        r#"rvdsm_snapshot_duration_seconds_count{outcome="done",consistency="quiesced"} 1"#,
        "rvdsm_frozen_window_seconds_count 1",
        r#"rvdsm_rpc_requests_total{method="VM.snapshot",code="0"} 1"#,
        r#"rvdsm_rpc_requests_total{method="VM.freeze",code="1"} 1"#,
        "rvdsm_volumes_created_total 2",
        r#"rvdsm_jobs{state="done"} 1"#,
        r#"rvdsm_open_connections{transport="tcp"} 2"#,
    ] {
        assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
    }
    // VM.freeze's freeze call was measured too.
    assert!(
        metrics.contains("rvdsm_freeze_duration_seconds_count 2"),
        "{metrics}"
    );
}
