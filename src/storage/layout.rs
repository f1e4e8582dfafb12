//! Where things live, as VDSM lays them out (VDSM-REFERENCE §4.1):
//! `<repository>/mnt/<mount dir>/<sdUUID>/{dom_md/metadata, images/<imgUUID>/<volUUID>{,.meta,.lease}}`.
//! Paths are built only from parsed UUIDs and the configured repository, so no identifier can
//! point outside a domain.

use std::path::{Path, PathBuf};

use uuid::Uuid;

/// The storage repository (`/rhev/data-center` by default).
#[derive(Debug, Clone)]
pub struct Repository {
    root: PathBuf,
}

impl Repository {
    /// The repository at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `<repository>/mnt`, where every domain's mount (or link) lives.
    pub fn mounts(&self) -> PathBuf {
        self.root.join("mnt")
    }

    /// `<repository>/<pool>`, whose links `<sdUUID>` point at the pool's domains.
    pub fn pool_dir(&self, pool: Uuid) -> PathBuf {
        self.root.join(pool.hyphenated().to_string())
    }

    /// The mount directory of a remote path or local directory (VDSM's `transformPath`).
    pub fn mount_of(&self, remote: &str) -> PathBuf {
        self.mounts().join(transform_path(remote))
    }
}

/// VDSM's `fileUtils.transformPath`: `_` becomes `__`, then `/` becomes `_`.
pub fn transform_path(remote: &str) -> String {
    remote.replace('_', "__").replace('/', "_")
}

/// The directory of one storage domain and the paths inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDir {
    root: PathBuf,
}

impl DomainDir {
    /// The domain `sd` under the mount directory `mount`.
    pub fn new(mount: &Path, sd: Uuid) -> Self {
        Self {
            root: mount.join(sd.hyphenated().to_string()),
        }
    }

    /// `<mount>/<sdUUID>`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `dom_md/`.
    pub fn dom_md(&self) -> PathBuf {
        self.root.join("dom_md")
    }

    /// `dom_md/metadata`.
    pub fn metadata(&self) -> PathBuf {
        self.dom_md().join("metadata")
    }

    /// `dom_md/rvdsm.lock`: the file whose lock serializes metadata changes on this host.
    pub fn lock_file(&self) -> PathBuf {
        self.dom_md().join("rvdsm.lock")
    }

    /// `images/`.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// `images/<img>/`.
    pub fn image(&self, image: Uuid) -> PathBuf {
        self.images().join(image.hyphenated().to_string())
    }

    /// The data file of a volume.
    pub fn volume(&self, image: Uuid, volume: Uuid) -> PathBuf {
        self.image(image).join(volume.hyphenated().to_string())
    }

    /// `<vol>.meta`.
    pub fn meta(&self, image: Uuid, volume: Uuid) -> PathBuf {
        self.image(image)
            .join(format!("{}.meta", volume.hyphenated()))
    }

    /// `<vol>.snapshot`: rvdsm's note of how the snapshot that made this volume a backing
    /// file was taken (its consistency), kept beside VDSM's files without touching them.
    pub fn snapshot_note(&self, image: Uuid, volume: Uuid) -> PathBuf {
        self.image(image)
            .join(format!("{}.snapshot", volume.hyphenated()))
    }

    /// `<vol>.clone`: rvdsm's mark on a full copy's destination until a VM first boots on
    /// it (that boot gets a new VM generation id).
    pub fn clone_mark(&self, image: Uuid, volume: Uuid) -> PathBuf {
        self.image(image)
            .join(format!("{}.clone", volume.hyphenated()))
    }

    /// `<vol>.creating`: the nonce of the create that is making this volume (the one its task
    /// record holds), there from before the data file until the volume is published, so that
    /// a recovery can tell a half-made volume of that create from any other.
    pub fn creation_nonce(&self, image: Uuid, volume: Uuid) -> PathBuf {
        self.image(image)
            .join(format!("{}.creating", volume.hyphenated()))
    }

    /// `<vol>.lease`.
    pub fn lease(&self, image: Uuid, volume: Uuid) -> PathBuf {
        self.image(image)
            .join(format!("{}.lease", volume.hyphenated()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transform_path_matches_vdsm() {
        assert_eq!(transform_path("/data/sd"), "_data_sd");
        assert_eq!(transform_path("server:/exp_1/a"), "server:_exp__1_a");
    }

    #[test]
    fn paths_follow_vdsm_layout() {
        let repo = Repository::new("/rhev/data-center");
        let sd = Uuid::from_u128(2);
        let img = Uuid::from_u128(3);
        let vol = Uuid::from_u128(4);
        let dir = DomainDir::new(&repo.mount_of("/data/sd"), sd);
        assert_eq!(
            dir.meta(img, vol),
            PathBuf::from(format!(
                "/rhev/data-center/mnt/_data_sd/{sd}/images/{img}/{vol}.meta"
            ))
        );
        assert_eq!(dir.metadata(), dir.root().join("dom_md/metadata"));
    }
}
