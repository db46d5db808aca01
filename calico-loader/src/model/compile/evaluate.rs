//! The reference evaluator: Calico's policy semantics for one packet, walking the rules
//! directly. The compiled tables must agree with it on every packet.

use std::net::IpAddr;

use super::{
    compiled::CompileError,
    conditions::{
        EntityQueries, Origin, applies_to, check_supported, entity_queries, has_ports,
        icmp_matches, is_icmp,
    },
    context::{PolicyContext, SelectableQuery},
    lookup::{policy_rules, profile_rules},
};
use crate::{
    datastore::{
        Action, EntityRule, HostEndpoint, IpVersion, PortSpec, Rule, TierDefaultAction,
        WorkloadEndpoint,
    },
    model::{
        host_endpoints::host_endpoint_plan,
        policy::{DirectionPlan, endpoint_plan},
        rules::{Direction, RuleRef},
    },
};

/// A packet, as policy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PacketTuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    /// Source port (protocols with ports).
    pub sport: u16,
    /// Destination port, or `type << 8 | code` for ICMP and ICMPv6.
    pub dport: u16,
}

impl PacketTuple {
    /// The source and destination "ports" the kernel puts in the policy keys: the ports for
    /// TCP, UDP, SCTP and UDP-Lite, `(0, type << 8 | code)` for ICMP and ICMPv6, `(0, 0)` for
    /// other protocols.
    pub fn key_ports(&self) -> (u16, u16) {
        if has_ports(self.proto) {
            (self.sport, self.dport)
        } else if is_icmp(self.proto) {
            (0, self.dport)
        } else {
            (0, 0)
        }
    }
}

/// What policy decided for a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub allow: bool,
    /// What decided: a rule, a tier's default action, or the final deny.
    pub rule: RuleRef,
    /// The first Log rule that matched before the decision.
    pub log_rule: Option<RuleRef>,
}

/// The verdict of `wep`'s policy in `direction` for `packet`, by walking its plan: tiers,
/// policies and rules in order (Allow and Deny decide, Pass leaves the tier, Log is noted), a
/// tier's default action, then the profiles (Pass leaves the profile), then deny.
///
/// # Errors
///
/// The errors `compile_endpoint` gives for rules of the plan it
/// cannot enforce, whether or not this packet reaches them.
pub fn evaluate(
    ctx: &PolicyContext<'_>,
    wep: &WorkloadEndpoint,
    direction: Direction,
    packet: &PacketTuple,
) -> Result<Outcome, CompileError> {
    let endpoint = format!("WorkloadEndpoint {}/{}", wep.namespace(), wep.name());
    let plan = endpoint_plan(ctx.snapshot(), wep);
    let plan = match direction {
        Direction::Ingress => plan.ingress,
        Direction::Egress => plan.egress,
    };
    evaluate_plan(
        ctx,
        &endpoint,
        &plan,
        direction,
        RuleRef::NoMatch { direction },
        packet,
    )
}

/// Which of a host endpoint's policies: for traffic to or from the host itself, for
/// forwarded traffic, or untracked policy (before the others).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostPolicy {
    Host,
    Forward,
    Untracked,
}

