//! Crafted packets: the one `trace` runs the policy code on, the microbenchmark's, and the
//! program tests'. Checksums are computed, so the packets are valid unless a test breaks them on
//! purpose.
//!
//! Internal to the crate; the `packets` feature makes it public for the program tests, and adds
//! the builders only they use.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// One's-complement sum of `data` as big-endian 16-bit words, folded.
pub fn ones_complement_sum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

pub fn checksum(data: &[u8]) -> u16 {
    !ones_complement_sum(data, 0)
}

pub fn ethernet(dst: [u8; 6], src: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&src);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A UDP datagram whose checksum covers `pseudo_header` (addresses, protocol and length, as the
/// IP version defines it), which the caller builds with the datagram's length.
fn udp(
    sport: u16,
    dport: u16,
    payload: &[u8],
    pseudo_header: impl FnOnce(u16) -> Vec<u8>,
) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = pseudo_header(len);
    pseudo.extend_from_slice(&udp);
    let check = checksum(&pseudo);
    udp[6..8].copy_from_slice(&check.to_be_bytes());
    udp
}

/// A UDP datagram with a correct checksum over the IPv4 pseudo-header.
pub fn udp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    udp(sport, dport, payload, |len| {
        let mut pseudo = [src.octets(), dst.octets()].concat();
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&len.to_be_bytes());
        pseudo
    })
}

/// An IPv4 packet (with `options`, a multiple of 4 bytes) carrying `payload` as `protocol`.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    protocol: u8,
    options: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let header_len = 20 + options.len();
    let total = (header_len + payload.len()) as u16;
    let mut ip = vec![0x40 | (header_len / 4) as u8, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34, 0x40, 0x00, ttl, protocol, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(options);
    let check = checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

#[cfg(feature = "packets")]
/// A UDP datagram with a correct checksum over the IPv6 pseudo-header.
pub fn udp_v6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    udp(sport, dport, payload, |len| {
        let mut pseudo = [src.octets(), dst.octets()].concat();
        pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        pseudo
    })
}

pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    next_header: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0];
    ip.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    ip.push(next_header);
    ip.push(hop_limit);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend_from_slice(payload);
    ip
}

/// An Ethernet frame with a UDP/IPv4 packet from `src` to `dst`.
pub fn udp_v4_frame(
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    options: &[u8],
) -> Vec<u8> {
    let udp = udp_v4(src, dst, 40000, 5201, b"calico-ebpf test payload");
    ethernet(
        HOST_MAC,
        src_mac,
        0x0800,
        &ipv4(src, dst, ttl, 17, options, &udp),
    )
}

#[cfg(feature = "packets")]
pub fn udp_v6_frame(src_mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8) -> Vec<u8> {
    let udp = udp_v6(src, dst, 40000, 5201, b"calico-ebpf test payload");
    ethernet(
        HOST_MAC,
        src_mac,
        0x86dd,
        &ipv6(src, dst, hop_limit, 17, &udp),
    )
}

#[cfg(feature = "packets")]
/// A broadcast ARP request from `sender` asking for `target`.
pub fn arp_request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
    arp.extend_from_slice(&sender_mac);
    arp.extend_from_slice(&sender.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    ethernet([0xff; 6], sender_mac, 0x0806, &arp)
}

#[cfg(feature = "packets")]
/// TCP flags, as the builders take them.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

#[cfg(feature = "packets")]
/// A TCP segment (no options, no payload) with `flags` and a correct checksum over the IPv4
/// pseudo-header.
pub fn tcp_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&1u32.to_be_bytes());
    let ack = if flags & tcp_flags::ACK != 0 { 1u32 } else { 0 };
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    let mut pseudo = [src.octets(), dst.octets()].concat();
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let check = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&check.to_be_bytes());
    tcp
}

#[cfg(feature = "packets")]
/// An Ethernet frame to `dst_mac` with a TCP/IPv4 segment (see [`tcp_v4`]), TTL 64.
pub fn tcp_v4_frame(
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let tcp = tcp_v4(src, dst, sport, dport, flags);
    ethernet(
        dst_mac,
        [0x02, 0, 0, 0, 0, 0x01],
        0x0800,
        &ipv4(src, dst, 64, 6, &[], &tcp),
    )
}

#[cfg(feature = "packets")]
/// An Ethernet frame to `dst_mac` with a UDP/IPv4 datagram between the given ports, TTL 64.
pub fn udp_v4_ports_frame(
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let udp = udp_v4(src, dst, sport, dport, b"calico-ebpf test payload");
    ethernet(
        dst_mac,
        [0x02, 0, 0, 0, 0, 0x01],
        0x0800,
        &ipv4(src, dst, 64, 17, &[], &udp),
    )
}
