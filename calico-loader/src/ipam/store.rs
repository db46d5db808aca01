//! Where IPAM's objects live, and the compare-and-swap every change goes through: the
//! [`IpamStore`] trait, its etcd implementation ([`EtcdIpamStore`]) and its local directory
//! implementation ([`LocalIpamStore`]).
//!
//! A value's [`Revision`] is what a write compares against: etcd's mod revision, or in the
//! directory a hash of the file's bytes. `create` succeeds only if the key does not exist (etcd:
//! `create_revision == 0`); `update` and `delete` only if the key is still at the revision the
//! caller read (etcd: `mod_revision ==`). A refused write is [`IpamStoreError::Conflict`] or
//! [`IpamStoreError::AlreadyExists`], and the allocator reads again and retries.
//!
//! The directory keeps each key in the file at the key's path without `/calico/`
//! (`<dir>/ipam/v2/handle/h1`), with the same bytes as etcd's value. Every operation holds an
//! exclusive `flock` on `<dir>/ipam/.lock` while it reads, compares and writes, and a write
//! goes to a hidden temporary file renamed over the key's file, so concurrent processes see
//! each value whole and the compare-and-swap is as strict as etcd's.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::datastore::{EtcdClient, EtcdConfig, StoreError, local::IPAM_DIR};

/// What a write compares against: etcd's mod revision, or a hash of the local file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revision(pub String);

/// A key's value and revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredValue {
    pub key: String,
    pub value: Vec<u8>,
    pub revision: Revision,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamStoreError {
    /// `create` of a key that exists.
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    /// `update` or `delete` of a key that changed (or went) since it was read.
    #[error("{key} changed since it was read")]
    Conflict { key: String },
    /// etcd failed or cannot be reached.
    #[error(transparent)]
    Etcd(#[from] StoreError),
    /// A file could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    /// A key that no file can hold (`..`, an empty part).
    #[error("{key}: not a key IPAM writes")]
    BadKey { key: String },
}

impl IpamStoreError {
    /// Whether the operation lost a race, so reading again and retrying may succeed.
    pub fn is_race(&self) -> bool {
        matches!(self, Self::AlreadyExists { .. } | Self::Conflict { .. })
    }
}

/// IPAM's storage: keys and values with compare-and-swap (see the module documentation).
#[allow(async_fn_in_trait)] // used with concrete stores; no Send bound is needed
pub trait IpamStore {
    /// The value of `key`, if it exists.
    async fn get(&mut self, key: &str) -> Result<Option<StoredValue>, IpamStoreError>;

    /// Every key starting with `prefix`, sorted by key.
    async fn list(&mut self, prefix: &str) -> Result<Vec<StoredValue>, IpamStoreError>;

    /// Creates `key`; [`IpamStoreError::AlreadyExists`] if it exists.
    async fn create(&mut self, key: &str, value: Vec<u8>) -> Result<Revision, IpamStoreError>;

    /// Replaces `key` if it is still at `revision`; [`IpamStoreError::Conflict`] otherwise.
    async fn update(
        &mut self,
        key: &str,
        value: Vec<u8>,
        revision: &Revision,
    ) -> Result<Revision, IpamStoreError>;

    /// Deletes `key` if it is still at `revision`; [`IpamStoreError::Conflict`] otherwise.
    async fn delete(&mut self, key: &str, revision: &Revision) -> Result<(), IpamStoreError>;
}

// ---------------------------------------------------------------------------------------------
// etcd

/// IPAM's objects in etcd, under Calico's keys.
pub struct EtcdIpamStore {
    client: EtcdClient,
    config: EtcdConfig,
}

impl EtcdIpamStore {
    /// Connects (lazily) to etcd.
    ///
    /// # Errors
    ///
    /// Settings that do not work (see [`EtcdConfig::connect`]).
    pub async fn connect(config: &EtcdConfig) -> Result<Self, IpamStoreError> {
        Ok(Self {
            client: config.connect().await?,
            config: config.clone(),
        })
    }

    fn error(&self, error: etcd_client::Error) -> IpamStoreError {
        IpamStoreError::Etcd(self.config.error(error))
    }

    async fn txn(&mut self, key: &str, txn: Txn) -> Result<Revision, IpamStoreError> {
        let response = self.client.txn(txn).await.map_err(|e| self.error(e))?;
        if !response.succeeded() {
            return Err(IpamStoreError::Conflict {
                key: key.to_owned(),
            });
        }
        Ok(Revision(
            response
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision)
                .to_string(),
        ))
    }
}

impl IpamStore for EtcdIpamStore {
    async fn get(&mut self, key: &str) -> Result<Option<StoredValue>, IpamStoreError> {
        let response = self
            .client
            .get(key, None)
            .await
            .map_err(|e| self.error(e))?;
        Ok(response.kvs().first().map(|kv| StoredValue {
            key: key.to_owned(),
            value: kv.value().to_vec(),
            revision: Revision(kv.mod_revision().to_string()),
        }))
    }

