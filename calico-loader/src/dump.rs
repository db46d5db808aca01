//! `calico-loader dump`: the pinned maps as readable tables or JSON. It reads only the pins, so
//! it works from any network namespace, whether or not an agent is running.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use calico_ebpf_common::{
    DropReason, EndpointInfo, NodeInfo, RouteKind, RouteValue, UNKNOWN_INTERFACE_COUNTERS,
};
use serde::Serialize;

use crate::dataplane::{
    attach::{self, Hook},
    bpffs::PinLayout,
    maps::{Maps, source_v4_from_bytes, source_v6_from_bytes},
};

/// A route as `dump routes` shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RouteRow {
    pub prefix: String,
    pub kind: String,
    pub ifindex: u32,
    pub interface: String,
    pub endpoint: String,
    pub mac: String,
    pub host_mac: String,
    /// The node a remote route leads to (empty for local routes).
    pub node: String,
    /// A remote route's next hop, when it has one ("-" otherwise).
    pub next_hop: String,
}

/// What an endpoint row is: a workload's interface, or a data interface a host endpoint covers.
pub const WORKLOAD: &str = "workload";
pub const HOST_ENDPOINT: &str = "host-endpoint";

/// An endpoint as `dump endpoints` shows it: a workload endpoint, or a host endpoint on one
/// of the data interfaces it covers.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct EndpointRow {
    /// [`WORKLOAD`] or [`HOST_ENDPOINT`].
    pub kind: &'static str,
    pub ifindex: u32,
    pub interface: String,
    pub name: String,
    pub mac: String,
    pub host_mac: String,
    pub addresses: Vec<String>,
    pub allowed_spoof: Vec<String>,
    /// The interface is a tap (a VM's).
    pub tap: bool,
    /// The address the agent answers DHCP as for the VM, when it serves it.
    pub dhcp_server: Option<String>,
    pub attached: bool,
    pub hooks: Vec<String>,
}

/// The counters of one endpoint (a workload's, or a host endpoint's), summed over CPUs.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum CounterRow {
    Workload(WorkloadCounterRow),
    HostEndpoint(HostEndpointCounterRow),
}

/// The counters of one host endpoint's interface, summed over CPUs. "In" and "out" are seen
/// from the host.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct HostEndpointCounterRow {
    /// [`HOST_ENDPOINT`].
    pub kind: &'static str,
    pub ifindex: u32,
    pub interface: String,
    pub name: String,
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
    pub to_host_packets: u64,
    pub from_host_packets: u64,
    pub forward_in_packets: u64,
    pub forward_out_packets: u64,
    /// Flows opened on a failsafe port whatever the policy said.
    pub failsafe_in: u64,
    pub failsafe_out: u64,
    /// Packets untracked (`doNotTrack`) policy let through: arriving (in XDP) and leaving.
    pub untracked_in_packets: u64,
    pub untracked_out_packets: u64,
    pub drops: BTreeMap<String, u64>,
}

/// The counters of one workload endpoint, summed over CPUs.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct WorkloadCounterRow {
    /// [`WORKLOAD`].
    pub kind: &'static str,
    pub ifindex: u32,
    pub interface: String,
    pub name: String,
    pub from_workload_packets: u64,
    pub from_workload_bytes: u64,
    pub to_workload_packets: u64,
    pub to_workload_bytes: u64,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub to_host_packets: u64,
    pub to_host_bytes: u64,
    pub neighbour_replies: u64,
    /// Forwarded to a workload of another host inside BPF.
    pub forwarded_remote_packets: u64,
    pub forwarded_remote_bytes: u64,
    /// Delivered from a data interface inside BPF (part of `to_workload_*`).
    pub from_data_interface_packets: u64,
    pub from_data_interface_bytes: u64,
    pub drops: BTreeMap<String, u64>,
}

