//! Policy for our setups (`ours-<hook>-N`): the GlobalNetworkPolicies written into the agent's
//! datastore, the check with `calico-loader trace` that they are in force before measuring, and
//! the deciding rule's hits (`dump rules`) after measuring.
//!
//! What the rules mirror. `iptables-N` (see `topology::iptables_rules`) puts, in front of every
//! packet from the generator, N rules `-s 198.19.x.y/32 -j DROP` that miss, then `-j ACCEPT`.
//! `ours-<hook>-N` gives the sink an ingress policy of N rules: N-1 rules
//! `{action: Deny, source: {nets: [198.19.x.y/32]}}` with the same addresses as iptables' first
//! N-1 (distinct /32s of 198.19.0.0/16, never the generator's 198.18.0.1), then
//! `{action: Allow, source: {nets: [<gen>/32]}}`, the rule that decides the bench's traffic.
//! So both make every decision for gen -> sink walk past misses by source /32 to a final
//! accept; the differences:
//! - Ours has N rules with the deciding one last, iptables N misses plus the ACCEPT (N+1).
//! - The iptables chain is the generator's from-workload chain (`cali-fw-<gen>`, gen's egress
//!   policy in Calico's terms); ours is the sink's ingress policy. Both are in the forwarding
//!   path of every gen -> sink packet; the sink's replies pass neither.
//! - The iptables chain has no conntrack rule, so every packet walks it; our dataplane evaluates
//!   policy once per new flow and passes the later packets of the flow on its conntrack entry
//!   (Calico's own iptables rules accept `ESTABLISHED` flows early too; the bench's chains do
//!   not). trafgen sends one fixed 5-tuple, so in `ours-*-N` the rules decide its first packet
//!   only: the packet rate there is the established path with N rules loaded, and what one
//!   policy evaluation costs with N rules is the microbenchmark's `TC policy ns` column.
//!
//! Calico limits a policy to 1,024 rules per direction; the rules are split into policies of
//! [`RULES_PER_POLICY`], with increasing `order`, all selecting `app == 'sink'`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;
use testbed::{ChildGuard, Cmd, output, signals};

use super::{
    Ctx,
    loader::{dump_json, endpoint_key},
};
use crate::topology::ALLOW_ALL_PROFILE;

/// The datastore file holding the bench's policies (absent with no rules).
pub const POLICY_FILE: &str = "bench-policy.yaml";
/// Rules per GlobalNetworkPolicy (Calico's CRD limit is 1,024 per direction).
pub const RULES_PER_POLICY: u32 = 1_000;
/// The UDP port of trafgen's packets, both ways (see `topology::UDP_PORT`).
pub const TRAFGEN_PORT: u16 = 9;
/// How long the agent may take to put a policy in force.
const POLICY_TIMEOUT: Duration = Duration::from_secs(30);

/// The bench's policies are named this, then their index.
const POLICY_PREFIX: &str = "bench-sink-ingress-";

/// The name of the `index`-th policy.
pub fn policy_name(index: u32) -> String {
    format!("{POLICY_PREFIX}{index:02}")
}

/// How many policies hold `rules` rules.
pub fn policy_count(rules: u32) -> u32 {
    rules.div_ceil(RULES_PER_POLICY)
}

/// The `i`-th address that misses: the same as the `i`-th iptables rule's.
pub fn miss_address(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, (i / 256) as u8, (i % 256) as u8)
}

/// What decides the generator's packets at the sink's ingress: a policy (or profile) and the
/// index of the rule in its ingress rules, as `calico-loader trace` names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decider {
    pub policy: String,
    pub rule: u32,
}

impl Decider {
    /// With `rules` rules: the last rule of the last policy; with none, the allow-all profile
    /// every endpoint names.
    pub fn expected(rules: u32) -> Self {
        if rules == 0 {
            return Self {
                policy: format!("Profile:{ALLOW_ALL_PROFILE}"),
                rule: 0,
            };
        }
        Self {
            policy: format!(
                "GlobalNetworkPolicy:{}",
                policy_name(policy_count(rules) - 1)
            ),
            rule: (rules - 1) % RULES_PER_POLICY,
        }
    }
}

