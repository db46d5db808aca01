//! `FelixConfiguration`: the per-node agent's settings. The one named `default` applies to every
//! node, `node.<nodename>` to one node, over `default`; the agent layers them under its file,
//! environment and flags (see `crate::felix_config`); each field is checked by
//! `crate::felix_settings`.
//!
//! Fields follow Calico v3.32's `FelixConfigurationSpec` (`api/pkg/apis/projectcalico/v3/
//! felixconfig.go`), camelCase. The spec is kept as its JSON fields: each field is checked, by
//! name and value, with the same parser the agent uses for the file and the environment. The
//! settings this dataplane implements must be valid; the other fields Calico defines are
//! accepted and not used (the agent logs them once); a field Calico does not define is refused.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{
    fields::FieldError,
    kind::{Document, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::ObjectMeta,
};

/// The name of the `FelixConfiguration` every node reads.
pub const DEFAULT_FELIX_CONFIGURATION: &str = "default";
/// The prefix of a node's own `FelixConfiguration` (`node.<nodename>`).
pub const NODE_FELIX_CONFIGURATION_PREFIX: &str = "node.";

/// A `FelixConfiguration`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FelixConfiguration {
    /// Its metadata (`default`, or `node.<nodename>`).
    pub metadata: ObjectMeta,
    /// Its fields.
    pub spec: FelixConfigurationSpec,
}

/// Specification of a [`FelixConfiguration`]: its fields by their camelCase name, each checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct FelixConfigurationSpec {
    /// The fields as written (a `null` field is as if absent).
    pub fields: BTreeMap<String, Value>,
}

impl ResourceKind for FelixConfiguration {
    const INFO: KindInfo = KindInfo::cluster(
        "FelixConfiguration",
        "felixconfigurations",
        &["felixconfig", "felixconfigs"],
    );

    /// The spec may be left out: then every setting has its default.
    type Document = Document<Option<FelixConfigurationSpec>>;

    document_parts!(optional spec);

    /// Every field: a Calico name, and for the settings implemented here a valid value.
    fn validate(&self) -> Vec<FieldError> {
        self.spec
            .fields
            .iter()
            .filter_map(|(name, value)| {
                crate::felix_settings::check_resource_field(name, value)
                    .err()
                    .map(|message| FieldError::new(format!("spec.{name}"), message))
            })
            .collect()
    }
}
