//! A daemon with a LOCALFS storage domain, and helpers to create volumes in it and boot a
//! fixture guest from one of them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use uuid::Uuid;

use super::Daemon;
use super::guest::{AGENT_BOOT_TIMEOUT, Guest, GuestOptions, qemu_img};

pub const GIB: u64 = 1 << 30;

/// A daemon with one LOCALFS domain in a temporary directory.
pub struct Fixture {
    pub daemon: Daemon,
    pub data: tempfile::TempDir,
    pub pool: String,
    pub domain: String,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_config("")
    }

    /// A fixture whose daemon has `extra` configuration (e.g. `[libvirt]` settings).
    pub fn with_config(extra: &str) -> Fixture {
        Fixture::on(Daemon::start_with(extra))
    }

    /// A fixture on a daemon started by the caller.
    pub fn on(daemon: Daemon) -> Fixture {
        let data = tempfile::tempdir().unwrap();
        let pool = daemon.pool();
        let domain = Uuid::new_v4().to_string();
        let created = daemon.ok(
            "StorageDomain.create",
            json!({
                "storagedomainID": domain, "domainType": 4,
                "typeArgs": data.path().to_str().unwrap(), "name": "test-domain",
                "domainClass": 1, "version": "5",
            }),
        );
        assert_eq!(created, json!(true));
        Fixture {
            daemon,
            data,
            pool,
            domain,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.data.path().join(&self.domain)
    }

    pub fn image_dir(&self, image: &str) -> PathBuf {
        self.root().join("images").join(image)
    }

    pub fn create_params(&self, image: &str, volume: &str, extra: Value) -> Value {
        let mut params = json!({
            "volumeID": volume, "storagepoolID": self.pool, "storagedomainID": self.domain,
            "imageID": image, "size": GIB.to_string(), "volFormat": 4, "preallocate": 2,
            "diskType": "DATA", "desc": "test volume",
            "srcImgUUID": "00000000-0000-0000-0000-000000000000",
            "srcVolUUID": "00000000-0000-0000-0000-000000000000",
        });
        for (k, v) in extra.as_object().unwrap() {
            params[k] = v.clone();
        }
        params
    }

    /// Creates a volume and waits for its task; returns the final task status.
    pub fn create(&self, image: &str, volume: &str, extra: Value) -> Value {
        let task = self
            .daemon
            .ok("Volume.create", self.create_params(image, volume, extra));
        self.daemon.wait_task(task.as_str().unwrap())
    }

    /// Restarts the daemon paused at the failpoint `point` and starts a create of `top` on
    /// `parent` that reaches it; returns the task id and the marker file (remove it to go on).
    pub fn create_paused_at(
        &mut self,
        point: &str,
        image: &str,
        parent: &str,
        top: &str,
    ) -> (String, PathBuf) {
        let marker = self.daemon.restart_paused_at(point);
        let task = self.daemon.ok(
            "Volume.create",
            self.create_params(image, top, json!({"srcVolUUID": parent})),
        );
        assert!(
            super::wait_until(std::time::Duration::from_secs(60), || marker.exists()),
            "{point} never reached; log:\n{}",
            self.daemon.log()
        );
        (task.as_str().unwrap().to_owned(), marker)
    }

    pub fn info(&self, image: &str, volume: &str) -> Value {
        self.daemon
            .ok("Volume.getInfo", self.volume_ids(image, volume))
    }

    pub fn volume_ids(&self, image: &str, volume: &str) -> Value {
        json!({"volumeID": volume, "storagepoolID": self.pool,
               "storagedomainID": self.domain, "imageID": image})
    }

    /// Every file under the domain's images, to prove a refused request changed nothing.
    pub fn files(&self) -> BTreeSet<PathBuf> {
        fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                out.insert(entry.path());
                if entry.path().is_dir() {
                    walk(&entry.path(), out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.root().join("images"), &mut out);
        out
    }
}

pub fn new_id() -> String {
    Uuid::new_v4().to_string()
}

pub fn assert_success(status: &Value) {
    assert_eq!(status["taskResult"], "success", "{status}");
    assert_eq!(status["code"], 0);
    assert_eq!(status["message"], "1 jobs completed successfully");
}

pub fn qemu_info(path: &Path) -> Value {
    serde_json::from_str(&qemu_img(&[
        "info",
        "-U",
        "--output=json",
        path.to_str().unwrap(),
    ]))
    .unwrap()
}

impl Fixture {
    /// `Image.deleteVolumes` of `volumes` (forced, as an engine does), to its task's success.
    pub fn delete_volumes(&self, image: &str, volumes: &[&str]) {
        let task = self.daemon.ok(
            "Image.deleteVolumes",
            json!({"storagepoolID": self.pool, "storagedomainID": self.domain,
                   "imageID": image, "volumeList": volumes, "postZero": false,
                   "force": true}),
        );
        assert_success(&self.daemon.wait_task(task.as_str().unwrap()));
    }

    /// A new base volume holding a copy of the fixture's ext4 data disk, prepared: returns
    /// `(image, volume, path for the VM)`.
    pub fn data_volume(&self) -> (String, String, PathBuf) {
        let (image, volume) = (new_id(), new_id());
        assert_success(&self.create(&image, &volume, json!({"size": (64u64 << 20).to_string()})));
        let data = self.image_dir(&image).join(&volume);
        let fixture = super::fixture_dir().join("data.qcow2");
        qemu_img(&[
            "convert",
            "-q",
            "-O",
            "qcow2",
            fixture.to_str().unwrap(),
            data.to_str().unwrap(),
        ]);
        let prepared = self.daemon.ok(
            "Image.prepare",
            json!({"storagepoolID": self.pool, "storagedomainID": self.domain, "imageID": image, "volumeID": volume}),
        );
        (
            image,
            volume,
            PathBuf::from(prepared["path"].as_str().unwrap()),
        )
    }

    /// A base volume holding a copy of the fixture's ext4 data disk, prepared, and a guest
    /// booted from it with `options`; returns `(image, volume, guest)`.
    pub fn guest_on_volume(
        &self,
        conn: &virt::connect::Connect,
        options: GuestOptions,
    ) -> (String, String, Guest) {
        let (image, volume, path) = self.data_volume();
        let options = GuestOptions {
            disk: Some(path),
            ..options
        };
        let guest = Guest::start(conn, &options);
        if options.agent == super::Agent::Running && options.agent_channel {
            guest.wait_for_agent(AGENT_BOOT_TIMEOUT);
        }
        (image, volume, guest)
    }
}
