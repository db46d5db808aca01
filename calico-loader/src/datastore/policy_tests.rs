//! Tests of the policy kinds (NetworkPolicy, GlobalNetworkPolicy, Profile, Tier): parsing into
//! typed values, Calico's defaults, and one failing case per validation rule.

use std::collections::BTreeMap;

use super::{
    DatastoreError, ErrorKind, LocalDatastore, parse_file,
    resources::{
        Action, GlobalNetworkPolicy, HttpPath, IcmpMatch, IpVersion, NetworkPolicy, Order,
        PerformanceHint, PolicyType, PortSpec, Profile, Protocol, Resource, Rule,
        ServiceAccountMatch, ServiceMatch, Tier, TierDefaultAction,
    },
};

/// The examples of REFERENCE.md §3, verbatim.
const REFERENCE: &str = r#"apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: node1-cni-c0ffee-eth0, namespace: default, labels: {app: web}}
spec: {node: node1, orchestrator: cni, workload: c0ffee, endpoint: eth0, interfaceName: cali0ef24ba1c2d,
       mac: "ca:fe:1d:52:bb:e9", ipNetworks: [198.18.0.24/32, "2001:db8::24/128"], profiles: [default-net],
       ports: [{name: http, protocol: TCP, port: 8080}]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-web, namespace: default}
spec:
  order: 100
  selector: app == 'web'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: TCP, source: {selector: role == 'frontend'}, destination: {ports: [http, "8000:8080"]}}
  - {action: Allow, protocol: ICMP, icmp: {type: 8}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-bad-net}
spec: {order: 10, selector: all(), types: [Ingress], ingress: [{action: Deny, source: {nets: [198.19.250.0/24]}}]}
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: default-net}
spec: {ingress: [{action: Allow}], egress: [{action: Allow}]}
"#;

/// Line where a document appended to [`REFERENCE`] after `---` starts.
const APPENDED_LINE: usize = 28;

const FILE: &str = "policy.yaml";

fn ok(text: &str) -> Vec<Resource> {
    match parse_file(FILE, text) {
        Ok(resources) => resources,
        Err(errors) => panic!(
            "unexpected errors:\n{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn errors(text: &str) -> Vec<DatastoreError> {
    match parse_file(FILE, text) {
        Ok(resources) => panic!("expected errors, parsed {resources:#?}"),
        Err(errors) => errors,
    }
}

fn one(text: &str) -> Resource {
    let mut resources = ok(text);
    assert_eq!(resources.len(), 1, "{resources:#?}");
    resources.remove(0)
}

/// A NetworkPolicy `name` in namespace `default` with `spec` (lines indented by 2).
fn np(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n{spec}"
    )
}

/// A GlobalNetworkPolicy `name` with `spec` (lines indented by 2).
fn gnp(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

/// A Profile `name` with `spec` (lines indented by 2).
fn profile(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

/// A Tier `name` with `spec` (lines indented by 2).
fn tier(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: {name}}}\nspec:\n{spec}"
    )
}

fn network_policy(text: &str) -> NetworkPolicy {
    match one(text) {
        Resource::NetworkPolicy(p) => *p,
        other => panic!("not a NetworkPolicy: {other:#?}"),
    }
}

