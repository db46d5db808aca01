//! One interface over both datastores: the local directory and etcd v3.
//!
//! - [`DatastoreConfig`]: which datastore, as `DATASTORE_TYPE=local|etcdv3` and its settings.
//! - [`AgentDatastore`]: what the agent follows: [`sync`](AgentDatastore::sync) gives the
//!   resources in force, [`changed`](AgentDatastore::changed) says when to sync again.
//! - [`Store`]: what the CLI reads and writes: list, get, create/replace/apply (all or nothing)
//!   and delete, with resource versions for optimistic concurrency.
//!
//! The local store writes one file per resource, `<plural>/<name>.yaml` for cluster-scoped
//! kinds and `<plural>/<namespace>/<name>.yaml` for namespaced ones, under the directory.
//! Resources defined in other files are listed and read, but not replaced or deleted (the
//! error names the file). A local resource's version is a hash of its file's text.

use std::{
    collections::BTreeMap,
    fmt, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value};
use tracing::info;

use super::{
    error::DatastoreError,
    etcd::{EtcdConfig, EtcdStore, EtcdSync, plural},
    local::{DatastoreWatch, LocalDatastore, SyncResult, WatchError, list_files, read_text, watch},
    parse::parse_documents,
    resources::{API_VERSION, Kind, Resource, ResourceKey},
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

/// A resource as stored, with its version.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResource {
    /// Its identity (the name as the user gives it).
    pub key: ResourceKey,
    /// The validated resource (with `metadata.resourceVersion` set).
    pub resource: Resource,
    /// The object as stored, with `metadata.resourceVersion` set: what `get -o yaml|json`
    /// shows.
    pub value: Value,
    /// The resource version: etcd's mod revision, or a hash of the local file.
    pub version: String,
}

/// How a write treats an existing resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteMode {
    /// Fails if the resource exists.
    Create,
    /// Fails if the resource does not exist.
    Replace,
    /// Creates or replaces.
    Apply,
}

/// One resource to write.
#[derive(Clone, Debug, PartialEq)]
pub struct WriteRequest {
    pub mode: WriteMode,
    /// The validated resource.
    pub resource: Resource,
    /// The object as the user wrote it (JSON).
    pub raw: Value,
}

impl WriteRequest {
    /// The version the user's object names (`metadata.resourceVersion`): a write is refused
    /// unless the stored resource still has it.
    pub fn expected_version(&self) -> Option<String> {
        self.resource
            .metadata()
            .resource_version
            .clone()
            .filter(|v| !v.is_empty())
    }
}

/// What a write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Created,
    Replaced,
}

/// Why the datastore refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `create` of a resource that exists.
    #[error("{key} already exists")]
    AlreadyExists { key: ResourceKey },
    /// `replace` or `delete` of a resource that does not exist.
    #[error("{key} does not exist")]
    NotFound { key: ResourceKey },
    /// The user's `metadata.resourceVersion` is not the stored one.
    #[error(
        "{key}: metadata.resourceVersion {expected:?} is stale (the stored version is {actual:?}); get the resource again and retry"
    )]
    Conflict {
        key: ResourceKey,
        expected: String,
        actual: String,
    },
    /// A resource changed between the checks and the transaction.
    #[error("{keys}: changed while being written; nothing was stored, try again")]
    Concurrent { keys: String },
    /// Resources that do not validate.
    #[error("{}; nothing was stored", invalid_message(.0))]
    Invalid(Vec<DatastoreError>),
    /// A local resource defined outside the CLI's one-file-per-resource layout.
    #[error("{key} is defined in {file}, not in {managed}: edit that file instead")]
    NotManaged {
        key: ResourceKey,
        file: String,
        managed: String,
    },
    /// etcd failed or cannot be reached.
    #[error("etcd at {endpoints}: {}{}", super::etcd::describe_error(.error), hint_suffix(*.hint))]
    Etcd {
        endpoints: String,
        error: etcd_client::Error,
        /// What to check, when the error alone does not say (TLS).
        hint: Option<&'static str>,
    },
    /// A local file could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },
    /// The local directory cannot be watched.
    #[error(transparent)]
    Watch(#[from] WatchError),
    /// Settings that do not work (missing endpoints, unreadable certificates...).
    #[error("{0}")]
    Config(String),
}

