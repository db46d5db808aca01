//! Drop events with a running agent: real packets from real workloads, dropped by the attached
//! programs for several reasons, read by `calico-loader events` as a user runs it. Nothing is
//! built while nobody listens; a flood is held to the rate limit in the kernel, with what was
//! suppressed counted and reported; a killed listener's lease runs out by itself.

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{
        io::{BufRead as _, BufReader, Read as _},
        net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
        process::{Child, Command, Stdio},
        sync::mpsc::{Receiver, channel},
        thread,
        time::{Duration, Instant},
    };

    use calico_loader::{
        dataplane::{bpffs::PinLayout, conntrack::monotonic_ns},
        events::{LEASE, pinned_registration, pinned_stats},
    };
    use serde_json::Value;

    use crate::support::{
        http::{self, sample},
        topology::*,
    };

    const NODE: &str = "test-node";
    const METRICS: &str = "127.0.0.1:9091";
    /// An address wl1 takes without owning it: its packets from it are spoofed.
    const SPOOFED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 99);

    /// A tier whose policy keeps TCP 5402 away from wl2 and passes the rest on; a default-tier
    /// policy that keeps wl1 from sending UDP to 5999.
    const POLICIES: &str = "\
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 10}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.no-5402}
spec:
  tier: security
  selector: app == 'wl2'
  types: [Ingress]
  ingress:
  - {action: Deny, protocol: TCP, destination: {ports: [5402]}}
  - {action: Pass}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: no-udp-5999, namespace: test}
spec:
  selector: app == 'wl1'
  types: [Egress]
  egress:
  - {action: Allow, protocol: TCP}
  - {action: Deny, protocol: UDP, destination: {ports: [5999]}}
  - {action: Allow}
