//! `NetworkPolicy`: ordered rules for the endpoints of one namespace that match a selector
//! (`networkpolicy.go`; `validateNetworkPolicy`, `validateNetworkPolicySpec` and the
//! NetworkPolicySpec CEL rules). What it shares with the other policy kinds is in `policy.rs`.

use serde::Deserialize;

use super::{
    fields::{FieldError, SelectorText, list, nullable, optional},
    kind::{Document, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::{DEFAULT_NAMESPACE, ObjectMeta},
    policy::{
        Order, PerformanceHint, PolicyParts, PolicyType, Rule, RuleOwner, apply_policy_defaults,
        default_tier, is_network_policy_name, policy_selectors, tier_name, validate_policy_common,
    },
    policy_keys::PolicyKeys,
};

/// A `NetworkPolicy`: ordered rules for the endpoints of one namespace that match a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Its metadata (namespace always set once parsed).
    pub metadata: ObjectMeta,
    /// Its specification.
    pub spec: NetworkPolicySpec,
}

/// Specification of a [`NetworkPolicy`] (Calico's `NetworkPolicySpec`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// The tier the policy belongs to (`default` when none is given).
    #[serde(default = "default_tier", deserialize_with = "tier_name")]
    pub tier: String,
    /// Order within the tier: lower first; `None` applies after every order (see
    /// [`effective_order`](Self::effective_order)). Ties go by name.
    #[serde(default)]
    pub order: Option<Order>,
    /// The endpoints (of the policy's namespace) it applies to; `None` (or empty): all of them.
    #[serde(default, deserialize_with = "optional::<_, SelectorText>")]
    pub selector: Option<String>,
    /// The directions it applies to. Once parsed, never empty: when not given, Calico's
    /// default (see [`NetworkPolicy::apply_defaults`]).
    #[serde(default, deserialize_with = "list::<_, PolicyType>")]
    pub types: Vec<PolicyType>,
    /// Ingress rules, in order.
    #[serde(default, deserialize_with = "nullable")]
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    #[serde(default, deserialize_with = "nullable")]
    pub egress: Vec<Rule>,
    /// It applies only to pods whose service account matches this selector.
    #[serde(default, deserialize_with = "optional::<_, SelectorText>")]
    pub service_account_selector: Option<String>,
    /// Hints to the policy engine.
    #[serde(default, deserialize_with = "list::<_, PerformanceHint>")]
    pub performance_hints: Vec<PerformanceHint>,
}

impl Default for NetworkPolicySpec {
    /// An empty spec in the default tier (what a document without `spec` gives).
    fn default() -> Self {
        Self {
            tier: default_tier(),
            order: None,
            selector: None,
            types: Vec::new(),
            ingress: Vec::new(),
            egress: Vec::new(),
            service_account_selector: None,
            performance_hints: Vec::new(),
        }
    }
}

impl NetworkPolicySpec {
    /// The order to sort by: [`f64::INFINITY`] when none is given, as Felix does.
    pub fn effective_order(&self) -> f64 {
        self.order.map_or(f64::INFINITY, Order::value)
    }

    /// Whether the policy applies to `direction`.
    pub fn applies_to(&self, direction: PolicyType) -> bool {
        self.types.contains(&direction)
    }
}

impl NetworkPolicy {
    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The policy's namespace (`default` when none was given).
    pub fn namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE)
    }

    /// The spec's own selector fields, with their paths.
    fn spec_selectors(&self) -> [(&'static str, Option<&str>); 2] {
        [
            ("spec.selector", self.spec.selector.as_deref()),
            (
                "spec.serviceAccountSelector",
                self.spec.service_account_selector.as_deref(),
            ),
        ]
    }

    /// Every selector of the policy with its field path (`spec.selector`,
    /// `spec.serviceAccountSelector`, `spec.ingress[0].source.selector`...), for the caller to
    /// check with the selector parser.
    pub fn selector_fields(&self) -> impl Iterator<Item = (String, &str)> {
        policy_selectors(self.spec_selectors(), &self.spec.ingress, &self.spec.egress)
    }
}

impl ResourceKind for NetworkPolicy {
    const INFO: KindInfo = KindInfo::namespaced(
        "NetworkPolicy",
        "networkpolicies",
        &["np", "nps", "netpol", "policy", "policies", "pol", "pols"],
    )
    .with_etcd_keys(&PolicyKeys);

    /// The spec may be left out: an empty policy in the default tier.
    type Document = Document<Option<NetworkPolicySpec>>;

    document_parts!(optional spec);

    /// Fills in what Calico defaults: the tier (`default`), and `types` when empty: Ingress,
    /// plus or instead Egress when there are egress rules (Egress alone when there are no
    /// ingress rules).
    fn apply_defaults(&mut self) {
        let spec = &mut self.spec;
        apply_policy_defaults(&mut spec.tier, &mut spec.types, &spec.ingress, &spec.egress);
    }

    /// Checks across fields (`validateNetworkPolicy`, `validateNetworkPolicySpec`, the
    /// NetworkPolicySpec CEL rules, and the rules'). Expects
    /// [`apply_defaults`](Self::apply_defaults) to have run.
    fn validate(&self) -> Vec<FieldError> {
        let spec = &self.spec;
        let mut errors = Vec::new();
        if !is_network_policy_name(self.name()) {
            errors.push(FieldError::new(
                "metadata.name",
                format!(
                    "invalid NetworkPolicy name {:?}: must be a DNS label (lower case alphanumeric \
                     characters or '-'), or two separated by one '.'",
                    self.name()
                ),
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
            RuleOwner::NetworkPolicy,
        ));
        errors
    }

    fn selector_fields(&self) -> Vec<(String, &str)> {
        NetworkPolicy::selector_fields(self).collect()
    }
}
