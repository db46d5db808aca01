//! A fabric joining hosts (and routers beside them): a bridge `br0` in a namespace of its own,
//! on 198.19.0.0/24 and 2001:db8:0:ff::/64. Member `i` is plugged with a veth `vh<i>` on the
//! bridge and `eth0` in its namespace, with 198.19.0.i and 2001:db8:0:ff::i. The routing tests
//! and `cargo xtask bench` build their clusters on it.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::{Netns, cmd::CmdError};

/// The fabric's IPv4 and IPv6 prefix lengths.
pub const FABRIC_PREFIX_V4: u8 = 24;
pub const FABRIC_PREFIX_V6: u8 = 64;
/// The bridge's own IPv4 address (where a cluster's etcd listens).
pub const FABRIC_BRIDGE_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 254);

/// Member `i`'s fabric addresses: 198.19.0.i and 2001:db8:0:ff::i.
pub fn fabric_v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 0, i)
}

pub fn fabric_v6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0xff, 0, 0, 0, u16::from(i))
}

/// Makes `fabric` (a namespace of the caller's) the fabric: its bridge `br0`, up, with
/// [`FABRIC_BRIDGE_V4`].
///
/// # Errors
///
/// `ip` failing.
pub fn create_bridge(fabric: &Netns) -> Result<(), CmdError> {
    fabric
        .ip(["link", "add", "br0", "type", "bridge"])
        .quiet()
        .run()?;
    fabric.ip(["link", "set", "br0", "up"]).quiet().run()?;
    fabric
        .ip([
            "addr",
            "add",
            &format!("{FABRIC_BRIDGE_V4}/{FABRIC_PREFIX_V4}"),
            "dev",
            "br0",
        ])
        .quiet()
        .run()
}

/// Plugs `ns` into the fabric as member `i`: a veth `vh<i>` on the bridge, `eth0` in `ns`, up,
/// with [`fabric_v4`]`(i)` and [`fabric_v6`]`(i)`.
///
/// # Errors
///
/// `ip` failing (for one, `i` plugged already).
pub fn plug(fabric: &Netns, ns: &Netns, i: u8) -> Result<(), CmdError> {
    let port = format!("vh{i}");
    fabric.add_veth(
        &port,
        &format!("02:00:c6:13:ff:{i:02x}"),
        ns,
        "eth0",
        &format!("02:00:c6:13:00:{i:02x}"),
    )?;
    fabric
        .ip(["link", "set", &port, "master", "br0"])
        .quiet()
        .run()?;
    ns.ip(["link", "set", "eth0", "up"]).quiet().run()?;
    ns.ip([
        "addr",
        "add",
        &format!("{}/{FABRIC_PREFIX_V4}", fabric_v4(i)),
        "dev",
        "eth0",
    ])
    .quiet()
    .run()?;
    ns.ip([
        "-6",
        "addr",
        "add",
        &format!("{}/{FABRIC_PREFIX_V6}", fabric_v6(i)),
        "dev",
        "eth0",
        "nodad",
    ])
    .quiet()
    .run()
}

/// Turns on IPv4 and IPv6 forwarding in `ns` (a namespace of the caller's; a new namespace has
/// it off), so that its kernel forwards by the routes BIRD installs.
///
/// # Errors
///
/// `sysctl` failing.
pub fn enable_forwarding(ns: &Netns) -> Result<(), CmdError> {
    ns.command("sysctl")
        .args([
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ])
        .quiet()
        .run()
}