fn global_network_policy(text: &str) -> GlobalNetworkPolicy {
    match one(text) {
        Resource::GlobalNetworkPolicy(p) => *p,
        other => panic!("not a GlobalNetworkPolicy: {other:#?}"),
    }
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

fn order(v: f64) -> Option<Order> {
    Order::new(v)
}

#[test]
fn reference_examples_parse_into_typed_values() {
    let resources = ok(REFERENCE);
    let kinds: Vec<String> = resources.iter().map(|r| r.key().to_string()).collect();
    assert_eq!(
        kinds,
        [
            "WorkloadEndpoint default/node1-cni-c0ffee-eth0",
            "NetworkPolicy default/allow-web",
            "GlobalNetworkPolicy deny-bad-net",
            "Profile default-net"
        ]
    );

    let policy = resources[1].as_network_policy().unwrap();
    assert_eq!(policy.name(), "allow-web");
    assert_eq!(policy.namespace(), "default");
    let spec = &policy.spec;
    assert_eq!(spec.tier, "default");
    assert_eq!(spec.order, order(100.0));
    assert_eq!(spec.selector.as_deref(), Some("app == 'web'"));
    assert_eq!(spec.types, [PolicyType::Ingress]);
    assert!(spec.egress.is_empty());
    assert_eq!(spec.service_account_selector, None);
    assert_eq!(spec.ingress.len(), 2);
    let web = &spec.ingress[0];
    assert_eq!(web.action, Action::Allow);
    assert_eq!(web.protocol, Some(Protocol::Tcp));
    assert_eq!(web.source.selector.as_deref(), Some("role == 'frontend'"));
    assert_eq!(
        web.destination.ports,
        [PortSpec::Named("http".into()), PortSpec::Range(8000, 8080)]
    );
    assert!(web.destination.nets.is_empty() && web.icmp.is_none());
    let ping = &spec.ingress[1];
    let mut expected = Rule::new(Action::Allow);
    expected.protocol = Some(Protocol::Icmp);
    expected.icmp = Some(IcmpMatch {
        icmp_type: Some(8),
        code: None,
    });
    assert_eq!(*ping, expected);

    let gnp = resources[2].as_global_network_policy().unwrap();
    assert_eq!(gnp.name(), "deny-bad-net");
    assert_eq!(gnp.metadata.namespace, None);
    let spec = &gnp.spec;
    assert_eq!((spec.tier.as_str(), spec.order), ("default", order(10.0)));
    assert_eq!(spec.selector.as_deref(), Some("all()"));
    assert_eq!(spec.types, [PolicyType::Ingress]);
    assert!(!spec.do_not_track && !spec.pre_dnat && !spec.apply_on_forward);
    let mut deny = Rule::new(Action::Deny);
    deny.source.nets = vec![net("198.19.250.0/24")];
    assert_eq!(spec.ingress, [deny]);

    let profile = resources[3].as_profile().unwrap();
    assert_eq!(profile.name(), "default-net");
    assert_eq!(profile.spec.ingress, [Rule::new(Action::Allow)]);
    assert_eq!(profile.spec.egress, [Rule::new(Action::Allow)]);
    assert!(profile.spec.labels_to_apply.is_empty());

    // The appended documents of the failing cases below start where the tests expect.
    let appended = format!("{REFERENCE}---\n{}", tier("t", "  order: 1\n"));
    let e = errors(&format!("{appended}  bogus: 1\n"));
    assert_eq!(e[0].document, Some(5));
    assert!(e[0].line.is_some_and(|l| l >= APPENDED_LINE), "{e:#?}");
}

#[test]
fn policy_types_are_inferred_as_calico_does() {
    let cases = [
        ("", vec![PolicyType::Ingress]),
        ("  ingress: [{action: Allow}]\n", vec![PolicyType::Ingress]),
        ("  egress: [{action: Allow}]\n", vec![PolicyType::Egress]),
        (
            "  ingress: [{action: Allow}]\n  egress: [{action: Deny}]\n",
            vec![PolicyType::Ingress, PolicyType::Egress],
        ),
        // Explicit types are kept, even without rules for them.
        (
            "  types: [Egress, Ingress]\n",
            vec![PolicyType::Egress, PolicyType::Ingress],
        ),
        (
            "  types: []\n  egress: [{action: Allow}]\n",
            vec![PolicyType::Egress],
        ),
        ("  types: null\n", vec![PolicyType::Ingress]),
    ];
    for (spec, expected) in cases {
        let spec = format!("  selector: all()\n{spec}");
        let policy = network_policy(&np("p", &spec));
        assert_eq!(policy.spec.types, expected, "{spec}");
        let policy = global_network_policy(&gnp("p", &spec));
        assert_eq!(policy.spec.types, expected, "{spec}");
        assert_eq!(
            policy.spec.applies_to(PolicyType::Egress),
            expected.contains(&PolicyType::Egress)
        );
    }
}

#[test]
fn empty_and_null_mean_absent() {
    let policy = network_policy(&np(
        "p",
        "  tier: \"\"\n  order: null\n  selector: \"\"\n  ingress: null\n  egress:\n  - {action: Allow, protocol: \"\", source: null, destination: {selector: \"\", nets: null, ports: null}, icmp: null, http: null}\n  serviceAccountSelector: \"\"\n  performanceHints: null\n",
    ));
    let spec = &policy.spec;
    assert_eq!(spec.tier, "default");
    assert_eq!((spec.order, spec.effective_order()), (None, f64::INFINITY));
    assert_eq!(spec.selector, None);
    assert_eq!(spec.service_account_selector, None);
    assert_eq!(spec.egress, [Rule::new(Action::Allow)]);
    assert!(spec.egress[0].destination.is_empty());
    assert_eq!(spec.types, [PolicyType::Egress]);

    // No spec at all is the empty spec.
    for doc in [
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p}\n",
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p}\nspec: null\n",
    ] {
        let policy = network_policy(doc);
        assert_eq!(policy.namespace(), "default");
        assert_eq!(policy.spec.tier, "default");
        assert_eq!(policy.spec.types, [PolicyType::Ingress]);
    }
    let tier = match one("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: t}\n") {
        Resource::Tier(t) => t,
        other => panic!("{other:#?}"),
    };
    assert_eq!(tier.spec.order, None);
    assert_eq!(tier.spec.default_action, TierDefaultAction::Deny);
}

#[test]
fn protocols_by_name_and_number() {
    let cases = [
        ("TCP", Protocol::Tcp, 6),
        ("UDP", Protocol::Udp, 17),
        ("ICMP", Protocol::Icmp, 1),
        ("ICMPv6", Protocol::IcmpV6, 58),
        ("SCTP", Protocol::Sctp, 132),
        ("UDPLite", Protocol::UdpLite, 136),
        ("6", Protocol::Number(6), 6),
        ("\"17\"", Protocol::Number(17), 17),
        ("255", Protocol::Number(255), 255),
        ("47", Protocol::Number(47), 47),
    ];
    for (written, protocol, number) in cases {
        let spec = format!(
            "  ingress: [{{action: Allow, protocol: {written}}}]\n  egress: [{{action: Deny, notProtocol: {written}}}]\n"
        );
        let policy = network_policy(&np("p", &spec));
        assert_eq!(policy.spec.ingress[0].protocol, Some(protocol), "{written}");
        assert_eq!(
            policy.spec.egress[0].not_protocol,
            Some(protocol),
            "{written}"
        );
        assert_eq!(protocol.number(), number);
    }
    // Ports by number go with protocols by number.
    let policy = network_policy(&np(
        "p",
        "  ingress: [{action: Allow, protocol: 17, destination: {ports: [53]}}, {action: Allow, protocol: 1, icmp: {type: 0}}]\n",
    ));
    assert_eq!(
        policy.spec.ingress[0].destination.ports,
        [PortSpec::Number(53)]
    );
}

#[test]
fn named_ports_and_ranges() {
    let policy = network_policy(&np(
        "p",
        "  ingress:\n  - action: Allow\n    protocol: TCP\n    source: {ports: [1024:65535], notPorts: [\"2049\"]}\n    destination: {ports: [80, \"443\", \"8000:8080\", \"9000:9000\", http, metrics-2], notPorts: [\"8081:8089\"]}\n  - action: Deny\n    destination: {ports: [ssh], notPorts: [dns-tcp]}\n",
    ));
    let rule = &policy.spec.ingress[0];
    assert_eq!(rule.source.ports, [PortSpec::Range(1024, 65535)]);
    assert_eq!(rule.source.not_ports, [PortSpec::Number(2049)]);
    assert_eq!(
        rule.destination.ports,
        [
            PortSpec::Number(80),
            PortSpec::Number(443),
            PortSpec::Range(8000, 8080),
            PortSpec::Number(9000),
            PortSpec::Named("http".into()),
            PortSpec::Named("metrics-2".into()),
        ]
    );
    assert_eq!(rule.destination.not_ports, [PortSpec::Range(8081, 8089)]);
    // Named ports need no protocol: the endpoint's port has one.
    let rule = &policy.spec.ingress[1];
    assert_eq!(rule.protocol, None);
    assert_eq!(rule.destination.ports, [PortSpec::Named("ssh".into())]);
    assert_eq!(
        rule.destination.not_ports,
        [PortSpec::Named("dns-tcp".into())]
    );
}

