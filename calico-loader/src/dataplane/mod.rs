//! Dataplane programming: the kernel object, its pinned maps, the program attachments and the
//! kernel routes, brought in line with the endpoints the model says this host should serve.
//!
//! The work is split among managers, each owning one slice of dataplane state, with desired
//! state in and map or kernel writes out (as in Felix's internal dataplane):
//!
//! - [`endpoints::EndpointManager`]: the workload and data interfaces (with or without a host
//!   endpoint), their forwarding sysctls and program attachments, and the endpoint,
//!   allowed-source and counters entries; [`host_endpoints`] says what host endpoints, the
//!   host's addresses and its settings (failsafe ports, workload-to-host traffic) put in the
//!   maps;
//! - [`routes::RouteManager`]: the route map entries (local workloads, and other nodes'
//!   workloads with the nodes they live on), and the kernel routes and neighbour entries the
//!   agent writes through netlink;
//! - [`policy::PolicyManager`]: the policy generations in the policy maps, and the rules map;
//! - [`conntrack::Conntrack`]: the conntrack table (expiry; listing);
//! - [`nat::NatManager`]: outgoing NAT for natOutgoing pools, an nftables table in the kernel.
//!
//! [`object`] loads the kernel object and adopts or removes the pins, and [`upgrade`] replaces
//! pinned maps of an older layout make-before-break; [`maps`] opens every map;
//! [`switch::switch_policy`] is the one ordered sequence that brings new policy into force.
//! This module only says in which order the managers run.

pub mod attach;
pub mod bpffs;
pub mod conntrack;
pub mod endpoints;
pub mod error;
pub mod handles;
pub mod host_endpoints;
pub mod maps;
pub mod nat;
pub mod netlink;
pub mod object;
pub mod pinned_link;
pub mod policy;
pub mod private;
pub mod routes;
pub mod switch;
pub mod sysctl;
pub mod upgrade;
pub mod versions;

use std::collections::BTreeMap;

use aya::Ebpf;
use regex::Regex;

use self::{
    attach::{AttachMode, Attacher, Role},
    bpffs::PinLayout,
    conntrack::Conntrack,
    endpoints::EndpointManager,
    host_endpoints::{HostEndpointBinding, HostSettings, host_route_entries},
    maps::{LogEvents, Maps, PolicyMaps, ReconcileStats},
    nat::{NatManager, NatPools},
    netlink::Netlink,
    policy::PolicyManager,
    routes::RouteManager,
    switch::{HostProgramming, Unprogrammed, switch_policy},
    sysctl::Forwarding,
};
pub use self::{
    error::DataplaneError,
    object::{
        KERNEL_OBJECT, MapSizes, load_object, load_object_for_agent, load_object_with,
        load_private_object, remove_pins,
    },
    switch::map_contents,
};
use crate::model::{
    LocalEndpoint, RemoteWorkloads,
    compile::{CompiledEndpoint, CompiledHostEndpoint},
    host_endpoints::{LocalHostEndpoint, assign_interfaces},
    rules::RuleRegistry,
};

/// How much of the kernel's state an apply reads back to compare with what is wanted.
///
/// The kernel state the agent programs changes only when the agent writes it, when an interface
/// or address changes (a netlink event, which the agent passes on with
/// [`Dataplane::interfaces_changed`]), or when someone else writes it behind the agent's back.
/// An incremental apply trusts the first two and skips what cannot have changed; a full one also
/// repairs the third. The agent runs a full one first and then every
/// [`FULL_VERIFICATION_EVERY`]th resync, so drift lasts at most that many resync intervals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verification {
    /// Everything is read back: the interfaces and addresses, every forwarding map entry and
    /// every kernel route, and the differences written.
    Full,
    /// Only what may have changed: the interfaces and addresses are listed again only after an
    /// event said they changed; the forwarding maps are read back only when the entries wanted
    /// differ from those the last apply wrote; the kernel routes are listed only when the
    /// routes wanted differ from the last ones synced or the interfaces were listed again.
    Incremental,
}

/// Every how many resyncs the agent runs a [`Verification::Full`] apply (with the default 10 s
/// resync interval: once a minute).
pub const FULL_VERIFICATION_EVERY: u32 = 6;

/// This node's host endpoints and what the dataplane does for the host itself.
#[derive(Clone, Copy, Debug)]
pub struct HostDesired<'a> {
    /// This node's host endpoints, in name order.
    pub endpoints: &'a [LocalHostEndpoint],
    /// Their compiled policies, by name (one missing keeps what it has, or is not enforced).
    pub compiled: &'a BTreeMap<String, CompiledHostEndpoint>,
    pub settings: &'a HostSettings,
}

