//! Host endpoints' compiled tables against the reference evaluator: hand-written cases for
//! Calico's stages (untracked, pre-DNAT, host, apply-on-forward) and random policy sets, with local
//! addresses anywhere (the tables' local classes).

use super::*;
use crate::datastore::HostEndpoint;

/// The host endpoint of the cases: it owns 198.18.9.1 and 2001:db8::9:1, with a named port.
const HOST: &str = r#"
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: edge, labels: {role: edge}}
spec:
  node: n1
  interfaceName: eth0
  expectedIPs: [198.18.9.1, "2001:db8::9:1"]
  profiles: [host-profile]
  ports: [{name: http, protocol: TCP, port: 8443}]
"#;

/// Checks that the local entries of a table compiled for any local address are well formed.
fn check_locals(compiled: &CompiledDirection) {
    assert!(compiled.local_classes);
    let mut keys = HashSet::new();
    for e in &compiled.locals_v4 {
        let local = u32::from_be_bytes(e.local);
        assert!(
            e.prefix == 32 || local & (u32::MAX >> e.prefix) == 0,
            "{e:?}"
        );
        assert!(keys.insert((e.local.to_vec(), e.prefix)), "duplicate {e:?}");
    }
    for e in &compiled.locals_v6 {
        let local = u128::from_be_bytes(e.local);
        assert!(
            e.prefix == 128 || local & (u128::MAX >> e.prefix) == 0,
            "{e:?}"
        );
        assert!(keys.insert((e.local.to_vec(), e.prefix)), "duplicate {e:?}");
    }
    assert!(
        compiled.locals_v4.iter().any(|e| e.prefix == 0)
            && compiled.locals_v6.iter().any(|e| e.prefix == 0),
        "a default local class per family"
    );
}

struct HostFixture {
    snapshot: Snapshot,
    registry: RuleRegistry,
    compiled: CompiledHostEndpoint,
}

impl HostFixture {
    fn new(yaml: &str) -> Self {
        let snapshot = snapshot(yaml);
        let mut registry = RuleRegistry::default();
        let compiled = {
            let ctx = PolicyContext::new(&snapshot);
            let hep = snapshot
                .find::<HostEndpoint>(None, "edge")
                .expect("the host endpoint");
            compile_host_endpoint(&ctx, &mut registry, hep).expect("compiles")
        };
        for direction in [
            &compiled.host.ingress,
            &compiled.host.egress,
            &compiled.forward.ingress,
            &compiled.forward.egress,
        ]
        .into_iter()
        .chain(
            compiled
                .untracked
                .iter()
                .flat_map(|u| [&u.ingress, &u.egress]),
        ) {
            check_well_formed(direction);
            check_locals(direction);
        }
        Self {
            snapshot,
            registry,
            compiled,
        }
    }

    /// The reference verdict and the compiled one, described.
    fn verdicts(
        &self,
        ctx: &PolicyContext<'_>,
        which: HostPolicy,
        direction: Direction,
        packet: &PacketTuple,
    ) -> (String, String) {
        let hep = self
            .snapshot
            .find::<HostEndpoint>(None, "edge")
            .expect("the host endpoint");
        let outcome =
            evaluate_host_endpoint(ctx, hep, which, direction, packet).expect("evaluates");
        let word = |allow: bool, rule: &RuleRef| match rule {
            RuleRef::UntrackedDefault { .. } => "pass",
            _ if allow => "allow",
            _ => "deny",
        };
        let reference = describe_as(
            word(outcome.allow, &outcome.rule),
            &outcome.rule,
            outcome.log_rule.as_ref(),
        );
        let endpoint = match which {
            HostPolicy::Host => &self.compiled.host,
            HostPolicy::Forward => &self.compiled.forward,
            HostPolicy::Untracked => match &self.compiled.untracked {
                Some(untracked) => untracked,
                // No untracked policy: the programs skip the stage, nothing is decided.
                None => return (reference, "pass untracked-default".to_owned()),
            },
        };
        let (compiled, local, remote) = match direction {
            Direction::Ingress => (&endpoint.ingress, packet.dst, packet.src),
            Direction::Egress => (&endpoint.egress, packet.src, packet.dst),
        };
        let (sport, dport) = packet.key_ports();
        let found = match compiled.lookup(local, remote, packet.proto, sport, dport) {
            None => "no verdict".to_owned(),
            Some(verdict) => match self.registry.get(verdict.rule) {
                None => format!("unknown rule {}", verdict.rule),
                Some(entry) => {
                    let logged = (verdict.flags & verdict_flags::LOG != 0)
                        .then(|| self.registry.get(verdict.log_rule).map(|e| e.rule.clone()))
                        .flatten();
                    let word = match verdict.action {
                        verdict_action::ALLOW => "allow",
                        verdict_action::DENY => "deny",
                        verdict_action::PASS => "pass",
                        _ => "unknown action",
                    };
                    describe_as(word, &entry.rule, logged.as_ref())
                }
            },
        };
        (reference, found)
    }
}