pub fn mac_string(mac: &[u8; 6]) -> String {
    if mac == &[0; 6] {
        return "-".to_owned();
    }
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn endpoint_labels(maps: &Maps) -> anyhow::Result<BTreeMap<u32, EndpointInfo>> {
    Ok(maps.read()?.endpoints)
}

/// A route's next hop: "-" when unknown (all zeroes).
pub fn next_hop_string(family: u8, next_hop: &[u8; 16]) -> String {
    if next_hop == &[0; 16] {
        return "-".to_owned();
    }
    crate::dataplane::conntrack::key_addr(family, next_hop).to_string()
}

fn route_row(
    prefix: String,
    family: u8,
    value: &RouteValue,
    endpoints: &BTreeMap<u32, EndpointInfo>,
    nodes: &BTreeMap<u32, NodeInfo>,
) -> RouteRow {
    let kind = RouteKind::from_u32(value.kind);
    let kind_name = kind.map_or_else(
        || format!("unknown({})", value.kind),
        |k| k.as_str().to_owned(),
    );
    let local = matches!(kind, Some(RouteKind::LocalWorkload | RouteKind::FloatingIp));
    let endpoint = local.then(|| endpoints.get(&value.ifindex)).flatten();
    let node = match nodes.get(&value.node) {
        Some(node) => text(node.name_bytes()),
        None if value.node != 0 => format!("#{}", value.node),
        None => String::new(),
    };
    RouteRow {
        prefix,
        kind: kind_name,
        ifindex: value.ifindex,
        interface: endpoint.map(|e| text(e.ifname_bytes())).unwrap_or_default(),
        endpoint: endpoint.map(|e| text(e.name_bytes())).unwrap_or_default(),
        mac: mac_string(&value.mac),
        host_mac: mac_string(&value.host_mac),
        node,
        next_hop: next_hop_string(family, &value.next_hop),
    }
}

/// Every route, IPv4 then IPv6.
pub fn routes(layout: &PinLayout) -> anyhow::Result<Vec<RouteRow>> {
    let maps = Maps::from_pins(layout)?;
    let contents = maps.read()?;
    let mut rows = Vec::new();
    for ((len, addr), value) in &contents.routes_v4 {
        rows.push(route_row(
            format!("{}/{len}", Ipv4Addr::from(*addr)),
            4,
            value,
            &contents.endpoints,
            &contents.nodes,
        ));
    }
    for ((len, addr), value) in &contents.routes_v6 {
        rows.push(route_row(
            format!("{}/{len}", Ipv6Addr::from(*addr)),
            6,
            value,
            &contents.endpoints,
            &contents.nodes,
        ));
    }
    Ok(rows)
}

/// A floating IP as `dump floating-ips` shows it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FloatingIpRow {
    pub external: String,
    pub internal: String,
    pub ifindex: u32,
    pub interface: String,
    pub endpoint: String,
}

/// What `dump floating-ips` shows: the mappings, and the packets translated (all floating
/// IPs, summed over CPUs).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FloatingIps {
    pub mappings: Vec<FloatingIpRow>,
    /// Packets whose destination went from an external address to its internal one.
    pub dnat_packets: u64,
    /// Packets whose source went from an internal address to its external one.
    pub snat_packets: u64,
}

/// Every floating IP (from its external-address entry), and the translation counters.
pub fn floating_ips(layout: &PinLayout) -> anyhow::Result<FloatingIps> {
    let maps = Maps::from_pins(layout)?;
    let contents = maps.read()?;
    let mut mappings = Vec::new();
    for (key, value) in &contents.floating_ips {
        if key.direction != calico_ebpf_common::floating_ip_direction::EXTERNAL {
            continue;
        }
        let endpoint = contents.endpoints.get(&value.ifindex);
        mappings.push(FloatingIpRow {
            external: crate::dataplane::conntrack::key_addr(key.family, &key.addr).to_string(),
            internal: crate::dataplane::conntrack::key_addr(key.family, &value.addr).to_string(),
            ifindex: value.ifindex,
            interface: endpoint.map(|e| text(e.ifname_bytes())).unwrap_or_default(),
            endpoint: endpoint.map(|e| text(e.name_bytes())).unwrap_or_default(),
        });
    }
    let counters = crate::dataplane::maps::floating_ip_counters(layout)?;
    Ok(FloatingIps {
        mappings,
        dnat_packets: counters.dnat_packets,
        snat_packets: counters.snat_packets,
    })
}

