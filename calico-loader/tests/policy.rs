//! Policy and connection tracking with real traffic: a host namespace running the agent, and
//! workloads talking TCP, UDP and ICMP through the attached programs. Every workload has an
//! allow-all profile; the policies below take precedence over it.

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{
        io::{Read, Write},
        net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
        sync::{
            Arc,
            atomic::{AtomicBool, AtomicU64, Ordering},
        },
        thread,
        time::{Duration, Instant},
    };

    use crate::support::topology::*;

    const NODE: &str = "test-node";

    fn endpoint_name(w: &Workload) -> String {
        format!("test/{NODE}-cni-wl{}-eth0", w.index)
    }

    fn start(topology: &Topology, datastore: &Datastore, policies: &str) -> Agent {
        let mut yaml = String::new();
        for w in &topology.workloads {
            yaml.push_str("---\n");
            yaml.push_str(&w.endpoint_yaml(NODE));
        }
        datastore.write("endpoints.yaml", &yaml);
        datastore.write("policies.yaml", policies);
        let agent = Agent::start(topology, datastore, NODE, &[]);
        let ifnames: Vec<&str> = topology
            .workloads
            .iter()
            .map(|w| w.host_ifname.as_str())
            .collect();
        agent.wait_attached(&ifnames);
        agent
    }

    /// Denies all ingress to every workload (the default tier's default action), then lets wl1
    /// reach wl2 on TCP 5402, UDP 5302 and ICMP echo.
    const WL1_TO_WL2: &str = "\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: isolate}
spec: {selector: all(), types: [Ingress]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: wl1-to-wl2, namespace: test}
spec:
  order: 10
  selector: app == 'wl2'
  ingress:
  - {action: Allow, protocol: TCP, source: {selector: app == 'wl1'}, destination: {ports: [5402]}}
  - {action: Allow, protocol: UDP, source: {selector: app == 'wl1'}, destination: {ports: [5302]}}
  - {action: Allow, protocol: ICMP, icmp: {type: 8}}
  - {action: Allow, protocol: ICMPv6, icmp: {type: 128}}
