//! What each CNI command does, for the `calico` plugin (interfaces, endpoint, addresses) and
//! for `calico-ipam` (addresses only).

use std::{collections::BTreeSet, net::IpAddr};

use serde_json::{Value, json};
use tracing::{info, warn};

use super::{
    addresses,
    config::{CniEnv, Environment, NetConf, SUPPORTED_VERSIONS, attachment_set, peek_version},
    delegate,
    endpoint::{self, EndpointFields},
    error::CniError,
    link::{self, Namespace, Veth, host_veth_name},
    result::{ContainerInterface, add_result, result_addresses},
};
use crate::datastore::Store;

async fn open_store(conf: &NetConf) -> Result<Store, CniError> {
    Store::open(&conf.datastore)
        .await
        .map_err(|e| CniError::from_store("opening the datastore", &e))
}

/// VERSION: the versions this plugin speaks.
pub fn version(stdin: &[u8]) -> Value {
    let asked = peek_version(stdin).filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()));
    json!({
        "cniVersion": asked.unwrap_or_else(|| super::config::LATEST_VERSION.to_owned()),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

fn existing_netns(env: &CniEnv) -> Result<std::path::PathBuf, CniError> {
    let netns = env
        .netns
        .clone()
        .ok_or_else(|| CniError::env("CNI_NETNS is not set"))?;
    if !netns.exists() {
        return Err(CniError::env(format!(
            "CNI_NETNS {}: no such network namespace",
            netns.display()
        )));
    }
    Ok(netns)
}

// ---------------------------------------------------------------------------------------------
// calico

/// ADD: addresses, veth, endpoint, profile; the result. A failure after the addresses were
/// assigned takes back what this call made.
///
/// # Errors
///
/// See [`CniError`]; nothing this call created is left behind.
pub async fn add(
    conf: &NetConf,
    env: &CniEnv,
    process_env: &dyn Environment,
) -> Result<Value, CniError> {
    let netns = existing_netns(env)?;
    let container = Namespace::Container(netns.clone());
    if link::link_exists(&container, &env.ifname)? {
        return Err(CniError::internal(format!(
            "interface {} already exists in {}: ADD of an existing interface is refused (DEL it first)",
            env.ifname,
            netns.display()
        )));
    }
    let host_veth = host_veth_name(&env.container_id);
    if link::link_exists(&Namespace::Host, &host_veth)? {
        return Err(CniError::internal(format!(
            "host interface {host_veth} already exists: another attachment of a container whose ID starts with {} holds it (DEL that one first)",
            &host_veth[4..]
        )));
    }
    let node = conf.node_name()?;
    let mut store = open_store(conf).await?;
    let key = endpoint::endpoint_key(&node, &env.container_id, &env.ifname);
    if endpoint::get_endpoint(&mut store, &key).await?.is_some() {
        return Err(CniError::internal(format!(
            "{key} already exists: DEL the attachment first"
        )));
    }
    // The endpoint must be writable with these names (Calico's name rules): found out now,
    // before anything is made.
    endpoint::write_request(
        &endpoint::endpoint_object(&EndpointFields {
            node: &node,
            container_id: &env.container_id,
            ifname: &env.ifname,
            network: &conf.name,
            host_veth: &host_veth,
            mac: link::HOST_MAC,
            addresses: &[],
        }),
        crate::datastore::WriteMode::Create,
    )
    .map_err(|e| {
        CniError::env(format!(
            "node {node:?}, CNI_CONTAINERID {:?} and CNI_IFNAME {:?} cannot name a WorkloadEndpoint: {}",
            env.container_id, env.ifname, e.msg
        ))
    })?;
    let handle = conf.handle(&env.container_id);
    let ipam_type = conf.ipam.ipam_type.as_str();
    let mut ipam = None;
    let addresses = if delegate::is_calico_ipam(ipam_type) {
        let mut calico_ipam = addresses::open(&conf.datastore, &mut store).await?;
        let held = addresses::held_by(&mut calico_ipam, &handle).await?;
        if !held.is_empty() {
            return Err(CniError::internal(format!(
                "IPAM handle {handle} already holds {held:?}: DEL the attachment first"
            )));
        }
        let assigned = addresses::assign(&mut calico_ipam, conf, &node, &handle).await?;
        ipam = Some(calico_ipam);
        assigned
    } else {
        let output = delegate::run(ipam_type, "ADD", &conf.raw, process_env)?;
        match delegate::addresses(ipam_type, &output) {
            Ok(assigned) => assigned,
            Err(e) => {
                if let Err(undo) = delegate::run(ipam_type, "DEL", &conf.raw, process_env) {
                    warn!("undo: {undo}");
                }
                return Err(e);
            }
        }
    };
    info!(container = env.container_id, ?addresses, "assigned");

    let mut endpoint_written = false;
    let attached: Result<String, CniError> = async {
        let mac = link::create_veth(&Veth {
            host_name: &host_veth,
            container_name: &env.ifname,
            netns: &netns,
            mtu: conf.mtu,
            addresses: &addresses,
            prepare_for_xdp: conf.prepare_for_xdp,
        })?;
        let object = endpoint::endpoint_object(&EndpointFields {
            node: &node,
            container_id: &env.container_id,
            ifname: &env.ifname,
            network: &conf.name,
            host_veth: &host_veth,
            mac: &mac,
            addresses: &addresses,
        });
        endpoint::create_endpoint(&mut store, &object).await?;
        endpoint_written = true;
        if conf.policy_type.is_none() && endpoint::ensure_profile(&mut store, &conf.name).await? {
            info!(profile = conf.name, "created the network's profile");
        }
        Ok(mac)
    }
    .await;
    let mac = match attached {
        Ok(mac) => mac,
        Err(e) => {
            warn!("ADD failed, undoing it: {e}");
            if let Err(undo) = link::delete_link(&Namespace::Host, &host_veth) {
                warn!("undo: {undo}");
            }
            if endpoint_written && let Err(undo) = endpoint::delete_endpoint(&mut store, &key).await
            {
                warn!("undo: {undo}");
            }
            let released = match &mut ipam {
                Some(calico_ipam) => addresses::release(calico_ipam, &handle).await.map(|_| ()),
                None => delegate::run(ipam_type, "DEL", &conf.raw, process_env).map(|_| ()),
            };
            if let Err(undo) = released {
                warn!("undo: {undo}");
            }
            return Err(e);
        }
    };
    let sandbox = netns.display().to_string();
    Ok(add_result(
        &conf.cni_version,
        Some(&ContainerInterface {
            host_veth: &host_veth,
            name: &env.ifname,
            mac: &mac,
            sandbox: &sandbox,
        }),
        &addresses,
    ))
}

/// DEL: the container's interface, the host side the endpoint names, the endpoint, the
/// addresses. Whatever is already gone is fine.
///
/// # Errors
///
/// The datastore failing (the call can be repeated).
pub async fn del(
    conf: &NetConf,
    env: &CniEnv,
    process_env: &dyn Environment,
) -> Result<(), CniError> {
    let node = conf.node_name()?;
    let mut store = open_store(conf).await?;
    let key = endpoint::endpoint_key(&node, &env.container_id, &env.ifname);
    let existing = endpoint::get_endpoint(&mut store, &key).await?;
    if let Some(netns) = env.netns.as_ref().filter(|p| p.exists()) {
        let container = Namespace::Container(netns.clone());
        if let Err(e) = link::delete_link(&container, &env.ifname) {
            warn!("{e}");
        }
    }
    if let Some(wep) = &existing {
        link::delete_link(&Namespace::Host, &wep.spec.interface_name)?;
        endpoint::delete_endpoint(&mut store, &key).await?;
    }
    if delegate::is_calico_ipam(&conf.ipam.ipam_type) {
        let mut ipam = addresses::open(&conf.datastore, &mut store).await?;
        let released = addresses::release(&mut ipam, &conf.handle(&env.container_id)).await?;
        info!(
            container = env.container_id,
            ?released,
            endpoint = existing.is_some(),
            "deleted"
        );
    } else {
        delegate::run(&conf.ipam.ipam_type, "DEL", &conf.raw, process_env)?;
    }
    Ok(())
}

/// CHECK: the container's interface has the previous result's addresses, the host side and
/// the endpoint exist, the handle holds the addresses.
///
/// # Errors
///
/// The first thing that is not as ADD left it.
pub async fn check(conf: &NetConf, env: &CniEnv) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("CHECK needs prevResult in the network configuration"))?;
    let netns = existing_netns(env)?;
    let container = Namespace::Container(netns.clone());
    if !link::link_exists(&container, &env.ifname)? {
        return Err(CniError::internal(format!(
            "interface {} is missing in {}",
            env.ifname,
            netns.display()
        )));
    }
    let on_link: Vec<String> = link::link_addresses(&container, &env.ifname)?
        .iter()
        .map(ToString::to_string)
        .collect();
    for address in result_addresses(prev) {
        if !on_link.contains(&address) {
            return Err(CniError::internal(format!(
                "{address} is not on {} (it has {on_link:?})",
                env.ifname
            )));
        }
    }
    let host_veth = host_veth_name(&env.container_id);
    if !link::link_exists(&Namespace::Host, &host_veth)? {
        return Err(CniError::internal(format!(
            "host interface {host_veth} is missing"
        )));
    }
    let node = conf.node_name()?;
    let mut store = open_store(conf).await?;
    let key = endpoint::endpoint_key(&node, &env.container_id, &env.ifname);
    let Some(wep) = endpoint::get_endpoint(&mut store, &key).await? else {
        return Err(CniError::internal(format!("{key} is missing")));
    };
    if !delegate::is_calico_ipam(&conf.ipam.ipam_type) {
        return Ok(());
    }
    let mut ipam = addresses::open(&conf.datastore, &mut store).await?;
    let held = addresses::held_by(&mut ipam, &conf.handle(&env.container_id)).await?;
    for net in &wep.spec.ip_networks {
        if !held.contains(&net.addr()) {
            return Err(CniError::internal(format!(
                "{} of {key} is not assigned to handle {}",
                net.addr(),
                conf.handle(&env.container_id)
            )));
        }
    }
    Ok(())
}

