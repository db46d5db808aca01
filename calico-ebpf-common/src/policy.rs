//! Compiled policy as the programs read it: the three lookup steps (addresses, protocol and
//! source port, destination port) that give a new flow its verdict, and what each rule id
//! stands for.

use crate::until_nul;

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
///
/// A policy compiled for any local address (a host endpoint's) has
/// [`LOCAL_CLASSES`] set in `v4_lengths`: its address entries' `local` holds a local class
/// (big-endian, in the last four bytes), which the policy's local step gives each local
/// address. The local step is an address search of its own, under the id
/// `policy | LOCAL_STEP`: its entries have `local` all zeroes and the local address as
/// `remote`, and their class is the local class.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct PolicyInfo {
    /// Lengths 0..=32 of IPv4 entries.
    pub v4_lengths: u64,
    /// Lengths 0..=128 of IPv6 entries (bit n of word n / 64).
    pub v6_lengths: [u64; 3],
}

/// Bit of [`PolicyInfo::v4_lengths`] (beyond the 33 lengths) set on a policy compiled for any
/// local address.
pub const LOCAL_CLASSES: u64 = 1 << 63;

/// Added to a policy id for the id of its local step (see [`PolicyInfo`]). Policy ids stay
/// below it.
pub const LOCAL_STEP: u32 = 0x8000_0000;

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
    /// No verdict: the packet goes on to what comes next. Only untracked policy ends with it
    /// (what no untracked policy decided meets conntrack and the endpoint's other policy).
    pub const PASS: u8 = 3;
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
    /// No policy decided a packet forwarded through a host endpoint: it is allowed.
    pub const FORWARD_DEFAULT: u8 = 5;
    /// No untracked policy decided: the packet goes on to conntrack and the other policy.
    pub const UNTRACKED_DEFAULT: u8 = 6;
}

/// Values of [`RuleInfo::stage`]: the kind of policy a policy rule belongs to, for a host
/// endpoint's rules (a workload's are all [`rule_stage::NORMAL`]).
pub mod rule_stage {
    /// A normal policy (or a profile, or an ending).
    pub const NORMAL: u8 = 0;
    /// A `preDNAT` policy.
    pub const PRE_DNAT: u8 = 1;
    /// A `doNotTrack` (untracked) policy.
    pub const UNTRACKED: u8 = 2;
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
    /// A [`rule_stage`] value.
    pub stage: u8,
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
            stage: 0,
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

crate::user_pod!(
    PolicyInfo,
    AddressClass,
    PortClass,
    PolicyAddrKeyV4,
    PolicyAddrKeyV6,
    PolicyProtoKey,
    PolicyPortKey,
    PolicyVerdict,
    RuleInfo
);
