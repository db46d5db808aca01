//! A host's claim on a block: libcalico-go's `model.BlockAffinity`, stored at
//! `/calico/ipam/v2/host/<node>/ipv4/block/198.18.0.0-26` as `{"state":"confirmed",
//! "deleted":false}`. A claim starts `pending`, is `confirmed` once the block exists with the
//! host's affinity, and is `pendingDeletion` while the block is being given up. An empty value
//! (older Calico) counts as confirmed.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    Family,
    block::{cidr_from_key, cidr_in_key},
};

/// Where host affinities live.
pub const HOST_PREFIX: &str = "/calico/ipam/v2/host/";

/// The key of `node`'s affinity for `cidr`.
pub fn affinity_key(node: &str, cidr: IpNet) -> String {
    format!(
        "{HOST_PREFIX}{node}/ipv{}/block/{}",
        Family::of_net(cidr).version(),
        cidr_in_key(cidr)
    )
}

/// The prefix of `node`'s affinities (of `family`, if given).
pub fn node_affinity_prefix(node: &str, family: Option<Family>) -> String {
    match family {
        Some(family) => format!("{HOST_PREFIX}{node}/ipv{}/block/", family.version()),
        None => format!("{HOST_PREFIX}{node}/"),
    }
}

/// The node and block an affinity key names.
pub fn parse_affinity_key(key: &str) -> Option<(String, IpNet)> {
    let rest = key.strip_prefix(HOST_PREFIX)?;
    let (node, rest) = rest.split_once('/')?;
    let (family, cidr) = rest.split_once("/block/")?;
    if node.is_empty() || !matches!(family, "ipv4" | "ipv6") || cidr.contains('/') {
        return None;
    }
    Some((node.to_owned(), cidr_from_key(cidr)?))
}

/// The state of a claim.
pub const PENDING: &str = "pending";
/// The block is the host's.
pub const CONFIRMED: &str = "confirmed";
/// The host is giving the block up.
pub const PENDING_DELETION: &str = "pendingDeletion";

/// A host's claim on a block (libcalico-go's `model.BlockAffinity`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockAffinity {
    /// `pending`, `confirmed` or `pendingDeletion` (empty: confirmed).
    #[serde(default)]
    pub state: String,
    /// Kubernetes' deletion marker; always false in etcd.
    #[serde(default)]
    pub deleted: bool,
}

impl BlockAffinity {
    /// A claim in `state`.
    pub fn new(state: &str) -> Self {
        Self {
            state: state.to_owned(),
            deleted: false,
        }
    }

    /// Whether the claim is confirmed (an empty state counts, as in libcalico-go).
    pub fn is_confirmed(&self) -> bool {
        self.state == CONFIRMED || self.state.is_empty()
    }

    /// The claim an affinity value holds: an empty value is a confirmed claim.
    ///
    /// # Errors
    ///
    /// The value is not such JSON.
    pub fn from_value(value: &[u8]) -> Result<Self, serde_json::Error> {
        if value.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_as_calico_writes_them() {
        let cidr: IpNet = "198.18.0.0/26".parse().unwrap();
        let key = affinity_key("node1", cidr);
        assert_eq!(key, "/calico/ipam/v2/host/node1/ipv4/block/198.18.0.0-26");
        assert_eq!(parse_affinity_key(&key), Some(("node1".to_owned(), cidr)));
        assert_eq!(
            serde_json::to_string(&BlockAffinity::new(PENDING)).unwrap(),
            r#"{"state":"pending","deleted":false}"#
        );
        assert!(BlockAffinity::from_value(b"").unwrap().is_confirmed());
    }
}