pub fn floating_ips_table(dump: &FloatingIps) -> String {
    let cells: Vec<Vec<String>> = dump
        .mappings
        .iter()
        .map(|r| {
            vec![
                r.external.clone(),
                r.internal.clone(),
                r.interface.clone(),
                r.ifindex.to_string(),
                r.endpoint.clone(),
            ]
        })
        .collect();
    let mut out = table(
        &["EXTERNAL", "INTERNAL", "INTERFACE", "IFINDEX", "ENDPOINT"],
        &cells,
    );
    out.push_str(&format!(
        "translated packets: {} to internal (DNAT), {} to external (SNAT)\n",
        dump.dnat_packets, dump.snat_packets
    ));
    out
}

/// Every endpoint, with its addresses and whether programs are attached to its interface.
pub fn endpoints(layout: &PinLayout) -> anyhow::Result<Vec<EndpointRow>> {
    let maps = Maps::from_pins(layout)?;
    let contents = maps.read()?;
    let links: BTreeMap<String, Vec<Hook>> = attach::pinned_links(layout)?.into_iter().collect();
    let mut rows: BTreeMap<u32, EndpointRow> = contents
        .endpoints
        .iter()
        .map(|(ifindex, info)| {
            let interface = text(info.ifname_bytes());
            let hooks: Vec<String> = links
                .get(&interface)
                .map(|hooks| hooks.iter().map(|h| h.pin_suffix().to_owned()).collect())
                .unwrap_or_default();
            let row = EndpointRow {
                kind: WORKLOAD,
                ifindex: *ifindex,
                name: text(info.name_bytes()),
                mac: mac_string(&info.mac),
                host_mac: mac_string(&info.host_mac),
                addresses: Vec::new(),
                allowed_spoof: Vec::new(),
                tap: info.flags & calico_ebpf_common::endpoint_flags::TAP != 0,
                dhcp_server: (info.dhcp_server != [0; 4])
                    .then(|| std::net::Ipv4Addr::from(info.dhcp_server).to_string()),
                attached: !hooks.is_empty(),
                hooks,
                interface,
            };
            (*ifindex, row)
        })
        .collect();
    let mut add = |ifindex: u32, prefix: String, flags: u32| {
        if let Some(row) = rows.get_mut(&ifindex) {
            if flags & calico_ebpf_common::source_flags::OWN_ADDRESS != 0 {
                row.addresses.push(prefix.clone());
            }
            if flags & calico_ebpf_common::source_flags::ALLOWED_SPOOF != 0 {
                row.allowed_spoof.push(prefix);
            }
        }
    };
    for ((len, key), flags) in &contents.sources_v4 {
        let key = source_v4_from_bytes(key);
        add(
            key.ifindex,
            format!("{}/{}", Ipv4Addr::from(key.addr), len - 32),
            *flags,
        );
    }
    for ((len, key), flags) in &contents.sources_v6 {
        let key = source_v6_from_bytes(key);
        add(
            key.ifindex,
            format!("{}/{}", Ipv6Addr::from(key.addr), len - 32),
            *flags,
        );
    }
    let mut rows: Vec<EndpointRow> = rows.into_values().collect();
    for (ifindex, info) in &contents.host_endpoints {
        let interface = text(info.ifname_bytes());
        let hooks: Vec<String> = links
            .get(&interface)
            .map(|hooks| hooks.iter().map(|h| h.pin_suffix().to_owned()).collect())
            .unwrap_or_default();
        rows.push(EndpointRow {
            kind: HOST_ENDPOINT,
            ifindex: *ifindex,
            name: text(info.name_bytes()),
            mac: "-".to_owned(),
            host_mac: "-".to_owned(),
            addresses: Vec::new(),
            allowed_spoof: Vec::new(),
            tap: false,
            dhcp_server: None,
            attached: !hooks.is_empty(),
            hooks,
            interface,
        });
    }
    Ok(rows)
}

