//! Host endpoints: this node's HostEndpoints, which data interface each covers, and the
//! policies that apply to each, in the order Calico's eBPF dataplane applies them.
//!
//! A host endpoint has four plans, each compiled like a workload endpoint's direction:
//!
//! - **host ingress**, for traffic to the host itself: the pre-DNAT policies (ingress only), then
//!   the normal policies (those without `preDNAT` or `doNotTrack`, `applyOnForward` or not),
//!   then the endpoint's profiles, then a final deny;
//! - **host egress**, for traffic the host sends: the normal policies, the profiles, a final
//!   deny;
//! - **forward ingress**, for traffic that arrives through the endpoint and is forwarded (to a
//!   local workload or elsewhere): the pre-DNAT policies, then the `applyOnForward` policies; what
//!   none decides is allowed;
//! - **forward egress**, for forwarded traffic that leaves through the endpoint: the
//!   `applyOnForward` policies; what none decides is allowed.
//!
//! Untracked (`doNotTrack`) policies have two plans of their own, **untracked ingress** (every
//! packet arriving through the endpoint, whatever its destination) and **untracked egress**
//! (every packet the host itself sends through it), run before conntrack and before every
//! other plan: an Allow lets the packet through untracked, skipping the other plans, a Deny
//! drops it, and a packet they do not decide goes on to the other plans (their tiers end with
//! Pass, as pre-DNAT tiers do).
//!
//! Pre-DNAT policies come first in both ingress plans: an Allow there skips the policies after
//! it, a Deny drops, and a packet they do not decide goes on to the policies after them (their
//! tiers end with Pass, whatever the tier's default action). Only GlobalNetworkPolicies select
//! host endpoints; a `namespaceSelector` sees a host endpoint as outside every namespace.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::policy::{
    Candidate, DirectionPlan, PolicyId, PolicyStage, direction_plan, inherited_labels, selects,
    selects_outside_namespaces, sort_candidates,
};
use crate::datastore::{
    HostEndpoint, Kind, PolicyType, Snapshot, TierDefaultAction, selector::Selector,
};

/// The labels policy sees on a host endpoint: its profiles' `labelsToApply` (earlier profiles
/// win), then its own labels on top.
pub fn host_endpoint_labels(snapshot: &Snapshot, hep: &HostEndpoint) -> BTreeMap<String, String> {
    inherited_labels(
        snapshot,
        hep.spec.profiles.iter().map(String::as_str),
        &hep.metadata.labels,
    )
}

/// The plans of one host endpoint (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostEndpointPlan {
    pub host_ingress: DirectionPlan,
    pub host_egress: DirectionPlan,
    pub forward_ingress: DirectionPlan,
    pub forward_egress: DirectionPlan,
    /// The `doNotTrack` policies for arriving traffic (all of it) and for the host's own
    /// leaving traffic; their tiers end with Pass.
    pub untracked_ingress: DirectionPlan,
    pub untracked_egress: DirectionPlan,
}

impl HostEndpointPlan {
    /// Whether no policy applies to forwarded traffic in either direction: it then passes
    /// untouched, as through an interface without a host endpoint.
    pub fn forward_open(&self) -> bool {
        self.forward_ingress.tiers.is_empty() && self.forward_egress.tiers.is_empty()
    }

    /// Whether any untracked policy applies, in either direction.
    pub fn has_untracked(&self) -> bool {
        !self.untracked_ingress.tiers.is_empty() || !self.untracked_egress.tiers.is_empty()
    }
}

/// Whether a policy's `namespaceSelector` (absent or blank: none) selects an endpoint in no
/// namespace.
fn namespace_selector_selects_none(text: Option<&str>) -> bool {
    match text.map(str::trim).filter(|t| !t.is_empty()) {
        None => true,
        Some(text) => Selector::parse(text).is_ok_and(|s| selects_outside_namespaces(s.expr())),
    }
}

