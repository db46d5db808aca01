//! `calico-loader trace`: why a packet is allowed or dropped, and where its addresses live.
//!
//! Builds the packet, and runs the kernel's own policy code on it through BPF_PROG_TEST_RUN:
//! the `calico_trace` program shares conntrack and policy lookups with the attached programs
//! and writes what decided into the trace map, while creating no conntrack entry, counting
//! nothing and logging nothing. Against the running agent it uses the pinned maps (the route
//! maps say where the source and destination live); with `--datastore` it compiles a directory
//! of resources into private maps, so nothing of the host is read or touched ("what if"), and
//! the endpoints of the resources say where the addresses live.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, PerCpuArray},
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use calico_ebpf_common::{
    EndpointInfo, NodeInfo, RouteKind, RouteValue, RuleInfo, TraceResult, direction, map_names,
    program_names, rule_kind, rule_stage, trace_decided_by, trace_kind, trace_path, trace_stage,
    verdict_action, verdict_flags,
};
use ipnet::IpNet;
use serde::Serialize;

use crate::{
    dataplane::{
        MapSizes,
        attach::program,
        bpffs::PinLayout,
        host_endpoints::HostSettings,
        load_object_with, load_private_object,
        maps::Maps,
        netlink::LinkDetails,
        private::{PrivateDataplane, PrivateHost},
    },
    datastore::{HostEndpoint, IpamObjects, Snapshot, local::LocalDatastore},
    dump::rule_words,
    felix_settings,
    model::{LocalEndpoint, local_endpoints, remote_workloads},
    packets,
};

/// Ifindex the endpoint gets in the private maps of a `--datastore` trace.
const OFFLINE_IFINDEX: u32 = 1_000_000;

/// Which kind of endpoint a trace is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceTarget {
    /// A WorkloadEndpoint: [`TraceRequest::endpoint`] is its `namespace/name`.
    Workload,
    /// A host endpoint's data interface: [`TraceRequest::endpoint`] is the interface's name;
    /// ingress is a packet arriving through it, egress one leaving through it.
    HostEndpoint,
}

/// What to trace.
#[derive(Clone, Debug)]
pub struct TraceRequest {
    /// `namespace/name` of the WorkloadEndpoint, or the host endpoint's interface.
    pub endpoint: String,
    pub target: TraceTarget,
    pub ingress: bool,
    pub protocol: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

/// A rule id, in words.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RuleReport {
    pub id: u32,
    /// `rule`, `tier-default`, `profile-rule` or `no-match`.
    pub kind: String,
    pub tier: Option<String>,
    pub policy: Option<String>,
    pub rule: Option<u32>,
    pub action: String,
}

/// Where an address of the traced packet lives.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Location {
    pub address: String,
    /// `local-workload`, `remote-workload`, `host`, `blackhole`, or `none` (no route of ours:
    /// the kernel's routing table decides).
    pub route: String,
    /// The local workload's endpoint (`namespace/name`), for a local route.
    pub endpoint: Option<String>,
    /// Its interface.
    pub interface: Option<String>,
    /// The node a remote route leads to.
    pub node: Option<String>,
}

impl Location {
    fn nowhere(address: IpAddr) -> Self {
        Self {
            address: address.to_string(),
            route: "none".into(),
            endpoint: None,
            interface: None,
            node: None,
        }
    }
}

/// One stage a packet met, in order.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct StageReport {
    /// `failsafe`, `untracked-policy`, `conntrack`, `pre-dnat-policy`, `host-policy`,
    /// `forward-policy`, `policy` or `endpoint-to-host`.
    pub stage: String,
    /// `allow`, `deny`, or `next` (it did not decide: on to the next stage).
    pub outcome: String,
    /// What it found, in words.
    pub detail: String,
}

