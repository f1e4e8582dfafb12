//! A directory of durable records, one JSON file per id, written atomically (temporary file,
//! fsync, rename, fsync of the directory) before the step they announce and removed after
//! the last: the journals of intent that a restarted rvdsmd reads to finish what a crash
//! interrupted (VM lifecycle, live merges). Blocking file I/O.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::fsutil::{remove_if_exists, write_atomic};

/// The directory of records of type `T`.
#[derive(Debug)]
pub struct RecordDir<T> {
    dir: PathBuf,
    /// What the records are, for log lines.
    what: &'static str,
    _records: PhantomData<fn() -> T>,
}

impl<T> Clone for RecordDir<T> {
    fn clone(&self) -> Self {
        Self {
            dir: self.dir.clone(),
            what: self.what,
            _records: PhantomData,
        }
    }
}

impl<T: Serialize + DeserializeOwned> RecordDir<T> {
    /// The records in `dir` (created if missing); `what` names them in logs.
    pub fn open(dir: &Path, what: &'static str) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            what,
            _records: PhantomData,
        })
    }

    fn path(&self, id: Uuid) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Records `record` under `id` durably, replacing any record there.
    pub fn write(&self, id: Uuid, record: &T) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        write_atomic(&self.path(id), &bytes, 0o600)
    }

    /// Forgets the record of `id` (none is fine).
    pub fn remove(&self, id: Uuid) -> std::io::Result<()> {
        remove_if_exists(&self.path(id)).map(drop)
    }

    /// Every record left by a previous run; unreadable ones are logged and skipped.
    pub fn entries(&self) -> Vec<T> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| {
                let path = e.path();
                match std::fs::read(&path).map(|b| serde_json::from_slice::<T>(&b)) {
                    Ok(Ok(record)) => Some(record),
                    Ok(Err(err)) => {
                        tracing::error!(what = self.what, path = %path.display(), error = %err, "unreadable journal record");
                        None
                    }
                    Err(err) => {
                        tracing::error!(what = self.what, path = %path.display(), error = %err, "cannot read journal record");
                        None
                    }
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_and_go_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let records = RecordDir::<Vec<u32>>::open(dir.path(), "test").unwrap();
        let id = Uuid::from_u128(1);
        records.write(id, &vec![1, 2]).unwrap();
        records.write(id, &vec![3]).unwrap();
        std::fs::write(dir.path().join("junk.json"), b"{").unwrap();
        let reopened = RecordDir::<Vec<u32>>::open(dir.path(), "test").unwrap();
        assert_eq!(reopened.entries(), vec![vec![3]]);
        reopened.remove(id).unwrap();
        reopened.remove(id).unwrap();
        assert!(reopened.entries().is_empty());
    }
}
