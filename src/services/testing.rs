//! The services' unit-test bed: every service opened by [`Services::open`] on a temporary state
//! directory, on a [`FakeHypervisor`] the test scripts, with one LOCALFS storage domain whose
//! images and volumes are made for real (qemu-img, metadata) through the storage verbs, as a
//! manager would. Tests drive the services through their public verbs only, so that they
//! survive refactors of the services' insides, and assert what was asked of the hypervisor,
//! how jobs and tasks ended, and what the volumes' metadata says after.
//!
//! A second [`Services`] on the same state directory ([`Bed::reopen`]) is a restarted rvdsmd.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use super::{Deps, Interrupted, Services};
use crate::api::storage_types::{TaskStatus, VolumeInfo};
use crate::config::Config;
use crate::jobs::vm_jobs::{JobInfo, JobStatus};
use crate::virt::fake::FakeHypervisor;

/// How long a test waits for a job or a task to end (real time) before it fails.
const WAIT: Duration = Duration::from_secs(30);

/// Services on a fake hypervisor, with one storage domain.
pub struct Bed {
    /// Every service, as the daemon has them.
    pub services: Services,
    /// The hypervisor the services see; script it, read its calls.
    pub fake: FakeHypervisor,
    /// The pool the services serve.
    pub pool: Uuid,
    /// The LOCALFS domain.
    pub domain: Uuid,
    config: Config,
    /// Holds the state directory and the domain; removed when the bed drops.
    dir: tempfile::TempDir,
}

