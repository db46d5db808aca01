//! The etcd v3 datastore, with Calico's key layout: what `calicoctl` stores with
//! `DATASTORE_TYPE=etcdv3` reads back here as the same resource, and the reverse.
//!
//! - Keys: `/calico/resources/v3/projectcalico.org/<plural>/<name>` for cluster-scoped kinds,
//!   `/calico/resources/v3/projectcalico.org/<plural>/<namespace>/<name>` for namespaced ones.
//!   Policies (`NetworkPolicy`, `GlobalNetworkPolicy` and their staged forms) are written as
//!   Calico 3.32 writes them, under their own name with the name annotation
//!   (`projectcalico.org/metadata`); the `default.<name>` keys of Calico 3.28-3.31 read as
//!   `<name>` too ([`PolicyKeys`](super::resources::PolicyKeys)). A policy stored in both forms
//!   is one policy, the newer form in force; the duplicate is logged once. `IPAMConfiguration`
//!   is kept where IPAM reads it, `/calico/ipam/v2/config`, in libcalico-go's backend shape
//!   ([`IpamConfigKeys`](super::resources::IpamConfigKeys)); a key calicoctl would write for it
//!   under the v3 tree is passed over.
//! - Values: the v3 resource as JSON (`apiVersion`, `kind`, `metadata`, `spec`), with
//!   `metadata.uid` and `metadata.creationTimestamp`; never `metadata.resourceVersion`, which is
//!   the key's etcd mod revision. A policy also gets the `projectcalico.org/tier` label and its
//!   defaulted `spec.types`, as libcalico-go 3.32 stores them.
//! - Reading parses a value with the same code as the local datastore ([`parse_file`]), so
//!   validation is identical. The key is authoritative for name and namespace (a policy's
//!   value only tells whether a `default.<name>` key is the older form of `<name>`).
//! - [`EtcdStore`]: reads and transactional writes (create, replace, apply, delete) for the
//!   CLI. A write goes where the resource is: replacing a policy stored only in the older form
//!   keeps it there, in that form; nothing is moved behind the user's back.
//! - [`EtcdSync`]: the agent's view: a list, then a watch from the listed revision; on
//!   disconnection the watch resumes from the last revision seen (with backoff), and only if
//!   etcd compacted that revision away does it list again; while etcd is unreachable the last
//!   good state stays in force. Besides the resources it follows IPAM's block affinities and
//!   blocks ([`IpamObjects`], kept as stored): one list and one watch cover the key range from
//!   `/calico/ipam/v2/` to the end of the v3 tree ([`FOLLOWED_RANGE`]), which in Calico's
//!   layout holds IPAM's keys and the resources only, so both come from the same revision.
//!   Other keys in the range (IPAM's handles and configuration) are passed over.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{Compare, CompareOp, EventType, GetOptions, KeyValue, Txn, TxnOp, WatchOptions};
use serde_json::{Map, Value};
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{debug, info, warn};

use super::{
    error::{DatastoreError, ErrorKind},
    etcd_client::{EtcdClient, EtcdConfig, REQUEST_TIMEOUT},
    parse::parse_file,
    resources::{Kind, Resource, ResourceKey, StoredForm, is_v3_key_of},
    snapshot::{IpamObjects, Snapshot, SyncResult},
    store::{
        StoreError, StoredResource, WriteOutcome, WriteRequest, check_write, describe_error,
        prepare_value,
    },
};

/// Where every Calico v3 resource lives in etcd.
pub use super::resources::KEY_PREFIX;

/// Where IPAM's objects live in etcd.
pub const IPAM_PREFIX: &str = "/calico/ipam/v2/";

/// The keys the agent follows: from IPAM's prefix to the end of the v3 tree (the first key
/// after every key starting with [`KEY_PREFIX`]).
pub const FOLLOWED_RANGE: (&str, &str) = (IPAM_PREFIX, "/calico/resources/v3/projectcalico.org0");

/// First and longest wait between attempts to list again after a failure.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Keys: each kind's layout is its own ([`KindInfo::etcd`](super::resources::KindInfo)).

/// The key a resource is written at when it is new: Calico 3.32's.
pub fn etcd_key(key: &ResourceKey) -> String {
    let info = key.kind.info();
    let namespace = key.namespace.as_deref();
    info.etcd
        .key(info, namespace, &key.name, StoredForm::Current)
        .unwrap_or_else(|| format!("{}{}", info.etcd.prefix(info, namespace), key.name))
}

