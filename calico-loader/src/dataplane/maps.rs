//! The maps of the kernel object from userspace: which maps each part of the agent holds, as
//! typed handles derived from the map definitions (`calico_ebpf_common::maps`, through
//! [`super::handles`]); then the forwarding maps read back and reconciled with a desired state.
//!
//! The managers decide what the maps should hold; they write through these handles. A handle
//! set opens the same way from a freshly loaded object or from the pins ([`MapSource`]).
//!
//! The maps themselves are the record of what is programmed: the agent reads them back and
//! writes only the difference, so a restarted agent converges on what it finds without
//! disturbing entries that are already right.

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    maps::{MapError, PerCpuValues, lpm_trie::Key},
    util::nr_cpus,
};
use calico_ebpf_common::{
    EndpointCounters, EndpointInfo, FailsafeKey, FloatingIpKey, FloatingIpValue,
    HostEndpointCounters, HostEndpointInfo, NodeInfo, RouteKeyV4, RouteKeyV6, RouteValue,
    SourceKeyV4, SourceKeyV6, UNKNOWN_INTERFACE_COUNTERS, map_names, maps as spec,
};

pub use super::handles::MapSource;
use super::{
    bpffs::PinLayout,
    handles::{Handle, HandleError},
};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(transparent)]
    Handle(#[from] HandleError),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("cannot count CPUs: {0}")]
    Cpus(String),
}

pub(super) fn map_err(name: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

/// Owned handles on the forwarding maps: routes and the nodes they lead to, allowed sources,
/// endpoints and their counters, host endpoints and their counters, failsafe ports.
pub struct Maps {
    pub routes_v4: Handle<spec::RoutesV4>,
    pub routes_v6: Handle<spec::RoutesV6>,
    pub nodes: Handle<spec::Nodes>,
    pub sources_v4: Handle<spec::SourcesV4>,
    pub sources_v6: Handle<spec::SourcesV6>,
    pub endpoints: Handle<spec::Endpoints>,
    pub counters: Handle<spec::Counters>,
    pub floating_ips: Handle<spec::FloatingIps>,
    pub host_endpoints: Handle<spec::HostEndpoints>,
    pub host_endpoint_counters: Handle<spec::HostEndpointCounters>,
    pub failsafes: Handle<spec::Failsafes>,
    /// What the last [`Self::reconcile`] made the maps hold, while [`Self::trust_written`]
    /// allows it to be taken for what they hold.
    written: Option<MapContents>,
    trust_written: bool,
}

/// Owned handles on the policy maps.
pub struct PolicyMaps {
    pub policies: Handle<spec::Policies>,
    pub addrs_v4: Handle<spec::PolicyAddrsV4>,
    pub addrs_v6: Handle<spec::PolicyAddrsV6>,
    pub protos: Handle<spec::PolicyProtos>,
    pub ports: Handle<spec::PolicyPorts>,
    pub rules: Handle<spec::Rules>,
    pub rule_counters: Handle<spec::RuleCounters>,
}

/// The handle on the conntrack table.
pub type ConntrackMap = Handle<spec::Conntrack>;

/// The handle on the ring buffer of Log events.
pub type LogEvents = Handle<spec::LogEvents>;

impl PolicyMaps {
    /// Opens the policy maps from a loaded object or from the pins.
    pub fn open(source: &mut impl MapSource) -> Result<Self, MapsError> {
        Ok(Self {
            policies: source.open::<spec::Policies>()?,
            addrs_v4: source.open::<spec::PolicyAddrsV4>()?,
            addrs_v6: source.open::<spec::PolicyAddrsV6>()?,
            protos: source.open::<spec::PolicyProtos>()?,
            ports: source.open::<spec::PolicyPorts>()?,
            rules: source.open::<spec::Rules>()?,
            rule_counters: source.open::<spec::RuleCounters>()?,
        })
    }

    /// Takes the policy maps out of a loaded object.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        Self::open(ebpf)
    }
}

