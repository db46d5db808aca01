//! Tests of the `HostEndpoint` kind: parsing as Calico reads it, and one failing case per check,
//! each naming the resource, the field and the line.

use super::{DatastoreError, HostEndpoint, parse_file};

/// A HostEndpoint document with `metadata` and `spec` (YAML flow mapping contents).
fn hep(metadata: &str, spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata: {{{metadata}}}\nspec: {{{spec}}}\n"
    )
}

fn parse(text: &str) -> HostEndpoint {
    match parse_file("heps.yaml", text) {
        Ok(resources) => resources[0]
            .typed::<HostEndpoint>()
            .cloned()
            .unwrap_or_else(|| panic!("not a HostEndpoint: {:?}", resources[0])),
        Err(errors) => panic!("{}", errors[0]),
    }
}

fn error(text: &str) -> DatastoreError {
    match parse_file("heps.yaml", text) {
        Ok(resources) => panic!("parsed {resources:?}"),
        Err(mut errors) => {
            assert_eq!(errors.len(), 1, "{errors:#?}");
            errors.remove(0)
        }
    }
}

#[test]
fn a_host_endpoint_is_read_as_calico_reads_it() {
    let endpoint = parse(&hep(
        "name: node1-eth0, labels: {role: edge}",
        r#"node: node1, interfaceName: eth0, expectedIPs: [198.18.5.1, "2001:db8:5::1"],
           profiles: [projectcalico-default-allow],
           ports: [{name: ssh, protocol: TCP, port: 22}, {name: dns, protocol: 17, port: 53}]"#,
    ));
    assert_eq!(endpoint.key().to_string(), "HostEndpoint node1-eth0");
    assert_eq!(endpoint.spec.node, "node1");
    assert_eq!(endpoint.spec.interface_name.as_deref(), Some("eth0"));
    assert!(!endpoint.spec.all_interfaces());
    assert_eq!(
        endpoint.spec.expected_ips,
        [
            "198.18.5.1".parse::<std::net::IpAddr>().unwrap(),
            "2001:db8:5::1".parse().unwrap()
        ]
    );
    assert_eq!(endpoint.spec.profiles, ["projectcalico-default-allow"]);
    let ports: Vec<(&str, u8, u16)> = endpoint
        .spec
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.protocol.number(), p.port))
        .collect();
    assert_eq!(ports, [("ssh", 6, 22), ("dns", 17, 53)]);
    assert_eq!(endpoint.metadata.labels["role"], "edge");

    let all = parse(&hep("name: all", r#"node: node1, interfaceName: "*""#));
    assert!(all.spec.all_interfaces());
    let by_ip = parse(&hep(
        "name: by-ip",
        "node: node1, expectedIPs: [198.18.5.1]",
    ));
    assert_eq!(by_ip.spec.interface_name, None);
}

#[test]
fn each_problem_names_resource_field_and_line() {
    // (metadata, spec, field, part of the message)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "name: h",
            "node: n, interfaceName: eth0, interface: eth1",
            "spec.interface",
            "unknown field `interface`",
        ),
        (
            "name: h",
            "interfaceName: eth0",
            "spec",
            "missing field `node`",
        ),
        (
            "name: h",
            "node: n",
            "spec.interfaceName",
            "no interface or expected IPs",
        ),
        (
            "name: h",
            "node: n, interfaceName: eth0.with.a.long.name",
            "spec.interfaceName",
            "invalid interface name",
        ),
        (
            "name: h",
            "node: n, interfaceName: \"eth*\"",
            "spec.interfaceName",
            "or \"*\" for every interface",
        ),
        (
            "name: h",
            "node: n, expectedIPs: [198.18.5.1, 198.18.5.0/24]",
            "spec.expectedIPs[1]",
            "invalid IP address",
        ),
        (
            "name: h",
            "node: n, interfaceName: eth0, ports: [{name: ping, protocol: ICMP, port: 1}]",
            "spec.ports[0].protocol",
            "expected TCP, UDP or SCTP",
        ),
        (
            "name: h",
            "node: n, interfaceName: eth0, ports: [{name: 22, protocol: TCP, port: 22}]",
            "spec.ports[0].name",
            "",
        ),
        (
            "name: h",
            "node: n, interfaceName: eth0, ports: [{name: ssh, protocol: TCP, port: 0}]",
            "spec.ports[0].port",
            "must be between 1 and 65535",
        ),
        (
            "name: h",
            "node: n, interfaceName: eth0, ports: [{name: ssh, protocol: TCP, port: 22, hostPort: 22}]",
            "spec.ports[0].hostPort",
            "unknown field `hostPort`",
        ),
        (
            "name: h, namespace: prod",
            "node: n, interfaceName: eth0",
            "metadata.namespace",
            "HostEndpoint is not namespaced",
        ),
        (
            "name: h",
            "node: Not_A_Node, interfaceName: eth0",
            "spec.node",
            "Not_A_Node",
        ),
    ];
    for (metadata, spec, field, message) in cases {
        let text = hep(metadata, spec);
        let e = error(&text);
        assert_eq!(e.file, "heps.yaml", "{e}");
        assert!(
            e.resource
                .as_deref()
                .is_some_and(|r| r.starts_with("HostEndpoint")),
            "{text}: {e}"
        );
        assert_eq!(e.field.as_deref(), Some(*field), "{text}: {e}");
        assert!(e.message.contains(message), "{text}: {e}");
        assert!(e.line.is_some_and(|line| (3..=4).contains(&line)), "{e}");
    }
}
