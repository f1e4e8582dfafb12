//! File storage domains: creation in VDSM's layout, discovery under the repository, identity
//! and space, and the listing of images and volumes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use uuid::Uuid;

use super::domain_md;
use super::error::StorageError;
use super::layout::{DomainDir, Repository};
use super::lock::{FileLock, MetadataLock, SharedLeases};
use crate::fsutil::write_atomic;

/// The only domain version rvdsm creates (VDSM 4.3+ semantics: `CAP`, 4 KiB alignment).
pub const DOMAIN_VERSION: u32 = 5;
/// Files VDSM keeps in `dom_md/` besides `metadata`: sanlock's areas (formatted when the
/// domain is first shared), the mailboxes (unused), the external leases (its index formatted
/// here).
const DOM_MD_FILES: &[&str] = &["ids", "leases", "inbox", "outbox", "xleases"];
/// The alignment of the domain's lease areas (`ALIGNMENT`).
pub const LEASE_ALIGNMENT: u64 = 1 << 20;

/// The kinds of file domain (VDSM's `domainType` numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// 1: a mounted NFS export.
    Nfs,
    /// 4: a local directory.
    LocalFs,
    /// 6: a mounted POSIX filesystem.
    PosixFs,
}

impl DomainType {
    /// From VDSM's number.
    pub fn from_code(code: i64) -> Option<Self> {
        match code {
            1 => Some(Self::Nfs),
            4 => Some(Self::LocalFs),
            6 => Some(Self::PosixFs),
            _ => None,
        }
    }

    /// The name in `dom_md/metadata` and `StorageDomain.getInfo`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nfs => "NFS",
            Self::LocalFs => "LOCALFS",
            Self::PosixFs => "POSIXFS",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Nfs, Self::LocalFs, Self::PosixFs]
            .into_iter()
            .find(|t| t.name() == name)
    }
}

/// What `StorageDomain.create` asks for.
#[derive(Debug, Clone)]
pub struct NewDomain {
    /// The domain's UUID.
    pub uuid: Uuid,
    /// Its kind.
    pub kind: DomainType,
    /// The local directory (LOCALFS) or the remote path already mounted (NFS, POSIXFS).
    pub remote_path: String,
    /// Its name (`DESCRIPTION`).
    pub name: String,
    /// Its block size, 512 or 4096.
    pub block_size: u32,
    /// Most hosts sharing it.
    pub max_hosts: u32,
}

/// A storage domain attached to this host.
pub struct Domain {
    /// Its UUID.
    pub uuid: Uuid,
    /// Its directory.
    pub dir: DomainDir,
    /// Its kind.
    pub kind: DomainType,
    /// Its name.
    pub name: String,
    /// Its `REMOTE_PATH`.
    pub remote_path: String,
    /// Its version.
    pub version: u32,
    /// Its block size.
    pub block_size: u32,
    /// The pool it belongs to (nil: unattached).
    pub pool: Uuid,
    /// `Master` or `Regular`, as its metadata said when read.
    pub role: String,
    lock: Arc<dyn MetadataLock>,
    shared: Option<Arc<dyn SharedLeases>>,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("uuid", &self.uuid)
            .field("root", &self.dir.root())
            .finish_non_exhaustive()
    }
}

