//! The kernel's view of workload interfaces, through rtnetlink: finding interfaces, following
//! them as they come and go, and the kernel routes and neighbour entries that let the host stack
//! reach workloads (the BPF programs forward workload-to-workload traffic themselves; the kernel
//! needs routes for host-originated traffic and for whatever the programs hand to it).

use std::{collections::BTreeSet, net::IpAddr};

use futures::{StreamExt as _, TryStreamExt as _, channel::mpsc::UnboundedReceiver};
use ipnet::IpNet;
use rtnetlink::{
    Handle, IpVersion, RouteMessageBuilder,
    packet_core::NetlinkMessage,
    packet_route::{
        RouteNetlinkMessage,
        link::{InfoKind, LinkAttribute, LinkInfo},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteProtocol, RouteScope},
    },
    sys::{AsyncSocket as _, SocketAddr},
};

/// Protocol number marking the kernel routes this agent owns (`ip route show proto 81`).
pub const ROUTE_PROTOCOL: u8 = 81;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink connection: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{what}: {source}")]
    Request {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("invalid route {net}: {reason}")]
    InvalidRoute { net: IpNet, reason: String },
}

/// What the kernel says about an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkDetails {
    pub ifindex: u32,
    pub name: String,
    pub mac: [u8; 6],
    /// A tap (link kind `tun`, as `/dev/net/tun` makes them): a VM's interface, which the
    /// programs deliver into with `bpf_redirect` and only with the VM's MAC.
    pub tap: bool,
}

/// A route (prefix via interface) the kernel should have for a local workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelRoute {
    pub net: IpNet,
    pub ifindex: u32,
}

/// A permanent neighbour entry for a workload address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KernelNeighbour {
    pub addr: IpAddr,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// A handle on rtnetlink in the agent's network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

impl Netlink {
    /// Opens a connection; its driver runs on the current tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Every interface, by name.
    pub async fn links(&self) -> Result<Vec<LinkDetails>, NetlinkError> {
        let mut links = Vec::new();
        let mut stream = self.handle.link().get().execute();
        while let Some(message) = stream.try_next().await.map_err(request("listing links"))? {
            let mut details = LinkDetails {
                ifindex: message.header.index,
                name: String::new(),
                mac: [0; 6],
                tap: false,
            };
            for attribute in message.attributes {
                match attribute {
                    LinkAttribute::IfName(name) => details.name = name,
                    LinkAttribute::Address(address) if address.len() == 6 => {
                        details.mac.copy_from_slice(&address);
                    }
                    LinkAttribute::LinkInfo(infos) => {
                        details.tap = infos
                            .iter()
                            .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Tun)));
                    }
                    _ => {}
                }
            }
            links.push(details);
        }
        Ok(links)
    }

    /// The routes of ours that the kernel holds.
    pub async fn our_routes(&self) -> Result<Vec<KernelRoute>, NetlinkError> {
        Ok(self
            .routes()
            .await?
            .into_iter()
            .filter(|(_, ours)| *ours)
            .map(|(r, _)| r)
            .collect())
    }

    /// Every interface route of the main table, and whether it is one of ours.
    pub async fn routes(&self) -> Result<Vec<(KernelRoute, bool)>, NetlinkError> {
        let mut routes = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let message = match version {
                IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
                IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            };
            let mut stream = self.handle.route().get(message).execute();
            while let Some(route) = stream.try_next().await.map_err(request("listing routes"))? {
                let ours = route.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL);
                let prefix_len = route.header.destination_prefix_length;
                let mut destination = None;
                let mut ifindex = None;
                for attribute in &route.attributes {
                    match attribute {
                        RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                            destination = Some(IpAddr::V4(*a));
                        }
                        RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                            destination = Some(IpAddr::V6(*a));
                        }
                        RouteAttribute::Oif(index) => ifindex = Some(*index),
                        _ => {}
                    }
                }
                if let (Some(addr), Some(ifindex)) = (destination, ifindex)
                    && let Ok(net) = IpNet::new(addr, prefix_len)
                {
                    routes.push((KernelRoute { net, ifindex }, ours));
                }
            }
        }
        Ok(routes)
    }

    /// Adds (or replaces) a scope-link route to a workload.
    pub async fn add_route(&self, route: KernelRoute) -> Result<(), NetlinkError> {
        let message = route_message(route)?;
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(request(format!(
                "adding route {} dev #{}",
                route.net, route.ifindex
            )))
    }

    /// Removes one of our routes.
    pub async fn del_route(&self, route: KernelRoute) -> Result<(), NetlinkError> {
        let message = route_message(route)?;
        match self.handle.route().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(request(format!("removing route {}", route.net))(e)),
        }
    }

    /// Adds (or replaces) a permanent neighbour entry, as Felix writes for each workload.
    pub async fn add_neighbour(&self, neighbour: KernelNeighbour) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add(neighbour.ifindex, neighbour.addr)
            .link_local_address(&neighbour.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(request(format!(
                "adding neighbour {} dev #{}",
                neighbour.addr, neighbour.ifindex
            )))
    }

    /// The permanent neighbour entries in the kernel (those the agent writes are permanent;
    /// the kernel's own resolutions are not).
    pub async fn permanent_neighbours(&self) -> Result<BTreeSet<KernelNeighbour>, NetlinkError> {
        let mut found = BTreeSet::new();
        let mut stream = self.handle.neighbours().get().execute();
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(request("listing neighbours"))?
        {
            if message.header.state != NeighbourState::Permanent {
                continue;
            }
            let mut addr = None;
            let mut mac = None;
            for attribute in &message.attributes {
                match attribute {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        addr = Some(IpAddr::V4(*a));
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        addr = Some(IpAddr::V6(*a));
                    }
                    NeighbourAttribute::LinkLocalAddress(bytes) => {
                        mac = <[u8; 6]>::try_from(bytes.as_slice()).ok();
                    }
                    _ => {}
                }
            }
            if let (Some(addr), Some(mac)) = (addr, mac) {
                found.insert(KernelNeighbour {
                    addr,
                    ifindex: message.header.ifindex,
                    mac,
                });
            }
        }
        Ok(found)
    }

    /// Removes a neighbour entry (a missing one is fine).
    pub async fn del_neighbour(&self, neighbour: KernelNeighbour) -> Result<(), NetlinkError> {
        let mut stream = self.handle.neighbours().get().execute();
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(request("listing neighbours"))?
        {
            if message.header.ifindex != neighbour.ifindex {
                continue;
            }
            let matches = message.attributes.iter().any(|attribute| match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    IpAddr::V4(*a) == neighbour.addr
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                    IpAddr::V6(*a) == neighbour.addr
                }
                _ => false,
            });
            if matches {
                return match self.handle.neighbours().del(message).execute().await {
                    Ok(()) => Ok(()),
                    Err(e) if is_not_found(&e) => Ok(()),
                    Err(e) => Err(request(format!("removing neighbour {}", neighbour.addr))(e)),
                };
            }
        }
        Ok(())
    }
}

