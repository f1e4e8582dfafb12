//! The shared libvirt connection.
//!
//! One `virConnect` serves every request. libvirt notices that libvirtd went away only when a
//! call fails; the connection is then dropped and opened again, and a read-only call is retried
//! once, so a libvirtd restart costs a manager at most one failed request (none, usually).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;
use virt::connect::Connect;

use super::error::VirtError;

/// The hypervisor, as the rest of rvdsm sees it.
#[derive(Clone)]
pub struct Libvirt {
    inner: Arc<Inner>,
}

struct Inner {
    uri: String,
    call_timeout: Duration,
    // A std mutex: it only guards taking a clone of the handle, never a libvirt call, so it is
    // never held across anything that can block.
    conn: Mutex<Cached>,
    /// Calls that changed (or may still change) a VM and outlived their timeout: libvirt is
    /// still running them on a blocking thread. Waited for by [`Libvirt::settled`] before
    /// anyone reads the VM to decide what happened.
    in_flight: Mutex<HashMap<Uuid, Vec<tokio::task::JoinHandle<()>>>>,
    /// Idle connections for [`Libvirt::call_once_on`]: one is taken per call and given
    /// back when the call returned in time, so that a call does not pay a connection's
    /// opening (a few ms), and a hung call keeps its own.
    spare: Mutex<Vec<Connect>>,
    /// The agent timeout last set on each VM, with the domain id it was set on (a restarted
    /// VM has a new id and libvirt's default again); libvirt keeps it in the domain's status,
    /// across libvirtd restarts.
    agent_timeouts: Mutex<HashMap<Uuid, (u32, i32)>>,
}

/// Most idle connections kept for [`Libvirt::call_once_on`].
const MAX_SPARE_CONNECTIONS: usize = 8;

/// The open connection, if any, and a generation number that tells a dead connection from the
/// fresh one another thread may already have opened in its place.
#[derive(Default)]
struct Cached {
    generation: u64,
    conn: Option<Connect>,
}

impl std::fmt::Debug for Libvirt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libvirt")
            .field("uri", &self.inner.uri)
            .finish_non_exhaustive()
    }
}

impl Libvirt {
    /// A hypervisor at `uri`; nothing is opened until the first call.
    pub fn new(uri: impl Into<String>, call_timeout: Duration) -> Self {
        // libvirt's default error handler prints every error to stderr; rvdsm reports errors
        // itself, with context, through its own log.
        virt::error::clear_error_callback();
        Self {
            inner: Arc::new(Inner {
                uri: uri.into(),
                call_timeout,
                conn: Mutex::new(Cached::default()),
                in_flight: Mutex::default(),
                spare: Mutex::default(),
                agent_timeouts: Mutex::default(),
            }),
        }
    }

    /// The libvirt URI.
    pub fn uri(&self) -> &str {
        &self.inner.uri
    }

    /// The bound of one libvirt call.
    pub(super) fn call_timeout(&self) -> Duration {
        self.inner.call_timeout
    }

