//! Tests of the session model: which sessions a node has, with whom, which side is passive,
//! and what it announces, for the topologies Calico supports.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use super::{
    BgpError, BgpInput, BgpModel, Encapsulation, Family, NodeFacts, PasswordReader, PoolFacts,
    SessionKind, TtlSecurity,
    model::{BirdDebug, NextHop, build},
};
use crate::datastore::{
    parse_file,
    resources::{AsNumber, BgpConfiguration, BgpPeer, PasswordSource},
};

/// A node with an IPv4 address (and an IPv6 one when given), both in /24 and /64 subnets.
pub(super) fn node(name: &str, ipv4: &str, ipv6: Option<&str>) -> NodeFacts {
    NodeFacts {
        name: name.to_owned(),
        ipv4: Some(format!("{ipv4}/24").parse().expect("IPv4 address")),
        ipv6: ipv6.map(|ip| format!("{ip}/64").parse().expect("IPv6 address")),
        ..NodeFacts::default()
    }
}

pub(super) fn labelled(mut node: NodeFacts, labels: &[(&str, &str)]) -> NodeFacts {
    node.labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    node
}

pub(super) fn reflector(mut node: NodeFacts, cluster_id: &str) -> NodeFacts {
    node.route_reflector_cluster_id = Some(cluster_id.parse().expect("cluster id"));
    node
}

/// The resources of kind `K` in a YAML stream.
pub(super) fn resources<K: crate::datastore::resources::Registered + Clone>(yaml: &str) -> Vec<K> {
    match parse_file("test.yaml", yaml) {
        Ok(resources) => resources
            .iter()
            .filter_map(|r| r.typed::<K>().cloned())
            .collect(),
        Err(errors) => panic!("{}", errors[0]),
    }
}

pub(super) fn bgp_configuration(name: &str, spec: &str) -> BgpConfiguration {
    resources(&format!(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {{name: {name}}}\nspec: {{{spec}}}\n"
    ))
    .remove(0)
}

pub(super) fn bgp_peer(name: &str, spec: &str) -> BgpPeer {
    resources(&format!(
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {{name: {name}}}\nspec: {{{spec}}}\n"
    ))
    .remove(0)
}

pub(super) fn pool(cidr: &str) -> PoolFacts {
    PoolFacts {
        cidr: cidr.parse().expect("pool CIDR"),
        disabled: false,
        disable_bgp_export: false,
        nat_outgoing: false,
        encapsulation: Encapsulation::None,
    }
}

/// The cluster `nodes`, seen from the one called `this`.
pub(super) fn cluster(this: &str, nodes: &[NodeFacts]) -> BgpInput {
    let (mine, others): (Vec<_>, Vec<_>) = nodes.iter().cloned().partition(|n| n.name == this);
    BgpInput {
        node: mine.into_iter().next().expect("this node is in the list"),
        other_nodes: others,
        ..BgpInput::default()
    }
}

/// Passwords from a map; a missing one is "no such file".
#[derive(Default)]
pub(super) struct Passwords(pub BTreeMap<PasswordSource, String>);

impl PasswordReader for Passwords {
    fn read(&self, from: &PasswordSource) -> Result<String, String> {
        self.0
            .get(from)
            .cloned()
            .ok_or_else(|| "No such file or directory (os error 2)".to_owned())
    }
}

