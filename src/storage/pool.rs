//! The pool on storage (VDSM's disk backend of `sp.py`): which pool a domain belongs to
//! (`POOL_UUID`), which domain is the pool's master (`ROLE=Master`) at which version
//! (`MASTER_VERSION`), and what the master records of the pool: its name
//! (`POOL_DESCRIPTION`), its domains and their states (`POOL_DOMAINS=<sd>:Active,...`), and the
//! SPM that last started (`POOL_SPM_ID`, `POOL_SPM_LVER`).
//!
//! Every value here was written by a host sharing the domain: a claim. What a host does with
//! it (connect, contend for the SPM lease) is checked here first: [`verify_master`] says
//! whether a domain is the master of a pool at a version, and no other domain claims to be.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::domain::Domain;
use super::domain_md;
use super::error::StorageError;

const ROLE: &str = "ROLE";
const POOL_UUID: &str = "POOL_UUID";
const MASTER_VERSION: &str = "MASTER_VERSION";
const POOL_DESCRIPTION: &str = "POOL_DESCRIPTION";
const POOL_DOMAINS: &str = "POOL_DOMAINS";
const POOL_SPM_ID: &str = "POOL_SPM_ID";
const POOL_SPM_LVER: &str = "POOL_SPM_LVER";
/// The keys only a master has.
const MASTER_KEYS: [&str; 5] = [
    MASTER_VERSION,
    POOL_DESCRIPTION,
    POOL_DOMAINS,
    POOL_SPM_ID,
    POOL_SPM_LVER,
];
/// VDSM's longest pool description (`sp.py`, `MAX_POOL_DESCRIPTION_SIZE`).
const MAX_DESCRIPTION: usize = 50;
/// VDSM's most domains in a pool (`spbackends.py`, `getMaximumSupportedDomains` on file).
pub const MAX_DOMAINS: usize = 100;

/// Why the pool's record refuses what was asked.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The master domain is not known on this host (304).
    #[error("Cannot find master domain: 'spUUID={pool}, msdUUID={master}'")]
    MasterNotFound {
        /// The pool.
        pool: Uuid,
        /// The domain named its master.
        master: Uuid,
    },
    /// The domain is not the pool's master at that version, or another claims to be (324).
    #[error("Wrong Master domain or its version: 'SD={master}, pool={pool}': {why}")]
    WrongMaster {
        /// The pool.
        pool: Uuid,
        /// The domain named its master.
        master: Uuid,
        /// What the storage says instead.
        why: String,
    },
    /// The domain belongs to another pool (380).
    #[error("Storage domain already attached to pool: 'domain={domain}, pool={pool}'")]
    AlreadyAttached {
        /// The domain.
        domain: Uuid,
        /// The pool it belongs to.
        pool: Uuid,
    },
    /// The domain is not one of the pool's (353).
    #[error("Storage domain not in pool: 'domain={domain}, pool={pool}'")]
    NotInPool {
        /// The domain.
        domain: Uuid,
        /// The pool.
        pool: Uuid,
    },
    /// The domain is in the wrong state for the change (381).
    #[error("Domain state change illegal: 'domain={domain}': {why}")]
    StateTransition {
        /// The domain.
        domain: Uuid,
        /// Why.
        why: String,
    },
    /// The master cannot be detached (383).
    #[error("Illegal action, cannot detach the master storage domain: ('{0}',)")]
    DetachMaster(Uuid),
    /// A domain attached to a pool is not formatted without `autoDetach` (391).
    #[error("Cannot format attached storage domain: ('{0}',)")]
    FormatAttached(Uuid),
    /// A domain of the connected pool, or in use here, is not formatted (392).
    #[error("Cannot format storage domain in connected pool: ('{domain}',): {why}")]
    FormatInUse {
        /// The domain.
        domain: Uuid,
        /// What uses it.
        why: String,
    },
    /// The domain cannot leave its state now (350).
    #[error("Error in storage domain action: 'sdUUID={domain}': {why}")]
    DomainAction {
        /// The domain.
        domain: Uuid,
        /// Why.
        why: String,
    },
    /// A domain's metadata cannot be read (the read's own code).
    #[error("Cannot read the metadata of domain {domain}: {source}")]
    Unreadable {
        /// The domain.
        domain: Uuid,
        /// Why.
        #[source]
        source: Box<StorageError>,
    },
    /// A value of the pool's record, as stored, cannot be read (751).
    #[error("Invalid pool metadata in domain {domain}: {why}")]
    Record {
        /// The domain holding it.
        domain: Uuid,
        /// What is wrong.
        why: String,
    },
    /// A request's value is out of range (1000).
    #[error("Invalid parameter: '{0}'")]
    InvalidParameter(String),
}

