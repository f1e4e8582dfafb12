//! The registry of verbs: one [`RpcModule`] holding every verb of [`crate::api::VERBS`], served
//! as it is by every transport. Each entry parses its parameters into a typed [`Call`],
//! [`dispatch`]es it to its service, and turns the result into JSON (a verb with no value
//! answers `true`, as VDSM's does) or the error into `{code, message}` with VDSM's code.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use jsonrpsee::RpcModule;
use jsonrpsee::types::ErrorObjectOwned;
use serde::Serialize;
use serde_json::Value;

use super::params;
use crate::api::{ApiError, Call, VERBS, Verb};
use crate::services::Services;

/// Builds the registry over `services`: every verb of the table, none other.
pub fn registry(services: Services) -> RpcModule<Services> {
    let mut module = RpcModule::new(services);
    for verb in VERBS {
        register(&mut module, verb);
    }
    module
}

/// A verb's answer: a JSON value, or JSON text made ahead (the monitoring cache's stats).
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// A value.
    Value(Value),
    /// Text that is already JSON.
    Raw(Box<serde_json::value::RawValue>),
}

/// Runs a call on the service that owns its verb. The match is exhaustive: a verb added to
/// the table without a handler here does not compile.
pub async fn dispatch(s: Services, call: Call) -> Result<Reply, ApiError> {
    match call {
        Call::HostPing2(_) => {
            s.host.ping();
            Ok(Reply::Value(Value::Bool(true)))
        }
        Call::HostGetCapabilities(_) => answer(s.host.capabilities().await),
        Call::HostGetStats(_) => answer(s.host.stats().await),
        Call::HostGetVmList(p) => answer(Ok::<_, ApiError>(s.host.vm_list(p))),
        Call::HostGetVmFullList(p) => answer(Ok::<_, ApiError>(s.host.vm_full_list(&p.vm_list))),
        Call::HostGetAllVmStats(_) => raw(s.host.all_vm_stats_json()),
        Call::HostDumpxmls(p) => answer(s.host.dump_xmls(&p.vm_list)),
        Call::VmGetStats(p) => raw(s.host.vm_stats_json(p.vm_id)),
        Call::VmCreate(p) => answer(s.vms.create(p).await),
        Call::VmDestroy(p) => done(s.vms.destroy(p).await),
        Call::VmPause(p) => answer(s.vms.pause(p.vm_id).await),
        Call::VmCont(p) => answer(s.vms.cont(p.vm_id).await),
        Call::VmShutdown(p) => done(s.vms.shutdown(p).await),
        Call::VmSnapshot(p) => done(s.snapshot.snapshot(p).await),
        Call::VmMerge(p) => done(s.merge.merge(p).await),
        Call::VmFreeze(p) => done(s.freeze.freeze(p).await),
        Call::VmHibernate(p) => done(s.vms.hibernate(p).await),
        Call::StoragePoolCreate(p) => done(s.storage.create_pool(p).await),
        Call::StoragePoolGetInfo(p) => answer(s.storage.pool_info(p).await),
        Call::StoragePoolSwitchMaster(p) => answer(s.storage.switch_master(p).await),
        Call::StoragePoolDestroy(p) => done(s.storage.destroy_pool(p).await),
        Call::StorageDomainAttach(p) => done(s.storage.attach_domain(p).await),
        Call::StorageDomainActivate(p) => done(s.storage.activate_domain(p).await),
        Call::StorageDomainDeactivate(p) => done(s.storage.deactivate_domain(p).await),
        Call::StorageDomainDetach(p) => done(s.storage.detach_domain(p).await),
        Call::StorageDomainFormat(p) => done(s.storage.format_domain(p).await),
        Call::StoragePoolConnect(p) => done(s.storage.connect_pool(p).await),
        Call::StoragePoolDisconnect(p) => done(s.storage.disconnect_pool(p).await),
        Call::StoragePoolSpmStart(p) => answer(s.storage.spm_start(p).await),
        Call::StoragePoolSpmStop(p) => done(s.storage.spm_stop(p).await),
        Call::StoragePoolGetSpmStatus(p) => answer(s.storage.spm_status(p).await),
        Call::HostGetStorageRepoStats(p) => answer(s.storage.repo_stats(p).await),
        Call::LeaseCreate(p) => answer(s.storage.create_lease(p).await),
        Call::LeaseDelete(p) => answer(s.storage.delete_lease(p).await),
        Call::LeaseInfo(p) => answer(s.storage.lease_info(p).await),
        Call::LeaseStatus(p) => answer(s.storage.lease_status(p).await),
        Call::StoragePoolPrepareMerge(p) => answer(s.storage.prepare_merge(p).await),
        Call::SdmMerge(p) => done(s.sdm.merge(p).await),
        Call::StoragePoolFinalizeMerge(p) => answer(s.sdm.finalize_merge(p).await),
        Call::SdmCopyData(p) => done(s.sdm.copy_data(p).await),
        Call::ImageReconcileVolumeChain(p) => answer(s.storage.reconcile_chain(p).await),
        Call::VmThaw(p) => done(s.freeze.thaw(p.vm_id).await),
        Call::HostGetJobs(p) => answer(Ok::<_, ApiError>(s.snapshot.jobs(p))),
        Call::StorageDomainCreate(p) => done(s.storage.create_domain(p).await),
        Call::StorageDomainGetInfo(p) => answer(s.storage.domain_info(p)),
        Call::StorageDomainGetStats(p) => answer(s.storage.domain_stats(p).await),
        Call::StorageDomainGetVolumes(p) => answer(s.storage.domain_volumes(p).await),
        Call::HostGetStorageDomains(p) => answer(Ok::<_, ApiError>(s.storage.storage_domains(p))),
        Call::ImageGetVolumes(p) => answer(s.storage.image_volumes(p).await),
        Call::VolumeCreate(p) => answer(s.storage.create_volume(p).await),
        Call::VolumeGetInfo(p) => answer(s.storage.volume_info(p).await),
        Call::VolumeGetSize(p) => answer(s.storage.volume_size(p).await),
        Call::VolumeDelete(p) => answer(s.storage.delete_volume(p).await),
        Call::ImageDelete(p) => answer(s.storage.delete_image(p).await),
        Call::ImageDeleteVolumes(p) => answer(s.storage.delete_volumes(p).await),
        Call::ImagePrepare(p) => answer(s.storage.prepare_image(p).await),
        Call::ImageTeardown(p) => done(s.storage.teardown_image(p).await),
        Call::TaskGetStatus(p) => answer(s.storage.task_status(p).await),
        Call::TaskGetInfo(p) => answer(s.storage.task_info(p).await),
        Call::TaskClear(p) => done(s.storage.task_clear(p).await),
        Call::TaskStop(p) => done(s.storage.task_stop(p).await),
        Call::HostGetAllTasksStatuses(_) => answer(s.storage.all_task_statuses().await),
    }
}