/// Takes the ring buffer of Log events out of a loaded object, when it has one.
pub fn log_events_from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Option<LogEvents>, MapsError> {
    match ebpf.open::<spec::LogEvents>() {
        Ok(events) => Ok(Some(events)),
        Err(HandleError::Missing(_)) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

impl Maps {
    /// Opens the forwarding maps from a loaded object or from the pins.
    pub fn open(source: &mut impl MapSource) -> Result<Self, MapsError> {
        Ok(Self {
            routes_v4: source.open::<spec::RoutesV4>()?,
            routes_v6: source.open::<spec::RoutesV6>()?,
            nodes: source.open::<spec::Nodes>()?,
            sources_v4: source.open::<spec::SourcesV4>()?,
            sources_v6: source.open::<spec::SourcesV6>()?,
            endpoints: source.open::<spec::Endpoints>()?,
            counters: source.open::<spec::Counters>()?,
            floating_ips: source.open::<spec::FloatingIps>()?,
            host_endpoints: source.open::<spec::HostEndpoints>()?,
            host_endpoint_counters: source.open::<spec::HostEndpointCounters>()?,
            failsafes: source.open::<spec::Failsafes>()?,
            written: None,
            trust_written: false,
        })
    }

    /// Takes the maps out of a freshly loaded object.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        Self::open(ebpf)
    }

    /// Opens the maps a running (or previous) agent pinned.
    pub fn from_pins(layout: &PinLayout) -> Result<Self, MapsError> {
        Self::open(&mut &*layout)
    }

    /// How many endpoint entries the endpoint map can hold (`BPFMapSizeIfState`).
    pub fn endpoint_capacity(&self) -> Result<u32, MapsError> {
        use aya::maps::IterableMap as _;
        self.endpoints
            .map()
            .info()
            .map(|info| info.max_entries())
            .map_err(map_err(map_names::ENDPOINTS))
    }

    /// Whether [`Self::reconcile`] may take the maps to hold what it wrote last (nothing else
    /// writes them) and skip reading them back when that is what is wanted again. Off (the
    /// default), every reconcile reads every entry back and repairs any difference.
    pub fn trust_written(&mut self, trust: bool) {
        self.trust_written = trust;
    }

    /// The ifindexes that have an endpoint entry now.
    pub fn endpoint_ifindexes(&self) -> Result<BTreeSet<u32>, MapsError> {
        self.endpoints
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::ENDPOINTS))
    }
}

// The forwarding maps' contents: what the endpoint and route managers want them to hold, read
// back and reconciled.

/// The complete desired contents of the maps (counters excepted: those only get an entry per
/// endpoint, created at zero and never overwritten).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    pub routes_v4: BTreeMap<(u32, RouteKeyV4), RouteValue>,
    pub routes_v6: BTreeMap<(u32, RouteKeyV6), RouteValue>,
    /// The nodes remote routes name, by node id.
    pub nodes: BTreeMap<u32, NodeInfo>,
    pub sources_v4: BTreeMap<(u32, [u8; 8]), u32>,
    pub sources_v6: BTreeMap<(u32, [u8; 20]), u32>,
    pub endpoints: BTreeMap<u32, EndpointInfo>,
    /// Floating IPs, both directions.
    pub floating_ips: BTreeMap<FloatingIpKey, FloatingIpValue>,
    /// Data interfaces with a host endpoint, by ifindex.
    pub host_endpoints: BTreeMap<u32, HostEndpointInfo>,
    /// Failsafe ports, by prefix length and key.
    pub failsafes: BTreeMap<(u32, FailsafeKey), u32>,
}

/// Encodes a source key as bytes so that it can be ordered in a BTreeMap.
pub fn source_v4_bytes(key: &SourceKeyV4) -> [u8; 8] {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&key.ifindex.to_ne_bytes());
    bytes[4..].copy_from_slice(&key.addr);
    bytes
}

