//! A rule's match criteria, resolved for compiling: selectors turned into the endpoints and
//! network sets (and addresses) they stand for, ports into sets of numbers per protocol.

use std::sync::Arc;

use ipnet::IpNet;

use super::{
    compiled::{CompileError, Family},
    context::{
        Members, NamespaceScope, PolicyContext, Selectable, SelectableQuery, given, net_span,
    },
    ranges::Ranges,
};
use crate::{
    datastore::{EntityRule, IpVersion, PortSpec, Rule, resources::IcmpMatch},
    model::rules::{Direction, RuleRef},
};

/// The largest port (and ICMP `type << 8 | code`).
pub(super) const PORT_MAX: u128 = 0xffff;

/// Whether packets of `proto` carry ports the kernel reads (TCP, UDP, SCTP, UDP-Lite). Port
/// criteria apply only to those: `ports` never matches another protocol, `notPorts` always does.
pub(super) fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 136)
}

/// Whether `proto` is ICMP or ICMPv6, whose "destination port" is `type << 8 | code`.
pub(super) fn is_icmp(proto: u8) -> bool {
    matches!(proto, 1 | 58)
}

/// Whether an ICMP packet with `type << 8 | code` = `dport` matches `icmp`.
pub(super) fn icmp_matches(icmp: &IcmpMatch, dport: u16) -> bool {
    let [icmp_type, code] = dport.to_be_bytes();
    icmp.icmp_type.is_none_or(|t| t == icmp_type) && icmp.code.is_none_or(|c| c == code)
}

/// The `type << 8 | code` values `icmp` matches.
fn icmp_ranges(icmp: &IcmpMatch) -> Ranges {
    match (icmp.icmp_type, icmp.code) {
        (None, _) => Ranges::full(PORT_MAX),
        (Some(t), None) => Ranges::span(u128::from(t) << 8, u128::from(t) << 8 | 0xff),
        (Some(t), Some(c)) => Ranges::span(
            u128::from(t) << 8 | u128::from(c),
            u128::from(t) << 8 | u128::from(c),
        ),
    }
}

/// Whether `rule` applies to packets of `version`: its `ipVersion` is that one or none, and none
/// of its `nets` and `notNets` lists is made only of CIDRs of the other version (Felix's
/// `FilterRuleToIPVersion` leaves such a rule out of that version's dataplane).
pub(super) fn applies_to(rule: &Rule, version: IpVersion) -> bool {
    let lists = [
        &rule.source.nets,
        &rule.source.not_nets,
        &rule.destination.nets,
        &rule.destination.not_nets,
    ];
    rule.ip_version.is_none_or(|v| v == version)
        && lists
            .iter()
            .all(|nets| nets.is_empty() || nets.iter().any(|net| IpVersion::of(net) == version))
}

/// Where a rule comes from, for errors.
pub(super) struct Origin<'a> {
    pub(super) endpoint: &'a str,
    pub(super) rule: &'a RuleRef,
}

impl Origin<'_> {
    fn unsupported(&self, field: String, reason: &'static str) -> CompileError {
        CompileError::Unsupported {
            endpoint: self.endpoint.to_owned(),
            rule: self.rule.to_string(),
            field,
            reason,
        }
    }
}

/// Refuses what the dataplane cannot enforce, rather than dropping a criterion (which could
/// widen an Allow).
pub(super) fn check_supported(rule: &Rule, origin: &Origin<'_>) -> Result<(), CompileError> {
    if rule.http.is_some() {
        return Err(origin.unsupported(
            "http".into(),
            "HTTP matches need an application layer proxy",
        ));
    }
    for (end, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
        if entity.services.is_some() {
            return Err(origin.unsupported(
                format!("{end}.services"),
                "the datastore has no Kubernetes services",
            ));
        }
        if entity
            .service_accounts
            .as_ref()
            .is_some_and(|sa| given(sa.selector.as_ref()).is_some())
        {
            return Err(origin.unsupported(
                format!("{end}.serviceAccounts.selector"),
                "the datastore has no ServiceAccount labels",
            ));
        }
    }
    Ok(())
}

