//! The ordered policy switch: the one sequence that brings new policy into force, shared by the
//! host's dataplane and the private one (`trace --datastore`, the program tests, the
//! microbenchmarks).
//!
//! Policy must never fail open. An endpoint entry is how the programs find the policy of an
//! interface, so the order in which the policy maps and the endpoint entries are written is what
//! keeps a packet from meeting a half-written policy, or none. [`switch_policy`] is the only
//! place that order is written down.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    endpoints::{endpoint_entries, floating_ip_entries},
    error::DataplaneError,
    host_endpoints::{
        HostEndpointBinding, HostEndpointPolicies, HostSettings, forward_policy_key,
        host_endpoint_entries, host_policy_key, untracked_policy_key,
    },
    maps::{MapContents, Maps, ReconcileStats},
    netlink::LinkDetails,
    policy::PolicyManager,
    routes::route_entries,
};
use crate::model::{
    LocalEndpoint,
    compile::{CompiledEndpoint, CompiledHostEndpoint},
    rules::RuleRegistry,
};

/// What [`switch_policy`] programs besides the workload endpoints: the data interfaces that
/// host endpoints cover, their compiled policies (by host endpoint name), and the host's
/// settings.
#[derive(Clone, Copy)]
pub struct HostProgramming<'a> {
    pub bindings: &'a [HostEndpointBinding],
    pub compiled: &'a BTreeMap<String, CompiledHostEndpoint>,
    pub settings: &'a HostSettings,
}

impl HostProgramming<'_> {
    /// No host endpoint, default settings.
    pub fn none() -> HostProgramming<'static> {
        static SETTINGS: HostSettings = HostSettings {
            to_host_drop: false,
            failsafes: Vec::new(),
        };
        static COMPILED: BTreeMap<String, CompiledHostEndpoint> = BTreeMap::new();
        HostProgramming {
            bindings: &[],
            compiled: &COMPILED,
            settings: &SETTINGS,
        }
    }
}

/// What [`switch_policy`] does about an endpoint it cannot program (its policy does not fit, or
/// it never had a complete generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unprogrammed {
    /// Report it and go on: the endpoint keeps the generation it has, or, having none, gets no
    /// endpoint entry (its traffic is dropped). The others are switched regardless.
    Report,
    /// Stop with [`DataplaneError::Unprogrammed`] before any endpoint entry is written.
    Fail,
}

