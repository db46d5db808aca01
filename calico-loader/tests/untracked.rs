//! Untracked (`doNotTrack`) host endpoint policy with real traffic: a host namespace whose data
//! interface `eth0` a HostEndpoint covers, an "outside" namespace beyond it holding an allowed
//! address (198.18.9.2) and one in a denied net (198.19.7.2), and the agent, in TC and in XDP
//! attach mode (the host endpoint's XDP program is attached in both).
//!
//! A flood from the denied net is dropped in XDP (counted as `untracked-denied`, never seen by
//! the TC program nor the host's socket) while the allowed address still gets through and the
//! failsafe SSH port still opens from the denied net; an untracked Allow lets a flow through
//! both ways without a conntrack entry.
//!
//! These need root (CAP_BPF, CAP_NET_ADMIN, namespaces); without it they fail, never skip.

mod support;

mod privileged {
    use std::{
        collections::BTreeMap,
        net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
        thread,
        time::{Duration, Instant},
    };

    use crate::support::topology::{Agent, Datastore, Netns, Topology, netns, unique, wait_for};

    const NODE: &str = "untracked-node";
    const HOST_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
    const ALLOWED_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 2);
    const DENIED_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 7, 2);
    /// The host's UDP port that normal (tracked) policy opens.
    const TRACKED_PORT: u16 = 9999;
    /// The host's UDP port that untracked policy opens to the allowed address.
    const UNTRACKED_PORT: u16 = 9998;
    /// Datagrams in the flood.
    const FLOOD: u32 = 20_000;

    struct Setup {
        topology: Topology,
        outside: Netns,
        datastore: Datastore,
        tracked: UdpSocket,
        untracked: UdpSocket,
        _ssh: TcpListener,
    }

    fn gnp(name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
             metadata: {{name: {name}}}\nspec: {spec}\n"
        )
    }

    /// The host endpoint on eth0, with a normal policy that opens the host both ways.
    fn host_endpoint_yaml() -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\n\
             metadata: {{name: {NODE}-eth0, labels: {{role: edge}}}}\n\
             spec: {{node: {NODE}, interfaceName: eth0, expectedIPs: [{HOST_V4}]}}\n{}",
            gnp(
                "open-host",
                "{order: 10, selector: role == 'edge', types: [Ingress, Egress], \
                 ingress: [{action: Allow}], egress: [{action: Allow}]}",
            )
        )
    }

    /// The untracked policy: the denied net is dropped whatever it sends; the allowed address
    /// reaches UDP 9998 untracked, and the host's replies from 9998 leave untracked.
    fn untracked_yaml() -> String {
        gnp(
            "edge-untracked",
            &format!(
                "{{order: 1, selector: role == 'edge', doNotTrack: true, applyOnForward: true, \
                 types: [Ingress, Egress], \
                 ingress: [{{action: Deny, source: {{nets: [198.19.7.0/24]}}}}, \
                 {{action: Allow, protocol: UDP, source: {{nets: [{ALLOWED_V4}/32]}}, \
                 destination: {{ports: [{UNTRACKED_PORT}]}}}}], \
                 egress: [{{action: Allow, protocol: UDP, source: {{ports: [{UNTRACKED_PORT}]}}, \
                 destination: {{nets: [{ALLOWED_V4}/32]}}}}]}}"
            ),
        )
    }

    fn udp_socket(ns: &Netns, addr: SocketAddr) -> UdpSocket {
        let socket = ns.enter(move || UdpSocket::bind(addr).expect("bind a UDP socket"));
        socket.set_nonblocking(true).expect("non-blocking");
        socket
    }

    fn setup() -> Setup {
        let topology = Topology::new(1);
        let outside = netns("cuntr");
        topology
            .host
            .add_veth(
                "eth0",
                "02:00:00:00:09:01",
                &outside,
                "eth0",
                "02:00:00:00:09:02",
            )
            .expect("the data interface's veth pair");
        let host = &topology.host;
        host.exec(&["ip", "addr", "add", "198.18.9.1/24", "dev", "eth0"]);
        host.exec(&["ip", "route", "add", "198.19.7.0/24", "via", "198.18.9.2"]);
        outside.exec(&["ip", "link", "set", "eth0", "up"]);
        outside.exec(&["ip", "addr", "add", "198.18.9.2/24", "dev", "eth0"]);
        outside.exec(&["ip", "addr", "add", "198.19.7.2/24", "dev", "eth0"]);
        let datastore = Datastore::new();
        datastore.write("endpoints.yaml", &topology.workload(1).endpoint_yaml(NODE));
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        let tracked = udp_socket(host, any(TRACKED_PORT));
        let untracked = udp_socket(host, any(UNTRACKED_PORT));
        let ssh = host.enter(move || TcpListener::bind(any(22)).expect("listen on 22"));
        Setup {
            topology,
            outside,
            datastore,
            tracked,
            untracked,
            _ssh: ssh,
        }
    }

    /// Sends `count` datagrams from `src` (an address of the outside) to the host's `port`, in
    /// bursts; returns how many the socket took.
    fn send(outside: &Netns, src: Ipv4Addr, port: u16, count: u32) -> u32 {
        outside.enter(move || {
            let socket = UdpSocket::bind(SocketAddr::from((src, 0))).expect("bind the sender");
            let dst = SocketAddr::from((HOST_V4, port));
            let mut sent = 0;
            for i in 0..count {
                if socket.send_to(&i.to_be_bytes(), dst).is_ok() {
                    sent += 1;
                }
                if i % 200 == 199 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            sent
        })
    }

    /// Reads what `socket` received until it stays quiet for 300 ms: datagrams per source
    /// address.
    fn drain(socket: &UdpSocket) -> BTreeMap<IpAddr, u32> {
        let mut got = BTreeMap::new();
        let mut buf = [0u8; 64];
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < Duration::from_millis(300) {
            match socket.recv_from(&mut buf) {
                Ok((_, from)) => {
                    *got.entry(from.ip()).or_insert(0) += 1;
                    quiet_since = Instant::now();
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
        got
    }

    /// Whether a TCP connection from the outside to the host's `port` completes within a
    /// second, from `src` (by a route to the host with that source address).
    fn connects_from(outside: &Netns, src: Ipv4Addr, port: u16) -> bool {
        let route = ["198.18.9.1/32", "dev", "eth0", "src"];
        outside.exec(&[&["ip", "route", "replace"][..], &route, &[&src.to_string()]].concat());
        let ok = outside.enter(move || {
            TcpStream::connect_timeout(
                &SocketAddr::new(IpAddr::V4(HOST_V4), port),
                Duration::from_secs(1),
            )
            .is_ok()
        });
        outside.exec(&["ip", "route", "del", "198.18.9.1/32"]);
        ok
    }

    /// The host endpoint's counters row (`dump counters`).
    fn hep_counters(agent: &Agent) -> serde_json::Value {
        agent
            .dump("counters")
            .as_array()
            .and_then(|rows| {
                rows.iter()
                    .find(|r| r["kind"] == "host-endpoint" && r["interface"] == "eth0")
                    .cloned()
            })
            .unwrap_or(serde_json::Value::Null)
    }

    fn counter(row: &serde_json::Value, path: &[&str]) -> u64 {
        path.iter()
            .fold(row, |v, key| &v[*key])
            .as_u64()
            .unwrap_or(0)
    }

    /// The conntrack entries whose responder is the host's `port` (UDP).
    fn conntrack_entries_to(agent: &Agent, port: u16) -> Vec<serde_json::Value> {
        let responder = format!("{HOST_V4}:{port}");
        agent
            .dump("conntrack")
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| r["protocol"] == 17 && r["responder"] == responder.as_str())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    fn untracked_policy_in_xdp(mode: &str) {
        let s = setup();
        let pins = std::path::PathBuf::from("/sys/fs/bpf").join(unique("calico-test-"));
        let agent = Agent::start_with_env(
            &s.topology,
            &s.datastore,
            NODE,
            pins,
            &["--networking-backend", "none", "--attach-mode", mode],
            &[],
        );
        agent.wait_attached(&[&s.topology.workload(1).host_ifname]);
        s.datastore.write("hep.yaml", &host_endpoint_yaml());
        let links = agent.pin_path.join("links").join("eth0");
        wait_for(
            "the host endpoint's XDP and TC programs",
            Duration::from_secs(20),
            || {
                ["hep_xdp", "hep_tc_ingress", "hep_tc_egress"]
                    .iter()
                    .all(|hook| links.join(hook).exists())
            },
        );
        let row = agent.dump("endpoints");
        assert!(
            row.as_array().is_some_and(|rows| rows.iter().any(|r| {
                r["interface"] == "eth0"
                    && r["hooks"]
                        .as_array()
                        .is_some_and(|h| h.iter().any(|v| v == "hep_xdp"))
            })),
            "dump endpoints names the XDP hook: {row}"
        );

        // Before untracked policy: the denied net reaches the host's socket (so what follows
        // shows the policy, not the topology).
        wait_for(
            "the denied net's datagrams to arrive without untracked policy",
            Duration::from_secs(20),
            || {
                send(&s.outside, DENIED_V4, TRACKED_PORT, 5);
                drain(&s.tracked).get(&IpAddr::V4(DENIED_V4)).copied() > Some(0)
            },
        );

        s.datastore.write("untracked.yaml", &untracked_yaml());
        wait_for(
            "untracked policy to drop the denied net",
            Duration::from_secs(20),
            || {
                send(&s.outside, DENIED_V4, TRACKED_PORT, 5);
                drain(&s.tracked);
                counter(&hep_counters(&agent), &["drops", "untracked-denied"]) > 0
            },
        );
        drain(&s.tracked);

        // The flood: dropped in XDP, counted with its reason; the TC program never sees it and
        // nothing reaches the socket.
        let before = hep_counters(&agent);
        let sent = send(&s.outside, DENIED_V4, TRACKED_PORT, FLOOD);
        assert!(sent > FLOOD * 9 / 10, "the flood was sent: {sent}");
        let received = drain(&s.tracked);
        let after = hep_counters(&agent);
        assert_eq!(
            received.get(&IpAddr::V4(DENIED_V4)),
            None,
            "nothing of the flood reaches the host's socket: {received:?}"
        );
        let dropped = counter(&after, &["drops", "untracked-denied"])
            - counter(&before, &["drops", "untracked-denied"]);
        assert!(
            dropped >= u64::from(sent) * 95 / 100 && dropped <= u64::from(sent),
            "dropped in XDP as untracked-denied: {dropped} of {sent} sent\n{after}"
        );
        let seen_by_tc = counter(&after, &["in_packets"]) - counter(&before, &["in_packets"]);
        eprintln!(
            "{mode} mode: flood of {sent} datagrams sent, {dropped} dropped in XDP \
             (untracked-denied), {seen_by_tc} IP packets seen by the TC program meanwhile"
        );
        assert!(
            seen_by_tc < 50,
            "the TC program saw {seen_by_tc} packets during a flood of {sent}: dropped before it"
        );
        assert_eq!(
            counter(&after, &["drops", "policy-denied"]),
            counter(&before, &["drops", "policy-denied"]),
            "no drop by the tracked policy"
        );

        // The allowed address still gets through (tracked, by the normal policy)...
        let sent = send(&s.outside, ALLOWED_V4, TRACKED_PORT, 100);
        let received = drain(&s.tracked);
        assert_eq!(
            received.get(&IpAddr::V4(ALLOWED_V4)).copied(),
            Some(sent),
            "every datagram from the allowed address arrives"
        );
        assert!(
            !conntrack_entries_to(&agent, TRACKED_PORT).is_empty(),
            "a tracked flow has its conntrack entry"
        );
        // ...and the failsafe SSH port opens even from the denied net: the failsafe ports come
        // before untracked policy.
        assert!(
            connects_from(&s.outside, DENIED_V4, 22),
            "tcp:22 is failsafe, before untracked policy"
        );

        // An untracked Allow: in and back out without a conntrack entry.
        let before = hep_counters(&agent);
        let peer = udp_socket(&s.outside, SocketAddr::from((ALLOWED_V4, 0)));
        let peer_addr = peer.local_addr().expect("peer address");
        for i in 0..50u32 {
            peer.send_to(
                &i.to_be_bytes(),
                SocketAddr::from((HOST_V4, UNTRACKED_PORT)),
            )
            .expect("send to the untracked port");
        }
        let mut buf = [0u8; 64];
        let mut arrived = 0;
        let deadline = Instant::now() + Duration::from_secs(3);
        while arrived < 50 && Instant::now() < deadline {
            match s.untracked.recv_from(&mut buf) {
                Ok((len, from)) => {
                    assert_eq!(from, peer_addr);
                    arrived += 1;
                    s.untracked
                        .send_to(&buf[..len], from)
                        .expect("reply from the untracked port");
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
        assert_eq!(arrived, 50, "the untracked flow arrives");
        let replies = drain(&peer);
        assert_eq!(
            replies.get(&IpAddr::V4(HOST_V4)).copied(),
            Some(50),
            "the replies leave, allowed by untracked egress policy"
        );
        let after = hep_counters(&agent);
        assert!(
            counter(&after, &["untracked_in_packets"])
                >= counter(&before, &["untracked_in_packets"]) + 50,
            "{after}"
        );
        assert!(
            counter(&after, &["untracked_out_packets"])
                >= counter(&before, &["untracked_out_packets"]) + 50,
            "{after}"
        );
        assert_eq!(
            conntrack_entries_to(&agent, UNTRACKED_PORT),
            Vec::<serde_json::Value>::new(),
            "the untracked flow has no conntrack entry"
        );
        let opened_by_host = format!("{HOST_V4}:{UNTRACKED_PORT}");
        let reverse: Vec<serde_json::Value> = agent
            .dump("conntrack")
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter(|r| r["opener"] == opened_by_host.as_str())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        assert!(reverse.is_empty(), "nor its replies: {reverse:?}");

        // Without the untracked policy, the denied net gets through again.
        s.datastore.remove("untracked.yaml");
        wait_for(
            "the denied net to reach the host again",
            Duration::from_secs(20),
            || {
                send(&s.outside, DENIED_V4, TRACKED_PORT, 5);
                drain(&s.tracked).get(&IpAddr::V4(DENIED_V4)).copied() > Some(0)
            },
        );
    }

    #[test]
    fn untracked_policy_drops_a_flood_in_xdp_in_tc_mode() {
        untracked_policy_in_xdp("tc");
    }

    #[test]
    fn untracked_policy_drops_a_flood_in_xdp_in_xdp_mode() {
        untracked_policy_in_xdp("xdp");
    }
}
