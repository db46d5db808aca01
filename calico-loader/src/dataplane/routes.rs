//! The route manager: present endpoints and other nodes' endpoints in; route map entries, the
//! nodes they name, kernel routes and kernel neighbour entries out.
//!
//! The route map tells the programs where each workload prefix lives: a local workload behind
//! its interface, or a workload of another node (whose traffic the programs forward through the
//! kernel's FIB). The kernel routes (`scope link proto 81`) and the permanent neighbour entries
//! let the host stack reach the local workloads for the traffic the programs hand to it. The
//! route map entries are written by the policy switch together with the endpoint entries they
//! point at (see [`super::switch::switch_policy`]); the kernel side is brought in line here,
//! through netlink. Routes to other nodes in the kernel are not the agent's: BIRD (or an
//! administrator) installs them.

use std::collections::{BTreeMap, BTreeSet};

use calico_ebpf_common::{NodeInfo, RouteKind, RouteValue, fill_nul_padded};
use ipnet::IpNet;

use super::{
    maps::MapContents,
    netlink::{KernelNeighbour, KernelRoute, LinkDetails, Netlink, NetlinkError},
};
use crate::model::{LocalEndpoint, RemoteWorkloads};

/// Keeps the kernel routes and neighbour entries of the present endpoints, and the ids of the
/// nodes remote routes lead to.
pub struct RouteManager {
    netlink: Netlink,
    /// Neighbour entries this agent wrote.
    neighbours: BTreeSet<KernelNeighbour>,
    /// The routes the last [`Self::sync_kernel`] left in the kernel without a problem.
    routes_synced: Option<BTreeSet<KernelRoute>>,
    /// How many IPv4 and IPv6 kernel routes the last [`Self::sync_kernel`] wanted.
    managed: ManagedRoutes,
    node_ids: NodeIds,
}

/// The kernel routes the agent manages in the main table, by family (Felix's
/// `felix_route_table_num_routes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManagedRoutes {
    pub v4: usize,
    pub v6: usize,
}

impl RouteManager {
    /// A manager that keeps the node ids the nodes map holds (`nodes`, as an earlier agent left
    /// it), so that a restart rewrites no route.
    pub fn new(netlink: Netlink, nodes: &BTreeMap<u32, NodeInfo>) -> Self {
        Self {
            netlink,
            neighbours: BTreeSet::new(),
            routes_synced: None,
            managed: ManagedRoutes::default(),
            node_ids: NodeIds::adopt(nodes),
        }
    }

    /// The route map entries of other nodes' endpoints and blocks (`remote-workload`, naming
    /// their node), and the nodes map entries they name. Node ids are kept for as long as a
    /// node has endpoints or blocks.
    pub fn remote_routes(&mut self, remote: &RemoteWorkloads) -> MapContents {
        self.node_ids.assign(
            remote
                .endpoints
                .iter()
                .map(|endpoint| endpoint.node.as_str())
                .chain(remote.blocks.iter().map(|block| block.node.as_str())),
        );
        remote_route_entries(remote, &self.node_ids)
    }

