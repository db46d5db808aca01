//! The bench's test frame, a 64-byte UDP datagram from the generator's workload to the sink's
//! (to a port no socket reads): as a trafgen configuration, and as bytes for the live-frames
//! generator and the taps phase.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use testbed::output;

use super::topology::{Topology, UDP_PORT};
use crate::topology::HOST_SIDE_MAC;

/// `aa:bb:cc:dd:ee:ff` as six bytes.
fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).with_context(|| format!("invalid MAC {text}")))
        .collect::<Result<_>>()?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("invalid MAC {text}"))
}

/// The trafgen configuration: one 60-byte frame (64 on the wire with the FCS)
/// from `src` (MAC `src_mac`) to `dst` through the host side, sent only by the
/// worker trafgen pins to `cpu`.
fn trafgen_config(src_mac: &str, src: Ipv4Addr, dst: Ipv4Addr, cpu: usize) -> Result<String> {
    let bytes = |mac: &str| -> Result<String> {
        let parts: Vec<String> = parse_mac(mac)?
            .iter()
            .map(|b| format!("0x{b:02x}"))
            .collect();
        Ok(parts.join(", "))
    };
    let octets = |ip: Ipv4Addr| {
        ip.octets()
            .iter()
            .map(u8::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(format!(
        "/* 64-byte UDP frame (60 bytes + FCS), {src} -> {dst}, port {UDP_PORT} (a socket that never reads). */\n\
         cpu({cpu}): {{\n  \
           /* Ethernet: to the host side, from gen's eth0, IPv4 */\n  \
           {dmac},\n  \
           {smac},\n  \
           c16(0x0800),\n  \
           /* IPv4: IHL 5, total length 46, DF, TTL 64, UDP, header checksum */\n  \
           0x45, 0x00, c16(46), c16(0), c16(0x4000), 64, 17, csumip(14, 33),\n  \
           {src_octets},\n  \
           {dst_octets},\n  \
           /* UDP: length 26, no checksum */\n  \
           c16({UDP_PORT}), c16({UDP_PORT}), c16(26), c16(0),\n  \
           /* 18 bytes of payload pad the frame to 60 */\n  \
           fill(0x00, 18),\n\
         }}\n",
        dmac = bytes(HOST_SIDE_MAC)?,
        smac = bytes(src_mac)?,
        src_octets = octets(src),
        dst_octets = octets(dst),
    ))
}

/// The same frame as bytes, for the live-frames generator: what trafgen's configuration
/// describes, with the IPv4 header checksum computed.
pub fn udp_frame(src_mac: &str, src: Ipv4Addr, dst: Ipv4Addr) -> Result<[u8; 60]> {
    let mut frame = [0u8; 60];
    frame[0..6].copy_from_slice(&parse_mac(HOST_SIDE_MAC)?);
    frame[6..12].copy_from_slice(&parse_mac(src_mac)?);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&46u16.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    ip[10..12].copy_from_slice(&(!(folded as u16)).to_be_bytes());
    let udp = &mut frame[34..42];
    udp[0..2].copy_from_slice(&UDP_PORT.to_be_bytes());
    udp[2..4].copy_from_slice(&UDP_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&26u16.to_be_bytes());
    Ok(frame)
}

pub fn write_trafgen_config(dir: &Path, topo: &Topology, cpu: usize) -> Result<PathBuf> {
    let file = dir.join("udp64.trafgen");
    let config = trafgen_config(&topo.gen_wl.mac, topo.gen_wl.ipv4, topo.sink.ipv4, cpu)?;
    std::fs::write(&file, config).with_context(|| format!("cannot write {}", file.display()))?;
    output::info(format!("trafgen configuration: {}", file.display()));
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trafgen_frame_is_60_bytes_with_an_ip_checksum() {
        let config = trafgen_config(
            "ca:fe:00:00:00:01",
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(198, 18, 0, 2),
            1,
        )
        .expect("valid");
        assert!(config.contains("cpu(1): {"));
        assert!(config.contains("0xee, 0xee, 0xee, 0xee, 0xee, 0xee,"));
        assert!(config.contains("0xca, 0xfe, 0x00, 0x00, 0x00, 0x01,"));
        assert!(config.contains("csumip(14, 33)"));
        assert!(config.contains("198, 18, 0, 1,\n  198, 18, 0, 2,"));
        // Count the frame's bytes: plain bytes, c16() = 2, csumip() = 2, fill(_, n) = n.
        let body: String = config
            .lines()
            .filter(|l| !l.trim_start().starts_with("/*"))
            .collect::<Vec<_>>()
            .join(" ");
        let body = &body[body.find('{').expect("{") + 1..body.rfind('}').expect("}")];
        // Top-level items: a byte, c16(x) = 2, csumip(a, b) = 2, fill(x, n) = n.
        let (mut items, mut item, mut depth) = (Vec::new(), String::new(), 0);
        for c in body.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut item));
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        items.push(item);
        let size: usize = items
            .iter()
            .map(|i| i.trim())
            .filter(|i| !i.is_empty())
            .map(|i| {
                if let Some(args) = i.strip_prefix("fill(") {
                    let n = args.trim_end_matches(')').rsplit(',').next().expect("n");
                    n.trim().parse().expect("fill count")
                } else if i.starts_with("c16(") || i.starts_with("csumip(") {
                    2
                } else {
                    assert!(i.starts_with("0x") || i.parse::<u8>().is_ok(), "{i}");
                    1
                }
            })
            .sum();
        assert_eq!(size, 60, "{config}");
        assert!(trafgen_config("zz", Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED, 0).is_err());
    }

    #[test]
    fn the_live_frame_is_the_trafgen_frame() {
        let frame = udp_frame(
            "ca:fe:00:00:00:01",
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(198, 18, 0, 2),
        )
        .expect("valid");
        assert_eq!(&frame[0..6], &[0xee; 6]);
        assert_eq!(&frame[6..12], &[0xca, 0xfe, 0, 0, 0, 1]);
        assert_eq!(&frame[26..34], &[198, 18, 0, 1, 198, 18, 0, 2]);
        // The IPv4 header sums to 0xffff with its checksum.
        let sum: u32 = frame[14..34]
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff);
        assert_eq!(u16::from_be_bytes([frame[36], frame[37]]), UDP_PORT);
        assert!(udp_frame("zz", Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED).is_err());
    }
}
