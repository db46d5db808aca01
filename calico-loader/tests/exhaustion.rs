//! Tables that fill up, with a running agent and real traffic: a small conntrack table (new
//! flows evict the least recently used; an evicted flow's reply is judged by policy on its
//! own) and a small endpoint map (the endpoints that do not fit are reported, counted and left
//! unprogrammed, and the others work).

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{
        net::{SocketAddr, UdpSocket},
        thread,
        time::Duration,
    };

    use crate::support::{
        http::{self, sample},
        topology::*,
    };

    const NODE: &str = "test-node";
    const METRICS: &str = "127.0.0.1:9091";

    /// `GET /metrics` of the agent in `ns`.
    fn scrape(ns: &Netns) -> String {
        http::scrape(ns, METRICS)
    }

    fn drops(agent: &Agent, ifname: &str, reason: &str) -> u64 {
        agent.counters(ifname)["drops"][reason]
            .as_u64()
            .unwrap_or(0)
    }

    /// Nothing may reach wl1 unless conntrack lets it (a tier whose policy selects wl1 and
    /// allows nothing in: the tier's default action denies).
    const WL1_CLOSED: &str = "\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: wl1-closed}
spec:
  selector: app == 'wl1'
  types: [Ingress]
";

    #[test]
    fn a_full_conntrack_table_evicts_the_least_recently_used_flow_whose_reply_policy_then_judges() {
        const TABLE: usize = 16;
        const FLOWS: usize = 64;
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let mut yaml = String::new();
        for w in &topology.workloads {
            yaml.push_str("---\n");
            yaml.push_str(&w.endpoint_yaml(NODE));
        }
        datastore.write("endpoints.yaml", &yaml);
        datastore.write("policies.yaml", WL1_CLOSED);
        let size = TABLE.to_string();
        let agent = Agent::start(
            &topology,
            &datastore,
            NODE,
            &[
                "--networking-backend",
                "none",
                "--conntrack-size",
                &size,
                "--prometheus-metrics-enabled",
                "--prometheus-metrics-host",
                "127.0.0.1",
            ],
        );
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        agent.wait_attached(&[&wl1.host_ifname, &wl2.host_ifname]);
        assert!(
            wl1.ping(wl2.v4.into()),
            "wl1 reaches wl2 (and the gateway is resolved)"
        );

        // wl2 echoes UDP on 6000; wl1 opens FLOWS flows to it, one socket each.
        let server = wl2
            .ns
            .enter(|| UdpSocket::bind("0.0.0.0:6000").expect("bind the echo server"));
        let echo = server.try_clone().expect("clone the server socket");
        let flows_total = FLOWS;
        let echoer = thread::spawn(move || {
            let mut buf = [0u8; 64];
            for _ in 0..flows_total {
                let Ok((n, from)) = echo.recv_from(&mut buf) else {
                    return;
                };
                let _ = echo.send_to(&buf[..n], from);
            }
        });
        let server_address = SocketAddr::from((wl2.v4, 6000));
        let mut clients = Vec::new();
        for i in 0..FLOWS {
            let client = wl1
                .ns
                .enter(|| UdpSocket::bind("0.0.0.0:0").expect("bind a client"));
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            client.send_to(b"hello", server_address).expect("send");
            let mut buf = [0u8; 64];
            let answer = client.recv(&mut buf);
            assert!(
                answer.is_ok(),
                "flow {i}: no echo, although new flows evict the least recently used; log:\n{}",
                agent.log()
            );
            clients.push(client);
        }
        echoer.join().expect("echo thread");

        // The table never holds more than its size.
        let tracked = agent.dump("conntrack").as_array().map_or(0, Vec::len);
        assert!(
            (1..=TABLE).contains(&tracked),
            "{tracked} entries in a table of {TABLE}"
        );

        // A late reply to the first flow, long evicted, is a new flow from wl2 to wl1, which
        // wl1's policy denies; one to the last flow is still tracked and passes.
        let denied = drops(&agent, &wl1.host_ifname, "policy-denied");
        let first = clients[0].local_addr().expect("address").port();
        let last = clients[FLOWS - 1].local_addr().expect("address").port();
        server
            .send_to(b"late", SocketAddr::from((wl1.v4, first)))
            .expect("late reply to the first flow");
        server
            .send_to(b"late", SocketAddr::from((wl1.v4, last)))
            .expect("late reply to the last flow");
        let mut buf = [0u8; 64];
        assert!(
            clients[FLOWS - 1].recv(&mut buf).is_ok(),
            "the reply to the most recent flow passes on its entry"
        );
        assert!(
            clients[0].recv(&mut buf).is_err(),
            "the reply to the evicted flow passes"
        );
        wait_for(
            "the evicted flow's reply counted as denied",
            Duration::from_secs(15),
            || drops(&agent, &wl1.host_ifname, "policy-denied") > denied,
        );

        // The numbers: entries created beyond the size, none refused, the table's size, use
        // and evictions; the agent says once that the table is full.
        let metrics = scrape(&topology.host);
        let created = sample(&metrics, "calico_ebpf_conntrack_created").unwrap_or(0.0);
        assert!(created >= FLOWS as f64, "created {created}:\n{metrics}");
        assert_eq!(
            sample(&metrics, "calico_ebpf_conntrack_insert_failures"),
            Some(0.0),
            "{metrics}"
        );
        assert_eq!(
            sample(&metrics, "calico_ebpf_conntrack_max_entries"),
            Some(TABLE as f64)
        );
        assert_eq!(drops(&agent, &wl1.host_ifname, "conntrack-full"), 0);
        wait_for(
            "the agent's sweep to find the table full",
            Duration::from_secs(25),
            || agent.log().contains("the conntrack table is full"),
        );
        let metrics = scrape(&topology.host);
        let used = sample(&metrics, "felix_bpf_conntrack_used").unwrap_or(-1.0);
        assert!(
            (1.0..=TABLE as f64).contains(&used),
            "felix_bpf_conntrack_used {used}"
        );
        let evicted = sample(&metrics, "calico_ebpf_conntrack_evictions").unwrap_or(0.0);
        assert!(
            evicted >= (FLOWS - TABLE) as f64,
            "calico_ebpf_conntrack_evictions {evicted} after {FLOWS} flows in {TABLE} entries"
        );
        assert_eq!(
            agent.log().matches("the conntrack table is full").count(),
            1,
            "said once"
        );
    }

    #[test]
    fn a_full_endpoint_map_leaves_the_endpoints_beyond_it_unprogrammed_and_the_others_working() {
        let topology = Topology::new(3);
        let datastore = Datastore::new();
        let endpoints = |which: &[u8]| {
            let mut yaml = String::new();
            for i in which {
                yaml.push_str("---\n");
                yaml.push_str(&topology.workload(*i).endpoint_yaml(NODE));
            }
            yaml
        };
        datastore.write("endpoints.yaml", &endpoints(&[1, 2, 3]));
        let agent = Agent::start(
            &topology,
            &datastore,
            NODE,
            &[
                "--networking-backend",
                "none",
                "--endpoint-map-size",
                "2",
                "--prometheus-metrics-enabled",
                "--prometheus-metrics-host",
                "127.0.0.1",
            ],
        );
        let (wl1, wl2, wl3) = (
            topology.workload(1),
            topology.workload(2),
            topology.workload(3),
        );
        agent.wait_attached(&[&wl1.host_ifname, &wl2.host_ifname]);
        let report = format!(
            "endpoint test/{NODE}-cni-wl3-eth0 (interface {}): not programmed, the endpoint map \
             is full (2 entries",
            wl3.host_ifname
        );
        wait_for(
            "the left-out endpoint reported",
            Duration::from_secs(10),
            || agent.log().contains(&report),
        );

        // The two that fit work; the third's traffic is dropped, both ways.
        assert!(wl1.ping(wl2.v4.into()), "wl1 reaches wl2");
        assert!(
            !wl3.ping(wl1.v4.into()),
            "wl3 is not programmed, yet reaches wl1"
        );
        assert!(!wl1.ping(wl3.v4.into()), "wl1 reaches the unprogrammed wl3");
        assert!(!agent.attached(&wl3.host_ifname));
        let metrics = scrape(&topology.host);
        assert_eq!(
            sample(&metrics, "calico_ebpf_endpoint_map_overflow"),
            Some(1.0),
            "{metrics}"
        );
        assert_eq!(
            sample(&metrics, "calico_ebpf_endpoint_map_max_entries"),
            Some(2.0)
        );
        assert_eq!(
            sample(&metrics, "felix_int_dataplane_failures"),
            Some(0.0),
            "the applies themselves succeed"
        );
        // Resyncs (every 2 s here) do not repeat it.
        thread::sleep(Duration::from_secs(5));
        assert_eq!(agent.log().matches(&report).count(), 1, "reported once");

        // When an endpoint goes, the one left out takes its place.
        datastore.write("endpoints.yaml", &endpoints(&[1, 3]));
        agent.wait_attached(&[&wl1.host_ifname, &wl3.host_ifname]);
        assert!(wl3.ping(wl1.v4.into()), "wl3 reaches wl1 once programmed");
        let metrics = scrape(&topology.host);
        assert_eq!(
            sample(&metrics, "calico_ebpf_endpoint_map_overflow"),
            Some(0.0)
        );
        assert!(
            !agent.log().contains("programming the dataplane failed"),
            "{}",
            agent.log()
        );
    }
}