/// The answer.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TraceReport {
    /// The WorkloadEndpoint, or for a host endpoint its interface.
    pub endpoint: String,
    /// The HostEndpoint's name (host endpoints only).
    pub host_endpoint: Option<String>,
    /// For a host endpoint: `host` (the host's own traffic) or `forward` (forwarded).
    pub path: Option<String>,
    pub direction: String,
    /// `allow` or `deny`.
    pub verdict: String,
    /// `policy`, `conntrack`, `no-endpoint`, `malformed`, `no-verdict`, `failsafe`,
    /// `untracked-policy`, `forward-open`, `endpoint-to-host` or `unjudged`.
    pub decided_by: String,
    /// The stages the packet met, in order; the last one decided.
    pub stages: Vec<StageReport>,
    /// Tier of the deciding rule (or tier default), if any.
    pub tier: Option<String>,
    /// The deciding policy (`kind:namespace/name`), or profile (`Profile:name`).
    pub policy: Option<String>,
    /// Index of the deciding rule in its policy's rules for the direction.
    pub rule: Option<u32>,
    /// Everything about the deciding rule id.
    pub decided_by_rule: Option<RuleReport>,
    /// The first Log rule that matched, if any.
    pub logged_by: Option<RuleReport>,
    pub policy_id: u32,
    /// Where the source lives.
    pub source: Location,
    /// Where the destination lives.
    pub destination: Location,
    /// What happens after policy, when it changes the verdict: the workload's traffic to its
    /// host dropped by `DefaultEndpointToHostAction`.
    pub then: Option<String>,
    /// When the packet is allowed on to a local workload (from another workload, or arriving
    /// through a host endpoint's interface), that workload's ingress: the next check on its
    /// path, traced the same way. The packet is delivered only if both allow it.
    pub onward: Option<Box<TraceReport>>,
}

impl TraceReport {
    /// Whether the packet is delivered: every check on its path, this one and the onward ones,
    /// allows it.
    pub fn delivered(&self) -> bool {
        self.verdict == "allow" && self.onward.as_ref().is_none_or(|next| next.delivered())
    }
}

/// The request for the next check on the packet's path after `report`, when there is one: the
/// ingress of the local workload it is allowed on to (not the traced endpoint's own).
fn onward_request(request: &TraceRequest, report: &TraceReport) -> Option<TraceRequest> {
    let already_there = request.target == TraceTarget::Workload && request.ingress;
    if already_there || report.verdict != "allow" {
        return None;
    }
    if report.destination.route != RouteKind::LocalWorkload.as_str() {
        return None;
    }
    let endpoint = report.destination.endpoint.clone()?;
    if request.target == TraceTarget::Workload && endpoint == request.endpoint {
        return None;
    }
    Some(TraceRequest {
        endpoint,
        target: TraceTarget::Workload,
        ingress: true,
        ..request.clone()
    })
}

/// Runs a trace against the running agent's pinned maps, and on along the packet's path to
/// the local workload it is allowed on to.
pub fn live(layout: &PinLayout, request: &TraceRequest) -> anyhow::Result<TraceReport> {
    follow(request, |request| live_endpoint(layout, request))
}

/// Runs a trace against a directory of resources, in private maps, and on along the packet's
/// path to the local workload it is allowed on to.
pub fn offline(dir: &Path, request: &TraceRequest) -> anyhow::Result<TraceReport> {
    follow(request, |request| offline_endpoint(dir, request))
}

/// `trace_one` for the request, then for the next check on the packet's path, if any.
fn follow(
    request: &TraceRequest,
    trace_one: impl Fn(&TraceRequest) -> anyhow::Result<TraceReport>,
) -> anyhow::Result<TraceReport> {
    let mut report = trace_one(request)?;
    if let Some(next) = onward_request(request, &report) {
        let onward =
            trace_one(&next).with_context(|| format!("tracing on into {}", next.endpoint))?;
        report.onward = Some(Box::new(onward));
    }
    Ok(report)
}

