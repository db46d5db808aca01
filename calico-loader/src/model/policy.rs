//! Which policies apply to an endpoint, and in which order: Calico's evaluation plan, before it is
//! compiled for the dataplane.
//!
//! For each direction the plan is the endpoint's tiers in order, each with the policies of that
//! tier that select the endpoint and apply to that direction, then the endpoint's profiles.
//! Evaluation (done elsewhere) walks it: the first Allow or Deny decides, Pass leaves the tier,
//! a tier whose policies decided nothing ends with its default action, and after the profiles
//! comes a final deny.

use std::{cmp::Ordering, collections::BTreeMap};

pub use crate::datastore::NAMESPACE_LABEL;
use crate::datastore::{
    Kind, NetworkSet, PolicyType, Snapshot, TierDefaultAction, WorkloadEndpoint,
    selector::{Expr, LabelSource, Selector},
};
/// Label Calico gives every workload endpoint: its orchestrator.
pub const ORCHESTRATOR_LABEL: &str = "projectcalico.org/orchestrator";
/// Label a namespace carries with its own name, for `namespaceSelector`.
pub const NAMESPACE_NAME_LABEL: &str = "projectcalico.org/name";
/// Prefix of the Profile that carries a namespace's labels (`labelsToApply`), as Calico names
/// the profiles it makes from Kubernetes namespaces.
pub const NAMESPACE_PROFILE_PREFIX: &str = "kns.";

/// A policy in a plan.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    /// [`Kind::NetworkPolicy`] or [`Kind::GlobalNetworkPolicy`].
    pub kind: Kind,
    /// The namespace of a NetworkPolicy.
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for PolicyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{namespace}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The kind of policy a policy rule belongs to: as a host endpoint's policies come in stages
/// (untracked, pre-DNAT, then normal), the stage is part of what a rule id says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyStage {
    /// A normal policy.
    #[default]
    Normal,
    /// A `preDNAT` policy.
    PreDnat,
    /// A `doNotTrack` policy.
    Untracked,
}

impl PolicyStage {
    /// The [`calico_ebpf_common::rule_stage`] value.
    pub fn code(self) -> u8 {
        match self {
            PolicyStage::Normal => calico_ebpf_common::rule_stage::NORMAL,
            PolicyStage::PreDnat => calico_ebpf_common::rule_stage::PRE_DNAT,
            PolicyStage::Untracked => calico_ebpf_common::rule_stage::UNTRACKED,
        }
    }
}

/// One tier of a plan: its policies that apply, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierPlan {
    pub name: String,
    /// What happens when the tier's policies decide nothing.
    pub default_action: TierDefaultAction,
    /// Whether the tier exists (in the datastore or built in). A policy naming a tier that does
    /// not exist still applies, in a tier ordered after every real one and ending in Deny.
    pub exists: bool,
    pub policies: Vec<PolicyId>,
    /// The kind of policy the tier's policies are (host endpoints' pre-DNAT and untracked
    /// tiers; normal otherwise).
    pub stage: PolicyStage,
}

/// The evaluation plan of one endpoint in one direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirectionPlan {
    pub tiers: Vec<TierPlan>,
    /// Profile names, in the endpoint's order; profiles that do not exist are left out.
    pub profiles: Vec<String>,
}

/// The plans of one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPlan {
    pub ingress: DirectionPlan,
    pub egress: DirectionPlan,
}

/// The labels policy sees on an endpoint: its profiles' `labelsToApply` (earlier profiles win),
/// then its own labels on top, then the labels Calico adds (namespace and orchestrator).
pub fn endpoint_labels(snapshot: &Snapshot, wep: &WorkloadEndpoint) -> BTreeMap<String, String> {
    let mut labels = inherited_labels(
        snapshot,
        wep.spec.profiles.iter().map(String::as_str),
        &wep.metadata.labels,
    );
    labels.insert(NAMESPACE_LABEL.to_owned(), wep.namespace().to_owned());
    if let Some(orchestrator) = &wep.spec.orchestrator {
        labels.insert(ORCHESTRATOR_LABEL.to_owned(), orchestrator.clone());
    }
    labels
}

/// The labels rule selectors see on a NetworkSet, as libcalico-go gives them: those of its
/// namespace's profile `kns.<namespace>`, then its own labels on top, then the namespace label.
pub fn network_set_labels(snapshot: &Snapshot, set: &NetworkSet) -> BTreeMap<String, String> {
    let profile = format!("{NAMESPACE_PROFILE_PREFIX}{}", set.namespace());
    let mut labels = inherited_labels(
        snapshot,
        std::iter::once(profile.as_str()),
        &set.metadata.labels,
    );
    labels.insert(NAMESPACE_LABEL.to_owned(), set.namespace().to_owned());
    labels
}