fn hint_suffix(hint: Option<&str>) -> String {
    hint.map_or_else(String::new, |h| format!(" ({h})"))
}

fn invalid_message(errors: &[DatastoreError]) -> String {
    match errors {
        [one] => one.to_string(),
        many => {
            let lines: Vec<String> = many.iter().map(|e| format!("  {e}")).collect();
            format!("{} problems:\n{}", many.len(), lines.join("\n"))
        }
    }
}

/// Whether a write of `key` in `mode` may go ahead, given the version the user expects and
/// the one stored (if any).
///
/// # Errors
///
/// [`StoreError::AlreadyExists`], [`StoreError::NotFound`] or [`StoreError::Conflict`].
pub(super) fn check_write(
    key: &ResourceKey,
    mode: WriteMode,
    expected: Option<&str>,
    current: Option<&str>,
) -> Result<WriteOutcome, StoreError> {
    match (mode, current) {
        (WriteMode::Create, Some(_)) => Err(StoreError::AlreadyExists { key: key.clone() }),
        (WriteMode::Replace, None) => Err(StoreError::NotFound { key: key.clone() }),
        (WriteMode::Create | WriteMode::Apply, None) => Ok(WriteOutcome::Created),
        (WriteMode::Replace | WriteMode::Apply, Some(current)) => match expected {
            Some(expected) if expected != current => Err(StoreError::Conflict {
                key: key.clone(),
                expected: expected.to_owned(),
                actual: current.to_owned(),
            }),
            _ => Ok(WriteOutcome::Replaced),
        },
    }
}

/// The object to store for `request`: the user's object with `apiVersion`, `kind`, name and
/// namespace filled in, `uid` and `creationTimestamp` kept from the existing resource (or
/// new), and no `resourceVersion`.
pub(super) fn prepare_value(request: &WriteRequest, existing: Option<&StoredResource>) -> Value {
    let key = request.resource.key();
    let mut object = match &request.raw {
        Value::Object(object) => object.clone(),
        _ => Map::new(),
    };
    object.insert("apiVersion".into(), API_VERSION.into());
    object.insert("kind".into(), key.kind.as_str().into());
    let mut metadata = match object.remove("metadata") {
        Some(Value::Object(metadata)) => metadata,
        _ => Map::new(),
    };
    metadata.insert("name".into(), key.name.clone().into());
    match &key.namespace {
        Some(namespace) => {
            metadata.insert("namespace".into(), namespace.clone().into());
        }
        None => {
            metadata.remove("namespace");
        }
    }
    metadata.remove("resourceVersion");
    let existing_meta = existing.map(|e| e.resource.metadata());
    let uid = existing_meta
        .and_then(|m| m.uid.clone())
        .unwrap_or_else(new_uid);
    let created = existing_meta
        .and_then(|m| m.creation_timestamp.clone())
        .unwrap_or_else(now_rfc3339);
    metadata.insert("uid".into(), uid.into());
    metadata.insert("creationTimestamp".into(), created.into());
    object.insert("metadata".into(), Value::Object(metadata));
    Value::Object(object)
}

/// A random (version 4) UUID, as Kubernetes' `uid`.
fn new_uid() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // No /dev/urandom: the time and the pid still make it unique enough on one host.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos ^ (u128::from(std::process::id()) << 96)).to_le_bytes();
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The time now, as `2024-05-01T10:00:00Z`.
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the epoch as an RFC 3339 UTC time (days to civil date, after Howard
/// Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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

    /// The file (relative) the CLI keeps `key` in.
    pub fn managed_path(key: &ResourceKey) -> PathBuf {
        let mut path = PathBuf::from(plural(key.kind));
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
        let listing = list_files(&self.dir);
        for (label, message) in listing.errors {
            errors.push(DatastoreError::file(label, super::ErrorKind::Io, message));
        }
        for file in listing.files {
            let label = file.display().to_string();
            let text = match read_text(&self.dir.join(&file)) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(DatastoreError::file(
                        &label,
                        super::ErrorKind::Io,
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
                let value = prepare_value(request, entry.map(|e| &e.stored));
                let text = serde_yaml::to_string(&value).map_err(|e| {
                    StoreError::Config(format!("{key}: cannot encode as YAML: {e}"))
                })?;
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

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_714_557_600), "2024-05-01T10:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn uids_look_like_uuids() {
        let a = new_uid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_uid());
    }

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
