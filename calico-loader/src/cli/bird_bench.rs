//! `calico-loader bird-bench` (hidden; `cargo xtask bench` runs it): how long one node takes to
//! build its BGP model ([`bgp::model::build`]) and render its BIRD configuration
//! ([`bgp::bird::render`]) in a cluster of N nodes, with the node-to-node mesh and with route
//! reflectors, and how long BIRD takes to parse the result (`bird -p -c`). Each result is a
//! JSON line on stdout.
//!
//! The cluster is made up here: N nodes with an IPv4 and an IPv6 address each (198.19.0.0/16,
//! 2001:db8:ff::/64), one pool and one block per family. With route reflectors, the mesh is off
//! and the first R nodes are reflectors (cluster id 198.19.255.1, label `route-reflector:
//! true`), every node peering with them through one `BGPPeer` (Calico's documented setup); the
//! figures are given for a reflector (sessions with every node) and for a client (sessions with
//! the reflectors).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use crate::{
    bgp::{self, BgpInput, Encapsulation, NodeFacts, PoolFacts, SystemPasswords},
    datastore::{
        parse_file,
        resources::{BgpConfiguration, BgpPeer, Registered},
    },
};

/// The arguments of `bird-bench`.
#[derive(Args)]
pub struct BirdBenchArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 1000)]
    pub nodes: u32,
    /// Route reflectors in the route-reflector topology.
    #[arg(long, default_value_t = 3)]
    pub reflectors: u32,
    /// Builds and renders per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repetitions: u32,
    /// Where to write the configurations (`<topology>-<role>.conf`), for `bird -p -c`.
    #[arg(long)]
    pub dir: PathBuf,
}

/// One node's figures.
#[derive(Serialize)]
struct RenderResult {
    nodes: u32,
    topology: &'static str,
    role: &'static str,
    node: String,
    /// BGP sessions in the model (both families).
    sessions: usize,
    repetitions: u32,
    /// Medians over the repetitions.
    build_ms: f64,
    render_ms: f64,
    config_bytes: usize,
    config_lines: usize,
    /// `bird -p -c` of the written configuration, once.
    bird_parse_ms: f64,
}

/// `bird-bench`: the mesh, then route reflection (a reflector, a client).
///
/// # Errors
///
/// A model that cannot be built, a file that cannot be written, BIRD refusing a configuration.
pub fn run(args: &BirdBenchArgs) -> anyhow::Result<()> {
    if args.nodes < 2 || args.reflectors == 0 || args.reflectors >= args.nodes {
        bail!("--nodes must be at least 2, and --reflectors between 1 and nodes - 1");
    }
    if args.nodes > 60_000 {
        bail!("--nodes: at most 60,000 (the node addresses are made up in 198.19.0.0/16)");
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    for (topology, role, input) in inputs(args.nodes, args.reflectors)? {
        let result = measure(args, topology, role, &input)
            .with_context(|| format!("{topology}, {role} {}", input.node.name))?;
        println!("{}", serde_json::to_string(&result)?);
    }
    Ok(())
}

/// The three inputs measured: (topology, role, input).
fn inputs(
    count: u32,
    reflectors: u32,
) -> anyhow::Result<[(&'static str, &'static str, BgpInput); 3]> {
    let nodes: Vec<NodeFacts> = (1..=count).map(node).collect();
    let mesh = nodes.clone();
    let mut reflected = nodes;
    for reflector in reflected.iter_mut().take(reflectors as usize) {
        reflector.route_reflector_cluster_id = Some(Ipv4Addr::new(198, 19, 255, 1));
        reflector
            .labels
            .insert("route-reflector".into(), "true".into());
    }
    let reflection = (
        resources::<BgpConfiguration>(
            "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n\
             spec: {nodeToNodeMeshEnabled: false}\n",
        )?,
        resources::<BgpPeer>(
            "apiVersion: projectcalico.org/v3\nkind: BGPPeer\n\
             metadata: {name: peer-with-route-reflectors}\n\
             spec: {nodeSelector: all(), peerSelector: route-reflector == 'true'}\n",
        )?,
    );
    let client = reflectors as usize; // the first node after the reflectors
    Ok([
        ("mesh", "node", input(&mesh, 0, (Vec::new(), Vec::new()))),
        (
            "route-reflectors",
            "reflector",
            input(&reflected, 0, reflection.clone()),
        ),
        (
            "route-reflectors",
            "client",
            input(&reflected, client, reflection),
        ),
    ])
}

/// Node `i` (from 1): `node-<i>`, 198.19.x.y/16 and 2001:db8:ff::i/64.
fn node(i: u32) -> NodeFacts {
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i);
    let v6 = Ipv6Addr::from(
        u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 0)) + u128::from(i),
    );
    NodeFacts {
        name: format!("node-{i:05}"),
        ipv4: Ipv4Net::new(v4, 16).ok(),
        ipv6: Ipv6Net::new(v6, 64).ok(),
        ..NodeFacts::default()
    }
}

