//! `IPAMConfiguration`: IPAM's global settings. Borrowing addresses from other hosts' blocks
//! (`strictAffinity` false), the most blocks one host may claim (`maxBlocksPerHost`), and
//! whether hosts claim blocks by themselves (`autoAllocateBlocks`).
//!
//! Fields follow Calico v3.32's `IPAMConfigurationSpec` (`api/pkg/apis/projectcalico/v3/
//! ipamconfig.go`) with the CRD's defaults (`strictAffinity` false, `autoAllocateBlocks` true,
//! `maxBlocksPerHost` 0, meaning 20) and bounds (0 to 1000000); the name must be `default`
//! (libcalico-go's `clientv3/ipamconfig.go`).
//!
//! It is stored where IPAM reads it: at libcalico-go's `/calico/ipam/v2/config`, in the shape of
//! its backend `model.IPAMConfig`, `{"strict_affinity":…,"auto_allocate_blocks":…,
//! "maxBlocksPerHost":…}`, each field left out when false or 0 as Go's `omitempty` does
//! ([`IpamConfigKeys`]). In the local directory it is the file `ipam/v2/config`.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use super::{
    fields::{FieldError, nullable, number, optional, string_enum},
    kind::{Document, ResourceKind, document_parts},
    kind_info::{EtcdKeys, KindInfo, StoredForm},
    meta::{API_VERSION, ObjectMeta},
};

/// The only name an `IPAMConfiguration` may have.
pub const IPAM_CONFIGURATION_NAME: &str = "default";
/// Where libcalico-go's IPAM keeps its configuration.
pub const IPAM_CONFIG_KEY: &str = "/calico/ipam/v2/config";
/// The CRD's bound on `maxBlocksPerHost`.
const MAX_BLOCKS_PER_HOST_LIMIT: i64 = 1_000_000;

/// An `IPAMConfiguration`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConfiguration {
    /// Its metadata (name `default`).
    pub metadata: ObjectMeta,
    /// Its specification, with Calico's defaults.
    pub spec: IpamConfigurationSpec,
}

/// Specification of an [`IpamConfiguration`] (Calico's `IPAMConfigurationSpec`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpamConfigurationSpec {
    /// No borrowing: a host assigns only from blocks it owns.
    #[serde(default, deserialize_with = "nullable")]
    pub strict_affinity: bool,
    /// The most blocks a host may own; 0 means IPAM's own limit, 20.
    #[serde(default, deserialize_with = "max_blocks_per_host")]
    pub max_blocks_per_host: u32,
    /// Hosts claim blocks by themselves when they need one (true unless given).
    #[serde(default = "default_true", deserialize_with = "auto_allocate_blocks")]
    pub auto_allocate_blocks: bool,
    /// KubeVirt VMs keep their addresses (accepted, unused).
    #[serde(
        default,
        rename = "kubeVirtVMAddressPersistence",
        deserialize_with = "optional::<_, VmAddressPersistence>"
    )]
    pub kube_virt_vm_address_persistence: Option<VmAddressPersistence>,
}

impl Default for IpamConfigurationSpec {
    fn default() -> Self {
        Self {
            strict_affinity: false,
            max_blocks_per_host: 0,
            auto_allocate_blocks: true,
            kube_virt_vm_address_persistence: None,
        }
    }
}

string_enum! {
    /// Whether KubeVirt VMs keep their addresses (Calico's `VMAddressPersistence`).
    VmAddressPersistence, "VM address persistence" {
        /// They do.
        Enabled = "Enabled",
        /// They do not.
        Disabled = "Disabled",
    }
}

fn default_true() -> bool {
    true
}

fn auto_allocate_blocks<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(true))
}

fn max_blocks_per_host<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let check = |n: i128| match u32::try_from(n) {
        Ok(v) if i64::from(v) <= MAX_BLOCKS_PER_HOST_LIMIT => Ok(v),
        _ => Err(format!(
            "invalid value {n}: must be between 0 and {MAX_BLOCKS_PER_HOST_LIMIT}"
        )),
    };
    Ok(number(deserializer, "a number of blocks", check)?.unwrap_or(0))
}

impl ResourceKind for IpamConfiguration {
    const INFO: KindInfo = KindInfo::cluster(
        "IPAMConfiguration",
        "ipamconfigurations",
        &["ipamconfig", "ipamconfigs"],
    )
    .with_etcd_keys(&IpamConfigKeys);

    /// The spec may be left out: then every field has its default.
    type Document = Document<Option<IpamConfigurationSpec>>;

