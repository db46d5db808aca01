//! This node's `Node` resource: at start the agent creates it, or updates the one that
//! exists, with the node's BGP addresses and AS number, as calico-node's startup does
//! (`configureIPsAndSubnets`, `configureASNumber`).
//!
//! - **IPv4** (`--ip`/`IP`): an address (`198.19.0.1`, or with its prefix `198.19.0.1/24`), or
//!   `autodetect`, or `none`. Not given: the Node's address is kept, and autodetected when it
//!   has none. `autodetect` detects it afresh; if nothing is found an address the Node has is
//!   kept. `none` neither detects nor sets anything: the Node keeps the address it has (as
//!   calico-node does), and a new Node has none.
//! - **IPv6** (`--ip6`/`IP6`): the same, except that when not given it is only kept, never
//!   detected (calico-node detects IPv6 only when asked).
//! - **AS** (`--as`/`AS`): set when given (a number or `<0-65535>.<0-65535>`), else kept.
//! - An address given without its prefix takes the prefix of the interface that has it, else
//!   /32 (/128).
//! - **Autodetection** is Calico's `first-found`: interfaces from the highest index down
//!   (calico-node walks them in reverse), skipping those whose names start like
//!   [`EXCLUDED_INTERFACE_PREFIXES`]; the first global unicast address of the family wins,
//!   with its interface's prefix.
//!
//! Everything else of an existing Node (labels, other fields) is kept: the stored object is
//! changed in place and written back only if something changed, with the version read
//! (compare-and-swap, retried on a conflict).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
    time::Duration,
};

use ipnet::IpNet;
use serde_json::{Map, Value};
use tracing::{debug, error, info, warn};

use crate::{
    dataplane::netlink::{InterfaceAddress, Netlink},
    datastore::{
        DatastoreConfig, Kind, ResourceKey, Store, StoreError, WriteMode, WriteRequest,
        parse_documents,
        resources::{AsNumber, Node, Registered as _},
    },
};

/// Interface name prefixes autodetection skips: calico-node's `first-found` exclusions
/// (`^docker.*`, `^cbr.*`, ... `^lo`), and `tap`, the workload interfaces of VMs.
pub const EXCLUDED_INTERFACE_PREFIXES: [&str; 18] = [
    "docker",
    "cbr",
    "dummy",
    "virbr",
    "lxcbr",
    "veth",
    "lo",
    "cali",
    "tunl",
    "flannel",
    "kube-ipvs",
    "cni",
    "vxlan.calico",
    "vxlan-v6.calico",
    "wireguard.cali",
    "wg-v6.cali",
    "nodelocaldns",
    "tap",
];

/// How one family's address is set (`IP`, `IP6`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum AddressSetting {
    /// Not given.
    #[default]
    Unset,
    /// `autodetect`.
    Autodetect,
    /// `none`.
    None,
    /// An address, with its prefix length if given.
    Fixed { ip: IpAddr, prefix: Option<u8> },
}

impl FromStr for AddressSetting {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "" => Ok(Self::Unset),
            "autodetect" => Ok(Self::Autodetect),
            "none" => Ok(Self::None),
            _ => {
                let (ip, prefix) = match s.split_once('/') {
                    Some((ip, prefix)) => (ip, Some(prefix)),
                    None => (s, None),
                };
                let invalid = || {
                    format!(
                        "invalid address {s:?}: expected an IP address (with or without its \
                         prefix length), autodetect or none"
                    )
                };
                let ip: IpAddr = ip.parse().map_err(|_| invalid())?;
                let prefix = match prefix {
                    None => None,
                    Some(p) => {
                        let p: u8 = p.parse().map_err(|_| invalid())?;
                        IpNet::new(ip, p).map_err(|_| invalid())?;
                        Some(p)
                    }
                };
                Ok(Self::Fixed { ip, prefix })
            }
        }
    }
}

impl fmt::Display for AddressSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unset => f.write_str("not set"),
            Self::Autodetect => f.write_str("autodetect"),
            Self::None => f.write_str("none"),
            Self::Fixed {
                ip,
                prefix: Some(p),
            } => write!(f, "{ip}/{p}"),
            Self::Fixed { ip, prefix: None } => write!(f, "{ip}"),
        }
    }
}

/// What the agent sets on its Node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeSettings {
    /// IPv4 (`IP`).
    pub ipv4: AddressSetting,
    /// IPv6 (`IP6`).
    pub ipv6: AddressSetting,
    /// The AS number (`AS`), if given.
    pub as_number: Option<AsNumber>,
}

