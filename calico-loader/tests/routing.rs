//! Integration tests: a host namespace with workload namespaces, the agent running in the host
//! namespace, and real packets (ICMP, UDP, TCP over IPv4 and IPv6) through the attached programs.
//!
//! The agent turns on forwarding on the workload interfaces (the programs' FIB lookups need it),
//! so the host namespace's kernel could forward between workloads too: its own forwarding
//! counters staying flat while the programs' counters move shows that the programs carried the
//! traffic.

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{net::IpAddr, thread, time::Duration};

    use crate::support::topology::*;

    const NODE: &str = "test-node";

    /// Waits until `dump endpoints` no longer lists `ifname`'s endpoint.
    fn wait_endpoint_gone(agent: &Agent, ifname: &str) {
        wait_for(
            &format!("the endpoint of {ifname} to go"),
            Duration::from_secs(10),
            || {
                agent
                    .dump("endpoints")
                    .as_array()
                    .is_some_and(|rows| !rows.iter().any(|r| r["interface"] == ifname))
            },
        );
    }

    fn forwarded(agent: &Agent, ifname: &str) -> u64 {
        agent.counters(ifname)["forwarded_packets"]
            .as_u64()
            .unwrap_or(0)
    }

    fn start(topology: &Topology, datastore: &Datastore, extra: &[&str]) -> Agent {
        let mut yaml = String::new();
        for w in &topology.workloads {
            yaml.push_str("---\n");
            yaml.push_str(&w.endpoint_yaml(NODE));
        }
        datastore.write("endpoints.yaml", &yaml);
        let agent = Agent::start(topology, datastore, NODE, extra);
        let ifnames: Vec<&str> = topology
            .workloads
            .iter()
            .map(|w| w.host_ifname.as_str())
            .collect();
        agent.wait_attached(&ifnames);
        agent
    }

    /// Pings, UDP and TCP between every pair, over IPv4 and IPv6, and checks that the programs'
    /// counters moved and the kernel's forwarding counters did not.
    fn assert_full_connectivity(topology: &Topology, agent: &Agent) {
        let kernel_before = topology.kernel_forwarded();
        for a in &topology.workloads {
            for b in &topology.workloads {
                if a.index == b.index {
                    continue;
                }
                let before = forwarded(agent, &a.host_ifname);
                for dst in [IpAddr::V4(b.v4), IpAddr::V6(b.v6)] {
                    assert!(
                        a.ping(dst),
                        "ping wl{} -> {dst} failed; agent log:\n{}",
                        a.index,
                        agent.log()
                    );
                    assert_eq!(
                        udp_exchange(a, b, dst, b"udp through calico-ebpf").as_deref(),
                        Some(&b"udp through calico-ebpf"[..]),
                        "UDP wl{} -> {dst}",
                        a.index
                    );
                    let echoed = tcp_echo(a, b, dst, "tcp through calico-ebpf")
                        .unwrap_or_else(|e| panic!("TCP wl{} -> {dst}: {e}", a.index));
                    assert_eq!(echoed, "tcp through calico-ebpf");
                }
                let after = forwarded(agent, &a.host_ifname);
                assert!(
                    after >= before + 10,
                    "wl{} forwarded {before} -> {after} packets in BPF",
                    a.index
                );
            }
        }
        assert_eq!(
            topology.kernel_forwarded(),
            kernel_before,
            "the kernel forwarded none of it (IPv4, IPv6)"
        );
        for w in &topology.workloads {
            let c = agent.counters(&w.host_ifname);
            assert!(
                c["to_workload_packets"].as_u64().unwrap_or(0) > 0,
                "nothing delivered to wl{}: {c}",
                w.index
            );
            assert!(
                c["neighbour_replies"].as_u64().unwrap_or(0) > 0,
                "wl{} resolved the gateway through BPF: {c}",
                w.index
            );
        }
    }

    #[test]
    fn two_workloads_talk_through_bpf() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let agent = start(&topology, &datastore, &[]);
        assert_full_connectivity(&topology, &agent);

        let routes = agent.dump("routes");
        let prefixes: Vec<&str> = routes
            .as_array()
            .expect("routes")
            .iter()
            .filter_map(|r| r["prefix"].as_str())
            .collect();
        for expected in [
            "198.18.0.11/32",
            "198.18.0.12/32",
            "2001:db8::11/128",
            "2001:db8::12/128",
        ] {
            assert!(
                prefixes.contains(&expected),
                "route {expected} missing from {prefixes:?}"
            );
        }
    }

    #[test]
    fn three_workloads_talk_through_bpf() {
        let topology = Topology::new(3);
        let datastore = Datastore::new();
        let agent = start(&topology, &datastore, &[]);
        assert_full_connectivity(&topology, &agent);
    }

    #[test]
    fn xdp_mode_forwards_too() {
        let topology = Topology::new(2);
        topology.prepare_for_xdp();
        let datastore = Datastore::new();
        let agent = start(&topology, &datastore, &["--attach-mode", "xdp"]);
        let hooks = &agent.dump("endpoints")[0]["hooks"];
        assert!(
            hooks
                .as_array()
                .is_some_and(|h| h.iter().any(|x| x == "xdp")),
            "XDP attached: {hooks}"
        );
        assert_full_connectivity(&topology, &agent);
    }

    #[test]
    fn spoofed_sources_are_dropped() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let agent = start(&topology, &datastore, &[]);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        assert!(wl1.ping(IpAddr::V4(wl2.v4)));

        // wl1 claims an address that is not in its endpoint and sends from it.
        wl1.ns
            .exec(&["ip", "addr", "add", "198.18.0.99/32", "dev", "eth0"]);
        let dst = wl2.v4.to_string();
        assert!(
            !wl1.ns
                .try_exec(&["ping", "-c", "2", "-W", "1", "-I", "198.18.0.99", &dst]),
            "a spoofed ping got through"
        );
        wl1.ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8::99/128",
            "dev",
            "eth0",
            "nodad",
        ]);
        let dst6 = wl2.v6.to_string();
        assert!(
            !wl1.ns
                .try_exec(&["ping", "-c", "2", "-W", "1", "-I", "2001:db8::99", &dst6])
        );
        let drops = agent.counters(&wl1.host_ifname)["drops"]["spoofed-source"]
            .as_u64()
            .unwrap_or(0);
        assert!(drops >= 4, "spoofed packets counted: {drops}");
        // Its real address still works.
        assert!(wl1.ping(IpAddr::V4(wl2.v4)));
    }

    #[test]
    fn removing_an_endpoint_stops_its_traffic_and_adding_it_back_restores_it() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        datastore.write("wl1.yaml", &wl1.endpoint_yaml(NODE));
        datastore.write("wl2.yaml", &wl2.endpoint_yaml(NODE));
        let agent = Agent::start(&topology, &datastore, NODE, &[]);
        agent.wait_attached(&[&wl1.host_ifname, &wl2.host_ifname]);
        assert!(wl1.ping(IpAddr::V4(wl2.v4)));

        datastore.remove("wl2.yaml");
        wait_endpoint_gone(&agent, &wl2.host_ifname);
        assert!(
            agent.counters(&wl2.host_ifname).is_null(),
            "counters of a removed endpoint are gone"
        );
        let routes = agent.dump("routes").to_string();
        assert!(
            !routes.contains("198.18.0.12/32"),
            "route of a removed endpoint is gone: {routes}"
        );
        assert!(
            !wl1.ping(IpAddr::V4(wl2.v4)),
            "traffic to a removed endpoint still flows"
        );
        assert!(
            !wl2.ping(IpAddr::V4(wl1.v4)),
            "traffic from a removed endpoint still flows"
        );

        datastore.write("wl2.yaml", &wl2.endpoint_yaml(NODE));
        agent.wait_attached(&[&wl2.host_ifname]);
        assert!(
            wl1.ping(IpAddr::V4(wl2.v4)),
            "traffic restored; log:\n{}",
            agent.log()
        );
        assert!(wl2.ping(IpAddr::V6(wl1.v6)));
    }

    /// Datagrams `from` sends to `to`'s UDP `port` (20, over about a second) that arrive.
    fn udp_arrivals(from: &Workload, to: &Workload, port: u16) -> usize {
        let receiver = to.ns.enter(move || {
            let socket = std::net::UdpSocket::bind(("0.0.0.0", port)).expect("bind");
            socket
                .set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            socket
        });
        let dst = std::net::SocketAddr::new(IpAddr::V4(to.v4), port);
        from.ns.enter(move || {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind the sender");
            for _ in 0..20 {
                let _ = socket.send_to(b"unknown?", dst);
                thread::sleep(Duration::from_millis(50));
            }
        });
        let mut buf = [0u8; 64];
        let mut arrived = 0;
        while receiver.recv_from(&mut buf).is_ok() {
            arrived += 1;
        }
        arrived
    }

    /// As Felix drops the traffic of a workload interface it has no endpoint for: an interface
    /// with the workload prefix (`cali`) whose endpoint was removed, or that has none yet,
    /// keeps (or gets) the programs, which drop everything it sends. Its routes and the
    /// forwarding the agent turned on stay, and the workload still has its gateway's MAC, so
    /// without the programs the host's kernel would forward what it sends.
    #[test]
    fn an_interface_with_the_workload_prefix_and_no_endpoint_sends_nothing() {
        let mut topology = Topology::new(2);
        let datastore = Datastore::new();
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        datastore.write("wl1.yaml", &wl1.endpoint_yaml(NODE));
        datastore.write("wl2.yaml", &wl2.endpoint_yaml(NODE));
        let agent = Agent::start(&topology, &datastore, NODE, &[]);
        agent.wait_attached(&[&wl1.host_ifname, &wl2.host_ifname]);
        // The gateway's MAC, as the workload has it cached once it has talked.
        let gateway_cached = |wl: &Workload| {
            wl.ns.exec(&[
                "ip",
                "neigh",
                "replace",
                "169.254.1.1",
                "lladdr",
                HOST_SIDE_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
        };
        gateway_cached(wl2);
        assert_eq!(udp_arrivals(wl2, wl1, 7100), 20, "wl2 reaches wl1 first");

        datastore.remove("wl2.yaml");
        wait_endpoint_gone(&agent, &wl2.host_ifname);
        assert_eq!(
            udp_arrivals(wl2, wl1, 7101),
            0,
            "a workload whose endpoint was removed still sends; log:\n{}",
            agent.log()
        );

        // An interface that appears with no endpoint at all.
        let wl3 = topology.add_workload(3);
        gateway_cached(wl3);
        let ifname = wl3.host_ifname.clone();
        wait_for(
            "the agent to take the unknown interface",
            Duration::from_secs(20),
            || agent.log().contains(&ifname) && agent.log().contains("no endpoint"),
        );
        let (wl1, wl3) = (topology.workload(1), topology.workload(3));
        assert_eq!(
            udp_arrivals(wl3, wl1, 7102),
            0,
            "an unknown interface sends"
        );

        // Its endpoint arrives: it works.
        datastore.write("wl3.yaml", &wl3.endpoint_yaml(NODE));
        agent.wait_attached(&[&ifname]);
        wait_for("wl3 to reach wl1", Duration::from_secs(10), || {
            udp_arrivals(wl3, wl1, 7103) > 0
        });
    }

    #[test]
    fn an_invalid_file_leaves_the_running_state_alone() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        datastore.write("wl1.yaml", &wl1.endpoint_yaml(NODE));
        datastore.write("wl2.yaml", &wl2.endpoint_yaml(NODE));
        let agent = Agent::start(&topology, &datastore, NODE, &[]);
        agent.wait_attached(&[&wl1.host_ifname, &wl2.host_ifname]);
        let endpoints_before = agent.dump("endpoints");

        // A broken edit of wl2's file, and a new file with an invalid CIDR.
        datastore.write(
            "wl2.yaml",
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {name: x\n",
        );
        let bad_cidr = wl1
            .endpoint_yaml(NODE)
            .replace("198.18.0.11/32", "198.18.0.300/32")
            .replace("wl1-eth0", "wl9-eth0");
        datastore.write("bad-cidr.yaml", &bad_cidr);
        wait_for("the errors to be logged", Duration::from_secs(10), || {
            let log = agent.log();
            log.contains("wl2.yaml")
                && log.contains("bad-cidr.yaml")
                && log.contains("198.18.0.300")
        });
        thread::sleep(Duration::from_millis(500));
        agent.assert_running();
        assert_eq!(
            agent.dump("endpoints"),
            endpoints_before,
            "the programmed state changed"
        );
        assert!(
            wl1.ping(IpAddr::V4(wl2.v4)),
            "traffic stopped after an invalid file"
        );
        assert!(wl2.ping(IpAddr::V6(wl1.v6)));

        // Fixing the file is picked up.
        datastore.remove("bad-cidr.yaml");
        datastore.write("wl2.yaml", &wl2.endpoint_yaml(NODE));
        thread::sleep(Duration::from_millis(500));
        assert!(wl1.ping(IpAddr::V4(wl2.v4)));
    }

    #[test]
    fn an_interface_that_appears_later_is_attached() {
        let mut topology = Topology::new(1);
        let datastore = Datastore::new();
        let wl1 = topology.workload(1);
        datastore.write("wl1.yaml", &wl1.endpoint_yaml(NODE));
        let agent = Agent::start(&topology, &datastore, NODE, &[]);
        agent.wait_attached(&[&wl1.host_ifname.clone()]);

        // The endpoint of wl2 is known before its interface exists.
        let ifname = {
            let wl2 = topology.add_workload(2);
            wl2.host_ifname.clone()
        };
        topology.host.exec(&["ip", "link", "del", &ifname]);
        let wl2 = topology.workload(2);
        datastore.write("wl2.yaml", &wl2.endpoint_yaml(NODE));
        wait_for(
            "the agent to wait for the interface",
            Duration::from_secs(10),
            || agent.log().contains("waiting for the interface"),
        );
        assert!(!agent.attached(&ifname));

        // Now the CNI plugin creates it.
        topology
            .host
            .add_veth(&ifname, HOST_SIDE_MAC, &wl2.ns, "eth0", &wl2.mac_string())
            .expect("create the veth pair");
        wl2.configure_eth0();
        agent.wait_attached(&[&ifname]);
        let wl1 = topology.workload(1);
        assert!(wl1.ping(IpAddr::V4(wl2.v4)), "log:\n{}", agent.log());
        assert!(wl2.ping(IpAddr::V6(wl1.v6)));
    }

    #[test]
    fn traffic_survives_an_agent_restart() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let mut agent = start(&topology, &datastore, &[]);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        assert!(wl1.ping(IpAddr::V4(wl2.v4)));

        // Without --detach-on-exit the programs stay attached and keep forwarding.
        agent.stop();
        let before = forwarded(&agent, &wl1.host_ifname);
        assert!(
            wl1.ping(IpAddr::V4(wl2.v4)),
            "traffic stopped while the agent was down"
        );
        assert!(
            forwarded(&agent, &wl1.host_ifname) > before,
            "the BPF path carried it"
        );

        // A new agent adopts the pinned state.
        let pin_path = agent.pin_path.clone();
        let restarted = Agent::start_with_pins(&topology, &datastore, NODE, pin_path, &[]);
        restarted.wait_attached(&[&wl1.host_ifname, &wl2.host_ifname]);
        assert!(wl2.ping(IpAddr::V6(wl1.v6)));
        assert!(
            forwarded(&restarted, &wl1.host_ifname) > before,
            "counters survived the restart"
        );
        drop(restarted);
        // The first guard's cleanup is now a no-op.
        drop(agent);
    }

    #[test]
    fn routes_the_host_already_had_are_left_alone() {
        let topology = Topology::new(2);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        // The CNI plugin made wl1's route before the agent started.
        topology.host.exec(&[
            "ip",
            "route",
            "add",
            &format!("{}/32", wl1.v4),
            "dev",
            &wl1.host_ifname,
            "scope",
            "link",
        ]);
        let datastore = Datastore::new();
        let mut agent = start(&topology, &datastore, &["--detach-on-exit"]);
        assert!(wl1.ping(IpAddr::V4(wl2.v4)));
        let ours = String::from_utf8_lossy(
            &topology
                .host
                .exec(&["ip", "route", "show", "proto", "81"])
                .stdout,
        )
        .into_owned();
        assert!(
            ours.contains(&wl2.v4.to_string()),
            "the agent made wl2's route: {ours}"
        );
        assert!(
            !ours.contains(&wl1.v4.to_string()),
            "the agent did not take over wl1's route: {ours}"
        );

        agent.stop();
        let routes = String::from_utf8_lossy(&topology.host.exec(&["ip", "route", "show"]).stdout)
            .into_owned();
        assert!(
            routes.contains(&wl1.v4.to_string()),
            "the CNI plugin's route survived the agent: {routes}"
        );
        assert!(
            !routes.contains(&wl2.v4.to_string()),
            "the agent removed its own route on exit: {routes}"
        );
    }

    /// What the agent programmed and someone else then changed (a kernel route deleted, a route
    /// map entry removed, neither of which sends the agent an event) is put back by the full
    /// verification that every few resyncs run; the resyncs in between trust what the agent
    /// wrote.
    #[test]
    fn state_changed_behind_the_agents_back_is_put_back_by_a_full_resync() {
        use aya::maps::lpm_trie::Key;
        use calico_loader::dataplane::{FULL_VERIFICATION_EVERY, bpffs::PinLayout, maps::Maps};

        let topology = Topology::new(2);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        let datastore = Datastore::new();
        let agent = start(&topology, &datastore, &[]);
        assert!(wl1.ping(IpAddr::V4(wl2.v4)), "log:\n{}", agent.log());
        let prefix = format!("{}/32", wl2.v4);
        let kernel_route = || {
            String::from_utf8_lossy(
                &topology
                    .host
                    .exec(&["ip", "route", "show", "proto", "81"])
                    .stdout,
            )
            .contains(&wl2.v4.to_string())
        };
        let map_route = || {
            agent
                .dump("routes")
                .as_array()
                .expect("routes")
                .iter()
                .any(|r| r["prefix"].as_str() == Some(prefix.as_str()))
        };
        assert!(kernel_route() && map_route(), "wl2 is routed to start with");

        topology
            .host
            .exec(&["ip", "route", "del", &prefix, "dev", &wl2.host_ifname]);
        let mut maps =
            Maps::from_pins(&PinLayout::new(&agent.pin_path)).expect("the agent's pinned maps");
        maps.routes_v4
            .remove(&Key::new(32, wl2.v4.octets()))
            .expect("removing wl2's route map entry");
        assert!(
            !kernel_route() && !map_route(),
            "wl2's kernel route and route map entry are gone"
        );

        // The tests' agents resync every 2 s: a full verification comes within that many
        // intervals, and a little more for the apply itself.
        let within = Duration::from_secs(2 * u64::from(FULL_VERIFICATION_EVERY) + 10);
        wait_for(
            "wl2's kernel route and route map entry back",
            within,
            || kernel_route() && map_route(),
        );
        assert!(wl1.ping(IpAddr::V4(wl2.v4)), "log:\n{}", agent.log());
    }
}
