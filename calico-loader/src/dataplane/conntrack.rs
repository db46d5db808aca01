//! The conntrack manager: the conntrack table from userspace. It removes expired entries (the
//! kernel programs treat an expired entry as absent, but only a scan frees its slot), and lists
//! the table with readable addresses and states for `dump` and Log events.
//!
//! Cutting the flows a new policy denies needs nothing from here: each entry remembers the policy
//! ids that allowed it, and the programs re-check a flow whose endpoint switched generation (the
//! switch itself is [`super::switch::switch_policy`]). What the agent owes that scheme is that
//! an unchanged policy keeps its ids, so unchanged endpoints' flows are not re-checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::MapError;
use calico_ebpf_common::{ConntrackKey, ConntrackValue, conntrack_flags, map_names, maps as spec};

use super::{
    bpffs::PinLayout,
    handles::{HandleError, MapSource},
    maps::ConntrackMap,
};

/// How often the agent scans for expired entries (as Calico does).
pub const SCAN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("conntrack map: {0}")]
    Map(#[from] MapError),
    #[error("the kernel object has no map named {}", map_names::CONNTRACK)]
    Missing,
}

impl From<HandleError> for ConntrackError {
    fn from(error: HandleError) -> Self {
        match error {
            HandleError::Missing(_) => Self::Missing,
            HandleError::Map { source, .. } => Self::Map(source),
        }
    }
}

/// The conntrack map.
pub struct Conntrack {
    map: ConntrackMap,
}

/// The clock the programs stamp entries with (`bpf_ktime_get_coarse_ns`:
/// CLOCK_MONOTONIC_COARSE, a few ms of resolution, much cheaper per packet than the precise one).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Conntrack {
    /// Takes the table out of a loaded object.
    pub fn from_ebpf(ebpf: &mut aya::Ebpf) -> Result<Self, ConntrackError> {
        Ok(Self {
            map: ebpf.open::<spec::Conntrack>()?,
        })
    }

    /// Opens the table a running (or previous) agent pinned.
    pub fn from_pin(mut layout: &PinLayout) -> Result<Self, ConntrackError> {
        Ok(Self {
            map: layout.open::<spec::Conntrack>()?,
        })
    }

    /// Every entry. Entries that go while the table is read are skipped.
    pub fn entries(&self) -> Vec<(ConntrackKey, ConntrackValue)> {
        self.map.iter().filter_map(Result::ok).collect()
    }

    /// Removes the entries idle for longer than their timeout; returns how many went.
    pub fn expire(&mut self) -> Result<usize, ConntrackError> {
        Ok(self.sweep()?.removed)
    }

    /// Removes expired entries, and says how many were there and how many went.
    pub fn sweep(&mut self) -> Result<Sweep, ConntrackError> {
        let now = monotonic_ns();
        let entries = self.entries();
        let scanned = entries.len();
        let expired: Vec<ConntrackKey> = entries
            .into_iter()
            .filter(|(key, value)| value.expired(key.proto, now))
            .map(|(key, _)| key)
            .collect();
        let mut removed = 0;
        for key in &expired {
            match self.map.remove(key) {
                Ok(()) => removed += 1,
                Err(MapError::KeyNotFound) => {}
                Err(MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Sweep {
            used: scanned - removed,
            removed,
        })
    }
}

/// What a sweep of the conntrack table found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sweep {
    /// Entries left in the table.
    pub used: usize,
    /// Expired entries removed.
    pub removed: usize,
}

/// An address of a conntrack key, in its family.
pub fn key_addr(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

/// A readable state for an entry.
pub fn state(key: &ConntrackKey, value: &ConntrackValue) -> &'static str {
    use conntrack_flags::*;
    let flags = value.flags;
    if key.proto != 6 {
        return if flags & REPLIED != 0 {
            "replied"
        } else {
            "new"
        };
    }
    if flags & RST != 0 {
        "reset"
    } else if flags & (FIN_FWD | FIN_REV) == FIN_FWD | FIN_REV {
        "closing"
    } else if flags & (FIN_FWD | FIN_REV) != 0 {
        "fin-seen"
    } else if flags & ESTABLISHED != 0 {
        "established"
    } else if flags & SYN_REV != 0 {
        "syn-received"
    } else {
        "syn-sent"
    }
}