pub fn source_v4_from_bytes(bytes: &[u8; 8]) -> SourceKeyV4 {
    let mut addr = [0u8; 4];
    addr.copy_from_slice(&bytes[4..]);
    SourceKeyV4 {
        ifindex: u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        addr,
    }
}

pub fn source_v6_bytes(key: &SourceKeyV6) -> [u8; 20] {
    let mut bytes = [0u8; 20];
    bytes[..4].copy_from_slice(&key.ifindex.to_ne_bytes());
    bytes[4..].copy_from_slice(&key.addr);
    bytes
}

pub fn source_v6_from_bytes(bytes: &[u8; 20]) -> SourceKeyV6 {
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&bytes[4..]);
    SourceKeyV6 {
        ifindex: u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        addr,
    }
}

/// How many entries a reconciliation added, changed and removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconcileStats {
    pub written: usize,
    pub removed: usize,
}

impl std::ops::AddAssign for ReconcileStats {
    fn add_assign(&mut self, other: Self) {
        self.written += other.written;
        self.removed += other.removed;
    }
}

impl Maps {
    /// Reads back everything the maps hold (counters excepted).
    pub fn read(&self) -> Result<MapContents, MapsError> {
        let mut contents = MapContents::default();
        for entry in self.routes_v4.iter() {
            let (key, value) = entry.map_err(map_err(map_names::ROUTES_V4))?;
            contents
                .routes_v4
                .insert((key.prefix_len(), key.data()), value);
        }
        for entry in self.routes_v6.iter() {
            let (key, value) = entry.map_err(map_err(map_names::ROUTES_V6))?;
            contents
                .routes_v6
                .insert((key.prefix_len(), key.data()), value);
        }
        for entry in self.nodes.iter() {
            let (id, info) = entry.map_err(map_err(map_names::NODES))?;
            contents.nodes.insert(id, info);
        }
        for entry in self.sources_v4.iter() {
            let (key, value) = entry.map_err(map_err(map_names::SOURCES_V4))?;
            contents
                .sources_v4
                .insert((key.prefix_len(), source_v4_bytes(&key.data())), value);
        }
        for entry in self.sources_v6.iter() {
            let (key, value) = entry.map_err(map_err(map_names::SOURCES_V6))?;
            contents
                .sources_v6
                .insert((key.prefix_len(), source_v6_bytes(&key.data())), value);
        }
        for entry in self.endpoints.iter() {
            let (key, value) = entry.map_err(map_err(map_names::ENDPOINTS))?;
            contents.endpoints.insert(key, value);
        }
        for entry in self.floating_ips.iter() {
            let (key, value) = entry.map_err(map_err(map_names::FLOATING_IPS))?;
            contents.floating_ips.insert(key, value);
        }
        for entry in self.host_endpoints.iter() {
            let (key, value) = entry.map_err(map_err(map_names::HOST_ENDPOINTS))?;
            contents.host_endpoints.insert(key, value);
        }
        for entry in self.failsafes.iter() {
            let (key, value) = entry.map_err(map_err(map_names::FAILSAFES))?;
            contents
                .failsafes
                .insert((key.prefix_len(), key.data()), value);
        }
        Ok(contents)
    }

    /// Makes the maps hold exactly `desired`. Entries are written before stale ones are removed,
    /// so a prefix that moves from one endpoint to another is never missing in between; a node
    /// is written before the routes that name it and removed after them.
    ///
    /// With [`Self::trust_written`] on, a `desired` equal to what the last reconcile wrote is
    /// taken as done without reading the maps.
    pub fn reconcile(&mut self, desired: &MapContents) -> Result<ReconcileStats, MapsError> {
        if self.trust_written && self.written.as_ref() == Some(desired) {
            return Ok(ReconcileStats::default());
        }
        // Until this one finishes, what the maps hold is not known.
        self.written = None;
        let stats = self.reconcile_read_back(desired)?;
        self.written = Some(desired.clone());
        Ok(stats)
    }

