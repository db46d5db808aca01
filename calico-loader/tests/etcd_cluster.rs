//! A three-member etcd cluster (real etcd processes on 127.0.0.1 of the test's host namespace)
//! under the agent and the CLI, both given all three endpoints, while members die (SIGKILL)
//! and come back: the CLI keeps working, the agent stays in sync (a policy change made while a
//! member is down takes effect), a member that comes back catches up, and when the member the
//! agent watches through dies, it resumes its watch on another. Then the whole cluster goes
//! away and the agent is killed and started again: the dataplane it left keeps forwarding until
//! etcd is back and the new agent has read it whole. Needs root; fails without it.

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{collections::BTreeSet, net::IpAddr, process::Output, time::Duration};

    use crate::support::{etcd::EtcdCluster, health, http, topology::*};

    const NODE: &str = "test-node";

    /// The allow-all profile and the workloads' endpoints.
    fn base(topology: &Topology) -> String {
        let mut yaml = format!(
            "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {{name: {ALLOW_ALL_PROFILE}}}\n\
             spec: {{ingress: [{{action: Allow}}], egress: [{{action: Allow}}]}}\n"
        );
        for w in &topology.workloads {
            yaml.push_str("---\n");
            yaml.push_str(&w.endpoint_yaml(NODE));
        }
        yaml
    }

    /// Denies TCP from wl1 to wl2 (ingress of wl2), ahead of the allow-all profile.
    const DENY: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
        metadata: {name: deny-wl1-to-wl2}\nspec:\n  order: 10\n  selector: app == 'wl2'\n  \
        types: [Ingress]\n  ingress:\n  - {action: Deny, protocol: TCP, source: {selector: app == 'wl1'}}\n  \
        - {action: Pass}\n";

    fn tcp_works(topology: &Topology) -> bool {
        let (w1, w2) = (topology.workload(1), topology.workload(2));
        tcp_echo(w1, w2, IpAddr::V4(w2.v4), "hello\n").is_ok_and(|echo| echo == "hello\n")
    }

    /// Runs the CLI against the cluster and expects success; stdout.
    fn cli(cluster: &EtcdCluster, args: &[&str], stdin: Option<&str>) -> String {
        let out: Output = cluster.loader(args, stdin);
        assert!(
            out.status.success(),
            "calico-loader {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes and reads back a scratch profile `n` times: every command must succeed.
    fn cli_keeps_working(cluster: &EtcdCluster, round: &str, n: usize) {
        for i in 0..n {
            let yaml = format!(
                "apiVersion: projectcalico.org/v3\nkind: Profile\n\
                 metadata: {{name: scratch, labels: {{round: {round}, n: \"{i}\"}}}}\n"
            );
            cli(cluster, &["apply", "-f", "-"], Some(&yaml));
            let read = cli(cluster, &["get", "profile", "scratch", "-o", "json"], None);
            let read: serde_json::Value = serde_json::from_str(&read).expect("get -o json");
            let labels = &read["metadata"]["labels"];
            assert!(
                labels["n"] == i.to_string().as_str() && labels["round"] == round,
                "read back what was written: {read}"
            );
        }
    }

    /// The members the agent has connections to (from `ss` in the host namespace).
    fn agent_members(topology: &Topology, agent: &Agent, cluster: &EtcdCluster) -> BTreeSet<usize> {
        let pid = agent.pid().expect("the agent runs");
        let out = topology.host.exec(&["ss", "-Htnp", "state", "established"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter(|line| line.contains(&format!("pid={pid},")))
            .filter_map(|line| {
                let peer = line.split_whitespace().nth(3)?;
                let port = peer.rsplit_once(':')?.1.parse().ok()?;
                cluster.member_on_port(port)
            })
            .collect()
    }

    /// Waits until member `i` has caught up: its own copy (a serializable read, answered from
    /// its data alone) of the scratch profile is the one of `round`, `n`.
    fn wait_caught_up(cluster: &EtcdCluster, i: usize, round: &str, n: usize) {
        let key = "/calico/resources/v3/projectcalico.org/profiles/scratch";
        wait_for(
            &format!("member {i} to catch up"),
            Duration::from_secs(20),
            || {
                let out =
                    cluster.etcdctl_at(i, &["get", key, "--print-value-only", "--consistency=s"]);
                let value = String::from_utf8_lossy(&out.stdout);
                out.status.success()
                    && value.contains(&format!("\"round\":\"{round}\""))
                    && value.contains(&format!("\"n\":\"{n}\""))
            },
        );
        let members = cluster.etcdctl_at(i, &["member", "list"]);
        let text = String::from_utf8_lossy(&members.stdout);
        assert_eq!(
            text.lines().filter(|l| l.contains("started")).count(),
            3,
            "member {i} is back in a cluster of three: {text}"
        );
    }

    #[test]
    fn the_agent_and_the_cli_ride_out_etcd_member_failures() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let mut cluster = EtcdCluster::start_in(&topology.host.path());
        cli(&cluster, &["apply", "-f", "-"], Some(&base(&topology)));
        let endpoints = cluster.endpoints();
        let mut args = vec![
            "--datastore-type",
            "etcdv3",
            "--etcd-endpoints",
            &endpoints,
            "--networking-backend",
            "none",
        ];
        args.extend(health::HEALTH_FLAGS);
        let mut agent = Agent::start(&topology, &datastore, NODE, &args);
        let ifnames: Vec<&str> = topology
            .workloads
            .iter()
            .map(|w| w.host_ifname.as_str())
            .collect();
        agent.wait_attached(&ifnames);
        health::wait_ready(&topology.host, &agent, Duration::from_secs(30));
        assert!(tcp_works(&topology), "agent log:\n{}", agent.log());

        // 1. A member the agent does not use dies: the CLI keeps working, the agent follows a
        // change made meanwhile; the member comes back and catches up.
        let watched = agent_members(&topology, &agent, &cluster);
        assert_eq!(
            watched.len(),
            1,
            "the agent talks to one member: {watched:?}"
        );
        let watched = *watched.first().expect("one member");
        let other = (watched + 1) % 3;
        cluster.kill(other);
        cli_keeps_working(&cluster, "one", 5);
        cli(&cluster, &["apply", "-f", "-"], Some(DENY));
        wait_for(
            "the deny policy, written while a member is down",
            Duration::from_secs(15),
            || !tcp_works(&topology),
        );
        cluster.restart(other);
        wait_caught_up(&cluster, other, "one", 4);

        // 2. The member the agent watches through dies: the agent resumes its watch on another
        // and follows the next change; the CLI keeps working; the member comes back.
        let watched = agent_members(&topology, &agent, &cluster);
        assert_eq!(
            watched.len(),
            1,
            "the agent talks to one member: {watched:?}"
        );
        let watched = *watched.first().expect("one member");
        cluster.kill(watched);
        cli_keeps_working(&cluster, "two", 5);
        cli(
            &cluster,
            &["delete", "globalnetworkpolicy", "deny-wl1-to-wl2"],
            None,
        );
        wait_for(
            "the deny policy to go, deleted after the agent's member died",
            Duration::from_secs(15),
            || tcp_works(&topology),
        );
        let log = agent.log();
        let url = &cluster.cluster.members[watched].client_url;
        assert!(
            log.contains(&format!("etcd watch interrupted at {url}")),
            "the agent noticed its member go: {log}"
        );
        let now = agent_members(&topology, &agent, &cluster);
        assert!(
            !now.is_empty() && !now.contains(&watched),
            "the agent moved to another member: {now:?}"
        );
        cluster.restart(watched);
        wait_caught_up(&cluster, watched, "two", 4);
        agent.assert_running();

        // 3. No member at all, and the agent killed and started again: what it programmed keeps
        // forwarding while the new agent waits for etcd, which it then reads whole.
        cli(&cluster, &["apply", "-f", "-"], Some(DENY));
        wait_for("the deny policy again", Duration::from_secs(15), || {
            !tcp_works(&topology)
        });
        for i in 0..3 {
            cluster.kill(i);
        }
        let pin_path = agent.pin_path.clone();
        agent.kill();
        let restarted = Agent::start_with_pins(&topology, &datastore, NODE, pin_path, &args);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        wait_for(
            "the new agent's health endpoint",
            Duration::from_secs(20),
            || {
                restarted.assert_running();
                http::get(&topology.host, health::HEALTH, "/liveness").is_some()
            },
        );
        std::thread::sleep(Duration::from_secs(2));
        assert!(
            !health::ready(&topology.host),
            "not ready without etcd; log:\n{}",
            restarted.log()
        );
        assert!(
            wl1.ping(IpAddr::V4(wl2.v4)),
            "the programs left in place keep forwarding; log:\n{}",
            restarted.log()
        );
        assert!(
            !tcp_works(&topology),
            "and keep enforcing the last policy; log:\n{}",
            restarted.log()
        );
        cluster.restart_all();
        health::wait_ready(&topology.host, &restarted, Duration::from_secs(30));
        cli(
            &cluster,
            &["delete", "globalnetworkpolicy", "deny-wl1-to-wl2"],
            None,
        );
        wait_for(
            "a change once etcd is back",
            Duration::from_secs(15),
            || tcp_works(&topology),
        );
        drop(restarted);
        drop(agent);
    }
}