/// What one [`Dataplane::apply`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Interfaces that got programs attached, with their ifindex and endpoint.
    pub attached: Vec<(String, u32, String)>,
    /// Data interfaces that got programs attached, with their ifindex.
    pub attached_data: Vec<(String, u32)>,
    /// Unknown workload interfaces (a workload prefix, no endpoint) that got programs attached,
    /// which drop their traffic, with their ifindex.
    pub attached_unknown: Vec<(String, u32)>,
    /// Data interfaces that host endpoints cover: interface, host endpoint.
    pub host_endpoints: Vec<(String, String)>,
    /// Interfaces that lost their programs.
    pub detached: Vec<String>,
    /// Endpoints whose interface does not exist (yet).
    pub waiting: Vec<(String, String)>,
    /// Map entries written and removed.
    pub map_changes: ReconcileStats,
    /// Policy generations written: endpoint, direction, policy id, entries.
    pub policies: Vec<(String, &'static str, u32, usize)>,
    /// Policy map entries of replaced generations, deleted after the switch.
    pub policy_entries_removed: usize,
    /// Policy map entries in use after this apply.
    pub policy_entries: usize,
    /// Problems with single endpoints; the others were programmed regardless.
    pub errors: Vec<String>,
    /// Endpoints left unprogrammed because the endpoint map is full (each also in `errors`).
    pub over_capacity: usize,
    /// The tap endpoints (VMs) with an IPv4 address: the agent's DHCP server answers them.
    pub dhcp_clients: Vec<crate::dhcp::Client>,
    /// This apply finished an upgrade of the pinned maps.
    pub upgraded: bool,
}

/// The programmed dataplane of this host.
pub struct Dataplane {
    ebpf: Ebpf,
    layout: PinLayout,
    /// The forwarding maps, which the endpoint and route managers' entries fill.
    maps: Maps,
    endpoints: EndpointManager,
    routes: RouteManager,
    policy: PolicyManager,
    conntrack: Conntrack,
    nat: NatManager,
    log_events: Option<LogEvents>,
    /// A replacement of pinned maps under way, finished after the first apply.
    upgrade: Option<upgrade::Upgrade>,
}

impl Dataplane {
    /// Loads the programs and opens (or creates) the pinned maps. Interfaces whose name
    /// `data_interfaces` matches get the data-interface programs; interfaces whose name starts
    /// with one of `workload_prefixes` and that no endpoint names get the workload programs
    /// without an endpoint entry, which drop their traffic.
    pub fn start(
        layout: PinLayout,
        mode: AttachMode,
        sizes: MapSizes,
        data_interfaces: Regex,
        workload_prefixes: Vec<String>,
    ) -> Result<Self, DataplaneError> {
        let (mut ebpf, upgrade) = load_object_for_agent(&layout, sizes)?;
        let maps = Maps::from_ebpf(&mut ebpf)?;
        let nodes = maps.read()?.nodes;
        let policy = PolicyManager::new(PolicyMaps::from_ebpf(&mut ebpf)?)
            .with_retire_grace(policy::RETIRE_GRACE);
        let conntrack = Conntrack::from_ebpf(&mut ebpf)?;
        let log_events = maps::log_events_from_ebpf(&mut ebpf)?;
        let attacher = Attacher::load(&mut ebpf, layout.clone(), mode)?;
        let netlink = Netlink::connect()?;
        Ok(Self {
            ebpf,
            maps,
            endpoints: EndpointManager::new(
                attacher,
                netlink.clone(),
                layout.clone(),
                data_interfaces,
                workload_prefixes,
                Forwarding::new(),
            ),
            routes: RouteManager::new(netlink, &nodes),
            policy,
            conntrack,
            nat: NatManager::new(),
            log_events,
            upgrade,
            layout,
        })
    }

    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    pub fn mode(&self) -> AttachMode {
        self.endpoints.mode()
    }

    /// The ring buffer of Log events, for the agent to read (once).
    pub fn take_log_events(&mut self) -> Option<LogEvents> {
        self.log_events.take()
    }

    /// Removes expired conntrack entries; says how many are left and how many went.
    pub fn sweep_conntrack(&mut self) -> Result<conntrack::Sweep, DataplaneError> {
        Ok(self.conntrack.sweep()?)
    }

    /// Says that interfaces or addresses changed (a link or address event): the next apply
    /// lists them again, whatever its [`Verification`].
    pub fn interfaces_changed(&mut self) {
        self.endpoints.interfaces_changed();
    }

    /// The interfaces this agent has programs attached to, with their ifindex and role.
    pub fn attached(&self) -> &BTreeMap<String, (u32, Role)> {
        self.endpoints.attached()
    }

    /// The kernel routes to local workloads the agent manages, by family.
    pub fn managed_kernel_routes(&self) -> routes::ManagedRoutes {
        self.routes.managed()
    }

