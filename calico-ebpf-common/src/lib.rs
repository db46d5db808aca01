//! Map layouts and constants shared by the kernel programs (`calico-ebpf`) and the agent
//! (`calico-loader`). This crate is the single source of truth for every map: its name, its key
//! and value types and its default size.
//!
//! Every type is `#[repr(C)]` with explicit padding so that the kernel and userspace agree on the
//! layout byte for byte, and so that `bpftool map dump` (which reads the BTF the kernel object
//! carries) prints named fields.

#![no_std]

/// Names of the maps, as they appear in the object file, in the kernel and under the pin
/// directory (`/sys/fs/bpf/calico/<name>` by default). Kernel map names are limited to 15
/// characters, so these stay short.
pub mod map_names {
    /// IPv4 routes: LPM trie of [`crate::RouteKeyV4`] → [`crate::RouteValue`].
    pub const ROUTES_V4: &str = "cali_routes_v4";
    /// IPv6 routes: LPM trie of [`crate::RouteKeyV6`] → [`crate::RouteValue`].
    pub const ROUTES_V6: &str = "cali_routes_v6";
    /// IPv4 allowed sources per interface: LPM trie of [`crate::SourceKeyV4`] → `u32` flags.
    pub const SOURCES_V4: &str = "cali_srcs_v4";
    /// IPv6 allowed sources per interface: LPM trie of [`crate::SourceKeyV6`] → `u32` flags.
    pub const SOURCES_V6: &str = "cali_srcs_v6";
    /// Workload interfaces: hash of ifindex (`u32`) → [`crate::EndpointInfo`].
    pub const ENDPOINTS: &str = "cali_endpoints";
    /// Per-CPU counters per workload interface: per-CPU hash of ifindex → [`crate::EndpointCounters`].
    pub const COUNTERS: &str = "cali_counters";

    /// Policies: hash of policy id (`u32`) → [`crate::PolicyInfo`].
    pub const POLICIES: &str = "cali_policies";
    /// Policy, first step (IPv4): hash of [`crate::PolicyAddrKeyV4`] → [`crate::AddressClass`].
    pub const POLICY_ADDRS_V4: &str = "cali_paddr_v4";
    /// Policy, first step (IPv6): hash of [`crate::PolicyAddrKeyV6`] → [`crate::AddressClass`].
    pub const POLICY_ADDRS_V6: &str = "cali_paddr_v6";
    /// Policy, second step: hash of [`crate::PolicyProtoKey`] → [`crate::PortClass`].
    pub const POLICY_PROTOS: &str = "cali_pproto";
    /// Policy, third step: hash of [`crate::PolicyPortKey`] → [`crate::PolicyVerdict`].
    pub const POLICY_PORTS: &str = "cali_pports";
    /// What each rule id stands for: hash of rule id (`u32`) → [`crate::RuleInfo`]. Written by
    /// the agent for `trace`, `dump` and `bpftool`; the programs never read it.
    pub const RULES: &str = "cali_rules";
    /// Per-CPU hit counters per rule id: per-CPU array of [`crate::RuleCounters`].
    pub const RULE_COUNTERS: &str = "cali_rule_ctrs";
    /// Connection tracking: LRU hash of [`crate::ConntrackKey`] → [`crate::ConntrackValue`].
    pub const CONNTRACK: &str = "cali_conntrack";
    /// Events of the Log action: ring buffer of [`crate::LogEvent`].
    pub const LOG_EVENTS: &str = "cali_log_events";
    /// Result of the last `trace` run: per-CPU array (one slot) of [`crate::TraceResult`].
    pub const TRACE: &str = "cali_trace";

    /// Every map the agent pins.
    pub const ALL: [&str; 16] = [
        ROUTES_V4,
        ROUTES_V6,
        SOURCES_V4,
        SOURCES_V6,
        ENDPOINTS,
        COUNTERS,
        POLICIES,
        POLICY_ADDRS_V4,
        POLICY_ADDRS_V6,
        POLICY_PROTOS,
        POLICY_PORTS,
        RULES,
        RULE_COUNTERS,
        CONNTRACK,
        LOG_EVENTS,
        TRACE,
    ];
}

