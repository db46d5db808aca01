//! What policy and conntrack need from a packet: its addresses, protocol and ports, TCP flags,
//! and for an ICMP error the flow it is about.
//!
//! Parsing works on the raw bytes `[data, data_end)` like the rest of the pipeline; every
//! access is checked against `data_end`.

use calico_ebpf_common::{ConntrackKey, ConntrackValue};

use crate::forward::ptr_at;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_UDPLITE: u8 = 136;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Values of [`Flow::kind`].
pub mod flow_kind {
    /// A packet of its own flow.
    pub const NORMAL: u8 = 0;
    /// An ICMP error: [`super::Flow::related`] is the key of the flow it reports on.
    pub const ICMP_ERROR: u8 = 1;
    /// ICMPv6 neighbour discovery or multicast listener traffic: link housekeeping that
    /// policy does not apply to.
    pub const NEIGHBOUR_DISCOVERY: u8 = 2;
}

/// One packet's flow, as policy and conntrack see it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Flow {
    /// IPv4 addresses use the first four bytes.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Ports as policy matches them: TCP, UDP, UDP-Lite and SCTP ports; for ICMP the
    /// destination "port" is `type << 8 | code` and the source port 0; otherwise 0.
    pub sport: u16,
    pub dport: u16,
    /// Ports as conntrack keys them: the same, except ICMP echo (both hold the identifier)
    /// and other ICMP (both 0).
    pub ct_sport: u16,
    pub ct_dport: u16,
    /// The whole packet's length, for counters.
    pub len: u32,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// A [`flow_kind`] value.
    pub kind: u8,
    /// For an ICMP error, the conntrack key of the flow it reports on.
    pub related: ConntrackKey,
    /// Working space of conntrack (the flow lives in a per-CPU map, not on the small stack):
    /// the flow's own key, and a new entry being built.
    pub key: ConntrackKey,
    pub entry: ConntrackValue,
}

impl Flow {
    /// Clears every field for a new packet, in place.
    #[inline(always)]
    pub fn reset(&mut self, family: u8, len: u64) {
        self.src = [0; 16];
        self.dst = [0; 16];
        self.sport = 0;
        self.dport = 0;
        self.ct_sport = 0;
        self.ct_dport = 0;
        self.len = len as u32;
        self.family = family;
        self.proto = 0;
        self.tcp_flags = 0;
        self.kind = flow_kind::NORMAL;
    }

    /// Writes into `out` what policy needs of this flow as its opener sent it: the flow itself
    /// when `reverse` is false, else the flow seen from the other side (this packet being a
    /// reply), with ICMP echo replies turned into requests. Field by field: a whole-struct copy
    /// costs the caller's stack.
    #[inline(always)]
    pub fn opening_into(&self, out: &mut Flow, reverse: bool) {
        out.family = self.family;
        out.proto = self.proto;
        out.len = self.len;
        out.tcp_flags = self.tcp_flags;
        out.kind = self.kind;
        if !reverse {
            out.src = self.src;
            out.dst = self.dst;
            out.sport = self.sport;
            out.dport = self.dport;
            return;
        }
        out.src = self.dst;
        out.dst = self.src;
        out.sport = self.dport;
        out.dport = self.sport;
        if self.proto == IPPROTO_ICMP || self.proto == IPPROTO_ICMPV6 {
            let icmp_type = (self.dport >> 8) as u8;
            let request = match icmp_type {
                ICMP_ECHO_REPLY if self.proto == IPPROTO_ICMP => ICMP_ECHO_REQUEST,
                ICMPV6_ECHO_REPLY if self.proto == IPPROTO_ICMPV6 => ICMPV6_ECHO_REQUEST,
                other => other,
            };
            out.sport = 0;
            out.dport = (request as u16) << 8 | (self.dport & 0xff);
        }
    }
}

impl Flow {
    /// Writes the flow's normalized conntrack key into `self.key` (side A is the lower
    /// (address, port)); returns whether the packet travels from side A.
    #[inline(always)]
    pub fn fill_key(&mut self) -> bool {
        let src_first = match compare_addrs(&self.src, &self.dst) {
            core::cmp::Ordering::Less => true,
            core::cmp::Ordering::Greater => false,
            core::cmp::Ordering::Equal => self.ct_sport <= self.ct_dport,
        };
        let key = &mut self.key;
        if src_first {
            key.addr_a = self.src;
            key.addr_b = self.dst;
            key.port_a = self.ct_sport;
            key.port_b = self.ct_dport;
        } else {
            key.addr_a = self.dst;
            key.addr_b = self.src;
            key.port_a = self.ct_dport;
            key.port_b = self.ct_sport;
        }
        key.proto = self.proto;
        key.family = self.family;
        key._pad = [0; 2];
        src_first
    }
}

#[inline(always)]
fn compare_addrs(a: &[u8; 16], b: &[u8; 16]) -> core::cmp::Ordering {
    let a_hi = u64::from_be_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let b_hi = u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    if a_hi != b_hi {
        return a_hi.cmp(&b_hi);
    }
    let a_lo = u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let b_lo = u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
    a_lo.cmp(&b_lo)
}

