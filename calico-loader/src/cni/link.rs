//! The interfaces of an attachment, made with `ip` (iproute2): in the host's namespace (the
//! plugin's own), or in the container's through `nsenter --net=<CNI_NETNS>`.
//!
//! The veth's host side is `cali` + the first 11 characters of the container ID with MAC
//! `ee:ee:ee:ee:ee:ee`; its container side is created directly in the container's namespace
//! under `CNI_IFNAME`, so no temporary name is ever seen in the host.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use ipnet::IpNet;

use super::error::CniError;

/// The host side's MAC, as Calico's.
pub const HOST_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The next hop of the container's IPv4 default route (answered by the host side).
pub const GATEWAY_V4: &str = "169.254.1.1";
/// The host side's link-local address, derived from [`HOST_MAC`]: the container's IPv6 next hop.
pub const GATEWAY_V6: &str = "fe80::ecee:eeff:feee:eeee";

/// The host side's name for a container: `cali` + its first 11 characters.
pub fn host_veth_name(container_id: &str) -> String {
    let prefix: String = container_id.chars().take(11).collect();
    format!("cali{prefix}")
}

/// Where an `ip` command runs.
#[derive(Clone, Debug)]
pub enum Namespace {
    /// The plugin's own namespace (the host's).
    Host,
    /// A container's namespace, by path.
    Container(PathBuf),
}

/// `ip ARGS` in `ns`: stdout on success, else stderr.
fn ip(ns: &Namespace, args: &[&str]) -> Result<String, String> {
    let mut command = match ns {
        Namespace::Host => Command::new("ip"),
        Namespace::Container(path) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", path.display())).arg("ip");
            c
        }
    };
    let output = command
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e} (is iproute2 installed?)"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

fn run(ns: &Namespace, args: &[&str]) -> Result<String, CniError> {
    ip(ns, args).map_err(|e| {
        let place = match ns {
            Namespace::Host => String::new(),
            Namespace::Container(p) => format!(" in {}", p.display()),
        };
        CniError::internal(format!("ip {}{place}: {e}", args.join(" ")))
    })
}

/// Whether `name` exists in `ns`.
///
/// # Errors
///
/// `ip` fails for another reason than the link not existing.
pub fn link_exists(ns: &Namespace, name: &str) -> Result<bool, CniError> {
    match ip(ns, &["-o", "link", "show", "dev", name]) {
        Ok(_) => Ok(true),
        Err(e) if e.contains("does not exist") => Ok(false),
        Err(e) => Err(CniError::internal(format!("ip link show {name}: {e}"))),
    }
}

/// Deletes `name` in `ns`, if it exists; `Ok(true)` if it did.
///
/// # Errors
///
/// `ip` fails for another reason than the link not existing.
pub fn delete_link(ns: &Namespace, name: &str) -> Result<bool, CniError> {
    match ip(ns, &["link", "del", "dev", name]) {
        Ok(_) => Ok(true),
        Err(e) if e.contains("does not exist") || e.contains("Cannot find device") => Ok(false),
        Err(e) => Err(CniError::internal(format!("ip link del {name}: {e}"))),
    }
}

/// The MAC of `name` in `ns`.
///
/// # Errors
///
/// `ip` fails, or prints no address.
pub fn link_mac(ns: &Namespace, name: &str) -> Result<String, CniError> {
    let text = run(ns, &["-j", "link", "show", "dev", name])?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CniError::internal(format!("ip -j link show {name}: {e}")))?;
    value[0]["address"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| CniError::internal(format!("{name} has no MAC address")))
}

/// The addresses on `name` in `ns`, as `ip/prefix`.
///
/// # Errors
///
/// `ip` fails.
pub fn link_addresses(ns: &Namespace, name: &str) -> Result<Vec<IpNet>, CniError> {
    let text = run(ns, &["-j", "addr", "show", "dev", name])?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| CniError::internal(format!("ip -j addr show {name}: {e}")))?;
    let mut nets = Vec::new();
    for info in value[0]["addr_info"].as_array().into_iter().flatten() {
        let (Some(local), Some(len)) = (info["local"].as_str(), info["prefixlen"].as_u64()) else {
            continue;
        };
        if let Ok(net) = format!("{local}/{len}").parse::<IpNet>() {
            nets.push(net);
        }
    }
    Ok(nets)
}

/// What [`create_veth`] makes.
pub struct Veth<'a> {
    pub host_name: &'a str,
    pub container_name: &'a str,
    pub netns: &'a Path,
    pub mtu: u32,
    pub addresses: &'a [IpAddr],
    /// GRO on and transmit checksum offload off on the container side (the agent's XDP mode).
    pub prepare_for_xdp: bool,
}

