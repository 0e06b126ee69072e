//! The embedded object store of a standalone gateway.
//!
//! A small key-value trait — the gateway keeps its model in memory and uses the store only to make
//! it durable — with a [`RedbStore`] for real use and a [`MemoryStore`] for unit tests. A commit
//! returns only once its batch is on disk, so an acknowledged write survives `kill -9`.
//!
//! An I/O failure (a full disk) fails that one operation only: redb refuses every later one on a
//! database that saw an I/O error, so the store closes and reopens it (redb repairs on open)
//! before the next operation, and reports itself unhealthy until that succeeds.

// Network input reaches this crate: a panic here is a crashed gateway, so failures are errors.
#![deny(clippy::unwrap_used, clippy::expect_used)]

use parking_lot::{Mutex, RwLock};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};

/// Object key (`kind/namespace/name`) to its serialized form.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// What the gateway keeps beside the objects (their resource versions): a table of its own, so
/// that an earlier release, which reads only the objects, still opens a store this one wrote.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A table of its own for the write probe, so a probe never shows among the objects.
const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");
/// What the probe writes: a page's worth, so it needs space as a real write does.
const PROBE_BYTES: usize = 4096;

/// The store file inside a gateway's data directory.
pub const STORE_FILE: &str = "store.redb";

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store {path} is in use by another process (is another gateway running on this data directory?)"
    )]
    InUse { path: PathBuf },
    #[error("cannot open the store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("store operation failed: {0}")]
    Backend(String),
    #[error("the store could not write to disk ({0}); free space on its disk, then retry")]
    Io(String),
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(e) => StoreError::Io(e.to_string()),
            redb::Error::PreviousIo => StoreError::Io("an earlier write failed".into()),
            other => StoreError::Backend(other.to_string()),
        }
    }
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::from(e.into())
}

/// One change within a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put {
        key: String,
        value: Vec<u8>,
    },
    Delete {
        key: String,
    },
    /// The same, in the keyspace beside the objects ([`Store::load_meta`]).
    PutMeta {
        key: String,
        value: Vec<u8>,
    },
    DeleteMeta {
        key: String,
    },
}

