//! Policy compilation: an endpoint's evaluation plan (tiers, policies, rules, profiles) turned
//! into the entries of the kernel's three policy tables, each matched longest prefix first, so
//! that a packet's verdict takes a bounded number of lookups however many rules apply (see the
//! policy section of `calico-ebpf-common`, and `docs/policy-compilation.md`).
//!
//! # Semantics
//!
//! Calico's, as [`evaluate`] implements them by walking the rules: tiers in order, each one's
//! policies in order, each policy's rules in order; Allow and Deny decide, Pass leaves the tier,
//! Log records the first Log rule and goes on; a tier where nothing decided or passed ends with
//! its default action; then the profiles (Pass leaves the profile); then deny. Selectors stand
//! for the addresses of the WorkloadEndpoints (of every node) they match, NetworkPolicy rules
//! being limited to the policy's namespace unless they give a `namespaceSelector`. Named ports
//! stand for the ports of that name on the endpoint that owns the address. Port criteria apply
//! only to protocols with ports: `ports` never matches another protocol, `notPorts` always does.
//!
//! # Algorithm
//!
//! 1. The plan is flattened into steps: each rule with its criteria resolved (selectors to
//!    address sets, through caches in [`PolicyContext`]) and a rule id from the
//!    [`RuleRegistry`]; a tier whose default is Deny adds an unconditional deny step. Steps carry
//!    the number of their tier or profile ("group"), which is where a Pass jumps out of.
//! 2. Per address family, the endpoint's own addresses are grouped by how the rules' criteria on
//!    the local side treat them (usually all alike).
//! 3. Per group, the remote address space is split into elementary intervals by a sweep over the
//!    boundaries of every rule's remote address set (a rule whose named ports resolve differently
//!    on different endpoints has one set per resolution). Intervals where the same rules are
//!    active share a class (sets compared by a Zobrist hash, then exactly).
//! 4. Per class, the protocols that the active rules tell apart are listed; all others share the
//!    class's default. Per protocol, source ports are split at the rules' boundaries, and per
//!    source-port interval the destination ports (ICMP type and code) are painted: the rules are
//!    applied in order to the intervals not yet decided (Log marks, Pass sets aside until the next
//!    group, Allow and Deny decide), what remains is the final deny. Identical port functions
//!    share a port class; identical class tables share a class.
//! 5. Each piecewise-constant function becomes prefix entries: a zero-length default for the
//!    value that would need the most prefixes, and the prefixes of the other intervals.

mod conditions;
mod context;
mod evaluate;
mod ranges;
mod table;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use calico_ebpf_common::{PolicyVerdict, map_sizes};
use ipnet::IpNet;

pub use context::PolicyContext;
pub use evaluate::{Outcome, PacketTuple, evaluate};

use self::conditions::{Conditions, Origin};
use super::{
    policy::{DirectionPlan, PolicyId, endpoint_plan},
    rules::{Direction, RuleIdsExhausted, RuleRef, RuleRegistry},
};
use crate::datastore::{Action, Kind, Rule, Snapshot, TierDefaultAction, WorkloadEndpoint};

/// The most addresses one network of an endpoint may hold: each is a local address with its own
/// entries.
pub const MAX_LOCAL_NETWORK_ADDRESSES: u32 = 1 << MAX_LOCAL_HOST_BITS;
const MAX_LOCAL_HOST_BITS: u8 = 8;

/// Why an endpoint's policy could not be compiled. The dataplane then keeps the endpoint's
/// previous policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A rule uses a criterion the dataplane cannot enforce.
    #[error("WorkloadEndpoint {endpoint}: {rule}: {field} is not supported: {reason}")]
    Unsupported {
        endpoint: String,
        rule: String,
        field: String,
        reason: &'static str,
    },
    /// A selector does not parse (the datastore checks them, so this should not happen).
    #[error("WorkloadEndpoint {endpoint}: {rule}: {field}: {message}")]
    InvalidSelector {
        endpoint: String,
        rule: String,
        field: String,
        message: String,
    },
    /// One of the endpoint's networks holds too many addresses to serve as local addresses.
    #[error(
        "WorkloadEndpoint {endpoint}: network {network} holds more than {MAX_LOCAL_NETWORK_ADDRESSES} addresses; \
         policy is compiled per local address"
    )]
    LocalNetworkTooWide { endpoint: String, network: IpNet },
    /// The plan names a policy or profile the snapshot does not have.
    #[error("WorkloadEndpoint {endpoint}: {owner} is not in the snapshot")]
    Missing { endpoint: String, owner: String },
    /// The compiled form would not fit the kernel's tables.
    #[error(
        "WorkloadEndpoint {endpoint}: its compiled {direction} policy needs more than {limit} {table} entries"
    )]
    TooLarge {
        endpoint: String,
        direction: Direction,
        table: &'static str,
        limit: usize,
    },
    /// Every rule id is in use.
    #[error("no rule id left: all {capacity} are in use")]
    RuleIdsExhausted { capacity: u32 },
}

