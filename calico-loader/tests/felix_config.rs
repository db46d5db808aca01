//! Felix's configuration: its sources layered in Felix's order (`config show` names each
//! value's source), an invalid setting stopping the agent before it touches anything while
//! the programs a previous agent left keep forwarding, and a bad or unappliable
//! `FelixConfiguration` written while the agent runs refused with the running configuration
//! kept.

mod support;

use std::{path::Path, process::Command};

use support::topology::{Datastore, loader_bin};

const NODE: &str = "test-node";

/// `calico-loader config show` for `NODE` on `datastore`, with `env` and `args`.
fn config_show(datastore: &Path, felix_cfg: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let mut command = Command::new(loader_bin());
    command
        .args(["config", "show", "--node", NODE, "--datastore"])
        .arg(datastore)
        .arg("--felix-config-file")
        .arg(felix_cfg);
    for (name, _) in std::env::vars() {
        if name.to_ascii_uppercase().starts_with("FELIX_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run config show");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "config show failed: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

/// The line of `setting` in `config show`'s output.
fn line<'a>(show: &'a str, setting: &str) -> &'a str {
    show.lines()
        .find(|l| l.split_whitespace().next() == Some(setting))
        .unwrap_or_else(|| panic!("no {setting} in:\n{show}"))
}

fn felix_configuration(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: {name}}}\nspec:\n{spec}\n"
    )
}