/// A domain's state in its pool (VDSM's `DOM_ACTIVE_STATUS`, `DOM_ATTACHED_STATUS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainStatus {
    /// Attached and in use.
    Active,
    /// Attached, in maintenance.
    Attached,
}

impl DomainStatus {
    /// The name in `POOL_DOMAINS` and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Attached => "Attached",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "active" => Some(Self::Active),
            "attached" => Some(Self::Attached),
            _ => None,
        }
    }
}

/// What the pool's master records of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRecord {
    /// The pool.
    pub pool: Uuid,
    /// The master's version: raised each time the master moves.
    pub version: i64,
    /// The pool's name.
    pub description: String,
    /// The pool's domains, the master among them, and their states.
    pub domains: BTreeMap<Uuid, DomainStatus>,
    /// The host id of the SPM that last started (-1: none).
    pub spm_id: i64,
    /// Its SDM lease's version (-1: none).
    pub lver: i64,
}

impl PoolRecord {
    /// A new pool's record: its domains all Active, no SPM yet.
    pub fn new(
        pool: Uuid,
        version: i64,
        description: &str,
        domains: impl IntoIterator<Item = Uuid>,
    ) -> Result<Self, PoolError> {
        if version < 0 {
            return Err(PoolError::InvalidParameter(format!(
                "masterVersion={version}"
            )));
        }
        let description = description.replace(['\n', '\r', ','], " ");
        if description.chars().count() > MAX_DESCRIPTION {
            return Err(PoolError::InvalidParameter(format!(
                "name longer than {MAX_DESCRIPTION} characters"
            )));
        }
        let domains: BTreeMap<Uuid, DomainStatus> = domains
            .into_iter()
            .map(|d| (d, DomainStatus::Active))
            .collect();
        if domains.len() > MAX_DOMAINS {
            return Err(PoolError::InvalidParameter(format!(
                "more than {MAX_DOMAINS} domains"
            )));
        }
        Ok(Self {
            pool,
            version,
            description,
            domains,
            spm_id: -1,
            lver: -1,
        })
    }

