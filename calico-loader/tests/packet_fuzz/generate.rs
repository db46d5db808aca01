//! The packets of the packet fuzz test: the addresses of its two workloads, a seeded RNG,
//! random IPv4 and IPv6 packets (options, fragments, extension headers, every transport the
//! parse knows and some it does not), damage to them, cuts, and the packets the sweep cuts at
//! every length.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use calico_loader::{
    model::frame::proto,
    packets::{HOST_MAC, ethernet},
};

pub const SENDER_MAC: [u8; 6] = [0xca, 0xfe, 0, 0, 0, 0x01];
pub const RECEIVER_MAC: [u8; 6] = [0xca, 0xfe, 0, 0, 0, 0x02];
pub const SENDER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const RECEIVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SENDER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const RECEIVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const NOT_OURS_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 1);
pub const NOT_OURS_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 9);
/// In the blackhole route the fixture adds.
pub const BLACKHOLE_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 100, 1);

pub fn is_sender(addr: IpAddr) -> bool {
    addr == IpAddr::V4(SENDER_V4) || addr == IpAddr::V6(SENDER_V6)
}

pub fn is_receiver(addr: IpAddr) -> bool {
    addr == IpAddr::V4(RECEIVER_V4) || addr == IpAddr::V6(RECEIVER_V6)
}

/// A small, seeded RNG (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    pub fn u16(&mut self) -> u16 {
        self.next() as u16
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    /// Up to `n - 1` random bytes.
    pub fn some_bytes(&mut self, n: usize) -> Vec<u8> {
        let len = self.below(n);
        self.bytes(len)
    }
    /// One of `items`, or (one time in `items.len() + 1`) any byte.
    pub fn pick_or_any(&mut self, items: &[u8]) -> u8 {
        match self.below(items.len() + 1) {
            i if i < items.len() => items[i],
            _ => self.byte(),
        }
    }
}

pub fn sender_or(rng: &mut Rng, v6: bool) -> IpAddr {
    match (v6, rng.below(10)) {
        (false, 0) => IpAddr::V4(Ipv4Addr::from(rng.next() as u32)),
        (false, 1) => IpAddr::V4(RECEIVER_V4),
        (false, _) => IpAddr::V4(SENDER_V4),
        (true, 0) => IpAddr::V6(Ipv6Addr::from(u128::from(rng.next()) << 64)),
        (true, 1) => IpAddr::V6("fe80::1".parse().expect("address")),
        (true, _) => IpAddr::V6(SENDER_V6),
    }
}

pub fn destination(rng: &mut Rng, v6: bool) -> IpAddr {
    match (v6, rng.below(10)) {
        (false, 0) => IpAddr::V4(BLACKHOLE_V4),
        (false, 1) => IpAddr::V4(NOT_OURS_V4),
        (false, 2) => IpAddr::V4(Ipv4Addr::from(rng.next() as u32)),
        (false, 3 | 4) => IpAddr::V4(SENDER_V4),
        (false, _) => IpAddr::V4(RECEIVER_V4),
        (true, 0) => IpAddr::V6("ff02::1:2".parse().expect("address")),
        (true, 1) => IpAddr::V6("fe80::ecee:eeff:feee:eeee".parse().expect("address")),
        (true, 2) => IpAddr::V6(NOT_OURS_V6),
        (true, 3 | 4) => IpAddr::V6(SENDER_V6),
        (true, _) => IpAddr::V6(RECEIVER_V6),
    }
}

/// A port: often one the policy names (or next to one), else any.
pub fn port(rng: &mut Rng) -> u16 {
    match rng.below(10) {
        0..=2 => rng.pick(&[22, 53, 80, 443, 7, 9, 8000, 8099]),
        3 => rng.pick(&[7999, 8100, 1, 1023, 1024, 0, 65535, 39999, 41000]),
        4 | 5 => 40000 + rng.u16() % 1000,
        6 => 1 + rng.u16() % 1023,
        _ => rng.u16(),
    }
}

