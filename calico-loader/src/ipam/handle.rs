//! A handle: who asked for addresses (a container, a CLI user), and how many it holds in each
//! block. libcalico-go's `model.IPAMHandle`, stored at `/calico/ipam/v2/handle/<id>` as
//! `{"block":{"198.18.0.0/26":2},"deleted":false}`; deleted when its count falls to 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where handles live.
pub const HANDLE_PREFIX: &str = "/calico/ipam/v2/handle/";

/// The key of handle `id`.
pub fn handle_key(id: &str) -> String {
    format!("{HANDLE_PREFIX}{id}")
}

/// Whether `id` can be a handle: not empty, no `/` (keys and files), no control characters,
/// not `.` or `..`, at most 253 bytes.
pub fn check_handle_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("a handle must not be empty".into());
    }
    if id.len() > 253 {
        return Err(format!("handle {id:?} is longer than 253 characters"));
    }
    if id == "." || id == ".." || id.contains('/') || id.chars().any(char::is_control) {
        return Err(format!(
            "invalid handle {id:?}: no '/', control characters, \".\" or \"..\""
        ));
    }
    Ok(())
}

/// A handle's addresses, counted per block (libcalico-go's `model.IPAMHandle`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamHandle {
    /// Per block CIDR (`198.18.0.0/26`), how many of its addresses the handle holds.
    #[serde(default)]
    pub block: BTreeMap<String, i64>,
    /// Kubernetes' deletion marker; always false in etcd.
    #[serde(default)]
    pub deleted: bool,
}

impl IpamHandle {
    /// Adds `n` addresses in `block`.
    pub fn increment(&mut self, block: &str, n: usize) {
        *self.block.entry(block.to_owned()).or_insert(0) += i64::try_from(n).unwrap_or(i64::MAX);
    }

    /// Takes `n` addresses of `block` away (the block's entry goes at 0).
    ///
    /// # Errors
    ///
    /// The handle holds fewer than `n` addresses there (libcalico-go refuses the same).
    pub fn decrement(&mut self, block: &str, n: usize) -> Result<(), String> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let current = self.block.get(block).copied().unwrap_or(0);
        if current < n {
            return Err(format!(
                "the handle holds {current} address(es) in block {block}, cannot release {n}"
            ));
        }
        if current == n {
            self.block.remove(block);
        } else {
            self.block.insert(block.to_owned(), current - n);
        }
        Ok(())
    }

    /// Whether the handle holds nothing.
    pub fn is_empty(&self) -> bool {
        self.block.values().all(|n| *n == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_as_calico_writes_them() {
        let mut handle = IpamHandle::default();
        handle.increment("198.18.0.0/26", 2);
        assert_eq!(
            serde_json::to_string(&handle).unwrap(),
            r#"{"block":{"198.18.0.0/26":2},"deleted":false}"#
        );
        handle.decrement("198.18.0.0/26", 2).unwrap();
        assert!(handle.is_empty());
        assert!(handle.decrement("198.18.0.0/26", 1).is_err());
        assert!(check_handle_id("k8s-pod-network.abc").is_ok());
        assert!(check_handle_id("a/b").is_err());
        assert!(check_handle_id("").is_err());
    }
}