/// Creates the veth and configures both sides (see the module documentation); returns the
/// container side's MAC. On failure the host side (and with it the container side) may
/// exist: the caller deletes it.
///
/// # Errors
///
/// `ip` or a sysctl failing.
pub fn create_veth(veth: &Veth<'_>) -> Result<String, CniError> {
    let host = Namespace::Host;
    let container = Namespace::Container(veth.netns.to_path_buf());
    let mtu = veth.mtu.to_string();
    let netns = veth.netns.display().to_string();
    run(
        &host,
        &[
            "link",
            "add",
            veth.host_name,
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            veth.container_name,
            "mtu",
            &mtu,
            "netns",
            &netns,
        ],
    )?;
    let has_v6 = veth.addresses.iter().any(IpAddr::is_ipv6);
    host_sysctls(veth.host_name, has_v6)?;
    run(
        &host,
        &["link", "set", "dev", veth.host_name, "address", HOST_MAC],
    )?;
    run(&host, &["link", "set", "dev", veth.host_name, "up"])?;

    run(
        &container,
        &["link", "set", "dev", veth.container_name, "up"],
    )?;
    for address in veth.addresses {
        match address {
            IpAddr::V4(a) => {
                run(
                    &container,
                    &[
                        "addr",
                        "add",
                        &format!("{a}/32"),
                        "dev",
                        veth.container_name,
                    ],
                )?;
            }
            IpAddr::V6(a) => {
                run(
                    &container,
                    &[
                        "-6",
                        "addr",
                        "add",
                        &format!("{a}/128"),
                        "dev",
                        veth.container_name,
                        "nodad",
                    ],
                )?;
            }
        }
    }
    if veth.addresses.iter().any(IpAddr::is_ipv4) {
        run(
            &container,
            &[
                "route",
                "add",
                GATEWAY_V4,
                "dev",
                veth.container_name,
                "scope",
                "link",
            ],
        )?;
        run(
            &container,
            &[
                "route",
                "add",
                "default",
                "via",
                GATEWAY_V4,
                "dev",
                veth.container_name,
            ],
        )?;
    }
    if has_v6 {
        run(
            &container,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                GATEWAY_V6,
                "dev",
                veth.container_name,
            ],
        )?;
    }
    if veth.prepare_for_xdp {
        let output = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args([
                "ethtool",
                "-K",
                veth.container_name,
                "gro",
                "on",
                "tx",
                "off",
            ])
            .output()
            .map_err(|e| {
                CniError::internal(format!("cannot run ethtool: {e} (is it installed?)"))
            })?;
        if !output.status.success() {
            return Err(CniError::internal(format!(
                "ethtool -K {} gro on tx off: {}",
                veth.container_name,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
    }
    let mac = link_mac(&container, veth.container_name)?;
    for address in veth.addresses {
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        run(
            &host,
            &[
                "route",
                "replace",
                &format!("{address}/{prefix}"),
                "dev",
                veth.host_name,
                "scope",
                "link",
            ],
        )?;
    }
    Ok(mac)
}

/// The host side's sysctls, as Calico sets them: proxy ARP answering at once, forwarding,
/// and for IPv6 proxy NDP without router advertisements.
fn host_sysctls(name: &str, v6: bool) -> Result<(), CniError> {
    let mut settings = vec![
        (format!("/proc/sys/net/ipv4/conf/{name}/proxy_arp"), "1"),
        (format!("/proc/sys/net/ipv4/neigh/{name}/proxy_delay"), "0"),
        (format!("/proc/sys/net/ipv4/conf/{name}/forwarding"), "1"),
    ];
    if v6 {
        settings.extend([
            (format!("/proc/sys/net/ipv6/conf/{name}/accept_ra"), "0"),
            (format!("/proc/sys/net/ipv6/conf/{name}/proxy_ndp"), "1"),
            (format!("/proc/sys/net/ipv6/conf/{name}/forwarding"), "1"),
        ]);
    }
    for (path, value) in settings {
        std::fs::write(&path, value)
            .map_err(|e| CniError::internal(format!("writing {value} to {path}: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_side_is_cali_and_eleven_characters() {
        assert_eq!(
            host_veth_name("0123456789abcdef0123456789abcdef"),
            "cali0123456789a"
        );
        assert_eq!(host_veth_name("short"), "calishort");
        assert!(host_veth_name(&"f".repeat(64)).len() <= 15);
    }
}
