//! The compiled tables against the reference evaluator: hand-written cases with their expected
//! verdicts, random policy sets, a large rule set, and the errors.

use std::{collections::HashSet, fmt::Write as _, net::IpAddr, time::Instant};

use super::{compiled::value_bytes, *};
use crate::{
    datastore::{LocalDatastore, Snapshot},
    model::rules::RuleRegistry,
};

fn snapshot(yaml: &str) -> Snapshot {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("test.yaml"), yaml).expect("write");
    let sync = LocalDatastore::new(dir.path()).sync();
    assert!(
        sync.errors.is_empty(),
        "{}\n{yaml}",
        sync.errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    sync.snapshot
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn packet(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> PacketTuple {
    PacketTuple {
        src: ip(src),
        dst: ip(dst),
        proto,
        sport,
        dport,
    }
}

/// `policy#index`, `tier:name`, `profile:name#index` or `no-match`.
fn short(rule: &RuleRef) -> String {
    match rule {
        RuleRef::PolicyRule { policy, index, .. } => format!("{}#{index}", policy.name),
        RuleRef::TierDefault { tier, .. } => format!("tier:{tier}"),
        RuleRef::ProfileRule { profile, index, .. } => format!("profile:{profile}#{index}"),
        RuleRef::NoMatch { .. } => "no-match".into(),
        RuleRef::ForwardDefault { .. } => "forward-default".into(),
        RuleRef::UntrackedDefault { .. } => "untracked-default".into(),
    }
}

/// `allow web#0`, `deny tier:default log web#1`...
fn describe(allow: bool, rule: &RuleRef, log_rule: Option<&RuleRef>) -> String {
    describe_as(if allow { "allow" } else { "deny" }, rule, log_rule)
}

/// As [`describe`], with the verdict in words (`allow`, `deny`, `pass`).
fn describe_as(verdict: &str, rule: &RuleRef, log_rule: Option<&RuleRef>) -> String {
    let mut text = format!("{verdict} {}", short(rule));
    if let Some(log_rule) = log_rule {
        let _ = write!(text, " log {}", short(log_rule));
    }
    text
}

/// Checks that a trie would accept the entries: no two with the same key and prefix length,
/// no bits beyond the prefix, class indexes in range.
fn check_well_formed(compiled: &CompiledDirection) {
    let mut addr_keys = HashSet::new();
    for e in &compiled.addrs_v4 {
        let remote = u32::from_be_bytes(e.remote);
        assert!(
            e.remote_prefix == 32 || remote & (u32::MAX >> e.remote_prefix) == 0,
            "{e:?}"
        );
        assert!(
            addr_keys.insert((e.local.to_vec(), e.remote.to_vec(), e.remote_prefix)),
            "duplicate {e:?}"
        );
        assert!(e.class < compiled.address_classes);
    }
    for e in &compiled.addrs_v6 {
        let remote = u128::from_be_bytes(e.remote);
        assert!(
            e.remote_prefix == 128 || remote & (u128::MAX >> e.remote_prefix) == 0,
            "{e:?}"
        );
        assert!(
            addr_keys.insert((e.local.to_vec(), e.remote.to_vec(), e.remote_prefix)),
            "duplicate {e:?}"
        );
        assert!(e.class < compiled.address_classes);
    }
    let mut proto_keys = HashSet::new();
    for e in &compiled.protos {
        assert!(
            e.class < compiled.address_classes && e.port_class < compiled.port_classes,
            "{e:?}"
        );
        if let Some((sport, bits)) = e.sport {
            assert!(
                (1..=16).contains(&bits) && (bits == 16 || sport & (u16::MAX >> bits) == 0),
                "{e:?}"
            );
        }
        assert!(
            proto_keys.insert((e.class, e.proto, e.sport)),
            "duplicate {e:?}"
        );
    }
    let mut port_keys = HashSet::new();
    for e in &compiled.ports {
        let (dport, bits) = e.dport;
        assert!(e.port_class < compiled.port_classes && bits <= 16, "{e:?}");
        assert!(bits == 16 || dport & (u16::MAX >> bits) == 0, "{e:?}");
        assert!(port_keys.insert((e.port_class, e.dport)), "duplicate {e:?}");
    }
}

/// A snapshot with its compiled endpoint, to check packets against.
struct Fixture {
    snapshot: Snapshot,
    registry: RuleRegistry,
    compiled: CompiledEndpoint,
    namespace: String,
    name: String,
}

impl Fixture {
    fn new(yaml: &str, namespace: &str, name: &str) -> Self {
        let snapshot = snapshot(yaml);
        let mut registry = RuleRegistry::default();
        let compiled = {
            let ctx = PolicyContext::new(&snapshot);
            let wep = snapshot
                .workload_endpoint(namespace, name)
                .expect("the endpoint");
            compile_endpoint(&ctx, &mut registry, wep).expect("compiles")
        };
        check_well_formed(&compiled.ingress);
        check_well_formed(&compiled.egress);
        Fixture {
            snapshot,
            registry,
            compiled,
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The reference verdict and the compiled one, described.
    fn verdicts(
        &self,
        ctx: &PolicyContext<'_>,
        direction: Direction,
        packet: &PacketTuple,
    ) -> (String, String) {
        let wep = self
            .snapshot
            .workload_endpoint(&self.namespace, &self.name)
            .expect("the endpoint");
        let outcome = evaluate(ctx, wep, direction, packet).expect("evaluates");
        let reference = describe(outcome.allow, &outcome.rule, outcome.log_rule.as_ref());
        let (compiled, local, remote) = match direction {
            Direction::Ingress => (&self.compiled.ingress, packet.dst, packet.src),
            Direction::Egress => (&self.compiled.egress, packet.src, packet.dst),
        };
        let (sport, dport) = packet.key_ports();
        let found = match compiled.lookup(local, remote, packet.proto, sport, dport) {
            None => "no verdict".to_owned(),
            Some(verdict) => {
                let rule = |id: u32| self.registry.get(id).map(|entry| entry.rule.clone());
                match rule(verdict.rule) {
                    None => format!("unknown rule {}", verdict.rule),
                    Some(decided) => {
                        let logged = (verdict.flags & verdict_flags::LOG != 0)
                            .then(|| rule(verdict.log_rule))
                            .flatten();
                        describe(
                            verdict.action == verdict_action::ALLOW,
                            &decided,
                            logged.as_ref(),
                        )
                    }
                }
            }
        };
        (reference, found)
    }
}

use calico_ebpf_common::{verdict_action, verdict_flags};

const BASE: &str = r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  node: n1
  interfaceName: caliweb
  ipNetworks: [198.18.0.10/32, "2001:db8::10/128"]
  profiles: [kns.prod, p1, p2, open]
  serviceAccountName: web-sa
  ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 53}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: client, namespace: prod, labels: {role: frontend}}
spec:
  node: n2
  interfaceName: caliclient
  ipNetworks: [198.18.1.1/32, "2001:db8::1:1/128"]
  profiles: [kns.prod]
  serviceAccountName: frontend-sa
  ports: [{name: http, protocol: TCP, port: 8081}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: client, namespace: dev, labels: {role: frontend}}
spec:
  node: n2
  interfaceName: calidev
  ipNetworks: [198.18.2.1/32]
  profiles: [kns.dev]
  ports: [{name: http, protocol: TCP, port: 8082}]
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.prod}
spec: {labelsToApply: {env: production}}
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.dev}
spec: {labelsToApply: {env: dev}}
"#;

