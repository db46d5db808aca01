//! Integration tests: the agent drives BGP. Three hosts, each a network namespace with its own
//! agent and BIRD, on one fabric and one etcd: each registers its Node, claims blocks through
//! IPAM, and routes to the others' blocks through the routes BIRD learns; a workload on each
//! host reaches every other through the BPF programs, by those routes, the kernels forwarding
//! none of it; blocks claimed later spread without a restart; an agent restarted after SIGKILL
//! adopts its BIRD, and a BIRD killed is started again, the other hosts keeping the routes; bad
//! BGP input leaves the last good BIRD configuration in force; a host whose Node is removed has
//! its routes withdrawn.
//! Then the same cluster with routers around it: a top-of-rack router (GoBGP, an independent
//! speaker) peered over eBGP, and route reflection with the mesh off; workloads reach the
//! network behind the ToR and each other. And one host on the local directory datastore, whose
//! blocks reach BIRD from IPAM's files.

mod support;

/// Every test here needs root (network namespaces, BPF): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{
        net::IpAddr,
        thread,
        time::{Duration, Instant},
    };

    use ipnet::IpNet;

    use crate::support::{
        cluster::{Cluster, Host, tail},
        gobgp::{EXTERNAL_NET_V4, EXTERNAL_NET_V6, EXTERNAL_V4, EXTERNAL_V6, RibEntry, Tor},
        topology::{
            Agent, Datastore, Pinger, Topology, Workload, loader_bin, require_root, tcp_echo,
            wait_for,
        },
    };

    /// How long sessions, routes and reloads have to happen (BIRD connects after 2 s and
    /// scans the kernel every 2 s).
    const PATIENCE: Duration = Duration::from_secs(30);

    const POOLS: &str = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool-v4}\n\
        spec: {cidr: 198.18.0.0/16}\n---\n\
        apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool-v6}\n\
        spec: {cidr: '2001:db8:1::/48'}\n";

    /// Prints how long each step took, so slow steps show in the test's output.
    struct Steps {
        start: Instant,
        last: Instant,
    }

    impl Steps {
        fn new() -> Self {
            let now = Instant::now();
            Self {
                start: now,
                last: now,
            }
        }

        fn step(&mut self, name: &str) {
            let now = Instant::now();
            eprintln!(
                "[{:>5.1}s +{:>4.1}s] {name}",
                now.duration_since(self.start).as_secs_f64(),
                now.duration_since(self.last).as_secs_f64()
            );
            self.last = now;
        }
    }

    /// The blocks holding the addresses `ipam assign` printed (IPv4 /26, IPv6 /122).
    fn blocks_of(assigned: &str) -> Vec<IpNet> {
        let mut blocks: Vec<IpNet> = assigned
            .lines()
            .filter_map(|l| l.trim().parse::<IpAddr>().ok())
            .map(|ip| {
                let prefix = if ip.is_ipv4() { 26 } else { 122 };
                IpNet::new(ip, prefix).expect("prefix").trunc()
            })
            .collect();
        blocks.sort();
        blocks.dedup();
        blocks
    }

    /// The `n`th address of `net`.
    fn nth(net: IpNet, n: u32) -> IpAddr {
        match net {
            IpNet::V4(net) => IpAddr::V4((u32::from(net.network()) + n).into()),
            IpNet::V6(net) => IpAddr::V6((u128::from(net.network()) + u128::from(n)).into()),
        }
    }

    /// The index of each host's workload in the full-mesh step (workload 1 of host-3 holds
    /// borrowed addresses).
    const MESH_WORKLOAD: u8 = 2;

    /// The profile the test workloads name.
    const ALLOW_ALL: &str = "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: test-allow-all}\n\
        spec: {ingress: [{action: Allow}], egress: [{action: Allow}]}\n";

    /// Host `i`'s workload of the full-mesh step.
    fn mesh_workload_of(cluster: &Cluster, i: u8) -> &Workload {
        cluster
            .host(i)
            .workloads
            .iter()
            .find(|w| w.index == MESH_WORKLOAD)
            .expect("the mesh workload")
    }

    fn assign(cluster: &Cluster, host: &Host, handle: &str, extra: &[&str]) -> String {
        let mut args = vec!["ipam", "assign", "--node", &host.name, "--handle", handle];
        args.extend_from_slice(extra);
        cluster.loader(&args, None)
    }

    /// Waits until `host`'s kernel routes `block` as `expected` says: a blackhole of its own
    /// (`None`) or via `via`.
    fn wait_block_route(cluster: &Cluster, host: &Host, block: IpNet, via: Option<IpAddr>) {
        let prefix = block.to_string();
        let what = match via {
            None => format!("{} to blackhole its block {prefix}", host.name),
            Some(via) => format!("{} to route {prefix} via {via}", host.name),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            let routes = host.routes_to(&prefix);
            let ok = routes.contains("proto bird")
                && match via {
                    None => routes.contains("blackhole"),
                    Some(via) => routes.contains(&format!("via {via} dev eth0")),
                };
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; routes:\n{routes}\n{}",
                cluster.logs()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until each host blackholes its own blocks and routes the others' through their
    /// owner's fabric address of the family.
    fn wait_all_block_routes(cluster: &Cluster, owned: &[(u8, Vec<IpNet>)]) {
        for host in &cluster.hosts {
            for (owner, blocks) in owned {
                let owner = cluster.host(*owner);
                for block in blocks {
                    let owner_address = match block {
                        IpNet::V4(_) => IpAddr::V4(owner.v4),
                        IpNet::V6(_) => IpAddr::V6(owner.v6),
                    };
                    let via = (owner.index != host.index).then_some(owner_address);
                    wait_block_route(cluster, host, *block, via);
                }
            }
        }
    }

    /// The fabric addresses of every host but `i`, both families.
    fn peers_of(cluster: &Cluster, i: u8, except: &[u8]) -> Vec<IpAddr> {
        cluster
            .hosts
            .iter()
            .filter(|h| h.index != i && !except.contains(&h.index))
            .flat_map(|h| [IpAddr::V4(h.v4), IpAddr::V6(h.v6)])
            .collect()
    }

    fn wait_sessions(cluster: &Cluster, i: u8, peers: &[IpAddr]) {
        let host = cluster.host(i);
        let deadline = Instant::now() + PATIENCE;
        while !host.sessions_established(peers) {
            assert!(
                Instant::now() < deadline,
                "{}: sessions with {peers:?} not all established; node status:\n{}\n{}",
                host.name,
                String::from_utf8_lossy(&host.node_status().stdout),
                cluster.logs()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether process `pid` runs (exists, and is no zombie).
    fn process_runs(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| !matches!(state, "Z" | "X"))
        })
    }

    fn bird_conf(host: &Host) -> String {
        std::fs::read_to_string(host.run_dir.join("bird.conf")).unwrap_or_default()
    }

    fn node_bgp(cluster: &Cluster, name: &str) -> serde_json::Value {
        let json = cluster.loader(&["get", "node", name, "-o", "json"], None);
        let value: serde_json::Value = serde_json::from_str(&json).expect("node JSON");
        value["spec"]["bgp"].clone()
    }

    /// Waits until `host`'s agent log has `text`.
    fn wait_log(host: &Host, text: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !host.log().contains(text) {
            assert!(
                Instant::now() < deadline,
                "{}'s log does not say {text:?}:\n{}",
                host.name,
                tail(&host.log(), 60)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Until `done` holds, checks that host-1 routes every one of `blocks` via another host.
    fn keeps_routes_until(
        cluster: &Cluster,
        blocks: &[IpNet],
        what: &str,
        mut done: impl FnMut() -> bool,
    ) {
        let deadline = Instant::now() + PATIENCE;
        while !done() {
            for block in blocks {
                let routes = cluster.host(1).routes_to(&block.to_string());
                assert!(
                    routes.contains("via"),
                    "host-1 lost {block} while {what}: {routes:?}\n{}",
                    cluster.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out while {what}\n{}",
                cluster.logs()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    #[test]
    fn three_hosts_route_to_each_others_blocks_over_bgp() {
        require_root();
        let mut steps = Steps::new();
        let mut cluster = Cluster::new(3);
        // An interface autodetection must skip, with the highest index (checked first).
        let h1 = cluster.host(1);
        h1.ip(&[
            "link", "add", "docker0", "type", "veth", "peer", "name", "docker0p",
        ]);
        h1.ip(&["link", "set", "docker0", "up"]);
        h1.ip(&["addr", "add", "198.19.1.1/24", "dev", "docker0"]);
        h1.ip(&[
            "-6",
            "addr",
            "add",
            "2001:db8:0:fe::1/64",
            "dev",
            "docker0",
            "nodad",
        ]);
        cluster.apply(POOLS);
        let url = cluster.etcd.client_url.clone();
        cluster
            .host_mut(1)
            .start_agent(&url, &[("IP", "autodetect"), ("IP6", "autodetect")], &[]);
        cluster.host_mut(2).start_agent(
            &url,
            &[],
            &["--ip", "198.19.0.2", "--ip6", "2001:db8:0:ff::2"],
        );
        cluster
            .host_mut(3)
            .start_agent(&url, &[("IP6", "autodetect"), ("AS", "64512")], &[]);
        steps.step("cluster up, agents started");

        // --- Nodes: each agent registered its own, with its fabric addresses.
        cluster.wait_nodes(PATIENCE);
        for host in &cluster.hosts {
            let bgp = node_bgp(&cluster, &host.name);
            assert_eq!(bgp["ipv4Address"], format!("{}/24", host.v4), "{bgp}");
            assert_eq!(bgp["ipv6Address"], format!("{}/64", host.v6), "{bgp}");
        }
        assert_eq!(node_bgp(&cluster, "host-3")["asNumber"], 64512);
        steps.step("Nodes registered (autodetected, given)");

        // --- Blocks: one IPv4 and one IPv6 block per host, through IPAM.
        let mut owned: Vec<(u8, Vec<IpNet>)> = Vec::new();
        for i in 1..=3 {
            let host = cluster.host(i);
            let blocks = blocks_of(&assign(&cluster, host, &format!("{}-a", host.name), &[]));
            assert_eq!(blocks.len(), 2, "{blocks:?}");
            owned.push((i, blocks));
        }
        wait_all_block_routes(&cluster, &owned);
        for i in 1..=3 {
            wait_sessions(&cluster, i, &peers_of(&cluster, i, &[]));
        }
        let status = cluster.host(1).node_status();
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(status.status.success(), "{text}");
        assert!(
            text.starts_with("Calico process is running.\n\nIPv4 BGP status\n"),
            "{text}"
        );
        assert!(
            text.contains("| 198.19.0.2   | node-to-node mesh | up "),
            "{text}"
        );
        assert!(text.contains("\nIPv6 BGP status\n"), "{text}");
        // Each agent's route map knows where the others' blocks live: their node, and the
        // node's address as next hop, from IPAM and the Nodes (not from BIRD).
        for (i, _) in &owned {
            let host = cluster.host(*i);
            for (j, blocks) in owned.iter().filter(|(j, _)| j != i) {
                let owner = cluster.host(*j);
                for block in blocks {
                    let next_hop = match block {
                        IpNet::V4(_) => owner.v4.to_string(),
                        IpNet::V6(_) => owner.v6.to_string(),
                    };
                    let prefix = block.to_string();
                    wait_for(
                        &format!(
                            "{}'s route map to lead {prefix} to {} via {next_hop}",
                            host.name, owner.name
                        ),
                        PATIENCE,
                        || {
                            host.agent().dump("routes").as_array().is_some_and(|rows| {
                                rows.iter().any(|r| {
                                    r["prefix"] == prefix.as_str()
                                        && r["kind"] == "remote-workload"
                                        && r["node"] == owner.name.as_str()
                                        && r["next_hop"] == next_hop.as_str()
                                })
                            })
                        },
                    );
                }
            }
        }
        steps.step("blocks routed, v4 and v6; every session established");

        // --- A workload on host-3 with addresses borrowed from host-1's blocks: BIRD learns
        // the routes host-3's agent writes for it, and host-3 announces them one by one.
        let (block4, block6) = (owned[0].1[0], owned[0].1[1]);
        let v4 = nth(block4, 10);
        let v6 = nth(block6, 10);
        for ip in [v4, v6] {
            assign(
                &cluster,
                cluster.host(3),
                "wl-borrowed",
                &["--ip", &ip.to_string()],
            );
        }
        let (IpAddr::V4(wl4), IpAddr::V6(wl6)) = (v4, v6) else {
            panic!("block families");
        };
        let workload = cluster.host_mut(3).add_workload(1, wl4, wl6);
        let (wl_ifname, wl_yaml) = (
            workload.host_ifname.clone(),
            workload.endpoint_yaml("host-3"),
        );
        cluster.apply(&format!("{ALLOW_ALL}---\n{wl_yaml}"));
        let borrowed = [IpNet::from(v4), IpNet::from(v6)];
        for ip in [v4, v6] {
            wait_for(
                &format!("host-3's route to its workload's {ip}"),
                PATIENCE,
                || {
                    cluster
                        .host(3)
                        .routes_to(&IpNet::from(ip).to_string())
                        .contains(&format!("dev {wl_ifname} proto 81"))
                },
            );
        }
        for i in 1..=2 {
            for net in borrowed {
                let via = match net {
                    IpNet::V4(_) => IpAddr::V4(cluster.host(3).v4),
                    IpNet::V6(_) => IpAddr::V6(cluster.host(3).v6),
                };
                wait_block_route(&cluster, cluster.host(i), net, Some(via));
            }
        }
        steps.step("addresses borrowed by a workload on host-3 routed to it");

        // --- Full mesh through the programs: a workload on each host with addresses of its
        // own blocks reaches every other, and the programs forward the traffic by the routes
        // BIRD installed; the hosts' kernels forward none of it.
        let mut mesh: Vec<(u8, String)> = Vec::new();
        let mut endpoints = String::new();
        for i in 1..=3 {
            let (block4, block6) = (
                owned[usize::from(i - 1)].1[0],
                owned[usize::from(i - 1)].1[1],
            );
            let (IpAddr::V4(v4), IpAddr::V6(v6)) = (nth(block4, 20), nth(block6, 20)) else {
                panic!("block families");
            };
            let handle = format!("wl-mesh-{i}");
            for ip in [v4.to_string(), v6.to_string()] {
                assign(&cluster, cluster.host(i), &handle, &["--ip", &ip]);
            }
            let host = cluster.host_mut(i);
            let workload = host.add_workload(MESH_WORKLOAD, v4, v6);
            endpoints.push_str(&format!(
                "---\n{}",
                workload.endpoint_yaml(&format!("host-{i}"))
            ));
            mesh.push((i, workload.host_ifname.clone()));
        }
        cluster.apply(&endpoints);
        let mesh_workload = |i: u8| mesh_workload_of(&cluster, i);
        for (i, ifname) in &mesh {
            let host = cluster.host(*i);
            let agent = host.agent();
            agent.wait_attached(&[ifname]);
            wait_for(
                &format!("{}'s data interface program", host.name),
                PATIENCE,
                || agent.data_interface_attached("eth0"),
            );
            // The other hosts' workloads are remote workloads in this host's route map.
            for (j, _) in mesh.iter().filter(|(j, _)| j != i) {
                let other = mesh_workload(*j);
                for prefix in [format!("{}/32", other.v4), format!("{}/128", other.v6)] {
                    wait_for(
                        &format!("{}'s route map to hold {prefix}", host.name),
                        PATIENCE,
                        || {
                            agent.dump("routes").as_array().is_some_and(|rows| {
                                rows.iter().any(|r| {
                                    r["prefix"] == prefix.as_str() && r["kind"] == "remote-workload"
                                })
                            })
                        },
                    );
                }
            }
        }
        let pairs: Vec<(u8, u8)> = (1..=3)
            .flat_map(|i| (1..=3).filter(move |j| *j != i).map(move |j| (i, j)))
            .collect();
        let destinations = |j: u8| {
            let w = mesh_workload(j);
            [IpAddr::V4(w.v4), IpAddr::V6(w.v6)]
        };
        // The first packets may meet cold neighbour entries, which the kernel resolves (and
        // forwards those packets itself); warm them up first.
        for (i, j) in &pairs {
            for dst in destinations(*j) {
                assert!(
                    mesh_workload(*i).ping(dst),
                    "warm-up ping host-{i} -> {dst} failed; routes:\n{}{}\n{}",
                    cluster.host(*i).bird_routes(),
                    cluster.host(*i).ip(&["-6", "route"]),
                    cluster.logs()
                );
            }
        }
        let mesh_counters = |(i, ifname): &(u8, String)| {
            let c = cluster.host(*i).agent().counters(ifname);
            (
                c["forwarded_remote_packets"].as_u64().unwrap_or(0),
                c["from_data_interface_packets"].as_u64().unwrap_or(0),
            )
        };
        let kernel_before: Vec<(u64, u64)> =
            cluster.hosts.iter().map(Host::kernel_forwarded).collect();
        let counters_before: Vec<(u64, u64)> = mesh.iter().map(mesh_counters).collect();
        for (i, j) in &pairs {
            let (from, to) = (mesh_workload(*i), mesh_workload(*j));
            for dst in destinations(*j) {
                assert!(from.ping(dst), "ping host-{i} -> {dst}");
                let echoed = tcp_echo(from, to, dst, "across the mesh")
                    .unwrap_or_else(|e| panic!("TCP host-{i} -> {dst}: {e}\n{}", cluster.logs()));
                assert_eq!(echoed, "across the mesh");
            }
        }
        let kernel_after: Vec<(u64, u64)> =
            cluster.hosts.iter().map(Host::kernel_forwarded).collect();
        assert_eq!(
            kernel_after, kernel_before,
            "the hosts' kernels forwarded none of it ((IPv4, IPv6) per host)"
        );
        for (entry, (forwarded, delivered)) in mesh.iter().zip(counters_before) {
            let (i, ifname) = entry;
            let (forwarded_now, delivered_now) = mesh_counters(entry);
            // Per other host and family: 2 echo requests and 2 replies, and a TCP exchange
            // each way.
            let least = 2 * 2 * 4;
            assert!(
                forwarded_now >= forwarded + least && delivered_now >= delivered + least,
                "host-{i}'s workload: forwarded to other hosts {forwarded} -> {forwarded_now}, \
                 from the data interface {delivered} -> {delivered_now}, in BPF: {}",
                cluster.host(*i).agent().counters(ifname)
            );
        }
        steps.step("full mesh: every workload reaches every other through the programs");

        // --- A block claimed later spreads without a restart: 64 more addresses fill
        // host-2's IPv4 block and claim another.
        let more = assign(
            &cluster,
            cluster.host(2),
            "host-2-b",
            &["--ipv4", "64", "--ipv6", "0"],
        );
        let new_blocks: Vec<IpNet> = blocks_of(&more)
            .into_iter()
            .filter(|b| !owned[1].1.contains(b))
            .collect();
        assert_eq!(new_blocks.len(), 1, "{more}");
        owned[1].1.extend(new_blocks.iter().copied());
        wait_all_block_routes(&cluster, &owned);
        steps.step("a new block reached every host");

        // --- The agent killed (SIGKILL) and started again adopts the running BIRD: same
        // process, sessions never reset, the other hosts' routes in place throughout.
        let h2_blocks = owned[1].1.clone();
        let bird_pid = cluster.host(2).bird_pid().expect("host-2's BIRD runs");
        let since_before: Vec<Vec<String>> = cluster.host(2).status_rows();
        // A user's ping from host-1's workload to host-2's, over both families, runs
        // throughout the restart.
        let pingers: Vec<Pinger> = {
            let to = mesh_workload(2);
            [IpAddr::V4(to.v4), IpAddr::V6(to.v6)]
                .into_iter()
                .map(|dst| mesh_workload(1).ping_continuously(dst))
                .collect()
        };
        cluster.host_mut(2).agent.take().expect("agent").forget();
        let down = Instant::now();
        keeps_routes_until(&cluster, &h2_blocks, "host-2's agent is down", || {
            down.elapsed() > Duration::from_secs(3)
        });
        cluster.host_mut(2).start_agent(
            &url,
            &[],
            &["--ip", "198.19.0.2", "--ip6", "2001:db8:0:ff::2"],
        );
        keeps_routes_until(&cluster, &h2_blocks, "host-2's agent restarts", || {
            cluster.host(2).log().contains("BIRD adopted")
        });
        thread::sleep(Duration::from_secs(2));
        for pinger in pingers {
            let (sent, received, text) = pinger.finish();
            assert!(sent >= 30, "the ping ran through the restart: {text}");
            assert_eq!(
                received, sent,
                "no ping lost while the agent restarted: {text}"
            );
        }
        assert_eq!(
            cluster.host(2).bird_pid(),
            Some(bird_pid),
            "{}",
            cluster.host(2).log()
        );
        // The new agent follows the datastore: a block claimed now reaches the others.
        let more = assign(
            &cluster,
            cluster.host(2),
            "host-2-c",
            &["--ipv4", "0", "--ipv6", "64"],
        );
        let new_blocks: Vec<IpNet> = blocks_of(&more)
            .into_iter()
            .filter(|b| !owned[1].1.contains(b))
            .collect();
        assert_eq!(new_blocks.len(), 1, "{more}");
        owned[1].1.extend(new_blocks.iter().copied());
        wait_all_block_routes(&cluster, &owned);
        let since_after = cluster.host(2).status_rows();
        assert_eq!(
            since_before, since_after,
            "the sessions were not reset by the agent's restart"
        );
        assert!(
            !cluster.host(2).log().contains("BIRD started"),
            "{}",
            cluster.host(2).log()
        );
        steps.step("agent killed and restarted: BIRD adopted, routes kept");

        // --- BIRD killed: the agent starts it again with graceful restart; the others keep
        // host-2's routes meanwhile.
        // Traffic between host-2's workload and host-3's keeps flowing throughout.
        let mesh_workload = |i: u8| mesh_workload_of(&cluster, i);
        let pingers: Vec<Pinger> = {
            let to = mesh_workload(2);
            [IpAddr::V4(to.v4), IpAddr::V6(to.v6)]
                .into_iter()
                .map(|dst| mesh_workload(3).ping_continuously(dst))
                .collect()
        };
        thread::sleep(Duration::from_millis(500));
        // SAFETY: a signal to the BIRD this test's cluster runs.
        assert_eq!(unsafe { libc::kill(bird_pid as i32, libc::SIGKILL) }, 0);
        let peers = peers_of(&cluster, 2, &[]);
        keeps_routes_until(&cluster, &h2_blocks, "host-2's BIRD restarts", || {
            cluster
                .host(2)
                .bird_pid()
                .is_some_and(|pid| pid != bird_pid)
                && cluster.host(2).sessions_established(&peers)
        });
        wait_log(cluster.host(2), "BIRD exited; starting it again");
        wait_all_block_routes(&cluster, &owned);
        for pinger in pingers {
            let (sent, received, text) = pinger.finish();
            assert!(sent >= 20, "the ping ran through BIRD's restart: {text}");
            assert_eq!(received, sent, "no ping lost while BIRD restarted: {text}");
        }
        steps.step("BIRD killed: started again, routes kept");

        // --- Bad input leaves the last good configuration in force.
        let configs: Vec<String> = cluster.hosts.iter().map(bird_conf).collect();
        // A BGPPeer etcd holds with an address the datastore refuses.
        cluster.etcd.put(
            "/calico/resources/v3/projectcalico.org/bgppeers/bad-address",
            r#"{"apiVersion":"projectcalico.org/v3","kind":"BGPPeer","metadata":{"name":"bad-address"},"spec":{"peerIP":"198.19.0.300","asNumber":65001}}"#,
        );
        wait_log(cluster.host(1), "invalid peer address \"198.19.0.300\"");
        // A BGPPeer whose password cannot be read: the configuration is not built.
        cluster.apply(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\n\
             spec: {peerIP: 198.19.0.200, asNumber: 65001, password: {file: /nonexistent/calico-test-tor}}\n",
        );
        for host in &cluster.hosts {
            wait_log(
                host,
                "BGP configuration not built: BGPPeer tor: spec.password",
            );
        }
        let now: Vec<String> = cluster.hosts.iter().map(bird_conf).collect();
        assert_eq!(configs, now, "a bad BGPPeer changed a BIRD configuration");
        for i in 1..=3 {
            assert!(
                cluster
                    .host(i)
                    .sessions_established(&peers_of(&cluster, i, &[])),
                "host-{i}'s sessions"
            );
        }
        // Fixed, it is put in force: every host has the global peer.
        cluster.apply(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\n\
             spec: {peerIP: 198.19.0.200, asNumber: 65001}\n",
        );
        for host in &cluster.hosts {
            wait_for(
                &format!("{} to peer with the tor", host.name),
                PATIENCE,
                || {
                    host.status_rows().iter().any(|r| {
                        r.first().map(String::as_str) == Some("198.19.0.200")
                            && r.get(1).map(String::as_str) == Some("global")
                    })
                },
            );
        }
        cluster.loader(&["delete", "bgppeer", "tor"], None);
        cluster
            .etcd
            .del("/calico/resources/v3/projectcalico.org/bgppeers/bad-address");
        for i in 1..=3 {
            wait_sessions(&cluster, i, &peers_of(&cluster, i, &[]));
        }
        steps.step("bad BGPPeers refused, the last good configuration kept");

        // --- host-3 removed from the cluster: its Node deleted, as Calico removes a node.
        // The others drop their sessions with it and withdraw its routes; its agent, without
        // a Node, stops its BIRD and removes the routes it had installed.
        cluster.loader(&["delete", "node", "host-3"], None);
        for i in 1..=2 {
            wait_sessions(&cluster, i, &peers_of(&cluster, i, &[3]));
            for block in owned[2].1.iter().chain(&borrowed) {
                wait_for(
                    &format!("host-{i} to withdraw host-3's {block}"),
                    PATIENCE,
                    || cluster.host(i).routes_to(&block.to_string()).is_empty(),
                );
            }
        }
        let host3 = cluster.host(3);
        wait_log(host3, "BGP is off: this node (host-3) has no Node resource");
        wait_for("host-3's BIRD to stop", PATIENCE, || {
            host3.bird_pid().is_none()
        });
        wait_for(
            "host-3 to remove the routes BIRD installed",
            PATIENCE,
            || host3.bird_routes().is_empty(),
        );
        steps.step("host-3 removed: its routes withdrawn");

        // Each agent still serves: nothing above stopped one.
        for host in &cluster.hosts {
            host.agent().assert_running();
        }
        if std::env::var_os("DUMP_LOGS").is_some() {
            for host in &cluster.hosts {
                eprintln!("=== {}\n{}", host.name, host.log());
            }
        }
    }

    /// The top-of-rack router's AS, and the cluster's (the default).
    const TOR_AS: u32 = 65001;
    const CLUSTER_AS: u32 = 64512;

    /// Global BGPPeers: every host peers over eBGP with the ToR, one session per family, with
    /// `next_hop_mode` if given.
    fn tor_peers(tor: &Tor, next_hop_mode: Option<&str>) -> String {
        let mode = next_hop_mode
            .map(|m| format!(", nextHopMode: {m}"))
            .unwrap_or_default();
        format!(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: tor-v4}}\n\
             spec: {{peerIP: {}, asNumber: {TOR_AS}{mode}}}\n---\n\
             apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: tor-v6}}\n\
             spec: {{peerIP: '{}', asNumber: {TOR_AS}{mode}}}\n",
            tor.v4, tor.v6
        )
    }

    /// Route reflection as Calico's docs set it up: the mesh off, and every node peering with
    /// the nodes labelled as reflectors (which peer back with every node).
    const ROUTE_REFLECTION: &str = "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\n\
        metadata: {name: default}\nspec: {nodeToNodeMeshEnabled: false}\n---\n\
        apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: peer-with-route-reflectors}\n\
        spec: {nodeSelector: all(), peerSelector: route-reflector == 'true'}\n";

    /// Waits until `node status` on host `i` lists exactly `expected` (peer address, peer
    /// type), each session established.
    fn wait_peer_types(cluster: &Cluster, i: u8, expected: &[(IpAddr, &str)]) {
        let host = cluster.host(i);
        let mut want: Vec<(String, String)> = expected
            .iter()
            .map(|(ip, kind)| (ip.to_string(), (*kind).to_owned()))
            .collect();
        want.sort();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let rows = host.status_rows();
            let mut have: Vec<(String, String)> = rows
                .iter()
                .filter(|r| r.get(4).is_some_and(|info| info.starts_with("Established")))
                .filter_map(|r| Some((r.first()?.clone(), r.get(1)?.clone())))
                .collect();
            have.sort();
            if have == want && rows.len() == want.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: expected the sessions {want:?}, established; node status:\n{}\n{}",
                host.name,
                String::from_utf8_lossy(&host.node_status().stdout),
                cluster.logs()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until what the ToR holds for each host's blocks passes `ok` (given the owner's
    /// fabric address of the block's family, and every host's); fails saying `expected`.
    fn wait_tor_routes(
        cluster: &Cluster,
        tor: &Tor,
        owned: &[(u8, Vec<IpNet>)],
        expected: &str,
        ok: impl Fn(IpAddr, &[IpAddr], &RibEntry) -> bool,
    ) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let rib: Vec<RibEntry> = tor.rib("ipv4").into_iter().chain(tor.rib("ipv6")).collect();
            let mut wrong = Vec::new();
            for (owner, blocks) in owned {
                let owner = cluster.host(*owner);
                for block in blocks {
                    let (owner_address, hosts): (IpAddr, Vec<IpAddr>) = match block {
                        IpNet::V4(_) => (
                            owner.v4.into(),
                            cluster.hosts.iter().map(|h| h.v4.into()).collect(),
                        ),
                        IpNet::V6(_) => (
                            owner.v6.into(),
                            cluster.hosts.iter().map(|h| h.v6.into()).collect(),
                        ),
                    };
                    let prefix = block.to_string();
                    let entry = rib.iter().find(|e| e.prefix == prefix);
                    if !entry.is_some_and(|e| ok(owner_address, &hosts, e)) {
                        wrong.push(format!("{block} of {}: {entry:?}", owner.name));
                    }
                }
            }
            if wrong.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the ToR's routes to the blocks: expected {expected}; not so for:\n{}\n\
                 its RIB:\n{}{}\n{}",
                wrong.join("\n"),
                tor.gobgp(&["global", "rib", "-a", "ipv4"]),
                tor.gobgp(&["global", "rib", "-a", "ipv6"]),
                cluster.logs()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every host sent the block over its eBGP session, from the cluster's AS.
    fn from_every_host(hosts: &[IpAddr], entry: &RibEntry) -> bool {
        entry.paths.len() == hosts.len()
            && hosts.iter().all(|h| {
                entry
                    .paths
                    .iter()
                    .any(|p| p.neighbor == Some(*h) && p.as_path == [CLUSTER_AS])
            })
    }

    /// Every path GoBGP holds for the block, and so its best one, leads to the owner.
    fn to_the_owner(owner: IpAddr, hosts: &[IpAddr], entry: &RibEntry) -> bool {
        from_every_host(hosts, entry)
            && entry.paths.iter().all(|p| p.next_hop == owner)
            && entry.best().is_some_and(|p| p.next_hop == owner)
    }

    /// Pings `dst` from host `i`'s workload until replies come back (routes may still be
    /// settling), failing after 10 s with the routes of the way.
    fn assert_ping(cluster: &Cluster, i: u8, dst: IpAddr, tor: &Tor) {
        let host = cluster.host(i);
        let workload = &host.workloads[0];
        let deadline = Instant::now() + Duration::from_secs(10);
        while !workload.ping(dst) {
            let family = if dst.is_ipv4() { "-4" } else { "-6" };
            assert!(
                Instant::now() < deadline,
                "ping from {}'s workload ({}) to {dst} failed; the hosts' routes:\n{}\
                 the ToR's routes:\n{}\n{}",
                host.name,
                if dst.is_ipv4() {
                    IpAddr::V4(workload.v4)
                } else {
                    IpAddr::V6(workload.v6)
                },
                cluster
                    .hosts
                    .iter()
                    .map(|h| format!("{}:\n{}", h.name, h.ip(&[family, "route"])))
                    .collect::<String>(),
                String::from_utf8_lossy(&tor.ns.exec(&["ip", family, "route"]).stdout),
                cluster.logs()
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Routers around the cluster. First a top-of-rack router (GoBGP, an independent
    /// speaker, eBGP through a global BGPPeer) beside the mesh: it learns every block with
    /// its owner as next hop, and the prefixes it originates reach the hosts' kernels and let
    /// workloads reach the network behind it. Then route reflection (the mesh off, host-1 the
    /// reflector, as Calico's docs set it up): the hosts route to each other's blocks through
    /// the reflector's sessions, and workloads reach each other across hosts. Traffic leaving
    /// a host goes through its kernel, by the routes BIRD installed.
    #[test]
    fn a_tor_router_and_route_reflection_carry_the_routes() {
        require_root();
        let mut steps = Steps::new();
        let mut cluster = Cluster::new(3);
        let neighbors: Vec<IpAddr> = cluster
            .hosts
            .iter()
            .flat_map(|h| [IpAddr::V4(h.v4), IpAddr::V6(h.v6)])
            .collect();
        let tor = Tor::start(&cluster, TOR_AS, &neighbors, CLUSTER_AS);
        let (tor4, tor6) = (IpAddr::V4(tor.v4), IpAddr::V6(tor.v6));
        for host in &cluster.hosts {
            host.enable_forwarding();
        }
        cluster.apply(&format!(
            "{POOLS}---\n{ALLOW_ALL}---\n{}",
            tor_peers(&tor, None)
        ));
        let url = cluster.etcd.client_url.clone();
        for i in 1..=3 {
            let host = cluster.host_mut(i);
            let (v4, v6) = (host.v4.to_string(), host.v6.to_string());
            host.start_agent(&url, &[], &["--ip", &v4, "--ip6", &v6]);
        }
        cluster.wait_nodes(PATIENCE);
        // Each host claims an IPv4 and an IPv6 block, and runs a workload with its first
        // addresses.
        let mut owned: Vec<(u8, Vec<IpNet>)> = Vec::new();
        for i in 1..=3 {
            let assigned = assign(&cluster, cluster.host(i), &format!("wl-host-{i}"), &[]);
            let addresses: Vec<IpAddr> = assigned
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            let (Some(IpAddr::V4(v4)), Some(IpAddr::V6(v6))) = (
                addresses.iter().find(|a| a.is_ipv4()).copied(),
                addresses.iter().find(|a| a.is_ipv6()).copied(),
            ) else {
                panic!("ipam assign gave no IPv4 and IPv6 address: {assigned}");
            };
            owned.push((i, blocks_of(&assigned)));
            let host = cluster.host_mut(i);
            let yaml = host
                .add_workload(i, v4, v6)
                .endpoint_yaml(&format!("host-{i}"));
            cluster.apply(&yaml);
        }
        for host in &cluster.hosts {
            host.agent()
                .wait_attached(&[&host.workloads[0].host_ifname]);
        }
        steps.step("cluster, ToR and agents up; a block and a workload on each host");

        // --- The ToR, beside the node-to-node mesh.
        for i in 1..=3 {
            let mut expected: Vec<(IpAddr, &str)> = peers_of(&cluster, i, &[])
                .into_iter()
                .map(|peer| (peer, "node-to-node mesh"))
                .collect();
            expected.extend([(tor4, "global"), (tor6, "global")]);
            wait_peer_types(&cluster, i, &expected);
        }
        // Each host announces its blocks with itself as the next hop, and passes on those it
        // learned over the mesh with itself as the next hop too (BIRD's default for an eBGP
        // session, as in Calico): GoBGP may pick any host's path.
        wait_tor_routes(
            &cluster,
            &tor,
            &owned,
            "every host announcing every block, itself the next hop",
            |owner, hosts, entry| {
                from_every_host(hosts, entry)
                    && hosts.iter().all(|h| {
                        entry
                            .paths
                            .iter()
                            .any(|p| p.neighbor == Some(*h) && p.next_hop == *h)
                    })
                    && entry.paths.iter().any(|p| p.next_hop == owner)
            },
        );
        steps.step("the ToR peers with every host; each announces every block");
        // `nextHopMode: Keep` passes the owner's address on: every path leads to the owner.
        cluster.apply(&tor_peers(&tor, Some("Keep")));
        wait_tor_routes(
            &cluster,
            &tor,
            &owned,
            "every path's next hop the block's owner",
            to_the_owner,
        );
        steps.step("nextHopMode Keep: the ToR routes every block to its owner");
        for host in &cluster.hosts {
            for (prefix, via) in [(EXTERNAL_NET_V4, tor4), (EXTERNAL_NET_V6, tor6)] {
                wait_for(
                    &format!("{} to route {prefix} via the ToR", host.name),
                    PATIENCE,
                    || {
                        let routes = host.routes_to(prefix);
                        routes.contains(&format!("via {via} dev eth0"))
                            && routes.contains("proto bird")
                    },
                );
            }
        }
        let learned = tor.install_learned_routes();
        assert_eq!(learned.len(), 6, "the ToR learned: {learned:?}");
        for i in 1..=3 {
            for dst in [IpAddr::V4(EXTERNAL_V4), IpAddr::V6(EXTERNAL_V6)] {
                assert_ping(&cluster, i, dst, &tor);
            }
        }
        steps.step("the ToR's prefixes reach every host; workloads reach the network behind it");

        // --- Route reflection: the mesh off, host-1 the reflector.
        let json = cluster.loader(&["get", "node", "host-1", "-o", "json"], None);
        let mut node: serde_json::Value = serde_json::from_str(&json).expect("node JSON");
        node["metadata"]["labels"]["route-reflector"] = "true".into();
        node["spec"]["bgp"]["routeReflectorClusterID"] = "244.0.0.1".into();
        cluster.apply(&node.to_string());
        cluster.apply(ROUTE_REFLECTION);
        let (h1, h2, h3) = (cluster.host(1), cluster.host(2), cluster.host(3));
        wait_peer_types(
            &cluster,
            1,
            &[
                (IpAddr::V4(h2.v4), "node specific"),
                (IpAddr::V6(h2.v6), "node specific"),
                (IpAddr::V4(h3.v4), "node specific"),
                (IpAddr::V6(h3.v6), "node specific"),
                (tor4, "global"),
                (tor6, "global"),
            ],
        );
        for i in 2..=3 {
            wait_peer_types(
                &cluster,
                i,
                &[
                    (IpAddr::V4(h1.v4), "node specific"),
                    (IpAddr::V6(h1.v6), "node specific"),
                    (tor4, "global"),
                    (tor6, "global"),
                ],
            );
        }
        wait_all_block_routes(&cluster, &owned);
        // The clients learn each other's blocks from the reflector, which passed them on
        // unchanged but for the reflection attributes.
        for (client, other) in [(2, 3), (3, 2)] {
            for block in &owned[usize::from(other - 1)].1 {
                let route = cluster.host(client).birdc(&[
                    "show",
                    "route",
                    "for",
                    &block.to_string(),
                    "all",
                ]);
                let protocol = match block {
                    IpNet::V4(_) => "Node_198_19_0_1 ",
                    IpNet::V6(_) => "Node_2001_db8_0_ff__1 ",
                };
                for expected in [
                    protocol,
                    &format!("BGP.originator_id: {}", cluster.host(other).v4),
                    "BGP.cluster_list: 244.0.0.1",
                ] {
                    assert!(
                        route.contains(expected),
                        "host-{client}'s route to {block} lacks {expected:?}:\n{route}"
                    );
                }
            }
        }
        steps.step("route reflection: sessions with the reflector, every block routed");
        for (from, to) in [(2, 3), (3, 1), (1, 2)] {
            let workload = &cluster.host(to).workloads[0];
            for dst in [IpAddr::V4(workload.v4), IpAddr::V6(workload.v6)] {
                assert_ping(&cluster, from, dst, &tor);
            }
        }
        wait_tor_routes(
            &cluster,
            &tor,
            &owned,
            "every path's next hop the block's owner",
            to_the_owner,
        );
        steps.step("workloads reach each other across hosts; the ToR still has every block");
        for host in &cluster.hosts {
            host.agent().assert_running();
        }
        if std::env::var_os("DUMP_LOGS").is_some() {
            for host in &cluster.hosts {
                eprintln!("=== {}\n{}", host.name, host.log());
            }
            eprintln!("=== gobgpd\n{}", tor.log());
        }
    }

    /// One host on the local directory datastore: without an address BGP stays off (said
    /// once); with one, BIRD runs, and blocks `ipam assign` claims in the directory become its
    /// blackholes without a restart.
    #[test]
    fn local_datastore_blocks_reach_bird() {
        require_root();
        let topology = Topology::new(0);
        topology.host.exec(&[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ]);
        topology.host.exec(&["ip", "link", "set", "eth0", "up"]);
        topology
            .host
            .exec(&["ip", "addr", "add", "198.19.0.1/24", "dev", "eth0"]);
        let datastore = Datastore::new();
        datastore.write(
            "pools.yaml",
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool-v4}\n\
             spec: {cidr: 198.18.0.0/16}\n",
        );
        let ipam = |args: &[&str]| {
            let output = std::process::Command::new(loader_bin())
                .arg("ipam")
                .args(args)
                .arg("--datastore")
                .arg(datastore.path())
                .output()
                .expect("run ipam");
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            blocks_of(&String::from_utf8_lossy(&output.stdout))
        };

        // No address: BGP off, one line saying why; the agent serves on.
        let agent = Agent::start(&topology, &datastore, "host-1", &["--ip", "none"]);
        wait_for("BGP off to be logged", PATIENCE, || {
            agent.log().contains("BGP is off")
        });
        thread::sleep(Duration::from_secs(3));
        let log = agent.log();
        assert_eq!(
            log.matches("BGP is off").count(),
            1,
            "said once, across resyncs:\n{log}"
        );
        assert!(
            log.contains("Node host-1 has no IPv4 address (spec.bgp.ipv4Address)"),
            "{log}"
        );
        assert!(!agent.run_dir.join("bird.ctl").exists());
        agent.assert_running();
        drop(agent);

        // With an address: BIRD runs, and IPAM's blocks become its blackholes.
        let agent = Agent::start(&topology, &datastore, "host-1", &["--ip", "198.19.0.1"]);
        wait_for("BGP on", PATIENCE, || agent.log().contains("BGP is on"));
        let first = ipam(&["assign", "--node", "host-1", "--handle", "a"]);
        let second = ipam(&[
            "assign", "--node", "host-1", "--handle", "b", "--ipv4", "64",
        ]);
        let mut blocks = first;
        blocks.extend(second);
        blocks.sort();
        blocks.dedup();
        assert_eq!(blocks.len(), 2, "{blocks:?}");
        for block in &blocks {
            let prefix = block.to_string();
            wait_for(&format!("a blackhole for {prefix}"), PATIENCE, || {
                let routes = String::from_utf8_lossy(
                    &topology
                        .host
                        .exec(&["ip", "route", "show", "exact", &prefix])
                        .stdout,
                )
                .into_owned();
                routes.contains("blackhole") && routes.contains("proto bird")
            });
        }
        let status = std::process::Command::new(loader_bin())
            .args(["node", "status", "--run-dir"])
            .arg(&agent.run_dir)
            .output()
            .expect("node status");
        assert_eq!(
            String::from_utf8_lossy(&status.stdout),
            "Calico process is running.\n\nIPv4 BGP status\nNo IPv4 peers found.\n\n\
             IPv6 BGP status\nNo IPv6 peers found.\n\n"
        );
        let bird_pid = std::fs::read_to_string(agent.run_dir.join("bird.pid")).expect("pid");
        let run_dir = agent.run_dir.clone();
        drop(agent);
        // Dropping the guard ran `calico-loader cleanup`: BIRD is gone, and so are its routes.
        assert!(
            !process_runs(bird_pid.trim()),
            "BIRD still runs after cleanup"
        );
        let routes = String::from_utf8_lossy(
            &topology
                .host
                .exec(&["ip", "route", "show", "proto", "bird"])
                .stdout,
        )
        .into_owned();
        assert_eq!(routes, "", "routes left after cleanup");
        let status = std::process::Command::new(loader_bin())
            .args(["node", "status", "--run-dir"])
            .arg(&run_dir)
            .output()
            .expect("node status");
        assert!(!status.status.success());
    }
}
