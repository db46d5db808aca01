//! The maps, declared with BTF so that `bpftool map dump` prints named fields. Names, key and
//! value types and sizes come from `calico-ebpf-common`; the names must be literals here, and the
//! loader checks that every name it expects is present in the object.

use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    macros::btf_map,
};
use calico_ebpf_common::{
    AddressClass, ConntrackKey, ConntrackValue, EndpointCounters, EndpointInfo, LogEvent,
    PolicyAddrKeyV4, PolicyAddrKeyV6, PolicyInfo, PolicyPortKey, PolicyProtoKey, PolicyVerdict,
    PortClass, RouteKeyV4, RouteKeyV6, RouteValue, RuleCounters, RuleInfo, SourceKeyV4,
    SourceKeyV6, TraceResult, map_sizes,
};

const ROUTES: usize = map_sizes::ROUTES as usize;
const SOURCES: usize = map_sizes::SOURCES as usize;
const ENDPOINTS: usize = map_sizes::ENDPOINTS as usize;

#[btf_map(name = "cali_routes_v4")]
pub static ROUTES_V4: LpmTrie<RouteKeyV4, RouteValue, ROUTES> = LpmTrie::new();

#[btf_map(name = "cali_routes_v6")]
pub static ROUTES_V6: LpmTrie<RouteKeyV6, RouteValue, ROUTES> = LpmTrie::new();

#[btf_map(name = "cali_srcs_v4")]
pub static SOURCES_V4: LpmTrie<SourceKeyV4, u32, SOURCES> = LpmTrie::new();

#[btf_map(name = "cali_srcs_v6")]
pub static SOURCES_V6: LpmTrie<SourceKeyV6, u32, SOURCES> = LpmTrie::new();

#[btf_map(name = "cali_endpoints")]
pub static ENDPOINTS_MAP: HashMap<u32, EndpointInfo, ENDPOINTS> = HashMap::new();

/// One entry per endpoint, plus the shared entry for interfaces without an endpoint.
#[btf_map(name = "cali_counters")]
pub static COUNTERS: PerCpuHashMap<u32, EndpointCounters, { ENDPOINTS + 1 }> = PerCpuHashMap::new();

const POLICIES: usize = map_sizes::POLICIES as usize;
const POLICY_ADDRS: usize = map_sizes::POLICY_ADDRS as usize;
const POLICY_PROTOS: usize = map_sizes::POLICY_PROTOS as usize;
const POLICY_PORTS: usize = map_sizes::POLICY_PORTS as usize;
const RULES: usize = map_sizes::RULES as usize;
const CONNTRACK: usize = map_sizes::CONNTRACK as usize;
const LOG_EVENTS_BYTES: usize = map_sizes::LOG_EVENTS_BYTES as usize;
/// `BPF_F_NO_PREALLOC`: entries are allocated when written.
const NO_PREALLOC: usize = 1;

// The policy maps allocate entries as they are written (and free them after an RCU grace
// period, so a program never reads an entry that is being reused).
#[btf_map(name = "cali_policies")]
pub static POLICIES_MAP: HashMap<u32, PolicyInfo, POLICIES, NO_PREALLOC> = HashMap::new();

#[btf_map(name = "cali_paddr_v4")]
pub static POLICY_ADDRS_V4: HashMap<PolicyAddrKeyV4, AddressClass, POLICY_ADDRS, NO_PREALLOC> =
    HashMap::new();

#[btf_map(name = "cali_paddr_v6")]
pub static POLICY_ADDRS_V6: HashMap<PolicyAddrKeyV6, AddressClass, POLICY_ADDRS, NO_PREALLOC> =
    HashMap::new();

#[btf_map(name = "cali_pproto")]
pub static POLICY_PROTOS_MAP: HashMap<PolicyProtoKey, PortClass, POLICY_PROTOS, NO_PREALLOC> =
    HashMap::new();

#[btf_map(name = "cali_pports")]
pub static POLICY_PORTS_MAP: HashMap<PolicyPortKey, PolicyVerdict, POLICY_PORTS, NO_PREALLOC> =
    HashMap::new();

/// Written by the agent for tools; declared here so that it lives in the object with the rest.
#[btf_map(name = "cali_rules")]
pub static RULES_MAP: HashMap<u32, RuleInfo, RULES, NO_PREALLOC> = HashMap::new();

#[btf_map(name = "cali_rule_ctrs")]
pub static RULE_COUNTERS: PerCpuArray<RuleCounters, RULES> = PerCpuArray::new();

#[btf_map(name = "cali_conntrack")]
pub static CONNTRACK_MAP: LruHashMap<ConntrackKey, ConntrackValue, CONNTRACK> = LruHashMap::new();

#[btf_map(name = "cali_log_events")]
pub static LOG_EVENTS: RingBuf<LogEvent, LOG_EVENTS_BYTES> = RingBuf::new();

#[btf_map(name = "cali_trace")]
pub static TRACE: PerCpuArray<TraceResult, 1> = PerCpuArray::new();