    /// [`Self::reconcile`] by reading every entry back and writing the difference.
    fn reconcile_read_back(&mut self, desired: &MapContents) -> Result<ReconcileStats, MapsError> {
        let current = self.read()?;
        let mut stats = ReconcileStats::default();

        // Endpoints (and their counters) first: the programs look an interface up before
        // anything else, and the routes pointing at it must find it there. The entries of
        // interfaces that went (their programs are detached already) go first, so that a full
        // map makes room for the new ones.
        let (write, remove) = diff(&current.endpoints, &desired.endpoints);
        let name = map_names::ENDPOINTS;
        for ifindex in &remove {
            self.endpoints.remove(ifindex).map_err(map_err(name))?;
        }
        for (ifindex, info) in &write {
            self.endpoints
                .insert(*ifindex, *info, 0)
                .map_err(map_err(name))?;
        }
        stats += ReconcileStats {
            written: write.len(),
            removed: remove.len(),
        };
        let mut counted: BTreeSet<u32> = desired.endpoints.keys().copied().collect();
        counted.insert(UNKNOWN_INTERFACE_COUNTERS);
        self.sync_counters(counted)?;

        // Failsafe ports before the host endpoints that rely on them.
        let (write, remove) = diff(&current.failsafes, &desired.failsafes);
        let name = map_names::FAILSAFES;
        for ((len, key), value) in &write {
            self.failsafes
                .insert(&Key::new(*len, *key), *value, 0)
                .map_err(map_err(name))?;
        }
        for (len, key) in &remove {
            self.failsafes
                .remove(&Key::new(*len, *key))
                .map_err(map_err(name))?;
        }
        stats += ReconcileStats {
            written: write.len(),
            removed: remove.len(),
        };

        // Host endpoints (and their counters): their policy generations are staged already.
        self.sync_host_endpoint_counters(desired.host_endpoints.keys().copied().collect())?;
        let (write, remove) = diff(&current.host_endpoints, &desired.host_endpoints);
        let name = map_names::HOST_ENDPOINTS;
        for (ifindex, info) in &write {
            self.host_endpoints
                .insert(*ifindex, *info, 0)
                .map_err(map_err(name))?;
        }
        for ifindex in &remove {
            self.host_endpoints.remove(ifindex).map_err(map_err(name))?;
        }
        stats += ReconcileStats {
            written: write.len(),
            removed: remove.len(),
        };

        let (write, remove) = diff(&current.sources_v4, &desired.sources_v4);
        let name = map_names::SOURCES_V4;
        for ((len, key), value) in &write {
            let key = Key::new(*len, source_v4_from_bytes(key));
            self.sources_v4
                .insert(&key, *value, 0)
                .map_err(map_err(name))?;
        }
        for (len, key) in &remove {
            let key = Key::new(*len, source_v4_from_bytes(key));
            self.sources_v4.remove(&key).map_err(map_err(name))?;
        }
        stats += ReconcileStats {
            written: write.len(),
            removed: remove.len(),
        };

        let (write, remove) = diff(&current.sources_v6, &desired.sources_v6);
        let name = map_names::SOURCES_V6;
        for ((len, key), value) in &write {
            let key = Key::new(*len, source_v6_from_bytes(key));
            self.sources_v6
                .insert(&key, *value, 0)
                .map_err(map_err(name))?;
        }
        for (len, key) in &remove {
            let key = Key::new(*len, source_v6_from_bytes(key));
            self.sources_v6.remove(&key).map_err(map_err(name))?;
        }
        stats += ReconcileStats {
            written: write.len(),
            removed: remove.len(),
        };

        let (write_nodes, remove_nodes) = diff(&current.nodes, &desired.nodes);
        let name = map_names::NODES;
        for (id, info) in &write_nodes {
            self.nodes.insert(*id, *info, 0).map_err(map_err(name))?;
        }

        let (write, remove) = diff(&current.routes_v4, &desired.routes_v4);
        let name = map_names::ROUTES_V4;
        for ((len, key), value) in &write {
            self.routes_v4
                .insert(&Key::new(*len, *key), *value, 0)
                .map_err(map_err(name))?;
        }
        for (len, key) in &remove {
            self.routes_v4
                .remove(&Key::new(*len, *key))
                .map_err(map_err(name))?;
        }
        stats += ReconcileStats {
            written: write.len(),
            removed: remove.len(),
        };

        let (write, remove) = diff(&current.routes_v6, &desired.routes_v6);
        let name = map_names::ROUTES_V6;
        for ((len, key), value) in &write {
            self.routes_v6
                .insert(&Key::new(*len, *key), *value, 0)
                .map_err(map_err(name))?;
        }
        for (len, key) in &remove {
            self.routes_v6
                .remove(&Key::new(*len, *key))
                .map_err(map_err(name))?;
        }
        stats += ReconcileStats {
            written: write.len(),
            removed: remove.len(),
        };

        // Floating IPs after the routes (a floating-ip route whose entry is not there yet or
        // any more leaves its packets to the kernel).
        let (write, remove) = diff(&current.floating_ips, &desired.floating_ips);
        let name = map_names::FLOATING_IPS;
        for (key, value) in &write {
            self.floating_ips
                .insert(key, value, 0)
                .map_err(map_err(name))?;
        }
        for key in &remove {
            self.floating_ips.remove(key).map_err(map_err(name))?;
        }
        stats += ReconcileStats {
            written: write.len(),
            removed: remove.len(),
        };

        let name = map_names::NODES;
        for id in &remove_nodes {
            self.nodes.remove(id).map_err(map_err(name))?;
        }
        stats += ReconcileStats {
            written: write_nodes.len(),
            removed: remove_nodes.len(),
        };
        Ok(stats)
    }