fn gnp(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

fn np(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: prod}}\nspec: {spec}\n"
    )
}

fn profile(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

/// A GlobalNetworkSet; `labels` and `nets` are YAML flow values.
fn gns(name: &str, labels: &str, nets: &str) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {{name: {name}, labels: {labels}}}\nspec: {{nets: {nets}}}\n"
    )
}

/// A NetworkSet in `namespace`; `labels` and `nets` are YAML flow values.
fn netset(namespace: &str, name: &str, labels: &str, nets: &str) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {{name: {name}, namespace: {namespace}, labels: {labels}}}\nspec: {{nets: {nets}}}\n"
    )
}

fn tier(name: &str, order: u32, default_action: &str) -> String {
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: {name}}}\nspec: {{order: {order}, defaultAction: {default_action}}}\n"
    )
}

const WEB4: &str = "198.18.0.10";
const WEB6: &str = "2001:db8::10";
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMP6: u8 = 58;

/// An ingress packet to the endpoint from `src`.
fn to_web(src: &str, proto: u8, sport: u16, dport: u16) -> (Direction, PacketTuple) {
    let dst = if src.contains(':') { WEB6 } else { WEB4 };
    (Direction::Ingress, packet(src, dst, proto, sport, dport))
}

/// An egress packet from the endpoint to `dst`.
fn from_web(dst: &str, proto: u8, sport: u16, dport: u16) -> (Direction, PacketTuple) {
    let src = if dst.contains(':') { WEB6 } else { WEB4 };
    (Direction::Egress, packet(src, dst, proto, sport, dport))
}

fn icmp(icmp_type: u8, code: u8) -> u16 {
    u16::from(icmp_type) << 8 | u16::from(code)
}

