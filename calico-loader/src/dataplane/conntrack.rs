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
use calico_ebpf_common::{
    ConntrackCounters, ConntrackKey, ConntrackValue, conntrack_flags, map_names, maps as spec,
};

use super::{
    bpffs::PinLayout,
    handles::{Handle, HandleError, MapSource},
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

/// The conntrack map, and (for the agent's sweeps) the programs' conntrack counts.
pub struct Conntrack {
    map: ConntrackMap,
    stats: Option<Handle<spec::ConntrackStats>>,
    /// What the last sweep left, to tell evictions from the counts.
    last: Option<Balance>,
}

/// The table's use after a sweep, and the programs' counts read before it.
#[derive(Clone, Copy, Debug)]
struct Balance {
    used: usize,
    counts: ConntrackCounters,
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
            stats: Some(ebpf.open::<spec::ConntrackStats>()?),
            last: None,
        })
    }

    /// Opens the table a running (or previous) agent pinned, to read it.
    pub fn from_pin(mut layout: &PinLayout) -> Result<Self, ConntrackError> {
        Ok(Self {
            map: layout.open::<spec::Conntrack>()?,
            stats: None,
            last: None,
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

    /// Removes expired entries, and says how many are left, how many went, and how many the
    /// table evicted since the last sweep to make room for new flows: the entries the last
    /// sweep left, plus those the programs created, less those they and this sweep removed,
    /// less those left now. An estimate: a flow opened while the table is read counts in the
    /// next sweep's balance instead of this one's.
    pub fn sweep(&mut self) -> Result<Sweep, ConntrackError> {
        let counts = match &self.stats {
            Some(stats) => Some(sum_counters(stats)?),
            None => None,
        };
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
        let used = scanned - removed;
        let evicted = match (self.last, counts) {
            (Some(last), Some(counts)) => {
                let created = counts.created.saturating_sub(last.counts.created);
                let dropped = counts.removed.saturating_sub(last.counts.removed);
                let expected =
                    (last.used as u64 + created).saturating_sub(dropped + removed as u64);
                expected.saturating_sub(used as u64) as usize
            }
            _ => 0,
        };
        if let Some(counts) = counts {
            self.last = Some(Balance { used, counts });
        }
        Ok(Sweep {
            used,
            removed,
            evicted,
        })
    }
}

fn sum_counters(stats: &Handle<spec::ConntrackStats>) -> Result<ConntrackCounters, ConntrackError> {
    let per_cpu = stats.get(&0, 0)?;
    let mut total = ConntrackCounters::default();
    for cpu in per_cpu.iter() {
        total.accumulate(cpu);
    }
    Ok(total)
}

/// What a sweep of the conntrack table found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sweep {
    /// Entries left in the table.
    pub used: usize,
    /// Expired entries removed.
    pub removed: usize,
    /// Entries the table evicted since the last sweep (an estimate; 0 at the first sweep).
    pub evicted: usize,
}

/// The programs' conntrack counts (entries created and removed, new flows whose entry the
/// table could not take), summed over CPUs, from the pins.
pub fn pinned_counters(mut layout: &PinLayout) -> Result<ConntrackCounters, ConntrackError> {
    sum_counters(&layout.open::<spec::ConntrackStats>()?)
}

/// Whether the table is full, from the sweeps: said once when it starts evicting entries, and
/// again only after a sweep that found no eviction.
#[derive(Debug, Default)]
pub struct FullWatch {
    full: bool,
}

impl FullWatch {
    /// Takes a sweep's count of evicted entries; true when the table has just filled (to log
    /// it).
    pub fn filled(&mut self, evicted: usize) -> bool {
        let filled = !self.full && evicted > 0;
        self.full = evicted > 0;
        filled
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_is_reported_once_until_a_sweep_finds_no_eviction() {
        let mut watch = FullWatch::default();
        assert!(!watch.filled(0));
        assert!(watch.filled(12), "filled");
        assert!(!watch.filled(40), "still full: said already");
        assert!(!watch.filled(0), "room again");
        assert!(watch.filled(1), "filled again");
    }
}