    /// Creates a zeroed counters entry for every endpoint that has none and removes the entries
    /// of endpoints that are gone. Existing counters are left alone.
    fn sync_counters(&mut self, wanted: BTreeSet<u32>) -> Result<(), MapsError> {
        let present: BTreeSet<u32> = self
            .counters
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::COUNTERS))?;
        // The entries of endpoints that went first: a full map makes room for the new ones.
        for ifindex in present.difference(&wanted) {
            self.counters
                .remove(ifindex)
                .map_err(map_err(map_names::COUNTERS))?;
        }
        let cpus = nr_cpus().map_err(|(_, e)| MapsError::Cpus(e.to_string()))?;
        for ifindex in wanted.difference(&present) {
            let zeroes = PerCpuValues::try_from(vec![EndpointCounters::default(); cpus])
                .map_err(|e| MapsError::Cpus(e.to_string()))?;
            self.counters
                .insert(ifindex, zeroes, 0)
                .map_err(map_err(map_names::COUNTERS))?;
        }
        Ok(())
    }

    /// Creates a zeroed counters entry for every host endpoint interface that has none and
    /// removes those of interfaces that lost theirs.
    fn sync_host_endpoint_counters(&mut self, wanted: BTreeSet<u32>) -> Result<(), MapsError> {
        let name = map_names::HOST_ENDPOINT_COUNTERS;
        let present: BTreeSet<u32> = self
            .host_endpoint_counters
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(name))?;
        let cpus = nr_cpus().map_err(|(_, e)| MapsError::Cpus(e.to_string()))?;
        for ifindex in wanted.difference(&present) {
            let zeroes = PerCpuValues::try_from(vec![HostEndpointCounters::default(); cpus])
                .map_err(|e| MapsError::Cpus(e.to_string()))?;
            self.host_endpoint_counters
                .insert(ifindex, zeroes, 0)
                .map_err(map_err(name))?;
        }
        for ifindex in present.difference(&wanted) {
            self.host_endpoint_counters
                .remove(ifindex)
                .map_err(map_err(name))?;
        }
        Ok(())
    }

    /// The counters of every host endpoint interface, summed over CPUs.
    pub fn host_endpoint_counters(&self) -> Result<BTreeMap<u32, HostEndpointCounters>, MapsError> {
        let mut all = BTreeMap::new();
        for entry in self.host_endpoint_counters.iter() {
            let (ifindex, per_cpu) = entry.map_err(map_err(map_names::HOST_ENDPOINT_COUNTERS))?;
            let mut total = HostEndpointCounters::default();
            for cpu in per_cpu.iter() {
                total.accumulate(cpu);
            }
            all.insert(ifindex, total);
        }
        Ok(all)
    }

    /// The counters of every endpoint, summed over CPUs.
    pub fn counters(&self) -> Result<BTreeMap<u32, EndpointCounters>, MapsError> {
        let mut all = BTreeMap::new();
        for entry in self.counters.iter() {
            let (ifindex, per_cpu) = entry.map_err(map_err(map_names::COUNTERS))?;
            let mut total = EndpointCounters::default();
            for cpu in per_cpu.iter() {
                total.accumulate(cpu);
            }
            all.insert(ifindex, total);
        }
        Ok(all)
    }
}