";

    fn policy_drops(agent: &Agent, ifname: &str) -> u64 {
        agent.counters(ifname)["drops"]["policy-denied"]
            .as_u64()
            .unwrap_or(0)
    }

    #[test]
    fn replies_pass_through_conntrack_and_unsolicited_connections_are_denied() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let agent = start(&topology, &datastore, WL1_TO_WL2);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));

        for (dst2, dst1) in [
            (IpAddr::V4(wl2.v4), IpAddr::V4(wl1.v4)),
            (IpAddr::V6(wl2.v6), IpAddr::V6(wl1.v6)),
        ] {
            // wl1's own ingress denies everything: its replies can only come back through conntrack.
            let echoed = tcp_echo(wl1, wl2, dst2, "allowed by policy").unwrap_or_else(|e| {
                panic!("TCP wl1 -> {dst2} must pass: {e}; log:\n{}", agent.log())
            });
            assert_eq!(echoed, "allowed by policy");
            assert!(
                wl1.ping(dst2),
                "ping wl1 -> {dst2}: the echo replies pass through conntrack"
            );
            assert_eq!(
                udp_exchange(wl1, wl2, dst2, b"udp allowed").as_deref(),
                Some(&b"udp allowed"[..]),
                "UDP wl1 -> {dst2}"
            );

            // The other way round nothing is allowed.
            assert!(
                tcp_echo(wl2, wl1, dst1, "denied").is_err(),
                "TCP wl2 -> {dst1} must be denied"
            );
            assert!(!wl2.ping(dst1), "ping wl2 -> {dst1} must be denied");
            assert_eq!(
                udp_exchange(wl2, wl1, dst1, b"denied"),
                None,
                "UDP wl2 -> {dst1} must be denied"
            );
        }
        assert!(
            policy_drops(&agent, &wl1.host_ifname) > 0,
            "wl1's ingress drops are counted"
        );

        // Errors about an allowed flow come back although wl1 accepts nothing new: a TCP RST from a
        // port nobody listens on (the reply of the flow), and an ICMP port unreachable for UDP (an
        // error quoting the flow).
        for dst in [IpAddr::V4(wl2.v4), IpAddr::V6(wl2.v6)] {
            let target = SocketAddr::new(dst, 5402);
            let refused = wl1
                .ns
                .enter(move || TcpStream::connect_timeout(&target, Duration::from_secs(3)));
            assert_eq!(
                refused.map(|_| ()).map_err(|e| e.kind()),
                Err(std::io::ErrorKind::ConnectionRefused),
                "TCP to {target} with nothing listening: the RST must come back"
            );
            let target = SocketAddr::new(dst, 5302);
            let unreachable = wl1.ns.enter(move || {
                let socket = UdpSocket::bind(if target.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                })
                .expect("bind");
                socket.connect(target).expect("connect UDP");
                socket
                    .set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                let _ = socket.send(b"anyone?");
                let mut buf = [0u8; 16];
                socket.recv(&mut buf).map_err(|e| e.kind())
            });
            assert_eq!(
                unreachable.map(|_| ()),
                Err(std::io::ErrorKind::ConnectionRefused),
                "UDP to {target} with nothing listening: the ICMP port unreachable must come back"
            );
        }

        // The flows are in the conntrack table, with their state.
        let conntrack = agent.dump("conntrack");
        let rows = conntrack.as_array().expect("conntrack rows");
        let tcp = rows
            .iter()
            .find(|r| r["protocol"] == 6 && r["responder"] == format!("{}:5402", wl2.v4))
            .unwrap_or_else(|| panic!("no TCP entry to wl2 in {conntrack:#}"));
        assert_eq!(
            tcp["opener"]
                .as_str()
                .map(|o| o.starts_with(&wl1.v4.to_string())),
            Some(true),
            "{tcp}"
        );
        assert!(
            tcp["packets_reverse"].as_u64().unwrap_or(0) > 0,
            "replies were seen: {tcp}"
        );

        // Trace explains both verdicts, with the real program on the agent's maps.
        let allowed = agent.trace(&[
            "--endpoint",
            &endpoint_name(wl2),
            "--direction",
            "ingress",
            "--protocol",
            "tcp",
            "--src",
            &format!("{}:40000", wl1.v4),
            "--dst",
            &format!("{}:5402", wl2.v4),
        ]);
        assert_eq!(allowed["verdict"], "allow", "{allowed:#}");
        assert_eq!(allowed["decided_by"], "policy", "{allowed:#}");
        assert_eq!(
            allowed["policy"], "NetworkPolicy:test/wl1-to-wl2",
            "{allowed:#}"
        );
        assert_eq!(allowed["tier"], "default", "{allowed:#}");
        assert_eq!(allowed["rule"], 0, "{allowed:#}");
        let denied = agent.trace(&[
            "--endpoint",
            &endpoint_name(wl1),
            "--direction",
            "ingress",
            "--protocol",
            "tcp",
            "--src",
            &format!("{}:40000", wl2.v4),
            "--dst",
            &format!("{}:5401", wl1.v4),
        ]);
        assert_eq!(denied["verdict"], "deny", "{denied:#}");
        assert_eq!(
            denied["decided_by_rule"]["kind"], "tier-default",
            "{denied:#}"
        );
        assert_eq!(denied["tier"], "default", "{denied:#}");

        // Trace left no conntrack entry behind.
        let after = agent.dump("conntrack");
        let count = |v: &serde_json::Value, port: &str| {
            v.as_array().map_or(0, |rows| {
                rows.iter()
                    .filter(|r| r["responder"].as_str().is_some_and(|s| s.ends_with(port)))
                    .count()
            })
        };
        assert_eq!(
            count(&after, ":5401"),
            0,
            "trace must not create conntrack entries: {after:#}"
        );

        // Per-rule counters saw the allowed flows.
        let rules = agent.dump("rules");
        let hits: u64 = rules
            .as_array()
            .expect("rule rows")
            .iter()
            .filter(|r| r["policy"] == "NetworkPolicy:test/wl1-to-wl2")
            .map(|r| r["packets"].as_u64().unwrap_or(0))
            .sum();
        assert!(hits >= 3, "rule hits counted: {rules:#}");
    }

    /// A TCP connection that exchanges a line every 50 ms until told to stop; counts the
    /// exchanges that succeeded and reports when the connection stopped working.
    struct Conversation {
        ok: Arc<AtomicU64>,
        broken: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
        client: Option<thread::JoinHandle<()>>,
    }

    impl Conversation {
        fn open(from: &Workload, to: &Workload, dst: IpAddr, port: u16) -> Self {
            let listen = SocketAddr::new(
                if dst.is_ipv4() {
                    "0.0.0.0".parse().unwrap()
                } else {
                    "::".parse().unwrap()
                },
                port,
            );
            let listener = to
                .ns
                .enter(move || TcpListener::bind(listen).expect("bind"));
            thread::spawn(move || {
                let accepted = listener.accept();
                drop(listener);
                if let Ok((mut stream, _)) = accepted {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            });
            let stream = from
                .ns
                .enter(move || {
                    TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(5))
                })
                .expect("connect");
            // An echo that takes this long means the flow is cut: long enough that a busy
            // machine's scheduling delays do not look like a cut, well under the tests' waits.
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let (ok, broken, stop) = (
                Arc::new(AtomicU64::new(0)),
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicBool::new(false)),
            );
            let client = {
                let (ok, broken, stop) = (ok.clone(), broken.clone(), stop.clone());
                let mut stream = stream;
                thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::SeqCst) {
                        let worked = stream.write_all(b"ping").is_ok()
                            && matches!(stream.read(&mut buf), Ok(4));
                        if worked {
                            ok.fetch_add(1, Ordering::SeqCst);
                        } else {
                            broken.store(true, Ordering::SeqCst);
                            return;
                        }
                        thread::sleep(Duration::from_millis(50));
                    }
                })
            };
            Self {
                ok,
                broken,
                stop,
                client: Some(client),
            }
        }
    }

    impl Drop for Conversation {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(client) = self.client.take() {
                let _ = client.join();
            }
        }
    }

    #[test]
    fn a_policy_change_cuts_an_established_flow_it_now_denies() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let agent = start(&topology, &datastore, WL1_TO_WL2);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));

        let conversation = Conversation::open(wl1, wl2, IpAddr::V4(wl2.v4), 5402);
        wait_for(
            "the conversation to get going",
            Duration::from_secs(10),
            || conversation.ok.load(Ordering::SeqCst) >= 5,
        );
        assert!(!conversation.broken.load(Ordering::SeqCst));

        // Take TCP away from the policy: the established connection must stop.
        datastore.write(
            "policies.yaml",
            &WL1_TO_WL2.replace("destination: {ports: [5402]}", "destination: {ports: [9]}"),
        );
        let changed = Instant::now();
        wait_for(
            "the established flow to be cut",
            Duration::from_secs(10),
            || conversation.broken.load(Ordering::SeqCst),
        );
        eprintln!(
            "flow cut {:?} after the policy file changed",
            changed.elapsed()
        );
        assert!(
            policy_drops(&agent, &wl2.host_ifname) > 0,
            "the cut packets were counted as policy drops"
        );
        drop(conversation);

        // Allowed again: new connections work.
        datastore.write("policies.yaml", WL1_TO_WL2);
        wait_for("TCP to be allowed again", Duration::from_secs(10), || {
            tcp_echo(wl1, wl2, IpAddr::V4(wl2.v4), "back").is_ok_and(|s| s == "back")
        });
    }

    /// Denies all ingress, then lets what a NetworkPolicy's selector `role == 'trusted'` stands
    /// for reach wl2 on TCP 5402 (tcp_echo) and 5500 (a conversation). `NAMESPACES` is the
    /// rule's `namespaceSelector`, if any.
    const FROM_TRUSTED: &str = "\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: isolate}