/// The resources of kind `K` in `yaml`.
fn resources<K: Registered + Clone>(yaml: &str) -> anyhow::Result<Vec<K>> {
    let parsed = parse_file("bird-bench.yaml", yaml).map_err(|errors| {
        anyhow::anyhow!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )
    })?;
    Ok(parsed
        .iter()
        .filter_map(|r| r.typed::<K>().cloned())
        .collect())
}

/// The input of node `this` (an index into `nodes`): the others, the BGP resources, a pool
/// and a block per family.
fn input(
    nodes: &[NodeFacts],
    this: usize,
    (configurations, peers): (Vec<BgpConfiguration>, Vec<BgpPeer>),
) -> BgpInput {
    let pool = |cidr: &str| PoolFacts {
        cidr: cidr.parse().expect("a valid CIDR"),
        disabled: false,
        disable_bgp_export: false,
        nat_outgoing: false,
        encapsulation: Encapsulation::None,
    };
    let block = |cidr: &str| -> IpNet { cidr.parse().expect("a valid CIDR") };
    BgpInput {
        node: nodes[this].clone(),
        other_nodes: nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != this)
            .map(|(_, n)| n.clone())
            .collect(),
        configurations,
        peers,
        pools: vec![pool("198.18.0.0/16"), pool("2001:db8:1::/48")],
        blocks: vec![block("198.18.0.0/26"), block("2001:db8:1::/122")],
        borrowed: Vec::<IpAddr>::new(),
        floating_ips: Vec::new(),
    }
}

fn measure(
    args: &BirdBenchArgs,
    topology: &'static str,
    role: &'static str,
    input: &BgpInput,
) -> anyhow::Result<RenderResult> {
    let mut builds = Vec::new();
    let mut renders = Vec::new();
    let mut last = None;
    for _ in 0..args.repetitions.max(1) {
        let start = Instant::now();
        let model = bgp::model::build(input, &SystemPasswords)?;
        let built = start.elapsed();
        let text = bgp::bird::render(&model);
        builds.push(built);
        renders.push(start.elapsed() - built);
        last = Some((model, text));
    }
    let (model, text) = last.context("at least one repetition")?;
    let path = args.dir.join(format!("{topology}-{role}.conf"));
    std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    let start = Instant::now();
    bgp::bird::check(&path)?;
    let parse = start.elapsed();
    Ok(RenderResult {
        nodes: args.nodes,
        topology,
        role,
        node: input.node.name.clone(),
        sessions: model.sessions().count(),
        repetitions: args.repetitions.max(1),
        build_ms: median_ms(&builds),
        render_ms: median_ms(&renders),
        config_bytes: text.len(),
        config_lines: text.lines().count(),
        bird_parse_ms: parse.as_secs_f64() * 1e3,
    })
}

fn median_ms(durations: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = durations.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    match ms.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => ms[n / 2],
        n => f64::midpoint(ms[n / 2 - 1], ms[n / 2]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_made_up_cluster_has_the_sessions_of_each_topology() {
        let [mesh, reflector, client] = inputs(10, 3).expect("inputs");
        let sessions = |input: &BgpInput| {
            bgp::model::build(input, &SystemPasswords)
                .expect("model")
                .sessions()
                .count()
        };
        // Both families: a session per other node, or per reflector.
        assert_eq!(sessions(&mesh.2), 18);
        assert_eq!(sessions(&reflector.2), 18);
        assert_eq!(sessions(&client.2), 6);
        assert_eq!(client.2.node.name, "node-00004");
        assert_eq!(
            node(300).ipv4.map(|n| n.addr()),
            Some(Ipv4Addr::new(198, 19, 1, 44))
        );
    }
}
