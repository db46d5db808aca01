//! Tests of the `BGPConfiguration` and `BGPPeer` kinds: parsing every field, the values in
//! force when fields are absent, and one failing case per check (each naming the resource, the
//! field and the line).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use super::{
    DatastoreError, Resource, parse_file,
    resources::{
        AsNumber, BgpConfiguration, BgpPeer, LogSeverity, NextHopMode, PasswordSource, PeerAddress,
        ResourceKind, ReversePeering, SourceAddress, check_password,
    },
};

fn document(kind: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {{name: {name}}}\nspec: {{{spec}}}\n"
    )
}

fn parse<K: super::resources::Registered + Clone>(text: &str) -> K {
    match parse_file("bgp.yaml", text) {
        Ok(resources) => resources[0]
            .typed::<K>()
            .cloned()
            .unwrap_or_else(|| panic!("not the expected kind: {:?}", resources[0])),
        Err(errors) => panic!("{}", errors[0]),
    }
}

fn config(name: &str, spec: &str) -> BgpConfiguration {
    parse(&document("BGPConfiguration", name, spec))
}

fn peer(spec: &str) -> BgpPeer {
    parse(&document("BGPPeer", "p", spec))
}

/// Every error of `text`.
fn errors(text: &str) -> Vec<DatastoreError> {
    match parse_file("bgp.yaml", text) {
        Ok(resources) => panic!("parsed {resources:?}"),
        Err(errors) => errors,
    }
}

/// Asserts `text` is refused with an error on `field` whose message contains `message`, on
/// line 4 (the spec's), naming `resource`.
fn assert_refused(text: &str, resource: &str, field: &str, message: &str) {
    let errors = errors(text);
    let found = errors.iter().find(|e| e.field.as_deref() == Some(field));
    let Some(e) = found else {
        panic!("{text}: no error on {field}: {errors:#?}");
    };
    assert!(e.message.contains(message), "{text}: {e}");
    assert_eq!(e.file, "bgp.yaml", "{e}");
    assert_eq!(e.resource.as_deref(), Some(resource), "{e}");
    if field.starts_with("spec") {
        assert_eq!(e.line, Some(4), "{e}");
    }
}

#[test]
fn configuration_values_in_force_are_calicos() {
    let c = config("default", "");
    assert!(c.is_default());
    assert_eq!(c.node(), None);
    assert!(c.spec.node_to_node_mesh());
    assert_eq!(c.spec.effective_as_number(), AsNumber::new(64512));
    assert_eq!(c.spec.effective_listen_port(), 179);
    assert_eq!(c.spec.effective_log_severity(), LogSeverity::Info);
    assert!(c.spec.announced_service_ranges().is_empty());
    assert_eq!(c.key().to_string(), "BGPConfiguration default");
    // No spec at all is the same.
    let c: BgpConfiguration = parse(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n",
    );
    assert!(c.spec.node_to_node_mesh());
    assert_eq!(
        (
            BgpConfiguration::INFO.name,
            BgpConfiguration::INFO.plural,
            BgpConfiguration::INFO.namespaced
        ),
        ("BGPConfiguration", "bgpconfigurations", false)
    );
}

#[test]
fn configuration_fields_as_calicoctl_writes_them() {
    let text = r#"apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec:
  logSeverityScreen: Debug
  nodeToNodeMeshEnabled: false
  asNumber: 65010
  listenPort: 1790
  serviceClusterIPs: [{cidr: 198.19.0.0/16}, {cidr: "2001:db8:5::/112"}]
  serviceExternalIPs: [{cidr: 198.18.200.0/24}, {cidr: 198.18.201.7}]
  ignoredInterfaces: [docker*, virbr0]
  bindMode: None
  programClusterRoutes: Enabled
  serviceLoadBalancerAggregation: Enabled
  ipv4NormalRoutePriority: 1024
"#;
    let c: BgpConfiguration = parse(text);
    assert!(!c.spec.node_to_node_mesh());
    assert_eq!(c.spec.effective_as_number().value(), 65010);
    assert_eq!(c.spec.effective_listen_port(), 1790);
    assert_eq!(c.spec.effective_log_severity(), LogSeverity::Debug);
    assert_eq!(c.spec.ignored_interfaces, ["docker*", "virbr0"]);
    // The single external address is announced per service in Calico: not from every node.
    let ranges: Vec<String> = c
        .spec
        .announced_service_ranges()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        ranges,
        ["198.18.200.0/24", "198.19.0.0/16", "2001:db8:5::/112"]
    );

    let c = config(
        "default",
        "nodeMeshPassword: {file: /etc/calico/mesh-password}, nodeMeshMaxRestartTime: 2m",
    );
    assert_eq!(
        c.spec.node_mesh_password.and_then(|p| p.source()),
        Some(PasswordSource::File(PathBuf::from(
            "/etc/calico/mesh-password"
        )))
    );
    assert_eq!(
        c.spec.node_mesh_max_restart_time,
        Some(Duration::from_secs(120))
    );

    let node = config(
        "node.node-1",
        "listenPort: 1791, logSeverityScreen: Warning",
    );
    assert_eq!(node.node(), Some("node-1"));
    assert_eq!(node.spec.listen_port, Some(1791));
    // As numbers may be written in asdot, and as strings.
    assert_eq!(
        config("default", "asNumber: \"1.10\"").spec.as_number,
        Some(AsNumber::new(65546))
    );
    assert_eq!(
        config("default", "asNumber: \"4200000000\"").spec.as_number,
        Some(AsNumber::new(4_200_000_000))
    );
}