/// The counters of every endpoint.
pub fn counters(layout: &PinLayout) -> anyhow::Result<Vec<CounterRow>> {
    let maps = Maps::from_pins(layout)?;
    let endpoints = endpoint_labels(&maps)?;
    let mut rows = Vec::new();
    for (ifindex, total) in maps.counters()? {
        let info = endpoints.get(&ifindex);
        let name = if ifindex == UNKNOWN_INTERFACE_COUNTERS {
            "(interfaces without an endpoint)".to_owned()
        } else {
            info.map(|e| text(e.name_bytes())).unwrap_or_default()
        };
        rows.push(CounterRow::Workload(WorkloadCounterRow {
            kind: WORKLOAD,
            ifindex,
            interface: info.map(|e| text(e.ifname_bytes())).unwrap_or_default(),
            name,
            from_workload_packets: total.from_wl_packets,
            from_workload_bytes: total.from_wl_bytes,
            to_workload_packets: total.to_wl_packets,
            to_workload_bytes: total.to_wl_bytes,
            forwarded_packets: total.fwd_packets,
            forwarded_bytes: total.fwd_bytes,
            to_host_packets: total.to_host_packets,
            to_host_bytes: total.to_host_bytes,
            neighbour_replies: total.neighbour_replies,
            forwarded_remote_packets: total.fwd_remote_packets,
            forwarded_remote_bytes: total.fwd_remote_bytes,
            from_data_interface_packets: total.from_data_packets,
            from_data_interface_bytes: total.from_data_bytes,
            drops: drops(&total.drops),
        }));
    }
    let host_endpoints = maps.read()?.host_endpoints;
    for (ifindex, total) in maps.host_endpoint_counters()? {
        let info = host_endpoints.get(&ifindex);
        rows.push(CounterRow::HostEndpoint(HostEndpointCounterRow {
            kind: HOST_ENDPOINT,
            ifindex,
            interface: info.map(|e| text(e.ifname_bytes())).unwrap_or_default(),
            name: info.map(|e| text(e.name_bytes())).unwrap_or_default(),
            in_packets: total.in_packets,
            in_bytes: total.in_bytes,
            out_packets: total.out_packets,
            out_bytes: total.out_bytes,
            to_host_packets: total.to_host_packets,
            from_host_packets: total.from_host_packets,
            forward_in_packets: total.forward_in_packets,
            forward_out_packets: total.forward_out_packets,
            failsafe_in: total.failsafe_in,
            failsafe_out: total.failsafe_out,
            untracked_in_packets: total.untracked_in_packets,
            untracked_out_packets: total.untracked_out_packets,
            drops: drops(&total.drops),
        }));
    }
    Ok(rows)
}

/// Drop counts by reason name.
fn drops(counts: &[u64; calico_ebpf_common::DROP_REASONS]) -> BTreeMap<String, u64> {
    DropReason::ALL
        .iter()
        .map(|reason| (reason.as_str().to_owned(), counts[*reason as usize]))
        .collect()
}

/// A conntrack entry as `dump conntrack` shows it. "Opener" is the side that sent the
/// flow's first packet.
#[derive(Debug, Serialize, PartialEq)]
pub struct ConntrackRow {
    /// Whose legs the entry tracks: `workload` (workload interfaces) or `host-endpoint`.
    pub zone: &'static str,
    pub protocol: u8,
    pub opener: String,
    pub responder: String,
    pub state: String,
    pub packets_forward: u64,
    pub packets_reverse: u64,
    pub age_seconds: f64,
    pub idle_seconds: f64,
    pub expires_in_seconds: f64,
    pub egress_policy: u32,
    pub ingress_policy: u32,
    pub egress_rule: u32,
    pub ingress_rule: u32,
}