    /// Runs `f` with the connection on the blocking pool, bounded by the call timeout.
    ///
    /// `f` must be safe to run twice: when it fails because the connection died, it runs again
    /// once on a fresh connection. Calls that change a VM use [`Libvirt::call_once`].
    pub async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T, VirtError>
    where
        T: Send + 'static,
        F: Fn(&Connect) -> Result<T, VirtError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.bounded(op, move || inner.call_with_reconnect(f)).await
    }

    /// Runs `f` once, never again after a failure: for calls whose failure may already have
    /// changed the VM (a snapshot, a freeze), where the caller must look before retrying.
    pub async fn call_once<T, F>(&self, op: &'static str, f: F) -> Result<T, VirtError>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, VirtError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.bounded(op, move || {
            let (generation, conn) = inner.connection()?;
            let result = f(&conn);
            if result.is_err() && !is_alive(&conn) {
                inner.forget(generation);
            }
            result
        })
        .await
    }

    /// [`Libvirt::call_once`] for a call that changes `vm` and may hang with its QEMU, on a
    /// connection of its own: measured, a snapshot call stuck on a stopped QEMU also stalled
    /// every other call on its connection, for every VM. When it outlives its timeout, the
    /// caller gets the timeout error at once, but libvirt goes on with it on its blocking
    /// thread (one thread, one connection, and only this VM held): [`Libvirt::settled`]
    /// waits for it.
    pub async fn call_once_on<T, F>(&self, vm: Uuid, op: &'static str, f: F) -> Result<T, VirtError>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, VirtError> + Send + 'static,
    {
        self.call_once_on_within(vm, op, self.inner.call_timeout, f)
            .await
    }

    /// [`Libvirt::call_once_on`] bounded by `timeout` rather than the call timeout: for a call
    /// whose length grows with the guest (a RAM dump, a restore).
    pub async fn call_once_on_within<T, F>(
        &self,
        vm: Uuid,
        op: &'static str,
        timeout: std::time::Duration,
        f: F,
    ) -> Result<T, VirtError>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, VirtError> + Send + 'static,
    {
        let uri = self.inner.uri.clone();
        let spare = self
            .inner
            .spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let inner = Arc::clone(&self.inner);
        let mut task = tokio::task::spawn_blocking(move || {
            // A spare is checked with one round trip (libvirtd may have restarted since).
            let conn = match spare.filter(|conn| conn.lib_version().is_ok()) {
                Some(conn) => conn,
                None => Connect::open(Some(&uri)).map_err(|e| VirtError::Connect {
                    uri: uri.clone(),
                    message: e.message().to_owned(),
                })?,
            };
            let result = f(&conn);
            // Back to the spares only from here: a call past its timeout never returns its
            // connection to the pool before it ends.
            if is_alive(&conn) {
                let mut spare = inner.spare.lock().unwrap_or_else(|e| e.into_inner());
                if spare.len() < MAX_SPARE_CONNECTIONS {
                    spare.push(conn);
                }
            }
            result
        });
        let started = std::time::Instant::now();
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(result)) => {
                log_call(op, started);
                result
            }
            Ok(Err(_)) => Err(VirtError::Panicked { op }),
            Err(_) => {
                tracing::error!(%vm, op, secs = timeout.as_secs(), "libvirt call still running past its timeout; the VM stays busy until it returns");
                let waiter = tokio::spawn(async move {
                    let _ = task.await;
                });
                self.inner
                    .in_flight
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(vm)
                    .or_default()
                    .push(waiter);
                Err(VirtError::Timeout {
                    op,
                    secs: timeout.as_secs(),
                })
            }
        }
    }

    /// Whether `seconds` is known to be `vm`'s agent timeout on its domain `id` already.
    pub(super) fn agent_timeout_is(&self, vm: Uuid, id: u32, seconds: i32) -> bool {
        self.inner
            .agent_timeouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&vm)
            == Some(&(id, seconds))
    }

    /// Records that `vm`'s agent timeout on its domain `id` is `seconds`.
    pub(super) fn agent_timeout_set(&self, vm: Uuid, id: u32, seconds: i32) {
        self.inner
            .agent_timeouts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vm, (id, seconds));
    }

    /// Waits until no call that timed out on `vm` is still running in libvirt: only then does
    /// the live domain tell what such a call did.
    pub async fn settled(&self, vm: Uuid) {
        let waiters = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&vm)
            .unwrap_or_default();
        for waiter in waiters {
            let _ = waiter.await;
        }
    }

    async fn bounded<T: Send + 'static>(
        &self,
        op: &'static str,
        work: impl FnOnce() -> Result<T, VirtError> + Send + 'static,
    ) -> Result<T, VirtError> {
        let timeout = self.inner.call_timeout;
        let started = std::time::Instant::now();
        let task = tokio::task::spawn_blocking(work);
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => {
                log_call(op, started);
                result
            }
            Ok(Err(_)) => Err(VirtError::Panicked { op }),
            Err(_) => Err(VirtError::Timeout {
                op,
                secs: timeout.as_secs(),
            }),
        }
    }
}

/// Each libvirt call's duration, at debug level (`RUST_LOG=rvdsm::virt=debug`): where a
/// request's time goes.
fn log_call(op: &'static str, started: std::time::Instant) {
    tracing::debug!(
        op,
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "libvirt call"
    );
}

impl Inner {
    fn call_with_reconnect<T>(
        &self,
        f: impl Fn(&Connect) -> Result<T, VirtError>,
    ) -> Result<T, VirtError> {
        let (generation, conn) = self.connection()?;
        match f(&conn) {
            Err(err @ VirtError::Libvirt { .. }) if !is_alive(&conn) => {
                tracing::warn!(error = %err, "libvirt connection lost; reconnecting");
                self.forget(generation);
                let (_, conn) = self.connection()?;
                f(&conn)
            }
            result => result,
        }
    }

    /// The cached connection and its generation, opened if there is none.
    ///
    /// Opening happens under the lock on purpose: concurrent callers after a libvirtd restart
    /// then open one connection, not one each. Opening a local socket fails fast when
    /// libvirtd is down.
    fn connection(&self) -> Result<(u64, Connect), VirtError> {
        let mut cached = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(conn) = cached.conn.as_ref() {
            return Ok((cached.generation, conn.clone()));
        }
        let conn = Connect::open(Some(&self.uri)).map_err(|e| VirtError::Connect {
            uri: self.uri.clone(),
            message: e.message().to_owned(),
        })?;
        tracing::info!(uri = %self.uri, "connected to libvirt");
        cached.generation += 1;
        cached.conn = Some(conn.clone());
        Ok((cached.generation, conn))
    }

    /// Drops the cached connection if it is still the one of `generation`.
    fn forget(&self, generation: u64) {
        let mut cached = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if cached.generation == generation {
            cached.conn = None;
        }
    }
}

fn is_alive(conn: &Connect) -> bool {
    conn.is_alive().unwrap_or(false)
}