/// Runs a trace of one endpoint against the running agent's pinned maps.
fn live_endpoint(layout: &PinLayout, request: &TraceRequest) -> anyhow::Result<TraceReport> {
    let conntrack = layout.map(map_names::CONNTRACK);
    aya::maps::MapInfo::from_pin(&conntrack)
        .with_context(|| format!("opening {} (is the agent running?)", conntrack.display()))?;
    let sizes = MapSizes::pinned(layout)?;
    let mut ebpf =
        load_object_with(layout, sizes).context("loading the programs over the pinned maps")?;
    let maps = Maps::from_pins(layout)?;
    let contents = maps.read()?;
    let endpoints = &contents.endpoints;
    let found = match request.target {
        TraceTarget::Workload => endpoints
            .iter()
            .find(|(_, info)| info.name_bytes() == request.endpoint.as_bytes())
            .map(|(&ifindex, _)| (ifindex, None)),
        TraceTarget::HostEndpoint => contents
            .host_endpoints
            .iter()
            .find(|(_, info)| info.ifname_bytes() == request.endpoint.as_bytes())
            .map(|(&ifindex, info)| {
                let name = String::from_utf8_lossy(info.name_bytes()).into_owned();
                (ifindex, Some(name))
            }),
    };
    let Some((ifindex, host_endpoint)) = found else {
        let what = match request.target {
            TraceTarget::Workload => "endpoint",
            TraceTarget::HostEndpoint => "no host endpoint covers interface",
        };
        bail!(
            "{what} {} is not programmed on this host (see `calico-loader dump endpoints`)",
            request.endpoint
        );
    };
    let rules: HashMap<MapData, u32, RuleInfo> = HashMap::try_from(Map::from_map_data(
        MapData::from_pin(layout.map(map_names::RULES))?,
    )?)?;
    let mut report = evaluate(&mut ebpf, ifindex, request, |id| rules.get(&id, 0).ok())?;
    report.host_endpoint = host_endpoint;
    // A prefix of one family never holds an address of the other.
    let locate = |addr: IpAddr| {
        let v4 = contents
            .routes_v4
            .iter()
            .map(|((len, net), route)| (prefix(IpAddr::from(*net), *len), route));
        let v6 = contents
            .routes_v6
            .iter()
            .map(|((len, net), route)| (prefix(IpAddr::from(*net), *len), route));
        let route = longest_match(v4.chain(v6), addr);
        route_location(addr, route, endpoints, &contents.nodes)
    };
    report.source = locate(request.src);
    report.destination = locate(request.dst);
    Ok(report)
}

/// Runs a trace of one endpoint against a directory of resources, in private maps.
fn offline_endpoint(dir: &Path, request: &TraceRequest) -> anyhow::Result<TraceReport> {
    let mut datastore = LocalDatastore::new(dir);
    let sync = datastore.sync();
    for error in &sync.errors {
        eprintln!("warning: {error}");
    }
    let snapshot = sync.snapshot;
    if request.target == TraceTarget::HostEndpoint {
        return offline_host_endpoint(dir, &snapshot, request);
    }
    let (namespace, name) = request
        .endpoint
        .split_once('/')
        .context("--endpoint must be NAMESPACE/NAME")?;
    let wep = snapshot
        .workload_endpoint(namespace, name)
        .with_context(|| {
            format!(
                "no WorkloadEndpoint {namespace}/{name} in {}",
                dir.display()
            )
        })?;
    let mut ebpf = load_private_object().context("loading the programs (this needs root)")?;
    let mut dataplane = PrivateDataplane::from_ebpf(&mut ebpf)?;
    let endpoint = LocalEndpoint {
        key: request.endpoint.clone(),
        interface: wep.spec.interface_name.clone(),
        mac: wep.spec.mac.map(|m| m.octets()),
        networks: wep.spec.ip_networks.clone(),
        allowed_spoof: wep.spec.allow_spoofed_source_prefixes.clone(),
        ipv4_gateway: wep.spec.ipv4_gateway,
        ip_nats: Vec::new(),
    };
    let link = LinkDetails {
        ifindex: OFFLINE_IFINDEX,
        name: endpoint.interface.clone(),
        tap: false,
        mac: packets::HOST_MAC,
    };
    dataplane
        .program(&snapshot, &[(endpoint, link)])
        .with_context(|| format!("programming the policy of {}", request.endpoint))?;
    let mut report = evaluate(&mut ebpf, OFFLINE_IFINDEX, request, |id| {
        dataplane.registry.info(id)
    })?;
    report.source = locate_in(&snapshot, &sync.ipam, &wep.spec.node, request.src);
    report.destination = locate_in(&snapshot, &sync.ipam, &wep.spec.node, request.dst);
    Ok(report)
}