/// The selector conditions of an entity rule, as Calico converts them.
pub(super) struct EntityQueries {
    /// The address must be in the networks of an endpoint or network set that matches this.
    pub(super) positive: Option<SelectableQuery>,
    /// The address must not be in the networks of an endpoint or network set that matches
    /// this (`notSelector`).
    pub(super) negative: Option<SelectableQuery>,
    /// What the entity's named ports are looked up in: what `positive` matches, or
    /// everything (only endpoints have named ports).
    pub(super) port_scope: SelectableQuery,
}

/// The selector conditions of `entity` in a rule of a policy in `namespace` (`None`: a global
/// policy or a profile), as libcalico-go's `getEndpointSelector` builds them: `selector` and the
/// service account names make the positive condition; the namespace (the `namespaceSelector`'s,
/// else a NetworkPolicy's own) joins it as soon as any of `selector`, service account names,
/// `notSelector` or `namespaceSelector` is given. `notSelector` is a separate, negative
/// condition, on any namespace.
pub(super) fn entity_queries(
    ctx: &PolicyContext<'_>,
    entity: &EntityRule,
    namespace: Option<&str>,
    end: &str,
    origin: &Origin<'_>,
) -> Result<EntityQueries, CompileError> {
    let parse = |field: &str, text: Option<&String>| match given(text) {
        None => Ok(None),
        Some(text) => ctx
            .selector(text)
            .map(Some)
            .map_err(|e| CompileError::InvalidSelector {
                endpoint: origin.endpoint.to_owned(),
                rule: origin.rule.to_string(),
                field: format!("{end}.{field}"),
                message: e.to_string(),
            }),
    };
    let selector = parse("selector", entity.selector.as_ref())?;
    let not_selector = parse("notSelector", entity.not_selector.as_ref())?;
    let namespace_selector = parse("namespaceSelector", entity.namespace_selector.as_ref())?;
    let service_accounts = entity
        .service_accounts
        .as_ref()
        .map(|sa| sa.names.clone())
        .filter(|names| !names.is_empty());
    let scoped = namespace_selector.is_some() || (namespace.is_some() && not_selector.is_some());
    let negative = not_selector.map(|selector| SelectableQuery {
        namespace: NamespaceScope::Any,
        selector: Some(selector),
        service_accounts: None,
    });
    let positive =
        (selector.is_some() || service_accounts.is_some() || scoped).then(|| SelectableQuery {
            namespace: match (namespace_selector, namespace) {
                (Some(selector), _) => NamespaceScope::Selected(selector),
                (None, Some(namespace)) => NamespaceScope::Named(namespace.to_owned()),
                (None, None) => NamespaceScope::Any,
            },
            selector,
            service_accounts: service_accounts.map(|mut names| {
                names.sort();
                names.dedup();
                names
            }),
        });
    let port_scope = positive.clone().unwrap_or_else(SelectableQuery::all);
    Ok(EntityQueries {
        positive,
        negative,
        port_scope,
    })
}

/// Port numbers, per protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct PortSet {
    /// Numbers and ranges, for any protocol with ports.
    numeric: Ranges,
    /// Named ports resolved on endpoints: (protocol, port), sorted.
    named: Vec<(u8, u16)>,
}

impl PortSet {
    const EMPTY: PortSet = PortSet {
        numeric: Ranges::EMPTY,
        named: Vec::new(),
    };

    /// `specs` with their names looked up in `owners`' named ports.
    fn resolve<'e>(
        specs: &[PortSpec],
        owners: impl Iterator<Item = &'e Selectable> + Clone,
    ) -> PortSet {
        let numeric = Ranges::from_spans(
            specs
                .iter()
                .filter_map(PortSpec::range)
                .map(|(lo, hi)| (u128::from(lo), u128::from(hi))),
        );
        let mut named: Vec<(u8, u16)> = specs
            .iter()
            .filter_map(|spec| match spec {
                PortSpec::Named(name) => Some(name),
                _ => None,
            })
            .flat_map(|name| {
                owners.clone().flat_map(move |owner| {
                    owner
                        .ports
                        .iter()
                        .filter(move |(n, _, _)| n == name)
                        .map(|&(_, proto, port)| (proto, port))
                })
            })
            .collect();
        named.sort_unstable();
        named.dedup();
        PortSet { numeric, named }
    }

    /// The ports of `proto` in the set (`proto` has ports).
    fn of(&self, proto: u8) -> Ranges {
        let named = self
            .named
            .iter()
            .filter(|(p, _)| *p == proto)
            .map(|&(_, port)| (u128::from(port), u128::from(port)));
        if self.named.is_empty() {
            self.numeric.clone()
        } else {
            self.numeric.union(&Ranges::from_spans(named))
        }
    }
}