impl From<RuleIdsExhausted> for CompileError {
    fn from(RuleIdsExhausted { capacity }: RuleIdsExhausted) -> Self {
        CompileError::RuleIdsExhausted { capacity }
    }
}

/// The most entries the compiled policy of one endpoint in one direction may have in each
/// table; compiling stops with [`CompileError::TooLarge`] beyond them. By default, the sizes
/// of the kernel's maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableLimits {
    /// Address entries, per family.
    pub addrs: usize,
    pub protos: usize,
    pub ports: usize,
}

impl Default for TableLimits {
    fn default() -> Self {
        Self {
            addrs: map_sizes::POLICY_ADDRS as usize,
            protos: map_sizes::POLICY_PROTOS as usize,
            ports: map_sizes::POLICY_PORTS as usize,
        }
    }
}

/// An entry of an address table: for the endpoint's `local` address (matched in full), a
/// `remote` prefix, giving an address class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrEntry<const N: usize> {
    /// The endpoint's address, matched in full.
    pub local: [u8; N],
    /// The remote prefix (host bits zero).
    pub remote: [u8; N],
    pub remote_prefix: u8,
    /// Index local to the [`CompiledDirection`].
    pub class: u32,
}

/// An entry of the protocol table: for an address class, a protocol (`None`: the class's default,
/// for protocols it does not list) and a source-port prefix (`None`: length 0), giving a port
/// class. For a packet, an entry of its protocol wins over the default, and a longer source-port
/// prefix over a shorter one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProtoEntry {
    pub class: u32,
    pub proto: Option<u8>,
    /// Source port prefix: value and length in bits (1 to 16).
    pub sport: Option<(u16, u8)>,
    pub port_class: u32,
}

/// An entry of the destination-port table: for a port class, a destination-port prefix, giving
/// the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortEntry {
    pub port_class: u32,
    /// Destination port (ICMP: `type << 8 | code`) prefix: value and length in bits (0 to 16).
    pub dport: (u16, u8),
    pub verdict: PolicyVerdict,
}

/// The compiled policy of one endpoint in one direction.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CompiledDirection {
    /// Entries of the address tables. `class` is an index local to this CompiledDirection
    /// (0..address_classes), shared by both families' entries.
    pub addrs_v4: Vec<AddrEntry<4>>,
    pub addrs_v6: Vec<AddrEntry<16>>,
    pub protos: Vec<ProtoEntry>,
    pub ports: Vec<PortEntry>,
    pub address_classes: u32,
    pub port_classes: u32,
}

/// The compiled policy of one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CompiledEndpoint {
    pub ingress: CompiledDirection,
    pub egress: CompiledDirection,
}

impl CompiledDirection {
    /// The verdict for a packet, found through the entries longest prefix first, as the kernel
    /// finds it. `sport` and `dport` are what the kernel puts in the keys: see
    /// [`PacketTuple::key_ports`]. `None` where a lookup misses (which the kernel treats as a
    /// drop).
    pub fn lookup(
        &self,
        local: IpAddr,
        remote: IpAddr,
        proto: u8,
        sport: u16,
        dport: u16,
    ) -> Option<PolicyVerdict> {
        let class = match (local, remote) {
            (IpAddr::V4(local), IpAddr::V4(remote)) => {
                longest_addr_match(&self.addrs_v4, local.octets(), remote.octets())
            }
            (IpAddr::V6(local), IpAddr::V6(remote)) => {
                longest_addr_match(&self.addrs_v6, local.octets(), remote.octets())
            }
            _ => None,
        }?;
        let port_class = self
            .protos
            .iter()
            .filter(|e| {
                e.class == class
                    && e.proto.is_none_or(|p| p == proto)
                    && e.sport
                        .is_none_or(|(value, bits)| prefix_matches(sport, value, bits))
            })
            .max_by_key(|e| (e.proto.is_some(), e.sport.map_or(0, |(_, bits)| bits)))?
            .port_class;
        self.ports
            .iter()
            .filter(|e| e.port_class == port_class && prefix_matches(dport, e.dport.0, e.dport.1))
            .max_by_key(|e| e.dport.1)
            .map(|e| e.verdict)
    }
}

