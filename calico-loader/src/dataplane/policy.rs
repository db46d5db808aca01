//! The policy manager: compiled policy in, policy map and rules map entries out, one generation
//! at a time. It owns the policy maps, the record of which generation each endpoint has, and the
//! syncing of the rules map (and the rule registry's ids) with the generations in force.
//!
//! Each endpoint's compiled policy for a direction is written under a fresh policy id, with
//! fresh address and port class ids, next to the generation in force; only then does the
//! endpoint's entry switch to the new id (one map write, see [`super::switch::switch_policy`],
//! the one place that orders these steps), and only after that are the old generation's
//! entries deleted. A packet therefore always sees one whole generation. An endpoint whose
//! policy fails to compile keeps its generation; one that never had one gets no endpoint entry,
//! so its traffic is dropped, never let through unchecked.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{MapError, PerCpuValues};
use calico_ebpf_common::{
    AddressClass, LOCAL_CLASSES, LOCAL_STEP, PolicyAddrKeyV4, PolicyAddrKeyV6, PolicyInfo,
    PolicyPortKey, PolicyProtoKey, PolicyVerdict, PortClass, RuleCounters, RuleInfo, map_names,
    maps::{self, MapSpec},
    mask_port, mask_v4, mask_v6, proto_kind,
};

use super::maps::{MapsError, PolicyMaps, map_err};
use crate::model::{
    compile::{CompiledDirection, CompiledEndpoint},
    rules::RuleRegistry,
};

/// One programmed generation of one endpoint's policy in one direction.
#[derive(Clone, Debug)]
struct Generation {
    policy: u32,
    class_base: u32,
    port_class_base: u32,
    compiled: CompiledDirection,
}

impl Generation {
    fn entries(&self) -> usize {
        entry_count(&self.compiled)
    }
}

/// The rule ids a compiled policy's verdicts name.
fn rule_ids(compiled: &CompiledDirection) -> impl Iterator<Item = u32> + '_ {
    compiled
        .ports
        .iter()
        .flat_map(|port| [port.verdict.rule, port.verdict.log_rule])
        .filter(|id| *id != 0)
}

fn entry_count(compiled: &CompiledDirection) -> usize {
    compiled.addrs_v4.len()
        + compiled.addrs_v6.len()
        + compiled.protos.len()
        + compiled.ports.len()
        + compiled.locals_v4.len()
        + compiled.locals_v6.len()
}

/// The programmed generations of one endpoint.
#[derive(Clone, Debug, Default)]
struct EndpointPolicy {
    ingress: Option<Generation>,
    egress: Option<Generation>,
}

/// What [`PolicyManager::stage`] did.
#[derive(Debug, Default)]
pub struct StageReport {
    /// Generations written (endpoint, direction, policy id, entries).
    pub written: Vec<(String, &'static str, u32, usize)>,
    /// Endpoints whose new policy could not be programmed (they keep their previous one).
    pub errors: Vec<String>,
}

/// Keeps track of the programmed generations and writes new ones into the policy maps it owns.
pub struct PolicyManager {
    maps: PolicyMaps,
    endpoints: BTreeMap<String, EndpointPolicy>,
    /// Generations replaced by the last [`Self::stage`], to delete once the endpoint entries
    /// point at their successors.
    retired: Vec<Generation>,
    next_policy: u32,
    next_class: u32,
    next_port_class: u32,
    /// Entries held in the policy maps, all generations together.
    entries: usize,
    /// Whether entries left by an earlier agent may still be in the maps.
    adopted: bool,
    /// Rule ids whose description is in the rules map.
    rules_written: BTreeMap<u32, RuleInfo>,
    /// Entries an earlier agent left, deleted with the first retired generations.
    stale: Option<StaleEntries>,
    /// How long [`Self::retire`] waits before it deletes anything (see [`RETIRE_GRACE`]).
    retire_grace: std::time::Duration,
}

/// How long the programs of a live dataplane may still use a generation after the endpoint
/// entries stopped naming it: a packet that read its endpoint entry just before the switch is
/// still being judged by the old generation. A program runs for microseconds without being
/// preempted, so a few milliseconds is plenty; deleting at once made such a packet find half a
/// generation (and drop as "policy-missing").
pub const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_millis(10);

/// Entries the policy maps hold at most, all maps together (each map has its own limit; this
/// is the smallest, so a generation that fits here fits in each).
const ENTRY_BUDGET: usize = <maps::PolicyPorts as MapSpec>::DEF.max_entries as usize;

impl PolicyManager {
    /// A manager for policy maps that may hold generations an earlier agent wrote (they are
    /// adopted on the first [`Self::stage`]).
    pub fn new(maps: PolicyMaps) -> Self {
        Self {
            maps,
            endpoints: BTreeMap::new(),
            retired: Vec::new(),
            next_policy: 1,
            next_class: 1,
            next_port_class: 1,
            entries: 0,
            adopted: false,
            rules_written: BTreeMap::new(),
            stale: None,
            retire_grace: std::time::Duration::ZERO,
        }
    }