/// A named case: resources added to [`BASE`], and packets with their expected verdicts.
type Case = (
    &'static str,
    String,
    Vec<((Direction, PacketTuple), &'static str)>,
);

#[test]
fn compiled_tables_give_the_expected_verdicts() {
    let cases: Vec<Case> = vec![
        (
            "no policy and no profile with rules: the final deny",
            String::new(),
            vec![
                (to_web("198.18.1.1", TCP, 1000, 80), "deny no-match"),
                (from_web("2001:db8::1:1", UDP, 1000, 53), "deny no-match"),
            ],
        ),
        (
            "an allow-all profile",
            profile("open", "{ingress: [{action: Allow}], egress: [{action: Allow}]}"),
            vec![
                (to_web("203.0.113.9", 47, 0, 0), "allow profile:open#0"),
                (from_web("2001:db8::99", ICMP6, 0, icmp(128, 0)), "allow profile:open#0"),
            ],
        ),
        (
            "a NetworkPolicy's selector only sees its own namespace",
            np("np", "{ingress: [{action: Allow, source: {selector: role == 'frontend'}}]}"),
            vec![
                (to_web("198.18.1.1", TCP, 1000, 80), "allow np#0"),
                (to_web("2001:db8::1:1", UDP, 1000, 80), "allow np#0"),
                (to_web("198.18.2.1", TCP, 1000, 80), "deny tier:default"),
                (to_web("198.18.9.9", TCP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "a namespaceSelector reaches other namespaces",
            np("np", "{ingress: [{action: Allow, source: {namespaceSelector: env == 'dev', selector: role == 'frontend'}}]}"),
            vec![
                (to_web("198.18.2.1", TCP, 1000, 80), "allow np#0"),
                (to_web("198.18.1.1", TCP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "a GlobalNetworkPolicy's selector sees every namespace",
            gnp("g", "{ingress: [{action: Allow, source: {selector: role == 'frontend'}}]}"),
            vec![
                (to_web("198.18.2.1", TCP, 1000, 80), "allow g#0"),
                (to_web("198.18.1.1", TCP, 1000, 80), "allow g#0"),
                (to_web("198.18.1.2", TCP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "service account names",
            np("np", "{ingress: [{action: Allow, source: {serviceAccounts: {names: [frontend-sa]}}}]}"),
            vec![
                (to_web("198.18.1.1", TCP, 1000, 80), "allow np#0"),
                (to_web("198.18.2.1", TCP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "notSelector",
            gnp("g", "{ingress: [{action: Deny, source: {notSelector: role == 'frontend'}}, {action: Allow}]}"),
            vec![
                (to_web("198.18.9.9", TCP, 1000, 80), "deny g#0"),
                (to_web("198.18.1.1", TCP, 1000, 80), "allow g#1"),
                (to_web("2001:db8::1:1", TCP, 1000, 80), "allow g#1"),
                (to_web("2001:db8::1:2", TCP, 1000, 80), "deny g#0"),
            ],
        ),
        (
            "notSelector: global() excludes every endpoint (Calico's global() is true in endpoint selectors)",
            gnp("g", "{ingress: [{action: Deny, source: {notSelector: global()}}, {action: Allow}]}"),
            vec![
                (to_web("198.18.9.9", TCP, 1000, 80), "deny g#0"),
                (to_web("198.18.1.1", TCP, 1000, 80), "allow g#1"),
                (to_web("198.18.2.1", TCP, 1000, 80), "allow g#1"),
                (to_web("2001:db8::1:1", TCP, 1000, 80), "allow g#1"),
            ],
        ),
        (
            "a NetworkPolicy's notSelector alone limits the rule to the policy's namespace",
            np("np", "{ingress: [{action: Deny, source: {notSelector: role == 'frontend'}}, {action: Allow}]}"),
            vec![
                (to_web("198.18.0.10", TCP, 1000, 80), "deny np#0"),
                (to_web("198.18.9.9", TCP, 1000, 80), "allow np#1"),
                (to_web("198.18.2.1", TCP, 1000, 80), "allow np#1"),
            ],
        ),
        (
            "nets and notNets",
            gnp("g", "{ingress: [{action: Allow, source: {nets: [198.18.8.0/22], notNets: [198.18.9.0/24]}}]}"),
            vec![
                (to_web("198.18.8.0", TCP, 1000, 80), "allow g#0"),
                (to_web("198.18.11.255", TCP, 1000, 80), "allow g#0"),
                (to_web("198.18.9.1", TCP, 1000, 80), "deny tier:default"),
                (to_web("198.18.12.0", TCP, 1000, 80), "deny tier:default"),
                (to_web("198.18.7.255", TCP, 1000, 80), "deny tier:default"),
                (to_web("2001:db8::1", TCP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "ports, port ranges and notPorts",
            gnp(
                "g",
                r#"{ingress: [{action: Allow, protocol: TCP, destination: {ports: [80, "8000:8010"]}},
                              {action: Deny, protocol: TCP, destination: {notPorts: [443]}}]}"#,
            ),
            vec![
                (to_web("198.18.1.1", TCP, 1000, 80), "allow g#0"),
                (to_web("198.18.1.1", TCP, 1000, 8000), "allow g#0"),
                (to_web("198.18.1.1", TCP, 1000, 8010), "allow g#0"),
                (to_web("198.18.1.1", TCP, 1000, 8011), "deny g#1"),
                (to_web("198.18.1.1", TCP, 1000, 443), "deny tier:default"),
                (to_web("198.18.1.1", UDP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "source ports",
            gnp("g", "{ingress: [{action: Allow, protocol: UDP, source: {ports: [53]}}]}"),
            vec![
                (to_web("198.18.1.1", UDP, 53, 9999), "allow g#0"),
                (to_web("198.18.1.1", UDP, 54, 53), "deny tier:default"),
            ],
        ),
        (
            "named ports of the endpoint itself (ingress destination)",
            gnp("g", "{ingress: [{action: Allow, destination: {ports: [http, dns]}}]}"),
            vec![
                (to_web("198.18.1.1", TCP, 1000, 8080), "allow g#0"),
                (to_web("2001:db8::1:1", TCP, 1000, 8080), "allow g#0"),
                (to_web("198.18.1.1", UDP, 1000, 53), "allow g#0"),
                (to_web("198.18.1.1", UDP, 1000, 8080), "deny tier:default"),
                (to_web("198.18.1.1", TCP, 1000, 8081), "deny tier:default"),
                (to_web("198.18.1.1", ICMP, 0, icmp(8, 0)), "deny tier:default"),
            ],
        ),
        (
            "named ports of remote endpoints, each with its own number (egress destination)",
            gnp("g", "{egress: [{action: Allow, protocol: TCP, destination: {selector: role == 'frontend', ports: [http]}}]}"),
            vec![
                (from_web("198.18.1.1", TCP, 1000, 8081), "allow g#0"),
                (from_web("198.18.1.1", TCP, 1000, 8082), "deny tier:default"),
                (from_web("198.18.2.1", TCP, 1000, 8082), "allow g#0"),
                (from_web("198.18.2.1", TCP, 1000, 8081), "deny tier:default"),
                (from_web("198.18.0.10", TCP, 1000, 8080), "deny tier:default"),
            ],
        ),
        (
            "named notPorts never exclude protocols without ports",
            gnp("g", "{egress: [{action: Allow, destination: {notPorts: [http]}}]}"),
            vec![
                (from_web("198.18.1.1", TCP, 1000, 8081), "deny tier:default"),
                (from_web("198.18.1.1", TCP, 1000, 8082), "allow g#0"),
                (from_web("198.18.1.1", ICMP, 0, icmp(8, 0)), "allow g#0"),
                (from_web("198.18.1.1", 47, 0, 0), "allow g#0"),
            ],
        ),
        (
            "ICMP type and code, notICMP",
            gnp(
                "g",
                "{ingress: [{action: Allow, protocol: ICMP, icmp: {type: 8, code: 0}}, {action: Deny, protocol: ICMP, icmp: {type: 8}},
                            {action: Allow, protocol: ICMP, notICMP: {type: 3}}]}",
            ),
            vec![
                (to_web("198.18.1.1", ICMP, 0, icmp(8, 0)), "allow g#0"),
                (to_web("198.18.1.1", ICMP, 0, icmp(8, 1)), "deny g#1"),
                (to_web("198.18.1.1", ICMP, 0, icmp(0, 0)), "allow g#2"),
                (to_web("198.18.1.1", ICMP, 0, icmp(3, 1)), "deny tier:default"),
                (to_web("2001:db8::1:1", ICMP6, 0, icmp(128, 0)), "deny tier:default"),
            ],
        ),
        (
            "Pass leaves the tier",
            tier("security", 10, "Deny")
                + &gnp("sec", "{tier: security, ingress: [{action: Pass, source: {nets: [198.18.1.0/24]}}, {action: Deny, protocol: TCP}]}")
                + &gnp("d", "{ingress: [{action: Allow}]}"),
            vec![
                (to_web("198.18.1.1", TCP, 1000, 80), "allow d#0"),
                (to_web("198.18.5.5", TCP, 1000, 80), "deny sec#1"),
                (to_web("198.18.5.5", UDP, 1000, 80), "deny tier:security"),
            ],
        ),
        (
            "a tier whose default action is Pass",
            tier("admin", 10, "Pass")
                + &gnp("a", "{tier: admin, ingress: [{action: Deny, source: {nets: [198.18.5.0/24]}}]}")
                + &profile("open", "{ingress: [{action: Allow}]}"),
            vec![
                (to_web("198.18.5.5", TCP, 1000, 80), "deny a#0"),
                (to_web("198.18.6.6", TCP, 1000, 80), "allow profile:open#0"),
            ],
        ),
        (
            "Log, then the verdict",
            gnp("g", "{ingress: [{action: Log, protocol: TCP}, {action: Log}, {action: Allow, protocol: TCP, destination: {ports: [80]}}]}"),
            vec![
                (to_web("198.18.1.1", TCP, 1000, 80), "allow g#2 log g#0"),
                (to_web("198.18.1.1", TCP, 1000, 81), "deny tier:default log g#0"),
                (to_web("198.18.1.1", UDP, 1000, 80), "deny tier:default log g#1"),
            ],
        ),
        (
            "profiles in order, Pass leaves a profile",
            profile("p1", "{ingress: [{action: Pass, source: {nets: [198.18.5.0/24]}}, {action: Deny, protocol: UDP}]}")
                + &profile("p2", "{ingress: [{action: Log}, {action: Allow, protocol: TCP}]}"),
            vec![
                (to_web("198.18.5.5", UDP, 1000, 80), "deny no-match log profile:p2#0"),
                (to_web("198.18.5.5", TCP, 1000, 80), "allow profile:p2#1 log profile:p2#0"),
                (to_web("198.18.6.6", UDP, 1000, 80), "deny profile:p1#1"),
                (to_web("198.18.6.6", TCP, 1000, 80), "allow profile:p2#1 log profile:p2#0"),
            ],
        ),
        (
            "IPv6 nets and ipVersion",
            gnp("g", r#"{ingress: [{action: Allow, source: {nets: ["2001:db8::1:0/112"]}}, {action: Deny, ipVersion: 6}, {action: Allow, ipVersion: 4, protocol: UDP}]}"#),
            vec![
                (to_web("2001:db8::1:1", TCP, 1000, 80), "allow g#0"),
                (to_web("2001:db8::2:1", TCP, 1000, 80), "deny g#1"),
                (to_web("198.18.1.1", UDP, 1000, 80), "allow g#2"),
                (to_web("198.18.1.1", TCP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "a rule whose nets are all of one IP version applies to that version only",
            gnp("g", r#"{ingress: [{action: Deny, source: {notNets: ["2001:db8::/32"]}}, {action: Allow}]}"#),
            vec![
                (to_web("198.18.1.1", TCP, 1000, 80), "allow g#1"),
                (to_web("2001:db9::1", TCP, 1000, 80), "deny g#0"),
                (to_web("2001:db8::1", TCP, 1000, 80), "allow g#1"),
            ],
        ),
        (
            "protocol numbers and notProtocol",
            gnp("g", "{ingress: [{action: Allow, protocol: 47}, {action: Allow, notProtocol: UDP}]}"),
            vec![
                (to_web("198.18.1.1", 47, 0, 0), "allow g#0"),
                (to_web("198.18.1.1", TCP, 1000, 80), "allow g#1"),
                (to_web("198.18.1.1", 255, 0, 0), "allow g#1"),
                (to_web("198.18.1.1", UDP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "criteria on the local side",
            gnp(
                "g",
                "{ingress: [{action: Allow, protocol: TCP, destination: {nets: [198.18.0.0/24]}}, {action: Allow, destination: {selector: app == 'web'}, protocol: UDP}]}",
            ),
            vec![
                (to_web("198.18.1.1", TCP, 1000, 80), "allow g#0"),
                (to_web("2001:db8::1:1", TCP, 1000, 80), "deny tier:default"),
                (to_web("2001:db8::1:1", UDP, 1000, 80), "allow g#1"),
            ],
        ),
        (
            "a GlobalNetworkSet's nets, whole, stand for a selector that matches it",
            gns("db-subnets", "{role: db-subnets}", r#"[198.19.0.0/16, "2001:db8:ff::/48"]"#)
                + &gnp("g", "{ingress: [{action: Allow, source: {selector: role == 'db-subnets'}}], egress: [{action: Allow, destination: {selector: role == 'db-subnets'}}]}"),
            vec![
                (to_web("198.19.0.0", TCP, 1000, 80), "allow g#0"),
                (to_web("198.19.255.255", UDP, 1000, 80), "allow g#0"),
                (to_web("198.20.0.0", TCP, 1000, 80), "deny tier:default"),
                (to_web("198.18.1.1", TCP, 1000, 80), "deny tier:default"),
                (to_web("2001:db8:ff:ffff::1", TCP, 1000, 80), "allow g#0"),
                (to_web("2001:db8:100::1", TCP, 1000, 80), "deny tier:default"),
                (from_web("198.19.7.7", TCP, 1000, 5432), "allow g#0"),
                (from_web("198.20.7.7", TCP, 1000, 5432), "deny tier:default"),
            ],
        ),
        (
            "a set's bare IP is a /32 and its host bits are cleared",
            gns("g-set", "{role: ext}", "[198.19.0.7/24, 198.20.0.1]")
                + &gnp("g", "{ingress: [{action: Allow, source: {selector: role == 'ext'}}]}"),
            vec![
                (to_web("198.19.0.200", TCP, 1000, 80), "allow g#0"),
                (to_web("198.20.0.1", TCP, 1000, 80), "allow g#0"),
                (to_web("198.20.0.2", TCP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "a NetworkPolicy's plain selector does not see GlobalNetworkSets",
            gns("db-subnets", "{role: db-subnets}", "[198.19.0.0/16]")
                + &np("np", "{ingress: [{action: Allow, source: {selector: role == 'db-subnets'}}]}"),
            vec![(to_web("198.19.1.1", TCP, 1000, 80), "deny tier:default")],
        ),
        (
            "namespaceSelector: global() selects GlobalNetworkSets, not NetworkSets or endpoints",
            gns("g-db", "{role: db}", "[198.19.0.0/16]")
                + &gns("g-other", "{role: other}", "[198.21.0.0/16]")
                + &netset("prod", "n-db", "{role: db}", "[198.20.0.0/16]")
                + &np(
                    "np",
                    "{ingress: [{action: Allow, protocol: TCP, source: {namespaceSelector: global(), selector: role == 'db'}},
                                {action: Allow, protocol: UDP, source: {namespaceSelector: global()}}]}",
                ),
            vec![
                (to_web("198.19.1.1", TCP, 1000, 80), "allow np#0"),
                (to_web("198.21.1.1", TCP, 1000, 80), "deny tier:default"),
                (to_web("198.21.1.1", UDP, 1000, 80), "allow np#1"),
                (to_web("198.20.1.1", TCP, 1000, 80), "deny tier:default"),
                (to_web("198.20.1.1", UDP, 1000, 80), "deny tier:default"),
                (to_web("198.18.1.1", UDP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "a namespaceSelector other than global() never selects a GlobalNetworkSet, except through a negation",
            gns("g-db", "{role: db}", "[198.19.0.0/16]")
                + &gnp(
                    "g",
                    "{ingress: [{action: Allow, protocol: TCP, source: {namespaceSelector: all()}},
                                {action: Allow, protocol: UDP, source: {namespaceSelector: \"!has(env)\"}}]}",
                ),
            vec![
                (to_web("198.19.1.1", TCP, 1000, 80), "deny tier:default"),
                (to_web("198.18.1.1", TCP, 1000, 80), "allow g#0"),
                (to_web("198.19.1.1", UDP, 1000, 80), "allow g#1"),
                (to_web("198.18.1.1", UDP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "a NetworkPolicy sees the NetworkSets of its own namespace; a GlobalNetworkPolicy sees every namespace's",
            netset("prod", "ext", "{role: ext}", "[198.20.0.0/16]")
                + &netset("dev", "ext", "{role: ext}", "[198.21.0.0/16]")
                + &np("np", "{ingress: [{action: Allow, protocol: TCP, source: {selector: role == 'ext'}}]}")
                + &gnp("g", "{order: 1, ingress: [{action: Allow, protocol: UDP, source: {selector: role == 'ext'}}]}"),
            vec![
                (to_web("198.20.1.1", TCP, 1000, 80), "allow np#0"),
                (to_web("198.21.1.1", TCP, 1000, 80), "deny tier:default"),
                (to_web("198.20.1.1", UDP, 1000, 80), "allow g#0"),
                (to_web("198.21.1.1", UDP, 1000, 80), "allow g#0"),
            ],
        ),
        (
            "a NetworkSet has its namespace's labels, for namespaceSelector and (through kns.) for selector",
            netset("prod", "ext", "{role: ext}", "[198.20.0.0/16]")
                + &netset("dev", "ext", "{role: ext}", "[198.21.0.0/16]")
                + &gnp(
                    "g",
                    "{ingress: [{action: Allow, protocol: TCP, source: {namespaceSelector: env == 'dev', selector: role == 'ext'}},
                                {action: Allow, protocol: UDP, source: {selector: env == 'production' && role == 'ext'}}]}",
                ),
            vec![
                (to_web("198.21.1.1", TCP, 1000, 80), "allow g#0"),
                (to_web("198.20.1.1", TCP, 1000, 80), "deny tier:default"),
                (to_web("198.20.1.1", UDP, 1000, 80), "allow g#1"),
                (to_web("198.21.1.1", UDP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "sets have no service account and no named ports; numeric ports apply to their whole nets",
            gns("look-alike", "{role: frontend}", "[198.19.0.0/16]")
                + &gnp(
                    "g",
                    "{ingress: [{action: Allow, source: {serviceAccounts: {names: [frontend-sa]}}}],
                      egress: [{action: Allow, protocol: TCP, destination: {selector: role == 'frontend', ports: [http, 443]}}]}",
                ),
            vec![
                (to_web("198.19.1.1", TCP, 1000, 80), "deny tier:default"),
                (to_web("198.18.1.1", TCP, 1000, 80), "allow g#0"),
                (from_web("198.19.1.1", TCP, 1000, 8081), "deny tier:default"),
                (from_web("198.19.1.1", TCP, 1000, 443), "allow g#0"),
                (from_web("198.18.1.1", TCP, 1000, 8081), "allow g#0"),
                (from_web("198.18.1.1", TCP, 1000, 443), "allow g#0"),
            ],
        ),
        (
            "an endpoint inside a set's CIDR: each selector keeps its own addresses",
            gns("dmz", "{zone: dmz}", "[198.18.0.0/16]")
                + &gnp(
                    "g",
                    "{ingress: [{action: Allow, protocol: TCP, source: {selector: role == 'frontend'}},
                                {action: Log, protocol: ICMP, source: {selector: zone == 'dmz', notSelector: role == 'frontend'}},
                                {action: Deny, source: {selector: zone == 'dmz'}},
                                {action: Allow}]}",
                ),
            vec![
                (to_web("198.18.1.1", TCP, 1000, 80), "allow g#0"),
                (to_web("198.18.1.1", UDP, 1000, 80), "deny g#2"),
                (to_web("198.18.1.2", TCP, 1000, 80), "deny g#2"),
                (to_web("198.18.1.2", ICMP, 0, icmp(8, 0)), "deny g#2 log g#1"),
                (to_web("198.18.1.1", ICMP, 0, icmp(8, 0)), "deny g#2"),
                (to_web("198.19.0.1", TCP, 1000, 80), "allow g#3"),
                (to_web("2001:db8::1:1", TCP, 1000, 80), "allow g#0"),
                (to_web("2001:db8::1:2", UDP, 1000, 80), "allow g#3"),
            ],
        ),
        (
            "a notSelector that matches a set excludes its whole CIDR, endpoints inside included",
            gns("dmz", "{zone: dmz}", "[198.18.0.0/16]")
                + &gnp("g", "{ingress: [{action: Deny, source: {notSelector: zone == 'dmz'}}, {action: Allow}]}"),
            vec![
                (to_web("198.18.1.1", TCP, 1000, 80), "allow g#1"),
                (to_web("198.18.200.1", TCP, 1000, 80), "allow g#1"),
                (to_web("198.19.0.1", TCP, 1000, 80), "deny g#0"),
            ],
        ),
        (
            "a set that holds the endpoint's own address matches on the local side",
            gns("dmz", "{zone: dmz}", "[198.18.0.0/24]")
                + &gnp("g", "{ingress: [{action: Allow, destination: {selector: zone == 'dmz'}}]}"),
            vec![
                (to_web("203.0.113.9", TCP, 1000, 80), "allow g#0"),
                (to_web("2001:db8::1:1", TCP, 1000, 80), "deny tier:default"),
            ],
        ),
        (
            "notSelector: global() excludes GlobalNetworkSets and NetworkSets too",
            gns("g-set", "{role: ext}", "[198.19.0.0/16]")
                + &netset("dev", "n-set", "{role: ext}", "[198.20.0.0/16]")
                + &gnp("g", "{ingress: [{action: Deny, source: {notSelector: global()}}, {action: Allow}]}"),
            vec![
                (to_web("198.19.1.1", TCP, 1000, 80), "allow g#1"),
                (to_web("198.20.1.1", TCP, 1000, 80), "allow g#1"),
                (to_web("198.21.1.1", TCP, 1000, 80), "deny g#0"),
            ],
        ),
        (
            "egress: the destination is the remote side",
            np("np", "{egress: [{action: Allow, destination: {selector: role == 'frontend'}}, {action: Deny, source: {nets: [198.18.0.10/32]}}]}"),
            vec![
                (from_web("198.18.1.1", TCP, 1000, 80), "allow np#0"),
                (from_web("198.18.2.1", TCP, 1000, 80), "deny np#1"),
                (from_web("2001:db8::1", TCP, 1000, 80), "deny tier:default"),
                (to_web("198.18.1.1", TCP, 1000, 80), "deny no-match"),
            ],
        ),
    ];
    for (name, yaml, packets) in cases {
        let fixture = Fixture::new(&format!("{BASE}{yaml}"), "prod", "web");
        let ctx = PolicyContext::new(&fixture.snapshot);
        for ((direction, packet), expected) in packets {
            let (reference, compiled) = fixture.verdicts(&ctx, direction, &packet);
            assert_eq!(
                reference, expected,
                "{name}: reference evaluator, {direction} {packet:?}"
            );
            assert_eq!(
                compiled, expected,
                "{name}: compiled tables, {direction} {packet:?}"
            );
        }
    }
}

/// `global()` in each place a rule can hold a selector, over endpoints and both kinds of set.
/// Calico's validator refuses `global()` in a rule's `selector` (so no resource reaches the
/// compiler with one); the query such a selector would make still matches as Calico's selector
/// engine evaluates it: true for everything.
#[test]
fn global_matches_global_network_sets_where_calico_says() {
    use super::context::{NamespaceScope, SelectableQuery};

    let yaml = format!(
        "{BASE}{}{}",
        gns("g-set", "{role: ext}", "[198.19.0.0/16]"),
        netset("prod", "n-set", "{role: ext}", "[198.20.0.0/16]")
    );
    let snapshot = snapshot(&yaml);
    let ctx = PolicyContext::new(&snapshot);
    let global = || ctx.selector("global()").expect("parses");
    let matched = |query: SelectableQuery| -> Vec<String> {
        let mut networks: Vec<String> = ctx
            .members(&query)
            .selectables
            .iter()
            .map(|&i| ctx.selectables()[i].networks[0].to_string())
            .collect();
        networks.sort();
        networks
    };
    let everything = [
        "198.18.0.10/32",
        "198.18.1.1/32",
        "198.18.2.1/32",
        "198.19.0.0/16",
        "198.20.0.0/16",
    ];
    assert_eq!(
        matched(SelectableQuery {
            namespace: NamespaceScope::Any,
            selector: Some(global()),
            service_accounts: None,
        }),
        everything,
        "selector: global() in a global policy"
    );
    assert_eq!(
        matched(SelectableQuery {
            namespace: NamespaceScope::Selected(global()),
            selector: None,
            service_accounts: None,
        }),
        ["198.19.0.0/16"],
        "namespaceSelector: global() selects the GlobalNetworkSet only"
    );
    assert_eq!(
        matched(SelectableQuery {
            namespace: NamespaceScope::Selected(global()),
            selector: Some(global()),
            service_accounts: None,
        }),
        ["198.19.0.0/16"],
        "both"
    );
    assert_eq!(
        matched(SelectableQuery {
            namespace: NamespaceScope::Named("prod".into()),
            selector: Some(global()),
            service_accounts: None,
        }),
        ["198.18.0.10/32", "198.18.1.1/32", "198.20.0.0/16"],
        "selector: global() in a NetworkPolicy of prod sees prod only"
    );
}

#[test]
fn an_allow_all_profile_compiles_to_one_entry_per_table() {
    let fixture = Fixture::new(
        &format!(
            "{BASE}{}",
            profile(
                "open",
                "{ingress: [{action: Allow}], egress: [{action: Allow}]}"
            )
        ),
        "prod",
        "web",
    );
    for compiled in [&fixture.compiled.ingress, &fixture.compiled.egress] {
        let counts = (
            compiled.addrs_v4.len(),
            compiled.addrs_v6.len(),
            compiled.protos.len(),
            compiled.ports.len(),
        );
        assert_eq!(counts, (1, 1, 1, 1), "{compiled:#?}");
        assert_eq!((compiled.address_classes, compiled.port_classes), (1, 1));
    }
}

#[test]
fn every_local_address_gets_entries_and_spoofed_sources_only_egress() {
    let yaml = format!(
        "{BASE}---\napiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {{name: wide, namespace: prod}}\n\
         spec: {{node: n1, interfaceName: caliwide, ipNetworks: [198.18.6.0/30], allowSpoofedSourcePrefixes: [198.18.7.0/31], profiles: [open]}}\n{}",
        profile(
            "open",
            "{ingress: [{action: Allow}], egress: [{action: Allow}]}"
        )
    );
    let fixture = Fixture::new(&yaml, "prod", "wide");
    assert_eq!(fixture.compiled.ingress.addrs_v4.len(), 4);
    assert_eq!(fixture.compiled.egress.addrs_v4.len(), 6);
    let egress = &fixture.compiled.egress;
    assert!(
        egress
            .lookup(ip("198.18.7.1"), ip("192.0.2.1"), TCP, 1, 2)
            .is_some()
    );
    assert!(
        egress
            .lookup(ip("198.18.7.2"), ip("192.0.2.1"), TCP, 1, 2)
            .is_none(),
        "not a local address"
    );
}

#[test]
fn unsupported_criteria_and_wide_networks_are_errors() {
    let compile = |yaml: &str, name: &str| {
        let snapshot = snapshot(&format!("{BASE}{yaml}"));
        let ctx = PolicyContext::new(&snapshot);
        let wep = snapshot.workload_endpoint("prod", name).expect("endpoint");
        let mut registry = RuleRegistry::default();
        let compiled = compile_endpoint(&ctx, &mut registry, wep);
        let evaluated = evaluate(
            &ctx,
            wep,
            Direction::Ingress,
            &packet("198.18.1.1", WEB4, TCP, 1, 2),
        );
        (compiled.map(|_| ()), evaluated.map(|_| ()))
    };
    for (yaml, field) in [
        (
            np(
                "np",
                "{ingress: [{action: Allow}, {action: Allow, http: {methods: [GET]}}]}",
            ),
            "http",
        ),
        (
            np(
                "np",
                "{ingress: [{action: Allow, source: {services: {name: frontend}}}]}",
            ),
            "source.services",
        ),
        (
            gnp(
                "g",
                "{ingress: [{action: Deny, source: {serviceAccounts: {selector: team == 'a'}}}]}",
            ),
            "source.serviceAccounts.selector",
        ),
    ] {
        let (compiled, evaluated) = compile(&yaml, "web");
        let Err(error) = compiled else {
            panic!("{yaml} compiled")
        };
        assert!(
            matches!(&error, CompileError::Unsupported { field: f, .. } if f == field),
            "{error}"
        );
        assert!(
            error.to_string().starts_with("WorkloadEndpoint prod/web: "),
            "{error}"
        );
        assert_eq!(
            evaluated,
            Err(error),
            "the evaluator refuses the same rules"
        );
    }
    let (compiled, _) = compile(
        "---\napiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {name: wide, namespace: prod}\n\
         spec: {node: n1, interfaceName: caliwide, ipNetworks: [198.18.4.0/23]}\n",
        "wide",
    );
    let error = compiled.expect_err("too wide");
    assert_eq!(
        error.to_string(),
        "WorkloadEndpoint prod/wide: network 198.18.4.0/23 holds more than 256 addresses; policy is compiled per local address"
    );
}

#[test]
fn compiled_forms_larger_than_the_limits_are_errors() {
    let rules: Vec<String> = (0..10)
        .map(|k| {
            format!(
                "{{action: Allow, protocol: TCP, source: {{nets: [198.18.9.{k}/32]}}, destination: {{ports: [{}]}}}}",
                80 + k
            )
        })
        .collect();
    let snapshot = snapshot(&format!(
        "{BASE}{}",
        gnp("g", &format!("{{ingress: [{}]}}", rules.join(", ")))
    ));
    let wep = snapshot.workload_endpoint("prod", "web").expect("endpoint");
    let compile = |limits: TableLimits| {
        let ctx = PolicyContext::new(&snapshot).with_limits(limits);
        compile_endpoint(&ctx, &mut RuleRegistry::default(), wep).map(|compiled| compiled.ingress)
    };
    let ingress = compile(TableLimits::default()).expect("compiles");
    let counts = (
        ingress.addrs_v4.len(),
        ingress.protos.len(),
        ingress.ports.len(),
    );
    assert_eq!(
        counts,
        (11, 21, 21),
        "a class per source, TCP and the rest, a port class per class"
    );
    let exact = TableLimits {
        addrs: 11,
        protos: 21,
        ports: 21,
    };
    assert_eq!(compile(exact), Ok(ingress));
    for (limits, table) in [
        (TableLimits { addrs: 10, ..exact }, "address"),
        (
            TableLimits {
                protos: 20,
                ..exact
            },
            "protocol",
        ),
        (TableLimits { ports: 20, ..exact }, "port"),
    ] {
        let error = compile(limits).expect_err("too large");
        assert!(
            matches!(&error, CompileError::TooLarge { table: t, .. } if *t == table),
            "{error}"
        );
        assert!(
            error.to_string().starts_with(
                "WorkloadEndpoint prod/web: its compiled ingress policy needs more than"
            ),
            "{error}"
        );
    }
}

/// A tiny xorshift generator: reproducible random cases without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NETS_V4: &[&str] = &[
    "198.18.0.0/15",
    "198.18.0.0/16",
    "198.18.1.0/24",
    "198.18.1.0/30",
    "198.18.1.2/31",
    "198.18.4.0/22",
    "198.18.4.128/25",
    "198.18.0.10/32",
    "198.19.0.0/16",
    "198.18.5.5/32",
];
const NETS_V6: &[&str] = &[
    "2001:db8::/32",
    "2001:db8::1:0/112",
    "2001:db8::1:0/126",
    "2001:db8::4:0/120",
    "2001:db8::10/128",
    "2001:db8:8000::/33",
];
const SELECTORS: &[&str] = &[
    "role == 'frontend'",
    "app == 'web'",
    "has(role)",
    "role in {'backend', 'db'}",
    "all()",
];
const PORTS: &[&str] = &[
    "80",
    "443",
    "\"8000:8100\"",
    "8081",
    "\"1:1024\"",
    "http",
    "dns",
    "5353",
];

/// The endpoints and network sets of the random cases: `prod/web` is compiled; the others
/// overlap in addresses (the sets' CIDRs hold endpoints, `web` itself included) and the
/// endpoints have named ports with different numbers.
const RANDOM_ENDPOINTS: &str = r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  node: n1
  interfaceName: caliweb
  ipNetworks: [198.18.0.10/32, 198.18.0.11/32, "2001:db8::10/128"]
  allowSpoofedSourcePrefixes: [198.18.0.12/31]
  profiles: [kns.prod, p0, p1]
  ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 53}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: a, namespace: prod, labels: {role: frontend}}
spec:
  node: n2
  interfaceName: calia
  ipNetworks: [198.18.1.0/30, "2001:db8::1:0/126"]
  serviceAccountName: frontend-sa
  ports: [{name: http, protocol: TCP, port: 8081}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: b, namespace: prod, labels: {role: backend}}
spec:
  node: n2
  interfaceName: calib
  ipNetworks: [198.18.1.2/32]
  ports: [{name: http, protocol: TCP, port: 8082}, {name: http, protocol: UDP, port: 8082}, {name: dns, protocol: UDP, port: 5353}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: c, namespace: dev, labels: {role: frontend}}
spec:
  node: n3
  interfaceName: calic
  ipNetworks: [198.18.4.0/24, "2001:db8::4:0/120"]
  profiles: [kns.dev]
  ports: [{name: http, protocol: TCP, port: 80}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: d, namespace: dev, labels: {role: db}}
spec: {node: n3, interfaceName: calid, ipNetworks: [198.18.5.5/32]}
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.prod}
spec: {labelsToApply: {env: production}}
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.dev}
spec: {labelsToApply: {env: dev}}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: t1}
spec: {order: 10, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: t2}
spec: {order: 20, defaultAction: Deny}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: outside, labels: {role: db}}
spec: {nets: [198.18.1.0/24, "2001:db8::1:0/112", 203.0.113.64/26]}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: partners, namespace: prod, labels: {role: frontend}}
spec: {nets: [198.18.0.0/23, 198.18.5.5/32]}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: dev-nets, namespace: dev, labels: {role: backend}}
spec: {nets: [203.0.113.0/25, "2001:db8::4:80/121"]}
"#;

/// A random entity rule of a rule whose nets are of `v6`, with ports when `ports`.
fn random_entity(rng: &mut Rng, v6: bool, ports: bool, named_only: bool) -> String {
    let nets = if v6 { NETS_V6 } else { NETS_V4 };
    let mut fields = Vec::new();
    let list = |rng: &mut Rng, pool: &[&str], max: usize| {
        let n = 1 + rng.below(max);
        let items: Vec<String> = (0..n).map(|_| format!("\"{}\"", rng.pick(pool))).collect();
        format!("[{}]", items.join(", "))
    };
    if rng.chance(30) {
        fields.push(format!("nets: {}", list(rng, nets, 2)));
    }
    if rng.chance(15) {
        fields.push(format!("notNets: {}", list(rng, nets, 2)));
    }
    for (field, percent) in [("selector", 20), ("notSelector", 10)] {
        if rng.chance(percent) {
            fields.push(format!("{field}: \"{}\"", rng.pick(SELECTORS)));
        }
    }
    if rng.chance(10) {
        fields.push(format!(
            "namespaceSelector: \"{}\"",
            rng.pick(&["env == 'dev'", "env == 'production'", "all()", "global()"])
        ));
    }
    if rng.chance(5) {
        fields.push("serviceAccounts: {names: [frontend-sa]}".into());
    }
    let port_pool: Vec<&str> = PORTS
        .iter()
        .copied()
        .filter(|p| !named_only || p.chars().all(|c| c.is_ascii_alphabetic()))
        .collect();
    for (field, percent) in [("ports", 35), ("notPorts", 15)] {
        if ports && rng.chance(percent) {
            let n = 1 + rng.below(3);
            let items: Vec<&str> = (0..n).map(|_| *rng.pick(&port_pool)).collect();
            fields.push(format!("{field}: [{}]", items.join(", ")));
        }
    }
    format!("{{{}}}", fields.join(", "))
}

fn random_rule(rng: &mut Rng, actions: &[&str]) -> String {
    let mut fields = vec![format!("action: {}", rng.pick(actions))];
    let version = match rng.below(10) {
        0 | 1 => Some(4),
        2 => Some(6),
        _ => None,
    };
    let v6 = version.map_or_else(|| rng.chance(30), |v| v == 6);
    if let Some(version) = version {
        fields.push(format!("ipVersion: {version}"));
    }
    let protocols: &[&str] = match version {
        Some(4) => &["TCP", "UDP", "ICMP", "SCTP", "47", "UDPLite"],
        Some(_) => &["TCP", "UDP", "ICMPv6", "SCTP", "47", "UDPLite"],
        None => &["TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "47", "UDPLite"],
    };
    let protocol = rng.chance(70).then(|| *rng.pick(protocols));
    if let Some(protocol) = protocol {
        fields.push(format!("protocol: {protocol}"));
        if protocol.starts_with("ICMP") && rng.chance(60) {
            let icmp_type = rng.pick(&[0, 3, 8, 128]);
            let code = if rng.chance(50) {
                format!(", code: {}", rng.pick(&[0, 1]))
            } else {
                String::new()
            };
            fields.push(format!("icmp: {{type: {icmp_type}{code}}}"));
        }
    }
    if rng.chance(10) {
        let not = rng.pick(protocols);
        if Some(*not) != protocol {
            fields.push(format!("notProtocol: {not}"));
        }
    }
    if rng.chance(10) {
        fields.push(format!("notICMP: {{type: {}}}", rng.pick(&[0, 3, 8, 128])));
    }
    let has_ports = matches!(protocol, Some("TCP" | "UDP" | "SCTP"));
    let named_only = protocol.is_none();
    for end in ["source", "destination"] {
        if rng.chance(60) {
            fields.push(format!(
                "{end}: {}",
                random_entity(rng, v6, has_ports || named_only, named_only)
            ));
        }
    }
    format!("{{{}}}", fields.join(", "))
}

fn random_rules(rng: &mut Rng, actions: &[&str]) -> String {
    let rules: Vec<String> = (0..rng.below(6))
        .map(|_| random_rule(rng, actions))
        .collect();
    format!("[{}]", rules.join(", "))
}

fn random_policies(rng: &mut Rng) -> String {
    let mut yaml = String::new();
    for i in 0..1 + rng.below(5) {
        let tier = rng.pick(&["default", "t1", "t2", "missing"]);
        let selector = rng.pick(&["all()", "app == 'web'", "has(app)", "app == 'db'"]);
        let types = rng.pick(&["[Ingress]", "[Egress]", "[Ingress, Egress]"]);
        let mut spec = format!(
            "{{tier: {tier}, order: {}, selector: \"{selector}\", types: {types}",
            rng.below(3)
        );
        let actions = ["Allow", "Deny", "Log", "Pass"];
        for (direction, name) in [("Ingress", "ingress"), ("Egress", "egress")] {
            if types.contains(direction) {
                let _ = write!(spec, ", {name}: {}", random_rules(rng, &actions));
            }
        }
        spec.push('}');
        let namespace = if rng.chance(70) { "prod" } else { "dev" };
        yaml += &if rng.chance(50) {
            gnp(&format!("g{i}"), &spec)
        } else {
            format!(
                "---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: n{i}, namespace: {namespace}}}\nspec: {spec}\n"
            )
        };
    }
    for name in ["p0", "p1"] {
        if rng.chance(60) {
            let actions = ["Allow", "Deny", "Log", "Pass"];
            let spec = format!(
                "{{ingress: {}, egress: {}}}",
                random_rules(rng, &actions),
                random_rules(rng, &actions)
            );
            yaml += &profile(name, &spec);
        }
    }
    yaml
}

/// Addresses at and around the edges of every net, endpoint network and set network of the
/// random cases.
fn interesting_addresses() -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    let networks = NETS_V4.iter().chain(NETS_V6).chain(&[
        "198.18.1.0/30",
        "198.18.4.0/24",
        "2001:db8::4:0/120",
        "203.0.113.0/24",
        "203.0.113.0/25",
        "203.0.113.64/26",
        "198.18.0.0/23",
        "2001:db8::4:80/121",
    ]);
    for net in networks {
        let net: IpNet = net.parse().expect("test net");
        for edge in [net.network(), net.broadcast()] {
            let (family, value) = Family::split(edge);
            for value in [value.wrapping_sub(1), value, value.wrapping_add(1)] {
                addresses.push(match family {
                    Family::V4 => IpAddr::from(value_bytes::<4>(value)),
                    Family::V6 => IpAddr::from(value_bytes::<16>(value)),
                });
            }
        }
    }
    addresses
}

#[test]
fn random_policies_compile_to_what_the_evaluator_says() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let addresses = interesting_addresses();
    let ports: &[u16] = &[
        0, 1, 53, 79, 80, 81, 442, 443, 444, 1023, 1024, 1025, 5353, 7999, 8000, 8080, 8081, 8082,
        8100, 8101, 65535,
    ];
    let protocols: &[u8] = &[TCP, UDP, ICMP, ICMP6, 132, 136, 47, 0, 255];
    let mut checked = 0;
    for case in 0..200 {
        let yaml = format!("{RANDOM_ENDPOINTS}{}", random_policies(&mut rng));
        let fixture = Fixture::new(&yaml, "prod", "web");
        let ctx = PolicyContext::new(&fixture.snapshot);
        for _ in 0..300 {
            let remote = *rng.pick(&addresses);
            let direction = *rng.pick(&Direction::ALL);
            let locals: &[&str] = match (remote.is_ipv4(), direction) {
                (false, _) => &[WEB6],
                (true, Direction::Ingress) => &["198.18.0.10", "198.18.0.11"],
                (true, Direction::Egress) => {
                    &["198.18.0.10", "198.18.0.11", "198.18.0.12", "198.18.0.13"]
                }
            };
            let local = *rng.pick(locals);
            let local = ip(local);
            let proto = *rng.pick(protocols);
            let port = |rng: &mut Rng| {
                if rng.chance(80) {
                    *rng.pick(ports)
                } else {
                    rng.next() as u16
                }
            };
            let (sport, dport) = if proto == ICMP || proto == ICMP6 {
                (
                    0,
                    icmp(*rng.pick(&[0, 3, 8, 11, 128]), *rng.pick(&[0, 1, 2])),
                )
            } else {
                (port(&mut rng), port(&mut rng))
            };
            let packet = match direction {
                Direction::Ingress => PacketTuple {
                    src: remote,
                    dst: local,
                    proto,
                    sport,
                    dport,
                },
                Direction::Egress => PacketTuple {
                    src: local,
                    dst: remote,
                    proto,
                    sport,
                    dport,
                },
            };
            let (reference, compiled) = fixture.verdicts(&ctx, direction, &packet);
            assert_eq!(
                compiled, reference,
                "case {case}: {direction} {packet:?}\n{yaml}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 200 * 300);
}

/// 10 GlobalNetworkPolicies of 1000 rules, each allowing TCP from its own /32 or /24 to a port.
fn large_rule_set() -> String {
    let mut yaml = String::from(BASE);
    for policy in 0..10 {
        let mut spec = format!("{{order: {policy}, ingress: [");
        for rule in 0..1000 {
            let k: u32 = policy * 1000 + rule;
            let net = if k.is_multiple_of(2) {
                format!("198.18.{}.{}/32", k / 256, k % 256)
            } else {
                format!("10.{}.{}.0/24", k / 256, k % 256)
            };
            let _ = write!(
                spec,
                "{{action: Allow, protocol: TCP, source: {{nets: [{net}]}}, destination: {{ports: [{}]}}}},",
                1000 + k % 5000
            );
        }
        spec.push_str("]}");
        yaml += &gnp(&format!("big{policy}"), &spec);
    }
    yaml
}

#[test]
fn ten_thousand_rules_compile_quickly() {
    let snapshot = snapshot(&large_rule_set());
    let started = Instant::now();
    let ctx = PolicyContext::new(&snapshot);
    let wep = snapshot.workload_endpoint("prod", "web").expect("endpoint");
    let mut registry = RuleRegistry::default();
    let compiled = compile_endpoint(&ctx, &mut registry, wep).expect("compiles");
    let elapsed = started.elapsed();
    let ingress = &compiled.ingress;
    eprintln!(
        "10k rules: compiled in {elapsed:?}: {} IPv4 + {} IPv6 address entries, {} protocol entries, {} port entries, \
         {} address classes, {} port classes, {} rule ids",
        ingress.addrs_v4.len(),
        ingress.addrs_v6.len(),
        ingress.protos.len(),
        ingress.ports.len(),
        ingress.address_classes,
        ingress.port_classes,
        registry.len(),
    );
    assert!(elapsed.as_secs() < 60, "took {elapsed:?}");
    check_well_formed(ingress);
    assert!(
        ingress.addrs_v4.len() <= 10_001,
        "{}",
        ingress.addrs_v4.len()
    );

    let fixture = Fixture {
        snapshot: snapshot.clone(),
        registry,
        compiled,
        namespace: "prod".into(),
        name: "web".into(),
    };
    let mut rng = Rng(42);
    for _ in 0..50 {
        let k = rng.below(10_000);
        let src = if k.is_multiple_of(2) {
            format!("198.18.{}.{}", k / 256, k % 256)
        } else {
            format!("10.{}.{}.7", k / 256, k % 256)
        };
        let port = (1000 + k % 5000) as u16;
        let expected = format!("allow big{}#{}", k / 1000, k % 1000);
        for (packet, expected) in [
            (to_web(&src, TCP, 40000, port), Some(expected.as_str())),
            (to_web(&src, TCP, 40000, port + 1), None),
            (to_web(&src, UDP, 40000, port), Some("deny tier:default")),
        ] {
            let (reference, compiled) = fixture.verdicts(&ctx, packet.0, &packet.1);
            assert_eq!(compiled, reference, "{packet:?}");
            if let Some(expected) = expected {
                assert_eq!(compiled, expected);
            }
        }
    }
}

/// Compiles `prod/web` in `yaml` and prints the time and the entry counts (or the error).
fn measure(label: &str, yaml: &str) {
    let snapshot = snapshot(yaml);
    let started = Instant::now();
    let ctx = PolicyContext::new(&snapshot);
    let wep = snapshot.workload_endpoint("prod", "web").expect("endpoint");
    let mut registry = RuleRegistry::default();
    match compile_endpoint(&ctx, &mut registry, wep) {
        Ok(compiled) => {
            let i = &compiled.ingress;
            eprintln!(
                "{label}: {:?}: {} + {} address, {} protocol, {} port entries; {} classes, {} port classes",
                started.elapsed(),
                i.addrs_v4.len(),
                i.addrs_v6.len(),
                i.protos.len(),
                i.ports.len(),
                i.address_classes,
                i.port_classes
            );
        }
        Err(error) => eprintln!("{label}: {:?}: {error}", started.elapsed()),
    }
}

/// Compile times and sizes of a few shapes of large policy (`cargo test --release -- --ignored
/// --nocapture bench_`).
#[test]
#[ignore]
fn bench_policy_shapes() {
    let narrow = |k: usize| {
        format!(
            "{{action: Allow, protocol: TCP, source: {{nets: [198.18.{}.{}/32]}}, destination: {{ports: [{}]}}}}",
            k / 256,
            k % 256,
            1000 + k
        )
    };
    let broad = |k: usize| {
        format!(
            "{{action: Deny, protocol: TCP, destination: {{ports: [{}]}}}}",
            30000 + k
        )
    };
    let policies = |rules: Vec<String>| {
        let mut yaml = String::from(BASE);
        for (i, chunk) in rules.chunks(1000).enumerate() {
            yaml += &gnp(
                &format!("big{i}"),
                &format!("{{order: {i}, ingress: [{}]}}", chunk.join(", ")),
            );
        }
        yaml
    };
    measure(
        "10k rules from distinct /32s",
        &policies((0..10_000).map(narrow).collect()),
    );
    measure(
        "10k rules from distinct /32s, 20 port rules from anywhere",
        &policies((0..20).map(broad).chain((0..10_000).map(narrow)).collect()),
    );
    measure(
        "5k rules from distinct /32s interleaved with 5k port rules from anywhere",
        &policies(
            (0..10_000)
                .map(|k: usize| {
                    if k.is_multiple_of(2) {
                        narrow(k)
                    } else {
                        broad(k)
                    }
                })
                .collect(),
        ),
    );
    let mut yaml = policies(
        (0..1000)
            .map(|k| {
                format!(
                    "{{action: Allow, source: {{selector: app == 'a{}'}}, destination: {{ports: [http]}}}}",
                    k % 300
                )
            })
            .collect(),
    );
    for k in 0..3000 {
        let _ = write!(
            yaml,
            "---\napiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {{name: e{k}, namespace: prod, labels: {{app: a{}}}}}\n\
             spec: {{node: n2, interfaceName: cali{k}, ipNetworks: [198.19.{}.{}/32], ports: [{{name: http, protocol: TCP, port: {}}}]}}\n",
            k % 300,
            k / 256,
            k % 256,
            8000 + k % 7
        );
    }
    measure(
        "1k selector rules over 3k endpoints with named ports",
        &yaml,
    );
}

mod host;
