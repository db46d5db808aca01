//! What the CLI's stores share, whichever the backend: a resource as stored
//! ([`StoredResource`]), a write ([`WriteRequest`], [`WriteMode`], [`WriteOutcome`]), why one
//! was refused ([`StoreError`]), the create/replace/version rules every backend applies
//! ([`check_write`]) and the object a backend stores ([`prepare_value`]).
//!
//! The backends (`backend::LocalStore` and `etcd::EtcdStore`) build on this module; it knows
//! neither of them.

use std::{
    io,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value};

use super::{
    error::DatastoreError,
    local::WatchError,
    resources::{API_VERSION, Resource, ResourceKey},
};

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
    /// The etcd key a resource would be written at holds another resource: a policy named
    /// `default.<name>`, where Calico 3.28-3.31 stored the policy `<name>`.
    #[error(
        "{key}: its etcd key {etcd_key} holds {holder} (stored by Calico 3.28-3.31 as default.<name>); delete or rename that one first"
    )]
    KeyTaken {
        key: ResourceKey,
        etcd_key: String,
        holder: Box<ResourceKey>,
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
    #[error("etcd at {endpoints}: {}{}", describe_error(.error), hint_suffix(*.hint))]
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

/// An etcd client error with its causes, which `etcd_client::Error` does not give as its
/// `source`: what went wrong with a connection or TLS is only said there.
pub fn describe_error(error: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let (mut text, mut cause): (String, Option<&(dyn std::error::Error + 'static)>) = match error {
        etcd_client::Error::GRpcStatus(status) => {
            let mut text = format!("{:?}", status.code());
            if !status.message().is_empty() {
                text = format!("{text}: {}", status.message());
            }
            (text, status.source())
        }
        etcd_client::Error::TransportError(e) => (format!("transport error: {e}"), e.source()),
        etcd_client::Error::IoError(e) => (format!("I/O error: {e}"), e.source()),
        other => (other.to_string(), None),
    };
    while let Some(c) = cause {
        let c_text = c.to_string();
        // tonic's transport error says only "transport error"; its causes say what.
        if !c_text.is_empty() && c_text != "transport error" && !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text
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
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the epoch as an RFC 3339 UTC time (days to civil date, after Howard
/// Hinnant's algorithm).
pub fn rfc3339(secs: u64) -> String {
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
}