    /// `POOL_DOMAINS`' text: `<sd>:<status>` joined by commas, as VDSM writes it.
    pub fn domains_text(&self) -> String {
        self.domains
            .iter()
            .map(|(d, s)| format!("{d}:{}", s.name()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A domain's place in a pool, as its metadata says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The pool it belongs to; `None`: unattached.
    pub pool: Option<Uuid>,
    /// What it records as the pool's master; `None`: a regular domain.
    pub master: Option<PoolRecord>,
}

/// Reads a domain's membership from its metadata keys.
pub fn membership(domain: Uuid, keys: &BTreeMap<String, String>) -> Result<Membership, PoolError> {
    let bad = |why: String| PoolError::Record { domain, why };
    let get = |key: &str| keys.get(key).map_or("", |v| v.trim());
    let pool = match get(POOL_UUID) {
        "" => None,
        text => Some(Uuid::parse_str(text).map_err(|_| bad(format!("{POOL_UUID}={text}")))?),
    };
    let master = match get(ROLE) {
        "Master" => {
            let pool = pool.ok_or_else(|| bad("a master without POOL_UUID".into()))?;
            let int = |key: &str| {
                get(key)
                    .parse::<i64>()
                    .map_err(|_| bad(format!("{key}={}", get(key))))
            };
            Some(PoolRecord {
                pool,
                version: int(MASTER_VERSION)?,
                description: get(POOL_DESCRIPTION).to_owned(),
                domains: parse_domains(get(POOL_DOMAINS)).map_err(bad)?,
                spm_id: int(POOL_SPM_ID).unwrap_or(-1),
                lver: int(POOL_SPM_LVER).unwrap_or(-1),
            })
        }
        "Regular" | "" => None,
        other => return Err(bad(format!("{ROLE}={other}"))),
    };
    Ok(Membership { pool, master })
}

/// Parses `POOL_DOMAINS`: each domain once, each status known, at most [`MAX_DOMAINS`].
fn parse_domains(text: &str) -> Result<BTreeMap<Uuid, DomainStatus>, String> {
    let mut domains = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, status) = item
            .split_once(':')
            .ok_or_else(|| format!("{POOL_DOMAINS} item {item:?}"))?;
        let id = Uuid::parse_str(id).map_err(|_| format!("{POOL_DOMAINS} item {item:?}"))?;
        let status =
            DomainStatus::parse(status).ok_or_else(|| format!("{POOL_DOMAINS} item {item:?}"))?;
        if domains.insert(id, status).is_some() {
            return Err(format!("{POOL_DOMAINS} names {id} twice"));
        }
    }
    if domains.len() > MAX_DOMAINS {
        return Err(format!("{POOL_DOMAINS} names more than {MAX_DOMAINS}"));
    }
    Ok(domains)
}

/// Sets the keys of a master of `record` (its own `POOL_UUID` too).
pub fn set_master(keys: &mut BTreeMap<String, String>, record: &PoolRecord) {
    let mut put = |k: &str, v: String| {
        keys.insert(k.to_owned(), v);
    };
    put(ROLE, "Master".into());
    put(POOL_UUID, record.pool.hyphenated().to_string());
    put(MASTER_VERSION, record.version.to_string());
    put(POOL_DESCRIPTION, record.description.clone());
    put(POOL_DOMAINS, record.domains_text());
    put(POOL_SPM_ID, record.spm_id.to_string());
    put(POOL_SPM_LVER, record.lver.to_string());
}

/// Makes a domain a regular one of `pool` (`None`: unattached): no master's keys left.
pub fn set_regular(keys: &mut BTreeMap<String, String>, pool: Option<Uuid>) {
    for key in MASTER_KEYS {
        keys.remove(key);
    }
    keys.insert(ROLE.to_owned(), "Regular".to_owned());
    keys.insert(
        POOL_UUID.to_owned(),
        pool.map(|p| p.hyphenated().to_string()).unwrap_or_default(),
    );
}

/// The master of `pool` at `version` among `domains` (every domain this host sees): `master`
/// must say it is, and no other domain may claim to be the pool's master at this version or a
/// later one (a move of the master interrupted between its two writes, or a forged record:
/// two hosts could then each hold an SDM lease). Returns the master's record.
pub fn verify_master(
    pool: Uuid,
    master: Uuid,
    version: i64,
    domains: Vec<(Uuid, Result<Membership, StorageError>)>,
) -> Result<PoolRecord, PoolError> {
    let wrong = |why: String| PoolError::WrongMaster { pool, master, why };
    let mut domains = domains;
    let found = domains
        .iter()
        .position(|(id, _)| *id == master)
        .map(|at| domains.swap_remove(at).1);
    let record = match found {
        None => return Err(PoolError::MasterNotFound { pool, master }),
        // A record that cannot be parsed is a wrong master (324), as VDSM answers a master it
        // cannot verify; a read that failed keeps its own error.
        Some(Err(StorageError::Pool(record @ PoolError::Record { .. }))) => {
            return Err(wrong(record.to_string()));
        }
        Some(Err(err)) => {
            return Err(PoolError::Unreadable {
                domain: master,
                source: Box::new(err),
            });
        }
        Some(Ok(m)) => match &m.master {
            None => return Err(wrong("the domain is not a master".into())),
            Some(r) if r.pool != pool => {
                return Err(wrong(format!(
                    "the domain is the master of pool {}",
                    r.pool
                )));
            }
            Some(r) if r.version != version => {
                return Err(wrong(format!("the master is at version {}", r.version)));
            }
            Some(r) => r.clone(),
        },
    };
    if !record.domains.contains_key(&master) {
        return Err(wrong("the master is not among the pool's domains".into()));
    }
    for (id, found) in &domains {
        let Ok(Membership {
            master: Some(other),
            ..
        }) = found
        else {
            continue;
        };
        if other.pool == pool && other.version >= version {
            return Err(wrong(format!(
                "domain {id} claims to be the pool's master at version {}",
                other.version
            )));
        }
    }
    Ok(record)
}

impl Domain {
    /// The domain's metadata keys, read now (checksum verified). Blocks.
    pub fn read_keys(&self) -> Result<BTreeMap<String, String>, StorageError> {
        let path = self.dir.metadata();
        let text = self
            .dir
            .read_to_string(&path)
            .map_err(StorageError::io("read", &path))?;
        domain_md::parse(&text).map_err(|source| StorageError::DomainMetadata { path, source })
    }

