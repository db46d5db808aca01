//! Dataplane programming: the kernel object, its pinned maps, the program attachments and the
//! kernel routes, brought in line with the endpoints the model says this host should serve.

pub mod attach;
pub mod bpffs;
pub mod conntrack;
pub mod error;
pub mod maps;
pub mod netlink;
pub mod object;
pub mod policy;
pub mod private;

use std::collections::{BTreeMap, BTreeSet};

use aya::Ebpf;
use calico_ebpf_common::{
    EndpointInfo, RouteKind, RouteValue, SourceKeyV4, SourceKeyV6, endpoint_flags, fill_nul_padded,
    source_flags,
};
use ipnet::IpNet;

use self::{
    attach::{AttachMode, Attacher},
    bpffs::PinLayout,
    maps::{MapContents, Maps, PolicyMaps, ReconcileStats},
    netlink::{KernelNeighbour, KernelRoute, LinkDetails, Netlink},
    policy::PolicyManager,
};
pub use self::{
    error::DataplaneError,
    object::{KERNEL_OBJECT, load_object, load_object_with, load_private_object, remove_pins},
};
use crate::model::{LocalEndpoint, compile::CompiledEndpoint, rules::RuleRegistry};

/// What one [`Dataplane::apply`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Interfaces that got programs attached, with their ifindex and endpoint.
    pub attached: Vec<(String, u32, String)>,
    /// Interfaces that lost their programs.
    pub detached: Vec<String>,
    /// Endpoints whose interface does not exist (yet).
    pub waiting: Vec<(String, String)>,
    /// Map entries written and removed.
    pub map_changes: ReconcileStats,
    /// Policy generations written: endpoint, direction, policy id, entries.
    pub policies: Vec<(String, &'static str, u32, usize)>,
    /// Policy map entries of replaced generations, deleted after the switch.
    pub policy_entries_removed: usize,
    /// Policy map entries in use after this apply.
    pub policy_entries: usize,
    /// Problems with single endpoints; the others were programmed regardless.
    pub errors: Vec<String>,
}

/// The programmed dataplane of this host.
pub struct Dataplane {
    ebpf: Ebpf,
    maps: Maps,
    policy: PolicyManager,
    conntrack: conntrack::Conntrack,
    log_events: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    attacher: Attacher,
    netlink: Netlink,
    layout: PinLayout,
    /// Interfaces this agent attached to, with the ifindex it attached to.
    attached: BTreeMap<String, u32>,
    /// Neighbour entries this agent wrote.
    neighbours: BTreeSet<KernelNeighbour>,
    /// Whether pins left by an earlier agent have been looked at.
    adopted: bool,
}

impl Dataplane {
    /// Loads the programs and opens (or creates) the pinned maps.
    pub fn start(
        layout: PinLayout,
        mode: AttachMode,
        conntrack_entries: u32,
    ) -> Result<Self, DataplaneError> {
        let mut ebpf = load_object_with(&layout, conntrack_entries)?;
        let maps = Maps::from_ebpf(&mut ebpf)?;
        let policy = PolicyManager::new(PolicyMaps::from_ebpf(&mut ebpf)?);
        let conntrack = conntrack::Conntrack::from_ebpf(&mut ebpf)?;
        let log_events = maps::log_events_from_ebpf(&mut ebpf)?;
        let attacher = Attacher::load(&mut ebpf, layout.clone(), mode)?;
        let netlink = Netlink::connect()?;
        Ok(Self {
            ebpf,
            maps,
            policy,
            conntrack,
            log_events,
            attacher,
            netlink,
            layout,
            attached: BTreeMap::new(),
            neighbours: BTreeSet::new(),
            adopted: false,
        })
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    pub fn mode(&self) -> AttachMode {
        self.attacher.mode()
    }

    /// The ring buffer of Log events, for the agent to read (once).
    pub fn take_log_events(&mut self) -> Option<aya::maps::RingBuf<aya::maps::MapData>> {
        self.log_events.take()
    }

    /// Removes expired conntrack entries; returns how many went.
    pub fn expire_conntrack(&mut self) -> Result<usize, DataplaneError> {
        Ok(self.conntrack.expire()?)
    }

    /// The interfaces this agent has programs attached to, with their ifindex.
    pub fn attached(&self) -> &BTreeMap<String, u32> {
        &self.attached
    }

    /// Brings the dataplane in line with `desired` (keyed by interface name) and the endpoints'
    /// compiled policies (keyed by endpoint; an endpoint missing there keeps the policy it has,
    /// or, having none, gets no endpoint entry, so its traffic is dropped). Maps are written
    /// before programs are attached to a new interface, and programs are detached before an
    /// interface's entries are removed, so a program never runs against a half-written
    /// endpoint. New policy generations are complete before endpoint entries switch to them.
    pub async fn apply(
        &mut self,
        desired: &BTreeMap<String, LocalEndpoint>,
        compiled: &BTreeMap<String, CompiledEndpoint>,
        registry: &mut RuleRegistry,
    ) -> Result<ApplyReport, DataplaneError> {
        let mut report = ApplyReport::default();
        let links: BTreeMap<String, LinkDetails> = self
            .netlink
            .links()
            .await?
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect();

        let mut present: BTreeMap<&str, (&LocalEndpoint, &LinkDetails)> = BTreeMap::new();
        for (ifname, endpoint) in desired {
            match links.get(ifname) {
                Some(link) => {
                    present.insert(ifname, (endpoint, link));
                }
                None => report.waiting.push((ifname.clone(), endpoint.key.clone())),
            }
        }

        // Detach from interfaces that are no longer wanted or were recreated under another
        // ifindex, and, on the first pass, from whatever an earlier agent left attached.
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
                report.errors.push(e.to_string());
            }
            self.attached.remove(&ifname);
            report.detached.push(ifname);
        }

