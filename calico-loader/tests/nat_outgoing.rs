//! Outgoing NAT (`IPPool.spec.natOutgoing`), with real traffic: a workload in a natOutgoing
//! pool reaches an "external" namespace that has no route back to the pool, and that namespace
//! sees the node's address. The host is a namespace with its own agent; the external namespace
//! hangs off the host's `eth0` (198.19.0.0/24, 2001:db8:ff::/64), where the host's address is
//! the node's address.
//!
//! Everything happens inside namespaces the test creates.

mod support;

/// Every test here needs root (BPF, network namespaces, nftables): `cargo test -- privileged::`
/// selects them, and they fail without root.
mod privileged {
    use std::{
        net::{IpAddr, SocketAddr, TcpListener, TcpStream},
        thread,
        time::{Duration, Instant},
    };

    use crate::support::topology::*;

    const NODE: &str = "host-a";
    /// The host's addresses on the external link: the node's addresses.
    const NODE_V4: &str = "198.19.0.1";
    const NODE_V6: &str = "2001:db8:ff::1";
    const EXTERNAL_V4: &str = "198.19.0.2";
    const EXTERNAL_V6: &str = "2001:db8:ff::2";
    /// The port the external namespace listens on.
    const PORT: u16 = 5500;

    /// The pools, both natOutgoing or neither.
    fn pools_yaml(nat_outgoing: bool) -> String {
        let mut yaml = String::new();
        for (name, cidr, block) in [
            ("pool-v4", "198.18.0.0/16", 26),
            ("pool-v6", "2001:db8::/48", 122),
        ] {
            yaml.push_str(&format!(
                "---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: {name}}}\n\
                 spec: {{cidr: \"{cidr}\", blockSize: {block}, natOutgoing: {nat_outgoing}}}\n"
            ));
        }
        yaml
    }

    /// Connects from the workload to the external namespace over TCP; the address the
    /// external side saw the connection come from, or None if it never arrived.
    fn tcp_peer_seen_outside(
        workload: &Workload,
        external: &Netns,
        dst: &'static str,
    ) -> Option<IpAddr> {
        let dst: IpAddr = dst.parse().expect("address");
        let listen = SocketAddr::new(dst, PORT);
        let listener = external.enter(move || TcpListener::bind(listen).expect("bind listener"));
        listener.set_nonblocking(true).expect("non-blocking");
        let server = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok((_, peer)) = listener.accept() {
                    return Some(peer.ip());
                }
                thread::sleep(Duration::from_millis(20));
            }
            None
        });
        let connected = workload.ns.enter(move || {
            TcpStream::connect_timeout(&SocketAddr::new(dst, PORT), Duration::from_secs(4)).is_ok()
        });
        let peer = server.join().expect("listener thread");
        if connected { peer } else { None }
    }

    /// The agent's NAT table of `family` in the host namespace, as `nft` lists it, if any.
    fn nat_table(host: &Netns, family: &str) -> Option<String> {
        let output = host
            .command("nft")
            .args(["list", "table", family, "calico-ebpf-nat"])
            .capture()
            .expect("run nft (nftables must be installed)");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    #[test]
    fn workloads_in_nat_outgoing_pools_reach_outside_with_the_nodes_address() {
        let topology = Topology::new(1);
        let host = &topology.host;
        let workload = topology.workload(1);
        let external = netns("cex");
        host.add_veth(
            "eth0",
            "02:00:00:00:00:0a",
            &external,
            "eth0",
            "02:00:00:00:00:0e",
        )
        .expect("the veth pair between the host and the external namespace");
        for (ns, v4, v6) in [
            (host, NODE_V4, NODE_V6),
            (&external, EXTERNAL_V4, EXTERNAL_V6),
        ] {
            ns.exec(&["ip", "link", "set", "eth0", "up"]);
            ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
            let v6 = format!("{v6}/64");
            ns.exec(&["ip", "-6", "addr", "add", &v6, "dev", "eth0", "nodad"]);
        }
        // The external namespace has only its link's routes: none back to the pools.
        // The kernel forwards what the programs leave to it (inside the host namespace only).
        host.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        host.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);

        let datastore = Datastore::new();
        datastore.write("endpoints.yaml", &workload.endpoint_yaml(NODE));
        datastore.write("pools.yaml", &pools_yaml(true));
        let mut agent = Agent::start(
            &topology,
            &datastore,
            NODE,
            &["--networking-backend", "none", "--detach-on-exit"],
        );
        agent.wait_attached(&[&workload.host_ifname]);
        wait_for("the IPv4 NAT table", Duration::from_secs(10), || {
            nat_table(host, "ip").is_some_and(|t| t.contains("198.18.0.0/16"))
        });
        let table = nat_table(host, "ip6").expect("the IPv6 NAT table");
        assert!(
            table.contains("2001:db8::/48") && table.contains("masquerade"),
            "{table}"
        );

        // natOutgoing: the external side answers the node's address, which the host un-NATs.
        for (dst, node) in [(EXTERNAL_V4, NODE_V4), (EXTERNAL_V6, NODE_V6)] {
            let dst_ip: IpAddr = dst.parse().expect("address");
            assert!(
                workload.ping(dst_ip),
                "ping {dst} from the workload failed; agent log:\n{}",
                agent.log()
            );
            let peer = tcp_peer_seen_outside(workload, &external, dst);
            assert_eq!(
                peer,
                Some(node.parse().expect("address")),
                "the external namespace must see the node's address"
            );
        }

        // Without natOutgoing the workload's own address goes out, and nothing comes back.
        datastore.write("pools.yaml", &pools_yaml(false));
        wait_for("the NAT tables to go", Duration::from_secs(10), || {
            nat_table(host, "ip").is_none() && nat_table(host, "ip6").is_none()
        });
        for dst in [EXTERNAL_V4, EXTERNAL_V6] {
            let dst_ip: IpAddr = dst.parse().expect("address");
            assert!(
                !workload.ping(dst_ip),
                "ping {dst} worked without natOutgoing: the external namespace must have no \
                 route back"
            );
        }

        // natOutgoing again, then the agent exits with --detach-on-exit: its tables go with it.
        datastore.write("pools.yaml", &pools_yaml(true));
        wait_for("the NAT table again", Duration::from_secs(10), || {
            nat_table(host, "ip").is_some()
        });
        assert!(workload.ping(EXTERNAL_V4.parse().expect("address")));
        agent.stop();
        assert!(
            nat_table(host, "ip").is_none() && nat_table(host, "ip6").is_none(),
            "the agent left its NAT tables; log:\n{}",
            agent.log()
        );
    }
}