/// A `--datastore` trace of a host endpoint: the HostEndpoint whose `interfaceName` is the
/// request's interface, programmed into private maps with the endpoint's `expectedIPs` as the
/// host's addresses and Felix's default failsafe ports.
fn offline_host_endpoint(
    dir: &Path,
    snapshot: &Snapshot,
    request: &TraceRequest,
) -> anyhow::Result<TraceReport> {
    let hep = snapshot
        .all::<HostEndpoint>()
        .find(|hep| hep.spec.interface_name.as_deref() == Some(request.endpoint.as_str()))
        .with_context(|| {
            format!(
                "no HostEndpoint with interfaceName {} in {}",
                request.endpoint,
                dir.display()
            )
        })?;
    let defaults = felix_settings::resolve(&[]).context("Felix's default settings")?;
    let mut ebpf = load_private_object().context("loading the programs (this needs root)")?;
    let mut dataplane = PrivateDataplane::from_ebpf(&mut ebpf)?;
    let link = LinkDetails {
        ifindex: OFFLINE_IFINDEX,
        name: request.endpoint.clone(),
        tap: false,
        mac: packets::HOST_MAC,
    };
    dataplane
        .program_with_host(
            snapshot,
            &[],
            &PrivateHost {
                endpoints: vec![(hep.name().to_owned(), link)],
                addresses: hep.spec.expected_ips.clone(),
                settings: HostSettings::from(&defaults),
            },
        )
        .with_context(|| format!("programming the policy of HostEndpoint {}", hep.name()))?;
    let mut report = evaluate(&mut ebpf, OFFLINE_IFINDEX, request, |id| {
        dataplane.registry.info(id)
    })?;
    report.host_endpoint = Some(hep.name().to_owned());
    let host = |addr: IpAddr| {
        if hep.spec.expected_ips.contains(&addr) {
            Location {
                address: addr.to_string(),
                route: RouteKind::Host.as_str().into(),
                endpoint: None,
                interface: None,
                node: None,
            }
        } else {
            locate_in(snapshot, &IpamObjects::default(), &hep.spec.node, addr)
        }
    };
    report.source = host(request.src);
    report.destination = host(request.dst);
    Ok(report)
}

/// Runs the trace program on the request's packet in an object whose maps are programmed
/// already (`info`: what a rule id stands for). The trace program is loaded on first use.
///
/// # Errors
///
/// An invalid request, or loading or running the trace program failing.
pub fn evaluate(
    ebpf: &mut Ebpf,
    ifindex: u32,
    request: &TraceRequest,
    info: impl Fn(u32) -> Option<RuleInfo>,
) -> anyhow::Result<TraceReport> {
    let result = run(ebpf, ifindex, request)?;
    Ok(report(request, &result, info))
}

/// The prefix `addr/len` (`None` for an invalid length).
fn prefix(addr: IpAddr, len: u32) -> Option<IpNet> {
    u8::try_from(len)
        .ok()
        .and_then(|len| IpNet::new(addr, len).ok())
}

/// The value of the longest prefix among `entries` that holds `addr`.
fn longest_match<T>(entries: impl Iterator<Item = (Option<IpNet>, T)>, addr: IpAddr) -> Option<T> {
    entries
        .filter_map(|(net, value)| {
            net.filter(|net| net.contains(&addr))
                .map(|net| (net, value))
        })
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, value)| value)
}

/// Where the route map's entry for `addr` says it lives.
fn route_location(
    addr: IpAddr,
    route: Option<&RouteValue>,
    endpoints: &BTreeMap<u32, EndpointInfo>,
    nodes: &BTreeMap<u32, NodeInfo>,
) -> Location {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let Some(route) = route else {
        return Location::nowhere(addr);
    };
    let kind = RouteKind::from_u32(route.kind);
    let endpoint = matches!(kind, Some(RouteKind::LocalWorkload | RouteKind::FloatingIp))
        .then(|| endpoints.get(&route.ifindex))
        .flatten();
    Location {
        address: addr.to_string(),
        route: kind.map_or_else(|| format!("unknown({})", route.kind), |k| k.as_str().into()),
        endpoint: endpoint.map(|e| text(e.name_bytes())),
        interface: endpoint.map(|e| text(e.ifname_bytes())),
        node: nodes.get(&route.node).map(|n| text(n.name_bytes())),
    }
}

/// Where the endpoints of `snapshot` and the IPAM blocks of `ipam` say `addr` lives, seen from
/// `node` (the traced endpoint's).
fn locate_in(snapshot: &Snapshot, ipam: &IpamObjects, node: &str, addr: IpAddr) -> Location {
    let (local, _) = local_endpoints(snapshot, node);
    let (remote, _) = remote_workloads(snapshot, ipam, node, &local);
    let local = local.values().flat_map(|e| {
        e.networks.iter().map(|net| {
            (
                Some(*net),
                (
                    RouteKind::LocalWorkload,
                    Some(e.key.as_str()),
                    Some(e.interface.as_str()),
                    None,
                ),
            )
        })
    });
    let remote_endpoints = remote.endpoints.iter().flat_map(|e| {
        e.networks.iter().map(|net| {
            (
                Some(*net),
                (RouteKind::RemoteWorkload, None, None, Some(e.node.as_str())),
            )
        })
    });
    let remote_blocks = remote.blocks.iter().map(|b| {
        (
            Some(b.cidr),
            (RouteKind::RemoteWorkload, None, None, Some(b.node.as_str())),
        )
    });
    let remote = remote_blocks.chain(remote_endpoints);
    match longest_match(local.chain(remote), addr) {
        None => Location::nowhere(addr),
        Some((kind, endpoint, interface, node)) => Location {
            address: addr.to_string(),
            route: kind.as_str().into(),
            endpoint: endpoint.map(str::to_owned),
            interface: interface.map(str::to_owned),
            node: node.map(str::to_owned),
        },
    }
}

