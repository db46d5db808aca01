//! BIRD 2's configuration for a [`BgpModel`]: one file for IPv4 and IPv6, in the shape of
//! Calico's templates (`confd/etc/calico/confd/templates/bird*.cfg.template`), written in BIRD 2's
//! syntax (each protocol's routes go through an `ipv4 { ... }` or `ipv6 { ... }` channel).
//!
//! The file, top to bottom:
//!
//! - `router id`: the node's IPv4 address; `log stderr all` (the agent keeps BIRD's messages);
//! - `protocol device`, and `protocol direct` on every interface except workload (`cali*`),
//!   `kube-ipvs*` and `ignoredInterfaces` ones (for resolving next hops);
//! - per family:
//!   - `protocol static static4|6`: a blackhole for each of this node's blocks and service
//!     ranges, and the host routes to BGP peers through their `reachableBy` gateway;
//!   - `calico_aggr_v4|6()`: a block is announced whole; the workload routes inside it
//!     (learned from the kernel) are not announced one by one;
//!   - `calico_export_to_bgp_peers_v4|6()`: what peers get (see
//!     [`FamilyRouting::announced`]);
//!   - `calico_kernel_learn_v4|6`: routes learned from the kernel inside the pools (local
//!     workload routes) win over BGP routes to the same prefix, so a peer announcing a local
//!     workload's address never displaces its route;
//!   - `calico_kernel_programming_v4|6`: what is installed in the kernel: everything but
//!     interface routes (BIRD 2 would duplicate them), service ranges and encapsulated pools'
//!     routes;
//!   - `protocol kernel kernel4|6`: `learn`, `persist`, `scan time 2`, `graceful restart`,
//!     `merge paths on` (ECMP);
//! - `template bgp bgp_template`: graceful restart and Calico's short connect and retry
//!   timers;
//! - one `protocol bgp` per session, named as the model names it (`Mesh_<ip>`, `Global_<ip>`,
//!   `Node_<ip>`).
//!
//! The same model renders the same text: every list is sorted by the model.

use std::{fmt::Write as _, net::IpAddr, path::Path, process::Command};

use ipnet::IpNet;

use super::{
    BgpError,
    model::{
        BgpModel, BgpSession, BirdDebug, Encapsulation, Family, FamilyRouting,
        LOCAL_ROUTE_PREFERENCE, NextHop, SessionKind, TtlSecurity,
    },
};

/// The interfaces BIRD's direct protocol never reads (Calico's): workload interfaces and
/// kube-proxy's IPVS dummy interface.
pub const EXCLUDED_INTERFACES: [&str; 2] = ["cali*", "kube-ipvs*"];

/// The program that checks a configuration (`bird -p -c FILE`).
pub const BIRD: &str = "bird";

/// The BIRD 2 configuration of `model`.
pub fn render(model: &BgpModel) -> String {
    let mut out = Config::default();
    out.line(&format!(
        "# BIRD 2 configuration of node {}, written by calico-ebpf from the datastore.",
        model.node_name
    ));
    out.line("# Do not edit: the agent rewrites it.");
    out.blank();
    out.line(&format!("router id {};", model.router_id));
    out.line("log stderr all;  # the agent runs BIRD and keeps its messages");
    out.blank();
    render_interfaces(&mut out, model);
    for family in Family::ALL {
        render_family(&mut out, model.family(family));
    }
    render_template(&mut out, model);
    for session in model.sessions() {
        render_session(&mut out, model, session);
    }
    out.text
}

/// Has BIRD parse the configuration at `path` (`bird -p -c`), without starting anything.
pub fn check(path: &Path) -> Result<(), BgpError> {
    let output = Command::new(BIRD)
        .arg("-p")
        .arg("-c")
        .arg(path)
        .output()
        .map_err(|e| BgpError::BirdMissing {
            program: BIRD.to_owned(),
            message: e.to_string(),
        })?;
    if output.status.success() {
        return Ok(());
    }
    let mut message = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if message.is_empty() {
        message = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    if message.is_empty() {
        message = format!("bird exited with {}", output.status);
    }
    Err(BgpError::Rejected {
        path: path.to_owned(),
        message,
    })
}

/// The text being written, with two-space indentation per level.
#[derive(Default)]
struct Config {
    text: String,
    depth: usize,
}

impl Config {
    fn line(&mut self, line: &str) {
        for _ in 0..self.depth {
            self.text.push_str("  ");
        }
        self.text.push_str(line);
        self.text.push('\n');
    }

    fn blank(&mut self) {
        self.text.push('\n');
    }

    /// `header {`, the body one level in, then `}` (with `closing` after it, like `;`).
    fn block(&mut self, header: &str, closing: &str, body: impl FnOnce(&mut Config)) {
        self.line(&format!("{header} {{"));
        self.depth += 1;
        body(self);
        self.depth -= 1;
        self.line(&format!("}}{closing}"));
    }
}

fn debug_line(debug: BirdDebug) -> Option<&'static str> {
    match debug {
        BirdDebug::None => None,
        BirdDebug::States => Some("debug { states };"),
        BirdDebug::All => Some("debug all;"),
    }
}

