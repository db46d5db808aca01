//! `GlobalNetworkPolicy`: ordered rules for the endpoints of any namespace (and host endpoints)
//! that match a selector (`globalnetworkpolicy.go`; `validateGlobalNetworkPolicy`,
//! `validateGlobalNetworkPolicySpec` and the GlobalNetworkPolicySpec CEL rules). What it shares
//! with the other policy kinds is in `policy.rs`.

use serde::Deserialize;

use super::{
    fields::{FieldError, SelectorText, list, nullable, optional},
    kind::{Document, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::ObjectMeta,
    policy::{
        Order, PerformanceHint, PolicyParts, PolicyType, Rule, RuleOwner, apply_policy_defaults,
        default_tier, is_global_network_policy_name, policy_selectors, tier_name,
        validate_policy_common,
    },
    policy_keys::PolicyKeys,
};

/// A `GlobalNetworkPolicy`: ordered rules for the endpoints (of any namespace, and host
/// endpoints) that match a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalNetworkPolicy {
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its specification.
    pub spec: GlobalNetworkPolicySpec,
}

/// Specification of a [`GlobalNetworkPolicy`] (Calico's `GlobalNetworkPolicySpec`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GlobalNetworkPolicySpec {
    /// The tier the policy belongs to (`default` when none is given).
    #[serde(default = "default_tier", deserialize_with = "tier_name")]
    pub tier: String,
    /// Order within the tier: lower first; `None` applies after every order (see
    /// [`effective_order`](Self::effective_order)). Ties go by name.
    #[serde(default)]
    pub order: Option<Order>,
    /// The endpoints it applies to; `None` (or empty): all of them.
    #[serde(default, deserialize_with = "optional::<_, SelectorText>")]
    pub selector: Option<String>,
    /// The directions it applies to. Once parsed, never empty: when not given, Calico's
    /// default (see [`GlobalNetworkPolicy::apply_defaults`]).
    #[serde(default, deserialize_with = "list::<_, PolicyType>")]
    pub types: Vec<PolicyType>,
    /// Ingress rules, in order.
    #[serde(default, deserialize_with = "nullable")]
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    #[serde(default, deserialize_with = "nullable")]
    pub egress: Vec<Rule>,
    /// Apply the rules before connection tracking, and do not track the packets they allow
    /// (host endpoints only; needs `applyOnForward`).
    #[serde(default, deserialize_with = "nullable")]
    pub do_not_track: bool,
    /// Apply the rules before DNAT (host endpoint ingress only; needs `applyOnForward`).
    #[serde(default, rename = "preDNAT", deserialize_with = "nullable")]
    pub pre_dnat: bool,
    /// Apply the rules to forwarded traffic too (host endpoints).
    #[serde(default, deserialize_with = "nullable")]
    pub apply_on_forward: bool,
    /// It applies only to pods whose service account matches this selector.
    #[serde(default, deserialize_with = "optional::<_, SelectorText>")]
    pub service_account_selector: Option<String>,
    /// It applies only to endpoints whose namespace matches this selector.
    #[serde(default, deserialize_with = "optional::<_, SelectorText>")]
    pub namespace_selector: Option<String>,
    /// Hints to the policy engine.
    #[serde(default, deserialize_with = "list::<_, PerformanceHint>")]
    pub performance_hints: Vec<PerformanceHint>,
}

impl Default for GlobalNetworkPolicySpec {
    /// An empty spec in the default tier (what a document without `spec` gives).
    fn default() -> Self {
        Self {
            tier: default_tier(),
            order: None,
            selector: None,
            types: Vec::new(),
            ingress: Vec::new(),
            egress: Vec::new(),
            do_not_track: false,
            pre_dnat: false,
            apply_on_forward: false,
            service_account_selector: None,
            namespace_selector: None,
            performance_hints: Vec::new(),
        }
    }
}

impl GlobalNetworkPolicySpec {
    /// The order to sort by: [`f64::INFINITY`] when none is given, as Felix does.
    pub fn effective_order(&self) -> f64 {
        self.order.map_or(f64::INFINITY, Order::value)
    }

