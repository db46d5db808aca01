//! `calico-loader ipam show|assign|release|check`: calicoctl's `ipam` commands, and `assign`
//! (what the CNI plugin will do), against either datastore, with the datastore flags of the
//! other commands.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use ipnet::IpNet;

use super::{agent::node_name, resources::DatastoreArgs};
use crate::{
    datastore::{
        DatastoreConfig, Kind, Store,
        resources::{IpPool, IpPoolAllowedUse, Node, WorkloadEndpoint},
    },
    ipam::{
        AnyIpamStore, AssignRequest, EtcdIpamStore, Family, Ipam, LocalIpamStore,
        block::AllocationBlock,
        check::{EndpointAddresses, OPENSTACK_ORCHESTRATOR, check},
    },
};

/// `ipam`'s subcommands.
#[derive(Subcommand)]
pub enum IpamCommand {
    /// The pools' use, as calicoctl's `ipam show`: per pool (and with --show-blocks, per
    /// block) the addresses in total, in use and free.
    Show(ShowArgs),
    /// Assign addresses to a handle, printing each, one per line (IPv4 first).
    Assign(AssignArgs),
    /// Release the addresses of a handle, or one address.
    Release(ReleaseArgs),
    /// Report leaks and inconsistencies between blocks, handles and workload endpoints.
    Check(CheckArgs),
}

/// `ipam`'s arguments.
#[derive(Args)]
pub struct IpamArgs {
    #[command(subcommand)]
    pub command: IpamCommand,
}

#[derive(Args)]
pub struct ShowArgs {
    /// Show each block under its pool.
    #[arg(long)]
    pub show_blocks: bool,
    #[command(flatten)]
    pub datastore: DatastoreArgs,
}

#[derive(Args)]
pub struct AssignArgs {
    /// The handle the addresses belong to (a container's id, for example).
    #[arg(long)]
    pub handle: String,
    /// Assign this address (instead of any free ones).
    #[arg(long, conflicts_with_all = ["pool", "ipv4", "ipv6"])]
    pub ip: Option<IpAddr>,
    /// The node asking; defaults to NODENAME, else the host name.
    #[arg(long, env = "NODENAME")]
    pub node: Option<String>,
    /// Take from this pool (its CIDR); may be repeated.
    #[arg(long, value_name = "CIDR")]
    pub pool: Vec<IpNet>,
    /// How many IPv4 addresses (default 1).
    #[arg(long, value_name = "N")]
    pub ipv4: Option<usize>,
    /// How many IPv6 addresses (default 1 if an enabled IPv6 pool exists, else 0).
    #[arg(long, value_name = "N")]
    pub ipv6: Option<usize>,
    #[command(flatten)]
    pub datastore: DatastoreArgs,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct ReleaseTarget {
    /// Release every address of this handle.
    #[arg(long)]
    pub handle: Option<String>,
    /// Release this address.
    #[arg(long)]
    pub ip: Option<IpAddr>,
}

#[derive(Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub target: ReleaseTarget,
    #[command(flatten)]
    pub datastore: DatastoreArgs,
}

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub datastore: DatastoreArgs,
}

/// Runs an `ipam` subcommand.
///
/// # Errors
///
/// The datastore failing, or the command's own refusal (see each).
pub async fn run(args: IpamArgs) -> anyhow::Result<()> {
    match args.command {
        IpamCommand::Show(args) => show(&args).await,
        IpamCommand::Assign(args) => assign(args).await,
        IpamCommand::Release(args) => release(&args).await,
        IpamCommand::Check(args) => run_check(&args).await,
    }
}

/// The allocator over the datastore `config` names, with its pools and nodes' labels.
///
/// # Errors
///
/// The datastore cannot be opened or read.
pub async fn open(config: &DatastoreConfig) -> anyhow::Result<Ipam<AnyIpamStore>> {
    let mut store = Store::open(config).await?;
    let pools = typed::<IpPool>(&mut store, Kind::IpPool).await?;
    let nodes = typed::<Node>(&mut store, Kind::Node).await?;
    let labels = nodes
        .into_iter()
        .map(|n| (n.metadata.name.clone(), n.metadata.labels.clone()))
        .collect();
    let ipam_store = match config {
        DatastoreConfig::Local(dir) => AnyIpamStore::Local(LocalIpamStore::new(dir)),
        DatastoreConfig::Etcd(etcd) => {
            AnyIpamStore::Etcd(Box::new(EtcdIpamStore::connect(etcd).await?))
        }
    };
    Ok(Ipam::new(ipam_store, pools, labels))
}

