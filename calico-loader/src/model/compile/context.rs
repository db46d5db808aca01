//! What policy needs to know about every endpoint of the snapshot, computed once, and which
//! endpoints (and so which addresses) a rule's selectors stand for.

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
        Snapshot,
        selector::{Scoped, Selector, SelectorError},
    },
    model::policy::{endpoint_labels, namespace_labels},
};

/// One WorkloadEndpoint of the snapshot (any node), as rule selectors see it.
#[derive(Clone, Debug)]
pub(super) struct EndpointFacts {
    pub(super) namespace: String,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) namespace_labels: Arc<BTreeMap<String, String>>,
    pub(super) networks: Vec<IpNet>,
    /// Its named ports: name, protocol number, port.
    pub(super) ports: Vec<(String, u8, u16)>,
    pub(super) service_account: Option<String>,
}

impl EndpointFacts {
    /// Whether `addr` is one of its addresses (in one of its `ipNetworks`).
    pub(super) fn owns(&self, addr: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&addr))
    }
}

/// Which namespaces a rule's endpoints may be in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum NamespaceScope {
    /// Any (a global policy or a profile without `namespaceSelector`).
    Any,
    /// This one (a NetworkPolicy's own, when the rule gives no `namespaceSelector`).
    Named(String),
    /// Those whose labels match (`namespaceSelector`).
    Selected(Arc<Selector>),
}

/// A condition on endpoints, as Calico turns a rule's entity selectors into one: namespace,
/// then selector, then service account names; all must hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct EndpointQuery {
    pub(super) namespace: NamespaceScope,
    pub(super) selector: Option<Arc<Selector>>,
    /// Sorted; `None` when the rule names none.
    pub(super) service_accounts: Option<Vec<String>>,
}

impl EndpointQuery {
    /// Every endpoint.
    pub(super) fn all() -> Self {
        Self {
            namespace: NamespaceScope::Any,
            selector: None,
            service_accounts: None,
        }
    }

    /// Whether `endpoint` meets the query. The namespace selector sees the namespace's labels,
    /// where `global()` means "not in a namespace" (so no workload endpoint); the endpoint
    /// selector sees the endpoint's labels, where Calico's `global()` is true.
    pub(super) fn matches(&self, endpoint: &EndpointFacts) -> bool {
        let namespace = match &self.namespace {
            NamespaceScope::Any => true,
            NamespaceScope::Named(name) => endpoint.namespace == *name,
            NamespaceScope::Selected(selector) => selector.matches(&*endpoint.namespace_labels),
        };
        namespace
            && self
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&Scoped::endpoint(&endpoint.labels)))
            && self.service_accounts.as_ref().is_none_or(|names| {
                endpoint
                    .service_account
                    .as_ref()
                    .is_some_and(|sa| names.binary_search(sa).is_ok())
            })
    }
}

/// The endpoints a query matches, and their addresses.
#[derive(Debug)]
pub(super) struct Members {
    /// Indexes into [`PolicyContext::endpoints`].
    pub(super) endpoints: Vec<usize>,
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

/// Everything compiling a snapshot's endpoints shares: the facts about every endpoint, and
/// caches of parsed selectors and of the endpoints each selector stands for. Build one per
/// snapshot; it may be shared between threads.
#[derive(Debug)]
pub struct PolicyContext<'s> {
    snapshot: &'s Snapshot,
    limits: TableLimits,
    endpoints: Vec<EndpointFacts>,
    selectors: Mutex<HashMap<String, Arc<Selector>>>,
    members: Mutex<HashMap<EndpointQuery, Arc<Members>>>,
}

impl<'s> PolicyContext<'s> {
    /// Gathers the labels, namespace labels, addresses, named ports and service account of every
    /// WorkloadEndpoint in `snapshot`.
    pub fn new(snapshot: &'s Snapshot) -> Self {
        let mut namespaces: HashMap<String, Arc<BTreeMap<String, String>>> = HashMap::new();
        let endpoints = snapshot
            .workload_endpoints()
            .map(|wep| {
                let namespace = wep.namespace().to_owned();
                let namespace_labels = namespaces
                    .entry(namespace.clone())
                    .or_insert_with(|| Arc::new(namespace_labels(snapshot, &namespace)))
                    .clone();
                EndpointFacts {
                    labels: endpoint_labels(snapshot, wep),
                    namespace,
                    namespace_labels,
                    networks: wep.spec.ip_networks.clone(),
                    ports: wep
                        .spec
                        .ports
                        .iter()
                        .filter_map(|p| Some((p.name.clone()?, p.protocol.number(), p.port)))
                        .collect(),
                    service_account: wep.spec.service_account_name.clone(),
                }
            })
            .collect();
        Self {
            snapshot,
            limits: TableLimits::default(),
            endpoints,
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

    pub(super) fn endpoints(&self) -> &[EndpointFacts] {
        &self.endpoints
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

    /// The endpoints `query` matches (cached).
    pub(super) fn members(&self, query: &EndpointQuery) -> Arc<Members> {
        if let Some(members) = self
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(query)
        {
            return members.clone();
        }
        let endpoints: Vec<usize> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| query.matches(e))
            .map(|(i, _)| i)
            .collect();
        let nets = || endpoints.iter().flat_map(|&i| &self.endpoints[i].networks);
        let members = Arc::new(Members {
            v4: Ranges::from_spans(nets().filter_map(|net| net_span(net, Family::V4))),
            v6: Ranges::from_spans(nets().filter_map(|net| net_span(net, Family::V6))),
            endpoints,
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
