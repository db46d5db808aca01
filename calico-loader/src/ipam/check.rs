//! `ipam check`: what calicoctl's `ipam check` reports, from the blocks, the handles and the
//! workload endpoints: addresses allocated that no endpoint uses (leaks), addresses endpoints
//! use that are not allocated, handles without addresses, handles that blocks name but that do
//! not exist, and handles whose counts disagree with the blocks.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use ipnet::IpNet;

use super::{block::AllocationBlock, handle::IpamHandle};

/// An endpoint's name and addresses.
pub struct EndpointAddresses {
    /// `namespace/name`.
    pub name: String,
    pub addresses: Vec<IpNet>,
    /// Whether its addresses come from outside Calico IPAM: OpenStack's endpoints
    /// (orchestrator `openstack`) hold addresses Neutron assigned, which no block records.
    pub outside_ipam: bool,
}

/// The orchestrator whose endpoints' addresses IPAM does not assign.
pub const OPENSTACK_ORCHESTRATOR: &str = "openstack";

/// The report: its text and how many problems it found.
pub struct CheckReport {
    pub text: String,
    pub problems: usize,
}

/// Checks the blocks and handles against each other and against the endpoints; `pools` are
/// the enabled pools' CIDRs.
pub fn check(
    blocks: &[AllocationBlock],
    handles: &BTreeMap<String, IpamHandle>,
    endpoints: &[EndpointAddresses],
    pools: &[IpNet],
) -> CheckReport {
    let mut out = String::new();
    let mut problems = 0;
    let _ = writeln!(out, "Checking IPAM for inconsistencies...\n");
    let _ = writeln!(out, "Found {} IPAM blocks.", blocks.len());
    // Allocations: address -> (handle, block).
    let mut allocations: BTreeMap<IpAddr, (Option<String>, IpNet)> = BTreeMap::new();
    // Per handle and block, how many addresses the blocks hold.
    let mut held: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for block in blocks {
        for (ip, attribute) in block.allocated() {
            let handle = attribute.and_then(|a| a.handle_id.clone());
            if let Some(h) = &handle {
                *held
                    .entry(h.clone())
                    .or_default()
                    .entry(block.cidr.to_string())
                    .or_insert(0) += 1;
            }
            allocations.insert(ip, (handle, block.cidr));
        }
    }
    let _ = writeln!(
        out,
        "IPAM blocks record {} allocations.\n",
        allocations.len()
    );
    let mut in_use: BTreeMap<IpAddr, Vec<&str>> = BTreeMap::new();
    let mut outside_ipam: BTreeSet<IpAddr> = BTreeSet::new();
    for endpoint in endpoints {
        for net in &endpoint.addresses {
            if net.prefix_len() == net.max_prefix_len() {
                in_use.entry(net.addr()).or_default().push(&endpoint.name);
                if endpoint.outside_ipam {
                    outside_ipam.insert(net.addr());
                }
            }
        }
    }
    let _ = writeln!(out, "Found {} workload IPs.\n", in_use.len());

    let _ = writeln!(
        out,
        "Scanning for IPs that are allocated but not actually in use..."
    );
    let mut leaked = 0;
    for (ip, (handle, block)) in &allocations {
        if !in_use.contains_key(ip) {
            let _ = writeln!(
                out,
                "  {ip} leaked; handle {}, block {block}",
                handle.as_deref().unwrap_or("<none>")
            );
            leaked += 1;
        }
    }
    problems += leaked;
    let _ = writeln!(
        out,
        "Found {leaked} IPs that are allocated in IPAM but not actually in use."
    );

    let _ = writeln!(
        out,
        "Scanning for IPs that are in use by a workload but not allocated in IPAM..."
    );
    let (mut outside, mut unallocated, mut assigned_elsewhere) = (0, 0, 0);
    for (ip, owners) in &in_use {
        if owners.len() > 1 {
            let _ = writeln!(out, "  {ip} has multiple owners: {}.", owners.join(", "));
        }
        if allocations.contains_key(ip) {
            continue;
        }
        if outside_ipam.contains(ip) {
            assigned_elsewhere += 1;
            continue;
        }
        if pools.iter().any(|p| p.contains(ip)) {
            for owner in owners {
                let _ = writeln!(
                    out,
                    "  {ip} in use by Workload({owner}) and in active IPAM pool but has no IPAM allocation."
                );
            }
            unallocated += 1;
        } else {
            for owner in owners {
                let _ = writeln!(
                    out,
                    "  {ip} in use by Workload({owner}) is not in any active IP pool."
                );
            }
            outside += 1;
        }
    }
    problems += outside + unallocated;
    if assigned_elsewhere > 0 {
        let _ = writeln!(
            out,
            "Found {assigned_elsewhere} in-use IPs assigned outside Calico IPAM (OpenStack \
             endpoints); not problems."
        );
    }
    let _ = writeln!(
        out,
        "Found {outside} in-use IPs that are not in active IP pools."
    );
    let _ = writeln!(
        out,
        "Found {unallocated} in-use IPs that are in active IP pools but have no corresponding IPAM allocation.\n"
    );

    let _ = writeln!(out, "Scanning for IPAM handles with no matching IPs...");
    let mut empty_handles = 0;
    let mut good = 0;
    for id in handles.keys() {
        if held.contains_key(id) {
            good += 1;
        } else {
            let _ = writeln!(out, "  {id} doesn't have any active IPs.");
            empty_handles += 1;
        }
    }
    problems += empty_handles;
    let _ = writeln!(
        out,
        "Found {empty_handles} handles with no matching IPs (and {good} handles with matches)."
    );

    let _ = writeln!(out, "Scanning for IPs with missing handle...");
    let missing: BTreeSet<&String> = held.keys().filter(|h| !handles.contains_key(*h)).collect();
    for id in &missing {
        let _ = writeln!(out, "  {id} is in use in a block but doesn't exist.");
    }
    problems += missing.len();
    let _ = writeln!(
        out,
        "Found {} handles mentioned in blocks with no matching handle resource.",
        missing.len()
    );

    let _ = writeln!(
        out,
        "Scanning for handles whose counts disagree with the blocks..."
    );
    let mut miscounted = 0;
    for (id, handle) in handles {
        let in_blocks = held.get(id).cloned().unwrap_or_default();
        let cidrs: BTreeSet<&String> = handle.block.keys().chain(in_blocks.keys()).collect();
        for cidr in cidrs {
            let says = handle.block.get(cidr).copied().unwrap_or(0);
            let holds = in_blocks.get(cidr).copied().unwrap_or(0);
            if says != holds && !(says == 0 && holds == 0) {
                let _ = writeln!(
                    out,
                    "  {id} counts {says} address(es) in block {cidr}, which holds {holds} of them."
                );
                miscounted += 1;
            }
        }
    }
    problems += miscounted;
    let _ = writeln!(
        out,
        "Found {miscounted} handle counts that disagree with the blocks."
    );
    let _ = writeln!(out, "Check complete; found {problems} problems.");
    CheckReport {
        text: out,
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, addresses: &[&str], outside_ipam: bool) -> EndpointAddresses {
        EndpointAddresses {
            name: name.to_owned(),
            addresses: addresses.iter().map(|a| a.parse().expect("CIDR")).collect(),
            outside_ipam,
        }
    }

    #[test]
    fn openstack_addresses_outside_ipam_are_not_problems() {
        let pools = ["198.18.0.0/16".parse().expect("CIDR")];
        let endpoints = [
            endpoint("openstack/vm1", &["198.18.5.10/32", "203.0.113.9/32"], true),
            endpoint("default/c1", &["198.18.5.11/32"], false),
        ];
        let report = check(&[], &BTreeMap::new(), &endpoints, &pools);
        // The container's address is in a pool without an allocation: one problem. The VM's
        // addresses, in a pool or not, are Neutron's.
        assert_eq!(report.problems, 1, "{}", report.text);
        assert!(
            report
                .text
                .contains("198.18.5.11 in use by Workload(default/c1)")
        );
        assert!(
            !report.text.contains("198.18.5.10 in use"),
            "{}",
            report.text
        );
        assert!(
            report
                .text
                .contains("Found 2 in-use IPs assigned outside Calico IPAM"),
            "{}",
            report.text
        );
        let clean = check(&[], &BTreeMap::new(), &endpoints[..1], &pools);
        assert_eq!(clean.problems, 0, "{}", clean.text);
    }
}
