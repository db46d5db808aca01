//! Podman 4.3 with its CNI backend runs real containers on our network: `calico-loader cni
//! install` puts the plugin and a conflist where a private `containers.conf` points podman
//! (`network_backend = "cni"`, `runc`, cgroupfs, `default_ulimits = []`); podman runs inside a
//! test "host" namespace (`nsenter --net=`) beside the agent, with its own storage. The image
//! is a busybox-static root file system made into an image with `podman import`.
//!
//! Checked: two containers reach each other through the agent's programs; `podman rm -f`
//! releases the addresses, endpoints and veths (`calico-loader ipam check` is clean); 20
//! containers started at once get distinct addresses.
//!
//! Only 198.18.0.0/15 is used, and nothing is added to the root namespace.

mod support;

/// Every test needs root: namespaces, podman, and the agent's programs.
mod privileged {
    use std::{
        collections::BTreeSet,
        path::{Path, PathBuf},
        process::{Command, Output},
        thread,
        time::Duration,
    };

    use crate::support::topology::{Agent, loader_bin, netns, require_root, unique, wait_for};
    use serde_json::Value;
    use testbed::{Netns, privileges::which};

    const NODE: &str = "podman-host";
    const IMAGE: &str = "localhost/calico-ebpf-test-busybox";

    const POOL: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: podman-v4}
spec: {cidr: 198.18.4.0/24, blockSize: 28}
";

    /// A host namespace with the agent, a datastore directory, the plugin installed, and a
    /// private podman.
    struct Podman {
        // Dropped in this order: the agent before its namespace.
        agent: Agent,
        dir: tempfile::TempDir,
        datastore: tempfile::TempDir,
        host: Netns,
    }

    fn output_text(output: &Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    impl Podman {
        fn new() -> Self {
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
            let host = netns("podh");
            for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
                host.exec(&["sysctl", "-qw", sysctl]);
            }
            let datastore = tempfile::tempdir().expect("datastore dir");
            let dir = tempfile::tempdir().expect("podman dir");
            let me = Self {
                agent: Agent::spawn(
                    &host.path(),
                    NODE,
                    PathBuf::from("/sys/fs/bpf").join(unique("calico-test-")),
                    dir.path().join("agent-run"),
                    &[
                        "--datastore",
                        &datastore.path().display().to_string(),
                        "--networking-backend",
                        "none",
                    ],
                    &[],
                ),
                host,
                datastore,
                dir,
            };
            me.loader(&["apply", "-f", &me.write("pool.yaml", POOL)]);
            let (bin, conf) = (me.path("cni-bin"), me.path("cni-conf"));
            me.loader(&[
                "cni",
                "install",
                "--bin-dir",
                &bin,
                "--conf-dir",
                &conf,
                "--node",
                NODE,
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

        /// `calico-loader ARGS` against the datastore; expects success.
        fn loader(&self, args: &[&str]) -> String {
            let output = Command::new(loader_bin())
                .args(args)
                .env("DATASTORE_TYPE", "local")
                .env("CALICO_DATASTORE_DIR", self.datastore.path())
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
                .arg(format!("--net={}", self.host.path().display()))
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
                "podman {args:?}: {}\nagent log tail:\n{}",
                output_text(&output),
                tail(&self.agent.log())
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

        fn endpoints(&self) -> Vec<Value> {
            let out = self.loader(&["get", "workloadendpoints", "-A", "-o", "json"]);
            let value: Value = serde_json::from_str(&out).expect("get -o json");
            value["items"].as_array().cloned().unwrap_or_default()
        }

        fn cali_links(&self) -> Vec<String> {
            let out =
                String::from_utf8_lossy(&self.host.exec(&["ip", "-o", "link"]).stdout).into_owned();
            out.lines()
                .filter_map(|l| l.split(':').nth(1))
                .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
                .filter(|n| n.starts_with("cali"))
                .collect()
        }

        /// Everything released: no allocation, no endpoint, no veth.
        fn assert_all_released(&self) {
            let report = self.loader(&["ipam", "check"]);
            assert!(
                report.contains("IPAM blocks record 0 allocations."),
                "{report}"
            );
            assert!(
                report.contains("Check complete; found 0 problems."),
                "{report}"
            );
            assert!(
                self.endpoints().is_empty(),
                "endpoints left: {:?}",
                self.endpoints()
            );
            assert!(
                self.cali_links().is_empty(),
                "veths left: {:?}",
                self.cali_links()
            );
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

    fn tail(text: &str) -> String {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    #[test]
    fn podman_containers_on_the_network() {
        let podman = Podman::new();

        // Two containers reach each other through the agent's programs.
        let c1 = podman.run("c1");
        let c2 = podman.run("c2");
        let (a1, a2) = (podman.address("c1"), podman.address("c2"));
        assert!(
            a1.starts_with("198.18.4.") && a2.starts_with("198.18.4.") && a1 != a2,
            "{a1} {a2}"
        );
        let veths = [format!("cali{}", &c1[..11]), format!("cali{}", &c2[..11])];
        podman.agent.wait_attached(&[&veths[0], &veths[1]]);
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
            let out = podman.podman(&["exec", from, "ping", "-c", "2", "-W", "2", to]);
            assert!(out.contains("2 packets received"), "{from} -> {to}: {out}");
        }
        let endpoint_counters = podman.agent.dump("endpoints").to_string();
        assert!(endpoint_counters.contains(&veths[0]), "{endpoint_counters}");

        // podman rm -f releases everything.
        podman.podman(&["rm", "--force", "--time", "0", "c1", "c2"]);
        podman.assert_all_released();

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
            podman.cali_links().is_empty()
        });
        podman.assert_all_released();
    }
}