/// Names of the programs in the object file.
pub mod program_names {
    /// TC ingress on the host side of a workload interface: packets *from* the workload.
    pub const TC_FROM_WORKLOAD: &str = "calico_tc_from_wl";
    /// TC egress on the host side of a workload interface: packets *to* the workload.
    pub const TC_TO_WORKLOAD: &str = "calico_tc_to_wl";
    /// XDP on the host side of a workload interface: packets *from* the workload.
    pub const XDP_FROM_WORKLOAD: &str = "calico_xdp_from_wl";
    /// Never attached: run by `calico-loader trace` through BPF_PROG_TEST_RUN. It evaluates
    /// conntrack (read only) and policy for one endpoint and direction, with the same code as
    /// the attached programs, and writes what decided into the trace map.
    pub const TRACE: &str = "calico_trace";
}

/// Default map sizes (entries). The LPM tries are not preallocated, so a large limit costs
/// nothing until it is used.
pub mod map_sizes {
    /// Routes per address family (Calico's default is 256k).
    pub const ROUTES: u32 = 262_144;
    /// Allowed-source prefixes per address family.
    pub const SOURCES: u32 = 65_536;
    /// Workload interfaces on one host (Calico's interface-state map is 1000, which users hit).
    pub const ENDPOINTS: u32 = 16_384;
    /// Compiled policies (two per endpoint, plus room for the next generation of each).
    pub const POLICIES: u32 = 4 * ENDPOINTS;
    /// Entries of each policy address map (one per family). The policy maps are hashes that
    /// allocate entries as they are written, so an unused limit costs nothing.
    pub const POLICY_ADDRS: u32 = 1_048_576;
    /// Entries of the policy protocol/source-port map.
    pub const POLICY_PROTOS: u32 = 1_048_576;
    /// Entries of the policy destination-port map.
    pub const POLICY_PORTS: u32 = 1_048_576;
    /// Rule ids (policy rules, tier defaults, profile rules): size of the rule counters array.
    pub const RULES: u32 = 65_536;
    /// Connection tracking entries (Calico's default is 512k).
    pub const CONNTRACK: u32 = 524_288;
    /// Bytes of the Log ring buffer.
    pub const LOG_EVENTS_BYTES: u32 = 256 * 1024;
}

/// The MAC the host side of every workload interface carries, as Calico's CNI plugin sets it.
pub const HOST_SIDE_MAC: [u8; 6] = [0xee; 6];

/// The IPv4 gateway every workload routes through (answered by the host side, never assigned).
pub const GATEWAY_V4: [u8; 4] = [169, 254, 1, 1];

/// What a route points at.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A workload on this host, reached through its interface.
    LocalWorkload = 1,
    /// A workload on another host, reached through a next hop.
    RemoteWorkload = 2,
    /// An address of this host.
    Host = 3,
    /// Traffic to this prefix is dropped.
    Blackhole = 4,
}

impl RouteKind {
    /// The kind encoded in a [`RouteValue::kind`] field.
    pub const fn from_u32(value: u32) -> Option<Self> {
        match value {
            1 => Some(Self::LocalWorkload),
            2 => Some(Self::RemoteWorkload),
            3 => Some(Self::Host),
            4 => Some(Self::Blackhole),
            _ => None,
        }
    }

    /// A short lowercase name for tables and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::LocalWorkload => "local-workload",
            Self::RemoteWorkload => "remote-workload",
            Self::Host => "host",
            Self::Blackhole => "blackhole",
        }
    }
}

/// Data part of an IPv4 route key: the address in network byte order. The LPM trie key is
/// `{ prefix_len: u32, data: [u8; 4] }`.
pub type RouteKeyV4 = [u8; 4];
/// Data part of an IPv6 route key: the address in network byte order.
pub type RouteKeyV6 = [u8; 16];

/// Value of the route maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RouteValue {
    /// A [`RouteKind`] as `u32`.
    pub kind: u32,
    /// For a local workload: the ifindex of the host side of its interface.
    pub ifindex: u32,
    /// For a local workload: the workload's own MAC (destination MAC of forwarded frames).
    /// All zeroes when unknown; the kernel then resolves the neighbour itself.
    pub mac: [u8; 6],
    /// For a local workload: the MAC of the host side of its interface (source MAC of forwarded
    /// frames).
    pub host_mac: [u8; 6],
    /// For a remote workload: the next hop (IPv4 in the first four bytes).
    pub next_hop: [u8; 16],
}

