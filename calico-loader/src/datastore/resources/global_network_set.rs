//! `GlobalNetworkSet`: networks behind labels, outside any namespace, for rule selectors
//! (`globalnetworkset.go`; `validateGlobalNetworkSet`). Its spec and label check are those of
//! `NetworkSet` (`network_set.rs`).

use super::{
    fields::FieldError,
    kind::{Document, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::ObjectMeta,
    network_set::{NetworkSetSpec, check_set_labels},
};

/// Specification of a [`GlobalNetworkSet`] (Calico's `GlobalNetworkSetSpec`): the same field as
/// a NetworkSet's.
pub type GlobalNetworkSetSpec = NetworkSetSpec;

/// A `GlobalNetworkSet`: networks behind labels, in no namespace. Rule selectors see it with
/// its own labels only; a NetworkPolicy's rules see it only through
/// `namespaceSelector: global()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalNetworkSet {
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its specification.
    pub spec: GlobalNetworkSetSpec,
}

impl GlobalNetworkSet {
    /// The set's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

impl ResourceKind for GlobalNetworkSet {
    const INFO: KindInfo =
        KindInfo::cluster("GlobalNetworkSet", "globalnetworksets", &["gnetsets"]);

    /// The spec may be left out, as Go allows: no networks.
    type Document = Document<Option<GlobalNetworkSetSpec>>;

    document_parts!(optional spec);

    /// The label Calico reserves (`validateGlobalNetworkSet`).
    fn validate(&self) -> Vec<FieldError> {
        check_set_labels(&self.metadata.labels)
    }
}
