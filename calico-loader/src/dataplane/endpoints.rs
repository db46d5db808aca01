//! The endpoint manager: desired workload endpoints in; their interfaces' program attachments,
//! endpoint map entries, allowed-source entries and counters entries out.
//!
//! It finds which endpoints' interfaces exist, detaches the programs from interfaces that are no
//! longer wanted (and, on its first pass, from whatever an earlier agent left attached), and
//! attaches them to new ones. The attachments are ordered around the map writes by the caller:
//! programs are detached before an interface's entries are removed and attached only after they
//! are written, so a program never runs against a half-written endpoint. The entries themselves
//! are written by the policy switch, because an endpoint entry names the policy generation in
//! force (see [`super::switch::switch_policy`]); each endpoint entry brings a counters entry
//! along (see [`super::maps::Maps::reconcile`]).

use std::collections::{BTreeMap, BTreeSet};

use aya::Ebpf;
use calico_ebpf_common::{
    EndpointInfo, SourceKeyV4, SourceKeyV6, endpoint_flags, fill_nul_padded, source_flags,
};
use ipnet::IpNet;

use super::{
    attach::{self, AttachError, AttachMode, Attacher},
    bpffs::PinLayout,
    maps::{self, MapContents},
    netlink::{LinkDetails, Netlink, NetlinkError},
};
use crate::model::LocalEndpoint;

/// The desired endpoints whose interface exists, keyed by interface name, each with what the
/// kernel says about its interface.
pub type Present<'a> = BTreeMap<&'a str, (&'a LocalEndpoint, LinkDetails)>;

/// The interfaces of the desired endpoints, as the kernel has them now.
#[derive(Debug, Default)]
pub struct Interfaces<'a> {
    pub present: Present<'a>,
    /// Endpoints whose interface does not exist (yet): interface name, endpoint.
    pub waiting: Vec<(String, String)>,
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
    /// Problems with single endpoints; the others were attached regardless.
    pub errors: Vec<String>,
}

/// Keeps the programs attached to exactly the interfaces of the present endpoints.
pub struct EndpointManager {
    attacher: Attacher,
    netlink: Netlink,
    layout: PinLayout,
    /// Interfaces this agent attached to, with the ifindex it attached to.
    attached: BTreeMap<String, u32>,
    /// Whether pins left by an earlier agent have been looked at.
    adopted: bool,
}

impl EndpointManager {
    pub fn new(attacher: Attacher, netlink: Netlink, layout: PinLayout) -> Self {
        Self {
            attacher,
            netlink,
            layout,
            attached: BTreeMap::new(),
            adopted: false,
        }
    }

    pub fn mode(&self) -> AttachMode {
        self.attacher.mode()
    }

    /// The interfaces this agent has programs attached to, with their ifindex.
    pub fn attached(&self) -> &BTreeMap<String, u32> {
        &self.attached
    }

    /// Splits `desired` (keyed by interface name) into the endpoints whose interface exists and
    /// those still waiting for it.
    pub async fn interfaces<'a>(
        &self,
        desired: &'a BTreeMap<String, LocalEndpoint>,
    ) -> Result<Interfaces<'a>, NetlinkError> {
        let mut links: BTreeMap<String, LinkDetails> = self
            .netlink
            .links()
            .await?
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect();
        let mut interfaces = Interfaces::default();
        for (ifname, endpoint) in desired {
            match links.remove(ifname) {
                Some(link) => {
                    interfaces.present.insert(ifname, (endpoint, link));
                }
                None => interfaces
                    .waiting
                    .push((ifname.clone(), endpoint.key.clone())),
            }
        }
        Ok(interfaces)
    }

    /// Detaches from interfaces that are no longer wanted or were recreated under another
    /// ifindex, and, on the first pass, from whatever an earlier agent left attached.
    pub fn detach_stale(&mut self, present: &Present<'_>) -> Result<Detached, AttachError> {
        let mut detached = Detached::default();
        let mut stale: BTreeSet<String> = self
            .attached
            .iter()
            .filter(|(ifname, ifindex)| {
                present
                    .get(ifname.as_str())
                    .is_none_or(|(_, link)| link.ifindex != **ifindex)
            })
            .map(|(ifname, _)| ifname.clone())
            .collect();
        if !self.adopted {
            for (ifname, _) in attach::pinned_links(&self.layout)? {
                if !present.contains_key(ifname.as_str()) {
                    stale.insert(ifname);
                }
            }
        }
        for ifname in stale {
            if let Err(e) = self.attacher.detach(&ifname) {
                detached.errors.push(e.to_string());
            }
            self.attached.remove(&ifname);
            detached.interfaces.push(ifname);
        }
        Ok(detached)
    }

    /// Attaches the programs to every present interface that does not have them yet. Call once
    /// the endpoints' entries are written.
    pub fn attach(&mut self, ebpf: &mut Ebpf, present: &Present<'_>) -> Attached {
        let mut attached = Attached::default();
        for (ifname, (endpoint, link)) in present {
            if self.attached.get(*ifname) == Some(&link.ifindex) {
                continue;
            }
            match self.attacher.attach(ebpf, ifname, link.ifindex) {
                Ok(()) => {
                    self.attached.insert((*ifname).to_owned(), link.ifindex);
                    attached.interfaces.push((
                        (*ifname).to_owned(),
                        link.ifindex,
                        endpoint.key.clone(),
                    ));
                }
                Err(e) => attached
                    .errors
                    .push(format!("endpoint {}: {e}", endpoint.key)),
            }
        }
        self.adopted = true;
        attached
    }

    /// Detaches the programs from every interface this agent attached to.
    pub fn detach_all(&mut self) -> Result<(), AttachError> {
        for ifname in std::mem::take(&mut self.attached).into_keys() {
            self.attacher.detach(&ifname)?;
        }
        Ok(())
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
    contents.endpoints.insert(
        ifindex,
        EndpointInfo {
            flags: endpoint_flags::WORKLOAD,
            ingress_policy,
            egress_policy,
            _pad: 0,
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