    /// Brings the kernel routes and neighbour entries in line with `present`: a route per
    /// prefix and floating IP of each endpoint, through its interface, and a neighbour entry per
    /// full-length address and floating IP of each endpoint that has a MAC. Returns the problems with single routes or
    /// entries; the others were written regardless. The kernel's routes are listed and compared
    /// when `relist` says so (a full verification, or the interfaces changed) or when the routes
    /// wanted differ from those the last call left in place; otherwise nothing is asked of the
    /// kernel.
    pub async fn sync_kernel<'a>(
        &mut self,
        present: impl IntoIterator<Item = (&'a LocalEndpoint, &'a LinkDetails)>,
        relist: bool,
    ) -> Result<Vec<String>, NetlinkError> {
        let mut errors = Vec::new();
        let mut routes = BTreeSet::new();
        let mut neighbours = BTreeSet::new();
        for (endpoint, link) in present {
            // A floating IP is routed to the workload's interface too, and resolves to the
            // workload's MAC (the workload itself never answers ARP for it): the workload's
            // TC egress translates it.
            for (_, external) in super::endpoints::floating_ips(endpoint) {
                routes.insert(KernelRoute {
                    net: IpNet::from(std::net::IpAddr::V4(external)),
                    ifindex: link.ifindex,
                });
                if let Some(mac) = endpoint.mac {
                    neighbours.insert(KernelNeighbour {
                        addr: std::net::IpAddr::V4(external),
                        ifindex: link.ifindex,
                        mac,
                    });
                }
            }
            for net in &endpoint.networks {
                routes.insert(KernelRoute {
                    net: *net,
                    ifindex: link.ifindex,
                });
                if let Some(mac) = endpoint.mac
                    && net.prefix_len() == net.max_prefix_len()
                {
                    neighbours.insert(KernelNeighbour {
                        addr: net.addr(),
                        ifindex: link.ifindex,
                        mac,
                    });
                }
            }
        }
        let v4 = routes
            .iter()
            .filter(|r| matches!(r.net, IpNet::V4(_)))
            .count();
        self.managed = ManagedRoutes {
            v4,
            v6: routes.len() - v4,
        };
        if !relist && self.routes_synced.as_ref() == Some(&routes) && self.neighbours == neighbours
        {
            return Ok(errors);
        }
        self.routes_synced = None;
        // A route the host already has to the right interface (one the CNI plugin made, say) is
        // left as it is and never removed; a route of ours that is no longer wanted goes; a
        // missing one, or one pointing elsewhere, is (re)placed as ours.
        let kernel = self.netlink.routes().await?;
        let present: BTreeSet<KernelRoute> = kernel.iter().map(|(r, _)| *r).collect();
        let ours: BTreeSet<KernelRoute> = kernel
            .iter()
            .filter(|(_, ours)| *ours)
            .map(|(r, _)| *r)
            .collect();
        for route in ours.difference(&routes) {
            if let Err(e) = self.netlink.del_route(*route).await {
                errors.push(e.to_string());
            }
        }
        for route in routes.difference(&present) {
            if let Err(e) = self.netlink.add_route(*route).await {
                errors.push(e.to_string());
            }
        }
        for neighbour in self.neighbours.difference(&neighbours) {
            if let Err(e) = self.netlink.del_neighbour(*neighbour).await {
                errors.push(e.to_string());
            }
        }
        // When asked to look (a full verification, or the interfaces changed), the entries are
        // read back: taking an interface down flushes its entries, permanent ones included,
        // and nothing else would write them again (a floating IP's entry is the only way the
        // kernel can reach it, as the workload never answers ARP for it).
        let in_kernel = if relist {
            self.netlink.permanent_neighbours().await?
        } else {
            self.neighbours.clone()
        };
        for neighbour in neighbours.difference(&in_kernel) {
            if let Err(e) = self.netlink.add_neighbour(*neighbour).await {
                errors.push(e.to_string());
            }
        }
        self.neighbours = neighbours;
        if errors.is_empty() {
            self.routes_synced = Some(routes);
        }
        Ok(errors)
    }

    /// The kernel routes the last [`Self::sync_kernel`] wanted, by family.
    pub fn managed(&self) -> ManagedRoutes {
        self.managed
    }

    /// Removes every kernel route of ours (protocol 81, whoever wrote it) and the neighbour
    /// entries this agent wrote.
    pub async fn remove_all(&mut self) -> Result<(), NetlinkError> {
        self.routes_synced = None;
        self.managed = ManagedRoutes::default();
        for route in self.netlink.our_routes().await? {
            self.netlink.del_route(route).await?;
        }
        for neighbour in std::mem::take(&mut self.neighbours) {
            self.netlink.del_neighbour(neighbour).await?;
        }
        Ok(())
    }
}

/// Adds to `contents` the route map entries that lead to `endpoint` on `link`: one
/// local-workload entry per prefix of its networks.
pub fn route_entries(contents: &mut MapContents, endpoint: &LocalEndpoint, link: &LinkDetails) {
    let route = RouteValue {
        kind: RouteKind::LocalWorkload as u32,
        ifindex: link.ifindex,
        mac: endpoint.mac.unwrap_or([0; 6]),
        host_mac: link.mac,
        next_hop: [0; 16],
        node: 0,
    };
    insert_routes(contents, &endpoint.networks, route);
    for (internal, external) in super::endpoints::floating_ips(endpoint) {
        let mut next_hop = [0; 16];
        next_hop[..4].copy_from_slice(&internal.octets());
        contents.routes_v4.insert(
            (32, external.octets()),
            RouteValue {
                kind: RouteKind::FloatingIp as u32,
                next_hop,
                ..route
            },
        );
    }
}

