//! The endpoint manager: desired workload endpoints in; their interfaces' program attachments,
//! endpoint map entries, allowed-source entries and counters entries out. The host's data
//! interfaces (those that match `--data-interfaces`) get their programs here too.
//!
//! It finds which endpoints' interfaces exist and which interfaces are data interfaces,
//! detaches the programs from interfaces that are no longer wanted (and, on its first pass, from
//! whatever an earlier agent left attached), turns on the forwarding sysctls a new interface
//! needs ([`super::sysctl`]) and attaches the programs to it. The attachments are ordered around the map writes by the caller:
//! programs are detached before an interface's entries are removed and attached only after they
//! are written, so a program never runs against a half-written endpoint. The entries themselves
//! are written by the policy switch, because an endpoint entry names the policy generation in
//! force (see [`super::switch::switch_policy`]); each endpoint entry brings a counters entry
//! along (see [`super::maps::Maps::reconcile`]).

use std::collections::{BTreeMap, BTreeSet};

use aya::Ebpf;
use calico_ebpf_common::{
    EndpointInfo, FloatingIpKey, FloatingIpValue, SourceKeyV4, SourceKeyV6, endpoint_flags,
    fill_nul_padded, floating_ip_direction, source_flags,
};
use ipnet::IpNet;
use regex::Regex;

use super::{
    Verification,
    attach::{self, AttachError, AttachMode, Attacher, Role},
    bpffs::PinLayout,
    maps::{self, MapContents},
    netlink::{InterfaceAddress, LinkDetails, Netlink, NetlinkError},
    sysctl::Forwarding,
};
use crate::model::LocalEndpoint;

/// The desired endpoints whose interface exists, keyed by interface name, each with what the
/// kernel says about its interface.
pub type Present<'a> = BTreeMap<&'a str, (&'a LocalEndpoint, LinkDetails)>;

/// The host's data interfaces, keyed by name.
pub type DataInterfaces = BTreeMap<String, LinkDetails>;

/// The interfaces of the desired endpoints, and the data interfaces, as the kernel has them
/// now.
#[derive(Debug, Default)]
pub struct Interfaces<'a> {
    pub present: Present<'a>,
    /// Endpoints whose interface does not exist (yet): interface name, endpoint.
    pub waiting: Vec<(String, String)>,
    /// Interfaces that match the data-interface pattern and belong to no endpoint.
    pub data: DataInterfaces,
    /// Interfaces whose name starts with a workload prefix (Felix's `InterfacePrefix`) and that
    /// belong to no endpoint: a workload interface the datastore does not know (yet, or any
    /// more). They get the workload programs without an endpoint entry, which drop everything
    /// to and from them, as Felix drops traffic of unknown workload interfaces.
    pub unknown: DataInterfaces,
    /// Every address of the host, by interface name.
    pub addresses: BTreeMap<String, Vec<std::net::IpAddr>>,
    /// Whether the kernel was asked for them in this call (else they are the last listing's).
    pub listed: bool,
}

/// The host's interfaces and addresses as the kernel listed them last.
#[derive(Debug)]
struct Listed {
    links: Vec<LinkDetails>,
    addresses: Vec<InterfaceAddress>,
}

/// What [`EndpointManager::detach_stale`] did.
#[derive(Debug, Default)]
pub struct Detached {
    /// Interfaces that lost their programs.
    pub interfaces: Vec<String>,
    /// Problems with single interfaces; the others were detached regardless.
    pub errors: Vec<String>,
}

/// What [`EndpointManager::attach`] did.
#[derive(Debug, Default)]
pub struct Attached {
    /// Interfaces that got programs attached, with their ifindex and endpoint.
    pub interfaces: Vec<(String, u32, String)>,
    /// Data interfaces that got programs attached, with their ifindex.
    pub data: Vec<(String, u32)>,
    /// Unknown workload interfaces that got programs attached (their traffic is dropped), with
    /// their ifindex.
    pub unknown: Vec<(String, u32)>,
    /// Problems with single endpoints; the others were attached regardless.
    pub errors: Vec<String>,
}

