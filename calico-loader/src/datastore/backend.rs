//! One interface over both datastores: the local directory and etcd v3.
//!
//! - [`DatastoreConfig`]: which datastore, as `DATASTORE_TYPE=local|etcdv3` and its settings.
//! - [`AgentDatastore`]: what the agent follows: [`sync`](AgentDatastore::sync) gives the
//!   resources in force, [`changed`](AgentDatastore::changed) says when to sync again.
//! - [`Store`]: what the CLI reads and writes: list, get, create/replace/apply (all or nothing)
//!   and delete, with resource versions for optimistic concurrency.
//!
//! What a store reads and writes (resources with their versions, write requests, errors) is in
//! `store`, which the etcd backend shares.
//!
//! The local store writes one file per resource, `<plural>/<name>.yaml` for cluster-scoped
//! kinds and `<plural>/<namespace>/<name>.yaml` for namespaced ones, under the directory.
//! Resources defined in other files are listed and read, but not replaced or deleted (the
//! error names the file). A local resource's version is a hash of its file's text.

use std::{
    collections::BTreeMap,
    fmt, io,
    path::{Path, PathBuf},
};

use serde_json::Value;
use tracing::info;

use super::{
    error::{DatastoreError, ErrorKind},
    etcd::{EtcdStore, EtcdSync, decode_versioned, encode, etcd_key},
    etcd_client::EtcdConfig,
    local::{DatastoreWatch, LocalDatastore, list_files, read_text, watch},
    parse::parse_documents,
    resources::{Kind, ResourceKey, StoredForm},
    snapshot::SyncResult,
    store::{StoreError, StoredResource, WriteOutcome, WriteRequest, check_write, prepare_value},
};

/// Which datastore, and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatastoreConfig {
    /// A directory of YAML/JSON files.
    Local(PathBuf),
    /// etcd v3, with Calico's key layout.
    Etcd(EtcdConfig),
}

