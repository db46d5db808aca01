//! The dataplane's own counters, beyond Felix's metrics: packets, bytes and drops (by reason)
//! of each endpoint and of the host, the hits of each policy rule, and what became of the drops
//! seen while a drop event listener ran. They are read from the pinned per-CPU maps when
//! Prometheus scrapes, summed over CPUs, so the packet path never does more than it does
//! anyway.

use std::collections::BTreeMap;

use prometheus::{
    core::{Collector, Desc},
    proto::{Counter, LabelPair, Metric, MetricFamily, MetricType},
};
use tracing::debug;

use crate::dataplane::bpffs::PinLayout;

/// Per-endpoint packets, by path.
pub const ENDPOINT_PACKETS: &str = "calico_ebpf_endpoint_packets";
/// Per-endpoint bytes, by path.
pub const ENDPOINT_BYTES: &str = "calico_ebpf_endpoint_bytes";
/// Per-endpoint drops, by reason.
pub const ENDPOINT_DROPS: &str = "calico_ebpf_endpoint_drops";
/// The host's drops, by reason (every endpoint's, and those of interfaces without one).
pub const DROPS: &str = "calico_ebpf_drops";
/// Drops seen while a drop event listener ran, by what became of them.
pub const DROP_EVENTS: &str = "calico_ebpf_drop_events";
/// Conntrack entries the programs created.
pub const CONNTRACK_CREATED: &str = "calico_ebpf_conntrack_created";
/// New flows whose conntrack entry the table could not take (dropped as `conntrack-full`).
pub const CONNTRACK_INSERT_FAILURES: &str = "calico_ebpf_conntrack_insert_failures";
/// Packets decided by each rule.
pub const RULE_PACKETS: &str = "calico_ebpf_rule_hits";
/// Bytes decided by each rule.
pub const RULE_BYTES: &str = "calico_ebpf_rule_bytes";

const ENDPOINT_LABELS: [&str; 3] = ["endpoint", "interface", "path"];
const DROP_LABELS: [&str; 3] = ["endpoint", "interface", "reason"];
const REASON_LABELS: [&str; 1] = ["reason"];
const OUTCOME_LABELS: [&str; 1] = ["outcome"];
const RULE_LABELS: [&str; 6] = ["direction", "kind", "tier", "policy", "index", "action"];

/// Reads the maps pinned under a [`PinLayout`] on each scrape.
pub struct DataplaneCollector {
    pins: PinLayout,
    descs: Vec<Desc>,
}

