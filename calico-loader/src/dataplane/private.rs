//! A dataplane in maps of its own: the kernel object loaded but attached nowhere and pinned
//! nowhere, programmed from a snapshot of resources. `trace --datastore`, the program tests and
//! the microbenchmarks use it; the host's dataplane is never touched.

use std::collections::{BTreeMap, BTreeSet};

use aya::Ebpf;

use super::{
    DataplaneError, map_contents,
    maps::{MapContents, Maps, PolicyMaps},
    netlink::LinkDetails,
    policy::PolicyManager,
};
use crate::{
    datastore::Snapshot,
    model::{
        LocalEndpoint,
        compile::{CompileError, PolicyContext, compile_endpoint},
        rules::RuleRegistry,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum PrivateDataplaneError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("no WorkloadEndpoint {0} in the resources")]
    NoEndpoint(String),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("{0}")]
    Program(String),
}

/// Maps of a loaded object, with the policy state that programs them.
pub struct PrivateDataplane {
    pub maps: Maps,
    pub policy: PolicyManager,
    pub registry: RuleRegistry,
}

impl PrivateDataplane {
    /// Takes the maps out of a loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, PrivateDataplaneError> {
        Ok(Self {
            maps: Maps::from_ebpf(ebpf).map_err(DataplaneError::from)?,
            policy: PolicyManager::new(PolicyMaps::from_ebpf(ebpf).map_err(DataplaneError::from)?),
            registry: RuleRegistry::default(),
        })
    }

    /// Programs `endpoints` (each with the link it is given) and their policies compiled from
    /// `snapshot`, which must hold a WorkloadEndpoint for each (`key` is `namespace/name`).
    /// Returns the contents written to the forwarding maps, for a caller that adds to them.
    pub fn program(
        &mut self,
        snapshot: &Snapshot,
        endpoints: &[(LocalEndpoint, LinkDetails)],
    ) -> Result<MapContents, PrivateDataplaneError> {
        let context = PolicyContext::new(snapshot);
        let mut compiled = BTreeMap::new();
        for (endpoint, _) in endpoints {
            let wep = endpoint
                .key
                .split_once('/')
                .and_then(|(namespace, name)| snapshot.workload_endpoint(namespace, name))
                .ok_or_else(|| PrivateDataplaneError::NoEndpoint(endpoint.key.clone()))?;
            compiled.insert(
                endpoint.key.clone(),
                compile_endpoint(&context, &mut self.registry, wep)?,
            );
        }
        let wanted: BTreeSet<String> = compiled.keys().cloned().collect();
        let staged = self
            .policy
            .stage(&wanted, &compiled)
            .map_err(DataplaneError::from)?;
        if let Some(error) = staged.errors.first() {
            return Err(PrivateDataplaneError::Program(error.clone()));
        }
        let mut programmed = Vec::new();
        for (endpoint, link) in endpoints {
            let ids = self.policy.policy_ids(&endpoint.key).ok_or_else(|| {
                PrivateDataplaneError::Program(format!(
                    "endpoint {}: no policy programmed",
                    endpoint.key
                ))
            })?;
            programmed.push((endpoint, link, ids));
        }
        let contents = map_contents(programmed);
        self.maps
            .reconcile(&contents)
            .map_err(DataplaneError::from)?;
        self.policy.retire().map_err(DataplaneError::from)?;
        self.policy
            .sync_rules(&mut self.registry, &compiled)
            .map_err(DataplaneError::from)?;
        Ok(contents)
    }
}
