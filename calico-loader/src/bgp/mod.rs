//! Routing between hosts over BGP: which sessions this node has and what it announces
//! ([`model`]), and the BIRD 2 configuration that does it ([`bird`]).
//!
//! The input is plain facts ([`BgpInput`]): this node and the others (addresses, AS numbers,
//! route reflector cluster ids, labels), the `BGPConfiguration` and `BGPPeer` resources, the IP
//! pools, and this node's confirmed IPAM blocks and borrowed addresses. The caller gathers them
//! (the agent, `crate::agent::routing`, from `Node` resources and IPAM); nothing here reads the
//! datastore. [`model::build`] turns them into a [`BgpModel`], Calico's peer selection
//! (confd's) applied to this node; [`bird::render`] writes one BIRD 2 configuration for IPv4 and
//! IPv6 from it, the same text for the same model; [`bird::check`] has BIRD parse a written
//! configuration; [`daemon::Bird`] starts BIRD on it (or adopts the one running in its run
//! directory), reloads it, keeps the last good configuration when BIRD refuses a new one, and
//! stops it or leaves it running for the next agent.
//!
//! Each module imports only the datastore's resource types and selectors.

pub mod bird;
pub mod daemon;
mod error;
pub mod model;

pub use daemon::{
    Bird, BirdSettings, ProtocolStatus, Reload, birdc_at, parse_protocols, protocols_at,
    socket_path,
};
pub use error::BgpError;
pub use model::{
    BgpInput, BgpModel, BgpSession, Encapsulation, Family, FamilyRouting, NodeFacts, Password,
    PasswordReader, PoolFacts, SessionKind, SystemPasswords, TtlSecurity,
};

#[cfg(test)]
mod bird_tests;
#[cfg(test)]
mod model_tests;
