//! The agent's BGP: this node's BIRD, configured from the datastore and kept running.
//!
//! - **Input.** Each time the agent syncs, the nodes, `BGPConfiguration`s, `BGPPeer`s and IP
//!   pools of the snapshot, and this node's confirmed blocks and borrowed addresses from the
//!   IPAM objects the datastore follows, become a [`BgpInput`]; [`model::build`] and
//!   [`bird::render`] turn it into BIRD's configuration.
//! - **Reload.** A configuration that differs from the one in force is checked by BIRD and
//!   loaded (`birdc configure`). One that cannot be built (an unreadable password) or that
//!   BIRD refuses is logged once, and the configuration in force stays.
//! - **Off.** Without its own `Node`, or without an IPv4 address on it (BIRD's router id), the
//!   node has no BGP: one line says why, and a BIRD that was running is stopped (its peers
//!   withdraw its routes) and the routes it installed here are removed. Local forwarding does
//!   not depend on any of this.
//! - **Lifecycle.** At start the agent adopts the BIRD already running in its run directory
//!   (started by an earlier agent) instead of starting one; it starts BIRD when there is none.
//!   A BIRD that dies is started again at once (then with backoff), with graceful restart
//!   (`-R`): its peers keep its routes meanwhile, and the kernel keeps the routes it installed
//!   (`persist`). When the agent exits, BIRD is left running, for the next agent to adopt;
//!   with `--detach-on-exit` it is stopped and its routes removed.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

use crate::{
    bgp::{
        BgpInput, Bird, BirdSettings, NodeFacts, PoolFacts, Reload, SystemPasswords, bird, model,
    },
    dataplane::netlink::{BIRD_ROUTE_PROTOCOL, Netlink},
    datastore::{
        IpamObjects, Snapshot,
        resources::{BgpConfiguration, BgpPeer, IpPool, Node, WorkloadEndpoint},
    },
    ipam::node_blocks::NodeBlocks,
};

/// Where BIRD's files live by default (Calico's: `birdc -s /var/run/calico/bird.ctl`).
pub const DEFAULT_RUN_DIR: &str = "/var/run/calico";
/// How often the agent checks that BIRD still runs.
pub const SUPERVISION_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between attempts to start BIRD.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// This node's BGP input from the datastore, and the IPAM values left out of it because they
/// do not read; or why the node has no BGP.
///
/// # Errors
///
/// Why the node has no BGP: no Node resource, or no IPv4 address on it.
pub fn bgp_input(
    snapshot: &Snapshot,
    ipam: &IpamObjects,
    node: &str,
) -> Result<(BgpInput, Vec<String>), String> {
    let Some(own) = snapshot.find::<Node>(None, node) else {
        return Err(format!("this node ({node}) has no Node resource"));
    };
    let facts = NodeFacts::from(own);
    if facts.ipv4.is_none() {
        return Err(format!(
            "Node {node} has no IPv4 address (spec.bgp.ipv4Address), which BIRD needs as its \
             router id (set it with --ip or IP)"
        ));
    }
    let blocks = NodeBlocks::of(ipam, node);
    let input = BgpInput {
        node: facts,
        other_nodes: snapshot
            .all::<Node>()
            .filter(|n| n.name() != node)
            .map(NodeFacts::from)
            .collect(),
        configurations: snapshot.all::<BgpConfiguration>().cloned().collect(),
        peers: snapshot.all::<BgpPeer>().cloned().collect(),
        pools: snapshot.all::<IpPool>().map(PoolFacts::from).collect(),
        blocks: blocks.blocks,
        borrowed: blocks.borrowed,
        floating_ips: snapshot
            .all::<WorkloadEndpoint>()
            .filter(|wep| wep.spec.node == node)
            .flat_map(|wep| wep.spec.ip_nats.iter().map(|nat| nat.external_ip))
            .collect(),
    };
    Ok((input, blocks.problems))
}

/// How the agent runs BGP.
#[derive(Clone, Debug)]
pub struct RoutingConfig {
    /// Whether the agent runs BIRD at all (`CALICO_NETWORKING_BACKEND=bird`).
    pub enabled: bool,
    /// BIRD's run directory.
    pub run_dir: PathBuf,
}

/// This node's BIRD, as the agent keeps it.
pub struct Routing {
    node: String,
    config: RoutingConfig,
    bird: Option<Bird>,
    /// The configuration the datastore calls for, last rendered.
    wanted: Option<String>,
    /// What was last said about BGP's state (why it is off, what failed), so each is said once.
    said: Option<String>,
    /// The IPAM values that do not read, as last logged.
    ipam_problems: BTreeSet<String>,
    /// When BIRD may be started next, and the delay after that.
    next_start: Instant,
    start_delay: Duration,
}

impl Routing {
    /// Takes over the BIRD running in the run directory, if one is.
    pub fn new(node: &str, config: RoutingConfig) -> Self {
        let mut routing = Self {
            node: node.to_owned(),
            config,
            bird: None,
            wanted: None,
            said: None,
            ipam_problems: BTreeSet::new(),
            next_start: Instant::now(),
            start_delay: Duration::ZERO,
        };
        if routing.config.enabled {
            let settings = routing.settings();
            match tokio::task::block_in_place(|| Bird::adopt(settings)) {
                Ok(bird) => routing.bird = bird,
                Err(e) => routing.say(error_line(&format!("{e}"))),
            }
        }
        routing
    }

