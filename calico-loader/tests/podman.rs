//! Podman 4.3 with its CNI backend runs real containers on our network: `calico-loader cni
//! install` puts the plugin and a conflist where a private `containers.conf` points podman
//! (`network_backend = "cni"`, `runc`, cgroupfs, `default_ulimits = []`); podman runs inside a
//! test "host" namespace (`nsenter --net=`) beside the agent, with its own storage. The image
//! is a busybox-static root file system made into an image with `podman import`.
//!
//! Checked on one host: two containers reach each other through the agent's programs;
//! `podman rm -f` releases the addresses, endpoints and veths (`calico-loader ipam check` is
//! clean); 20 containers started at once get distinct addresses. Across hosts (the routing
//! tests' cluster: etcd, agents and BIRD on each host): a container on one host reaches one on
//! another.
//!
//! Only 198.18.0.0/15 and 2001:db8::/32 are used, and nothing is added to the root namespace.

mod support;

/// Every test needs root: namespaces, podman, and the agent's programs.
mod privileged {
    use std::{
        collections::BTreeSet,
        path::{Path, PathBuf},
        process::{Command, Output},
        thread,
        time::{Duration, Instant},
    };

    use serde_json::Value;
    use testbed::{Netns, privileges::which};

    use crate::support::{
        cluster::Cluster,
        topology::{Agent, loader_bin, netns, require_root, unique, wait_for},
    };

    const IMAGE: &str = "localhost/calico-ebpf-test-busybox";

    const POOL: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: podman-v4}