#[test]
fn configuration_problems_name_resource_field_and_line() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "default",
            "asNumber: 4294967296",
            "spec.asNumber",
            "invalid AS number 4294967296: must be between 0 and 4294967295",
        ),
        (
            "default",
            "asNumber: -1",
            "spec.asNumber",
            "must be between 0 and 4294967295",
        ),
        (
            "default",
            "asNumber: \"65536.1\"",
            "spec.asNumber",
            "expected a number between 0 and 4294967295, or <0-65535>.<0-65535>",
        ),
        (
            "default",
            "listenPort: 65536",
            "spec.listenPort",
            "must be between 1 and 65535",
        ),
        (
            "default",
            "logSeverityScreen: info",
            "spec.logSeverityScreen",
            "invalid log severity \"info\": expected Trace, Debug, Info, Warning, Error or Fatal",
        ),
        (
            "default",
            "nodeToNodeMeshEnabled: maybe",
            "spec.nodeToNodeMeshEnabled",
            "invalid type",
        ),
        (
            "default",
            "serviceClusterIPs: [{cidr: 198.19.0.1/16}]",
            "spec.serviceClusterIPs[0].cidr",
            "host bits are set",
        ),
        (
            "default",
            "serviceExternalIPs: [{}]",
            "spec.serviceExternalIPs[0]",
            "missing field `cidr`",
        ),
        (
            "default",
            "ignoredInterfaces: [\"*\"]",
            "spec.ignoredInterfaces[0]",
            "not * alone",
        ),
        (
            "default",
            "ignoredInterfaces: [averyveryverylongname]",
            "spec.ignoredInterfaces[0]",
            "must be 1-15 characters",
        ),
        (
            "default",
            "nodeToNodeMeshEnabled: false, nodeMeshMaxRestartTime: 30s",
            "spec.nodeMeshMaxRestartTime",
            "cannot be set when nodeToNodeMeshEnabled is false",
        ),
        (
            "default",
            "nodeToNodeMeshEnabled: false, nodeMeshPassword: {env: MESH}",
            "spec.nodeMeshPassword",
            "cannot be set when nodeToNodeMeshEnabled is false",
        ),
        (
            "default",
            "nodeMeshMaxRestartTime: 2 minutes",
            "spec.nodeMeshMaxRestartTime",
            "invalid duration \"2 minutes\"",
        ),
        (
            "default",
            "nodeMeshMaxRestartTime: 2h",
            "spec.nodeMeshMaxRestartTime",
            "longer than the 4095s",
        ),
        (
            "default",
            "nodeMeshPassword: {secretKeyRef: {name: bgp, key: mesh}}",
            "spec.nodeMeshPassword.secretKeyRef",
            "Kubernetes secrets are not available to calico-ebpf",
        ),
        (
            "default",
            "ipv4NormalRoutePriority: 0",
            "spec.ipv4NormalRoutePriority",
            "must be between 1 and 2147483646",
        ),
        (
            "default",
            "localWorkloadPeeringIPV4: \"2001:db8::1\"",
            "spec.localWorkloadPeeringIPV4",
            "invalid IPv4 address",
        ),
        (
            "default",
            "communities: [{name: a, value: \"65536:1\"}], prefixAdvertisements: [{cidr: 198.18.0.0/16, communities: [a]}]",
            "spec.communities[0].value",
            "a standard community's parts are 16-bit numbers",
        ),
        (
            "default",
            "communities: [{name: a, value: \"1:2\"}]",
            "spec.communities",
            "communities are defined but not used in prefixAdvertisements",
        ),
        (
            "default",
            "prefixAdvertisements: [{cidr: 198.18.0.0/16, communities: [nosuch]}]",
            "spec.prefixAdvertisements[0].communities[0]",
            "neither a community value",
        ),
        (
            "default",
            "bindmode: None",
            "spec.bindmode",
            "unknown field `bindmode`",
        ),
        // Fields only `default` may set.
        (
            "node.node-1",
            "asNumber: 65001",
            "spec.asNumber",
            "only the default BGPConfiguration may set this",
        ),
        (
            "node.node-1",
            "nodeToNodeMeshEnabled: true",
            "spec.nodeToNodeMeshEnabled",
            "only the default BGPConfiguration may set this",
        ),
        (
            "node.node-1",
            "serviceClusterIPs: [{cidr: 198.19.0.0/16}]",
            "spec.serviceClusterIPs",
            "only the default BGPConfiguration may set this",
        ),
        (
            "node.node-1",
            "ignoredInterfaces: [eth9]",
            "spec.ignoredInterfaces",
            "only the default BGPConfiguration may set this",
        ),
        (
            "bgp",
            "",
            "metadata.name",
            "named default (for the cluster) or node.<node name> (for one node)",
        ),
        // Not built: refused, not ignored.
        (
            "default",
            "serviceLoadBalancerIPs: [{cidr: 198.18.100.0/24}]",
            "spec.serviceLoadBalancerIPs",
            "not supported by calico-ebpf: LoadBalancer services are not built",
        ),
        (
            "default",
            "communities: [{name: a, value: \"1:2\"}], prefixAdvertisements: [{cidr: 198.18.0.0/16, communities: [a]}]",
            "spec.communities",
            "BGP communities are not built",
        ),
        (
            "default",
            "bindMode: NodeIP",
            "spec.bindMode",
            "not supported by calico-ebpf",
        ),
        (
            "default",
            "programClusterRoutes: Disabled",
            "spec.programClusterRoutes",
            "only Enabled is built",
        ),
        (
            "default",
            "ipv6NormalRoutePriority: 512",
            "spec.ipv6NormalRoutePriority",
            "only 1024 is accepted",
        ),
        (
            "default",
            "localWorkloadPeeringIPV6: \"fe80::1\"",
            "spec.localWorkloadPeeringIPV6",
            "peering with local workloads is not built",
        ),
    ];
    for (name, spec, field, message) in cases {
        let resource = format!("BGPConfiguration {name}");
        assert_refused(
            &document("BGPConfiguration", name, spec),
            &resource,
            field,
            message,
        );
    }
}