fn prefix_matches(value: u16, prefix: u16, bits: u8) -> bool {
    bits == 0 || (value ^ prefix) >> (16 - u32::from(bits).min(16)) == 0
}

/// The class of the longest entry for `local` (matched in full) whose remote prefix covers
/// `remote`.
fn longest_addr_match<const N: usize>(
    entries: &[AddrEntry<N>],
    local: [u8; N],
    remote: [u8; N],
) -> Option<u32> {
    let remote = bytes_value(&remote);
    let width = N as u32 * 8;
    entries
        .iter()
        .filter(|e| {
            let prefix = u32::from(e.remote_prefix);
            e.local == local
                && prefix <= width
                && (prefix == 0 || (bytes_value(&e.remote) ^ remote) >> (width - prefix) == 0)
        })
        .max_by_key(|e| e.remote_prefix)
        .map(|e| e.class)
}

/// An address family, with addresses as integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn width(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn max(self) -> u128 {
        ranges::max_of(self.width())
    }

    /// The family of `addr` and its value.
    fn split(addr: IpAddr) -> (Family, u128) {
        match addr {
            IpAddr::V4(addr) => (Family::V4, u128::from(u32::from(addr))),
            IpAddr::V6(addr) => (Family::V6, u128::from(addr)),
        }
    }
}

/// The big-endian value of up to 16 bytes.
fn bytes_value(bytes: &[u8]) -> u128 {
    bytes.iter().fold(0, |acc, &b| acc << 8 | u128::from(b))
}

/// The low `N` bytes of `value`, big-endian.
fn value_bytes<const N: usize>(value: u128) -> [u8; N] {
    let bytes = value.to_be_bytes();
    std::array::from_fn(|i| bytes[16 - N + i])
}

/// One step of the flattened plan.
#[derive(Debug)]
struct Step {
    id: u32,
    action: Action,
    /// The tier or profile it belongs to: a Pass skips the rest of the group.
    group: u32,
    /// `None`: matches every packet (a tier's default deny).
    conditions: Option<Conditions>,
}

/// Compiles `wep`'s policy, both directions. Rule ids come from `registry` (the same rule keeps
/// its id).
///
/// # Errors
///
/// A [`CompileError`] when a rule uses a criterion the dataplane cannot enforce, a network of
/// the endpoint is too wide, the compiled form exceeds the context's [`TableLimits`], or rule
/// ids run out.
pub fn compile_endpoint(
    ctx: &PolicyContext<'_>,
    registry: &mut RuleRegistry,
    wep: &WorkloadEndpoint,
) -> Result<CompiledEndpoint, CompileError> {
    let endpoint = format!("{}/{}", wep.namespace(), wep.name());
    let plan = endpoint_plan(ctx.snapshot(), wep);
    let own = local_addresses(&endpoint, &wep.spec.ip_networks)?;
    let mut sources = own.clone();
    sources.extend(local_addresses(
        &endpoint,
        &wep.spec.allow_spoofed_source_prefixes,
    )?);
    sources.sort_unstable();
    sources.dedup();
    let mut compile = |plan: &DirectionPlan, direction: Direction, locals: &[(Family, u128)]| {
        let mut flattener = Flattener {
            ctx,
            registry: &mut *registry,
            endpoint: &endpoint,
            direction,
            steps: Vec::new(),
        };
        let no_match = flattener.flatten(plan)?;
        table::compile(
            ctx,
            &endpoint,
            &flattener.steps,
            no_match,
            direction,
            locals,
        )
    };
    Ok(CompiledEndpoint {
        ingress: compile(&plan.ingress, Direction::Ingress, &own)?,
        egress: compile(&plan.egress, Direction::Egress, &sources)?,
    })
}

/// Every address of `networks` (network and broadcast addresses included), sorted.
fn local_addresses(
    endpoint: &str,
    networks: &[IpNet],
) -> Result<Vec<(Family, u128)>, CompileError> {
    let mut addresses = Vec::new();
    for network in networks {
        if network.max_prefix_len() - network.prefix_len() > MAX_LOCAL_HOST_BITS {
            return Err(CompileError::LocalNetworkTooWide {
                endpoint: endpoint.to_owned(),
                network: *network,
            });
        }
        let (family, first) = Family::split(network.network());
        let (_, last) = Family::split(network.broadcast());
        addresses.extend((first..=last).map(|value| (family, value)));
    }
    addresses.sort_unstable();
    addresses.dedup();
    Ok(addresses)
}