/// Whether an ICMP type (of `proto`) is an error message that quotes the packet it is about.
#[inline(always)]
fn is_icmp_error(proto: u8, icmp_type: u8) -> bool {
    if proto == IPPROTO_ICMP {
        // Destination unreachable, source quench, redirect, time exceeded, parameter problem.
        matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
    } else {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        matches!(icmp_type, 1..=4)
    }
}

/// Reads the transport header at `l4` into `flow` (whose addresses, family and protocol are
/// set). `first_fragment` is false for a non-first IPv4 fragment, which carries no transport
/// header: its ports stay 0. Returns `None` when the header is truncated.
#[inline(always)]
pub fn parse_transport(
    data: usize,
    data_end: usize,
    l4: usize,
    first_fragment: bool,
    flow: &mut Flow,
) -> Option<()> {
    if !first_fragment {
        return Some(());
    }
    match flow.proto {
        IPPROTO_TCP => {
            let tcp = unsafe { &*ptr_at::<[u8; 14]>(data, data_end, l4)? };
            flow.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            flow.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
            flow.tcp_flags = tcp[13];
        }
        IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP => {
            let ports = unsafe { &*ptr_at::<[u8; 4]>(data, data_end, l4)? };
            flow.sport = u16::from_be_bytes([ports[0], ports[1]]);
            flow.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp = unsafe { &*ptr_at::<[u8; 8]>(data, data_end, l4)? };
            let (icmp_type, code) = (icmp[0], icmp[1]);
            flow.dport = (icmp_type as u16) << 8 | code as u16;
            let echo = if flow.proto == IPPROTO_ICMP {
                icmp_type == ICMP_ECHO_REQUEST || icmp_type == ICMP_ECHO_REPLY
            } else {
                icmp_type == ICMPV6_ECHO_REQUEST || icmp_type == ICMPV6_ECHO_REPLY
            };
            if echo {
                let id = u16::from_be_bytes([icmp[4], icmp[5]]);
                flow.ct_sport = id;
                flow.ct_dport = id;
                return Some(());
            }
            if flow.proto == IPPROTO_ICMPV6 && (130..=137).contains(&icmp_type) {
                flow.kind = flow_kind::NEIGHBOUR_DISCOVERY;
                return Some(());
            }
            if is_icmp_error(flow.proto, icmp_type)
                && quoted_flow(data, data_end, l4 + 8, flow).is_some()
            {
                flow.kind = flow_kind::ICMP_ERROR;
            }
            return Some(());
        }
        _ => {}
    }
    flow.ct_sport = flow.sport;
    flow.ct_dport = flow.dport;
    Some(())
}

/// Reads the packet an ICMP error quotes (its IP header and first eight bytes, at `at`) into
/// `flow.related`. `None` when it is truncated or not of the same family.
#[inline(always)]
fn quoted_flow(data: usize, data_end: usize, at: usize, flow: &mut Flow) -> Option<()> {
    // The quoted packet's source and destination go straight into the key, then get ordered.
    let key = &mut flow.related;
    key.addr_a = [0; 16];
    key.addr_b = [0; 16];
    let (proto, l4) = if flow.family == 4 {
        let ip = unsafe { &*ptr_at::<[u8; 20]>(data, data_end, at)? };
        let header_len = ((ip[0] & 0x0f) as usize) * 4;
        if ip[0] >> 4 != 4 || header_len < 20 {
            return None;
        }
        key.addr_a[..4].copy_from_slice(&ip[12..16]);
        key.addr_b[..4].copy_from_slice(&ip[16..20]);
        (ip[9], at + header_len)
    } else {
        let ip = unsafe { &*ptr_at::<[u8; 40]>(data, data_end, at)? };
        if ip[0] >> 4 != 6 {
            return None;
        }
        key.addr_a.copy_from_slice(&ip[8..24]);
        key.addr_b.copy_from_slice(&ip[24..40]);
        (ip[6], at + 40)
    };
    let (sport, dport) = match proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP => {
            let ports = unsafe { &*ptr_at::<[u8; 4]>(data, data_end, l4)? };
            (
                u16::from_be_bytes([ports[0], ports[1]]),
                u16::from_be_bytes([ports[2], ports[3]]),
            )
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            let icmp = unsafe { &*ptr_at::<[u8; 8]>(data, data_end, l4)? };
            let id = u16::from_be_bytes([icmp[4], icmp[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    let key = &mut flow.related;
    key.port_a = sport;
    key.port_b = dport;
    key.proto = proto;
    key.family = flow.family;
    key._pad = [0; 2];
    let swap = match compare_addrs(&key.addr_a, &key.addr_b) {
        core::cmp::Ordering::Less => false,
        core::cmp::Ordering::Greater => true,
        core::cmp::Ordering::Equal => sport > dport,
    };
    if swap {
        core::mem::swap(&mut key.addr_a, &mut key.addr_b);
        core::mem::swap(&mut key.port_a, &mut key.port_b);
    }
    Some(())
}
