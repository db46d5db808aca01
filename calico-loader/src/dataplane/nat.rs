//! Outgoing NAT (`IPPool.spec.natOutgoing`): traffic from a natOutgoing pool to a destination
//! outside every pool leaves with the node's address, as in Calico's iptables dataplane.
//!
//! It is done in the kernel: the programs forward only traffic to workloads (local, or other
//! hosts' through their remote-workload routes) and leave everything else to the kernel, which
//! forwards it and, here, masquerades it. The agent owns one nftables table per family in its
//! network namespace, written whole in one `nft -f` transaction whenever the pools change:
//!
//! ```text
//! table ip calico-ebpf-nat {
//!     set nat_pools { type ipv4_addr; flags interval; auto-merge; elements = { ... } }
//!     set all_pools { type ipv4_addr; flags interval; auto-merge; elements = { ... } }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr @nat_pools ip daddr != @all_pools masquerade fully-random
//!     }
//! }
//! ```
//!
//! (`table ip6 calico-ebpf-nat` likewise.) This is Felix's `cali-nat-outgoing` rule: source in
//! the natOutgoing pools (`cali40masq-ipam-pools`), destination in none of the pools
//! (`cali40all-ipam-pools`), `MASQUERADE --random-fully`. Disabled pools count as Felix counts
//! them: `disabled` only stops IPAM handing out new addresses. A family without natOutgoing
//! pools has no table (Felix renders no rule then either).

use std::{
    fmt::Write as _,
    io::Write as _,
    process::{Command, Stdio},
};

use ipnet::IpNet;
use tracing::{error, info};

use crate::datastore::resources::IpPool;

/// The name of the agent's nftables tables (one per family).
pub const NAT_TABLE: &str = "calico-ebpf-nat";

/// The nftables command line tool the manager runs.
const NFT: &str = "nft";

/// Why the NAT table could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    #[error(
        "cannot run `{NFT}` ({source}): natOutgoing needs nftables (Debian's `nftables` package); \
         traffic from natOutgoing pools leaves with the workloads' own addresses"
    )]
    Spawn {
        #[source]
        source: std::io::Error,
    },
    #[error("`{NFT} -f` refused the NAT table: {stderr}")]
    Refused { stderr: String },
}

/// The pools as outgoing NAT sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatPools {
    /// The CIDRs of the natOutgoing pools: traffic from them is masqueraded.
    pub nat: Vec<IpNet>,
    /// The CIDRs of every pool: traffic to them is not.
    pub all: Vec<IpNet>,
}

impl NatPools {
    /// From every pool in force (disabled ones included, as in Felix).
    pub fn from_pools<'a>(pools: impl IntoIterator<Item = &'a IpPool>) -> Self {
        let mut result = Self::default();
        for pool in pools {
            result.all.push(pool.spec.cidr);
            if pool.spec.nat_outgoing {
                result.nat.push(pool.spec.cidr);
            }
        }
        result.nat.sort();
        result.all.sort();
        result
    }

    /// The `nft -f` script that makes both tables what these pools call for, in one
    /// transaction: each table is created (if missing) and deleted, then written again when
    /// its family has natOutgoing pools.
    pub fn script(&self) -> String {
        let mut script = String::new();
        for (family, addr_type, matcher) in [("ip", "ipv4_addr", "ip"), ("ip6", "ipv6_addr", "ip6")]
        {
            let v4 = family == "ip";
            let of_family = |nets: &[IpNet]| -> Vec<String> {
                nets.iter()
                    .filter(|n| matches!(n, IpNet::V4(_)) == v4)
                    .map(ToString::to_string)
                    .collect()
            };
            let (nat, all) = (of_family(&self.nat), of_family(&self.all));
            let _ = writeln!(script, "table {family} {NAT_TABLE} {{}}");
            let _ = writeln!(script, "delete table {family} {NAT_TABLE}");
            if nat.is_empty() {
                continue;
            }
            let set = |name: &str, elements: &[String]| {
                let elements = if elements.is_empty() {
                    String::new()
                } else {
                    format!(" elements = {{ {} }}", elements.join(", "))
                };
                format!(
                    "    set {name} {{ type {addr_type}; flags interval; auto-merge;{elements} }}\n"
                )
            };
            let _ = write!(
                script,
                "table {family} {NAT_TABLE} {{\n{}{}    chain postrouting {{\n        type nat hook \
                 postrouting priority srcnat; policy accept;\n        {matcher} saddr @nat_pools \
                 {matcher} daddr != @all_pools masquerade fully-random\n    }}\n}}\n",
                set("nat_pools", &nat),
                set("all_pools", &all),
            );
        }
        script
    }
}