/// The GlobalNetworkPolicies of `ours-*-N` (empty for N = 0): see the module's documentation.
pub fn policy_yaml(rules: u32, generator: Ipv4Addr) -> String {
    use std::fmt::Write as _;
    let mut yaml = String::new();
    for i in 0..rules {
        if i % RULES_PER_POLICY == 0 {
            let index = i / RULES_PER_POLICY;
            let _ = write!(
                yaml,
                "---\n\
                 apiVersion: projectcalico.org/v3\n\
                 kind: GlobalNetworkPolicy\n\
                 metadata:\n  name: {}\n\
                 spec:\n  \
                   order: {}\n  \
                   selector: app == 'sink'\n  \
                   types: [Ingress]\n  \
                   ingress:\n",
                policy_name(index),
                100 + index
            );
        }
        if i + 1 == rules {
            let _ = writeln!(
                yaml,
                "  - {{action: Allow, source: {{nets: [\"{generator}/32\"]}}}}"
            );
        } else {
            let _ = writeln!(
                yaml,
                "  - {{action: Deny, source: {{nets: [\"{}/32\"]}}}}",
                miss_address(i)
            );
        }
    }
    yaml
}

/// A file written next to its final name (hidden, so the agent skips it), published by a
/// rename: the agent never reads half of it.
pub struct Staged {
    temp: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl Staged {
    pub fn write(dir: &Path, name: &str, text: &str) -> Result<Self> {
        let temp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&temp, text).with_context(|| format!("cannot write {}", temp.display()))?;
        Ok(Self {
            temp,
            path: dir.join(name),
        })
    }

    /// Renames it into place; returns the time just before the rename.
    pub fn publish(self) -> Result<SystemTime> {
        let at = SystemTime::now();
        std::fs::rename(&self.temp, &self.path).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.temp.display(),
                self.path.display()
            )
        })?;
        Ok(at)
    }
}

/// Writes (or, with no rules, removes) the datastore's policy file for `ours-*-N`.
pub fn write_policy(datastore: &Path, rules: u32, generator: Ipv4Addr) -> Result<()> {
    let path = datastore.join(POLICY_FILE);
    if rules == 0 {
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove {}", path.display()))?;
        }
        output::info(format!(
            "no policy: {} absent, the endpoints' allow-all profile decides",
            path.display()
        ));
        return Ok(());
    }
    Staged::write(datastore, POLICY_FILE, &policy_yaml(rules, generator))?.publish()?;
    let expected = Decider::expected(rules);
    output::info(format!(
        "{rules} ingress rules for the sink in {} GlobalNetworkPolicies (`app == 'sink'`, at most \
         {RULES_PER_POLICY} rules each): {} x `Deny from 198.19.x.y/32` (as iptables' DROPs), then \
         `Allow from {generator}/32`, {} rule {}: {}",
        policy_count(rules),
        rules - 1,
        expected.policy,
        expected.rule,
        path.display()
    ));
    Ok(())
}

/// What `calico-loader trace -o json` said.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TraceOutcome {
    pub verdict: String,
    pub decided_by: String,
    pub policy: Option<String>,
    pub rule: Option<u32>,
    /// The deciding rule's id (for `dump rules`).
    pub rule_id: Option<u32>,
}

impl TraceOutcome {
    fn parse(value: &Value) -> Self {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        Self {
            verdict: text(&value["verdict"]).unwrap_or_default(),
            decided_by: text(&value["decided_by"]).unwrap_or_default(),
            policy: text(&value["policy"]),
            rule: value["rule"].as_u64().and_then(|r| u32::try_from(r).ok()),
            rule_id: value["decided_by_rule"]["id"]
                .as_u64()
                .and_then(|r| u32::try_from(r).ok()),
        }
    }

    /// Allowed by the policy (not conntrack) and decided by `decider`.
    pub fn is(&self, verdict: &str, decider: &Decider) -> bool {
        self.verdict == verdict
            && self.decided_by == "policy"
            && self.policy.as_deref() == Some(decider.policy.as_str())
            && self.rule == Some(decider.rule)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} by {} ({} rule {})",
            self.verdict,
            self.decided_by,
            self.policy.as_deref().unwrap_or("-"),
            self.rule.map_or("-".into(), |r| r.to_string())
        )
    }
}

/// `calico-loader trace` of a packet at `endpoint`'s ingress (live: the running agent's maps;
/// it changes nothing, creates no conntrack entry).
pub fn trace_cmd(
    ctx: &Ctx<'_>,
    endpoint: &str,
    protocol: &str,
    src: SocketAddr,
    dst: SocketAddr,
) -> Cmd {
    Cmd::new(ctx.loader)
        .args(["trace", "--endpoint", endpoint, "--direction", "ingress"])
        .args(["--protocol", protocol])
        .args(["--src", &src.to_string(), "--dst", &dst.to_string()])
        .args(["-o", "json", "--pin-path"])
        .arg(ctx.pin_path)
        .privileged()
}