fn endpoint_string(addr: std::net::IpAddr, port: u16, proto: u8) -> String {
    let ported = matches!(proto, 6 | 17 | 132 | 136);
    match (addr, ported) {
        (std::net::IpAddr::V6(a), true) => format!("[{a}]:{port}"),
        (a, true) => format!("{a}:{port}"),
        (a, false) if port != 0 => format!("{a} id {port}"),
        (a, false) => a.to_string(),
    }
}

/// Every conntrack entry, oldest first.
pub fn conntrack(layout: &PinLayout) -> anyhow::Result<Vec<ConntrackRow>> {
    use crate::dataplane::conntrack::{self as ct, Conntrack};
    let table = Conntrack::from_pin(layout)?;
    let now = ct::monotonic_ns();
    let mut entries = table.entries();
    entries.sort_by_key(|(_, v)| v.created_ns);
    let secs = |ns: u64| ns as f64 / 1e9;
    Ok(entries
        .iter()
        .map(|(key, value)| {
            let a = endpoint_string(ct::key_addr(key.family, &key.addr_a), key.port_a, key.proto);
            let b = endpoint_string(ct::key_addr(key.family, &key.addr_b), key.port_b, key.proto);
            let (opener, responder) = if value.opener == 0 { (a, b) } else { (b, a) };
            let idle = now.saturating_sub(value.last_seen_ns);
            ConntrackRow {
                zone: if key.zone == calico_ebpf_common::conntrack_zone::HOST_ENDPOINT {
                    HOST_ENDPOINT
                } else {
                    WORKLOAD
                },
                protocol: key.proto,
                opener,
                responder,
                state: ct::state(key, value).to_owned(),
                packets_forward: value.packets_fwd,
                packets_reverse: value.packets_rev,
                age_seconds: secs(now.saturating_sub(value.created_ns)),
                idle_seconds: secs(idle),
                expires_in_seconds: secs(value.timeout_ns(key.proto).saturating_sub(idle)),
                egress_policy: value.egress_policy,
                ingress_policy: value.ingress_policy,
                egress_rule: value.egress_rule,
                ingress_rule: value.ingress_rule,
            }
        })
        .collect())
}

pub fn conntrack_table(rows: &[ConntrackRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.zone.to_owned(),
                protocol_name(r.protocol),
                r.opener.clone(),
                r.responder.clone(),
                r.state.clone(),
                format!("{}/{}", r.packets_forward, r.packets_reverse),
                format!("{:.0}s", r.idle_seconds),
                format!("{:.0}s", r.expires_in_seconds),
                format!("{}/{}", r.egress_rule, r.ingress_rule),
            ]
        })
        .collect();
    table(
        &[
            "ZONE",
            "PROTO",
            "OPENER",
            "RESPONDER",
            "STATE",
            "PKTS fwd/rev",
            "IDLE",
            "EXPIRES",
            "RULES eg/in",
        ],
        &cells,
    )
}

/// A protocol's name, or its number.
pub fn protocol_name(proto: u8) -> String {
    match proto {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        n => n.to_string(),
    }
}

/// A rule id as `dump rules` shows it, with its hits summed over CPUs.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RuleRow {
    pub id: u32,
    pub direction: String,
    pub kind: String,
    pub tier: String,
    pub policy: String,
    pub index: u32,
    pub action: String,
    pub packets: u64,
    pub bytes: u64,
}

