//! The etcd v3 datastore, with Calico's key layout: what `calicoctl` stores with
//! `DATASTORE_TYPE=etcdv3` reads back here as the same resource, and the reverse.
//!
//! - Keys: `/calico/resources/v3/projectcalico.org/<plural>/<name>` for cluster-scoped kinds,
//!   `/calico/resources/v3/projectcalico.org/<plural>/<namespace>/<name>` for namespaced ones.
//!   Policies (`NetworkPolicy`, `GlobalNetworkPolicy` and their staged forms) are stored under
//!   their tiered name, as libcalico-go does (`names.BackendTieredPolicyName`): a name without a
//!   dot gets `default.` in front (key and `metadata.name`); reading takes a leading `default.`
//!   away again (`names.ClientTieredPolicyName`).
//! - Values: the v3 resource as JSON (`apiVersion`, `kind`, `metadata`, `spec`), with
//!   `metadata.uid` and `metadata.creationTimestamp`; never `metadata.resourceVersion`, which is
//!   the key's etcd mod revision.
//! - Reading parses a value with the same code as the local datastore ([`parse_file`]), so
//!   validation is identical. The key is authoritative for name and namespace.
//! - [`EtcdStore`]: reads and transactional writes (create, replace, apply, delete) for the
//!   CLI. [`EtcdSync`]: the agent's view: a list, then a watch from the listed revision; on
//!   disconnection the watch resumes from the last revision seen (with backoff), and only if
//!   etcd compacted that revision away does it list again; while etcd is unreachable the last
//!   good state stays in force.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, Txn, TxnOp,
    WatchOptions,
};
use serde_json::{Map, Value};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{
    error::{DatastoreError, ErrorKind},
    parse::parse_file,
    resources::{Kind, Resource, ResourceKey, is_v3_key_of},
    snapshot::{Snapshot, SyncResult},
    store::{
        StoreError, StoredResource, WriteOutcome, WriteRequest, check_write, describe_error,
        prepare_value,
    },
};

/// Where every Calico v3 resource lives in etcd.
pub use super::resources::KEY_PREFIX;

/// Timeout of one etcd request (a list, a transaction); a watch is not limited.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of connecting to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest wait between attempts to list again after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

/// How to reach etcd: as calicoctl's `ETCD_ENDPOINTS`, `ETCD_CA_CERT_FILE`, `ETCD_CERT_FILE`,
/// `ETCD_KEY_FILE`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port` URLs.
    pub endpoints: Vec<String>,
    /// CA certificate (PEM) to check the servers' certificates with.
    pub ca_cert_file: Option<PathBuf>,
    /// Client certificate (PEM), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM), with `cert_file`.
    pub key_file: Option<PathBuf>,
}

impl EtcdConfig {
    /// The endpoints, comma-separated, for messages.
    pub fn endpoints_label(&self) -> String {
        self.endpoints.join(",")
    }

    /// A failure of etcd under these settings, as a [`StoreError::Etcd`].
    pub fn error(&self, error: etcd_client::Error) -> StoreError {
        StoreError::Etcd {
            endpoints: self.endpoints_label(),
            hint: self.hint(&error),
            error,
        }
    }

