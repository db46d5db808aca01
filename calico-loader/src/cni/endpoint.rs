//! The datastore side of an attachment: its WorkloadEndpoint (Calico's name and fields for
//! orchestrator `cni`) and the network's default Profile.

use std::{collections::BTreeMap, net::IpAddr};

use serde_json::{Value, json};

use super::error::CniError;
use crate::datastore::{
    Kind, ResourceKey, Store, StoreError, WriteMode, WriteRequest, parse_documents,
    resources::{DEFAULT_NAMESPACE, WorkloadEndpoint},
};

/// The orchestrator of every endpoint this plugin writes.
pub const ORCHESTRATOR: &str = "cni";

/// Calico's endpoint name: `<node>-cni-<containerID>-<ifname>`, every `-` inside a part
/// doubled.
pub fn endpoint_name(node: &str, container_id: &str, ifname: &str) -> String {
    let escape = |s: &str| s.replace('-', "--");
    format!(
        "{}-{ORCHESTRATOR}-{}-{}",
        escape(node),
        escape(container_id),
        escape(ifname)
    )
}

/// The key of the endpoint of `(node, container, ifname)`.
pub fn endpoint_key(node: &str, container_id: &str, ifname: &str) -> ResourceKey {
    ResourceKey {
        kind: Kind::WorkloadEndpoint,
        namespace: Some(DEFAULT_NAMESPACE.to_owned()),
        name: endpoint_name(node, container_id, ifname),
    }
}

/// What the endpoint of an attachment says.
pub struct EndpointFields<'a> {
    pub node: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub network: &'a str,
    pub host_veth: &'a str,
    pub mac: &'a str,
    pub addresses: &'a [IpAddr],
}

/// The endpoint as Calico's plugin writes it (with the labels its client adds).
pub fn endpoint_object(fields: &EndpointFields<'_>) -> Value {
    let networks: Vec<String> = fields
        .addresses
        .iter()
        .map(|ip| format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }))
        .collect();
    json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "WorkloadEndpoint",
        "metadata": {
            "name": endpoint_name(fields.node, fields.container_id, fields.ifname),
            "namespace": DEFAULT_NAMESPACE,
            "labels": {
                "projectcalico.org/namespace": DEFAULT_NAMESPACE,
                "projectcalico.org/orchestrator": ORCHESTRATOR,
            },
        },
        "spec": {
            "orchestrator": ORCHESTRATOR,
            "node": fields.node,
            "containerID": fields.container_id,
            "endpoint": fields.ifname,
            "ipNetworks": networks,
            "profiles": [fields.network],
            "interfaceName": fields.host_veth,
            "mac": fields.mac,
        },
    })
}

/// The profile Calico's plugin creates for a network without one: egress allowed, ingress
/// from the network's own endpoints (which carry its label through `labelsToApply`).
pub fn profile_object(network: &str) -> Value {
    json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "Profile",
        "metadata": {"name": network},
        "spec": {
            "egress": [{"action": "Allow"}],
            "ingress": [{"action": "Allow", "source": {"selector": format!("has({network})")}}],
            "labelsToApply": {network: ""},
        },
    })
}

/// A write of `object` (validated as the CLI validates what users apply).
///
/// # Errors
///
/// The object does not validate (a bug, or a node name Calico would refuse).
pub fn write_request(object: &Value, mode: WriteMode) -> Result<WriteRequest, CniError> {
    let text = object.to_string();
    let mut documents = parse_documents("the CNI plugin", &text).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        CniError::internal(format!("invalid resource: {}", lines.join("; ")))
    })?;
    let document = documents
        .pop()
        .ok_or_else(|| CniError::internal("no resource to write"))?;
    Ok(WriteRequest {
        mode,
        resource: document.resource,
        raw: document.raw,
    })
}

/// Writes the endpoint; refuses to replace one.
///
/// # Errors
///
/// The endpoint exists already, or the datastore fails.
pub async fn create_endpoint(store: &mut Store, object: &Value) -> Result<(), CniError> {
    let request = write_request(object, WriteMode::Create)?;
    store
        .write(std::slice::from_ref(&request))
        .await
        .map_err(|e| match e {
            StoreError::AlreadyExists { key } => {
                CniError::internal(format!("{key} already exists: DEL the attachment first"))
            }
            e => CniError::from_store("writing the WorkloadEndpoint", &e),
        })?;
    Ok(())
}

