//! Floating IPs (a WorkloadEndpoint's `ipNATs`), with real traffic: an "outside" namespace
//! hangs off the host's `eth0` (a data interface, 198.19.0.0/24) with a route to the floating
//! IP through the host and none to the pool. It reaches the workload at the floating IP and the
//! workload sees the outside's own address; the workload's traffic to the outside arrives from
//! the floating IP; policy on the internal address applies; without the `ipNATs` nothing
//! reaches the workload at the floating IP any more.
//!
//! Everything happens inside namespaces the test creates.

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{
        io::{Read as _, Write as _},
        net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
        thread,
        time::{Duration, Instant},
    };

    use crate::support::topology::*;

    const NODE: &str = "host-a";
    const HOST_V4: &str = "198.19.0.1";
    const OUTSIDE_V4: &str = "198.19.0.2";
    /// The floating IP: outside the pool, on no link.
    const FLOATING_V4: &str = "198.19.255.9";
    const PORT: u16 = 5600;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    /// The pool (not natOutgoing).
    const POOL: &str = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool-v4}\n\
                        spec: {cidr: \"198.18.0.0/16\", blockSize: 26}\n";

    /// The workload's endpoint, with or without its floating IP.
    fn endpoint_yaml(workload: &Workload, floating: bool) -> String {
        let mut yaml = workload.endpoint_yaml(NODE);
        if floating {
            yaml.push_str(&format!(
                "  ipNATs: [{{internalIP: \"{}\", externalIP: \"{FLOATING_V4}\"}}]\n",
                workload.v4
            ));
        }
        yaml
    }

    /// Accepts one TCP connection in `listener_ns` on `listen`, echoes one line back and
    /// returns the peer's address; meanwhile `connect` runs in `client_ns` against `dst`. The
    /// peer's address as the listener saw it, when the echo came back whole.
    fn tcp_peer(
        listener_ns: &Netns,
        listen: IpAddr,
        client_ns: &Netns,
        dst: IpAddr,
    ) -> Option<IpAddr> {
        let bind = SocketAddr::new(listen, PORT);
        let listener = listener_ns.enter(move || TcpListener::bind(bind).expect("bind listener"));
        listener.set_nonblocking(true).expect("non-blocking");
        let server = thread::spawn(move || -> Option<IpAddr> {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok((mut stream, peer)) = listener.accept() {
                    stream.set_nonblocking(false).ok()?;
                    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
                    let mut buf = [0u8; 64];
                    let n = stream.read(&mut buf).ok()?;
                    stream.write_all(&buf[..n]).ok()?;
                    return Some(peer.ip());
                }
                thread::sleep(Duration::from_millis(20));
            }
            None
        });
        let echoed = client_ns.enter(move || -> bool {
            let Ok(mut stream) =
                TcpStream::connect_timeout(&SocketAddr::new(dst, PORT), Duration::from_secs(4))
            else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
            if stream.write_all(b"floating\n").is_err() {
                return false;
            }
            let mut buf = [0u8; 64];
            matches!(stream.read(&mut buf), Ok(n) if &buf[..n] == b"floating\n")
        });
        let peer = server.join().expect("server thread");
        if echoed { peer } else { None }
    }

    /// Sends UDP datagrams from `from_ns` to `dst` and returns the source address the receiver
    /// in `to_ns` saw, if one arrived.
    fn udp_source(from_ns: &Netns, to_ns: &Netns, dst: IpAddr) -> Option<IpAddr> {
        let receiver = to_ns.enter(move || {
            let socket = UdpSocket::bind(("0.0.0.0", PORT + 1)).expect("bind UDP receiver");
            socket
                .set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            socket
        });
        let sender = from_ns.enter(|| UdpSocket::bind("0.0.0.0:0").expect("bind UDP sender"));
        for _ in 0..3 {
            sender
                .send_to(b"floating", SocketAddr::new(dst, PORT + 1))
                .expect("send UDP");
        }
        let mut buf = [0u8; 64];
        receiver
            .recv_from(&mut buf)
            .ok()
            .filter(|(n, _)| &buf[..*n] == b"floating")
            .map(|(_, peer)| peer.ip())
    }

    fn ping(ns: &Netns, dst: &str) -> bool {
        ns.try_exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", dst])
    }

    /// How the packets from outside reach the workload.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Path {
        /// TC programs; the data interface's program delivers into the workload.
        Tc,
        /// TC programs, no data interface program: the kernel forwards to the floating IP
        /// through its route, and the workload's TC egress translates.
        Kernel,
        /// XDP programs (the data interface's delivers).
        Xdp,
    }

    #[test]
    fn tc_a_floating_ip_reaches_the_workload_from_outside_and_its_traffic_leaves_from_it() {
        floating_ip(Path::Tc);
    }

    #[test]
    fn kernel_path_a_floating_ip_reaches_the_workload_through_its_tc_egress() {
        floating_ip(Path::Kernel);
    }

    #[test]
    fn xdp_a_floating_ip_reaches_the_workload_from_outside_and_its_traffic_leaves_from_it() {
        floating_ip(Path::Xdp);
    }

    fn floating_ip(path: Path) {
        let topology = Topology::new(1);
        let host = &topology.host;
        let workload = topology.workload(1);
        let outside = netns("cfo");
        host.add_veth(
            "eth0",
            "02:00:00:00:00:0a",
            &outside,
            "eth0",
            "02:00:00:00:00:0e",
        )
        .expect("the veth pair between the host and the outside");
        for (ns, v4) in [(host, HOST_V4), (&outside, OUTSIDE_V4)] {
            ns.exec(&["ip", "link", "set", "eth0", "up"]);
            ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        }
        // The outside reaches the floating IP through the host, and has no route to the pool.
        outside.exec(&[
            "ip",
            "route",
            "add",
            &format!("{FLOATING_V4}/32"),
            "via",
            HOST_V4,
        ]);
        host.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);

        let datastore = Datastore::new();
        datastore.write("pools.yaml", POOL);
        datastore.write("endpoints.yaml", &endpoint_yaml(workload, true));
        let mut args = vec!["--networking-backend", "none"];
        match path {
            Path::Tc => {}
            Path::Kernel => args.extend(["--data-interfaces", "^none$"]),
            Path::Xdp => {
                args.extend(["--attach-mode", "xdp"]);
                topology.prepare_for_xdp();
                outside.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
            }
        }
        let mut agent = Agent::start(&topology, &datastore, NODE, &args);
        agent.wait_attached(&[&workload.host_ifname]);
        if path != Path::Kernel {
            wait_for(
                "the data interface's program",
                Duration::from_secs(10),
                || agent.data_interface_attached("eth0"),
            );
        }
        wait_for(
            "the floating IP in the maps",
            Duration::from_secs(10),
            || {
                agent.dump("floating-ips")["mappings"]
                    .as_array()
                    .is_some_and(|rows| {
                        rows.iter().any(|r| {
                            r["external"] == FLOATING_V4
                                && r["internal"] == workload.v4.to_string()
                                && r["interface"] == workload.host_ifname.as_str()
                        })
                    })
            },
        );
        let routes = agent.dump("routes");
        assert!(
            routes.as_array().is_some_and(|rows| rows.iter().any(|r| {
                r["prefix"] == format!("{FLOATING_V4}/32")
                    && r["kind"] == "floating-ip"
                    && r["next_hop"] == workload.v4.to_string()
            })),
            "dump routes must show the floating IP: {routes}"
        );
        // The agent writes the maps first, then the kernel's routes.
        wait_for(
            "the kernel route to the floating IP",
            Duration::from_secs(10),
            || {
                String::from_utf8_lossy(&host.exec(&["ip", "route", "show", "proto", "81"]).stdout)
                    .contains(&format!("{FLOATING_V4} dev {}", workload.host_ifname))
            },
        );

        // From the outside to the floating IP: ping, TCP and UDP; the workload sees the
        // outside's own address.
        assert!(
            ping(&outside, FLOATING_V4),
            "ping the floating IP from outside; agent log:\n{}",
            agent.log()
        );
        assert_eq!(
            tcp_peer(&workload.ns, ip("0.0.0.0"), &outside, ip(FLOATING_V4)),
            Some(ip(OUTSIDE_V4)),
            "TCP from outside to the floating IP, seen by the workload"
        );
        assert_eq!(
            udp_source(&outside, &workload.ns, ip(FLOATING_V4)),
            Some(ip(OUTSIDE_V4)),
            "UDP from outside to the floating IP, seen by the workload"
        );

        // From the workload to the outside: it arrives from the floating IP, and the replies
        // find their way back.
        assert!(
            ping(&workload.ns, OUTSIDE_V4),
            "ping outside from the workload"
        );
        assert_eq!(
            tcp_peer(&outside, ip("0.0.0.0"), &workload.ns, ip(OUTSIDE_V4)),
            Some(ip(FLOATING_V4)),
            "TCP from the workload to outside, seen by the outside"
        );
        assert_eq!(
            udp_source(&workload.ns, &outside, ip(OUTSIDE_V4)),
            Some(ip(FLOATING_V4)),
            "UDP from the workload to outside, seen by the outside"
        );
        // The hairpin: the workload reaches its own floating IP, and sees it as the source.
        assert!(
            ping(&workload.ns, FLOATING_V4),
            "ping its own floating IP from the workload"
        );
        assert_eq!(
            udp_source(&workload.ns, &workload.ns, ip(FLOATING_V4)),
            Some(ip(FLOATING_V4)),
            "UDP from the workload to its own floating IP comes from the floating IP"
        );
        let counts = agent.dump("floating-ips");
        assert!(
            counts["dnat_packets"].as_u64().unwrap_or(0) > 0
                && counts["snat_packets"].as_u64().unwrap_or(0) > 0,
            "translated packets are counted: {counts}"
        );

        // Policy applies to the internal address: denying the outside towards it blocks the
        // floating IP.
        datastore.write(
            "deny.yaml",
            &format!(
                "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
                 metadata: {{name: deny-outside}}\n\
                 spec:\n  order: 1\n  selector: app == 'wl1'\n  types: [Ingress]\n  ingress:\n  \
                 - action: Deny\n    source: {{nets: [\"{OUTSIDE_V4}/32\"]}}\n    \
                 destination: {{nets: [\"{}/32\"]}}\n  - action: Pass\n",
                workload.v4
            ),
        );
        wait_for("the deny policy to apply", Duration::from_secs(10), || {
            !ping(&outside, FLOATING_V4)
        });
        assert_eq!(
            tcp_peer(&workload.ns, ip("0.0.0.0"), &outside, ip(FLOATING_V4)),
            None,
            "TCP to the floating IP passed a policy denying the outside on the internal address"
        );
        datastore.remove("deny.yaml");
        wait_for(
            "the floating IP to work again",
            Duration::from_secs(10),
            || ping(&outside, FLOATING_V4),
        );

        if path == Path::Kernel {
            // Taking the workload's interface down flushes its routes and neighbour entries,
            // the floating IP's permanent one included (the workload never answers ARP for
            // it): once the interface is up, the agent writes both again.
            let ifname = workload.host_ifname.as_str();
            let permanent_entry = || {
                String::from_utf8_lossy(
                    &host
                        .exec(&["ip", "neigh", "show", "dev", ifname, "nud", "permanent"])
                        .stdout,
                )
                .contains(FLOATING_V4)
            };
            assert!(permanent_entry(), "the floating IP's neighbour entry");
            host.exec(&["ip", "link", "set", ifname, "down"]);
            assert!(
                !permanent_entry(),
                "taking the interface down flushed the entry"
            );
            host.exec(&["ip", "link", "set", ifname, "up"]);
            wait_for(
                "the floating IP's neighbour entry written again",
                Duration::from_secs(30),
                permanent_entry,
            );
            wait_for(
                "the floating IP to answer after the interface came back",
                Duration::from_secs(20),
                || ping(&outside, FLOATING_V4),
            );
        }

        // Without the ipNATs the floating IP leads nowhere, and the workload's traffic leaves
        // with its own address (which the outside cannot answer).
        datastore.write("endpoints.yaml", &endpoint_yaml(workload, false));
        wait_for("the floating IP to go", Duration::from_secs(10), || {
            agent.dump("floating-ips")["mappings"]
                .as_array()
                .is_some_and(Vec::is_empty)
        });
        assert!(
            !ping(&outside, FLOATING_V4),
            "the floating IP still answers without its ipNATs"
        );
        assert_eq!(
            udp_source(&workload.ns, &outside, ip(OUTSIDE_V4)),
            Some(workload.v4.into()),
            "without its floating IP the workload's traffic leaves with its own address"
        );
        let kernel =
            String::from_utf8_lossy(&host.exec(&["ip", "route", "show", "proto", "81"]).stdout)
                .into_owned();
        assert!(
            !kernel.contains(FLOATING_V4),
            "the kernel route to the floating IP stays: {kernel}"
        );
        agent.stop();
    }
}