/// The verdict of `hep`'s `which` policy in `direction` for `packet`, walking its plan (see
/// [`crate::model::host_endpoints`]): pre-DNAT policy first on ingress; host policy ends with
/// the profiles and a deny, forward policy with an allow, untracked policy with no verdict
/// (an outcome that does not allow, decided by [`RuleRef::UntrackedDefault`]).
///
/// # Errors
///
/// As [`evaluate`].
pub fn evaluate_host_endpoint(
    ctx: &PolicyContext<'_>,
    hep: &HostEndpoint,
    which: HostPolicy,
    direction: Direction,
    packet: &PacketTuple,
) -> Result<Outcome, CompileError> {
    let endpoint = format!("HostEndpoint {}", hep.name());
    let plan = host_endpoint_plan(ctx.snapshot(), hep);
    let (plan, ending) = match (which, direction) {
        (HostPolicy::Host, Direction::Ingress) => {
            (plan.host_ingress, RuleRef::NoMatch { direction })
        }
        (HostPolicy::Host, Direction::Egress) => (plan.host_egress, RuleRef::NoMatch { direction }),
        (HostPolicy::Forward, Direction::Ingress) => {
            (plan.forward_ingress, RuleRef::ForwardDefault { direction })
        }
        (HostPolicy::Forward, Direction::Egress) => {
            (plan.forward_egress, RuleRef::ForwardDefault { direction })
        }
        (HostPolicy::Untracked, Direction::Ingress) => (
            plan.untracked_ingress,
            RuleRef::UntrackedDefault { direction },
        ),
        (HostPolicy::Untracked, Direction::Egress) => (
            plan.untracked_egress,
            RuleRef::UntrackedDefault { direction },
        ),
    };
    evaluate_plan(ctx, &endpoint, &plan, direction, ending, packet)
}

/// The verdict of `plan` (of `endpoint`, for errors) for `packet`; `ending` decides what no
/// rule did.
fn evaluate_plan(
    ctx: &PolicyContext<'_>,
    endpoint: &str,
    plan: &DirectionPlan,
    direction: Direction,
    ending: RuleRef,
    packet: &PacketTuple,
) -> Result<Outcome, CompileError> {
    let endpoint = endpoint.to_owned();
    let snapshot = ctx.snapshot();
    let missing = |owner: String| CompileError::Missing {
        endpoint: endpoint.clone(),
        owner,
    };

    // Gather every rule list first, checking every rule, as compiling does.
    let mut tiers = Vec::new();
    for tier in &plan.tiers {
        let mut policies = Vec::new();
        for policy in &tier.policies {
            let rules = policy_rules(snapshot, policy, direction)
                .ok_or_else(|| missing(format!("{}:{policy}", policy.kind.as_str())))?;
            let rule_ref = move |index| RuleRef::PolicyRule {
                tier: tier.name.clone(),
                policy: policy.clone(),
                direction,
                index,
                stage: tier.stage,
            };
            policies.push((rules, policy.namespace.as_deref(), rule_ref));
        }
        tiers.push((tier, policies));
    }
    let mut profiles = Vec::new();
    for profile in &plan.profiles {
        let rules = profile_rules(snapshot, profile, direction)
            .ok_or_else(|| missing(format!("Profile:{profile}")))?;
        profiles.push((rules, move |index| RuleRef::ProfileRule {
            profile: profile.clone(),
            direction,
            index,
        }));
    }
    let resolve = |rule: &Rule, rule_ref: &RuleRef, namespace: Option<&str>| {
        let origin = Origin {
            endpoint: &endpoint,
            rule: rule_ref,
        };
        check_supported(rule, &origin)?;
        Ok::<_, CompileError>((
            entity_queries(ctx, &rule.source, namespace, "source", &origin)?,
            entity_queries(ctx, &rule.destination, namespace, "destination", &origin)?,
        ))
    };
    for (_, policies) in &tiers {
        for (rules, namespace, rule_ref) in policies {
            for (index, rule) in numbered(rules) {
                resolve(rule, &rule_ref(index), *namespace)?;
            }
        }
    }
    for (rules, rule_ref) in &profiles {
        for (index, rule) in numbered(rules) {
            resolve(rule, &rule_ref(index), None)?;
        }
    }

    let mut log_rule = None;
    let matches = |rule: &Rule, rule_ref: &RuleRef, namespace: Option<&str>| {
        let (source, destination) = resolve(rule, rule_ref, namespace)?;
        Ok::<_, CompileError>(rule_matches(ctx, rule, &source, &destination, packet))
    };
    for (tier, policies) in &tiers {
        let mut passed = false;
        'policies: for (rules, namespace, rule_ref) in policies {
            for (index, rule) in numbered(rules) {
                let rule_ref = rule_ref(index);
                if !matches(rule, &rule_ref, *namespace)? {
                    continue;
                }
                match rule.action {
                    Action::Allow | Action::Deny => {
                        return Ok(Outcome {
                            allow: rule.action == Action::Allow,
                            rule: rule_ref,
                            log_rule,
                        });
                    }
                    Action::Log => {
                        log_rule.get_or_insert(rule_ref);
                    }
                    Action::Pass => {
                        passed = true;
                        break 'policies;
                    }
                }
            }
        }
        if !passed && tier.default_action == TierDefaultAction::Deny {
            let rule = RuleRef::TierDefault {
                tier: tier.name.clone(),
                direction,
            };
            return Ok(Outcome {
                allow: false,
                rule,
                log_rule,
            });
        }
    }
    for (rules, rule_ref) in &profiles {
        for (index, rule) in numbered(rules) {
            let rule_ref = rule_ref(index);
            if !matches(rule, &rule_ref, None)? {
                continue;
            }
            match rule.action {
                Action::Allow | Action::Deny => {
                    return Ok(Outcome {
                        allow: rule.action == Action::Allow,
                        rule: rule_ref,
                        log_rule,
                    });
                }
                Action::Log => {
                    log_rule.get_or_insert(rule_ref);
                }
                Action::Pass => break,
            }
        }
    }
    Ok(Outcome {
        allow: ending.ending_action() == Action::Allow,
        rule: ending,
        log_rule,
    })
}