/// Data part of an allowed-source key: the ingress interface, then the address. The ifindex is
/// matched in full (prefix length = 32 + address prefix), so its byte order does not matter;
/// it is stored in host byte order so that `bpftool` shows the real ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceKeyV4 {
    pub ifindex: u32,
    pub addr: [u8; 4],
}

/// IPv6 variant of [`SourceKeyV4`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceKeyV6 {
    pub ifindex: u32,
    pub addr: [u8; 16],
}

/// Bits of the allowed-source map's value.
pub mod source_flags {
    /// The prefix is one of the endpoint's own `ipNetworks`.
    pub const OWN_ADDRESS: u32 = 1;
    /// The prefix comes from the endpoint's `allowSpoofedSourcePrefixes`.
    pub const ALLOWED_SPOOF: u32 = 2;
}

/// Length of [`EndpointInfo::ifname`] (Linux `IFNAMSIZ`).
pub const IFNAME_LEN: usize = 16;

/// Length of [`EndpointInfo::name`].
pub const ENDPOINT_NAME_LEN: usize = 96;

/// Value of the endpoints map, keyed by the ifindex of the host side of the interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Bits from [`endpoint_flags`].
    pub flags: u32,
    /// Policy id of the endpoint's compiled ingress policy (first key part of the policy
    /// address tries); never 0 once the entry exists.
    pub ingress_policy: u32,
    /// Policy id of the endpoint's compiled egress policy.
    pub egress_policy: u32,
    /// Reserved.
    pub _pad: u32,
    /// The workload's MAC (zero when unknown).
    pub mac: [u8; 6],
    /// The MAC of the host side of the interface.
    pub host_mac: [u8; 6],
    /// Name of the host side of the interface, NUL-padded.
    pub ifname: [u8; IFNAME_LEN],
    /// `namespace/name` of the WorkloadEndpoint, NUL-padded (truncated if longer).
    pub name: [u8; ENDPOINT_NAME_LEN],
}

impl Default for EndpointInfo {
    fn default() -> Self {
        Self {
            flags: 0,
            ingress_policy: 0,
            egress_policy: 0,
            _pad: 0,
            mac: [0; 6],
            host_mac: [0; 6],
            ifname: [0; IFNAME_LEN],
            name: [0; ENDPOINT_NAME_LEN],
        }
    }
}

impl EndpointInfo {
    /// The stored endpoint name, up to the first NUL.
    pub fn name_bytes(&self) -> &[u8] {
        until_nul(&self.name)
    }

    /// The stored interface name, up to the first NUL.
    pub fn ifname_bytes(&self) -> &[u8] {
        until_nul(&self.ifname)
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// Copies `text` into a NUL-padded fixed-size field, truncating it if it is too long.
pub fn fill_nul_padded<const N: usize>(text: &[u8]) -> [u8; N] {
    let mut field = [0u8; N];
    let len = text.len().min(N);
    field[..len].copy_from_slice(&text[..len]);
    field
}

/// Bits of [`EndpointInfo::flags`].
pub mod endpoint_flags {
    /// The interface is a workload interface managed by the agent.
    pub const WORKLOAD: u32 = 1;
}

/// Why a packet was dropped. The value indexes [`EndpointCounters::drops`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The source address is not one the endpoint may send from.
    SpoofedSource = 0,
    /// The destination matched a blackhole route.
    Blackhole = 1,
    /// The packet is truncated or its headers are invalid.
    Malformed = 2,
    /// The packet arrived on an interface the agent does not know (no endpoint entry).
    UnknownInterface = 3,
    /// A redirect to the destination interface failed.
    RedirectFailed = 4,
    /// Policy denied the packet (a rule, a tier's default action, or no profile allowing it).
    PolicyDenied = 5,
    /// The endpoint's compiled policy gave no verdict (it should always give one): dropped,
    /// never allowed.
    PolicyMissing = 6,
}

/// Number of slots in [`EndpointCounters::drops`].
pub const DROP_REASONS: usize = 8;

impl DropReason {
    /// Every reason, in counter-index order.
    pub const ALL: [DropReason; 7] = [
        Self::SpoofedSource,
        Self::Blackhole,
        Self::Malformed,
        Self::UnknownInterface,
        Self::RedirectFailed,
        Self::PolicyDenied,
        Self::PolicyMissing,
    ];