#[test]
fn peer_fields_as_calicoctl_writes_them() {
    let text = r#"apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec:
  nodeSelector: "rack == 'a'"
  peerIP: 198.18.0.254:1790
  asNumber: 65001
  localASNumber: "64512"
  sourceAddress: None
  password: {file: /etc/calico/bgp/tor}
  maxRestartTime: 90s
  keepaliveTime: 1m0.4s
  numAllowedLocalASNumbers: 2
  ttlSecurity: 1
  reachableBy: 198.18.0.1
  nextHopMode: Self
  reversePeering: Manual
"#;
    let p: BgpPeer = parse(text);
    let spec = &p.spec;
    assert_eq!(spec.node_selector.as_deref(), Some("rack == 'a'"));
    assert_eq!(
        spec.peer_ip,
        Some(PeerAddress {
            ip: "198.18.0.254".parse().unwrap(),
            port: Some(1790)
        })
    );
    assert_eq!(spec.as_number, Some(AsNumber::new(65001)));
    assert_eq!(spec.local_as_number, Some(AsNumber::new(64512)));
    assert_eq!(spec.effective_source_address(), SourceAddress::None);
    assert_eq!(
        spec.password.as_ref().and_then(|p| p.source()),
        Some(PasswordSource::File("/etc/calico/bgp/tor".into()))
    );
    assert_eq!(spec.restart_time_secs(), Some(90));
    assert_eq!(spec.keepalive_time_secs(), Some(60));
    assert_eq!(spec.num_allowed_local_as_numbers, Some(2));
    assert_eq!(spec.ttl_security, Some(1));
    assert_eq!(spec.reachable_by, Some("198.18.0.1".parse().unwrap()));
    assert_eq!(spec.next_hop_mode, Some(NextHopMode::SelfHop));
    assert_eq!(spec.reverse_peering, Some(ReversePeering::Manual));
    assert!(!spec.automatic_reverse_peering());
    assert!(!spec.is_global());
    assert_eq!(p.key().to_string(), "BGPPeer tor");
    assert_eq!(
        (BgpPeer::INFO.name, BgpPeer::INFO.plural),
        ("BGPPeer", "bgppeers")
    );
}