/// A verb's result as JSON.
fn answer<R: Serialize, E: VerbError>(result: Result<R, E>) -> Result<Reply, ApiError> {
    let value = result.map_err(to_wire)?;
    serde_json::to_value(value)
        .map(Reply::Value)
        .map_err(|e| ApiError::Unexpected(e.to_string()))
}

/// A verb's result already as JSON text.
fn raw<E: VerbError>(
    result: Result<Box<serde_json::value::RawValue>, E>,
) -> Result<Reply, ApiError> {
    result.map(Reply::Raw).map_err(to_wire)
}

/// A verb with no value answers `true`, as VDSM's do.
fn done<E: VerbError>(result: Result<(), E>) -> Result<Reply, ApiError> {
    result
        .map(|()| Reply::Value(Value::Bool(true)))
        .map_err(to_wire)
}

/// A service's error, as a verb returns it: typed, with its sources.
trait VerbError: std::error::Error + Into<ApiError> {}
impl<E: std::error::Error + Into<ApiError>> VerbError for E {}

/// The one place a service's error becomes VDSM's code and message. The wire carries the
/// message; the log line carries the whole chain of causes behind it, which the message may
/// summarize.
fn to_wire<E: VerbError>(err: E) -> ApiError {
    if err.source().is_some() {
        tracing::info!(error = %crate::error_chain(&err), "verb failed");
    }
    err.into()
}