/// Creates the network's profile unless it exists. Another plugin creating it at the same
/// time is fine.
///
/// # Errors
///
/// The datastore fails.
pub async fn ensure_profile(store: &mut Store, network: &str) -> Result<bool, CniError> {
    let key = ResourceKey {
        kind: Kind::Profile,
        namespace: None,
        name: network.to_owned(),
    };
    let exists = |r: Result<Option<_>, StoreError>| match r {
        Ok(found) => Ok(found.is_some()),
        Err(e) => Err(CniError::from_store("reading the network's Profile", &e)),
    };
    if exists(store.get(&key).await)? {
        return Ok(false);
    }
    let request = write_request(&profile_object(network), WriteMode::Create)?;
    match store.write(std::slice::from_ref(&request)).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(true),
        // Another plugin's write of the same file may have raced this one.
        Err(e) if exists(store.get(&key).await)? => {
            tracing::debug!("profile {network} written by another plugin meanwhile: {e}");
            Ok(false)
        }
        Err(e) => Err(CniError::from_store("creating the network's Profile", &e)),
    }
}

/// The endpoint at `key`, if stored.
///
/// # Errors
///
/// The datastore fails.
pub async fn get_endpoint(
    store: &mut Store,
    key: &ResourceKey,
) -> Result<Option<WorkloadEndpoint>, CniError> {
    let stored = store
        .get(key)
        .await
        .map_err(|e| CniError::from_store("reading the WorkloadEndpoint", &e))?;
    Ok(stored.and_then(|s| s.resource.typed::<WorkloadEndpoint>().cloned()))
}

/// Deletes the endpoint at `key`; `Ok(false)` if it was not there.
///
/// # Errors
///
/// The datastore fails.
pub async fn delete_endpoint(store: &mut Store, key: &ResourceKey) -> Result<bool, CniError> {
    match store.delete(key, None).await {
        Ok(()) => Ok(true),
        Err(StoreError::NotFound { .. }) => Ok(false),
        Err(e) => Err(CniError::from_store("deleting the WorkloadEndpoint", &e)),
    }
}

/// This network's endpoints on `node`, by (container ID, ifname).
///
/// # Errors
///
/// The datastore fails.
pub async fn network_endpoints(
    store: &mut Store,
    node: &str,
    network: &str,
) -> Result<BTreeMap<(String, String), WorkloadEndpoint>, CniError> {
    let (stored, _) = store
        .list(Kind::WorkloadEndpoint, None)
        .await
        .map_err(|e| CniError::from_store("listing the WorkloadEndpoints", &e))?;
    Ok(stored
        .iter()
        .filter_map(|s| s.resource.typed::<WorkloadEndpoint>())
        .filter(|w| {
            w.spec.node == node
                && w.spec.orchestrator.as_deref() == Some(ORCHESTRATOR)
                && w.spec.profiles.first().map(String::as_str) == Some(network)
        })
        .filter_map(|w| {
            let id = w.spec.container_id.clone()?;
            let ifname = w.spec.endpoint.clone()?;
            Some(((id, ifname), w.clone()))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_double_dashes_inside_parts() {
        assert_eq!(
            endpoint_name("node-1", "abc-def", "eth0"),
            "node--1-cni-abc--def-eth0"
        );
        assert_eq!(endpoint_name("n", "c", "e-1"), "n-cni-c-e--1");
    }

    #[test]
    fn endpoint_and_profile_validate() {
        let addresses = [
            "198.18.0.5".parse().expect("ip"),
            "2001:db8::5".parse().expect("ip"),
        ];
        let object = endpoint_object(&EndpointFields {
            node: "host-a",
            container_id: &"0a".repeat(32),
            ifname: "eth0",
            network: "calico",
            host_veth: "cali0a0a0a0a0a0",
            mac: "02:00:00:00:00:01",
            addresses: &addresses,
        });
        let request = write_request(&object, WriteMode::Create).expect("valid");
        let wep = request
            .resource
            .typed::<WorkloadEndpoint>()
            .expect("a WorkloadEndpoint");
        assert_eq!(wep.spec.ip_networks.len(), 2);
        assert_eq!(wep.spec.profiles, vec!["calico".to_owned()]);
        assert_eq!(wep.spec.orchestrator.as_deref(), Some("cni"));
        assert!(wep.name().starts_with("host--a-cni-"));
        write_request(&profile_object("calico"), WriteMode::Create).expect("valid profile");
    }
}