pub(super) fn model(input: &BgpInput) -> BgpModel {
    build(input, &Passwords::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// `(name, passive)` of each session of `family`.
fn sessions(model: &BgpModel, family: Family) -> Vec<(String, bool)> {
    model
        .family(family)
        .sessions
        .iter()
        .map(|s| (s.name.clone(), s.passive))
        .collect()
}

fn names(model: &BgpModel) -> Vec<&str> {
    model.sessions().map(|s| s.name.as_str()).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("network")
}

/// Three nodes on 198.18.0.0/24 (and 2001:db8::/64 for two of them).
fn three_nodes() -> Vec<NodeFacts> {
    vec![
        node("node-1", "198.18.0.1", Some("2001:db8::1")),
        node("node-2", "198.18.0.2", Some("2001:db8::2")),
        node("node-3", "198.18.0.3", None),
    ]
}

#[test]
fn the_mesh_peers_every_node_with_every_other_and_one_side_is_passive() {
    let nodes = three_nodes();
    let m = model(&cluster("node-2", &nodes));
    assert_eq!(m.router_id.to_string(), "198.18.0.2");
    assert_eq!(m.as_number, 64512);
    assert_eq!(m.listen_port, None);
    assert_eq!(m.debug, BirdDebug::States);
    // node-2 connects to the lower address and waits for the higher one.
    assert_eq!(
        sessions(&m, Family::V4),
        [
            ("Mesh_198_18_0_1".to_owned(), false),
            ("Mesh_198_18_0_3".to_owned(), true)
        ]
    );
    let to_1 = m.session("Mesh_198_18_0_1").expect("session");
    assert_eq!(to_1.kind, SessionKind::Mesh);
    assert_eq!(to_1.peer_node.as_deref(), Some("node-1"));
    assert_eq!(to_1.source_address, Some(ip("198.18.0.2")));
    assert_eq!((to_1.peer_as, to_1.local_as), (64512, 64512));
    assert!(to_1.internal());
    assert_eq!(to_1.ttl_security, None);
    assert_eq!(to_1.route_reflector_client, None);
    // Each pair has exactly one passive side.
    for a in &nodes {
        for b in nodes.iter().filter(|b| b.name != a.name) {
            let from_a = model(&cluster(&a.name, &nodes));
            let from_b = model(&cluster(&b.name, &nodes));
            let name = |n: &NodeFacts| format!("Mesh_{}", n.ipv4.unwrap().addr()).replace('.', "_");
            let a_passive = from_a.session(&name(b)).expect("a to b").passive;
            let b_passive = from_b.session(&name(a)).expect("b to a").passive;
            assert_ne!(a_passive, b_passive, "{} and {}", a.name, b.name);
        }
    }
}

#[test]
fn the_passive_side_compares_addresses_as_text_as_calico_does() {
    let nodes = vec![
        node("node-9", "198.18.0.9", None),
        node("node-10", "198.18.0.10", None),
    ];
    // "198.18.0.9" > "198.18.0.10" as text: node-10 waits, node-9 connects.
    let from_10 = model(&cluster("node-10", &nodes));
    assert_eq!(
        sessions(&from_10, Family::V4),
        [("Mesh_198_18_0_9".to_owned(), true)]
    );
    let from_9 = model(&cluster("node-9", &nodes));
    assert_eq!(
        sessions(&from_9, Family::V4),
        [("Mesh_198_18_0_10".to_owned(), false)]
    );
}

#[test]
fn ipv6_sessions_run_between_ipv6_addresses() {
    let nodes = three_nodes();
    let m = model(&cluster("node-1", &nodes));
    // node-3 has no IPv6 address: no IPv6 session with it.
    assert_eq!(
        sessions(&m, Family::V6),
        [("Mesh_2001_db8__2".to_owned(), true)]
    );
    let s = m.session("Mesh_2001_db8__2").expect("session");
    assert_eq!(s.family(), Family::V6);
    assert_eq!(s.source_address, Some(ip("2001:db8::1")));
    // A node without IPv6 has no IPv6 sessions at all.
    let m = model(&cluster("node-3", &nodes));
    assert!(m.ipv6.sessions.is_empty());
    assert_eq!(m.ipv6.address, None);
    assert_eq!(m.ipv4.sessions.len(), 2);
}

#[test]
fn without_the_mesh_only_bgp_peers_make_sessions() {
    let mut input = cluster("node-1", &three_nodes());
    input.configurations = vec![bgp_configuration(
        "default",
        "nodeToNodeMeshEnabled: false, asNumber: 65010",
    )];
    let m = model(&input);
    assert!(names(&m).is_empty(), "{:?}", names(&m));
    assert_eq!(m.as_number, 65010);
}

#[test]
fn route_reflectors_reflect_for_their_clients_through_a_peer_selector() {
    let nodes = vec![
        labelled(
            reflector(
                node("rr-1", "198.18.0.10", Some("2001:db8::10")),
                "244.0.0.1",
            ),
            &[("route-reflector", "true")],
        ),
        labelled(
            reflector(node("rr-2", "198.18.0.11", None), "244.0.0.1"),
            &[("route-reflector", "true")],
        ),
        node("node-1", "198.18.0.1", Some("2001:db8::1")),
        node("node-2", "198.18.0.2", None),
    ];
    let configured = |this: &str| {
        let mut input = cluster(this, &nodes);
        input.configurations = vec![bgp_configuration("default", "nodeToNodeMeshEnabled: false")];
        input.peers = vec![bgp_peer(
            "peer-with-rrs",
            "nodeSelector: all(), peerSelector: route-reflector == 'true'",
        )];
        model(&input)
    };
    // A client peers with both reflectors, actively.
    let client = configured("node-1");
    assert_eq!(
        names(&client),
        ["Node_198_18_0_10", "Node_198_18_0_11", "Node_2001_db8__10"]
    );
    for s in client.sessions() {
        assert_eq!(s.kind, SessionKind::Node);
        assert!(!s.passive, "{}", s.name);
        assert_eq!(s.route_reflector_client, None);
        assert_eq!(s.ttl_security, Some(TtlSecurity::Off));
        assert_eq!(s.origin, "BGPPeer peer-with-rrs");
    }
    // A reflector peers with each client (the reverse sessions) as its reflector, and with
    // the other reflector of its cluster as a peer.
    let rr = configured("rr-1");
    assert_eq!(
        names(&rr),
        [
            "Node_198_18_0_1",
            "Node_198_18_0_11",
            "Node_198_18_0_2",
            "Node_2001_db8__1"
        ]
    );
    let cluster_id = Some("244.0.0.1".parse().unwrap());
    for name in ["Node_198_18_0_1", "Node_198_18_0_2", "Node_2001_db8__1"] {
        let s = rr.session(name).expect(name);
        assert_eq!(s.route_reflector_client, cluster_id, "{name}");
    }
    let other_rr = rr.session("Node_198_18_0_11").expect("rr-2");
    assert_eq!(other_rr.route_reflector_client, None);
    assert_eq!(other_rr.peer_node.as_deref(), Some("rr-2"));
}

#[test]
fn with_the_mesh_on_reflectors_stay_out_of_it() {
    let nodes = vec![
        reflector(node("rr-1", "198.18.0.10", None), "244.0.0.1"),
        node("node-1", "198.18.0.1", None),
        node("node-2", "198.18.0.2", None),
    ];
    assert_eq!(
        names(&model(&cluster("node-1", &nodes))),
        ["Mesh_198_18_0_2"]
    );
    assert!(names(&model(&cluster("rr-1", &nodes))).is_empty());
}

#[test]
fn reverse_peering_manual_leaves_the_reflector_without_clients() {
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
        "nodeSelector: all(), peerSelector: has(route-reflector), reversePeering: Manual",
    )];
    assert!(names(&model(&input)).is_empty());
}