/// The floating IP translation counters, summed over CPUs, from the pins.
pub fn floating_ip_counters(
    layout: &PinLayout,
) -> Result<calico_ebpf_common::FloatingIpCounters, MapsError> {
    let map = (&mut &*layout).open::<spec::FloatingIpCounters>()?;
    let name = map_names::FLOATING_IP_COUNTERS;
    let per_cpu = map.get(&0, 0).map_err(map_err(name))?;
    let mut total = calico_ebpf_common::FloatingIpCounters::default();
    for cpu in per_cpu.iter() {
        total.accumulate(cpu);
    }
    Ok(total)
}

/// The entries of `desired` that `current` lacks or holds with another value, and the keys of
/// `current` that `desired` lacks.
fn diff<K: Ord + Copy, V: PartialEq + Copy>(
    current: &BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
) -> (Vec<(K, V)>, Vec<K>) {
    let write = desired
        .iter()
        .filter(|(key, value)| current.get(key) != Some(value))
        .map(|(key, value)| (*key, *value))
        .collect();
    let remove = current
        .keys()
        .filter(|key| !desired.contains_key(key))
        .copied()
        .collect();
    (write, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_keys_round_trip_through_their_byte_encoding() {
        let v4 = SourceKeyV4 {
            ifindex: 0x0102_0304,
            addr: [198, 18, 0, 11],
        };
        assert_eq!(source_v4_from_bytes(&source_v4_bytes(&v4)), v4);
        let v6 = SourceKeyV6 {
            ifindex: 7,
            addr: [
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11,
            ],
        };
        assert_eq!(source_v6_from_bytes(&source_v6_bytes(&v6)), v6);
    }

    #[test]
    fn source_key_bytes_match_the_kernel_layout() {
        // The LPM key the kernel sees is {prefix_len, ifindex, addr}: ifindex in host byte
        // order first, then the address in network byte order.
        let key = SourceKeyV4 {
            ifindex: 3,
            addr: [198, 18, 0, 11],
        };
        let bytes = source_v4_bytes(&key);
        assert_eq!(&bytes[..4], &3u32.to_ne_bytes());
        assert_eq!(&bytes[4..], &[198, 18, 0, 11]);
        // SAFETY: SourceKeyV4 is repr(C) plain data of exactly these 8 bytes.
        let raw: [u8; 8] = unsafe { std::mem::transmute(key) };
        assert_eq!(raw, bytes);
    }

    #[test]
    fn diff_writes_changes_and_removes_leftovers() {
        let current: BTreeMap<u32, u32> = [(1, 10), (2, 20), (3, 30)].into();
        let desired: BTreeMap<u32, u32> = [(1, 10), (2, 21), (4, 40)].into();
        let (write, remove) = diff(&current, &desired);
        assert_eq!(write, vec![(2, 21), (4, 40)]);
        assert_eq!(remove, vec![3]);
    }
}
