//! Where guard records live: in memory, or as one JSON file per gateway under the state dir.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::{Fingerprint, GuardRecord};
use crate::sync::lock;

/// Records kept per gateway file: old fingerprints beyond this are forgotten.
const MAX_RECORDS: usize = 32;

/// Where guard records live. The default is [`FileGuardStore`]; a shared backend lets several
/// replicas behind one egress IP share one budget.
pub trait GuardStore: Send + Sync + fmt::Debug + 'static {
    /// The record of `fingerprint` (a default record if there is none).
    fn load(&self, gateway: &str, fingerprint: Fingerprint) -> io::Result<GuardRecord>;
    /// Durably stores the record of `fingerprint`.
    fn save(&self, gateway: &str, fingerprint: Fingerprint, record: &GuardRecord)
        -> io::Result<()>;
}

/// Guard records in memory only: for tests and library users who accept losing them on restart.
#[derive(Debug, Default)]
pub struct MemoryGuardStore {
    records: Mutex<BTreeMap<(String, Fingerprint), GuardRecord>>,
}

impl GuardStore for MemoryGuardStore {
    fn load(&self, gateway: &str, fingerprint: Fingerprint) -> io::Result<GuardRecord> {
        Ok(lock(&self.records)
            .get(&(gateway.to_owned(), fingerprint))
            .cloned()
            .unwrap_or_default())
    }

    fn save(
        &self,
        gateway: &str,
        fingerprint: Fingerprint,
        record: &GuardRecord,
    ) -> io::Result<()> {
        lock(&self.records).insert((gateway.to_owned(), fingerprint), record.clone());
        Ok(())
    }
}

/// Guard records as one JSON file per gateway under the state directory, written atomically
/// (temporary file, fsync, rename).
#[derive(Debug)]
pub struct FileGuardStore {
    dir: PathBuf,
    write: Mutex<()>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct GuardFile {
    records: BTreeMap<String, GuardRecord>,
}

impl FileGuardStore {
    /// A store under `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            write: Mutex::new(()),
        })
    }

    fn path(&self, gateway: &str) -> PathBuf {
        self.dir.join(format!("guard-{gateway}.json"))
    }

    fn read(path: &Path) -> io::Result<GuardFile> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the lockout record {} is corrupt ({e}); payauth will not guess how many \
                         authentications it holds. Check it, and delete it only if this gateway's \
                         credentials were never rejected",
                        path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(GuardFile::default()),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot read the lockout record {}: {e}", path.display()),
            )),
        }
    }
}

impl GuardStore for FileGuardStore {
    fn load(&self, gateway: &str, fingerprint: Fingerprint) -> io::Result<GuardRecord> {
        let file = Self::read(&self.path(gateway))?;
        Ok(file
            .records
            .get(&fingerprint.to_hex())
            .cloned()
            .unwrap_or_default())
    }

    fn save(
        &self,
        gateway: &str,
        fingerprint: Fingerprint,
        record: &GuardRecord,
    ) -> io::Result<()> {
        let _serialised = lock(&self.write);
        let path = self.path(gateway);
        let mut file = Self::read(&path)?;
        file.records.insert(fingerprint.to_hex(), record.clone());
        // Forget the oldest clean records first; locked ones are worth keeping.
        while file.records.len() > MAX_RECORDS {
            let victim = file
                .records
                .iter()
                .find(|(_, r)| !r.locked)
                .or_else(|| file.records.iter().next())
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => file.records.remove(&k),
                None => break,
            };
        }
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        crate::files::write_atomically(&path, &bytes)
    }
}