#[test]
fn sources_layer_in_felixs_order_and_config_show_names_them() {
    let datastore = Datastore::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let felix_cfg = dir.path().join("felix.cfg");

    // Nothing set: the defaults.
    let show = config_show(datastore.path(), &felix_cfg, &[], &[]);
    assert!(
        line(&show, "BPFMapSizeConntrack").ends_with("524288  (default)"),
        "{show}"
    );

    datastore.write(
        "felix-default.yaml",
        &felix_configuration(
            "default",
            "  bpfDataIfacePattern: '^eth'\n  bpfMapSizeConntrack: 1000\n  logSeverityScreen: Warning\n  reportingInterval: 0s",
        ),
    );
    datastore.write(
        "felix-node.yaml",
        &felix_configuration(&format!("node.{NODE}"), "  bpfDataIfacePattern: '^ens'"),
    );
    datastore.write(
        "felix-other-node.yaml",
        &felix_configuration("node.other", "  bpfDataIfacePattern: '^other'"),
    );
    let show = config_show(datastore.path(), &felix_cfg, &[], &[]);
    assert_eq!(
        line(&show, "BPFDataIfacePattern"),
        format!("BPFDataIfacePattern          ^ens  (FelixConfiguration node.{NODE})"),
        "the node's FelixConfiguration overrides default:\n{show}"
    );
    assert!(
        line(&show, "BPFMapSizeConntrack").ends_with("1000  (FelixConfiguration default)"),
        "{show}"
    );
    assert!(
        line(&show, "reportingInterval").contains("accepted, not used"),
        "{show}"
    );

    // The file over the resources, the environment (any case) over the file, a flag over all.
    std::fs::write(
        &felix_cfg,
        "[global]\nBPFMapSizeConntrack = 2000\nhealthport = 9100\nHealthEnabled = true\n",
    )
    .expect("write felix.cfg");
    let show = config_show(
        datastore.path(),
        &felix_cfg,
        &[("felix_healthPort", "9200")],
        &[],
    );
    let file_source = format!("(file {})", felix_cfg.display());
    assert!(
        line(&show, "BPFMapSizeConntrack").ends_with(&format!("2000  {file_source}")),
        "{show}"
    );
    assert!(
        line(&show, "HealthEnabled").ends_with(&format!("true  {file_source}")),
        "{show}"
    );
    assert!(
        line(&show, "HealthPort").ends_with("9200  (environment variable felix_healthPort)"),
        "the environment overrides the file:\n{show}"
    );
    assert!(
        line(&show, "LogSeverityScreen").ends_with("Warning  (FelixConfiguration default)"),
        "{show}"
    );
    let show = config_show(
        datastore.path(),
        &felix_cfg,
        &[("FELIX_BPFMAPSIZECONNTRACK", "3000")],
        &["--conntrack-size", "4000"],
    );
    assert!(
        line(&show, "BPFMapSizeConntrack").ends_with("4000  (command-line flag --conntrack-size)"),
        "{show}"
    );
}

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{
        net::IpAddr,
        process::Command,
        time::{Duration, Instant},
    };

    use aya::maps::MapInfo;
    use calico_ebpf_common::map_names;
    use calico_loader::dataplane::bpffs::PinLayout;

    use super::{NODE, felix_configuration};
    use crate::support::topology::*;

    fn forwarded(agent: &Agent, ifname: &str) -> u64 {
        agent.counters(ifname)["forwarded_packets"]
            .as_u64()
            .unwrap_or(0)
    }

    fn start(topology: &Topology, datastore: &Datastore, extra: &[&str]) -> Agent {
        let mut yaml = String::new();
        for w in &topology.workloads {
            yaml.push_str("---\n");
            yaml.push_str(&w.endpoint_yaml(NODE));
        }
        datastore.write("endpoints.yaml", &yaml);
        let mut args = vec!["--felix-config-file", "/nonexistent/felix.cfg"];
        args.extend_from_slice(extra);
        let agent = Agent::start(topology, datastore, NODE, &args);
        let ifnames: Vec<&str> = topology
            .workloads
            .iter()
            .map(|w| w.host_ifname.as_str())
            .collect();
        agent.wait_attached(&ifnames);
        agent
    }

    fn conntrack_entries(agent: &Agent) -> u32 {
        MapInfo::from_pin(PinLayout::new(&agent.pin_path).map(map_names::CONNTRACK))
            .expect("conntrack table pinned")
            .max_entries()
    }

    fn wait_for_log(agent: &Agent, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            agent.assert_running();
            if agent.log().contains(text) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{text:?} not logged after 20 s; agent log:\n{}",
            agent.log()
        );
    }

    #[test]
    fn an_invalid_environment_setting_stops_the_agent_and_traffic_keeps_flowing() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let mut agent = start(&topology, &datastore, &[]);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        assert!(wl1.ping(IpAddr::V4(wl2.v4)));
        // The agent stops; its programs stay attached.
        agent.stop();

        let output = Command::new("nsenter")
            .arg(format!("--net={}", topology.host.path().display()))
            .arg(loader_bin())
            .args([
                "run",
                "--node",
                NODE,
                "--felix-config-file",
                "/nonexistent/felix.cfg",
            ])
            .arg("--datastore")
            .arg(datastore.path())
            .arg("--pin-path")
            .arg(&agent.pin_path)
            .arg("--run-dir")
            .arg(&agent.run_dir)
            .env("FELIX_BPFMAPSIZECONNTRACK", "notanumber")
            .output()
            .expect("run the agent");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "the agent started: {stderr}");
        assert!(
            stderr.contains("BPFMapSizeConntrack")
                && stderr.contains("environment variable FELIX_BPFMAPSIZECONNTRACK")
                && stderr.contains("notanumber"),
            "the error names the setting, the variable and the value: {stderr}"
        );
        assert!(
            !stderr.contains("dataplane loaded"),
            "refused before loading: {stderr}"
        );

        let before = forwarded(&agent, &wl1.host_ifname);
        assert!(
            wl1.ping(IpAddr::V4(wl2.v4)) && wl2.ping(IpAddr::V6(wl1.v6)),
            "traffic stopped after the refused start"
        );
        assert!(
            forwarded(&agent, &wl1.host_ifname) > before,
            "the programs left attached carried it"
        );
    }

    #[test]
    fn a_bad_or_unappliable_felix_configuration_at_run_time_leaves_the_running_one() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        datastore.write(
            "felix.yaml",
            &felix_configuration("default", "  bpfMapSizeConntrack: 4096"),
        );
        let agent = start(&topology, &datastore, &[]);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        assert_eq!(
            conntrack_entries(&agent),
            4096,
            "the FelixConfiguration's size"
        );

        // Invalid: refused, with the field named; the agent keeps running on what it had.
        datastore.write(
            "felix.yaml",
            &felix_configuration("default", "  bpfMapSizeConntrack: notanumber"),
        );
        wait_for_log(&agent, "spec.bpfMapSizeConntrack");
        assert!(wl1.ping(IpAddr::V4(wl2.v4)), "traffic after the refusal");
        assert_eq!(conntrack_entries(&agent), 4096);

        // Valid but needing a new table: not applied, with what to do.
        datastore.write(
            "felix.yaml",
            &felix_configuration("default", "  bpfMapSizeConntrack: 8192"),
        );
        wait_for_log(&agent, "restart the agent to resize the conntrack table");
        agent.assert_running();
        assert!(wl2.ping(IpAddr::V6(wl1.v6)), "traffic after the refusal");
        assert_eq!(conntrack_entries(&agent), 4096, "no half-applied resize");
        let log = agent.log();
        assert_eq!(
            log.matches("restart the agent to resize").count(),
            1,
            "logged once: {log}"
        );
    }
}