#[test]
fn every_rule_field() {
    let policy = network_policy(&np(
        "security.every-field",
        r#"  tier: security
  order: 12.5
  selector: has(app)
  serviceAccountSelector: role == 'api'
  performanceHints: [AssumeNeededOnEveryNode]
  ingress:
  - action: Allow
    ipVersion: 6
    protocol: ICMPv6
    icmp: {type: 128, code: 0}
    notProtocol: 58
    notICMP: {type: 1}
    source:
      nets: ["2001:db8::/32"]
      notNets: ["2001:db8:1::/48"]
      selector: app == 'client'
      notSelector: quarantine == 'true'
      namespaceSelector: global()
      serviceAccounts: {names: [client, admin], selector: team == 'a'}
    metadata: {annotations: {ticket: "NET-42", example.com/owner: net-team}}
  - action: Allow
    protocol: TCP
    source:
      services: {name: frontend, namespace: web}
      ports: [8080]
    http:
      methods: [GET, HEAD]
      paths: [{exact: /healthz}, {prefix: /api/}]
  egress:
  - action: Log
  - action: Pass
    destination:
      services: {name: kube-dns, namespace: kube-system}
"#,
    ));
    let spec = &policy.spec;
    assert_eq!(spec.tier, "security");
    assert_eq!(spec.order.map(Order::value), Some(12.5));
    assert_eq!(spec.selector.as_deref(), Some("has(app)"));
    assert_eq!(
        spec.service_account_selector.as_deref(),
        Some("role == 'api'")
    );
    assert_eq!(
        spec.performance_hints,
        [PerformanceHint::AssumeNeededOnEveryNode]
    );
    assert_eq!(spec.types, [PolicyType::Ingress, PolicyType::Egress]);

    let rule = &spec.ingress[0];
    assert_eq!(rule.ip_version, Some(IpVersion::V6));
    assert_eq!(rule.protocol, Some(Protocol::IcmpV6));
    assert_eq!(
        rule.icmp,
        Some(IcmpMatch {
            icmp_type: Some(128),
            code: Some(0)
        })
    );
    assert_eq!(rule.not_protocol, Some(Protocol::Number(58)));
    assert_eq!(
        rule.not_icmp,
        Some(IcmpMatch {
            icmp_type: Some(1),
            code: None
        })
    );
    let source = &rule.source;
    assert_eq!(source.nets, [net("2001:db8::/32")]);
    assert_eq!(source.not_nets, [net("2001:db8:1::/48")]);
    assert_eq!(source.selector.as_deref(), Some("app == 'client'"));
    assert_eq!(source.not_selector.as_deref(), Some("quarantine == 'true'"));
    assert_eq!(source.namespace_selector.as_deref(), Some("global()"));
    assert_eq!(
        source.service_accounts,
        Some(ServiceAccountMatch {
            names: vec!["client".into(), "admin".into()],
            selector: Some("team == 'a'".into())
        })
    );
    let annotations = &rule.metadata.as_ref().unwrap().annotations;
    assert_eq!(
        annotations.get("ticket").map(String::as_str),
        Some("NET-42")
    );
    assert!(rule.destination.is_empty());

    let rule = &spec.ingress[1];
    assert_eq!(
        rule.source.services,
        Some(ServiceMatch {
            name: Some("frontend".into()),
            namespace: Some("web".into())
        })
    );
    let http = rule.http.as_ref().unwrap();
    assert_eq!(http.methods, ["GET", "HEAD"]);
    assert_eq!(
        http.paths,
        [
            HttpPath {
                exact: Some("/healthz".into()),
                prefix: None
            },
            HttpPath {
                exact: None,
                prefix: Some("/api/".into())
            }
        ]
    );
    assert_eq!(spec.egress[0], Rule::new(Action::Log));
    assert_eq!(spec.egress[1].action, Action::Pass);
    assert_eq!(
        spec.egress[1]
            .destination
            .services
            .as_ref()
            .unwrap()
            .name
            .as_deref(),
        Some("kube-dns")
    );
}

#[test]
fn global_network_policy_for_host_endpoints() {
    let policy = global_network_policy(&gnp(
        "platform.untracked-dns",
        "  tier: platform\n  order: 0\n  selector: has(host-endpoint)\n  namespaceSelector: projectcalico.org/name == 'kube-system'\n  serviceAccountSelector: all()\n  applyOnForward: true\n  doNotTrack: true\n  ingress: [{action: Allow, protocol: UDP, source: {ports: [53]}}]\n  egress: [{action: Allow, protocol: UDP, destination: {ports: [53]}}]\n",
    ));
    let spec = &policy.spec;
    assert_eq!(spec.tier, "platform");
    assert_eq!(spec.order, order(0.0));
    assert_eq!(
        spec.namespace_selector.as_deref(),
        Some("projectcalico.org/name == 'kube-system'")
    );
    assert_eq!(spec.service_account_selector.as_deref(), Some("all()"));
    assert!(spec.apply_on_forward && spec.do_not_track && !spec.pre_dnat);
    assert_eq!(spec.types, [PolicyType::Ingress, PolicyType::Egress]);

    let policy = global_network_policy(&gnp(
        "pre-dnat",
        "  preDNAT: true\n  applyOnForward: true\n  doNotTrack: false\n  types: [Ingress]\n  ingress: [{action: Deny, source: {nets: [198.51.100.0/24]}}]\n  egress: null\n",
    ));
    assert!(policy.spec.pre_dnat && policy.spec.apply_on_forward);
    assert_eq!(policy.spec.effective_order(), f64::INFINITY);
}

#[test]
fn tiers() {
    let parsed = ok(&format!(
        "{}---\n{}---\n{}---\n{}",
        tier("security", "  order: 100\n  defaultAction: Pass\n"),
        tier("default", "  order: 1000000\n"),
        tier(
            "kube-admin",
            "  order: 1000\n  defaultAction: Pass\nstatus:\n  conditions: [{type: Ready, status: \"True\", reason: Ready}]\n"
        ),
        tier("last", "  defaultAction: \"\"\n"),
    ));
    let tiers: Vec<&Tier> = parsed.iter().filter_map(Resource::as_tier).collect();
    assert_eq!(tiers[0].name(), "security");
    assert_eq!(tiers[0].spec.order, order(100.0));
    assert_eq!(tiers[0].spec.default_action, TierDefaultAction::Pass);
    assert_eq!(tiers[1].spec.default_action, TierDefaultAction::Deny);
    assert_eq!(*tiers[1], Tier::builtin("default").unwrap());
    assert_eq!(tiers[2].status.as_ref().unwrap().conditions.len(), 1);
    assert_eq!(tiers[3].spec.default_action, TierDefaultAction::Deny);
    assert_eq!(tiers[3].spec.effective_order(), f64::INFINITY);
}