    /// What to check, for TLS failures whose own message leaves the cause unsaid.
    pub fn hint(&self, error: &etcd_client::Error) -> Option<&'static str> {
        let text = describe_error(error);
        if text.contains("UnknownIssuer") {
            return Some(if self.ca_cert_file.is_some() {
                "etcd's certificate is not signed by the CA in ETCD_CA_CERT_FILE"
            } else {
                "etcd's certificate is not trusted: set ETCD_CA_CERT_FILE to the CA that signed it"
            });
        }
        // With TLS 1.3 the client's handshake is done before etcd checks its certificate, so
        // a refused (or missing) client certificate shows up as a closed connection: closed,
        // reset, or a broken pipe when the request was being written as etcd closed it.
        let https = self.endpoints.iter().any(|e| e.starts_with("https://"));
        let closed = [
            "connection closed",
            "broken pipe",
            "Connection reset",
            "CertificateRequired",
            "BadCertificate",
        ];
        if https && closed.iter().any(|c| text.contains(c)) {
            return Some(if self.cert_file.is_some() {
                "etcd closed the TLS connection: check that ETCD_CERT_FILE is signed by a CA etcd \
                 trusts (--trusted-ca-file) and is meant for clients"
            } else {
                "etcd closed the TLS connection: if it requires client certificates \
                 (--client-cert-auth), set ETCD_CERT_FILE and ETCD_KEY_FILE"
            });
        }
        None
    }

    /// A client for these endpoints. Connects lazily: an unreachable etcd shows up at the
    /// first request.
    ///
    /// # Errors
    ///
    /// [`StoreError::Config`] for no endpoints, a certificate or key that cannot be read, a
    /// certificate without its key (or the reverse), or TLS files with `http://` endpoints.
    pub async fn connect(&self) -> Result<Client, StoreError> {
        if self.endpoints.is_empty() {
            return Err(StoreError::Config(
                "no etcd endpoints: set ETCD_ENDPOINTS (or --etcd-endpoints), like http://127.0.0.1:2379".into(),
            ));
        }
        let mut options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        let read = |what: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                StoreError::Config(format!("{what} {}: cannot read: {e}", path.display()))
            })
        };
        let tls_wanted =
            self.ca_cert_file.is_some() || self.cert_file.is_some() || self.key_file.is_some();
        if tls_wanted {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.ca_cert_file {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(
                    "ETCD_CA_CERT_FILE",
                    ca,
                )?));
            }
            match (&self.cert_file, &self.key_file) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(etcd_client::Identity::from_pem(
                        read("ETCD_CERT_FILE", cert)?,
                        read("ETCD_KEY_FILE", key)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Config(
                        "ETCD_CERT_FILE and ETCD_KEY_FILE go together: set both or neither".into(),
                    ));
                }
            }
            if let Some(plain) = self.endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(StoreError::Config(format!(
                    "etcd endpoint {plain}: TLS files are set, so endpoints must be https://"
                )));
            }
            options = options.with_tls(tls);
        }
        Client::connect(&self.endpoints, Some(options))
            .await
            .map_err(|error| self.error(error))
    }
}

// ---------------------------------------------------------------------------------------------
// Keys: each kind's layout is its own ([`KindInfo::etcd`](super::resources::KindInfo)).

/// The etcd key of a resource.
pub fn etcd_key(key: &ResourceKey) -> String {
    let info = key.kind.info();
    info.etcd.key(info, key.namespace.as_deref(), &key.name)
}

/// The prefix of every key of `kind` (in `namespace`, if given and the kind is namespaced).
pub fn kind_prefix(kind: Kind, namespace: Option<&str>) -> String {
    let info = kind.info();
    info.etcd.prefix(info, namespace)
}

/// The resource an etcd key names (with the client name), if it is a key of a known kind.
pub fn parse_key(key: &str) -> Option<ResourceKey> {
    Kind::ALL.iter().find_map(|&kind| {
        let info = kind.info();
        let (namespace, name) = info.etcd.parse(info, key)?;
        Some(ResourceKey {
            kind,
            namespace,
            name,
        })
    })
}

/// Whether `key` is one no kind reads although it lies in the v3 tree: a kind stored
/// elsewhere (`IPAMConfiguration`, at `/calico/ipam/v2/config`) under its v3 plural, where
/// calicoctl writes it. The agent passes over such keys.
pub fn is_passed_over(key: &str) -> bool {
    Kind::ALL.iter().any(|&kind| {
        let info = kind.info();
        info.etcd.stores_outside_v3() && is_v3_key_of(info, key)
    })
}