/// What a rule id's [`RuleInfo`](calico_ebpf_common::RuleInfo) says, in words.
pub fn rule_words(info: &calico_ebpf_common::RuleInfo) -> (String, String, String) {
    use calico_ebpf_common::rule_kind;
    let kind = match info.kind {
        rule_kind::POLICY_RULE => "rule",
        rule_kind::TIER_DEFAULT => "tier-default",
        rule_kind::PROFILE_RULE => "profile-rule",
        rule_kind::NO_MATCH => "no-match",
        rule_kind::FORWARD_DEFAULT => "forward-default",
        rule_kind::UNTRACKED_DEFAULT => "untracked-default",
        _ => "unknown",
    };
    let direction = if info.direction == calico_ebpf_common::direction::INGRESS {
        "ingress"
    } else {
        "egress"
    };
    let action = match info.action {
        1 => "Allow",
        2 => "Deny",
        3 => "Log",
        4 => "Pass",
        _ => "-",
    };
    (kind.to_owned(), direction.to_owned(), action.to_owned())
}

/// Every rule id in use, with its hits.
pub fn rules(layout: &PinLayout) -> anyhow::Result<Vec<RuleRow>> {
    use aya::maps::{HashMap, Map, MapData, PerCpuArray};
    use calico_ebpf_common::{RuleCounters, RuleInfo, map_names};
    let open = |name: &str| -> anyhow::Result<Map> {
        Ok(Map::from_map_data(MapData::from_pin(layout.map(name))?)?)
    };
    let infos: HashMap<MapData, u32, RuleInfo> = HashMap::try_from(open(map_names::RULES)?)?;
    let counters: PerCpuArray<MapData, RuleCounters> =
        PerCpuArray::try_from(open(map_names::RULE_COUNTERS)?)?;
    let mut rows = Vec::new();
    for entry in infos.iter() {
        let (id, info) = entry?;
        let (kind, direction, action) = rule_words(&info);
        let (mut packets, mut bytes) = (0, 0);
        if let Ok(per_cpu) = counters.get(&id, 0) {
            for c in per_cpu.iter() {
                packets += c.packets;
                bytes += c.bytes;
            }
        }
        rows.push(RuleRow {
            id,
            direction,
            kind,
            tier: text(info.tier_bytes()),
            policy: text(info.policy_bytes()),
            index: info.index,
            action,
            packets,
            bytes,
        });
    }
    rows.sort_by_key(|r| r.id);
    Ok(rows)
}

pub fn rules_table(rows: &[RuleRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let index = if r.kind == "rule" || r.kind == "profile-rule" {
                r.index.to_string()
            } else {
                "-".into()
            };
            vec![
                r.id.to_string(),
                r.direction.clone(),
                if r.tier.is_empty() {
                    "-".into()
                } else {
                    r.tier.clone()
                },
                if r.policy.is_empty() {
                    "-".into()
                } else {
                    r.policy.clone()
                },
                index,
                r.kind.clone(),
                r.action.clone(),
                r.packets.to_string(),
                r.bytes.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "ID", "DIR", "TIER", "POLICY", "RULE", "KIND", "ACTION", "PACKETS", "BYTES",
        ],
        &cells,
    )
}

/// Renders rows as a table with aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

pub fn routes_table(rows: &[RouteRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let dash = |s: &str| {
                if s.is_empty() {
                    "-".to_owned()
                } else {
                    s.to_owned()
                }
            };
            vec![
                r.prefix.clone(),
                r.kind.clone(),
                dash(&r.interface),
                r.ifindex.to_string(),
                r.mac.clone(),
                dash(&r.endpoint),
                dash(&r.node),
                r.next_hop.clone(),
            ]
        })
        .collect();
    table(
        &[
            "PREFIX",
            "KIND",
            "INTERFACE",
            "IFINDEX",
            "MAC",
            "ENDPOINT",
            "NODE",
            "NEXT-HOP",
        ],
        &cells,
    )
}