#[test]
fn host_endpoint_stages_give_calicos_verdicts() {
    let yaml = format!(
        "{RANDOM_ENDPOINTS}{HOST}{}{}{}{}{}",
        profile("host-profile", "{egress: [{action: Allow}]}"),
        gnp(
            "pre",
            "{order: 1, selector: role == 'edge', preDNAT: true, applyOnForward: true, \
             ingress: [{action: Deny, source: {nets: [203.0.113.0/24]}}, \
             {action: Allow, protocol: TCP, source: {nets: [198.19.0.0/16]}, destination: {ports: [22]}}]}"
        ),
        gnp(
            "host-ssh",
            "{order: 10, selector: all(), ingress: [{action: Allow, protocol: TCP, \
             destination: {ports: [http]}}]}"
        ),
        gnp(
            "forward",
            "{order: 20, selector: has(role), applyOnForward: true, types: [Ingress, Egress], \
             ingress: [{action: Deny, destination: {selector: role == 'db'}}, \
             {action: Allow, protocol: UDP, destination: {nets: [198.18.4.0/24]}}, {action: Pass}], \
             egress: [{action: Deny, protocol: TCP, destination: {ports: [25]}}, {action: Pass}]}"
        ),
        gnp(
            "elsewhere",
            "{order: 30, selector: role == 'core', applyOnForward: true, ingress: [{action: Deny}]}"
        ),
    );
    let f = HostFixture::new(&yaml);
    let ctx = PolicyContext::new(&f.snapshot);
    use Direction::{Egress, Ingress};
    use HostPolicy::{Forward, Host};
    let cases: &[(HostPolicy, Direction, PacketTuple, &str)] = &[
        // To the host: pre-DNAT first (a deny from the bad net, even to the named port).
        (
            Host,
            Ingress,
            packet("203.0.113.7", "198.18.9.1", TCP, 40000, 8443),
            "deny pre#0",
        ),
        // The named port of the host endpoint's own address.
        (
            Host,
            Ingress,
            packet("198.20.0.1", "198.18.9.1", TCP, 40000, 8443),
            "allow host-ssh#0",
        ),
        // A pre-DNAT allow skips the normal policies.
        (
            Host,
            Ingress,
            packet("198.19.3.3", "198.18.9.1", TCP, 40000, 22),
            "allow pre#1",
        ),
        // Pre-DNAT policy that decides nothing goes on (its tier does not deny); here nothing
        // allows it (the profile has no ingress rule).
        (
            Host,
            Ingress,
            packet("198.20.0.1", "198.18.9.1", UDP, 40000, 53),
            "deny no-match",
        ),
        // From the host: apply-on-forward policies apply to host traffic too; then the
        // profile allows.
        (
            Host,
            Egress,
            packet("198.18.9.1", "198.20.0.1", TCP, 40000, 25),
            "deny forward#0",
        ),
        (
            Host,
            Egress,
            packet("198.18.9.1", "198.20.0.1", UDP, 40000, 53),
            "allow profile:host-profile#0",
        ),
        // Forwarded in: pre-DNAT, then apply-on-forward, by destination.
        (
            Forward,
            Ingress,
            packet("203.0.113.7", "198.18.1.2", UDP, 1, 53),
            "deny pre#0",
        ),
        (
            Forward,
            Ingress,
            packet("198.20.0.1", "198.18.5.5", UDP, 1, 53),
            "deny forward#0",
        ),
        (
            Forward,
            Ingress,
            packet("198.20.0.1", "198.18.4.7", UDP, 1, 53),
            "allow forward#1",
        ),
        // A Pass out of the last tier: nothing decides, so forwarded traffic is allowed.
        (
            Forward,
            Ingress,
            packet("198.20.0.1", "198.18.4.7", TCP, 1, 80),
            "allow forward-default",
        ),
        (
            Forward,
            Egress,
            packet("198.18.0.10", "198.20.0.1", TCP, 1, 25),
            "deny forward#0",
        ),
        (
            Forward,
            Egress,
            packet("198.18.0.10", "198.20.0.1", TCP, 1, 443),
            "allow forward-default",
        ),
    ];
    for (which, direction, packet, expected) in cases {
        let (reference, compiled) = f.verdicts(&ctx, *which, *direction, packet);
        assert_eq!(
            reference, *expected,
            "reference, {which:?} {direction} {packet:?}"
        );
        assert_eq!(
            compiled, *expected,
            "compiled, {which:?} {direction} {packet:?}"
        );
    }
}

