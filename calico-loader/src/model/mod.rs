//! Calculation: from the datastore's resources to what this host's dataplane must serve.

pub mod compile;
pub mod frame;
pub mod host_endpoints;
pub mod policy;
pub mod rules;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;

use crate::{
    datastore::{IpamObjects, Snapshot, resources::Node},
    ipam::node_blocks::affine_blocks,
};

/// A workload endpoint of this node, as the dataplane needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// `namespace/name` of the WorkloadEndpoint.
    pub key: String,
    /// Host side of its interface.
    pub interface: String,
    /// The workload's MAC, if the endpoint gives one.
    pub mac: Option<[u8; 6]>,
    /// Its addresses (`ipNetworks`).
    pub networks: Vec<IpNet>,
    /// Source prefixes it may send from besides its own (`allowSpoofedSourcePrefixes`).
    pub allowed_spoof: Vec<IpNet>,
    /// The gateway of its IPv4 subnet (`ipv4Gateway`, as networking-calico writes it): a VM's
    /// DHCP lease names it as the router.
    pub ipv4_gateway: Option<std::net::Ipv4Addr>,
    /// Its floating IPs (`ipNATs`): (internal address, external address).
    pub ip_nats: Vec<(std::net::IpAddr, std::net::IpAddr)>,
}

/// A workload endpoint of another node, as the route map needs it: where its addresses live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// `namespace/name` of the WorkloadEndpoint.
    pub key: String,
    /// The node it lives on (`spec.node`).
    pub node: String,
    /// Its addresses (`ipNetworks`).
    pub networks: Vec<IpNet>,
}

/// An IPAM block of another node: every address in it lives on that node, unless a more
/// specific route (a borrowed address's endpoint) says otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteBlock {
    /// The block's CIDR.
    pub cidr: IpNet,
    /// The node it is affine to.
    pub node: String,
}

/// A node's addresses as next hops: its Node's `spec.bgp.ipv4Address` and `ipv6Address`,
/// without their prefix lengths.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl NodeAddresses {
    /// The address of the family of `net`.
    pub fn for_family_of(&self, net: &IpNet) -> Option<IpAddr> {
        match net {
            IpNet::V4(_) => self.v4.map(IpAddr::V4),
            IpNet::V6(_) => self.v6.map(IpAddr::V6),
        }
    }
}

/// Where the workloads of other nodes live, as the route map needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RemoteWorkloads {
    /// Other nodes' endpoints, each with the addresses it alone routes.
    pub endpoints: Vec<RemoteEndpoint>,
    /// Other nodes' IPAM blocks.
    pub blocks: Vec<RemoteBlock>,
    /// The addresses of the nodes, by name (the next hops of their routes).
    pub node_addresses: BTreeMap<String, NodeAddresses>,
}

/// Other nodes' workloads: their endpoints (see [`remote_endpoints`]), the IPAM blocks affine
/// to them (`affinity: host:<node>` in the block, as Felix's route resolver reads blocks), and
/// the Nodes' addresses. Blocks affine to `node` itself, or to no node, are not among them:
/// this node's own workloads have routes of their own, and the addresses of a block without an
/// affinity live wherever their endpoints are.
pub fn remote_workloads(
    snapshot: &Snapshot,
    ipam: &IpamObjects,
    node: &str,
    local: &BTreeMap<String, LocalEndpoint>,
) -> (RemoteWorkloads, Vec<Conflict>) {
    let (endpoints, conflicts) = remote_endpoints(snapshot, node, local);
    let blocks = affine_blocks(ipam)
        .into_iter()
        .filter(|(_, owner)| owner != node)
        .map(|(cidr, node)| RemoteBlock { cidr, node })
        .collect();
    let node_addresses = snapshot
        .all::<Node>()
        .map(|n| {
            let bgp = n.spec.bgp.clone().unwrap_or_default();
            let addresses = NodeAddresses {
                v4: match bgp.ipv4_address {
                    Some(IpNet::V4(net)) => Some(net.addr()),
                    _ => None,
                },
                v6: match bgp.ipv6_address {
                    Some(IpNet::V6(net)) => Some(net.addr()),
                    _ => None,
                },
            };
            (n.name().to_owned(), addresses)
        })
        .collect();
    let remote = RemoteWorkloads {
        endpoints,
        blocks,
        node_addresses,
    };
    (remote, conflicts)
}