    /// A short lowercase name for tables and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SpoofedSource => "spoofed-source",
            Self::Blackhole => "blackhole",
            Self::Malformed => "malformed",
            Self::UnknownInterface => "unknown-interface",
            Self::RedirectFailed => "redirect-failed",
            Self::PolicyDenied => "policy-denied",
            Self::PolicyMissing => "policy-missing",
        }
    }
}

/// Key of the counters entry that collects packets from interfaces without an endpoint entry
/// (a program left attached to an interface the agent no longer knows). No interface has
/// ifindex 0.
pub const UNKNOWN_INTERFACE_COUNTERS: u32 = 0;

/// Per-CPU counters of one workload interface. "From" and "to" are seen from the workload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EndpointCounters {
    /// Packets the workload sent (everything the from-workload program saw).
    pub from_wl_packets: u64,
    pub from_wl_bytes: u64,
    /// Packets delivered to the workload, by a redirect from another workload or through the
    /// kernel (the to-workload program).
    pub to_wl_packets: u64,
    pub to_wl_bytes: u64,
    /// Packets from this workload forwarded to another local workload inside BPF.
    pub fwd_packets: u64,
    pub fwd_bytes: u64,
    /// Packets from this workload handed to the kernel stack (host or remote destinations).
    pub to_host_packets: u64,
    pub to_host_bytes: u64,
    /// ARP requests and IPv6 neighbour solicitations answered by the program on the
    /// gateway's behalf.
    pub neighbour_replies: u64,
    /// Dropped packets, indexed by [`DropReason`].
    pub drops: [u64; DROP_REASONS],
}

impl EndpointCounters {
    /// Adds another CPU's counters to these.
    pub fn accumulate(&mut self, other: &Self) {
        self.from_wl_packets += other.from_wl_packets;
        self.from_wl_bytes += other.from_wl_bytes;
        self.to_wl_packets += other.to_wl_packets;
        self.to_wl_bytes += other.to_wl_bytes;
        self.fwd_packets += other.fwd_packets;
        self.fwd_bytes += other.fwd_bytes;
        self.to_host_packets += other.to_host_packets;
        self.to_host_bytes += other.to_host_bytes;
        self.neighbour_replies += other.neighbour_replies;
        for (mine, theirs) in self.drops.iter_mut().zip(other.drops.iter()) {
            *mine += *theirs;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Policy: a verdict for a new flow in a few hash lookups, whatever the number of rules.
//
// Userspace compiles an endpoint's policy for one direction into three sets of prefix entries,
// each to be matched longest prefix first:
//
// 1. {policy id, local address, remote address/len} → address class. The policy id names one
//    endpoint's compiled policy in one direction (one generation of it); the local address is
//    the endpoint's own (destination for ingress, source for egress).
// 2. {address class, protocol, source port/len} → port class; an entry without protocol is the
//    class's default for protocols no rule names.
// 3. {port class, destination port/len} → verdict. For ICMP and ICMPv6 the "port" is
//    `type << 8 | code`; for protocols without ports it is 0.
//
// Each set is a hash whose keys hold the prefix (masked) and its length. The program finds the
// longest match by trying, longest first, only the lengths that set uses for that policy or
// class (a bitmap found one step earlier): the cost follows the number of distinct prefix
// lengths, not the number of rules or entries. An LPM trie would do the same in one lookup, but
// its cost grows with the entries it holds (measured: docs/policy-compilation.md).

/// Per policy id: which remote prefix lengths its address entries use (bit n: length n).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct PolicyInfo {
    /// Lengths 0..=32 of IPv4 entries.
    pub v4_lengths: u64,
    /// Lengths 0..=128 of IPv6 entries (bit n of word n / 64).
    pub v6_lengths: [u64; 3],
}

/// Key of the IPv4 address map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct PolicyAddrKeyV4 {
    /// The compiled policy (host byte order).
    pub policy: u32,
    /// The endpoint's own address (network byte order), matched in full.
    pub local: [u8; 4],
    /// The other side's address (network byte order), its bits past `prefix_len` zero.
    pub remote: [u8; 4],
    /// Prefix length of `remote`.
    pub prefix_len: u32,
}

/// Key of the IPv6 address map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct PolicyAddrKeyV6 {
    pub policy: u32,
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub prefix_len: u32,
}