#[test]
fn a_global_peer_is_every_nodes() {
    let nodes = three_nodes();
    for this in ["node-1", "node-2", "node-3"] {
        let mut input = cluster(this, &nodes);
        input.peers = vec![
            bgp_peer("tor", "peerIP: 198.18.0.254, asNumber: 65001"),
            bgp_peer(
                "tor-v6",
                "peerIP: \"[2001:db8::fe]:1790\", asNumber: 65001, sourceAddress: None",
            ),
        ];
        let m = model(&input);
        let s = m.session("Global_198_18_0_254").expect("global session");
        assert_eq!(s.kind, SessionKind::Global);
        assert_eq!((s.peer_as, s.local_as), (65001, 64512));
        assert!(!s.internal());
        assert!(!s.passive, "the peer is not a Calico node");
        assert_eq!(s.peer_node, None);
        assert_eq!(s.source_address, m.ipv4.address);
        assert_eq!(s.ttl_security, Some(TtlSecurity::Off));
        assert_eq!(s.origin, "BGPPeer tor");
        // The IPv6 peer, on its own port, for the nodes with an IPv6 address.
        let v6 = m.session("Global_2001_db8__fe_port_1790");
        assert_eq!(v6.is_some(), this != "node-3", "{this}");
        if let Some(v6) = v6 {
            assert_eq!(v6.peer_port, Some(1790));
            assert_eq!(v6.source_address, None);
        }
    }
}