    /// Waits `grace` in [`Self::retire`] before deleting replaced generations: for maps that
    /// programs read while they change ([`RETIRE_GRACE`]).
    #[must_use]
    pub fn with_retire_grace(mut self, grace: std::time::Duration) -> Self {
        self.retire_grace = grace;
        self
    }

    /// The policy ids (ingress, egress) of an endpoint, when both directions are programmed.
    pub fn policy_ids(&self, endpoint: &str) -> Option<(u32, u32)> {
        let policy = self.endpoints.get(endpoint)?;
        Some((
            policy.ingress.as_ref()?.policy,
            policy.egress.as_ref()?.policy,
        ))
    }

    /// Entries the policy maps hold for the programmed generations.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Writes a new generation for every endpoint whose compiled policy changed. Endpoints
    /// absent from `compiled` keep what they have (their compilation failed); endpoints absent
    /// from `wanted` are forgotten, their generations retired.
    pub fn stage(
        &mut self,
        wanted: &BTreeSet<String>,
        compiled: &[(String, &CompiledEndpoint)],
    ) -> Result<StageReport, MapsError> {
        let mut report = StageReport::default();
        if !self.adopted {
            self.adopt()?;
        }
        let gone: Vec<String> = self
            .endpoints
            .keys()
            .filter(|key| !wanted.contains(*key))
            .cloned()
            .collect();
        for key in gone {
            if let Some(policy) = self.endpoints.remove(&key) {
                self.retired.extend(policy.ingress);
                self.retired.extend(policy.egress);
            }
        }
        for (key, endpoint) in compiled {
            let endpoint = *endpoint;
            if !wanted.contains(key) {
                continue;
            }
            for (direction, new) in [("ingress", &endpoint.ingress), ("egress", &endpoint.egress)] {
                let current = self.endpoints.get(key).and_then(|p| match direction {
                    "ingress" => p.ingress.as_ref(),
                    _ => p.egress.as_ref(),
                });
                if current.is_some_and(|g| &g.compiled == new) {
                    continue;
                }
                let needed = entry_count(new);
                if self.entries + needed > ENTRY_BUDGET {
                    report.errors.push(format!(
                        "endpoint {key}: its {direction} policy compiles to {needed} map entries, \
                         but only {} of {ENTRY_BUDGET} are free; its previous policy stays in force",
                        ENTRY_BUDGET.saturating_sub(self.entries)
                    ));
                    continue;
                }
                let generation = Generation {
                    policy: self.next_policy,
                    class_base: self.next_class,
                    port_class_base: self.next_port_class,
                    compiled: new.clone(),
                };
                write_generation(&mut self.maps, &generation)?;
                self.next_policy += 1;
                self.next_class += new.address_classes;
                self.next_port_class += new.port_classes;
                self.entries += needed;
                report
                    .written
                    .push((key.clone(), direction, generation.policy, needed));
                let slot = self.endpoints.entry(key.clone()).or_default();
                let old = match direction {
                    "ingress" => slot.ingress.replace(generation),
                    _ => slot.egress.replace(generation),
                };
                self.retired.extend(old);
            }
        }
        Ok(report)
    }