/// The packet for a request: Ethernet, IP, and a transport header (a TCP SYN for TCP, an ICMP
/// message of the given type and code, eight zero bytes for other protocols).
pub fn packet(request: &TraceRequest) -> anyhow::Result<Vec<u8>> {
    let ports = |flags: Option<u8>| {
        let mut header = Vec::new();
        header.extend_from_slice(&request.sport.to_be_bytes());
        header.extend_from_slice(&request.dport.to_be_bytes());
        match flags {
            Some(flags) => {
                header.extend_from_slice(&[
                    0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0,
                ]);
            }
            None => header.extend_from_slice(&[0, 8, 0, 0]),
        }
        header
    };
    let transport = match request.protocol {
        6 => ports(Some(0x02)),
        17 | 132 | 136 => ports(None),
        1 | 58 => vec![request.icmp_type, request.icmp_code, 0, 0, 0x12, 0x34, 0, 1],
        _ => vec![0; 8],
    };
    let src_mac = [0xca, 0xfe, 0, 0, 0, 1];
    Ok(match (request.src, request.dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => packets::ethernet(
            packets::HOST_MAC,
            src_mac,
            0x0800,
            &packets::ipv4(src, dst, 64, request.protocol, &[], &transport),
        ),
        (IpAddr::V6(src), IpAddr::V6(dst)) => packets::ethernet(
            packets::HOST_MAC,
            src_mac,
            0x86dd,
            &packets::ipv6(src, dst, 64, request.protocol, &transport),
        ),
        _ => bail!("--src and --dst must be of the same IP version"),
    })
}

/// Runs the trace program once on the request's packet for the endpoint behind `ifindex`.
fn run(ebpf: &mut Ebpf, ifindex: u32, request: &TraceRequest) -> anyhow::Result<TraceResult> {
    let frame = packet(request)?;
    let trace: &mut SchedClassifier = program(ebpf, program_names::TRACE)?;
    if trace.fd().is_err() {
        trace.load().context("loading the trace program")?;
    }
    // The __sk_buff given to the program: everything zero but cb[0] (the endpoint's ifindex),
    // cb[1] (the direction) and cb[2] (what to trace), at offsets 48, 52 and 56.
    let mut context = [0u8; 68];
    context[48..52].copy_from_slice(&ifindex.to_ne_bytes());
    let dir = if request.ingress {
        direction::INGRESS
    } else {
        direction::EGRESS
    };
    context[52..56].copy_from_slice(&u32::from(dir).to_ne_bytes());
    let kind = match request.target {
        TraceTarget::Workload => trace_kind::WORKLOAD,
        TraceTarget::HostEndpoint => trace_kind::HOST_ENDPOINT,
    };
    context[56..60].copy_from_slice(&kind.to_ne_bytes());
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(&frame);
    opts.ctx_in = Some(&context);
    let results: PerCpuArray<_, TraceResult> = PerCpuArray::try_from(
        ebpf.map(map_names::TRACE)
            .context("the object has no trace map")?,
    )?;
    let before: Vec<u64> = results.get(&0, 0)?.iter().map(|r| r.sequence).collect();
    let trace: &mut SchedClassifier = program(ebpf, program_names::TRACE)?;
    trace
        .test_run(opts)
        .context("running the trace program (BPF_PROG_TEST_RUN)")?;
    let results: PerCpuArray<_, TraceResult> = PerCpuArray::try_from(
        ebpf.map(map_names::TRACE)
            .context("the object has no trace map")?,
    )?;
    let after = results.get(&0, 0)?;
    // The run happened on one CPU: the slot whose sequence moved.
    after
        .iter()
        .zip(before)
        .find(|(result, before)| result.sequence != *before)
        .map(|(result, _)| *result)
        .context("the trace program wrote no result")
}

