//! Tests of the BIRD configuration: BIRD itself parses every rendered configuration
//! (`bird -p -c`), the statements that matter are where they must be, the same input renders
//! the same text, and one configuration is kept in `testdata/` to read.

use std::path::{Path, PathBuf};

use super::{
    BgpError, BgpInput, Encapsulation, PoolFacts, bird,
    model::build,
    model_tests::{
        Passwords, bgp_configuration, bgp_peer, cluster, labelled, model, node, pool, reflector,
    },
};
use crate::datastore::resources::PasswordSource;

/// Where BIRD's configuration for `name` is written for the check.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.conf"));
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// Renders `input`, has BIRD parse it, and returns the text. Fails with BIRD's message (or
/// with why `bird` could not run).
fn render_and_check(dir: &Path, name: &str, input: &BgpInput) -> String {
    let text = bird::render(&model(input));
    let path = write(dir, name, &text);
    match bird::check(&path) {
        Ok(()) => text,
        Err(e @ BgpError::BirdMissing { .. }) => {
            panic!("{e}: these tests need BIRD 2 (`apt-get install bird2`)")
        }
        Err(e) => panic!("{name}: {e}\n--- configuration:\n{text}"),
    }
}

/// The text of `protocol <kind> <name>` (or another block starting with `header`), up to its
/// closing brace at the start of a line.
fn block<'a>(text: &'a str, header: &str) -> &'a str {
    let start = text
        .find(&format!("{header} "))
        .unwrap_or_else(|| panic!("no {header:?} in:\n{text}"));
    let end = text[start..]
        .find("\n}\n")
        .map(|i| start + i + 3)
        .unwrap_or(text.len());
    &text[start..end]
}

/// Whether `lines` appear in `text` in this order.
fn in_order(text: &str, lines: &[&str]) -> bool {
    let mut rest = text;
    for line in lines {
        match rest.find(line) {
            Some(i) => rest = &rest[i + line.len()..],
            None => return false,
        }
    }
    true
}

/// A cluster with everything this node's configuration can hold: the mesh over IPv4 and IPv6,
/// a global peer with every option, a node-specific one, pools of each kind, blocks, borrowed
/// addresses, service ranges and a listen port.
fn everything(this: &str) -> BgpInput {
    let nodes = vec![
        labelled(
            node("node-1", "198.18.0.1", Some("2001:db8::1")),
            &[("rack", "a")],
        ),
        node("node-2", "198.18.0.2", Some("2001:db8::2")),
        node("node-3", "198.18.0.3", None),
    ];
    let mut input = cluster(this, &nodes);
    input.configurations = vec![
        bgp_configuration(
            "default",
            "asNumber: 64512, listenPort: 1790, nodeMeshMaxRestartTime: 300s, \
             nodeMeshPassword: {file: /etc/calico/mesh}, ignoredInterfaces: [docker*], \
             serviceClusterIPs: [{cidr: 198.19.0.0/16}, {cidr: \"2001:db8:5::/112\"}]",
        ),
        bgp_configuration("node.node-2", "listenPort: 1791"),
    ];
    input.peers = vec![
        bgp_peer(
            "tor",
            "peerIP: \"198.18.0.254:1790\", asNumber: 65001, localASNumber: 64513, \
             password: {env: TOR_PASSWORD}, keepaliveTime: 20s, maxRestartTime: 2m, \
             ttlSecurity: 1, nextHopMode: Self, numAllowedLocalASNumbers: 1, \
             reachableBy: 198.18.0.253",
        ),
        bgp_peer(
            "rack-a-tor-v6",
            "nodeSelector: rack == 'a', peerIP: \"2001:db8::fe\", asNumber: 65002, \
             sourceAddress: None, keepOriginalNextHop: true",
        ),
    ];
    input.pools = vec![
        pool("198.18.64.0/18"),
        PoolFacts {
            disable_bgp_export: true,
            ..pool("198.18.128.0/18")
        },
        PoolFacts {
            encapsulation: Encapsulation::Vxlan,
            ..pool("198.18.192.0/20")
        },
        PoolFacts {
            encapsulation: Encapsulation::Ipip,
            ..pool("198.18.208.0/20")
        },
        pool("2001:db8:1::/48"),
    ];
    input.blocks = vec![
        "198.18.64.0/26".parse().expect("block"),
        "198.18.128.0/26".parse().expect("block"),
        "2001:db8:1::/122".parse().expect("block"),
    ];
    input.borrowed = vec![
        "198.18.65.7".parse().expect("address"),
        "2001:db8:1::100".parse().expect("address"),
    ];
    input.floating_ips = vec![
        "198.18.250.9".parse().expect("address"),
        "2001:db8:ff::9".parse().expect("address"),
    ];
    input
}