spec: {selector: all(), types: [Ingress]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: from-trusted, namespace: test}
spec:
  order: 10
  selector: app == 'wl2'
  ingress:
  - {action: Allow, protocol: TCP, source: {NAMESPACES selector: role == 'trusted'}, destination: {ports: [5402, 5500]}}
";

    #[test]
    fn network_sets_feed_selectors_and_their_changes_reach_established_flows() {
        let topology = Topology::new(3);
        let datastore = Datastore::new();
        let agent = start(
            &topology,
            &datastore,
            &FROM_TRUSTED.replace("NAMESPACES ", ""),
        );
        let (wl1, wl2, wl3) = (
            topology.workload(1),
            topology.workload(2),
            topology.workload(3),
        );
        // What the agent's maps say about TCP from `from` to wl2 (fast, so it is what we wait
        // on; real traffic then checks it).
        let verdict = |from: &Workload| {
            agent.trace(&[
                "--endpoint",
                &endpoint_name(wl2),
                "--direction",
                "ingress",
                "--protocol",
                "tcp",
                "--src",
                &format!("{}:40000", from.v4),
                "--dst",
                &format!("{}:5402", wl2.v4),
            ])["verdict"]
                .as_str()
                .map(str::to_owned)
        };
        let wait_verdict = |from: &Workload, want: &str, what: &str| {
            wait_for(what, Duration::from_secs(10), || {
                verdict(from).as_deref() == Some(want)
            });
        };
        assert_eq!(verdict(wl1).as_deref(), Some("deny"), "no set yet");

        // A NetworkSet of the policy's namespace whose CIDR holds wl1 (198.18.0.11).
        datastore.write(
            "sets.yaml",
            "apiVersion: projectcalico.org/v3\nkind: NetworkSet\n\
             metadata: {name: trusted, namespace: test, labels: {role: trusted}}\n\
             spec: {nets: [198.18.0.8/30]}\n",
        );
        wait_verdict(wl1, "allow", "the NetworkSet to let wl1 in");
        assert_eq!(
            tcp_echo(wl1, wl2, IpAddr::V4(wl2.v4), "in the set")
                .ok()
                .as_deref(),
            Some("in the set"),
            "wl1 is in the set's CIDR"
        );
        assert!(
            tcp_echo(wl3, wl2, IpAddr::V4(wl2.v4), "outside").is_err(),
            "wl3 (198.18.0.13) is outside the set's CIDR"
        );
        let conversation = Conversation::open(wl1, wl2, IpAddr::V4(wl2.v4), 5500);
        wait_for(
            "the conversation to get going",
            Duration::from_secs(10),
            || conversation.ok.load(Ordering::SeqCst) >= 5,
        );
        assert!(!conversation.broken.load(Ordering::SeqCst));

        // The set changes to wl3's address alone: wl1's established connection is cut on its
        // next packet, as for an endpoint or policy change, and wl3 gets in.
        datastore.write(
            "sets.yaml",
            "apiVersion: projectcalico.org/v3\nkind: NetworkSet\n\
             metadata: {name: trusted, namespace: test, labels: {role: trusted}}\n\
             spec: {nets: [198.18.0.13]}\n",
        );
        let changed = Instant::now();
        wait_for(
            "wl1's established flow to be cut",
            Duration::from_secs(10),
            || conversation.broken.load(Ordering::SeqCst),
        );
        eprintln!(
            "flow cut {:?} after the set file changed",
            changed.elapsed()
        );
        drop(conversation);
        assert_eq!(verdict(wl1).as_deref(), Some("deny"));
        assert_eq!(
            tcp_echo(wl3, wl2, IpAddr::V4(wl2.v4), "now in")
                .ok()
                .as_deref(),
            Some("now in"),
            "wl3 is the set now"
        );

        // The set deleted: nobody is trusted.
        datastore.remove("sets.yaml");
        wait_verdict(wl3, "deny", "the deleted set to stop letting wl3 in");
        assert!(
            tcp_echo(wl3, wl2, IpAddr::V4(wl2.v4), "gone").is_err(),
            "the set is gone"
        );

        // A GlobalNetworkSet reaches the NetworkPolicy through `namespaceSelector: global()`,
        // IPv6 included.
        datastore.write(
            "policies.yaml",
            &FROM_TRUSTED.replace("NAMESPACES ", "namespaceSelector: global(), "),
        );
        datastore.write(
            "global-sets.yaml",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\n\
             metadata: {name: trusted, labels: {role: trusted}}\n\
             spec: {nets: [198.18.0.8/29, \"2001:db8::10/124\"]}\n",
        );
        wait_verdict(wl1, "allow", "the GlobalNetworkSet to let wl1 in");
        for dst in [IpAddr::V4(wl2.v4), IpAddr::V6(wl2.v6)] {
            assert_eq!(
                tcp_echo(wl1, wl2, dst, "global").ok().as_deref(),
                Some("global"),
                "wl1 -> {dst} through the GlobalNetworkSet"
            );
        }
        datastore.remove("global-sets.yaml");
        wait_verdict(
            wl1,
            "deny",
            "the deleted GlobalNetworkSet to stop letting wl1 in",
        );
        assert!(
            tcp_echo(wl1, wl2, IpAddr::V4(wl2.v4), "gone").is_err(),
            "the GlobalNetworkSet is gone"
        );
        assert!(
            policy_drops(&agent, &wl2.host_ifname) > 0,
            "the denied packets were counted as policy drops"
        );
    }

    #[test]
    fn rapid_policy_churn_never_lets_a_denied_probe_through() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let agent = start(&topology, &datastore, WL1_TO_WL2);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));

        // A receiver on a port no version of the policy allows.
        let probe_port = 6100u16;
        let receiver = wl2.ns.enter(move || {
            let socket = UdpSocket::bind(("0.0.0.0", probe_port)).expect("bind probe receiver");
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .expect("timeout");
            socket
        });
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let counter = {
            let (received, stop) = (received.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::SeqCst) {
                    if receiver.recv_from(&mut buf).is_ok() {
                        received.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        };
        let dst = SocketAddr::new(IpAddr::V4(wl2.v4), probe_port);
        let sender = wl1
            .ns
            .enter(|| UdpSocket::bind("0.0.0.0:0").expect("bind probe sender"));
        let sent = Arc::new(AtomicU64::new(0));
        let prober = {
            let (sent, stop) = (sent.clone(), stop.clone());
            thread::spawn(move || {
                // A denied packet creates no conntrack entry, so every probe meets the policy itself.
                while !stop.load(Ordering::SeqCst) {
                    let _ = sender.send_to(b"must never arrive", dst);
                    sent.fetch_add(1, Ordering::SeqCst);
                    thread::sleep(Duration::from_micros(200));
                }
            })
        };

        // Rewrite the policies 30 times, each change applied before the next (the datastore watch
        // waits for 150 ms of quiet): every version allows other things, none the probe.
        for i in 0..30u16 {
            let extra = format!(
                "  - {{action: Allow, protocol: UDP, destination: {{ports: [{}]}}}}\n  - {{action: Deny, protocol: TCP, destination: {{ports: [\"{}:{}\"]}}}}\n",
                7000 + i,
                8000 + i,
                8100 + i
            );
            let programmed = agent.log().matches("policy programmed").count();
            datastore.write("policies.yaml", &format!("{WL1_TO_WL2}{extra}"));
            wait_for(
                &format!("policy version {i} to be programmed"),
                Duration::from_secs(20),
                || agent.log().matches("policy programmed").count() > programmed,
            );
        }
        thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::SeqCst);
        prober.join().expect("prober");
        counter.join().expect("counter");

        let programmed = agent.log().matches("policy programmed").count();
        eprintln!(
            "sent {} probes across {programmed} programmed policy generations",
            sent.load(Ordering::SeqCst)
        );
        assert!(sent.load(Ordering::SeqCst) > 1000, "the probe kept sending");
        assert!(
            programmed >= 30,
            "the policy really changed many times:\n{}",
            agent.log()
        );
        assert_eq!(
            received.load(Ordering::SeqCst),
            0,
            "a denied probe got through during churn"
        );
        // And what the policy allows still works after the churn.
        assert_eq!(
            udp_exchange(wl1, wl2, IpAddr::V4(wl2.v4), b"still allowed").as_deref(),
            Some(&b"still allowed"[..])
        );
    }

    #[test]
    fn a_policy_that_cannot_be_compiled_leaves_the_previous_one_in_force() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let agent = start(&topology, &datastore, WL1_TO_WL2);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        assert!(tcp_echo(wl1, wl2, IpAddr::V4(wl2.v4), "before").is_ok());

        // A valid resource the dataplane cannot enforce (HTTP matches need an L7 proxy): wl2's new
        // policy is refused, and the one in force stays, rather than dropping the rule silently.
        datastore.write(
        "http.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: http-only}\n\
         spec:\n  order: 1\n  selector: app == 'wl2'\n  ingress:\n  - {action: Allow, protocol: TCP, http: {methods: [GET]}}\n",
    );
        wait_for(
            "the compile error in the agent's log",
            Duration::from_secs(10),
            || agent.log().contains("http-only"),
        );
        let line = agent
            .log()
            .lines()
            .find(|l| l.contains("http-only"))
            .map(str::to_owned)
            .unwrap_or_default();
        assert!(
            line.contains("ERROR") && line.contains("keeps the policy it had"),
            "{line}"
        );
        assert_eq!(
            tcp_echo(wl1, wl2, IpAddr::V4(wl2.v4), "still")
                .ok()
                .as_deref(),
            Some("still")
        );
        let trace = agent.trace(&[
            "--endpoint",
            &endpoint_name(wl2),
            "--direction",
            "ingress",
            "--protocol",
            "tcp",
            "--src",
            &format!("{}:40000", wl1.v4),
            "--dst",
            &format!("{}:5402", wl2.v4),
        ]);
        assert_eq!(
            trace["policy"], "NetworkPolicy:test/wl1-to-wl2",
            "{trace:#}"
        );

        // Without the offending rule, the new policy applies.
        datastore.write(
        "http.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: http-only}\n\
         spec:\n  order: 1\n  selector: app == 'wl2'\n  ingress:\n  - {action: Deny, protocol: TCP}\n",
    );
        wait_for("the fixed policy to apply", Duration::from_secs(10), || {
            tcp_echo(wl1, wl2, IpAddr::V4(wl2.v4), "denied").is_err()
        });
    }

    #[test]
    fn a_full_conntrack_table_keeps_active_flows_working() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let mut yaml = String::new();
        for w in &topology.workloads {
            yaml.push_str("---\n");
            yaml.push_str(&w.endpoint_yaml(NODE));
        }
        datastore.write("endpoints.yaml", &yaml);
        datastore.write("policies.yaml", WL1_TO_WL2);
        let agent = Agent::start(&topology, &datastore, NODE, &["--conntrack-size", "256"]);
        let ifnames: Vec<&str> = topology
            .workloads
            .iter()
            .map(|w| w.host_ifname.as_str())
            .collect();
        agent.wait_attached(&ifnames);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));

        let conversation = Conversation::open(wl1, wl2, IpAddr::V4(wl2.v4), 5402);
        wait_for(
            "the conversation to get going",
            Duration::from_secs(10),
            || conversation.ok.load(Ordering::SeqCst) >= 3,
        );
        // 5,000 new UDP flows (one per source port) against a 256-entry table.
        let dst = SocketAddr::new(IpAddr::V4(wl2.v4), 5302);
        wl1.ns.enter(move || {
            for _ in 0..5000 {
                if let Ok(socket) = UdpSocket::bind("0.0.0.0:0") {
                    let _ = socket.send_to(b"filler", dst);
                }
            }
        });
        let before = conversation.ok.load(Ordering::SeqCst);
        wait_for(
            "the active flow to keep exchanging",
            Duration::from_secs(10),
            || {
                conversation.ok.load(Ordering::SeqCst) > before + 5
                    || conversation.broken.load(Ordering::SeqCst)
            },
        );
        assert!(
            !conversation.broken.load(Ordering::SeqCst),
            "the active flow broke when the table filled"
        );
        let entries = agent.dump("conntrack").as_array().map_or(0, Vec::len);
        assert!(
            entries <= 256 + 16,
            "the table holds at most its size (per-CPU slack aside): {entries}"
        );
    }

    #[test]
    fn a_log_rule_reports_the_packet_and_evaluation_goes_on() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let policy = WL1_TO_WL2.replace(
            "  ingress:\n",
            "  ingress:\n  - {action: Log, protocol: UDP, destination: {ports: [5302]}}\n",
        );
        let agent = start(&topology, &datastore, &policy);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        assert_eq!(
            udp_exchange(wl1, wl2, IpAddr::V4(wl2.v4), b"logged").as_deref(),
            Some(&b"logged"[..]),
            "Log goes on to the next rule, which allows"
        );
        wait_for(
            "the Log event in the agent's log",
            Duration::from_secs(5),
            || agent.log().contains("policy Log"),
        );
        let log = agent.log();
        let line = log
            .lines()
            .find(|l| l.contains("policy Log"))
            .expect("log line");
        assert!(
            line.contains(&wl1.v4.to_string()) && line.contains("dport=5302"),
            "{line}"
        );
        assert!(
            line.contains("verdict=\"allow\"") || line.contains("verdict=allow"),
            "{line}"
        );
    }

    #[test]
    fn ten_thousand_rules_on_one_endpoint() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let agent = start(&topology, &datastore, WL1_TO_WL2);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));

        // 10 policies of 1,000 rules each (Calico's limit per policy and direction is 1,024): each
        // rule allows TCP from one /32 of 198.19.0.0/16 to one port; the rule that matches wl1 is
        // the very last one.
        let mut yaml = String::new();
        for p in 0..10u32 {
            yaml.push_str(&format!(
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: big-{p:02}}}\n\
             spec:\n  order: {}\n  selector: app == 'wl2'\n  types: [Ingress]\n  ingress:\n",
            100 + p
        ));
            for r in 0..1000u32 {
                let n = p * 1000 + r;
                let source = if n == 9999 {
                    format!("{}/32", wl1.v4)
                } else {
                    format!("198.19.{}.{}/32", n / 250, n % 250 + 1)
                };
                yaml.push_str(&format!(
                "  - {{action: Allow, protocol: TCP, source: {{nets: [\"{source}\"]}}, destination: {{ports: [{}]}}}}\n",
                10000 + n % 5000
            ));
            }
        }
        // The last rule decides for wl1; rule 0 of the first policy for its own source.
        let port = 10000 + 9999 % 5000;
        let trace_last = || {
            agent.trace(&[
                "--endpoint",
                &endpoint_name(wl2),
                "--direction",
                "ingress",
                "--protocol",
                "tcp",
                "--src",
                &format!("{}:40000", wl1.v4),
                "--dst",
                &format!("{}:{port}", wl2.v4),
            ])
        };
        let written = Instant::now();
        datastore.write("big.yaml", &yaml);
        wait_for(
            "the 10,000-rule policy to be in force",
            Duration::from_secs(60),
            || trace_last()["policy"] == "GlobalNetworkPolicy:big-09",
        );
        let applied = written.elapsed();
        eprintln!("10,000 rules in force {applied:?} after the file was written");
        let line = agent
            .log()
            .lines()
            .rfind(|l| l.contains("policy compiled"))
            .map(str::to_owned);
        eprintln!("agent: {line:?}");
        let last = trace_last();
        assert_eq!(last["verdict"], "allow", "{last:#}");
        assert_eq!(last["policy"], "GlobalNetworkPolicy:big-09", "{last:#}");
        assert_eq!(last["rule"], 999, "{last:#}");
        let first = agent.trace(&[
            "--endpoint",
            &endpoint_name(wl2),
            "--direction",
            "ingress",
            "--protocol",
            "tcp",
            "--src",
            "198.19.0.1:40000",
            "--dst",
            &format!("{}:10000", wl2.v4),
        ]);
        assert_eq!(
            (first["policy"].as_str(), first["rule"].as_u64()),
            (Some("GlobalNetworkPolicy:big-00"), Some(0)),
            "{first:#}"
        );
        let wrong_port = agent.trace(&[
            "--endpoint",
            &endpoint_name(wl2),
            "--direction",
            "ingress",
            "--protocol",
            "tcp",
            "--src",
            "198.19.0.1:40000",
            "--dst",
            &format!("{}:10001", wl2.v4),
        ]);
        assert_eq!(wrong_port["verdict"], "deny", "{wrong_port:#}");

        // Real traffic on the last rule's port gets through; its neighbour port does not.
        let listen_port = port;
        let listener = wl2
            .ns
            .enter(move || TcpListener::bind(("0.0.0.0", listen_port)).expect("bind"));
        let server = thread::spawn(move || listener.accept().is_ok());
        let dst = SocketAddr::new(IpAddr::V4(wl2.v4), port);
        let connected = wl1
            .ns
            .enter(move || TcpStream::connect_timeout(&dst, Duration::from_secs(5)).is_ok());
        assert!(connected, "TCP to the last rule's port");
        assert!(server.join().expect("server"));
    }
}
