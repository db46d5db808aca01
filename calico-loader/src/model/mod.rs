//! Calculation: from the datastore's resources to what this host's dataplane must serve.

pub mod compile;
pub mod policy;
pub mod rules;

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::datastore::Snapshot;

/// A workload endpoint of this node, as the dataplane needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// `namespace/name` of the WorkloadEndpoint.
    pub key: String,
    /// Host side of its interface.
    pub interface: String,
    /// The workload's MAC, if the endpoint gives one.
    pub mac: Option<[u8; 6]>,
    /// Its addresses (`ipNetworks`).
    pub networks: Vec<IpNet>,
    /// Source prefixes it may send from besides its own (`allowSpoofedSourcePrefixes`).
    pub allowed_spoof: Vec<IpNet>,
}

/// An endpoint the model had to leave out, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub endpoint: String,
    pub reason: String,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkloadEndpoint {}: {}", self.endpoint, self.reason)
    }
}

/// The endpoints of `node`, keyed by interface name. Endpoints are taken in key order; one that
/// claims an interface or an address an earlier one already has is left out and reported.
pub fn local_endpoints(
    snapshot: &Snapshot,
    node: &str,
) -> (BTreeMap<String, LocalEndpoint>, Vec<Conflict>) {
    let mut endpoints: BTreeMap<String, LocalEndpoint> = BTreeMap::new();
    let mut owners: BTreeMap<IpNet, String> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for wep in snapshot.workload_endpoints() {
        if wep.spec.node != node {
            continue;
        }
        let endpoint = LocalEndpoint {
            key: format!("{}/{}", wep.namespace(), wep.name()),
            interface: wep.spec.interface_name.clone(),
            mac: wep.spec.mac.map(|mac| mac.octets()),
            networks: wep.spec.ip_networks.clone(),
            allowed_spoof: wep.spec.allow_spoofed_source_prefixes.clone(),
        };
        if let Some(other) = endpoints.get(&endpoint.interface) {
            conflicts.push(Conflict {
                endpoint: endpoint.key,
                reason: format!(
                    "interface {} already belongs to {}",
                    other.interface, other.key
                ),
            });
            continue;
        }
        if let Some((net, owner)) = endpoint
            .networks
            .iter()
            .find_map(|net| owners.get(net).map(|owner| (net, owner)))
        {
            conflicts.push(Conflict {
                endpoint: endpoint.key.clone(),
                reason: format!("address {net} already belongs to {owner}"),
            });
            continue;
        }
        for net in &endpoint.networks {
            owners.insert(*net, endpoint.key.clone());
        }
        endpoints.insert(endpoint.interface.clone(), endpoint);
    }
    (endpoints, conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{LocalDatastore, parse_file};

    fn snapshot(yaml: &str) -> Snapshot {
        parse_file("test.yaml", yaml).expect("valid test resources");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("test.yaml"), yaml).expect("write");
        LocalDatastore::new(dir.path()).sync().snapshot
    }

    fn wep(name: &str, node: &str, ifname: &str, ip: &str) -> String {
        format!(
            "---\napiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {{name: {name}, namespace: ns}}\n\
             spec: {{node: {node}, interfaceName: {ifname}, ipNetworks: [\"{ip}\"]}}\n"
        )
    }

    #[test]
    fn only_this_nodes_endpoints_are_local() {
        let yaml = wep("a", "node1", "calia", "198.18.0.1/32")
            + &wep("b", "node2", "calib", "198.18.0.2/32");
        let (endpoints, conflicts) = local_endpoints(&snapshot(&yaml), "node1");
        assert!(conflicts.is_empty());
        assert_eq!(endpoints.keys().collect::<Vec<_>>(), ["calia"]);
        assert_eq!(endpoints["calia"].key, "ns/a");
        assert_eq!(endpoints["calia"].mac, None);
    }

    #[test]
    fn conflicting_endpoints_are_left_out_and_reported() {
        let yaml = wep("a", "n", "calia", "198.18.0.1/32")
            + &wep("b", "n", "calia", "198.18.0.2/32")
            + &wep("c", "n", "calic", "198.18.0.1/32");
        let (endpoints, conflicts) = local_endpoints(&snapshot(&yaml), "n");
        assert_eq!(endpoints.len(), 1);
        assert_eq!(conflicts.len(), 2);
        assert!(
            conflicts[0]
                .to_string()
                .contains("interface calia already belongs to ns/a"),
            "{}",
            conflicts[0]
        );
        assert!(
            conflicts[1]
                .to_string()
                .contains("address 198.18.0.1/32 already belongs to ns/a"),
            "{}",
            conflicts[1]
        );
    }
}
