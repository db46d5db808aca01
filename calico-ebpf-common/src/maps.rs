//! Every BPF map, defined once: its name, kind, key and value types, default size, flags and
//! layout version, in the list of [`for_each_map!`](crate::for_each_map).
//!
//! Everything else is derived from that list:
//! - here, a marker type per map implementing [`MapSpec`] (its [`MapDef`] and its key and value
//!   types), [`map_names`] and [`ALL`], the maps the agent pins;
//! - in the kernel programs, the `#[btf_map]` statics (the list is handed to a macro of theirs,
//!   since a map's name must be a literal there);
//! - in the agent, the typed handles, the layout check of a pinned map before it is adopted, and
//!   the version records;
//! - in `docs/maps.md`, the summary table (a test fails when it disagrees, and prints the table
//!   to paste).
//!
//! A map's **layout version** changes whenever its key or value layout (or meaning) changes.
//! The agent records the version of every map it pins in [`Versions`] (`cali_versions`), and
//! refuses to adopt a pinned map of another version, naming the map and both versions.

/// The kinds of map in use, with their kernel map type numbers (`enum bpf_map_type`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    PerCpuHash = 5,
    PerCpuArray = 6,
    LruHash = 9,
    LpmTrie = 11,
    RingBuf = 27,
}

impl MapKind {
    /// The kernel's key size for a key type of `key` bytes: an LPM trie key is the prefix length
    /// (`u32`) followed by the data; a ring buffer has no key.
    pub const fn key_size(self, key: usize) -> u32 {
        match self {
            Self::LpmTrie => (4 + key) as u32,
            Self::RingBuf => 0,
            _ => key as u32,
        }
    }

    /// The kernel's value size for a value type of `value` bytes (per CPU for per-CPU maps); a
    /// ring buffer has none (its size is in bytes, `max_entries`).
    pub const fn value_size(self, value: usize) -> u32 {
        match self {
            Self::RingBuf => 0,
            _ => value as u32,
        }
    }

    /// How `bpftool` and the docs call this kind.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hash => "hash",
            Self::Array => "array",
            Self::PerCpuHash => "percpu_hash",
            Self::PerCpuArray => "percpu_array",
            Self::LruHash => "lru_hash",
            Self::LpmTrie => "lpm_trie",
            Self::RingBuf => "ringbuf",
        }
    }
}

/// Marker types naming the map kinds at the type level, so that the agent can map a
/// [`MapSpec`] onto the matching typed handle.
pub mod kind {
    pub struct Hash;
    pub struct Array;
    pub struct PerCpuHash;
    pub struct PerCpuArray;
    pub struct LruHash;
    pub struct LpmTrie;
    pub struct RingBuf;
}

/// Map flags used in the definitions.
pub mod flags {
    /// `BPF_F_NO_PREALLOC`: entries are allocated when written (and freed after an RCU grace
    /// period, so a program never reads an entry that is being reused).
    pub const NO_PREALLOC: u32 = 1;
}

/// One map's definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapDef {
    /// Name in the object, in the kernel and under the pin directory (at most 15 characters).
    pub name: &'static str,
    pub kind: MapKind,
    /// The key type as written in the definition, and the kernel's key size.
    pub key_type: &'static str,
    pub key_size: u32,
    /// The value type as written in the definition, and the kernel's value size.
    pub value_type: &'static str,
    pub value_size: u32,
    /// Default number of entries (bytes for a ring buffer).
    pub max_entries: u32,
    /// Map flags (see [`flags`]).
    pub flags: u32,
    /// Layout version: changes when the key or value layout changes.
    pub version: u32,
    /// What an upgrade does with a pinned map of another version or size.
    pub on_upgrade: OnUpgrade,
    /// What the map holds (the definition's doc comment).
    pub doc: &'static str,
}

/// What a new agent does with a pinned map whose layout version or size is not its own (an
/// upgrade, or a new `BPFMapSizeConntrack`). The new map is created beside the old one, the
/// programs move to it interface by interface, and only then does it take the old one's pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnUpgrade {
    /// The agent writes the whole content from the datastore: the new map starts empty and is
    /// filled before any program uses it.
    Refill,
    /// State the programs wrote that must survive (tracked flows): the entries are copied,
    /// converted from the old layout, before the programs move and again after.
    Carry,
    /// Counters and transient data: the new map starts from zero.
    Reset,
}

