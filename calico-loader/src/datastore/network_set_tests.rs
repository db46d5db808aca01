//! Tests of the `NetworkSet` and `GlobalNetworkSet` kinds: parsing and how nets are read, one
//! failing case per check (each naming the resource, the field and the line), and the last good
//! set staying in force through a broken edit.

use ipnet::IpNet;

use super::{
    DatastoreError, GlobalNetworkSet, LocalDatastore, NetworkSet, parse_file, resources::Registered,
};

/// A set document of `kind` with `metadata` and `spec` (YAML flow mapping contents).
fn set(kind: &str, metadata: &str, spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {{{metadata}}}\nspec: {{{spec}}}\n"
    )
}

fn parse<K: Registered + Clone>(text: &str) -> K {
    match parse_file("sets.yaml", text) {
        Ok(resources) => resources[0]
            .typed::<K>()
            .cloned()
            .unwrap_or_else(|| panic!("not a {}: {:?}", K::INFO.name, resources[0])),
        Err(errors) => panic!("{}", errors[0]),
    }
}

/// The one error of `text`.
fn error(text: &str) -> DatastoreError {
    match parse_file("sets.yaml", text) {
        Ok(resources) => panic!("parsed {resources:?}"),
        Err(mut errors) => {
            assert_eq!(errors.len(), 1, "{errors:#?}");
            errors.remove(0)
        }
    }
}

fn nets(texts: &[&str]) -> Vec<IpNet> {
    texts.iter().map(|t| t.parse().expect("test net")).collect()
}

#[test]
fn nets_are_read_as_libcalico_go_reads_them() {
    let text = set(
        "GlobalNetworkSet",
        "name: db-subnets, labels: {role: db-subnets}",
        r#"nets: [198.18.0.0/24, 198.19.7.7/16, 198.20.0.1, "2001:db8::1", "2001:db8:1::5/48"]"#,
    );
    let gns: GlobalNetworkSet = parse(&text);
    assert_eq!(
        gns.spec.nets,
        nets(&[
            "198.18.0.0/24",
            "198.19.0.0/16",
            "198.20.0.1/32",
            "2001:db8::1/128",
            "2001:db8:1::/48"
        ]),
        "a bare IP is a /32 or /128, host bits are cleared"
    );
    assert_eq!(gns.metadata.labels["role"], "db-subnets");
    assert_eq!(gns.key().to_string(), "GlobalNetworkSet db-subnets");

    let ns: NetworkSet = parse(&set(
        "NetworkSet",
        "name: partners, namespace: prod",
        "nets: [198.18.4.0/22]",
    ));
    assert_eq!(ns.namespace(), "prod");
    assert_eq!(ns.spec.nets, nets(&["198.18.4.0/22"]));
    assert_eq!(ns.key().to_string(), "NetworkSet prod/partners");
}

#[test]
fn a_set_may_leave_its_spec_out() {
    let ns: NetworkSet =
        parse("apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {name: empty}\n");
    assert_eq!(ns.namespace(), "default");
    assert!(ns.spec.nets.is_empty());
    let gns: GlobalNetworkSet = parse(&set("GlobalNetworkSet", "name: empty", "nets: null"));
    assert!(gns.spec.nets.is_empty());
}

#[test]
fn each_problem_names_resource_field_and_line() {
    // (kind, metadata, spec, field, part of the message)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "GlobalNetworkSet",
            "name: g",
            "nets: [198.18.0.0/24, 198.18.0.0/33]",
            "spec.nets[1]",
            "invalid CIDR \"198.18.0.0/33\"",
        ),
        (
            "NetworkSet",
            "name: n, namespace: prod",
            "nets: [db.example.com]",
            "spec.nets[0]",
            "invalid CIDR \"db.example.com\"",
        ),
        (
            "GlobalNetworkSet",
            "name: g, labels: {projectcalico.org/namespace: prod}",
            "",
            "metadata.labels",
            "projectcalico.org/namespace is not a valid label name",
        ),
        (
            "NetworkSet",
            "name: n, labels: {projectcalico.org/namespace: other}",
            "",
            "metadata.labels",
            "projectcalico.org/namespace is not a valid label name",
        ),
        (
            "NetworkSet",
            "name: n, labels: {\"bad key!\": x}",
            "",
            "metadata.labels",
            "invalid label key",
        ),
        (
            "GlobalNetworkSet",
            "name: g, namespace: prod",
            "",
            "metadata.namespace",
            "GlobalNetworkSet is not namespaced",
        ),
        (
            "GlobalNetworkSet",
            "name: Bad_Name",
            "",
            "metadata.name",
            "Bad_Name",
        ),
        // A Calico Enterprise field, not in Calico 3.32: refused, not ignored.
        (
            "GlobalNetworkSet",
            "name: g",
            "allowedEgressDomains: [db.example.com]",
            "spec.allowedEgressDomains",
            "unknown field `allowedEgressDomains`, expected `nets`",
        ),
    ];
    for (kind, metadata, spec, field, message) in cases {
        let text = set(kind, metadata, spec);
        let e = error(&text);
        assert_eq!(e.file, "sets.yaml", "{e}");
        assert!(
            e.resource.as_deref().is_some_and(|r| r.starts_with(kind)),
            "{text}: {e}"
        );
        assert_eq!(e.field.as_deref(), Some(*field), "{text}: {e}");
        assert!(e.message.contains(message), "{text}: {e}");
        assert!(e.line.is_some_and(|line| (3..=4).contains(&line)), "{e}");
    }
}

#[test]
fn a_broken_edit_keeps_the_last_good_set() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "{}---\n{}",
        set("GlobalNetworkSet", "name: g", "nets: [198.19.0.0/16]"),
        set(
            "NetworkSet",
            "name: n, namespace: prod",
            "nets: [198.20.0.0/16]"
        )
    );
    std::fs::write(dir.path().join("sets.yaml"), &text).expect("write");
    let mut datastore = LocalDatastore::new(dir.path());
    let sync = datastore.sync();
    assert!(sync.errors.is_empty(), "{:#?}", sync.errors);
    assert_eq!(sync.snapshot.global_network_sets().count(), 1);
    assert_eq!(
        sync.snapshot
            .network_sets()
            .map(|s| (s.namespace(), s.name()))
            .collect::<Vec<_>>(),
        [("prod", "n")]
    );

    std::fs::write(
        dir.path().join("sets.yaml"),
        text.replace("198.20.0.0/16", "198.20.0.0/40"),
    )
    .expect("write");
    let sync = datastore.sync();
    let e = &sync.errors[0];
    assert_eq!(
        (e.resource.as_deref(), e.field.as_deref()),
        (Some("NetworkSet prod/n"), Some("spec.nets[0]"))
    );
    let kept = sync
        .snapshot
        .network_sets()
        .next()
        .expect("the last good set");
    assert_eq!(kept.spec.nets, nets(&["198.20.0.0/16"]));
}