/// The `ports` and `notPorts` of one end of a rule, named ports resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct PortCondition {
    /// `ports` (none: no condition).
    positive: Option<PortSet>,
    /// `notPorts`.
    negative: PortSet,
}

impl PortCondition {
    /// No condition.
    pub(super) const NONE: PortCondition = PortCondition {
        positive: None,
        negative: PortSet::EMPTY,
    };

    /// Whether there is a condition at all.
    pub(super) fn is_some(&self) -> bool {
        self.positive.is_some() || self.negative != PortSet::EMPTY
    }

    /// The ports of a `proto` packet that match (all of them for no condition); `None` when no
    /// packet of `proto` matches.
    pub(super) fn admits(&self, proto: u8) -> Option<Ranges> {
        if !has_ports(proto) {
            return self.positive.is_none().then(|| Ranges::full(PORT_MAX));
        }
        let allowed = match &self.positive {
            Some(set) => set.of(proto),
            None => Ranges::full(PORT_MAX),
        };
        let allowed = allowed.subtract(&self.negative.of(proto), PORT_MAX);
        (!allowed.is_empty()).then_some(allowed)
    }
}

/// The protocol criteria of a rule.
#[derive(Clone, Debug)]
pub(super) struct ProtoCondition {
    protocol: Option<u8>,
    not_protocol: Option<u8>,
    icmp: Option<IcmpMatch>,
    not_icmp: Option<IcmpMatch>,
}

impl ProtoCondition {
    /// The `type << 8 | code` values (every "port" for protocols other than ICMP) of a `proto`
    /// packet that match; `None` when no packet of `proto` matches.
    pub(super) fn admits(&self, proto: u8) -> Option<Ranges> {
        if self.protocol.is_some_and(|p| p != proto) || self.not_protocol == Some(proto) {
            return None;
        }
        let mut allowed = Ranges::full(PORT_MAX);
        if is_icmp(proto) {
            if let Some(icmp) = &self.icmp {
                allowed = icmp_ranges(icmp);
            }
            if let Some(icmp) = &self.not_icmp {
                allowed = allowed.subtract(&icmp_ranges(icmp), PORT_MAX);
            }
        } else if self.icmp.is_some() {
            return None;
        }
        (!allowed.is_empty()).then_some(allowed)
    }

    /// Marks the protocols for which the criteria (this and the ports') differ from those of
    /// protocols they do not name.
    pub(super) fn mark_protocols(&self, ports: [&PortCondition; 2], marks: &mut [bool; 256]) {
        for proto in self.protocol.iter().chain(&self.not_protocol) {
            marks[usize::from(*proto)] = true;
        }
        if self.icmp.is_some() || self.not_icmp.is_some() {
            marks[1] = true;
            marks[58] = true;
        }
        // Port criteria tell the protocols with ports (named ports are TCP, UDP or SCTP) from
        // the others.
        if ports.iter().any(|condition| condition.is_some()) {
            for proto in [6, 17, 132, 136] {
                marks[proto] = true;
            }
        }
    }
}

/// The address criteria of one end of a rule.
#[derive(Debug)]
pub(super) struct Side {
    nets: Vec<IpNet>,
    not_nets: Vec<IpNet>,
    members: Option<Arc<Members>>,
    not_members: Option<Arc<Members>>,
    ports: Vec<PortSpec>,
    not_ports: Vec<PortSpec>,
    /// The endpoints its named ports are looked up in, when it has named ports.
    port_scope: Option<Arc<Members>>,
}

impl Side {
    fn new(ctx: &PolicyContext<'_>, entity: &EntityRule, queries: EntityQueries) -> Self {
        let named = entity
            .ports
            .iter()
            .chain(&entity.not_ports)
            .any(PortSpec::is_named);
        Side {
            nets: entity.nets.clone(),
            not_nets: entity.not_nets.clone(),
            members: queries.positive.map(|q| ctx.members(&q)),
            not_members: queries.negative.map(|q| ctx.members(&q)),
            ports: entity.ports.clone(),
            not_ports: entity.not_ports.clone(),
            port_scope: named.then(|| ctx.members(&queries.port_scope)),
        }
    }