#[test]
fn peer_defaults_and_address_forms() {
    let p = peer("peerIP: 198.18.0.254, asNumber: 65001");
    assert!(p.spec.is_global());
    assert_eq!(p.spec.effective_source_address(), SourceAddress::UseNodeIp);
    assert!(p.spec.automatic_reverse_peering());
    assert_eq!(p.spec.ttl_security, None);
    assert_eq!(p.spec.restart_time_secs(), None);
    let address = |text: &str| {
        peer(&format!("peerIP: \"{text}\", asNumber: 1"))
            .spec
            .peer_ip
            .unwrap()
    };
    let v6: IpAddr = "2001:db8::fe".parse().unwrap();
    assert_eq!(address("2001:db8::fe"), PeerAddress { ip: v6, port: None });
    assert_eq!(
        address("[2001:db8::fe]:1790"),
        PeerAddress {
            ip: v6,
            port: Some(1790)
        }
    );
    assert_eq!(
        address("[2001:db8::fe]:1790").to_string(),
        "[2001:db8::fe]:1790"
    );
    assert_eq!(address("198.18.0.9:179").to_string(), "198.18.0.9:179");
    // A peer selected by label, with the AS left to each node; ttlSecurity 0 is off.
    let p = peer(
        "nodeSelector: all(), peerSelector: has(route-reflector), ttlSecurity: 0, password: {env: RR_PASSWORD}",
    );
    assert_eq!(
        p.spec.peer_selector.as_deref(),
        Some("has(route-reflector)")
    );
    assert_eq!(p.spec.ttl_security, None);
    assert_eq!(
        p.spec.password.and_then(|p| p.source()),
        Some(PasswordSource::Env("RR_PASSWORD".into()))
    );
    // AS 0 is "none", as in Calico, and nodes' own AS numbers apply.
    let p = peer("peerSelector: all(), asNumber: 0");
    assert_eq!(p.spec.as_number, None);
}