/// The rules of `policy` for `direction`.
fn policy_rules<'s>(
    snapshot: &'s Snapshot,
    policy: &PolicyId,
    direction: Direction,
) -> Option<&'s [Rule]> {
    let (ingress, egress) = match (policy.kind, &policy.namespace) {
        (Kind::NetworkPolicy, Some(namespace)) => {
            let spec = &snapshot.network_policy(namespace, &policy.name)?.spec;
            (&spec.ingress, &spec.egress)
        }
        (Kind::GlobalNetworkPolicy, None) => {
            let spec = &snapshot.global_network_policy(&policy.name)?.spec;
            (&spec.ingress, &spec.egress)
        }
        _ => return None,
    };
    Some(match direction {
        Direction::Ingress => ingress,
        Direction::Egress => egress,
    })
}

/// The rules of profile `name` for `direction`.
fn profile_rules<'s>(
    snapshot: &'s Snapshot,
    name: &str,
    direction: Direction,
) -> Option<&'s [Rule]> {
    let spec = &snapshot.profile(name)?.spec;
    Some(match direction {
        Direction::Ingress => &spec.ingress,
        Direction::Egress => &spec.egress,
    })
}

/// Turns a plan into steps in evaluation order.
struct Flattener<'c, 's> {
    ctx: &'c PolicyContext<'s>,
    registry: &'c mut RuleRegistry,
    endpoint: &'c str,
    direction: Direction,
    steps: Vec<Step>,
}

impl Flattener<'_, '_> {
    /// Adds the steps of `plan`; returns the id of the final deny.
    fn flatten(&mut self, plan: &DirectionPlan) -> Result<u32, CompileError> {
        let (snapshot, direction) = (self.ctx.snapshot(), self.direction);
        let missing = |owner: String| CompileError::Missing {
            endpoint: self.endpoint.to_owned(),
            owner,
        };
        let mut group = 0;
        for tier in &plan.tiers {
            for policy in &tier.policies {
                let rules = policy_rules(snapshot, policy, direction)
                    .ok_or_else(|| missing(format!("{}:{policy}", policy.kind.as_str())))?;
                let rule_ref = |index| RuleRef::PolicyRule {
                    tier: tier.name.clone(),
                    policy: policy.clone(),
                    direction,
                    index,
                };
                self.add_rules(rules, group, policy.namespace.as_deref(), rule_ref)?;
            }
            if tier.default_action == TierDefaultAction::Deny {
                let id = self.registry.id(
                    RuleRef::TierDefault {
                        tier: tier.name.clone(),
                        direction,
                    },
                    Action::Deny,
                )?;
                self.steps.push(Step {
                    id,
                    action: Action::Deny,
                    group,
                    conditions: None,
                });
            }
            group += 1;
        }
        for profile in &plan.profiles {
            let rules = profile_rules(snapshot, profile, direction)
                .ok_or_else(|| missing(format!("Profile:{profile}")))?;
            let rule_ref = |index| RuleRef::ProfileRule {
                profile: profile.clone(),
                direction,
                index,
            };
            self.add_rules(rules, group, None, rule_ref)?;
            group += 1;
        }
        Ok(self
            .registry
            .id(RuleRef::NoMatch { direction }, Action::Deny)?)
    }

    /// Adds `rules` of a policy in `namespace` (`None`: global policy or profile).
    fn add_rules(
        &mut self,
        rules: &[Rule],
        group: u32,
        namespace: Option<&str>,
        rule_ref: impl Fn(u32) -> RuleRef,
    ) -> Result<(), CompileError> {
        for (index, rule) in (0u32..).zip(rules) {
            let rule_ref = rule_ref(index);
            let origin = Origin {
                endpoint: self.endpoint,
                rule: &rule_ref,
            };
            let conditions = Conditions::new(self.ctx, rule, namespace, self.direction, &origin)?;
            let id = self.registry.id(rule_ref, rule.action)?;
            self.steps.push(Step {
                id,
                action: rule.action,
                group,
                conditions: Some(conditions),
            });
        }
        Ok(())
    }
}