/// Value of the address maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct AddressClass {
    pub class: u32,
    /// Source-port prefix lengths (bit n: length n, 0..=16) of the class's protocol entries.
    pub sport_lengths: u32,
}

/// Values of [`PolicyProtoKey::kind`].
pub mod proto_kind {
    /// The class's default, for protocols no rule names (protocol and source port zero).
    pub const ANY: u8 = 0;
    /// An entry for one protocol.
    pub const ONE: u8 = 1;
}

/// Key of the protocol/source-port map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct PolicyProtoKey {
    /// Address class (host byte order).
    pub class: u32,
    /// A [`proto_kind`] value.
    pub kind: u8,
    /// IP protocol number.
    pub proto: u8,
    /// Source port, network byte order, its bits past `sport_len` zero.
    pub sport: [u8; 2],
    /// Prefix length of `sport` (0..=16).
    pub sport_len: u8,
    pub _pad: [u8; 3],
}

/// Value of the protocol/source-port map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct PortClass {
    pub port_class: u32,
    /// Destination-port prefix lengths (bit n: length n, 0..=16) of the port class's entries.
    pub dport_lengths: u32,
}

/// Key of the destination-port map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash, PartialOrd, Ord)]
pub struct PolicyPortKey {
    /// Port class (host byte order).
    pub class: u32,
    /// Destination port, or `type << 8 | code` for ICMP, network byte order, its bits past
    /// `dport_len` zero.
    pub dport: [u8; 2],
    /// Prefix length of `dport` (0..=16).
    pub dport_len: u8,
    pub _pad: u8,
}

/// `value` with only its first `len` bits (of 16) kept.
#[inline(always)]
pub const fn mask_port(value: u16, len: u8) -> u16 {
    if len == 0 {
        0
    } else {
        value & (u16::MAX << (16 - len as u32))
    }
}

/// An IPv4 address (as bytes) with only its first `len` bits kept.
#[inline(always)]
pub fn mask_v4(addr: [u8; 4], len: u32) -> [u8; 4] {
    let value = u32::from_be_bytes(addr);
    let mask = if len == 0 {
        0
    } else if len >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - len)
    };
    (value & mask).to_be_bytes()
}

/// An IPv6 address (as bytes) with only its first `len` bits kept.
#[inline(always)]
pub fn mask_v6(addr: &[u8; 16], len: u32) -> [u8; 16] {
    let hi = u64::from_be_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let lo = u64::from_be_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    let mask = |len: u32| {
        if len == 0 {
            0
        } else if len >= 64 {
            u64::MAX
        } else {
            u64::MAX << (64 - len)
        }
    };
    let (hi, lo) = if len >= 64 {
        (hi, lo & mask(len - 64))
    } else {
        (hi & mask(len), 0)
    };
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&lo.to_be_bytes());
    out
}

/// Values of [`PolicyVerdict::action`].
pub mod verdict_action {
    /// Let the packet through (and track its flow).
    pub const ALLOW: u8 = 1;
    /// Drop it.
    pub const DENY: u8 = 2;
}

/// Bits of [`PolicyVerdict::flags`].
pub mod verdict_flags {
    /// A Log rule matched before the verdict: emit a [`crate::LogEvent`].
    pub const LOG: u8 = 1;
}

/// What policy decided for a packet, and which rule decided.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct PolicyVerdict {
    /// A [`verdict_action`] value.
    pub action: u8,
    /// Bits from [`verdict_flags`].
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Rule id of what decided (a rule, a tier's default action, or the final deny).
    pub rule: u32,
    /// Rule id of the first Log rule that matched, when [`verdict_flags::LOG`] is set.
    pub log_rule: u32,
}

/// Values of [`RuleInfo::kind`].
pub mod rule_kind {
    /// A rule of a NetworkPolicy or GlobalNetworkPolicy.
    pub const POLICY_RULE: u8 = 1;
    /// The default action of a tier whose policies decided nothing.
    pub const TIER_DEFAULT: u8 = 2;
    /// A rule of a Profile.
    pub const PROFILE_RULE: u8 = 3;
    /// Nothing allowed the packet: the deny after the profiles.
    pub const NO_MATCH: u8 = 4;
}