/// Every key a resource may be stored at, newest form first: Calico 3.32's, and for a
/// default-tier policy the one Calico 3.28 to 3.31 used.
fn etcd_keys(key: &ResourceKey) -> Vec<(StoredForm, String)> {
    let info = key.kind.info();
    let mut keys = vec![(StoredForm::Current, etcd_key(key))];
    if let Some(tiered) = info.etcd.key(
        info,
        key.namespace.as_deref(),
        &key.name,
        StoredForm::Tiered,
    ) {
        keys.push((StoredForm::Tiered, tiered));
    }
    keys
}

/// The form of the resource `key` read from the etcd key `read_at`: [`StoredForm::Current`]
/// when that is the key it would be written at now.
fn stored_form(read_at: &str, key: &ResourceKey) -> StoredForm {
    if etcd_key(key) == read_at {
        StoredForm::Current
    } else {
        StoredForm::Tiered
    }
}

/// The prefix of every key of `kind` (in `namespace`, if given and the kind is namespaced).
pub fn kind_prefix(kind: Kind, namespace: Option<&str>) -> String {
    let info = kind.info();
    info.etcd.prefix(info, namespace)
}

/// An etcd key of a known kind, as it reads before its value is seen.
struct KeyParts {
    kind: Kind,
    namespace: Option<String>,
    /// The name part of the key (a policy's value decides whether it is the user's name).
    stored_name: String,
}