impl fmt::Display for DatastoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatastoreConfig::Local(dir) => write!(f, "local directory {}", dir.display()),
            DatastoreConfig::Etcd(config) => write!(f, "etcdv3 at {}", config.endpoints_label()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The agent's datastore

/// What the agent follows.
#[derive(Debug)]
pub enum AgentDatastore {
    /// The directory, re-read when it changes.
    Local {
        store: Box<LocalDatastore>,
        watch: DatastoreWatch,
    },
    /// etcd, listed and watched in the background.
    Etcd(EtcdSync),
}

impl AgentDatastore {
    /// Starts following the datastore. A missing local directory is created.
    ///
    /// # Errors
    ///
    /// The directory cannot be created or watched, or the etcd settings do not work.
    pub async fn start(config: &DatastoreConfig) -> Result<Self, StoreError> {
        match config {
            DatastoreConfig::Local(dir) => {
                if !dir.exists() {
                    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                        path: dir.clone(),
                        source,
                    })?;
                    info!(dir = %dir.display(), "created empty datastore directory");
                }
                Ok(Self::Local {
                    store: Box::new(LocalDatastore::new(dir)),
                    watch: watch(dir)?,
                })
            }
            DatastoreConfig::Etcd(config) => Ok(Self::Etcd(EtcdSync::start(config).await?)),
        }
    }

    /// The resources in force now and the problems found (new ones are logged once).
    pub fn sync(&mut self) -> SyncResult {
        match self {
            Self::Local { store, .. } => store.sync(),
            Self::Etcd(sync) => sync.sync(),
        }
    }

    /// Waits until the resources may have changed; `None` if following stopped. Cancel-safe.
    pub async fn changed(&mut self) -> Option<()> {
        match self {
            Self::Local { watch, .. } => watch.recv().await,
            Self::Etcd(sync) => sync.changed().await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI's store

/// What the CLI reads and writes.
pub enum Store {
    Local(LocalStore),
    Etcd(Box<EtcdStore>),
}

impl Store {
    /// Opens the datastore (etcd connects lazily).
    ///
    /// # Errors
    ///
    /// Settings that do not work.
    pub async fn open(config: &DatastoreConfig) -> Result<Self, StoreError> {
        Ok(match config {
            DatastoreConfig::Local(dir) => Self::Local(LocalStore::new(dir)),
            DatastoreConfig::Etcd(config) => {
                Self::Etcd(Box::new(EtcdStore::connect(config).await?))
            }
        })
    }

    /// Every resource of `kind` (in `namespace`, if given), by key, and the problems of what
    /// does not read.
    ///
    /// # Errors
    ///
    /// The datastore cannot be read.
    pub async fn list(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<StoredResource>, Vec<DatastoreError>), StoreError> {
        match self {
            Self::Local(store) => Ok(store.list(kind, namespace)),
            Self::Etcd(store) => store.list(kind, namespace).await,
        }
    }

    /// The resource `key`, if stored.
    ///
    /// # Errors
    ///
    /// The datastore cannot be read (or, etcd, the stored value does not read).
    pub async fn get(&mut self, key: &ResourceKey) -> Result<Option<StoredResource>, StoreError> {
        match self {
            Self::Local(store) => Ok(store.get(key)),
            Self::Etcd(store) => store.get(key).await,
        }
    }

    /// Writes every request, or none.
    ///
    /// # Errors
    ///
    /// See [`StoreError`]: nothing was written.
    pub async fn write(
        &mut self,
        requests: &[WriteRequest],
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        match self {
            Self::Local(store) => store.write(requests),
            Self::Etcd(store) => store.write(requests).await,
        }
    }

    /// Deletes `key`, if its version is `expected_version` (when given).
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Conflict`] and the datastore's failures.
    pub async fn delete(
        &mut self,
        key: &ResourceKey,
        expected_version: Option<&str>,
    ) -> Result<(), StoreError> {
        match self {
            Self::Local(store) => store.delete(key, expected_version),
            Self::Etcd(store) => store.delete(key, expected_version).await.map(|_| ()),
        }
    }
}

/// A resource read from a local file.
struct LocalEntry {
    /// The file, relative to the directory.
    file: PathBuf,
    stored: StoredResource,
}

/// The local directory, for the CLI: one file per resource written (see the module doc).
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
        }
    }

    /// The file (relative) the CLI keeps `key` in: for a kind stored outside the v3 tree, its
    /// etcd key's path without `/calico/` (`ipam/v2/config`).
    pub fn managed_path(key: &ResourceKey) -> PathBuf {
        let info = key.kind.info();
        if info.etcd.stores_outside_v3() {
            return PathBuf::from(etcd_key(key).trim_start_matches("/calico/"));
        }
        let mut path = PathBuf::from(key.kind.plural());
        if let Some(namespace) = &key.namespace {
            path.push(namespace);
        }
        path.push(format!("{}.yaml", key.name));
        path
    }

    /// Every resource of the directory (first definition wins, as for the agent) and the
    /// problems found.
    fn load(&self) -> (BTreeMap<ResourceKey, LocalEntry>, Vec<DatastoreError>) {
        let mut entries = BTreeMap::new();
        let mut errors = Vec::new();
        if !self.dir.exists() {
            return (entries, errors);
        }
        self.load_outside_v3(&mut entries, &mut errors);
        let listing = list_files(&self.dir);
        for (label, message) in listing.errors {
            errors.push(DatastoreError::file(label, ErrorKind::Io, message));
        }
        for file in listing.files {
            let label = file.display().to_string();
            let text = match read_text(&self.dir.join(&file)) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(DatastoreError::file(
                        &label,
                        ErrorKind::Io,
                        format!("cannot read: {e}"),
                    ));
                    continue;
                }
            };
            let version = format!("{:016x}", fnv1a(text.as_bytes()));
            match parse_documents(&label, &text) {
                Ok(documents) => {
                    for document in documents {
                        let key = document.resource.key();
                        let mut value = document.raw;
                        if let Some(metadata) =
                            value.get_mut("metadata").and_then(Value::as_object_mut)
                        {
                            if let Some(namespace) = &key.namespace {
                                metadata.insert("namespace".into(), namespace.clone().into());
                            }
                            metadata.insert("resourceVersion".into(), version.clone().into());
                        }
                        entries.entry(key.clone()).or_insert(LocalEntry {
                            file: file.clone(),
                            stored: StoredResource {
                                key,
                                resource: document.resource,
                                value,
                                version: version.clone(),
                            },
                        });
                    }
                }
                Err(e) => errors.extend(e),
            }
        }
        (entries, errors)
    }

    /// The resources of kinds kept at their etcd key's path (the IPAM configuration), in the
    /// same text as etcd holds.
    fn load_outside_v3(
        &self,
        entries: &mut BTreeMap<ResourceKey, LocalEntry>,
        errors: &mut Vec<DatastoreError>,
    ) {
        for &kind in Kind::ALL {
            let info = kind.info();
            if !info.etcd.stores_outside_v3() {
                continue;
            }
            let etcd_key = info.etcd.prefix(info, None);
            let file = PathBuf::from(etcd_key.trim_start_matches("/calico/"));
            let label = file.display().to_string();
            let bytes = match std::fs::read(self.dir.join(&file)) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    errors.push(DatastoreError::file(
                        &label,
                        ErrorKind::Io,
                        format!("cannot read: {e}"),
                    ));
                    continue;
                }
            };
            let version = format!("{:016x}", fnv1a(&bytes));
            match decode_versioned(&etcd_key, &bytes, &version) {
                Ok(stored) => {
                    entries.insert(stored.key.clone(), LocalEntry { file, stored });
                }
                Err(e) => errors.extend(e.into_iter().map(|mut e| {
                    e.file.clone_from(&label);
                    e
                })),
            }
        }
    }

    fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> (Vec<StoredResource>, Vec<DatastoreError>) {
        let (entries, errors) = self.load();
        let resources = entries
            .into_values()
            .map(|e| e.stored)
            .filter(|s| {
                s.key.kind == kind
                    && namespace.is_none_or(|ns| {
                        !kind.is_namespaced() || s.key.namespace.as_deref() == Some(ns)
                    })
            })
            .collect();
        (resources, errors)
    }

    fn get(&self, key: &ResourceKey) -> Option<StoredResource> {
        self.load().0.remove(key).map(|e| e.stored)
    }

    /// Refuses to touch a resource defined in a file the CLI does not manage.
    fn check_managed(&self, key: &ResourceKey, entry: &LocalEntry) -> Result<(), StoreError> {
        let managed = Self::managed_path(key);
        if entry.file != managed {
            return Err(StoreError::NotManaged {
                key: key.clone(),
                file: entry.file.display().to_string(),
                managed: managed.display().to_string(),
            });
        }
        Ok(())
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Checks every request, then writes each to a hidden temporary file and renames them all
    /// into place.
    fn write(&self, requests: &[WriteRequest]) -> Result<Vec<WriteOutcome>, StoreError> {
        let (entries, _) = self.load();
        let mut outcomes = Vec::new();
        let mut staged = Vec::new();
        let result = (|| {
            for request in requests {
                let key = request.resource.key();
                let entry = entries.get(&key);
                let outcome = check_write(
                    &key,
                    request.mode,
                    request.expected_version().as_deref(),
                    entry.map(|e| e.stored.version.as_str()),
                )?;
                if let Some(entry) = entry {
                    self.check_managed(&key, entry)?;
                }
                let text = if key.kind.info().etcd.stores_outside_v3() {
                    encode(request, entry.map(|e| &e.stored), StoredForm::Current)?
                } else {
                    let value = prepare_value(request, entry.map(|e| &e.stored));
                    serde_yaml::to_string(&value).map_err(|e| {
                        StoreError::Config(format!("{key}: cannot encode as YAML: {e}"))
                    })?
                };
                let path = self.dir.join(Self::managed_path(&key));
                let parent = path.parent().unwrap_or(&self.dir).to_path_buf();
                std::fs::create_dir_all(&parent).map_err(Self::io(&parent))?;
                let file_name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let temp = parent.join(format!(".{file_name}.tmp"));
                std::fs::write(&temp, text).map_err(Self::io(&temp))?;
                staged.push((temp, path));
                outcomes.push(outcome);
            }
            Ok(())
        })();
        if let Err(e) = result {
            for (temp, _) in &staged {
                let _ = std::fs::remove_file(temp);
            }
            return Err(e);
        }
        for (temp, path) in &staged {
            std::fs::rename(temp, path).map_err(Self::io(path))?;
        }
        Ok(outcomes)
    }

    fn delete(&self, key: &ResourceKey, expected_version: Option<&str>) -> Result<(), StoreError> {
        let (entries, _) = self.load();
        let Some(entry) = entries.get(key) else {
            return Err(StoreError::NotFound { key: key.clone() });
        };
        self.check_managed(key, entry)?;
        if let Some(expected) = expected_version
            && expected != entry.stored.version
        {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected: expected.to_owned(),
                actual: entry.stored.version.clone(),
            });
        }
        let path = self.dir.join(&entry.file);
        std::fs::remove_file(&path).map_err(Self::io(&path))
    }
}

/// 64-bit FNV-1a: a version that is stable across runs and builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::store::WriteMode;

    #[test]
    fn local_store_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        let text = "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata:\n  name: p1\nspec:\n  labelsToApply:\n    a: b\n";
        let docs = parse_documents("in", text).expect("parses");
        let request = WriteRequest {
            mode: WriteMode::Create,
            resource: docs[0].resource.clone(),
            raw: docs[0].raw.clone(),
        };
        assert_eq!(
            store
                .write(std::slice::from_ref(&request))
                .expect("created"),
            [WriteOutcome::Created]
        );
        assert!(dir.path().join("profiles/p1.yaml").exists());
        assert!(matches!(
            store.write(std::slice::from_ref(&request)),
            Err(StoreError::AlreadyExists { .. })
        ));
        let stored = store.get(&request.resource.key()).expect("stored");
        assert!(stored.resource.metadata().uid.is_some());
        let mut replace = request.clone();
        replace.mode = WriteMode::Replace;
        assert_eq!(
            store.write(&[replace]).expect("replaced"),
            [WriteOutcome::Replaced]
        );
        // Same uid after a replace.
        let again = store.get(&request.resource.key()).expect("stored");
        assert_eq!(
            again.resource.metadata().uid,
            stored.resource.metadata().uid
        );
        store
            .delete(&request.resource.key(), None)
            .expect("deleted");
        assert!(store.get(&request.resource.key()).is_none());
    }
}