/// A rule id in words, from what the rules map says of it (`info`); none for id 0.
pub fn rule_report(id: u32, info: Option<RuleInfo>) -> Option<RuleReport> {
    if id == 0 {
        return None;
    }
    let Some(info) = info else {
        return Some(RuleReport {
            id,
            kind: "unknown".into(),
            tier: None,
            policy: None,
            rule: None,
            action: "-".into(),
        });
    };
    let (kind, _, action) = rule_words(&info);
    let text = |b: &[u8]| (!b.is_empty()).then(|| String::from_utf8_lossy(b).into_owned());
    let indexed = matches!(kind.as_str(), "rule" | "profile-rule");
    Some(RuleReport {
        id,
        tier: text(info.tier_bytes()),
        policy: text(info.policy_bytes()),
        rule: indexed.then_some(info.index),
        kind,
        action,
    })
}

fn report(
    request: &TraceRequest,
    result: &TraceResult,
    info: impl Fn(u32) -> Option<RuleInfo>,
) -> TraceReport {
    let decided_by = match result.decided_by {
        trace_decided_by::POLICY => "policy",
        trace_decided_by::CONNTRACK => "conntrack",
        trace_decided_by::NO_ENDPOINT => "no-endpoint",
        trace_decided_by::MALFORMED => "malformed",
        trace_decided_by::FAILSAFE => "failsafe",
        trace_decided_by::UNTRACKED => "untracked-policy",
        trace_decided_by::FORWARD_OPEN => "forward-open",
        trace_decided_by::ENDPOINT_TO_HOST => "endpoint-to-host",
        trace_decided_by::UNJUDGED => "unjudged",
        _ => "no-verdict",
    };
    let rule_info = info(result.rule);
    let rule = rule_report(result.rule, rule_info);
    let logged_by = if result.flags & verdict_flags::LOG != 0 {
        rule_report(result.log_rule, info(result.log_rule))
    } else {
        None
    };
    let verdict = if result.action == verdict_action::ALLOW {
        "allow"
    } else {
        "deny"
    };
    let host_endpoint = request.target == TraceTarget::HostEndpoint;
    let path = host_endpoint.then(|| {
        if result.path == trace_path::FORWARD {
            "forward"
        } else {
            "host"
        }
        .to_owned()
    });
    let then = (result.decided_by == trace_decided_by::ENDPOINT_TO_HOST).then(|| {
        "the destination is the host itself: DefaultEndpointToHostAction (Drop) drops it \
         after the egress policy allowed it"
            .to_owned()
    });
    TraceReport {
        endpoint: request.endpoint.clone(),
        host_endpoint: None,
        path,
        direction: if request.ingress { "ingress" } else { "egress" }.into(),
        verdict: verdict.into(),
        decided_by: decided_by.into(),
        stages: stages(request, result, rule.as_ref(), rule_info.as_ref()),
        tier: rule.as_ref().and_then(|r| r.tier.clone()),
        policy: rule.as_ref().and_then(|r| r.policy.clone()),
        rule: rule.as_ref().and_then(|r| r.rule),
        decided_by_rule: rule,
        logged_by,
        policy_id: result.policy,
        source: Location::nowhere(request.src),
        destination: Location::nowhere(request.dst),
        then,
        onward: None,
    }
}