/// The kind, namespace and name part of an etcd key, if it is a key of a known kind.
fn key_parts(key: &str) -> Option<KeyParts> {
    Kind::ALL.iter().find_map(|&kind| {
        let info = kind.info();
        let (namespace, stored_name) = info.etcd.parse(info, key)?;
        Some(KeyParts {
            kind,
            namespace,
            stored_name,
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

/// The resource the key-value holds, as far as its key and the name kept in its value tell,
/// whether the rest of the value reads or not.
fn holder(key: &str, value: &[u8]) -> Option<ResourceKey> {
    let parts = key_parts(key)?;
    let info = parts.kind.info();
    let etcd = info.etcd;
    let mut json = etcd
        .decode_value(info, &parts.stored_name, value)
        .unwrap_or(Value::Null);
    let name = etcd
        .read_value(&parts.stored_name, &mut json)
        .or_else(|_| etcd.read_value(&parts.stored_name, &mut Value::Null))
        .unwrap_or(parts.stored_name);
    Some(ResourceKey {
        kind: parts.kind,
        namespace: parts.namespace,
        name,
    })
}

/// One resource stored under two keys, in Calico 3.32's form and in 3.28-3.31's: the newer
/// is in force, the older is ignored while both exist.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DuplicateForms {
    /// The resource.
    pub key: ResourceKey,
    /// The key in force (the newer form).
    pub in_force: String,
    /// The key ignored (the older form).
    pub ignored: String,
}

impl std::fmt::Display for DuplicateForms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is stored twice: at {} ({}'s form, in force) and at {} ({}'s form, ignored \
             while both exist)",
            self.key,
            self.in_force,
            StoredForm::Current.calico_versions(),
            self.ignored,
            StoredForm::Tiered.calico_versions()
        )
    }
}

/// Of every `(etcd key, resource)` read, the one in force for each resource: where a resource
/// is stored in two forms, the newer one. Also the resources stored twice.
fn in_force<T>(
    entries: impl IntoIterator<Item = (String, ResourceKey, T)>,
) -> (BTreeMap<ResourceKey, T>, Vec<DuplicateForms>) {
    let mut chosen: BTreeMap<ResourceKey, (String, StoredForm, T)> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for (etcd_key, key, item) in entries {
        let form = stored_form(&etcd_key, &key);
        match chosen.remove(&key) {
            None => {
                chosen.insert(key, (etcd_key, form, item));
            }
            Some(other) => {
                let (newer, older) = if form < other.1 {
                    ((etcd_key, form, item), other)
                } else {
                    (other, (etcd_key, form, item))
                };
                duplicates.push(DuplicateForms {
                    key: key.clone(),
                    in_force: newer.0.clone(),
                    ignored: older.0,
                });
                chosen.insert(key, newer);
            }
        }
    }
    duplicates.sort();
    let resources = chosen
        .into_iter()
        .map(|(key, (_, _, item))| (key, item))
        .collect();
    (resources, duplicates)
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
/// its value as the user sees it (the user's name, namespace from the key, `resourceVersion`
/// the mod revision, without what the store adds for itself, like a policy's name annotation).
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
    let Some(parts) = key_parts(key) else {
        return Err(vec![key_error(
            key,
            ErrorKind::Unsupported,
            format!(
                "not a key of a known kind (expected {KEY_PREFIX}<plural>/[<namespace>/]<name>)"
            ),
        )]);
    };
    let info = parts.kind.info();
    let mut json: Value = info
        .etcd
        .decode_value(info, &parts.stored_name, value)
        .map_err(|e| vec![key_error(key, ErrorKind::Syntax, e)])?;
    if !json.is_object() {
        return Err(vec![key_error(
            key,
            ErrorKind::Syntax,
            "value is not a JSON object",
        )]);
    }
    let name = info
        .etcd
        .read_value(&parts.stored_name, &mut json)
        .map_err(|e| {
            vec![DatastoreError {
                field: Some(e.field),
                ..key_error(key, ErrorKind::Invalid, e.message)
            }]
        })?;
    let resource_key = ResourceKey {
        kind: parts.kind,
        namespace: parts.namespace,
        name,
    };
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

/// The value to store for `request` in `form`: the user's object with what the store keeps
/// with it (the name as the key has it; a policy's name annotation, tier label, types), in the
/// kind's stored shape (JSON of the v3 object, or IPAM's own for `IPAMConfiguration`).
pub(super) fn encode(
    request: &WriteRequest,
    existing: Option<&StoredResource>,
    form: StoredForm,
) -> Result<String, StoreError> {
    let key = request.resource.key();
    let mut value = prepare_value(request, existing);
    let etcd = key.kind.info().etcd;
    etcd.write_value(&key.name, form, &mut value);
    etcd.encode_value(&value)
        .map_err(|e| StoreError::Config(format!("{key}: cannot encode: {e}")))
}

/// What one of the keys a resource may be stored at holds.
enum Slot {
    /// Nothing.
    Empty,
    /// The resource: its mod revision, and the resource if its value reads.
    Holds {
        revision: i64,
        stored: Result<StoredResource, Vec<DatastoreError>>,
    },
    /// Another resource (a policy named `default.<name>` where the older form of `<name>`
    /// would be, or the reverse).
    HoldsOther { revision: i64, other: ResourceKey },
}

/// One key a resource may be stored at, and what it holds.
struct Located {
    etcd_key: String,
    form: StoredForm,
    slot: Slot,
}

impl Located {
    /// The key's mod revision, if it exists.
    fn revision(&self) -> Option<i64> {
        match self.slot {
            Slot::Empty => None,
            Slot::Holds { revision, .. } | Slot::HoldsOther { revision, .. } => Some(revision),
        }
    }

    /// The transaction's check that the key is still as seen.
    fn unchanged(&self) -> Compare {
        match self.revision() {
            Some(revision) => {
                Compare::mod_revision(self.etcd_key.as_str(), CompareOp::Equal, revision)
            }
            None => Compare::create_revision(self.etcd_key.as_str(), CompareOp::Equal, 0),
        }
    }

    fn holds(&self) -> bool {
        matches!(self.slot, Slot::Holds { .. })
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI's store

/// Reads and writes resources in etcd, for the CLI.
pub struct EtcdStore {
    client: EtcdClient,
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
    /// that do not read. A policy stored in two forms is listed once, as the newer (the other
    /// is logged).
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
        let mut read = Vec::new();
        let mut errors = Vec::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            // A namespaced kind's prefix without a namespace also matches deeper keys: decoding
            // sorts them out.
            match decode(&key, kv.value(), kv.mod_revision()) {
                Ok(stored) if stored.key.kind == kind => {
                    read.push((key, stored.key.clone(), stored));
                }
                Ok(_) => {}
                Err(e) => errors.extend(e),
            }
        }
        let (resources, duplicates) = in_force(read);
        for duplicate in duplicates {
            warn!("{duplicate}");
        }
        Ok((resources.into_values().collect(), errors))
    }

    /// What each key `key` may be stored at holds, newest form first.
    async fn locate(&mut self, key: &ResourceKey) -> Result<Vec<Located>, StoreError> {
        let mut located = Vec::new();
        for (form, etcd_key) in etcd_keys(key) {
            let response = self
                .client
                .get(etcd_key.as_str(), None)
                .await
                .map_err(|e| self.etcd_error(e))?;
            let slot = match response.kvs().first() {
                None => Slot::Empty,
                Some(kv) => {
                    let revision = kv.mod_revision();
                    match holder(&etcd_key, kv.value()) {
                        Some(other) if other != *key => Slot::HoldsOther { revision, other },
                        _ => Slot::Holds {
                            revision,
                            stored: decode(&etcd_key, kv.value(), revision),
                        },
                    }
                }
            };
            located.push(Located {
                etcd_key,
                form,
                slot,
            });
        }
        Ok(located)
    }

    /// The resource `key`, if stored (in Calico 3.32's form, or else in 3.28-3.31's).
    ///
    /// # Errors
    ///
    /// [`StoreError::Etcd`] if etcd cannot be reached, [`StoreError::Invalid`] if the stored
    /// value does not read.
    pub async fn get(&mut self, key: &ResourceKey) -> Result<Option<StoredResource>, StoreError> {
        let located = self.locate(key).await?;
        let mut holders = located.into_iter().filter(Located::holds);
        let Some(in_force) = holders.next() else {
            return Ok(None);
        };
        if let Some(ignored) = holders.next() {
            warn!(
                "{}",
                DuplicateForms {
                    key: key.clone(),
                    in_force: in_force.etcd_key.clone(),
                    ignored: ignored.etcd_key,
                }
            );
        }
        match in_force.slot {
            Slot::Holds { stored, .. } => stored.map(Some).map_err(StoreError::Invalid),
            Slot::Empty | Slot::HoldsOther { .. } => Ok(None),
        }
    }

    /// Writes all of `requests` in one transaction, or none. A resource is written where it
    /// is: a policy stored only in Calico 3.28-3.31's form is replaced there, in that form; a
    /// new one is stored in 3.32's.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] (create), [`StoreError::NotFound`] (replace),
    /// [`StoreError::Conflict`] (a stale `resourceVersion`), [`StoreError::KeyTaken`] (its key
    /// holds another resource), [`StoreError::Concurrent`] (a key changed between the checks
    /// and the transaction), [`StoreError::Etcd`].
    pub async fn write(
        &mut self,
        requests: &[WriteRequest],
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut compares = Vec::new();
        let mut operations = Vec::new();
        let mut outcomes = Vec::new();
        for request in requests {
            let key = request.resource.key();
            let mut located = self.locate(&key).await?;
            compares.extend(located.iter().map(Located::unchanged));
            let target = match located.iter().position(Located::holds) {
                Some(at) => located.swap_remove(at),
                None => located.swap_remove(0),
            };
            let (current, existing) = match &target.slot {
                Slot::Empty => (None, None),
                Slot::Holds { revision, stored } => (Some(revision), stored.as_ref().ok()),
                Slot::HoldsOther { other, .. } => {
                    return Err(StoreError::KeyTaken {
                        key,
                        etcd_key: target.etcd_key.clone(),
                        holder: Box::new(other.clone()),
                    });
                }
            };
            let outcome = check_write(
                &key,
                request.mode,
                request.expected_version().as_deref(),
                current.map(ToString::to_string).as_deref(),
            )?;
            let value = encode(request, existing, target.form)?;
            operations.push(TxnOp::put(target.etcd_key, value, None));
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
    /// A policy stored in both forms is deleted in both, in one transaction: otherwise the
    /// older would come back into force.
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
        let holders: Vec<Located> = self
            .locate(key)
            .await?
            .into_iter()
            .filter(Located::holds)
            .collect();
        let Some(in_force) = holders.first() else {
            return Err(StoreError::NotFound { key: key.clone() });
        };
        let revision = in_force.revision().unwrap_or_default();
        if let Some(expected) = expected_version
            && expected != revision.to_string()
        {
            return Err(StoreError::Conflict {
                key: key.clone(),
                expected: expected.to_owned(),
                actual: revision.to_string(),
            });
        }
        let compares: Vec<Compare> = holders.iter().map(Located::unchanged).collect();
        let operations: Vec<TxnOp> = holders
            .iter()
            .map(|h| TxnOp::delete(h.etcd_key.as_str(), None))
            .collect();
        let response = self
            .client
            .txn(Txn::new().when(compares).and_then(operations))
            .await
            .map_err(|e| self.etcd_error(e))?;
        if !response.succeeded() {
            return Err(StoreError::Concurrent {
                keys: key.to_string(),
            });
        }
        for older in &holders[1..] {
            info!(
                "{key}: also deleted {} ({}'s form of the same resource)",
                older.etcd_key,
                older.form.calico_versions()
            );
        }
        let mut holders = holders;
        match holders.swap_remove(0).slot {
            Slot::Holds { stored, .. } => Ok(stored.ok()),
            Slot::Empty | Slot::HoldsOther { .. } => Ok(None),
        }
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
    /// IPAM's block affinities and blocks, as stored.
    ipam: IpamObjects,
    /// Whether the keys were listed yet.
    listed: bool,
    /// Errors reported by the last [`EtcdSync::sync`].
    reported: BTreeSet<DatastoreError>,
    /// Resources stored in two forms, as reported by the last [`EtcdSync::sync`].
    reported_duplicates: BTreeSet<DuplicateForms>,
}

impl State {
    /// The resources in force: each key's last good resource, one per resource (the newer
    /// form where a policy is stored in two), and the resources stored in two forms.
    fn in_force(&self) -> (Snapshot, Vec<DuplicateForms>) {
        let (resources, duplicates) = in_force(
            self.good
                .iter()
                .map(|(etcd_key, resource)| (etcd_key.clone(), resource.key(), resource)),
        );
        (resources.into_values().cloned().collect(), duplicates)
    }

    /// A key's new value; whether it is one the agent follows.
    fn put(&mut self, kv: &KeyValue) -> bool {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        if IpamObjects::follows(&key) {
            self.ipam.values.insert(key, kv.value().to_vec());
            return true;
        }
        if !key.starts_with(KEY_PREFIX) {
            // IPAM's handles and configuration.
            return false;
        }
        if is_passed_over(&key) {
            debug!(key = %key, "not read: the kind is stored elsewhere");
            return false;
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
        true
    }

    /// A key deleted; whether it was one the agent follows.
    fn delete(&mut self, key: &[u8]) -> bool {
        let key = String::from_utf8_lossy(key).into_owned();
        let ipam = self.ipam.values.remove(&key).is_some();
        let resource = self.good.remove(&key).is_some();
        let error = self.errors.remove(&key).is_some();
        ipam || resource || error
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
        self.ipam = IpamObjects::default();
        for kv in kvs {
            self.put(kv);
        }
        self.listed = true;
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
    /// New problems are logged once, and so is each resource newly found stored in two forms
    /// (the newer is in force).
    pub fn sync(&mut self) -> SyncResult {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (snapshot, duplicates) = state.in_force();
        let duplicates: BTreeSet<DuplicateForms> = duplicates.into_iter().collect();
        for duplicate in duplicates.difference(&state.reported_duplicates) {
            warn!("{duplicate}");
        }
        state.reported_duplicates = duplicates;
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
            ipam: state.ipam.clone(),
            complete: state.listed,
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
    mut client: EtcdClient,
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
        let watched = client.endpoint().to_owned();
        let interruption =
            watch_from(client.current(), &mut progress, resuming, &state, &notify).await;
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
                // The next member gets the resumed watch: when this one died, another one
                // serves it at once.
                let next = client.fail_over().to_owned();
                if outage_logged {
                    debug!("etcd watch still down at {watched} ({reason}); next: {next}");
                } else {
                    warn!(
                        endpoints = %endpoints,
                        "etcd watch interrupted at {watched} ({reason}); the last good state \
                         stays in force; resuming the watch from revision {} at {next} \
                         (retrying with backoff)",
                        progress.last + 1
                    );
                    outage_logged = true;
                }
                // A watch that was up is resumed at once on the next member; one that never
                // came up waits before the next try.
                if !progress.established {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Lists every resource and replaces the view with them; returns the listing's revision.
async fn list(
    client: &mut EtcdClient,
    endpoints: &str,
    state: &Mutex<State>,
) -> Result<i64, etcd_client::Error> {
    let (from, to) = FOLLOWED_RANGE;
    let response = client
        .get(from, Some(GetOptions::new().with_range(to)))
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
        ipam_objects = state.ipam.values.len(),
        "etcd listed"
    );
    Ok(revision)
}

/// Watches from `progress.last + 1` and applies the events until the watch breaks, moving
/// `progress.last` on. `resuming`: the view comes from an earlier watch, not a fresh listing,
/// so etcd's revision must not be behind it.
async fn watch_from(
    client: &mut etcd_client::Client,
    progress: &mut WatchProgress,
    resuming: bool,
    state: &Mutex<State>,
    notify: &impl Fn(),
) -> Interruption {
    let (from, to) = FOLLOWED_RANGE;
    let options = WatchOptions::new()
        .with_range(to)
        .with_start_revision(progress.last + 1)
        .with_progress_notify();
    let mut stream =
        match tokio::time::timeout(REQUEST_TIMEOUT, client.watch(from, Some(options))).await {
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
        let mut changed = false;
        {
            let mut state = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                changed |= match event.event_type() {
                    EventType::Put => state.put(kv),
                    EventType::Delete => state.delete(kv.key()),
                };
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
        // Changes of keys passed over (IPAM's handles) do not wake the agent.
        if changed {
            notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GNP: &str = "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/";

    fn gnp(name: &str) -> ResourceKey {
        ResourceKey {
            kind: Kind::GlobalNetworkPolicy,
            namespace: None,
            name: name.into(),
        }
    }

    /// The resource a key-value holds, read as the CLI and the agent read it.
    fn read(key: &str, value: &str) -> ResourceKey {
        decode(key, value.as_bytes(), 7)
            .unwrap_or_else(|e| panic!("{key} reads: {e:?}"))
            .key
    }

    #[test]
    fn the_followed_range_holds_ipam_and_the_v3_tree() {
        let (from, to) = FOLLOWED_RANGE;
        let inside = |key: &str| from <= key && key < to;
        let mut end = KEY_PREFIX.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        assert_eq!(to.as_bytes(), end, "the first key after the v3 tree");
        for key in [
            "/calico/ipam/v2/host/node-1/ipv4/block/198.18.0.0-26",
            "/calico/ipam/v2/assignment/ipv4/block/198.18.0.0-26",
            "/calico/ipam/v2/handle/h1",
            "/calico/resources/v3/projectcalico.org/nodes/node-1",
            "/calico/resources/v3/projectcalico.org/workloadendpoints/ns/wep",
        ] {
            assert!(inside(key), "{key}");
        }
        for key in [
            "/calico/felix/v2/host/node-1/status",
            "/calico/bgp/v1/global/as_num",
            "/calico/v1/config",
            "/calico/resources/v3/projectcalico.orgx",
        ] {
            assert!(!inside(key), "{key}");
        }
    }

    #[test]
    fn keys_follow_calico_layout() {
        let key = ResourceKey {
            kind: Kind::WorkloadEndpoint,
            namespace: Some("ns1".into()),
            name: "node1-k8s-pod1-eth0".into(),
        };
        let wep =
            "/calico/resources/v3/projectcalico.org/workloadendpoints/ns1/node1-k8s-pod1-eth0";
        assert_eq!(etcd_key(&key), wep);
        assert_eq!(etcd_keys(&key), [(StoredForm::Current, wep.to_owned())]);
        assert_eq!(holder(wep, b"{}"), Some(key));

        // A policy is written under its own name (Calico 3.32); a default-tier name without a
        // dot may also be at Calico 3.28-3.31's `default.<name>`.
        assert_eq!(etcd_key(&gnp("deny-db")), format!("{GNP}deny-db"));
        assert_eq!(
            etcd_keys(&gnp("deny-db")),
            [
                (StoredForm::Current, format!("{GNP}deny-db")),
                (StoredForm::Tiered, format!("{GNP}default.deny-db")),
            ]
        );
        // Names with a tier, and Kubernetes-derived ones, have one key in every version.
        assert_eq!(etcd_keys(&gnp("security.block")).len(), 1);
        let np = ResourceKey {
            kind: Kind::NetworkPolicy,
            namespace: Some("prod".into()),
            name: "security.block".into(),
        };
        assert_eq!(
            etcd_keys(&np),
            [(
                StoredForm::Current,
                "/calico/resources/v3/projectcalico.org/networkpolicies/prod/security.block".into()
            )]
        );
        let staged = ResourceKey {
            kind: Kind::StagedNetworkPolicy,
            namespace: Some("prod".into()),
            name: "trial".into(),
        };
        assert_eq!(
            etcd_keys(&staged)[1].1,
            "/calico/resources/v3/projectcalico.org/stagednetworkpolicies/prod/default.trial"
        );
        let kubernetes = ResourceKey {
            kind: Kind::StagedKubernetesNetworkPolicy,
            namespace: Some("prod".into()),
            name: "trial".into(),
        };
        assert_eq!(etcd_keys(&kubernetes).len(), 1, "never tiered");

        assert_eq!(
            holder(
                "/calico/resources/v3/projectcalico.org/profiles/kns.default",
                b"{}"
            )
            .map(|k| k.name),
            Some("kns.default".into())
        );
        for bad in [
            "/calico/resources/v3/projectcalico.org/profiles/a/b",
            "/calico/resources/v3/projectcalico.org/widgets/a",
            "/calico/resources/v3/projectcalico.org/networkpolicies/a",
        ] {
            assert_eq!(holder(bad, b"{}"), None, "{bad}");
            assert!(decode(bad, b"{}", 1).is_err(), "{bad}");
        }
        for kind in Kind::ALL {
            assert_eq!(Kind::from_plural(kind.plural()), Some(*kind));
        }
    }

    /// `IPAMConfiguration` has one key, `/calico/ipam/v2/config`, in one form, and its value
    /// is libcalico-go's IPAM JSON both ways; the v3 key calicoctl would use is passed over.
    #[test]
    fn ipam_configuration_has_one_key_in_ipams_shape() {
        const CONFIG: &str = "/calico/ipam/v2/config";
        let key = ResourceKey {
            kind: Kind::IpamConfiguration,
            namespace: None,
            name: "default".into(),
        };
        assert_eq!(etcd_keys(&key), [(StoredForm::Current, CONFIG.to_owned())]);
        let stored = br#"{"strict_affinity":true,"maxBlocksPerHost":4}"#;
        assert_eq!(holder(CONFIG, stored), Some(key.clone()));

        let read = decode(CONFIG, stored, 9).expect("reads");
        assert_eq!(read.key, key);
        assert_eq!(read.version, "9");
        assert_eq!(read.value["spec"]["strictAffinity"], true);
        assert_eq!(read.value["spec"]["maxBlocksPerHost"], 4);
        // An absent field is false, as Calico reads it.
        assert_eq!(read.value["spec"]["autoAllocateBlocks"], false);

        let text = "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {strictAffinity: true, maxBlocksPerHost: 4}\n";
        let parsed = super::super::parse_documents("in.yaml", text).expect("parses");
        let request = WriteRequest {
            mode: super::super::WriteMode::Create,
            resource: parsed[0].resource.clone(),
            raw: parsed[0].raw.clone(),
        };
        let written = encode(&request, None, StoredForm::Current).expect("encodes");
        assert_eq!(
            written,
            r#"{"strict_affinity":true,"auto_allocate_blocks":true,"maxBlocksPerHost":4}"#
        );

        assert!(is_passed_over(
            "/calico/resources/v3/projectcalico.org/ipamconfigurations/default"
        ));
        assert!(!is_passed_over(&format!("{GNP}deny-db")));
    }

    /// Values exactly as each Calico version stores a GlobalNetworkPolicy `deny-db` in the
    /// default tier read as `deny-db`, without the annotation the store added.
    #[test]
    fn policies_of_each_calico_version_read_under_their_name() {
        // 3.28 to 3.29.3: tiered key and metadata.name, no annotation.
        let v3_28 = r#"{"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"default.deny-db","uid":"0c1d7a4e-5a43-4f5e-9d0e-2f1b6c1c9a11","creationTimestamp":"2024-05-01T10:00:00Z"},"spec":{"order":10,"ingress":[{"action":"Deny","source":{},"destination":{}}],"selector":"app == 'db'","types":["Ingress"]}}"#;
        // 3.29.4 to 3.31: the same, with the name as given in the annotation.
        let v3_31 = r#"{"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"default.deny-db","uid":"0c1d7a4e-5a43-4f5e-9d0e-2f1b6c1c9a11","creationTimestamp":"2025-05-01T10:00:00Z","annotations":{"projectcalico.org/metadata":"{\"name\":\"deny-db\"}"}},"spec":{"order":10,"ingress":[{"action":"Deny","source":{},"destination":{}}],"selector":"app == 'db'","types":["Ingress"]}}"#;
        // 3.32: its own name in the key and metadata.name, the annotation, the tier label.
        let v3_32 = r#"{"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"deny-db","uid":"0c1d7a4e-5a43-4f5e-9d0e-2f1b6c1c9a11","creationTimestamp":"2026-05-01T10:00:00Z","labels":{"projectcalico.org/tier":"default"},"annotations":{"projectcalico.org/metadata":"{\"name\":\"deny-db\"}"}},"spec":{"order":10,"ingress":[{"action":"Deny","source":{},"destination":{}}],"selector":"app == 'db'","types":["Ingress"]}}"#;
        for (key, value, form) in [
            (format!("{GNP}default.deny-db"), v3_28, StoredForm::Tiered),
            (format!("{GNP}default.deny-db"), v3_31, StoredForm::Tiered),
            (format!("{GNP}deny-db"), v3_32, StoredForm::Current),
        ] {
            let stored = decode(&key, value.as_bytes(), 42).expect("decodes");
            assert_eq!(stored.key, gnp("deny-db"), "{value}");
            assert_eq!(stored_form(&key, &stored.key), form, "{key}");
            assert_eq!(stored.value["metadata"]["name"], "deny-db");
            assert_eq!(stored.version, "42");
            assert_eq!(
                stored.resource.metadata().resource_version.as_deref(),
                Some("42")
            );
            assert!(
                stored.value["metadata"].get("annotations").is_none(),
                "the store's annotation is not shown: {}",
                stored.value
            );
            assert!(stored.resource.metadata().annotations.is_empty());
            assert_eq!(holder(&key, value.as_bytes()), Some(gnp("deny-db")));
        }
        // A policy the user named `default.deny-db` in Calico 3.32 is at the same key as the
        // older form of `deny-db`: its annotation tells them apart.
        let named_default = v3_32
            .replace(r#""name":"deny-db""#, r#""name":"default.deny-db""#)
            .replace(r#"\"deny-db\""#, r#"\"default.deny-db\""#);
        assert_eq!(
            read(&format!("{GNP}default.deny-db"), &named_default),
            gnp("default.deny-db")
        );
        // Without an annotation, a `default.` key of another tier is not the older form.
        let other_tier = r#"{"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"default.x"},"spec":{"tier":"security"}}"#;
        assert_eq!(
            read(&format!("{GNP}default.x"), other_tier),
            gnp("default.x")
        );
        // A tiered name is the same in every version; other annotations are kept.
        let tiered = r#"{"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"security.block","labels":{"projectcalico.org/tier":"security"},"annotations":{"note":"x","projectcalico.org/metadata":"{\"name\":\"security.block\"}"}},"spec":{"tier":"security"}}"#;
        let stored = decode(&format!("{GNP}security.block"), tiered.as_bytes(), 3).expect("reads");
        assert_eq!(stored.key, gnp("security.block"));
        assert_eq!(
            stored.value["metadata"]["annotations"],
            serde_json::json!({"note": "x"})
        );

        // An annotation that is not JSON is an error that names the field.
        let broken = v3_32.replace(r#""{\"name\":\"deny-db\"}""#, r#""{name""#);
        let errors = decode(&format!("{GNP}deny-db"), broken.as_bytes(), 3).expect_err("broken");
        assert_eq!(
            errors[0].field.as_deref(),
            Some("metadata.annotations.projectcalico.org/metadata"),
            "{}",
            errors[0]
        );
        assert!(
            errors[0].to_string().contains("not valid JSON"),
            "{}",
            errors[0]
        );
        // What still decides where it belongs.
        assert_eq!(
            holder(&format!("{GNP}deny-db"), broken.as_bytes()),
            Some(gnp("deny-db"))
        );
    }

    /// Where a resource is stored in both forms, the newer is in force, and the pair is
    /// reported.
    #[test]
    fn the_newer_form_is_in_force() {
        let (resources, duplicates) = in_force([
            (format!("{GNP}default.a"), gnp("a"), "old a"),
            (format!("{GNP}a"), gnp("a"), "new a"),
            (format!("{GNP}default.b"), gnp("b"), "old b"),
            (format!("{GNP}c"), gnp("c"), "new c"),
            (format!("{GNP}default.c"), gnp("c"), "old c"),
            (
                format!("{GNP}default.d"),
                gnp("default.d"),
                "a policy named default.d",
            ),
        ]);
        let chosen: Vec<(&str, &str)> = resources
            .iter()
            .map(|(k, v)| (k.name.as_str(), *v))
            .collect();
        assert_eq!(
            chosen,
            [
                ("a", "new a"),
                ("b", "old b"),
                ("c", "new c"),
                ("default.d", "a policy named default.d")
            ]
        );
        assert_eq!(
            duplicates,
            [
                DuplicateForms {
                    key: gnp("a"),
                    in_force: format!("{GNP}a"),
                    ignored: format!("{GNP}default.a"),
                },
                DuplicateForms {
                    key: gnp("c"),
                    in_force: format!("{GNP}c"),
                    ignored: format!("{GNP}default.c"),
                },
            ]
        );
        assert_eq!(
            duplicates[0].to_string(),
            format!(
                "GlobalNetworkPolicy a is stored twice: at {GNP}a (Calico 3.32's form, in \
                 force) and at {GNP}default.a (Calico 3.28-3.31's form, ignored while both \
                 exist)"
            )
        );
    }

    #[test]
    fn decodes_calicoctl_values() {
        // As calicoctl (libcalico-go) stores a GlobalNetworkPolicy in the default tier.
        let value = br#"{"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"default.deny-db","uid":"0c1d7a4e-5a43-4f5e-9d0e-2f1b6c1c9a11","creationTimestamp":"2024-05-01T10:00:00Z","labels":{"projectcalico.org/tier":"default"}},"spec":{"tier":"default","order":10,"selector":"app == 'db'","ingress":[{"action":"Deny","protocol":"TCP","source":{},"destination":{}}],"types":["Ingress"]}}"#;
        let key = "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/default.deny-db";
        let stored = decode(key, value, 42).expect("decodes");
        assert_eq!(stored.key.name, "deny-db");
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