impl Bed {
    /// A bed with a new domain; the services know no VM until the test adds one to the fake.
    pub async fn open() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pool = Uuid::new_v4();
        let mut config = Config::default();
        config.storage.repository = dir.path().join("repo");
        config.storage.pool_uuid = Some(pool);
        config.daemon.state_dir = dir.path().join("state");
        config.vm.console_log_dir = dir.path().join("console");
        config.vm.console_socket_dir = dir.path().join("sockets");
        let fake = FakeHypervisor::new();
        let (services, interrupted) = open_services(&config, &fake).await;
        // A new state directory: nothing was interrupted.
        drop_nothing(interrupted);
        let bed = Self {
            services,
            fake,
            pool,
            domain: Uuid::new_v4(),
            config,
            dir,
        };
        let data = bed.data_dir();
        std::fs::create_dir_all(&data).expect("the domain's directory");
        let created = bed
            .services
            .storage
            .create_domain(params(json!({
                "storagedomainID": bed.domain, "domainType": 4,
                "typeArgs": data.to_str().expect("a UTF-8 path"), "name": "unit-domain",
                "domainClass": 1, "version": "5",
            })))
            .await;
        created.expect("StorageDomain.create");
        bed
    }

    /// A restarted rvdsmd: new services on the same state directory and domains, on `fake`,
    /// with what the previous services left for [`Services::recover`].
    pub async fn reopen(&self, fake: &FakeHypervisor) -> (Services, Interrupted) {
        open_services(&self.config, fake).await
    }

    /// The directory the domain lives in.
    fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// A volume's file, as libvirt names it in a VM's XML.
    pub fn path(&self, image: Uuid, volume: Uuid) -> String {
        let path = self
            .data_dir()
            .join(self.domain.to_string())
            .join("images")
            .join(image.to_string())
            .join(volume.to_string());
        path.to_string_lossy().into_owned()
    }

    /// `Volume.create`'s parameters for a 1 GiB sparse qcow2 `volume` of `image`, on `parent`
    /// when given; `extra` overrides any of them.
    pub fn create_params(
        &self,
        image: Uuid,
        volume: Uuid,
        parent: Option<Uuid>,
        extra: Value,
    ) -> Value {
        let mut params = json!({
            "volumeID": volume, "storagepoolID": self.pool, "storagedomainID": self.domain,
            "imageID": image, "size": (1u64 << 30).to_string(), "volFormat": 4,
            "preallocate": 2, "diskType": "DATA", "desc": "unit test volume",
            "srcImgUUID": Uuid::nil(), "srcVolUUID": parent.unwrap_or_default(),
        });
        for (key, value) in extra.as_object().expect("an object") {
            params[key] = value.clone();
        }
        params
    }

    /// Creates `volume` (on `parent`) and waits for its task, which must succeed.
    pub async fn volume(&self, image: Uuid, volume: Uuid, parent: Option<Uuid>) {
        let task = self
            .services
            .storage
            .create_volume(params(self.create_params(image, volume, parent, json!({}))))
            .await
            .expect("Volume.create starts");
        let status = self.wait_task(task).await;
        assert_eq!(status.task_result, "success", "{status:?}");
    }

    /// A new image whose chain is `len` volumes, base first.
    pub async fn chain(&self, len: usize) -> (Uuid, Vec<Uuid>) {
        let image = Uuid::new_v4();
        let mut volumes: Vec<Uuid> = Vec::with_capacity(len);
        for _ in 0..len {
            let volume = Uuid::new_v4();
            self.volume(image, volume, volumes.last().copied()).await;
            volumes.push(volume);
        }
        (image, volumes)
    }

    /// The paths of `volumes` (base first) as a disk's chain, leaf first.
    pub fn leaf_first(&self, image: Uuid, volumes: &[Uuid]) -> Vec<String> {
        volumes.iter().rev().map(|v| self.path(image, *v)).collect()
    }

    /// `Volume.getInfo`.
    pub async fn info(
        &self,
        image: Uuid,
        volume: Uuid,
    ) -> Result<VolumeInfo, crate::api::ApiError> {
        self.services
            .storage
            .volume_info(params(json!({
                "volumeID": volume, "storagepoolID": self.pool,
                "storagedomainID": self.domain, "imageID": image,
            })))
            .await
    }

    /// A RAW volume of `bytes` alone in a new image (a memory volume, as an engine makes it):
    /// its `(image, volume)`.
    pub async fn raw_volume(&self, bytes: u64) -> (Uuid, Uuid) {
        let (image, volume) = (Uuid::new_v4(), Uuid::new_v4());
        let extra = json!({ "volFormat": 5, "size": bytes.to_string() });
        let task = self
            .services
            .storage
            .create_volume(params(self.create_params(image, volume, None, extra)))
            .await
            .expect("Volume.create starts");
        assert_eq!(self.wait_task(task).await.task_result, "success");
        (image, volume)
    }

    /// A volume's legality as `Volume.getInfo` says it (`LEGAL`, `ILLEGAL`).
    pub async fn legality(&self, (image, volume): (Uuid, Uuid)) -> String {
        let info = self.info(image, volume).await.expect("Volume.getInfo");
        serde_json::to_value(&info).expect("serializable")["legality"]
            .as_str()
            .expect("a legality")
            .to_owned()
    }

    /// Waits until the storage task ends; its final status.
    pub async fn wait_task(&self, task: Uuid) -> TaskStatus {
        let started = Instant::now();
        loop {
            let status = self
                .services
                .storage
                .task_status(params(json!({ "taskID": task })))
                .await
                .expect("the task is known");
            if status.task_state == "finished" {
                return status;
            }
            assert!(
                started.elapsed() < WAIT,
                "task {task} never ended: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The job `id` as `Host.getJobs` shows it on `services`.
pub fn job(services: &Services, id: Uuid) -> Option<JobInfo> {
    services
        .snapshot
        .jobs(params(json!({ "job_ids": [id] })))
        .remove(&id)
}

/// Waits until the job `id` ends on `services`; how it ended.
pub async fn job_end(services: &Services, id: Uuid) -> JobInfo {
    let started = Instant::now();
    loop {
        let info = job(services, id);
        if let Some(info) = &info
            && matches!(info.status, JobStatus::Done | JobStatus::Failed)
        {
            return info.clone();
        }
        assert!(started.elapsed() < WAIT, "job {id} never ended: {info:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A verb's parameters from their JSON form, as a manager sends them.
pub fn params<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("parameters {value}: {e}"))
}

async fn open_services(config: &Config, fake: &FakeHypervisor) -> (Services, Interrupted) {
    let deps = Deps {
        hypervisor: std::sync::Arc::new(fake.clone()),
        events: None,
        block_job_events: None,
        changed_vms: None,
    };
    Services::open(config, deps)
        .await
        .unwrap_or_else(|e| panic!("{}", crate::error_chain(&e)))
}

/// What a first open leaves to recover: nothing, on a new state directory.
fn drop_nothing(interrupted: Interrupted) {
    let _ = interrupted;
}
