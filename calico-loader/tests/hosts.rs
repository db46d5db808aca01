//! Two hosts routing to each other's workloads (`support::two_hosts`): each host is a network
//! namespace with its own agent following one shared datastore directory, joined by a veth
//! fabric, with static routes standing in for BIRD. Real packets (ICMP, TCP over IPv4 and IPv6) cross
//! the programs on both hosts, in tc and then xdp mode, in one shared topology.
//!
//! Everything happens inside namespaces the test creates; the root namespace's sysctls are never
//! touched (the agents write theirs inside the host namespaces).

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{net::IpAddr, time::Duration};

    use crate::support::{topology::*, two_hosts::*};

    fn counter(agent: &Agent, ifname: &str, name: &str) -> u64 {
        agent.counters(ifname)[name].as_u64().unwrap_or(0)
    }

    /// Pings and TCP both ways between every workload of A and every workload of B, over IPv4
    /// and IPv6; the kernels of both hosts forward none of it, and the programs' counters show
    /// that they did.
    fn assert_cross_host_connectivity(hosts: &Hosts, agents: &(Agent, Agent), mode: &str) {
        let (agent_a, agent_b) = agents;
        // The first packets may meet cold neighbour entries, which the kernel resolves (and
        // forwards those packets itself); warm them up first.
        for (x, y) in hosts.pairs() {
            for (from, to) in [(x, y), (y, x)] {
                for dst in [IpAddr::V4(to.v4), IpAddr::V6(to.v6)] {
                    assert!(
                        from.ping(dst),
                        "{mode}: warm-up ping {} -> {dst} failed; host A's agent:\n{}\nhost B's agent:\n{}",
                        from.v4,
                        agent_a.log(),
                        agent_b.log()
                    );
                }
            }
        }
        let kernel_before = (hosts.a.kernel_forwarded(), hosts.b.kernel_forwarded());
        let counters_before: Vec<(u64, u64)> = hosts
            .a
            .workloads
            .iter()
            .map(|w| (agent_a, w))
            .chain(hosts.b.workloads.iter().map(|w| (agent_b, w)))
            .map(|(agent, w)| {
                (
                    counter(agent, &w.host_ifname, "forwarded_remote_packets"),
                    counter(agent, &w.host_ifname, "from_data_interface_packets"),
                )
            })
            .collect();

        for (x, y) in hosts.pairs() {
            for (from, to) in [(x, y), (y, x)] {
                for dst in [IpAddr::V4(to.v4), IpAddr::V6(to.v6)] {
                    assert!(from.ping(dst), "{mode}: ping {} -> {dst}", from.v4);
                    let echoed = tcp_echo(from, to, dst, "across hosts in BPF").unwrap_or_else(|e| {
                        panic!(
                            "{mode}: TCP {} -> {dst}: {e}; host A's agent:\n{}\nhost B's agent:\n{}",
                            from.v4,
                            agent_a.log(),
                            agent_b.log()
                        )
                    });
                    assert_eq!(echoed, "across hosts in BPF");
                }
            }
        }

        assert_eq!(
            (hosts.a.kernel_forwarded(), hosts.b.kernel_forwarded()),
            kernel_before,
            "{mode}: the hosts' kernels forwarded none of it ((IPv4, IPv6) of A, of B)"
        );
        let counters_after = hosts
            .a
            .workloads
            .iter()
            .map(|w| (agent_a, w))
            .chain(hosts.b.workloads.iter().map(|w| (agent_b, w)));
        for ((agent, w), (forwarded, delivered)) in counters_after.zip(counters_before) {
            let c = agent.counters(&w.host_ifname);
            // Per remote peer and family: 2 echo requests or replies, and a TCP exchange.
            assert!(
                c["forwarded_remote_packets"].as_u64().unwrap_or(0) >= forwarded + 8,
                "{mode}: {} forwarded to the other host in BPF: {c}",
                w.v4
            );
            assert!(
                c["from_data_interface_packets"].as_u64().unwrap_or(0) >= delivered + 8,
                "{mode}: {} got packets from the data interface in BPF: {c}",
                w.v4
            );
        }
    }

    /// Runs `ping ARGS` in the workload; its output, whatever the exit status.
    fn ping_output(w: &Workload, args: &[&str]) -> String {
        let output = w.ns.command("ping").args(args).capture().expect("run ping");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// The policy on host B's workloads: ingress from host A's workloads is denied (or
    /// allowed), from anyone else allowed.
    fn host_a_policy(action: &str) -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: from-host-a}}\n\
             spec:\n  selector: host == 'b'\n  types: [Ingress]\n  ingress:\n  \
             - {{action: {action}, source: {{selector: \"host == 'a'\"}}}}\n  - {{action: Allow}}\n"
        )
    }

    #[test]
    fn workloads_of_two_hosts_reach_each_other_through_bpf() {
        let hosts = Hosts::new(2, 1);
        let agents = hosts.start(&[]);
        let (agent_a, agent_b) = &agents;
        let (a1, b1) = (hosts.a.workload(1), hosts.b.workload(1));

        // The agents turned on forwarding where the FIB lookup and the kernel's fallback need
        // it, in their own namespaces.
        for (host, w) in [(&hosts.a, a1), (&hosts.b, b1)] {
            let cali = &w.host_ifname;
            for path in [
                format!("net/ipv4/conf/{cali}/forwarding"),
                format!("net/ipv6/conf/{cali}/forwarding"),
                "net/ipv4/conf/eth0/forwarding".to_owned(),
            ] {
                assert_eq!(host.sysctl(&path), "1", "{path}");
            }
            assert_eq!(
                host.sysctl("net/ipv6/conf/eth0/forwarding"),
                "0",
                "IPv6 forwarding stays off on the data interface (router advertisements)"
            );
            assert_eq!(host.sysctl("net/ipv4/ip_forward"), "0", "no global setting");
        }

        // The route map knows where host B's workload lives.
        let routes = agent_a.dump("routes");
        for prefix in [format!("{}/32", b1.v4), format!("{}/128", b1.v6)] {
            let row = routes
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["prefix"] == prefix.as_str()))
                .unwrap_or_else(|| panic!("no route {prefix} on host A: {routes}"));
            assert_eq!(row["kind"], "remote-workload", "{row}");
            assert_eq!(row["node"], HOST_B, "{row}");
        }
        let trace = agent_a.trace(&[
            "--endpoint",
            &format!("test/{HOST_A}-cni-wl1-eth0"),
            "--direction",
            "egress",
            "--protocol",
            "tcp",
            "--src",
            &format!("{}:40000", a1.v4),
            "--dst",
            &format!("{}:80", b1.v4),
        ]);
        assert_eq!(trace["verdict"], "allow", "{trace}");
        assert_eq!(trace["destination"]["route"], "remote-workload", "{trace}");
        assert_eq!(trace["destination"]["node"], HOST_B, "{trace}");
        assert_eq!(trace["source"]["route"], "local-workload", "{trace}");
        assert_eq!(
            trace["source"]["interface"],
            a1.host_ifname.as_str(),
            "{trace}"
        );

        // tc mode: every pair, both ways, both families, through the programs only.
        assert_cross_host_connectivity(&hosts, &agents, "tc");

        // A policy on host B that denies host A's workloads by label blocks their traffic at
        // host B's data interface; host B's own connections to them still work (their replies
        // pass through conntrack).
        let drops = |agent: &Agent| {
            agent.counters(&b1.host_ifname)["drops"]["policy-denied"]
                .as_u64()
                .unwrap_or(0)
        };
        let denied_before = drops(agent_b);
        hosts.datastore.write("policy.yaml", &host_a_policy("Deny"));
        wait_for("host B to deny host A", Duration::from_secs(15), || {
            !a1.ping(IpAddr::V4(b1.v4))
        });
        for dst in [IpAddr::V4(b1.v4), IpAddr::V6(b1.v6)] {
            assert!(!a1.ping(dst), "ping {} -> {dst} must be denied", a1.v4);
            assert!(
                tcp_echo(a1, b1, dst, "denied").is_err(),
                "TCP {} -> {dst} must be denied",
                a1.v4
            );
        }
        assert!(
            drops(agent_b) > denied_before,
            "host B counted the denials on its workload: {}",
            agent_b.counters(&b1.host_ifname)
        );
        for dst in [IpAddr::V4(a1.v4), IpAddr::V6(a1.v6)] {
            assert!(b1.ping(dst), "host B's workload still opens flows to {dst}");
        }
        hosts
            .datastore
            .write("policy.yaml", &host_a_policy("Allow"));
        wait_for(
            "host B to allow host A again",
            Duration::from_secs(15),
            || a1.ping(IpAddr::V4(b1.v4)),
        );
        assert!(a1.ping(IpAddr::V6(b1.v6)));
        assert_eq!(
            tcp_echo(a1, b1, IpAddr::V4(b1.v4), "allowed again").expect("TCP allowed again"),
            "allowed again"
        );

        // An expiring TTL goes to the kernel, which answers with time exceeded: at host A's
        // workload interface (TTL 1), or at host B's data interface (TTL 2, one less after A).
        let to_host_before = counter(agent_a, &a1.host_ifname, "to_host_packets");
        for (ttl, from) in [("1", A_V4), ("2", B_V4)] {
            let out = ping_output(a1, &["-c", "1", "-W", "2", "-t", ttl, &b1.v4.to_string()]);
            assert!(
                out.contains(&format!("From {from}")) && out.contains("Time to live exceeded"),
                "ping -t {ttl}: {out}"
            );
        }
        for (hops, from) in [("1", A_V6), ("2", B_V6)] {
            let out = ping_output(a1, &["-c", "1", "-W", "2", "-t", hops, &b1.v6.to_string()]);
            assert!(
                out.contains(&format!("From {from}")) && out.contains("Time exceeded"),
                "ping -6 -t {hops}: {out}"
            );
        }
        assert!(
            counter(agent_a, &a1.host_ifname, "to_host_packets") >= to_host_before + 2,
            "the TTL-1 packets went to host A's kernel"
        );

        // A cold neighbour: the FIB lookup finds no neighbour entry for host B, so the first
        // packet goes to host A's kernel, which resolves it and forwards that packet itself;
        // the next ones go through the program again.
        for (family, dst) in [("-4", IpAddr::V4(b1.v4)), ("-6", IpAddr::V6(b1.v6))] {
            hosts
                .a
                .host
                .exec(&["ip", family, "neigh", "flush", "dev", "eth0"]);
            let before = hosts.a.kernel_forwarded();
            let dst = dst.to_string();
            assert!(
                a1.ns.try_exec(&["ping", "-c", "1", "-W", "3", &dst]),
                "the first packet to a cold neighbour ({dst}) arrives"
            );
            let after = hosts.a.kernel_forwarded();
            assert!(
                after.0 + after.1 > before.0 + before.1,
                "host A's kernel forwarded the packet that found no neighbour ({dst}): {before:?} -> {after:?}"
            );
            assert!(
                a1.ns
                    .try_exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &dst])
            );
            assert_eq!(
                hosts.a.kernel_forwarded(),
                after,
                "once the neighbour is known, the program forwards again ({dst})"
            );
        }

        // xdp mode, in the same topology: the agents start over with the other hook.
        drop(agents);
        hosts.a.prepare_for_xdp();
        hosts.b.prepare_for_xdp();
        let agents = hosts.start(&["--attach-mode", "xdp"]);
        assert!(
            agents.0.data_interface_attached("eth0")
                && agents.0.pin_path.join("links/eth0/data_xdp").exists(),
            "the data interface has the XDP program"
        );
        assert_cross_host_connectivity(&hosts, &agents, "xdp");
    }
}
