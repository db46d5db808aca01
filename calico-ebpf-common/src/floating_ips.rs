//! Floating IPs (a WorkloadEndpoint's `ipNATs`, as OpenStack writes them): a 1:1 NAT between an
//! external address and one of the endpoint's own (internal) addresses.
//!
//! One map holds both directions, keyed by address and direction: an external address leads
//! to the internal one and the endpoint's interface (destination NAT of packets to it), an
//! internal address to its external one (source NAT of the endpoint's packets). The agent
//! writes both entries of each mapping; the programs look one up only for packets whose route
//! is a floating IP (`RouteKind::FloatingIp`) or that come from an endpoint flagged
//! `FLOATING_IPS`.

/// Values of [`FloatingIpKey::direction`].
pub mod floating_ip_direction {
    /// The key is an external address; the value holds the internal one.
    pub const EXTERNAL: u8 = 1;
    /// The key is an internal address; the value holds the external one.
    pub const INTERNAL: u8 = 2;
}

/// Key of the floating IP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct FloatingIpKey {
    /// The address (IPv4 in the first four bytes, the rest zero).
    pub addr: [u8; 16],
    /// 4 or 6.
    pub family: u8,
    /// A [`floating_ip_direction`] value.
    pub direction: u8,
    pub _pad: [u8; 2],
}

/// Value of the floating IP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FloatingIpValue {
    /// The address the key's translates to (IPv4 in the first four bytes).
    pub addr: [u8; 16],
    /// The host-side ifindex of the endpoint's interface.
    pub ifindex: u32,
    pub _pad: u32,
}

/// Per-CPU counters of translated packets (one slot; readers sum the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FloatingIpCounters {
    /// Packets whose destination went from an external address to its internal one.
    pub dnat_packets: u64,
    /// Packets whose source went from an internal address to its external one.
    pub snat_packets: u64,
}

impl FloatingIpCounters {
    /// Adds another CPU's counts.
    pub fn accumulate(&mut self, other: &Self) {
        self.dnat_packets += other.dnat_packets;
        self.snat_packets += other.snat_packets;
    }
}

/// The Internet checksum field `check` (as it is stored, read big-endian) after a 4-byte field
/// it covers went from `old` to `new` (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`). For the
/// IPv4 header checksum, and for TCP and UDP checksums, whose pseudo-header holds the
/// addresses. The caller keeps a UDP checksum of 0 (none) as it is, and writes a computed 0 as
/// `0xffff`.
#[inline(always)]
pub fn checksum_replace4(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let mut sum = u32::from(!check);
    sum += u32::from(!u16::from_be_bytes([old[0], old[1]]));
    sum += u32::from(!u16::from_be_bytes([old[2], old[3]]));
    sum += u32::from(u16::from_be_bytes([new[0], new[1]]));
    sum += u32::from(u16::from_be_bytes([new[2], new[3]]));
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

crate::user_pod!(FloatingIpKey, FloatingIpValue, FloatingIpCounters);

#[cfg(test)]
mod tests {
    use super::*;

    /// The Internet checksum of `bytes`, computed from scratch.
    fn checksum(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn replacing_an_address_keeps_the_ipv4_header_checksum_right() {
        let mut header: [u8; 20] = [
            0x45, 0, 0, 84, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 198, 19, 0, 1, 198, 18, 0, 11,
        ];
        let check = checksum(&header);
        header[10..12].copy_from_slice(&check.to_be_bytes());
        for new in [
            [198, 19, 255, 9],
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            [198, 18, 0, 12],
        ] {
            let mut changed = header;
            let old = [changed[16], changed[17], changed[18], changed[19]];
            changed[16..20].copy_from_slice(&new);
            let stored = u16::from_be_bytes([changed[10], changed[11]]);
            let updated = checksum_replace4(stored, old, new);
            changed[10..12].copy_from_slice(&updated.to_be_bytes());
            // A header with a correct checksum sums to 0xffff: its checksum over itself is 0.
            assert_eq!(checksum(&changed), 0, "after rewriting to {new:?}");
        }
    }

    #[test]
    fn replacing_an_address_keeps_a_udp_checksum_right() {
        // Pseudo-header (source, destination, zero, protocol, UDP length) then the datagram.
        let src = [198, 18, 0, 11];
        let dst = [198, 19, 0, 1];
        let payload = *b"floating";
        let udp_len = 8 + payload.len() as u16;
        let full = |src: [u8; 4], check: u16| {
            let mut bytes = [0u8; 12 + 16];
            bytes[..4].copy_from_slice(&src);
            bytes[4..8].copy_from_slice(&dst);
            bytes[9] = 17;
            bytes[10..12].copy_from_slice(&udp_len.to_be_bytes());
            bytes[12..14].copy_from_slice(&40000u16.to_be_bytes());
            bytes[14..16].copy_from_slice(&7000u16.to_be_bytes());
            bytes[16..18].copy_from_slice(&udp_len.to_be_bytes());
            bytes[18..20].copy_from_slice(&check.to_be_bytes());
            bytes[20..].copy_from_slice(&payload);
            bytes
        };
        let check = checksum(&full(src, 0));
        assert_eq!(checksum(&full(src, check)), 0);
        let external = [198, 19, 255, 9];
        let updated = checksum_replace4(check, src, external);
        assert_eq!(checksum(&full(external, updated)), 0);
    }
}
