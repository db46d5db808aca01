//! Felix's sources (resources, file, environment, flags), their layering, and the run-time watch.

use std::path::{Path, PathBuf};

use super::*;
use crate::{
    datastore::{Snapshot, resources::FelixConfiguration},
    felix_settings::EndpointToHostAction,
};

fn resource(name: &str, spec: &str) -> FelixConfiguration {
    let text = format!(
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: {name}}}\nspec:\n{spec}\n"
    );
    let snapshot = Snapshot::from_yaml("test", &text).expect("a valid FelixConfiguration");
    snapshot
        .all::<FelixConfiguration>()
        .next()
        .expect("one FelixConfiguration")
        .clone()
}

fn env(vars: &[(&str, &str)]) -> Layer {
    Layer::from_env(
        vars.iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string())),
    )
}

fn sources(file: Option<&str>, vars: &[(&str, &str)]) -> LocalSources {
    LocalSources {
        file: file
            .map(|text| Layer::parse_file(Path::new("felix.cfg"), text).expect("a valid file")),
        env: env(vars),
        flags: Layer::default(),
    }
}

#[test]
fn layers_in_felixs_order() {
    let default = resource(
        "default",
        "  bpfMapSizeConntrack: 1000\n  logSeverityScreen: Debug\n  healthPort: 9000\n  prometheusMetricsEnabled: true",
    );
    let node = resource("node.a", "  bpfMapSizeConntrack: 2000\n  healthPort: 9001");
    let file = "[global]\nBPFMapSizeConntrack = 3000\nhealthport=9002\n";
    let vars = [("felix_bpfmapsizeconntrack", "4000"), ("PATH", "/bin")];

    let config = sources(Some(file), &vars)
        .resolve(Some(&default), Some(&node))
        .expect("valid");
    assert_eq!(config.bpf_map_size_conntrack.value, 4000);
    assert_eq!(
        config.bpf_map_size_conntrack.source,
        Source::Env("felix_bpfmapsizeconntrack".into())
    );
    assert_eq!(config.health_port.value, 9002);
    assert_eq!(
        config.health_port.source,
        Source::File(PathBuf::from("felix.cfg"))
    );
    assert_eq!(config.log_severity_screen.value, LogSeverity::Debug);
    assert_eq!(
        config.log_severity_screen.source,
        Source::Resource("default".into())
    );
    assert!(config.prometheus_metrics().enabled);

    let config = sources(None, &[])
        .resolve(Some(&default), Some(&node))
        .expect("valid");
    assert_eq!(config.bpf_map_size_conntrack.value, 2000);
    assert_eq!(config.health_port.source, Source::Resource("node.a".into()));

    let mut flagged = sources(Some(file), &vars);
    flagged.flags = flags_layer(&[("BPFMapSizeConntrack", "5000".into(), "--conntrack-size")]);
    let config = flagged.resolve(Some(&default), Some(&node)).expect("valid");
    assert_eq!(config.bpf_map_size_conntrack.value, 5000);
    assert_eq!(
        config.bpf_map_size_conntrack.source,
        Source::Flag("--conntrack-size")
    );
}

#[test]
fn a_bad_environment_value_names_the_setting_and_the_variable() {
    let err = sources(None, &[("FELIX_BPFMAPSIZECONNTRACK", "notanumber")])
        .resolve(None, None)
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "environment variable FELIX_BPFMAPSIZECONNTRACK: invalid BPFMapSizeConntrack \"notanumber\": not a number"
    );
}

#[test]
fn unknown_names_are_refused_and_calicos_other_settings_accepted() {
    let err = sources(None, &[("FELIX_NOSUCHSETTING", "1")])
        .resolve(None, None)
        .expect_err("refused");
    assert!(
        matches!(&err, ConfigError::Unknown { name, .. } if name == "NOSUCHSETTING"),
        "{err}"
    );
    let err = sources(Some("[global]\nFrobnicate = 1\n"), &[])
        .resolve(None, None)
        .expect_err("refused");
    assert_eq!(
        err.to_string(),
        "file felix.cfg: unknown setting \"Frobnicate\" (not a Felix configuration setting)"
    );

    let default = resource("default", "  reportingInterval: 0s\n  ipipEnabled: true");
    let config = sources(None, &[("FELIX_IPINIPMTU", "1440")])
        .resolve(Some(&default), None)
        .expect("accepted");
    let names: Vec<&str> = config.unused.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["ipipEnabled", "reportingInterval", "IPINIPMTU"]);
}

#[test]
fn resource_shapes_become_felixs_text() {
    let default = resource(
        "default",
        "  failsafeInboundHostPorts: [{protocol: TCP, port: 22}, {protocol: UDP, port: 68, net: '2001:db8::/32'}]\n  failsafeOutboundHostPorts: []\n  bpfConntrackTimeouts: {tcpEstablished: 1h, tcpFinsSeen: Auto}\n  defaultEndpointToHostAction: Accept\n  bpfMapSizeRoute: 262144",
    );
    let config = sources(None, &[])
        .resolve(Some(&default), None)
        .expect("valid");
    assert_eq!(
        config.failsafe_inbound_host_ports.value.to_string(),
        "tcp:22,udp:[2001:db8::/32]:68"
    );
    assert_eq!(config.failsafe_outbound_host_ports.value.0, Vec::new());
    assert_eq!(
        config.default_endpoint_to_host_action.value,
        EndpointToHostAction::Accept
    );
}

#[test]
fn file_syntax() {
    let layer = Layer::parse_file(
        Path::new("f"),
        "# comment\n[global]\n; other\nLogSeverityScreen = Warning\n[other]\nx = y\n",
    )
    .expect("valid");
    assert_eq!(layer.0.len(), 1);
    let err = Layer::parse_file(Path::new("f"), "[global]\nnot a setting\n").expect_err("refused");
    assert_eq!(err.to_string(), "file f: line 2: not `Name = value`");
    assert!(
        Layer::from_file(Path::new("/nonexistent/felix.cfg"))
            .expect("a missing file is no layer")
            .is_none()
    );
}

#[test]
fn at_run_time_a_change_that_needs_a_restart_leaves_the_running_configuration() {
    let local = sources(None, &[]);
    let running = local.resolve(None, None).expect("defaults");
    let mut watch = Watch::start(local, "a", running.clone());

    let text = |spec: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: node.a}}\nspec:\n{spec}\n"
        )
    };
    let snapshot = Snapshot::from_yaml(
        "test",
        &text("  bpfMapSizeConntrack: 1000\n  logSeverityScreen: Warning"),
    )
    .expect("valid");
    watch.check(&snapshot);
    assert_eq!(
        watch.running().bpf_map_size_conntrack,
        running.bpf_map_size_conntrack,
        "the table is not resized while the agent runs"
    );
    assert_eq!(
        watch.running().log_severity_screen.value,
        LogSeverity::Warning,
        "the log level applies at once"
    );
    let logged = watch.last_logged.clone().expect("the refusal is logged");
    assert!(
        logged.contains("BPFMapSizeConntrack cannot change")
            && logged.contains("restart the agent to resize"),
        "{logged}"
    );

    // Back to the running values: nothing pending.
    let snapshot =
        Snapshot::from_yaml("test", &text("  logSeverityScreen: Warning")).expect("valid");
    watch.check(&snapshot);
    assert_eq!(watch.last_logged, None);
}
