//! The resources in force ([`Snapshot`]) and the outcome of reading a datastore again
//! ([`SyncResult`]): what both datastores hand the agent, and what the model reads. Beside the
//! resources, a sync carries IPAM's block affinities and blocks as stored ([`IpamObjects`]):
//! the agent routes by them, and the datastore never reads them as resources.
//!
//! A snapshot holds every valid resource, one per key, in key order (kind, namespace, name).
//! Any typed kind is read with [`Snapshot::all`] and [`Snapshot::find`]; the named accessors
//! (`workload_endpoints`, `tiers`...) are shorthands for the kinds the model reads.

use std::{collections::BTreeMap, sync::Arc};

use super::{
    error::DatastoreError,
    resources::{
        GlobalNetworkPolicy, GlobalNetworkSet, Kind, NetworkPolicy, NetworkSet, Profile,
        Registered, Resource, ResourceKey, Tier, WorkloadEndpoint,
    },
};

/// The resources in force: every valid resource of the datastore, one per key. Shared, not
/// copied, when cloned: a sync that found nothing new hands out the same resources, and
/// comparing a snapshot with a clone of itself is immediate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    resources: Arc<BTreeMap<ResourceKey, Resource>>,
}

impl Snapshot {
    /// The resources of one YAML text (as a file of the datastore would hold them); a resource
    /// given twice keeps its first definition.
    ///
    /// # Errors
    ///
    /// Every problem with the text, as for a file.
    pub fn from_yaml(label: &str, text: &str) -> Result<Self, Vec<DatastoreError>> {
        let mut resources = BTreeMap::new();
        for resource in super::parse::parse_file(label, text)? {
            resources.entry(resource.key()).or_insert(resource);
        }
        Ok(Self {
            resources: Arc::new(resources),
        })
    }

    /// All resources of typed kind `K`, ordered by (namespace, name).
    pub fn all<K: Registered>(&self) -> impl Iterator<Item = &K> {
        self.of_kind(K::KIND).filter_map(K::from_resource)
    }

    /// The resource `name` of typed kind `K` (in `namespace`, for a namespaced kind), if
    /// present.
    pub fn find<K: Registered>(&self, namespace: Option<&str>, name: &str) -> Option<&K> {
        let key = ResourceKey {
            kind: K::KIND,
            namespace: namespace.filter(|_| K::INFO.namespaced).map(str::to_owned),
            name: name.to_owned(),
        };
        self.get(&key).and_then(K::from_resource)
    }

    /// All workload endpoints, ordered by (namespace, name).
    pub fn workload_endpoints(&self) -> impl Iterator<Item = &WorkloadEndpoint> {
        self.all()
    }

    /// The workload endpoint `namespace/name`, if present.
    pub fn workload_endpoint(&self, namespace: &str, name: &str) -> Option<&WorkloadEndpoint> {
        self.find(Some(namespace), name)
    }