/// Durable key-value storage for objects. All writes of one [`Store::commit`] land together or
/// not at all.
pub trait Store: Send + Sync + 'static {
    /// Every stored entry, in key order.
    fn load_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Every entry kept beside the objects, in key order.
    fn load_meta(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies `writes` atomically and durably.
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError>;
    /// Whether the store can serve operations now; the error says why not.
    fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

type Opener = Box<dyn Fn() -> Result<Database, DatabaseError> + Send + Sync>;

/// The durable store: one redb file, fsynced on every commit.
pub struct RedbStore {
    path: PathBuf,
    open: Opener,
    /// `None` after an I/O failure, until a reopen succeeds.
    db: RwLock<Option<Database>>,
    /// Whether the last commit failed for want of I/O; health then probes with a write.
    write_failed: AtomicBool,
}

impl RedbStore {
    /// Opens (creating if needed) `<data_dir>/store.redb`. The directory is created private
    /// (0700): the store holds the fabric's whole configuration.
    pub fn open(data_dir: &Path) -> Result<RedbStore, StoreError> {
        let path = data_dir.join(STORE_FILE);
        create_private_dir(data_dir).map_err(|e| StoreError::Open {
            path: data_dir.to_owned(),
            reason: e.to_string(),
        })?;
        let file = path.clone();
        RedbStore::open_with(path, Box::new(move || Database::create(&file)))
    }

    fn open_with(path: PathBuf, open: Opener) -> Result<RedbStore, StoreError> {
        let db = open().map_err(|e| open_error(&path, e))?;
        // Create the table up front so reads of an empty store need no special case.
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(OBJECTS).map_err(backend)?;
        tx.open_table(META).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(RedbStore {
            path,
            open,
            db: RwLock::new(Some(db)),
            write_failed: AtomicBool::new(false),
        })
    }

    /// Runs `op` on the database; after an I/O failure, reopens it once and runs `op` again.
    /// Every operation writes whole values, so running a failed commit again is safe.
    fn with_db<T>(&self, op: impl Fn(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        {
            let db = self.db.read();
            if let Some(db) = db.as_ref() {
                match op(db) {
                    Err(StoreError::Io(reason)) => {
                        tracing::warn!(path = %self.path.display(), "store I/O failed: {reason}; reopening the store")
                    }
                    other => return other,
                }
            }
        }
        let mut db = self.db.write();
        // The old handle holds the file lock: it must be gone before the file is opened again.
        *db = None;
        let reopened = (self.open)().map_err(|e| open_error(&self.path, e))?;
        tracing::info!(path = %self.path.display(), "store reopened");
        op(db.insert(reopened))
    }
}

impl RedbStore {
    fn load_table(
        &self,
        definition: TableDefinition<&str, &[u8]>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(backend)?;
            let table = tx.open_table(definition).map_err(backend)?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn note_write(&self, result: &Result<(), StoreError>) {
        match result {
            Ok(()) => self.write_failed.store(false, Ordering::Relaxed),
            Err(StoreError::Io(_)) => self.write_failed.store(true, Ordering::Relaxed),
            Err(_) => {}
        }
    }
}

fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::DatabaseAlreadyOpen => StoreError::InUse {
            path: path.to_owned(),
        },
        DatabaseError::Storage(redb::StorageError::Io(e)) => StoreError::Io(e.to_string()),
        other => StoreError::Open {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// Creates `dir` and its missing parents with mode 0700, whatever the umask.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

impl Store for RedbStore {
    /// Readable, and writable too once a write failed: a full disk keeps the store unhealthy
    /// until space is freed, found by writing (and removing) a probe.
    fn health(&self) -> Result<(), StoreError> {
        if !self.write_failed.load(Ordering::Relaxed) {
            return self.with_db(|db| db.begin_read().map(drop).map_err(backend));
        }
        let probe = self.with_db(|db| {
            for value in [Some([0u8; PROBE_BYTES]), None] {
                let tx = db.begin_write().map_err(backend)?;
                {
                    let mut table = tx.open_table(PROBE).map_err(backend)?;
                    match value {
                        Some(v) => drop(table.insert("probe", v.as_slice()).map_err(backend)?),
                        None => drop(table.remove("probe").map_err(backend)?),
                    }
                }
                tx.commit().map_err(backend)?;
            }
            Ok(())
        });
        self.note_write(&probe);
        probe
    }

    fn load_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.load_table(OBJECTS)
    }

    fn load_meta(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.load_table(META)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(backend)?;
            let table = tx.open_table(OBJECTS).map_err(backend)?;
            Ok(table.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
        })
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let committed = self.with_db(|db| {
            let tx = db.begin_write().map_err(backend)?;
            {
                let mut objects = tx.open_table(OBJECTS).map_err(backend)?;
                let mut meta = tx.open_table(META).map_err(backend)?;
                for w in writes {
                    match w {
                        Write::Put { key, value } => {
                            objects
                                .insert(key.as_str(), value.as_slice())
                                .map_err(backend)?;
                        }
                        Write::Delete { key } => {
                            objects.remove(key.as_str()).map_err(backend)?;
                        }
                        Write::PutMeta { key, value } => {
                            meta.insert(key.as_str(), value.as_slice())
                                .map_err(backend)?;
                        }
                        Write::DeleteMeta { key } => {
                            meta.remove(key.as_str()).map_err(backend)?;
                        }
                    }
                }
            }
            // Durability is redb's default (Immediate): commit returns after fsync.
            tx.commit().map_err(backend)
        });
        self.note_write(&committed);
        committed
    }
}

/// An in-memory store for unit tests of code above the store.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<BTreeMap<String, Vec<u8>>>,
    meta: Mutex<BTreeMap<String, Vec<u8>>>,
}

fn all(entries: &Mutex<BTreeMap<String, Vec<u8>>>) -> Vec<(String, Vec<u8>)> {
    let entries = entries.lock();
    entries
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Store for MemoryStore {
    fn load_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(all(&self.entries))
    }

    fn load_meta(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(all(&self.meta))
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries.lock().get(key).cloned())
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let (mut entries, mut meta) = (self.entries.lock(), self.meta.lock());
        for w in writes {
            match w {
                Write::Put { key, value } => {
                    entries.insert(key.clone(), value.clone());
                }
                Write::Delete { key } => {
                    entries.remove(key);
                }
                Write::PutMeta { key, value } => {
                    meta.insert(key.clone(), value.clone());
                }
                Write::DeleteMeta { key } => {
                    meta.remove(key);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Write {
        Write::Put {
            key: k.into(),
            value: v.as_bytes().to_vec(),
        }
    }

    fn exercise(store: &dyn Store) {
        assert!(store.load_all().unwrap().is_empty());
        store.commit(&[put("b", "2"), put("a", "1")]).unwrap();
        assert_eq!(store.get("a").unwrap().as_deref(), Some(&b"1"[..]));
        store
            .commit(&[
                put("a", "one"),
                Write::Delete { key: "b".into() },
                Write::Delete { key: "zz".into() },
            ])
            .unwrap();
        assert_eq!(
            store.load_all().unwrap(),
            vec![("a".to_string(), b"one".to_vec())]
        );
        assert_eq!(store.get("b").unwrap(), None);
        // The keyspace beside the objects is apart from them.
        let meta = |k: &str, v: &str| Write::PutMeta {
            key: k.into(),
            value: v.as_bytes().to_vec(),
        };
        store.commit(&[meta("a", "m"), meta("z", "1")]).unwrap();
        store
            .commit(&[Write::DeleteMeta { key: "z".into() }])
            .unwrap();
        assert_eq!(
            store.load_meta().unwrap(),
            vec![("a".into(), b"m".to_vec())]
        );
        assert_eq!(store.load_all().unwrap().len(), 1);
        assert_eq!(store.get("a").unwrap().as_deref(), Some(&b"one"[..]));
    }

    #[test]
    fn memory_store() {
        exercise(&MemoryStore::default());
    }

    #[test]
    fn redb_store_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        exercise(&RedbStore::open(dir.path()).unwrap());
        let reopened = RedbStore::open(dir.path()).unwrap();
        assert_eq!(reopened.get("a").unwrap().as_deref(), Some(&b"one"[..]));
    }

    /// Memory that fails every write while `full` is set, as a full disk does.
    #[derive(Debug)]
    struct FullDisk {
        memory: std::sync::Arc<redb::backends::InMemoryBackend>,
        full: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl FullDisk {
        fn check(&self) -> std::io::Result<()> {
            if self.full.load(std::sync::atomic::Ordering::SeqCst) {
                Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
            } else {
                Ok(())
            }
        }
    }

    impl redb::StorageBackend for FullDisk {
        fn len(&self) -> std::io::Result<u64> {
            self.memory.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.memory.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.memory.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.memory.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.memory.write(offset, data)
        }
    }

    #[test]
    fn a_full_disk_fails_writes_only_while_it_is_full() {
        let memory = std::sync::Arc::new(redb::backends::InMemoryBackend::new());
        let full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let disk = (memory.clone(), full.clone());
        let store = RedbStore::open_with(
            PathBuf::from("memory"),
            Box::new(move || {
                Database::builder().create_with_backend(FullDisk {
                    memory: disk.0.clone(),
                    full: disk.1.clone(),
                })
            }),
        )
        .unwrap();
        store.commit(&[put("a", "1")]).unwrap();

        full.store(true, std::sync::atomic::Ordering::SeqCst);
        let err = store.commit(&[put("b", "2")]).unwrap_err();
        assert!(matches!(err, StoreError::Io(_)), "{err}");
        assert!(err.to_string().contains("free space"), "{err}");
        let revoke = [Write::Delete { key: "a".into() }];
        assert!(matches!(store.commit(&revoke), Err(StoreError::Io(_))));
        assert!(matches!(store.health(), Err(StoreError::Io(_))));

        // Space is back: no restart needed, and nothing half-written shows.
        full.store(false, std::sync::atomic::Ordering::SeqCst);
        store.health().unwrap();
        store.commit(&revoke).unwrap();
        assert!(store.load_all().unwrap().is_empty());
        store.commit(&[put("c", "3")]).unwrap();
        assert_eq!(store.get("c").unwrap().as_deref(), Some(&b"3"[..]));
    }

    #[test]
    fn the_data_directory_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        let old = rustix::process::umask(rustix::fs::Mode::empty());
        let opened = RedbStore::open(&data);
        rustix::process::umask(old);
        opened.unwrap();
        let mode = std::fs::metadata(&data).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }

    #[test]
    fn second_opener_is_told_the_store_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RedbStore::open(dir.path()).unwrap();
        let err = RedbStore::open(dir.path())
            .err()
            .expect("second open must fail");
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
    }
}