impl Domain {
    /// Creates a domain in VDSM's layout, in `pool` (`None`: unattached, as VDSM creates them,
    /// until `StoragePool.create` or `StorageDomain.attach`). It appears complete or not at
    /// all: it is built under a temporary name and renamed into place.
    pub fn create(
        repo: &Repository,
        new: &NewDomain,
        pool: Option<Uuid>,
    ) -> Result<Domain, StorageError> {
        if new.block_size != 512 && new.block_size != 4096 {
            return Err(StorageError::InvalidParameter(format!(
                "blockSize={}",
                new.block_size
            )));
        }
        let mount = mount_dir(repo, new)?;
        let dir = DomainDir::new(&mount, new.uuid);
        if dir.root().exists() {
            return Err(StorageError::DomainExists(new.uuid));
        }
        let staging = mount.join(format!(".{}.creating", new.uuid.hyphenated()));
        let _ = std::fs::remove_dir_all(&staging);
        let result = build_domain(&staging, new, pool).and_then(|()| {
            std::fs::rename(&staging, dir.root())
                .map_err(StorageError::io("rename into place", dir.root()))
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result?;
        crate::fsutil::sync_parent(dir.root()).map_err(StorageError::io("sync", dir.root()))?;
        Domain::load(dir)
    }

    /// Reads the domain in `dir`.
    pub fn load(dir: DomainDir) -> Result<Domain, StorageError> {
        let path = dir.metadata();
        let text = dir
            .read_to_string(&path)
            .map_err(StorageError::io("read", &path))?;
        let keys = domain_md::parse(&text).map_err(|source| StorageError::DomainMetadata {
            path: path.clone(),
            source,
        })?;
        let invalid = |what: &str| StorageError::DomainMetadata {
            path: path.clone(),
            source: domain_md::DomainMetaError::Line(what.to_owned()),
        };
        let get = |key: &str| keys.get(key).map_or("", String::as_str);
        let uuid = Uuid::parse_str(get("SDUUID")).map_err(|_| invalid("SDUUID"))?;
        if dir.root().file_name() != Some(uuid.hyphenated().to_string().as_ref()) {
            return Err(invalid("SDUUID does not match the directory"));
        }
        Ok(Domain {
            uuid,
            kind: DomainType::from_name(get("TYPE")).ok_or_else(|| invalid("TYPE"))?,
            name: get("DESCRIPTION").to_owned(),
            remote_path: get("REMOTE_PATH").to_owned(),
            version: get("VERSION").parse().map_err(|_| invalid("VERSION"))?,
            block_size: get("BLOCK_SIZE").parse().unwrap_or(512),
            pool: Uuid::parse_str(get("POOL_UUID")).unwrap_or(Uuid::nil()),
            role: if get("ROLE") == "Master" {
                "Master"
            } else {
                "Regular"
            }
            .to_owned(),
            lock: Arc::new(FileLock::new(dir.clone())),
            shared: None,
            dir,
        })
    }

    /// Every domain found under the repository's mounts (`mnt/*/<uuid>/dom_md/metadata`).
    /// Unreadable ones are logged and skipped.
    pub fn discover(repo: &Repository) -> Vec<Domain> {
        Self::discover_all(repo)
            .into_iter()
            .filter_map(|(uuid, found)| match found {
                Ok(domain) => Some(domain),
                Err(err) => {
                    tracing::warn!(domain = %uuid, error = %err, "skipping storage domain");
                    None
                }
            })
            .collect()
    }

    /// Every directory named as a domain under the repository's mounts, each read or with why
    /// it cannot be: a check that must fail closed sees the unreadable ones too.
    pub fn discover_all(repo: &Repository) -> Vec<(Uuid, Result<Domain, StorageError>)> {
        let mut found = Vec::new();
        let Ok(mounts) = std::fs::read_dir(repo.mounts()) else {
            return found;
        };
        for mount in mounts.flatten() {
            let Ok(entries) = std::fs::read_dir(mount.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(uuid) = name.to_str().and_then(|n| Uuid::parse_str(n).ok()) else {
                    continue;
                };
                found.push((uuid, Domain::load(DomainDir::new(&mount.path(), uuid))));
            }
        }
        found
    }

    /// Removes the domain (`StorageDomain.format`): renamed out of the discovered names first,
    /// so that it is gone at once or still whole, then deleted (links inside are removed, never
    /// followed); a LOCALFS mount link left with no domain behind it goes too. Blocks.
    pub fn remove(&self, repo: &Repository) -> Result<(), StorageError> {
        let root = self.dir.root();
        let mount = root
            .parent()
            .ok_or_else(|| StorageError::InvalidParameter(format!("domain {}", self.uuid)))?;
        let doomed = mount.join(format!(".{}.removing", self.uuid.hyphenated()));
        // What a format cut short left under that name is this domain's too.
        if std::fs::symlink_metadata(&doomed).is_ok() {
            std::fs::remove_dir_all(&doomed).map_err(StorageError::io("remove", &doomed))?;
        }
        std::fs::rename(root, &doomed).map_err(StorageError::io("rename", root))?;
        crate::fsutil::sync_parent(root).map_err(StorageError::io("sync", mount))?;
        std::fs::remove_dir_all(&doomed).map_err(StorageError::io("remove", &doomed))?;
        // The mount of a LOCALFS domain is rvdsm's link under `mnt/` to the directory: it goes
        // when no other domain is behind it. The link itself is removed, never its target.
        let ours = mount.parent() == Some(repo.mounts().as_path()) && mount.is_symlink();
        if self.kind == DomainType::LocalFs && ours {
            let others = std::fs::read_dir(mount).map_or(true, |entries| {
                entries
                    .flatten()
                    .any(|e| Uuid::parse_str(&e.file_name().to_string_lossy()).is_ok())
            });
            if !others {
                std::fs::remove_file(mount).map_err(StorageError::io("remove", mount))?;
            }
        }
        Ok(())
    }

    /// Shares the domain with other hosts through `leases`: its metadata lock taken only while
    /// they allow, its new volumes given a formatted lease.
    pub fn share(&mut self, leases: Arc<dyn SharedLeases>) {
        self.lock = Arc::new(FileLock::new(self.dir.clone()).gated(Arc::clone(&leases)));
        self.shared = Some(leases);
    }

    /// Formats the lease of a new volume in its `.lease` file, on a shared domain (VDSM's
    /// file domains have one per volume); nothing on a host's own. Blocks.
    pub fn format_volume_lease(&self, volume: Uuid, file: &Path) -> Result<(), StorageError> {
        match &self.shared {
            Some(leases) => leases
                .format_volume_lease(volume, file)
                .map_err(|e| StorageError::Creation(format!("volume lease: {e}"))),
            None => Ok(()),
        }
    }

    /// The lease manager of a shared domain; `None` on a host's own.
    pub fn shared(&self) -> Option<&dyn SharedLeases> {
        self.shared.as_deref()
    }

    /// The lock that serializes this domain's metadata changes.
    pub fn lock(&self) -> &dyn MetadataLock {
        self.lock.as_ref()
    }

    /// Free and total bytes of the filesystem holding the domain.
    pub fn space(&self) -> Result<(u64, u64), StorageError> {
        let stat = nix::sys::statvfs::statvfs(self.dir.root())
            .map_err(|e| StorageError::io("statvfs", self.dir.root())(e.into()))?;
        let fragment = stat.fragment_size();
        Ok((stat.blocks_available() * fragment, stat.blocks() * fragment))
    }

    /// The images of the domain.
    pub fn images(&self) -> Result<Vec<Uuid>, StorageError> {
        self.uuid_entries(&self.dir.images(), |name| Uuid::parse_str(name).ok())
    }

    /// The volumes of an image: those with a `.meta` file.
    pub fn volumes(&self, image: Uuid) -> Result<Vec<Uuid>, StorageError> {
        self.uuid_entries(&self.dir.image(image), |name| {
            name.strip_suffix(".meta")
                .and_then(|n| Uuid::parse_str(n).ok())
        })
    }

    /// Whether the domain holds `image`, with one look at its directory. A path that exists but
    /// is not a plain directory of this domain (a symlink, even to a directory, or a file) is
    /// refused: identifiers must never lead rvdsm to read, write or delete outside its storage
    /// domains.
    pub fn has_image(&self, image: Uuid) -> Result<bool, StorageError> {
        // Test seam: a hung mount, as a stat on a dead NFS server blocks.
        crate::failpoint::pause_thread!("storage:stat");
        let path = self.dir.image(image);
        match self.dir.stat(&path) {
            Ok(meta) if meta.file_type().is_dir() => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            // A file, a link on the way, or an error reading it (EIO, ESTALE): refused, never
            // taken for "no such image".
            Ok(_) | Err(_) => Err(StorageError::ImagePath(path)),
        }
    }

    /// The UUIDs `parse` finds among the names in `dir` (none when it does not exist).
    fn uuid_entries(
        &self,
        dir: &Path,
        parse: impl Fn(&str) -> Option<Uuid>,
    ) -> Result<Vec<Uuid>, StorageError> {
        let names = self
            .dir
            .list(dir)
            .map_err(StorageError::io("list", dir))?
            .unwrap_or_default();
        let mut ids: Vec<Uuid> = names.iter().filter_map(|n| parse(n)).collect();
        ids.sort();
        Ok(ids)
    }
}

/// Where a new domain goes: for LOCALFS a link `mnt/<transformed path>` to the directory (as
/// VDSM's local connection makes it); for NFS/POSIXFS the mount that must already be there.
fn mount_dir(repo: &Repository, new: &NewDomain) -> Result<PathBuf, StorageError> {
    let remote = new.remote_path.as_str();
    let bad = || StorageError::InvalidParameter(format!("typeArgs={remote}"));
    // The mount directory is one name under `mnt/` (`/` becomes `_`): a remote path that is
    // `.` or `..`, or names one of them, would put the domain elsewhere, where the next start
    // would not find it.
    let escapes = remote.split('/').any(|part| part == "." || part == "..");
    if remote.is_empty() || remote.contains('\0') || escapes {
        return Err(bad());
    }
    let mount = repo.mount_of(remote);
    match new.kind {
        DomainType::LocalFs => {
            let path = Path::new(remote);
            if !crate::fsutil::is_plain_absolute(path) || !path.is_dir() {
                return Err(bad());
            }
            match std::fs::read_link(&mount) {
                Ok(target) if target == path => {}
                Ok(_) => return Err(bad()),
                Err(_) if mount.exists() => return Err(bad()),
                Err(_) => {
                    std::fs::create_dir_all(repo.mounts())
                        .map_err(StorageError::io("create", repo.mounts()))?;
                    std::os::unix::fs::symlink(path, &mount)
                        .map_err(StorageError::io("link", &mount))?;
                }
            }
        }
        DomainType::Nfs | DomainType::PosixFs => {
            if !mount.is_dir() {
                return Err(StorageError::InvalidParameter(format!(
                    "typeArgs={remote}: not mounted at {}",
                    mount.display()
                )));
            }
        }
    }
    Ok(mount)
}

fn build_domain(root: &Path, new: &NewDomain, pool: Option<Uuid>) -> Result<(), StorageError> {
    let dom_md = root.join("dom_md");
    // A fresh directory, then fresh entries in it: nothing planted there is followed.
    for dir in [root, &dom_md, &root.join("images")] {
        std::fs::create_dir(dir).map_err(StorageError::io("create", dir))?;
    }
    for file in DOM_MD_FILES {
        let path = dom_md.join(file);
        let created = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(StorageError::io("create", &path))?;
        if *file == "xleases" {
            super::xleases::Xleases::format(&created, &path, new.uuid, LEASE_ALIGNMENT)?;
        }
    }
    let keys: BTreeMap<String, String> = [
        ("ALIGNMENT", LEASE_ALIGNMENT.to_string()),
        ("BLOCK_SIZE", new.block_size.to_string()),
        ("CLASS", "Data".to_owned()),
        ("DESCRIPTION", new.name.replace(['\n', '\r'], " ")),
        ("IOOPTIMEOUTSEC", "10".to_owned()),
        ("LEASERETRIES", "3".to_owned()),
        ("LEASETIMESEC", "60".to_owned()),
        ("LOCKPOLICY", String::new()),
        ("LOCKRENEWALINTERVALSEC", "5".to_owned()),
        ("MAX_HOSTS", new.max_hosts.to_string()),
        (
            "POOL_UUID",
            pool.map(|p| p.hyphenated().to_string()).unwrap_or_default(),
        ),
        ("REMOTE_PATH", new.remote_path.clone()),
        ("ROLE", "Regular".to_owned()),
        ("SDUUID", new.uuid.hyphenated().to_string()),
        ("TYPE", new.kind.name().to_owned()),
        ("VERSION", DOMAIN_VERSION.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let path = dom_md.join("metadata");
    write_atomic(&path, domain_md::format(&keys).as_bytes(), 0o644)
        .map_err(StorageError::io("write", &path))?;
    crate::fsutil::sync_parent(&dom_md).map_err(StorageError::io("sync", &dom_md))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_local(path: &Path) -> NewDomain {
        NewDomain {
            uuid: Uuid::new_v4(),
            kind: DomainType::LocalFs,
            remote_path: path.to_str().unwrap().to_owned(),
            name: "test domain".into(),
            block_size: 512,
            max_hosts: 250,
        }
    }

    #[test]
    fn create_then_discover() {
        let repo_dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let repo = Repository::new(repo_dir.path());
        let pool = Uuid::new_v4();
        let new = new_local(data.path());
        let domain = Domain::create(&repo, &new, Some(pool)).unwrap();
        assert_eq!(
            (domain.uuid, domain.pool, domain.version),
            (new.uuid, pool, 5)
        );
        assert_eq!(domain.kind, DomainType::LocalFs);
        assert!(
            data.path()
                .join(new.uuid.to_string())
                .join("dom_md/ids")
                .exists()
        );
        assert!(domain.images().unwrap().is_empty());
        let (free, total) = domain.space().unwrap();
        assert!(free > 0 && total >= free);

        let found = Domain::discover(&repo);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].uuid, new.uuid);
        assert_eq!(found[0].name, "test domain");

        let again = Domain::create(&repo, &new, Some(pool)).unwrap_err();
        assert!(matches!(again, StorageError::DomainExists(_)));
    }

    #[test]
    fn remove_takes_the_domain_and_its_link_never_the_directory_behind() {
        let repo_dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let repo = Repository::new(repo_dir.path());
        let keep = data.path().join("not-a-domain");
        std::fs::write(&keep, b"user data").unwrap();
        let first = Domain::create(&repo, &new_local(data.path()), None).unwrap();
        let second = Domain::create(&repo, &new_local(data.path()), None).unwrap();
        // A link inside the domain is removed, never followed.
        std::os::unix::fs::symlink(&keep, first.dir.images().join("link")).unwrap();
        first.remove(&repo).unwrap();
        assert!(!data.path().join(first.uuid.to_string()).exists());
        assert_eq!(std::fs::read(&keep).unwrap(), b"user data");
        let link = repo.mount_of(data.path().to_str().unwrap());
        assert!(
            link.is_symlink(),
            "the second domain is still behind the link"
        );
        second.remove(&repo).unwrap();
        assert!(!link.exists() && !link.is_symlink());
        assert!(data.path().is_dir() && keep.exists());
        assert!(Domain::discover(&repo).is_empty());
    }

    #[test]
    fn bad_local_paths_are_refused_and_create_nothing() {
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repository::new(repo_dir.path());
        for path in ["relative/dir", "/nonexistent/dir", "/tmp/../etc", ""] {
            let mut new = new_local(Path::new("/"));
            new.remote_path = path.to_owned();
            let err = Domain::create(&repo, &new, None).unwrap_err();
            assert!(
                matches!(err, StorageError::InvalidParameter(_)),
                "{path}: {err}"
            );
        }
        assert!(!repo.mounts().exists() || std::fs::read_dir(repo.mounts()).unwrap().count() == 0);
    }

    /// Issue 13, item 9: a remote path of `..` made the domain `<repository>/mnt/..`.
    #[test]
    fn remote_paths_that_leave_the_mounts_are_refused() {
        let repo_dir = tempfile::tempdir().unwrap();
        let repo = Repository::new(repo_dir.path());
        std::fs::create_dir_all(repo.mounts()).unwrap();
        for path in ["..", ".", "srv:/export/..", "srv:/./export", "../x"] {
            let mut new = new_local(Path::new("/"));
            new.kind = DomainType::PosixFs;
            new.remote_path = path.to_owned();
            let err = Domain::create(&repo, &new, None).unwrap_err();
            assert!(
                matches!(err, StorageError::InvalidParameter(_)),
                "{path}: {err}"
            );
        }
        let left: Vec<_> = std::fs::read_dir(repo_dir.path())
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(left.len(), 1, "only mnt/: {left:?}");
    }
}
