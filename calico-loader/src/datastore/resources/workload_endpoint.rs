//! `WorkloadEndpoint`: one interface of a workload (pod, VM, container), with its addresses,
//! MAC, ports and the profiles that apply to it. The kind the dataplane acts on.
//!
//! Fields and rules follow Calico's Go API (libcalico-go's `WorkloadEndpoint`) and its
//! validator; checks across fields are in [`ResourceKind::validate`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Deserialize;

use super::{
    fields::{
        AnyString, Cidr, ContainerId, Dscp, EndpointNetwork, FieldError, HostIp, InterfaceName, Ip,
        Ipv4, Ipv6, Mac, MacAddr, PortName, Protocol, ResourceName, host_port, list, non_negative,
        nullable, optional, port_number, port_protocol, required,
    },
    kind::{Document, ResourceKind, document_parts},
    kind_info::KindInfo,
    meta::{DEFAULT_NAMESPACE, ObjectMeta},
};

/// A `WorkloadEndpoint`: one interface of a workload (pod, VM, container).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadEndpoint {
    /// Its metadata (namespace always set once parsed).
    pub metadata: ObjectMeta,
    /// Its specification.
    pub spec: WorkloadEndpointSpec,
}

impl WorkloadEndpoint {
    /// The endpoint's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The endpoint's namespace (`default` when none was given).
    pub fn namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .unwrap_or(DEFAULT_NAMESPACE)
    }
}

impl ResourceKind for WorkloadEndpoint {
    const INFO: KindInfo =
        KindInfo::namespaced("WorkloadEndpoint", "workloadendpoints", &["wep", "weps"]);

    /// The spec is required: `node` and `interfaceName` are.
    type Document = Document<WorkloadEndpointSpec>;

    document_parts!(spec);

    /// Checks across fields that deserializing cannot: every NAT's internal IP is one of the
    /// endpoint's networks, and every port has a name or a host port.
    fn validate(&self) -> Vec<FieldError> {
        let spec = &self.spec;
        let mut errors = Vec::new();
        for (i, nat) in spec.ip_nats.iter().enumerate() {
            if !spec
                .ip_networks
                .iter()
                .any(|net| net.contains(&nat.internal_ip))
            {
                errors.push(FieldError::new(
                    format!("spec.ipNATs[{i}].internalIP"),
                    format!(
                        "NAT internal IP {} is not in the endpoint's ipNetworks",
                        nat.internal_ip
                    ),
                ));
            }
        }
        for (i, port) in spec.ports.iter().enumerate() {
            if port.name.is_none() && port.host_port.is_none() {
                errors.push(FieldError::new(
                    format!("spec.ports[{i}]"),
                    "a port needs a name unless it has a hostPort",
                ));
            }
        }
        errors
    }
}

/// Specification of a [`WorkloadEndpoint`] (Calico's `WorkloadEndpointSpec`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEndpointSpec {
    /// Name of the orchestrator (`k8s`, `cni`, `openstack`...).
    #[serde(default, deserialize_with = "optional::<_, ResourceName>")]
    pub orchestrator: Option<String>,
    /// Name of the workload.
    #[serde(default, deserialize_with = "optional::<_, ResourceName>")]
    pub workload: Option<String>,
    /// The node the endpoint lives on (required here).
    #[serde(deserialize_with = "required::<_, ResourceName>")]
    pub node: String,
    /// The container's id.
    #[serde(
        default,
        rename = "containerID",
        deserialize_with = "optional::<_, ContainerId>"
    )]
    pub container_id: Option<String>,
    /// The pod's name.
    #[serde(default, deserialize_with = "optional::<_, ResourceName>")]
    pub pod: Option<String>,
    /// The endpoint's name within its workload (e.g. `eth0`).
    #[serde(default, deserialize_with = "optional::<_, ResourceName>")]
    pub endpoint: Option<String>,
    /// Name of the pod's Kubernetes service account.
    #[serde(default, deserialize_with = "optional::<_, ResourceName>")]
    pub service_account_name: Option<String>,
    /// The endpoint's addresses. A bare IP means /32 or /128; other prefix lengths are kept
    /// (Calico itself only accepts full-length ones), host bits must be clear.
    #[serde(
        default,
        rename = "ipNetworks",
        deserialize_with = "list::<_, EndpointNetwork>"
    )]
    pub ip_networks: Vec<IpNet>,
    /// 1:1 NAT mappings (floating IPs).
    #[serde(default, rename = "ipNATs", deserialize_with = "nullable")]
    pub ip_nats: Vec<IpNat>,
    /// IPv4 gateway for the workload's traffic.
    #[serde(
        default,
        rename = "ipv4Gateway",
        deserialize_with = "optional::<_, Ipv4>"
    )]
    pub ipv4_gateway: Option<Ipv4Addr>,
    /// IPv6 gateway for the workload's traffic.
    #[serde(
        default,
        rename = "ipv6Gateway",
        deserialize_with = "optional::<_, Ipv6>"
    )]
    pub ipv6_gateway: Option<Ipv6Addr>,
    /// Profiles that apply to the endpoint, in order.
    #[serde(default, deserialize_with = "list::<_, ResourceName>")]
    pub profiles: Vec<String>,
    /// Host side of the endpoint's interface (required; at most 15 characters).
    #[serde(deserialize_with = "required::<_, InterfaceName>")]
    pub interface_name: String,
    /// The workload's MAC address.
    #[serde(default, deserialize_with = "optional::<_, Mac>")]
    pub mac: Option<MacAddr>,
    /// Named (and host-mapped) ports, for policy.
    #[serde(default, deserialize_with = "nullable")]
    pub ports: Vec<WorkloadEndpointPort>,
    /// Source prefixes the endpoint may send from besides its own addresses (host bits are
    /// cleared, as Calico does).
    #[serde(default, deserialize_with = "list::<_, Cidr>")]
    pub allow_spoofed_source_prefixes: Vec<IpNet>,
    /// Bandwidth, packet rate and connection limits, and DSCP marking.
    #[serde(default, rename = "qosControls")]
    pub qos_controls: Option<QoSControls>,
    /// AWS Elastic IPs for the endpoint (a Calico Enterprise field, accepted for compatibility).
    #[serde(default, rename = "awsElasticIPs", deserialize_with = "list::<_, Ip>")]
    pub aws_elastic_ips: Vec<IpAddr>,
}