/// GC: every endpoint of this network on this node, and every address of the network's
/// handles here, whose attachment is not in `cni.dev/valid-attachments`, goes.
///
/// # Errors
///
/// No list given (7), the datastore failing.
pub async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
        CniError::config("GC needs cni.dev/valid-attachments in the network configuration")
    })?;
    let valid_pairs = attachment_set(valid);
    let valid_containers: BTreeSet<String> = valid.iter().map(|a| a.container_id.clone()).collect();
    let node = conf.node_name()?;
    let mut store = open_store(conf).await?;
    let endpoints = endpoint::network_endpoints(&mut store, &node, &conf.name).await?;
    for (attachment, wep) in endpoints {
        if valid_pairs.contains(&attachment) {
            continue;
        }
        info!(
            container = attachment.0,
            ifname = attachment.1,
            "GC: removing the endpoint"
        );
        link::delete_link(&Namespace::Host, &wep.spec.interface_name)?;
        let key = endpoint::endpoint_key(&node, &attachment.0, &attachment.1);
        endpoint::delete_endpoint(&mut store, &key).await?;
    }
    if delegate::is_calico_ipam(&conf.ipam.ipam_type) {
        let mut ipam = addresses::open(&conf.datastore, &mut store).await?;
        let released =
            addresses::collect_garbage(&mut ipam, &conf.name, &node, &valid_containers).await?;
        if !released.is_empty() {
            info!(?released, "GC: released handles");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// calico-ipam

/// `calico-ipam` ADD: the addresses, as an IPAM result.
///
/// # Errors
///
/// The handle holds addresses already, or assigning fails.
pub async fn ipam_add(conf: &NetConf, env: &CniEnv) -> Result<Value, CniError> {
    let node = conf.node_name()?;
    let mut store = open_store(conf).await?;
    let mut ipam = addresses::open(&conf.datastore, &mut store).await?;
    let handle = conf.handle(&env.container_id);
    let held = addresses::held_by(&mut ipam, &handle).await?;
    let addresses: Vec<IpAddr> = if held.is_empty() {
        addresses::assign(&mut ipam, conf, &node, &handle).await?
    } else {
        // A repeated ADD (a runtime retrying) gets what the handle holds.
        held
    };
    Ok(add_result(&conf.cni_version, None, &addresses))
}

/// `calico-ipam` DEL: releases the handle (holding nothing is fine).
///
/// # Errors
///
/// The datastore failing.
pub async fn ipam_del(conf: &NetConf, env: &CniEnv) -> Result<(), CniError> {
    let mut store = open_store(conf).await?;
    let mut ipam = addresses::open(&conf.datastore, &mut store).await?;
    addresses::release(&mut ipam, &conf.handle(&env.container_id)).await?;
    Ok(())
}

/// `calico-ipam` CHECK: the handle holds addresses.
///
/// # Errors
///
/// It holds none, or the datastore fails.
pub async fn ipam_check(conf: &NetConf, env: &CniEnv) -> Result<(), CniError> {
    let mut store = open_store(conf).await?;
    let mut ipam = addresses::open(&conf.datastore, &mut store).await?;
    let handle = conf.handle(&env.container_id);
    if addresses::held_by(&mut ipam, &handle).await?.is_empty() {
        return Err(CniError::internal(format!(
            "IPAM handle {handle} holds no addresses"
        )));
    }
    Ok(())
}

/// `calico-ipam` GC: the network's handles on this node whose container is not valid.
///
/// # Errors
///
/// No list given (7), the datastore failing.
pub async fn ipam_gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
        CniError::config("GC needs cni.dev/valid-attachments in the network configuration")
    })?;
    let valid_containers: BTreeSet<String> = valid.iter().map(|a| a.container_id.clone()).collect();
    let node = conf.node_name()?;
    let mut store = open_store(conf).await?;
    let mut ipam = addresses::open(&conf.datastore, &mut store).await?;
    addresses::collect_garbage(&mut ipam, &conf.name, &node, &valid_containers).await?;
    Ok(())
}
