//! Policy compilation: an endpoint's evaluation plan (tiers, policies, rules, profiles) turned
//! into the entries of the kernel's three policy tables, each matched longest prefix first, so
//! that a packet's verdict takes a bounded number of lookups however many rules apply (see the
//! policy section of `calico-ebpf-common`, and `docs/policy-compilation.md`).
//!
//! # Semantics
//!
//! Calico's, as [`evaluate`] implements them by walking the rules: tiers in order, each one's
//! policies in order, each policy's rules in order; Allow and Deny decide, Pass leaves the tier,
//! Log records the first Log rule and goes on; a tier where nothing decided or passed ends with
//! its default action; then the profiles (Pass leaves the profile); then deny. Selectors stand
//! for the addresses of the WorkloadEndpoints (of every node) and the whole networks of the
//! NetworkSets and GlobalNetworkSets they match, NetworkPolicy rules being limited to the
//! policy's namespace unless they give a `namespaceSelector`. Named ports stand for the ports
//! of that name on the endpoint that owns the address (network sets have none). Port criteria apply
//! only to protocols with ports: `ports` never matches another protocol, `notPorts` always does.
//!
//! # Algorithm
//!
//! 1. The plan is flattened into steps: each rule with its criteria resolved (selectors to
//!    address sets, through caches in [`PolicyContext`]) and a rule id from the
//!    [`RuleRegistry`]; a tier whose default is Deny adds an unconditional deny step. Steps carry
//!    the number of their tier or profile ("group"), which is where a Pass jumps out of.
//! 2. Per address family, the endpoint's own addresses are grouped by how the rules' criteria on
//!    the local side treat them (usually all alike).
//! 3. Per group, the remote address space is split into elementary intervals by a sweep over the
//!    boundaries of every rule's remote address set (a rule whose named ports resolve differently
//!    on different endpoints has one set per resolution). Intervals where the same rules are
//!    active share a class (sets compared by a Zobrist hash, then exactly).
//! 4. Per class, the protocols that the active rules tell apart are listed; all others share the
//!    class's default. Per protocol, source ports are split at the rules' boundaries, and per
//!    source-port interval the destination ports (ICMP type and code) are painted: the rules are
//!    applied in order to the intervals not yet decided (Log marks, Pass sets aside until the next
//!    group, Allow and Deny decide), what remains is the final deny. Identical port functions
//!    share a port class; identical class tables share a class.
//! 5. Each piecewise-constant function becomes prefix entries: a zero-length default for the
//!    value that would need the most prefixes, and the prefixes of the other intervals.
//!
//! # Files
//!
//! This file flattens the plan (step 1) and drives the others, which never import it:
//! `compiled` (what compiling produces, its limits and [`CompileError`]), `ranges` (sets of
//! integers as intervals), `lookup` (the rules a plan's entries stand for), `context` (what
//! every endpoint and network set of the snapshot stands for), `conditions` (a rule's
//! criteria, resolved), `table` (steps 2 to 5) and `evaluate` (the reference evaluator).

mod compiled;
mod conditions;
mod context;
mod evaluate;
mod lookup;
mod ranges;
mod table;
#[cfg(test)]
mod tests;

use ipnet::IpNet;

pub use compiled::{
    AddrEntry, CompileError, CompiledDirection, CompiledEndpoint, LocalEntry,
    MAX_LOCAL_NETWORK_ADDRESSES, PortEntry, ProtoEntry, TableLimits,
};
pub use context::PolicyContext;
pub use evaluate::{HostPolicy, Outcome, PacketTuple, evaluate, evaluate_host_endpoint};

use self::{
    compiled::{Family, MAX_LOCAL_HOST_BITS},
    conditions::{Conditions, Origin},
    lookup::{policy_rules, profile_rules},
    table::{Ending, Locals, Step},
};
use super::{
    host_endpoints::host_endpoint_plan,
    policy::{DirectionPlan, endpoint_plan},
    rules::{Direction, RuleRef, RuleRegistry},
};
use crate::datastore::{Action, HostEndpoint, Rule, TierDefaultAction, WorkloadEndpoint};