/// A 1:1 NAT mapping of a [`WorkloadEndpoint`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpNat {
    /// The endpoint's address (one of its `ipNetworks`).
    #[serde(rename = "internalIP", deserialize_with = "required::<_, Ip>")]
    pub internal_ip: IpAddr,
    /// The address connections are made to.
    #[serde(rename = "externalIP", deserialize_with = "required::<_, Ip>")]
    pub external_ip: IpAddr,
    /// Where the mapping comes from (`openstack`); in some Calico releases only.
    #[serde(default, deserialize_with = "optional::<_, AnyString>")]
    pub source: Option<String>,
}

/// A named or host-mapped port of a [`WorkloadEndpoint`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEndpointPort {
    /// The port's name (an IANA service name), referenced by policy rules.
    #[serde(default, deserialize_with = "optional::<_, PortName>")]
    pub name: Option<String>,
    /// TCP, UDP or SCTP.
    #[serde(deserialize_with = "port_protocol")]
    pub protocol: Protocol,
    /// The port number (1-65535).
    #[serde(deserialize_with = "port_number")]
    pub port: u16,
    /// Host port it is mapped from, if any (0 or absent: none).
    #[serde(default, deserialize_with = "host_port")]
    pub host_port: Option<u16>,
    /// Host address of the mapping, if restricted to one.
    #[serde(default, rename = "hostIP", deserialize_with = "optional::<_, HostIp>")]
    pub host_ip: Option<IpAddr>,
}

/// QoS controls of a [`WorkloadEndpoint`] (Calico's `QoSControls`). Zero means unset, as in
/// Calico; negative values are rejected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct QoSControls {
    /// Ingress bandwidth limit, bits per second.
    #[serde(default, deserialize_with = "non_negative")]
    pub ingress_bandwidth: i64,
    /// Ingress burst size, bits.
    #[serde(default, deserialize_with = "non_negative")]
    pub ingress_burst: i64,
    /// Ingress peak rate, bits per second.
    #[serde(default, deserialize_with = "non_negative")]
    pub ingress_peakrate: i64,
    /// Ingress minimum burst, bytes.
    #[serde(default, deserialize_with = "non_negative")]
    pub ingress_minburst: i64,
    /// Egress bandwidth limit, bits per second.
    #[serde(default, deserialize_with = "non_negative")]
    pub egress_bandwidth: i64,
    /// Egress burst size, bits.
    #[serde(default, deserialize_with = "non_negative")]
    pub egress_burst: i64,
    /// Egress peak rate, bits per second.
    #[serde(default, deserialize_with = "non_negative")]
    pub egress_peakrate: i64,
    /// Egress minimum burst, bytes.
    #[serde(default, deserialize_with = "non_negative")]
    pub egress_minburst: i64,
    /// Ingress packet rate limit, packets per second.
    #[serde(default, deserialize_with = "non_negative")]
    pub ingress_packet_rate: i64,
    /// Ingress packet burst, packets.
    #[serde(default, deserialize_with = "non_negative")]
    pub ingress_packet_burst: i64,
    /// Egress packet rate limit, packets per second.
    #[serde(default, deserialize_with = "non_negative")]
    pub egress_packet_rate: i64,
    /// Egress packet burst, packets.
    #[serde(default, deserialize_with = "non_negative")]
    pub egress_packet_burst: i64,
    /// Ingress connection limit.
    #[serde(default, deserialize_with = "non_negative")]
    pub ingress_max_connections: i64,
    /// Egress connection limit.
    #[serde(default, deserialize_with = "non_negative")]
    pub egress_max_connections: i64,
    /// DSCP mark for the workload's egress traffic leaving the cluster.
    #[serde(default)]
    pub dscp: Option<Dscp>,
}
