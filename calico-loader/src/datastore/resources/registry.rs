//! The registry: the one list of the kinds this datastore knows, and what is made from it.
//!
//! Each line names a kind and says what it is: `typed(Type)`, a type implementing
//! [`ResourceKind`] in its own file, or `untyped(KindInfo)`, a kind recognised but kept as
//! [`UntypedResource`] (its metadata checked, its spec kept as JSON). The list makes:
//!
//! - [`Kind`], with a variant per line, in the order of the lines (the order keys sort in), and
//!   its facts ([`Kind::info`]: name, plural, short names, scope, etcd keys);
//! - [`Resource`], with a variant per line, holding the typed resource or the untyped one;
//! - for each typed kind, [`Registered`] (its `Kind` and its way in and out of `Resource`) and
//!   its `key()`;
//! - [`Kind::visit`], through which the parser reaches each kind's Rust type.
//!
//! Typing a kind, or adding one, is its file and its line here; the parser, the snapshot, etcd,
//! the local store and the CLI consult the registry and need no change.

use std::fmt;

use super::{
    bgp_configuration::BgpConfiguration,
    bgp_peer::BgpPeer,
    felix_configuration::FelixConfiguration,
    fields::FieldError,
    global_network_policy::GlobalNetworkPolicy,
    global_network_set::GlobalNetworkSet,
    host_endpoint::HostEndpoint,
    ip_pool::IpPool,
    ipam_configuration::IpamConfiguration,
    kind::{DocumentWithStatus, ResourceKind},
    kind_info::KindInfo,
    meta::{DEFAULT_NAMESPACE, ObjectMeta},
    network_policy::NetworkPolicy,
    network_set::NetworkSet,
    node::Node,
    policy_keys::PolicyKeys,
    profile::Profile,
    tier::Tier,
    workload_endpoint::WorkloadEndpoint,
};

registry! {
    /// A workload's interface: its addresses and the profiles that apply to it.
    WorkloadEndpoint => typed(WorkloadEndpoint),
    /// Namespaced policy.
    NetworkPolicy => typed(NetworkPolicy),
    /// Cluster-wide policy.
    GlobalNetworkPolicy => typed(GlobalNetworkPolicy),
    /// Rules and labels shared by the endpoints that name the profile.
    Profile => typed(Profile),
    /// Ordered group of policies.
    Tier => typed(Tier),
    /// A host's interface.
    HostEndpoint => typed(HostEndpoint),
    /// Cluster-wide set of networks, for selectors.
    GlobalNetworkSet => typed(GlobalNetworkSet),
    /// Namespaced set of networks, for selectors.
    NetworkSet => typed(NetworkSet),
    /// IP address pool.
    IpPool => typed(IpPool),
    /// Addresses IPAM must not hand out.
    IpReservation => untyped(KindInfo::cluster("IPReservation", "ipreservations", &["reservation", "reservations"])),
    /// IPAM settings.
    IpamConfiguration => typed(IpamConfiguration),
    /// BGP settings.
    BgpConfiguration => typed(BgpConfiguration),
    /// BGP peer.
    BgpPeer => typed(BgpPeer),
    /// BGP route filter.
    BgpFilter => untyped(KindInfo::cluster("BGPFilter", "bgpfilters", &["bgpf", "bgpfs", "bf", "bfs"])),
    /// Felix (per-node agent) settings.
    FelixConfiguration => typed(FelixConfiguration),
    /// Cluster-wide information.
    ClusterInformation => untyped(KindInfo::cluster("ClusterInformation", "clusterinformations", &["clusterinfo", "clusterinfos"])),
    /// A Calico node.
    Node => typed(Node),
    /// Request for a node's status.
    CalicoNodeStatus => untyped(KindInfo::cluster("CalicoNodeStatus", "caliconodestatuses", &["nodestatus", "nodestatuses"])),
    /// kube-controllers settings.
    KubeControllersConfiguration => untyped(KindInfo::cluster("KubeControllersConfiguration", "kubecontrollersconfigurations", &["kubecontrollersconfig", "kubecontrollersconfigs"])),
    /// Namespaced policy, staged (not enforced).
    StagedNetworkPolicy => untyped(KindInfo::namespaced("StagedNetworkPolicy", "stagednetworkpolicies", &["stagedpolicy", "stagedpolicies", "snp", "spol", "spols"]).with_etcd_keys(&PolicyKeys)),
    /// Cluster-wide policy, staged (not enforced).
    StagedGlobalNetworkPolicy => untyped(KindInfo::cluster("StagedGlobalNetworkPolicy", "stagedglobalnetworkpolicies", &["sgnp", "sgnps"]).with_etcd_keys(&PolicyKeys)),
    /// Kubernetes network policy, staged (not enforced).
    StagedKubernetesNetworkPolicy => untyped(KindInfo::namespaced("StagedKubernetesNetworkPolicy", "stagedkubernetesnetworkpolicies", &["stagedkubernetespolicy", "stagedkubernetespolicies", "sknp", "skpol", "skpols"])),
}