impl OnUpgrade {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Refill => "refill",
            Self::Carry => "carry",
            Self::Reset => "reset",
        }
    }
}

/// Added to some maps' layout versions by the test-only feature `next-layout`, which builds
/// an agent whose maps are one version ahead (and whose conntrack value has one more field),
/// to test upgrades between two real builds.
#[cfg(feature = "next-layout")]
pub const NEXT_LAYOUT: u32 = 1;
#[cfg(not(feature = "next-layout"))]
pub const NEXT_LAYOUT: u32 = 0;

/// A map, as a type: its definition and its key and value types.
pub trait MapSpec {
    /// One of the [`kind`] markers.
    type Kind;
    /// The key type (for an LPM trie, the data after the prefix length; `()` for a ring buffer).
    type Key;
    /// The value type (per CPU for per-CPU maps; the record type of a ring buffer).
    type Value;
    const DEF: MapDef;
}

/// Key of [`Versions`]: a map's name, NUL-padded.
pub type VersionKey = [u8; 16];

/// Value of [`Versions`]: how a map pinned by the agent was laid out when it was created.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VersionRecord {
    /// [`MapDef::version`].
    pub version: u32,
    /// [`MapDef::key_size`] and [`MapDef::value_size`].
    pub key_size: u32,
    pub value_size: u32,
    /// A [`MapKind`] as `u32`.
    pub kind: u32,
}

crate::user_pod!(VersionRecord);

/// Default number of workload interfaces on one host (Calico's interface-state map holds 1000,
/// which users hit).
pub const ENDPOINTS_MAX: u32 = 16_384;

/// Most data interfaces with a host endpoint on one host.
pub const HOST_ENDPOINTS_MAX: u32 = 256;