/// Adds to `contents` an `ip-pool` entry per pool CIDR that no other route has the same
/// prefix of: the programs read it as "inside the pools" (see `RouteKind::IpPool`).
pub fn pool_route_entries(contents: &mut MapContents, pools: &[IpNet]) {
    let route = RouteValue {
        kind: RouteKind::IpPool as u32,
        ..RouteValue::default()
    };
    for net in pools {
        let len = u32::from(net.prefix_len());
        match net {
            IpNet::V4(net) => {
                contents
                    .routes_v4
                    .entry((len, net.network().octets()))
                    .or_insert(route);
            }
            IpNet::V6(net) => {
                contents
                    .routes_v6
                    .entry((len, net.network().octets()))
                    .or_insert(route);
            }
        }
    }
}

/// The route map entries of `remote` workloads: a `remote-workload` entry per block and per
/// endpoint prefix, naming its node and, when the node's Node gives an address of the prefix's
/// family, with that address as next hop; and the nodes map entries of those nodes (`ids`
/// must know every one). An endpoint's prefix that is also a block is the endpoint's.
pub fn remote_route_entries(remote: &RemoteWorkloads, ids: &NodeIds) -> MapContents {
    let mut contents = MapContents::default();
    let blocks = remote
        .blocks
        .iter()
        .map(|block| (block.node.as_str(), std::slice::from_ref(&block.cidr)));
    let endpoints = remote
        .endpoints
        .iter()
        .map(|endpoint| (endpoint.node.as_str(), endpoint.networks.as_slice()));
    for (name, networks) in blocks.chain(endpoints) {
        let Some(node) = ids.get(name) else {
            continue;
        };
        contents.nodes.insert(
            node,
            NodeInfo {
                name: fill_nul_padded(name.as_bytes()),
            },
        );
        let addresses = remote.node_addresses.get(name).copied().unwrap_or_default();
        for net in networks {
            let route = RouteValue {
                kind: RouteKind::RemoteWorkload as u32,
                node,
                next_hop: addresses.for_family_of(net).map_or([0; 16], next_hop_bytes),
                ..RouteValue::default()
            };
            insert_routes(&mut contents, std::slice::from_ref(net), route);
        }
    }
    contents
}

/// A next hop as [`RouteValue::next_hop`] holds it: IPv4 in the first four bytes.
fn next_hop_bytes(addr: std::net::IpAddr) -> [u8; 16] {
    let mut bytes = [0; 16];
    match addr {
        std::net::IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => bytes = v6.octets(),
    }
    bytes
}

fn insert_routes(contents: &mut MapContents, networks: &[IpNet], route: RouteValue) {
    for net in networks {
        let len = u32::from(net.prefix_len());
        match net {
            IpNet::V4(net) => {
                contents
                    .routes_v4
                    .insert((len, net.network().octets()), route);
            }
            IpNet::V6(net) => {
                contents
                    .routes_v6
                    .insert((len, net.network().octets()), route);
            }
        }
    }
}

/// The ids of the nodes remote routes lead to (the key of the nodes map, and
/// `RouteValue::node`): a node keeps its id for as long as it is wanted, so its routes are
/// not rewritten when other nodes come and go. Ids start at 1 (0 means unknown).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeIds {
    ids: BTreeMap<String, u32>,
}

impl NodeIds {
    /// The ids a nodes map holds.
    pub fn adopt(nodes: &BTreeMap<u32, NodeInfo>) -> Self {
        let ids = nodes
            .iter()
            .filter(|(id, _)| **id != 0)
            .map(|(id, info)| (String::from_utf8_lossy(info.name_bytes()).into_owned(), *id))
            .collect();
        Self { ids }
    }