/// Runs a trace command; `Err` when it fails or prints no JSON (the endpoint may not be
/// programmed yet), with what it said.
pub fn run_trace(cmd: &Cmd) -> Result<TraceOutcome> {
    let output = cmd.capture()?;
    if !output.status.success() {
        bail!(
            "{} ({})",
            String::from_utf8_lossy(&output.stderr).trim(),
            output.status
        );
    }
    let value: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("`{}` printed invalid JSON", cmd.display()))?;
    Ok(TraceOutcome::parse(&value))
}

/// The policy of one `ours-*-N` setup and round: in force before measuring, evaluated during.
#[derive(Debug, Serialize)]
pub struct PolicyCheck {
    pub rules: u32,
    pub policies: u32,
    pub expected: Decider,
    /// gen -> sink, UDP port 9 to 9 (trafgen's packet), at the sink's ingress, before measuring.
    pub trace: TraceOutcome,
    /// A packet from the first address that misses (198.19.0.0), expected denied by rule 0
    /// (with 2 rules or more).
    pub miss_trace: Option<TraceOutcome>,
    /// From starting the agent until the trace showed the expected decider.
    pub agent_ready_ms: f64,
    /// The agent's own "policy compiled … elapsed_ms" at startup (its log).
    pub agent_compile_ms: Option<u64>,
    /// Ingress rules of the bench's policies in `dump rules` (N when all are programmed).
    pub rules_programmed: Option<usize>,
    /// Packets the deciding rule counted, read after the measurements: one per new flow the
    /// policy decided (trafgen's, iperf3's two connections, the ping-pong's).
    pub deciding_rule_hits: Option<u64>,
}

/// Polls `trace` until gen's packet to the sink is decided by the expected rule, then checks
/// that a packet from a missing address is denied by the first rule. Fails after
/// [`POLICY_TIMEOUT`], or when the agent exits.
pub fn verify(
    ctx: &Ctx<'_>,
    rules: u32,
    agent: &mut ChildGuard,
    started: Instant,
) -> Result<PolicyCheck> {
    let topo = ctx.topo;
    let sink = endpoint_key(&topo.sink);
    let expected = Decider::expected(rules);
    let udp = |ip: Ipv4Addr| SocketAddr::new(ip.into(), TRAFGEN_PORT);
    let cmd = trace_cmd(
        ctx,
        &sink,
        "udp",
        udp(topo.gen_wl.ipv4),
        udp(topo.sink.ipv4),
    );
    output::info(format!(
        "waiting up to {}s for {} rule {} to allow trafgen's packet: polling `{}`",
        POLICY_TIMEOUT.as_secs(),
        expected.policy,
        expected.rule,
        cmd.display()
    ));
    let cmd = cmd.quiet();
    let deadline = Instant::now() + POLICY_TIMEOUT;
    let trace = loop {
        if let Some(status) = agent.try_wait()? {
            bail!("the agent exited ({status}); see its [agent] lines above");
        }
        let last = match run_trace(&cmd) {
            Ok(outcome) if outcome.is("allow", &expected) => break outcome,
            Ok(outcome) => outcome.describe(),
            Err(err) => format!("{err:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "the sink's policy is not in force after {}s: trafgen's packet was not allowed \
                 by {} rule {} (last trace: {last})",
                POLICY_TIMEOUT.as_secs(),
                expected.policy,
                expected.rule
            );
        }
        signals::sleep(Duration::from_millis(100))?;
    };
    let agent_ready_ms = started.elapsed().as_secs_f64() * 1e3;
    output::info(format!(
        "trace: trafgen's packet at the sink's ingress: {} ({agent_ready_ms:.0} ms after the \
         agent started)",
        trace.describe()
    ));
    let miss_trace = if rules >= 2 {
        let first = Decider {
            policy: format!("GlobalNetworkPolicy:{}", policy_name(0)),
            rule: 0,
        };
        let miss = run_trace(&trace_cmd(
            ctx,
            &sink,
            "udp",
            udp(miss_address(0)),
            udp(topo.sink.ipv4),
        ))?;
        if !miss.is("deny", &first) {
            bail!(
                "a packet from {} should be denied by {} rule 0, but trace says {}",
                miss_address(0),
                first.policy,
                miss.describe()
            );
        }
        output::info(format!(
            "trace: from {} (the first address that misses): {}",
            miss_address(0),
            miss.describe()
        ));
        Some(miss)
    } else {
        None
    };
    Ok(PolicyCheck {
        rules,
        policies: policy_count(rules),
        expected,
        trace,
        miss_trace,
        agent_ready_ms,
        agent_compile_ms: None,
        rules_programmed: None,
        deciding_rule_hits: None,
    })
}