/// Values of direction fields: [`RuleInfo::direction`], [`LogEvent::direction`],
/// [`TraceResult::direction`].
pub mod direction {
    /// Traffic into the endpoint.
    pub const INGRESS: u8 = 0;
    /// Traffic out of the endpoint.
    pub const EGRESS: u8 = 1;
}

/// Length of [`RuleInfo::tier`].
pub const RULE_TIER_LEN: usize = 64;
/// Length of [`RuleInfo::policy`].
pub const RULE_POLICY_LEN: usize = 192;

/// What a rule id stands for (value of the rules map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    /// A [`rule_kind`] value.
    pub kind: u8,
    /// The rule's action: [`verdict_action`] values, plus 3 for Log and 4 for Pass.
    pub action: u8,
    /// A [`direction`] value.
    pub direction: u8,
    pub _pad: u8,
    /// Index of the rule in its policy's or profile's rule list of that direction.
    pub index: u32,
    /// Tier name, NUL-padded (empty for profiles and the final deny).
    pub tier: [u8; RULE_TIER_LEN],
    /// Policy as `kind:namespace/name` or `kind:name` (`Profile:name` for profiles), NUL-padded.
    pub policy: [u8; RULE_POLICY_LEN],
}

impl Default for RuleInfo {
    fn default() -> Self {
        Self {
            kind: 0,
            action: 0,
            direction: 0,
            _pad: 0,
            index: 0,
            tier: [0; RULE_TIER_LEN],
            policy: [0; RULE_POLICY_LEN],
        }
    }
}

impl RuleInfo {
    /// The tier name, up to the first NUL.
    pub fn tier_bytes(&self) -> &[u8] {
        until_nul(&self.tier)
    }

    /// The policy name, up to the first NUL.
    pub fn policy_bytes(&self) -> &[u8] {
        until_nul(&self.policy)
    }
}

/// Per-CPU hits of one rule id: packets (and their bytes) whose verdict it decided, counted
/// when policy is evaluated (a flow's first packet, or every packet of an untracked one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleCounters {
    pub packets: u64,
    pub bytes: u64,
}

// ---------------------------------------------------------------------------------------------
// Connection tracking

/// Key of the conntrack map: the flow's addresses and ports, normalized so that both
/// directions find the same entry: side A is the lower (address, port) pair.
///
/// For ICMP echo both ports hold the identifier; for other protocols without ports both are 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct ConntrackKey {
    /// IPv4 addresses use the first four bytes, the rest zero.
    pub addr_a: [u8; 16],
    pub addr_b: [u8; 16],
    /// Host byte order.
    pub port_a: u16,
    pub port_b: u16,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Bits of [`ConntrackValue::flags`]. "Forward" is the direction of the flow's first packet.
pub mod conntrack_flags {
    /// The opener's SYN was seen.
    pub const SYN_FWD: u16 = 1;
    /// The responder's SYN-ACK was seen.
    pub const SYN_REV: u16 = 2;
    /// The handshake completed (the opener's ACK after the SYN-ACK).
    pub const ESTABLISHED: u16 = 4;
    /// A FIN from the opener.
    pub const FIN_FWD: u16 = 8;
    /// A FIN from the responder.
    pub const FIN_REV: u16 = 16;
    /// A RST from either side.
    pub const RST: u16 = 32;
    /// A reply was seen (any protocol).
    pub const REPLIED: u16 = 64;
}

/// Value of the conntrack map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConntrackValue {
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) when the entry was created.
    pub created_ns: u64,
    /// `bpf_ktime_get_coarse_ns` of the last packet.
    pub last_seen_ns: u64,
    /// Packets from the opener.
    pub packets_fwd: u64,
    /// Packets from the responder.
    pub packets_rev: u64,
    /// Bits from [`conntrack_flags`].
    pub flags: u16,
    /// 0 when side A of the key opened the flow, 1 when side B did.
    pub opener: u8,
    pub _pad: u8,
    /// Policy id of the opener's egress policy that allowed the flow (0: the opener is not a
    /// local workload). When the endpoint's policy id changes, the flow is checked again.
    pub egress_policy: u32,
    /// Policy id of the responder's ingress policy that allowed the flow (0: not a local
    /// workload).
    pub ingress_policy: u32,
    /// Rule ids that allowed it (0 when the side had no policy).
    pub egress_rule: u32,
    pub ingress_rule: u32,
    pub _pad2: u32,
}

