//! The registry of verbs: one [`RpcModule`] holding every verb of [`crate::api::VERBS`], served
//! as it is by every transport. Each entry parses its parameters into the verb's typed struct,
//! calls the service, and turns the result into JSON (a verb with no value answers `true`, as
//! VDSM's does) or the error into `{code, message}` with VDSM's code.

use std::future::Future;

use jsonrpsee::RpcModule;
use jsonrpsee::types::ErrorObjectOwned;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::params;
use crate::api::ApiError;
use crate::api::schema::{self, names};
use crate::api::types::{GetVmListParams, NoParams, VmIdParams};
use crate::services::Services;

/// Builds the registry over `services`.
pub fn registry(services: Services) -> RpcModule<Services> {
    let mut module = RpcModule::new(services);
    register(
        &mut module,
        names::HOST_PING2,
        |s, _: NoParams| async move {
            s.host.ping();
            Ok(true)
        },
    );
    register(
        &mut module,
        names::HOST_GET_CAPABILITIES,
        |s, _: NoParams| async move { s.host.capabilities().await },
    );
    register(
        &mut module,
        names::HOST_GET_VM_LIST,
        |s, p: GetVmListParams| async move { s.host.vm_list(p).await },
    );
    register(
        &mut module,
        names::VM_GET_STATS,
        |s, p: VmIdParams| async move { s.host.vm_stats(p).await },
    );
    debug_assert_eq!(module.method_names().count(), schema::VERBS.len());
    module
}

/// Registers `handler` under `name`, which must be in the schema.
fn register<P, R, F, Fut>(module: &mut RpcModule<Services>, name: &'static str, handler: F)
where
    P: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(Services, P) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R, ApiError>> + Send + 'static,
{
    let verb = schema::find(name).unwrap_or_else(|| panic!("{name} is not in the schema"));
    module
        .register_async_method(name, move |raw, services, _| {
            let handler = handler.clone();
            async move {
                let typed: P = params::parse(verb, &raw).map_err(error_object)?;
                let result = handler((*services).clone(), typed)
                    .await
                    .map_err(error_object)?;
                serde_json::to_value(result)
                    .map_err(|e| error_object(ApiError::Unexpected(e.to_string())))
            }
        })
        .unwrap_or_else(|e| panic!("cannot register {name}: {e}"));
}

/// A service error as a JSON-RPC error: VDSM's code and message, no `data` (as VDSM).
pub fn error_object(err: ApiError) -> ErrorObjectOwned {
    ErrorObjectOwned::owned::<Value>(err.code(), err.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::HostService;
    use crate::virt::Hypervisor;
    use std::time::Duration;

    fn offline_services() -> Services {
        // A URI nothing answers on: only verbs that don't need libvirt can succeed.
        let hv = Hypervisor::new(
            "qemu+unix:///system?socket=/nonexistent",
            Duration::from_secs(5),
        );
        Services {
            host: HostService::new(hv),
        }
    }

    #[tokio::test]
    async fn every_schema_verb_is_registered() {
        let module = registry(offline_services());
        let names: Vec<_> = module.method_names().collect();
        for verb in schema::VERBS {
            assert!(names.contains(&verb.name), "{} missing", verb.name);
        }
    }

    #[tokio::test]
    async fn ping_answers_true_without_libvirt() {
        let module = registry(offline_services());
        let result: bool = module.call(names::HOST_PING2, [(); 0]).await.unwrap();
        assert!(result);
    }

    #[tokio::test]
    async fn libvirt_down_is_a_clear_error() {
        let module = registry(offline_services());
        let err = module
            .call::<_, Value>(names::HOST_GET_VM_LIST, [(); 0])
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("hypervisor unavailable"), "{text}");
    }
}
