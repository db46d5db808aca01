//! A dataplane in maps of its own: the kernel object loaded but attached nowhere and pinned
//! nowhere, programmed from a snapshot of resources. `trace --datastore`, the program tests and
//! the microbenchmarks use it; the host's dataplane is never touched.

use std::collections::BTreeMap;

use aya::Ebpf;

use super::{
    error::DataplaneError,
    maps::{MapContents, Maps, PolicyMaps},
    netlink::LinkDetails,
    policy::PolicyManager,
    switch::{Unprogrammed, switch_policy},
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
    /// Every endpoint must be programmed: a policy that cannot be is an error, and then no
    /// endpoint entry has been switched. Returns the contents written to the forwarding maps,
    /// for a caller that adds to them.
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
        let endpoints: Vec<_> = endpoints.iter().map(|(e, link)| (e, link)).collect();
        let switched = switch_policy(
            &mut self.policy,
            &mut self.maps,
            &mut self.registry,
            &endpoints,
            MapContents::default(),
            &compiled,
            Unprogrammed::Fail,
        )
        .map_err(|e| match e {
            DataplaneError::Unprogrammed(error) => PrivateDataplaneError::Program(error),
            other => PrivateDataplaneError::Dataplane(other),
        })?;
        Ok(switched.contents)
    }
}
