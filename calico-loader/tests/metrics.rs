//! Metrics and health with a running agent: its `/metrics` counts the endpoints it serves, the
//! drops and the rule hits of real traffic; `/readiness` waits for the datastore; and a real
//! Prometheus server scrapes it. Everything listens on 127.0.0.1 of the test's host namespace.

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{
        net::IpAddr,
        path::PathBuf,
        process::{Child, Command, Stdio},
        time::Duration,
    };

    use crate::support::{
        etcd::Etcd,
        http::{get, sample},
        topology::*,
    };

    const NODE: &str = "test-node";
    const METRICS: &str = "127.0.0.1:9091";
    const HEALTH: &str = "127.0.0.1:9099";

    /// The agent's flags for metrics and health on 127.0.0.1 of its namespace.
    const MONITORING: [&str; 10] = [
        "--prometheus-metrics-enabled",
        "--prometheus-metrics-host",
        "127.0.0.1",
        "--prometheus-metrics-port",
        "9091",
        "--health-enabled",
        "--health-host",
        "127.0.0.1",
        "--health-port",
        "9099",
    ];

    /// Denies all ingress to every workload, then lets anyone ping wl2.
    const POLICIES: &str = "\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: isolate}
spec: {selector: all(), types: [Ingress]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: ping-wl2, namespace: test}
spec:
  order: 10
  selector: app == 'wl2'
  ingress:
  - {action: Deny, protocol: TCP, destination: {ports: [5402]}}
  - {action: Allow, protocol: ICMP, icmp: {type: 8}}
