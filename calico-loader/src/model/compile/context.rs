//! What policy needs to know about everything of the snapshot that rule selectors can match
//! (workload and host endpoints of every node, network sets, global network sets), computed
//! once, and which of them (and so which addresses) a rule's selectors stand for.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

use ipnet::IpNet;

use super::{
    compiled::{Family, TableLimits},
    ranges::{Ranges, max_of},
};
use crate::{
    datastore::{
        HostEndpoint, Snapshot,
        selector::{Scoped, Selector, SelectorError},
    },
    model::host_endpoints::host_endpoint_labels,
    model::policy::{
        endpoint_labels, namespace_labels, network_set_labels, selects_outside_namespaces,
    },
};

/// Something of the snapshot that rule selectors can match, as they see it: a WorkloadEndpoint
/// or a HostEndpoint (any node), a NetworkSet or a GlobalNetworkSet. Its networks stand, whole,
/// for its addresses (a host endpoint's are its `expectedIPs`); only endpoints have named ports,
/// and only workload endpoints a service account.
#[derive(Clone, Debug)]
pub(super) struct Selectable {
    /// Its namespace; `None` for a GlobalNetworkSet.
    pub(super) namespace: Option<NamespaceFacts>,
    pub(super) labels: BTreeMap<String, String>,
    /// An endpoint's `ipNetworks`, a set's `nets`.
    pub(super) networks: Vec<IpNet>,
    /// Its named ports: name, protocol number, port.
    pub(super) ports: Vec<(String, u8, u16)>,
    pub(super) service_account: Option<String>,
}

impl Selectable {
    /// Whether `addr` is one of its addresses (in one of its networks).
    pub(super) fn owns(&self, addr: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&addr))
    }
}

/// A namespace, as `namespaceSelector` sees it.
#[derive(Clone, Debug)]
pub(super) struct NamespaceFacts {
    pub(super) name: String,
    /// The labels of Profile `kns.<name>`, plus `projectcalico.org/name`.
    pub(super) labels: Arc<BTreeMap<String, String>>,
}

/// Which namespaces a rule's endpoints and sets may be in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum NamespaceScope {
    /// Any, or none (a global policy or a profile without `namespaceSelector`).
    Any,
    /// This one (a NetworkPolicy's own, when the rule gives no `namespaceSelector`): never a
    /// GlobalNetworkSet.
    Named(String),
    /// Those whose labels match (`namespaceSelector`); see [`namespace_selector_matches`].
    Selected(Arc<Selector>),
}

/// A condition on what rule selectors match, as Calico turns a rule's entity selectors into
/// one: namespace, then selector, then service account names; all must hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct SelectableQuery {
    pub(super) namespace: NamespaceScope,
    pub(super) selector: Option<Arc<Selector>>,
    /// Sorted; `None` when the rule names none.
    pub(super) service_accounts: Option<Vec<String>>,
}

impl SelectableQuery {
    /// Everything.
    pub(super) fn all() -> Self {
        Self {
            namespace: NamespaceScope::Any,
            selector: None,
            service_accounts: None,
        }
    }

    /// Whether `item` meets the query. The namespace selector sees the namespace's labels
    /// (see [`namespace_selector_matches`]); the selector sees the item's labels, where
    /// Calico's `global()` is true; service account names match only endpoints.
    pub(super) fn matches(&self, item: &Selectable) -> bool {
        let namespace = match &self.namespace {
            NamespaceScope::Any => true,
            NamespaceScope::Named(name) => item.namespace.as_ref().is_some_and(|n| n.name == *name),
            NamespaceScope::Selected(selector) => {
                namespace_selector_matches(selector, item.namespace.as_ref())
            }
        };
        namespace
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&Scoped::endpoint(&item.labels)))
            && self.service_accounts.as_ref().is_none_or(|names| {
                item.service_account
                    .as_ref()
                    .is_some_and(|sa| names.binary_search(sa).is_ok())
            })
    }
}

/// Whether a rule's `namespaceSelector` selects what is in `namespace` (`None`: in none, a
/// GlobalNetworkSet), as libcalico-go's rule conversion makes it a selector on the item's own
/// labels: the namespace's labels are looked up under a prefix, `all()` becomes
/// `has(projectcalico.org/namespace)` and `global()` becomes `!has(projectcalico.org/namespace)`.
/// So in a namespace the selector sees the namespace's labels, with `global()` false; outside
/// any, it sees no labels, with `all()` false and `global()` true.
pub(super) fn namespace_selector_matches(
    selector: &Selector,
    namespace: Option<&NamespaceFacts>,
) -> bool {
    match namespace {
        Some(namespace) => selector.matches(&Scoped::namespaced(&*namespace.labels)),
        None => selects_outside_namespaces(selector.expr()),
    }
}

/// What a query matches, and their addresses.
#[derive(Debug)]
pub(super) struct Members {
    /// Indexes into [`PolicyContext::selectables`].
    pub(super) selectables: Vec<usize>,
    v4: Ranges,
    v6: Ranges,
}

