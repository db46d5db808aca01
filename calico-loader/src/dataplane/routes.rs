//! The route manager: present endpoints in; route map entries, kernel routes and kernel
//! neighbour entries out.
//!
//! The route map tells the programs where each local workload prefix lives. The kernel routes
//! (`scope link proto 81`) and the permanent neighbour entries let the host stack reach the
//! workloads for the traffic the programs hand to it. The route map entries are written by the
//! policy switch together with the endpoint entries they point at (see
//! [`super::switch::switch_policy`]); the kernel side is brought in line here, through netlink.

use std::collections::BTreeSet;

use calico_ebpf_common::{RouteKind, RouteValue};
use ipnet::IpNet;

use super::{
    maps::MapContents,
    netlink::{KernelNeighbour, KernelRoute, LinkDetails, Netlink, NetlinkError},
};
use crate::model::LocalEndpoint;

/// Keeps the kernel routes and neighbour entries of the present endpoints.
pub struct RouteManager {
    netlink: Netlink,
    /// Neighbour entries this agent wrote.
    neighbours: BTreeSet<KernelNeighbour>,
}

impl RouteManager {
    pub fn new(netlink: Netlink) -> Self {
        Self {
            netlink,
            neighbours: BTreeSet::new(),
        }
    }

    /// Brings the kernel routes and neighbour entries in line with `present`: a route per
    /// prefix of each endpoint, through its interface, and a neighbour entry per full-length
    /// address of each endpoint that has a MAC. Returns the problems with single routes or
    /// entries; the others were written regardless.
    pub async fn sync_kernel<'a>(
        &mut self,
        present: impl IntoIterator<Item = (&'a LocalEndpoint, &'a LinkDetails)>,
    ) -> Result<Vec<String>, NetlinkError> {
        let mut errors = Vec::new();
        let mut routes = BTreeSet::new();
        let mut neighbours = BTreeSet::new();
        for (endpoint, link) in present {
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
        for neighbour in neighbours.difference(&self.neighbours) {
            if let Err(e) = self.netlink.add_neighbour(*neighbour).await {
                errors.push(e.to_string());
            }
        }
        self.neighbours = neighbours;
        Ok(errors)
    }

    /// Removes every kernel route of ours (protocol 81, whoever wrote it) and the neighbour
    /// entries this agent wrote.
    pub async fn remove_all(&mut self) -> Result<(), NetlinkError> {
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
    };
    for net in &endpoint.networks {
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