/// The `labelsToApply` of `profiles` (earlier profiles win; missing ones give none), with `own`
/// on top.
pub(super) fn inherited_labels<'p>(
    snapshot: &Snapshot,
    profiles: impl DoubleEndedIterator<Item = &'p str>,
    own: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for name in profiles.rev() {
        if let Some(profile) = snapshot.profile(name) {
            labels.extend(
                profile
                    .spec
                    .labels_to_apply
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
    }
    labels.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

/// The labels of a namespace for `namespaceSelector`: those of the Profile `kns.<namespace>`
/// (how Calico carries a Kubernetes namespace's labels), plus its name.
pub fn namespace_labels(snapshot: &Snapshot, namespace: &str) -> BTreeMap<String, String> {
    let mut labels = snapshot
        .profile(&format!("{NAMESPACE_PROFILE_PREFIX}{namespace}"))
        .map(|p| p.spec.labels_to_apply.clone())
        .unwrap_or_default();
    labels.insert(NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned());
    labels
}

/// Parses a selector field; an absent or empty one selects everything. Fields were validated
/// when the datastore read them, so a failure here means none matches (never all).
pub(super) fn selects(text: Option<&str>, labels: &impl LabelSource) -> bool {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => true,
        Some(text) => Selector::parse(text).is_ok_and(|s| s.matches(labels)),
    }
}

/// A policy that selects an endpoint, before it is placed in its tier.
#[derive(Clone)]
pub(super) struct Candidate {
    pub(super) tier: String,
    pub(super) order: f64,
    pub(super) id: PolicyId,
    pub(super) ingress: bool,
    pub(super) egress: bool,
}

/// Sorts policies as Felix does within a tier: by order (none last), then name, then
/// namespace, then kind.
pub(super) fn sort_candidates(candidates: &mut [Candidate]) {
    candidates.sort_by(|a, b| {
        a.order
            .partial_cmp(&b.order)
            .unwrap_or(Ordering::Equal)
            .then_with(|| a.id.name.cmp(&b.id.name))
            .then_with(|| a.id.namespace.cmp(&b.id.namespace))
            .then_with(|| a.id.kind.cmp(&b.id.kind))
    });
}

/// Whether a `namespaceSelector` selects something in no namespace (a GlobalNetworkSet, a
/// HostEndpoint), as libcalico-go's conversion makes it a selector on the item's own labels:
/// `all()` becomes `has(projectcalico.org/namespace)` and `global()` its negation, so outside
/// any namespace the selector sees no labels, with `all()` false and `global()` true.
pub fn selects_outside_namespaces(expr: &Expr) -> bool {
    match expr {
        Expr::All => false,
        Expr::Global => true,
        Expr::Not(operand) => !selects_outside_namespaces(operand),
        Expr::And(operands) => operands.iter().all(selects_outside_namespaces),
        Expr::Or(operands) => operands.iter().any(selects_outside_namespaces),
        label_test => label_test.matches(&BTreeMap::<String, String>::new()),
    }
}

/// The plan for `wep`: every NetworkPolicy of its namespace and every GlobalNetworkPolicy whose
/// selectors match it, grouped by tier.
pub fn endpoint_plan(snapshot: &Snapshot, wep: &WorkloadEndpoint) -> EndpointPlan {
    let labels = endpoint_labels(snapshot, wep);
    let namespace_labels = namespace_labels(snapshot, wep.namespace());
    let mut candidates = Vec::new();
    for policy in snapshot.network_policies() {
        if policy.namespace() != wep.namespace()
            || !selects(policy.spec.selector.as_deref(), &labels)
        {
            continue;
        }
        candidates.push(Candidate {
            tier: policy.spec.tier.clone(),
            order: policy.spec.effective_order(),
            id: PolicyId {
                kind: Kind::NetworkPolicy,
                namespace: Some(policy.namespace().to_owned()),
                name: policy.name().to_owned(),
            },
            ingress: policy.spec.applies_to(PolicyType::Ingress),
            egress: policy.spec.applies_to(PolicyType::Egress),
        });
    }
    for policy in snapshot.global_network_policies() {
        // doNotTrack and preDNAT policies apply to host endpoints only (Felix renders them in
        // the raw and mangle tables of host interfaces), never to workload endpoints.
        if policy.spec.do_not_track || policy.spec.pre_dnat {
            continue;
        }
        if !selects(policy.spec.selector.as_deref(), &labels)
            || !selects(policy.spec.namespace_selector.as_deref(), &namespace_labels)
        {
            continue;
        }
        candidates.push(Candidate {
            tier: policy.spec.tier.clone(),
            order: policy.spec.effective_order(),
            id: PolicyId {
                kind: Kind::GlobalNetworkPolicy,
                namespace: None,
                name: policy.name().to_owned(),
            },
            ingress: policy.spec.applies_to(PolicyType::Ingress),
            egress: policy.spec.applies_to(PolicyType::Egress),
        });
    }
    sort_candidates(&mut candidates);
    let profiles: Vec<String> = wep
        .spec
        .profiles
        .iter()
        .filter(|name| snapshot.profile(name).is_some())
        .cloned()
        .collect();
    EndpointPlan {
        ingress: direction_plan(snapshot, &candidates, |c| c.ingress, profiles.clone()),
        egress: direction_plan(snapshot, &candidates, |c| c.egress, profiles),
    }
}

pub(super) fn direction_plan(
    snapshot: &Snapshot,
    candidates: &[Candidate],
    applies: impl Fn(&Candidate) -> bool,
    profiles: Vec<String>,
) -> DirectionPlan {
    let mut tiers: BTreeMap<String, Vec<PolicyId>> = BTreeMap::new();
    for candidate in candidates.iter().filter(|c| applies(c)) {
        tiers
            .entry(candidate.tier.clone())
            .or_default()
            .push(candidate.id.clone());
    }
    let mut tiers: Vec<(f64, TierPlan)> = tiers
        .into_iter()
        .map(|(name, policies)| match snapshot.effective_tier(&name) {
            Some(tier) => (
                tier.spec.effective_order(),
                TierPlan {
                    name,
                    default_action: tier.spec.default_action,
                    exists: true,
                    policies,
                    stage: PolicyStage::Normal,
                },
            ),
            None => (
                f64::INFINITY,
                TierPlan {
                    name,
                    default_action: TierDefaultAction::Deny,
                    exists: false,
                    policies,
                    stage: PolicyStage::Normal,
                },
            ),
        })
        .collect();
    // Tiers by order (none last; tiers that do not exist after every real one), then name.
    tiers.sort_by(|(order_a, a), (order_b, b)| {
        b.exists
            .cmp(&a.exists)
            .then_with(|| order_a.partial_cmp(order_b).unwrap_or(Ordering::Equal))
            .then_with(|| a.name.cmp(&b.name))
    });
    DirectionPlan {
        tiers: tiers.into_iter().map(|(_, tier)| tier).collect(),
        profiles,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::LocalDatastore;

    const WEP: &str = "
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node1-cni-web-eth0, namespace: prod, labels: {app: web}}
spec: {node: node1, orchestrator: cni, interfaceName: cali1, ipNetworks: [198.18.0.24/32], profiles: [kns.prod, default-net]}
";

    fn snapshot(extra: &str) -> Snapshot {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a.yaml"), format!("{WEP}---{extra}")).expect("write");
        let mut datastore = LocalDatastore::new(dir.path());
        let sync = datastore.sync();
        assert!(sync.errors.is_empty(), "{:?}", sync.errors);
        sync.snapshot
    }

    fn plan(extra: &str) -> EndpointPlan {
        let snapshot = snapshot(extra);
        let wep = snapshot
            .workload_endpoints()
            .next()
            .expect("the endpoint")
            .clone();
        endpoint_plan(&snapshot, &wep)
    }

    fn names(plan: &DirectionPlan) -> Vec<(String, Vec<String>)> {
        plan.tiers
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.policies.iter().map(ToString::to_string).collect(),
                )
            })
            .collect()
    }

    const PROFILES: &str = "
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.prod}
spec: {labelsToApply: {env: production, app: overridden}}
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: default-net}
spec: {ingress: [{action: Allow}], egress: [{action: Allow}]}
";

    #[test]
    fn endpoint_labels_layer_profiles_own_labels_and_calicos() {
        let snapshot = snapshot(PROFILES);
        let wep = snapshot.workload_endpoints().next().expect("endpoint");
        let labels = endpoint_labels(&snapshot, wep);
        assert_eq!(
            labels["app"], "web",
            "the endpoint's own label wins over a profile's"
        );
        assert_eq!(labels["env"], "production");
        assert_eq!(labels[NAMESPACE_LABEL], "prod");
        assert_eq!(labels[ORCHESTRATOR_LABEL], "cni");
        let ns = namespace_labels(&snapshot, "prod");
        assert_eq!(
            (ns["env"].as_str(), ns[NAMESPACE_NAME_LABEL].as_str()),
            ("production", "prod")
        );
    }

    #[test]
    fn network_set_labels_are_its_namespace_profiles_then_its_own_then_the_namespace() {
        let snapshot = snapshot(&format!(
            "{PROFILES}---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {{name: partners, namespace: prod, labels: {{app: partners}}}}
spec: {{nets: [198.19.0.0/16]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {{name: bare, namespace: nowhere}}
"
        ));
        let sets: Vec<&NetworkSet> = snapshot.network_sets().collect();
        let labels = network_set_labels(&snapshot, sets[1]);
        assert_eq!(labels["env"], "production", "from Profile kns.prod");
        assert_eq!(labels["app"], "partners", "its own label wins");
        assert_eq!(labels[NAMESPACE_LABEL], "prod");
        assert!(!labels.contains_key(ORCHESTRATOR_LABEL));
        let labels = network_set_labels(&snapshot, sets[0]);
        assert_eq!(
            labels.into_iter().collect::<Vec<_>>(),
            [(NAMESPACE_LABEL.to_owned(), "nowhere".to_owned())],
            "a namespace without a profile gives only the namespace label"
        );
    }

    #[test]
    fn host_endpoint_only_policies_do_not_apply_to_workloads() {
        let plan = plan(
            "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: untracked}
spec: {selector: all(), doNotTrack: true, applyOnForward: true, ingress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pre-dnat}
spec: {selector: all(), preDNAT: true, applyOnForward: true, ingress: [{action: Deny}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: normal}
spec: {selector: all(), ingress: [{action: Allow}]}
",
        );
        let names: Vec<&str> = plan
            .ingress
            .tiers
            .iter()
            .flat_map(|t| t.policies.iter().map(|p| p.name.as_str()))
            .collect();
        assert_eq!(names, ["normal"]);
    }

    #[test]
    fn policies_are_grouped_by_tier_and_ordered() {
        let plan = plan(&format!(
            "{PROFILES}---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {{name: security}}
spec: {{order: 10, defaultAction: Pass}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: b-later, namespace: prod}}
spec: {{order: 200, selector: app == 'web', ingress: [{{action: Allow}}]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: a-no-order, namespace: prod}}
spec: {{selector: all(), ingress: [{{action: Allow}}]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: c-first, namespace: prod}}
spec: {{order: 100, ingress: [{{action: Allow}}]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: other-namespace, namespace: dev}}
spec: {{order: 1, ingress: [{{action: Deny}}]}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {{name: not-selected, namespace: prod}}
spec: {{order: 1, selector: app == 'db', ingress: [{{action: Deny}}]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: quarantine}}
spec: {{tier: security, order: 5, selector: all(), namespaceSelector: env == 'production', types: [Ingress, Egress], ingress: [{{action: Pass}}], egress: [{{action: Pass}}]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: staging-only}}
spec: {{tier: security, selector: all(), namespaceSelector: env == 'staging', ingress: [{{action: Deny}}]}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: egress-only}}
spec: {{order: 1, selector: has(app), egress: [{{action: Allow}}]}}
"
        ));
        assert_eq!(
            names(&plan.ingress),
            [
                ("security".to_owned(), vec!["quarantine".to_owned()]),
                (
                    "default".to_owned(),
                    vec![
                        "prod/c-first".to_owned(),
                        "prod/b-later".to_owned(),
                        "prod/a-no-order".to_owned()
                    ]
                ),
            ]
        );
        assert_eq!(
            plan.ingress.tiers[0].default_action,
            TierDefaultAction::Pass
        );
        assert_eq!(
            plan.ingress.tiers[1].default_action,
            TierDefaultAction::Deny
        );
        assert_eq!(
            names(&plan.egress),
            [
                ("security".to_owned(), vec!["quarantine".to_owned()]),
                ("default".to_owned(), vec!["egress-only".to_owned()]),
            ],
            "a policy with only egress rules applies to egress only"
        );
        assert_eq!(plan.ingress.profiles, ["kns.prod", "default-net"]);
    }

    #[test]
    fn a_missing_tier_comes_last_and_denies() {
        let plan = plan(
            "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: typo}
spec: {tier: securty, order: 1, ingress: [{action: Pass}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: normal}
spec: {order: 1, ingress: [{action: Allow}]}
",
        );
        let tiers: Vec<(&str, bool, TierDefaultAction)> = plan
            .ingress
            .tiers
            .iter()
            .map(|t| (t.name.as_str(), t.exists, t.default_action))
            .collect();
        assert_eq!(
            tiers,
            [
                ("default", true, TierDefaultAction::Deny),
                ("securty", false, TierDefaultAction::Deny)
            ]
        );
        assert!(
            plan.ingress.profiles.is_empty(),
            "profiles that do not exist are left out"
        );
    }

    #[test]
    fn no_policy_means_no_tiers() {
        let plan = plan(
            "\napiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: default-net}\nspec: {}\n",
        );
        assert!(plan.ingress.tiers.is_empty() && plan.egress.tiers.is_empty());
        assert_eq!(plan.egress.profiles, ["default-net"]);
    }
}