/// Registers `verb`: parse, dispatch (to its end for a verb that changes state), answer.
fn register(module: &mut RpcModule<Services>, verb: &'static Verb) {
    let name = verb.name;
    module
        .register_async_method(name, move |raw, services, _| async move {
            let call = params::parse(verb, &raw).map_err(error_object)?;
            let services = (*services).clone();
            if verb.is_read_only() {
                dispatch(services, call).await
            } else {
                run_to_end(name, dispatch(services, call)).await
            }
            .map_err(error_object)
        })
        .unwrap_or_else(|e| panic!("cannot register {name}: {e}"));
}

/// Runs a state-changing call on its own task, to its end: a client that hangs up mid-call
/// drops the future awaiting it, and must not cut a freeze from its auto-thaw record or a job
/// from its journal entry. What such a call did is logged, since no reply carries it.
async fn run_to_end<R: Send + 'static>(
    name: &'static str,
    call: impl Future<Output = Result<R, ApiError>> + Send + 'static,
) -> Result<R, ApiError> {
    let mut hung_up = HungUp::default();
    let gone = Arc::clone(&hung_up.flag);
    let task = tokio::spawn(async move {
        let result = call.await;
        if gone.load(Ordering::SeqCst) {
            match &result {
                Ok(_) => tracing::warn!(method = name, "call done after its client hung up"),
                Err(err) => {
                    tracing::warn!(method = name, code = err.code(), error = %err, "call failed after its client hung up");
                }
            }
        }
        result
    });
    let result = task
        .await
        .unwrap_or_else(|e| Err(ApiError::Unexpected(format!("{name} panicked: {e}"))));
    hung_up.answered = true;
    result
}

/// Raises its flag when dropped before the call was answered: the client's future went away.
#[derive(Default)]
struct HungUp {
    flag: Arc<AtomicBool>,
    answered: bool,
}

