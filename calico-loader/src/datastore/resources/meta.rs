//! What every resource carries: its `apiVersion` and its Kubernetes metadata ([`ObjectMeta`]),
//! with Kubernetes' rules for names, namespaces, labels and annotations, and Calico's rule that a
//! namespaced kind without a namespace is in `default`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    fields::{
        AnyString, FieldError, NamespaceName, ResourceName, check_label_value,
        check_qualified_name, nullable, optional, required,
    },
    kind_info::KindInfo,
};

/// The only API group and version this datastore reads.
pub const API_VERSION: &str = "projectcalico.org/v3";

/// Namespace given to namespaced resources that do not name one (as `calicoctl` does).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Label Calico gives every namespaced endpoint and network set: its namespace. Rule selectors
/// see it; resources must not set it themselves.
pub const NAMESPACE_LABEL: &str = "projectcalico.org/namespace";

/// Kubernetes object metadata, as every `projectcalico.org/v3` resource carries it.
///
/// All of Kubernetes' `ObjectMeta` fields are accepted; the datastore uses `name`, `namespace`,
/// `labels`, `annotations`, `uid`, `resourceVersion` and `creationTimestamp`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The resource's name (a DNS-1123 subdomain, as Calico requires).
    #[serde(deserialize_with = "required::<_, ResourceName>")]
    pub name: String,
    /// Its namespace. After parsing, set (defaulting to `default`) exactly for namespaced kinds.
    #[serde(default, deserialize_with = "optional::<_, NamespaceName>")]
    pub namespace: Option<String>,
    /// Labels, for selectors.
    #[serde(default, deserialize_with = "nullable")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, deserialize_with = "nullable")]
    pub annotations: BTreeMap<String, String>,
    /// Unique id given by the API server.
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub uid: Option<String>,
    /// Version given by the API server.
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub resource_version: Option<String>,
    /// Creation time (RFC 3339), as the API server reports it.
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub creation_timestamp: Option<String>,
    /// Accepted, unused.
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub generate_name: Option<String>,
    /// Accepted, unused.
    #[serde(default)]
    pub generation: Option<i64>,
    /// Accepted, unused.
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub deletion_timestamp: Option<String>,
    /// Accepted, unused.
    #[serde(default)]
    pub deletion_grace_period_seconds: Option<i64>,
    /// Accepted, unused.
    #[serde(default, deserialize_with = "nullable")]
    pub finalizers: Vec<String>,
    /// Accepted (kept as JSON), unused.
    #[serde(default, deserialize_with = "nullable")]
    pub owner_references: Vec<serde_json::Value>,
    /// Accepted (kept as JSON), unused.
    #[serde(default, deserialize_with = "nullable")]
    pub managed_fields: Vec<serde_json::Value>,
    /// Accepted, unused (deprecated in Kubernetes).
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub self_link: Option<String>,
    /// Accepted, unused (removed from Kubernetes in 1.25, still found in old exports).
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub cluster_name: Option<String>,
}

/// Kubernetes' limit on the total size of a resource's annotations.
const ANNOTATIONS_SIZE_LIMIT: usize = 256 * 1024;

impl ObjectMeta {
    /// Applies the namespace rules for `kind` (a namespaced kind without namespace gets
    /// `default`; a cluster-scoped kind must not name one) and checks labels and annotations.
    pub fn validate(&mut self, kind: &KindInfo) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if kind.namespaced {
            if self.namespace.is_none() {
                self.namespace = Some(DEFAULT_NAMESPACE.to_owned());
            }
        } else if let Some(namespace) = &self.namespace {
            errors.push(FieldError::new(
                "metadata.namespace",
                format!(
                    "{} is not namespaced, but namespace {namespace:?} is given",
                    kind.name
                ),
            ));
        }
        errors.extend(check_labels(&self.labels, "metadata.labels"));
        errors.extend(check_annotations(&self.annotations, "metadata.annotations"));
        errors
    }
}

/// Checks labels as Kubernetes does (qualified-name keys, label values); `field` is the path
/// of the map, like `metadata.labels`.
pub(super) fn check_labels(labels: &BTreeMap<String, String>, field: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (key, value) in labels {
        if let Err(e) = check_qualified_name(key) {
            errors.push(FieldError::new(
                field,
                format!("invalid label key {key:?}: {e}"),
            ));
        }
        if let Err(e) = check_label_value(value) {
            errors.push(FieldError::new(
                format!("{field}.{key}"),
                format!("invalid label value {value:?}: {e}"),
            ));
        }
    }
    errors
}

/// Checks annotations as Calico does (qualified-name keys, ignoring case; at most
/// [`ANNOTATIONS_SIZE_LIMIT`] bytes in all); `field` is the path of the map.
pub(super) fn check_annotations(
    annotations: &BTreeMap<String, String>,
    field: &str,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut size = 0;
    for (key, value) in annotations {
        if let Err(e) = check_qualified_name(&key.to_ascii_lowercase()) {
            errors.push(FieldError::new(
                field,
                format!("invalid annotation key {key:?}: {e}"),
            ));
        }
        size += key.len() + value.len();
    }
    if size > ANNOTATIONS_SIZE_LIMIT {
        errors.push(FieldError::new(
            field,
            format!(
                "annotations total {size} bytes, more than the limit of {ANNOTATIONS_SIZE_LIMIT}"
            ),
        ));
    }
    errors
}
