//! The embedded object store of a standalone gateway.
//!
//! A small key-value trait — the gateway keeps its model in memory and uses the store only to make
//! it durable — with a [`RedbStore`] for real use and a [`MemoryStore`] for unit tests. A commit
//! returns only once its batch is on disk, so an acknowledged write survives `kill -9`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

/// The one table: object key (`kind/namespace/name`) to its serialized form.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

/// The store file inside a gateway's data directory.
pub const STORE_FILE: &str = "store.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store {path} is in use by another process (is another gateway running on this data directory?)"
    )]
    InUse { path: PathBuf },
    #[error("cannot open the store {path}: {reason}")]
    Open { path: PathBuf, reason: String },
    #[error("store operation failed: {0}")]
    Backend(String),
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Backend(e.to_string())
    }
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::from(e.into())
}

/// One change within a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// Durable key-value storage for objects. All writes of one [`Store::commit`] land together or
/// not at all.
pub trait Store: Send + Sync + 'static {
    /// Every stored entry, in key order.
    fn load_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Applies `writes` atomically and durably.
    fn commit(&self, writes: &[Write]) -> Result<(), StoreError>;
}

/// The durable store: one redb file, fsynced on every commit.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (creating if needed) `<data_dir>/store.redb`.
    pub fn open(data_dir: &Path) -> Result<RedbStore, StoreError> {
        let path = data_dir.join(STORE_FILE);
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Open {
            path: data_dir.to_owned(),
            reason: e.to_string(),
        })?;
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse { path: path.clone() },
            other => StoreError::Open {
                path: path.clone(),
                reason: other.to_string(),
            },
        })?;
        // Create the table up front so reads of an empty store need no special case.
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(OBJECTS).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(RedbStore { db })
    }
}

impl Store for RedbStore {
    fn load_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(OBJECTS).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(OBJECTS).map_err(backend)?;
        Ok(table.get(key).map_err(backend)?.map(|v| v.value().to_vec()))
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(backend)?;
        {
            let mut table = tx.open_table(OBJECTS).map_err(backend)?;
            for w in writes {
                match w {
                    Write::Put { key, value } => {
                        table
                            .insert(key.as_str(), value.as_slice())
                            .map_err(backend)?;
                    }
                    Write::Delete { key } => {
                        table.remove(key.as_str()).map_err(backend)?;
                    }
                }
            }
        }
        // Durability is redb's default (Immediate): commit returns after fsync.
        tx.commit().map_err(backend)
    }
}

/// An in-memory store for unit tests of code above the store.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl Store for MemoryStore {
    fn load_all(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let entries = self.entries.lock().expect("store lock");
        Ok(entries
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.entries.lock().expect("store lock").get(key).cloned())
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut entries = self.entries.lock().expect("store lock");
        for w in writes {
            match w {
                Write::Put { key, value } => {
                    entries.insert(key.clone(), value.clone());
                }
                Write::Delete { key } => {
                    entries.remove(key);
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