";

    /// Two workloads, the policies, and the agent (with metrics on 127.0.0.1 of the host
    /// namespace); wl1 also holds an address it does not own.
    fn setup() -> (Topology, Datastore, Agent) {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let mut yaml = String::new();
        for w in &topology.workloads {
            yaml.push_str("---\n");
            yaml.push_str(&w.endpoint_yaml(NODE));
        }
        datastore.write("endpoints.yaml", &yaml);
        datastore.write("policies.yaml", POLICIES);
        let agent = Agent::start(
            &topology,
            &datastore,
            NODE,
            &[
                "--networking-backend",
                "none",
                "--prometheus-metrics-enabled",
                "--prometheus-metrics-host",
                "127.0.0.1",
            ],
        );
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        agent.wait_attached(&[&wl1.host_ifname, &wl2.host_ifname]);
        let spoofed = format!("{SPOOFED}/32");
        wl1.ns.exec(&["ip", "addr", "add", &spoofed, "dev", "eth0"]);
        // The gateway resolved, so that no packet waits for ARP (and is lost there).
        assert!(wl1.ping(wl2.v4.into()), "wl1 reaches wl2");
        (topology, datastore, agent)
    }

    /// A UDP socket in wl1's namespace, sending from the address it does not own.
    fn spoofing_socket(wl1: &Workload) -> UdpSocket {
        wl1.ns.enter(|| {
            UdpSocket::bind(SocketAddr::from((SPOOFED, 0))).expect("bind the spoofed source")
        })
    }

    /// The spoofed-source drops counted against `ifname`.
    fn spoofed_drops(agent: &Agent, ifname: &str) -> u64 {
        agent.counters(ifname)["drops"]["spoofed-source"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Every drop of the host, all endpoints and reasons.
    fn all_drops(agent: &Agent) -> u64 {
        agent
            .dump("counters")
            .as_array()
            .map(|rows| {
                rows.iter()
                    .filter_map(|row| row["drops"].as_object())
                    .flat_map(|drops| drops.values().filter_map(Value::as_u64))
                    .sum()
            })
            .unwrap_or(0)
    }

    /// `calico-loader events ARGS` against the agent's pins, its output read line by line; killed
    /// on drop.
    struct Events {
        child: Option<Child>,
        lines: Receiver<String>,
        stderr: std::sync::mpsc::Receiver<String>,
    }

    impl Events {
        fn start(agent: &Agent, args: &[&str]) -> Self {
            let mut child = Command::new(loader_bin())
                .arg("events")
                .args(args)
                .arg("--pin-path")
                .arg(&agent.pin_path)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start calico-loader events");
            let (tx, lines) = channel();
            let stdout = child.stdout.take().expect("stdout");
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let (tx, stderr) = channel();
            let mut err = child.stderr.take().expect("stderr");
            thread::spawn(move || {
                let mut text = String::new();
                let _ = err.read_to_string(&mut text);
                let _ = tx.send(text);
            });
            Self {
                child: Some(child),
                lines,
                stderr,
            }
        }

        fn pid(&self) -> u32 {
            self.child.as_ref().expect("running").id()
        }

        /// Waits until the programs see this listener's lease.
        fn wait_registered(&self, agent: &Agent) {
            let layout = PinLayout::new(&agent.pin_path);
            let pid = self.pid();
            wait_for(
                "the events command to register",
                Duration::from_secs(10),
                || {
                    pinned_registration(&layout)
                        .is_ok_and(|c| c.listening(monotonic_ns()) && c.listener_pid == pid)
                },
            );
        }

        /// The next line within `timeout`.
        fn next_line(&self, timeout: Duration) -> Option<String> {
            self.lines.recv_timeout(timeout).ok()
        }

        /// Sends `signal`, waits for the exit and returns its status, the remaining lines and
        /// stderr.
        fn finish(&mut self, signal: i32) -> (std::process::ExitStatus, Vec<String>, String) {
            let mut child = self.child.take().expect("running");
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, signal) };
            let status = child.wait().expect("wait for events");
            let mut rest = Vec::new();
            while let Some(line) = self.next_line(Duration::from_secs(2)) {
                rest.push(line);
            }
            let stderr = self
                .stderr
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_default();
            (status, rest, stderr)
        }
    }

    impl Drop for Events {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn json(line: &str) -> Value {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }

    /// Collects drop records until `done` holds for the collected set, or panics after 15 s.
    fn collect_until(events: &Events, mut done: impl FnMut(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut records = Vec::new();
        while !done(&records) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = events.next_line(left) else {
                panic!("no more events after {records:#?}");
            };
            let record = json(&line);
            if record["type"] == "drop" {
                records.push(record);
            }
        }
        records
    }

    /// `GET /metrics` of the agent in `ns`.
    fn scrape(ns: &Netns) -> String {
        http::scrape(ns, METRICS)
    }

    #[test]
    fn drops_are_reported_with_their_endpoint_reason_and_rule_only_while_someone_listens() {
        let (topology, _datastore, agent) = setup();
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        let layout = PinLayout::new(&agent.pin_path);
        let spoofing = spoofing_socket(wl1);
        let wl2_udp = SocketAddr::from((wl2.v4, 5999));

        // Nobody listens: the drops are counted, and not one event is built.
        let before = spoofed_drops(&agent, &wl1.host_ifname);
        let seen = pinned_stats(&layout).expect("drop event statistics").seen;
        for _ in 0..5 {
            spoofing.send_to(b"x", wl2_udp).expect("send");
        }
        wait_for("the spoofed drops counted", Duration::from_secs(15), || {
            spoofed_drops(&agent, &wl1.host_ifname) >= before + 5
        });
        assert_eq!(
            pinned_stats(&layout).expect("statistics").seen,
            seen,
            "drops seen by the event path without a listener"
        );
        let metrics = scrape(&topology.host);
        let counted = sample(&metrics, "calico_ebpf_drops{reason=\"spoofed-source\"}");
        assert_eq!(
            counted,
            Some((before + 5) as f64),
            "the host's drops by reason, without a listener:\n{metrics}"
        );

        // A listener: each kind of drop shows up, in Calico's words.
        let mut events = Events::start(&agent, &["-o", "json", "--follow"]);
        events.wait_registered(&agent);
        let second = Command::new(loader_bin())
            .args(["events", "--duration", "1", "--pin-path"])
            .arg(&agent.pin_path)
            .output()
            .expect("run a second events");
        let refusal = String::from_utf8_lossy(&second.stderr);
        assert!(
            !second.status.success()
                && refusal.contains(&format!("another listener (pid {})", events.pid())),
            "a second listener: {refusal}"
        );
        spoofing.send_to(b"x", wl2_udp).expect("send spoofed");
        let tcp = SocketAddr::from((wl2.v4, 5402));
        let _ = wl1
            .ns
            .enter(move || TcpStream::connect_timeout(&tcp, Duration::from_millis(500)));
        let udp = wl1.ns.enter(|| UdpSocket::bind("0.0.0.0:0").expect("bind"));
        udp.send_to(b"x", wl2_udp).expect("send UDP to 5999");
        let reasons = |records: &[Value], what: &str| {
            records
                .iter()
                .filter(|r| match what {
                    "spoofed" => r["reason"] == "spoofed-source",
                    "ingress" => r["reason"] == "policy-denied" && r["direction"] == "ingress",
                    _ => r["reason"] == "policy-denied" && r["direction"] == "egress",
                })
                .cloned()
                .collect::<Vec<_>>()
        };
        let records = collect_until(&events, |records| {
            ["spoofed", "ingress", "egress"]
                .iter()
                .all(|what| !reasons(records, what).is_empty())
        });
        let wl1_name = format!("test/{NODE}-cni-wl1-eth0");
        let wl2_name = format!("test/{NODE}-cni-wl2-eth0");

        let spoofed = &reasons(&records, "spoofed")[0];
        assert_eq!(spoofed["endpoint"], wl1_name.as_str(), "{spoofed}");
        assert_eq!(spoofed["interface"], wl1.host_ifname.as_str());
        assert_eq!(spoofed["direction"], "egress");
        assert_eq!(spoofed["protocol"], "udp");
        assert_eq!(spoofed["src"], SPOOFED.to_string());
        assert_eq!(spoofed["dst"], wl2.v4.to_string());
        assert_eq!(spoofed["dport"], 5999);
        assert_eq!(spoofed["rule"], Value::Null);
        assert!(
            spoofed["time"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{spoofed}"
        );

        let ingress = &reasons(&records, "ingress")[0];
        assert_eq!(ingress["endpoint"], wl2_name.as_str(), "{ingress}");
        assert_eq!(ingress["interface"], wl2.host_ifname.as_str());
        assert_eq!(ingress["protocol"], "tcp");
        assert_eq!(ingress["src"], wl1.v4.to_string());
        assert_eq!(ingress["dst"], wl2.v4.to_string());
        assert_eq!(ingress["dport"], 5402);
        assert_eq!(ingress["tier"], "security");
        assert_eq!(ingress["policy"], "GlobalNetworkPolicy:security.no-5402");
        assert_eq!(ingress["rule"], 0);
        assert_eq!(ingress["denied_by"]["action"], "Deny");

        let egress = &reasons(&records, "egress")[0];
        assert_eq!(egress["endpoint"], wl1_name.as_str(), "{egress}");
        assert_eq!(egress["protocol"], "udp");
        assert_eq!(egress["dport"], 5999);
        assert_eq!(egress["tier"], "default");
        assert_eq!(egress["policy"], "NetworkPolicy:test/no-udp-5999");
        assert_eq!(egress["rule"], 1);

        // Stopped, it clears its lease at once and says what it saw.
        let (status, rest, stderr) = events.finish(libc::SIGTERM);
        assert!(status.success(), "events exited with {status}: {stderr}");
        let summary = json(rest.last().expect("a summary line"));
        assert_eq!(summary["type"], "summary", "{rest:?}");
        assert!(summary["shown"].as_u64() >= Some(3), "{summary}");
        assert_eq!(
            pinned_registration(&layout)
                .expect("control")
                .lease_until_ns,
            0,
            "the lease is cleared on exit"
        );

        // Killed, it cannot clear its lease; the lease runs out and the programs stop.
        let mut killed = Events::start(&agent, &["-o", "json", "--follow"]);
        killed.wait_registered(&agent);
        killed.finish(libc::SIGKILL);
        let lease = pinned_registration(&layout)
            .expect("control")
            .lease_until_ns;
        assert!(
            lease > monotonic_ns(),
            "the killed listener's lease is left"
        );
        assert!(lease <= monotonic_ns() + LEASE.as_nanos() as u64);
        wait_for(
            "the killed listener's lease to run out",
            LEASE + Duration::from_secs(2),
            || monotonic_ns() > lease,
        );
        let seen = pinned_stats(&layout).expect("statistics").seen;
        let before = spoofed_drops(&agent, &wl1.host_ifname);
        for _ in 0..5 {
            spoofing.send_to(b"x", wl2_udp).expect("send");
        }
        wait_for("the drops counted", Duration::from_secs(15), || {
            spoofed_drops(&agent, &wl1.host_ifname) >= before + 5
        });
        assert_eq!(
            pinned_stats(&layout).expect("statistics").seen,
            seen,
            "drops seen after the lease ran out"
        );

        // The next listener takes over; a line per drop for people, ended by --count.
        let table = Events::start(&agent, &["--count", "1"]);
        table.wait_registered(&agent);
        spoofing.send_to(b"x", wl2_udp).expect("send");
        let line = table
            .next_line(Duration::from_secs(10))
            .expect("a line for the drop");
        for part in [
            "egress",
            "spoofed-source",
            &format!("{wl1_name} ({})", wl1.host_ifname),
            &format!("udp {SPOOFED}:"),
            &format!("-> {}:5999", wl2.v4),
        ] {
            assert!(line.contains(part), "{part:?} not in {line:?}");
        }
        let summary = table
            .next_line(Duration::from_secs(10))
            .expect("a summary line");
        assert!(summary.starts_with("-- "), "{summary}");
    }

    #[test]
    fn a_flood_is_held_to_the_rate_limit_in_the_kernel_and_what_was_suppressed_is_counted() {
        const RATE: u64 = 5;
        const FLOOD: u64 = 20_000;
        let (topology, _datastore, agent) = setup();
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        let spoofing = spoofing_socket(wl1);
        let wl2_udp = SocketAddr::from((wl2.v4, 5999));
        let cpus = aya::util::nr_cpus().expect("CPUs") as u64;

        // Every drop of the host around the listener's life (the workloads' own traffic may
        // add a few of other kinds, such as the host's multicast listener reports).
        let all_before = all_drops(&agent);
        let mut events = Events::start(
            &agent,
            &["-o", "json", "--follow", "--rate", "5", "--burst", "5"],
        );
        events.wait_registered(&agent);
        let started = Instant::now();
        let before = spoofed_drops(&agent, &wl1.host_ifname);
        for _ in 0..FLOOD {
            spoofing.send_to(b"x", wl2_udp).expect("send");
        }
        wait_for("the flood counted", Duration::from_secs(10), || {
            spoofed_drops(&agent, &wl1.host_ifname) >= before + FLOOD
        });
        let dropped = spoofed_drops(&agent, &wl1.host_ifname) - before;
        // Until the listener's next renewal, which reports what was suppressed so far.
        let mut lines: Vec<String> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !lines.iter().any(|l| json(l)["type"] == "summary") {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = events
                .next_line(left)
                .unwrap_or_else(|| panic!("no summary line while the command ran: {lines:?}"));
            lines.push(line);
        }
        let (status, rest, stderr) = events.finish(libc::SIGTERM);
        lines.extend(rest);
        let elapsed = started.elapsed();
        let all_dropped = all_drops(&agent) - all_before;
        assert!(status.success(), "events exited with {status}: {stderr}");
        let records: Vec<Value> = lines.iter().map(|l| json(l)).collect();
        let shown = records.iter().filter(|r| r["type"] == "drop").count() as u64;
        let summary = records.last().expect("a summary line");
        assert_eq!(summary["type"], "summary", "{lines:?}");

        // Each CPU: a burst of 5, then 5 a second.
        let limit = cpus * (RATE + RATE * elapsed.as_secs_f64().ceil() as u64);
        assert!(
            shown <= limit,
            "{shown} events in {elapsed:?} on {cpus} CPUs, above {limit}"
        );
        assert!(shown >= 1, "no event at all");
        let field = |name: &str| summary[name].as_u64().expect(name);
        assert_eq!(field("shown"), shown);
        assert_eq!(field("submitted"), shown, "{summary}");
        assert!(
            (dropped..=all_dropped).contains(&field("seen")),
            "every drop of the flood ({dropped}) seen, and no more than the host dropped \
             ({all_dropped}): {summary}"
        );
        assert_eq!(
            field("seen"),
            field("submitted") + field("rate_limited") + field("sampled_out") + field("ring_full"),
            "{summary}"
        );
        assert!(field("rate_limited") >= dropped - limit, "{summary}");
        // The flood's suppressed count was reported while it ran, not only at the end.
        assert!(
            records.iter().filter(|r| r["type"] == "summary").count() >= 2,
            "{lines:?}"
        );

        let metrics = scrape(&topology.host);
        let limited = sample(
            &metrics,
            "calico_ebpf_drop_events{outcome=\"rate_limited\"}",
        )
        .unwrap_or(0.0);
        assert!(
            limited >= field("rate_limited") as f64,
            "calico_ebpf_drop_events:\n{metrics}"
        );
    }
}