        let wanted: BTreeSet<String> = present.values().map(|(e, _)| e.key.clone()).collect();
        let staged = self.policy.stage(&wanted, compiled)?;
        report.policies = staged.written;
        report.errors.extend(staged.errors);
        let programmed = present.values().copied().filter_map(|(endpoint, link)| {
            match self.policy.policy_ids(&endpoint.key) {
                Some(ids) => Some((endpoint, link, ids)),
                None => {
                    report.errors.push(format!(
                        "endpoint {}: no policy could be programmed yet; its traffic is dropped",
                        endpoint.key
                    ));
                    None
                }
            }
        });
        let contents = map_contents(programmed.collect::<Vec<_>>());
        report.map_changes = self.maps.reconcile(&contents)?;
        report.policy_entries_removed = self.policy.retire()?;
        self.policy.sync_rules(registry, compiled)?;
        report.policy_entries = self.policy.entries();

        for (ifname, (endpoint, link)) in &present {
            if self.attached.get(*ifname) == Some(&link.ifindex) {
                continue;
            }
            match self.attacher.attach(&mut self.ebpf, ifname, link.ifindex) {
                Ok(()) => {
                    self.attached.insert((*ifname).to_owned(), link.ifindex);
                    report.attached.push((
                        (*ifname).to_owned(),
                        link.ifindex,
                        endpoint.key.clone(),
                    ));
                }
                Err(e) => report
                    .errors
                    .push(format!("endpoint {}: {e}", endpoint.key)),
            }
        }
        self.adopted = true;

        self.sync_kernel(&present, &mut report).await?;
        Ok(report)
    }

    /// Kernel routes and neighbour entries for the present endpoints.
    async fn sync_kernel(
        &mut self,
        present: &BTreeMap<&str, (&LocalEndpoint, &LinkDetails)>,
        report: &mut ApplyReport,
    ) -> Result<(), DataplaneError> {
        let mut routes = BTreeSet::new();
        let mut neighbours = BTreeSet::new();
        for (endpoint, link) in present.values() {
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
                report.errors.push(e.to_string());
            }
        }
        for route in routes.difference(&present) {
            if let Err(e) = self.netlink.add_route(*route).await {
                report.errors.push(e.to_string());
            }
        }
        for neighbour in self.neighbours.difference(&neighbours) {
            if let Err(e) = self.netlink.del_neighbour(*neighbour).await {
                report.errors.push(e.to_string());
            }
        }
        for neighbour in neighbours.difference(&self.neighbours) {
            if let Err(e) = self.netlink.add_neighbour(*neighbour).await {
                report.errors.push(e.to_string());
            }
        }
        self.neighbours = neighbours;
        Ok(())
    }

    /// Detaches every program and removes every pin and kernel route of this agent.
    pub async fn teardown(mut self) -> Result<(), DataplaneError> {
        for ifname in std::mem::take(&mut self.attached).into_keys() {
            self.attacher.detach(&ifname)?;
        }
        for route in self.netlink.our_routes().await? {
            self.netlink.del_route(route).await?;
        }
        for neighbour in std::mem::take(&mut self.neighbours) {
            self.netlink.del_neighbour(neighbour).await?;
        }
        let layout = self.layout.clone();
        drop(self);
        remove_pins(&layout)?;
        Ok(())
    }
}

/// The map contents that serve `endpoints`, each with its (ingress, egress) policy ids.
pub fn map_contents<'a>(
    endpoints: impl IntoIterator<Item = (&'a LocalEndpoint, &'a LinkDetails, (u32, u32))>,
) -> MapContents {
    let mut contents = MapContents::default();
    for (endpoint, link, (ingress_policy, egress_policy)) in endpoints {
        let ifindex = link.ifindex;
        let mac = endpoint.mac.unwrap_or([0; 6]);
        contents.endpoints.insert(
            ifindex,
            EndpointInfo {
                flags: endpoint_flags::WORKLOAD,
                ingress_policy,
                egress_policy,
                _pad: 0,
                mac,
                host_mac: link.mac,
                ifname: fill_nul_padded(link.name.as_bytes()),
                name: fill_nul_padded(endpoint.key.as_bytes()),
            },
        );
        let route = RouteValue {
            kind: RouteKind::LocalWorkload as u32,
            ifindex,
            mac,
            host_mac: link.mac,
            next_hop: [0; 16],
        };
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
    contents
}

#[cfg(test)]
mod tests {
    use calico_ebpf_common::source_flags::{ALLOWED_SPOOF, OWN_ADDRESS};

    use super::*;

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
            },
            LinkDetails {
                ifindex: 7,
                name: "cali0123456789a".into(),
                mac: [0xee; 6],
            },
        )
    }

    #[test]
    fn map_contents_encode_routes_sources_and_endpoint() {
        let (endpoint, link) = endpoint();
        let contents = map_contents([(&endpoint, &link, (1, 2))]);

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
    fn an_endpoint_without_mac_gets_a_zero_mac() {
        let (mut endpoint, link) = endpoint();
        endpoint.mac = None;
        let contents = map_contents([(&endpoint, &link, (1, 2))]);
        assert_eq!(contents.routes_v4[&(32, [198, 18, 0, 11])].mac, [0; 6]);
    }
}