#[test]
fn peer_problems_name_resource_field_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "peerIP: 198.18.0.300, asNumber: 65001",
            "spec.peerIP",
            "invalid peer address \"198.18.0.300\"",
        ),
        (
            "peerIP: \"198.18.0.1:0\", asNumber: 65001",
            "spec.peerIP",
            "the port must be between 1 and 65535",
        ),
        (
            "peerIP: \"198.18.0.1:70000\", asNumber: 65001",
            "spec.peerIP",
            "the port must be between 1 and 65535",
        ),
        (
            "peerIP: \"[2001:db8::1]\", asNumber: 65001",
            "spec.peerIP",
            "a bracketed IPv6 address needs a port",
        ),
        (
            "peerIP: router.example, asNumber: 65001",
            "spec.peerIP",
            "not an IP address",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 4294967296",
            "spec.asNumber",
            "invalid AS number 4294967296",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: -5",
            "spec.asNumber",
            "must be between 0 and 4294967295",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 65001, localASNumber: 99999999999",
            "spec.localASNumber",
            "invalid AS number",
        ),
        (
            "peerIP: 198.18.0.1",
            "spec.asNumber",
            "required with peerIP",
        ),
        ("node: node-1", "spec", "a BGPPeer needs peerIP"),
        (
            "node: node-1, nodeSelector: all(), peerIP: 198.18.0.1, asNumber: 1",
            "spec.node",
            "node and nodeSelector cannot both be set",
        ),
        (
            "node: Node_1, peerIP: 198.18.0.1, asNumber: 1",
            "spec.node",
            "invalid name",
        ),
        (
            "peerIP: 198.18.0.1, peerSelector: all()",
            "spec.peerIP",
            "peerIP and peerSelector cannot both be set",
        ),
        (
            "peerSelector: all(), asNumber: 65001",
            "spec.asNumber",
            "must be empty when peerSelector is set",
        ),
        (
            "peerSelector: \"rack ==\"",
            "spec.peerSelector",
            "invalid selector",
        ),
        (
            "nodeSelector: \"has(\", peerSelector: all()",
            "spec.nodeSelector",
            "invalid selector",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, sourceAddress: NodeIP",
            "spec.sourceAddress",
            "invalid source address \"NodeIP\": expected UseNodeIP or None",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, keepaliveTime: 300s",
            "spec.keepaliveTime",
            "BIRD needs between 1s and the hold time, 240s",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, keepaliveTime: 200ms",
            "spec.keepaliveTime",
            "out of range",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, maxRestartTime: -5s",
            "spec.maxRestartTime",
            "must not be negative",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, maxRestartTime: \"5\"",
            "spec.maxRestartTime",
            "missing unit",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, maxRestartTime: 90",
            "spec.maxRestartTime",
            "invalid duration 90: a duration is a string with a unit, like \"90s\"",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, maxRestartTime: 5d",
            "spec.maxRestartTime",
            "unknown unit",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, ttlSecurity: 256",
            "spec.ttlSecurity",
            "must be between 0 and 255",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, numAllowedLocalASNumbers: -1",
            "spec.numAllowedLocalASNumbers",
            "must be between 0 and 2147483647",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, reachableBy: \"2001:db8::1\"",
            "spec.reachableBy",
            "different address families",
        ),
        (
            "peerSelector: all(), reachableBy: 198.18.0.1",
            "spec.reachableBy",
            "must be empty when peerIP is empty",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, keepOriginalNextHop: true, nextHopMode: Keep",
            "spec.keepOriginalNextHop",
            "cannot both be set",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, nextHopMode: self",
            "spec.nextHopMode",
            "expected Auto, Self or Keep",
        ),
        (
            "peerSelector: all(), reversePeering: Sometimes",
            "spec.reversePeering",
            "expected Auto or Manual",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, password: {secretKeyRef: {name: bgp-secrets, key: tor}}",
            "spec.password.secretKeyRef",
            "Kubernetes secrets are not available to calico-ebpf: give the password in a file on the node (spec.password.file: /absolute/path) or in an environment variable of the agent (spec.password.env: NAME)",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, password: {secretKeyRef: {name: bgp-secrets}}",
            "spec.password.secretKeyRef",
            "missing field `key`",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, password: {file: tor-password}",
            "spec.password.file",
            "must be absolute",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, password: {env: TOR-PASSWORD}",
            "spec.password.env",
            "must match [A-Za-z_][A-Za-z0-9_]*",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, password: {env: A, file: /b}",
            "spec.password",
            "not both",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, password: {}",
            "spec.password",
            "empty: give file",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, password: {value: hunter2}",
            "spec.password.value",
            "unknown field `value`",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, filters: [export-pools]",
            "spec.filters",
            "not supported by calico-ebpf: BGPFilter is not built",
        ),
        (
            "localWorkloadSelector: has(bgp), asNumber: 65100",
            "spec.localWorkloadSelector",
            "not supported by calico-ebpf",
        ),
        (
            "peerIP: 198.18.0.1, asNumber: 1, peerIp: 198.18.0.2",
            "spec.peerIp",
            "unknown field `peerIp`",
        ),
    ];
    for (spec, field, message) in cases {
        assert_refused(&document("BGPPeer", "p", spec), "BGPPeer p", field, message);
    }
}

/// An unbracketed IPv6 address with a port is ambiguous; Calico reads it as an address, and so
/// does this: `2001:db8::1:1790` is the address `2001:db8::1:1790`.
#[test]
fn an_unbracketed_ipv6_port_is_part_of_the_address() {
    let p = peer("peerIP: \"2001:db8::1:1790\", asNumber: 65001");
    assert_eq!(
        p.spec.peer_ip,
        Some(PeerAddress {
            ip: "2001:db8::1:1790".parse().unwrap(),
            port: None
        })
    );
}

#[test]
fn passwords_bird_cannot_carry_are_refused() {
    assert!(check_password("s3cret-with spaces").is_ok());
    for bad in ["", "with\"quote", "new\nline", &"x".repeat(81)] {
        assert!(check_password(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn bgp_kinds_are_typed_in_the_registry() {
    let text = format!(
        "{}---\n{}",
        document("BGPConfiguration", "default", "asNumber: 65000"),
        document("BGPPeer", "tor", "peerIP: 198.18.0.254, asNumber: 65001")
    );
    let resources = parse_file("bgp.yaml", &text).expect("parses");
    assert!(matches!(resources[0], Resource::BgpConfiguration(_)));
    assert!(matches!(resources[1], Resource::BgpPeer(_)));
    assert!(resources.iter().all(|r| r.as_untyped().is_none()));
    let fields = resources[1].selector_fields();
    assert!(fields.is_empty());
}