    async fn list(&mut self, prefix: &str) -> Result<Vec<StoredValue>, IpamStoreError> {
        let response = self
            .client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.error(e))?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| StoredValue {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                revision: Revision(kv.mod_revision().to_string()),
            })
            .collect())
    }

    async fn create(&mut self, key: &str, value: Vec<u8>) -> Result<Revision, IpamStoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value, None)]);
        self.txn(key, txn).await.map_err(|e| match e {
            IpamStoreError::Conflict { key } => IpamStoreError::AlreadyExists { key },
            other => other,
        })
    }

    async fn update(
        &mut self,
        key: &str,
        value: Vec<u8>,
        revision: &Revision,
    ) -> Result<Revision, IpamStoreError> {
        let revision = etcd_revision(key, revision)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then([TxnOp::put(key, value, None)]);
        self.txn(key, txn).await
    }

    async fn delete(&mut self, key: &str, revision: &Revision) -> Result<(), IpamStoreError> {
        let revision = etcd_revision(key, revision)?;
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
            .and_then([TxnOp::delete(key, None)]);
        self.txn(key, txn).await.map(|_| ())
    }
}

fn etcd_revision(key: &str, revision: &Revision) -> Result<i64, IpamStoreError> {
    revision.0.parse().map_err(|_| IpamStoreError::Conflict {
        key: key.to_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// The local directory

/// IPAM's objects in a datastore directory (see the module documentation).
pub struct LocalIpamStore {
    dir: PathBuf,
}

impl LocalIpamStore {
    /// The store of the datastore directory `dir` (its `ipam/` subdirectory).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> IpamStoreError + '_ {
        move |source| IpamStoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The file of `key`.
    fn path(&self, key: &str) -> Result<PathBuf, IpamStoreError> {
        let bad = || IpamStoreError::BadKey {
            key: key.to_owned(),
        };
        let rest = key.strip_prefix("/calico/").ok_or_else(bad)?;
        let mut path = self.dir.clone();
        for (i, part) in rest.split('/').enumerate() {
            if part.is_empty() || part == "." || part == ".." || part.starts_with('.') {
                return Err(bad());
            }
            if i == 0 && part != IPAM_DIR {
                return Err(bad());
            }
            path.push(part);
        }
        Ok(path)
    }

    /// Holds the exclusive lock of the IPAM directory while `work` runs.
    fn locked<T>(
        &self,
        work: impl FnOnce() -> Result<T, IpamStoreError>,
    ) -> Result<T, IpamStoreError> {
        let ipam = self.dir.join(IPAM_DIR);
        fs::create_dir_all(&ipam).map_err(Self::io(&ipam))?;
        let lock_path = ipam.join(".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Self::io(&lock_path))?;
        lock.lock().map_err(Self::io(&lock_path))?;
        let result = work();
        let _ = lock.unlock();
        result
    }

    fn read(path: &Path) -> Result<Option<Vec<u8>>, IpamStoreError> {
        match fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io(path)(e)),
        }
    }

    /// Writes `value` to a hidden file beside `path`, then renames it over `path`.
    fn write(path: &Path, value: &[u8]) -> Result<(), IpamStoreError> {
        let parent = path.parent().unwrap_or(path);
        fs::create_dir_all(parent).map_err(Self::io(parent))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
        fs::write(&temp, value).map_err(Self::io(&temp))?;
        fs::rename(&temp, path).map_err(|e| {
            let _ = fs::remove_file(&temp);
            Self::io(path)(e)
        })
    }

    fn walk(
        &self,
        dir: &Path,
        key: &str,
        prefix: &str,
        out: &mut Vec<StoredValue>,
    ) -> Result<(), IpamStoreError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Self::io(dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Self::io(dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let child_key = format!("{key}/{name}");
            let path = entry.path();
            if entry.file_type().map_err(Self::io(&path))?.is_dir() {
                if prefix.starts_with(&format!("{child_key}/")) || child_key.starts_with(prefix) {
                    self.walk(&path, &child_key, prefix, out)?;
                }
            } else if child_key.starts_with(prefix)
                && let Some(value) = Self::read(&path)?
            {
                out.push(StoredValue {
                    key: child_key,
                    revision: content_revision(&value),
                    value,
                });
            }
        }
        Ok(())
    }

    /// Removes the empty directories above `path`, up to the IPAM directory.
    fn prune(&self, path: &Path) {
        let top = self.dir.join(IPAM_DIR);
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == top || !d.starts_with(&top) || fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// A local value's revision: 64-bit FNV-1a of its bytes. Comparing contents is a sound
/// compare-and-swap: a writer that read these bytes decided on these bytes.
fn content_revision(value: &[u8]) -> Revision {
    let hash = value.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    Revision(format!("{hash:016x}"))
}

impl IpamStore for LocalIpamStore {
    async fn get(&mut self, key: &str) -> Result<Option<StoredValue>, IpamStoreError> {
        let path = self.path(key)?;
        self.locked(|| {
            Ok(Self::read(&path)?.map(|value| StoredValue {
                key: key.to_owned(),
                revision: content_revision(&value),
                value,
            }))
        })
    }

    async fn list(&mut self, prefix: &str) -> Result<Vec<StoredValue>, IpamStoreError> {
        let root_key = format!("/calico/{IPAM_DIR}");
        if !prefix.starts_with(&root_key) {
            return Ok(Vec::new());
        }
        let root = self.dir.join(IPAM_DIR);
        let mut out = self.locked(|| {
            let mut out = Vec::new();
            self.walk(&root, &root_key, prefix, &mut out)?;
            Ok(out)
        })?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn create(&mut self, key: &str, value: Vec<u8>) -> Result<Revision, IpamStoreError> {
        let path = self.path(key)?;
        self.locked(|| {
            if path.exists() {
                return Err(IpamStoreError::AlreadyExists {
                    key: key.to_owned(),
                });
            }
            Self::write(&path, &value)?;
            Ok(content_revision(&value))
        })
    }

    async fn update(
        &mut self,
        key: &str,
        value: Vec<u8>,
        revision: &Revision,
    ) -> Result<Revision, IpamStoreError> {
        let path = self.path(key)?;
        self.locked(|| {
            match Self::read(&path)? {
                Some(current) if content_revision(&current) == *revision => {}
                _ => {
                    return Err(IpamStoreError::Conflict {
                        key: key.to_owned(),
                    });
                }
            }
            Self::write(&path, &value)?;
            Ok(content_revision(&value))
        })
    }

    async fn delete(&mut self, key: &str, revision: &Revision) -> Result<(), IpamStoreError> {
        let path = self.path(key)?;
        self.locked(|| {
            match Self::read(&path)? {
                Some(current) if content_revision(&current) == *revision => {}
                _ => {
                    return Err(IpamStoreError::Conflict {
                        key: key.to_owned(),
                    });
                }
            }
            fs::remove_file(&path).map_err(Self::io(&path))?;
            self.prune(&path);
            Ok(())
        })
    }
}

/// Either store, as the datastore settings say.
pub enum AnyIpamStore {
    Etcd(Box<EtcdIpamStore>),
    Local(LocalIpamStore),
}

impl IpamStore for AnyIpamStore {
    async fn get(&mut self, key: &str) -> Result<Option<StoredValue>, IpamStoreError> {
        match self {
            Self::Etcd(s) => s.get(key).await,
            Self::Local(s) => s.get(key).await,
        }
    }

    async fn list(&mut self, prefix: &str) -> Result<Vec<StoredValue>, IpamStoreError> {
        match self {
            Self::Etcd(s) => s.list(prefix).await,
            Self::Local(s) => s.list(prefix).await,
        }
    }

    async fn create(&mut self, key: &str, value: Vec<u8>) -> Result<Revision, IpamStoreError> {
        match self {
            Self::Etcd(s) => s.create(key, value).await,
            Self::Local(s) => s.create(key, value).await,
        }
    }

    async fn update(
        &mut self,
        key: &str,
        value: Vec<u8>,
        revision: &Revision,
    ) -> Result<Revision, IpamStoreError> {
        match self {
            Self::Etcd(s) => s.update(key, value, revision).await,
            Self::Local(s) => s.update(key, value, revision).await,
        }
    }

    async fn delete(&mut self, key: &str, revision: &Revision) -> Result<(), IpamStoreError> {
        match self {
            Self::Etcd(s) => s.delete(key, revision).await,
            Self::Local(s) => s.delete(key, revision).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_compare_and_swap() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LocalIpamStore::new(dir.path());
        let key = "/calico/ipam/v2/handle/h1";
        let r1 = store.create(key, b"one".to_vec()).await.unwrap();
        assert!(matches!(
            store.create(key, b"two".to_vec()).await,
            Err(IpamStoreError::AlreadyExists { .. })
        ));
        assert!(dir.path().join("ipam/v2/handle/h1").is_file());
        let r2 = store.update(key, b"two".to_vec(), &r1).await.unwrap();
        assert!(matches!(
            store.update(key, b"three".to_vec(), &r1).await,
            Err(IpamStoreError::Conflict { .. })
        ));
        let listed = store.list("/calico/ipam/v2/").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].value, b"two");
        assert!(store.delete(key, &r1).await.is_err());
        store.delete(key, &r2).await.unwrap();
        assert_eq!(store.get(key).await.unwrap(), None);
        // Empty directories go with the last file.
        assert!(!dir.path().join("ipam/v2/handle").exists());
        assert!(store.get("/calico/ipam/v2/handle/../x").await.is_err());
    }
}