    /// Deletes the generations [`Self::stage`] replaced. Call once the endpoint entries point
    /// at the new ones; with a grace period set, it first waits for the packets that may still
    /// be judged by the old ones.
    pub fn retire(&mut self) -> Result<usize, MapsError> {
        let stale = self
            .stale
            .as_ref()
            .is_some_and(|s| s.len() + s.policies.len() > 0);
        if !self.retire_grace.is_zero() && (stale || !self.retired.is_empty()) {
            std::thread::sleep(self.retire_grace);
        }
        let maps = &mut self.maps;
        let mut count = 0;
        if let Some(stale) = self.stale.take() {
            for key in &stale.policies {
                removed(maps.policies.remove(key), map_names::POLICIES)?;
            }
            for key in &stale.addrs_v4 {
                removed(maps.addrs_v4.remove(key), map_names::POLICY_ADDRS_V4)?;
            }
            for key in &stale.addrs_v6 {
                removed(maps.addrs_v6.remove(key), map_names::POLICY_ADDRS_V6)?;
            }
            for key in &stale.protos {
                removed(maps.protos.remove(key), map_names::POLICY_PROTOS)?;
            }
            for key in &stale.ports {
                removed(maps.ports.remove(key), map_names::POLICY_PORTS)?;
            }
            self.entries = self.entries.saturating_sub(stale.len());
            count += stale.len();
        }
        for generation in std::mem::take(&mut self.retired) {
            delete_generation(&mut self.maps, &generation)?;
            self.entries = self.entries.saturating_sub(generation.entries());
            count += generation.entries();
        }
        Ok(count)
    }

    /// Rule ids the programmed generations refer to.
    pub fn live_rules(&self) -> BTreeSet<u32> {
        let mut live = BTreeSet::new();
        for policy in self.endpoints.values() {
            for generation in policy.ingress.iter().chain(policy.egress.iter()) {
                live.extend(rule_ids(&generation.compiled));
            }
        }
        live
    }

