//! `NetworkSet`: networks of one namespace behind labels, for rule selectors (`networkset.go`;
//! `validateNetworkSet`). What it shares with `GlobalNetworkSet` is here too: the spec
//! ([`NetworkSetSpec`], which is also Calico's `GlobalNetworkSetSpec`) and the label check.
//!
//! A set is never an endpoint: it has no interface, no ports and no service account. Its nets
//! stand, whole, for the addresses of the set wherever a rule's selector matches the set's
//! labels (docs/policy-compilation.md).

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Deserialize;

use super::{
    fields::{Cidr, FieldError, list},
    kind::{Document, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::{DEFAULT_NAMESPACE, NAMESPACE_LABEL, ObjectMeta},
};

/// A `NetworkSet`: networks of one namespace behind labels. Rule selectors see it like a
/// workload endpoint of that namespace (with the namespace label, and the labels of the
/// namespace's profile `kns.<namespace>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSet {
    /// Its metadata (namespace always set once parsed).
    pub metadata: ObjectMeta,
    /// Its specification.
    pub spec: NetworkSetSpec,
}

/// Specification of a [`NetworkSet`] or a `GlobalNetworkSet` (Calico's `NetworkSetSpec` and
/// `GlobalNetworkSetSpec`, which have the same field).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSetSpec {
    /// The set's networks, as libcalico-go's `ParseCIDROrIP` reads them: a bare address means
    /// /32 or /128, and host bits are cleared (`198.18.0.7/24` is `198.18.0.0/24`). Each
    /// network stands for all of its addresses.
    #[serde(default, deserialize_with = "list::<_, Cidr>")]
    pub nets: Vec<IpNet>,
}

impl NetworkSet {
    /// The set's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The set's namespace (`default` when none was given).
    pub fn namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE)
    }
}

impl ResourceKind for NetworkSet {
    const INFO: KindInfo = KindInfo::namespaced("NetworkSet", "networksets", &["netsets"]);

    /// The spec may be left out, as Go allows: no networks.
    type Document = Document<Option<NetworkSetSpec>>;

    document_parts!(optional spec);

    /// The label Calico reserves (`validateNetworkSet`).
    fn validate(&self) -> Vec<FieldError> {
        check_set_labels(&self.metadata.labels)
    }
}

/// The label checks of both set kinds (`validateNetworkSet`, `validateGlobalNetworkSet`):
/// `projectcalico.org/namespace` is Calico's own (it gives it to a NetworkSet from its
/// namespace), so a set must not carry it. Kubernetes' rules on labels are checked with the
/// metadata.
pub(super) fn check_set_labels(labels: &BTreeMap<String, String>) -> Vec<FieldError> {
    if labels.contains_key(NAMESPACE_LABEL) {
        vec![FieldError::new(
            "metadata.labels",
            format!(
                "{NAMESPACE_LABEL} is not a valid label name: Calico sets it from the \
                 namespace"
            ),
        )]
    } else {
        Vec::new()
    }
}