/// The `metadata.name` stored for a resource (a policy's tiered name).
fn stored_name(key: &ResourceKey) -> String {
    key.kind.info().etcd.stored_name(&key.name)
}

// ---------------------------------------------------------------------------------------------
// Values

/// A problem with the key-value `key`.
fn key_error(key: &str, kind: ErrorKind, message: impl Into<String>) -> DatastoreError {
    DatastoreError {
        file: key.to_owned(),
        document: None,
        line: None,
        column: None,
        resource: None,
        field: None,
        kind,
        message: message.into(),
    }
}

/// Reads one key-value: the resource, validated as the local datastore validates files, and
/// its value as the user sees it (client name, namespace from the key, `resourceVersion` the
/// mod revision).
///
/// # Errors
///
/// The problems, naming the key as the file: a key of no known kind, a value that is not a
/// JSON object, or a resource that does not validate.
pub fn decode(
    key: &str,
    value: &[u8],
    mod_revision: i64,
) -> Result<StoredResource, Vec<DatastoreError>> {
    decode_versioned(key, value, &mod_revision.to_string())
}

/// [`decode`], with `version` as the resource version (the local directory's file hash for a
/// kind it keeps at its etcd key's path).
///
/// # Errors
///
/// As [`decode`].
pub fn decode_versioned(
    key: &str,
    value: &[u8],
    version: &str,
) -> Result<StoredResource, Vec<DatastoreError>> {
    let Some(resource_key) = parse_key(key) else {
        return Err(vec![key_error(
            key,
            ErrorKind::Unsupported,
            format!(
                "not a key of a known kind (expected {KEY_PREFIX}<plural>/[<namespace>/]<name>)"
            ),
        )]);
    };
    let info = resource_key.kind.info();
    let mut json: Value = info
        .etcd
        .decode_value(info, &resource_key.name, value)
        .map_err(|e| vec![key_error(key, ErrorKind::Syntax, e)])?;
    let Some(object) = json.as_object_mut() else {
        return Err(vec![key_error(
            key,
            ErrorKind::Syntax,
            "value is not a JSON object",
        )]);
    };
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(metadata) = metadata.as_object_mut() {
        metadata.insert("name".into(), resource_key.name.clone().into());
        if let Some(namespace) = &resource_key.namespace {
            metadata.insert("namespace".into(), namespace.clone().into());
        }
        metadata.insert("resourceVersion".into(), version.into());
    }
    let text = serde_json::to_string(&json).map_err(|e| {
        vec![key_error(
            key,
            ErrorKind::Syntax,
            format!("value cannot be re-encoded: {e}"),
        )]
    })?;
    let mut resources = parse_file(key, &text)?;
    if resources.len() != 1 {
        return Err(vec![key_error(
            key,
            ErrorKind::Unsupported,
            format!("value holds {} resources, expected one", resources.len()),
        )]);
    }
    let resource = resources.remove(0);
    if resource.kind() != resource_key.kind {
        return Err(vec![key_error(
            key,
            ErrorKind::Invalid,
            format!(
                "the key is for a {} but the value is a {}",
                resource_key.kind,
                resource.kind()
            ),
        )]);
    }
    Ok(StoredResource {
        key: resource_key,
        resource,
        value: json,
        version: version.to_owned(),
    })
}

/// The value to store for `request` in etcd: the user's object with the backend name.
pub(super) fn encode(
    request: &WriteRequest,
    existing: Option<&StoredResource>,
) -> Result<String, StoreError> {
    let key = request.resource.key();
    let mut value = prepare_value(request, existing);
    if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("name".into(), stored_name(&key).into());
    }
    key.kind
        .info()
        .etcd
        .encode_value(&value)
        .map_err(|e| StoreError::Config(format!("{key}: cannot encode: {e}")))
}

// ---------------------------------------------------------------------------------------------
// The CLI's store

/// Reads and writes resources in etcd, for the CLI.
pub struct EtcdStore {
    client: Client,
    config: EtcdConfig,
}