    /// Brings the dataplane in line with `desired` (keyed by interface name), the workloads of
    /// other nodes (`remote`, whose endpoints and blocks get routes to their node) and the endpoints'
    /// compiled policies (keyed by endpoint; an endpoint missing there keeps the policy it has,
    /// or, having none, gets no endpoint entry, so its traffic is dropped). This node's host
    /// endpoints (`host`) cover the data interfaces they are assigned, with their compiled
    /// policies; the host's own addresses become `host` routes, and the host settings apply. Maps are written
    /// before programs are attached to a new interface, and programs are detached before an
    /// interface's entries are removed, so a program never runs against a half-written
    /// endpoint. New policy generations are complete before endpoint entries switch to them.
    /// Outgoing NAT follows `nat_pools`; a failure there is logged and leaves the rest alone.
    /// `verification` says how much of the kernel's state is read back (see [`Verification`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn apply(
        &mut self,
        desired: &BTreeMap<String, LocalEndpoint>,
        remote: &RemoteWorkloads,
        compiled: &BTreeMap<String, CompiledEndpoint>,
        host: HostDesired<'_>,
        registry: &mut RuleRegistry,
        nat_pools: &NatPools,
        verification: Verification,
    ) -> Result<ApplyReport, DataplaneError> {
        // Outgoing NAT, in the kernel, for the traffic the programs leave to it.
        tokio::task::block_in_place(|| self.nat.sync(nat_pools));

        let mut report = ApplyReport::default();

        // Which endpoints' interfaces exist, and which are the data interfaces.
        let interfaces = self.endpoints.interfaces(desired, verification).await?;
        let relisted = interfaces.listed;
        let present = interfaces.present;
        let data = interfaces.data;
        let unknown = interfaces.unknown;
        report.waiting = interfaces.waiting;

        // Which data interfaces host endpoints cover.
        let data_addresses: BTreeMap<String, Vec<std::net::IpAddr>> = data
            .keys()
            .map(|ifname| {
                let addresses = interfaces
                    .addresses
                    .get(ifname)
                    .cloned()
                    .unwrap_or_default();
                (ifname.clone(), addresses)
            })
            .collect();
        let assignment = assign_interfaces(host.endpoints, &data_addresses);
        report.errors.extend(assignment.problems);
        let bindings: Vec<HostEndpointBinding> = assignment
            .interfaces
            .iter()
            .filter_map(|(ifname, name)| {
                Some(HostEndpointBinding {
                    name: name.clone(),
                    link: data.get(ifname)?.clone(),
                    forward_open: host.compiled.get(name).is_none_or(|c| c.forward_open),
                })
            })
            .collect();
        report.host_endpoints = assignment.interfaces.into_iter().collect();
        let covered: std::collections::BTreeSet<String> =
            bindings.iter().map(|b| b.link.name.clone()).collect();

        // Programs leave the interfaces that go before their entries do.
        let detached = self
            .endpoints
            .detach_stale(&present, &data, &unknown, &covered)?;
        report.detached = detached.interfaces;
        report.errors.extend(detached.errors);

        // New policy, then the endpoint entries that switch to it (with their sources,
        // counters and routes), then the old policy goes.
        let endpoints: Vec<_> = present.values().map(|(e, link)| (*e, link)).collect();
        report.dhcp_clients = endpoints
            .iter()
            .filter_map(|(endpoint, link)| endpoints::dhcp_client(endpoint, link))
            .collect();
        // The switch waits for packets in flight before it retires old policy (a short sleep).
        let remote_entries = {
            let mut base = self.routes.remote_routes(remote);
            routes::pool_route_entries(&mut base, &nat_pools.all);
            host_route_entries(&mut base, interfaces.addresses.values().flatten());
            base
        };
        self.maps
            .trust_written(verification == Verification::Incremental);
        let switched = tokio::task::block_in_place(|| {
            switch_policy(
                &mut self.policy,
                &mut self.maps,
                registry,
                &endpoints,
                remote_entries,
                compiled,
                HostProgramming {
                    bindings: &bindings,
                    compiled: host.compiled,
                    settings: host.settings,
                },
                Unprogrammed::Report,
            )
        })?;
        report.policies = switched.written;
        report.errors.extend(switched.errors);
        report.map_changes = switched.map_changes;
        report.policy_entries_removed = switched.entries_removed;
        report.policy_entries = switched.entries;
        report.over_capacity = switched.over_capacity;

        // Programs come to new interfaces once their entries are written.
        let attached = self
            .endpoints
            .attach(&mut self.ebpf, &present, &data, &unknown, &covered);
        report.attached = attached.interfaces;
        report.attached_data = attached.data;
        report.attached_unknown = attached.unknown;
        report.errors.extend(attached.errors);

        // The kernel's routes and neighbours for host-originated traffic.
        let relist_routes = verification == Verification::Full || relisted;
        let kernel_errors = self.routes.sync_kernel(endpoints, relist_routes).await?;
        report.errors.extend(kernel_errors);

        // Every program now runs with the new maps: they take the old maps' pins.
        if let Some(upgrade) = self.upgrade.take() {
            for (map, carried) in upgrade.finish()? {
                tracing::info!(
                    map,
                    copied = carried.copied,
                    lost = carried.lost,
                    "copied what the old programs tracked meanwhile"
                );
            }
            tracing::info!("upgrade of the pinned maps finished");
            report.upgraded = true;
        }
        Ok(report)
    }

    /// Detaches every program and removes every pin, kernel route and NAT table of this agent.
    pub async fn teardown(mut self) -> Result<(), DataplaneError> {
        if let Err(e) = self.nat.remove() {
            tracing::warn!("removing the outgoing NAT tables: {e}");
        }
        self.endpoints.detach_all()?;
        self.routes.remove_all().await?;
        let layout = self.layout.clone();
        drop(self);
        remove_pins(&layout)?;
        Ok(())
    }
}