/// The stages the packet met, in the order the programs run them; the last one decided.
fn stages(
    request: &TraceRequest,
    result: &TraceResult,
    rule: Option<&RuleReport>,
    rule_info: Option<&RuleInfo>,
) -> Vec<StageReport> {
    let stage = |stage: &str, outcome: &str, detail: String| StageReport {
        stage: stage.into(),
        outcome: outcome.into(),
        detail,
    };
    let outcome = if result.action == verdict_action::ALLOW {
        "allow"
    } else {
        "deny"
    };
    let decided = |what: &str| format!("{what}: {}", verdict_word(result.action));
    let rule_text = rule.map_or_else(|| "no rule".to_owned(), describe_rule);
    let ran = |bit: u8| result.stages & bit != 0;
    let host_endpoint = request.target == TraceTarget::HostEndpoint;
    let host = result.path == trace_path::HOST;
    let mut out = Vec::new();
    match result.decided_by {
        trace_decided_by::NO_ENDPOINT | trace_decided_by::MALFORMED => return out,
        trace_decided_by::UNJUDGED => {
            out.push(stage(
                "unjudged",
                "allow",
                "not IP, not parsable, or neighbour discovery: passed to the kernel unjudged"
                    .into(),
            ));
            return out;
        }
        _ => {}
    }
    let failsafe = |out: &mut Vec<StageReport>| {
        if result.decided_by == trace_decided_by::FAILSAFE {
            let (setting, port) = if request.ingress {
                ("FailsafeInboundHostPorts", request.dport)
            } else {
                ("FailsafeOutboundHostPorts", request.dport)
            };
            out.push(stage(
                "failsafe",
                "allow",
                format!(
                    "failsafe port {}:{port} ({setting}): allowed whatever the policy says",
                    protocol_name(request.protocol)
                ),
            ));
        } else if ran(trace_stage::FAILSAFE) {
            out.push(stage("failsafe", "next", "not a failsafe port".into()));
        }
    };
    let untracked = |out: &mut Vec<StageReport>| {
        if result.decided_by == trace_decided_by::UNTRACKED {
            let what = if result.action == verdict_action::ALLOW {
                "allowed (untracked: no conntrack, none of the endpoint's other policy)"
            } else if request.ingress {
                "denied (dropped in XDP)"
            } else {
                "denied"
            };
            out.push(stage(
                "untracked-policy",
                outcome,
                format!("untracked policy {rule_text}: {what}"),
            ));
        } else if ran(trace_stage::UNTRACKED) {
            out.push(stage(
                "untracked-policy",
                "next",
                "no untracked policy decided".into(),
            ));
        }
    };
    let conntrack = |out: &mut Vec<StageReport>| {
        if result.decided_by == trace_decided_by::CONNTRACK {
            out.push(stage(
                "conntrack",
                "allow",
                "a tracked flow (or a reply or ICMP error about one): allowed".into(),
            ));
        } else if ran(trace_stage::CONNTRACK) {
            out.push(stage(
                "conntrack",
                "next",
                "no entry: a new flow, for policy".into(),
            ));
        }
    };
    if host_endpoint {
        // The host endpoint's programs: inbound failsafe ports before untracked policy,
        // outbound ones after conntrack.
        if request.ingress {
            failsafe(&mut out);
            untracked(&mut out);
            conntrack(&mut out);
        } else {
            untracked(&mut out);
            conntrack(&mut out);
            failsafe(&mut out);
        }
        match result.decided_by {
            trace_decided_by::FORWARD_OPEN => out.push(stage(
                "forward-policy",
                "allow",
                "forwarded traffic: no policy applies to it on this endpoint, it passes untouched"
                    .into(),
            )),
            trace_decided_by::POLICY | trace_decided_by::NO_VERDICT => {
                let pre_dnat = rule_info.is_some_and(|i| i.stage == rule_stage::PRE_DNAT);
                let kind = rule_info.map(|i| i.kind);
                let (name, detail) = if pre_dnat {
                    ("pre-dnat-policy", format!("pre-DNAT policy {rule_text}"))
                } else if !host {
                    (
                        "forward-policy",
                        format!("forwarded traffic: applyOnForward policy {rule_text}"),
                    )
                } else if kind == Some(rule_kind::NO_MATCH) {
                    (
                        "host-policy",
                        "host endpoint policy: no policy or profile allowed it (default deny)"
                            .to_owned(),
                    )
                } else {
                    ("host-policy", format!("host endpoint policy {rule_text}"))
                };
                out.push(stage(name, outcome, decided(&detail)));
            }
            _ => {}
        }
        return out;
    }
    conntrack(&mut out);
    let direction = if request.ingress { "ingress" } else { "egress" };
    if matches!(
        result.decided_by,
        trace_decided_by::POLICY | trace_decided_by::NO_VERDICT
    ) {
        out.push(stage(
            "policy",
            outcome,
            decided(&format!("{direction} policy {rule_text}")),
        ));
    }
    if result.decided_by == trace_decided_by::ENDPOINT_TO_HOST {
        if rule.is_some() {
            out.push(stage(
                "policy",
                "allow",
                format!("{direction} policy {rule_text}: allowed"),
            ));
        }
        out.push(stage(
            "endpoint-to-host",
            "deny",
            "to the host itself: DefaultEndpointToHostAction (Drop): denied".into(),
        ));
    }
    out
}

/// `allowed`, `denied`.
fn verdict_word(action: u8) -> &'static str {
    if action == verdict_action::ALLOW {
        "allowed"
    } else {
        "denied"
    }
}