/// What [`switch_policy`] did.
#[derive(Debug, Default)]
pub struct Switched {
    /// Policy generations written: endpoint, direction, policy id, entries.
    pub written: Vec<(String, &'static str, u32, usize)>,
    /// Endpoints that could not be programmed (with [`Unprogrammed::Report`]).
    pub errors: Vec<String>,
    /// What the forwarding maps hold now.
    pub contents: MapContents,
    /// Forwarding map entries written and removed.
    pub map_changes: ReconcileStats,
    /// Policy map entries of replaced generations, deleted after the switch.
    pub entries_removed: usize,
    /// Policy map entries in use after the switch.
    pub entries: usize,
    /// Endpoints left unprogrammed because the endpoint map is full.
    pub over_capacity: usize,
}

/// Brings the compiled policies of `endpoints` (each with its interface) into force, in the
/// order that keeps policy from failing open:
///
/// 1. **stage**: every endpoint direction whose compiled policy changed gets a complete new
///    generation in the policy maps, next to the one in force (host endpoints' too);
/// 2. **switch**: the endpoint entries (with the allowed sources, counters and the route map
///    entries that lead to them, and `remote`'s routes to other nodes' workloads), then the
///    failsafe ports and the host endpoint entries, are written, each naming its newest
///    complete generation;
/// 3. **retire**: only then are the replaced generations (and, after a restart, whatever an
///    earlier agent left) deleted;
/// 4. **sync rules**: the rules map is made to describe the rule ids in use, and the registry
///    forgets the others.
///
/// The invariant: an endpoint entry never points at a policy generation that is not completely
/// written, and no generation is removed while an endpoint entry may still point at it. An
/// endpoint absent from `compiled` (its policy did not compile) keeps the generation in force;
/// an endpoint that has none gets no entry, so its traffic is dropped, never let through
/// unchecked. The error naming the policy, rule and field is the compiler's, reported by the
/// caller; `unprogrammed` says what to do about endpoints that cannot be programmed here.
#[allow(clippy::too_many_arguments)]
pub fn switch_policy(
    policy: &mut PolicyManager,
    maps: &mut Maps,
    registry: &mut RuleRegistry,
    endpoints: &[(&LocalEndpoint, &LinkDetails)],
    remote: MapContents,
    compiled: &BTreeMap<String, CompiledEndpoint>,
    host: HostProgramming<'_>,
    unprogrammed: Unprogrammed,
) -> Result<Switched, DataplaneError> {
    let mut wanted: BTreeSet<String> = endpoints.iter().map(|(e, _)| e.key.clone()).collect();
    // A host endpoint's policy is programmed under two keys (host and forwarded traffic),
    // and a third when untracked policy selects it, whichever interfaces it covers.
    let mut policies: Vec<(String, &CompiledEndpoint)> = compiled
        .iter()
        .map(|(key, endpoint)| (key.clone(), endpoint))
        .collect();
    for (name, hep) in host.compiled {
        policies.push((host_policy_key(name), &hep.host));
        policies.push((forward_policy_key(name), &hep.forward));
        if let Some(untracked) = &hep.untracked {
            policies.push((untracked_policy_key(name), untracked));
        }
    }
    for binding in host.bindings {
        wanted.insert(host_policy_key(&binding.name));
        wanted.insert(forward_policy_key(&binding.name));
        // An endpoint whose policy did not compile keeps its untracked generation too.
        let compiled = host.compiled.get(&binding.name);
        if compiled.is_none_or(|c| c.untracked.is_some()) {
            wanted.insert(untracked_policy_key(&binding.name));
        }
    }
    let staged = policy.stage(&wanted, &policies)?;
    let mut errors = staged.errors;
    if unprogrammed == Unprogrammed::Fail
        && let Some(error) = errors.first()
    {
        return Err(DataplaneError::Unprogrammed(error.clone()));
    }
    let mut programmed = Vec::new();
    for (endpoint, link) in endpoints {
        match (policy.policy_ids(&endpoint.key), unprogrammed) {
            (Some(ids), _) => programmed.push((*endpoint, *link, ids)),
            (None, Unprogrammed::Report) => errors.push(format!(
                "endpoint {}: no policy could be programmed yet; its traffic is dropped",
                endpoint.key
            )),
            (None, Unprogrammed::Fail) => {
                return Err(DataplaneError::Unprogrammed(format!(
                    "endpoint {}: no policy programmed",
                    endpoint.key
                )));
            }
        }
    }
    let capacity = maps.endpoint_capacity()? as usize;
    // Which endpoints have an entry matters only when they do not all fit.
    let present = if programmed.len() > capacity {
        maps.endpoint_ifindexes()?
    } else {
        BTreeSet::new()
    };
    let (programmed, over) = fit(programmed, &present, capacity);
    if unprogrammed == Unprogrammed::Fail
        && let Some((endpoint, _, _)) = over.first()
    {
        return Err(DataplaneError::Unprogrammed(format!(
            "endpoint {}: the endpoint map is full ({capacity} entries)",
            endpoint.key
        )));
    }
    for (endpoint, link, _) in &over {
        errors.push(format!(
            "endpoint {} (interface {}): not programmed, the endpoint map is full ({capacity} \
             entries, BPFMapSizeIfState); its traffic is dropped",
            endpoint.key, link.name
        ));
    }
    let mut contents = map_contents(programmed, remote);
    for binding in host.bindings {
        let ids = (
            policy.policy_ids(&host_policy_key(&binding.name)),
            policy.policy_ids(&forward_policy_key(&binding.name)),
        );
        // A direction no untracked policy applies to is not evaluated at all.
        let (ingress, egress) = host
            .compiled
            .get(&binding.name)
            .map_or((true, true), |c| c.untracked_directions);
        let untracked = policy
            .policy_ids(&untracked_policy_key(&binding.name))
            .map_or((0, 0), |(i, e)| {
                (if ingress { i } else { 0 }, if egress { e } else { 0 })
            });
        match ids {
            (Some(host), Some(forward)) => {
                let policies = HostEndpointPolicies {
                    host,
                    forward,
                    untracked,
                };
                host_endpoint_entries(&mut contents, binding, &policies);
            }
            // Nothing is enforced on the interface: it stays a plain data interface.
            _ => errors.push(format!(
                "HostEndpoint {} on interface {}: no policy could be programmed yet; its policy \
                 is not enforced",
                binding.name, binding.link.name
            )),
        }
    }
    host.settings.apply(&mut contents);
    let map_changes = maps.reconcile(&contents)?;
    let entries_removed = policy.retire()?;
    policy.sync_rules(registry, &policies)?;
    Ok(Switched {
        written: staged.written,
        errors,
        contents,
        map_changes,
        entries_removed,
        entries: policy.entries(),
        over_capacity: over.len(),
    })
}

/// An endpoint to program, with its link and (ingress, egress) policy ids.
type Programmed<'a> = (&'a LocalEndpoint, &'a LinkDetails, (u32, u32));

/// Splits `endpoints` into those the endpoint map of `capacity` entries takes and those it
/// does not: the endpoints that have an entry already (`present`, by ifindex) keep it, then
/// the others in the order of their keys, so that a full map never moves an endpoint that
/// works and always leaves out the same ones.
fn fit<'a>(
    mut endpoints: Vec<Programmed<'a>>,
    present: &BTreeSet<u32>,
    capacity: usize,
) -> (Vec<Programmed<'a>>, Vec<Programmed<'a>>) {
    if endpoints.len() <= capacity {
        return (endpoints, Vec::new());
    }
    endpoints.sort_by(|(a, link_a, _), (b, link_b, _)| {
        let (had_a, had_b) = (
            present.contains(&link_a.ifindex),
            present.contains(&link_b.ifindex),
        );
        had_b.cmp(&had_a).then_with(|| a.key.cmp(&b.key))
    });
    let over = endpoints.split_off(capacity);
    (endpoints, over)
}