#[test]
fn a_node_specific_peer_is_only_that_nodes() {
    let nodes = three_nodes();
    let with_peer = |this: &str| {
        let mut input = cluster(this, &nodes);
        input.peers = vec![bgp_peer(
            "tor-2",
            "node: node-2, peerIP: 198.18.0.253, asNumber: 65002, ttlSecurity: 1, keepaliveTime: 10s, maxRestartTime: 300s",
        )];
        model(&input)
    };
    assert!(with_peer("node-1").session("Node_198_18_0_253").is_none());
    let m = with_peer("node-2");
    let s = m.session("Node_198_18_0_253").expect("node session");
    assert_eq!(s.kind, SessionKind::Node);
    assert_eq!(s.ttl_security, Some(TtlSecurity::Hops(1)));
    assert_eq!(s.keepalive_time, Some(10));
    assert_eq!(s.graceful_restart_time, Some(300));
}

#[test]
fn a_node_selector_picks_the_nodes_by_label() {
    let nodes = vec![
        labelled(node("node-1", "198.18.0.1", None), &[("rack", "a")]),
        labelled(node("node-2", "198.18.0.2", None), &[("rack", "b")]),
    ];
    let with_peer = |this: &str| {
        let mut input = cluster(this, &nodes);
        input.peers = vec![bgp_peer(
            "rack-a-tor",
            "nodeSelector: rack == 'a', peerIP: 198.18.0.254, asNumber: 65001",
        )];
        names(&model(&input))
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        with_peer("node-1"),
        ["Mesh_198_18_0_2", "Node_198_18_0_254"]
    );
    assert_eq!(with_peer("node-2"), ["Mesh_198_18_0_1"]);
}

#[test]
fn a_peer_selector_expands_to_the_selected_nodes_addresses() {
    let nodes = vec![
        labelled(
            node("edge-1", "198.18.0.21", Some("2001:db8::21")),
            &[("edge", "")],
        ),
        {
            let mut n = labelled(node("edge-2", "198.18.0.22", None), &[("edge", "")]);
            n.as_number = Some(AsNumber::new(65022));
            n
        },
        node("node-1", "198.18.0.1", Some("2001:db8::1")),
    ];
    let mut input = cluster("node-1", &nodes);
    input.configurations = vec![
        bgp_configuration("default", "nodeToNodeMeshEnabled: false"),
        bgp_configuration("node.edge-1", "listenPort: 1791"),
    ];
    input.peers = vec![bgp_peer("edges", "peerSelector: has(edge)")];
    let m = model(&input);
    assert_eq!(
        names(&m),
        [
            "Global_198_18_0_21_port_1791",
            "Global_198_18_0_22",
            "Global_2001_db8__21_port_1791"
        ]
    );
    let e1 = m.session("Global_198_18_0_21_port_1791").expect("edge-1");
    assert_eq!((e1.peer_port, e1.peer_as), (Some(1791), 64512));
    // Sessions from a peer selector are never passive (Calico's rule).
    assert!(!e1.passive);
    let e2 = m.session("Global_198_18_0_22").expect("edge-2");
    assert_eq!(e2.peer_as, 65022);
    assert!(!e2.internal());
    // The selected nodes peer back with every node (the BGPPeer is global).
    let mut input = cluster("edge-2", &nodes);
    input.configurations = vec![bgp_configuration("default", "nodeToNodeMeshEnabled: false")];
    input.peers = vec![bgp_peer("edges", "peerSelector: has(edge)")];
    let m = model(&input);
    assert_eq!(names(&m), ["Global_198_18_0_21", "Node_198_18_0_1"]);
    assert_eq!(
        m.session("Node_198_18_0_1").map(|s| s.origin.as_str()),
        Some("BGPPeer edges (reverse)")
    );
}

