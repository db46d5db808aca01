//! The allocator: [`Ipam`] assigns and releases addresses as libcalico-go's `ipam.go` and
//! `ipam_block_reader_writer.go` do.
//!
//! Assigning `n` addresses of a family for a handle on a node ([`Ipam::auto_assign`]):
//!
//! 1. The pools: the enabled pools of the family that allow workloads, with `Automatic`
//!    assignment, whose `nodeSelector` matches the node's labels (a node without a `Node`
//!    resource has no labels), in name order; or exactly the pools asked for.
//! 2. The node's own blocks (its affinities), each made good on the way: a missing block is
//!    created, an unconfirmed affinity confirmed, a stale one (the block is another host's)
//!    deleted. Empty blocks the node owns in pools that no longer select it are given up.
//! 3. While the node owns fewer than `maxBlocksPerHost` blocks (20 when 0) and
//!    `autoAllocateBlocks` is on, a new block: the first block-sized CIDR of the pools without
//!    a block object, walking each pool from a start seeded by the node's name; or else an
//!    empty block of another host claimed more than a minute ago, taken back. Claiming writes
//!    a pending affinity, creates the block with `affinity: host:<node>`, then confirms the
//!    affinity; another host's block found instead means the pending affinity is removed and
//!    the search goes on.
//! 4. From a block, free ordinals first in, first out: the handle is incremented first, then
//!    the block written; if the block write fails the handle is decremented again.
//! 5. Without `strictAffinity`, once no block can be had, addresses are borrowed from other
//!    hosts' blocks in the pools.
//!
//! Every write is a compare-and-swap; a lost race reads again and retries (up to 100 times, as
//! Calico). If fewer addresses than asked can be had, those taken by the call are released
//! and the call fails.
//!
//! Releasing (by address or by handle) frees the ordinals, deletes a block left empty with no
//! owner, decrements the handles (a handle at 0 is deleted), and gives up a block left empty
//! whose owner has another block of the family: affinity to `pendingDeletion`, delete the
//! block, delete the affinity.

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Serialize, de::DeserializeOwned};
use tracing::{debug, info, warn};

use super::{
    Family,
    affinity::{
        BlockAffinity, CONFIRMED, PENDING, PENDING_DELETION, affinity_key, node_affinity_prefix,
        parse_affinity_key,
    },
    block::{AllocationBlock, BLOCK_PREFIX, address_value, block_key, parse_block_key},
    config::IpamSettings,
    handle::{HANDLE_PREFIX, IpamHandle, check_handle_id, handle_key},
    store::{IpamStore, IpamStoreError, Revision},
};
use crate::datastore::{
    now_rfc3339,
    resources::{AssignmentMode, IPAM_CONFIG_KEY, IpPool, IpPoolAllowedUse, StoredIpamConfig},
    selector::Selector,
};

/// How often a lost compare-and-swap is retried (libcalico-go's `datastoreRetries`).
const RETRIES: usize = 100;
/// How long after its claim another host's empty block may be taken back
/// (libcalico-go's `EmptyBlockMinReclaimAge`).
pub const EMPTY_BLOCK_MIN_RECLAIM_AGE: Duration = Duration::from_secs(60);

/// Why IPAM refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] IpamStoreError),
    /// A stored object that does not read.
    #[error("{key}: {message}")]
    Corrupt { key: String, message: String },
    /// A handle that cannot be one.
    #[error("{0}")]
    BadHandle(String),
    /// No enabled pool of the family at all.
    #[error("no enabled IPv{0} pool (an IPPool that is not disabled and allows Workload)")]
    NoEnabledPool(u8),
    /// No enabled pool of the family selects the node.
    #[error(
        "no enabled IPv{version} pool selects node {node} (check the pools' nodeSelector and the Node's labels)"
    )]
    NoPoolForNode { version: u8, node: String },
    /// A requested pool that is not an enabled pool.
    #[error("the given pool ({0}) does not exist, or is not enabled")]
    PoolNotEnabled(IpNet),
    /// An address outside every enabled pool.
    #[error("{0} is not in any enabled IP pool")]
    NotInPool(IpAddr),
    /// An address already allocated.
    #[error("{0} is already assigned")]
    AlreadyAssigned(IpAddr),
    /// An address in another host's block, with strict affinity.
    #[error(
        "{ip} is in block {block}, which is not this node's ({owner}), and strictAffinity is on"
    )]
    StrictAffinity {
        ip: IpAddr,
        block: IpNet,
        owner: String,
    },
    /// The node owns as many blocks as it may, and they are full.
    #[error(
        "node {node} needs a new IPAM block but already has {owned}: the limit (maxBlocksPerHost) is {limit}"
    )]
    BlockLimit {
        node: String,
        owned: usize,
        limit: usize,
    },
    /// Fewer addresses could be had than asked.
    #[error(
        "assigned {assigned} of {requested} requested IPv{version} addresses: {reason}; none kept"
    )]
    Exhausted {
        version: u8,
        requested: usize,
        assigned: usize,
        reason: String,
    },
    /// Races lost too often.
    #[error("gave up after {RETRIES} attempts: excessive concurrent IPAM requests")]
    TooManyRetries,
    /// A block owned by another host (internal to claiming).
    #[error("block {0} is owned by another host")]
    ClaimedByOther(IpNet),
    /// An affinity whose block is another host's (internal to claiming).
    #[error("the affinity for block {0} is stale")]
    StaleAffinity(IpNet),
    /// A block that must be empty but is not (internal to giving blocks up).
    #[error("block {0} is not empty")]
    NotEmpty(IpNet),
    /// A block changed since it was read (internal to giving blocks up).
    #[error("block {0} changed since it was read")]
    BlockChanged(IpNet),
    /// The handle holds fewer addresses in a block than are released (libcalico-go refuses).
    #[error("handle {handle}: {message}")]
    HandleCount { handle: String, message: String },
}

