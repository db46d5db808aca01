//! What IPAM says a node routes: its confirmed blocks, and the addresses it borrowed from other
//! nodes' blocks, read from the block affinities and blocks the agent follows
//! ([`IpamObjects`]).
//!
//! - **Blocks.** The node's affinities in state `confirmed` (or empty, as older Calico writes
//!   them), as confd reads them: a `pending` claim owns nothing yet, and a `pendingDeletion`
//!   one is being given up.
//! - **Borrowed addresses.** In blocks affine to another node (or to none), the allocations
//!   whose attributes name this node (`secondary.node`, which the allocator records for every
//!   address it assigns).

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;

use super::{
    affinity::{BlockAffinity, parse_affinity_key},
    block::{AllocationBlock, parse_block_key},
};
use crate::datastore::IpamObjects;

/// The attribute that names the node an address was assigned for.
pub const NODE_ATTRIBUTE: &str = "node";

/// A node's blocks and borrowed addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeBlocks {
    /// Its confirmed blocks, sorted.
    pub blocks: Vec<IpNet>,
    /// The addresses of other nodes' blocks assigned for it, sorted.
    pub borrowed: Vec<IpAddr>,
    /// Values that do not read, as `<key>: <problem>` (they are left out).
    pub problems: Vec<String>,
}

impl NodeBlocks {
    /// `node`'s blocks and borrowed addresses in `objects`.
    pub fn of(objects: &IpamObjects, node: &str) -> Self {
        let mut blocks = BTreeSet::new();
        let mut borrowed = BTreeSet::new();
        let mut problems = Vec::new();
        for (key, value) in &objects.values {
            if let Some((owner, cidr)) = parse_affinity_key(key) {
                if owner != node {
                    continue;
                }
                match BlockAffinity::from_value(value) {
                    Ok(affinity) if affinity.is_confirmed() => {
                        blocks.insert(cidr);
                    }
                    Ok(_) => {}
                    Err(e) => problems.push(format!("{key}: {e}")),
                }
            } else if parse_block_key(key).is_some() {
                let block: AllocationBlock = match serde_json::from_slice(value) {
                    Ok(block) => block,
                    Err(e) => {
                        problems.push(format!("{key}: {e}"));
                        continue;
                    }
                };
                if block.is_affine_to(node) {
                    continue;
                }
                for (ip, attributes) in block.allocated() {
                    let assigned_here = attributes.is_some_and(|a| {
                        a.active_owner_attrs.get(NODE_ATTRIBUTE).map(String::as_str) == Some(node)
                    });
                    if assigned_here {
                        borrowed.insert(ip);
                    }
                }
            }
        }
        Self {
            blocks: blocks.into_iter().collect(),
            borrowed: borrowed.into_iter().collect(),
            problems,
        }
    }
}