/// The plans of `hep`: every GlobalNetworkPolicy whose selectors match it, by kind.
pub fn host_endpoint_plan(snapshot: &Snapshot, hep: &HostEndpoint) -> HostEndpointPlan {
    let labels = host_endpoint_labels(snapshot, hep);
    let (mut pre_dnat, mut normal, mut forward) = (Vec::new(), Vec::new(), Vec::new());
    let mut untracked = Vec::new();
    for policy in snapshot.global_network_policies() {
        let spec = &policy.spec;
        // A service account selector matches pods only: a host endpoint has no service
        // account.
        let service_account = spec
            .service_account_selector
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty());
        if service_account
            || !selects(spec.selector.as_deref(), &labels)
            || !namespace_selector_selects_none(spec.namespace_selector.as_deref())
        {
            continue;
        }
        let candidate = Candidate {
            tier: spec.tier.clone(),
            order: spec.effective_order(),
            id: PolicyId {
                kind: Kind::GlobalNetworkPolicy,
                namespace: None,
                name: policy.name().to_owned(),
            },
            ingress: spec.applies_to(PolicyType::Ingress),
            egress: spec.applies_to(PolicyType::Egress),
        };
        if spec.do_not_track {
            untracked.push(candidate);
        } else if spec.pre_dnat {
            pre_dnat.push(candidate);
        } else {
            if spec.apply_on_forward {
                forward.push(candidate.clone());
            }
            normal.push(candidate);
        }
    }
    for list in [&mut pre_dnat, &mut normal, &mut forward, &mut untracked] {
        sort_candidates(list);
    }
    let profiles: Vec<String> = hep
        .spec
        .profiles
        .iter()
        .filter(|name| snapshot.profile(name).is_some())
        .cloned()
        .collect();
    // A pre-DNAT tier does not deny what its policies leave undecided: the packet goes on to
    // the policies after it (Felix renders pre-DNAT tiers without the end-of-tier drop).
    // Neither does an untracked tier (Felix renders untracked tiers without it either).
    let passing = |mut plan: DirectionPlan, stage: PolicyStage| {
        for tier in &mut plan.tiers {
            tier.default_action = TierDefaultAction::Pass;
            tier.stage = stage;
        }
        plan
    };
    let pre_dnat = passing(
        direction_plan(snapshot, &pre_dnat, |c| c.ingress, Vec::new()),
        PolicyStage::PreDnat,
    )
    .tiers;
    let then = |first: &[super::policy::TierPlan], plan: DirectionPlan| DirectionPlan {
        tiers: first.iter().cloned().chain(plan.tiers).collect(),
        profiles: plan.profiles,
    };
    HostEndpointPlan {
        host_ingress: then(
            &pre_dnat,
            direction_plan(snapshot, &normal, |c| c.ingress, profiles.clone()),
        ),
        host_egress: direction_plan(snapshot, &normal, |c| c.egress, profiles),
        forward_ingress: then(
            &pre_dnat,
            direction_plan(snapshot, &forward, |c| c.ingress, Vec::new()),
        ),
        forward_egress: direction_plan(snapshot, &forward, |c| c.egress, Vec::new()),
        untracked_ingress: passing(
            direction_plan(snapshot, &untracked, |c| c.ingress, Vec::new()),
            PolicyStage::Untracked,
        ),
        untracked_egress: passing(
            direction_plan(snapshot, &untracked, |c| c.egress, Vec::new()),
            PolicyStage::Untracked,
        ),
    }
}

/// A host endpoint of this node, as the dataplane needs it: which interface it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalHostEndpoint {
    /// The HostEndpoint's name.
    pub name: String,
    /// `interfaceName`: a name, `"*"`, or none (the interface holding an expected IP).
    pub interface_name: Option<String>,
    pub expected_ips: Vec<IpAddr>,
}

impl LocalHostEndpoint {
    fn all_interfaces(&self) -> bool {
        self.interface_name.as_deref() == Some(crate::datastore::resources::ALL_INTERFACES)
    }
}

/// The HostEndpoints of `node`, in name order.
pub fn local_host_endpoints(snapshot: &Snapshot, node: &str) -> Vec<LocalHostEndpoint> {
    snapshot
        .all::<HostEndpoint>()
        .filter(|hep| hep.spec.node == node)
        .map(|hep| LocalHostEndpoint {
            name: hep.name().to_owned(),
            interface_name: hep.spec.interface_name.clone(),
            expected_ips: hep.spec.expected_ips.clone(),
        })
        .collect()
}

/// Which host endpoint covers each of the host's data interfaces, and the problems found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceAssignment {
    /// Interface name to the name of the host endpoint that covers it.
    pub interfaces: BTreeMap<String, String>,
    /// Host endpoints that cover no interface, or lost one to another, and why.
    pub problems: Vec<String>,
}