/// An address family, as this module tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V4,
    V6,
}

impl Version {
    fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    fn host_prefix(self) -> u8 {
        match self {
            Self::V4 => 32,
            Self::V6 => 128,
        }
    }
}

/// Go's `IP.IsGlobalUnicast`, which Calico's autodetection uses: not unspecified, loopback,
/// multicast, link-local, or IPv4's limited broadcast. Private ranges count.
pub fn is_global_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || ip.is_link_local()
                || ip == Ipv4Addr::BROADCAST)
        }
        IpAddr::V6(ip) => {
            !(ip.is_unspecified()
                || ip.is_loopback()
                || ip.is_multicast()
                || (ip.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Whether autodetection skips an interface called `name`.
pub fn is_excluded_interface(name: &str) -> bool {
    EXCLUDED_INTERFACE_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

/// Calico's `first-found`: the first global unicast address of `version` on the interfaces
/// that are not excluded, from the highest interface index down.
fn first_found(addresses: &[InterfaceAddress], version: Version) -> Option<&InterfaceAddress> {
    let mut indexes: Vec<u32> = addresses.iter().map(|a| a.ifindex).collect();
    indexes.sort_unstable();
    indexes.dedup();
    indexes.into_iter().rev().find_map(|ifindex| {
        addresses.iter().find(|a| {
            a.ifindex == ifindex
                && !is_excluded_interface(&a.interface)
                && Version::of(a.net.addr()) == version
                && is_global_unicast(a.net.addr())
        })
    })
}

/// The address of one family the Node gets, and how it was decided (for the log).
fn decide(
    setting: &AddressSetting,
    version: Version,
    existing: Option<IpNet>,
    addresses: &[InterfaceAddress],
) -> (Option<IpNet>, String) {
    let detect = match setting {
        AddressSetting::Autodetect => true,
        AddressSetting::Unset => version == Version::V4 && existing.is_none(),
        AddressSetting::None => {
            return match existing {
                Some(net) => (Some(net), format!("{net} (kept: {} none)", version.name())),
                None => (None, "none".to_owned()),
            };
        }
        AddressSetting::Fixed { ip, prefix } => {
            let on_interface = addresses.iter().find(|a| a.net.addr() == *ip);
            let prefix = prefix
                .or_else(|| on_interface.map(|a| a.net.prefix_len()))
                .unwrap_or_else(|| version.host_prefix());
            let net = IpNet::new(*ip, prefix).unwrap_or_else(|_| IpNet::from(*ip));
            let how = match on_interface {
                Some(a) => format!("{net} (given; on {})", a.interface),
                None => {
                    warn!(
                        "{} address {ip} is not an address of any interface of this host",
                        version.name()
                    );
                    format!("{net} (given; on no interface)")
                }
            };
            return (Some(net), how);
        }
    };
    if !detect {
        return match existing {
            Some(net) => (Some(net), format!("{net} (kept)")),
            None => (None, "none".to_owned()),
        };
    }
    match first_found(addresses, version) {
        Some(found) => (
            Some(found.net),
            format!("{} (autodetected on {})", found.net, found.interface),
        ),
        None => {
            let why = format!(
                "no global {} address on an interface that is not excluded",
                version.name()
            );
            match existing {
                Some(net) => {
                    warn!("autodetection found {why}; keeping the Node's {net}");
                    (Some(net), format!("{net} (kept: autodetection found none)"))
                }
                None => (None, format!("none (autodetection found {why})")),
            }
        }
    }
}

/// The Node object to write, from the stored one (or a new one), or `None` if nothing
/// changes; and a description of the node's BGP settings for the log.
fn updated_object(
    name: &str,
    stored: Option<(&Node, &Value)>,
    settings: &NodeSettings,
    addresses: &[InterfaceAddress],
) -> (Option<Value>, String) {
    let existing_bgp = stored
        .and_then(|(node, _)| node.spec.bgp.clone())
        .unwrap_or_default();
    let (ipv4, ipv4_how) = decide(
        &settings.ipv4,
        Version::V4,
        existing_bgp.ipv4_address,
        addresses,
    );
    let (ipv6, ipv6_how) = decide(
        &settings.ipv6,
        Version::V6,
        existing_bgp.ipv6_address,
        addresses,
    );
    let as_number = settings
        .as_number
        .map(AsNumber::value)
        .or(existing_bgp.as_number);
    let as_how = match (settings.as_number, as_number) {
        (Some(n), _) => format!("{n} (given)"),
        (None, Some(n)) => format!("{n} (kept)"),
        (None, None) => "the cluster's".to_owned(),
    };
    let description = format!("IPv4 {ipv4_how}, IPv6 {ipv6_how}, AS {as_how}");

    let mut object = match stored {
        Some((_, value)) => value.clone(),
        None => serde_json::json!({
            "apiVersion": crate::datastore::resources::API_VERSION,
            "kind": "Node",
            "metadata": {"name": name},
        }),
    };
    let Some(top) = object.as_object_mut() else {
        return (None, description);
    };
    let spec = top
        .entry("spec")
        .or_insert_with(|| Value::Object(Map::new()));
    if !spec.is_object() {
        *spec = Value::Object(Map::new());
    }
    let Some(spec) = spec.as_object_mut() else {
        return (None, description);
    };
    let mut bgp = match spec.remove("bgp") {
        Some(Value::Object(bgp)) => bgp,
        _ => Map::new(),
    };
    let mut set = |field: &str, value: Option<Value>| match value {
        Some(value) => {
            bgp.insert(field.to_owned(), value);
        }
        None => {
            bgp.remove(field);
        }
    };
    set("ipv4Address", ipv4.map(|net| net.to_string().into()));
    set("ipv6Address", ipv6.map(|net| net.to_string().into()));
    set("asNumber", as_number.map(Value::from));
    // Calico refuses an empty bgp section.
    if !bgp.is_empty() {
        spec.insert("bgp".to_owned(), Value::Object(bgp));
    }
    let unchanged = stored.is_some_and(|(node, _)| {
        let bgp = node.spec.bgp.clone().unwrap_or_default();
        bgp.ipv4_address == ipv4 && bgp.ipv6_address == ipv6 && bgp.as_number == as_number
    });
    ((!unchanged).then_some(object), description)
}

/// Why the Node could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The datastore failed or refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The host's addresses could not be listed.
    #[error("listing the host's addresses: {0}")]
    Addresses(String),
    /// The Node the agent would write does not validate.
    #[error("the Node this agent would write is invalid: {0}")]
    Invalid(String),
}

impl RegistrationError {
    /// Whether trying again later may succeed (the datastore was unreachable, or another
    /// writer raced this one).
    fn is_transient(&self) -> bool {
        match self {
            Self::Store(
                StoreError::Etcd { .. }
                | StoreError::Conflict { .. }
                | StoreError::AlreadyExists { .. }
                | StoreError::NotFound { .. }
                | StoreError::Concurrent { .. }
                | StoreError::Io { .. },
            )
            | Self::Addresses(_) => true,
            Self::Store(_) | Self::Invalid(_) => false,
        }
    }
}

/// What registering did to the Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeUpdate {
    /// The Node was written (created or changed).
    Written,
    /// The Node already said all this.
    Unchanged,
}

/// Creates or updates `name`'s Node once.
///
/// # Errors
///
/// See [`RegistrationError`].
pub async fn register_once(
    store: &mut Store,
    name: &str,
    settings: &NodeSettings,
) -> Result<NodeUpdate, RegistrationError> {
    let addresses = match Netlink::connect() {
        Ok(netlink) => netlink
            .addresses()
            .await
            .map_err(|e| RegistrationError::Addresses(e.to_string()))?,
        Err(e) => return Err(RegistrationError::Addresses(e.to_string())),
    };
    let key = ResourceKey {
        kind: Kind::Node,
        namespace: None,
        name: name.to_owned(),
    };
    let stored = store.get(&key).await?;
    let node = stored
        .as_ref()
        .and_then(|s| Node::from_resource(&s.resource));
    let (object, description) = updated_object(
        name,
        stored.as_ref().zip(node).map(|(s, n)| (n, &s.value)),
        settings,
        &addresses,
    );
    let Some(object) = object else {
        info!(node = %name, "Node unchanged: {description}");
        return Ok(NodeUpdate::Unchanged);
    };
    let text =
        serde_json::to_string(&object).map_err(|e| RegistrationError::Invalid(e.to_string()))?;
    let mut documents = parse_documents(&format!("Node {name}"), &text).map_err(|errors| {
        RegistrationError::Invalid(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let document = documents
        .pop()
        .ok_or_else(|| RegistrationError::Invalid("no resource".to_owned()))?;
    let mode = if stored.is_some() {
        WriteMode::Replace
    } else {
        WriteMode::Create
    };
    store
        .write(&[WriteRequest {
            mode,
            resource: document.resource,
            raw: document.raw,
        }])
        .await?;
    info!(
        node = %name,
        "Node {}: {description}",
        if stored.is_some() { "updated" } else { "created" }
    );
    Ok(NodeUpdate::Written)
}

/// Creates or updates `name`'s Node, trying again (with backoff) while the datastore cannot
/// be reached or another writer races this one. `None` if it cannot be done (the datastore
/// refuses it: logged).
pub async fn register(
    datastore: &DatastoreConfig,
    name: &str,
    settings: &NodeSettings,
) -> Option<NodeUpdate> {
    let mut backoff = Duration::from_millis(200);
    let mut warned = false;
    loop {
        let attempt = match Store::open(datastore).await {
            Ok(mut store) => register_once(&mut store, name, settings).await,
            Err(e) => Err(e.into()),
        };
        match attempt {
            Ok(registered) => return Some(registered),
            Err(e) if e.is_transient() => {
                if warned {
                    debug!("registering the Node: {e}; trying again");
                } else {
                    warn!("registering the Node: {e}; trying again");
                    warned = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                error!(
                    "cannot register this node's Node resource: {e}; BGP uses the Node as the \
                     datastore has it"
                );
                return None;
            }
        }
    }
}

/// The node name: `explicit` (`--node`, `NODENAME`, a CNI config's `nodename`), else the
/// host name, as calico-node and Calico's CNI plugin take it.
///
/// # Errors
///
/// No name given and `gethostname` failing.
pub fn node_name(explicit: Option<String>) -> std::io::Result<String> {
    match explicit {
        Some(node) if !node.is_empty() => Ok(node),
        _ => hostname(),
    }
}

/// This machine's host name, the default node name.
fn hostname() -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(ifindex: u32, interface: &str, net: &str) -> InterfaceAddress {
        InterfaceAddress {
            ifindex,
            interface: interface.to_owned(),
            net: net.parse().unwrap(),
        }
    }

    fn host() -> Vec<InterfaceAddress> {
        vec![
            address(1, "lo", "127.0.0.1/8"),
            address(1, "lo", "::1/128"),
            address(2, "eth0", "198.19.0.1/24"),
            address(2, "eth0", "fe80::1/64"),
            address(2, "eth0", "2001:db8:0:ff::1/64"),
            address(3, "eth1", "169.254.0.9/16"),
            address(4, "docker0", "198.19.7.1/24"),
            address(5, "cali1234", "198.19.8.1/32"),
            address(6, "tap0", "198.19.9.1/24"),
        ]
    }

    fn node(yaml: &str) -> (Node, Value) {
        let docs = parse_documents("node", yaml).unwrap();
        let resource = docs[0].resource.clone();
        (
            Node::from_resource(&resource).unwrap().clone(),
            docs[0].raw.clone(),
        )
    }

    fn settings(ipv4: &str, ipv6: &str, as_number: Option<&str>) -> NodeSettings {
        NodeSettings {
            ipv4: ipv4.parse().unwrap(),
            ipv6: ipv6.parse().unwrap(),
            as_number: as_number.map(|a| a.parse().unwrap()),
        }
    }

    #[test]
    fn settings_parse_as_calico_node_reads_them() {
        assert_eq!("".parse(), Ok(AddressSetting::Unset));
        assert_eq!("autodetect".parse(), Ok(AddressSetting::Autodetect));
        assert_eq!("none".parse(), Ok(AddressSetting::None));
        assert_eq!(
            "198.19.0.1/24".parse(),
            Ok(AddressSetting::Fixed {
                ip: "198.19.0.1".parse().unwrap(),
                prefix: Some(24)
            })
        );
        assert_eq!(
            "2001:db8::1".parse(),
            Ok(AddressSetting::Fixed {
                ip: "2001:db8::1".parse().unwrap(),
                prefix: None
            })
        );
        for bad in ["198.19.0.300", "198.19.0.1/33", "auto", "2001:db8::1/129"] {
            let e = bad.parse::<AddressSetting>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn first_found_skips_excluded_and_non_global_addresses() {
        let addresses = host();
        let v4 = first_found(&addresses, Version::V4).unwrap();
        assert_eq!(v4.net.to_string(), "198.19.0.1/24");
        assert_eq!(v4.interface, "eth0");
        let v6 = first_found(&addresses, Version::V6).unwrap();
        assert_eq!(v6.net.to_string(), "2001:db8:0:ff::1/64");
        // From the highest index down: a later interface wins.
        let mut more = addresses.clone();
        more.push(address(7, "ens5", "198.18.200.1/16"));
        assert_eq!(first_found(&more, Version::V4).unwrap().interface, "ens5");
        assert!(first_found(&addresses[..2], Version::V4).is_none());
    }

    #[test]
    fn a_new_node_gets_the_detected_ipv4_and_no_ipv6_unless_asked() {
        let (object, how) = updated_object("n1", None, &settings("", "", None), &host());
        let object = object.unwrap();
        assert_eq!(object["spec"]["bgp"]["ipv4Address"], "198.19.0.1/24");
        assert!(object["spec"]["bgp"].get("ipv6Address").is_none());
        assert!(how.contains("autodetected on eth0"), "{how}");

        let (object, _) = updated_object(
            "n1",
            None,
            &settings("autodetect", "autodetect", Some("65001")),
            &host(),
        );
        let bgp = &object.unwrap()["spec"]["bgp"];
        assert_eq!(bgp["ipv6Address"], "2001:db8:0:ff::1/64");
        assert_eq!(bgp["asNumber"], 65001);
    }

    #[test]
    fn none_sets_nothing_and_a_node_without_bgp_has_no_bgp_section() {
        let (object, how) = updated_object("n1", None, &settings("none", "", None), &host());
        let object = object.unwrap();
        assert!(object["spec"].get("bgp").is_none(), "{object}");
        assert!(how.starts_with("IPv4 none"), "{how}");
        // No global address to detect: none, said why.
        let (object, how) = updated_object("n1", None, &settings("", "", None), &host()[..2]);
        assert!(object.unwrap()["spec"].get("bgp").is_none());
        assert!(how.contains("autodetection found no global IPv4"), "{how}");
    }

    #[test]
    fn an_existing_node_keeps_its_other_fields_and_is_not_rewritten_when_unchanged() {
        let (existing, value) = node(
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: n1\n  labels: {rack: r1}\n\
             spec:\n  bgp: {ipv4Address: 198.19.0.1/24, routeReflectorClusterID: 244.0.0.1}\n  \
             orchRefs: [{nodeName: n1, orchestrator: k8s}]\n",
        );
        // Not given: kept, nothing to write.
        let (object, how) = updated_object(
            "n1",
            Some((&existing, &value)),
            &settings("", "", None),
            &host(),
        );
        assert!(object.is_none(), "{how}");
        assert!(how.contains("198.19.0.1/24 (kept)"), "{how}");
        // none keeps it too (as calico-node does).
        let (object, _) = updated_object(
            "n1",
            Some((&existing, &value)),
            &settings("none", "none", None),
            &host(),
        );
        assert!(object.is_none());
        // A new address and AS: labels, the route reflector id and orchRefs stay.
        let (object, _) = updated_object(
            "n1",
            Some((&existing, &value)),
            &settings("198.19.0.1", "2001:db8:0:ff::1", Some("1.10")),
            &host(),
        );
        let object = object.unwrap();
        assert_eq!(object["metadata"]["labels"]["rack"], "r1");
        assert_eq!(object["spec"]["orchRefs"][0]["orchestrator"], "k8s");
        let bgp = &object["spec"]["bgp"];
        assert_eq!(bgp["routeReflectorClusterID"], "244.0.0.1");
        assert_eq!(
            bgp["ipv4Address"], "198.19.0.1/24",
            "the interface's prefix"
        );
        assert_eq!(bgp["ipv6Address"], "2001:db8:0:ff::1/64");
        assert_eq!(bgp["asNumber"], 65546);
        // What is written reads back as a valid Node.
        let text = serde_json::to_string(&object).unwrap();
        assert!(parse_documents("n1", &text).is_ok());
    }

    #[test]
    fn a_given_address_on_no_interface_is_a_host_route() {
        let (object, how) = updated_object("n1", None, &settings("198.18.9.9", "", None), &host());
        assert_eq!(
            object.unwrap()["spec"]["bgp"]["ipv4Address"],
            "198.18.9.9/32"
        );
        assert!(how.contains("on no interface"), "{how}");
    }

    #[test]
    fn autodetection_failing_keeps_an_existing_address() {
        let (existing, value) = node(
            "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\n\
             spec: {bgp: {ipv4Address: 198.19.0.1/24}}\n",
        );
        let (object, how) = updated_object(
            "n1",
            Some((&existing, &value)),
            &settings("autodetect", "", None),
            &host()[..2],
        );
        assert!(object.is_none());
        assert!(how.contains("kept: autodetection found none"), "{how}");
    }
}
