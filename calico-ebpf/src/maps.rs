//! The maps, declared with BTF so that `bpftool map dump` prints named fields. Names, key and
//! value types and sizes come from `calico-ebpf-common`; the names must be literals here, and the
//! loader checks that every name it expects is present in the object.

use aya_ebpf::{
    btf_maps::{HashMap, LpmTrie, PerCpuHashMap},
    macros::btf_map,
};
use calico_ebpf_common::{
    EndpointCounters, EndpointInfo, RouteKeyV4, RouteKeyV6, RouteValue, SourceKeyV4, SourceKeyV6,
    map_sizes,
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