/// An endpoint the model had to leave out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub endpoint: String,
    pub reason: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkloadEndpoint {}: {}", self.endpoint, self.reason)
    }
}

/// The endpoints of `node`, keyed by interface name. Endpoints are taken in key order; one that
/// claims an interface or an address an earlier one already has is left out and reported.
pub fn local_endpoints(
    snapshot: &Snapshot,
    node: &str,
) -> (BTreeMap<String, LocalEndpoint>, Vec<Conflict>) {
    let mut endpoints: BTreeMap<String, LocalEndpoint> = BTreeMap::new();
    let mut owners: BTreeMap<IpNet, String> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for wep in snapshot.workload_endpoints() {
        if wep.spec.node != node {
            continue;
        }
        let endpoint = LocalEndpoint {
            key: format!("{}/{}", wep.namespace(), wep.name()),
            interface: wep.spec.interface_name.clone(),
            mac: wep.spec.mac.map(|mac| mac.octets()),
            networks: wep.spec.ip_networks.clone(),
            allowed_spoof: wep.spec.allow_spoofed_source_prefixes.clone(),
            ipv4_gateway: wep.spec.ipv4_gateway,
            ip_nats: wep
                .spec
                .ip_nats
                .iter()
                .map(|nat| (nat.internal_ip, nat.external_ip))
                .collect(),
        };
        if let Some(other) = endpoints.get(&endpoint.interface) {
            conflicts.push(Conflict {
                endpoint: endpoint.key,
                reason: format!(
                    "interface {} already belongs to {}",
                    other.interface, other.key
                ),
            });
            continue;
        }
        if let Some((net, owner)) = endpoint
            .networks
            .iter()
            .find_map(|net| owners.get(net).map(|owner| (net, owner)))
        {
            conflicts.push(Conflict {
                endpoint: endpoint.key.clone(),
                reason: format!("address {net} already belongs to {owner}"),
            });
            continue;
        }
        for net in &endpoint.networks {
            owners.insert(*net, endpoint.key.clone());
        }
        endpoints.insert(endpoint.interface.clone(), endpoint);
    }
    (endpoints, conflicts)
}