/// Keeps the programs attached to exactly the interfaces of the present endpoints and the data
/// interfaces.
pub struct EndpointManager {
    attacher: Attacher,
    netlink: Netlink,
    layout: PinLayout,
    /// Which interfaces are data interfaces.
    data_pattern: Regex,
    /// The name prefixes of workload interfaces (Felix's `InterfacePrefix`).
    workload_prefixes: Vec<String>,
    forwarding: Forwarding,
    /// Interfaces this agent attached to, with the ifindex it attached to and their role.
    attached: BTreeMap<String, (u32, Role)>,
    /// Those of them attached as unknown workload interfaces (no endpoint names them): when an
    /// endpoint comes to one, its programs stay and it is reported attached for the endpoint.
    unknown: BTreeSet<String>,
    /// Whether pins left by an earlier agent have been looked at.
    adopted: bool,
    /// The interfaces and addresses listed last, until an event says they changed.
    listed: Option<Listed>,
}

impl EndpointManager {
    pub fn new(
        attacher: Attacher,
        netlink: Netlink,
        layout: PinLayout,
        data_pattern: Regex,
        workload_prefixes: Vec<String>,
        forwarding: Forwarding,
    ) -> Self {
        Self {
            attacher,
            netlink,
            layout,
            data_pattern,
            workload_prefixes,
            forwarding,
            attached: BTreeMap::new(),
            unknown: BTreeSet::new(),
            adopted: false,
            listed: None,
        }
    }

    pub fn mode(&self) -> AttachMode {
        self.attacher.mode()
    }

    /// The interfaces this agent has programs attached to, with their ifindex and role.
    pub fn attached(&self) -> &BTreeMap<String, (u32, Role)> {
        &self.attached
    }

    /// Forgets the interfaces and addresses listed last: a link or address event says they
    /// changed, so the next [`Self::interfaces`] lists them again.
    pub fn interfaces_changed(&mut self) {
        self.listed = None;
    }