#[test]
fn profile_labels_to_apply() {
    let text = profile(
        "team-a",
        "  labelsToApply: {team: a, example.com/tier: gold, empty: \"\"}\n  ingress:\n  - action: Allow\n    source: {selector: team == 'a'}\n  egress:\n  - action: Allow\n    # Profiles are not policies: services go anywhere.\n    source: {services: {name: s}}\n",
    );
    let profile: Profile = match one(&text) {
        Resource::Profile(p) => *p,
        other => panic!("{other:#?}"),
    };
    let expected: BTreeMap<String, String> =
        [("team", "a"), ("example.com/tier", "gold"), ("empty", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    assert_eq!(profile.spec.labels_to_apply, expected);
    assert_eq!(
        profile.spec.ingress[0].source.selector.as_deref(),
        Some("team == 'a'")
    );
}

#[test]
fn selector_fields_name_every_selector() {
    let policy = network_policy(&np(
        "p",
        "  selector: app == 'web'\n  serviceAccountSelector: sa == 'x'\n  ingress:\n  - action: Allow\n    source: {selector: a == '1', notSelector: b == '2', namespaceSelector: c == '3', serviceAccounts: {selector: d == '4'}}\n  egress:\n  - action: Allow\n  - action: Allow\n    destination: {selector: e == '5'}\n",
    ));
    let fields: Vec<(String, &str)> = policy.selector_fields().collect();
    let expected = [
        ("spec.selector", "app == 'web'"),
        ("spec.serviceAccountSelector", "sa == 'x'"),
        ("spec.ingress[0].source.selector", "a == '1'"),
        ("spec.ingress[0].source.notSelector", "b == '2'"),
        ("spec.ingress[0].source.namespaceSelector", "c == '3'"),
        (
            "spec.ingress[0].source.serviceAccounts.selector",
            "d == '4'",
        ),
        ("spec.egress[1].destination.selector", "e == '5'"),
    ];
    assert_eq!(
        fields,
        expected.map(|(path, s)| (path.to_owned(), s)).to_vec()
    );

    let policy = global_network_policy(&gnp(
        "g",
        "  namespaceSelector: ns == 'x'\n  ingress: [{action: Deny, destination: {namespaceSelector: global()}}]\n",
    ));
    let fields: Vec<_> = policy.selector_fields().collect();
    assert_eq!(
        fields,
        [
            ("spec.namespaceSelector".to_owned(), "ns == 'x'"),
            (
                "spec.ingress[0].destination.namespaceSelector".to_owned(),
                "global()"
            ),
        ]
    );

    let resources = ok(REFERENCE);
    let all: Vec<(String, String, &str)> = resources
        .iter()
        .flat_map(|r| {
            r.selector_fields()
                .into_iter()
                .map(|(path, s)| (r.key().to_string(), path, s))
        })
        .collect();
    assert_eq!(
        all,
        [
            (
                "NetworkPolicy default/allow-web".to_owned(),
                "spec.selector".to_owned(),
                "app == 'web'"
            ),
            (
                "NetworkPolicy default/allow-web".to_owned(),
                "spec.ingress[0].source.selector".to_owned(),
                "role == 'frontend'"
            ),
            (
                "GlobalNetworkPolicy deny-bad-net".to_owned(),
                "spec.selector".to_owned(),
                "all()"
            ),
        ]
    );
}

#[test]
fn snapshot_accessors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("reference.yaml"), REFERENCE).unwrap();
    std::fs::write(
        dir.path().join("tiers.yaml"),
        format!(
            "{}---\n{}",
            tier("security", "  order: 10\n  defaultAction: Pass\n"),
            np("security.allow-dns", "  tier: security\n  egress: [{action: Allow, protocol: UDP, destination: {ports: [53]}}]\n")
        ),
    )
    .unwrap();
    let mut datastore = LocalDatastore::new(dir.path());
    let result = datastore.sync();
    assert!(result.errors.is_empty(), "{:#?}", result.errors);
    let snapshot = &result.snapshot;

    let names: Vec<String> = snapshot
        .network_policies()
        .map(|p| p.key().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "NetworkPolicy default/allow-web",
            "NetworkPolicy default/security.allow-dns"
        ]
    );
    assert_eq!(
        snapshot
            .network_policy("default", "allow-web")
            .map(|p| p.spec.ingress.len()),
        Some(2)
    );
    assert!(snapshot.network_policy("other", "allow-web").is_none());
    assert_eq!(snapshot.global_network_policies().count(), 1);
    assert!(snapshot.global_network_policy("deny-bad-net").is_some());
    assert_eq!(
        snapshot.profiles().map(Profile::name).collect::<Vec<_>>(),
        ["default-net"]
    );
    assert!(snapshot.profile("default-net").is_some());
    assert_eq!(
        snapshot.tiers().map(Tier::name).collect::<Vec<_>>(),
        ["security"]
    );
    assert_eq!(
        snapshot.tier("security").map(|t| t.spec.default_action),
        Some(TierDefaultAction::Pass)
    );
    // Built-in tiers exist without being defined; others do not.
    assert!(snapshot.tier("default").is_none());
    assert_eq!(snapshot.effective_tier("default"), Tier::builtin("default"));
    assert_eq!(
        snapshot.effective_tier("security").as_ref(),
        snapshot.tier("security")
    );
    assert_eq!(snapshot.effective_tier("missing"), None);
    // The existing API is unchanged.
    assert_eq!(snapshot.workload_endpoints().count(), 1);
}

/// One invalid document, appended to the reference examples, and the single error it must give.
struct Case {
    doc: String,
    resource: String,
    field: &'static str,
    message: &'static str,
}

