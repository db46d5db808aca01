//! The error of loading and programming the dataplane: one type for the object loader, the
//! managers and the policy switch, so that the agent handles a single kind of failure.

use std::path::PathBuf;

use super::{
    attach::AttachError, bpffs::BpffsError, conntrack::ConntrackError, handles::HandleError,
    maps::MapsError, netlink::NetlinkError, upgrade::UpgradeError, versions::VersionError,
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Bpffs(#[from] BpffsError),
    #[error("loading the kernel object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error(transparent)]
    Handle(#[from] HandleError),
    #[error("inspecting the map pinned at {path}: {source}")]
    InspectPin {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    #[error(transparent)]
    Conntrack(#[from] ConntrackError),
    /// A policy switch that must program every endpoint could not program this one (see
    /// [`super::switch::Unprogrammed::Fail`]); nothing was switched.
    #[error("{0}")]
    Unprogrammed(String),
}