/// Runs `nft -f -` on `script`.
fn run_nft(script: &str) -> Result<(), NatError> {
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NatError::Spawn { source })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error shows up as nft's failure below.
        let _ = stdin.write_all(script.as_bytes());
    }
    let output = child
        .wait_with_output()
        .map_err(|source| NatError::Spawn { source })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NatError::Refused {
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Removes the agent's NAT tables (both families), if there.
///
/// # Errors
///
/// `nft` missing or failing.
pub fn remove_nat_tables() -> Result<(), NatError> {
    run_nft(&NatPools::default().script())
}

/// Keeps the NAT tables in line with the pools.
#[derive(Default)]
pub struct NatManager {
    /// The pools the tables were last written for (None: not yet, or the last write failed).
    in_force: Option<NatPools>,
    /// The last error logged, so that a lasting one is logged once.
    last_error: Option<String>,
}

impl NatManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes the tables when `desired` differs from what is in force. A failure is logged
    /// (once while it lasts) and retried on the next apply; the rest of the dataplane is
    /// unaffected.
    pub fn sync(&mut self, desired: &NatPools) {
        if self.in_force.as_ref() == Some(desired) {
            return;
        }
        match run_nft(&desired.script()) {
            Ok(()) => {
                if !desired.nat.is_empty()
                    || self.in_force.as_ref().is_some_and(|p| !p.nat.is_empty())
                {
                    let nat: Vec<String> = desired.nat.iter().map(ToString::to_string).collect();
                    info!(
                        nat_pools = %nat.join(","),
                        table = NAT_TABLE,
                        "outgoing NAT programmed"
                    );
                }
                self.in_force = Some(desired.clone());
                self.last_error = None;
            }
            // Without nft there is no table of ours to remove, and none is wanted.
            Err(NatError::Spawn { .. }) if desired.nat.is_empty() => {
                self.in_force = Some(desired.clone());
                self.last_error = None;
            }
            Err(e) => {
                let message = e.to_string();
                if self.last_error.as_ref() != Some(&message) {
                    error!("outgoing NAT (natOutgoing) not programmed, will retry: {message}");
                }
                self.last_error = Some(message);
                self.in_force = None;
            }
        }
    }

    /// Removes the tables.
    ///
    /// # Errors
    ///
    /// `nft` missing or failing.
    pub fn remove(&mut self) -> Result<(), NatError> {
        let programmed = self.in_force.take().is_some_and(|p| !p.nat.is_empty());
        match remove_nat_tables() {
            // Without nft, no table of ours was ever written.
            Err(NatError::Spawn { .. }) if !programmed => Ok(()),
            result => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools(nat: &[&str], all: &[&str]) -> NatPools {
        NatPools {
            nat: nat.iter().map(|s| s.parse().expect("net")).collect(),
            all: all.iter().map(|s| s.parse().expect("net")).collect(),
        }
    }

    #[test]
    fn pools_from_the_datastore_disabled_ones_included() {
        let yaml = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: nat}
spec: {cidr: 198.18.0.0/16, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: nat-disabled}
spec: {cidr: 2001:db8::/48, natOutgoing: true, disabled: true}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: plain}
spec: {cidr: 198.19.128.0/17}
";
        let resources = crate::datastore::parse_file("pools.yaml", yaml).expect("valid pools");
        let pools = NatPools::from_pools(resources.iter().filter_map(|r| r.typed::<IpPool>()));
        assert_eq!(
            pools,
            self::pools(
                &["198.18.0.0/16", "2001:db8::/48"],
                &["198.18.0.0/16", "198.19.128.0/17", "2001:db8::/48"],
            )
        );
    }

    #[test]
    fn no_nat_pools_only_removes_the_tables() {
        let script = pools(&[], &["198.18.0.0/16", "2001:db8::/48"]).script();
        assert_eq!(
            script,
            "table ip calico-ebpf-nat {}\ndelete table ip calico-ebpf-nat\n\
             table ip6 calico-ebpf-nat {}\ndelete table ip6 calico-ebpf-nat\n"
        );
    }

    #[test]
    fn each_family_gets_its_own_pools() {
        let script = pools(
            &["198.18.0.0/16"],
            &["198.18.0.0/16", "198.19.128.0/17", "2001:db8::/48"],
        )
        .script();
        assert!(script.contains(
            "set nat_pools { type ipv4_addr; flags interval; auto-merge; elements = { 198.18.0.0/16 } }"
        ));
        assert!(script.contains(
            "set all_pools { type ipv4_addr; flags interval; auto-merge; elements = { 198.18.0.0/16, 198.19.128.0/17 } }"
        ));
        assert!(
            script.contains("ip saddr @nat_pools ip daddr != @all_pools masquerade fully-random")
        );
        // No IPv6 natOutgoing pool: the ip6 table is only removed.
        assert!(
            script.ends_with("table ip6 calico-ebpf-nat {}\ndelete table ip6 calico-ebpf-nat\n")
        );
    }

    #[test]
    fn ipv6_rule_matches_ipv6_headers() {
        let script = pools(&["2001:db8::/48"], &["2001:db8::/48"]).script();
        assert!(script.contains("type ipv6_addr"));
        assert!(
            script.contains("ip6 saddr @nat_pools ip6 daddr != @all_pools masquerade fully-random")
        );
    }
}
