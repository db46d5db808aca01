//! Integration tests: two nodes, each a network namespace running BIRD on the configuration
//! rendered for it, joined by a veth. They peer over IPv4 and IPv6 (the node-to-node mesh),
//! exchange their blocks and borrowed addresses, install each other's routes in their kernels,
//! and keep their own workload routes; a reload with a configuration BIRD refuses leaves the
//! last good one in force.

mod support;

/// Every test here needs root (network namespaces): `cargo test -- privileged::` selects them,
/// and they fail without root.
mod privileged {
    use std::time::Duration;

    use calico_loader::bgp::{
        BgpError, BgpInput, Bird, BirdSettings, Encapsulation, NodeFacts, PoolFacts, Reload,
        SystemPasswords, bird, model,
    };

    use crate::support::topology::{Netns, netns, require_root, wait_for};

    /// How long BGP sessions and routes have to appear (BIRD connects after 2 s, scans the
    /// kernel every 2 s).
    const PATIENCE: Duration = Duration::from_secs(30);

    /// A node: its namespace, with `bgp0` to the other node and `caliwl0`, a workload
    /// interface (one end of a veth pair inside the namespace).
    struct Node {
        ns: Netns,
        facts: NodeFacts,
        blocks: Vec<&'static str>,
        borrowed: Vec<&'static str>,
    }

    impl Node {
        fn ip(&self, args: &[&str]) -> String {
            let mut full = vec!["ip"];
            full.extend_from_slice(args);
            String::from_utf8_lossy(&self.ns.exec(&full).stdout).into_owned()
        }

        /// A workload's route, as the agent writes it (`dev <iface> scope link proto 81`).
        fn add_workload_route(&self, address: &str) {
            self.ip(&[
                "route", "add", address, "dev", "caliwl0", "scope", "link", "proto", "81",
            ]);
        }

        /// The kernel routes to exactly `prefix`.
        fn routes_to(&self, prefix: &str) -> String {
            let family = if prefix.contains(':') { "-6" } else { "-4" };
            self.ip(&[family, "route", "show", "exact", prefix])
        }

        fn input(&self, other: &Node) -> BgpInput {
            BgpInput {
                node: self.facts.clone(),
                other_nodes: vec![other.facts.clone()],
                pools: ["198.18.64.0/18", "2001:db8:1::/48"]
                    .iter()
                    .map(|cidr| PoolFacts {
                        cidr: cidr.parse().expect("pool"),
                        disabled: false,
                        disable_bgp_export: false,
                        nat_outgoing: false,
                        encapsulation: Encapsulation::None,
                    })
                    .collect(),
                blocks: self
                    .blocks
                    .iter()
                    .map(|b| b.parse().expect("block"))
                    .collect(),
                borrowed: self
                    .borrowed
                    .iter()
                    .map(|a| a.parse().expect("address"))
                    .collect(),
                ..BgpInput::default()
            }
        }

        fn config(&self, other: &Node) -> String {
            let model = model::build(&self.input(other), &SystemPasswords)
                .unwrap_or_else(|e| panic!("{e}"));
            bird::render(&model)
        }
    }

    fn node(
        name: &str,
        v4: &str,
        v6: &str,
        blocks: Vec<&'static str>,
        borrowed: Vec<&'static str>,
    ) -> Node {
        let ns = netns("bgp");
        let facts = NodeFacts {
            name: name.to_owned(),
            ipv4: Some(format!("{v4}/24").parse().expect("IPv4")),
            ipv6: Some(format!("{v6}/64").parse().expect("IPv6")),
            ..NodeFacts::default()
        };
        Node {
            ns,
            facts,
            blocks,
            borrowed,
        }
    }

