//! The BGP phase of `cargo xtask bench`: routing between hosts, measured on a cluster of two
//! hosts (each a namespace with its own agent and BIRD, one etcd, one fabric), then the BIRD
//! configuration of a large cluster, rendered alone.
//!
//! - `cluster`: the fabric, etcd, hosts, agents, workloads.
//! - `convergence`: a new workload in an existing block, a new block, a host withdrawn: the
//!   time from the datastore write to what the other host sees.
//! - `scale`: a top-of-rack router (GoBGP) announcing N prefixes: the time until they are in
//!   the kernel and answer, the memory of the agent and BIRD.
//! - the render figures here: `calico-loader bird-bench` (build the model and render BIRD's
//!   configuration for one node of N, with the mesh and with route reflectors; `bird -p -c`).

mod cluster;
mod convergence;
mod scale;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use testbed::{Cmd, TempDir, output, signals};

use self::{cluster::Cluster, convergence::Convergence, scale::ScaleResult};
use super::markdown::render_table;

/// What the phase does, resolved from the bench's arguments.
#[derive(Clone, Debug, Serialize)]
pub struct BgpPlan {
    /// Repetitions of each convergence figure.
    pub repetitions: u32,
    /// Prefix counts the ToR announces, in turn.
    pub prefixes: Vec<u32>,
    /// Nodes of the rendered cluster, and builds per figure.
    pub render_nodes: u32,
    pub render_repetitions: u32,
    /// Route reflectors of the rendered cluster.
    pub render_reflectors: u32,
}

impl BgpPlan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                repetitions: 1,
                prefixes: vec![1_000],
                render_nodes: 1_000,
                render_repetitions: 1,
                render_reflectors: 3,
            }
        } else {
            Self {
                repetitions: 5,
                prefixes: vec![10_000, 100_000],
                render_nodes: 1_000,
                render_repetitions: 5,
                render_reflectors: 3,
            }
        }
    }
}

/// Every figure of the phase.
#[derive(Debug, Serialize)]
pub struct BgpFigures {
    /// `release` (a full run) or `debug` (`--quick`).
    pub agent_build: &'static str,
    pub hosts: usize,
    pub convergence: Convergence,
    pub scale: Vec<ScaleResult>,
    /// `calico-loader bird-bench`'s lines.
    pub render: Vec<serde_json::Value>,
}

/// Internal: the cluster part of the phase, run as root (`xtask bench-bgp-cluster`).
#[derive(clap::Args, Debug)]
pub struct BgpClusterArgs {
    /// The agent binary.
    #[arg(long)]
    pub loader: PathBuf,
    /// Repetitions of each convergence figure.
    #[arg(long)]
    pub repetitions: u32,
    /// Prefix counts the ToR announces, in turn.
    #[arg(long, value_delimiter = ',')]
    pub prefixes: Vec<u32>,
}

/// What `bench-bgp-cluster` prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterFigures {
    pub convergence: Convergence,
    pub scale: Vec<ScaleResult>,
}

/// `xtask bench-bgp-cluster`: builds the cluster, measures convergence and scale, tears it
/// down (also on failure and on a signal), and prints the figures as JSON on stdout.
pub fn cluster_phase(args: &BgpClusterArgs) -> Result<()> {
    signals::catch_signals(&[libc::SIGTERM, libc::SIGHUP]);
    crate::root::mount_bpffs()?;
    let pid = std::process::id();
    let outcome = (|| -> Result<ClusterFigures> {
        let mut cluster = Cluster::create(&args.loader, 2)?;
        convergence::prepare(&mut cluster).context("bringing up the cluster")?;
        let convergence = convergence::measure(&mut cluster, args.repetitions)?;
        let tor = scale::Tor::start(&mut cluster).context("the top-of-rack router")?;
        let scale = scale::measure(&cluster, &tor, &args.prefixes).context("scale")?;
        Ok(ClusterFigures { convergence, scale })
    })();
    crate::topology::check_nothing_left("cbgp-", pid, None);
    for i in 1..=2 {
        let pins = PathBuf::from(format!("/sys/fs/bpf/calico-bench-bgp-{pid}-{i}"));
        if pins.exists() {
            output::warn(format!("pins left behind: rm -rf {}", pins.display()));
        }
    }
    println!("{}", serde_json::to_string(&outcome?)?);
    Ok(())
}

/// Runs the cluster part as root (`sudo -E` when not root), then the render.
pub fn measure(plan: &BgpPlan, loader: &Path, release: bool) -> Result<BgpFigures> {
    output::step("BGP: convergence and scale on a cluster of two hosts");
    output::explain(format!(
        "Two hosts (namespaces cbgp-host1/2-<pid>) on a fabric bridge, one etcd on the bridge, \
         an agent and its BIRD on each. Convergence, {} repetition(s) each: a new workload in \
         host-2's block, a new block on host-2, host-2's Node deleted, from the write to what \
         host-1 sees. Scale: a GoBGP top-of-rack router announces {} /32s; host-1's kernel, a \
         reply from the last prefix, the agent's and BIRD's memory.",
        plan.repetitions,
        plan.prefixes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" then ")
    ));
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let prefixes: Vec<String> = plan.prefixes.iter().map(ToString::to_string).collect();
    let stdout = Cmd::new(exe)
        .arg("bench-bgp-cluster")
        .arg("--loader")
        .arg(loader)
        .args(["--repetitions", &plan.repetitions.to_string()])
        .args(["--prefixes", &prefixes.join(",")])
        .privileged()
        .output()
        .context("the BGP cluster")?;
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("bench-bgp-cluster printed no figures: {stdout:?}"))?;
    let cluster: ClusterFigures = serde_json::from_str(last)
        .with_context(|| format!("bench-bgp-cluster printed {last:?}"))?;
    let render = render(plan, loader)?;
    Ok(BgpFigures {
        agent_build: if release { "release" } else { "debug" },
        hosts: 2,
        convergence: cluster.convergence,
        scale: cluster.scale,
        render,
    })
}