fn render_interfaces(out: &mut Config, model: &BgpModel) {
    out.line("# Watch interfaces come and go.");
    out.block("protocol device", "", |out| {
        if let Some(debug) = debug_line(model.debug) {
            out.line(debug);
        }
        out.line("scan time 2;");
    });
    out.blank();
    let patterns: Vec<String> = model
        .ignored_interfaces
        .iter()
        .map(String::as_str)
        .chain(EXCLUDED_INTERFACES)
        .map(|name| format!("-\"{name}\""))
        .chain(std::iter::once("\"*\"".to_owned()))
        .collect();
    out.line("# The host's interface routes (to resolve next hops), workload interfaces excluded.");
    out.block("protocol direct", "", |out| {
        if let Some(debug) = debug_line(model.debug) {
            out.line(debug);
        }
        out.line("ipv4;");
        out.line("ipv6;");
        out.line(&format!("interface {};", patterns.join(", ")));
    });
    out.blank();
}

fn render_family(out: &mut Config, routing: &FamilyRouting) {
    let n = routing.family.number();
    out.line(&format!(
        "# ---------------------------------------------------------------- {}",
        routing.family
    ));
    out.blank();
    out.line("# This node's blocks and the service ranges are blackholed here and announced.");
    out.block(&format!("protocol static static{n}"), "", |out| {
        out.line(&format!("ipv{n};"));
        for block in &routing.blocks {
            out.line(&format!("route {block} blackhole;  # block of this node"));
        }
        for range in &routing.service_ranges {
            out.line(&format!("route {range} blackhole;  # service range"));
        }
        for (peer, gateway) in &routing.peer_routes {
            out.line(&format!(
                "route {peer} via {gateway};  # BGP peer's reachableBy"
            ));
        }
    });
    out.blank();

    out.line("# A block is announced whole, not the workload routes inside it.");
    out.block(&format!("function calico_aggr_v{n}()"), "", |out| {
        for block in &routing.blocks {
            out.line(&format!("if ( net = {block} ) then {{ accept; }}"));
            out.line(&format!("if ( net ~ {block} ) then {{ reject; }}"));
        }
    });
    out.blank();

    out.line("# What this node announces to its BGP peers.");
    out.block(
        &format!("function calico_export_to_bgp_peers_v{n}()"),
        "",
        |out| {
            for pool in routing.pools.iter().filter(|p| p.disable_bgp_export) {
                out.line(&format!(
                    "if ( net ~ {} ) then {{ reject; }}  # pool with BGP export disabled",
                    pool.cidr
                ));
            }
            out.line(&format!("calico_aggr_v{n}();"));
            for range in &routing.service_ranges {
                out.line(&format!(
                    "if ( net ~ {range} ) then {{ accept; }}  # service range"
                ));
            }
            for floating in &routing.floating_ips {
                out.line(&format!(
                    "if ( net = {floating} ) then {{ accept; }}  # floating IP of a workload here"
                ));
            }
            if !routing.borrowed.is_empty() {
                out.line(&format!(
                    "# Borrowed addresses, learned from the kernel, announced by their pool: {}",
                    join(&routing.borrowed)
                ));
            }
            for pool in routing.pools.iter().filter(|p| !p.disable_bgp_export) {
                out.line(&format!(
                    "if ( net ~ {} ) then {{ accept; }}  # pool",
                    pool.cidr
                ));
            }
        },
    );
    out.blank();

    out.line("# Local workload routes win over BGP routes to the same prefix.");
    out.block(&format!("filter calico_kernel_learn_v{n}"), "", |out| {
        for pool in &routing.pools {
            out.line(&format!(
                "if ( net ~ {} ) then {{ preference = {LOCAL_ROUTE_PREFERENCE}; }}",
                pool.cidr
            ));
        }
        out.line("accept;");
    });
    out.blank();

    out.line("# What BIRD installs in the kernel.");
    out.block(
        &format!("filter calico_kernel_programming_v{n}"),
        "",
        |out| {
            out.line(
                "if ( source = RTS_DEVICE ) then { reject; }  # interface routes: the kernel \
                 has its own",
            );
            for range in &routing.rejected_ranges {
                out.line(&format!(
                    "if ( net ~ {range} ) then {{ reject; }}  # service range: announced only"
                ));
            }
            for pool in &routing.pools {
                let why = match pool.encapsulation {
                    Encapsulation::None => continue,
                    Encapsulation::Vxlan => "VXLAN pool: BIRD does not install its routes",
                    Encapsulation::Ipip => "IPIP pool: BIRD 2 cannot install tunnel routes",
                };
                out.line(&format!(
                    "if ( net ~ {} ) then {{ reject; }}  # {why}",
                    pool.cidr
                ));
            }
            out.line("accept;");
        },
    );
    out.blank();

    out.line("# Routes between BIRD and the kernel.");
    out.block(&format!("protocol kernel kernel{n}"), "", |out| {
        out.line("learn;             # learn the routes others add (the workload routes)");
        out.line("persist;           # leave routes in place when BIRD stops");
        out.line("scan time 2;");
        out.line("graceful restart;");
        out.line("merge paths on;    # ECMP");
        out.block(&format!("ipv{n}"), ";", |out| {
            out.line(&format!("import filter calico_kernel_learn_v{n};"));
            out.line(&format!("export filter calico_kernel_programming_v{n};"));
        });
    });
    out.blank();
}