spec: {cidr: 198.18.4.0/24, blockSize: 28}
";

    fn output_text(output: &Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    fn require_tools() {
        require_root();
        for (program, package) in [
            ("podman", "podman"),
            ("runc", "runc"),
            ("busybox", "busybox-static"),
        ] {
            assert!(
                which(program).is_some(),
                "{program} is missing: install {package} (cargo xtask setup does)"
            );
        }
        assert!(
            Path::new("/usr/lib/cni/loopback").exists(),
            "/usr/lib/cni/loopback is missing: install containernetworking-plugins (cargo xtask setup does)"
        );
    }

    /// A private podman in a host namespace, with the plugin installed for `node` and the
    /// datastore `datastore_env` names (calicoctl's variables). Dropping it removes its
    /// containers (through the plugin's DEL) and its storage.
    struct Podman {
        host_ns: PathBuf,
        node: String,
        datastore_env: Vec<(&'static str, String)>,
        dir: tempfile::TempDir,
    }

    impl Podman {
        fn install(
            host_ns: PathBuf,
            node: &str,
            datastore_env: Vec<(&'static str, String)>,
        ) -> Self {
            let me = Self {
                host_ns,
                node: node.to_owned(),
                datastore_env,
                dir: tempfile::tempdir().expect("podman dir"),
            };
            let (bin, conf) = (me.path("cni-bin"), me.path("cni-conf"));
            me.loader(&[
                "cni",
                "install",
                "--bin-dir",
                &bin,
                "--conf-dir",
                &conf,
                "--node",
                node,
            ]);
            me.write(
                "containers.conf",
                &format!(
                    "[containers]\ndefault_ulimits = []\n\n\
                     [network]\nnetwork_backend = \"cni\"\n\
                     cni_plugin_dirs = [\"{bin}\", \"/usr/lib/cni\"]\n\
                     network_config_dir = \"{conf}\"\n\n\
                     [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\n\
                     events_logger = \"file\"\n"
                ),
            );
            me.import_busybox();
            me
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }

        fn write(&self, name: &str, text: &str) -> String {
            let path = self.path(name);
            std::fs::write(&path, text).expect("write");
            path
        }

        /// `calico-loader ARGS` in the host namespace, against the datastore; expects success.
        fn loader(&self, args: &[&str]) -> String {
            let output = Command::new("nsenter")
                .arg(format!("--net={}", self.host_ns.display()))
                .arg(loader_bin())
                .args(args)
                .envs(self.datastore_env.iter().map(|(k, v)| (k, v)))
                .env_remove("NODENAME")
                .output()
                .expect("run calico-loader");
            assert!(
                output.status.success(),
                "calico-loader {args:?}: {}",
                output_text(&output)
            );
            String::from_utf8_lossy(&output.stdout).into_owned()
        }

        /// `podman ARGS` in the host namespace, with the private configuration and storage.
        fn command(&self, args: &[&str]) -> Command {
            let mut command = Command::new("nsenter");
            command
                .arg(format!("--net={}", self.host_ns.display()))
                .arg("podman")
                .args(["--root", &self.path("storage")])
                .args(["--runroot", &self.path("run")])
                .args(["--tmpdir", &self.path("tmp")])
                .args(args)
                .env("CONTAINERS_CONF", self.path("containers.conf"))
                .env_remove("CONTAINERS_STORAGE_CONF")
                .env_remove("CONTAINER_HOST");
            command
        }

        fn podman(&self, args: &[&str]) -> String {
            let output = self.command(args).output().expect("run podman");
            assert!(
                output.status.success(),
                "podman {args:?} on {}: {}",
                self.node,
                output_text(&output)
            );
            String::from_utf8_lossy(&output.stdout).trim().to_owned()
        }

        /// A busybox-static root file system, imported as the test image.
        fn import_busybox(&self) {
            let rootfs = self.dir.path().join("rootfs");
            std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
            std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
            for applet in ["sh", "sleep", "ping", "ip", "cat"] {
                std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                    .expect("applet");
            }
            let tar = self.path("rootfs.tar");
            let status = Command::new("tar")
                .args(["-C", &rootfs.display().to_string(), "-cf", &tar, "."])
                .status()
                .expect("tar");
            assert!(status.success(), "tar failed");
            self.podman(&["import", "--quiet", &tar, IMAGE]);
        }

        /// Starts a container on the network `calico`; returns its ID.
        fn run(&self, name: &str) -> String {
            self.podman(&[
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "calico",
                IMAGE,
                "sleep",
                "600",
            ])
        }

        fn address(&self, name: &str) -> String {
            self.podman(&[
                "inspect",
                name,
                "--format",
                "{{.NetworkSettings.Networks.calico.IPAddress}}",
            ])
        }

        /// Whether `from` pings `to` (one packet).
        fn pings(&self, from: &str, to: &str) -> bool {
            self.command(&["exec", from, "ping", "-c", "1", "-W", "1", to])
                .output()
                .is_ok_and(|o| o.status.success())
        }

        fn endpoints(&self) -> Vec<Value> {
            let out = self.loader(&["get", "workloadendpoints", "-A", "-o", "json"]);
            let value: Value = serde_json::from_str(&out).expect("get -o json");
            value["items"].as_array().cloned().unwrap_or_default()
        }
    }

    impl Drop for Podman {
        fn drop(&mut self) {
            let _ = self
                .command(&["rm", "--all", "--force", "--time", "0"])
                .output();
            let _ = self.command(&["system", "reset", "--force"]).output();
        }
    }

    fn cali_links(host: &Netns) -> Vec<String> {
        let out = String::from_utf8_lossy(&host.exec(&["ip", "-o", "link"]).stdout).into_owned();
        out.lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
            .filter(|n| n.starts_with("cali"))
            .collect()
    }

    /// Everything released: no allocation, no endpoint, no veth.
    fn assert_all_released(podman: &Podman, host: &Netns) {
        let report = podman.loader(&["ipam", "check"]);
        assert!(
            report.contains("IPAM blocks record 0 allocations."),
            "{report}"
        );
        assert!(
            report.contains("Check complete; found 0 problems."),
            "{report}"
        );
        assert!(
            podman.endpoints().is_empty(),
            "endpoints left: {:?}",
            podman.endpoints()
        );
        assert!(
            cali_links(host).is_empty(),
            "veths left: {:?}",
            cali_links(host)
        );
    }

    fn tail(text: &str) -> String {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    #[test]
    fn podman_containers_on_one_host() {
        const NODE: &str = "podman-host";
        require_tools();
        let host = netns("podh");
        for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            host.exec(&["sysctl", "-qw", sysctl]);
        }
        let datastore = tempfile::tempdir().expect("datastore dir");
        let run_dir = tempfile::tempdir().expect("agent run dir");
        let agent = Agent::spawn(
            &host.path(),
            NODE,
            PathBuf::from("/sys/fs/bpf").join(unique("calico-test-")),
            run_dir.path().join("calico"),
            &[
                "--datastore",
                &datastore.path().display().to_string(),
                "--networking-backend",
                "none",
            ],
            &[],
        );
        let podman = Podman::install(
            host.path(),
            NODE,
            vec![
                ("DATASTORE_TYPE", "local".to_owned()),
                (
                    "CALICO_DATASTORE_DIR",
                    datastore.path().display().to_string(),
                ),
            ],
        );
        podman.loader(&["apply", "-f", &podman.write("pool.yaml", POOL)]);

        // Two containers reach each other through the agent's programs.
        let c1 = podman.run("c1");
        let c2 = podman.run("c2");
        let (a1, a2) = (podman.address("c1"), podman.address("c2"));
        assert!(
            a1.starts_with("198.18.4.") && a2.starts_with("198.18.4.") && a1 != a2,
            "{a1} {a2}"
        );
        let veths = [format!("cali{}", &c1[..11]), format!("cali{}", &c2[..11])];
        agent.wait_attached(&[&veths[0], &veths[1]]);
        let names: BTreeSet<String> = podman
            .endpoints()
            .iter()
            .filter_map(|e| e["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        assert!(
            names.contains(&format!("podman--host-cni-{c1}-eth0")),
            "{names:?}"
        );
        for (from, to) in [("c1", &a2), ("c2", &a1)] {
            assert!(
                podman.pings(from, to),
                "{from} does not reach {to}; agent log:\n{}",
                tail(&agent.log())
            );
        }
        let endpoints = agent.dump("endpoints").to_string();
        assert!(endpoints.contains(&veths[0]), "{endpoints}");

        // podman rm -f releases everything.
        podman.podman(&["rm", "--force", "--time", "0", "c1", "c2"]);
        assert_all_released(&podman, &host);

        // 20 containers started at once get distinct addresses.
        let names: Vec<String> = (0..20).map(|i| format!("par{i}")).collect();
        thread::scope(|scope| {
            for name in &names {
                let podman = &podman;
                scope.spawn(move || podman.run(name));
            }
        });
        let addresses: BTreeSet<String> = names.iter().map(|n| podman.address(n)).collect();
        assert_eq!(addresses.len(), 20, "distinct addresses: {addresses:?}");
        assert_eq!(podman.endpoints().len(), 20);
        let report = podman.loader(&["ipam", "check"]);
        assert!(
            report.contains("IPAM blocks record 20 allocations."),
            "{report}"
        );
        assert!(
            report.contains("Check complete; found 0 problems."),
            "{report}"
        );
        let mut args = vec!["rm", "--force", "--time", "0"];
        args.extend(names.iter().map(String::as_str));
        podman.podman(&args);
        wait_for("the veths to go", Duration::from_secs(10), || {
            cali_links(&host).is_empty()
        });
        assert_all_released(&podman, &host);
        drop(podman);
        drop(agent);
    }

    /// Two hosts of the routing tests' cluster (etcd on the fabric, an agent and BIRD on each):
    /// podman on each host puts a container on the network, and the two reach each other
    /// through the agents' programs and the routes BIRD learned for each other's blocks.
    #[test]
    fn podman_containers_across_hosts() {
        require_tools();
        let mut cluster = Cluster::new(2);
        cluster.apply(POOL);
        let url = cluster.etcd.client_url.clone();
        for i in 1..=2 {
            let host = cluster.host_mut(i);
            host.enable_forwarding();
            let (v4, v6) = (host.v4.to_string(), host.v6.to_string());
            host.start_agent(&url, &[], &["--ip", &v4, "--ip6", &v6]);
        }
        cluster.wait_nodes(Duration::from_secs(30));
        let podmans: Vec<Podman> = cluster
            .hosts
            .iter()
            .map(|h| {
                Podman::install(
                    h.ns.path(),
                    &h.name,
                    vec![
                        ("DATASTORE_TYPE", "etcdv3".to_owned()),
                        ("ETCD_ENDPOINTS", url.clone()),
                    ],
                )
            })
            .collect();
        let ids: Vec<String> = podmans.iter().map(|p| p.run("web")).collect();
        let addresses: Vec<String> = podmans.iter().map(|p| p.address("web")).collect();
        for (host, id) in cluster.hosts.iter().zip(&ids) {
            host.agent().wait_attached(&[&format!("cali{}", &id[..11])]);
        }
        for (from, to) in [(0, 1), (1, 0)] {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !podmans[from].pings("web", &addresses[to]) {
                assert!(
                    Instant::now() < deadline,
                    "host-{}'s container does not reach {} on host-{}; routes:\n{}\n{}\nlogs:\n{}",
                    from + 1,
                    addresses[to],
                    to + 1,
                    cluster.host(1).ip(&["route"]),
                    cluster.host(2).ip(&["route"]),
                    tail(&cluster.logs())
                );
                thread::sleep(Duration::from_millis(300));
            }
        }
        for podman in &podmans {
            podman.podman(&["rm", "--force", "--time", "0", "web"]);
        }
        let report = podmans[0].loader(&["ipam", "check"]);
        assert!(
            report.contains("IPAM blocks record 0 allocations."),
            "{report}"
        );
        assert!(podmans[0].endpoints().is_empty());
        drop(podmans);
        drop(cluster);
    }
}
