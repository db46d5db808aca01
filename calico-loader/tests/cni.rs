//! The CNI plugin against the spec, run as a container runtime runs it: `calico-loader cni
//! install` puts `calico` and `calico-ipam` in a directory and writes a conflist; each call is
//! the plugin started with the `CNI_*` variables (and nothing else from the test's
//! environment, so the datastore comes from the conflist) and the network configuration on
//! stdin, inside a test "host" namespace; containers are namespaces the test creates. The
//! datastore is a local directory or a real etcd running inside the host namespace.
//!
//! Outside the namespaces, and without root: the etcd TLS settings from `cni install` reach the
//! plugin (STATUS).
//!
//! Only 198.18.0.0/15 and 2001:db8::/32 are used, and nothing is added to the root namespace.

mod support;

/// Every test needs root: namespaces and veths.
mod privileged {
    use std::{
        net::IpAddr,
        path::{Path, PathBuf},
        process::{Command, Output},
        thread,
    };

    use crate::support::{
        cli::{Backend, run_with_stdin},
        etcd::Etcd,
        topology::{netns, require_root},
    };
    use serde_json::{Value, json};
    use testbed::Netns;

    const NODE: &str = "node-a";
    const NETWORK: &str = "calico";

    const POOLS: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: cni-v4}
spec: {cidr: 198.18.0.0/24, blockSize: 28}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: cni-v6}
spec: {cidr: '2001:db8:c::/112', blockSize: 122}
";

    /// A container ID (64 hex-like characters) whose first 11 characters differ for each `i`.
    fn container_id(i: u32) -> String {
        format!("c{i:05}{}", "0123456789abcdef".repeat(4))[..64].to_owned()
    }

    /// A host namespace, a datastore, and the plugin installed for them.
    struct Cni {
        host: Netns,
        backend: Backend,
        bin: tempfile::TempDir,
        conflist: Value,
    }

    /// What one plugin call printed, and how it exited.
    struct Call {
        output: Output,
    }

    impl Call {
        fn ok(&self) -> bool {
            self.output.status.success()
        }

        fn stdout(&self) -> String {
            String::from_utf8_lossy(&self.output.stdout).into_owned()
        }

        fn json(&self) -> Value {
            serde_json::from_str(&self.stdout()).unwrap_or_else(|e| {
                panic!(
                    "not JSON ({e}): {}\nstderr: {}",
                    self.stdout(),
                    String::from_utf8_lossy(&self.output.stderr)
                )
            })
        }

        /// Expects success; the result printed, if any.
        fn expect_ok(&self, what: &str) -> Option<Value> {
            assert!(
                self.ok(),
                "{what} failed: {}\nstderr: {}",
                self.stdout(),
                String::from_utf8_lossy(&self.output.stderr)
            );
            (!self.stdout().trim().is_empty()).then(|| self.json())
        }

        /// Expects the spec's error JSON with `code`; returns its message.
        fn expect_error(&self, what: &str, code: u64) -> String {
            assert!(!self.ok(), "{what} should have failed: {}", self.stdout());
            let error = self.json();
            assert_eq!(error["code"], code, "{what}: {error}");
            assert!(error["cniVersion"].is_string(), "{what}: {error}");
            error["msg"].as_str().unwrap_or_default().to_owned()
        }
    }

    impl Cni {
        /// The plugin installed with `cni install` for `backend` (etcd runs inside the host
        /// namespace), and the pools applied.
        fn new(backend: impl FnOnce(&Netns) -> Backend, ipv6: bool) -> Self {
            require_root();
            let host = netns("cnih");
            for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
                host.exec(&["sysctl", "-qw", sysctl]);
            }
            // Proxy ARP answers for 169.254.1.1 only if the host has a route to it: give the test
            // host a default route, as a real host has.
            host.exec(&[
                "ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink1",
            ]);
            host.exec(&["ip", "link", "set", "uplink0", "up"]);
            host.exec(&["ip", "link", "set", "uplink1", "up"]);
            host.exec(&["ip", "route", "add", "default", "dev", "uplink0"]);
            let backend = backend(&host);
            let bin = tempfile::tempdir().expect("bin dir");
            let conf = tempfile::tempdir().expect("conf dir");
            let (bin_dir, conf_dir) = (path_str(bin.path()), path_str(conf.path()));
            let mut args = vec![
                "cni",
                "install",
                "--bin-dir",
                &bin_dir,
                "--conf-dir",
                &conf_dir,
                "--node",
                NODE,
            ];
            if ipv6 {
                args.push("--ipv6");
            }
            let out = backend.ok(&args, None);
            assert!(out.contains("calico-ipam"), "{out}");
            let text = std::fs::read_to_string(conf.path().join("10-calico.conflist"))
                .expect("the conflist");
            let conflist: Value = serde_json::from_str(&text).expect("conflist JSON");
            assert_eq!(conflist["name"], NETWORK);
            assert_eq!(conflist["cniVersion"], "1.0.0");
            backend.ok(&["apply", "-f", "-"], Some(POOLS));
            Self {
                host,
                backend,
                bin,
                conflist,
            }
        }

        /// The configuration a runtime passes for the conflist's plugin: the entry, with the
        /// network's name and version.
        fn config(&self) -> Value {
            let mut entry = self.conflist["plugins"][0].clone();
            entry["name"] = self.conflist["name"].clone();
            entry["cniVersion"] = self.conflist["cniVersion"].clone();
            entry
        }

        /// Runs `plugin` with `CNI_COMMAND=verb`, the variables `env`, and `stdin`, in the host
        /// namespace.
        fn call_with(&self, plugin: &str, verb: &str, env: &[(&str, String)], stdin: &str) -> Call {
            let mut command = Command::new("nsenter");
            command
                .arg(format!("--net={}", self.host.path().display()))
                .arg(self.bin.path().join(plugin))
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("CNI_COMMAND", verb)
                .env("CNI_PATH", self.bin.path());
            for (k, v) in env {
                command.env(k, v);
            }
            Call {
                output: run_with_stdin(command, Some(stdin)),
            }
        }

        /// ADD, DEL or CHECK of `id`'s `eth0` in `netns`, with `config`.
        fn attach_call(
            &self,
            plugin: &str,
            verb: &str,
            id: &str,
            netns: Option<&Path>,
            config: &Value,
        ) -> Call {
            let mut env = vec![
                ("CNI_CONTAINERID", id.to_owned()),
                ("CNI_IFNAME", "eth0".to_owned()),
                (
                    "CNI_ARGS",
                    format!("IgnoreUnknown=1;K8S_POD_NAME={}", &id[..8]),
                ),
            ];
            if let Some(netns) = netns {
                env.push(("CNI_NETNS", path_str(netns)));
            }
            self.call_with(plugin, verb, &env, &config.to_string())
        }

        fn add(&self, id: &str, container: &Netns) -> Value {
            self.attach_call("calico", "ADD", id, Some(&container.path()), &self.config())
                .expect_ok("ADD")
                .expect("ADD prints a result")
        }

        fn del(&self, id: &str, netns: Option<&Path>) {
            let out = self
                .attach_call("calico", "DEL", id, netns, &self.config())
                .expect_ok("DEL");
            assert!(out.is_none(), "DEL prints nothing: {out:?}");
        }

        /// The endpoints in the datastore, by name.
        fn endpoints(&self) -> Vec<Value> {
            let out = self
                .backend
                .ok(&["get", "workloadendpoints", "-A", "-o", "json"], None);
            let value: Value = serde_json::from_str(&out).expect("get -o json");
            value["items"].as_array().cloned().unwrap_or_default()
        }

        fn endpoint(&self, id: &str) -> Option<Value> {
            self.endpoints()
                .into_iter()
                .find(|e| e["spec"]["containerID"] == id)
        }

        fn ipam_check(&self) -> String {
            self.backend.ok(&["ipam", "check"], None)
        }

        fn host_link_exists(&self, name: &str) -> bool {
            self.host.try_exec(&["ip", "link", "show", "dev", name])
        }
    }

    fn path_str(path: &Path) -> String {
        path.display().to_string()
    }

    fn etcd_in_host(host: &Netns) -> Backend {
        Backend::Etcd(Etcd::start_in(Some(&host.path())))
    }

    fn local(_: &Netns) -> Backend {
        Backend::local()
    }

    fn host_veth(id: &str) -> String {
        format!("cali{}", &id[..11])
    }

    fn assert_released(cni: &Cni) {
        let report = cni.ipam_check();
        assert!(
            report.contains("IPAM blocks record 0 allocations."),
            "{report}"
        );
        assert!(
            report.contains("Check complete; found 0 problems."),
            "{report}"
        );
    }

    /// ADD, CHECK, a second ADD refused, traffic between two containers, DEL (twice), DEL after
    /// the namespace is gone, `calico-ipam` on its own: on the datastore `backend` makes.
    fn lifecycle(backend: impl FnOnce(&Netns) -> Backend) {
        let cni = Cni::new(backend, true);

        let version = cni
            .call_with("calico", "VERSION", &[], r#"{"cniVersion":"1.0.0"}"#)
            .expect_ok("VERSION")
            .expect("VERSION result");
        let supported = version["supportedVersions"].to_string();
        assert!(
            supported.contains("\"1.0.0\"") && supported.contains("\"1.1.0\""),
            "{version}"
        );
        cni.call_with("calico", "STATUS", &[], &cni.config().to_string())
            .expect_ok("STATUS");

        let a_ns = netns("cnica");
        let a = container_id(1);
        let result = cni.add(&a, &a_ns);
        assert_eq!(result["cniVersion"], "1.0.0");
        let interfaces = result["interfaces"].as_array().expect("interfaces");
        assert_eq!(interfaces[0]["name"], host_veth(&a));
        assert_eq!(interfaces[0]["mac"], "ee:ee:ee:ee:ee:ee");
        assert_eq!(interfaces[1]["name"], "eth0");
        assert_eq!(interfaces[1]["sandbox"], path_str(&a_ns.path()));
        let mac = interfaces[1]["mac"]
            .as_str()
            .expect("container MAC")
            .to_owned();
        let addresses: Vec<String> = result["ips"]
            .as_array()
            .expect("ips")
            .iter()
            .map(|ip| ip["address"].as_str().expect("address").to_owned())
            .collect();
        assert_eq!(addresses.len(), 2, "{result}");
        assert!(
            addresses[0].starts_with("198.18.0.") && addresses[0].ends_with("/32"),
            "{result}"
        );
        assert!(
            addresses[1].starts_with("2001:db8:c::") && addresses[1].ends_with("/128"),
            "{result}"
        );
        assert!(
            result["ips"]
                .as_array()
                .expect("ips")
                .iter()
                .all(|ip| ip["interface"] == 1)
        );
        let a_v4: IpAddr = addresses[0].trim_end_matches("/32").parse().expect("ip");

        // Inside the container: the addresses, 169.254.1.1 on the link, the default routes.
        let link = String::from_utf8_lossy(&a_ns.exec(&["ip", "link", "show", "eth0"]).stdout)
            .into_owned();
        assert!(link.contains(&mac), "{link}");
        let addrs = String::from_utf8_lossy(&a_ns.exec(&["ip", "addr", "show", "eth0"]).stdout)
            .into_owned();
        assert!(
            addrs.contains(&addresses[0]) && addrs.contains(&addresses[1]),
            "{addrs}"
        );
        let routes = String::from_utf8_lossy(&a_ns.exec(&["ip", "route"]).stdout).into_owned();
        assert!(
            routes.contains("default via 169.254.1.1 dev eth0"),
            "{routes}"
        );
        assert!(
            routes.contains("169.254.1.1 dev eth0 scope link"),
            "{routes}"
        );
        let routes6 =
            String::from_utf8_lossy(&a_ns.exec(&["ip", "-6", "route"]).stdout).into_owned();
        assert!(
            routes6.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"),
            "{routes6}"
        );
        // On the host: the veth with Calico's MAC, the route to the container.
        let host_link = String::from_utf8_lossy(
            &cni.host
                .exec(&["ip", "link", "show", &host_veth(&a)])
                .stdout,
        )
        .into_owned();
        assert!(host_link.contains("ee:ee:ee:ee:ee:ee"), "{host_link}");
        let host_routes =
            String::from_utf8_lossy(&cni.host.exec(&["ip", "route"]).stdout).into_owned();
        assert!(
            host_routes.contains(&format!("{a_v4} dev {} scope link", host_veth(&a))),
            "{host_routes}"
        );

        // The endpoint, as Calico names and fills it, and the network's profile.
        let wep = cni.endpoint(&a).expect("the WorkloadEndpoint");
        assert_eq!(wep["metadata"]["name"], format!("node--a-cni-{a}-eth0"));
        assert_eq!(wep["metadata"]["namespace"], "default");
        assert_eq!(
            wep["metadata"]["labels"]["projectcalico.org/orchestrator"],
            "cni"
        );
        assert_eq!(wep["spec"]["orchestrator"], "cni");
        assert_eq!(wep["spec"]["node"], NODE);
        assert_eq!(wep["spec"]["profiles"], json!([NETWORK]));
        assert_eq!(wep["spec"]["interfaceName"], host_veth(&a));
        assert_eq!(wep["spec"]["mac"], mac);
        assert_eq!(wep["spec"]["ipNetworks"], json!(addresses));
        let profile: Value = serde_json::from_str(
            &cni.backend
                .ok(&["get", "profile", NETWORK, "-o", "json"], None),
        )
        .expect("profile");
        assert_eq!(profile["spec"]["labelsToApply"], json!({NETWORK: ""}));
        assert_eq!(
            profile["spec"]["ingress"][0]["source"]["selector"],
            format!("has({NETWORK})")
        );

        // CHECK with the result as prevResult.
        let mut check_config = cni.config();
        check_config["prevResult"] = result.clone();
        cni.attach_call("calico", "CHECK", &a, Some(&a_ns.path()), &check_config)
            .expect_ok("CHECK");

        // A second ADD of the same interface is refused, and takes nothing.
        let msg = cni
            .attach_call("calico", "ADD", &a, Some(&a_ns.path()), &cni.config())
            .expect_error("a second ADD", 999);
        assert!(msg.contains("already exists"), "{msg}");
        assert!(cni.endpoint(&a).is_some(), "the first ADD's endpoint stays");
        let report = cni.ipam_check();
        assert!(
            report.contains("IPAM blocks record 2 allocations."),
            "{report}"
        );

        // A second container; the two reach each other through the host.
        let b_ns = netns("cnicb");
        let b = container_id(2);
        let b_result = cni.add(&b, &b_ns);
        let b_v4 = b_result["ips"][0]["address"]
            .as_str()
            .expect("address")
            .trim_end_matches("/32")
            .to_owned();
        assert!(
            a_ns.try_exec(&["ping", "-c", "1", "-W", "2", &b_v4]),
            "container A does not reach B at {b_v4}"
        );

        // DEL takes everything; a repeated DEL succeeds.
        cni.del(&a, Some(&a_ns.path()));
        assert!(
            !a_ns.try_exec(&["ip", "link", "show", "eth0"]),
            "eth0 is gone"
        );
        assert!(
            !cni.host_link_exists(&host_veth(&a)),
            "the host side is gone"
        );
        assert!(cni.endpoint(&a).is_none(), "the endpoint is gone");
        cni.del(&a, Some(&a_ns.path()));
        // CHECK now fails.
        let _ = cni
            .attach_call("calico", "CHECK", &a, Some(&a_ns.path()), &check_config)
            .expect_error("CHECK after DEL", 999);

        // DEL after the container's namespace is gone.
        let b_path = b_ns.path();
        drop(b_ns);
        cni.del(&b, Some(&b_path));
        assert!(!cni.host_link_exists(&host_veth(&b)));
        assert!(cni.endpoint(&b).is_none());

        // calico-ipam on its own: ADD gives addresses, DEL releases them.
        let ipam_id = container_id(3);
        let ipam_result = cni
            .attach_call(
                "calico-ipam",
                "ADD",
                &ipam_id,
                Some(&a_ns.path()),
                &cni.config(),
            )
            .expect_ok("calico-ipam ADD")
            .expect("an IPAM result");
        assert_eq!(
            ipam_result["ips"].as_array().map(Vec::len),
            Some(2),
            "{ipam_result}"
        );
        assert!(ipam_result.get("interfaces").is_none(), "{ipam_result}");
        cni.attach_call("calico-ipam", "DEL", &ipam_id, None, &cni.config())
            .expect_ok("calico-ipam DEL");
        assert_released(&cni);
    }

    #[test]
    fn every_verb_on_a_local_datastore() {
        lifecycle(local);
    }

    #[test]
    fn every_verb_on_etcd() {
        lifecycle(etcd_in_host);
    }

    /// GC releases the attachments that are not in the valid list (the endpoint, the veth, the
    /// addresses) and keeps the others; STATUS says when no pool can serve an ADD.
    #[test]
    fn gc_and_status() {
        let cni = Cni::new(local, false);
        let namespaces: Vec<Netns> = (0..3).map(|_| netns("cnigc")).collect();
        let ids: Vec<String> = (10..13).map(container_id).collect();
        for (id, ns) in ids.iter().zip(&namespaces) {
            cni.add(id, ns);
        }
        let mut gc_config = cni.config();
        gc_config["cniVersion"] = json!("1.1.0");
        gc_config["cni.dev/valid-attachments"] = json!([{"containerID": ids[0], "ifname": "eth0"}]);
        cni.call_with("calico", "GC", &[], &gc_config.to_string())
            .expect_ok("GC");
        assert!(
            cni.endpoint(&ids[0]).is_some(),
            "the valid attachment stays"
        );
        assert!(cni.host_link_exists(&host_veth(&ids[0])));
        for id in &ids[1..] {
            assert!(cni.endpoint(id).is_none(), "{id}'s endpoint is collected");
            assert!(
                !cni.host_link_exists(&host_veth(id)),
                "{id}'s veth is collected"
            );
        }
        let report = cni.ipam_check();
        assert!(
            report.contains("IPAM blocks record 1 allocations."),
            "{report}"
        );
        assert!(
            report.contains("Check complete; found 0 problems."),
            "{report}"
        );

        // STATUS: without an enabled IPv4 pool, ADD cannot be served (code 50).
        cni.backend.ok(&["delete", "ippool", "cni-v4"], None);
        let msg = cni
            .call_with("calico", "STATUS", &[], &cni.config().to_string())
            .expect_error("STATUS without a pool", 50);
        assert!(msg.contains("no enabled IPv4 IPPool"), "{msg}");
    }

    /// Bad input gets the spec's codes; a failure halfway through ADD leaves nothing behind.
    #[test]
    fn bad_input_is_refused_and_failures_roll_back() {
        let cni = Cni::new(local, false);
        let ns = netns("cnibad");
        let id = container_id(20);
        let add = |config: &str, netns: Option<&Path>| {
            let mut env = vec![
                ("CNI_CONTAINERID", id.clone()),
                ("CNI_IFNAME", "eth0".to_owned()),
            ];
            if let Some(p) = netns {
                env.push(("CNI_NETNS", path_str(p)));
            }
            cni.call_with("calico", "ADD", &env, config)
        };
        let good = cni.config().to_string();
        let msg = add("{not json", Some(&ns.path())).expect_error("malformed stdin", 6);
        assert!(msg.contains("not JSON"), "{msg}");
        // prepare_for_xdp: GRO on and checksum offload off on the container side.
        let mut xdp = cni.config();
        xdp["prepare_for_xdp"] = json!(true);
        let xdp_ns = netns("cnixdp");
        let xdp_id = container_id(21);
        cni.attach_call("calico", "ADD", &xdp_id, Some(&xdp_ns.path()), &xdp)
            .expect_ok("ADD with prepare_for_xdp");
        let features =
            String::from_utf8_lossy(&xdp_ns.exec(&["ethtool", "-k", "eth0"]).stdout).into_owned();
        assert!(
            features.contains("generic-receive-offload: on"),
            "{features}"
        );
        assert!(features.contains("tx-checksumming: off"), "{features}");
        cni.del(&xdp_id, Some(&xdp_ns.path()));
        let mut bad_mtu = cni.config();
        bad_mtu["mtu"] = json!("large");
        let msg = add(&bad_mtu.to_string(), Some(&ns.path())).expect_error("a bad field", 7);
        assert!(msg.contains("mtu"), "{msg}");
        let mut newer = cni.config();
        newer["cniVersion"] = json!("2.0.0");
        add(&newer.to_string(), Some(&ns.path())).expect_error("an unknown version", 1);
        let msg = add(&good, None).expect_error("no CNI_NETNS", 4);
        assert!(msg.contains("CNI_NETNS"), "{msg}");
        let msg = add(&good, Some(Path::new("/run/netns/no-such-namespace")))
            .expect_error("a missing namespace", 4);
        assert!(msg.contains("no such network namespace"), "{msg}");
        // A container ID Calico cannot put in an endpoint's name: refused before anything is
        // made.
        let upper = cni.call_with(
            "calico",
            "ADD",
            &[
                ("CNI_CONTAINERID", "Upper_Case".to_owned()),
                ("CNI_IFNAME", "eth0".to_owned()),
                ("CNI_NETNS", path_str(&ns.path())),
            ],
            &good,
        );
        let msg = upper.expect_error("an ID that cannot name an endpoint", 4);
        assert!(msg.contains("cannot name a WorkloadEndpoint"), "{msg}");
        assert!(!ns.try_exec(&["ip", "link", "show", "eth0"]));
        assert_released(&cni);
        let msg = cni
            .call_with("calico", "BOGUS", &[], &good)
            .expect_error("an unknown command", 4);
        assert!(msg.contains("CNI_COMMAND"), "{msg}");

        // The endpoint cannot be written (its folder is a file): ADD fails after the addresses
        // and the veth were made, and takes them back.
        let Backend::Local(dir) = &cni.backend else {
            unreachable!("a local datastore")
        };
        let blocker: PathBuf = dir.path().join("workloadendpoints");
        if blocker.exists() {
            std::fs::remove_dir_all(&blocker).expect("no endpoint is left to remove");
        }
        std::fs::write(&blocker, "in the way").expect("blocker");
        let msg = add(&good, Some(&ns.path())).expect_error("ADD with the endpoint unwritable", 5);
        assert!(msg.contains("WorkloadEndpoint"), "{msg}");
        assert!(
            !ns.try_exec(&["ip", "link", "show", "eth0"]),
            "eth0 was taken back"
        );
        assert!(
            !cni.host_link_exists(&host_veth(&id)),
            "the veth was taken back"
        );
        assert_released(&cni);
        std::fs::remove_file(&blocker).expect("remove blocker");
        add(&good, Some(&ns.path())).expect_ok("ADD once the datastore works");
        cni.del(&id, Some(&ns.path()));
        assert_released(&cni);
    }

    /// A conflist written for Calico (cniVersion 0.3.1, etcd, Calico's logging and policy fields,
    /// a second plugin) works unchanged; unreachable etcd is code 11 for ADD and 50 for STATUS.
    #[test]
    fn calicos_conflist_and_unreachable_etcd() {
        let mut cni = Cni::new(etcd_in_host, false);
        let Backend::Etcd(etcd) = &cni.backend else {
            unreachable!("etcd")
        };
        let logs = tempfile::tempdir().expect("log dir");
        let calico_conflist = json!({
            "name": "k8s-pod-network",
            "cniVersion": "0.3.1",
            "plugins": [
                {
                    "type": "calico",
                    "log_level": "info",
                    "log_file_path": logs.path().join("cni.log"),
                    "datastore_type": "etcdv3",
                    "etcd_endpoints": etcd.client_url,
                    "nodename": NODE,
                    "mtu": 1440,
                    "ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "false"},
                    "policy": {"type": "k8s"},
                    "container_settings": {"allow_ip_forwarding": false}
                },
                {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
            ]
        });
        let mut config = calico_conflist["plugins"][0].clone();
        config["name"] = calico_conflist["name"].clone();
        config["cniVersion"] = calico_conflist["cniVersion"].clone();
        let ns = netns("cnicalico");
        let id = container_id(30);
        let result = cni
            .attach_call("calico", "ADD", &id, Some(&ns.path()), &config)
            .expect_ok("ADD with Calico's conflist")
            .expect("a result");
        assert_eq!(result["cniVersion"], "0.3.1");
        assert_eq!(result["ips"][0]["version"], "4", "{result}");
        let wep = cni.endpoint(&id).expect("endpoint");
        assert_eq!(wep["spec"]["profiles"], json!(["k8s-pod-network"]));
        let mtu =
            String::from_utf8_lossy(&ns.exec(&["ip", "link", "show", "eth0"]).stdout).into_owned();
        assert!(mtu.contains("mtu 1440"), "{mtu}");
        // policy.type set: the plugin leaves profiles to the policy controller, as Calico's does.
        cni.backend
            .fails(&["get", "profile", "k8s-pod-network"], None);
        let log = std::fs::read_to_string(logs.path().join("cni.log")).expect("the plugin's log");
        assert!(log.contains("assigned"), "{log}");
        cni.attach_call("calico", "DEL", &id, Some(&ns.path()), &config)
            .expect_ok("DEL with Calico's conflist");
        assert_released(&cni);

        let Backend::Etcd(etcd) = &mut cni.backend else {
            unreachable!("etcd")
        };
        etcd.kill();
        let msg = cni
            .attach_call("calico", "ADD", &id, Some(&ns.path()), &cni.config())
            .expect_error("ADD with etcd down", 11);
        assert!(msg.contains("etcd_endpoints"), "{msg}");
        assert!(
            !ns.try_exec(&["ip", "link", "show", "eth0"]),
            "nothing was made"
        );
        cni.call_with("calico", "STATUS", &[], &cni.config().to_string())
            .expect_error("STATUS with etcd down", 50);
    }

    /// 20 ADDs at once get distinct addresses, and their endpoints are all written.
    #[test]
    fn twenty_concurrent_adds() {
        let cni = Cni::new(local, false);
        let namespaces: Vec<Netns> = (0..20).map(|_| netns("cnipar")).collect();
        let ids: Vec<String> = (100..120).map(container_id).collect();
        let results: Vec<Value> = thread::scope(|scope| {
            let handles: Vec<_> = ids
                .iter()
                .zip(&namespaces)
                .map(|(id, ns)| scope.spawn(|| cni.add(id, ns)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("ADD thread"))
                .collect()
        });
        let mut addresses: Vec<String> = results
            .iter()
            .map(|r| r["ips"][0]["address"].as_str().expect("address").to_owned())
            .collect();
        addresses.sort();
        addresses.dedup();
        assert_eq!(addresses.len(), 20, "distinct addresses: {addresses:?}");
        assert_eq!(cni.endpoints().len(), 20);
        let report = cni.ipam_check();
        assert!(
            report.contains("IPAM blocks record 20 allocations."),
            "{report}"
        );
        assert!(
            report.contains("Check complete; found 0 problems."),
            "{report}"
        );
        thread::scope(|scope| {
            for (id, ns) in ids.iter().zip(&namespaces) {
                scope.spawn(|| cni.del(id, Some(&ns.path())));
            }
        });
        assert!(cni.endpoints().is_empty());
        assert_released(&cni);
    }

    /// `ipam.type` another plugin (`host-local` from containernetworking-plugins): it is run
    /// from `CNI_PATH` for ADD and DEL, and its address is the container's.
    #[test]
    fn another_ipam_plugin_is_run_from_cni_path() {
        let host_local = Path::new("/usr/lib/cni/host-local");
        assert!(
            host_local.exists(),
            "{} is missing: install containernetworking-plugins (cargo xtask setup does)",
            host_local.display()
        );
        let cni = Cni::new(local, false);
        let data = tempfile::tempdir().expect("host-local's data dir");
        let mut config = cni.config();
        config["ipam"] = json!({
            "type": "host-local",
            "ranges": [[{"subnet": "198.18.9.0/24"}]],
            "dataDir": data.path(),
        });
        let ns = netns("cnihl");
        let id = container_id(40);
        let cni_path = format!("{}:/usr/lib/cni", cni.bin.path().display());
        let call = |verb: &str| {
            cni.call_with(
                "calico",
                verb,
                &[
                    ("CNI_CONTAINERID", id.clone()),
                    ("CNI_IFNAME", "eth0".to_owned()),
                    ("CNI_NETNS", path_str(&ns.path())),
                    ("CNI_PATH", cni_path.clone()),
                ],
                &config.to_string(),
            )
        };
        let result = call("ADD").expect_ok("ADD").expect("a result");
        let address = result["ips"][0]["address"]
            .as_str()
            .expect("address")
            .to_owned();
        assert!(
            address.starts_with("198.18.9.") && address.ends_with("/32"),
            "{result}"
        );
        let ip = address.trim_end_matches("/32");
        let addrs =
            String::from_utf8_lossy(&ns.exec(&["ip", "addr", "show", "eth0"]).stdout).into_owned();
        assert!(addrs.contains(&address), "{addrs}");
        let reserved = data.path().join(NETWORK).join(ip);
        assert!(reserved.exists(), "host-local reserved {ip}");
        let wep = cni.endpoint(&id).expect("endpoint");
        assert_eq!(wep["spec"]["ipNetworks"], json!([address]));
        cni.call_with("calico", "STATUS", &[], &config.to_string())
            .expect_ok("STATUS with another IPAM plugin");
        call("DEL").expect_ok("DEL");
        assert!(!reserved.exists(), "host-local released {ip}");
        assert!(cni.endpoint(&id).is_none());
        assert!(!cni.host_link_exists(&host_veth(&id)));
        // Calico's IPAM was not used.
        assert_released(&cni);
    }
}

/// `cni install` against etcd with TLS writes the certificate files into the conflist, and
/// the plugin uses them: STATUS succeeds with them and is code 50 without the client
/// certificate. Needs no root (etcd on 127.0.0.1, nothing attached).
#[test]
fn etcd_tls_settings_reach_the_plugin() {
    use std::process::Command;

    use serde_json::{Value, json};
    use support::{
        cli::{Backend, run_with_stdin},
        etcd::Etcd,
    };

    let backend = Backend::Etcd(Etcd::start_tls());
    backend.ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: tls-v4}\n\
             spec: {cidr: 198.18.8.0/24}\n",
        ),
    );
    let (bin, conf) = (
        tempfile::tempdir().expect("bin"),
        tempfile::tempdir().expect("conf"),
    );
    let (bin_dir, conf_dir) = (
        bin.path().display().to_string(),
        conf.path().display().to_string(),
    );
    backend.ok(
        &[
            "cni",
            "install",
            "--bin-dir",
            &bin_dir,
            "--conf-dir",
            &conf_dir,
        ],
        None,
    );
    let text =
        std::fs::read_to_string(conf.path().join("10-calico.conflist")).expect("the conflist");
    let conflist: Value = serde_json::from_str(&text).expect("JSON");
    let mut config = conflist["plugins"][0].clone();
    config["name"] = conflist["name"].clone();
    config["cniVersion"] = json!("1.1.0");
    let Backend::Etcd(etcd) = &backend else {
        unreachable!("etcd")
    };
    let tls = etcd.tls().expect("TLS files");
    assert_eq!(config["etcd_endpoints"], etcd.client_url, "{text}");
    assert_eq!(config["etcd_cert_file"], json!(tls.client_cert), "{text}");
    assert_eq!(config["etcd_key_file"], json!(tls.client_key), "{text}");
    assert_eq!(config["etcd_ca_cert_file"], json!(tls.ca_cert), "{text}");
    let status = |config: &Value| {
        let mut command = Command::new(bin.path().join("calico"));
        command
            .env_clear()
            .env("CNI_COMMAND", "STATUS")
            .env("CNI_PATH", bin.path());
        run_with_stdin(command, Some(&config.to_string()))
    };
    let out = status(&config);
    assert!(
        out.status.success(),
        "STATUS with the TLS files: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut without_cert = config.clone();
    without_cert
        .as_object_mut()
        .expect("object")
        .retain(|k, _| k != "etcd_cert_file" && k != "etcd_key_file");
    let out = status(&without_cert);
    assert!(!out.status.success(), "STATUS without a client certificate");
    let error: Value = serde_json::from_slice(&out.stdout).expect("an error JSON");
    assert_eq!(error["code"], 50, "{error}");
}