/// Every resource of a typed kind; what does not read is reported on stderr.
async fn typed<K: crate::datastore::resources::Registered + Clone>(
    store: &mut Store,
    kind: Kind,
) -> anyhow::Result<Vec<K>> {
    let (resources, errors) = store.list(kind, None).await?;
    for e in errors {
        if e.resource
            .as_deref()
            .is_some_and(|r| r.starts_with(&format!("{kind} ")))
        {
            eprintln!("warning: not used: {e}");
        }
    }
    Ok(resources
        .iter()
        .filter_map(|r| r.resource.typed::<K>().cloned())
        .collect())
}

async fn assign(args: AssignArgs) -> anyhow::Result<()> {
    let node = node_name(args.node)?;
    let mut ipam = open(&args.datastore.config()).await?;
    if let Some(ip) = args.ip {
        ipam.assign_ip(ip, &args.handle, &node, &BTreeMap::new())
            .await?;
        println!("{ip}");
        return Ok(());
    }
    let has_v6_pool = ipam.pools().iter().any(|p| {
        matches!(p.spec.cidr, IpNet::V6(_))
            && !p.spec.disabled
            && p.spec.allows(IpPoolAllowedUse::Workload)
            && (args.pool.is_empty() || args.pool.contains(&p.spec.cidr))
    });
    let has_v4_pool_asked = args.pool.iter().any(|p| matches!(p, IpNet::V4(_)));
    let num_v4 = args
        .ipv4
        .unwrap_or(if args.pool.is_empty() || has_v4_pool_asked {
            1
        } else {
            0
        });
    let num_v6 = args.ipv6.unwrap_or(usize::from(has_v6_pool));
    if num_v4 == 0 && num_v6 == 0 {
        bail!("nothing to assign: --ipv4 and --ipv6 are both 0");
    }
    let assigned = ipam
        .auto_assign(&AssignRequest {
            handle: args.handle,
            node,
            num_v4,
            num_v6,
            pools: args.pool,
            attrs: BTreeMap::new(),
        })
        .await?;
    for ip in assigned.v4.iter().chain(&assigned.v6) {
        println!("{ip}");
    }
    Ok(())
}

async fn release(args: &ReleaseArgs) -> anyhow::Result<()> {
    let mut ipam = open(&args.datastore.config()).await?;
    match (&args.target.handle, args.target.ip) {
        (Some(handle), _) => {
            let released = ipam.release_by_handle(handle).await?;
            if released.is_empty() {
                bail!("handle {handle} holds no addresses");
            }
            for ip in released {
                println!("released {ip}");
            }
        }
        (None, Some(ip)) => {
            let not_allocated = ipam.release_ips(&[ip]).await?;
            if !not_allocated.is_empty() {
                bail!("{ip} is not assigned");
            }
            println!("released {ip}");
        }
        (None, None) => bail!("release needs --handle or --ip"),
    }
    Ok(())
}

async fn run_check(args: &CheckArgs) -> anyhow::Result<()> {
    let config = args.datastore.config();
    let mut ipam = open(&config).await?;
    let mut store = Store::open(&config).await?;
    let endpoints: Vec<EndpointAddresses> =
        typed::<WorkloadEndpoint>(&mut store, Kind::WorkloadEndpoint)
            .await?
            .into_iter()
            .map(|w| EndpointAddresses {
                name: format!("{}/{}", w.namespace(), w.name()),
                addresses: w.spec.ip_networks.clone(),
                outside_ipam: w.spec.orchestrator.as_deref() == Some(OPENSTACK_ORCHESTRATOR),
            })
            .collect();
    let pools: Vec<IpNet> = ipam
        .pools()
        .iter()
        .filter(|p| !p.spec.disabled)
        .map(|p| p.spec.cidr)
        .collect();
    let blocks = ipam.blocks().await.context("reading the IPAM blocks")?;
    let handles = ipam.handles().await.context("reading the IPAM handles")?;
    let report = check(&blocks, &handles, &endpoints, &pools);
    print!("{}", report.text);
    if report.problems > 0 {
        bail!(
            "IPAM check found {} problem(s), listed above",
            report.problems
        );
    }
    Ok(())
}

async fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let mut ipam = open(&args.datastore.config()).await?;
    let blocks = ipam.blocks().await?;
    print!(
        "{}",
        utilization_table(ipam.pools(), &blocks, args.show_blocks)
    );
    Ok(())
}

/// calicoctl's `ipam show` table: a row per pool (its size, and the addresses in use in its
/// blocks), with `show_blocks` a row per block after it; blocks in no pool are shown (with
/// `show_blocks`) after the pools, as calicoctl's orphaned blocks.
pub fn utilization_table(
    pools: &[IpPool],
    blocks: &[AllocationBlock],
    show_blocks: bool,
) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    let mut placed = vec![false; blocks.len()];
    let row = |grouping: &str, cidr: String, in_use: f64, capacity: f64| {
        let percent = |n: f64| {
            if capacity > 0.0 {
                100.0 * n / capacity
            } else {
                0.0
            }
        };
        [
            grouping.to_owned(),
            cidr,
            format_g5(capacity),
            format!("{} ({:.0}%)", format_g5(in_use), percent(in_use)),
            format!(
                "{} ({:.0}%)",
                format_g5(capacity - in_use),
                percent(capacity - in_use)
            ),
        ]
    };
    let block_row = |b: &AllocationBlock| {
        #[allow(clippy::cast_precision_loss)] // block sizes are at most 4096
        let (len, used) = (b.len() as f64, (b.len() - b.free()) as f64);
        row("Block", b.cidr.to_string(), used, len)
    };
    for pool in pools {
        let mut block_rows = Vec::new();
        let mut in_use = 0.0;
        for (i, block) in blocks.iter().enumerate() {
            if placed[i] || !overlaps(pool.spec.cidr, block.cidr) {
                continue;
            }
            placed[i] = true;
            #[allow(clippy::cast_precision_loss)]
            {
                in_use += (block.len() - block.free()) as f64;
            }
            block_rows.push(block_row(block));
        }
        let bits = i32::from(pool.spec.cidr.max_prefix_len() - pool.spec.cidr.prefix_len());
        rows.push(row(
            "IP Pool",
            pool.spec.cidr.to_string(),
            in_use,
            2f64.powi(bits),
        ));
        if show_blocks {
            rows.extend(block_rows);
        }
    }
    if show_blocks {
        for (i, block) in blocks.iter().enumerate() {
            if !placed[i] {
                rows.push(block_row(block));
            }
        }
    }
    render_table(
        &["GROUPING", "CIDR", "IPS TOTAL", "IPS IN USE", "IPS FREE"],
        &rows,
    )
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    Family::of_net(a) == Family::of_net(b) && (a.contains(&b.network()) || b.contains(&a.network()))
}

/// Go's `%.5g` for the counts calicoctl prints: integers below 100000 as they are, larger ones
/// as `2.8823e+17`.
fn format_g5(value: f64) -> String {
    if value.abs() < 100_000.0 {
        return format!("{value:.0}");
    }
    let text = format!("{value:.4e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.abs())
}

/// A table with borders, as calicoctl's tablewriter draws them.
fn render_table(headers: &[&str], rows: &[[String; 5]]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([headers[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let mut out = line.clone();
    let header: String = headers
        .iter()
        .zip(&widths)
        .map(|(h, w)| format!("| {h:^w$} "))
        .collect::<String>();
    out.push_str(&header);
    out.push_str("|\n");
    out.push_str(&line);
    for r in rows {
        let cells: String = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("| {c:<w$} "))
            .collect();
        out.push_str(&cells);
        out.push_str("|\n");
    }
    out.push_str(&line);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_print_as_go_does() {
        assert_eq!(format_g5(64.0), "64");
        assert_eq!(format_g5(65536.0), "65536");
        assert_eq!(format_g5(100_000.0), "1e+05");
        assert_eq!(format_g5(2f64.powi(58)), "2.8823e+17");
    }
}