#[test]
fn without_policy_host_traffic_is_denied_and_forwarded_traffic_allowed() {
    let yaml = format!("{RANDOM_ENDPOINTS}{HOST}");
    let f = HostFixture::new(&yaml);
    assert!(f.compiled.forward_open);
    let ctx = PolicyContext::new(&f.snapshot);
    let probe = packet("198.20.0.1", "198.18.9.1", TCP, 40000, 22);
    assert_eq!(
        f.verdicts(&ctx, HostPolicy::Host, Direction::Ingress, &probe)
            .1,
        "deny no-match"
    );
    let forwarded = packet("198.20.0.1", "198.18.1.2", TCP, 40000, 22);
    assert_eq!(
        f.verdicts(&ctx, HostPolicy::Forward, Direction::Ingress, &forwarded)
            .1,
        "allow forward-default"
    );
}

#[test]
fn untracked_policy_decides_first_and_passes_what_it_leaves() {
    use Direction::{Egress, Ingress};
    use HostPolicy::{Host, Untracked};
    let yaml = format!(
        "{RANDOM_ENDPOINTS}{HOST}{}{}{}{}",
        profile(
            "host-profile",
            "{ingress: [{action: Allow}], egress: [{action: Allow}]}"
        ),
        gnp(
            "raw-deny",
            "{order: 1, selector: role == 'edge', doNotTrack: true, applyOnForward: true, \
             ingress: [{action: Deny, source: {nets: [198.19.7.0/24]}}, \
             {action: Pass, source: {nets: [198.19.8.0/24]}}], \
             egress: [{action: Allow, protocol: UDP, source: {ports: [5353]}}]}"
        ),
        gnp(
            "raw-allow",
            "{order: 2, selector: all(), doNotTrack: true, applyOnForward: true, types: [Ingress], \
             ingress: [{action: Allow, protocol: UDP, destination: {ports: [5353]}}]}"
        ),
        gnp(
            "normal",
            "{order: 5, selector: all(), ingress: [{action: Deny, protocol: UDP}]}"
        ),
    );
    let f = HostFixture::new(&yaml);
    let untracked = f
        .compiled
        .untracked
        .as_ref()
        .expect("untracked policy compiled");
    check_locals(&untracked.ingress);
    assert_eq!(f.compiled.untracked_directions, (true, true));
    let ctx = PolicyContext::new(&f.snapshot);
    let cases: &[(HostPolicy, Direction, PacketTuple, &str)] = &[
        // Denied from the net, whatever the destination (the host or forwarded).
        (
            Untracked,
            Ingress,
            packet("198.19.7.9", "198.18.9.1", UDP, 1, 5353),
            "deny raw-deny#0",
        ),
        (
            Untracked,
            Ingress,
            packet("198.19.7.9", "198.18.1.2", TCP, 1, 80),
            "deny raw-deny#0",
        ),
        // Allowed by the next policy of the tier.
        (
            Untracked,
            Ingress,
            packet("198.20.0.1", "198.18.9.1", UDP, 1, 5353),
            "allow raw-allow#0",
        ),
        // A Pass leaves the untracked tier: nothing decides.
        (
            Untracked,
            Ingress,
            packet("198.19.8.1", "198.18.9.1", UDP, 1, 5353),
            "pass untracked-default",
        ),
        // Undecided: the tier does not end with a deny.
        (
            Untracked,
            Ingress,
            packet("198.20.0.1", "198.18.9.1", TCP, 1, 22),
            "pass untracked-default",
        ),
        (
            Untracked,
            Egress,
            packet("198.18.9.1", "198.20.0.1", UDP, 5353, 40000),
            "allow raw-deny#0",
        ),
        (
            Untracked,
            Egress,
            packet("198.18.9.1", "198.20.0.1", UDP, 53, 40000),
            "pass untracked-default",
        ),
        // The normal policy does not see the untracked policies.
        (
            Host,
            Ingress,
            packet("198.20.0.1", "198.18.9.1", UDP, 1, 5353),
            "deny normal#0",
        ),
    ];
    for (which, direction, packet, expected) in cases {
        let (reference, compiled) = f.verdicts(&ctx, *which, *direction, packet);
        assert_eq!(
            reference, *expected,
            "reference, {which:?} {direction} {packet:?}"
        );
        assert_eq!(
            compiled, *expected,
            "compiled, {which:?} {direction} {packet:?}"
        );
    }
}