impl Members {
    /// Their addresses of `family`.
    pub(super) fn addresses(&self, family: Family) -> &Ranges {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

/// Everything compiling a snapshot's endpoints shares: what rule selectors can match
/// (endpoints and network sets), and caches of parsed selectors and of what each selector
/// stands for. Build one per snapshot; it may be shared between threads.
#[derive(Debug)]
pub struct PolicyContext<'s> {
    snapshot: &'s Snapshot,
    limits: TableLimits,
    selectables: Vec<Selectable>,
    selectors: Mutex<HashMap<String, Arc<Selector>>>,
    members: Mutex<HashMap<SelectableQuery, Arc<Members>>>,
}

impl<'s> PolicyContext<'s> {
    /// Gathers the labels, namespace, networks, named ports and service account of every
    /// WorkloadEndpoint, HostEndpoint, NetworkSet and GlobalNetworkSet in `snapshot`.
    pub fn new(snapshot: &'s Snapshot) -> Self {
        let mut namespaces: HashMap<String, Arc<BTreeMap<String, String>>> = HashMap::new();
        let mut namespace = |name: &str| NamespaceFacts {
            name: name.to_owned(),
            labels: namespaces
                .entry(name.to_owned())
                .or_insert_with(|| Arc::new(namespace_labels(snapshot, name)))
                .clone(),
        };
        let mut selectables: Vec<Selectable> = snapshot
            .workload_endpoints()
            .map(|wep| Selectable {
                namespace: Some(namespace(wep.namespace())),
                labels: endpoint_labels(snapshot, wep),
                networks: wep.spec.ip_networks.clone(),
                ports: wep
                    .spec
                    .ports
                    .iter()
                    .filter_map(|p| Some((p.name.clone()?, p.protocol.number(), p.port)))
                    .collect(),
                service_account: wep.spec.service_account_name.clone(),
            })
            .collect();
        // A host endpoint stands for its expected IPs, as in Felix's IP sets.
        selectables.extend(snapshot.all::<HostEndpoint>().map(|hep| {
            Selectable {
                namespace: None,
                labels: host_endpoint_labels(snapshot, hep),
                networks: hep
                    .spec
                    .expected_ips
                    .iter()
                    .map(|ip| IpNet::from(*ip))
                    .collect(),
                ports: hep
                    .spec
                    .ports
                    .iter()
                    .map(|p| (p.name.clone(), p.protocol.number(), p.port))
                    .collect(),
                service_account: None,
            }
        }));
        selectables.extend(snapshot.network_sets().map(|set| Selectable {
            namespace: Some(namespace(set.namespace())),
            labels: network_set_labels(snapshot, set),
            networks: set.spec.nets.clone(),
            ports: Vec::new(),
            service_account: None,
        }));
        selectables.extend(snapshot.global_network_sets().map(|set| Selectable {
            namespace: None,
            labels: set.metadata.labels.clone(),
            networks: set.spec.nets.clone(),
            ports: Vec::new(),
            service_account: None,
        }));
        Self {
            snapshot,
            limits: TableLimits::default(),
            selectables,
            selectors: Mutex::default(),
            members: Mutex::default(),
        }
    }

    /// The same, with these limits on the size of each endpoint's compiled form.
    #[must_use]
    pub fn with_limits(self, limits: TableLimits) -> Self {
        Self { limits, ..self }
    }

    /// The limits on the size of each endpoint's compiled form.
    pub fn limits(&self) -> TableLimits {
        self.limits
    }

    /// The snapshot it was built from.
    pub fn snapshot(&self) -> &'s Snapshot {
        self.snapshot
    }

    /// Everything rule selectors can match.
    pub(super) fn selectables(&self) -> &[Selectable] {
        &self.selectables
    }

    /// How many distinct rule selectors compiling has used so far (Felix's active selectors:
    /// each stands for a set of addresses).
    pub fn selector_count(&self) -> usize {
        self.selectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// `text` parsed (cached).
    pub(super) fn selector(&self, text: &str) -> Result<Arc<Selector>, SelectorError> {
        let mut cache = self
            .selectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(selector) = cache.get(text) {
            return Ok(selector.clone());
        }
        let selector = Arc::new(Selector::parse(text)?);
        cache.insert(text.to_owned(), selector.clone());
        Ok(selector)
    }

    /// What `query` matches (cached).
    pub(super) fn members(&self, query: &SelectableQuery) -> Arc<Members> {
        if let Some(members) = self
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(query)
        {
            return members.clone();
        }
        let selectables: Vec<usize> = self
            .selectables
            .iter()
            .enumerate()
            .filter(|(_, item)| query.matches(item))
            .map(|(i, _)| i)
            .collect();
        let nets = || {
            selectables
                .iter()
                .flat_map(|&i| &self.selectables[i].networks)
        };
        let members = Arc::new(Members {
            v4: Ranges::from_spans(nets().filter_map(|net| net_span(net, Family::V4))),
            v6: Ranges::from_spans(nets().filter_map(|net| net_span(net, Family::V6))),
            selectables,
        });
        self.members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(query.clone(), members.clone());
        members
    }
}

/// The addresses of `net` as an interval, if it is of `family`.
pub(super) fn net_span(net: &IpNet, family: Family) -> Option<(u128, u128)> {
    let (addr, width) = match (net, family) {
        (IpNet::V4(net), Family::V4) => (u128::from(u32::from(net.network())), 32),
        (IpNet::V6(net), Family::V6) => (u128::from(net.network()), 128),
        _ => return None,
    };
    Some((addr, addr | max_of(width - net.prefix_len())))
}

/// A selector field, unless it is absent or blank (which Calico treats as absent).
pub(super) fn given(field: Option<&String>) -> Option<&str> {
    field.map(|s| s.trim()).filter(|s| !s.is_empty())
}