    /// All network policies, ordered by (namespace, name).
    pub fn network_policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.all()
    }

    /// The network policy `namespace/name`, if present.
    pub fn network_policy(&self, namespace: &str, name: &str) -> Option<&NetworkPolicy> {
        self.find(Some(namespace), name)
    }

    /// All global network policies, ordered by name.
    pub fn global_network_policies(&self) -> impl Iterator<Item = &GlobalNetworkPolicy> {
        self.all()
    }

    /// The global network policy `name`, if present.
    pub fn global_network_policy(&self, name: &str) -> Option<&GlobalNetworkPolicy> {
        self.find(None, name)
    }

    /// All network sets, ordered by (namespace, name).
    pub fn network_sets(&self) -> impl Iterator<Item = &NetworkSet> {
        self.all()
    }

    /// All global network sets, ordered by name.
    pub fn global_network_sets(&self) -> impl Iterator<Item = &GlobalNetworkSet> {
        self.all()
    }

    /// All profiles, ordered by name.
    pub fn profiles(&self) -> impl Iterator<Item = &Profile> {
        self.all()
    }

    /// The profile `name`, if present.
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.find(None, name)
    }

    /// All tiers defined in the datastore, ordered by name (not by their `order`). Calico's
    /// built-in tiers that the datastore does not define are not included: see
    /// [`effective_tier`](Self::effective_tier).
    pub fn tiers(&self) -> impl Iterator<Item = &Tier> {
        self.all()
    }

    /// The tier `name`, if the datastore defines it.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.find(None, name)
    }

    /// The tier `name` as Calico would have it: the datastore's, or else, for `default`,
    /// `kube-admin` and `kube-baseline`, the built-in one ([`Tier::builtin`]). `None` means
    /// the tier does not exist (Calico would not accept a policy in it).
    pub fn effective_tier(&self, name: &str) -> Option<Tier> {
        self.tier(name).cloned().or_else(|| Tier::builtin(name))
    }

    /// All resources of `kind`, ordered by (namespace, name).
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        // Keys sort by kind first, and this is the least key of `kind`.
        let first = ResourceKey {
            kind,
            namespace: None,
            name: String::new(),
        };
        self.resources
            .range(first..)
            .take_while(move |(key, _)| key.kind == kind)
            .map(|(_, r)| r)
    }

    /// The resource with this key, if present.
    pub fn get(&self, key: &ResourceKey) -> Option<&Resource> {
        self.resources.get(key)
    }

    /// All resources, ordered by key (kind, namespace, name).
    pub fn iter(&self) -> impl Iterator<Item = (&ResourceKey, &Resource)> {
        self.resources.iter()
    }

    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }
}

impl FromIterator<Resource> for Snapshot {
    /// The snapshot of these resources; a key given twice keeps its first resource.
    fn from_iter<I: IntoIterator<Item = Resource>>(iter: I) -> Self {
        let mut resources = BTreeMap::new();
        for resource in iter {
            resources.entry(resource.key()).or_insert(resource);
        }
        Self {
            resources: Arc::new(resources),
        }
    }
}

/// IPAM's objects the agent follows, as stored: every block affinity
/// (`/calico/ipam/v2/host/<node>/ipv4/block/<cidr>`) and every block
/// (`/calico/ipam/v2/assignment/ipv4/block/<cidr>`), by etcd key, with etcd's bytes. The
/// local directory holds the same keys as files (`ipam/v2/host/...`), named by the same keys.
/// Reading them is IPAM's business (`crate::ipam`); handles and IPAM's configuration are not
/// followed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpamObjects {
    /// Value by key, in key order.
    pub values: BTreeMap<String, Vec<u8>>,
}

impl IpamObjects {
    /// The key prefixes followed: block affinities, then blocks.
    pub const PREFIXES: [&'static str; 2] =
        ["/calico/ipam/v2/host/", "/calico/ipam/v2/assignment/"];

    /// Whether `key` is one of the keys followed.
    pub fn follows(key: &str) -> bool {
        Self::PREFIXES.iter().any(|prefix| key.starts_with(prefix))
    }
}

/// The outcome of [`LocalDatastore::sync`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncResult {
    /// The resources now in force.
    pub snapshot: Snapshot,
    /// Every problem the datastore has now, new or not, ordered by file. A file with errors
    /// keeps its last good contents in force.
    pub errors: Vec<DatastoreError>,
    /// The subset of `errors` not reported by the previous sync (these are the ones `sync`
    /// logged).
    pub new_errors: Vec<DatastoreError>,
    /// IPAM's block affinities and blocks.
    pub ipam: IpamObjects,
    /// Whether the whole datastore has been read at least once. A directory is read whole on
    /// every sync; etcd is listed in the background, and until both the resources and IPAM's
    /// objects were listed, what a sync gives is empty or partial: nothing is missing from it
    /// for sure.
    pub complete: bool,
}