    /// The addresses of `family` that match, or `None` when the side has no address criterion.
    pub(super) fn addresses(&self, family: Family) -> Option<Ranges> {
        let max = family.max();
        let nets = |nets: &[IpNet]| {
            Ranges::from_spans(nets.iter().filter_map(|net| net_span(net, family)))
        };
        let mut conditions: Vec<Ranges> = Vec::new();
        if !self.nets.is_empty() {
            conditions.push(nets(&self.nets));
        }
        if !self.not_nets.is_empty() {
            conditions.push(nets(&self.not_nets).complement(max));
        }
        if let Some(members) = &self.members {
            conditions.push(members.addresses(family).clone());
        }
        if let Some(members) = &self.not_members {
            conditions.push(members.addresses(family).complement(max));
        }
        let mut conditions = conditions.into_iter();
        let first = conditions.next()?;
        Some(conditions.fold(first, |acc, c| acc.intersect(&c)))
    }

    /// The endpoints its named ports are looked up in, if it has named ports.
    pub(super) fn port_scope(&self) -> Option<&Members> {
        self.port_scope.as_deref()
    }

    /// Its named ports, as looked up in `owners` (the endpoints of the port scope that own the
    /// address).
    pub(super) fn ports<'e>(
        &self,
        owners: impl Iterator<Item = &'e Selectable> + Clone,
    ) -> PortCondition {
        PortCondition {
            positive: (!self.ports.is_empty())
                .then(|| PortSet::resolve(&self.ports, owners.clone())),
            negative: PortSet::resolve(&self.not_ports, owners),
        }
    }

    /// Whether it names a port `name`.
    pub(super) fn names_port(&self, name: &str) -> bool {
        self.ports
            .iter()
            .chain(&self.not_ports)
            .any(|spec| matches!(spec, PortSpec::Named(n) if n == name))
    }

    /// Whether the address criteria or the named ports depend on the address.
    pub(super) fn depends_on_address(&self) -> bool {
        !self.nets.is_empty()
            || !self.not_nets.is_empty()
            || self.members.is_some()
            || self.not_members.is_some()
            || self.port_scope.is_some()
    }
}

/// A rule's criteria, resolved.
#[derive(Debug)]
pub(super) struct Conditions {
    /// Whether it applies to IPv4 and to IPv6 packets: see [`applies_to`].
    versions: [bool; 2],
    pub(super) proto: ProtoCondition,
    /// The other side: the source for ingress, the destination for egress.
    pub(super) remote: Side,
    /// The endpoint's side.
    pub(super) local: Side,
}

impl Conditions {
    /// Resolves `rule` of a policy in `namespace` (`None`: global policy or profile), applied in
    /// `direction`.
    pub(super) fn new(
        ctx: &PolicyContext<'_>,
        rule: &Rule,
        namespace: Option<&str>,
        direction: Direction,
        origin: &Origin<'_>,
    ) -> Result<Self, CompileError> {
        check_supported(rule, origin)?;
        let source = Side::new(
            ctx,
            &rule.source,
            entity_queries(ctx, &rule.source, namespace, "source", origin)?,
        );
        let destination = Side::new(
            ctx,
            &rule.destination,
            entity_queries(ctx, &rule.destination, namespace, "destination", origin)?,
        );
        let (remote, local) = match direction {
            Direction::Ingress => (source, destination),
            Direction::Egress => (destination, source),
        };
        Ok(Conditions {
            versions: [
                applies_to(rule, IpVersion::V4),
                applies_to(rule, IpVersion::V6),
            ],
            proto: ProtoCondition {
                protocol: rule.protocol.map(|p| p.number()),
                not_protocol: rule.not_protocol.map(|p| p.number()),
                icmp: rule.icmp,
                not_icmp: rule.not_icmp,
            },
            remote,
            local,
        })
    }

    /// Whether it can match packets of `family` at all.
    pub(super) fn admits_family(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.versions[0],
            Family::V6 => self.versions[1],
        }
    }
}
