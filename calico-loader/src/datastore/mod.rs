//! The datastore: `projectcalico.org/v3` resources, read from a directory of YAML (or JSON)
//! files or from etcd v3.
//!
//! - [`resources`]: the resource types, following Calico's v3 API (unknown fields rejected) and
//!   its validation rules, one file per kind, and the registry of kinds ([`Kind`]). Typed:
//!   `WorkloadEndpoint`, the policy kinds `NetworkPolicy`, `GlobalNetworkPolicy`, `Profile`
//!   and `Tier`, the sets `NetworkSet` and `GlobalNetworkSet`, `HostEndpoint`, `IPPool`,
//!   `IPAMConfiguration`,
//!   `Node`, the BGP kinds `BGPConfiguration` and `BGPPeer`, and `FelixConfiguration`; other
//!   kinds are kept untyped.
//!   Selectors stay text:
//!   [`Resource::selector_fields`] lists them for the selector parser.
//! - [`selector`]: Calico's selector language, beside the resource types whose fields use it;
//!   the parser checks every selector field, the model evaluates them.
//! - [`parse_file`]: a file's text to resources, with errors that name file, document, line,
//!   resource and field ([`DatastoreError`]).
//! - `snapshot`: the resources in force ([`Snapshot`]), what a sync gives ([`SyncResult`]),
//!   with IPAM's block affinities and blocks as stored ([`IpamObjects`]).
//! - [`local`]: the directory datastore ([`LocalDatastore`]) and a debounced
//!   [`watch`](local::watch) of the directory.
//! - `store`: what the CLI's stores share: a stored resource, a write, [`StoreError`].
//! - [`etcd_client`]: how etcd is reached ([`EtcdConfig`]), one member at a time, failing over
//!   to the next.
//! - [`etcd`]: the etcd v3 datastore, with Calico's key layout.
//! - [`backend`]: one interface over both: [`AgentDatastore`] for the agent, [`Store`] for the
//!   CLI.
//!
//! Each module imports only those listed before it (and `error`): nothing here imports the
//! model.

pub mod backend;
mod error;
pub mod etcd;
pub mod etcd_client;
pub mod local;
mod parse;
pub mod resources;
pub mod selector;
mod snapshot;
mod store;

pub use backend::{AgentDatastore, DatastoreConfig, LocalStore, Store};
pub use error::{DatastoreError, ErrorKind};
pub use etcd::{EtcdStore, EtcdSync};
pub use etcd_client::{EtcdClient, EtcdConfig};
pub use local::{DatastoreWatch, LocalDatastore, WatchError, watch};
pub use parse::{ParsedDocument, parse_documents, parse_file};
pub use resources::{
    Action, EntityRule, GlobalNetworkPolicy, GlobalNetworkPolicySpec, GlobalNetworkSet,
    HostEndpoint, IpVersion, Kind, NAMESPACE_LABEL, NetworkPolicy, NetworkPolicySpec, NetworkSet,
    NetworkSetSpec, Order, PolicyType, PortSpec, Profile, ProfileSpec, Protocol, Resource,
    ResourceKey, Rule, Tier, TierDefaultAction, TierSpec, WorkloadEndpoint,
};
pub use snapshot::{IpamObjects, Snapshot, SyncResult};
pub use store::{
    StoreError, StoredResource, WriteMode, WriteOutcome, WriteRequest, now_rfc3339, rfc3339,
};

#[cfg(test)]
mod bgp_tests;
#[cfg(test)]
mod felix_configuration_tests;
#[cfg(test)]
mod host_endpoint_tests;
#[cfg(test)]
mod ip_pool_tests;
#[cfg(test)]
mod network_set_tests;
#[cfg(test)]
mod node_tests;
#[cfg(test)]
mod policy_tests;