/// An IP header (without payload) of `v6`'s family, from `src` to `dst`, carrying
/// `payload_len` bytes of `next`; IPv4 gets options and fragment fields, IPv6 a chain of
/// extension headers (returned in the header bytes, with the last one's next header `next`).
pub fn ip_header(rng: &mut Rng, src: IpAddr, dst: IpAddr, next: u8, payload_len: usize) -> Vec<u8> {
    let hop_limit = rng.pick(&[0, 1, 2, 64, 255]);
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let options = if rng.chance(60) {
                Vec::new()
            } else {
                let words = 1 + rng.below(10);
                if rng.chance(50) {
                    vec![1; words * 4]
                } else {
                    rng.bytes(words * 4)
                }
            };
            let header_len = 20 + options.len();
            let total = (header_len + payload_len) as u16;
            let fragment: u16 = match rng.below(10) {
                0 => 0x2000,                            // first fragment: MF, offset 0
                1 => 0x2000 | (1 + rng.u16() % 0x1fff), // a middle one
                2 => 1 + rng.u16() % 0x1fff,            // the last one
                3 => 0x4000,                            // DF
                _ => 0,
            };
            let mut ip = vec![0x40 | (header_len / 4) as u8, 0];
            ip.extend_from_slice(&total.to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34]);
            ip.extend_from_slice(&fragment.to_be_bytes());
            ip.extend_from_slice(&[hop_limit, next, 0, 0]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            ip.extend_from_slice(&options);
            let check = calico_loader::packets::checksum(&ip);
            ip[10..12].copy_from_slice(&check.to_be_bytes());
            ip
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let count = if rng.chance(50) { 0 } else { 1 + rng.below(8) };
            let kinds: Vec<u8> = (0..count)
                .map(|_| {
                    rng.pick(&[
                        proto::HOPOPTS,
                        proto::ROUTING,
                        proto::DSTOPTS,
                        proto::FRAGMENT,
                        proto::AH,
                    ])
                })
                .collect();
            let mut extensions = Vec::new();
            for (i, &kind) in kinds.iter().enumerate() {
                let following = kinds.get(i + 1).copied().unwrap_or(next);
                let units = if rng.chance(90) {
                    rng.below(3)
                } else {
                    rng.below(40)
                };
                let header = match kind {
                    proto::FRAGMENT => {
                        let offset: u16 = if rng.chance(50) {
                            rng.u16() & 1 // first fragment (maybe with M)
                        } else {
                            (rng.u16() | 8) & 0xfff9
                        };
                        let mut h = vec![following, 0];
                        h.extend_from_slice(&offset.to_be_bytes());
                        h.extend_from_slice(&rng.bytes(4));
                        h
                    }
                    proto::AH => {
                        let len = (units + 2) * 4;
                        let mut h = vec![following, units as u8];
                        h.extend_from_slice(&rng.bytes(len - 2));
                        h
                    }
                    _ => {
                        let len = (units + 1) * 8;
                        let mut h = vec![following, units as u8];
                        h.extend_from_slice(&vec![1; len - 2]);
                        h
                    }
                };
                extensions.extend_from_slice(&header);
            }
            let first = kinds.first().copied().unwrap_or(next);
            let payload = (extensions.len() + payload_len) as u16;
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&payload.to_be_bytes());
            ip.extend_from_slice(&[first, hop_limit]);
            ip.extend_from_slice(&src.octets());
            ip.extend_from_slice(&dst.octets());
            ip.extend_from_slice(&extensions);
            ip
        }
        _ => unreachable!("one family"),
    }
}

