//! An allocation block: a CIDR of `blockSize` carved from a pool, owned (affine) by one host,
//! and which of its addresses are allocated to which handle. Stored as libcalico-go's
//! `model.AllocationBlock` at `/calico/ipam/v2/assignment/ipv4/block/198.18.0.0-26` (a CIDR's
//! `/` becomes `-`), with Go's field names and order:
//!
//! ```json
//! {"cidr":"198.18.0.0/30","affinity":"host:node1","affinity_claim_time":"2024-05-01T10:00:00Z",
//!  "allocations":[0,null,null,null],"unallocated":[1,2,3],
//!  "attributes":[{"handle_id":"h1","secondary":{"node":"node1"}}],
//!  "sequenceNumber":7,"sequenceNumberForAllocation":{"0":6},"deleted":false}
//! ```
//!
//! `allocations[i]` indexes `attributes` (or is null: free); `unallocated` lists the free
//! ordinals, used first in, first out. The methods follow libcalico-go's `ipam_block.go`.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use super::Family;

/// The prefix of every block key.
pub const BLOCK_PREFIX: &str = "/calico/ipam/v2/assignment/";
/// What a block's `affinity` starts with for a host.
pub const HOST_AFFINITY_PREFIX: &str = "host:";

/// The key of the block `cidr`.
pub fn block_key(cidr: IpNet) -> String {
    format!(
        "{BLOCK_PREFIX}ipv{}/block/{}",
        Family::of_net(cidr).version(),
        cidr_in_key(cidr)
    )
}

/// The prefix of the keys of every block of `family`.
pub fn block_prefix(family: Family) -> String {
    format!("{BLOCK_PREFIX}ipv{}/block/", family.version())
}

/// A CIDR as keys write it: `198.18.0.0-26`.
pub fn cidr_in_key(cidr: IpNet) -> String {
    cidr.to_string().replacen('/', "-", 1)
}

/// The CIDR a key's last part names (`198.18.0.0-26`), if it is one.
pub fn cidr_from_key(part: &str) -> Option<IpNet> {
    let net: IpNet = part.replacen('-', "/", 1).parse().ok()?;
    Some(net.trunc())
}

/// The block a key names, if it is a block key.
pub fn parse_block_key(key: &str) -> Option<IpNet> {
    let rest = key.strip_prefix(BLOCK_PREFIX)?;
    let (family, cidr) = rest.split_once("/block/")?;
    if !matches!(family, "ipv4" | "ipv6") || cidr.contains('/') {
        return None;
    }
    cidr_from_key(cidr)
}

/// Who an allocation belongs to: its handle and attributes (libcalico-go's
/// `AllocationAttribute`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationAttribute {
    /// The handle the address was assigned with.
    #[serde(rename = "handle_id", default, skip_serializing_if = "Option::is_none")]
    pub handle_id: Option<String>,
    /// Attributes of the owner (`node`, `namespace`, `pod`...).
    #[serde(
        rename = "secondary",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub active_owner_attrs: BTreeMap<String, String>,
    /// Attributes of a previous or next owner (live migration).
    #[serde(
        rename = "alternateOwnerAttrs",
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub alternate_owner_attrs: BTreeMap<String, String>,
    /// When the allocation was released into its cool-down (newer Calico; kept as read).
    #[serde(
        rename = "releasedAt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub released_at: Option<serde_json::Value>,
}

/// An allocation block (libcalico-go's `model.AllocationBlock`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationBlock {
    /// The block's CIDR.
    pub cidr: IpNet,
    /// `host:<node>` for the host that owns the block; null when none does.
    pub affinity: Option<String>,
    /// When the affinity was claimed (RFC 3339).
    #[serde(
        rename = "affinity_claim_time",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub affinity_claim_time: Option<String>,
    /// Per ordinal, the index of its attributes, or null: free.
    #[serde(default, deserialize_with = "null_as_default")]
    pub allocations: Vec<Option<usize>>,
    /// The free ordinals, in the order they will be used.
    #[serde(default, deserialize_with = "null_as_default")]
    pub unallocated: Vec<usize>,
    /// Attributes of the allocations; null in a new block, as Go writes a nil slice.
    #[serde(default)]
    pub attributes: Option<Vec<AllocationAttribute>>,
    /// Bumped on every write of the block.
    #[serde(rename = "sequenceNumber", default)]
    pub sequence_number: u64,
    /// Per allocated ordinal (as text), the sequence number at its allocation.
    #[serde(rename = "sequenceNumberForAllocation", default)]
    pub sequence_number_for_allocation: Option<BTreeMap<String, u64>>,
    /// Kubernetes' deletion marker; always false in etcd.
    #[serde(default)]
    pub deleted: bool,
    /// The deprecated form of `affinity` (`hostAffinity: <node>`), read when present.
    #[serde(
        rename = "hostAffinity",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub host_affinity: Option<String>,
}