fn case(
    doc: String,
    resource: impl Into<String>,
    field: &'static str,
    message: &'static str,
) -> Case {
    Case {
        doc,
        resource: resource.into(),
        field,
        message,
    }
}

fn check(cases: Vec<Case>) {
    for Case {
        doc,
        resource,
        field,
        message,
    } in cases
    {
        let text = format!("{REFERENCE}---\n{doc}");
        let all = errors(&text);
        assert_eq!(all.len(), 1, "{doc}\n{all:#?}");
        let e = &all[0];
        assert_eq!(e.file, FILE, "{e}");
        assert_eq!(e.document, Some(5), "{e}");
        assert_eq!(e.resource.as_deref(), Some(resource.as_str()), "{e}");
        assert_eq!(e.field.as_deref(), Some(field), "{e}");
        assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
        assert!(
            e.message.contains(message),
            "{doc}\nexpected {message:?} in: {e}"
        );
        assert!(
            e.line.is_some_and(|l| l >= APPENDED_LINE) && e.column.is_some(),
            "{e}"
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("{FILE}:"))
                && shown.contains(&format!("({resource}): {field}: ")),
            "{shown}"
        );
    }
}

const NP: &str = "NetworkPolicy default/p";
const GNP: &str = "GlobalNetworkPolicy g";

/// A NetworkPolicy `p` with these ingress rules (a flow sequence's items).
fn ingress(rules: &str) -> String {
    np("p", &format!("  ingress: [{rules}]\n"))
}

/// A NetworkPolicy `p` with these egress rules.
fn egress(rules: &str) -> String {
    np("p", &format!("  egress: [{rules}]\n"))
}

#[test]
fn invalid_values_are_rejected_where_they_are() {
    check(vec![
        case(
            ingress("{protocol: TCP}"),
            NP,
            "spec.ingress[0]",
            "missing field `action`",
        ),
        case(
            ingress("{action: allow}"),
            NP,
            "spec.ingress[0].action",
            "invalid action \"allow\": expected Allow, Deny, Log or Pass",
        ),
        case(
            ingress("{action: \"\"}"),
            NP,
            "spec.ingress[0].action",
            "invalid action",
        ),
        case(
            ingress("{action: Allow, ipVersion: 5}"),
            NP,
            "spec.ingress[0].ipVersion",
            "expected 4 or 6",
        ),
        case(
            ingress("{action: Allow, ipVersion: \"4\"}"),
            NP,
            "spec.ingress[0].ipVersion",
            "expected the number 4 or 6",
        ),
        case(
            ingress("{action: Allow, protocol: tcp}"),
            NP,
            "spec.ingress[0].protocol",
            "invalid protocol \"tcp\"",
        ),
        case(
            ingress("{action: Allow, protocol: Icmp}"),
            NP,
            "spec.ingress[0].protocol",
            "invalid protocol",
        ),
        case(
            ingress("{action: Allow, protocol: 0}"),
            NP,
            "spec.ingress[0].protocol",
            "between 1 and 255",
        ),
        case(
            ingress("{action: Allow, protocol: \"256\"}"),
            NP,
            "spec.ingress[0].protocol",
            "between 1 and 255",
        ),
        case(
            ingress("{action: Allow, notProtocol: GRE}"),
            NP,
            "spec.ingress[0].notProtocol",
            "invalid protocol \"GRE\"",
        ),
        case(
            ingress("{action: Allow, protocol: ICMP, icmp: {type: 255}}"),
            NP,
            "spec.ingress[0].icmp.type",
            "between 0 and 254",
        ),
        case(
            ingress("{action: Allow, protocol: ICMP, icmp: {type: 3, code: 256}}"),
            NP,
            "spec.ingress[0].icmp.code",
            "between 0 and 255",
        ),
        case(
            ingress("{action: Allow, protocol: ICMP, icmp: {type: 3, kode: 1}}"),
            NP,
            "spec.ingress[0].icmp.kode",
            "unknown field",
        ),
        case(
            ingress("{action: Allow, source: {nets: [198.51.100.0/33]}}"),
            NP,
            "spec.ingress[0].source.nets[0]",
            "invalid CIDR",
        ),
        case(
            ingress("{action: Allow, source: {nets: [198.51.100.0/24, 198.51.100.1/24]}}"),
            NP,
            "spec.ingress[0].source.nets[1]",
            "host bits are set",
        ),
        case(
            ingress("{action: Allow, destination: {notNets: [198.51.100.1]}}"),
            NP,
            "spec.ingress[0].destination.notNets[0]",
            "a prefix length is required",
        ),
        case(
            ingress("{action: Allow, protocol: TCP, destination: {ports: [80, 0]}}"),
            NP,
            "spec.ingress[0].destination.ports[1]",
            "between 1 and 65535",
        ),
        case(
            ingress("{action: Allow, protocol: TCP, destination: {ports: [65536]}}"),
            NP,
            "spec.ingress[0].destination.ports[0]",
            "between 1 and 65535",
        ),
        case(
            ingress("{action: Allow, protocol: TCP, source: {ports: [\"90:80\"]}}"),
            NP,
            "spec.ingress[0].source.ports[0]",
            "greater than the maximum",
        ),
        case(
            ingress("{action: Allow, protocol: TCP, source: {notPorts: [\"0:80\"]}}"),
            NP,
            "spec.ingress[0].source.notPorts[0]",
            "between 1 and 65535",
        ),
        case(
            ingress("{action: Allow, protocol: TCP, destination: {ports: [Http]}}"),
            NP,
            "spec.ingress[0].destination.ports[0]",
            "invalid port name",
        ),
        case(
            ingress("{action: Allow, protocol: TCP, destination: {ports: [\"1:2:3\"]}}"),
            NP,
            "spec.ingress[0].destination.ports[0]",
            "invalid port",
        ),
        case(
            ingress("{action: Allow, colour: red}"),
            NP,
            "spec.ingress[0].colour",
            "unknown field `colour`",
        ),
        case(
            ingress("{action: Allow, source: {nest: [10.0.0.0/8]}}"),
            NP,
            "spec.ingress[0].source.nest",
            "unknown field `nest`",
        ),
        case(
            ingress("{action: Allow, destination: {services: {name: Web}}}"),
            NP,
            "spec.ingress[0].destination.services.name",
            "invalid name",
        ),
        case(
            ingress("{action: Allow, http: {paths: [{exact: /a, regex: x}]}}"),
            NP,
            "spec.ingress[0].http.paths[0].regex",
            "unknown field",
        ),
        case(
            np("p", "  types: [ingress]\n"),
            NP,
            "spec.types[0]",
            "invalid policy type \"ingress\": expected Ingress or Egress",
        ),
        case(
            np("p", "  performanceHints: [Fast]\n"),
            NP,
            "spec.performanceHints[0]",
            "invalid performance hint",
        ),
        case(
            np("p", "  order: high\n"),
            NP,
            "spec.order",
            "expected a number",
        ),
        case(
            np("p", "  order: .nan\n"),
            NP,
            "spec.order",
            "must be finite",
        ),
        case(
            np("p", "  tier: Security\n"),
            NP,
            "spec.tier",
            "invalid name",
        ),
        case(
            np("p", &format!("  selector: \"{}\"\n", "a".repeat(1025))),
            NP,
            "spec.selector",
            "limit of 1024",
        ),
        // GlobalNetworkPolicy fields are not NetworkPolicy fields.
        case(
            np("p", "  doNotTrack: true\n"),
            NP,
            "spec.doNotTrack",
            "unknown field `doNotTrack`",
        ),
        case(
            np("p", "  namespaceSelector: all()\n"),
            NP,
            "spec.namespaceSelector",
            "unknown field",
        ),
        case(
            gnp("g", "  preDNAT: yes please\n"),
            GNP,
            "spec.preDNAT",
            "invalid type",
        ),
        case(
            tier("t", "  defaultAction: Allow\n"),
            "Tier t",
            "spec.defaultAction",
            "invalid default action \"Allow\": expected Deny or Pass",
        ),
        case(
            tier("t", "  order: 1\nstatus: {phase: x}\n"),
            "Tier t",
            "status.phase",
            "unknown field",
        ),
        case(
            profile("p", "  labelsToApply: {app: [1]}\n"),
            "Profile p",
            "spec.labelsToApply.app",
            "invalid type",
        ),
        case(
            profile("p", "  types: [Ingress]\n"),
            "Profile p",
            "spec.types",
            "unknown field",
        ),
    ]);
}

