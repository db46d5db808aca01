//! `HostEndpoint`: one interface of a host (or all of them, `interfaceName: "*"`), whose
//! traffic to, from and through the host policy governs.
//!
//! Fields and rules follow Calico's Go API (`HostEndpointSpec`, `EndpointPort`) and its
//! validator (`validateHostEndpointSpec`): a node is required, and an interface name or at
//! least one expected IP. Checks across fields are in [`ResourceKind::validate`].

use std::net::IpAddr;

use serde::Deserialize;

use super::{
    fields::{
        FieldError, Ip, PortName, Protocol, ResourceName, list, nullable, optional, port_number,
        port_protocol, required,
    },
    kind::{Document, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::ObjectMeta,
};

/// The interface name of a host endpoint that covers every interface of its host.
pub const ALL_INTERFACES: &str = "*";

/// A `HostEndpoint`: an interface of a host and the profiles that apply to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEndpoint {
    /// Its metadata (cluster-scoped: no namespace).
    pub metadata: ObjectMeta,
    /// Its specification.
    pub spec: HostEndpointSpec,
}

impl HostEndpoint {
    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

impl ResourceKind for HostEndpoint {
    const INFO: KindInfo = KindInfo::cluster("HostEndpoint", "hostendpoints", &["hep", "heps"]);

    /// The spec is required: `node` is.
    type Document = Document<HostEndpointSpec>;

    document_parts!(spec);

    /// `validateHostEndpointSpec`: an interface name or at least one expected IP.
    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.spec.interface_name.is_none() && self.spec.expected_ips.is_empty() {
            errors.push(FieldError::new(
                "spec.interfaceName",
                "no interface or expected IPs have been specified",
            ));
        }
        errors
    }
}

/// Specification of a [`HostEndpoint`] (Calico's `HostEndpointSpec`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostEndpointSpec {
    /// The node the interface belongs to (required).
    #[serde(deserialize_with = "required::<_, ResourceName>")]
    pub node: String,
    /// The interface's name, or `"*"` for every interface of the host; absent: the interface
    /// that has one of [`expected_ips`](Self::expected_ips).
    #[serde(default, deserialize_with = "optional::<_, HostInterfaceName>")]
    pub interface_name: Option<String>,
    /// The endpoint's addresses: what rule selectors that match it stand for, and how the
    /// interface is found when no name is given.
    #[serde(default, rename = "expectedIPs", deserialize_with = "list::<_, Ip>")]
    pub expected_ips: Vec<IpAddr>,
    /// Profiles that apply to the endpoint, in order, after its policies.
    #[serde(default, deserialize_with = "list::<_, ResourceName>")]
    pub profiles: Vec<String>,
    /// Named ports, for policy.
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<HostEndpointPort>,
}

impl HostEndpointSpec {
    /// Whether it covers every interface of its host (`interfaceName: "*"`).
    pub fn all_interfaces(&self) -> bool {
        self.interface_name.as_deref() == Some(ALL_INTERFACES)
    }
}

/// A named port of a [`HostEndpoint`] (Calico's `EndpointPort`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostEndpointPort {
    /// The port's name (an IANA service name), referenced by policy rules.
    #[serde(deserialize_with = "required::<_, PortName>")]
    pub name: String,
    /// TCP, UDP or SCTP.
    #[serde(deserialize_with = "port_protocol")]
    pub protocol: Protocol,
    /// The port number (1-65535).
    #[serde(deserialize_with = "port_number")]
    pub port: u16,
}

/// An interface name as a host endpoint gives it: a Linux interface name, or `"*"`.
struct HostInterfaceName;
impl super::fields::Check for HostInterfaceName {
    type Out = String;
    fn check(s: &str) -> Result<String, String> {
        if s == ALL_INTERFACES {
            return Ok(s.to_owned());
        }
        <super::fields::InterfaceName as super::fields::Check>::check(s)
            .map_err(|e| format!("{e}, or \"*\" for every interface"))
    }
}
