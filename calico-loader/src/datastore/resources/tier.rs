//! `Tier`: an ordered group of policies (`tier.go`; `validateTier` and the Tier CEL rules), and
//! Calico's built-in tiers.

use serde::{Deserialize, Deserializer};

use super::{
    fields::is_dns_label,
    fields::{FieldError, nullable, optional},
    kind::{DocumentWithStatus, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::ObjectMeta,
    policy::{DEFAULT_TIER, KUBE_ADMIN_TIER, KUBE_BASELINE_TIER, Order, TierDefaultAction},
};

/// Calico's built-in tiers: name, the order they must have, and their default action
/// (`api/pkg/apis/projectcalico/v3/tier.go`: `DefaultTierOrder`, `KubeAdminTierOrder`,
/// `KubeBaselineTierOrder` and the Tier CEL rules).
const BUILTIN_TIERS: [(&str, f64, TierDefaultAction); 3] = [
    (DEFAULT_TIER, 1_000_000.0, TierDefaultAction::Deny),
    (KUBE_ADMIN_TIER, 1_000.0, TierDefaultAction::Pass),
    (KUBE_BASELINE_TIER, 10_000_000.0, TierDefaultAction::Pass),
];

/// Kubernetes' DNS-1123 label length, the limit on tier names.
const MAX_TIER_NAME_LEN: usize = 63;

fn tier_default_action<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<TierDefaultAction, D::Error> {
    Ok(optional::<D, TierDefaultAction>(deserializer)?.unwrap_or_default())
}

/// A `Tier`: an ordered group of policies. Tiers apply in order; within one, the first Allow or
/// Deny decides, Pass goes to the next tier, and traffic that policies of the tier selected but
/// did not decide gets the tier's default action.
///
/// Calico always has the tiers `default`, `kube-admin` and `kube-baseline` (see
/// [`Tier::builtin`]); a policy's tier must exist for it to be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    /// Its metadata.
    pub metadata: ObjectMeta,
    /// Its specification.
    pub spec: TierSpec,
    /// Its status, as the API server reports it (accepted, unused).
    pub status: Option<TierStatus>,
}

/// Specification of a [`Tier`] (Calico's `TierSpec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TierSpec {
    /// Order among tiers: lower first; `None` applies after every order (ties go by name).
    #[serde(default)]
    pub order: Option<Order>,
    /// What happens to traffic the tier's policies selected but did not decide (Deny unless
    /// given).
    #[serde(default, deserialize_with = "tier_default_action")]
    pub default_action: TierDefaultAction,
}

impl TierSpec {
    /// The order to sort by: [`f64::INFINITY`] when none is given, as Felix does.
    pub fn effective_order(&self) -> f64 {
        self.order.map_or(f64::INFINITY, Order::value)
    }
}

/// Status of a [`Tier`] (Calico's `TierStatus`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierStatus {
    /// Kubernetes conditions, kept as JSON.
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: Vec<serde_json::Value>,
}

impl Tier {
    /// The tier's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The built-in tier `name` as Calico creates it (`default`: order 1000000, Deny;
    /// `kube-admin`: 1000, Pass; `kube-baseline`: 10000000, Pass), or `None` for other names.
    pub fn builtin(name: &str) -> Option<Tier> {
        let &(name, order, default_action) = BUILTIN_TIERS.iter().find(|t| t.0 == name)?;
        Some(Tier {
            metadata: ObjectMeta {
                name: name.to_owned(),
                ..ObjectMeta::default()
            },
            spec: TierSpec {
                order: Order::new(order),
                default_action,
            },
            status: None,
        })
    }
}

impl ResourceKind for Tier {
    const INFO: KindInfo = KindInfo::cluster("Tier", "tiers", &[]);

    /// The spec may be left out (no order, Deny); a status is accepted.
    type Document = DocumentWithStatus<Option<TierSpec>, TierStatus>;

    document_parts!(optional spec, status);

    /// Checks the name (`validateTier`: a DNS label of at most 63 characters) and the
    /// built-in tiers' order and default action (the Tier CEL rules).
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let name = self.name();
        if name.len() > MAX_TIER_NAME_LEN || !is_dns_label(name) {
            errors.push(FieldError::new(
                "metadata.name",
                format!(
                    "invalid Tier name {name:?}: must be at most {MAX_TIER_NAME_LEN} lower case \
                     alphanumeric characters or '-' (no '.'), starting and ending with an \
                     alphanumeric character"
                ),
            ));
        }
        if let Some(&(_, order, default_action)) = BUILTIN_TIERS.iter().find(|t| t.0 == name) {
            if self.spec.order.map(Order::value) != Some(order) {
                errors.push(FieldError::new(
                    "spec.order",
                    format!("the {name} tier's order must be {order}"),
                ));
            }
            if self.spec.default_action != default_action {
                errors.push(FieldError::new(
                    "spec.defaultAction",
                    format!("the {name} tier's default action must be {default_action}"),
                ));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tiers() {
        let default = Tier::builtin("default").unwrap();
        assert_eq!(default.spec.effective_order(), 1_000_000.0);
        assert_eq!(default.spec.default_action, TierDefaultAction::Deny);
        assert!(default.validate().is_empty());
        let admin = Tier::builtin("kube-admin").unwrap();
        assert_eq!(admin.spec.default_action, TierDefaultAction::Pass);
        assert!(admin.validate().is_empty());
        assert!(
            Tier::builtin("kube-baseline")
                .unwrap()
                .validate()
                .is_empty()
        );
        assert!(Tier::builtin("security").is_none());
    }
}