const SECOND_NS: u64 = 1_000_000_000;

/// Calico's default conntrack timeouts (idle time since the last packet), in nanoseconds.
pub mod conntrack_timeouts {
    use super::SECOND_NS;
    pub const TCP_SYN_SENT: u64 = 20 * SECOND_NS;
    pub const TCP_ESTABLISHED: u64 = 3600 * SECOND_NS;
    pub const TCP_FINS_SEEN: u64 = 30 * SECOND_NS;
    pub const TCP_RESET: u64 = 40 * SECOND_NS;
    pub const UDP: u64 = 60 * SECOND_NS;
    pub const ICMP: u64 = 5 * SECOND_NS;
    pub const OTHER: u64 = 600 * SECOND_NS;
}

impl ConntrackValue {
    /// How long the entry may stay idle, given its protocol and state (Calico's defaults).
    #[inline(always)]
    pub fn timeout_ns(&self, proto: u8) -> u64 {
        use conntrack_flags::*;
        match proto {
            6 => {
                if self.flags & RST != 0 {
                    conntrack_timeouts::TCP_RESET
                } else if self.flags & (FIN_FWD | FIN_REV) == FIN_FWD | FIN_REV {
                    conntrack_timeouts::TCP_FINS_SEEN
                } else if self.flags & ESTABLISHED != 0 {
                    conntrack_timeouts::TCP_ESTABLISHED
                } else {
                    conntrack_timeouts::TCP_SYN_SENT
                }
            }
            17 | 136 => conntrack_timeouts::UDP,
            1 | 58 => conntrack_timeouts::ICMP,
            _ => conntrack_timeouts::OTHER,
        }
    }

    /// Whether the entry has expired at `now_ns`.
    #[inline(always)]
    pub fn expired(&self, proto: u8, now_ns: u64) -> bool {
        now_ns.saturating_sub(self.last_seen_ns) > self.timeout_ns(proto)
    }
}

// ---------------------------------------------------------------------------------------------
// Log events and trace results

/// One packet that matched a Log rule (when its flow's verdict was computed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LogEvent {
    /// Host-side ifindex of the endpoint whose policy logged.
    pub ifindex: u32,
    /// The Log rule's id.
    pub log_rule: u32,
    /// What decided the packet afterwards.
    pub rule: u32,
    /// A [`verdict_action`] value.
    pub action: u8,
    /// A [`direction`] value.
    pub direction: u8,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    /// IPv4 addresses use the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order (ICMP: type and code).
    pub sport: u16,
    pub dport: u16,
}

/// Values of [`TraceResult::decided_by`].
pub mod trace_decided_by {
    /// Policy: see [`crate::TraceResult::rule`].
    pub const POLICY: u8 = 1;
    /// An existing conntrack entry (the packet belongs to a tracked flow, or is an ICMP error
    /// about one).
    pub const CONNTRACK: u8 = 2;
    /// No endpoint is known for the interface.
    pub const NO_ENDPOINT: u8 = 3;
    /// The packet could not be parsed.
    pub const MALFORMED: u8 = 4;
    /// The endpoint's policy gave no verdict.
    pub const NO_VERDICT: u8 = 5;
}

