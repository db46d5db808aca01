//! `Profile`: rules and labels shared by the endpoints that name it (`profile.go`). Profiles
//! apply after every tier, in the order the endpoint lists them.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    fields::{FieldError, nullable},
    kind::{Document, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::{ObjectMeta, check_labels},
    policy::{PolicyType, Rule, RuleOwner, rule_selectors, validate_rules},
};

/// A `Profile`: rules and labels shared by the endpoints that name it. Profiles apply after
/// every tier, in the order the endpoint lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its specification.
    pub spec: ProfileSpec,
}

/// Specification of a [`Profile`] (Calico's `ProfileSpec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfileSpec {
    /// Ingress rules, in order.
    #[serde(default, deserialize_with = "nullable")]
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    #[serde(default, deserialize_with = "nullable")]
    pub egress: Vec<Rule>,
    /// Labels given to every endpoint that names the profile (the endpoint's own labels win).
    #[serde(default, deserialize_with = "nullable")]
    pub labels_to_apply: BTreeMap<String, String>,
}

impl Profile {
    /// The profile's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// Every selector of the profile's rules with its field path
    /// (`spec.ingress[0].source.selector`...), for the caller to check with the selector parser.
    pub fn selector_fields(&self) -> impl Iterator<Item = (String, &str)> {
        rule_selectors(&self.spec.ingress, "spec.ingress")
            .chain(rule_selectors(&self.spec.egress, "spec.egress"))
    }
}

impl ResourceKind for Profile {
    const INFO: KindInfo = KindInfo::cluster("Profile", "profiles", &["pro", "pros"]);

    /// The spec may be left out: no rules, no labels.
    type Document = Document<Option<ProfileSpec>>;

    document_parts!(optional spec);

    /// Checks the rules and `labelsToApply` (the `labels` validator).
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = check_labels(&self.spec.labels_to_apply, "spec.labelsToApply");
        errors.extend(validate_rules(
            &self.spec.ingress,
            PolicyType::Ingress,
            RuleOwner::Profile,
            "spec.ingress",
        ));
        errors.extend(validate_rules(
            &self.spec.egress,
            PolicyType::Egress,
            RuleOwner::Profile,
            "spec.egress",
        ));
        errors
    }

    fn selector_fields(&self) -> Vec<(String, &str)> {
        Profile::selector_fields(self).collect()
    }
}