impl Drop for HungUp {
    fn drop(&mut self) {
        if !self.answered {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

/// Converts the parameters of a call to `method` into the verb's typed parameters, as its
/// registry entry does, without running it; `None` for a method that is not a verb. For the
/// request fuzzer (`fuzz/fuzz_targets/jsonrpc_request.rs`): it must never panic.
pub fn convert_params(
    method: &str,
    raw: &jsonrpsee::types::Params,
) -> Option<Result<(), ApiError>> {
    let verb = crate::api::find(method)?;
    Some(params::parse(verb, raw).map(drop))
}

/// A service error as a JSON-RPC error: VDSM's code and message, no `data` (as VDSM).
pub fn error_object(err: ApiError) -> ErrorObjectOwned {
    ErrorObjectOwned::owned::<Value>(err.code(), err.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::names;
    use crate::virt::Libvirt;
    use serde_json::json;
    use std::time::Duration;

    async fn offline_services() -> (Services, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::default();
        config.storage.repository = dir.path().join("repo");
        config.storage.pool_uuid = Some(uuid::Uuid::nil());
        config.daemon.state_dir = dir.path().to_owned();
        // A URI nothing answers on: only verbs that don't need libvirt can succeed.
        let hypervisor = Libvirt::new(
            "qemu+unix:///system?socket=/nonexistent",
            Duration::from_secs(5),
        );
        let deps = crate::services::Deps {
            hypervisor: std::sync::Arc::new(hypervisor),
            events: None,
            block_job_events: None,
            changed_vms: None,
        };
        let (services, _) = Services::open(&config, deps)
            .await
            .unwrap_or_else(|e| panic!("{}", crate::error_chain(&e)));
        (services, dir)
    }

    #[tokio::test]
    async fn every_schema_verb_is_registered() {
        let (services, _dir) = offline_services().await;
        let module = registry(services);
        let names: Vec<_> = module.method_names().collect();
        for verb in VERBS {
            assert!(names.contains(&verb.name), "{} missing", verb.name);
        }
    }

    #[tokio::test]
    async fn ping_answers_true_without_libvirt() {
        let (services, _dir) = offline_services().await;
        let module = registry(services);
        let result: bool = module.call(names::HOST_PING2, [(); 0]).await.unwrap();
        assert!(result);
    }

    #[tokio::test]
    async fn libvirt_down_is_a_clear_error() {
        let (services, _dir) = offline_services().await;
        let module = registry(services);
        let err = module
            .call::<_, Value>(names::HOST_GET_CAPABILITIES, [(); 0])
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("hypervisor unavailable"), "{text}");
    }

    /// Every file under `dir` with its length: what a refused call must leave as it was.
    fn tree(dir: &std::path::Path) -> std::collections::BTreeMap<std::path::PathBuf, u64> {
        let mut files = std::collections::BTreeMap::new();
        let mut pending = vec![dir.to_owned()];
        while let Some(next) = pending.pop() {
            for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
                let path = entry.path();
                match entry.metadata() {
                    Ok(meta) if meta.is_dir() => pending.push(path),
                    Ok(meta) => {
                        files.insert(path, meta.len());
                    }
                    Err(_) => {}
                }
            }
        }
        files
    }

    /// Parameter values a manager, a fuzzer or an attacker might send: every JSON type, ids,
    /// paths that try to leave the storage domains, and huge numbers.
    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            Just(Value::from("00000000-0000-0000-0000-000000000000")),
            Just(Value::from("11111111-2222-3333-4444-555555555555")),
            Just(Value::from("../../../../etc/passwd")),
            Just(Value::from("/etc/shadow")),
            Just(Value::from("18446744073709551616")),
            "[ -~]{0,40}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Issue 13, item 7: every numeric parameter of every verb, sent extreme values (with the
    /// verb's other required parameters present), is answered with a result or a clean error
    /// object: never a panic, never a hang, and a refusal changes no file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn extreme_numbers_for_every_numeric_parameter_are_answered_cleanly() {
        use crate::api::ParamType;
        let (services, dir) = offline_services().await;
        let module = registry(services);
        let extremes = [
            json!(0),
            json!(-1),
            json!(1u64 << 63),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1e300),
            json!(-1e300),
            json!("18446744073709551616"),
            json!("-1"),
            json!("x"),
        ];
        let mut answered = 0;
        for verb in VERBS {
            for param in verb.params.iter().filter(|p| p.ty == ParamType::UInt) {
                for value in &extremes {
                    let mut params: serde_json::Map<String, Value> = verb
                        .params
                        .iter()
                        .filter(|p| p.required)
                        .map(|p| {
                            (
                                p.name.to_owned(),
                                serde_json::from_str(p.ty.template()).unwrap(),
                            )
                        })
                        .collect();
                    params.insert(param.name.to_owned(), value.clone());
                    let request =
                        json!({"jsonrpc": "2.0", "id": 1, "method": verb.name, "params": params});
                    let before = tree(dir.path());
                    let reply = tokio::time::timeout(
                        Duration::from_secs(30),
                        module.raw_json_request(&request.to_string(), 1),
                    )
                    .await
                    .unwrap_or_else(|_| panic!("{request} hung"))
                    .unwrap();
                    let reply: Value = serde_json::from_str(reply.0.get()).unwrap();
                    if let Some(error) = reply.get("error") {
                        assert!(
                            error["code"].is_i64() && error["message"].is_string(),
                            "{reply}"
                        );
                        assert_eq!(before, tree(dir.path()), "{request} changed files");
                    } else {
                        assert!(reply.get("result").is_some(), "{request}: {reply}");
                    }
                    answered += 1;
                }
            }
        }
        assert!(
            answered >= 10 * 8,
            "{answered} calls: the numeric parameters were reached"
        );
    }

