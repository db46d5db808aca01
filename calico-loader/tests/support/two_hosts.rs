//! Two hosts routing to each other's workloads: each host is a network namespace with its own
//! agent (its own pins and node name) following one shared datastore directory. The hosts are
//! joined by a veth pair, their data interfaces (`eth0` on both, matched by the default
//! `--data-interfaces` pattern), on 198.19.0.0/24 and 2001:db8:ff::/64. Static routes to each
//! other's workload blocks stand in for BIRD.

use std::time::Duration;

use super::topology::{Agent, Datastore, Topology, Workload, wait_for};

pub const HOST_A: &str = "host-a";
pub const HOST_B: &str = "host-b";
/// The data interfaces' addresses.
pub const A_V4: &str = "198.19.0.1";
pub const B_V4: &str = "198.19.0.2";
pub const A_V6: &str = "2001:db8:ff::1";
pub const B_V6: &str = "2001:db8:ff::2";

/// Host A with workloads in 198.18.0.0/26 and 2001:db8::/122, host B with workloads in
/// 198.18.1.0/26 and 2001:db8:0:1::/122, and the datastore that describes them.
pub struct Hosts {
    pub a: Topology,
    pub b: Topology,
    pub datastore: Datastore,
}

impl Hosts {
    /// Host A with `a_workloads` workloads, host B with `b_workloads`.
    pub fn new(a_workloads: u8, b_workloads: u8) -> Self {
        let a = Topology::with_subnet(0, a_workloads);
        let b = Topology::with_subnet(1, b_workloads);
        a.host
            .add_veth(
                "eth0",
                "02:00:00:00:00:0a",
                &b.host,
                "eth0",
                "02:00:00:00:00:0b",
            )
            .expect("the veth pair between the hosts");
        b.host.exec(&["ip", "link", "set", "eth0", "up"]);
        for (host, v4, v6, peer_v4, peer_v6, peer_block_v4, peer_block_v6) in [
            (
                &a,
                A_V4,
                A_V6,
                B_V4,
                B_V6,
                "198.18.1.0/26",
                "2001:db8:0:1::/122",
            ),
            (
                &b,
                B_V4,
                B_V6,
                A_V4,
                A_V6,
                "198.18.0.0/26",
                "2001:db8::/122",
            ),
        ] {
            let ns = &host.host;
            ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            ns.exec(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            ns.exec(&["ip", "route", "add", peer_block_v4, "via", peer_v4]);
            ns.exec(&["ip", "-6", "route", "add", peer_block_v6, "via", peer_v6]);
        }
        let datastore = Datastore::new();
        let mut yaml = String::new();
        for (host, node, label) in [(&a, HOST_A, "a"), (&b, HOST_B, "b")] {
            for w in &host.workloads {
                yaml.push_str("---\n");
                yaml.push_str(
                    &w.endpoint_yaml_labelled(node, &format!("app: wl{}, host: {label}", w.index)),
                );
            }
        }
        datastore.write("endpoints.yaml", &yaml);
        Self { a, b, datastore }
    }

    /// Starts both agents with `extra` arguments and waits until every workload interface
    /// and both data interfaces have their programs.
    pub fn start(&self, extra: &[&str]) -> (Agent, Agent) {
        let agents = (
            Agent::start(&self.a, &self.datastore, HOST_A, extra),
            Agent::start(&self.b, &self.datastore, HOST_B, extra),
        );
        for (host, agent) in [(&self.a, &agents.0), (&self.b, &agents.1)] {
            let ifnames: Vec<&str> = host
                .workloads
                .iter()
                .map(|w| w.host_ifname.as_str())
                .collect();
            agent.wait_attached(&ifnames);
            wait_for(
                "the data interface's program",
                Duration::from_secs(20),
                || agent.data_interface_attached("eth0"),
            );
        }
        agents
    }

    /// Every (workload of A, workload of B) pair.
    pub fn pairs(&self) -> Vec<(&Workload, &Workload)> {
        let mut pairs = Vec::new();
        for x in &self.a.workloads {
            for y in &self.b.workloads {
                pairs.push((x, y));
            }
        }
        pairs
    }
}