impl EtcdStore {
    /// Connects (lazily) to etcd.
    ///
    /// # Errors
    ///
    /// As [`EtcdConfig::connect`].
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        Ok(Self {
            client: config.connect().await?,
            config: config.clone(),
        })
    }

    fn etcd_error(&self, error: etcd_client::Error) -> StoreError {
        self.config.error(error)
    }

    /// Every resource of `kind` (in `namespace`, if given), with the problems of the values
    /// that do not read.
    ///
    /// # Errors
    ///
    /// [`StoreError::Etcd`] if etcd cannot be reached.
    pub async fn list(
        &mut self,
        kind: Kind,
        namespace: Option<&str>,
    ) -> Result<(Vec<StoredResource>, Vec<DatastoreError>), StoreError> {
        let prefix = kind_prefix(kind, namespace);
        let response = self
            .client
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.etcd_error(e))?;
        let mut resources = Vec::new();
        let mut errors = Vec::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            // A namespaced kind's prefix without a namespace also matches deeper keys: parse_key
            // sorts them out.
            match decode(&key, kv.value(), kv.mod_revision()) {
                Ok(stored) if stored.key.kind == kind => resources.push(stored),
                Ok(_) => {}
                Err(e) => errors.extend(e),
            }
        }
        resources.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((resources, errors))
    }

    /// The resource `key`, if stored.
    ///
    /// # Errors
    ///
    /// [`StoreError::Etcd`] if etcd cannot be reached, [`StoreError::Invalid`] if the stored
    /// value does not read.
    pub async fn get(&mut self, key: &ResourceKey) -> Result<Option<StoredResource>, StoreError> {
        let etcd_key = etcd_key(key);
        let response = self
            .client
            .get(etcd_key.as_str(), None)
            .await
            .map_err(|e| self.etcd_error(e))?;
        match response.kvs().first() {
            None => Ok(None),
            Some(kv) => decode(&etcd_key, kv.value(), kv.mod_revision())
                .map(Some)
                .map_err(StoreError::Invalid),
        }
    }

    /// The stored value of `key`, read or not: `(mod revision, resource if it reads)`.
    async fn current(
        &mut self,
        key: &ResourceKey,
    ) -> Result<Option<(i64, Option<StoredResource>)>, StoreError> {
        let etcd_key = etcd_key(key);
        let response = self
            .client
            .get(etcd_key.as_str(), None)
            .await
            .map_err(|e| self.etcd_error(e))?;
        Ok(response.kvs().first().map(|kv| {
            (
                kv.mod_revision(),
                decode(&etcd_key, kv.value(), kv.mod_revision()).ok(),
            )
        }))
    }

    /// Writes all of `requests` in one transaction, or none.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] (create), [`StoreError::NotFound`] (replace),
    /// [`StoreError::Conflict`] (a stale `resourceVersion`), [`StoreError::Concurrent`] (a key
    /// changed between the checks and the transaction), [`StoreError::Etcd`].
    pub async fn write(
        &mut self,
        requests: &[WriteRequest],
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut compares = Vec::new();
        let mut operations = Vec::new();
        let mut outcomes = Vec::new();
        for request in requests {
            let key = request.resource.key();
            let etcd_key = etcd_key(&key);
            let current = self.current(&key).await?;
            let expected = request.expected_version();
            let outcome = check_write(
                &key,
                request.mode,
                expected.as_deref(),
                current.as_ref().map(|(rev, _)| rev.to_string()).as_deref(),
            )?;
            match &current {
                Some((revision, _)) => compares.push(Compare::mod_revision(
                    etcd_key.as_str(),
                    CompareOp::Equal,
                    *revision,
                )),
                None => compares.push(Compare::create_revision(
                    etcd_key.as_str(),
                    CompareOp::Equal,
                    0,
                )),
            }
            let existing = current.as_ref().and_then(|(_, stored)| stored.as_ref());
            operations.push(TxnOp::put(etcd_key, encode(request, existing)?, None));
            outcomes.push(outcome);
        }
        if operations.is_empty() {
            return Ok(outcomes);
        }
        let response = self
            .client
            .txn(Txn::new().when(compares).and_then(operations))
            .await
            .map_err(|e| self.etcd_error(e))?;
        if !response.succeeded() {
            return Err(StoreError::Concurrent {
                keys: requests
                    .iter()
                    .map(|r| r.resource.key().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(outcomes)
    }

    /// Deletes `key` (if its version is `expected_version`, when given); returns what it was.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Conflict`], [`StoreError::Concurrent`],
    /// [`StoreError::Etcd`].
    pub async fn delete(
        &mut self,
        key: &ResourceKey,
        expected_version: Option<&str>,
    ) -> Result<Option<StoredResource>, StoreError> {
        let etcd_key = etcd_key(key);
        let Some((revision, stored)) = self.current(key).await? else {
            return Err(StoreError::NotFound { key: key.clone() });
        };
        if let Some(expected) = expected_version
            && expected != revision.to_string()
        {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected: expected.to_owned(),
                actual: revision.to_string(),
            });
        }
        let response = self
            .client
            .txn(
                Txn::new()
                    .when([Compare::mod_revision(
                        etcd_key.as_str(),
                        CompareOp::Equal,
                        revision,
                    )])
                    .and_then([TxnOp::delete(etcd_key.as_str(), None)]),
            )
            .await
            .map_err(|e| self.etcd_error(e))?;
        if !response.succeeded() {
            return Err(StoreError::Concurrent {
                keys: key.to_string(),
            });
        }
        Ok(stored)
    }
}

// ---------------------------------------------------------------------------------------------
// The agent's view

/// What the agent knows of etcd: the last good resource of every key, and the problems.
#[derive(Default)]
struct State {
    /// Per etcd key, its last good resource.
    good: BTreeMap<String, Resource>,
    /// Per etcd key, the problems of its current value.
    errors: BTreeMap<String, Vec<DatastoreError>>,
    /// Errors reported by the last [`EtcdSync::sync`].
    reported: BTreeSet<DatastoreError>,
}

impl State {
    /// A key's new value.
    fn put(&mut self, kv: &KeyValue) {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        if is_passed_over(&key) {
            debug!(key = %key, "not read: the kind is stored elsewhere");
            return;
        }
        match decode(&key, kv.value(), kv.mod_revision()) {
            Ok(stored) => {
                self.errors.remove(&key);
                self.good.insert(key, stored.resource);
            }
            Err(errors) => {
                if self.good.contains_key(&key) {
                    warn!(key = %key, "invalid value in etcd; the last good version stays in force");
                }
                self.errors.insert(key, errors);
            }
        }
    }

    fn delete(&mut self, key: &[u8]) {
        let key = String::from_utf8_lossy(key).into_owned();
        self.good.remove(&key);
        self.errors.remove(&key);
    }

    /// Replaces everything with a full listing; an invalid value keeps the last good version
    /// of its key.
    fn reset(&mut self, kvs: &[KeyValue]) {
        let listed: BTreeSet<String> = kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        self.good.retain(|k, _| listed.contains(k));
        self.errors.clear();
        for kv in kvs {
            self.put(kv);
        }
    }
}

/// The agent's follower of etcd: a background task lists, watches from the listed revision,
/// resumes the watch from the last revision seen after a disconnection, and lists again only
/// when that revision was compacted; [`sync`](Self::sync) gives the resources in force,
/// [`changed`](Self::changed) says when they changed.
pub struct EtcdSync {
    state: Arc<Mutex<State>>,
    changes: mpsc::Receiver<()>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for EtcdSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSync").finish_non_exhaustive()
    }
}

