//! IPAM's settings, as the allocator uses them: read from `/calico/ipam/v2/config`
//! (libcalico-go's `model.IPAMConfig`, which the `IPAMConfiguration` resource is stored as), or
//! Calico's defaults when the key does not exist (libcalico-go writes the defaults there on first
//! read; this reads them without writing).

use crate::datastore::resources::StoredIpamConfig;

/// The most blocks a host may own when the settings say 0 (libcalico-go's safeguard).
pub const DEFAULT_MAX_BLOCKS_PER_HOST: usize = 20;

/// IPAM's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamSettings {
    /// No borrowing from other hosts' blocks.
    pub strict_affinity: bool,
    /// Hosts claim new blocks by themselves.
    pub auto_allocate_blocks: bool,
    /// The most blocks one host may own (0 in the stored value means
    /// [`DEFAULT_MAX_BLOCKS_PER_HOST`]).
    pub max_blocks_per_host: usize,
}

impl Default for IpamSettings {
    fn default() -> Self {
        Self {
            strict_affinity: false,
            auto_allocate_blocks: true,
            max_blocks_per_host: DEFAULT_MAX_BLOCKS_PER_HOST,
        }
    }
}

impl From<&StoredIpamConfig> for IpamSettings {
    fn from(stored: &StoredIpamConfig) -> Self {
        Self {
            strict_affinity: stored.strict_affinity,
            auto_allocate_blocks: stored.auto_allocate_blocks,
            max_blocks_per_host: match usize::try_from(stored.max_blocks_per_host) {
                Ok(n) if n > 0 => n,
                _ => DEFAULT_MAX_BLOCKS_PER_HOST,
            },
        }
    }
}