    /// Makes the rules map describe exactly the rule ids in use, zeroing the counters of ids
    /// that are new (or reused for another rule), and frees the registry's ids that neither a
    /// programmed generation nor a compiled policy still waiting to be programmed (`pending`)
    /// refers to.
    pub fn sync_rules(
        &mut self,
        registry: &mut RuleRegistry,
        pending: &[(String, &CompiledEndpoint)],
    ) -> Result<(), MapsError> {
        let live = self.live_rules();
        let mut desired = BTreeMap::new();
        for id in &live {
            desired.insert(*id, registry.info(*id).unwrap_or_default());
        }
        let maps = &mut self.maps;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| MapsError::Cpus(e.to_string()))?;
        for (id, info) in &desired {
            if self.rules_written.get(id) == Some(info) {
                continue;
            }
            let zeroes = PerCpuValues::try_from(vec![RuleCounters::default(); cpus])
                .map_err(|e| MapsError::Cpus(e.to_string()))?;
            maps.rule_counters
                .set(*id, zeroes, 0)
                .map_err(map_err(map_names::RULE_COUNTERS))?;
            maps.rules
                .insert(id, info, 0)
                .map_err(map_err(map_names::RULES))?;
        }
        for id in self
            .rules_written
            .keys()
            .filter(|id| !desired.contains_key(id))
        {
            match maps.rules.remove(id) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(map_names::RULES)(e)),
            }
        }
        self.rules_written = desired;
        let mut keep: std::collections::HashSet<u32> = live.into_iter().collect();
        for (_, endpoint) in pending {
            for direction in [&endpoint.ingress, &endpoint.egress] {
                keep.extend(rule_ids(direction));
            }
        }
        registry.sweep(&keep);
        Ok(())
    }

    /// On the first stage after a (re)start: the maps may hold generations an earlier agent
    /// wrote, which stay in force until the endpoint entries switch. New ids start above
    /// every id found, and everything found is retired once the switch is done.
    fn adopt(&mut self) -> Result<(), MapsError> {
        let maps = &self.maps;
        let mut stale = StaleEntries::default();
        // A local step's id is its policy's id with LOCAL_STEP added.
        for key in maps.policies.keys() {
            let key = key.map_err(map_err(map_names::POLICIES))?;
            self.next_policy = self.next_policy.max((key & !LOCAL_STEP) + 1);
            stale.policies.push(key);
        }
        for key in maps.addrs_v4.keys() {
            let key = key.map_err(map_err(map_names::POLICY_ADDRS_V4))?;
            self.next_policy = self.next_policy.max((key.policy & !LOCAL_STEP) + 1);
            stale.addrs_v4.push(key);
        }
        for key in maps.addrs_v6.keys() {
            let key = key.map_err(map_err(map_names::POLICY_ADDRS_V6))?;
            self.next_policy = self.next_policy.max((key.policy & !LOCAL_STEP) + 1);
            stale.addrs_v6.push(key);
        }
        for key in maps.protos.keys() {
            let key = key.map_err(map_err(map_names::POLICY_PROTOS))?;
            self.next_class = self.next_class.max(key.class + 1);
            stale.protos.push(key);
        }
        for key in maps.ports.keys() {
            let key = key.map_err(map_err(map_names::POLICY_PORTS))?;
            self.next_port_class = self.next_port_class.max(key.class + 1);
            stale.ports.push(key);
        }
        for key in maps.rules.keys() {
            let id = key.map_err(map_err(map_names::RULES))?;
            // Unknown content: rewritten (and its counters zeroed) when the id is used again.
            self.rules_written.insert(id, RuleInfo::default());
        }
        self.entries += stale.len();
        self.stale = Some(stale);
        self.adopted = true;
        Ok(())
    }
}

/// Entries found in the maps at start, deleted after the first switch.
#[derive(Default)]
struct StaleEntries {
    policies: Vec<u32>,
    addrs_v4: Vec<PolicyAddrKeyV4>,
    addrs_v6: Vec<PolicyAddrKeyV6>,
    protos: Vec<PolicyProtoKey>,
    ports: Vec<PolicyPortKey>,
}

impl StaleEntries {
    fn len(&self) -> usize {
        self.addrs_v4.len() + self.addrs_v6.len() + self.protos.len() + self.ports.len()
    }
}

/// A generation's entries as the kernel holds them: keys with their prefix masked and its
/// length, class ids offset by the generation's bases, and the bitmaps of prefix lengths each
/// policy and class uses.
struct Encoded {
    info: PolicyInfo,
    /// The local step of a policy compiled for any local address: its id's entry and its
    /// address entries (local prefix as `remote`, local class as class).
    local_step: Option<LocalStep>,
    addrs_v4: Vec<(PolicyAddrKeyV4, AddressClass)>,
    addrs_v6: Vec<(PolicyAddrKeyV6, AddressClass)>,
    protos: Vec<(PolicyProtoKey, PortClass)>,
    ports: Vec<(PolicyPortKey, PolicyVerdict)>,
}

/// The local step of a policy compiled for any local address: its `cali_policies` entry (the
/// local prefix lengths) and its address entries.
struct LocalStep {
    info: PolicyInfo,
    v4: Vec<(PolicyAddrKeyV4, AddressClass)>,
    v6: Vec<(PolicyAddrKeyV6, AddressClass)>,
}