#[test]
fn rule_checks() {
    check(vec![
        // validateRule: ports and protocols.
        case(
            ingress("{action: Allow, protocol: ICMP, destination: {ports: [80]}}"),
            NP,
            "spec.ingress[0].destination.ports",
            "protocol ICMP has no ports",
        ),
        case(
            ingress("{action: Allow, protocol: UDPLite, source: {notPorts: [http]}}"),
            NP,
            "spec.ingress[0].source.notPorts",
            "protocol UDPLite has no ports",
        ),
        case(
            ingress("{action: Allow, protocol: 47, destination: {notPorts: [\"1:2\"]}}"),
            NP,
            "spec.ingress[0].destination.notPorts",
            "protocol 47 has no ports",
        ),
        case(
            ingress("{action: Allow, destination: {ports: [http, 8080]}}"),
            NP,
            "spec.ingress[0].destination.ports[1]",
            "must set protocol to TCP, UDP or SCTP",
        ),
        case(
            ingress("{action: Allow, source: {notPorts: [\"1000:2000\"]}}"),
            NP,
            "spec.ingress[0].source.notPorts[0]",
            "numeric port or port range",
        ),
        // Rule CEL: ICMP.
        case(
            ingress("{action: Allow, icmp: {type: 8}}"),
            NP,
            "spec.ingress[0].icmp",
            "require protocol to be ICMP or ICMPv6",
        ),
        case(
            ingress("{action: Allow, protocol: TCP, icmp: {type: 8}}"),
            NP,
            "spec.ingress[0].icmp",
            "ICMP or ICMPv6",
        ),
        case(
            ingress("{action: Allow, protocol: ICMP, icmp: {code: 0}}"),
            NP,
            "spec.ingress[0].icmp.code",
            "ICMP code specified without an ICMP type",
        ),
        case(
            ingress("{action: Allow, notICMP: {code: 1}}"),
            NP,
            "spec.ingress[0].notICMP.code",
            "without an ICMP type",
        ),
        case(
            ingress("{action: Allow, protocol: ICMP, ipVersion: 6}"),
            NP,
            "spec.ingress[0].ipVersion",
            "protocol ICMP requires ipVersion 4",
        ),
        case(
            ingress("{action: Allow, protocol: 1, ipVersion: 6}"),
            NP,
            "spec.ingress[0].ipVersion",
            "requires ipVersion 4",
        ),
        case(
            ingress("{action: Allow, protocol: ICMPv6, ipVersion: 4}"),
            NP,
            "spec.ingress[0].ipVersion",
            "protocol ICMPv6 requires ipVersion 6",
        ),
        case(
            ingress("{action: Allow, notProtocol: ICMP, ipVersion: 6}"),
            NP,
            "spec.ingress[0].ipVersion",
            "notProtocol ICMP requires ipVersion 4",
        ),
        // validateRule: nets.
        case(
            ingress("{action: Allow, ipVersion: 6, source: {nets: [198.51.100.0/24]}}"),
            NP,
            "spec.ingress[0].source.nets[0]",
            "IPv4 CIDR but the rule's ipVersion is 6",
        ),
        case(
            ingress("{action: Allow, ipVersion: 4, destination: {notNets: [\"2001:db8::/32\"]}}"),
            NP,
            "spec.ingress[0].destination.notNets[0]",
            "ipVersion is 4",
        ),
        case(
            ingress(
                "{action: Allow, source: {nets: [198.51.100.0/24]}, destination: {nets: [\"2001:db8::/32\"]}}",
            ),
            NP,
            "spec.ingress[0].destination.nets[0]",
            "both IPv4 and IPv6",
        ),
        case(
            ingress("{action: Allow, source: {notNets: [0.0.0.0/0]}}"),
            NP,
            "spec.ingress[0].source.notNets[0]",
            "catch-all CIDR 0.0.0.0/0",
        ),
        case(
            ingress("{action: Allow, destination: {notNets: [\"::/0\"]}}"),
            NP,
            "spec.ingress[0].destination.notNets[0]",
            "logical contradiction",
        ),
        // EntityRule CEL and validateEntityRule: selectors and services.
        case(
            ingress("{action: Allow, source: {selector: global()}}"),
            NP,
            "spec.ingress[0].source.selector",
            "global() can only be used in an EntityRule namespaceSelector",
        ),
        case(
            egress("{action: Allow, destination: {selector: \"global() && a == 'b'\"}}"),
            NP,
            "spec.egress[0].destination.selector",
            "global() can only be used in an EntityRule namespaceSelector",
        ),
        case(
            ingress("{action: Allow, source: {namespaceSelector: \"global() || has(x)\"}}"),
            NP,
            "spec.ingress[0].source.namespaceSelector",
            "global() cannot be combined with other selectors",
        ),
        case(
            egress("{action: Allow, destination: {services: {namespace: web}}}"),
            NP,
            "spec.egress[0].destination.services.name",
            "services must specify a service name",
        ),
        case(
            egress("{action: Allow, destination: {services: {name: s}, selector: \"a == 'b'\"}}"),
            NP,
            "spec.egress[0].destination.services",
            "selector/notSelector",
        ),
        case(
            egress(
                "{action: Allow, destination: {services: {name: s}, notSelector: \"a == 'b'\"}}",
            ),
            NP,
            "spec.egress[0].destination.services",
            "selector/notSelector",
        ),
        case(
            egress("{action: Allow, destination: {services: {name: s}, namespaceSelector: all()}}"),
            NP,
            "spec.egress[0].destination.services",
            "namespaceSelector and services",
        ),
        case(
            egress(
                "{action: Allow, destination: {services: {name: s}, serviceAccounts: {names: [a]}}}",
            ),
            NP,
            "spec.egress[0].destination.services",
            "serviceAccounts and services",
        ),
        case(
            egress("{action: Allow, destination: {services: {name: s}, notNets: [10.0.0.0/8]}}"),
            NP,
            "spec.egress[0].destination.services",
            "nets/notNets and services",
        ),
        case(
            egress(
                "{action: Allow, protocol: TCP, destination: {services: {name: s}, ports: [80]}}",
            ),
            NP,
            "spec.egress[0].destination.ports",
            "cannot be specified with services",
        ),
        // Rule CEL: HTTP.
        case(
            ingress("{action: Deny, http: {methods: [GET]}}"),
            NP,
            "spec.ingress[0].http",
            "only valid on Allow rules, not Deny",
        ),
        case(
            ingress("{action: Allow, protocol: UDP, http: {methods: [GET]}}"),
            NP,
            "spec.ingress[0].protocol",
            "protocol TCP or none, not UDP",
        ),
        case(
            ingress("{action: Allow, http: {methods: [GET, PUT, GET]}}"),
            NP,
            "spec.ingress[0].http.methods[2]",
            "\"GET\" specified more than once",
        ),
        case(
            ingress("{action: Allow, http: {paths: [{exact: /a, prefix: /b}]}}"),
            NP,
            "spec.ingress[0].http.paths[0]",
            "only one of exact and prefix",
        ),
        case(
            ingress("{action: Allow, http: {paths: [{exact: /a}, {}]}}"),
            NP,
            "spec.ingress[0].http.paths[1]",
            "one of exact or prefix must be set",
        ),
        case(
            ingress("{action: Allow, http: {paths: [{prefix: api}]}}"),
            NP,
            "spec.ingress[0].http.paths[0].prefix",
            "must start with '/'",
        ),
        case(
            ingress("{action: Allow, http: {paths: [{exact: \"/a?b=c\"}]}}"),
            NP,
            "spec.ingress[0].http.paths[0].exact",
            "not contain '?'",
        ),
        // validateRuleMetadata.
        case(
            ingress("{action: Allow, metadata: {annotations: {\"bad key!\": x}}}"),
            NP,
            "spec.ingress[0].metadata.annotations",
            "invalid annotation key",
        ),
    ]);
}