    /// Splits `desired` (keyed by interface name) into the endpoints whose interface exists and
    /// those still waiting for it, and finds the data interfaces. The kernel's interfaces and
    /// addresses are listed (one dump of each) when `verification` is full, when an event said
    /// they changed ([`Self::interfaces_changed`]) or on the first call; otherwise the last
    /// listing is used again, since nothing about them changes without an event.
    pub async fn interfaces<'a>(
        &mut self,
        desired: &'a BTreeMap<String, LocalEndpoint>,
        verification: Verification,
    ) -> Result<Interfaces<'a>, NetlinkError> {
        let mut interfaces = Interfaces::default();
        let listed: &Listed = match &mut self.listed {
            Some(listed) if verification == Verification::Incremental => listed,
            slot => {
                let links = self.netlink.links().await?;
                let addresses = self.netlink.addresses_of(&links).await?;
                interfaces.listed = true;
                slot.insert(Listed { links, addresses })
            }
        };
        let mut links: BTreeMap<&str, &LinkDetails> =
            listed.links.iter().map(|l| (l.name.as_str(), l)).collect();
        for (ifname, endpoint) in desired {
            match links.remove(ifname.as_str()) {
                Some(link) => {
                    interfaces.present.insert(ifname, (endpoint, link.clone()));
                }
                None => interfaces
                    .waiting
                    .push((ifname.clone(), endpoint.key.clone())),
            }
        }
        for (name, link) in links {
            if is_data_interface(&self.data_pattern, name) {
                interfaces.data.insert(name.to_owned(), link.clone());
            } else if is_workload_interface(&self.workload_prefixes, name) {
                interfaces.unknown.insert(name.to_owned(), link.clone());
            }
        }
        for address in &listed.addresses {
            interfaces
                .addresses
                .entry(address.interface.clone())
                .or_default()
                .push(address.net.addr());
        }
        Ok(interfaces)
    }

    /// Detaches from interfaces that are no longer wanted, were recreated under another ifindex
    /// or changed role, and, on the first pass, from whatever an earlier agent left attached. A
    /// data interface that gains or loses its host endpoint (`host_endpoints`, by interface
    /// name) keeps its programs until [`Self::attach`] swaps them in place.
    pub fn detach_stale(
        &mut self,
        present: &Present<'_>,
        data: &DataInterfaces,
        unknown: &DataInterfaces,
        host_endpoints: &BTreeSet<String>,
    ) -> Result<Detached, AttachError> {
        let mut detached = Detached::default();
        let wanted = |ifname: &str| -> Option<(u32, Role)> {
            match (present.get(ifname), data.get(ifname), unknown.get(ifname)) {
                (Some((_, link)), _, _) => Some((link.ifindex, Role::Workload)),
                (None, Some(link), _) => Some((link.ifindex, data_role(host_endpoints, ifname))),
                (None, None, Some(link)) => Some((link.ifindex, Role::Workload)),
                (None, None, None) => None,
            }
        };
        let mut stale: BTreeSet<String> = self
            .attached
            .iter()
            .filter(|(ifname, attached)| {
                let (ifindex, role) = **attached;
                match wanted(ifname) {
                    None => true,
                    Some((wanted_ifindex, wanted_role)) => {
                        wanted_ifindex != ifindex
                            || (wanted_role != role && !(wanted_role.is_data() && role.is_data()))
                    }
                }
            })
            .map(|(ifname, _)| ifname.clone())
            .collect();
        if !self.adopted {
            for (ifname, _) in attach::pinned_links(&self.layout)? {
                if wanted(&ifname).is_none() {
                    stale.insert(ifname);
                }
            }
        }
        for ifname in stale {
            if let Err(e) = self.attacher.detach(&ifname) {
                detached.errors.push(e.to_string());
            }
            self.attached.remove(&ifname);
            self.unknown.remove(&ifname);
            detached.interfaces.push(ifname);
        }
        Ok(detached)
    }

    /// Attaches the programs to every present interface and data interface that does not have
    /// them yet (a data interface with a host endpoint, named in `host_endpoints`, gets the host
    /// endpoint programs), after turning on its forwarding sysctls. Call once the endpoints'
    /// entries are written.
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        present: &Present<'_>,
        data: &DataInterfaces,
        unknown: &DataInterfaces,
        host_endpoints: &BTreeSet<String>,
    ) -> Attached {
        let mut attached = Attached::default();
        for (ifname, (endpoint, link)) in present {
            let attach = self.attach_one(ebpf, ifname, link.ifindex, Role::Workload);
            // Programs attached while no endpoint named the interface serve the endpoint now.
            let was_unknown = self.unknown.remove(*ifname);
            match attach {
                Ok(false) if !was_unknown => {}
                Ok(_) => attached.interfaces.push((
                    (*ifname).to_owned(),
                    link.ifindex,
                    endpoint.key.clone(),
                )),
                Err(e) => attached
                    .errors
                    .push(format!("endpoint {}: {e}", endpoint.key)),
            }
        }
        for (ifname, link) in data {
            let role = data_role(host_endpoints, ifname);
            match self.attach_one(ebpf, ifname, link.ifindex, role) {
                Ok(false) => {}
                Ok(true) => attached.data.push((ifname.clone(), link.ifindex)),
                Err(e) => attached
                    .errors
                    .push(format!("data interface {ifname}: {e}")),
            }
        }
        for (ifname, link) in unknown {
            match self.attach_one(ebpf, ifname, link.ifindex, Role::Workload) {
                Ok(false) => {}
                Ok(true) => {
                    self.unknown.insert(ifname.clone());
                    attached.unknown.push((ifname.clone(), link.ifindex));
                }
                Err(e) => attached
                    .errors
                    .push(format!("unknown workload interface {ifname}: {e}")),
            }
        }
        self.adopted = true;
        attached
    }

    /// Turns on forwarding for `ifname` and attaches its programs, unless they are attached
    /// already; whether it attached.
    fn attach_one(
        &mut self,
        ebpf: &mut Ebpf,
        ifname: &str,
        ifindex: u32,
        role: Role,
    ) -> Result<bool, String> {
        if self.attached.get(ifname) == Some(&(ifindex, role)) {
            return Ok(false);
        }
        self.forwarding
            .enable(ifname, role)
            .map_err(|e| e.to_string())?;
        self.attacher
            .attach(ebpf, ifname, ifindex, role)
            .map_err(|e| e.to_string())?;
        self.attached.insert(ifname.to_owned(), (ifindex, role));
        Ok(true)
    }

    /// Detaches the programs from every interface this agent attached to.
    pub fn detach_all(&mut self) -> Result<(), AttachError> {
        self.unknown.clear();
        for ifname in std::mem::take(&mut self.attached).into_keys() {
            self.attacher.detach(&ifname)?;
        }
        Ok(())
    }
}