pub fn endpoints_table(rows: &[EndpointRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                if r.kind == HOST_ENDPOINT {
                    format!("HostEndpoint {}", r.name)
                } else {
                    r.name.clone()
                },
                r.interface.clone(),
                r.ifindex.to_string(),
                r.mac.clone(),
                r.addresses.join(","),
                if r.attached {
                    r.hooks.join(",")
                } else {
                    "no".to_owned()
                },
            ]
        })
        .collect();
    table(
        &[
            "ENDPOINT",
            "INTERFACE",
            "IFINDEX",
            "MAC",
            "ADDRESSES",
            "ATTACHED",
        ],
        &cells,
    )
}

/// Non-zero drop counts as `reason=n,...`, or `-`.
fn drops_cell(drops: &BTreeMap<String, u64>) -> String {
    let drops: Vec<String> = drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(reason, n)| format!("{reason}={n}"))
        .collect();
    if drops.is_empty() {
        "-".to_owned()
    } else {
        drops.join(",")
    }
}

/// The workload endpoints' counters, then (when there are any) the host endpoints'.
pub fn counters_table(rows: &[CounterRow]) -> String {
    let workloads: Vec<&WorkloadCounterRow> = rows
        .iter()
        .filter_map(|r| match r {
            CounterRow::Workload(row) => Some(row),
            CounterRow::HostEndpoint(_) => None,
        })
        .collect();
    let mut out = workload_counters_table(&workloads);
    let hosts: Vec<Vec<String>> = rows
        .iter()
        .filter_map(|r| match r {
            CounterRow::HostEndpoint(r) => Some(vec![
                r.name.clone(),
                r.interface.clone(),
                format!("{}/{}", r.in_packets, r.in_bytes),
                format!("{}/{}", r.out_packets, r.out_bytes),
                r.to_host_packets.to_string(),
                r.from_host_packets.to_string(),
                format!("{}/{}", r.forward_in_packets, r.forward_out_packets),
                format!("{}/{}", r.failsafe_in, r.failsafe_out),
                format!("{}/{}", r.untracked_in_packets, r.untracked_out_packets),
                drops_cell(&r.drops),
            ]),
            CounterRow::Workload(_) => None,
        })
        .collect();
    if !hosts.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "HOST-ENDPOINT",
                "INTERFACE",
                "IN pkts/B",
                "OUT pkts/B",
                "TO-HOST",
                "FROM-HOST",
                "FORWARDED in/out",
                "FAILSAFE in/out",
                "UNTRACKED in/out",
                "DROPS",
            ],
            &hosts,
        ));
    }
    out
}

fn workload_counters_table(rows: &[&WorkloadCounterRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.interface.clone(),
                format!("{}/{}", r.from_workload_packets, r.from_workload_bytes),
                format!("{}/{}", r.forwarded_packets, r.forwarded_bytes),
                format!(
                    "{}/{}",
                    r.forwarded_remote_packets, r.forwarded_remote_bytes
                ),
                format!("{}/{}", r.to_workload_packets, r.to_workload_bytes),
                format!(
                    "{}/{}",
                    r.from_data_interface_packets, r.from_data_interface_bytes
                ),
                format!("{}/{}", r.to_host_packets, r.to_host_bytes),
                r.neighbour_replies.to_string(),
                drops_cell(&r.drops),
            ]
        })
        .collect();
    table(
        &[
            "ENDPOINT",
            "INTERFACE",
            "FROM-WL pkts/B",
            "FORWARDED pkts/B",
            "TO-REMOTE pkts/B",
            "TO-WL pkts/B",
            "FROM-DATA pkts/B",
            "TO-HOST pkts/B",
            "NEIGH",
            "DROPS",
        ],
        &cells,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let out = table(&["A", "LONGER"], &[vec!["wide-cell".into(), "x".into()]]);
        assert_eq!(out, "A          LONGER\nwide-cell  x\n");
    }

    #[test]
    fn zero_mac_is_shown_as_unknown() {
        assert_eq!(mac_string(&[0; 6]), "-");
        assert_eq!(mac_string(&[0xca, 0xfe, 0, 0, 0, 1]), "ca:fe:00:00:00:01");
    }
}
