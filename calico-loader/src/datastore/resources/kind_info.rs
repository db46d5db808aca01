//! A kind's facts: its name, its plural, the short names the CLI accepts, whether it is
//! namespaced, and how its resources are keyed in etcd ([`EtcdKeys`]).
//!
//! Every kind of the registry has one [`KindInfo`]: a typed kind gives it as its
//! `ResourceKind::INFO`, an untyped kind on its registry line. Nothing here knows the kinds
//! themselves, so the key layouts below serve any of them.

use std::fmt;

use serde_json::Value;

use super::fields::FieldError;

/// Where every Calico v3 resource lives in etcd (libcalico-go's `lib/backend/etcdv3` layout).
pub const KEY_PREFIX: &str = "/calico/resources/v3/projectcalico.org/";

/// What the datastore, the etcd layout and the CLI need to know of a kind.
#[derive(Clone, Copy, Debug)]
pub struct KindInfo {
    /// The kind's name as written in `kind:`, exactly as Calico spells it (`IPPool`).
    pub name: &'static str,
    /// Calico's plural (`ippools`): in etcd keys, in the CLI, and in the local store's paths.
    pub plural: &'static str,
    /// Other names the CLI accepts, lower case (calicoctl's: `ipp`, `pool`...). The name in any
    /// case and the plural are always accepted.
    pub short_names: &'static [&'static str],
    /// Whether resources of the kind live in a namespace.
    pub namespaced: bool,
    /// How its resources are keyed in etcd.
    pub etcd: &'static dyn EtcdKeys,
}

impl KindInfo {
    /// A cluster-scoped kind, keyed in etcd with Calico's v3 layout.
    pub const fn cluster(
        name: &'static str,
        plural: &'static str,
        short_names: &'static [&'static str],
    ) -> Self {
        Self {
            name,
            plural,
            short_names,
            namespaced: false,
            etcd: &V3Keys,
        }
    }

    /// A namespaced kind, keyed in etcd with Calico's v3 layout.
    pub const fn namespaced(
        name: &'static str,
        plural: &'static str,
        short_names: &'static [&'static str],
    ) -> Self {
        Self {
            namespaced: true,
            ..Self::cluster(name, plural, short_names)
        }
    }

    /// The same kind, keyed in etcd by `etcd` instead.
    pub const fn with_etcd_keys(self, etcd: &'static dyn EtcdKeys) -> Self {
        Self { etcd, ..self }
    }

    /// Whether the CLI's `text` names this kind: its name in any case, its plural, or one of
    /// its short names.
    pub fn is_called(&self, text: &str) -> bool {
        let lower = text.to_ascii_lowercase();
        self.name.eq_ignore_ascii_case(text)
            || self.plural == lower
            || self.short_names.contains(&lower.as_str())
    }
}

/// Which Calico release's format a key-value is stored in. Only a default-tier policy has two:
/// see [`PolicyKeys`]. Forms order newest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoredForm {
    /// Under the resource's own name: every kind, and the policies as Calico 3.32 stores them.
    Current,
    /// Under `default.<name>`: a default-tier policy as Calico 3.28 to 3.31 stored it.
    Tiered,
}

impl StoredForm {
    /// Which Calico versions write the form, for messages.
    pub fn calico_versions(self) -> &'static str {
        match self {
            StoredForm::Current => "Calico 3.32",
            StoredForm::Tiered => "Calico 3.28-3.31",
        }
    }
}

/// How a kind's resources are keyed in etcd, and what the store adds to their values. Most kinds
/// use Calico's v3 layout ([`V3Keys`]); the policy kinds add the name annotation and read the
/// keys of older Calico versions too ([`PolicyKeys`]); a kind stored elsewhere (IPAM's
/// `/calico/ipam/v2/...`) gives its own.
pub trait EtcdKeys: Sync + fmt::Debug {
    /// The prefix of every key of the kind: of those in `namespace` when one is given and the
    /// kind is namespaced.
    fn prefix(&self, kind: &KindInfo, namespace: Option<&str>) -> String;

    /// The key the resource the user calls `name` (in `namespace`, for a namespaced kind) is
    /// stored at in `form`, if the form applies to it. Every resource has a
    /// [`StoredForm::Current`] key.
    fn key(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        form: StoredForm,
    ) -> Option<String>;

    /// The namespace (for a namespaced kind) and the name part of `key`, as it is in the key,
    /// if `key` is one of the kind's keys.
    fn parse(&self, kind: &KindInfo, key: &str) -> Option<(Option<String>, String)>;