/// Builds the registry from its list; see the module documentation.
macro_rules! registry {
    ($($(#[$doc:meta])* $variant:ident => $how:ident $args:tt,)*) => {
        /// The resource kinds of `projectcalico.org/v3` this datastore recognises. Keys sort by
        /// kind in this order.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $($(#[$doc])* $variant,)*
        }

        impl Kind {
            /// Every kind, in the order keys sort.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant),*];

            /// The kind's facts.
            pub fn info(self) -> &'static KindInfo {
                match self {
                    $(Kind::$variant => registry!(@info $how $args),)*
                }
            }

            /// Calls `visitor` with the kind's Rust type: [`KindVisitor::typed`] for a typed
            /// kind, [`KindVisitor::untyped`] for the others.
            pub fn visit<V: KindVisitor>(self, visitor: V) -> V::Output {
                match self {
                    $(Kind::$variant => registry!(@visit $how $args, visitor, $variant),)*
                }
            }
        }

        /// A resource read from the datastore: the typed resource of a typed kind, an
        /// [`UntypedResource`] of the others.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Resource {
            $($(#[$doc])* $variant(Box<registry!(@payload $how $args)>),)*
        }

        impl Resource {
            /// The resource's kind.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Resource::$variant(_) => Kind::$variant,)*
                }
            }

            /// The resource's metadata.
            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $(Resource::$variant(r) => Payload::metadata(&**r),)*
                }
            }

            /// Every selector-valued field of the resource, with its path within the resource
            /// (like `spec.ingress[0].source.selector`), for the caller to check with the
            /// selector parser. Empty for kinds without selectors (and for untyped kinds).
            pub fn selector_fields(&self) -> Vec<(String, &str)> {
                match self {
                    $(Resource::$variant(r) => Payload::selector_fields(&**r),)*
                }
            }

            /// The untyped resource, if this is one.
            pub fn as_untyped(&self) -> Option<&UntypedResource> {
                match self {
                    $(Resource::$variant(r) => Payload::as_untyped(&**r),)*
                }
            }
        }

        $(registry!(@registered $variant $how $args);)*
    };

    (@info typed ($type:ty)) => {{
        static INFO: KindInfo = <$type as ResourceKind>::INFO;
        &INFO
    }};
    (@info untyped ($info:expr)) => {{
        static INFO: KindInfo = $info;
        &INFO
    }};

    (@visit typed ($type:ty), $visitor:ident, $variant:ident) => {
        $visitor.typed::<$type>()
    };
    (@visit untyped ($info:expr), $visitor:ident, $variant:ident) => {
        $visitor.untyped(Kind::$variant, |r| Resource::$variant(Box::new(r)))
    };

    (@payload typed ($type:ty)) => { $type };
    (@payload untyped ($info:expr)) => { UntypedResource };

    (@registered $variant:ident typed ($type:ty)) => {
        impl Registered for $type {
            const KIND: Kind = Kind::$variant;

            fn into_resource(self) -> Resource {
                Resource::$variant(Box::new(self))
            }

            fn from_resource(resource: &Resource) -> Option<&Self> {
                match resource {
                    Resource::$variant(r) => Some(r),
                    _ => None,
                }
            }
        }

        impl $type {
            /// The resource's identity (for a namespaced kind, in `default` when its metadata
            /// names no namespace).
            pub fn key(&self) -> ResourceKey {
                typed_key(self)
            }
        }
    };
    (@registered $variant:ident untyped ($info:expr)) => {};
}

