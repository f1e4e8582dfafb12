//! VM state changes from libvirt's domain lifecycle events, for `|virt|VM_status|` events, and
//! block job events, which wake the live merges that wait for a commit.
//!
//! libvirt delivers events only to connections opened after an event loop is registered, and
//! only while some thread runs that loop. [`watch_lifecycle`] registers libvirt's default loop,
//! then one dedicated thread opens its own connection, registers for lifecycle events and runs
//! the loop; when libvirtd goes away (the connection's keepalive or EOF tells the loop), the
//! thread opens a new connection and registers again. No async task ever waits on it.

use std::time::Duration;

use uuid::Uuid;
use virt::connect::Connect;

use super::ffi;
use crate::api::types::VmStatus;

/// How long to wait before connecting again after libvirtd went away.
const RECONNECT_DELAY: Duration = Duration::from_secs(2);

/// A block job's end or readiness, from libvirt's block job events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockJobEvent {
    /// The VM.
    pub vm: Uuid,
    /// The disk's target (`vda`).
    pub disk: String,
    /// What happened.
    pub status: BlockJobStatus,
}

/// `virConnectDomainEventBlockJobStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockJobStatus {
    /// The job ended (a commit merged).
    Completed,
    /// The job failed.
    Failed,
    /// The job was cancelled.
    Cancelled,
    /// An active commit is ready to pivot.
    Ready,
}

impl BlockJobStatus {
    fn from_libvirt(status: i32) -> Option<Self> {
        match u32::try_from(status).ok()? {
            virt::sys::VIR_DOMAIN_BLOCK_JOB_COMPLETED => Some(Self::Completed),
            virt::sys::VIR_DOMAIN_BLOCK_JOB_FAILED => Some(Self::Failed),
            virt::sys::VIR_DOMAIN_BLOCK_JOB_CANCELED => Some(Self::Cancelled),
            virt::sys::VIR_DOMAIN_BLOCK_JOB_READY => Some(Self::Ready),
            _ => None,
        }
    }
}

/// Calls `on_change(Some(vm), status)` for every lifecycle event (with the status it leads
/// to, when it changes one: a definition or an undefinition changes none), and
/// `on_change(None, None)` each time the event connection is (re)established, since events
/// sent while it was down are lost: whoever keeps a view of the VMs reads them all again then.
/// Calls `on_block_job` for every block job event. From a dedicated thread, for as long as
/// the process runs.
pub fn watch_lifecycle(
    uri: String,
    on_change: impl Fn(Option<Uuid>, Option<VmStatus>) + Send + Sync + 'static,
    on_block_job: impl Fn(BlockJobEvent) + Send + Sync + 'static,
) -> std::io::Result<()> {
    if let Err(err) = virt::event::event_register_default_impl() {
        tracing::error!(error = %err, "cannot start libvirt's event loop; no VM status events");
        return Ok(());
    }
    let on_change = std::sync::Arc::new(on_change);
    let on_block_job = std::sync::Arc::new(on_block_job);
    std::thread::Builder::new()
        .name("rvdsm-libvirt-events".into())
        .spawn(move || {
            loop {
                let subscribed = subscribe(
                    &uri,
                    std::sync::Arc::clone(&on_change),
                    std::sync::Arc::clone(&on_block_job),
                );
                match subscribed {
                    Ok((conn, ids)) => {
                        on_change(None, None);
                        run_until_closed(&conn);
                        for id in ids {
                            let _ = ffi::deregister_event(&conn, id);
                        }
                        tracing::warn!("libvirt event connection lost; reconnecting");
                    }
                    Err(err) => tracing::debug!(error = %err, "cannot watch domain events yet"),
                }
                std::thread::sleep(RECONNECT_DELAY);
            }
        })
        .map(|_| ())
}

fn subscribe(
    uri: &str,
    on_change: std::sync::Arc<impl Fn(Option<Uuid>, Option<VmStatus>) + Send + Sync + 'static>,
    on_block_job: std::sync::Arc<impl Fn(BlockJobEvent) + Send + Sync + 'static>,
) -> Result<(Connect, Vec<i32>), String> {
    let conn = Connect::open(Some(uri)).map_err(|e| e.to_string())?;
    // Keepalive wakes the loop every few seconds and closes the connection when libvirtd stops
    // answering, so a dead libvirtd is noticed even without traffic.
    if let Err(err) = conn.set_keep_alive(5, 3) {
        tracing::debug!(error = %err, "libvirt keepalive not available");
    }
    let handler: ffi::LifecycleHandler = Box::new(move |vm, event, detail| {
        on_change(Some(vm), status_after(event, detail));
    });
    let lifecycle = ffi::register_lifecycle(&conn, handler).map_err(|e| e.to_string())?;
    let handler: ffi::BlockJobHandler = Box::new(move |vm, disk, _kind, status| {
        if let Some(status) = BlockJobStatus::from_libvirt(status) {
            on_block_job(BlockJobEvent { vm, disk, status });
        }
    });
    let block_jobs = match ffi::register_block_job(&conn, handler) {
        Ok(id) => vec![lifecycle, id],
        Err(err) => {
            tracing::warn!(error = %err, "no block job events: merges are followed by polling only");
            vec![lifecycle]
        }
    };
    tracing::info!("watching libvirt domain events");
    Ok((conn, block_jobs))
}

fn run_until_closed(conn: &Connect) {
    while conn.is_alive().unwrap_or(false) {
        if let Err(err) = virt::event::event_run_default_impl() {
            tracing::warn!(error = %err, "libvirt event loop failed");
            std::thread::sleep(RECONNECT_DELAY);
        }
    }
}

/// The VDSM status a lifecycle event leads to; `None` for events that change none.
fn status_after(event: i32, _detail: i32) -> Option<VmStatus> {
    let event = u32::try_from(event).ok()?;
    match event {
        virt::sys::VIR_DOMAIN_EVENT_STARTED | virt::sys::VIR_DOMAIN_EVENT_RESUMED => {
            Some(VmStatus::Up)
        }
        virt::sys::VIR_DOMAIN_EVENT_SUSPENDED => Some(VmStatus::Paused),
        virt::sys::VIR_DOMAIN_EVENT_SHUTDOWN => Some(VmStatus::PoweringDown),
        virt::sys::VIR_DOMAIN_EVENT_STOPPED | virt::sys::VIR_DOMAIN_EVENT_CRASHED => {
            Some(VmStatus::Down)
        }
        virt::sys::VIR_DOMAIN_EVENT_PMSUSPENDED => Some(VmStatus::Suspended),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_events_map_to_vdsm_statuses() {
        let status = |e: u32| status_after(e as i32, 0);
        assert_eq!(
            status(virt::sys::VIR_DOMAIN_EVENT_STARTED),
            Some(VmStatus::Up)
        );
        assert_eq!(
            status(virt::sys::VIR_DOMAIN_EVENT_RESUMED),
            Some(VmStatus::Up)
        );
        assert_eq!(
            status(virt::sys::VIR_DOMAIN_EVENT_SUSPENDED),
            Some(VmStatus::Paused)
        );
        assert_eq!(
            status(virt::sys::VIR_DOMAIN_EVENT_STOPPED),
            Some(VmStatus::Down)
        );
        assert_eq!(status(virt::sys::VIR_DOMAIN_EVENT_DEFINED), None);
        assert_eq!(status_after(-1, 0), None);
    }
}