/// The forwarding map contents that serve `endpoints`, each with its (ingress, egress) policy
/// ids: the endpoint manager's entries and the route manager's, on top of `remote` (the routes
/// to other nodes' workloads, and their nodes). A local endpoint's route wins over a remote one
/// for the same prefix.
pub fn map_contents<'a>(
    endpoints: impl IntoIterator<Item = (&'a LocalEndpoint, &'a LinkDetails, (u32, u32))>,
    remote: MapContents,
) -> MapContents {
    let mut contents = remote;
    for (endpoint, link, policy_ids) in endpoints {
        endpoint_entries(&mut contents, endpoint, link, policy_ids);
        route_entries(&mut contents, endpoint, link);
        floating_ip_entries(&mut contents, endpoint, link);
    }
    contents
}

#[cfg(test)]
mod tests {
    use calico_ebpf_common::{
        RouteKind, SourceKeyV4, SourceKeyV6, endpoint_flags,
        source_flags::{ALLOWED_SPOOF, OWN_ADDRESS},
    };

    use super::{super::maps, *};

    fn endpoint() -> (LocalEndpoint, LinkDetails) {
        (
            LocalEndpoint {
                key: "ns/wep".into(),
                interface: "cali0123456789a".into(),
                mac: Some([0xca, 0xfe, 0, 0, 0, 1]),
                networks: vec![
                    "198.18.0.11/32".parse().unwrap(),
                    "2001:db8::11/128".parse().unwrap(),
                ],
                allowed_spoof: vec![
                    "198.18.0.0/24".parse().unwrap(),
                    "198.18.0.11/32".parse().unwrap(),
                ],
                ipv4_gateway: None,
                ip_nats: Vec::new(),
            },
            LinkDetails {
                ifindex: 7,
                name: "cali0123456789a".into(),
                tap: false,
                mac: [0xee; 6],
            },
        )
    }

    #[test]
    fn map_contents_encode_routes_sources_and_endpoint() {
        let (endpoint, link) = endpoint();
        let contents = map_contents([(&endpoint, &link, (1, 2))], MapContents::default());

        let route = contents.routes_v4[&(32, [198, 18, 0, 11])];
        assert_eq!(route.kind, RouteKind::LocalWorkload as u32);
        assert_eq!(
            (route.ifindex, route.mac, route.host_mac),
            (7, [0xca, 0xfe, 0, 0, 0, 1], [0xee; 6])
        );
        let v6: [u8; 16] = "2001:db8::11"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        assert_eq!(contents.routes_v6[&(128, v6)].ifindex, 7);
        assert_eq!(
            contents.routes_v4.len(),
            1,
            "allowed-spoof prefixes are not routes"
        );

        // Source keys: prefix length covers the 32-bit ifindex plus the address prefix; an
        // address that is both own and allowed carries both flags.
        let own = maps::source_v4_bytes(&SourceKeyV4 {
            ifindex: 7,
            addr: [198, 18, 0, 11],
        });
        assert_eq!(contents.sources_v4[&(64, own)], OWN_ADDRESS | ALLOWED_SPOOF);
        let net = maps::source_v4_bytes(&SourceKeyV4 {
            ifindex: 7,
            addr: [198, 18, 0, 0],
        });
        assert_eq!(contents.sources_v4[&(56, net)], ALLOWED_SPOOF);
        let own6 = maps::source_v6_bytes(&SourceKeyV6 {
            ifindex: 7,
            addr: v6,
        });
        assert_eq!(contents.sources_v6[&(160, own6)], OWN_ADDRESS);

        let info = contents.endpoints[&7];
        assert_eq!(info.name_bytes(), b"ns/wep");
        assert_eq!(info.ifname_bytes(), b"cali0123456789a");
        assert_eq!(info.flags, endpoint_flags::WORKLOAD);
    }