impl IpamError {
    fn is_race(&self) -> bool {
        matches!(self, IpamError::Store(e) if e.is_race())
    }
}

/// A stored object with the revision it was read at.
#[derive(Clone, Debug)]
struct Versioned<T> {
    value: T,
    revision: Revision,
}

/// What to assign ([`Ipam::auto_assign`]).
#[derive(Clone, Debug, Default)]
pub struct AssignRequest {
    /// The handle the addresses belong to.
    pub handle: String,
    /// The node asking (its blocks, and the pools that select it).
    pub node: String,
    /// How many IPv4 and IPv6 addresses.
    pub num_v4: usize,
    pub num_v6: usize,
    /// Pools to take from, by CIDR; empty: every enabled pool that selects the node.
    pub pools: Vec<IpNet>,
    /// Attributes of the allocations (`node` is added).
    pub attrs: BTreeMap<String, String>,
}

/// What was assigned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assigned {
    pub v4: Vec<IpAddr>,
    pub v6: Vec<IpAddr>,
}

/// The allocator over a store, with the IP pools and the nodes' labels it decides with.
pub struct Ipam<S> {
    store: S,
    /// Every pool, in name order.
    pools: Vec<IpPool>,
    /// Labels per node name (nodes without a `Node` resource have none).
    node_labels: BTreeMap<String, BTreeMap<String, String>>,
    reclaim_age: Duration,
}

impl<S: IpamStore> Ipam<S> {
    /// An allocator over `store`, deciding with `pools` and the nodes' `node_labels`.
    pub fn new(
        store: S,
        mut pools: Vec<IpPool>,
        node_labels: BTreeMap<String, BTreeMap<String, String>>,
    ) -> Self {
        pools.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        Self {
            store,
            pools,
            node_labels,
            reclaim_age: EMPTY_BLOCK_MIN_RECLAIM_AGE,
        }
    }

    /// The same, taking back other hosts' empty blocks `age` after their claim instead of a
    /// minute.
    #[must_use]
    pub fn with_reclaim_age(mut self, age: Duration) -> Self {
        self.reclaim_age = age;
        self
    }

    /// The pools, in name order.
    pub fn pools(&self) -> &[IpPool] {
        &self.pools
    }

    // -----------------------------------------------------------------------------------------
    // Typed access to the store