impl Drop for EtcdSync {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EtcdSync {
    /// Starts following etcd. Returns at once; until the first listing succeeds the snapshot
    /// is empty.
    ///
    /// # Errors
    ///
    /// As [`EtcdConfig::connect`] (configuration problems only).
    pub async fn start(config: &EtcdConfig) -> Result<Self, StoreError> {
        let client = config.connect().await?;
        let state = Arc::new(Mutex::new(State::default()));
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(follow(client, config.clone(), Arc::clone(&state), tx));
        Ok(Self {
            state,
            changes: rx,
            task,
        })
    }

    /// The resources now in force and the problems (values that do not read, named by key).
    /// New problems are logged once.
    pub fn sync(&mut self) -> SyncResult {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let snapshot: Snapshot = state.good.values().cloned().collect();
        let mut errors: Vec<DatastoreError> = state.errors.values().flatten().cloned().collect();
        errors.sort();
        let current: BTreeSet<DatastoreError> = errors.iter().cloned().collect();
        let new_errors: Vec<DatastoreError> =
            current.difference(&state.reported).cloned().collect();
        for e in &new_errors {
            warn!("{e}");
        }
        state.reported = current;
        SyncResult {
            snapshot,
            errors,
            new_errors,
        }
    }

    /// Waits until the resources may have changed; `None` if the follower stopped.
    /// Cancel-safe.
    pub async fn changed(&mut self) -> Option<()> {
        self.changes.recv().await
    }
}

/// Why a watch stopped.
enum Interruption {
    /// etcd compacted the revision the watch was to start from; `.0` is the oldest revision it
    /// keeps.
    Compacted(i64),
    /// etcd's current revision (`.0`) is behind the last one seen: its data was replaced.
    Rewound(i64),
    /// The connection broke, or etcd canceled the watch.
    Disconnected(String),
}

/// How far a watch got.
struct WatchProgress {
    /// The revision the view is complete up to: every change up to it has been applied.
    last: i64,
    /// Whether etcd confirmed the watch (so it was reachable).
    established: bool,
}

/// Lists, then watches from the listed revision + 1, for ever. When the watch breaks it is
/// resumed from the last revision seen + 1, so nothing is missed and no list is needed; only
/// when etcd has compacted that revision away (or its revision went back) does it list again.
/// This is what Calico's watchers do (etcd's Go client resumes a broken watch from the last
/// revision it delivered; a compaction error makes the syncer list again).
async fn follow(
    mut client: Client,
    config: EtcdConfig,
    state: Arc<Mutex<State>>,
    tx: mpsc::Sender<()>,
) {
    let endpoints = config.endpoints_label();
    let notify = || {
        let _ = tx.try_send(());
    };
    let mut backoff = BACKOFF_MIN;
    // An outage (etcd unreachable) is logged once, as a warning, until etcd answers again.
    let mut outage_logged = false;
    // The revision the view is complete up to; `None`: a full list is needed first.
    let mut synced: Option<i64> = None;
    loop {
        let resuming = synced.is_some();
        let revision = match synced {
            Some(revision) => revision,
            None => match list(&mut client, &endpoints, &state).await {
                Ok(revision) => {
                    outage_logged = false;
                    backoff = BACKOFF_MIN;
                    notify();
                    revision
                }
                Err(e) => {
                    let e = config.error(e);
                    if outage_logged {
                        debug!("still unreachable: {e}");
                    } else {
                        warn!("{e}; the last good state stays in force, retrying");
                        outage_logged = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };

        let mut progress = WatchProgress {
            last: revision,
            established: false,
        };
        let interruption = watch_from(&mut client, &mut progress, resuming, &state, &notify).await;
        if progress.established {
            outage_logged = false;
            backoff = BACKOFF_MIN;
        }
        match interruption {
            Interruption::Compacted(compacted) => {
                warn!(
                    from = progress.last + 1,
                    compacted,
                    "etcd watch from revision {} refused: compacted (oldest kept: {compacted}); \
                     falling back to a full list and a new watch",
                    progress.last + 1
                );
                synced = None;
            }
            Interruption::Rewound(current) => {
                warn!(
                    endpoints = %endpoints,
                    current,
                    seen = progress.last,
                    "etcd is at revision {current}, behind revision {} already seen: its data was \
                     replaced; falling back to a full list and a new watch",
                    progress.last
                );
                synced = None;
            }
            Interruption::Disconnected(reason) => {
                synced = Some(progress.last);
                if outage_logged {
                    debug!("etcd watch still down ({reason})");
                } else {
                    warn!(
                        endpoints = %endpoints,
                        "etcd watch interrupted ({reason}); the last good state stays in force; \
                         resuming the watch from revision {} (retrying with backoff)",
                        progress.last + 1
                    );
                    outage_logged = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Lists every resource and replaces the view with them; returns the listing's revision.
async fn list(
    client: &mut Client,
    endpoints: &str,
    state: &Mutex<State>,
) -> Result<i64, etcd_client::Error> {
    let response = client
        .get(KEY_PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = response.header().map_or(0, |h| h.revision());
    let mut state = state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    state.reset(response.kvs());
    info!(
        endpoints = %endpoints,
        revision,
        keys = response.kvs().len(),
        resources = state.good.len(),
        "etcd listed"
    );
    Ok(revision)
}

/// Watches from `progress.last + 1` and applies the events until the watch breaks, moving
/// `progress.last` on. `resuming`: the view comes from an earlier watch, not a fresh listing,
/// so etcd's revision must not be behind it.
async fn watch_from(
    client: &mut Client,
    progress: &mut WatchProgress,
    resuming: bool,
    state: &Mutex<State>,
    notify: &impl Fn(),
) -> Interruption {
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(progress.last + 1)
        .with_progress_notify();
    let mut stream = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.watch(KEY_PREFIX, Some(options)),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Interruption::Disconnected(describe_error(&e)),
        Err(_) => {
            return Interruption::Disconnected(format!(
                "no answer to the watch request in {REQUEST_TIMEOUT:?}"
            ));
        }
    };
    loop {
        // Until etcd confirms the watch, an answer is awaited for a request's time; then
        // without limit: etcd sends progress notifications about every 10 minutes, and a dead
        // connection is found by the HTTP/2 keep-alive.
        let message = if progress.established {
            stream.message().await
        } else {
            match tokio::time::timeout(REQUEST_TIMEOUT, stream.message()).await {
                Ok(message) => message,
                Err(_) => {
                    return Interruption::Disconnected(format!(
                        "etcd did not confirm the watch in {REQUEST_TIMEOUT:?}"
                    ));
                }
            }
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return Interruption::Disconnected("stream closed".into()),
            Err(e) => return Interruption::Disconnected(describe_error(&e)),
        };
        // etcd confirms a watch first and only then finds its start revision compacted.
        if response.compact_revision() > 0 {
            return Interruption::Compacted(response.compact_revision());
        }
        if response.canceled() {
            return Interruption::Disconnected(format!("canceled: {}", response.cancel_reason()));
        }
        let header_revision = response.header().map_or(0, |h| h.revision());
        if response.created() {
            // A resumed watch on an etcd whose revision went back (its data replaced) would
            // wait for revisions that mean something else: list instead.
            if resuming && header_revision < progress.last {
                return Interruption::Rewound(header_revision);
            }
            progress.established = true;
            debug!(
                from = progress.last + 1,
                current = header_revision,
                "etcd watch started"
            );
            continue;
        }
        if response.events().is_empty() {
            // A progress notification: etcd sends those only to a watch that has delivered
            // every change up to the header's revision.
            progress.last = progress.last.max(header_revision);
            continue;
        }
        {
            let mut state = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                match event.event_type() {
                    EventType::Put => state.put(kv),
                    EventType::Delete => state.delete(kv.key()),
                }
                // A batch's header revision may be ahead of its events while a watch catches
                // up: only the events' own revisions count.
                progress.last = progress.last.max(kv.mod_revision());
            }
        }
        debug!(
            events = response.events().len(),
            revision = progress.last,
            "etcd changes"
        );
        notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_calico_layout() {
        let key = ResourceKey {
            kind: Kind::WorkloadEndpoint,
            namespace: Some("ns1".into()),
            name: "node1-k8s-pod1-eth0".into(),
        };
        assert_eq!(
            etcd_key(&key),
            "/calico/resources/v3/projectcalico.org/workloadendpoints/ns1/node1-k8s-pod1-eth0"
        );
        assert_eq!(parse_key(&etcd_key(&key)), Some(key));
        let gnp = ResourceKey {
            kind: Kind::GlobalNetworkPolicy,
            namespace: None,
            name: "deny-db".into(),
        };
        assert_eq!(
            etcd_key(&gnp),
            "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/default.deny-db"
        );
        assert_eq!(parse_key(&etcd_key(&gnp)), Some(gnp));
        let tiered = ResourceKey {
            kind: Kind::NetworkPolicy,
            namespace: Some("prod".into()),
            name: "security.block".into(),
        };
        assert_eq!(
            etcd_key(&tiered),
            "/calico/resources/v3/projectcalico.org/networkpolicies/prod/security.block"
        );
        assert_eq!(parse_key(&etcd_key(&tiered)), Some(tiered));
        assert_eq!(
            parse_key("/calico/resources/v3/projectcalico.org/profiles/kns.default")
                .map(|k| k.name),
            Some("kns.default".into())
        );
        assert_eq!(
            parse_key("/calico/resources/v3/projectcalico.org/profiles/a/b"),
            None
        );
        assert_eq!(
            parse_key("/calico/resources/v3/projectcalico.org/widgets/a"),
            None
        );
        assert_eq!(
            parse_key("/calico/resources/v3/projectcalico.org/networkpolicies/a"),
            None
        );
        for kind in Kind::ALL {
            assert_eq!(Kind::from_plural(kind.plural()), Some(*kind));
        }
    }

    #[test]
    fn decodes_calicoctl_values() {
        // As calicoctl (libcalico-go) stores a GlobalNetworkPolicy in the default tier.
        let value = br#"{"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"default.deny-db","uid":"0c1d7a4e-5a43-4f5e-9d0e-2f1b6c1c9a11","creationTimestamp":"2024-05-01T10:00:00Z","labels":{"projectcalico.org/tier":"default"}},"spec":{"tier":"default","order":10,"selector":"app == 'db'","ingress":[{"action":"Deny","protocol":"TCP","source":{},"destination":{}}],"types":["Ingress"]}}"#;
        let key = "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/default.deny-db";
        let stored = decode(key, value, 42).expect("decodes");
        assert_eq!(stored.key.name, "deny-db");
        assert_eq!(stored.version, "42");
        assert_eq!(
            stored.resource.metadata().resource_version.as_deref(),
            Some("42")
        );
        assert_eq!(stored.value["metadata"]["name"], "deny-db");
        let policy = stored.resource.as_global_network_policy().expect("a GNP");
        assert_eq!(policy.spec.tier, "default");

        let errors = decode(key, br#"{"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"x"},"spec":{"selector":"app =="}}"#, 3)
            .expect_err("a bad selector");
        assert!(
            errors[0].to_string().contains("spec.selector"),
            "{}",
            errors[0]
        );
        let errors = decode(
            key,
            br#"{"kind":"Profile","apiVersion":"projectcalico.org/v3","metadata":{"name":"x"}}"#,
            3,
        )
        .expect_err("kind mismatch");
        assert!(
            errors[0].message.contains("GlobalNetworkPolicy"),
            "{}",
            errors[0]
        );
        assert!(decode(key, b"not json", 3).is_err());
    }
}