/// The role of the data interface `ifname`: with a host endpoint or without.
fn data_role(host_endpoints: &BTreeSet<String>, ifname: &str) -> Role {
    if host_endpoints.contains(ifname) {
        Role::HostEndpoint
    } else {
        Role::Data
    }
}

/// Whether the interface `name` is a data interface: one the pattern matches, other than the
/// loopback.
pub fn is_data_interface(pattern: &Regex, name: &str) -> bool {
    name != "lo" && pattern.is_match(name)
}

/// Whether `name` is a workload interface by its name: it starts with one of `prefixes`
/// (Felix's `InterfacePrefix`).
pub fn is_workload_interface(prefixes: &[String], name: &str) -> bool {
    prefixes
        .iter()
        .any(|prefix| !prefix.is_empty() && name.starts_with(prefix.as_str()))
}

/// The address this host answers DHCP as for `endpoint` on `link`: only a tap (a VM) with an
/// IPv4 address is served, as its `ipv4Gateway`, else as `169.254.1.1` (see
/// [`crate::dhcp`]).
pub fn dhcp_server(endpoint: &LocalEndpoint, link: &LinkDetails) -> Option<std::net::Ipv4Addr> {
    if !link.tap || !endpoint.networks.iter().any(|n| matches!(n, IpNet::V4(_))) {
        return None;
    }
    Some(
        endpoint
            .ipv4_gateway
            .unwrap_or(std::net::Ipv4Addr::from(calico_ebpf_common::GATEWAY_V4)),
    )
}

/// What the DHCP server needs of `endpoint` on `link`, when it serves it (a tap with an IPv4
/// address).
pub fn dhcp_client(endpoint: &LocalEndpoint, link: &LinkDetails) -> Option<crate::dhcp::Client> {
    dhcp_server(endpoint, link)?;
    let address = endpoint.networks.iter().find_map(|net| match net {
        IpNet::V4(net) => Some(net.addr()),
        IpNet::V6(_) => None,
    })?;
    Some(crate::dhcp::Client {
        ifindex: link.ifindex,
        endpoint: endpoint.key.clone(),
        mac: endpoint.mac,
        address,
        gateway: endpoint.ipv4_gateway,
    })
}

/// The floating IPs of `endpoint` the programs translate: IPv4 (internal, external) pairs.
pub fn floating_ips(endpoint: &LocalEndpoint) -> Vec<(std::net::Ipv4Addr, std::net::Ipv4Addr)> {
    endpoint
        .ip_nats
        .iter()
        .filter_map(|nat| match nat {
            (std::net::IpAddr::V4(internal), std::net::IpAddr::V4(external)) => {
                Some((*internal, *external))
            }
            _ => None,
        })
        .collect()
}