fn null_as_default<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(
    deserializer: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

impl AllocationBlock {
    /// A new, empty block owned by `node`, claimed at `claim_time`, with a sequence number from
    /// the clock (as libcalico-go's `newBlock`, so that a block deleted and made again does not
    /// repeat numbers).
    pub fn new(cidr: IpNet, node: &str, claim_time: String) -> Self {
        let size = block_len(cidr);
        let sequence_number = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Self {
            cidr,
            affinity: Some(format!("{HOST_AFFINITY_PREFIX}{node}")),
            affinity_claim_time: Some(claim_time),
            allocations: vec![None; size],
            unallocated: (0..size).collect(),
            attributes: None,
            sequence_number,
            sequence_number_for_allocation: Some(BTreeMap::new()),
            deleted: false,
            host_affinity: None,
        }
    }

    /// The host that owns the block, if one does (`affinity: host:<node>`, or the deprecated
    /// `hostAffinity`).
    pub fn host(&self) -> Option<&str> {
        match &self.affinity {
            Some(affinity) => affinity.strip_prefix(HOST_AFFINITY_PREFIX),
            None => self.host_affinity.as_deref(),
        }
    }

    /// Whether `node` owns the block.
    pub fn is_affine_to(&self, node: &str) -> bool {
        self.affinity.as_deref() == Some(&format!("{HOST_AFFINITY_PREFIX}{node}"))
    }

    /// How many addresses the block has.
    pub fn len(&self) -> usize {
        self.allocations.len()
    }

    /// Whether the block has no address at all (never: a block is at least one address).
    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    /// How many addresses are free.
    pub fn free(&self) -> usize {
        self.unallocated.len()
    }

    /// Whether no address is allocated.
    pub fn is_unused(&self) -> bool {
        self.allocations.iter().all(Option::is_none)
    }

    /// The address of `ordinal`.
    pub fn address(&self, ordinal: usize) -> IpAddr {
        nth_address(self.cidr, ordinal as u128)
    }

    /// The ordinal of `ip`, if it is in the block.
    pub fn ordinal(&self, ip: IpAddr) -> Option<usize> {
        if !self.cidr.contains(&ip) {
            return None;
        }
        let offset = address_value(ip).checked_sub(address_value(self.cidr.network()))?;
        usize::try_from(offset)
            .ok()
            .filter(|o| *o < self.allocations.len())
    }

    fn attributes(&self) -> &[AllocationAttribute] {
        self.attributes.as_deref().unwrap_or(&[])
    }

    /// The attributes of the allocation at `ordinal`, if it is allocated.
    pub fn attribute_of(&self, ordinal: usize) -> Option<&AllocationAttribute> {
        let index = (*self.allocations.get(ordinal)?)?;
        self.attributes().get(index)
    }

    /// Every allocated address with its attributes.
    pub fn allocated(&self) -> Vec<(IpAddr, Option<&AllocationAttribute>)> {
        self.allocations
            .iter()
            .enumerate()
            .filter_map(|(ordinal, index)| {
                index.map(|i| (self.address(ordinal), self.attributes().get(i)))
            })
            .collect()
    }

    /// The addresses allocated to `handle`.
    pub fn addresses_of(&self, handle: &str) -> Vec<IpAddr> {
        self.allocated()
            .into_iter()
            .filter(|(_, attr)| attr.and_then(|a| a.handle_id.as_deref()) == Some(handle))
            .map(|(ip, _)| ip)
            .collect()
    }

    /// The index of the attribute equal to (`handle`, `attrs`), added if new (libcalico-go's
    /// `findOrAddAttribute`).
    fn find_or_add_attribute(&mut self, handle: &str, attrs: &BTreeMap<String, String>) -> usize {
        let wanted = AllocationAttribute {
            handle_id: Some(handle.to_owned()),
            active_owner_attrs: attrs.clone(),
            ..AllocationAttribute::default()
        };
        let attributes = self.attributes.get_or_insert_with(Vec::new);
        if let Some(i) = attributes.iter().position(|a| *a == wanted) {
            return i;
        }
        attributes.push(wanted);
        attributes.len() - 1
    }

    fn record_sequence(&mut self, ordinal: usize) {
        let sequence = self.sequence_number;
        self.sequence_number_for_allocation
            .get_or_insert_with(BTreeMap::new)
            .insert(ordinal.to_string(), sequence);
    }

    /// Allocates up to `num` free addresses, first free first, to `handle`: the addresses
    /// taken (empty when the block is full).
    pub fn auto_assign(
        &mut self,
        num: usize,
        handle: &str,
        attrs: &BTreeMap<String, String>,
    ) -> Vec<IpAddr> {
        let take = num.min(self.unallocated.len());
        if take == 0 {
            return Vec::new();
        }
        let index = self.find_or_add_attribute(handle, attrs);
        let ordinals: Vec<usize> = self.unallocated.drain(..take).collect();
        ordinals
            .into_iter()
            .map(|ordinal| {
                self.allocations[ordinal] = Some(index);
                self.record_sequence(ordinal);
                self.address(ordinal)
            })
            .collect()
    }

    /// Allocates `ip` to `handle`; false if it is already allocated.
    ///
    /// The caller has checked that `ip` is in the block.
    pub fn assign(&mut self, ip: IpAddr, handle: &str, attrs: &BTreeMap<String, String>) -> bool {
        let Some(ordinal) = self.ordinal(ip) else {
            return false;
        };
        if self.allocations[ordinal].is_some() {
            return false;
        }
        let index = self.find_or_add_attribute(handle, attrs);
        self.allocations[ordinal] = Some(index);
        self.unallocated.retain(|o| *o != ordinal);
        self.record_sequence(ordinal);
        true
    }

    /// Frees `ordinals` (allocated ones), removing the attributes no allocation uses any more
    /// and renumbering the others, as libcalico-go's `release` and `deleteAttributes` do.
    fn free_ordinals(&mut self, ordinals: &[usize]) {
        let mut still_used = vec![false; self.attributes().len()];
        for (ordinal, index) in self.allocations.iter().enumerate() {
            if let Some(i) = index
                && !ordinals.contains(&ordinal)
                && let Some(used) = still_used.get_mut(*i)
            {
                *used = true;
            }
        }
        for &ordinal in ordinals {
            self.allocations[ordinal] = None;
            self.unallocated.push(ordinal);
            if let Some(map) = &mut self.sequence_number_for_allocation {
                map.remove(&ordinal.to_string());
            }
        }
        if still_used.iter().any(|used| !used) {
            let mut renumbered = Vec::with_capacity(still_used.len());
            let mut kept = Vec::new();
            for (i, attribute) in self.attributes().iter().enumerate() {
                if still_used[i] {
                    renumbered.push(Some(kept.len()));
                    kept.push(attribute.clone());
                } else {
                    renumbered.push(None);
                }
            }
            for index in self.allocations.iter_mut() {
                *index = index.and_then(|i| renumbered.get(i).copied().flatten());
            }
            self.attributes = Some(kept);
        }
    }

    /// Releases `ips` (each in the block): the ones that were not allocated, and how many of
    /// each handle were released.
    pub fn release(&mut self, ips: &[IpAddr]) -> (Vec<IpAddr>, BTreeMap<String, usize>) {
        let mut not_allocated = Vec::new();
        let mut by_handle = BTreeMap::new();
        let mut ordinals = Vec::new();
        for &ip in ips {
            match self.ordinal(ip) {
                Some(ordinal) if self.allocations[ordinal].is_some() => {
                    if ordinals.contains(&ordinal) {
                        continue;
                    }
                    if let Some(handle) =
                        self.attribute_of(ordinal).and_then(|a| a.handle_id.clone())
                    {
                        *by_handle.entry(handle).or_insert(0) += 1;
                    }
                    ordinals.push(ordinal);
                }
                _ => not_allocated.push(ip),
            }
        }
        self.free_ordinals(&ordinals);
        (not_allocated, by_handle)
    }

    /// Releases every address of `handle`: the addresses released.
    pub fn release_handle(&mut self, handle: &str) -> Vec<IpAddr> {
        let ordinals: Vec<usize> = (0..self.allocations.len())
            .filter(|&o| self.attribute_of(o).and_then(|a| a.handle_id.as_deref()) == Some(handle))
            .collect();
        let ips = ordinals.iter().map(|&o| self.address(o)).collect();
        self.free_ordinals(&ordinals);
        ips
    }
}

/// How many addresses a block of `cidr` holds (block sizes are 20..=32 and 116..=128, so at
/// most 4096; larger CIDRs are capped, and never stored as blocks).
pub fn block_len(cidr: IpNet) -> usize {
    let bits = u32::from(cidr.max_prefix_len() - cidr.prefix_len());
    1usize.checked_shl(bits.min(24)).unwrap_or(1 << 24)
}

/// An address as a number.
pub fn address_value(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address `n` places into `net` (wrapping within the family).
pub fn nth_address(net: IpNet, n: u128) -> IpAddr {
    match net {
        IpNet::V4(v4) => {
            let base = u32::from(v4.network());
            #[allow(clippy::cast_possible_truncation)] // wraps within IPv4, as intended
            IpAddr::V4(base.wrapping_add(n as u32).into())
        }
        IpNet::V6(v6) => IpAddr::V6(u128::from(v6.network()).wrapping_add(n).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs() -> BTreeMap<String, String> {
        BTreeMap::from([("node".to_owned(), "node1".to_owned())])
    }

    #[test]
    fn keys_as_calico_writes_them() {
        let v4: IpNet = "198.18.0.0/26".parse().unwrap();
        assert_eq!(
            block_key(v4),
            "/calico/ipam/v2/assignment/ipv4/block/198.18.0.0-26"
        );
        assert_eq!(parse_block_key(&block_key(v4)), Some(v4));
        let v6: IpNet = "2001:db8::/122".parse().unwrap();
        assert_eq!(
            block_key(v6),
            "/calico/ipam/v2/assignment/ipv6/block/2001:db8::-122"
        );
        assert_eq!(parse_block_key(&block_key(v6)), Some(v6));
        assert_eq!(
            parse_block_key("/calico/ipam/v2/assignment/ipv4/block/x"),
            None
        );
    }

    #[test]
    fn a_new_block_serializes_as_go_does() {
        let mut block = AllocationBlock::new(
            "198.18.0.0/30".parse().unwrap(),
            "node1",
            "2024-05-01T10:00:00Z".into(),
        );
        block.sequence_number = 5;
        assert_eq!(
            serde_json::to_string(&block).unwrap(),
            r#"{"cidr":"198.18.0.0/30","affinity":"host:node1","affinity_claim_time":"2024-05-01T10:00:00Z","allocations":[null,null,null,null],"unallocated":[0,1,2,3],"attributes":null,"sequenceNumber":5,"sequenceNumberForAllocation":{},"deleted":false}"#
        );
    }

    #[test]
    fn assign_and_release_keep_attributes_tidy() {
        let mut block = AllocationBlock::new("198.18.0.0/30".parse().unwrap(), "node1", "t".into());
        let a = block.auto_assign(2, "h1", &attrs());
        assert_eq!(
            a,
            [
                "198.18.0.0".parse::<IpAddr>().unwrap(),
                "198.18.0.1".parse().unwrap()
            ]
        );
        assert!(block.assign("198.18.0.3".parse().unwrap(), "h2", &attrs()));
        assert!(!block.assign("198.18.0.3".parse().unwrap(), "h3", &attrs()));
        assert_eq!(block.allocations, [Some(0), Some(0), None, Some(1)]);
        assert_eq!(block.unallocated, [2]);
        let (missing, by_handle) =
            block.release(&["198.18.0.0".parse().unwrap(), "198.18.0.2".parse().unwrap()]);
        assert_eq!(missing, ["198.18.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(by_handle, BTreeMap::from([("h1".to_owned(), 1)]));
        assert_eq!(
            block.release_handle("h1"),
            ["198.18.0.1".parse::<IpAddr>().unwrap()]
        );
        // h1's attribute is gone; h2's is renumbered.
        assert_eq!(block.allocations, [None, None, None, Some(0)]);
        assert_eq!(block.attributes.as_ref().map(Vec::len), Some(1));
        assert_eq!(block.unallocated, [2, 0, 1]);
        assert_eq!(block.release_handle("h2").len(), 1);
        assert!(block.is_unused());
        assert_eq!(block.attributes, Some(Vec::new()));
    }
}