    /// Whether the policy applies to `direction`.
    pub fn applies_to(&self, direction: PolicyType) -> bool {
        self.types.contains(&direction)
    }
}

impl GlobalNetworkPolicy {
    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The spec's own selector fields, with their paths.
    fn spec_selectors(&self) -> [(&'static str, Option<&str>); 3] {
        [
            ("spec.selector", self.spec.selector.as_deref()),
            (
                "spec.serviceAccountSelector",
                self.spec.service_account_selector.as_deref(),
            ),
            (
                "spec.namespaceSelector",
                self.spec.namespace_selector.as_deref(),
            ),
        ]
    }

    /// Every selector of the policy with its field path (`spec.selector`,
    /// `spec.serviceAccountSelector`, `spec.namespaceSelector`,
    /// `spec.ingress[0].source.selector`...), for the caller to check with the selector parser.
    pub fn selector_fields(&self) -> impl Iterator<Item = (String, &str)> {
        policy_selectors(self.spec_selectors(), &self.spec.ingress, &self.spec.egress)
    }
}

impl ResourceKind for GlobalNetworkPolicy {
    const INFO: KindInfo = KindInfo::cluster(
        "GlobalNetworkPolicy",
        "globalnetworkpolicies",
        &["gnp", "gnps", "globalpolicy", "globalpolicies"],
    )
    .with_etcd_keys(&PolicyKeys);

    /// The spec may be left out: an empty policy in the default tier.
    type Document = Document<Option<GlobalNetworkPolicySpec>>;

    document_parts!(optional spec);

    /// Fills in what Calico defaults, as `NetworkPolicy`'s does.
    fn apply_defaults(&mut self) {
        let spec = &mut self.spec;
        apply_policy_defaults(&mut spec.tier, &mut spec.types, &spec.ingress, &spec.egress);
    }

    /// Checks across fields (`validateGlobalNetworkPolicy`, `validateGlobalNetworkPolicySpec`,
    /// the GlobalNetworkPolicySpec CEL rules, and the rules'). Expects
    /// [`apply_defaults`](Self::apply_defaults) to have run.
    fn validate(&self) -> Vec<FieldError> {
        let spec = &self.spec;
        let mut errors = Vec::new();
        if !is_global_network_policy_name(self.name()) {
            errors.push(FieldError::new(
                "metadata.name",
                format!(
                    "invalid GlobalNetworkPolicy name {:?}: must be a DNS label (lower case \
                     alphanumeric characters or '-'), or two separated by one '.'",
                    self.name()
                ),
            ));
        }
        if spec.do_not_track && spec.pre_dnat {
            errors.push(FieldError::new(
                "spec.preDNAT",
                "preDNAT and doNotTrack cannot both be true",
            ));
        }
        if spec.pre_dnat {
            if !spec.egress.is_empty() {
                errors.push(FieldError::new(
                    "spec.egress",
                    "a preDNAT policy cannot have any egress rules",
                ));
            } else if spec.applies_to(PolicyType::Egress) {
                errors.push(FieldError::new(
                    "spec.types",
                    "a preDNAT policy cannot have the Egress type",
                ));
            }
        }
        if (spec.do_not_track || spec.pre_dnat) && !spec.apply_on_forward {
            errors.push(FieldError::new(
                "spec.applyOnForward",
                "applyOnForward must be true if either preDNAT or doNotTrack is true",
            ));
        }
        errors.extend(validate_policy_common(
            PolicyParts {
                types: &spec.types,
                performance_hints: &spec.performance_hints,
                selectors: &self.spec_selectors(),
                ingress: &spec.ingress,
                egress: &spec.egress,
            },
            RuleOwner::GlobalNetworkPolicy,
        ));
        errors
    }

    fn selector_fields(&self) -> Vec<(String, &str)> {
        GlobalNetworkPolicy::selector_fields(self).collect()
    }
}
