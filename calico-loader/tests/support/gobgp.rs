//! A top-of-rack router for the routing tests: GoBGP (`testbed::gobgp`, Debian's `gobgpd`), an
//! independent BGP speaker, in a namespace of its own plugged into a [`Cluster`]'s fabric, with an "external"
//! network behind it (a namespace on a link of its own). Its configuration is written here,
//! independently of the agent's: one eBGP neighbor per host address, and the external
//! network's prefixes originated. GoBGP does not touch the kernel (no zebra here);
//! [`Tor::install_learned_routes`] does what zebra would, so that traffic to the workloads
//! finds its way back.
//!
//! Every part is a guard: gobgpd is stopped, and the namespaces deleted, when the `Tor` goes,
//! also when a test fails. Only 198.18.0.0/15 and 2001:db8::/32 are used; gobgpd listens inside
//! its namespace only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use testbed::{
    gobgp::{Gobgpd, config_toml},
    output::with_causes,
};

use super::{
    cluster::{Cluster, enable_forwarding, fabric_v4, fabric_v6},
    topology::{Netns, netns},
};

/// The ToR's member number on the fabric: 198.19.0.200 and 2001:db8:0:ff::c8.
pub const TOR_INDEX: u8 = 200;

/// The network behind the ToR, which it originates: the ToR's side is `.1`/`::1`, the
/// external namespace's `.2`/`::2`.
pub const EXTERNAL_NET_V4: &str = "198.19.100.0/24";
pub const EXTERNAL_NET_V6: &str = "2001:db8:100::/64";
pub const EXTERNAL_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 100, 2);
pub const EXTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 2);

/// One path GoBGP holds for a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibPath {
    /// The neighbor it came from; `None` for a prefix GoBGP originates.
    pub neighbor: Option<IpAddr>,
    pub next_hop: IpAddr,
    pub as_path: Vec<u32>,
    /// Whether GoBGP chose it.
    pub best: bool,
}

/// GoBGP's paths for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibEntry {
    pub prefix: String,
    pub paths: Vec<RibPath>,
}

impl RibEntry {
    /// The path GoBGP chose.
    pub fn best(&self) -> Option<&RibPath> {
        self.paths.iter().find(|p| p.best)
    }
}

/// A GoBGP top-of-rack router on the fabric, and the external network behind it.
pub struct Tor {
    // Dropped first (gobgpd stopped), then the namespaces, then its directory.
    daemon: Gobgpd,
    pub ns: Netns,
    pub external: Netns,
    pub asn: u32,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    _dir: tempfile::TempDir,
}