    fn settings(&self) -> BirdSettings {
        BirdSettings::new(&self.config.run_dir)
    }

    /// Logs `line` unless it was the last thing said.
    fn say(&mut self, line: Said) {
        if self.said.as_deref() != Some(line.text.as_str()) {
            match line.level {
                Level::Info => info!("{}", line.text),
                Level::Error => error!("{}", line.text),
            }
            self.said = Some(line.text);
        }
    }

    /// Brings BGP in line with the datastore.
    pub async fn update(&mut self, snapshot: &Snapshot, ipam: &IpamObjects) {
        if !self.config.enabled {
            return;
        }
        let input = match bgp_input(snapshot, ipam, &self.node) {
            Ok((input, problems)) => {
                let problems: BTreeSet<String> = problems.into_iter().collect();
                for problem in problems.difference(&self.ipam_problems) {
                    warn!("IPAM object left out of BGP: {problem}");
                }
                self.ipam_problems = problems;
                input
            }
            Err(why) => {
                self.wanted = None;
                self.say(Said {
                    level: Level::Info,
                    text: format!("BGP is off: {why}; local forwarding is unaffected"),
                });
                self.stop_bird().await;
                return;
            }
        };
        let model = match model::build(&input, &SystemPasswords) {
            Ok(model) => model,
            Err(e) => {
                self.say(error_line(&format!(
                    "BGP configuration not built: {e}; the BIRD configuration in force stays"
                )));
                return;
            }
        };
        let config = bird::render(&model);
        let summary = summary(&model);
        self.wanted = Some(config.clone());
        match &mut self.bird {
            Some(bird) => match tokio::task::block_in_place(|| bird.apply(&config)) {
                Ok(Reload::Reconfigured) => {
                    info!("BIRD reconfigured: {summary}");
                    self.said = None;
                }
                Ok(Reload::Unchanged) => self.said = None,
                Err(e) => self.say(error_line(&format!(
                    "{e}; the BIRD configuration in force stays"
                ))),
            },
            None => {
                if self.start(&config) {
                    info!("BGP is on: {summary}");
                }
            }
        }
    }

    /// Starts BIRD on `config`, unless too soon after a failed attempt; whether it started.
    fn start(&mut self, config: &str) -> bool {
        if Instant::now() < self.next_start {
            return false;
        }
        let settings = self.settings();
        match tokio::task::block_in_place(|| Bird::start(settings, config)) {
            Ok(bird) => {
                self.bird = Some(bird);
                self.start_delay = Duration::ZERO;
                self.said = None;
                true
            }
            Err(e) => {
                self.start_delay = (self.start_delay * 2)
                    .max(Duration::from_secs(1))
                    .min(MAX_RESTART_DELAY);
                self.next_start = Instant::now() + self.start_delay;
                self.say(error_line(&format!(
                    "{e}; trying again in {:?}",
                    self.start_delay
                )));
                false
            }
        }
    }

    /// Starts BIRD again if it died (or could not be started yet).
    pub fn supervise(&mut self) {
        if let Some(bird) = &mut self.bird
            && !tokio::task::block_in_place(|| bird.is_running())
        {
            warn!(
                pid = bird.pid(),
                "BIRD exited; starting it again with graceful restart (its peers keep its \
                 routes meanwhile, and so does the kernel here)"
            );
            self.bird = None;
        }
        if self.bird.is_none()
            && let Some(config) = self.wanted.clone()
            && self.start(&config)
        {
            info!("BIRD running again");
        }
    }

    /// Stops BIRD, if it runs, and removes the routes it installed here.
    async fn stop_bird(&mut self) {
        let Some(bird) = self.bird.take() else {
            return;
        };
        tokio::task::block_in_place(|| bird.stop());
        match Netlink::connect() {
            Ok(netlink) => match netlink.del_routes_of_protocol(BIRD_ROUTE_PROTOCOL).await {
                Ok(removed) => info!(removed, "routes BIRD installed removed"),
                Err(e) => warn!("removing the routes BIRD installed: {e}"),
            },
            Err(e) => warn!("removing the routes BIRD installed: {e}"),
        }
    }

    /// When the agent exits: BIRD is stopped (`stop`) or left running for the next agent.
    pub async fn finish(mut self, stop: bool) {
        if stop {
            self.stop_bird().await;
        } else if let Some(bird) = self.bird.take() {
            bird.release();
        }
    }

    /// BIRD's pid, while it runs.
    pub fn bird_pid(&self) -> Option<u32> {
        self.bird.as_ref().map(Bird::pid)
    }
}

/// How loud a line about BGP's state is.
enum Level {
    Info,
    Error,
}

/// A line about BGP's state.
struct Said {
    level: Level,
    text: String,
}

fn error_line(text: &str) -> Said {
    Said {
        level: Level::Error,
        text: text.to_owned(),
    }
}

/// One line about a model: its sessions and what it announces.
fn summary(model: &model::BgpModel) -> String {
    let sessions: Vec<&str> = model.sessions().map(|s| s.name.as_str()).collect();
    let announced: Vec<String> = model
        .ipv4
        .announced()
        .into_iter()
        .chain(model.ipv6.announced())
        .map(|net| net.to_string())
        .collect();
    format!(
        "router id {}, AS {}, {} session(s) [{}], announcing [{}]",
        model.router_id,
        model.as_number,
        sessions.len(),
        sessions.join(", "),
        announced.join(", ")
    )
}