#[test]
fn a_global_peer_at_a_calico_nodes_address_is_passive_on_the_greater_side() {
    let nodes = three_nodes();
    let with_peer = |this: &str| {
        let mut input = cluster(this, &nodes);
        input.configurations = vec![bgp_configuration("default", "nodeToNodeMeshEnabled: false")];
        input.peers = vec![bgp_peer("to-node-3", "peerIP: 198.18.0.3, asNumber: 64512")];
        model(&input)
    };
    let m = with_peer("node-1");
    let s = m.session("Global_198_18_0_3").expect("global");
    assert!(s.passive);
    assert_eq!(s.peer_node.as_deref(), Some("node-3"));
    // node-3 drops the session to itself and peers back with the others.
    let m = with_peer("node-3");
    assert_eq!(names(&m), ["Node_198_18_0_1", "Node_198_18_0_2"]);
    assert!(m.sessions().all(|s| !s.passive));
    assert_eq!(
        m.session("Node_198_18_0_1").map(|s| s.origin.as_str()),
        Some("BGPPeer to-node-3 (reverse)")
    );
}

#[test]
fn a_global_peer_wins_over_a_node_specific_one_to_the_same_address() {
    let mut input = cluster("node-1", &three_nodes());
    input.peers = vec![
        bgp_peer(
            "a-node-tor",
            "node: node-1, peerIP: 198.18.0.254, asNumber: 65009",
        ),
        bgp_peer("z-global-tor", "peerIP: 198.18.0.254, asNumber: 65001"),
    ];
    let m = model(&input);
    assert!(m.session("Node_198_18_0_254").is_none());
    assert_eq!(
        m.session("Global_198_18_0_254").map(|s| s.peer_as),
        Some(65001)
    );
}

#[test]
fn local_as_next_hop_and_allowed_local_as() {
    let mut input = cluster("node-1", &three_nodes());
    input.peers = vec![
        bgp_peer(
            "ebgp",
            "peerIP: 198.18.0.250, asNumber: 65001, localASNumber: 65100, keepOriginalNextHop: true, numAllowedLocalASNumbers: 2",
        ),
        bgp_peer(
            "ibgp",
            "peerIP: 198.18.0.251, asNumber: 64512, keepOriginalNextHop: true",
        ),
        bgp_peer(
            "self",
            "peerIP: 198.18.0.252, asNumber: 64512, nextHopMode: Self",
        ),
    ];
    let m = model(&input);
    let ebgp = m.session("Global_198_18_0_250").expect("ebgp");
    assert_eq!(ebgp.local_as, 65100);
    assert_eq!(ebgp.next_hop, NextHop::Keep);
    assert_eq!(ebgp.allow_local_as, Some(2));
    // keepOriginalNextHop applies to eBGP peers only, as in Calico.
    let ibgp = m.session("Global_198_18_0_251").expect("ibgp");
    assert_eq!(ibgp.next_hop, NextHop::Default);
    let self_hop = m.session("Global_198_18_0_252").expect("self");
    assert_eq!(self_hop.next_hop, NextHop::SelfHop);
}