    /// The two nodes, wired and addressed, each with a workload interface.
    fn two_nodes() -> (Node, Node) {
        // node-1 owns 198.18.64.0/26; its workloads: .5 and .7 there, and .70 borrowed from
        // node-2's block.
        let a = node(
            "node-1",
            "198.18.0.1",
            "2001:db8::1",
            vec!["198.18.64.0/26", "2001:db8:1::/122"],
            vec!["198.18.64.70"],
        );
        // node-2 owns 198.18.64.64/26; it borrowed .5 and .6 from node-1's block (.5 also
        // being a workload of node-1's: a stale announcement, which node-1 must not install),
        // and 2001:db8:1::5 likewise.
        let b = node(
            "node-2",
            "198.18.0.2",
            "2001:db8::2",
            vec!["198.18.64.64/26", "2001:db8:1::40/122"],
            vec!["198.18.64.5", "198.18.64.6", "2001:db8:1::5"],
        );
        a.ns.add_veth(
            "bgp0",
            "02:00:c6:12:00:01",
            &b.ns,
            "bgp0",
            "02:00:c6:12:00:02",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        b.ip(&["link", "set", "bgp0", "up"]);
        for (n, v4, v6) in [
            (&a, "198.18.0.1/24", "2001:db8::1/64"),
            (&b, "198.18.0.2/24", "2001:db8::2/64"),
        ] {
            n.ip(&["addr", "add", v4, "dev", "bgp0"]);
            n.ip(&["-6", "addr", "add", v6, "dev", "bgp0", "nodad"]);
            n.ip(&[
                "link", "add", "caliwl0", "type", "veth", "peer", "name", "caliwl0p",
            ]);
            n.ip(&["link", "set", "caliwl0", "up"]);
            n.ip(&["link", "set", "caliwl0p", "up"]);
        }
        for address in [
            "198.18.64.5/32",
            "198.18.64.7/32",
            "198.18.64.70/32",
            "2001:db8:1::5/128",
        ] {
            a.add_workload_route(address);
        }
        for address in [
            "198.18.64.5/32",
            "198.18.64.6/32",
            "198.18.64.100/32",
            "2001:db8:1::5/128",
        ] {
            b.add_workload_route(address);
        }
        (a, b)
    }

    fn start(node: &Node, other: &Node) -> (Bird, tempfile::TempDir) {
        let run_dir = tempfile::tempdir().expect("run dir");
        let settings = BirdSettings {
            netns: Some(node.ns.path()),
            ..BirdSettings::new(run_dir.path().join("bird"))
        };
        let bird = Bird::start(settings, &node.config(other)).unwrap_or_else(|e| {
            panic!("{e} (BIRD 2 is Debian's bird2 package: `cargo xtask setup` installs it)")
        });
        (bird, run_dir)
    }

    fn established(bird: &Bird, name: &str) -> bool {
        bird.protocols()
            .is_ok_and(|ps| ps.iter().any(|p| p.name == name && p.established()))
    }

    fn wait_route(node: &Node, prefix: &str, expected: &str) {
        wait_for(
            &format!("{} to have `{prefix} {expected}`", node.facts.name),
            PATIENCE,
            || node.routes_to(prefix).contains(expected),
        );
    }

    #[test]
    fn two_nodes_exchange_their_blocks_over_bird() {
        require_root();
        let (a, b) = two_nodes();
        let (bird_a, _dir_a) = start(&a, &b);
        let (bird_b, _dir_b) = start(&b, &a);
        for (bird, name) in [
            (&bird_a, "Mesh_198_18_0_2"),
            (&bird_a, "Mesh_2001_db8__2"),
            (&bird_b, "Mesh_198_18_0_1"),
            (&bird_b, "Mesh_2001_db8__1"),
        ] {
            wait_for(&format!("{name} to be established"), PATIENCE, || {
                established(bird, name)
            });
        }

        // Each node blackholes its own blocks and routes to the other's through it.
        assert!(
            a.routes_to("198.18.64.0/26")
                .contains("blackhole 198.18.64.0/26 proto bird"),
            "{}",
            a.routes_to("198.18.64.0/26")
        );
        wait_route(&b, "198.18.64.0/26", "via 198.18.0.1 dev bgp0 proto bird");
        wait_route(&a, "198.18.64.64/26", "via 198.18.0.2 dev bgp0 proto bird");
        wait_route(
            &b,
            "2001:db8:1::/122",
            "via 2001:db8::1 dev bgp0 proto bird",
        );
        wait_route(
            &a,
            "2001:db8:1::40/122",
            "via 2001:db8::2 dev bgp0 proto bird",
        );
        // Borrowed addresses are announced as host routes.
        wait_route(&b, "198.18.64.70/32", "via 198.18.0.1 dev bgp0 proto bird");
        wait_route(&a, "198.18.64.6/32", "via 198.18.0.2 dev bgp0 proto bird");

        // Workload routes inside a node's own block are not announced one by one.
        let b_routes = b.ip(&["-4", "route", "show", "proto", "bird"]);
        for own in ["198.18.64.7 ", "198.18.64.5 "] {
            assert!(
                !b_routes.contains(own),
                "node-1 announced {own}:\n{b_routes}"
            );
        }
        let a_routes = a.ip(&["-4", "route", "show", "proto", "bird"]);
        assert!(!a_routes.contains("198.18.64.100 "), "{a_routes}");

        // node-2 announces .5 and 2001:db8:1::5, node-1's own workloads: node-1 keeps its
        // workload routes and installs nothing over them.
        for (prefix, local) in [
            ("198.18.64.5/32", "198.18.64.5 dev caliwl0 proto 81"),
            ("2001:db8:1::5/128", "2001:db8:1::5 dev caliwl0 proto 81"),
        ] {
            let routes = a.routes_to(prefix);
            assert!(routes.contains(local), "{routes}");
            assert!(!routes.contains("proto bird"), "{prefix}: {routes}");
        }
        let learned = bird_a
            .birdc(&["show", "route", "for", "198.18.64.5/32", "all"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            learned.contains("Mesh_198_18_0_2"),
            "node-2's route is known:\n{learned}"
        );
        assert!(learned.contains("kernel4"), "{learned}");

        // Interface routes are not copied into the kernel.
        assert!(
            !a.ip(&["route", "show", "proto", "bird"])
                .contains("198.18.0.0/24")
        );
    }

    #[test]
    fn a_refused_configuration_leaves_the_last_good_one_in_force() {
        require_root();
        let (mut a, b) = two_nodes();
        let (mut bird_a, _dir_a) = start(&a, &b);
        let (_bird_b, _dir_b) = start(&b, &a);
        wait_for("Mesh_198_18_0_2 to be established", PATIENCE, || {
            established(&bird_a, "Mesh_198_18_0_2")
        });
        let good = bird_a.configuration().to_owned();
        let config_path = bird_a.settings().config_path();
        let on_disk = || std::fs::read_to_string(&config_path).expect("read");
        assert_eq!(on_disk(), good);

        // Refused: BIRD's message comes back, and nothing changes.
        let broken = good.replace("router id 198.18.0.1;", "router id 198.18.0.1");
        match bird_a.apply(&broken) {
            Err(BgpError::Rejected { message, .. }) => {
                assert!(message.contains("syntax error"), "{message}");
            }
            other => panic!("expected BIRD to refuse it: {other:?}"),
        }
        assert_eq!(bird_a.configuration(), good);
        assert_eq!(on_disk(), good);
        assert!(established(&bird_a, "Mesh_198_18_0_2"));
        assert_eq!(bird_a.apply(&good).ok(), Some(Reload::Unchanged));

        // A good change: node-1 gets a new block, and node-2 learns it.
        a.blocks.push("198.18.65.0/26");
        let newer = a.config(&b);
        assert_eq!(bird_a.apply(&newer).ok(), Some(Reload::Reconfigured));
        assert_eq!(on_disk(), newer);
        wait_route(&b, "198.18.65.0/26", "via 198.18.0.1 dev bgp0 proto bird");
        assert!(
            a.routes_to("198.18.65.0/26").contains("blackhole"),
            "{}",
            a.routes_to("198.18.65.0/26")
        );
        bird_a.stop();
    }
}