    /// Reads a value stored under the key name part `stored`: the name the user knows it by.
    /// Takes out of `value` what the store added to it.
    ///
    /// # Errors
    ///
    /// A value whose stored additions do not read, with the field's path.
    fn read_value(&self, stored: &str, value: &mut Value) -> Result<String, FieldError> {
        let _ = value;
        Ok(stored.to_owned())
    }

    /// Completes `value` (a resource object) as the store writes it for the resource the user
    /// calls `name`, in `form`: at least `metadata.name`, the key's name part.
    fn write_value(&self, name: &str, form: StoredForm, value: &mut Value) {
        let _ = form;
        if let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            metadata.insert("name".into(), name.into());
        }
    }

    /// Whether the kind lives outside the v3 tree ([`KEY_PREFIX`]), in a value of its own
    /// shape (IPAM's `/calico/ipam/v2/config`). Such a kind's value goes through
    /// [`encode_value`](Self::encode_value) and [`decode_value`](Self::decode_value); the local
    /// directory keeps it in the file at its key's path without `/calico/`
    /// (`<dir>/ipam/v2/config`), with the same text; and a key under the v3 tree in the kind's
    /// plural (what calicoctl writes there) is not the kind's and is passed over.
    fn stores_outside_v3(&self) -> bool {
        false
    }

    /// The value to store for the v3 object `object` (its `metadata` filled in, completed by
    /// [`write_value`](Self::write_value)): the object's JSON itself, unless the layout stores
    /// another shape.
    ///
    /// # Errors
    ///
    /// The object cannot be put in the stored shape (it was validated before, so this is a
    /// bug's message).
    fn encode_value(&self, object: &serde_json::Value) -> Result<String, String> {
        serde_json::to_string(object).map_err(|e| e.to_string())
    }

    /// The v3 object (`apiVersion`, `kind`, `metadata`, `spec`) the stored `value` under the
    /// key name part `name` stands for: the value's JSON itself, unless the layout stores
    /// another shape. [`read_value`](Self::read_value) then reads the object.
    ///
    /// # Errors
    ///
    /// The value is not JSON, or not of the stored shape.
    fn decode_value(
        &self,
        kind: &KindInfo,
        name: &str,
        value: &[u8],
    ) -> Result<serde_json::Value, String> {
        let _ = (kind, name);
        serde_json::from_slice(value).map_err(|e| format!("value is not JSON: {e}"))
    }
}

/// Whether `key` is under the v3 tree in the plural of `kind` (a key calicoctl would write for
/// it there).
pub fn is_v3_key_of(kind: &KindInfo, key: &str) -> bool {
    key.starts_with(&v3_prefix(kind, None))
}

/// Calico's v3 layout: [`KEY_PREFIX`]`<plural>/<name>` for cluster-scoped kinds,
/// [`KEY_PREFIX`]`<plural>/<namespace>/<name>` for namespaced ones.
#[derive(Debug)]
pub struct V3Keys;

impl EtcdKeys for V3Keys {
    fn prefix(&self, kind: &KindInfo, namespace: Option<&str>) -> String {
        v3_prefix(kind, namespace)
    }

    fn key(
        &self,
        kind: &KindInfo,
        namespace: Option<&str>,
        name: &str,
        form: StoredForm,
    ) -> Option<String> {
        (form == StoredForm::Current).then(|| format!("{}{name}", v3_prefix(kind, namespace)))
    }

    fn parse(&self, kind: &KindInfo, key: &str) -> Option<(Option<String>, String)> {
        v3_parse(kind, key).map(|(namespace, name)| (namespace, name.to_owned()))
    }
}

/// `KEY_PREFIX<plural>/`, with `<namespace>/` for a namespaced kind given one.
pub(super) fn v3_prefix(kind: &KindInfo, namespace: Option<&str>) -> String {
    match namespace {
        Some(namespace) if kind.namespaced => {
            format!("{KEY_PREFIX}{}/{namespace}/", kind.plural)
        }
        _ => format!("{KEY_PREFIX}{}/", kind.plural),
    }
}

/// The namespace and the stored name of a v3 key of `kind`.
pub(super) fn v3_parse<'k>(kind: &KindInfo, key: &'k str) -> Option<(Option<String>, &'k str)> {
    let rest = key
        .strip_prefix(KEY_PREFIX)?
        .strip_prefix(kind.plural)?
        .strip_prefix('/')?;
    let mut parts = rest.split('/');
    let (namespace, name) = if kind.namespaced {
        (Some(parts.next()?.to_owned()), parts.next()?)
    } else {
        (None, parts.next()?)
    };
    if parts.next().is_some() || name.is_empty() || namespace.as_deref().is_some_and(str::is_empty)
    {
        return None;
    }
    Some((namespace, name))
}