/// Hands the list of every map to `$callback!`, one entry per map:
///
/// ```text
/// /// doc
/// Marker CONST "name" Kind<Key, Value> max: entries, flags: flags, version: n, upgrade: how;
/// ```
///
/// This is the one place where a map is defined. This crate turns the list into [`MapSpec`]
/// marker types, the kernel programs into `#[btf_map]` statics.
#[macro_export]
macro_rules! for_each_map {
    ($callback:ident) => {
        $callback! {
            /// IPv4 routes, longest prefix first (Calico's default size of 256k).
            RoutesV4 ROUTES_V4 "cali_routes_v4"
                LpmTrie<$crate::routes::RouteKeyV4, $crate::routes::RouteValue>
                max: 262_144, flags: $crate::maps::flags::NO_PREALLOC,
                version: 2 + $crate::maps::NEXT_LAYOUT, upgrade: Refill;
            /// IPv6 routes.
            RoutesV6 ROUTES_V6 "cali_routes_v6"
                LpmTrie<$crate::routes::RouteKeyV6, $crate::routes::RouteValue>
                max: 262_144, flags: $crate::maps::flags::NO_PREALLOC, version: 2, upgrade: Refill;
            /// The nodes remote routes lead to, by node id: their names; written for `dump` and
            /// `trace`, never read by the programs.
            Nodes NODES "cali_nodes"
                Hash<u32, $crate::routes::NodeInfo>
                max: 65_536, flags: $crate::maps::flags::NO_PREALLOC, version: 1, upgrade: Refill;
            /// IPv4 prefixes each workload interface may send from (anti-spoofing), flags.
            SourcesV4 SOURCES_V4 "cali_srcs_v4"
                LpmTrie<$crate::routes::SourceKeyV4, u32>
                max: 65_536, flags: $crate::maps::flags::NO_PREALLOC, version: 1, upgrade: Refill;
            /// IPv6 prefixes each workload interface may send from.
            SourcesV6 SOURCES_V6 "cali_srcs_v6"
                LpmTrie<$crate::routes::SourceKeyV6, u32>
                max: 65_536, flags: $crate::maps::flags::NO_PREALLOC, version: 1, upgrade: Refill;
            /// Workload interfaces by host-side ifindex.
            Endpoints ENDPOINTS "cali_endpoints"
                Hash<u32, $crate::endpoints::EndpointInfo>
                max: $crate::maps::ENDPOINTS_MAX, flags: 0,
                version: 1 + $crate::maps::NEXT_LAYOUT, upgrade: Refill;
            /// Per-CPU counters per workload interface, plus the shared entry (ifindex 0) of
            /// interfaces without an endpoint.
            Counters COUNTERS "cali_counters"
                PerCpuHash<u32, $crate::counters::EndpointCounters>
                max: $crate::maps::ENDPOINTS_MAX + 1, flags: 0,
                version: 3 + $crate::maps::NEXT_LAYOUT, upgrade: Reset;
            /// Compiled policies by policy id: the prefix lengths their address entries use
            /// (two per endpoint, plus room for the next generation of each).
            Policies POLICIES "cali_policies"
                Hash<u32, $crate::policy::PolicyInfo>
                max: 4 * $crate::maps::ENDPOINTS_MAX, flags: $crate::maps::flags::NO_PREALLOC,
                version: 1, upgrade: Refill;
            /// Policy, first step (IPv4): policy, local address and remote prefix to address
            /// class.
            PolicyAddrsV4 POLICY_ADDRS_V4 "cali_paddr_v4"
                Hash<$crate::policy::PolicyAddrKeyV4, $crate::policy::AddressClass>
                max: 1_048_576, flags: $crate::maps::flags::NO_PREALLOC,
                version: 1, upgrade: Refill;
            /// Policy, first step (IPv6).
            PolicyAddrsV6 POLICY_ADDRS_V6 "cali_paddr_v6"
                Hash<$crate::policy::PolicyAddrKeyV6, $crate::policy::AddressClass>
                max: 1_048_576, flags: $crate::maps::flags::NO_PREALLOC,
                version: 1, upgrade: Refill;
            /// Policy, second step: address class, protocol and source prefix to port class.
            PolicyProtos POLICY_PROTOS "cali_pproto"
                Hash<$crate::policy::PolicyProtoKey, $crate::policy::PortClass>
                max: 1_048_576, flags: $crate::maps::flags::NO_PREALLOC,
                version: 1, upgrade: Refill;
            /// Policy, third step: port class and destination prefix to verdict.
            PolicyPorts POLICY_PORTS "cali_pports"
                Hash<$crate::policy::PolicyPortKey, $crate::policy::PolicyVerdict>
                max: 1_048_576, flags: $crate::maps::flags::NO_PREALLOC,
                version: 1, upgrade: Refill;
            /// What each rule id stands for; written for `trace`, `dump` and `bpftool`, never
            /// read by the programs. Its `stage` tells a host endpoint's pre-DNAT and untracked
            /// rules from normal ones.
            Rules RULES "cali_rules"
                Hash<u32, $crate::policy::RuleInfo>
                max: 65_536, flags: $crate::maps::flags::NO_PREALLOC, version: 1, upgrade: Refill;
            /// Per-CPU hits per rule id.
            RuleCounters RULE_COUNTERS "cali_rule_ctrs"
                PerCpuArray<u32, $crate::counters::RuleCounters>
                max: 65_536, flags: 0, version: 1, upgrade: Reset;
            /// Connection tracking (Calico's default size of 512k; `--conntrack-size`).
            Conntrack CONNTRACK "cali_conntrack"
                LruHash<$crate::conntrack::ConntrackKey, $crate::conntrack::ConntrackValue>
                max: 524_288, flags: 0, version: 1 + $crate::maps::NEXT_LAYOUT, upgrade: Carry;
            /// Per-CPU counts of conntrack entries created and removed by the programs, and of
            /// new flows whose entry the table could not take (one slot).
            ConntrackStats CONNTRACK_STATS "cali_ct_stats"
                PerCpuArray<u32, $crate::conntrack::ConntrackCounters>
                max: 1, flags: 0, version: 1, upgrade: Reset;
            /// Floating IPs (`ipNATs`): external address to internal address and interface,
            /// internal address to external address.
            FloatingIps FLOATING_IPS "cali_fips"
                Hash<$crate::floating_ips::FloatingIpKey, $crate::floating_ips::FloatingIpValue>
                max: 65_536, flags: $crate::maps::flags::NO_PREALLOC, version: 1, upgrade: Refill;
            /// Data interfaces that a HostEndpoint covers, by ifindex: the ids of its compiled
            /// policies (version 2: with its untracked policies).
            HostEndpoints HOST_ENDPOINTS "cali_host_eps"
                Hash<u32, $crate::host_endpoints::HostEndpointInfo>
                max: $crate::maps::HOST_ENDPOINTS_MAX, flags: 0, version: 2, upgrade: Refill;
            /// Per-CPU counters per host endpoint interface (version 3: with the packets
            /// untracked policy let through).
            HostEndpointCounters HOST_ENDPOINT_COUNTERS "cali_hep_ctrs"
                PerCpuHash<u32, $crate::host_endpoints::HostEndpointCounters>
                max: $crate::maps::HOST_ENDPOINTS_MAX, flags: 0, version: 3, upgrade: Reset;
            /// Failsafe ports (`FailsafeInboundHostPorts`, `FailsafeOutboundHostPorts`): open
            /// to and from the host whatever host endpoint policy says.
            Failsafes FAILSAFES "cali_failsafes"
                LpmTrie<$crate::host_endpoints::FailsafeKey, u32>
                max: 1024, flags: $crate::maps::flags::NO_PREALLOC, version: 1, upgrade: Refill;
            /// Per-CPU counts of packets translated for floating IPs (one slot).
            FloatingIpCounters FLOATING_IP_COUNTERS "cali_fip_ctrs"
                PerCpuArray<u32, $crate::floating_ips::FloatingIpCounters>
                max: 1, flags: 0, version: 1, upgrade: Reset;
            /// Packets that matched a Log rule (size in bytes).
            LogEvents LOG_EVENTS "cali_log_events"
                RingBuf<(), $crate::events::LogEvent>
                max: 256 * 1024, flags: 0, version: 1, upgrade: Reset;
            /// Dropped packets, for `calico-loader events` (size in bytes); written only while a
            /// listener holds the lease in `cali_drop_ctl`.
            DropEvents DROP_EVENTS "cali_drop_evts"
                RingBuf<(), $crate::events::DropEvent>
                max: 256 * 1024, flags: 0, version: 1, upgrade: Reset;
            /// The drop event listener's registration: its lease, rate limit and sample (one
            /// slot).
            DropControl DROP_CONTROL "cali_drop_ctl"
                Array<u32, $crate::events::DropEventControl>
                max: 1, flags: 0, version: 1, upgrade: Reset;
            /// Per-CPU rate limit state of the drop events, and what became of the drops seen
            /// while a listener was registered (one slot).
            DropStats DROP_STATS "cali_drop_stats"
                PerCpuArray<u32, $crate::events::DropEventStats>
                max: 1, flags: 0, version: 1, upgrade: Reset;
            /// Result of the last `trace` run (one slot).
            Trace TRACE "cali_trace"
                PerCpuArray<u32, $crate::trace::TraceResult>
                max: 1, flags: 0, version: 2, upgrade: Reset;
            /// The layout version of every map the agent pinned, by map name.
            Versions VERSIONS "cali_versions"
                Hash<$crate::maps::VersionKey, $crate::maps::VersionRecord>
                max: 64, flags: 0, version: 1, upgrade: Carry;
        }
    };
}