fn desc(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<Desc> {
    Desc::new(
        name.to_owned(),
        help.to_owned(),
        labels.iter().map(|l| (*l).to_owned()).collect(),
        Default::default(),
    )
}

impl DataplaneCollector {
    /// # Errors
    ///
    /// None in practice: the names are fixed.
    pub fn new(pins: PinLayout) -> prometheus::Result<Self> {
        Ok(Self {
            pins,
            descs: vec![
                desc(
                    ENDPOINT_PACKETS,
                    "Packets of an endpoint, by path (from_workload, to_workload, forwarded, \
                     to_host, forwarded_remote, from_data_interface).",
                    &ENDPOINT_LABELS,
                )?,
                desc(
                    ENDPOINT_BYTES,
                    "Bytes of an endpoint, by path.",
                    &ENDPOINT_LABELS,
                )?,
                desc(
                    ENDPOINT_DROPS,
                    "Packets of an endpoint dropped, by reason.",
                    &DROP_LABELS,
                )?,
                desc(
                    RULE_PACKETS,
                    "Packets whose verdict a policy rule decided.",
                    &RULE_LABELS,
                )?,
                desc(
                    RULE_BYTES,
                    "Bytes whose verdict a policy rule decided.",
                    &RULE_LABELS,
                )?,
                desc(
                    DROPS,
                    "Packets the host's programs dropped, by reason, whether or not anyone \
                     listens for drop events.",
                    &REASON_LABELS,
                )?,
                desc(
                    CONNTRACK_CREATED,
                    "Conntrack entries the programs created for new flows.",
                    &[],
                )?,
                desc(
                    CONNTRACK_INSERT_FAILURES,
                    "New flows whose conntrack entry the table could not take; their packets \
                     were dropped (reason conntrack-full).",
                    &[],
                )?,
                desc(
                    DROP_EVENTS,
                    "Drops seen while a drop event listener ran, by outcome (submitted, \
                     sampled_out, rate_limited, ring_full).",
                    &OUTCOME_LABELS,
                )?,
            ],
        })
    }
}

/// One counter family's samples, keyed by their label values.
type Samples = BTreeMap<Vec<String>, u64>;

fn family(name: &str, help: &str, labels: &[&str], samples: Samples) -> MetricFamily {
    let metrics = samples
        .into_iter()
        .map(|(values, value)| {
            let mut counter = Counter::default();
            counter.set_value(value as f64);
            let mut metric = Metric::default();
            metric.set_label(
                labels
                    .iter()
                    .zip(values)
                    .map(|(name, value)| {
                        let mut pair = LabelPair::default();
                        pair.set_name((*name).to_owned());
                        pair.set_value(value);
                        pair
                    })
                    .collect(),
            );
            metric.set_counter(counter);
            metric
        })
        .collect();
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(MetricType::COUNTER);
    family.set_metric(metrics);
    family
}

impl Collector for DataplaneCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = Vec::new();
        match crate::dump::counters(&self.pins) {
            Ok(rows) => {
                let (mut packets, mut bytes, mut drops, mut by_reason) = (
                    Samples::new(),
                    Samples::new(),
                    Samples::new(),
                    Samples::new(),
                );
                for row in rows {
                    let row = match row {
                        crate::dump::CounterRow::Workload(row) => row,
                        crate::dump::CounterRow::HostEndpoint(row) => {
                            let id = [format!("HostEndpoint {}", row.name), row.interface];
                            for (path, p, b) in [
                                ("host_endpoint_in", row.in_packets, row.in_bytes),
                                ("host_endpoint_out", row.out_packets, row.out_bytes),
                            ] {
                                let key = vec![id[0].clone(), id[1].clone(), path.to_owned()];
                                *packets.entry(key.clone()).or_default() += p;
                                *bytes.entry(key).or_default() += b;
                            }
                            for (reason, count) in row.drops {
                                *by_reason.entry(vec![reason.clone()]).or_default() += count;
                                *drops
                                    .entry(vec![id[0].clone(), id[1].clone(), reason])
                                    .or_default() += count;
                            }
                            continue;
                        }
                    };
                    let id = [row.name.clone(), row.interface.clone()];
                    for (path, p, b) in [
                        (
                            "from_workload",
                            row.from_workload_packets,
                            row.from_workload_bytes,
                        ),
                        (
                            "to_workload",
                            row.to_workload_packets,
                            row.to_workload_bytes,
                        ),
                        ("forwarded", row.forwarded_packets, row.forwarded_bytes),
                        ("to_host", row.to_host_packets, row.to_host_bytes),
                        (
                            "forwarded_remote",
                            row.forwarded_remote_packets,
                            row.forwarded_remote_bytes,
                        ),
                        (
                            "from_data_interface",
                            row.from_data_interface_packets,
                            row.from_data_interface_bytes,
                        ),
                    ] {
                        let key = vec![id[0].clone(), id[1].clone(), path.to_owned()];
                        *packets.entry(key.clone()).or_default() += p;
                        *bytes.entry(key).or_default() += b;
                    }
                    for (reason, count) in row.drops {
                        *by_reason.entry(vec![reason.clone()]).or_default() += count;
                        *drops
                            .entry(vec![id[0].clone(), id[1].clone(), reason])
                            .or_default() += count;
                    }
                }
                families.push(family(
                    ENDPOINT_PACKETS,
                    &self.descs[0].help,
                    &ENDPOINT_LABELS,
                    packets,
                ));
                families.push(family(
                    ENDPOINT_BYTES,
                    &self.descs[1].help,
                    &ENDPOINT_LABELS,
                    bytes,
                ));
                families.push(family(
                    ENDPOINT_DROPS,
                    &self.descs[2].help,
                    &DROP_LABELS,
                    drops,
                ));
                families.push(family(
                    DROPS,
                    &self.descs[5].help,
                    &REASON_LABELS,
                    by_reason,
                ));
            }
            Err(e) => debug!("reading the endpoint counters for a scrape: {e:#}"),
        }
        match crate::dump::rules(&self.pins) {
            Ok(rows) => {
                // Rule ids of one rule (for instance of a policy's older generation) add up.
                let (mut packets, mut bytes) = (Samples::new(), Samples::new());
                for row in rows {
                    let key = vec![
                        row.direction,
                        row.kind,
                        row.tier,
                        row.policy,
                        row.index.to_string(),
                        row.action,
                    ];
                    *packets.entry(key.clone()).or_default() += row.packets;
                    *bytes.entry(key).or_default() += row.bytes;
                }
                families.push(family(
                    RULE_PACKETS,
                    &self.descs[3].help,
                    &RULE_LABELS,
                    packets,
                ));
                families.push(family(RULE_BYTES, &self.descs[4].help, &RULE_LABELS, bytes));
            }
            Err(e) => debug!("reading the rule counters for a scrape: {e:#}"),
        }
        match crate::events::pinned_stats(&self.pins) {
            Ok(stats) => {
                let samples: Samples = [
                    ("submitted", stats.submitted),
                    ("sampled_out", stats.sampled_out),
                    ("rate_limited", stats.rate_limited),
                    ("ring_full", stats.ring_full),
                ]
                .into_iter()
                .map(|(outcome, count)| (vec![outcome.to_owned()], count))
                .collect();
                families.push(family(
                    DROP_EVENTS,
                    &self.descs[8].help,
                    &OUTCOME_LABELS,
                    samples,
                ));
            }
            Err(e) => debug!("reading the drop event statistics for a scrape: {e:#}"),
        }
        match crate::dataplane::conntrack::pinned_counters(&self.pins) {
            Ok(counts) => {
                for (index, name, value) in [
                    (6, CONNTRACK_CREATED, counts.created),
                    (7, CONNTRACK_INSERT_FAILURES, counts.insert_failed),
                ] {
                    families.push(family(
                        name,
                        &self.descs[index].help,
                        &[],
                        [(Vec::new(), value)].into_iter().collect(),
                    ));
                }
            }
            Err(e) => debug!("reading the conntrack counts for a scrape: {e:#}"),
        }
        families
    }
}
