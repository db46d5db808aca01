//! Agent restarts under continuous traffic: an agent killed with SIGKILL (a crash: none of its
//! own clean-up runs) and started again loses nothing. While it is down and while the new agent
//! takes over, a UDP flow at 10,000 datagrams a second (numbered, counted at both ends), a
//! long-lived TCP stream and a ping every 10 ms run between two workloads; none of them loses a
//! packet, the stream neither stalls nor resets, and the new agent adopts the pinned maps and
//! links (same ids) and only swaps the programs in them. Policy written while the agent is down
//! is in force once it is ready again: a new deny takes effect, an allow that replaced a deny is
//! honoured. On one host and across two, in TC and XDP mode. Needs root; fails without it.

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{
        collections::BTreeMap,
        net::{IpAddr, SocketAddr, TcpListener, TcpStream},
        path::Path,
        thread,
        time::{Duration, Instant},
    };

    use aya::{
        maps::MapInfo,
        programs::links::{FdLink, PinnedLink},
    };
    use calico_ebpf_common::maps;
    use testbed::flows::{Pace, PingFlow, TcpFlow, UdpFlow};

    use crate::support::{health, topology::*, two_hosts::*};

    const NODE: &str = "test-node";
    /// How long the flows run; the agent is killed after [`KILL_AFTER`] and the flows go on
    /// well past its return.
    const FLOWS: Duration = Duration::from_secs(10);
    const KILL_AFTER: Duration = Duration::from_millis(1500);
    const UDP_RATE: u64 = 10_000;
    /// 4 MB/s: data on the stream all the time, without taking the machine's CPUs.
    const TCP_RATE: u64 = 4 << 20;
    const PING_INTERVAL: Duration = Duration::from_millis(10);
    const UDP_PORT: u16 = 6000;
    const TCP_PORT: u16 = 6001;
    /// Ports whose policy changes while the agent is down: 7001 allowed before and denied
    /// after, 7002 denied before and allowed after.
    const NEWLY_DENIED: u16 = 7001;
    const NEWLY_ALLOWED: u16 = 7002;

    /// The selectors of the receiving workload: wl2 on one host, host B's workload across two.
    const ONE_HOST_RECEIVER: &str = "app == 'wl2'";
    const TWO_HOSTS_RECEIVER: &str = "host == 'b'";

    /// The policy in force before the kill: TCP to the receiver's port 7002 denied, the rest
    /// passed on to the allow-all profile.
    fn policy_before(receiver: &str) -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: restart-probe}}\n\
             spec:\n  order: 10\n  selector: {receiver}\n  types: [Ingress]\n  ingress:\n  \
             - {{action: Deny, protocol: TCP, destination: {{ports: [{NEWLY_ALLOWED}]}}}}\n  - {{action: Pass}}\n"
        )
    }

    /// The policy written while the agent is down: port 7001 denied, port 7002 allowed.
    fn policy_while_down(receiver: &str) -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: restart-probe}}\n\
             spec:\n  order: 10\n  selector: {receiver}\n  types: [Ingress]\n  ingress:\n  \
             - {{action: Deny, protocol: TCP, destination: {{ports: [{NEWLY_DENIED}]}}}}\n  \
             - {{action: Allow, protocol: TCP, destination: {{ports: [{NEWLY_ALLOWED}]}}}}\n  - {{action: Pass}}\n"
        )
    }

    /// Whether a TCP connection from `from` to `to`'s `port` is accepted within a second.
    fn tcp_connects(from: &Workload, to: &Workload, port: u16) -> bool {
        let dst = SocketAddr::new(IpAddr::V4(to.v4), port);
        let listen: SocketAddr = format!("0.0.0.0:{port}").parse().expect("address");
        let listener = to
            .ns
            .enter(move || TcpListener::bind(listen).expect("bind the probe's listener"));
        let connected = from
            .ns
            .enter(move || TcpStream::connect_timeout(&dst, Duration::from_secs(1)).is_ok());
        drop(listener);
        connected
    }

    /// Checks which of the probe ports `to` accepts from `from`: (port 7001, port 7002).
    fn assert_ports(from: &Workload, to: &Workload, expected: (bool, bool), when: &str) {
        let found = (
            tcp_connects(from, to, NEWLY_DENIED),
            tcp_connects(from, to, NEWLY_ALLOWED),
        );
        assert_eq!(
            found, expected,
            "{when}: (port {NEWLY_DENIED} open, port {NEWLY_ALLOWED} open)"
        );
    }

    /// The ids of every pinned map, and of every pinned link with the program it runs.
    #[derive(Debug, PartialEq, Eq)]
    struct Pins {
        maps: BTreeMap<&'static str, u32>,
        links: BTreeMap<String, (u32, u32)>,
    }

    fn pins(pin_path: &Path) -> Pins {
        let maps = maps::ALL
            .iter()
            .map(|def| {
                let info = MapInfo::from_pin(pin_path.join(def.name))
                    .unwrap_or_else(|e| panic!("{} pinned: {e}", def.name));
                (def.name, info.id())
            })
            .collect();
        let mut links = BTreeMap::new();
        for dir in std::fs::read_dir(pin_path.join("links")).expect("links directory") {
            let dir = dir.expect("links entry").path();
            for pin in std::fs::read_dir(&dir).expect("an interface's links") {
                let pin = pin.expect("link pin").path();
                let link = FdLink::from(
                    PinnedLink::from_pin(&pin)
                        .unwrap_or_else(|e| panic!("{} is a link: {e}", pin.display())),
                );
                let info = link.info().expect("link info");
                let name = pin
                    .strip_prefix(pin_path.join("links"))
                    .expect("under links")
                    .display()
                    .to_string();
                links.insert(name, (info.id(), info.program_id()));
            }
        }
        Pins { maps, links }
    }

    /// One host's agent, restartable on the same pins.
    struct Host<'a> {
        topology: &'a Topology,
        datastore: &'a Datastore,
        node: &'static str,
        args: Vec<&'static str>,
        agent: Option<Agent>,
        /// Agents killed, kept until the end so that their clean-up runs last.
        killed: Vec<Agent>,
    }

    impl<'a> Host<'a> {
        fn start(
            topology: &'a Topology,
            datastore: &'a Datastore,
            node: &'static str,
            mode: &'static str,
        ) -> Self {
            let mut args = vec!["--attach-mode", mode, "--networking-backend", "none"];
            args.extend(health::HEALTH_FLAGS);
            let agent = Agent::start(topology, datastore, node, &args);
            let mut host = Self {
                topology,
                datastore,
                node,
                args,
                agent: Some(agent),
                killed: Vec::new(),
            };
            host.wait_ready();
            let ifnames: Vec<&str> = topology
                .workloads
                .iter()
                .map(|w| w.host_ifname.as_str())
                .collect();
            host.agent().wait_attached(&ifnames);
            host
        }

        fn agent(&self) -> &Agent {
            self.agent.as_ref().expect("an agent runs")
        }

        fn wait_ready(&mut self) -> Duration {
            health::wait_ready(&self.topology.host, self.agent(), Duration::from_secs(30))
        }

        /// SIGKILL: the agent dies as in a crash.
        fn kill(&mut self) {
            let mut agent = self.agent.take().expect("an agent runs");
            agent.kill();
            self.killed.push(agent);
        }

        /// Starts a new agent on the killed one's pins.
        fn restart(&mut self) {
            let pin_path = self.killed.last().expect("a killed agent").pin_path.clone();
            self.agent = Some(Agent::start_with_pins(
                self.topology,
                self.datastore,
                self.node,
                pin_path,
                &self.args,
            ));
        }

        fn pins(&self) -> Pins {
            pins(&self.agent().pin_path)
        }

        /// The programs' drops on this host, by reason, all interfaces together.
        fn drops(&self) -> BTreeMap<String, u64> {
            let mut drops = BTreeMap::new();
            let rows = self.agent().dump("counters");
            for row in rows.as_array().expect("counters rows") {
                let reasons = row["drops"].as_object().expect("drops by reason");
                for (reason, count) in reasons {
                    *drops.entry(reason.clone()).or_default() += count.as_u64().unwrap_or(0);
                }
            }
            drops
        }
    }

    impl Drop for Host<'_> {
        fn drop(&mut self) {
            // The running agent cleans up; the killed ones' guards find nothing left.
            drop(self.agent.take());
            self.killed.clear();
        }
    }

    /// Runs the flows from `from` to `to`, kills every agent of `hosts` after [`KILL_AFTER`],
    /// changes the policy of `to` while they are down, starts them again, and checks that no
    /// packet was lost and that the new policy is in force.
    fn restart_under_traffic(
        hosts: &mut [Host<'_>],
        datastore: &Datastore,
        from: &Workload,
        to: &Workload,
        receiver: &str,
        mode: &str,
    ) {
        // Warm up the neighbour entries and the path: the first packets of a cold path may wait
        // for ARP.
        assert!(from.ping(IpAddr::V4(to.v4)), "{mode}: warm-up ping");
        assert_ports(from, to, (true, false), "before the restart");
        let before: Vec<Pins> = hosts.iter().map(Host::pins).collect();
        let drops_before: Vec<BTreeMap<String, u64>> = hosts.iter().map(Host::drops).collect();

        let (src, dst) = (from.ns.path(), to.ns.path());
        let udp = UdpFlow::start(
            &src,
            &dst,
            SocketAddr::new(IpAddr::V4(to.v4), UDP_PORT),
            Pace {
                duration: FLOWS,
                rate: UDP_RATE,
            },
        )
        .expect("start the UDP flow");
        let tcp = TcpFlow::start(
            &src,
            &dst,
            SocketAddr::new(IpAddr::V4(to.v4), TCP_PORT),
            Pace {
                duration: FLOWS,
                rate: TCP_RATE,
            },
        )
        .expect("start the TCP stream");
        let ping = PingFlow::start(
            &src,
            IpAddr::V4(to.v4),
            PING_INTERVAL,
            (FLOWS.as_millis() / PING_INTERVAL.as_millis()) as u64,
        )
        .expect("start ping");

        thread::sleep(KILL_AFTER);
        let killed_at = Instant::now();
        for host in hosts.iter_mut() {
            host.kill();
        }
        // While the agents are down: the programs they left keep forwarding and enforcing the
        // last policy, and a policy change waits for them.
        datastore.write("restart-probe.yaml", &policy_while_down(receiver));
        thread::sleep(Duration::from_millis(300));
        assert_ports(from, to, (true, false), "while the agents are down");
        for host in hosts.iter_mut() {
            host.restart();
        }
        let mut restart_time = Duration::ZERO;
        for host in hosts.iter_mut() {
            host.wait_ready();
            restart_time = restart_time.max(killed_at.elapsed());
        }
        // Ready means programmed from the whole datastore: the change is in force at once.
        assert_ports(from, to, (false, true), "once the agents are ready again");

        let ping = ping.finish().expect("ping's summary");
        let tcp = tcp.finish().expect("the TCP stream's report");
        let udp = udp.finish(Duration::from_secs(1)).expect("the UDP report");
        let logs = || {
            hosts
                .iter()
                .map(|h| format!("agent of {}:\n{}", h.node, h.agent().log()))
                .collect::<Vec<_>>()
                .join("\n")
        };
        eprintln!(
            "{mode}: ready {restart_time:?} after the kill; UDP {} sent ({:.0}/s), {} refused by \
             the sender's interface, {} received, longest gap {:?}; TCP {} bytes sent, {} received, longest gap {:?}, {} retransmits ({} duplicates); \
             ping {} sent, {} received",
            udp.sent,
            udp.achieved_rate(),
            udp.refused_by_sender_interface,
            udp.received,
            udp.longest_gap,
            tcp.sent,
            tcp.received,
            tcp.longest_gap,
            tcp.retransmits,
            tcp.duplicate_retransmits,
            ping.transmitted,
            ping.received
        );

        assert!(
            udp.sent >= UDP_RATE * FLOWS.as_secs() / 2,
            "{mode}: the UDP sender kept at least half its pace: {udp:?}"
        );
        assert_eq!(
            udp.lost(),
            0,
            "{mode}: UDP datagrams lost across the restart: {udp:?}\n{}",
            logs()
        );
        assert_eq!(udp.duplicates, 0, "{mode}: {udp:?}");
        assert_eq!(
            tcp.error,
            None,
            "{mode}: the TCP stream broke: {tcp:?}\n{}",
            logs()
        );
        assert_eq!(
            tcp.received, tcp.sent,
            "{mode}: every byte written arrived: {tcp:?}"
        );
        assert!(
            tcp.sent >= TCP_RATE * FLOWS.as_secs() / 2,
            "{mode}: the stream carried data all along: {tcp:?}"
        );
        assert!(
            tcp.longest_gap < Duration::from_secs(1),
            "{mode}: the stream stalled: {tcp:?}"
        );
        assert_eq!(
            tcp.lost_segments(),
            0,
            "{mode}: segments of the stream were lost and sent again: {tcp:?}\n{}",
            logs()
        );
        assert!(ping.transmitted >= 900, "{mode}: {ping:?}");
        assert_eq!(
            ping.lost(),
            0,
            "{mode}: pings lost across the restart: {ping:?}\n{}",
            logs()
        );

        // The programs dropped nothing for a reason a restart could cause: no unknown
        // interface, failed redirect, missing route... "policy-denied" counts the probes the
        // policy denies; "policy-missing" is left out because it grows by a few packets in ten
        // seconds on these topologies without any restart too: IPv6 MLDv2 listener reports
        // from link-local addresses (policy is keyed on the endpoints' own addresses), and,
        // with those turned off, one or two packets a run not identified yet.
        // The flows themselves are counted packet by packet above.
        for (host, before) in hosts.iter().zip(drops_before) {
            let after = host.drops();
            for (reason, count) in &after {
                let grew = count - before.get(reason).copied().unwrap_or(0);
                if reason != "policy-denied" && reason != "policy-missing" {
                    assert_eq!(
                        grew,
                        0,
                        "{mode}: the programs of {} dropped {grew} packet(s) as {reason} \
                         across the restart\n{}",
                        host.node,
                        logs()
                    );
                }
            }
        }

        // Make-before-break: the same maps and links, only the programs in the links swapped.
        for (host, before) in hosts.iter().zip(before) {
            let after = host.pins();
            assert_eq!(after.maps, before.maps, "{mode}: the maps were adopted");
            assert_eq!(
                after.links.keys().collect::<Vec<_>>(),
                before.links.keys().collect::<Vec<_>>(),
                "{mode}: the same links are pinned"
            );
            for (name, (link, program)) in &after.links {
                let (old_link, old_program) = before.links[name];
                assert_eq!(
                    *link,
                    old_link,
                    "{mode}: {name} is the same link\n{}",
                    logs()
                );
                assert_ne!(
                    *program, old_program,
                    "{mode}: {name} runs the new agent's program"
                );
            }
        }
    }

    fn one_host(mode: &'static str) {
        let topology = Topology::new(2);
        if mode == "xdp" {
            topology.prepare_for_xdp();
        }
        let datastore = Datastore::new();
        datastore.write("endpoints.yaml", &{
            let (w1, w2) = (topology.workload(1), topology.workload(2));
            format!("{}---\n{}", w1.endpoint_yaml(NODE), w2.endpoint_yaml(NODE))
        });
        datastore.write("restart-probe.yaml", &policy_before(ONE_HOST_RECEIVER));
        let mut hosts = [Host::start(&topology, &datastore, NODE, mode)];
        restart_under_traffic(
            &mut hosts,
            &datastore,
            topology.workload(1),
            topology.workload(2),
            ONE_HOST_RECEIVER,
            mode,
        );
    }

    fn two_hosts(mode: &'static str) {
        let cluster = Hosts::new(1, 1);
        if mode == "xdp" {
            cluster.a.prepare_for_xdp();
            cluster.b.prepare_for_xdp();
        }
        let datastore = &cluster.datastore;
        datastore.write("restart-probe.yaml", &policy_before(TWO_HOSTS_RECEIVER));
        let mut hosts = [
            Host::start(&cluster.a, datastore, HOST_A, mode),
            Host::start(&cluster.b, datastore, HOST_B, mode),
        ];
        for host in &hosts {
            wait_for(
                "the data interface's program",
                Duration::from_secs(20),
                || host.agent().data_interface_attached("eth0"),
            );
        }
        restart_under_traffic(
            &mut hosts,
            datastore,
            cluster.a.workload(1),
            cluster.b.workload(1),
            TWO_HOSTS_RECEIVER,
            mode,
        );
    }

    #[test]
    fn tc_one_host_restart_loses_nothing() {
        one_host("tc");
    }

    #[test]
    fn xdp_one_host_restart_loses_nothing() {
        one_host("xdp");
    }

    #[test]
    fn tc_two_hosts_restart_loses_nothing() {
        two_hosts("tc");
    }

    #[test]
    fn xdp_two_hosts_restart_loses_nothing() {
        two_hosts("xdp");
    }
}