/// A protocol number as Calico names it (`tcp`), or the number.
fn protocol_name(protocol: u8) -> String {
    match protocol {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        136 => "udplite".into(),
        other => other.to_string(),
    }
}

/// The report as lines for a terminal.
pub fn text(report: &TraceReport) -> String {
    let mut out = match (&report.host_endpoint, &report.path) {
        (Some(name), path) => {
            let path = match path.as_deref() {
                Some("forward") => "forwarded traffic",
                _ if report.direction == "ingress" => "to the host",
                _ => "from the host",
            };
            format!(
                "host endpoint: {name} ({}, {}, {path})",
                report.endpoint, report.direction
            )
        }
        (None, _) => format!("endpoint:   {} ({})", report.endpoint, report.direction),
    };
    out.push_str(&format!(
        "\nverdict:    {}\ndecided by: {}",
        report.verdict, report.decided_by
    ));
    if report.host_endpoint.is_some() {
        out.push_str("\nstages:");
        for (n, stage) in report.stages.iter().enumerate() {
            out.push_str(&format!("\n  {}. {}", n + 1, stage.detail));
        }
    }
    if let Some(rule) = &report.decided_by_rule {
        out.push_str(&format!("\nrule:       {}", describe_rule(rule)));
    }
    if let Some(rule) = &report.logged_by {
        out.push_str(&format!("\nlogged by:  {}", describe_rule(rule)));
    }
    if let Some(then) = &report.then {
        out.push_str(&format!("\nthen:       {then}"));
    }
    out.push_str(&format!("\nsource:     {}", whereabouts(&report.source)));
    out.push_str(&format!(
        "\ndest:       {}",
        whereabouts(&report.destination)
    ));
    out.push('\n');
    if let Some(onward) = &report.onward {
        out.push_str("\non to the destination workload:\n");
        out.push_str(&text(onward));
        out.push_str(&format!(
            "\ndelivered:  {}\n",
            if report.delivered() { "yes" } else { "no" }
        ));
    }
    out
}

/// A location in words: `198.18.1.11, remote-workload on node b`.
fn whereabouts(location: &Location) -> String {
    let mut out = format!("{}, {}", location.address, location.route);
    if let Some(endpoint) = &location.endpoint {
        out.push_str(&format!(" {endpoint}"));
    }
    if let Some(interface) = &location.interface {
        out.push_str(&format!(" ({interface})"));
    }
    if let Some(node) = &location.node {
        out.push_str(&format!(" on node {node}"));
    }
    if location.route == "none" {
        out.push_str(" (the kernel's routes decide)");
    }
    out
}

/// A rule in words: `tier default, NetworkPolicy:ns/name, rule 0 (Deny)`.
pub fn describe_rule(rule: &RuleReport) -> String {
    let mut parts = Vec::new();
    if let Some(tier) = &rule.tier {
        parts.push(format!("tier {tier}"));
    }
    if let Some(policy) = &rule.policy {
        parts.push(policy.clone());
    }
    match rule.kind.as_str() {
        "rule" | "profile-rule" => {
            parts.push(format!("rule {} ({})", rule.rule.unwrap_or(0), rule.action))
        }
        "tier-default" => parts.push(format!("default action ({})", rule.action)),
        "no-match" => parts.push("no policy or profile allowed it (final deny)".into()),
        "forward-default" => {
            parts.push("no apply-on-forward policy decided: forwarded traffic allowed".into())
        }
        "untracked-default" => {
            parts.push("no untracked policy decided: on to conntrack and the other policy".into())
        }
        _ => parts.push(format!("rule id {}", rule.id)),
    }
    parts.join(", ")
}

/// Parses `IP` or `IP:PORT` (`[v6]:PORT` for IPv6 with a port).
pub fn parse_address(text: &str) -> anyhow::Result<(IpAddr, u16)> {
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok((addr, 0));
    }
    let socket: SocketAddr = text
        .parse()
        .with_context(|| format!("{text:?} is not IP, IP:PORT or [IPv6]:PORT"))?;
    Ok((socket.ip(), socket.port()))
}

/// Parses a protocol name (as Calico spells them, any case) or number.
pub fn parse_protocol(text: &str) -> anyhow::Result<u8> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" => 58,
        "sctp" => 132,
        "udplite" => 136,
        other => other
            .parse()
            .with_context(|| format!("unknown protocol {text:?}"))?,
    })
}
