//! calico-ebpf's agent, as a library: modules follow the data's path, from the datastore through
//! the model to dataplane programming. The kernel programs live in the `calico-ebpf` crate.

pub mod agent;
pub mod bgp;
pub mod cli;
pub mod cni;
pub mod dataplane;
pub mod datastore;
pub mod dhcp;
pub mod dump;
pub mod events;
pub mod felix_config;
pub mod felix_settings;
pub mod ipam;
pub mod logging;
pub mod metrics;
pub mod microbench;
pub mod model;
// Crafted packets: internal to `trace` and `microbench`, public only for the program tests
// (feature `packets`).
#[cfg(feature = "packets")]
pub mod packets;
#[cfg(not(feature = "packets"))]
mod packets;
pub mod trace;