#[test]
fn limits_from_the_crds() {
    let nets: Vec<String> = (0..257)
        .map(|i| format!("10.0.{}.{}/32", i / 256, i % 256))
        .collect();
    let ports: Vec<String> = (1..=51).map(|p| p.to_string()).collect();
    let rules = vec!["{action: Allow}"; 1025].join(", ");
    check(vec![
        case(
            ingress(&format!(
                "{{action: Allow, source: {{nets: [{}]}}}}",
                nets.join(", ")
            )),
            NP,
            "spec.ingress[0].source.nets",
            "257 entries, more than the limit of 256",
        ),
        case(
            ingress(&format!(
                "{{action: Allow, protocol: TCP, destination: {{notPorts: [{}]}}}}",
                ports.join(", ")
            )),
            NP,
            "spec.ingress[0].destination.notPorts",
            "limit of 50",
        ),
        case(
            egress(&rules),
            NP,
            "spec.egress",
            "1025 rules, more than the limit of 1024",
        ),
    ]);
}

#[test]
fn policy_checks() {
    check(vec![
        // validateNetworkPolicySpec.
        case(np("p", "  types: [Ingress, Egress, Ingress]\n"), NP, "spec.types[2]", "'Ingress' specified more than once"),
        case(np("p", "  performanceHints: [AssumeNeededOnEveryNode, AssumeNeededOnEveryNode]\n"), NP, "spec.performanceHints[1]", "more than once"),
        case(egress("{action: Allow, source: {services: {name: s}}}"), NP, "spec.egress[0].source.services", "not allowed in egress rule source"),
        case(ingress("{action: Allow, destination: {services: {name: s}}}"), NP, "spec.ingress[0].destination.services", "not allowed in ingress rule destination"),
        case(egress("{action: Allow, http: {methods: [GET]}}"), NP, "spec.egress[0].http", "not allowed in egress rules"),
        // NetworkPolicySpec CEL.
        case(np("p", "  selector: global()\n"), NP, "spec.selector", "global() can only be used"),
        case(np("p", "  serviceAccountSelector: \"global() && all()\"\n"), NP, "spec.serviceAccountSelector", "global()"),
        // validateNetworkPolicy: names.
        case(np("a.b.c", ""), "NetworkPolicy default/a.b.c", "metadata.name", "invalid NetworkPolicy name"),
        // GlobalNetworkPolicySpec CEL and validateGlobalNetworkPolicySpec.
        case(gnp("g", "  doNotTrack: true\n  preDNAT: true\n  applyOnForward: true\n"), GNP, "spec.preDNAT", "preDNAT and doNotTrack cannot both be true"),
        case(gnp("g", "  preDNAT: true\n  applyOnForward: true\n  egress: [{action: Allow}]\n"), GNP, "spec.egress", "cannot have any egress rules"),
        case(gnp("g", "  preDNAT: true\n  applyOnForward: true\n  types: [Ingress, Egress]\n"), GNP, "spec.types", "cannot have the Egress type"),
        case(gnp("g", "  doNotTrack: true\n"), GNP, "spec.applyOnForward", "applyOnForward must be true if either preDNAT or doNotTrack is true"),
        case(gnp("g", "  preDNAT: true\n  applyOnForward: false\n"), GNP, "spec.applyOnForward", "applyOnForward must be true"),
        case(gnp("g", "  namespaceSelector: global()\n"), GNP, "spec.namespaceSelector", "global() can only be used"),
        case(gnp("g", "  types: [Egress, Egress]\n"), GNP, "spec.types[1]", "'Egress' specified more than once"),
        case(gnp("g", "  egress: [{action: Allow, destination: {services: {name: kube-dns}}}]\n"), GNP, "spec.egress[0].destination.services.namespace", "must specify a namespace"),
        case(gnp("g", "  ingress: [{action: Allow, source: {services: {name: web}}}]\n"), GNP, "spec.ingress[0].source.services.namespace", "must specify a namespace"),
        case(gnp("g", "  egress: [{action: Allow, http: {methods: [GET]}}]\n"), GNP, "spec.egress[0].http", "not allowed in egress rules"),
        // validateGlobalNetworkPolicy: names; cluster scope.
        case(gnp("knp.default.x", ""), "GlobalNetworkPolicy knp.default.x", "metadata.name", "invalid GlobalNetworkPolicy name"),
        case(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g, namespace: default}\n".into(),
            "GlobalNetworkPolicy default/g",
            "metadata.namespace",
            "not namespaced",
        ),
        // Profiles: rules and labelsToApply (the `labels` validator).
        case(profile("p", "  labelsToApply: {\"bad key!\": x}\n"), "Profile p", "spec.labelsToApply", "invalid label key"),
        case(profile("p", "  labelsToApply: {app: \"not a value!\"}\n"), "Profile p", "spec.labelsToApply.app", "invalid label value"),
        case(profile("p", "  egress: [{action: Allow}, {action: Allow, protocol: ICMP, destination: {ports: [53]}}]\n"), "Profile p", "spec.egress[1].destination.ports", "has no ports"),
        // validateTier and the Tier CEL rules.
        case(tier("a.b", "  order: 1\n"), "Tier a.b", "metadata.name", "invalid Tier name"),
        case(tier(&"t".repeat(64), "  order: 1\n"), format!("Tier {}", "t".repeat(64)), "metadata.name", "at most 63"),
        case(tier("default", "  order: 100\n"), "Tier default", "spec.order", "the default tier's order must be 1000000"),
        case(tier("default", "  defaultAction: Deny\n"), "Tier default", "spec.order", "must be 1000000"),
        case(tier("default", "  order: 1000000\n  defaultAction: Pass\n"), "Tier default", "spec.defaultAction", "the default tier's default action must be Deny"),
        case(tier("kube-admin", "  order: 1000\n"), "Tier kube-admin", "spec.defaultAction", "must be Pass"),
        case(tier("kube-baseline", "  order: 1000\n  defaultAction: Pass\n"), "Tier kube-baseline", "spec.order", "must be 10000000"),
    ]);
}