/// `calico-loader bird-bench`: its JSON lines.
fn render(plan: &BgpPlan, loader: &Path) -> Result<Vec<serde_json::Value>> {
    output::step(format!(
        "BGP: BIRD's configuration for one node of {} (mesh; {} route reflectors)",
        plan.render_nodes, plan.render_reflectors
    ));
    let dir = TempDir::create(
        std::env::temp_dir().join(format!("calico-bench-bird-{}", std::process::id())),
    )?;
    let output = Cmd::new(loader)
        .args([
            "bird-bench",
            "--nodes",
            &plan.render_nodes.to_string(),
            "--reflectors",
            &plan.render_reflectors.to_string(),
            "--repetitions",
            &plan.render_repetitions.to_string(),
            "--dir",
        ])
        .arg(dir.path())
        .output()?;
    let rows: Vec<serde_json::Value> = output
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).with_context(|| format!("bird-bench {line:?}")))
        .collect::<Result<_>>()?;
    if rows.len() != 3 {
        bail!("bird-bench printed {} results, not 3", rows.len());
    }
    Ok(rows)
}

/// The phase's tables.
pub fn print(figures: &BgpFigures) {
    let c = &figures.convergence;
    println!(
        "BGP convergence ({} agents, {} hosts, one etcd; median (min–max) of {} repetition(s); \
         host-1 sends an echo request every {:.0} ms, each a new flow):",
        figures.agent_build, figures.hosts, c.repetitions, c.probe_interval_ms
    );
    println!();
    let row = |name: &str, f: &convergence::Figure| {
        vec![
            name.to_owned(),
            f.from.to_owned(),
            f.until.to_owned(),
            format!("{:.0} ({:.0}–{:.0})", f.median_ms, f.min_ms, f.max_ms),
            format!("{:.0}", super::control::median(&f.write_ms)),
        ]
    };
    let rows = vec![
        row("new workload, existing block", &c.new_workload),
        row("new block", &c.new_block),
        row("host withdrawn", &c.host_withdrawn),
    ];
    let header: Vec<String> = ["figure", "from", "until", "ms", "the write itself, ms"]
        .map(String::from)
        .to_vec();
    print!(
        "{}",
        render_table(&header, &rows, &[false, false, false, true, true])
    );
    println!();

    let kib = |v: Option<u64>| v.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0));
    println!(
        "BGP scale (a GoBGP top-of-rack router announces N /32s to both hosts; host-1's figures, \
         ms from the start of `gobgp mrt inject`):"
    );
    println!();
    let header: Vec<String> = [
        "prefixes",
        "inject ms",
        "all in kernel ms",
        "one count ms",
        "last prefix answers ms",
        "withdrawn ms",
        "agent RSS MiB before → after",
        "BIRD RSS MiB before → after (peak)",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = figures
        .scale
        .iter()
        .map(|s| {
            vec![
                s.prefixes.to_string(),
                format!("{:.0}", s.inject_ms),
                format!("{:.0}", s.in_kernel_ms),
                format!("{:.0}", s.count_ms),
                format!("{:.0}", s.usable_ms),
                format!("{:.0}", s.withdrawn_ms),
                format!(
                    "{} → {}",
                    kib(s.agent_rss_kib_before),
                    kib(s.agent_rss_kib_after)
                ),
                format!(
                    "{} → {} ({})",
                    kib(s.bird_rss_kib_before),
                    kib(s.bird_rss_kib_after),
                    kib(s.bird_hwm_kib)
                ),
            ]
        })
        .collect();
    print!("{}", render_table(&header, &rows, &[true; 8]));
    println!();

    println!("BIRD configuration for one node (calico-loader bird-bench; median of the builds):");
    println!();
    let header: Vec<String> = [
        "nodes",
        "topology",
        "node",
        "sessions",
        "build ms",
        "render ms",
        "config KiB",
        "bird -p -c ms",
    ]
    .map(String::from)
    .to_vec();
    let num = |v: &serde_json::Value| v.as_f64().map_or("?".into(), |x| format!("{x:.1}"));
    let rows: Vec<Vec<String>> = figures
        .render
        .iter()
        .map(|r| {
            vec![
                r["nodes"].to_string(),
                r["topology"].as_str().unwrap_or("?").to_owned(),
                r["role"].as_str().unwrap_or("?").to_owned(),
                r["sessions"].to_string(),
                num(&r["build_ms"]),
                num(&r["render_ms"]),
                r["config_bytes"]
                    .as_f64()
                    .map_or("?".into(), |b| format!("{:.0}", b / 1024.0)),
                num(&r["bird_parse_ms"]),
            ]
        })
        .collect();
    print!(
        "{}",
        render_table(
            &header,
            &rows,
            &[true, false, false, true, true, true, true, true]
        )
    );
    println!();
}
