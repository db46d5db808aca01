//! The host's side of the dataplane: the entries of the data interfaces that host endpoints
//! cover, the host's own addresses in the route maps (so that the programs tell the host's
//! traffic from forwarded traffic), the failsafe ports, and what happens to workloads' traffic
//! to the host (`DefaultEndpointToHostAction`).
//!
//! A host endpoint's policy is programmed by the policy manager like a workload's, under two
//! keys ([`host_policy_key`], [`forward_policy_key`]), and a third ([`untracked_policy_key`])
//! when untracked policy selects it, each with an ingress and an egress generation; its entry
//! on each interface it covers names all six, and is written by the policy switch with the
//! workloads' entries.

use std::net::IpAddr;

use calico_ebpf_common::{
    FAILSAFE_FIXED_BITS, FailsafeKey, HostEndpointInfo, RouteKind, RouteValue, endpoint_flags,
    failsafe_direction, fill_nul_padded, host_endpoint_flags,
};
use ipnet::IpNet;

use super::{maps::MapContents, netlink::LinkDetails};
use crate::felix_settings::{EndpointToHostAction, FailsafePorts, FelixConfig};

/// One failsafe port: open inbound to the host on it, or outbound from the host to it,
/// whatever host endpoint policy says; limited to a remote net when one is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failsafe {
    /// To the host (its own port), or from it (the destination's port).
    pub inbound: bool,
    /// IP protocol number (TCP, UDP or SCTP).
    pub proto: u8,
    pub port: u16,
    /// The remote net: the source's (inbound) or the destination's (outbound); `None`: any.
    pub net: Option<IpNet>,
}

/// What the host's settings ask of the dataplane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSettings {
    /// Drop workloads' traffic to the host itself once their egress policy allowed it
    /// (`DefaultEndpointToHostAction: Drop`); otherwise it goes to the kernel.
    pub to_host_drop: bool,
    pub failsafes: Vec<Failsafe>,
}

impl From<&FelixConfig> for HostSettings {
    /// What Felix's configuration asks for the host itself: workloads' traffic to the host
    /// (`DefaultEndpointToHostAction`) and the failsafe ports.
    fn from(config: &FelixConfig) -> Self {
        let failsafes = |ports: &FailsafePorts, inbound: bool| {
            ports
                .0
                .iter()
                .map(move |port| Failsafe {
                    inbound,
                    proto: match port.protocol.as_str() {
                        "udp" => 17,
                        "sctp" => 132,
                        _ => 6,
                    },
                    port: port.port,
                    net: port.net,
                })
                .collect::<Vec<_>>()
        };
        let mut all = failsafes(&config.failsafe_inbound_host_ports.value, true);
        all.extend(failsafes(&config.failsafe_outbound_host_ports.value, false));
        Self {
            to_host_drop: config.default_endpoint_to_host_action.value
                == EndpointToHostAction::Drop,
            failsafes: all,
        }
    }
}

impl HostSettings {
    /// Adds the failsafe entries to `contents`, and flags its workload endpoints whose traffic
    /// to the host is dropped.
    pub fn apply(&self, contents: &mut MapContents) {
        if self.to_host_drop {
            for endpoint in contents.endpoints.values_mut() {
                endpoint.flags |= endpoint_flags::TO_HOST_DROP;
            }
        }
        for failsafe in &self.failsafes {
            let nets: Vec<(u8, [u8; 16], u8)> = match failsafe.net {
                Some(net) => vec![net_key(&net)],
                None => vec![(4, [0; 16], 0), (6, [0; 16], 0)],
            };
            for (family, addr, prefix) in nets {
                let key = FailsafeKey {
                    direction: if failsafe.inbound {
                        failsafe_direction::INBOUND
                    } else {
                        failsafe_direction::OUTBOUND
                    },
                    proto: failsafe.proto,
                    port: failsafe.port.to_be_bytes(),
                    family,
                    _pad: [0; 3],
                    addr,
                };
                contents
                    .failsafes
                    .insert((FAILSAFE_FIXED_BITS + u32::from(prefix), key), 1);
            }
        }
    }
}

/// The family, address bytes (host bits zero) and prefix length of `net`.
fn net_key(net: &IpNet) -> (u8, [u8; 16], u8) {
    let mut addr = [0; 16];
    match net.trunc() {
        IpNet::V4(net) => {
            addr[..4].copy_from_slice(&net.network().octets());
            (4, addr, net.prefix_len())
        }
        IpNet::V6(net) => (6, net.network().octets(), net.prefix_len()),
    }
}

/// The policy manager's key of a host endpoint's policy for the host's own traffic.
pub fn host_policy_key(name: &str) -> String {
    format!("HostEndpoint {name}")
}

/// The policy manager's key of a host endpoint's policy for forwarded traffic.
pub fn forward_policy_key(name: &str) -> String {
    format!("HostEndpoint {name} (forwarded traffic)")
}

/// The policy manager's key of a host endpoint's untracked (`doNotTrack`) policy.
pub fn untracked_policy_key(name: &str) -> String {
    format!("HostEndpoint {name} (untracked)")
}

/// The policy ids of a host endpoint's entry, each (ingress, egress); 0: none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostEndpointPolicies {
    /// Traffic to and from the host itself.
    pub host: (u32, u32),
    /// Forwarded traffic.
    pub forward: (u32, u32),
    /// Untracked policy (0 in a direction it does not apply to).
    pub untracked: (u32, u32),
}