macro_rules! define_specs {
    ($(
        $(#[doc = $doc:literal])*
        $Spec:ident $CONST:ident $name:literal $kind:ident<$K:ty, $V:ty>
        max: $max:expr, flags: $flags:expr, version: $version:expr, upgrade: $upgrade:ident;
    )*) => {
        $(
            $(#[doc = $doc])*
            pub struct $Spec;

            impl MapSpec for $Spec {
                type Kind = kind::$kind;
                type Key = $K;
                type Value = $V;
                const DEF: MapDef = MapDef {
                    name: $name,
                    kind: MapKind::$kind,
                    key_type: stringify!($K),
                    key_size: MapKind::$kind.key_size(core::mem::size_of::<$K>()),
                    value_type: stringify!($V),
                    value_size: MapKind::$kind.value_size(core::mem::size_of::<$V>()),
                    max_entries: $max,
                    flags: $flags,
                    version: $version,
                    on_upgrade: OnUpgrade::$upgrade,
                    doc: concat!($($doc, "\n"),*),
                };
            }
        )*

        /// The map names, as constants (the kernel limits them to 15 characters).
        pub mod map_names {
            $(pub const $CONST: &str = $name;)*
        }

        /// Every map, in the order the agent pins and checks them.
        pub const ALL: &[MapDef] = &[$(<$Spec as MapSpec>::DEF),*];
    };
}

crate::for_each_map!(define_specs);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_are_unique() {
        for (i, def) in ALL.iter().enumerate() {
            assert!(def.name.len() <= 15, "{} is too long", def.name);
            assert!(
                ALL[..i].iter().all(|other| other.name != def.name),
                "{} is defined twice",
                def.name
            );
        }
    }

    #[test]
    fn sizes_follow_the_kind() {
        assert_eq!(RoutesV4::DEF.key_size, 8);
        assert_eq!(RoutesV4::DEF.value_size, 40);
        assert_eq!(SourcesV6::DEF.key_size, 24);
        assert_eq!(LogEvents::DEF.key_size, 0);
        assert_eq!(LogEvents::DEF.value_size, 0);
        assert_eq!(Counters::DEF.max_entries, Endpoints::DEF.max_entries + 1);
        assert!(RoutesV4::DEF.key_type.ends_with("RouteKeyV4"));
    }
}

/// The summary table of `docs/maps.md`, rendered from the definitions; a test checks that the
/// page holds exactly this table between its `maps-table` markers.
#[cfg(test)]
mod docs_table {
    extern crate std;

    use std::{borrow::ToOwned, format, string::String, vec::Vec};

    use super::*;

    const BEGIN: &str =
        "<!-- maps-table:begin (generated from calico_ebpf_common::maps; a test checks it) -->";
    const END: &str = "<!-- maps-table:end -->";

    /// The type's name without its module path.
    fn short(type_name: &str) -> String {
        type_name
            .rsplit("::")
            .next()
            .unwrap_or(type_name)
            .trim()
            .replace(' ', "")
    }

    fn render() -> String {
        let mut out = String::from(
            "| Name | Kind | Key | Value | Max entries | Flags | Version | On upgrade | What it holds |\n\
             |---|---|---|---|---:|---|---:|---|---|\n",
        );
        for def in ALL {
            let key = match def.kind {
                MapKind::RingBuf => "–".into(),
                MapKind::LpmTrie => {
                    format!("prefix_len + `{}`, {} B", short(def.key_type), def.key_size)
                }
                _ => format!("`{}`, {} B", short(def.key_type), def.key_size),
            };
            let value = match def.kind {
                MapKind::RingBuf => format!("`{}` records", short(def.value_type)),
                MapKind::PerCpuHash | MapKind::PerCpuArray => {
                    format!("`{}`, {} B per CPU", short(def.value_type), def.value_size)
                }
                _ => format!("`{}`, {} B", short(def.value_type), def.value_size),
            };
            let max = match def.kind {
                MapKind::RingBuf => format!("{} bytes", def.max_entries),
                _ => format!("{}", def.max_entries),
            };
            let flags = if def.flags & flags::NO_PREALLOC != 0 {
                "no prealloc"
            } else {
                "–"
            };
            let doc: Vec<&str> = def.doc.lines().map(str::trim).collect();
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                def.name,
                def.kind.as_str(),
                key,
                value,
                max,
                flags,
                def.version,
                def.on_upgrade.as_str(),
                doc.join(" ")
            ));
        }
        out
    }

    #[test]
    fn docs_maps_md_holds_the_generated_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/maps.md");
        let page = std::fs::read_to_string(path).expect("docs/maps.md is readable");
        let table = render();
        let found = page
            .split_once(BEGIN)
            .and_then(|(_, rest)| rest.split_once(END))
            .map(|(inside, _)| inside.trim().to_owned());
        if found.as_deref() != Some(table.trim()) {
            if std::env::var_os("UPDATE_DOCS").is_some() {
                let updated = match page.split_once(BEGIN) {
                    Some((before, rest)) => {
                        let after = rest.split_once(END).map_or("", |(_, after)| after);
                        format!("{before}{BEGIN}\n{table}{END}{after}")
                    }
                    None => panic!("docs/maps.md has no {BEGIN} marker"),
                };
                std::fs::write(path, updated).expect("write docs/maps.md");
                return;
            }
            panic!(
                "docs/maps.md disagrees with the map definitions; put this table between its \
                 markers (or run `UPDATE_DOCS=1 cargo test -p calico-ebpf-common`):\n\n{table}"
            );
        }
    }
}