/// Every password `everything` names.
fn passwords() -> Passwords {
    let mut passwords = Passwords::default();
    passwords.0.insert(
        PasswordSource::File("/etc/calico/mesh".into()),
        "mesh-secret".into(),
    );
    passwords.0.insert(
        PasswordSource::Env("TOR_PASSWORD".into()),
        "tor-secret".into(),
    );
    passwords
}

#[test]
fn bird_parses_every_rendered_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let reflectors = vec![
        labelled(
            reflector(
                node("rr-1", "198.18.0.10", Some("2001:db8::10")),
                "244.0.0.1",
            ),
            &[("route-reflector", "true")],
        ),
        node("node-1", "198.18.0.1", Some("2001:db8::1")),
        node("node-2", "198.18.0.2", None),
    ];
    let rr_input = |this: &str| {
        let mut input = cluster(this, &reflectors);
        input.configurations = vec![bgp_configuration(
            "default",
            "nodeToNodeMeshEnabled: false, logSeverityScreen: Debug",
        )];
        input.peers = vec![bgp_peer(
            "peer-with-rrs",
            "nodeSelector: \"!has(route-reflector)\", peerSelector: has(route-reflector)",
        )];
        input
    };
    let mut alone = cluster("node-1", &[node("node-1", "198.18.0.1", None)]);
    alone.configurations = vec![bgp_configuration(
        "default",
        "logSeverityScreen: Error, bindMode: None",
    )];
    // An IPv6 block on a node without an IPv6 address: blackholed, no sessions.
    let mut v6_block_only = cluster("node-1", &[node("node-1", "198.18.0.1", None)]);
    v6_block_only.pools = vec![pool("2001:db8:1::/48")];
    v6_block_only.blocks = vec!["2001:db8:1::40/122".parse().expect("block")];

    let cases: Vec<(&str, BgpInput)> = vec![
        ("mesh", cluster("node-2", &reflectors[1..])),
        ("reflector", rr_input("rr-1")),
        ("client", rr_input("node-1")),
        ("alone", alone),
        ("v6-block-only", v6_block_only),
    ];
    let passwords = passwords();
    for this in ["node-1", "node-2", "node-3"] {
        let input = everything(this);
        let text = bird::render(&build(&input, &passwords).expect("model"));
        let path = write(dir.path(), this, &text);
        bird::check(&path).unwrap_or_else(|e| panic!("{this}: {e}\n{text}"));
    }
    for (name, input) in &cases {
        render_and_check(dir.path(), name, input);
    }
}