#[test]
fn listen_ports_and_per_node_settings() {
    let mut nodes = three_nodes();
    nodes[1].as_number = Some(AsNumber::new(65002));
    let mut input = cluster("node-1", &nodes);
    input.configurations = vec![
        bgp_configuration("default", "listenPort: 1790, logSeverityScreen: Debug"),
        bgp_configuration("node.node-2", "listenPort: 1791"),
        bgp_configuration("node.node-1", "logSeverityScreen: Warning"),
    ];
    let m = model(&input);
    assert_eq!(m.listen_port, Some(1790));
    assert_eq!(m.debug, BirdDebug::None);
    let to_2 = m.session("Mesh_198_18_0_2").expect("mesh");
    assert_eq!((to_2.peer_port, to_2.peer_as), (Some(1791), 65002));
    assert!(!to_2.internal());
    let to_3 = m.session("Mesh_198_18_0_3").expect("mesh");
    assert_eq!(to_3.peer_port, Some(1790));
    let m = model(&{
        let mut input = cluster("node-3", &nodes);
        input.configurations = vec![bgp_configuration("default", "logSeverityScreen: Debug")];
        input
    });
    assert_eq!(m.debug, BirdDebug::All);
}

#[test]
fn announcements_blocks_borrowed_addresses_and_pools() {
    let mut input = cluster("node-1", &three_nodes());
    input.pools = vec![
        pool("198.18.64.0/18"),
        PoolFacts {
            disable_bgp_export: true,
            ..pool("198.18.128.0/18")
        },
        PoolFacts {
            disabled: true,
            ..pool("198.18.192.0/18")
        },
        pool("2001:db8:1::/48"),
    ];
    input.blocks = vec![
        net("198.18.64.0/26"),
        net("198.18.128.0/26"),
        net("2001:db8:1::/122"),
    ];
    input.borrowed = vec![
        ip("198.18.64.200"),
        ip("198.18.128.77"),
        ip("198.18.64.5"),
        ip("198.18.192.9"),
        ip("2001:db8:1::1:5"),
    ];
    input.floating_ips = vec![ip("198.19.255.9"), ip("2001:db8:ff::9")];
    let m = model(&input);
    let announced: Vec<String> = m.ipv4.announced().iter().map(ToString::to_string).collect();
    // The block and the borrowed address in the plain pool; the borrowed address of the
    // disabled pool (its addresses still route, as in Calico); nothing from the pool with BGP
    // export disabled; an address inside this node's own block is the block's. Floating IPs,
    // outside every pool, are announced as host routes.
    assert_eq!(
        announced,
        [
            "198.18.64.0/26",
            "198.18.64.200/32",
            "198.18.192.9/32",
            "198.19.255.9/32"
        ]
    );
    let announced: Vec<String> = m.ipv6.announced().iter().map(ToString::to_string).collect();
    assert_eq!(
        announced,
        [
            "2001:db8:1::/122",
            "2001:db8:1::1:5/128",
            "2001:db8:ff::9/128"
        ]
    );
}

#[test]
fn service_ranges_are_announced_unless_the_node_is_excluded() {
    let nodes = three_nodes();
    let mut input = cluster("node-1", &nodes);
    input.configurations = vec![bgp_configuration(
        "default",
        "serviceClusterIPs: [{cidr: 198.19.0.0/16}], serviceExternalIPs: [{cidr: 198.19.128.0/24}, {cidr: 198.19.129.1/32}]",
    )];
    let m = model(&input);
    assert_eq!(
        m.ipv4.service_ranges,
        [net("198.19.0.0/16"), net("198.19.128.0/24")]
    );
    assert_eq!(m.ipv4.announced(), m.ipv4.service_ranges);
    input.node.labels.insert(
        "node.kubernetes.io/exclude-from-external-load-balancers".into(),
        "true".into(),
    );
    let m = model(&input);
    assert!(m.ipv4.service_ranges.is_empty());
    assert_eq!(m.ipv4.rejected_ranges.len(), 2);
}