/// What the trace program found (value of the trace map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceResult {
    /// A [`verdict_action`] value.
    pub action: u8,
    /// A [`trace_decided_by`] value.
    pub decided_by: u8,
    /// A [`direction`] value.
    pub direction: u8,
    /// [`verdict_flags`] of the policy verdict.
    pub flags: u8,
    /// Rule id that decided (policy), or that allowed the flow (conntrack).
    pub rule: u32,
    /// First Log rule that matched.
    pub log_rule: u32,
    /// The policy id used.
    pub policy: u32,
    /// The address and port classes the lookups found.
    pub address_class: u32,
    pub port_class: u32,
    /// Counts runs, so the caller can tell that the program wrote this result.
    pub sequence: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, made only of integers and byte arrays, with every
    // padding byte spelled out as a field, so any bit pattern is valid.
    unsafe impl aya::Pod for super::RouteValue {}
    unsafe impl aya::Pod for super::SourceKeyV4 {}
    unsafe impl aya::Pod for super::SourceKeyV6 {}
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::EndpointCounters {}
    unsafe impl aya::Pod for super::PolicyInfo {}
    unsafe impl aya::Pod for super::AddressClass {}
    unsafe impl aya::Pod for super::PortClass {}
    unsafe impl aya::Pod for super::PolicyAddrKeyV4 {}
    unsafe impl aya::Pod for super::PolicyAddrKeyV6 {}
    unsafe impl aya::Pod for super::PolicyProtoKey {}
    unsafe impl aya::Pod for super::PolicyPortKey {}
    unsafe impl aya::Pod for super::PolicyVerdict {}
    unsafe impl aya::Pod for super::RuleInfo {}
    unsafe impl aya::Pod for super::RuleCounters {}
    unsafe impl aya::Pod for super::ConntrackKey {}
    unsafe impl aya::Pod for super::ConntrackValue {}
    unsafe impl aya::Pod for super::LogEvent {}
    unsafe impl aya::Pod for super::TraceResult {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<RouteValue>(), 4 + 4 + 6 + 6 + 16);
        assert_eq!(size_of::<SourceKeyV4>(), 8);
        assert_eq!(size_of::<SourceKeyV6>(), 20);
        assert_eq!(
            size_of::<EndpointInfo>(),
            4 * 4 + 6 + 6 + IFNAME_LEN + ENDPOINT_NAME_LEN
        );
        assert_eq!(size_of::<PolicyInfo>(), 32);
        assert_eq!(size_of::<PolicyAddrKeyV4>(), 16);
        assert_eq!(size_of::<PolicyAddrKeyV6>(), 40);
        assert_eq!(size_of::<PolicyProtoKey>(), 12);
        assert_eq!(size_of::<PolicyPortKey>(), 8);
        assert_eq!(size_of::<AddressClass>(), 8);
        assert_eq!(size_of::<PortClass>(), 8);
        assert_eq!(size_of::<PolicyVerdict>(), 12);
        assert_eq!(size_of::<RuleInfo>(), 8 + RULE_TIER_LEN + RULE_POLICY_LEN);
        assert_eq!(size_of::<ConntrackKey>(), 40);
        assert_eq!(size_of::<ConntrackValue>(), 4 * 8 + 4 + 5 * 4);
        assert_eq!(size_of::<LogEvent>(), 16 + 32 + 4);
        assert_eq!(size_of::<TraceResult>(), 4 + 5 * 4 + 8);
        assert_eq!(size_of::<EndpointCounters>(), 9 * 8 + DROP_REASONS * 8);
    }

    #[test]
    fn masks_keep_the_prefix() {
        assert_eq!(mask_port(0xabcd, 0), 0);
        assert_eq!(mask_port(0xabcd, 8), 0xab00);
        assert_eq!(mask_port(0xabcd, 16), 0xabcd);
        assert_eq!(mask_v4([198, 18, 7, 9], 0), [0; 4]);
        assert_eq!(mask_v4([198, 18, 7, 9], 20), [198, 18, 0, 0]);
        assert_eq!(mask_v4([198, 18, 7, 9], 32), [198, 18, 7, 9]);
        let a = [
            0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        assert_eq!(mask_v6(&a, 128), a);
        assert_eq!(mask_v6(&a, 0), [0; 16]);
        assert_eq!(
            mask_v6(&a, 32),
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            mask_v6(&a, 68),
            [0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(mask_v6(&a, 72)[8], 5);
    }

    #[test]
    fn route_kind_round_trips() {
        for kind in [
            RouteKind::LocalWorkload,
            RouteKind::RemoteWorkload,
            RouteKind::Host,
            RouteKind::Blackhole,
        ] {
            assert_eq!(RouteKind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(RouteKind::from_u32(0), None);
    }

    #[test]
    fn drop_reasons_fit_the_counter_array() {
        for (index, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index);
            assert!((*reason as usize) < DROP_REASONS);
        }
    }

    #[test]
    fn endpoint_name_stops_at_nul() {
        let info = EndpointInfo {
            name: fill_nul_padded(b"ns/name"),
            ifname: fill_nul_padded(b"cali0123456789abcdef"),
            ..EndpointInfo::default()
        };
        assert_eq!(info.name_bytes(), b"ns/name");
        assert_eq!(info.ifname_bytes(), b"cali0123456789ab");
    }
}