#[test]
fn the_statements_that_matter() {
    let input = everything("node-1");
    let model = build(&input, &passwords()).expect("model");
    let text = bird::render(&model);

    assert!(text.contains("router id 198.18.0.1;\n"), "{text}");
    assert!(text.contains("log stderr all;"), "{text}");
    // Kernel protocols: learn, persist, graceful restart, ECMP; our filters both ways.
    for n in [4, 6] {
        let kernel = block(&text, &format!("protocol kernel kernel{n}"));
        for line in [
            "learn;",
            "persist;",
            "scan time 2;",
            "graceful restart;",
            "merge paths on;",
            &format!("import filter calico_kernel_learn_v{n};"),
            &format!("export filter calico_kernel_programming_v{n};"),
        ] {
            assert!(kernel.contains(line), "{line} missing from:\n{kernel}");
        }
    }
    assert!(block(&text, "protocol device").contains("scan time 2;"));
    assert!(
        block(&text, "protocol direct")
            .contains("interface -\"docker*\", -\"cali*\", -\"kube-ipvs*\", \"*\";"),
        "{text}"
    );
    // The blocks and service ranges are blackholed; the reachableBy route goes to its gateway.
    let static4 = block(&text, "protocol static static4");
    assert!(
        static4.contains("route 198.18.64.0/26 blackhole;"),
        "{static4}"
    );
    assert!(
        static4.contains("route 198.19.0.0/16 blackhole;"),
        "{static4}"
    );
    assert!(
        static4.contains("route 198.18.0.254/32 via 198.18.0.253;"),
        "{static4}"
    );
    assert!(block(&text, "protocol static static6").contains("route 2001:db8:1::/122 blackhole;"));
    // A block is announced whole: the workload routes inside it are rejected.
    assert!(in_order(
        block(&text, "function calico_aggr_v4()"),
        &[
            "if ( net = 198.18.64.0/26 ) then { accept; }",
            "if ( net ~ 198.18.64.0/26 ) then { reject; }",
        ]
    ));
    // The export filter: the pool with BGP export disabled is rejected before anything is
    // accepted; then blocks, service ranges, floating IPs (outside the pools), pools (borrowed
    // /32s are inside them).
    let export = block(&text, "function calico_export_to_bgp_peers_v4()");
    assert!(
        in_order(
            export,
            &[
                "if ( net ~ 198.18.128.0/18 ) then { reject; }",
                "calico_aggr_v4();",
                "if ( net ~ 198.19.0.0/16 ) then { accept; }",
                "if ( net = 198.18.250.9/32 ) then { accept; }",
                "198.18.65.7/32",
                "if ( net ~ 198.18.64.0/18 ) then { accept; }",
            ]
        ),
        "{export}"
    );
    assert!(!export.contains("if ( net ~ 198.18.128.0/18 ) then { accept; }"));
    // Local workload routes win over BGP; service ranges and encapsulated pools are not
    // installed in the kernel.
    assert!(
        block(&text, "filter calico_kernel_learn_v4")
            .contains("if ( net ~ 198.18.64.0/18 ) then { preference = 110; }")
    );
    let programming = block(&text, "filter calico_kernel_programming_v4");
    assert!(
        programming.contains("if ( source = RTS_DEVICE ) then { reject; }"),
        "{programming}"
    );
    for rejected in ["198.19.0.0/16", "198.18.192.0/20", "198.18.208.0/20"] {
        assert!(
            programming.contains(&format!("if ( net ~ {rejected} ) then {{ reject; }}")),
            "{rejected}: {programming}"
        );
    }
    assert!(programming.ends_with("  accept;\n}\n"), "{programming}");

    // The mesh: from this node's address, on the peer's listen port, passive on the greater
    // address, with the mesh's password and restart time.
    let mesh = block(&text, "protocol bgp Mesh_198_18_0_2 from bgp_template");
    for line in [
        "description \"node-to-node mesh with node-2\";",
        "local 198.18.0.1 port 1790 as 64512;",
        "neighbor 198.18.0.2 port 1791 as 64512;",
        "passive on;",
        "graceful restart time 300;",
        "password \"mesh-secret\";",
        "ipv4 {",
        "export filter { calico_export_to_bgp_peers_v4(); reject; };",
    ] {
        assert!(mesh.contains(line), "{line} missing from:\n{mesh}");
    }
    assert!(!mesh.contains("multihop"), "{mesh}");
    let mesh6 = block(&text, "protocol bgp Mesh_2001_db8__2 from bgp_template");
    assert!(
        mesh6.contains("local 2001:db8::1 port 1790 as 64512;"),
        "{mesh6}"
    );
    assert!(mesh6.contains("ipv6 {"), "{mesh6}");
    assert!(mesh6.contains("calico_export_to_bgp_peers_v6()"), "{mesh6}");

    // The global peer with every option.
    let tor = block(
        &text,
        "protocol bgp Global_198_18_0_254_port_1790 from bgp_template",
    );
    for line in [
        "local 198.18.0.1 port 1790 as 64513;",
        "neighbor 198.18.0.254 port 1790 as 65001;",
        "ttl security on;",
        "multihop 1;",
        "graceful restart time 120;",
        "keepalive time 20;",
        "password \"tor-secret\";",
        "allow local as 1;",
        "next hop self;",
    ] {
        assert!(tor.contains(line), "{line} missing from:\n{tor}");
    }
    assert!(!tor.contains("passive"), "{tor}");
    // The node-specific IPv6 peer: no source address, multihop, next hop kept (eBGP).
    let v6 = block(&text, "protocol bgp Node_2001_db8__fe from bgp_template");
    for line in [
        "local port 1790 as 64512;",
        "neighbor 2001:db8::fe as 65002;",
        "ttl security off;",
        "multihop;",
        "next hop keep;",
    ] {
        assert!(v6.contains(line), "{line} missing from:\n{v6}");
    }
    // node-3 is outside rack a: no such session.
    let other = bird::render(&build(&everything("node-3"), &passwords()).expect("model"));
    assert!(!other.contains("Node_2001_db8__fe"));
}

