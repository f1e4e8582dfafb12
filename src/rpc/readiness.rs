//! The recovery gate: until the daemon has recovered what a previous run left (interrupted
//! snapshots, tasks), every verb but `Host.ping2` answers VDSM's 99 "Recovering from crash or
//! Initializing", so a manager can tell "up but not ready" from "down" (VDSM-REFERENCE §1.4).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jsonrpsee::core::middleware::{Batch, Notification, RpcServiceT};
use jsonrpsee::server::MethodResponse;
use jsonrpsee::types::{ErrorObjectOwned, Request};

use crate::api::codes;
use crate::api::names;

/// Whether the daemon serves every verb yet.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Not ready yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, every verb is served.
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether every verb is served.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The tower layer adding [`RecoveryGate`].
#[derive(Debug, Clone)]
pub struct RecoveryGateLayer(pub Readiness);

impl<S> tower::Layer<S> for RecoveryGateLayer {
    type Service = RecoveryGate<S>;

    fn layer(&self, service: S) -> Self::Service {
        RecoveryGate {
            service,
            readiness: self.0.clone(),
        }
    }
}

/// Answers 99 to every call but `Host.ping2` until ready.
#[derive(Debug, Clone)]
pub struct RecoveryGate<S> {
    service: S,
    readiness: Readiness,
}

impl<S> RpcServiceT for RecoveryGate<S>
where
    S: RpcServiceT<MethodResponse = MethodResponse> + Send + Sync + Clone + 'static,
{
    type MethodResponse = S::MethodResponse;
    type NotificationResponse = S::NotificationResponse;
    type BatchResponse = S::BatchResponse;

    fn call<'a>(
        &self,
        request: Request<'a>,
    ) -> impl Future<Output = Self::MethodResponse> + Send + 'a {
        let service = self.service.clone();
        let ready = self.readiness.is_ready();
        async move {
            if ready || request.method_name() == names::HOST_PING2 {
                service.call(request).await
            } else {
                let error = ErrorObjectOwned::owned::<()>(
                    codes::RECOVERY_IN_PROGRESS,
                    "Recovering from crash or Initializing",
                    None,
                );
                MethodResponse::error(request.id(), error)
            }
        }
    }

    fn batch<'a>(&self, batch: Batch<'a>) -> impl Future<Output = Self::BatchResponse> + Send + 'a {
        self.service.batch(batch)
    }

    fn notification<'a>(
        &self,
        n: Notification<'a>,
    ) -> impl Future<Output = Self::NotificationResponse> + Send + 'a {
        self.service.notification(n)
    }
}