/// Assigns this node's host endpoints (`heps`, in name order) to its data interfaces
/// (`interfaces`: each name with the addresses it holds), as Felix resolves them: an interface
/// named by a host endpoint's `interfaceName` is that endpoint's; else one that holds an
/// `expectedIPs` address of an endpoint without an interface name; else the `"*"` endpoint's.
/// Where two endpoints claim one interface in the same way, the first by name wins.
pub fn assign_interfaces(
    heps: &[LocalHostEndpoint],
    interfaces: &BTreeMap<String, Vec<IpAddr>>,
) -> InterfaceAssignment {
    let mut out = InterfaceAssignment::default();
    let claim =
        |ifname: &str, hep: &str, out: &mut InterfaceAssignment| match out.interfaces.get(ifname) {
            Some(owner) => out.problems.push(format!(
                "HostEndpoint {hep}: interface {ifname} is already covered by HostEndpoint {owner}"
            )),
            None => {
                out.interfaces.insert(ifname.to_owned(), hep.to_owned());
            }
        };
    // By name first, then by expected address.
    for hep in heps {
        let Some(name) = hep.interface_name.as_deref() else {
            continue;
        };
        if hep.all_interfaces() {
            continue;
        }
        if interfaces.contains_key(name) {
            claim(name, &hep.name, &mut out);
        } else {
            out.problems.push(format!(
                "HostEndpoint {}: interface {name} is not a data interface of this host (or does \
                 not exist); its policy is not enforced",
                hep.name
            ));
        }
    }
    for hep in heps.iter().filter(|h| h.interface_name.is_none()) {
        let expected: BTreeSet<&IpAddr> = hep.expected_ips.iter().collect();
        let found: Vec<&String> = interfaces
            .iter()
            .filter(|(_, addresses)| addresses.iter().any(|a| expected.contains(a)))
            .map(|(name, _)| name)
            .collect();
        if found.is_empty() {
            out.problems.push(format!(
                "HostEndpoint {}: no data interface of this host holds one of its expectedIPs; \
                 its policy is not enforced",
                hep.name
            ));
        }
        for ifname in found {
            if !out.interfaces.contains_key(ifname) {
                claim(ifname, &hep.name, &mut out);
            }
        }
    }
    let mut wildcards = heps.iter().filter(|h| h.all_interfaces());
    if let Some(all) = wildcards.next() {
        for ifname in interfaces.keys() {
            if !out.interfaces.contains_key(ifname) {
                claim(ifname, &all.name, &mut out);
            }
        }
        for other in wildcards {
            out.problems.push(format!(
                "HostEndpoint {}: HostEndpoint {} already covers every interface (\"*\"); this one \
                 is not enforced",
                other.name, all.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::LocalDatastore;

    fn snapshot(yaml: &str) -> Snapshot {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a.yaml"), yaml).expect("write");
        let sync = LocalDatastore::new(dir.path()).sync();
        assert!(sync.errors.is_empty(), "{:?}", sync.errors);
        sync.snapshot
    }

    fn hep(name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: projectcalico.org/v3\nkind: HostEndpoint\n\
             metadata: {{name: {name}, labels: {{role: edge}}}}\nspec: {{{spec}}}\n"
        )
    }

    fn gnp(name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
             metadata: {{name: {name}}}\nspec: {{{spec}}}\n"
        )
    }

    fn names(plan: &DirectionPlan) -> Vec<String> {
        plan.tiers
            .iter()
            .flat_map(|t| t.policies.iter().map(|p| p.name.clone()))
            .collect()
    }

    #[test]
    fn each_kind_of_policy_goes_to_its_plans_in_calicos_order() {
        let yaml = hep(
            "h",
            "node: n1, interfaceName: eth0, profiles: [open, missing]",
        ) + "---\napiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: open}\n\
              spec: {labelsToApply: {zone: dmz}, ingress: [{action: Allow}]}\n"
            + &gnp(
                "pre",
                "order: 5, selector: role == 'edge', preDNAT: true, applyOnForward: true, \
                 ingress: [{action: Deny}]",
            )
            + &gnp(
                "forward",
                "order: 20, selector: zone == 'dmz', applyOnForward: true, types: [Ingress, Egress], \
                 ingress: [{action: Allow}], egress: [{action: Allow}]",
            )
            + &gnp(
                "host-only",
                "order: 10, selector: all(), ingress: [{action: Allow}]",
            )
            + &gnp(
                "untracked",
                "selector: all(), doNotTrack: true, applyOnForward: true, ingress: [{action: Allow}]",
            )
            + &gnp(
                "other",
                "selector: role == 'core', ingress: [{action: Allow}]",
            )
            + &gnp(
                "namespaced",
                "selector: all(), namespaceSelector: all(), ingress: [{action: Allow}]",
            )
            + &gnp(
                "outside-namespaces",
                "order: 30, selector: all(), namespaceSelector: \"!has(env)\", ingress: [{action: Allow}]",
            );
        let snapshot = snapshot(&yaml);
        let hep = snapshot.find::<HostEndpoint>(None, "h").expect("hep");
        assert_eq!(host_endpoint_labels(&snapshot, hep)["zone"], "dmz");
        let plan = host_endpoint_plan(&snapshot, hep);
        assert_eq!(
            names(&plan.host_ingress),
            ["pre", "host-only", "forward", "outside-namespaces"],
            "pre-DNAT first, then every normal policy"
        );
        assert_eq!(plan.host_ingress.profiles, ["open"]);
        assert_eq!(names(&plan.host_egress), ["forward"]);
        assert_eq!(names(&plan.forward_ingress), ["pre", "forward"]);
        assert!(plan.forward_ingress.profiles.is_empty());
        assert_eq!(names(&plan.forward_egress), ["forward"]);
        assert_eq!(names(&plan.untracked_ingress), ["untracked"]);
        assert!(plan.untracked_egress.tiers.is_empty() && plan.has_untracked());
        assert!(
            plan.untracked_ingress
                .tiers
                .iter()
                .all(|t| t.default_action == TierDefaultAction::Pass),
            "an untracked tier passes what it leaves undecided"
        );
        assert!(!plan.forward_open());
        // The pre-DNAT tier is its own group, before the normal policies' tier.
        assert_eq!(plan.host_ingress.tiers.len(), 2);
    }

    #[test]
    fn without_apply_on_forward_policy_forwarded_traffic_is_open() {
        let yaml = hep("h", "node: n1, interfaceName: eth0")
            + &gnp("host-only", "selector: all(), ingress: [{action: Deny}]");
        let snapshot = snapshot(&yaml);
        let hep = snapshot.find::<HostEndpoint>(None, "h").expect("hep");
        let plan = host_endpoint_plan(&snapshot, hep);
        assert!(plan.forward_open());
        assert!(plan.host_egress.tiers.is_empty() && plan.host_egress.profiles.is_empty());
    }

    #[test]
    fn interfaces_go_to_named_then_expected_ip_then_wildcard_endpoints() {
        let yaml = hep("a-named", "node: n1, interfaceName: eth0")
            + &hep("b-named-too", "node: n1, interfaceName: eth0")
            + &hep("c-by-ip", "node: n1, expectedIPs: [198.18.9.1]")
            + &hep("d-all", "node: n1, interfaceName: \"*\"")
            + &hep("e-all-too", "node: n1, interfaceName: \"*\"")
            + &hep("f-missing", "node: n1, interfaceName: eth9")
            + &hep("other-node", "node: n2, interfaceName: eth2");
        let snapshot = snapshot(&yaml);
        let heps = local_host_endpoints(&snapshot, "n1");
        assert_eq!(heps.len(), 6);
        let interfaces: BTreeMap<String, Vec<IpAddr>> = [
            ("eth0", vec![]),
            ("eth1", vec!["198.18.9.1".parse().unwrap()]),
            ("eth2", vec![]),
        ]
        .into_iter()
        .map(|(n, a)| (n.to_owned(), a))
        .collect();
        let assignment = assign_interfaces(&heps, &interfaces);
        let assigned: Vec<(&str, &str)> = assignment
            .interfaces
            .iter()
            .map(|(i, h)| (i.as_str(), h.as_str()))
            .collect();
        assert_eq!(
            assigned,
            [("eth0", "a-named"), ("eth1", "c-by-ip"), ("eth2", "d-all")]
        );
        let problems = assignment.problems.join("\n");
        for expected in [
            "HostEndpoint b-named-too: interface eth0 is already covered by HostEndpoint a-named",
            "HostEndpoint f-missing: interface eth9 is not a data interface",
            "HostEndpoint e-all-too: HostEndpoint d-all already covers every interface",
        ] {
            assert!(problems.contains(expected), "{problems}");
        }
    }
}