    async fn get<T: DeserializeOwned>(
        &mut self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, IpamError> {
        match self.store.get(key).await? {
            None => Ok(None),
            Some(stored) => Ok(Some(Versioned {
                value: decode(key, &stored.value)?,
                revision: stored.revision,
            })),
        }
    }

    async fn create<T: Serialize>(
        &mut self,
        key: &str,
        value: T,
    ) -> Result<Versioned<T>, IpamError> {
        let bytes = encode(key, &value)?;
        let revision = self.store.create(key, bytes).await?;
        Ok(Versioned { value, revision })
    }

    async fn update<T: Serialize>(
        &mut self,
        key: &str,
        object: Versioned<T>,
    ) -> Result<Versioned<T>, IpamError> {
        let bytes = encode(key, &object.value)?;
        let revision = self.store.update(key, bytes, &object.revision).await?;
        Ok(Versioned {
            value: object.value,
            revision,
        })
    }

    async fn delete<T>(&mut self, key: &str, object: &Versioned<T>) -> Result<(), IpamError> {
        Ok(self.store.delete(key, &object.revision).await?)
    }

    async fn get_block(
        &mut self,
        cidr: IpNet,
    ) -> Result<Option<Versioned<AllocationBlock>>, IpamError> {
        self.get(&block_key(cidr)).await
    }

    /// Writes a block, bumping its sequence number as libcalico-go's `updateBlock` does.
    async fn update_block(
        &mut self,
        mut block: Versioned<AllocationBlock>,
    ) -> Result<Versioned<AllocationBlock>, IpamError> {
        block.value.sequence_number = block.value.sequence_number.wrapping_add(1);
        let key = block_key(block.value.cidr);
        self.update(&key, block).await
    }

    async fn get_affinity(
        &mut self,
        node: &str,
        cidr: IpNet,
    ) -> Result<Option<Versioned<BlockAffinity>>, IpamError> {
        let key = affinity_key(node, cidr);
        match self.store.get(&key).await? {
            None => Ok(None),
            Some(stored) => Ok(Some(Versioned {
                value: BlockAffinity::from_value(&stored.value).map_err(|e| {
                    IpamError::Corrupt {
                        key: key.clone(),
                        message: e.to_string(),
                    }
                })?,
                revision: stored.revision,
            })),
        }
    }

    async fn set_affinity(
        &mut self,
        node: &str,
        cidr: IpNet,
        mut affinity: Versioned<BlockAffinity>,
        state: &str,
    ) -> Result<Versioned<BlockAffinity>, IpamError> {
        state.clone_into(&mut affinity.value.state);
        self.update(&affinity_key(node, cidr), affinity).await
    }

    /// Every block, by CIDR.
    pub async fn blocks(&mut self) -> Result<Vec<AllocationBlock>, IpamError> {
        Ok(self
            .versioned_blocks()
            .await?
            .into_iter()
            .map(|b| b.value)
            .collect())
    }

    async fn versioned_blocks(&mut self) -> Result<Vec<Versioned<AllocationBlock>>, IpamError> {
        let mut blocks = Vec::new();
        for stored in self.store.list(BLOCK_PREFIX).await? {
            if parse_block_key(&stored.key).is_none() {
                continue;
            }
            blocks.push(Versioned {
                value: decode(&stored.key, &stored.value)?,
                revision: stored.revision,
            });
        }
        Ok(blocks)
    }

    /// Every handle, by id.
    pub async fn handles(&mut self) -> Result<BTreeMap<String, IpamHandle>, IpamError> {
        let mut handles = BTreeMap::new();
        for stored in self.store.list(HANDLE_PREFIX).await? {
            if let Some(id) = stored.key.strip_prefix(HANDLE_PREFIX) {
                handles.insert(id.to_owned(), decode(&stored.key, &stored.value)?);
            }
        }
        Ok(handles)
    }

    /// Every host affinity: node, block, claim.
    pub async fn affinities(&mut self) -> Result<Vec<(String, IpNet, BlockAffinity)>, IpamError> {
        self.affinities_under(super::affinity::HOST_PREFIX).await
    }

    async fn affinities_under(
        &mut self,
        prefix: &str,
    ) -> Result<Vec<(String, IpNet, BlockAffinity)>, IpamError> {
        let mut out = Vec::new();
        for stored in self.store.list(prefix).await? {
            if let Some((node, cidr)) = parse_affinity_key(&stored.key) {
                let affinity =
                    BlockAffinity::from_value(&stored.value).map_err(|e| IpamError::Corrupt {
                        key: stored.key.clone(),
                        message: e.to_string(),
                    })?;
                out.push((node, cidr, affinity));
            }
        }
        Ok(out)
    }

    /// The settings: `/calico/ipam/v2/config`, or Calico's defaults if it does not exist.
    ///
    /// # Errors
    ///
    /// The store fails, or the value does not read.
    pub async fn settings(&mut self) -> Result<IpamSettings, IpamError> {
        Ok(match self.get::<StoredIpamConfig>(IPAM_CONFIG_KEY).await? {
            Some(stored) => IpamSettings::from(&stored.value),
            None => IpamSettings::default(),
        })
    }

    // -----------------------------------------------------------------------------------------
    // Pools

    fn labels(&self, node: &str) -> BTreeMap<String, String> {
        self.node_labels.get(node).cloned().unwrap_or_default()
    }

    fn selects(pool: &IpPool, labels: &BTreeMap<String, String>) -> bool {
        let matches = |text: &str| Selector::parse(text).is_ok_and(|s| s.matches(labels));
        matches(&pool.spec.node_selector)
            && pool
                .spec
                .namespace_selector
                .as_deref()
                .is_none_or(|ns| matches(ns) || ns.trim().is_empty())
    }

    fn enabled_pools(&self, family: Family) -> impl Iterator<Item = &IpPool> {
        self.pools.iter().filter(move |p| {
            Family::of_net(p.spec.cidr) == family
                && !p.spec.disabled
                && p.spec.allows(IpPoolAllowedUse::Workload)
        })
    }

    /// The pools to assign from (libcalico-go's `determinePools`).
    fn determine_pools(
        &self,
        family: Family,
        requested: &[IpNet],
        node: &str,
    ) -> Result<Vec<IpPool>, IpamError> {
        let enabled: Vec<&IpPool> = self.enabled_pools(family).collect();
        if enabled.is_empty() {
            return Err(IpamError::NoEnabledPool(family.version()));
        }
        let requested: Vec<IpNet> = requested
            .iter()
            .filter(|r| Family::of_net(**r) == family)
            .copied()
            .collect();
        if !requested.is_empty() {
            return requested
                .iter()
                .map(|r| {
                    enabled
                        .iter()
                        .find(|p| p.spec.cidr == r.trunc())
                        .map(|p| (*p).clone())
                        .ok_or(IpamError::PoolNotEnabled(*r))
                })
                .collect();
        }
        let labels = self.labels(node);
        let pools: Vec<IpPool> = enabled
            .into_iter()
            .filter(|p| p.spec.assignment_mode == AssignmentMode::Automatic)
            .filter(|p| Self::selects(p, &labels))
            .cloned()
            .collect();
        if pools.is_empty() {
            return Err(IpamError::NoPoolForNode {
                version: family.version(),
                node: node.to_owned(),
            });
        }
        Ok(pools)
    }

    /// The enabled pool holding `ip`.
    fn enabled_pool_of(&self, ip: IpAddr) -> Option<&IpPool> {
        self.enabled_pools(Family::of(ip))
            .find(|p| p.spec.cidr.contains(&ip))
    }

    /// The block of a pool holding `ip`, disabled pools included.
    fn block_of(&self, ip: IpAddr) -> Option<IpNet> {
        self.pools
            .iter()
            .find(|p| p.spec.cidr.contains(&ip))
            .and_then(|p| IpNet::new(ip, p.spec.block_size).ok())
            .map(|n| n.trunc())
    }

    // -----------------------------------------------------------------------------------------
    // Assigning

    /// Assigns `request.num_v4` IPv4 and `request.num_v6` IPv6 addresses to the handle on the
    /// node (see the module documentation). All or nothing: on failure, what the call took is
    /// released again.
    ///
    /// # Errors
    ///
    /// No pool, the block limit, the pools exhausted, the store failing, or races lost too
    /// often.
    pub async fn auto_assign(&mut self, request: &AssignRequest) -> Result<Assigned, IpamError> {
        check_handle_id(&request.handle).map_err(IpamError::BadHandle)?;
        let mut attrs = request.attrs.clone();
        attrs
            .entry("node".to_owned())
            .or_insert_with(|| request.node.clone());
        let mut assigned = Assigned::default();
        for (family, num) in [(Family::V4, request.num_v4), (Family::V6, request.num_v6)] {
            if num == 0 {
                continue;
            }
            info!(
                node = %request.node,
                handle = %request.handle,
                "auto-assign {num} IPv{} address(es)",
                family.version()
            );
            let mut got = Vec::new();
            let result = self
                .assign_family(family, num, request, &attrs, &mut got)
                .await;
            match family {
                Family::V4 => assigned.v4.extend(&got),
                Family::V6 => assigned.v6.extend(&got),
            }
            if let Err(e) = result {
                let taken: Vec<IpAddr> = assigned.v4.iter().chain(&assigned.v6).copied().collect();
                if !taken.is_empty()
                    && let Err(release) = self.release_ips(&taken).await
                {
                    warn!("could not release {taken:?} after a failed assignment: {release}");
                }
                return Err(e);
            }
        }
        Ok(assigned)
    }

    async fn assign_family(
        &mut self,
        family: Family,
        num: usize,
        request: &AssignRequest,
        attrs: &BTreeMap<String, String>,
        got: &mut Vec<IpAddr>,
    ) -> Result<(), IpamError> {
        let node = request.node.as_str();
        let handle = request.handle.as_str();
        let settings = self.settings().await?;
        let pools = self.determine_pools(family, &request.pools, node)?;
        let affine = self.prepare_affine_blocks(family, node, &pools).await?;
        let mut owned = affine.len();
        let mut remaining: VecDeque<IpNet> = affine.into();
        let mut rounds = 0;
        while got.len() < num {
            rounds += 1;
            if rounds > num + RETRIES {
                return Err(IpamError::TooManyRetries);
            }
            let allow_new = owned < settings.max_blocks_per_host;
            let found = self
                .find_or_claim_block(family, node, &pools, &mut remaining, allow_new, &settings)
                .await;
            let (mut block, new) = match found {
                Ok(found) => found,
                Err(None) => break,
                Err(Some(IpamError::BlockLimit { .. })) => {
                    return Err(IpamError::BlockLimit {
                        node: node.to_owned(),
                        owned,
                        limit: settings.max_blocks_per_host,
                    });
                }
                Err(Some(e)) => return Err(e),
            };
            if new {
                owned += 1;
            }
            for _ in 0..RETRIES {
                let cidr = block.value.cidr;
                match self
                    .assign_from_block(
                        block.clone(),
                        num - got.len(),
                        handle,
                        attrs,
                        settings.strict_affinity.then_some(node),
                    )
                    .await
                {
                    Ok(ips) => {
                        got.extend(ips);
                        break;
                    }
                    Err(e) if e.is_race() => match self.get_block(cidr).await? {
                        Some(again) => block = again,
                        None => break,
                    },
                    Err(e) => return Err(e),
                }
            }
        }
        if got.len() < num && !settings.strict_affinity {
            self.borrow(family, num, handle, attrs, node, &pools, got)
                .await?;
        }
        if got.len() < num {
            let reason = if settings.strict_affinity {
                "no more free addresses in this node's blocks, no block left to claim, and strictAffinity forbids borrowing".to_owned()
            } else {
                let cidrs: Vec<String> = pools.iter().map(|p| p.spec.cidr.to_string()).collect();
                format!("no free addresses left in pools {}", cidrs.join(", "))
            };
            return Err(IpamError::Exhausted {
                version: family.version(),
                requested: num,
                assigned: got.len(),
                reason,
            });
        }
        Ok(())
    }

    /// Takes addresses from other hosts' blocks in `pools`, walking each pool's blocks from
    /// the node's seeded start.
    #[allow(clippy::too_many_arguments)]
    async fn borrow(
        &mut self,
        family: Family,
        num: usize,
        handle: &str,
        attrs: &BTreeMap<String, String>,
        node: &str,
        pools: &[IpPool],
        got: &mut Vec<IpAddr>,
    ) -> Result<(), IpamError> {
        let blocks = self.versioned_blocks().await?;
        for pool in pools {
            let mut in_pool: Vec<&Versioned<AllocationBlock>> = blocks
                .iter()
                .filter(|b| {
                    Family::of_net(b.value.cidr) == family && pool.spec.cidr.contains(&b.value.cidr)
                })
                .collect();
            let (start, count) = walk_start(pool, node);
            in_pool.sort_by_key(|b| {
                let index = block_index(pool, b.value.cidr);
                (index + count - start) % count.max(1)
            });
            for block in in_pool {
                if got.len() >= num {
                    return Ok(());
                }
                if block.value.free() == 0 {
                    continue;
                }
                let mut block = block.clone();
                for _ in 0..RETRIES {
                    let cidr = block.value.cidr;
                    info!(%cidr, node, "borrowing from a block of another host");
                    match self
                        .assign_from_block(block.clone(), num - got.len(), handle, attrs, None)
                        .await
                    {
                        Ok(ips) => {
                            got.extend(ips);
                            break;
                        }
                        Err(e) if e.is_race() => match self.get_block(cidr).await? {
                            Some(again) => block = again,
                            None => break,
                        },
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    /// Assigns up to `num` addresses of `block`: increments the handle, then writes the block
    /// (and decrements the handle again if that fails). With `owner`, the block must be that
    /// node's.
    async fn assign_from_block(
        &mut self,
        mut block: Versioned<AllocationBlock>,
        num: usize,
        handle: &str,
        attrs: &BTreeMap<String, String>,
        owner: Option<&str>,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let cidr = block.value.cidr;
        if let Some(node) = owner
            && !block.value.is_affine_to(node)
        {
            return Err(IpamError::StrictAffinity {
                ip: cidr.network(),
                block: cidr,
                owner: block.value.host().unwrap_or("none").to_owned(),
            });
        }
        let ips = block.value.auto_assign(num, handle, attrs);
        if ips.is_empty() {
            return Ok(ips);
        }
        self.increment_handle(handle, cidr, ips.len()).await?;
        if let Err(e) = self.update_block(block).await {
            if let Err(undo) = self.decrement_handle(handle, cidr, ips.len()).await {
                warn!(handle, %cidr, "could not decrement the handle after a failed block write: {undo}");
            }
            return Err(e);
        }
        debug!(%cidr, handle, "assigned {ips:?}");
        Ok(ips)
    }

    /// Assigns `ip` itself to the handle on the node (libcalico-go's `AssignIP`), claiming its
    /// block for the node if no one has it.
    ///
    /// # Errors
    ///
    /// `ip` is outside the enabled pools, already assigned, or (with strict affinity) in another
    /// node's block; the store failing; races lost too often.
    pub async fn assign_ip(
        &mut self,
        ip: IpAddr,
        handle: &str,
        node: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Result<(), IpamError> {
        check_handle_id(handle).map_err(IpamError::BadHandle)?;
        let pool = self.enabled_pool_of(ip).ok_or(IpamError::NotInPool(ip))?;
        let cidr = IpNet::new(ip, pool.spec.block_size)
            .map_err(|_| IpamError::NotInPool(ip))?
            .trunc();
        let mut attrs = attrs.clone();
        attrs
            .entry("node".to_owned())
            .or_insert_with(|| node.to_owned());
        let settings = self.settings().await?;
        for _ in 0..RETRIES {
            let mut block = match self.get_block(cidr).await? {
                Some(block) => block,
                None => {
                    let pending = match self.pending_affinity(node, cidr).await {
                        Ok(pending) => pending,
                        Err(e) if e.is_race() => continue,
                        Err(e) => return Err(e),
                    };
                    match self.claim_block(node, cidr, pending).await {
                        Ok(block) => block,
                        Err(e) if e.is_race() || matches!(e, IpamError::ClaimedByOther(_)) => {
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            if settings.strict_affinity && !block.value.is_affine_to(node) {
                return Err(IpamError::StrictAffinity {
                    ip,
                    block: cidr,
                    owner: block.value.host().unwrap_or("none").to_owned(),
                });
            }
            if !block.value.assign(ip, handle, &attrs) {
                return Err(IpamError::AlreadyAssigned(ip));
            }
            self.increment_handle(handle, cidr, 1).await?;
            match self.update_block(block).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    if let Err(undo) = self.decrement_handle(handle, cidr, 1).await {
                        warn!(handle, %cidr, "could not decrement the handle: {undo}");
                    }
                    if !e.is_race() {
                        return Err(e);
                    }
                }
            }
        }
        Err(IpamError::TooManyRetries)
    }

    // -----------------------------------------------------------------------------------------
    // Blocks and affinities

    /// The node's blocks in `pools`; on the way, its empty blocks in enabled pools that no
    /// longer select it are given up (libcalico-go's `prepareAffinityBlocksForHost`).
    async fn prepare_affine_blocks(
        &mut self,
        family: Family,
        node: &str,
        pools: &[IpPool],
    ) -> Result<Vec<IpNet>, IpamError> {
        let affinities = self
            .affinities_under(&node_affinity_prefix(node, Some(family)))
            .await?;
        let labels = self.labels(node);
        let mut usable = Vec::new();
        for (_, cidr, _) in affinities {
            if pools.iter().any(|p| p.spec.cidr.contains(&cidr)) {
                usable.push(cidr);
                continue;
            }
            let unselected = self
                .enabled_pools(family)
                .find(|p| p.spec.cidr.contains(&cidr))
                .is_some_and(|p| !Self::selects(p, &labels));
            if unselected {
                match self.release_block_affinity(node, cidr, true, None).await {
                    Ok(()) => {
                        info!(%cidr, node, "gave up an empty block whose pool no longer selects the node")
                    }
                    Err(e) => debug!(%cidr, node, "kept block: {e}"),
                }
            }
        }
        Ok(usable)
    }

    /// A block of the node with a free address: one it owns, else a new one (libcalico-go's
    /// `findOrClaimBlock`). `Err(None)`: no block can be had (no free block left).
    async fn find_or_claim_block(
        &mut self,
        family: Family,
        node: &str,
        pools: &[IpPool],
        remaining: &mut VecDeque<IpNet>,
        allow_new: bool,
        settings: &IpamSettings,
    ) -> Result<(Versioned<AllocationBlock>, bool), Option<IpamError>> {
        while let Some(cidr) = remaining.pop_front() {
            for _ in 0..RETRIES {
                let Some(affinity) = self.get_affinity(node, cidr).await.map_err(Some)? else {
                    break;
                };
                match self.block_from_affinity(node, cidr, affinity).await {
                    Ok(block) if block.value.free() > 0 => return Ok((block, false)),
                    Ok(_) => break,
                    Err(e) if e.is_race() => {}
                    Err(e) => {
                        debug!(%cidr, node, "cannot use this affinity: {e}");
                        break;
                    }
                }
            }
        }
        if !allow_new {
            return Err(Some(IpamError::BlockLimit {
                node: node.to_owned(),
                owned: 0,
                limit: settings.max_blocks_per_host,
            }));
        }
        if !settings.auto_allocate_blocks {
            info!(node, "no block with room, and autoAllocateBlocks is off");
            return Err(None);
        }
        for _ in 0..RETRIES {
            let Some(cidr) = self
                .find_usable_block(family, node, pools)
                .await
                .map_err(Some)?
            else {
                return Err(None);
            };
            for _ in 0..RETRIES {
                let pending = match self.pending_affinity(node, cidr).await {
                    Ok(pending) => pending,
                    Err(e) if e.is_race() => continue,
                    Err(e) => return Err(Some(e)),
                };
                match self.block_from_affinity(node, cidr, pending).await {
                    Ok(block) if block.value.free() > 0 => return Ok((block, true)),
                    Ok(_) => break,
                    Err(e) if e.is_race() => {}
                    Err(IpamError::ClaimedByOther(_) | IpamError::StaleAffinity(_)) => break,
                    Err(e) => return Err(Some(e)),
                }
            }
        }
        Err(Some(IpamError::TooManyRetries))
    }

    /// The block an affinity of the node stands for, made good (libcalico-go's
    /// `getBlockFromAffinity`): created if missing, the affinity confirmed if it is not, a
    /// stale affinity deleted.
    async fn block_from_affinity(
        &mut self,
        node: &str,
        cidr: IpNet,
        affinity: Versioned<BlockAffinity>,
    ) -> Result<Versioned<AllocationBlock>, IpamError> {
        let Some(block) = self.get_block(cidr).await? else {
            let pending = self.set_affinity(node, cidr, affinity, PENDING).await?;
            return self.claim_block(node, cidr, pending).await;
        };
        if !block.value.is_affine_to(node) {
            warn!(%cidr, node, owner = ?block.value.affinity, "deleting a stale affinity: the block is another host's");
            self.delete(&affinity_key(node, cidr), &affinity).await?;
            return Err(IpamError::StaleAffinity(cidr));
        }
        if affinity.value.is_confirmed() {
            return Ok(block);
        }
        let pending = self.set_affinity(node, cidr, affinity, PENDING).await?;
        // A new revision of the block makes anyone still working on the old one retry.
        let block = self.update_block(block).await?;
        self.set_affinity(node, cidr, pending, CONFIRMED).await?;
        Ok(block)
    }

    /// A pending affinity of the node for `cidr`: created, or the existing one (set pending
    /// unless confirmed) (libcalico-go's `getPendingAffinity`).
    async fn pending_affinity(
        &mut self,
        node: &str,
        cidr: IpNet,
    ) -> Result<Versioned<BlockAffinity>, IpamError> {
        let key = affinity_key(node, cidr);
        match self.create(&key, BlockAffinity::new(PENDING)).await {
            Ok(created) => Ok(created),
            Err(e) if e.is_race() => {
                let Some(existing) = self.get_affinity(node, cidr).await? else {
                    return Err(IpamStoreError::Conflict { key }.into());
                };
                if existing.value.state == CONFIRMED {
                    Ok(existing)
                } else {
                    self.set_affinity(node, cidr, existing, PENDING).await
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the block with the node's pending affinity, then confirms it
    /// (libcalico-go's `claimAffineBlock`). If the block exists already it is used when it is
    /// the node's; otherwise the pending affinity is removed.
    async fn claim_block(
        &mut self,
        node: &str,
        cidr: IpNet,
        pending: Versioned<BlockAffinity>,
    ) -> Result<Versioned<AllocationBlock>, IpamError> {
        let block = AllocationBlock::new(cidr, node, now_rfc3339());
        match self.create(&block_key(cidr), block).await {
            Ok(created) => {
                info!(%cidr, node, "claimed a new block");
                self.confirm_affinity(node, cidr, pending).await?;
                Ok(created)
            }
            Err(e) if e.is_race() => {
                let Some(existing) = self.get_block(cidr).await? else {
                    return Err(e);
                };
                if existing.value.is_affine_to(node) {
                    self.confirm_affinity(node, cidr, pending).await?;
                    return Ok(existing);
                }
                if let Err(e) = self.delete(&affinity_key(node, cidr), &pending).await {
                    warn!(%cidr, node, "could not remove a pending affinity: {e}");
                }
                Err(IpamError::ClaimedByOther(cidr))
            }
            Err(e) => Err(e),
        }
    }

    async fn confirm_affinity(
        &mut self,
        node: &str,
        cidr: IpNet,
        affinity: Versioned<BlockAffinity>,
    ) -> Result<(), IpamError> {
        match self.set_affinity(node, cidr, affinity, CONFIRMED).await {
            Ok(_) => Ok(()),
            Err(e) => match self.get_affinity(node, cidr).await? {
                Some(current) if current.value.state == CONFIRMED => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// A block for the node to claim (libcalico-go's `findUsableBlock`): the first CIDR of the
    /// pools without a block, walking each pool from the node's seeded start; a block of the
    /// node with room; or another host's empty block claimed longer ago than the reclaim age,
    /// taken from it. `None`: none.
    async fn find_usable_block(
        &mut self,
        family: Family,
        node: &str,
        pools: &[IpPool],
    ) -> Result<Option<IpNet>, IpamError> {
        let blocks: BTreeMap<IpNet, AllocationBlock> = self
            .blocks()
            .await?
            .into_iter()
            .filter(|b| Family::of_net(b.cidr) == family)
            .map(|b| (b.cidr, b))
            .collect();
        let mut empty_of_others = Vec::new();
        for pool in pools {
            let (start, count) = walk_start(pool, node);
            let mut i: u128 = 0;
            while i < count {
                let cidr = nth_block(pool, (start + i) % count);
                i += 1;
                match blocks.get(&cidr) {
                    None => return Ok(Some(cidr)),
                    Some(b) if b.is_affine_to(node) && b.free() > 0 => return Ok(Some(cidr)),
                    Some(b) if b.is_unused() && b.free() > 0 => empty_of_others.push(b.clone()),
                    Some(_) => {}
                }
            }
        }
        for block in empty_of_others {
            let age = claim_age(block.affinity_claim_time.as_deref());
            if age < self.reclaim_age {
                debug!(cidr = %block.cidr, "empty block of another host claimed {age:?} ago: not taken back yet");
                continue;
            }
            let Some(owner) = block.host().map(str::to_owned) else {
                continue;
            };
            match self
                .release_block_affinity(&owner, block.cidr, true, Some(block.sequence_number))
                .await
            {
                Ok(()) => {
                    info!(cidr = %block.cidr, owner, node, "took back an empty block of another host");
                    return Ok(Some(block.cidr));
                }
                Err(e) => debug!(cidr = %block.cidr, "could not take the empty block back: {e}"),
            }
        }
        Ok(None)
    }

    /// Gives up `node`'s block `cidr` (libcalico-go's `releaseBlockAffinity`): the affinity to
    /// `pendingDeletion`, then the block deleted if empty (or its affinity removed), then the
    /// affinity deleted. With `require_empty`, only an empty block; with `sequence`, only the
    /// block at that sequence number.
    async fn release_block_affinity(
        &mut self,
        node: &str,
        cidr: IpNet,
        require_empty: bool,
        sequence: Option<u64>,
    ) -> Result<(), IpamError> {
        let key = affinity_key(node, cidr);
        let Some(affinity) = self.get_affinity(node, cidr).await? else {
            return Err(IpamStoreError::Conflict { key }.into());
        };
        let Some(mut block) = self.get_block(cidr).await? else {
            return Err(IpamStoreError::Conflict {
                key: block_key(cidr),
            }
            .into());
        };
        if sequence.is_some_and(|s| s != block.value.sequence_number) {
            return Err(IpamError::BlockChanged(cidr));
        }
        if block.value.affinity.is_some() && !block.value.is_affine_to(node) {
            if let Err(e) = self.delete(&key, &affinity).await {
                warn!(%cidr, node, "could not delete a stale affinity: {e}");
            }
            return Err(IpamError::ClaimedByOther(cidr));
        }
        let unused = block.value.is_unused();
        if require_empty && !unused {
            return Err(IpamError::NotEmpty(cidr));
        }
        let affinity = self
            .set_affinity(node, cidr, affinity, PENDING_DELETION)
            .await?;
        if unused {
            self.delete(&block_key(cidr), &block).await?;
        } else {
            block.value.affinity = None;
            block.value.affinity_claim_time = None;
            self.update_block(block).await?;
        }
        self.delete(&key, &affinity).await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Handles

    async fn increment_handle(
        &mut self,
        handle: &str,
        cidr: IpNet,
        n: usize,
    ) -> Result<(), IpamError> {
        let key = handle_key(handle);
        for _ in 0..RETRIES {
            let result = match self.get::<IpamHandle>(&key).await? {
                None => {
                    let mut new = IpamHandle::default();
                    new.increment(&cidr.to_string(), n);
                    self.create(&key, new).await.map(|_| ())
                }
                Some(mut existing) => {
                    existing.value.increment(&cidr.to_string(), n);
                    self.update(&key, existing).await.map(|_| ())
                }
            };
            match result {
                Err(e) if e.is_race() => {}
                other => return other,
            }
        }
        Err(IpamError::TooManyRetries)
    }

    async fn decrement_handle(
        &mut self,
        handle: &str,
        cidr: IpNet,
        n: usize,
    ) -> Result<(), IpamError> {
        let key = handle_key(handle);
        for _ in 0..RETRIES {
            let Some(mut existing) = self.get::<IpamHandle>(&key).await? else {
                return Err(IpamError::HandleCount {
                    handle: handle.to_owned(),
                    message: "the handle does not exist".into(),
                });
            };
            existing
                .value
                .decrement(&cidr.to_string(), n)
                .map_err(|message| IpamError::HandleCount {
                    handle: handle.to_owned(),
                    message,
                })?;
            let result = if existing.value.is_empty() {
                self.delete(&key, &existing).await
            } else {
                self.update(&key, existing).await.map(|_| ())
            };
            match result {
                Err(e) if e.is_race() => {}
                other => return other,
            }
        }
        Err(IpamError::TooManyRetries)
    }

    // -----------------------------------------------------------------------------------------
    // Releasing

    /// Releases `ips`: the ones that were not allocated.
    ///
    /// # Errors
    ///
    /// The store failing, or races lost too often.
    pub async fn release_ips(&mut self, ips: &[IpAddr]) -> Result<Vec<IpAddr>, IpamError> {
        let mut not_allocated = Vec::new();
        let mut by_block: BTreeMap<IpNet, Vec<IpAddr>> = BTreeMap::new();
        let mut all_blocks: Option<Vec<IpNet>> = None;
        for &ip in ips {
            let cidr = match self.block_of(ip) {
                Some(cidr) => Some(cidr),
                None => {
                    if all_blocks.is_none() {
                        all_blocks = Some(self.blocks().await?.iter().map(|b| b.cidr).collect());
                    }
                    all_blocks
                        .iter()
                        .flatten()
                        .find(|c| c.contains(&ip))
                        .copied()
                }
            };
            match cidr {
                Some(cidr) => by_block.entry(cidr).or_default().push(ip),
                None => not_allocated.push(ip),
            }
        }
        for (cidr, ips) in by_block {
            not_allocated.extend(self.release_from_block(cidr, &ips).await?);
        }
        Ok(not_allocated)
    }

    async fn release_from_block(
        &mut self,
        cidr: IpNet,
        ips: &[IpAddr],
    ) -> Result<Vec<IpAddr>, IpamError> {
        for _ in 0..RETRIES {
            let Some(mut block) = self.get_block(cidr).await? else {
                return Ok(ips.to_vec());
            };
            let (not_allocated, by_handle) = block.value.release(ips);
            if not_allocated.len() == ips.len() {
                return Ok(not_allocated);
            }
            match self.write_released(block).await {
                Ok(written) => {
                    for (handle, n) in by_handle {
                        if let Err(e) = self.decrement_handle(&handle, cidr, n).await {
                            warn!(%cidr, handle, "could not decrement the handle: {e}");
                        }
                    }
                    if let Some(block) = written {
                        self.give_up_if_empty(&block).await;
                    }
                    return Ok(not_allocated);
                }
                Err(e) if e.is_race() => {}
                Err(e) => return Err(e),
            }
        }
        Err(IpamError::TooManyRetries)
    }

    /// Writes a block after a release: deleted if empty with no owner, else updated (`None`:
    /// deleted).
    async fn write_released(
        &mut self,
        block: Versioned<AllocationBlock>,
    ) -> Result<Option<AllocationBlock>, IpamError> {
        if block.value.is_unused() && block.value.affinity.is_none() {
            info!(cidr = %block.value.cidr, "deleting an empty block without owner");
            self.delete(&block_key(block.value.cidr), &block).await?;
            Ok(None)
        } else {
            Ok(Some(self.update_block(block).await?.value))
        }
    }

    /// Releases every address of `handle`: the addresses released. A handle object that is
    /// missing is looked for in the blocks.
    ///
    /// # Errors
    ///
    /// The store failing, or races lost too often.
    pub async fn release_by_handle(&mut self, handle: &str) -> Result<Vec<IpAddr>, IpamError> {
        check_handle_id(handle).map_err(IpamError::BadHandle)?;
        let cidrs: Vec<IpNet> = match self.get::<IpamHandle>(&handle_key(handle)).await? {
            Some(h) => h
                .value
                .block
                .keys()
                .filter_map(|c| c.parse::<IpNet>().ok())
                .collect(),
            None => self
                .blocks()
                .await?
                .into_iter()
                .filter(|b| !b.addresses_of(handle).is_empty())
                .map(|b| b.cidr)
                .collect(),
        };
        let mut released = Vec::new();
        for cidr in cidrs {
            released.extend(self.release_handle_in_block(handle, cidr).await?);
        }
        Ok(released)
    }

    async fn release_handle_in_block(
        &mut self,
        handle: &str,
        cidr: IpNet,
    ) -> Result<Vec<IpAddr>, IpamError> {
        for _ in 0..RETRIES {
            let Some(mut block) = self.get_block(cidr).await? else {
                return Ok(Vec::new());
            };
            let released = block.value.release_handle(handle);
            if released.is_empty() {
                return Ok(released);
            }
            match self.write_released(block).await {
                Ok(written) => {
                    if let Err(e) = self.decrement_handle(handle, cidr, released.len()).await {
                        warn!(%cidr, handle, "could not decrement the handle: {e}");
                    }
                    if let Some(block) = written {
                        self.give_up_if_empty(&block).await;
                    }
                    return Ok(released);
                }
                Err(e) if e.is_race() => {}
                Err(e) => return Err(e),
            }
        }
        Err(IpamError::TooManyRetries)
    }

    /// Gives up a block left empty whose owner has another block of its family
    /// (kube-controllers' rule for empty blocks, applied when the block empties, without its
    /// grace period), so that a host keeps one block of each family.
    async fn give_up_if_empty(&mut self, block: &AllocationBlock) {
        if !block.is_unused() {
            return;
        }
        let Some(owner) = block.host().map(str::to_owned) else {
            return;
        };
        let family = Family::of_net(block.cidr);
        let owned = match self
            .affinities_under(&node_affinity_prefix(&owner, Some(family)))
            .await
        {
            Ok(affinities) => affinities.len(),
            Err(e) => {
                warn!(cidr = %block.cidr, "could not count the owner's blocks: {e}");
                return;
            }
        };
        if owned < 2 {
            return;
        }
        match self
            .release_block_affinity(&owner, block.cidr, true, Some(block.sequence_number))
            .await
        {
            Ok(()) => info!(cidr = %block.cidr, owner, "released an empty block"),
            Err(e) => debug!(cidr = %block.cidr, owner, "kept the empty block: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, IpamError> {
    serde_json::from_slice(value).map_err(|e| IpamError::Corrupt {
        key: key.to_owned(),
        message: format!("not libcalico-go's JSON: {e}"),
    })
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, IpamError> {
    serde_json::to_vec(value).map_err(|e| IpamError::Corrupt {
        key: key.to_owned(),
        message: e.to_string(),
    })
}

/// How many blocks `pool` holds, and where the node's walk through them starts: FNV-1 (32 bits)
/// of the node's name, as libcalico-go seeds its walk with (its random start differs).
fn walk_start(pool: &IpPool, node: &str) -> (u128, u128) {
    let bits = u32::from(
        pool.spec
            .block_size
            .saturating_sub(pool.spec.cidr.prefix_len()),
    );
    let count = 1u128.checked_shl(bits.min(127)).unwrap_or(u128::MAX);
    let hash = node.bytes().fold(0x811c_9dc5_u32, |hash, b| {
        hash.wrapping_mul(0x0100_0193) ^ u32::from(b)
    });
    (u128::from(hash) % count, count)
}

/// The `n`th block of `pool`.
fn nth_block(pool: &IpPool, n: u128) -> IpNet {
    let size_bits = u32::from(pool.spec.cidr.max_prefix_len() - pool.spec.block_size);
    let offset = n.checked_shl(size_bits).unwrap_or(0);
    let address = super::block::nth_address(pool.spec.cidr, offset);
    IpNet::new(address, pool.spec.block_size)
        .map(|n| n.trunc())
        .unwrap_or(pool.spec.cidr)
}

/// The index of block `cidr` in `pool`.
fn block_index(pool: &IpPool, cidr: IpNet) -> u128 {
    let size_bits = u32::from(pool.spec.cidr.max_prefix_len() - pool.spec.block_size);
    let offset = address_value(cidr.network()) - address_value(pool.spec.cidr.network());
    offset.checked_shr(size_bits).unwrap_or(0)
}

/// How long ago a block was claimed (RFC 3339 `affinity_claim_time`); a block without a claim
/// time (older Calico) counts as claimed long ago.
fn claim_age(claim_time: Option<&str>) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match claim_time.and_then(parse_rfc3339) {
        Some(at) => Duration::from_secs(now.saturating_sub(at)),
        None => Duration::MAX,
    }
}

/// Seconds since the epoch of `2024-05-01T10:00:00Z` (fractions and offsets other than `Z`
/// are not read).
fn parse_rfc3339(text: &str) -> Option<u64> {
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let time = time.split('.').next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (t.next()??, t.next()??, t.next()??);
    // Days from civil (Howard Hinnant).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_reads_what_it_writes() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2024-05-01T10:00:00Z"), Some(1_714_557_600));
        assert_eq!(
            parse_rfc3339(&crate::datastore::rfc3339(951_782_400)),
            Some(951_782_400)
        );
        assert_eq!(parse_rfc3339("garbage"), None);
    }
}
