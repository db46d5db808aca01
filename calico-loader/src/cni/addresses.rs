//! The addresses of attachments, through the IPAM library: handle `<network>.<containerID>`,
//! attribute `node`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;

use super::{
    config::{NetConf, resolve_pools},
    error::{CniError, code},
};
use crate::{
    datastore::{
        DatastoreConfig, Kind, Store,
        resources::{IpPool, IpPoolAllowedUse, Node},
    },
    ipam::{AnyIpamStore, AssignRequest, EtcdIpamStore, Ipam, LocalIpamStore},
};

/// The allocator over the configuration's datastore, with its pools and nodes' labels.
///
/// # Errors
///
/// The datastore cannot be reached or read.
pub async fn open(
    config: &DatastoreConfig,
    store: &mut Store,
) -> Result<Ipam<AnyIpamStore>, CniError> {
    let pools = list_typed::<IpPool>(store, Kind::IpPool).await?;
    let nodes = list_typed::<Node>(store, Kind::Node).await?;
    let labels = nodes
        .into_iter()
        .map(|n| (n.metadata.name.clone(), n.metadata.labels.clone()))
        .collect();
    let ipam_store = match config {
        DatastoreConfig::Local(dir) => AnyIpamStore::Local(LocalIpamStore::new(dir)),
        DatastoreConfig::Etcd(etcd) => {
            AnyIpamStore::Etcd(Box::new(EtcdIpamStore::connect(etcd).await.map_err(
                |e| CniError::from_ipam("connecting to etcd for IPAM", &e.into()),
            )?))
        }
    };
    Ok(Ipam::new(ipam_store, pools, labels))
}

async fn list_typed<K: crate::datastore::resources::Registered + Clone>(
    store: &mut Store,
    kind: Kind,
) -> Result<Vec<K>, CniError> {
    let (resources, _) = store
        .list(kind, None)
        .await
        .map_err(|e| CniError::from_store(&format!("listing {}", kind.plural()), &e))?;
    Ok(resources
        .iter()
        .filter_map(|r| r.resource.typed::<K>().cloned())
        .collect())
}

/// The enabled workload pools of a family (`v4`), by name and CIDR.
pub fn usable_pools(pools: &[IpPool], v4: bool) -> Vec<(String, IpNet)> {
    pools
        .iter()
        .filter(|p| {
            p.spec.cidr.addr().is_ipv4() == v4
                && !p.spec.disabled
                && p.spec.allows(IpPoolAllowedUse::Workload)
        })
        .map(|p| (p.metadata.name.clone(), p.spec.cidr))
        .collect()
}

/// Assigns the configuration's addresses (one per family asked for) to `handle`.
///
/// # Errors
///
/// Unknown pools (7), no pool or no free address, the datastore failing.
pub async fn assign(
    ipam: &mut Ipam<AnyIpamStore>,
    conf: &NetConf,
    node: &str,
    handle: &str,
) -> Result<Vec<IpAddr>, CniError> {
    let named: Vec<(String, IpNet)> = ipam
        .pools()
        .iter()
        .map(|p| (p.metadata.name.clone(), p.spec.cidr))
        .collect();
    let mut pools = resolve_pools(&conf.ipam.ipv4_pools, "ipv4_pools", &named)?;
    pools.extend(resolve_pools(&conf.ipam.ipv6_pools, "ipv6_pools", &named)?);
    let assigned = ipam
        .auto_assign(&AssignRequest {
            handle: handle.to_owned(),
            node: node.to_owned(),
            num_v4: usize::from(conf.ipam.assign_ipv4),
            num_v6: usize::from(conf.ipam.assign_ipv6),
            pools,
            attrs: BTreeMap::new(),
        })
        .await
        .map_err(|e| CniError::from_ipam("assigning addresses", &e))?;
    Ok(assigned.v4.into_iter().chain(assigned.v6).collect())
}

/// The addresses `handle` holds.
///
/// # Errors
///
/// The datastore failing.
pub async fn held_by(ipam: &mut Ipam<AnyIpamStore>, handle: &str) -> Result<Vec<IpAddr>, CniError> {
    let blocks = ipam
        .blocks()
        .await
        .map_err(|e| CniError::from_ipam("reading the IPAM blocks", &e))?;
    Ok(blocks.iter().flat_map(|b| b.addresses_of(handle)).collect())
}

/// Releases every address of `handle` (none is fine).
///
/// # Errors
///
/// The datastore failing.
pub async fn release(ipam: &mut Ipam<AnyIpamStore>, handle: &str) -> Result<Vec<IpAddr>, CniError> {
    ipam.release_by_handle(handle)
        .await
        .map_err(|e| CniError::from_ipam(&format!("releasing the addresses of {handle}"), &e))
}

/// GC: releases the handles of this network on `node` whose container is not in `valid`;
/// returns them.
///
/// # Errors
///
/// The datastore failing.
pub async fn collect_garbage(
    ipam: &mut Ipam<AnyIpamStore>,
    network: &str,
    node: &str,
    valid: &BTreeSet<String>,
) -> Result<Vec<String>, CniError> {
    let prefix = format!("{network}.");
    let blocks = ipam
        .blocks()
        .await
        .map_err(|e| CniError::from_ipam("reading the IPAM blocks", &e))?;
    let mut stale = BTreeSet::new();
    for block in &blocks {
        for (_, attr) in block.allocated() {
            let Some(attr) = attr else { continue };
            let Some(handle) = attr.handle_id.as_deref() else {
                continue;
            };
            let Some(container) = handle.strip_prefix(&prefix) else {
                continue;
            };
            if attr.active_owner_attrs.get("node").map(String::as_str) == Some(node)
                && !valid.contains(container)
            {
                stale.insert(handle.to_owned());
            }
        }
    }
    for handle in &stale {
        release(ipam, handle).await?;
    }
    Ok(stale.into_iter().collect())
}

/// STATUS: whether ADD could get addresses: the datastore answers, and (with Calico's IPAM)
/// an enabled pool of each family asked for exists.
///
/// # Errors
///
/// Code 50, saying what is missing.
pub async fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |e: CniError| CniError::new(code::NOT_AVAILABLE, e.msg);
    let mut store = Store::open(&conf.datastore)
        .await
        .map_err(|e| unavailable(CniError::from_store("opening the datastore", &e)))?;
    let mut ipam = open(&conf.datastore, &mut store)
        .await
        .map_err(unavailable)?;
    ipam.settings()
        .await
        .map_err(|e| unavailable(CniError::from_ipam("reading the IPAM settings", &e)))?;
    if !super::delegate::is_calico_ipam(&conf.ipam.ipam_type) {
        // Another IPAM plugin hands out the addresses: its pools are its own.
        return Ok(());
    }
    for (asked, v4) in [
        (conf.ipam.assign_ipv4, true),
        (conf.ipam.assign_ipv6, false),
    ] {
        if asked && usable_pools(ipam.pools(), v4).is_empty() {
            return Err(CniError::new(
                code::NOT_AVAILABLE,
                format!(
                    "no enabled IPv{} IPPool in {}: create one (calico-loader apply -f POOL.yaml)",
                    if v4 { 4 } else { 6 },
                    conf.datastore
                ),
            ));
        }
    }
    Ok(())
}
