//! The settings' parsers, defaults and layering.

use super::*;

/// `vars` as the environment gives them (`FELIX_<NAME>`), layered over the defaults.
fn resolve_env(vars: &[(&str, &str)]) -> Result<FelixConfig, ConfigError> {
    let entries = vars
        .iter()
        .map(|(var, value)| Entry {
            name: var.strip_prefix("FELIX_").unwrap_or(var).to_string(),
            value: Ok((*value).to_string()),
            source: Source::Env((*var).to_string()),
        })
        .collect();
    resolve(&[Layer(entries)])
}

#[test]
fn defaults_are_calicos() {
    let config = resolve(&[]).expect("defaults");
    assert_eq!(config.bpf_map_size_conntrack.value, 524_288);
    assert_eq!(config.bpf_map_size_conntrack.source, Source::Default);
    assert_eq!(
        config.default_endpoint_to_host_action.value,
        EndpointToHostAction::Drop
    );
    assert_eq!(
        config.failsafe_inbound_host_ports.value.to_string(),
        "tcp:22,udp:68,tcp:179,tcp:2379,tcp:2380,tcp:5473,tcp:6443,tcp:6666,tcp:6667"
    );
    assert_eq!(
        config.prometheus_metrics(),
        Endpoint {
            enabled: false,
            host: String::new(),
            port: 9091
        }
    );
    assert_eq!(config.health().port, 9099);
    assert_eq!(config.log_severity_screen.value, LogSeverity::Info);
}

#[test]
fn changed_lists_what_differs() {
    let a = resolve(&[]).expect("valid");
    let b = resolve_env(&[
        ("FELIX_BPFMAPSIZECONNTRACK", "10"),
        ("FELIX_LOGSEVERITYSCREEN", "debug"),
    ])
    .expect("valid");
    assert_eq!(a.changed(&b), ["BPFMapSizeConntrack", "LogSeverityScreen"]);
    assert!(a.changed(&a.clone()).is_empty());
}

#[test]
fn the_endpoint_map_size_is_felixs_if_state_setting() {
    let config = resolve(&[]).expect("defaults");
    assert_eq!(config.bpf_map_size_if_state.value, 16_384);
    let config = resolve_env(&[("FELIX_BPFMAPSIZEIFSTATE", "2")]).expect("valid");
    assert_eq!(config.bpf_map_size_if_state.value, 2);
    let err = resolve_env(&[("FELIX_BPFMAPSIZEIFSTATE", "0")]).expect_err("zero endpoints");
    let text = err.to_string();
    assert!(
        text.contains("BPFMapSizeIfState") && text.contains("FELIX_BPFMAPSIZEIFSTATE"),
        "{text}"
    );
}

#[test]
fn failsafe_ports_in_each_of_felixs_forms() {
    let ports = parse_failsafe("22, udp:53, tcp:198.18.0.0/16:179, tcp:[2001:db8::/32]:2379")
        .expect("Felix's forms");
    assert_eq!(
        ports.to_string(),
        "tcp:22,udp:53,tcp:198.18.0.0/16:179,tcp:[2001:db8::/32]:2379"
    );
    assert_eq!(
        parse_failsafe(&ports.to_string()),
        Ok(ports.clone()),
        "the display parses back"
    );
    assert_eq!(parse_failsafe("none"), Ok(FailsafePorts(Vec::new())));
    for bad in ["icmp:1", "tcp:99999", "tcp:not-a-net:22", "tcp:"] {
        assert!(parse_failsafe(bad).is_err(), "{bad} is refused");
    }
}