impl Tor {
    /// Plugs the ToR into `cluster`'s fabric, wires the external network behind it, and starts
    /// gobgpd with AS `asn`, peering over eBGP with each of `neighbors` (IPv4 or IPv6 fabric
    /// addresses) in AS `neighbor_as`, originating [`EXTERNAL_NET_V4`] and [`EXTERNAL_NET_V6`].
    pub fn start(cluster: &Cluster, asn: u32, neighbors: &[IpAddr], neighbor_as: u32) -> Self {
        let ns = netns("ctor");
        cluster.plug(&ns, TOR_INDEX);
        let external = netns("cext");
        ns.add_veth(
            "ext0",
            "02:00:c6:13:64:01",
            &external,
            "eth0",
            "02:00:c6:13:64:02",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        ns.exec(&["ip", "addr", "add", "198.19.100.1/24", "dev", "ext0"]);
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8:100::1/64",
            "dev",
            "ext0",
            "nodad",
        ]);
        enable_forwarding(&ns);
        external.exec(&["ip", "link", "set", "eth0", "up"]);
        external.exec(&["ip", "addr", "add", "198.19.100.2/24", "dev", "eth0"]);
        external.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8:100::2/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        external.exec(&["ip", "route", "add", "default", "via", "198.19.100.1"]);
        external.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:100::1",
        ]);

        let (v4, v6) = (fabric_v4(TOR_INDEX), fabric_v6(TOR_INDEX));
        let dir = tempfile::tempdir().expect("ToR dir");
        let daemon = Gobgpd::start(
            &ns.path(),
            dir.path(),
            &config_toml(asn, v4, neighbors, neighbor_as),
        )
        .unwrap_or_else(|e| panic!("{}", with_causes(&e)));
        let tor = Self {
            ns,
            external,
            asn,
            v4,
            v6,
            daemon,
            _dir: dir,
        };
        for (family, prefix) in [("ipv4", EXTERNAL_NET_V4), ("ipv6", EXTERNAL_NET_V6)] {
            tor.gobgp(&["global", "rib", "add", "-a", family, prefix]);
        }
        tor
    }

    /// What gobgpd logged.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// `gobgp ARGS` in the ToR's namespace: its output, or `None` if it failed.
    fn try_gobgp(&self, args: &[&str]) -> Option<String> {
        let output = self
            .daemon
            .gobgp(args)
            .unwrap_or_else(|e| panic!("{}", with_causes(&e)));
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `gobgp ARGS` in the ToR's namespace; panics if it fails.
    pub fn gobgp(&self, args: &[&str]) -> String {
        self.try_gobgp(args).unwrap_or_else(|| {
            panic!(
                "gobgp {args:?} failed; gobgpd's log:\n{}",
                super::cluster::tail(&self.log(), 40)
            )
        })
    }

    /// GoBGP's routes of `family` (`ipv4` or `ipv6`), from `gobgp global rib -a FAMILY -j`:
    /// each prefix with every path it holds.
    pub fn rib(&self, family: &str) -> Vec<RibEntry> {
        let json = self.gobgp(&["global", "rib", "-a", family, "-j"]);
        let value: serde_json::Value = serde_json::from_str(json.trim())
            .unwrap_or_else(|e| panic!("gobgp's RIB is not JSON ({e}): {json}"));
        let Some(prefixes) = value.as_object() else {
            return Vec::new();
        };
        let mut entries: Vec<RibEntry> = prefixes
            .iter()
            .map(|(prefix, paths)| RibEntry {
                prefix: prefix.clone(),
                paths: paths
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|path| {
                        Some(RibPath {
                            neighbor: path["neighbor-ip"]
                                .as_str()
                                .and_then(|ip| ip.parse().ok())
                                .filter(|ip: &IpAddr| !ip.is_unspecified()),
                            next_hop: next_hop(path)?,
                            as_path: as_path(path),
                            best: path["best"] == true,
                        })
                    })
                    .collect(),
            })
            .collect();
        entries.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        entries
    }

    /// Installs in the ToR's kernel the routes GoBGP learned (its best paths, not the prefixes
    /// it originates), `PREFIX via NEXT_HOP`, as zebra would; returns them (prefix, next hop).
    pub fn install_learned_routes(&self) -> Vec<(String, IpAddr)> {
        let learned: Vec<(String, IpAddr)> = ["ipv4", "ipv6"]
            .into_iter()
            .flat_map(|family| self.rib(family))
            .filter_map(|entry| {
                let best = entry.best()?;
                best.neighbor
                    .is_some()
                    .then(|| (entry.prefix.clone(), best.next_hop))
            })
            .collect();
        for (prefix, next_hop) in &learned {
            self.ns.exec(&[
                "ip",
                "route",
                "replace",
                prefix,
                "via",
                &next_hop.to_string(),
                "dev",
                "eth0",
            ]);
        }
        learned
    }
}

/// A path's next hop: the NEXT_HOP attribute (type 3) for IPv4, MP_REACH_NLRI's (type 14) for
/// IPv6.
fn next_hop(path: &serde_json::Value) -> Option<IpAddr> {
    path["attrs"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == 3 || a["type"] == 14)?["nexthop"]
        .as_str()?
        .parse()
        .ok()
}

/// A path's AS path (attribute type 2), its segments flattened.
fn as_path(path: &serde_json::Value) -> Vec<u32> {
    path["attrs"]
        .as_array()
        .and_then(|attrs| attrs.iter().find(|a| a["type"] == 2))
        .and_then(|a| a["as_paths"].as_array())
        .map(|segments| {
            segments
                .iter()
                .filter_map(|s| s["asns"].as_array())
                .flatten()
                .filter_map(|asn| asn.as_u64().and_then(|n| u32::try_from(n).ok()))
                .collect()
        })
        .unwrap_or_default()
}
