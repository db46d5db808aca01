//! The rules a plan's entries stand for: a policy's or a profile's rules in one direction, read
//! from the snapshot. Both the compiler and the reference evaluator walk a plan through these.

use crate::{
    datastore::{Kind, Rule, Snapshot},
    model::{policy::PolicyId, rules::Direction},
};

/// The rules of `policy` for `direction`.
pub(super) fn policy_rules<'s>(
    snapshot: &'s Snapshot,
    policy: &PolicyId,
    direction: Direction,
) -> Option<&'s [Rule]> {
    let (ingress, egress) = match (policy.kind, &policy.namespace) {
        (Kind::NetworkPolicy, Some(namespace)) => {
            let spec = &snapshot.network_policy(namespace, &policy.name)?.spec;
            (&spec.ingress, &spec.egress)
        }
        (Kind::GlobalNetworkPolicy, None) => {
            let spec = &snapshot.global_network_policy(&policy.name)?.spec;
            (&spec.ingress, &spec.egress)
        }
        _ => return None,
    };
    Some(match direction {
        Direction::Ingress => ingress,
        Direction::Egress => egress,
    })
}

/// The rules of profile `name` for `direction`.
pub(super) fn profile_rules<'s>(
    snapshot: &'s Snapshot,
    name: &str,
    direction: Direction,
) -> Option<&'s [Rule]> {
    let spec = &snapshot.profile(name)?.spec;
    Some(match direction {
        Direction::Ingress => &spec.ingress,
        Direction::Egress => &spec.egress,
    })
}