fn encode(generation: &Generation) -> Encoded {
    let compiled = &generation.compiled;
    let mut sport_lengths = vec![0u32; compiled.address_classes as usize];
    for entry in &compiled.protos {
        if entry.proto.is_some() {
            let len = entry.sport.map_or(0, |(_, bits)| bits);
            if let Some(bits) = sport_lengths.get_mut(entry.class as usize) {
                *bits |= 1 << len;
            }
        }
    }
    let mut dport_lengths = vec![0u32; compiled.port_classes as usize];
    for entry in &compiled.ports {
        if let Some(bits) = dport_lengths.get_mut(entry.port_class as usize) {
            *bits |= 1 << entry.dport.1;
        }
    }
    let address_class = |class: u32| AddressClass {
        class: generation.class_base + class,
        sport_lengths: sport_lengths.get(class as usize).copied().unwrap_or(0),
    };
    let port_class = |class: u32| PortClass {
        port_class: generation.port_class_base + class,
        dport_lengths: dport_lengths.get(class as usize).copied().unwrap_or(0),
    };
    let mut info = PolicyInfo::default();
    let addrs_v4 = compiled
        .addrs_v4
        .iter()
        .map(|entry| {
            let len = u32::from(entry.remote_prefix);
            info.v4_lengths |= 1 << len;
            let key = PolicyAddrKeyV4 {
                policy: generation.policy,
                local: entry.local,
                remote: mask_v4(entry.remote, len),
                prefix_len: len,
            };
            (key, address_class(entry.class))
        })
        .collect();
    let addrs_v6 = compiled
        .addrs_v6
        .iter()
        .map(|entry| {
            let len = u32::from(entry.remote_prefix);
            info.v6_lengths[(len / 64) as usize] |= 1 << (len % 64);
            let key = PolicyAddrKeyV6 {
                policy: generation.policy,
                local: entry.local,
                remote: mask_v6(&entry.remote, len),
                prefix_len: len,
            };
            (key, address_class(entry.class))
        })
        .collect();
    let protos = compiled
        .protos
        .iter()
        .map(|entry| {
            let (kind, proto, sport, sport_len) = match (entry.proto, entry.sport) {
                (None, _) => (proto_kind::ANY, 0, 0, 0),
                (Some(proto), None) => (proto_kind::ONE, proto, 0, 0),
                (Some(proto), Some((port, bits))) => {
                    (proto_kind::ONE, proto, mask_port(port, bits), bits)
                }
            };
            let key = PolicyProtoKey {
                class: generation.class_base + entry.class,
                kind,
                proto,
                sport: sport.to_be_bytes(),
                sport_len,
                _pad: [0; 3],
            };
            (key, port_class(entry.port_class))
        })
        .collect();
    let local_step = compiled.local_classes.then(|| {
        info.v4_lengths |= LOCAL_CLASSES;
        let step = generation.policy | LOCAL_STEP;
        let mut step_info = PolicyInfo::default();
        let class = |class: u32| AddressClass {
            class,
            sport_lengths: 0,
        };
        let v4 = compiled
            .locals_v4
            .iter()
            .map(|entry| {
                let len = u32::from(entry.prefix);
                step_info.v4_lengths |= 1 << len;
                let key = PolicyAddrKeyV4 {
                    policy: step,
                    local: [0; 4],
                    remote: mask_v4(entry.local, len),
                    prefix_len: len,
                };
                (key, class(entry.class))
            })
            .collect();
        let v6 = compiled
            .locals_v6
            .iter()
            .map(|entry| {
                let len = u32::from(entry.prefix);
                step_info.v6_lengths[(len / 64) as usize] |= 1 << (len % 64);
                let key = PolicyAddrKeyV6 {
                    policy: step,
                    local: [0; 16],
                    remote: mask_v6(&entry.local, len),
                    prefix_len: len,
                };
                (key, class(entry.class))
            })
            .collect();
        LocalStep {
            info: step_info,
            v4,
            v6,
        }
    });
    let ports = compiled
        .ports
        .iter()
        .map(|entry| {
            let (port, bits) = entry.dport;
            let key = PolicyPortKey {
                class: generation.port_class_base + entry.port_class,
                dport: mask_port(port, bits).to_be_bytes(),
                dport_len: bits,
                _pad: 0,
            };
            (key, entry.verdict)
        })
        .collect();
    Encoded {
        info,
        local_step,
        addrs_v4,
        addrs_v6,
        protos,
        ports,
    }
}

