//! What compiling produces: an endpoint's entries for the kernel's three policy tables, per
//! direction ([`CompiledEndpoint`], [`CompiledDirection`]), the limits they must fit
//! ([`TableLimits`]), why compiling can fail ([`CompileError`]), and the address families and
//! byte orders the entries use. The parts of compiling all build on these; none of them is
//! needed here.

use std::net::IpAddr;

use calico_ebpf_common::{
    PolicyVerdict,
    maps::{MapSpec, PolicyAddrsV4, PolicyPorts, PolicyProtos},
};
use ipnet::IpNet;

use super::ranges::max_of;
use crate::model::rules::{Direction, RuleIdsExhausted};

/// The most addresses one network of an endpoint may hold: each is a local address with its own
/// entries.
pub const MAX_LOCAL_NETWORK_ADDRESSES: u32 = 1 << MAX_LOCAL_HOST_BITS;
pub(super) const MAX_LOCAL_HOST_BITS: u8 = 8;

/// Why an endpoint's policy could not be compiled. The dataplane then keeps the endpoint's
/// previous policy. `endpoint` names the endpoint with its kind (`WorkloadEndpoint ns/name`,
/// `HostEndpoint name`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    /// A rule uses a criterion the dataplane cannot enforce.
    #[error("{endpoint}: {rule}: {field} is not supported: {reason}")]
    Unsupported {
        endpoint: String,
        rule: String,
        field: String,
        reason: &'static str,
    },
    /// A selector does not parse (the datastore checks them, so this should not happen).
    #[error("{endpoint}: {rule}: {field}: {message}")]
    InvalidSelector {
        endpoint: String,
        rule: String,
        field: String,
        message: String,
    },
    /// One of the endpoint's networks holds too many addresses to serve as local addresses.
    #[error(
        "{endpoint}: network {network} holds more than {MAX_LOCAL_NETWORK_ADDRESSES} addresses; \
         policy is compiled per local address"
    )]
    LocalNetworkTooWide { endpoint: String, network: IpNet },
    /// The plan names a policy or profile the snapshot does not have.
    #[error("{endpoint}: {owner} is not in the snapshot")]
    Missing { endpoint: String, owner: String },
    /// The compiled form would not fit the kernel's tables.
    #[error("{endpoint}: its compiled {direction} policy needs more than {limit} {table} entries")]
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
            addrs: PolicyAddrsV4::DEF.max_entries as usize,
            protos: PolicyProtos::DEF.max_entries as usize,
            ports: PolicyPorts::DEF.max_entries as usize,
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

/// An entry of the local-address table of a policy compiled for any local address (a host
/// endpoint's): a `local` prefix, giving the local class that the address entries' `local`
/// holds (as a big-endian number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocalEntry<const N: usize> {
    /// The local prefix (host bits zero).
    pub local: [u8; N],
    pub prefix: u8,
    /// The local class (numbered per family, from 0).
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
    /// Whether it was compiled for any local address (a host endpoint's): the address
    /// entries' `local` then holds a local class, which [`Self::locals_v4`] and
    /// [`Self::locals_v6`] give each local prefix.
    pub local_classes: bool,
    pub locals_v4: Vec<LocalEntry<4>>,
    pub locals_v6: Vec<LocalEntry<16>>,
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
                let local = if self.local_classes {
                    value_bytes(u128::from(longest_local_match(
                        &self.locals_v4,
                        local.octets(),
                    )?))
                } else {
                    local.octets()
                };
                longest_addr_match(&self.addrs_v4, local, remote.octets())
            }
            (IpAddr::V6(local), IpAddr::V6(remote)) => {
                let local = if self.local_classes {
                    value_bytes(u128::from(longest_local_match(
                        &self.locals_v6,
                        local.octets(),
                    )?))
                } else {
                    local.octets()
                };
                longest_addr_match(&self.addrs_v6, local, remote.octets())
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

/// The local class of the longest local entry that covers `local`.
fn longest_local_match<const N: usize>(entries: &[LocalEntry<N>], local: [u8; N]) -> Option<u32> {
    let local = bytes_value(&local);
    let width = N as u32 * 8;
    entries
        .iter()
        .filter(|e| {
            let prefix = u32::from(e.prefix);
            prefix <= width
                && (prefix == 0 || (bytes_value(&e.local) ^ local) >> (width - prefix) == 0)
        })
        .max_by_key(|e| e.prefix)
        .map(|e| e.class)
}

/// An address family, with addresses as integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) fn width(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    pub(super) fn max(self) -> u128 {
        max_of(self.width())
    }

    /// The family of `addr` and its value.
    pub(super) fn split(addr: IpAddr) -> (Family, u128) {
        match addr {
            IpAddr::V4(addr) => (Family::V4, u128::from(u32::from(addr))),
            IpAddr::V6(addr) => (Family::V6, u128::from(addr)),
        }
    }
}

/// The big-endian value of up to 16 bytes.
pub(super) fn bytes_value(bytes: &[u8]) -> u128 {
    bytes.iter().fold(0, |acc, &b| acc << 8 | u128::from(b))
}

/// The low `N` bytes of `value`, big-endian.
pub(super) fn value_bytes<const N: usize>(value: u128) -> [u8; N] {
    let bytes = value.to_be_bytes();
    std::array::from_fn(|i| bytes[16 - N + i])
}