/// The endpoints of every node but `node`, in key order, each with the addresses it alone
/// routes: an address that a local endpoint (of `local`) or an earlier remote endpoint already
/// has is left out of it and reported, so that every address leads to one place.
pub fn remote_endpoints(
    snapshot: &Snapshot,
    node: &str,
    local: &BTreeMap<String, LocalEndpoint>,
) -> (Vec<RemoteEndpoint>, Vec<Conflict>) {
    let mut owners: BTreeMap<IpNet, String> = local
        .values()
        .flat_map(|e| e.networks.iter().map(|net| (*net, e.key.clone())))
        .collect();
    let mut remote = Vec::new();
    let mut conflicts = Vec::new();
    for wep in snapshot.workload_endpoints() {
        if wep.spec.node == node {
            continue;
        }
        let key = format!("{}/{}", wep.namespace(), wep.name());
        let mut networks = Vec::new();
        for net in &wep.spec.ip_networks {
            match owners.get(net) {
                Some(owner) => conflicts.push(Conflict {
                    endpoint: key.clone(),
                    reason: format!(
                        "address {net} already belongs to {owner}; this node routes it there, \
                         not to node {}",
                        wep.spec.node
                    ),
                }),
                None => {
                    owners.insert(*net, key.clone());
                    networks.push(*net);
                }
            }
        }
        remote.push(RemoteEndpoint {
            key,
            node: wep.spec.node.clone(),
            networks,
        });
    }
    (remote, conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{LocalDatastore, parse_file};

    fn snapshot(yaml: &str) -> Snapshot {
        parse_file("test.yaml", yaml).expect("valid test resources");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("test.yaml"), yaml).expect("write");
        LocalDatastore::new(dir.path()).sync().snapshot
    }

    fn wep(name: &str, node: &str, ifname: &str, ip: &str) -> String {
        format!(
            "---\napiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {{name: {name}, namespace: ns}}\n\
             spec: {{node: {node}, interfaceName: {ifname}, ipNetworks: [\"{ip}\"]}}\n"
        )
    }

    #[test]
    fn only_this_nodes_endpoints_are_local() {
        let yaml = wep("a", "node1", "calia", "198.18.0.1/32")
            + &wep("b", "node2", "calib", "198.18.0.2/32");
        let (endpoints, conflicts) = local_endpoints(&snapshot(&yaml), "node1");
        assert!(conflicts.is_empty());
        assert_eq!(endpoints.keys().collect::<Vec<_>>(), ["calia"]);
        assert_eq!(endpoints["calia"].key, "ns/a");
        assert_eq!(endpoints["calia"].mac, None);
    }

    #[test]
    fn other_nodes_endpoints_are_remote() {
        let yaml = wep("a", "node1", "calia", "198.18.0.1/32")
            + &wep("b", "node2", "calib", "198.18.1.2/32")
            + &wep("c", "node3", "calic", "198.18.2.3/32");
        let snapshot = snapshot(&yaml);
        let (local, _) = local_endpoints(&snapshot, "node1");
        let (remote, conflicts) = remote_endpoints(&snapshot, "node1", &local);
        assert!(conflicts.is_empty());
        let found: Vec<(&str, &str, String)> = remote
            .iter()
            .map(|r| (r.key.as_str(), r.node.as_str(), r.networks[0].to_string()))
            .collect();
        assert_eq!(
            found,
            [
                ("ns/b", "node2", "198.18.1.2/32".to_owned()),
                ("ns/c", "node3", "198.18.2.3/32".to_owned())
            ]
        );
    }

    #[test]
    fn a_remote_address_that_is_already_routed_is_left_out_and_reported() {
        let yaml = wep("a", "node1", "calia", "198.18.0.1/32")
            + &wep("b", "node2", "calib", "198.18.0.1/32")
            + &wep("c", "node3", "calic", "198.18.2.3/32")
            + &wep("d", "node4", "calid", "198.18.2.3/32");
        let snapshot = snapshot(&yaml);
        let (local, _) = local_endpoints(&snapshot, "node1");
        let (remote, conflicts) = remote_endpoints(&snapshot, "node1", &local);
        let routed: Vec<(&str, usize)> = remote
            .iter()
            .map(|r| (r.key.as_str(), r.networks.len()))
            .collect();
        assert_eq!(routed, [("ns/b", 0), ("ns/c", 1), ("ns/d", 0)]);
        let messages: Vec<String> = conflicts.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                "WorkloadEndpoint ns/b: address 198.18.0.1/32 already belongs to ns/a; this node routes it there, not to node node2",
                "WorkloadEndpoint ns/d: address 198.18.2.3/32 already belongs to ns/c; this node routes it there, not to node node4"
            ]
        );
    }

    #[test]
    fn conflicting_endpoints_are_left_out_and_reported() {
        let yaml = wep("a", "n", "calia", "198.18.0.1/32")
            + &wep("b", "n", "calia", "198.18.0.2/32")
            + &wep("c", "n", "calic", "198.18.0.1/32");
        let (endpoints, conflicts) = local_endpoints(&snapshot(&yaml), "n");
        assert_eq!(endpoints.len(), 1);
        assert_eq!(conflicts.len(), 2);
        assert!(
            conflicts[0]
                .to_string()
                .contains("interface calia already belongs to ns/a"),
            "{}",
            conflicts[0]
        );
        assert!(
            conflicts[1]
                .to_string()
                .contains("address 198.18.0.1/32 already belongs to ns/a"),
            "{}",
            conflicts[1]
        );
    }
}