    /// Random parameter objects for every verb, built on the verb's own parameter names so that
    /// they reach its logic: each call answers a result or a JSON-RPC error object (never a
    /// panic, never a hang), and a call that is refused leaves every file as it was.
    #[test]
    fn random_parameters_for_every_verb_are_answered_and_refusals_change_nothing() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (services, dir) = runtime.block_on(offline_services());
        let module = registry(services);
        // A real domain under one of the ids the strategy sends (the pool is the nil UUID, the
        // other one), so that random calls reach the storage logic, not only its lookups.
        let domain_dir = dir.path().join("domain");
        std::fs::create_dir_all(&domain_dir).unwrap();
        let create = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": names::SD_CREATE,
            "params": {"storagedomainID": "11111111-2222-3333-4444-555555555555", "domainType": 4,
                       "typeArgs": domain_dir, "name": "props", "domainClass": 1, "version": "5"}});
        let (created, _) = runtime
            .block_on(module.raw_json_request(&create.to_string(), 1))
            .unwrap();
        assert!(
            created.get().contains(r#""result":true"#),
            "{}",
            created.get()
        );
        let strategy = (0..VERBS.len()).prop_flat_map(|index| {
            let verb = &VERBS[index];
            let mut names: Vec<&'static str> = verb.params.iter().map(|p| p.name).collect();
            if names.is_empty() {
                names.push("unknown");
            }
            let named =
                proptest::collection::vec((proptest::sample::select(names), any_value()), 0..6)
                    .prop_map(|pairs| {
                        Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                    });
            let positional = proptest::collection::vec(any_value(), 0..5).prop_map(Value::from);
            (
                Just(verb.name),
                prop_oneof![3 => named, 1 => positional, 1 => any_value()],
            )
        });
        let answered = std::cell::Cell::new((0u32, 0u32));
        let mut runner = TestRunner::new(Config {
            cases: 400,
            failure_persistence: None,
            ..Config::default()
        });
        runner
            .run(&strategy, |(method, params)| {
                let before = tree(dir.path());
                let request = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
                let reply = runtime.block_on(async {
                    tokio::time::timeout(
                        std::time::Duration::from_secs(30),
                        module.raw_json_request(&request.to_string(), 1),
                    )
                    .await
                });
                let reply = reply.map_err(|_| TestCaseError::fail(format!("{method} hung")))?;
                let Ok((reply, _)) = reply else {
                    // jsonrpsee refused the request itself (params not an object or list).
                    return Ok(());
                };
                let reply: Value = serde_json::from_str(reply.get()).unwrap();
                let refused = match (&reply.get("result"), &reply.get("error")) {
                    (Some(_), None) => false,
                    (None, Some(error)) => {
                        prop_assert!(error["code"].is_i64(), "{reply}");
                        prop_assert!(error["message"].is_string(), "{reply}");
                        true
                    }
                    _ => return Err(TestCaseError::fail(format!("not a JSON-RPC reply: {reply}"))),
                };
                // The fuzzer's conversion agrees with the registry's: what it refuses, the
                // verb refuses with the same words.
                let raw = params.to_string();
                let converted = convert_params(method, &jsonrpsee::types::Params::new(Some(&raw)));
                prop_assert!(converted.is_some(), "{method} has no conversion");
                if let Some(Err(err)) = converted {
                    prop_assert!(refused, "{method} {params}: conversion refused ({err}), the verb ran");
                    let words = err.to_string();
                    prop_assert_eq!(reply["error"]["message"].as_str(), Some(words.as_str()));
                }
                let (results, errors) = answered.get();
                if refused {
                    answered.set((results, errors + 1));
                    prop_assert_eq!(before, tree(dir.path()), "{} {} changed files: {}", method, params, reply);
                } else {
                    answered.set((results + 1, errors));
                }
                Ok(())
            })
            .unwrap();
        // Both kinds of answers were exercised, so the property above could fail.
        let (results, errors) = answered.get();
        assert!(
            results > 0 && errors > 100,
            "{results} results, {errors} errors"
        );
    }
}