/// Reads `dump rules -o json` into `check`: how many of the bench's ingress rules are
/// programmed, and the deciding rule's hits.
pub fn record_hits(ctx: &Ctx<'_>, check: &mut PolicyCheck) -> Result<()> {
    let rows = dump_json(ctx, "rules")?;
    let Value::Array(rows) = rows else {
        bail!("`dump rules -o json` did not print an array");
    };
    let prefix = format!("GlobalNetworkPolicy:{POLICY_PREFIX}");
    check.rules_programmed = Some(
        rows.iter()
            .filter(|r| r["direction"].as_str() == Some("ingress"))
            .filter(|r| r["kind"].as_str() == Some("rule"))
            .filter(|r| r["policy"].as_str().is_some_and(|p| p.starts_with(&prefix)))
            .count(),
    );
    check.deciding_rule_hits = check.trace.rule_id.and_then(|id| {
        rows.iter()
            .find(|r| r["id"].as_u64() == Some(u64::from(id)))
            .and_then(|r| r["packets"].as_u64())
    });
    output::info(format!(
        "dump rules: {} of the bench's ingress rules programmed; the deciding rule ({} rule {}, \
         id {}) counted {} packet(s) (new flows)",
        check.rules_programmed.unwrap_or(0),
        check.expected.policy,
        check.expected.rule,
        check.trace.rule_id.map_or("?".into(), |i| i.to_string()),
        check
            .deciding_rule_hits
            .map_or("?".into(), |h| h.to_string())
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_hold_misses_then_the_generator() {
        let generator = Ipv4Addr::new(198, 18, 0, 1);
        assert_eq!(policy_yaml(0, generator), "");
        let yaml = policy_yaml(2_500, generator);
        assert_eq!(yaml.matches("kind: GlobalNetworkPolicy").count(), 3);
        assert_eq!(yaml.matches("action: Deny").count(), 2_499);
        assert_eq!(yaml.matches("action: Allow").count(), 1);
        assert!(yaml.contains("name: bench-sink-ingress-00"));
        assert!(yaml.contains("name: bench-sink-ingress-02"));
        assert!(yaml.contains("{action: Deny, source: {nets: [\"198.19.0.0/32\"]}}"));
        assert!(yaml.contains("{action: Deny, source: {nets: [\"198.19.9.194/32\"]}}"));
        assert!(
            yaml.trim_end()
                .ends_with("{action: Allow, source: {nets: [\"198.18.0.1/32\"]}}")
        );
        let per_policy: Vec<usize> = yaml
            .split("kind: GlobalNetworkPolicy")
            .skip(1)
            .map(|p| p.matches("  - {action").count())
            .collect();
        assert_eq!(per_policy, [1_000, 1_000, 500]);
        // Never the generator's address among the misses, and all distinct.
        let misses: std::collections::BTreeSet<Ipv4Addr> = (0..9_999).map(miss_address).collect();
        assert_eq!(misses.len(), 9_999);
        assert!(!misses.contains(&generator));
    }

    #[test]
    fn the_decider_is_the_last_rule() {
        assert_eq!(
            Decider::expected(0),
            Decider {
                policy: "Profile:allow-all".into(),
                rule: 0
            }
        );
        assert_eq!(
            Decider::expected(1_000),
            Decider {
                policy: "GlobalNetworkPolicy:bench-sink-ingress-00".into(),
                rule: 999
            }
        );
        assert_eq!(
            Decider::expected(10_000),
            Decider {
                policy: "GlobalNetworkPolicy:bench-sink-ingress-09".into(),
                rule: 999
            }
        );
        assert_eq!(Decider::expected(100).rule, 99);
        assert_eq!(policy_count(10_000), 10);
        assert_eq!(policy_count(1), 1);
    }

    #[test]
    fn trace_json_is_read() {
        let value: Value = serde_json::from_str(
            r#"{"verdict": "allow", "decided_by": "policy", "tier": "default",
                "policy": "GlobalNetworkPolicy:bench-sink-ingress-09", "rule": 999,
                "decided_by_rule": {"id": 10000, "kind": "rule"}}"#,
        )
        .expect("json");
        let outcome = TraceOutcome::parse(&value);
        assert!(outcome.is("allow", &Decider::expected(10_000)));
        assert!(!outcome.is("allow", &Decider::expected(1_000)));
        assert_eq!(outcome.rule_id, Some(10_000));
    }
}