    document_parts!(optional spec);

    /// libcalico-go's `validateMetadata`: the name is `default`.
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.metadata.name != IPAM_CONFIGURATION_NAME {
            errors.push(FieldError::new(
                "metadata.name",
                format!(
                    "an IPAMConfiguration must be named \"{IPAM_CONFIGURATION_NAME}\", not {:?}",
                    self.metadata.name
                ),
            ));
        }
        errors
    }
}

/// libcalico-go's backend `model.IPAMConfig`, as stored at [`IPAM_CONFIG_KEY`]: Go's field
/// order, and each field left out when false, 0 or absent (`omitempty`). Reading, an absent
/// field is false or 0 (so `{}` turns automatic block allocation off, as in Calico).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredIpamConfig {
    #[serde(default, skip_serializing_if = "is_false")]
    pub strict_affinity: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub auto_allocate_blocks: bool,
    #[serde(rename = "maxBlocksPerHost", default, skip_serializing_if = "is_zero")]
    pub max_blocks_per_host: i64,
    #[serde(
        rename = "kubeVirtVMAddressPersistence",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub kube_virt_vm_address_persistence: Option<String>,
    #[serde(rename = "ipCooldownSeconds", default, skip_serializing_if = "is_zero")]
    pub ip_cooldown_seconds: i64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_false(b: &bool) -> bool {
    !*b
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl From<&IpamConfigurationSpec> for StoredIpamConfig {
    fn from(spec: &IpamConfigurationSpec) -> Self {
        Self {
            strict_affinity: spec.strict_affinity,
            auto_allocate_blocks: spec.auto_allocate_blocks,
            max_blocks_per_host: i64::from(spec.max_blocks_per_host),
            kube_virt_vm_address_persistence: spec
                .kube_virt_vm_address_persistence
                .map(|p| p.as_str().to_owned()),
            ip_cooldown_seconds: 0,
        }
    }
}

/// The layout of [`IpamConfiguration`]: the one key [`IPAM_CONFIG_KEY`], holding a
/// [`StoredIpamConfig`].
#[derive(Debug)]
pub struct IpamConfigKeys;

impl EtcdKeys for IpamConfigKeys {
    fn prefix(&self, _kind: &KindInfo, _namespace: Option<&str>) -> String {
        IPAM_CONFIG_KEY.to_owned()
    }

    /// One form only ([`StoredForm::Current`]).
    fn key(
        &self,
        _kind: &KindInfo,
        _namespace: Option<&str>,
        name: &str,
        form: StoredForm,
    ) -> Option<String> {
        (form == StoredForm::Current).then(|| {
            if name == IPAM_CONFIGURATION_NAME {
                IPAM_CONFIG_KEY.to_owned()
            } else {
                // No key holds another name: a key that does not exist, so a get finds nothing.
                format!("{IPAM_CONFIG_KEY}/{name}")
            }
        })
    }

    fn parse(&self, _kind: &KindInfo, key: &str) -> Option<(Option<String>, String)> {
        (key == IPAM_CONFIG_KEY).then(|| (None, IPAM_CONFIGURATION_NAME.to_owned()))
    }

    fn stores_outside_v3(&self) -> bool {
        true
    }

    fn encode_value(&self, object: &Value) -> Result<String, String> {
        let spec: IpamConfigurationSpec = match object.get("spec") {
            None | Some(Value::Null) => IpamConfigurationSpec::default(),
            Some(spec) => serde_json::from_value(spec.clone()).map_err(|e| format!("spec: {e}"))?,
        };
        serde_json::to_string(&StoredIpamConfig::from(&spec)).map_err(|e| e.to_string())
    }

    fn decode_value(&self, kind: &KindInfo, name: &str, value: &[u8]) -> Result<Value, String> {
        let stored: StoredIpamConfig = serde_json::from_slice(value)
            .map_err(|e| format!("not libcalico-go's IPAM configuration JSON: {e}"))?;
        let mut spec = json!({
            "strictAffinity": stored.strict_affinity,
            "autoAllocateBlocks": stored.auto_allocate_blocks,
        });
        if stored.max_blocks_per_host != 0 {
            spec["maxBlocksPerHost"] = stored.max_blocks_per_host.into();
        }
        if let Some(persistence) = stored.kube_virt_vm_address_persistence {
            spec["kubeVirtVMAddressPersistence"] = persistence.into();
        }
        Ok(json!({
            "apiVersion": API_VERSION,
            "kind": kind.name,
            "metadata": {"name": name},
            "spec": spec,
        }))
    }
}