    #[test]
    fn floating_ips_become_a_route_both_translations_and_a_flag() {
        use calico_ebpf_common::{FloatingIpKey, floating_ip_direction};

        let (mut endpoint, link) = endpoint();
        endpoint.ip_nats = vec![
            (
                "198.18.0.11".parse().unwrap(),
                "198.19.255.9".parse().unwrap(),
            ),
            // IPv6 mappings are not translated.
            (
                "2001:db8::11".parse().unwrap(),
                "2001:db8:ff::9".parse().unwrap(),
            ),
        ];
        let contents = map_contents([(&endpoint, &link, (1, 2))], MapContents::default());

        let route = contents.routes_v4[&(32, [198, 19, 255, 9])];
        assert_eq!(route.kind, RouteKind::FloatingIp as u32);
        assert_eq!(
            (route.ifindex, route.mac, route.host_mac),
            (7, [0xca, 0xfe, 0, 0, 0, 1], [0xee; 6])
        );
        assert_eq!(route.next_hop[..4], [198, 18, 0, 11]);
        assert_eq!(contents.routes_v6.len(), 1, "no IPv6 floating IP route");

        let key = |addr: [u8; 4], direction| {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&addr);
            FloatingIpKey {
                addr: bytes,
                family: 4,
                direction,
                _pad: [0; 2],
            }
        };
        let external =
            contents.floating_ips[&key([198, 19, 255, 9], floating_ip_direction::EXTERNAL)];
        assert_eq!(
            (external.addr[..4].to_vec(), external.ifindex),
            (vec![198, 18, 0, 11], 7)
        );
        let internal =
            contents.floating_ips[&key([198, 18, 0, 11], floating_ip_direction::INTERNAL)];
        assert_eq!(internal.addr[..4], [198, 19, 255, 9]);
        assert_eq!(contents.floating_ips.len(), 2);
        assert_eq!(
            contents.endpoints[&7].flags,
            endpoint_flags::WORKLOAD | endpoint_flags::FLOATING_IPS
        );
    }

    #[test]
    fn a_full_endpoint_map_keeps_the_endpoints_it_has_then_takes_the_others_by_key() {
        let (base, _) = endpoint();
        let make = |key: &str| LocalEndpoint {
            key: key.into(),
            ..base.clone()
        };
        let link = |ifindex| LinkDetails {
            ifindex,
            name: format!("cali{ifindex}"),
            tap: false,
            mac: [0xee; 6],
        };
        let (a, b, c) = (make("ns/a"), make("ns/b"), make("ns/c"));
        let (la, lb, lc) = (link(1), link(2), link(3));
        let all = vec![(&c, &lc, (1, 2)), (&a, &la, (1, 2)), (&b, &lb, (1, 2))];
        let keys = |list: &[Programmed<'_>]| -> Vec<String> {
            list.iter().map(|(e, _, _)| e.key.clone()).collect()
        };

        let (kept, over) = fit(all.clone(), &BTreeSet::new(), 3);
        assert_eq!((kept.len(), over.len()), (3, 0), "room for all");
        let (kept, over) = fit(all.clone(), &BTreeSet::new(), 2);
        assert_eq!(
            (keys(&kept), keys(&over)),
            (vec!["ns/a".into(), "ns/b".into()], vec!["ns/c".into()])
        );
        // ns/c has its entry: it stays, and the first newcomer by key takes the other slot.
        let (kept, over) = fit(all, &BTreeSet::from([3]), 2);
        assert_eq!(
            (keys(&kept), keys(&over)),
            (vec!["ns/c".into(), "ns/a".into()], vec!["ns/b".into()])
        );
    }

    #[test]
    fn an_endpoint_without_mac_gets_a_zero_mac() {
        let (mut endpoint, link) = endpoint();
        endpoint.mac = None;
        let contents = map_contents([(&endpoint, &link, (1, 2))], MapContents::default());
        assert_eq!(contents.routes_v4[&(32, [198, 18, 0, 11])].mac, [0; 6]);
    }

    #[test]
    fn a_local_route_wins_over_a_remote_one_for_the_same_prefix() {
        use calico_ebpf_common::{NodeInfo, RouteValue};

        let (endpoint, link) = endpoint();
        let remote_route = RouteValue {
            kind: RouteKind::RemoteWorkload as u32,
            node: 1,
            ..RouteValue::default()
        };
        let mut remote = MapContents::default();
        remote
            .routes_v4
            .insert((32, [198, 18, 0, 11]), remote_route);
        remote.routes_v4.insert((26, [198, 18, 1, 0]), remote_route);
        remote.nodes.insert(1, NodeInfo::default());
        let contents = map_contents([(&endpoint, &link, (1, 2))], remote);
        assert_eq!(
            contents.routes_v4[&(32, [198, 18, 0, 11])].kind,
            RouteKind::LocalWorkload as u32
        );
        assert_eq!(contents.routes_v4[&(26, [198, 18, 1, 0])], remote_route);
        assert_eq!(
            contents.nodes.len(),
            1,
            "the nodes of remote routes are kept"
        );
    }
}