/// Compiles `wep`'s policy, both directions. Rule ids come from `registry` (the same rule keeps
/// its id).
///
/// # Errors
///
/// A [`CompileError`] when a rule uses a criterion the dataplane cannot enforce, a network of
/// the endpoint is too wide, the compiled form exceeds the context's [`TableLimits`], or rule
/// ids run out.
pub fn compile_endpoint(
    ctx: &PolicyContext<'_>,
    registry: &mut RuleRegistry,
    wep: &WorkloadEndpoint,
) -> Result<CompiledEndpoint, CompileError> {
    let endpoint = format!("WorkloadEndpoint {}/{}", wep.namespace(), wep.name());
    let plan = endpoint_plan(ctx.snapshot(), wep);
    let own = local_addresses(&endpoint, &wep.spec.ip_networks)?;
    let mut sources = own.clone();
    sources.extend(local_addresses(
        &endpoint,
        &wep.spec.allow_spoofed_source_prefixes,
    )?);
    sources.sort_unstable();
    sources.dedup();
    let mut compile = |plan: &DirectionPlan, direction: Direction, locals: &[(Family, u128)]| {
        compile_direction(
            ctx,
            registry,
            &endpoint,
            plan,
            direction,
            RuleRef::NoMatch { direction },
            Locals::Addresses(locals),
        )
    };
    Ok(CompiledEndpoint {
        ingress: compile(&plan.ingress, Direction::Ingress, &own)?,
        egress: compile(&plan.egress, Direction::Egress, &sources)?,
    })
}

/// Compiles one direction's `plan`, ending with `ending` (a deny, or for forwarded traffic
/// through a host endpoint an allow).
fn compile_direction(
    ctx: &PolicyContext<'_>,
    registry: &mut RuleRegistry,
    endpoint: &str,
    plan: &DirectionPlan,
    direction: Direction,
    ending: RuleRef,
    locals: Locals<'_>,
) -> Result<CompiledDirection, CompileError> {
    let mut flattener = Flattener {
        ctx,
        registry: &mut *registry,
        endpoint,
        direction,
        steps: Vec::new(),
    };
    flattener.flatten(plan)?;
    let steps = flattener.steps;
    let action = ending.ending_action();
    let ending = Ending {
        id: registry.id(ending, action)?,
        action,
    };
    table::compile(ctx, endpoint, &steps, ending, direction, locals)
}

/// A host endpoint's compiled policy: for traffic to and from the host itself, and for
/// forwarded traffic through it (see [`super::host_endpoints`]).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CompiledHostEndpoint {
    /// Host ingress (pre-DNAT, then normal policy, profiles, deny) and egress (normal policy,
    /// profiles, deny).
    pub host: CompiledEndpoint,
    /// Forward ingress (pre-DNAT, then apply-on-forward policy, allow) and egress
    /// (apply-on-forward policy, allow).
    pub forward: CompiledEndpoint,
    /// No policy applies to forwarded traffic: it passes untouched.
    pub forward_open: bool,
    /// Untracked (`doNotTrack`) ingress and egress policy, ending with no verdict; `None`
    /// when no untracked policy selects the endpoint.
    pub untracked: Option<CompiledEndpoint>,
    /// Whether untracked policy applies in each direction (ingress, egress): a direction
    /// without any is not evaluated at all.
    pub untracked_directions: (bool, bool),
}

/// Compiles `hep`'s policy, for any local address: its traffic may be addressed to the host or
/// forwarded anywhere.
///
/// # Errors
///
/// The errors of [`compile_endpoint`].
pub fn compile_host_endpoint(
    ctx: &PolicyContext<'_>,
    registry: &mut RuleRegistry,
    hep: &HostEndpoint,
) -> Result<CompiledHostEndpoint, CompileError> {
    let endpoint = format!("HostEndpoint {}", hep.name());
    let plan = host_endpoint_plan(ctx.snapshot(), hep);
    let mut compile = |plan: &DirectionPlan, direction: Direction, ending: RuleRef| {
        compile_direction(
            ctx,
            registry,
            &endpoint,
            plan,
            direction,
            ending,
            Locals::Anywhere,
        )
    };
    use Direction::{Egress, Ingress};
    let untracked = if plan.has_untracked() {
        Some(CompiledEndpoint {
            ingress: compile(
                &plan.untracked_ingress,
                Ingress,
                RuleRef::UntrackedDefault { direction: Ingress },
            )?,
            egress: compile(
                &plan.untracked_egress,
                Egress,
                RuleRef::UntrackedDefault { direction: Egress },
            )?,
        })
    } else {
        None
    };
    Ok(CompiledHostEndpoint {
        host: CompiledEndpoint {
            ingress: compile(
                &plan.host_ingress,
                Ingress,
                RuleRef::NoMatch { direction: Ingress },
            )?,
            egress: compile(
                &plan.host_egress,
                Egress,
                RuleRef::NoMatch { direction: Egress },
            )?,
        },
        forward: CompiledEndpoint {
            ingress: compile(
                &plan.forward_ingress,
                Ingress,
                RuleRef::ForwardDefault { direction: Ingress },
            )?,
            egress: compile(
                &plan.forward_egress,
                Egress,
                RuleRef::ForwardDefault { direction: Egress },
            )?,
        },
        forward_open: plan.forward_open(),
        untracked,
        untracked_directions: (
            !plan.untracked_ingress.tiers.is_empty(),
            !plan.untracked_egress.tiers.is_empty(),
        ),
    })
}