#[test]
fn errors_found_after_deserializing_point_at_their_field() {
    let text = np(
        "p",
        "  ingress:\n  - action: Allow\n  - action: Allow\n    protocol: ICMP\n    destination:\n      nets: [198.51.100.0/24]\n      ports: [80]\n",
    );
    let all = errors(&text);
    assert_eq!(all.len(), 1, "{all:#?}");
    let e = &all[0];
    assert_eq!(
        e.field.as_deref(),
        Some("spec.ingress[1].destination.ports")
    );
    assert_eq!((e.line, e.column), (Some(11), Some(14)), "{e}");

    // A missing field is placed at the mapping that lacks it.
    let all = errors(&gnp("g", "  order: 1\n  doNotTrack: true\n"));
    assert_eq!(all[0].field.as_deref(), Some("spec.applyOnForward"));
    assert_eq!(
        (all[0].line, all[0].column),
        (Some(5), Some(3)),
        "{}",
        all[0]
    );

    // Every problem of a document is reported.
    let all = errors(&ingress(
        "{action: Deny, protocol: ICMP, icmp: {code: 1}, ipVersion: 6, http: {}, source: {notNets: [0.0.0.0/0]}}",
    ));
    let fields: Vec<_> = all.iter().filter_map(|e| e.field.as_deref()).collect();
    assert_eq!(
        fields,
        [
            "spec.ingress[0].http",
            "spec.ingress[0].protocol",
            "spec.ingress[0].ipVersion",
            "spec.ingress[0].source.notNets[0]",
            "spec.ingress[0].source.notNets[0]",
            "spec.ingress[0].icmp.code",
        ],
        "{all:#?}"
    );
}

#[test]
fn invalid_selectors_are_reported_with_field_and_position() {
    let errors = errors(&np(
        "bad-selector",
        "  selector: \"app == 'web' &&\"\n  ingress:\n  - action: Allow\n    source:\n      selector: \"role in {'a' 'b'}\"",
    ));
    let fields: Vec<&str> = errors.iter().filter_map(|e| e.field.as_deref()).collect();
    assert!(fields.contains(&"spec.selector"), "{errors:?}");
    assert!(
        fields.contains(&"spec.ingress[0].source.selector"),
        "{errors:?}"
    );
    let text = errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("position"),
        "the parser's position is in the message: {text}"
    );
    assert!(text.contains("NetworkPolicy"), "{text}");

    // A valid selector in every place passes.
    ok(&np(
        "good-selector",
        "  selector: \"app == 'web' && has(tier)\"\n  ingress:\n  - action: Allow\n    source:\n      selector: \"role in {'a', 'b'}\"",
    ));
}