/// A transport header and some payload for `protocol`; for an ICMP error, the quoted
/// packet (maybe cut short).
pub fn transport(rng: &mut Rng, protocol: u8, v6: bool) -> Vec<u8> {
    let payload = rng.some_bytes(24);
    let mut out = match protocol {
        proto::TCP => {
            let mut tcp = Vec::new();
            tcp.extend_from_slice(&port(rng).to_be_bytes());
            tcp.extend_from_slice(&port(rng).to_be_bytes());
            tcp.extend_from_slice(&rng.bytes(8));
            let flags = rng.pick_or_any(&[0x02, 0x12, 0x10, 0x11, 0x04]);
            tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            tcp
        }
        proto::UDP | proto::UDPLITE | proto::SCTP => {
            let mut h = Vec::new();
            h.extend_from_slice(&port(rng).to_be_bytes());
            h.extend_from_slice(&port(rng).to_be_bytes());
            h.extend_from_slice(&rng.bytes(4));
            if protocol == proto::SCTP {
                h.extend_from_slice(&rng.bytes(4));
            }
            h
        }
        proto::ICMP | proto::ICMPV6 => {
            let icmp_type = if protocol == proto::ICMP {
                rng.pick_or_any(&[0, 3, 8, 11, 5, 12, 4])
            } else {
                rng.pick_or_any(&[1, 2, 3, 4, 128, 129, 135, 136, 143])
            };
            let code = rng.pick_or_any(&[0, 1, 4]);
            let mut icmp = vec![icmp_type, code, 0, 0];
            icmp.extend_from_slice(&rng.bytes(4));
            // An error quotes a packet (a reply's, of either family at random).
            if rng.chance(60) {
                let inner_v6 = if rng.chance(80) { v6 } else { !v6 };
                let inner_proto =
                    rng.pick(&[proto::TCP, proto::UDP, proto::ICMP, proto::ICMPV6, 47]);
                let (src, dst) = (destination(rng, inner_v6), sender_or(rng, inner_v6));
                let mut quoted = ip_header(rng, src, dst, inner_proto, 8);
                quoted.extend_from_slice(&port(rng).to_be_bytes());
                quoted.extend_from_slice(&port(rng).to_be_bytes());
                quoted.extend_from_slice(&rng.bytes(4));
                if rng.chance(20) {
                    quoted.truncate(rng.below(quoted.len() + 1));
                }
                icmp.extend_from_slice(&quoted);
            }
            icmp
        }
        _ => rng.some_bytes(16),
    };
    out.extend_from_slice(&payload);
    out
}

/// A random packet from the sender's interface.
pub fn random_frame(rng: &mut Rng) -> Vec<u8> {
    let v6 = rng.chance(50);
    let protocol = if v6 {
        rng.pick_or_any(&[
            proto::TCP,
            proto::UDP,
            proto::ICMPV6,
            proto::UDPLITE,
            proto::SCTP,
            47,
            1,
            50,
            59,
        ])
    } else {
        rng.pick_or_any(&[
            proto::TCP,
            proto::UDP,
            proto::ICMP,
            proto::UDPLITE,
            proto::SCTP,
            47,
            58,
        ])
    };
    let (mut src, dst) = (sender_or(rng, v6), destination(rng, v6));
    // Half the packets to the sender come from the receiver (the other way round).
    if is_sender(dst) && rng.chance(50) {
        src = if v6 {
            IpAddr::V6(RECEIVER_V6)
        } else {
            IpAddr::V4(RECEIVER_V4)
        };
    }
    let l4 = transport(rng, protocol, v6);
    let mut ip = ip_header(rng, src, dst, protocol, l4.len());
    ip.extend_from_slice(&l4);
    let ether_type = if v6 { 0x86dd } else { 0x0800 };
    let mut frame = ethernet(HOST_MAC, SENDER_MAC, ether_type, &ip);
    if rng.chance(30) {
        mutate(rng, &mut frame);
    }
    frame
}

/// Damages a frame: bytes of its headers changed, a length field rewritten, or the frame
/// cut short (its length fields then matching the cut or not).
pub fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        match rng.below(4) {
            0 => {
                let at = 14 + rng.below(frame.len().saturating_sub(14).clamp(1, 100));
                if at < frame.len() {
                    frame[at] = rng.byte();
                }
            }
            1 if frame.len() > 20 => {
                // IPv4 total length or IPv6 payload length.
                let at = if frame[12..14] == [0x08, 0x00] {
                    16
                } else {
                    18
                };
                let value = rng.u16() % (frame.len() as u16 + 16);
                frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
            }
            2 => {
                let len = rng.below(frame.len() + 1);
                cut(frame, len, rng.chance(50));
            }
            _ => {
                if frame.len() > 14 {
                    frame[14] = rng.byte();
                }
            }
        }
    }
}