/// A data interface that a host endpoint covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEndpointBinding {
    /// The HostEndpoint's name.
    pub name: String,
    pub link: LinkDetails,
    /// No policy applies to forwarded traffic: it passes untouched.
    pub forward_open: bool,
}

/// Adds the entry of `binding` to `contents`, with the ids of its policies.
pub fn host_endpoint_entries(
    contents: &mut MapContents,
    binding: &HostEndpointBinding,
    policies: &HostEndpointPolicies,
) {
    let (ingress_policy, egress_policy) = policies.host;
    let (forward_ingress_policy, forward_egress_policy) = policies.forward;
    let (untracked_ingress_policy, untracked_egress_policy) = policies.untracked;
    contents.host_endpoints.insert(
        binding.link.ifindex,
        HostEndpointInfo {
            flags: if binding.forward_open {
                host_endpoint_flags::FORWARD_OPEN
            } else {
                0
            },
            ingress_policy,
            egress_policy,
            forward_ingress_policy,
            forward_egress_policy,
            untracked_ingress_policy,
            untracked_egress_policy,
            ifname: fill_nul_padded(binding.link.name.as_bytes()),
            name: fill_nul_padded(binding.name.as_bytes()),
        },
    );
}

/// Adds a `host` route for each of the host's own addresses to `contents` (a workload's route
/// to the same address, added later, wins).
pub fn host_route_entries<'a>(
    contents: &mut MapContents,
    addresses: impl IntoIterator<Item = &'a IpAddr>,
) {
    let route = RouteValue {
        kind: RouteKind::Host as u32,
        ..RouteValue::default()
    };
    for address in addresses {
        match address {
            IpAddr::V4(v4) => {
                contents.routes_v4.insert((32, v4.octets()), route);
            }
            IpAddr::V6(v6) => {
                contents.routes_v6.insert((128, v6.octets()), route);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use calico_ebpf_common::EndpointInfo;

    use super::*;
    use crate::felix_settings::{Entry, Layer, Source, resolve};

    /// Felix settings as `FELIX_<NAME>` variables give them.
    fn env(vars: &[(&str, &str)]) -> Layer {
        Layer(
            vars.iter()
                .map(|(var, value)| Entry {
                    name: var.strip_prefix("FELIX_").unwrap_or(var).to_string(),
                    value: Ok((*value).to_string()),
                    source: Source::Env((*var).to_string()),
                })
                .collect(),
        )
    }

    #[test]
    fn failsafes_become_one_entry_per_family_or_one_per_net() {
        let settings = HostSettings {
            to_host_drop: true,
            failsafes: vec![
                Failsafe {
                    inbound: true,
                    proto: 6,
                    port: 22,
                    net: None,
                },
                Failsafe {
                    inbound: false,
                    proto: 17,
                    port: 53,
                    net: Some("198.18.7.9/24".parse().unwrap()),
                },
            ],
        };
        let mut contents = MapContents::default();
        contents.endpoints.insert(3, EndpointInfo::default());
        settings.apply(&mut contents);
        assert_eq!(contents.endpoints[&3].flags, endpoint_flags::TO_HOST_DROP);
        let keys: Vec<(u32, u8, u8, u16, u8, [u8; 4])> = contents
            .failsafes
            .keys()
            .map(|(len, k)| {
                (
                    *len,
                    k.direction,
                    k.proto,
                    u16::from_be_bytes(k.port),
                    k.family,
                    [k.addr[0], k.addr[1], k.addr[2], k.addr[3]],
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                (64, 0, 6, 22, 4, [0; 4]),
                (64, 0, 6, 22, 6, [0; 4]),
                (88, 1, 17, 53, 4, [198, 18, 7, 0]),
            ]
        );
    }

    #[test]
    fn host_addresses_become_host_routes() {
        let mut contents = MapContents::default();
        let addresses: Vec<IpAddr> = vec![
            "198.18.9.1".parse().unwrap(),
            "2001:db8::9".parse().unwrap(),
        ];
        host_route_entries(&mut contents, &addresses);
        assert_eq!(
            contents.routes_v4[&(32, [198, 18, 9, 1])].kind,
            RouteKind::Host as u32
        );
        assert_eq!(contents.routes_v6.len(), 1);
    }

    #[test]
    fn host_settings_follow_the_configuration() {
        let config = resolve(&[]).expect("defaults");
        let settings = HostSettings::from(&config);
        assert!(settings.to_host_drop, "Felix's default is Drop");
        let inbound: Vec<(u8, u16)> = settings
            .failsafes
            .iter()
            .filter(|f| f.inbound)
            .map(|f| (f.proto, f.port))
            .collect();
        assert_eq!(
            inbound,
            [
                (6, 22),
                (17, 68),
                (6, 179),
                (6, 2379),
                (6, 2380),
                (6, 5473),
                (6, 6443),
                (6, 6666),
                (6, 6667)
            ]
        );
        assert_eq!(settings.failsafes.len(), 18);
        let accept = resolve(&[env(&[
            ("FELIX_DEFAULTENDPOINTTOHOSTACTION", "Accept"),
            ("FELIX_FAILSAFEOUTBOUNDHOSTPORTS", "udp:[2001:db8::/32]:53"),
        ])])
        .expect("valid");
        let settings = HostSettings::from(&accept);
        assert!(!settings.to_host_drop);
        let outbound: Vec<_> = settings.failsafes.iter().filter(|f| !f.inbound).collect();
        assert_eq!(outbound.len(), 1);
        assert_eq!(outbound[0].net, Some("2001:db8::/32".parse().expect("net")));
    }
}