    /// The domain's place in a pool, read now. Blocks.
    pub fn membership(&self) -> Result<Membership, StorageError> {
        let keys = self.read_keys()?;
        Ok(membership(self.uuid, &keys)?)
    }

    /// Changes the domain's metadata under its lock: `change` gets the keys as stored now and
    /// edits them; the file is replaced at once (a crash leaves the old text or the new) and
    /// synced. Returns what `change` returned. Blocks.
    pub fn update_keys<T>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, String>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let _guard = self.lock().acquire()?;
        let mut keys = self.read_keys()?;
        let out = change(&mut keys)?;
        let path = self.dir.metadata();
        self.dir
            .write_atomic(&path, domain_md::format(&keys).as_bytes(), 0o644)
            .map_err(StorageError::io("write", &path))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(record: &PoolRecord) -> BTreeMap<String, String> {
        let mut keys = BTreeMap::new();
        set_master(&mut keys, record);
        keys
    }

    #[test]
    fn a_master_round_trips_and_a_regular_keeps_no_master_key() {
        let (pool, d1, d2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut record = PoolRecord::new(pool, 3, "dc, one", [d1, d2]).unwrap();
        record.domains.insert(d2, DomainStatus::Attached);
        let mut keys = keys_of(&record);
        let read = membership(d1, &keys).unwrap();
        assert_eq!(read.pool, Some(pool));
        assert_eq!(read.master.as_ref(), Some(&record));
        assert_eq!(record.description, "dc  one");
        set_regular(&mut keys, None);
        assert_eq!(
            membership(d1, &keys).unwrap(),
            Membership {
                pool: None,
                master: None
            }
        );
        assert!(MASTER_KEYS.iter().all(|k| !keys.contains_key(*k)));
    }

    #[test]
    fn forged_pool_domains_are_refused() {
        let d = Uuid::new_v4();
        for text in [
            format!("{d}:Active,{d}:Attached"),
            format!("{d}:Owner"),
            "x:Active".to_owned(),
            format!("{d}"),
        ] {
            assert!(parse_domains(&text).is_err(), "{text}");
        }
        let many: Vec<String> = (0..=MAX_DOMAINS)
            .map(|_| format!("{}:Active", Uuid::new_v4()))
            .collect();
        assert!(parse_domains(&many.join(",")).is_err());
        assert_eq!(parse_domains("").unwrap().len(), 0);
    }

    fn master_of(pool: Uuid, version: i64, me: Uuid) -> Result<Membership, StorageError> {
        Ok(Membership {
            pool: Some(pool),
            master: Some(PoolRecord::new(pool, version, "p", [me]).unwrap()),
        })
    }

    #[test]
    fn only_the_pool_s_one_master_at_its_version_is_verified() {
        let (pool, d1, d2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let regular = || {
            Ok(Membership {
                pool: Some(pool),
                master: None,
            })
        };
        let seen = || vec![(d1, master_of(pool, 1, d1)), (d2, regular())];
        assert!(verify_master(pool, d1, 1, seen()).is_ok());
        for (master, version) in [(d1, 2), (d2, 1)] {
            assert!(matches!(
                verify_master(pool, master, version, seen()),
                Err(PoolError::WrongMaster { .. })
            ));
        }
        assert!(matches!(
            verify_master(pool, Uuid::new_v4(), 1, seen()),
            Err(PoolError::MasterNotFound { .. })
        ));
        assert!(matches!(
            verify_master(Uuid::new_v4(), d1, 1, seen()),
            Err(PoolError::WrongMaster { .. })
        ));
        // An unreadable master keeps its read's error.
        let unreadable = vec![(d1, Err(StorageError::DomainDoesNotExist(d1)))];
        assert!(matches!(
            verify_master(pool, d1, 1, unreadable),
            Err(PoolError::Unreadable { .. })
        ));
        // A move interrupted after the new master's write: the old one is no longer verified,
        // the new one is.
        let moving = || vec![(d1, master_of(pool, 1, d1)), (d2, master_of(pool, 2, d2))];
        assert!(verify_master(pool, d1, 1, moving()).is_err());
        assert!(verify_master(pool, d2, 2, moving()).is_ok());
        // Two at one version: neither.
        let forged = || vec![(d1, master_of(pool, 2, d1)), (d2, master_of(pool, 2, d2))];
        assert!(verify_master(pool, d1, 2, forged()).is_err());
        assert!(verify_master(pool, d2, 2, forged()).is_err());
    }
}