use registry;

/// What the registry gives each typed kind: its [`Kind`], and its way into and out of
/// [`Resource`].
pub trait Registered: ResourceKind + 'static {
    /// The kind's variant.
    const KIND: Kind;

    /// The resource, as a [`Resource`].
    fn into_resource(self) -> Resource;

    /// The resource `resource` holds, if it is of this kind.
    fn from_resource(resource: &Resource) -> Option<&Self>;
}

/// Work to do with a kind's Rust type: see [`Kind::visit`].
pub trait KindVisitor {
    /// What the work gives.
    type Output;

    /// For a typed kind: `K` is its type.
    fn typed<K: Registered>(self) -> Self::Output;

    /// For a kind kept untyped: `wrap` puts its [`UntypedResource`] in its [`Resource`]
    /// variant.
    fn untyped(self, kind: Kind, wrap: fn(UntypedResource) -> Resource) -> Self::Output;
}

fn typed_key<K: Registered>(resource: &K) -> ResourceKey {
    let namespace = resource.metadata().namespace.as_deref();
    ResourceKey {
        kind: K::KIND,
        namespace: K::INFO
            .namespaced
            .then(|| namespace.unwrap_or(DEFAULT_NAMESPACE).to_owned()),
        name: resource.metadata().name.clone(),
    }
}

impl Kind {
    /// The kind's name as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        self.info().name
    }

    /// Calico's plural of the kind (`ippools`), as in etcd keys and the CLI.
    pub fn plural(self) -> &'static str {
        self.info().plural
    }

    /// Whether resources of this kind live in a namespace.
    pub fn is_namespaced(self) -> bool {
        self.info().namespaced
    }

    /// The kind named `name` (exactly as Calico spells it), if recognised.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.info().name == name)
    }

    /// The kind whose plural is `plural`.
    pub fn from_plural(plural: &str) -> Option<Kind> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.info().plural == plural)
    }

    /// The kind a CLI argument names: the kind's name in any case, its plural, or one of its
    /// short names (calicoctl's).
    pub fn lookup(text: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.info().is_called(text))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of a resource: kind, namespace (for namespaced kinds only) and name. Keys sort by
/// kind, then namespace, then name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// The resource's kind.
    pub kind: Kind,
    /// Its namespace: `Some` exactly when the kind is namespaced.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
}

impl fmt::Display for ResourceKey {
    /// `Kind namespace/name` or `Kind name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} {}/{}", self.kind, namespace, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

impl Resource {
    /// The resource's identity.
    pub fn key(&self) -> ResourceKey {
        let metadata = self.metadata();
        ResourceKey {
            kind: self.kind(),
            namespace: metadata.namespace.clone(),
            name: metadata.name.clone(),
        }
    }

    /// The resource of typed kind `K`, if this is one.
    pub fn typed<K: Registered>(&self) -> Option<&K> {
        K::from_resource(self)
    }

    /// The workload endpoint, if this is one.
    pub fn as_workload_endpoint(&self) -> Option<&WorkloadEndpoint> {
        self.typed()
    }

    /// The network policy, if this is one.
    pub fn as_network_policy(&self) -> Option<&NetworkPolicy> {
        self.typed()
    }

