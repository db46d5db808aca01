//! Tests of the `FelixConfiguration` kind: each field is checked by name and value, and a bad
//! one is refused with its path.

use super::Snapshot;

#[test]
fn the_datastore_refuses_bad_fields_by_path() {
    let bad = |spec: &str| {
        let text = format!(
            "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {{name: default}}\nspec:\n{spec}\n"
        );
        let errors = Snapshot::from_yaml("test", &text).expect_err("refused");
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let message = bad("  bpfMapSizeConntrack: notanumber");
    assert!(message.contains("spec.bpfMapSizeConntrack"), "{message}");
    assert!(message.contains("not a number"), "{message}");
    let message = bad("  noSuchField: 1");
    assert!(message.contains("spec.noSuchField"), "{message}");
    let message = bad("  bpfDataIfacePattern: '(eth'");
    assert!(message.contains("not a regular expression"), "{message}");
    let message = bad("  bpfMapSizeRoute: 1000");
    assert!(message.contains("fixed size of 262144"), "{message}");
    let message = bad("  bpfConntrackTimeouts: {tcpEstablished: 2h}");
    assert!(message.contains("TCPEstablished=2h"), "{message}");
    let message = bad("  failsafeInboundHostPorts: [{protocol: icmp, port: 1}]");
    assert!(message.contains("tcp, udp or sctp"), "{message}");
}