#[test]
fn route_reflection_statements() {
    let nodes = vec![
        labelled(
            reflector(node("rr-1", "198.18.0.10", None), "244.0.0.1"),
            &[("route-reflector", "true")],
        ),
        node("node-1", "198.18.0.1", None),
    ];
    let mut input = cluster("rr-1", &nodes);
    input.configurations = vec![bgp_configuration("default", "nodeToNodeMeshEnabled: false")];
    input.peers = vec![bgp_peer(
        "peer-with-rrs",
        "nodeSelector: all(), peerSelector: has(route-reflector)",
    )];
    let text = bird::render(&model(&input));
    let client = block(&text, "protocol bgp Node_198_18_0_1 from bgp_template");
    assert!(
        in_order(client, &["rr client;", "rr cluster id 244.0.0.1;"]),
        "{client}"
    );
    assert!(!text.contains("Mesh_"), "{text}");
}

#[test]
fn the_same_input_renders_the_same_text() {
    let passwords = passwords();
    let input = everything("node-1");
    let mut shuffled = input.clone();
    shuffled.other_nodes.reverse();
    shuffled.peers.reverse();
    shuffled.pools.reverse();
    shuffled.blocks.reverse();
    shuffled.borrowed.reverse();
    shuffled.configurations.reverse();
    let a = bird::render(&build(&input, &passwords).expect("model"));
    let b = bird::render(&build(&shuffled, &passwords).expect("model"));
    assert_eq!(a, b);
}

/// The configuration `everything` gives node-1, kept to read in `testdata/`. Set
/// `CALICO_EBPF_BLESS=1` to rewrite it after an intended change.
#[test]
fn the_kept_configuration_is_current() {
    let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bgp/testdata/node-1.conf");
    let text = bird::render(&build(&everything("node-1"), &passwords()).expect("model"));
    if std::env::var_os("CALICO_EBPF_BLESS").is_some() {
        std::fs::write(&kept, &text).expect("rewriting the kept configuration");
    }
    let expected = std::fs::read_to_string(&kept)
        .unwrap_or_else(|e| panic!("reading {}: {e}", kept.display()));
    assert!(
        text == expected,
        "the rendered configuration differs from {}; if the change is intended, rerun with \
         CALICO_EBPF_BLESS=1 and review the diff.\n--- rendered:\n{text}",
        kept.display()
    );
    bird::check(&kept).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn bird_refuses_a_broken_configuration_with_its_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = bird::render(&model(&cluster(
        "node-1",
        &[node("node-1", "198.18.0.1", None)],
    )));
    let path = write(
        dir.path(),
        "broken",
        &text.replace("router id 198.18.0.1;", "router id 198.18.0.1"),
    );
    match bird::check(&path) {
        Err(BgpError::Rejected { path: p, message }) => {
            assert_eq!(p, path);
            assert!(message.contains("broken.conf:"), "{message}");
            assert!(message.contains("syntax error"), "{message}");
        }
        Err(e @ BgpError::BirdMissing { .. }) => panic!("{e}"),
        other => panic!("expected BIRD to refuse it: {other:?}"),
    }
}
