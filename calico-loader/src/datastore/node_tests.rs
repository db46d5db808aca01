//! Tests of the `Node` and `IPAMConfiguration` kinds: parsing what calico-node and calicoctl
//! write, Calico's defaults, and one failing case per check, each naming the field.

use super::{
    DatastoreError, parse_file,
    resources::{IpamConfiguration, Node},
};

fn node(spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: node1, labels: {{rack: r1}}}}\nspec: {spec}\n"
    )
}

fn error(text: &str) -> DatastoreError {
    match parse_file("nodes.yaml", text) {
        Ok(resources) => panic!("parsed {resources:?}"),
        Err(mut errors) => {
            assert_eq!(errors.len(), 1, "{errors:#?}");
            errors.remove(0)
        }
    }
}

#[test]
fn nodes_as_calico_node_writes_them() {
    // As calico-node stores itself (JSON is YAML), with every NodeSpec field.
    let text = node(
        r#"{"bgp": {"ipv4Address": "198.18.0.1/24", "ipv6Address": "2001:db8::1/64", "asNumber": "1.10", "routeReflectorClusterID": "224.0.0.1", "ipv4IPIPTunnelAddr": "198.18.9.1"},
            "ipv4VXLANTunnelAddr": "198.18.9.2", "vxlanTunnelMACAddr": "66:0b:3c:1f:cd:01",
            "orchRefs": [{"nodeName": "node1", "orchestrator": "k8s"}],
            "wireguard": {"interfaceIPv4Address": "198.18.9.3"},
            "addresses": [{"address": "198.18.0.1", "type": "CalicoNodeIP"}, {"address": "198.18.0.0/24"}],
            "interfaces": [{"name": "eth0", "addresses": ["198.18.0.1"]}]}"#,
    );
    let resources = parse_file("nodes.yaml", &text).unwrap_or_else(|e| panic!("{}", e[0]));
    let parsed = resources[0].typed::<Node>().expect("a Node");
    let bgp = parsed.spec.bgp.as_ref().expect("bgp");
    assert_eq!(
        bgp.ipv4_address,
        Some("198.18.0.1/24".parse().unwrap()),
        "the address keeps its host bits"
    );
    assert_eq!(bgp.ipv6_address, Some("2001:db8::1/64".parse().unwrap()));
    assert_eq!(bgp.as_number, Some(65_546), "dotted 1.10 is 1*65536+10");
    assert_eq!(
        bgp.route_reflector_cluster_id,
        Some("224.0.0.1".parse().unwrap())
    );
    assert_eq!(
        parsed.metadata.labels.get("rack").map(String::as_str),
        Some("r1")
    );
    let bare = parse_file(
        "n.yaml",
        &node(r#"{"bgp": {"ipv4Address": "198.18.0.1", "asNumber": 64512}}"#),
    )
    .unwrap_or_else(|e| panic!("{}", e[0]));
    let bgp = bare[0]
        .typed::<Node>()
        .and_then(|n| n.spec.bgp.clone())
        .expect("bgp");
    assert_eq!(bgp.ipv4_address, Some("198.18.0.1/32".parse().unwrap()));
    assert_eq!(bgp.as_number, Some(64512));
    // No spec at all.
    let empty = parse_file(
        "n.yaml",
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n2}\n",
    );
    assert!(empty.is_ok(), "{empty:?}");
}

#[test]
fn node_errors_name_the_field() {
    for (spec, field, says) in [
        (r#"{"bgp": {}}"#, "spec.bgp", "should not be empty"),
        (
            r#"{"bgp": {"ipv4Address": "2001:db8::1/64"}}"#,
            "spec.bgp.ipv4Address",
            "not an IPv4",
        ),
        (
            r#"{"bgp": {"ipv6Address": "198.18.0.1/24"}}"#,
            "spec.bgp.ipv6Address",
            "not an IPv6",
        ),
        (
            r#"{"bgp": {"asNumber": "1.2.3"}}"#,
            "spec.bgp.asNumber",
            "invalid AS number",
        ),
        (
            r#"{"bgp": {"asNumber": 4294967296}}"#,
            "spec.bgp.asNumber",
            "invalid AS number",
        ),
        (
            r#"{"bgp": {"routeReflectorClusterID": "x"}}"#,
            "spec.bgp.routeReflectorClusterID",
            "invalid IPv4",
        ),
        (
            r#"{"addresses": [{"address": "198.18.0.1/24"}]}"#,
            "spec.addresses[0].address",
            "host bits",
        ),
        (
            r#"{"addresses": [{"address": "198.18.0.1", "type": "Other"}]}"#,
            "spec.addresses[0].type",
            "address type",
        ),
        (
            r#"{"vxlanTunnelMACAddr": "zz"}"#,
            "spec.vxlanTunnelMACAddr",
            "MAC",
        ),
        (r#"{"bgp": {"unknown": 1}}"#, "spec.bgp", "unknown field"),
    ] {
        let e = error(&node(spec));
        let text = e.to_string();
        assert!(
            text.contains(field) && text.contains(says),
            "{spec}: {text}"
        );
        assert!(text.contains("Node node1"), "{text}");
    }
}

#[test]
fn ipam_configuration_defaults_and_checks() {
    let doc = |spec: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {{name: default}}\n{spec}"
        )
    };
    let parsed = parse_file("c.yaml", &doc("")).unwrap_or_else(|e| panic!("{}", e[0]));
    let config = parsed[0].typed::<IpamConfiguration>().expect("typed");
    assert!(!config.spec.strict_affinity);
    assert!(config.spec.auto_allocate_blocks, "the CRD's default");
    assert_eq!(config.spec.max_blocks_per_host, 0);
    let e = error(&doc("spec: {maxBlocksPerHost: 1000001}\n"));
    assert!(e.to_string().contains("spec.maxBlocksPerHost"), "{e}");
    let e = error(&doc("spec: {kubeVirtVMAddressPersistence: Maybe}\n"));
    assert!(
        e.to_string().contains("spec.kubeVirtVMAddressPersistence"),
        "{e}"
    );
    let e = error(
        "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: mine}\n",
    );
    assert!(e.to_string().contains("metadata.name"), "{e}");
}