#[test]
fn without_untracked_policy_nothing_is_compiled_for_it() {
    let yaml = format!(
        "{RANDOM_ENDPOINTS}{HOST}{}",
        gnp(
            "raw-egress",
            "{selector: role == 'edge', doNotTrack: true, applyOnForward: true, types: [Egress], \
             egress: [{action: Deny}]}"
        )
    );
    let f = HostFixture::new(&yaml);
    assert_eq!(f.compiled.untracked_directions, (false, true));
    assert!(f.compiled.untracked.is_some());
    let f = HostFixture::new(&format!("{RANDOM_ENDPOINTS}{HOST}"));
    assert!(f.compiled.untracked.is_none());
    assert_eq!(f.compiled.untracked_directions, (false, false));
}

fn random_host_policies(rng: &mut Rng) -> String {
    let mut yaml = String::new();
    for i in 0..1 + rng.below(5) {
        let tier = rng.pick(&["default", "t1", "t2", "missing"]);
        let selector = rng.pick(&["all()", "role == 'edge'", "has(role)", "role == 'core'"]);
        let kind = rng.below(4);
        let (flags, types) = match kind {
            0 => ("preDNAT: true, applyOnForward: true", "[Ingress]"),
            3 => (
                "doNotTrack: true, applyOnForward: true",
                *rng.pick(&["[Ingress]", "[Egress]", "[Ingress, Egress]"]),
            ),
            1 => (
                "applyOnForward: true",
                *rng.pick(&["[Ingress]", "[Egress]", "[Ingress, Egress]"]),
            ),
            _ => (
                "applyOnForward: false",
                *rng.pick(&["[Ingress]", "[Egress]", "[Ingress, Egress]"]),
            ),
        };
        let mut spec = format!(
            "{{tier: {tier}, order: {}, selector: \"{selector}\", {flags}, types: {types}",
            rng.below(3)
        );
        let actions = ["Allow", "Deny", "Log", "Pass"];
        for (direction, name) in [("Ingress", "ingress"), ("Egress", "egress")] {
            if types.contains(direction) {
                let _ = write!(spec, ", {name}: {}", random_rules(rng, &actions));
            }
        }
        spec.push('}');
        yaml += &gnp(&format!("h{i}"), &spec);
    }
    if rng.chance(60) {
        let actions = ["Allow", "Deny", "Log", "Pass"];
        let spec = format!(
            "{{ingress: {}, egress: {}}}",
            random_rules(rng, &actions),
            random_rules(rng, &actions)
        );
        yaml += &profile("host-profile", &spec);
    }
    yaml
}

#[test]
fn random_host_policies_compile_to_what_the_evaluator_says() {
    let mut rng = Rng(0x0b57_e11d_9a7e_0001);
    let mut addresses = interesting_addresses();
    addresses.extend(["198.18.9.1", "198.18.9.0", "2001:db8::9:1"].map(ip));
    let ports: &[u16] = &[0, 22, 53, 80, 443, 1024, 5353, 8080, 8081, 8443, 65535];
    let protocols: &[u8] = &[TCP, UDP, ICMP, ICMP6, 47];
    let mut checked = 0;
    for case in 0..120 {
        let yaml = format!("{RANDOM_ENDPOINTS}{HOST}{}", random_host_policies(&mut rng));
        let fixture = HostFixture::new(&yaml);
        let ctx = PolicyContext::new(&fixture.snapshot);
        for _ in 0..300 {
            let src = *rng.pick(&addresses);
            let dst = loop {
                let dst = *rng.pick(&addresses);
                if dst.is_ipv4() == src.is_ipv4() {
                    break dst;
                }
            };
            let proto = *rng.pick(protocols);
            let (sport, dport) = if proto == ICMP || proto == ICMP6 {
                (0, icmp(*rng.pick(&[0, 3, 8, 128]), *rng.pick(&[0, 1])))
            } else {
                (*rng.pick(ports), *rng.pick(ports))
            };
            let packet = PacketTuple {
                src,
                dst,
                proto,
                sport,
                dport,
            };
            let which = *rng.pick(&[HostPolicy::Host, HostPolicy::Forward, HostPolicy::Untracked]);
            let direction = *rng.pick(&Direction::ALL);
            let (reference, compiled) = fixture.verdicts(&ctx, which, direction, &packet);
            assert_eq!(
                compiled, reference,
                "case {case}: {which:?} {direction} {packet:?}\n{yaml}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 120 * 300);
}