/// Writes a generation's entries: the last step's first and the policy's own entry last, so
/// that no lookup ever finds a step whose next one is missing.
fn write_generation(maps: &mut PolicyMaps, generation: &Generation) -> Result<(), MapsError> {
    let encoded = encode(generation);
    for (key, value) in &encoded.ports {
        maps.ports
            .insert(key, value, 0)
            .map_err(map_err(map_names::POLICY_PORTS))?;
    }
    for (key, value) in &encoded.protos {
        maps.protos
            .insert(key, value, 0)
            .map_err(map_err(map_names::POLICY_PROTOS))?;
    }
    for (key, value) in &encoded.addrs_v6 {
        maps.addrs_v6
            .insert(key, value, 0)
            .map_err(map_err(map_names::POLICY_ADDRS_V6))?;
    }
    for (key, value) in &encoded.addrs_v4 {
        maps.addrs_v4
            .insert(key, value, 0)
            .map_err(map_err(map_names::POLICY_ADDRS_V4))?;
    }
    if let Some(LocalStep {
        info: step_info,
        v4,
        v6,
    }) = &encoded.local_step
    {
        for (key, value) in v6 {
            maps.addrs_v6
                .insert(key, value, 0)
                .map_err(map_err(map_names::POLICY_ADDRS_V6))?;
        }
        for (key, value) in v4 {
            maps.addrs_v4
                .insert(key, value, 0)
                .map_err(map_err(map_names::POLICY_ADDRS_V4))?;
        }
        maps.policies
            .insert(generation.policy | LOCAL_STEP, step_info, 0)
            .map_err(map_err(map_names::POLICIES))?;
    }
    maps.policies
        .insert(generation.policy, encoded.info, 0)
        .map_err(map_err(map_names::POLICIES))?;
    Ok(())
}

/// Removes an entry, tolerating one that is already gone.
fn removed(result: Result<(), MapError>, name: &'static str) -> Result<(), MapsError> {
    match result {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(map_err(name)(e)),
    }
}

/// Deletes a generation's entries, first step first (the reverse of writing).
fn delete_generation(maps: &mut PolicyMaps, generation: &Generation) -> Result<(), MapsError> {
    let encoded = encode(generation);
    removed(
        maps.policies.remove(&generation.policy),
        map_names::POLICIES,
    )?;
    if let Some(LocalStep { v4, v6, .. }) = &encoded.local_step {
        removed(
            maps.policies.remove(&(generation.policy | LOCAL_STEP)),
            map_names::POLICIES,
        )?;
        for (key, _) in v4 {
            removed(maps.addrs_v4.remove(key), map_names::POLICY_ADDRS_V4)?;
        }
        for (key, _) in v6 {
            removed(maps.addrs_v6.remove(key), map_names::POLICY_ADDRS_V6)?;
        }
    }
    for (key, _) in &encoded.addrs_v4 {
        removed(maps.addrs_v4.remove(key), map_names::POLICY_ADDRS_V4)?;
    }
    for (key, _) in &encoded.addrs_v6 {
        removed(maps.addrs_v6.remove(key), map_names::POLICY_ADDRS_V6)?;
    }
    for (key, _) in &encoded.protos {
        removed(maps.protos.remove(key), map_names::POLICY_PROTOS)?;
    }
    for (key, _) in &encoded.ports {
        removed(maps.ports.remove(key), map_names::POLICY_PORTS)?;
    }
    Ok(())
}
