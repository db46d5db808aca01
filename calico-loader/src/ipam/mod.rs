//! Calico's IPAM: IP pools carved into blocks that hosts claim, and addresses assigned from
//! them by handle, with libcalico-go's objects, keys and JSON, in etcd or in the local
//! datastore directory.
//!
//! Modules follow the data:
//!
//! - [`block`]: an allocation block (`/calico/ipam/v2/assignment/ipv4/block/<cidr>`) and its
//!   allocations;
//! - [`affinity`]: a host's claim on a block (`/calico/ipam/v2/host/<node>/ipv4/block/<cidr>`);
//! - [`handle`]: a handle's addresses per block (`/calico/ipam/v2/handle/<id>`);
//! - [`config`]: the settings (`/calico/ipam/v2/config`);
//! - [`store`]: the [`IpamStore`] trait (get, list, and compare-and-swap create, update,
//!   delete) for etcd and the local directory;
//! - [`allocator`]: [`Ipam`], which assigns and releases addresses as libcalico-go's
//!   `ipam.go` does: own blocks first, then a new block (pending affinity, block, confirmed
//!   affinity), then, without strict affinity, another host's block; empty blocks given up;
//! - [`check`]: a report of leaks and inconsistencies between blocks, handles and endpoints;
//! - [`node_blocks`]: what a node routes by: its confirmed blocks and borrowed addresses, from
//!   the affinities and blocks the agent follows.

pub mod affinity;
pub mod allocator;
pub mod block;
pub mod check;
pub mod config;
pub mod handle;
pub mod node_blocks;
pub mod store;

use std::net::IpAddr;

use ipnet::IpNet;

pub use allocator::{AssignRequest, Assigned, Ipam, IpamError};
pub use store::{AnyIpamStore, EtcdIpamStore, IpamStore, IpamStoreError, LocalIpamStore};

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// 4 or 6, as keys write it (`ipv4`).
    pub fn version(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }

    /// The family of `net`.
    pub fn of_net(net: IpNet) -> Self {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }
}