/// Adds to `contents` the floating IP entries of `endpoint` on `link`: external to internal
/// (and the interface), internal to external.
pub fn floating_ip_entries(
    contents: &mut MapContents,
    endpoint: &LocalEndpoint,
    link: &LinkDetails,
) {
    let bytes = |addr: std::net::Ipv4Addr| {
        let mut bytes = [0; 16];
        bytes[..4].copy_from_slice(&addr.octets());
        bytes
    };
    for (internal, external) in floating_ips(endpoint) {
        for (from, direction, to) in [
            (external, floating_ip_direction::EXTERNAL, internal),
            (internal, floating_ip_direction::INTERNAL, external),
        ] {
            contents.floating_ips.insert(
                FloatingIpKey {
                    addr: bytes(from),
                    family: 4,
                    direction,
                    _pad: [0; 2],
                },
                FloatingIpValue {
                    addr: bytes(to),
                    ifindex: link.ifindex,
                    _pad: 0,
                },
            );
        }
    }
}

/// Adds to `contents` the entries that serve `endpoint` on `link` with the policy generations
/// `(ingress_policy, egress_policy)`: its endpoint entry, keyed by ifindex, and the sources it
/// may send from (its own addresses and its allowed-spoof prefixes).
pub fn endpoint_entries(
    contents: &mut MapContents,
    endpoint: &LocalEndpoint,
    link: &LinkDetails,
    (ingress_policy, egress_policy): (u32, u32),
) {
    let ifindex = link.ifindex;
    let mut flags = endpoint_flags::WORKLOAD;
    if link.tap {
        flags |= endpoint_flags::TAP;
    }
    if !floating_ips(endpoint).is_empty() {
        flags |= endpoint_flags::FLOATING_IPS;
    }
    contents.endpoints.insert(
        ifindex,
        EndpointInfo {
            flags,
            ingress_policy,
            egress_policy,
            dhcp_server: dhcp_server(endpoint, link).map_or([0; 4], |a| a.octets()),
            mac: endpoint.mac.unwrap_or([0; 6]),
            host_mac: link.mac,
            ifname: fill_nul_padded(link.name.as_bytes()),
            name: fill_nul_padded(endpoint.key.as_bytes()),
        },
    );
    let sources = endpoint
        .networks
        .iter()
        .map(|net| (net, source_flags::OWN_ADDRESS))
        .chain(
            endpoint
                .allowed_spoof
                .iter()
                .map(|net| (net, source_flags::ALLOWED_SPOOF)),
        );
    for (net, flag) in sources {
        let len = 32 + u32::from(net.prefix_len());
        match net {
            IpNet::V4(net) => {
                let key = SourceKeyV4 {
                    ifindex,
                    addr: net.network().octets(),
                };
                *contents
                    .sources_v4
                    .entry((len, maps::source_v4_bytes(&key)))
                    .or_default() |= flag;
            }
            IpNet::V6(net) => {
                let key = SourceKeyV6 {
                    ifindex,
                    addr: net.network().octets(),
                };
                *contents
                    .sources_v6
                    .entry((len, maps::source_v6_bytes(&key)))
                    .or_default() |= flag;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::felix_settings::DEFAULT_DATA_INTERFACES;

    #[test]
    fn calicos_default_pattern_matches_data_interfaces_only() {
        let pattern = Regex::new(DEFAULT_DATA_INTERFACES).expect("the default pattern compiles");
        for name in [
            "eth0",
            "ens3",
            "enp0s31f6",
            "eno1",
            "enx001122334455",
            "bond0",
            "wlan0",
            "wlp2s0",
            "ibp1s0",
        ] {
            assert!(
                is_data_interface(&pattern, name),
                "{name} is a data interface"
            );
        }
        for name in [
            "lo",
            "cali0123456789a",
            "tap0",
            "docker0",
            "vxlan.calico",
            "tunl0",
            "veth1",
            "br0",
            "en0",
            "ib0",
        ] {
            assert!(
                !is_data_interface(&pattern, name),
                "{name} is not a data interface"
            );
        }
    }
}