/// Cuts `frame` to `len` bytes; with `fix`, its IP length field says so.
pub fn cut(frame: &mut Vec<u8>, len: usize, fix: bool) {
    frame.truncate(len);
    if !fix || frame.len() < 20 {
        return;
    }
    if frame[12..14] == [0x08, 0x00] {
        let total = (frame.len() - 14) as u16;
        frame[16..18].copy_from_slice(&total.to_be_bytes());
    } else if frame[12..14] == [0x86, 0xdd] && frame.len() >= 54 {
        let payload = (frame.len() - 54) as u16;
        frame[18..20].copy_from_slice(&payload.to_be_bytes());
    }
}

/// Representative packets for the sweep of every length.
pub fn sweep_frames() -> Vec<Vec<u8>> {
    let mut rng = Rng(7);
    let mut frames = Vec::new();
    // IPv4 TCP SYN to port 80 with 8 bytes of options.
    let mut tcp = vec![
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
    ];
    tcp.extend_from_slice(&[0; 4]);
    let mut ip = calico_loader::packets::ipv4(SENDER_V4, RECEIVER_V4, 64, 6, &[1; 8], &tcp);
    frames.push(ethernet(HOST_MAC, SENDER_MAC, 0x0800, &ip));
    // IPv4 ICMP port unreachable quoting a UDP packet.
    let quoted_udp = calico_loader::packets::udp_v4(RECEIVER_V4, SENDER_V4, 53, 40000, &[]);
    let quoted = calico_loader::packets::ipv4(RECEIVER_V4, SENDER_V4, 64, 17, &[], &quoted_udp);
    let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&quoted);
    ip = calico_loader::packets::ipv4(SENDER_V4, RECEIVER_V4, 64, 1, &[], &icmp);
    frames.push(ethernet(HOST_MAC, SENDER_MAC, 0x0800, &ip));
    // IPv6: hop-by-hop, destination options (16 bytes), routing, then TCP to port 443.
    let mut ext = vec![proto::DSTOPTS, 0, 1, 4, 0, 0, 0, 0];
    ext.extend_from_slice(&[proto::ROUTING, 1]);
    ext.extend_from_slice(&[1; 14]);
    ext.extend_from_slice(&[proto::TCP, 0, 0, 0, 0, 0, 0, 0]);
    let mut tcp443 = tcp.clone();
    tcp443[2..4].copy_from_slice(&443u16.to_be_bytes());
    ext.extend_from_slice(&tcp443);
    let ip6 = calico_loader::packets::ipv6(SENDER_V6, RECEIVER_V6, 64, proto::HOPOPTS, &ext);
    frames.push(ethernet(HOST_MAC, SENDER_MAC, 0x86dd, &ip6));
    // IPv6 first fragment of a UDP datagram to port 53, and a non-first one.
    for offset in [0x0001u16, 0x0100] {
        let mut frag = vec![proto::UDP, 0];
        frag.extend_from_slice(&offset.to_be_bytes());
        frag.extend_from_slice(&[0, 0, 0, 9]);
        frag.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 16, 0, 0]);
        frag.extend_from_slice(&rng.bytes(8));
        let ip6 = calico_loader::packets::ipv6(SENDER_V6, RECEIVER_V6, 64, proto::FRAGMENT, &frag);
        frames.push(ethernet(HOST_MAC, SENDER_MAC, 0x86dd, &ip6));
    }
    // An ICMPv6 packet-too-big quoting a TCP packet, after a destination options header.
    let mut quoted6 = calico_loader::packets::ipv6(RECEIVER_V6, SENDER_V6, 64, 6, &tcp443);
    quoted6.truncate(48);
    let mut too_big = vec![proto::ICMPV6, 0, 1, 4, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 5, 0];
    too_big.extend_from_slice(&quoted6);
    let ip6 = calico_loader::packets::ipv6(SENDER_V6, RECEIVER_V6, 64, proto::DSTOPTS, &too_big);
    frames.push(ethernet(HOST_MAC, SENDER_MAC, 0x86dd, &ip6));
    frames
}
