//! A dataplane in maps of its own: the kernel object loaded but attached nowhere and pinned
//! nowhere, programmed from a snapshot of resources. `trace --datastore`, the program tests and
//! the microbenchmarks use it; the host's dataplane is never touched.

use std::collections::BTreeMap;

use aya::Ebpf;

use super::{
    error::DataplaneError,
    host_endpoints::{HostEndpointBinding, HostSettings, host_route_entries},
    maps::{MapContents, Maps, PolicyMaps},
    netlink::LinkDetails,
    policy::PolicyManager,
    switch::{HostProgramming, Unprogrammed, switch_policy},
};
use crate::{
    datastore::{HostEndpoint, Snapshot},
    model::{
        LocalEndpoint,
        compile::{CompileError, PolicyContext, compile_endpoint, compile_host_endpoint},
        rules::RuleRegistry,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum PrivateDataplaneError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error("no WorkloadEndpoint {0} in the resources")]
    NoEndpoint(String),
    #[error("no HostEndpoint {0} in the resources")]
    NoHostEndpoint(String),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("{0}")]
    Program(String),
}

/// What a private dataplane programs for the host: host endpoints (name, and the interface
/// each covers), the host's own addresses, its settings.
#[derive(Clone, Debug, Default)]
pub struct PrivateHost {
    pub endpoints: Vec<(String, LinkDetails)>,
    pub addresses: Vec<std::net::IpAddr>,
    pub settings: HostSettings,
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
        self.program_with_host(snapshot, endpoints, &PrivateHost::default())
    }

    /// [`Self::program`], with host endpoints on the given interfaces (their policies compiled
    /// from `snapshot`, which must hold each), the host's addresses and its settings.
    pub fn program_with_host(
        &mut self,
        snapshot: &Snapshot,
        endpoints: &[(LocalEndpoint, LinkDetails)],
        host: &PrivateHost,
    ) -> Result<MapContents, PrivateDataplaneError> {
        let context = PolicyContext::new(snapshot);
        let mut host_compiled = BTreeMap::new();
        let mut bindings = Vec::new();
        for (name, link) in &host.endpoints {
            let hep = snapshot
                .find::<HostEndpoint>(None, name)
                .ok_or_else(|| PrivateDataplaneError::NoHostEndpoint(name.clone()))?;
            let compiled = compile_host_endpoint(&context, &mut self.registry, hep)?;
            bindings.push(HostEndpointBinding {
                name: name.clone(),
                link: link.clone(),
                forward_open: compiled.forward_open,
            });
            host_compiled.insert(name.clone(), compiled);
        }
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
        let mut base = MapContents::default();
        host_route_entries(&mut base, &host.addresses);
        let switched = switch_policy(
            &mut self.policy,
            &mut self.maps,
            &mut self.registry,
            &endpoints,
            base,
            &compiled,
            HostProgramming {
                bindings: &bindings,
                compiled: &host_compiled,
                settings: &host.settings,
            },
            Unprogrammed::Fail,
        )
        .map_err(|e| match e {
            DataplaneError::Unprogrammed(error) => PrivateDataplaneError::Program(error),
            other => PrivateDataplaneError::Dataplane(other),
        })?;
        Ok(switched.contents)
    }
}
