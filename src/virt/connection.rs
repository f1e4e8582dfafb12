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
pub struct Hypervisor {
    inner: Arc<Inner>,
}

struct Inner {
    uri: String,
    call_timeout: Duration,
    // A std mutex: it only guards taking a clone of the handle, never a libvirt call, so it is
    // never held across anything that can block.
    conn: Mutex<Cached>,
    /// Calls that changed (or may still change) a VM and outlived their timeout: libvirt is
    /// still running them on a blocking thread. Waited for by [`Hypervisor::settled`] before
    /// anyone reads the VM to decide what happened.
    in_flight: Mutex<HashMap<Uuid, Vec<tokio::task::JoinHandle<()>>>>,
}

/// The open connection, if any, and a generation number that tells a dead connection from the
/// fresh one another thread may already have opened in its place.
#[derive(Default)]
struct Cached {
    generation: u64,
    conn: Option<Connect>,
}

impl std::fmt::Debug for Hypervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hypervisor")
            .field("uri", &self.inner.uri)
            .finish_non_exhaustive()
    }
}

impl Hypervisor {
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
    /// once on a fresh connection. Calls that change a VM use [`Hypervisor::call_once`].
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

    /// [`Hypervisor::call_once`] for a call that changes `vm` and may hang with its QEMU, on a
    /// connection of its own: measured, a snapshot call stuck on a stopped QEMU also stalled
    /// every other call on its connection, for every VM. When it outlives its timeout, the
    /// caller gets the timeout error at once, but libvirt goes on with it on its blocking
    /// thread (one thread, one connection, and only this VM held): [`Hypervisor::settled`]
    /// waits for it.
    pub async fn call_once_on<T, F>(&self, vm: Uuid, op: &'static str, f: F) -> Result<T, VirtError>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, VirtError> + Send + 'static,
    {
        let uri = self.inner.uri.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            let conn = Connect::open(Some(&uri)).map_err(|e| VirtError::Connect {
                uri: uri.clone(),
                message: e.message().to_owned(),
            })?;
            f(&conn)
        });
        let timeout = self.inner.call_timeout;
        match tokio::time::timeout(timeout, &mut task).await {
            Ok(Ok(result)) => result,
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
        let task = tokio::task::spawn_blocking(work);
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(VirtError::Panicked { op }),
            Err(_) => Err(VirtError::Timeout {
                op,
                secs: timeout.as_secs(),
            }),
        }
    }
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