/// Every block that is affine to a node, with that node, in CIDR order: the affinity the blocks
/// themselves hold (`host:<node>`), which is what Felix's routes follow. Blocks being deleted,
/// and blocks that do not read, are left out ([`NodeBlocks::of`] reports the latter).
pub fn affine_blocks(objects: &IpamObjects) -> Vec<(IpNet, String)> {
    let mut blocks: Vec<(IpNet, String)> = objects
        .values
        .iter()
        .filter(|(key, _)| parse_block_key(key).is_some())
        .filter_map(|(_, value)| serde_json::from_slice::<AllocationBlock>(value).ok())
        .filter(|block| !block.deleted)
        .filter_map(|block| Some((block.cidr, block.host()?.to_owned())))
        .collect();
    blocks.sort();
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::{
        affinity::{CONFIRMED, PENDING, PENDING_DELETION, affinity_key},
        block::block_key,
    };

    fn objects(entries: &[(String, String)]) -> IpamObjects {
        IpamObjects {
            values: entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect(),
        }
    }

    fn affinity(node: &str, cidr: &str, state: &str) -> (String, String) {
        (
            affinity_key(node, cidr.parse().unwrap()),
            format!(r#"{{"state":"{state}","deleted":false}}"#),
        )
    }

    /// A /30 block owned by `owner`, with ordinal 1 assigned for `node-b` and 2 for `node-c`.
    fn block(cidr: &str, owner: &str) -> (String, String) {
        (
            block_key(cidr.parse().unwrap()),
            format!(
                r#"{{"cidr":"{cidr}","affinity":"host:{owner}","allocations":[null,0,1,null],
                "unallocated":[0,3],"attributes":[{{"handle_id":"h1","secondary":{{"node":"node-b"}}}},
                {{"handle_id":"h2","secondary":{{"node":"node-c"}}}}],"sequenceNumber":1,
                "sequenceNumberForAllocation":{{}},"deleted":false}}"#
            ),
        )
    }

    #[test]
    fn confirmed_blocks_and_borrowed_addresses() {
        let objects = objects(&[
            affinity("node-a", "198.18.0.0/30", CONFIRMED),
            affinity("node-a", "2001:db8:1::/126", ""),
            affinity("node-a", "198.18.0.8/30", PENDING),
            affinity("node-a", "198.18.0.12/30", PENDING_DELETION),
            affinity("node-b", "198.18.0.4/30", CONFIRMED),
            block("198.18.0.0/30", "node-a"),
            block("198.18.0.4/30", "node-b"),
        ]);
        let a = NodeBlocks::of(&objects, "node-a");
        assert_eq!(
            a.blocks,
            ["198.18.0.0/30", "2001:db8:1::/126"].map(|c| c.parse::<IpNet>().unwrap())
        );
        assert!(a.borrowed.is_empty(), "{a:?}");
        // node-b owns 198.18.0.4/30 and borrowed .1 from node-a's block; .5 in its own block
        // is not borrowed.
        let b = NodeBlocks::of(&objects, "node-b");
        assert_eq!(b.blocks, ["198.18.0.4/30".parse::<IpNet>().unwrap()]);
        assert_eq!(b.borrowed, ["198.18.0.1".parse::<IpAddr>().unwrap()]);
        // node-c owns nothing and borrowed one address in each block.
        let c = NodeBlocks::of(&objects, "node-c");
        assert!(c.blocks.is_empty());
        assert_eq!(
            c.borrowed,
            ["198.18.0.2", "198.18.0.6"].map(|a| a.parse::<IpAddr>().unwrap())
        );
        assert!(a.problems.is_empty() && b.problems.is_empty());
    }

    #[test]
    fn values_that_do_not_read_are_named_and_left_out() {
        let (key, _) = block("198.18.0.0/30", "node-a");
        let objects = objects(&[
            (key.clone(), "{not json".to_owned()),
            (
                affinity_key("node-a", "198.18.0.4/30".parse().unwrap()),
                "{not json".to_owned(),
            ),
        ]);
        let a = NodeBlocks::of(&objects, "node-a");
        assert!(a.blocks.is_empty() && a.borrowed.is_empty());
        assert_eq!(a.problems.len(), 2, "{:?}", a.problems);
        assert!(a.problems.iter().any(|p| p.starts_with(&key)));
    }

    #[test]
    fn affine_blocks_follow_the_blocks_own_affinity() {
        let (deleted_key, deleted) = block("198.18.0.8/30", "node-c");
        let deleted = deleted.replace(r#""deleted":false"#, r#""deleted":true"#);
        let (unowned_key, unowned) = block("198.18.0.12/30", "node-c");
        let unowned = unowned.replace(r#""affinity":"host:node-c""#, r#""affinity":null"#);
        let objects = objects(&[
            // An affinity without its block routes nothing yet.
            affinity("node-a", "198.18.0.16/30", CONFIRMED),
            block("198.18.0.4/30", "node-b"),
            block("198.18.0.0/30", "node-a"),
            (deleted_key, deleted),
            (unowned_key, unowned),
            (
                block_key("198.18.0.20/30".parse().unwrap()),
                "{not json".to_owned(),
            ),
        ]);
        let blocks = affine_blocks(&objects);
        assert_eq!(
            blocks,
            [
                (
                    "198.18.0.0/30".parse::<IpNet>().unwrap(),
                    "node-a".to_owned()
                ),
                (
                    "198.18.0.4/30".parse::<IpNet>().unwrap(),
                    "node-b".to_owned()
                ),
            ]
        );
    }
}