    /// Gives every name of `names` an id: the one it has, or the lowest free one. Names that are
    /// not among them lose theirs.
    pub fn assign<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        let wanted: BTreeSet<&str> = names.into_iter().collect();
        self.ids.retain(|name, _| wanted.contains(name.as_str()));
        let mut used: BTreeSet<u32> = self.ids.values().copied().collect();
        let mut next = 1;
        for name in wanted {
            if self.ids.contains_key(name) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            used.insert(next);
            self.ids.insert(name.to_owned(), next);
        }
    }

    /// The id of `name`, if it has one.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: fill_nul_padded(name.as_bytes()),
        }
    }

    fn remote(key: &str, node: &str, nets: &[&str]) -> crate::model::RemoteEndpoint {
        crate::model::RemoteEndpoint {
            key: key.to_owned(),
            node: node.to_owned(),
            networks: nets.iter().map(|n| n.parse().expect("test CIDR")).collect(),
        }
    }

    #[test]
    fn node_ids_are_kept_while_wanted_and_reused_when_free() {
        let mut ids = NodeIds::adopt(&[(3, node("b")), (1, node("a"))].into());
        ids.assign(["a", "b", "c"]);
        assert_eq!(
            (ids.get("a"), ids.get("b"), ids.get("c")),
            (Some(1), Some(3), Some(2))
        );
        ids.assign(["b", "c", "d"]);
        assert_eq!(ids.get("a"), None, "a node without endpoints loses its id");
        assert_eq!(
            (ids.get("b"), ids.get("c"), ids.get("d")),
            (Some(3), Some(2), Some(1)),
            "the others keep theirs; the freed id is reused"
        );
    }

    #[test]
    fn remote_endpoints_become_remote_workload_routes_naming_their_node() {
        let remote = RemoteWorkloads {
            endpoints: vec![
                remote(
                    "ns/b",
                    "node-b",
                    &["198.18.1.11/32", "2001:db8:0:1::11/128"],
                ),
                remote("ns/c", "node-c", &["198.18.2.0/26"]),
            ],
            ..RemoteWorkloads::default()
        };
        let mut ids = NodeIds::default();
        ids.assign(remote.endpoints.iter().map(|e| e.node.as_str()));
        let contents = remote_route_entries(&remote, &ids);

        let b = contents.routes_v4[&(32, [198, 18, 1, 11])];
        assert_eq!(b.kind, RouteKind::RemoteWorkload as u32);
        assert_eq!((b.ifindex, b.mac, b.next_hop), (0, [0; 6], [0; 16]));
        assert_eq!(contents.nodes[&b.node].name_bytes(), b"node-b");
        let v6: [u8; 16] = "2001:db8:0:1::11"
            .parse::<std::net::Ipv6Addr>()
            .expect("address")
            .octets();
        assert_eq!(contents.routes_v6[&(128, v6)].node, b.node);
        let c = contents.routes_v4[&(26, [198, 18, 2, 0])];
        assert_eq!(contents.nodes[&c.node].name_bytes(), b"node-c");
        assert_eq!(contents.nodes.len(), 2);
    }

    #[test]
    fn remote_blocks_lead_to_their_node_through_its_address() {
        use crate::model::{NodeAddresses, RemoteBlock};
        let block = |cidr: &str, node: &str| RemoteBlock {
            cidr: cidr.parse().expect("test CIDR"),
            node: node.to_owned(),
        };
        let remote = RemoteWorkloads {
            // A borrowed address of node-c inside node-b's block.
            endpoints: vec![remote("ns/c", "node-c", &["198.18.1.5/32"])],
            blocks: vec![
                block("198.18.1.0/26", "node-b"),
                block("2001:db8:0:1::/122", "node-b"),
                block("198.18.2.0/26", "node-d"),
            ],
            node_addresses: [
                (
                    "node-b".to_owned(),
                    NodeAddresses {
                        v4: Some("198.19.0.2".parse().expect("address")),
                        v6: Some("2001:db8:ff::2".parse().expect("address")),
                    },
                ),
                (
                    "node-c".to_owned(),
                    NodeAddresses {
                        v4: Some("198.19.0.3".parse().expect("address")),
                        v6: None,
                    },
                ),
            ]
            .into(),
        };
        let mut ids = NodeIds::default();
        ids.assign(["node-b", "node-c", "node-d"]);
        let contents = remote_route_entries(&remote, &ids);

        let b = contents.routes_v4[&(26, [198, 18, 1, 0])];
        assert_eq!(b.kind, RouteKind::RemoteWorkload as u32);
        assert_eq!(contents.nodes[&b.node].name_bytes(), b"node-b");
        assert_eq!(crate::dump::next_hop_string(4, &b.next_hop), "198.19.0.2");
        let v6: [u8; 16] = "2001:db8:0:1::"
            .parse::<std::net::Ipv6Addr>()
            .expect("address")
            .octets();
        let b6 = contents.routes_v6[&(122, v6)];
        assert_eq!(b6.node, b.node);
        assert_eq!(
            crate::dump::next_hop_string(6, &b6.next_hop),
            "2001:db8:ff::2"
        );
        let borrowed = contents.routes_v4[&(32, [198, 18, 1, 5])];
        assert_eq!(contents.nodes[&borrowed.node].name_bytes(), b"node-c");
        assert_eq!(
            crate::dump::next_hop_string(4, &borrowed.next_hop),
            "198.19.0.3"
        );
        let d = contents.routes_v4[&(26, [198, 18, 2, 0])];
        assert_eq!(contents.nodes[&d.node].name_bytes(), b"node-d");
        assert_eq!(d.next_hop, [0; 16], "a node without a Node has no next hop");
    }
}
