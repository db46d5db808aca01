//! A CNI error: the spec's code, a message that says what to fix, and details. The plugin
//! prints it on stdout as `{"cniVersion", "code", "msg", "details"}` and exits with 1.

use serde_json::json;

use crate::{
    datastore::StoreError,
    ipam::{IpamError, IpamStoreError},
};

/// The spec's well-known error codes (0-99), and the catch-all of the reference plugins.
pub mod code {
    /// The configuration's `cniVersion` is not supported.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field of the configuration is not supported (the message names it).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container does not exist or is unknown.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A `CNI_*` environment variable is missing or invalid (the message names it).
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// An I/O error (reading stdin, a file of the local datastore).
    pub const IO: u32 = 5;
    /// The configuration on stdin is not JSON.
    pub const DECODE: u32 = 6;
    /// The configuration is JSON, but not a valid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient condition (the datastore is unreachable): retrying may succeed.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Anything else (the interface exists, the pools are exhausted, a netlink failure).
    pub const INTERNAL: u32 = 999;
}

/// A CNI error result.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// With `details` (the underlying error, for logs and `podman`'s output).
    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, msg)
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }

    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENVIRONMENT, msg)
    }

    /// The JSON the plugin prints on stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut value = json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            value["details"] = json!(self.details);
        }
        value.to_string()
    }

    /// A datastore failure while `doing` something: unreachable etcd is worth retrying (11),
    /// unusable settings are the configuration's fault (7), a local file failing is I/O (5).
    pub fn from_store(doing: &str, error: &StoreError) -> Self {
        let (code, hint) = match error {
            StoreError::Etcd { .. } => (
                code::TRY_AGAIN_LATER,
                "; check that etcd is running and that etcd_endpoints and the etcd TLS files of the network configuration are right",
            ),
            StoreError::Config(_) => (code::INVALID_CONFIG, ""),
            StoreError::Io { .. } => (code::IO, ""),
            _ => (code::INTERNAL, ""),
        };
        Self::new(code, format!("{doing}: {error}{hint}"))
    }

    /// An IPAM failure while `doing` something, classified as [`Self::from_store`] does.
    pub fn from_ipam(doing: &str, error: &IpamError) -> Self {
        match error {
            IpamError::Store(IpamStoreError::Etcd(store)) => Self::from_store(doing, store),
            IpamError::Store(IpamStoreError::Io { .. }) => {
                Self::new(code::IO, format!("{doing}: {error}"))
            }
            _ => Self::internal(format!("{doing}: {error}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_has_the_spec_fields() {
        let e = CniError::env("CNI_NETNS is not set").with_details("ADD needs it");
        let v: serde_json::Value = serde_json::from_str(&e.to_json("1.0.0")).expect("json");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["msg"], "CNI_NETNS is not set");
        assert_eq!(v["details"], "ADD needs it");
        let bare: serde_json::Value =
            serde_json::from_str(&CniError::internal("x").to_json("1.1.0")).expect("json");
        assert!(bare.get("details").is_none());
    }
}
