//! The setup being measured, made active on the bench's topology: kernel routes and plain
//! forwarding, iptables or nftables rules, our agent on one host, or an agent on each of two
//! hosts; and the programs our setups attached, as `bpftool` sees them.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use testbed::Cmd;

use super::{
    Ctx, Setup,
    cross_host::{FABRIC_HOOKS, FABRIC_IF, HostAgents},
    loader::dump_cmd,
    policy::{self, PolicyCheck},
    topology::{Agent, IptablesRules, NftRules, NftShape, set_tx_offload},
};
use crate::{root, topology::AttachMode};

/// One of our programs, and the hooks (`<interface>/<hook>`, prefixed with the host on two
/// hosts) it is attached to.
pub struct Program {
    pub id: u64,
    pub hooks: Vec<String>,
}

/// The active setup. `deactivate` (or drop) leaves the topology with plain
/// Linux forwarding, without kernel routes for the agent setups.
pub enum Active<'a> {
    Linux,
    Iptables(IptablesRules<'a>),
    Nft(NftRules<'a>),
    Agent(Box<Agent>),
    /// An agent on each of the two hosts (the cross-host setups).
    Hosts(Box<HostAgents>),
}

impl<'a> Active<'a> {
    pub fn activate(ctx: &Ctx<'a>, setup: Setup) -> Result<Self> {
        match setup {
            Setup::Linux | Setup::CrossLinux => {
                ctx.topo.install_kernel_routes()?;
                Ok(Self::Linux)
            }
            Setup::Iptables(rules) => {
                ctx.topo.install_kernel_routes()?;
                Ok(Self::Iptables(IptablesRules::install(ctx, rules)?))
            }
            Setup::NftList(rules) => {
                ctx.topo.install_kernel_routes()?;
                Ok(Self::Nft(NftRules::install(ctx, NftShape::List, rules)?))
            }
            Setup::NftSet(rules) => {
                ctx.topo.install_kernel_routes()?;
                Ok(Self::Nft(NftRules::install(ctx, NftShape::Set, rules)?))
            }
            Setup::Ours(hook, rules) => {
                ctx.topo.remove_kernel_routes()?;
                if hook == AttachMode::Xdp {
                    set_tx_offload(ctx.topo, false)?;
                }
                Ok(Self::Agent(Box::new(Agent::start(ctx, hook, rules)?)))
            }
            Setup::CrossOurs(hook) => {
                ctx.topo.remove_kernel_routes()?;
                if hook == AttachMode::Xdp {
                    set_tx_offload(ctx.topo, false)?;
                }
                Ok(Self::Hosts(Box::new(HostAgents::start(ctx, hook)?)))
            }
        }
    }

    pub fn deactivate(self, ctx: &Ctx<'_>) -> Result<()> {
        let (hook, stopped) = match self {
            Self::Linux => return Ok(()),
            Self::Iptables(rules) => return rules.remove(),
            Self::Nft(rules) => return rules.remove(),
            Self::Agent(agent) => (agent.hook, agent.stop(ctx)),
            Self::Hosts(agents) => (agents.hook, agents.stop(ctx)),
        };
        stopped?;
        if hook == AttachMode::Xdp {
            set_tx_offload(ctx.topo, true)?;
        }
        Ok(())
    }

    pub fn is_agent(&self) -> bool {
        matches!(self, Self::Agent(_) | Self::Hosts(_))
    }

    pub fn agent(&self) -> Option<&Agent> {
        match self {
            Self::Agent(agent) => Some(agent),
            _ => None,
        }
    }

    /// For our setups: the policy check made before measuring, with the deciding rule's hits
    /// read now.
    pub fn policy_check(&mut self, ctx: &Ctx<'_>) -> Result<Option<PolicyCheck>> {
        let Self::Agent(agent) = self else {
            return Ok(None);
        };
        let Some(mut check) = agent.policy.take() else {
            return Ok(None);
        };
        policy::record_hits(ctx, &mut check)?;
        Ok(Some(check))
    }

    /// Our programs attached to the workloads' interfaces, and on two hosts to the fabric
    /// interfaces (none without the agent).
    pub fn programs(&self, ctx: &Ctx<'_>) -> Result<Vec<Program>> {
        if !self.is_agent() {
            return Ok(Vec::new());
        }
        let places: Vec<(&Path, &str)> = match ctx.sink_pin_path {
            None => vec![(ctx.pin_path, "")],
            Some(sink_pins) => vec![(ctx.pin_path, "host A: "), (sink_pins, "host B: ")],
        };
        let mut by_id: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for (pins, label) in places {
            let endpoints = dump_cmd(ctx.loader, pins, "endpoints").output()?;
            let endpoints: Value = serde_json::from_str(&endpoints)
                .context("`dump endpoints -o json` printed invalid JSON")?;
            let Value::Array(endpoints) = endpoints else {
                bail!("`dump endpoints -o json` did not print an array");
            };
            let mut hooks: Vec<(String, String)> = Vec::new();
            for endpoint in &endpoints {
                let Some(iface) = endpoint["interface"].as_str() else {
                    continue;
                };
                if !ctx.topo.workloads().iter().any(|w| w.host_if == iface) {
                    continue;
                }
                for hook in endpoint["hooks"].as_array().into_iter().flatten() {
                    if let Some(hook) = hook.as_str() {
                        hooks.push((iface.to_owned(), hook.to_owned()));
                    }
                }
            }
            if ctx.sink_pin_path.is_some() {
                // Data interfaces have no endpoint entry: their links are found by name.
                for hook in FABRIC_HOOKS {
                    let pin = pins.join("links").join(FABRIC_IF).join(hook);
                    if root::exists_as_root(&pin) {
                        hooks.push((FABRIC_IF.to_owned(), hook.to_owned()));
                    }
                }
            }
            for (iface, hook) in hooks {
                // The agent pins each link as <pins>/links/<interface>/<hook>.
                let pin = pins.join("links").join(&iface).join(&hook);
                let link = Cmd::new("bpftool")
                    .args(["link", "show", "pinned"])
                    .arg(&pin)
                    .arg("-j")
                    .privileged()
                    .output()?;
                let link: Value = serde_json::from_str(&link).with_context(|| {
                    format!("bpftool printed invalid JSON for {}", pin.display())
                })?;
                let id = link["prog_id"]
                    .as_u64()
                    .with_context(|| format!("no prog_id for the link {}", pin.display()))?;
                by_id
                    .entry(id)
                    .or_default()
                    .push(format!("{label}{iface}/{hook}"));
            }
        }
        if by_id.is_empty() {
            bail!("found none of our programs through the agent's pinned links");
        }
        Ok(by_id
            .into_iter()
            .map(|(id, hooks)| Program { id, hooks })
            .collect())
    }
}