    /// The global network policy, if this is one.
    pub fn as_global_network_policy(&self) -> Option<&GlobalNetworkPolicy> {
        self.typed()
    }

    /// The profile, if this is one.
    pub fn as_profile(&self) -> Option<&Profile> {
        self.typed()
    }

    /// The tier, if this is one.
    pub fn as_tier(&self) -> Option<&Tier> {
        self.typed()
    }
}

/// A resource of a kind that is recognised but not (yet) typed: its metadata is checked, its
/// spec and status are kept as JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UntypedResource {
    /// The resource's kind.
    pub kind: Kind,
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its spec (a JSON object), or `Null` when the document has none.
    pub spec: serde_json::Value,
    /// Its status, if the document has one.
    pub status: Option<serde_json::Value>,
}

/// The document of an untyped resource.
pub type UntypedDocument = DocumentWithStatus<Option<serde_json::Value>, serde_json::Value>;

impl UntypedResource {
    /// The resource of `kind` in `document`, put in its [`Resource`] variant by `wrap`, and its
    /// problems: the metadata's, and a spec that is not a mapping.
    pub fn build(
        kind: Kind,
        document: UntypedDocument,
        wrap: fn(UntypedResource) -> Resource,
    ) -> (Resource, Vec<FieldError>) {
        let mut metadata = document.metadata;
        let mut problems = metadata.validate(kind.info());
        let spec = document.spec.unwrap_or(serde_json::Value::Null);
        if !(spec.is_object() || spec.is_null()) {
            problems.push(FieldError::new("spec", "must be a mapping"));
        }
        let resource = UntypedResource {
            kind,
            metadata,
            spec,
            status: document.status,
        };
        (wrap(resource), problems)
    }
}

/// What [`Resource`]'s methods ask of what each variant holds, typed or not.
trait Payload {
    fn metadata(&self) -> &ObjectMeta;
    fn selector_fields(&self) -> Vec<(String, &str)>;
    fn as_untyped(&self) -> Option<&UntypedResource>;
}

impl<K: ResourceKind> Payload for K {
    fn metadata(&self) -> &ObjectMeta {
        ResourceKind::metadata(self)
    }

    fn selector_fields(&self) -> Vec<(String, &str)> {
        ResourceKind::selector_fields(self)
    }

    fn as_untyped(&self) -> Option<&UntypedResource> {
        None
    }
}

impl Payload for UntypedResource {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn selector_fields(&self) -> Vec<(String, &str)> {
        Vec::new()
    }

    fn as_untyped(&self) -> Option<&UntypedResource> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for &kind in Kind::ALL {
            assert_eq!(Kind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::from_name("IPPool"), Some(Kind::IpPool));
        assert_eq!(Kind::from_name("ippool"), None);
        assert!(Kind::WorkloadEndpoint.is_namespaced());
        assert!(Kind::NetworkSet.is_namespaced());
        assert!(!Kind::Profile.is_namespaced());
    }

    #[test]
    fn every_kind_has_distinct_names() {
        let mut names = std::collections::BTreeMap::new();
        for &kind in Kind::ALL {
            let info = kind.info();
            let all = [info.name.to_ascii_lowercase(), info.plural.to_owned()]
                .into_iter()
                .chain(info.short_names.iter().map(|s| (*s).to_owned()));
            for name in all {
                if let Some(other) = names.insert(name.clone(), kind) {
                    assert_eq!(other, kind, "{name} names both {other} and {kind}");
                }
            }
            assert_eq!(Kind::lookup(info.plural), Some(kind));
            assert_eq!(Kind::from_plural(info.plural), Some(kind));
        }
        assert_eq!(Kind::lookup("GNP"), Some(Kind::GlobalNetworkPolicy));
        assert_eq!(Kind::lookup("netpol"), Some(Kind::NetworkPolicy));
        assert_eq!(Kind::lookup("widgets"), None);
    }
}