#[test]
fn reachable_by_adds_a_host_route_to_the_peer() {
    let mut input = cluster("node-1", &three_nodes());
    input.peers = vec![bgp_peer(
        "far-tor",
        "peerIP: 198.18.7.1, asNumber: 65001, reachableBy: 198.18.0.254",
    )];
    let m = model(&input);
    assert_eq!(
        m.ipv4.peer_routes,
        [(net("198.18.7.1/32"), ip("198.18.0.254"))]
    );
}

#[test]
fn passwords_are_read_from_their_source_and_checked() {
    let file = PasswordSource::File("/etc/calico/tor".into());
    let mut input = cluster("node-1", &three_nodes());
    input.configurations = vec![bgp_configuration(
        "default",
        "nodeMeshPassword: {env: MESH_PASSWORD}",
    )];
    input.peers = vec![bgp_peer(
        "tor",
        "peerIP: 198.18.0.254, asNumber: 65001, password: {file: /etc/calico/tor}",
    )];
    let mut passwords = Passwords::default();
    passwords.0.insert(file.clone(), "tor secret".into());
    passwords
        .0
        .insert(PasswordSource::Env("MESH_PASSWORD".into()), "mesh".into());
    let m = build(&input, &passwords).expect("model");
    let tor = m.session("Global_198_18_0_254").expect("tor");
    assert_eq!(
        tor.password.as_ref().map(|p| p.expose()),
        Some("tor secret")
    );
    assert!(
        !format!("{tor:?}").contains("tor secret"),
        "Debug shows no password"
    );
    let mesh = m.session("Mesh_198_18_0_2").expect("mesh");
    assert_eq!(mesh.password.as_ref().map(|p| p.expose()), Some("mesh"));

    // Unreadable: the error names the resource, the field and the file.
    passwords.0.remove(&file);
    let e = build(&input, &passwords).expect_err("no file");
    assert!(matches!(e, BgpError::Password { .. }));
    assert_eq!(
        e.to_string(),
        "BGPPeer tor: spec.password: cannot use the password from file /etc/calico/tor: No such \
         file or directory (os error 2)"
    );
    // Not something BIRD can carry.
    passwords.0.insert(file, "say \"hi\"".into());
    let e = build(&input, &passwords).expect_err("quote");
    assert!(e.to_string().contains("double quote"), "{e}");
}

#[test]
fn a_node_without_ipv4_has_no_router_id() {
    let mut n = node("v6-only", "198.18.0.1", Some("2001:db8::9"));
    n.ipv4 = None;
    let input = cluster("v6-only", &[n]);
    let e = build(&input, &Passwords::default()).expect_err("no router id");
    assert_eq!(
        e.to_string(),
        "node v6-only has no IPv4 address: BIRD's router id is the node's IPv4 address, so BGP \
         needs one"
    );
}

#[test]
fn calicoctl_classifies_sessions_by_protocol_name() {
    assert_eq!(
        SessionKind::of_protocol("Mesh_198_18_0_2"),
        Some(SessionKind::Mesh)
    );
    assert_eq!(
        SessionKind::of_protocol("Global_2001_db8__fe_port_1790"),
        Some(SessionKind::Global)
    );
    assert_eq!(
        SessionKind::of_protocol("Node_198_18_0_254"),
        Some(SessionKind::Node)
    );
    assert_eq!(SessionKind::of_protocol("kernel4"), None);
    assert_eq!(SessionKind::of_protocol("Meshy"), None);
    assert_eq!(SessionKind::Node.description(), "node specific");
    assert_eq!(SessionKind::Mesh.description(), "node-to-node mesh");
}