";

    fn scrape(agent: &Agent, ns: &Netns) -> String {
        let (code, body) = get(ns, METRICS, "/metrics")
            .unwrap_or_else(|| panic!("no answer on {METRICS}; log:\n{}", agent.log()));
        assert_eq!(code, 200, "{body}");
        body
    }

    /// The sum of the samples of `name` whose labels contain every one of `labels`.
    fn sum_of(text: &str, name: &str, labels: &[&str]) -> f64 {
        text.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(name)?.strip_prefix('{')?;
                let (series_labels, value) = rest.split_once("} ")?;
                labels
                    .iter()
                    .all(|l| series_labels.split(',').any(|s| s == *l))
                    .then(|| value.trim().parse::<f64>().ok())?
            })
            .sum()
    }

    #[test]
    fn metrics_count_endpoints_drops_and_rule_hits() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let mut yaml = String::new();
        for w in &topology.workloads {
            yaml.push_str("---\n");
            yaml.push_str(&w.endpoint_yaml(NODE));
        }
        datastore.write("endpoints.yaml", &yaml);
        datastore.write("policies.yaml", POLICIES);
        let mut args = MONITORING.to_vec();
        args.extend(["--networking-backend", "none"]);
        let agent = Agent::start(&topology, &datastore, NODE, &args);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        agent.wait_attached(&[&wl1.host_ifname, &wl2.host_ifname]);
        let host = &topology.host;

        wait_for("readiness", Duration::from_secs(20), || {
            get(host, HEALTH, "/readiness").is_some_and(|(code, _)| code == 200)
        });
        assert_eq!(get(host, HEALTH, "/liveness").map(|r| r.0), Some(200));

        let text = scrape(&agent, host);
        for (series, value) in [
            ("felix_active_local_endpoints", 2.0),
            ("felix_resync_state", 3.0),
            ("felix_resyncs_started", 1.0),
            ("felix_int_dataplane_failures", 0.0),
            ("felix_bpf_dataplane_endpoints", 2.0),
            // Each workload has an IPv4 /32 and an IPv6 /128 routed to its interface.
            ("felix_route_table_num_routes{table=\"IPv4:254\"}", 2.0),
            ("felix_route_table_num_routes{table=\"IPv6:254\"}", 2.0),
        ] {
            assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
        }
        assert!(
            sample(&text, "felix_active_local_policies").is_some_and(|v| v >= 1.0),
            "felix_active_local_policies in:\n{text}"
        );
        assert!(
            sample(&text, "felix_int_dataplane_apply_time_seconds_count").is_some_and(|v| v >= 1.0),
            "{text}"
        );
        // The conntrack cleaner runs once at start, and its time is observed.
        assert!(
            sample(&text, "felix_bpf_conntrack_cleaner_seconds_count").is_some_and(|v| v >= 1.0),
            "{text}"
        );
        for line in [
            "# TYPE felix_int_dataplane_apply_time_seconds summary",
            "# TYPE felix_resyncs_started counter",
            "# TYPE felix_bpf_conntrack_used gauge",
            "# TYPE felix_bpf_conntrack_cleaner_seconds summary",
            "# TYPE felix_route_table_num_routes gauge",
            "# TYPE process_resident_memory_bytes gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(
            text.contains("felix_int_dataplane_apply_time_seconds{quantile=\"0.99\"}"),
            "{text}"
        );

        // wl2 pings wl1: the isolating policy drops it on wl1's interface. wl1 pings wl2: the
        // ping rule (index 1 of ping-wl2) allows it.
        let wl1_drops = |text: &str| {
            sum_of(
                text,
                "calico_ebpf_endpoint_drops",
                &[
                    &format!("interface=\"{}\"", wl1.host_ifname),
                    "reason=\"policy-denied\"",
                ],
            )
        };
        let ping_hits = |text: &str| {
            sum_of(
                text,
                "calico_ebpf_rule_hits",
                &[
                    "policy=\"NetworkPolicy:test/ping-wl2\"",
                    "index=\"1\"",
                    "action=\"Allow\"",
                ],
            )
        };
        let (drops_before, hits_before) = (wl1_drops(&text), ping_hits(&text));
        assert!(!wl2.ping(IpAddr::V4(wl1.v4)), "wl2 -> wl1 must be denied");
        assert!(wl1.ping(IpAddr::V4(wl2.v4)), "wl1 -> wl2 must be allowed");
        let text = scrape(&agent, host);
        assert!(
            wl1_drops(&text) > drops_before,
            "wl1's policy drops rise ({drops_before} before):\n{text}"
        );
        assert!(
            ping_hits(&text) > hits_before,
            "the ping rule's hits rise ({hits_before} before):\n{text}"
        );
        assert!(
            sum_of(
                &text,
                "calico_ebpf_endpoint_packets",
                &[
                    &format!("interface=\"{}\"", wl2.host_ifname),
                    "path=\"to_workload\""
                ]
            ) >= 1.0,
            "{text}"
        );

        // A real Prometheus scrapes it.
        let prometheus = Prometheus::start(host, METRICS);
        wait_for(
            "Prometheus to have scraped felix_active_local_endpoints",
            Duration::from_secs(60),
            || {
                prometheus
                    .query(host, "felix_active_local_endpoints")
                    .as_deref()
                    == Some("2")
            },
        );
        assert_eq!(
            prometheus.query(host, "felix_resync_state").as_deref(),
            Some("3")
        );
        assert!(
            prometheus
                .query(
                    host,
                    "felix_int_dataplane_apply_time_seconds{quantile=\"0.5\"}"
                )
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v >= 0.0),
            "the apply time summary as Prometheus read it"
        );
        let query = format!(
            "calico_ebpf_endpoint_drops{{interface=\"{}\",reason=\"policy-denied\"}}",
            wl1.host_ifname
        );
        assert!(
            prometheus
                .query(host, &query)
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v >= 1.0),
            "{query} as Prometheus read it"
        );
    }

    #[test]
    fn readiness_waits_for_the_datastore() {
        let topology = Topology::new(1);
        let mut etcd = Etcd::start_in(Some(&topology.host.path()));
        let url = etcd.client_url.clone();
        etcd.kill();
        let mut args = vec![
            "--datastore-type",
            "etcdv3",
            "--etcd-endpoints",
            &url,
            "--networking-backend",
            "none",
        ];
        args.extend(MONITORING);
        let run_dir = tempfile::tempdir().expect("run dir");
        let agent = Agent::spawn(
            &topology.host.path(),
            NODE,
            PathBuf::from("/sys/fs/bpf").join(unique("calico-test-")),
            run_dir.path().join("calico"),
            &args,
            &[],
        );
        let host = &topology.host;
        wait_for("the health endpoint", Duration::from_secs(20), || {
            agent.assert_running();
            get(host, HEALTH, "/liveness").is_some_and(|(code, _)| code == 200)
        });
        // etcd is down: not ready, and it stays so.
        std::thread::sleep(Duration::from_secs(3));
        let (code, body) = get(host, HEALTH, "/readiness").expect("readiness answers");
        assert_eq!(code, 503, "not ready while etcd is unreachable: {body}");
        assert!(body.contains("datastore: live=true ready=false"), "{body}");
        let text = scrape(&agent, host);
        assert_eq!(sample(&text, "felix_resync_state"), Some(2.0), "{text}");

        etcd.restart();
        wait_for("readiness once etcd is up", Duration::from_secs(30), || {
            get(host, HEALTH, "/readiness").is_some_and(|(code, _)| code == 200)
        });
        let text = scrape(&agent, host);
        assert_eq!(sample(&text, "felix_resync_state"), Some(3.0), "{text}");
    }

    /// A Prometheus server in a namespace, scraping one target every second, with its data in a
    /// temporary directory; killed on drop.
    struct Prometheus {
        child: Child,
        address: String,
        _dir: tempfile::TempDir,
    }

    impl Prometheus {
        const ADDRESS: &str = "127.0.0.1:9090";

        fn start(ns: &Netns, target: &str) -> Self {
            let dir = tempfile::tempdir().expect("Prometheus temp dir");
            let config = dir.path().join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                     scrape_configs:\n\
                     - job_name: calico-ebpf\n  \
                       static_configs: [{{targets: ['{target}']}}]\n"
                ),
            )
            .expect("write the Prometheus config");
            let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
            let child = Command::new("nsenter")
                .arg(format!("--net={}", ns.path().display()))
                .arg("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={}", Self::ADDRESS))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start prometheus (Debian package `prometheus`): {e}")
                });
            Self {
                child,
                address: Self::ADDRESS.to_owned(),
                _dir: dir,
            }
        }

        /// The value of the instant query `query`'s first series, as Prometheus gives it.
        fn query(&self, ns: &Netns, query: &str) -> Option<String> {
            let encoded: String = query
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let (code, body) = get(ns, &self.address, &format!("/api/v1/query?query={encoded}"))?;
            if code != 200 {
                return None;
            }
            let json: serde_json::Value = serde_json::from_str(&body).ok()?;
            json["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned)
        }
    }

    impl Drop for Prometheus {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