/// The message for one of our scope-link workload routes.
fn route_message(
    route: KernelRoute,
) -> Result<rtnetlink::packet_route::route::RouteMessage, NetlinkError> {
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(route.net.addr(), route.net.prefix_len())
        .map_err(|e| NetlinkError::InvalidRoute {
            net: route.net,
            reason: e.to_string(),
        })?
        .output_interface(route.ifindex)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .build())
}

fn is_not_found(error: &rtnetlink::Error) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(message)
        if message.code.map(|c| c.get()) == Some(-libc::ENOENT) || message.code.map(|c| c.get()) == Some(-libc::ESRCH))
}

/// A stream that yields whenever an interface appears, changes or disappears, or an address
/// is added or removed (the host's addresses are `host` routes, and host endpoints may find
/// their interface by address).
pub fn link_events()
-> Result<UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>, NetlinkError> {
    let (mut connection, _handle, messages) =
        rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
    const RTMGRP_LINK: u32 = 1;
    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV6_IFADDR: u32 = 0x100;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(
            0,
            RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
        ))
        .map_err(NetlinkError::Connect)?;
    tokio::spawn(connection);
    Ok(messages)
}

/// Waits for the next link event; `None` when the stream ended.
pub async fn next_link_event(
    events: &mut UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
) -> Option<()> {
    events.next().await.map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// For the node's registration and for BGP

/// An address of an interface, with the prefix length of its subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub ifindex: u32,
    pub interface: String,
    pub net: IpNet,
}

/// The protocol number of the routes BIRD installs (`proto bird`).
pub const BIRD_ROUTE_PROTOCOL: u8 = 12;

impl Netlink {
    /// Every address of every interface, in the kernel's order (by interface, then as each
    /// interface lists them).
    pub async fn addresses(&self) -> Result<Vec<InterfaceAddress>, NetlinkError> {
        let links = self.links().await?;
        self.addresses_of(&links).await
    }

    /// Every address of every interface, named after `links` (a dump of the links taken just
    /// before: an address of an interface not among them has an empty name).
    pub async fn addresses_of(
        &self,
        links: &[LinkDetails],
    ) -> Result<Vec<InterfaceAddress>, NetlinkError> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let names: std::collections::HashMap<u32, &str> = links
            .iter()
            .map(|link| (link.ifindex, link.name.as_str()))
            .collect();
        let mut addresses = Vec::new();
        let mut stream = self.handle.address().get().execute();
        while let Some(message) = stream
            .try_next()
            .await
            .map_err(request("listing addresses"))?
        {
            // IPv4's own address is IFA_LOCAL (IFA_ADDRESS is the peer's on a point-to-point
            // link); IPv6 has IFA_ADDRESS only.
            let mut local = None;
            let mut address = None;
            for attribute in &message.attributes {
                match attribute {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            let Some(ip) = local.or(address) else {
                continue;
            };
            let Ok(net) = IpNet::new(ip, message.header.prefix_len) else {
                continue;
            };
            let ifindex = message.header.index;
            addresses.push(InterfaceAddress {
                ifindex,
                interface: names
                    .get(&ifindex)
                    .map(|name| (*name).to_owned())
                    .unwrap_or_default(),
                net,
            });
        }
        Ok(addresses)
    }

    /// Removes every route of the main table with `protocol`; returns how many went.
    pub async fn del_routes_of_protocol(&self, protocol: u8) -> Result<usize, NetlinkError> {
        let mut removed = 0;
        for version in [IpVersion::V4, IpVersion::V6] {
            let message = match version {
                IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
                IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            };
            let mut routes = Vec::new();
            let mut stream = self.handle.route().get(message).execute();
            while let Some(route) = stream.try_next().await.map_err(request("listing routes"))? {
                if u8::from(route.header.protocol) == protocol {
                    routes.push(route);
                }
            }
            for route in routes {
                match self.handle.route().del(route).execute().await {
                    Ok(()) => removed += 1,
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => {
                        return Err(request(format!("removing routes of protocol {protocol}"))(
                            e,
                        ));
                    }
                }
            }
        }
        Ok(removed)
    }
}