/// Whether `rule` (its entities' endpoint conditions resolved) matches `packet`.
fn rule_matches(
    ctx: &PolicyContext<'_>,
    rule: &Rule,
    source: &EntityQueries,
    destination: &EntityQueries,
    packet: &PacketTuple,
) -> bool {
    let version = match packet.src {
        IpAddr::V4(_) => IpVersion::V4,
        IpAddr::V6(_) => IpVersion::V6,
    };
    let proto = packet.proto;
    let icmp = |m| is_icmp(proto) && icmp_matches(m, packet.dport);
    applies_to(rule, version)
        && rule.protocol.is_none_or(|p| p.number() == proto)
        && rule.not_protocol.is_none_or(|p| p.number() != proto)
        && rule.icmp.as_ref().is_none_or(icmp)
        && !rule.not_icmp.as_ref().is_some_and(icmp)
        && entity_matches(ctx, &rule.source, source, packet.src, proto, packet.sport)
        && entity_matches(
            ctx,
            &rule.destination,
            destination,
            packet.dst,
            proto,
            packet.dport,
        )
}

/// Whether one end of a packet (its address, and its port) matches `entity`.
fn entity_matches(
    ctx: &PolicyContext<'_>,
    entity: &EntityRule,
    queries: &EntityQueries,
    addr: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    let selectables = ctx.selectables();
    let owned_by_match = |query: &SelectableQuery| {
        selectables
            .iter()
            .any(|item| item.owns(addr) && query.matches(item))
    };
    let in_ports = |specs: &[PortSpec]| {
        has_ports(proto)
            && specs.iter().any(|spec| match spec {
                PortSpec::Named(name) => selectables.iter().any(|item| {
                    item.owns(addr)
                        && queries.port_scope.matches(item)
                        && item
                            .ports
                            .iter()
                            .any(|(n, p, number)| n == name && *p == proto && *number == port)
                }),
                _ => spec
                    .range()
                    .is_some_and(|(lo, hi)| (lo..=hi).contains(&port)),
            })
    };
    (entity.nets.is_empty() || entity.nets.iter().any(|net| net.contains(&addr)))
        && !entity.not_nets.iter().any(|net| net.contains(&addr))
        && queries.positive.as_ref().is_none_or(owned_by_match)
        && !queries.negative.as_ref().is_some_and(owned_by_match)
        && (entity.ports.is_empty() || in_ports(&entity.ports))
        && !in_ports(&entity.not_ports)
}

/// Rules with their indexes.
fn numbered(rules: &[Rule]) -> impl Iterator<Item = (u32, &Rule)> {
    (0u32..).zip(rules)
}