/// Every address of `networks` (network and broadcast addresses included), sorted.
fn local_addresses(
    endpoint: &str,
    networks: &[IpNet],
) -> Result<Vec<(Family, u128)>, CompileError> {
    let mut addresses = Vec::new();
    for network in networks {
        if network.max_prefix_len() - network.prefix_len() > MAX_LOCAL_HOST_BITS {
            return Err(CompileError::LocalNetworkTooWide {
                endpoint: endpoint.to_owned(),
                network: *network,
            });
        }
        let (family, first) = Family::split(network.network());
        let (_, last) = Family::split(network.broadcast());
        addresses.extend((first..=last).map(|value| (family, value)));
    }
    addresses.sort_unstable();
    addresses.dedup();
    Ok(addresses)
}

/// Turns a plan into steps in evaluation order.
struct Flattener<'c, 's> {
    ctx: &'c PolicyContext<'s>,
    registry: &'c mut RuleRegistry,
    endpoint: &'c str,
    direction: Direction,
    steps: Vec<Step>,
}

impl Flattener<'_, '_> {
    /// Adds the steps of `plan`.
    fn flatten(&mut self, plan: &DirectionPlan) -> Result<(), CompileError> {
        let (snapshot, direction) = (self.ctx.snapshot(), self.direction);
        let missing = |owner: String| CompileError::Missing {
            endpoint: self.endpoint.to_owned(),
            owner,
        };
        let mut group = 0;
        for tier in &plan.tiers {
            for policy in &tier.policies {
                let rules = policy_rules(snapshot, policy, direction)
                    .ok_or_else(|| missing(format!("{}:{policy}", policy.kind.as_str())))?;
                let rule_ref = |index| RuleRef::PolicyRule {
                    tier: tier.name.clone(),
                    policy: policy.clone(),
                    direction,
                    index,
                    stage: tier.stage,
                };
                self.add_rules(rules, group, policy.namespace.as_deref(), rule_ref)?;
            }
            if tier.default_action == TierDefaultAction::Deny {
                let id = self.registry.id(
                    RuleRef::TierDefault {
                        tier: tier.name.clone(),
                        direction,
                    },
                    Action::Deny,
                )?;
                self.steps.push(Step {
                    id,
                    action: Action::Deny,
                    group,
                    conditions: None,
                });
            }
            group += 1;
        }
        for profile in &plan.profiles {
            let rules = profile_rules(snapshot, profile, direction)
                .ok_or_else(|| missing(format!("Profile:{profile}")))?;
            let rule_ref = |index| RuleRef::ProfileRule {
                profile: profile.clone(),
                direction,
                index,
            };
            self.add_rules(rules, group, None, rule_ref)?;
            group += 1;
        }
        Ok(())
    }

    /// Adds `rules` of a policy in `namespace` (`None`: global policy or profile).
    fn add_rules(
        &mut self,
        rules: &[Rule],
        group: u32,
        namespace: Option<&str>,
        rule_ref: impl Fn(u32) -> RuleRef,
    ) -> Result<(), CompileError> {
        for (index, rule) in (0u32..).zip(rules) {
            let rule_ref = rule_ref(index);
            let origin = Origin {
                endpoint: self.endpoint,
                rule: &rule_ref,
            };
            let conditions = Conditions::new(self.ctx, rule, namespace, self.direction, &origin)?;
            let id = self.registry.id(rule_ref, rule.action)?;
            self.steps.push(Step {
                id,
                action: rule.action,
                group,
                conditions: Some(conditions),
            });
        }
        Ok(())
    }
}