fn render_template(out: &mut Config, model: &BgpModel) {
    out.line("# ---------------------------------------------------------------- BGP sessions");
    out.blank();
    out.block("template bgp bgp_template", "", |out| {
        if let Some(debug) = debug_line(model.debug) {
            out.line(debug);
        }
        out.line("description \"Connection to BGP peer\";");
        out.line("graceful restart;");
        out.line("connect delay time 2;");
        out.line("connect retry time 5;");
        out.line("error wait time 5,30;");
    });
    if model.sessions().next().is_none() {
        out.blank();
        out.line("# No BGP peers configured for this node.");
    }
}

fn render_session(out: &mut Config, model: &BgpModel, session: &BgpSession) {
    out.blank();
    let n = session.family().number();
    out.block(
        &format!("protocol bgp {} from bgp_template", session.name),
        "",
        |out| {
            out.line(&format!("description \"{}\";", description(session)));
            let mut local = String::from("local");
            if let Some(source) = session.source_address {
                let _ = write!(local, " {source}");
            }
            if let Some(port) = model.listen_port {
                let _ = write!(local, " port {port}");
            }
            let _ = write!(local, " as {};", session.local_as);
            out.line(&local);
            out.line(&neighbor(
                session.peer_ip,
                session.peer_port,
                session.peer_as,
            ));
            match session.ttl_security {
                None => {}
                Some(TtlSecurity::Off) => {
                    out.line("ttl security off;");
                    out.line("multihop;");
                }
                Some(TtlSecurity::Hops(hops)) => {
                    out.line("ttl security on;");
                    out.line(&format!("multihop {hops};"));
                }
            }
            if session.passive {
                out.line("passive on;");
            }
            if let Some(time) = session.graceful_restart_time {
                out.line(&format!("graceful restart time {time};"));
            }
            if let Some(time) = session.keepalive_time {
                out.line(&format!("keepalive time {time};"));
            }
            if let Some(cluster_id) = session.route_reflector_client {
                out.line("rr client;");
                out.line(&format!("rr cluster id {cluster_id};"));
            }
            if let Some(password) = &session.password {
                out.line(&format!("password \"{}\";", password.expose()));
            }
            if let Some(count) = session.allow_local_as {
                out.line(&format!("allow local as {count};"));
            }
            out.block(&format!("ipv{n}"), ";", |out| {
                out.line("gateway recursive;");
                out.line("add paths on;");
                out.line("import all;");
                out.line(&format!(
                    "export filter {{ calico_export_to_bgp_peers_v{n}(); reject; }};"
                ));
                match session.next_hop {
                    NextHop::Default => {}
                    NextHop::SelfHop => out.line("next hop self;"),
                    NextHop::Keep => out.line("next hop keep;"),
                }
            });
        },
    );
}

/// What `birdc show protocols all` says a session is: `node-to-node mesh with node-2`,
/// `global: BGPPeer tor`, `node specific: BGPPeer rrs (reverse), node rr-1`.
fn description(session: &BgpSession) -> String {
    match (session.kind, &session.peer_node) {
        (SessionKind::Mesh, Some(node)) => format!("node-to-node mesh with {node}"),
        (kind, Some(node)) => format!("{}: {}, node {node}", kind.description(), session.origin),
        (kind, None) => format!("{}: {}", kind.description(), session.origin),
    }
}

fn neighbor(ip: IpAddr, port: Option<u16>, as_number: u32) -> String {
    match port {
        Some(port) => format!("neighbor {ip} port {port} as {as_number};"),
        None => format!("neighbor {ip} as {as_number};"),
    }
}

fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
