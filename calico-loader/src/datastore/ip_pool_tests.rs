//! Tests of the `IPPool` kind: parsing, Calico's defaults, one failing case per check (each
//! naming the resource, the field and the line), and a round trip through a local directory.

use ipnet::IpNet;

use super::{
    DatastoreError, LocalDatastore, Resource, parse_file,
    resources::{AssignmentMode, IpPool, IpPoolAllowedUse, IpipMode, ResourceKind, VxlanMode},
};

/// An IPPool document named `name` with `spec` (YAML flow mapping contents).
fn pool(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: {name}}}\nspec: {{{spec}}}\n"
    )
}

fn parse(text: &str) -> IpPool {
    match parse_file("pools.yaml", text) {
        Ok(resources) => resources[0]
            .typed::<IpPool>()
            .cloned()
            .unwrap_or_else(|| panic!("not an IPPool: {:?}", resources[0])),
        Err(errors) => panic!("{}", errors[0]),
    }
}

/// The one error of `text`.
fn error(text: &str) -> DatastoreError {
    match parse_file("pools.yaml", text) {
        Ok(resources) => panic!("parsed {resources:?}"),
        Err(mut errors) => {
            assert_eq!(errors.len(), 1, "{errors:#?}");
            errors.remove(0)
        }
    }
}

#[test]
fn defaults_are_calicos() {
    let p = parse(&pool("p4", "cidr: 198.18.0.0/16"));
    assert_eq!(p.spec.cidr, "198.18.0.0/16".parse::<IpNet>().unwrap());
    assert_eq!(p.spec.block_size, 26);
    assert_eq!(p.spec.ipip_mode, IpipMode::Never);
    assert_eq!(p.spec.vxlan_mode, VxlanMode::Never);
    assert!(!p.spec.nat_outgoing && !p.spec.disabled && !p.spec.disable_bgp_export);
    assert_eq!(p.spec.node_selector, "all()");
    assert_eq!(p.spec.namespace_selector, None);
    assert!(p.spec.written_allowed_uses.is_empty());
    assert_eq!(
        p.spec.allowed_uses(),
        [IpPoolAllowedUse::Workload, IpPoolAllowedUse::Tunnel]
    );
    assert!(p.spec.allows(IpPoolAllowedUse::Tunnel));
    assert_eq!(p.spec.assignment_mode, AssignmentMode::Automatic);
    assert_eq!(p.key().to_string(), "IPPool p4");

    let p = parse(&pool("p6", "cidr: \"2001:db8::/48\", ipipMode: \"\""));
    assert_eq!(p.spec.block_size, 122);
    assert_eq!(p.spec.ipip_mode, IpipMode::Never);
}

#[test]
fn every_field_as_calicoctl_writes_it() {
    let text = r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool1, uid: 1f2e3d4c, creationTimestamp: "2024-05-01T10:00:00Z"}
spec:
  cidr: 198.18.0.0/16
  vxlanMode: CrossSubnet
  ipipMode: Never
  natOutgoing: true
  disabled: false
  disableBGPExport: true
  blockSize: 24
  nodeSelector: "rack == 'a'"
  namespaceSelector: "team == 'x'"
  allowedUses: [Workload]
  assignmentMode: Manual
status: {conditions: [{type: Allocatable, status: "True"}]}
"#;
    let p = parse(text);
    assert_eq!(p.spec.vxlan_mode, VxlanMode::CrossSubnet);
    assert!(p.spec.nat_outgoing && p.spec.disable_bgp_export);
    assert_eq!(p.spec.block_size, 24);
    assert_eq!(p.spec.node_selector, "rack == 'a'");
    assert_eq!(p.spec.namespace_selector.as_deref(), Some("team == 'x'"));
    assert_eq!(p.spec.allowed_uses(), [IpPoolAllowedUse::Workload]);
    assert_eq!(p.spec.assignment_mode, AssignmentMode::Manual);
    assert_eq!(p.status.map(|s| s.conditions.len()), Some(1));
    assert_eq!(
        (
            IpPool::INFO.name,
            IpPool::INFO.plural,
            IpPool::INFO.namespaced
        ),
        ("IPPool", "ippools", false)
    );
}

#[test]
fn encapsulation_calico_accepts_is_kept() {
    let p = parse(&pool("p", "cidr: 198.18.0.0/16, ipipMode: Always"));
    assert_eq!(p.spec.ipip_mode, IpipMode::Always);
    let p = parse(&pool("p", "cidr: \"2001:db8::/48\", vxlanMode: Always"));
    assert_eq!(p.spec.vxlan_mode, VxlanMode::Always);
    // A disabled pool may be smaller than a block.
    let p = parse(&pool("p", "cidr: 198.18.0.0/28, disabled: true"));
    assert!(p.spec.disabled);
    let lb = parse(&pool(
        "lb",
        "cidr: 198.19.0.0/24, allowedUses: [LoadBalancer]",
    ));
    assert_eq!(lb.spec.allowed_uses(), [IpPoolAllowedUse::LoadBalancer]);
}

#[test]
fn each_problem_names_resource_field_and_line() {
    // (spec, field, part of the message)
    let cases: &[(&str, &str, &str)] = &[
        ("blockSize: 26", "spec", "missing field `cidr`"),
        ("cidr: \"\"", "spec.cidr", "must not be empty"),
        (
            "cidr: 198.18.0.0",
            "spec.cidr",
            "a prefix length is required",
        ),
        (
            "cidr: 198.18.0.300/16",
            "spec.cidr",
            "invalid CIDR \"198.18.0.300/16\"",
        ),
        (
            "cidr: 198.18.1.0/16",
            "spec.cidr",
            "host bits are set (the network is 198.18.0.0/16)",
        ),
        (
            "cidr: 169.254.0.0/24",
            "spec.cidr",
            "overlaps the IPv4 link-local range 169.254.0.0/16",
        ),
        (
            "cidr: 160.0.0.0/4",
            "spec.cidr",
            "overlaps the IPv4 link-local range",
        ),
        (
            "cidr: \"fe80::/64\"",
            "spec.cidr",
            "overlaps the IPv6 link-local range fe80::/10",
        ),
        (
            "cidr: 198.18.0.0/16, blockSize: 19",
            "spec.blockSize",
            "an IPv4 pool's must be between 20 and 32",
        ),
        (
            "cidr: 198.18.0.0/16, blockSize: 33",
            "spec.blockSize",
            "between 20 and 32",
        ),
        (
            "cidr: \"2001:db8::/48\", blockSize: 115",
            "spec.blockSize",
            "an IPv6 pool's must be between 116 and 128",
        ),
        (
            "cidr: 198.18.0.0/16, blockSize: 129",
            "spec.blockSize",
            "between 0 and 128",
        ),
        (
            "cidr: 198.18.0.0/16, blockSize: x",
            "spec.blockSize",
            "expected a prefix length",
        ),
        (
            "cidr: 198.18.0.0/27",
            "spec.cidr",
            "smaller than one block (/26)",
        ),
        (
            "cidr: 198.18.0.0/24, blockSize: 23, disabled: false",
            "spec.cidr",
            "smaller than one block (/23)",
        ),
        (
            "cidr: 198.18.0.0/16, ipipMode: Always, vxlanMode: CrossSubnet",
            "spec.vxlanMode",
            "cannot both be enabled",
        ),
        (
            "cidr: \"2001:db8::/48\", ipipMode: CrossSubnet",
            "spec.ipipMode",
            "IPIP is not supported on IPv6 pools",
        ),
        (
            "cidr: 198.18.0.0/16, ipipMode: always",
            "spec.ipipMode",
            "invalid IPIP mode \"always\": expected Never, Always or CrossSubnet",
        ),
        (
            "cidr: 198.18.0.0/16, vxlanMode: Sometimes",
            "spec.vxlanMode",
            "invalid VXLAN mode",
        ),
        (
            "cidr: 198.18.0.0/16, natOutgoing: yes please",
            "spec.natOutgoing",
            "invalid type",
        ),
        (
            "cidr: 198.18.0.0/16, nodeSelector: \"rack ==\"",
            "spec.nodeSelector",
            "invalid selector \"rack ==\"",
        ),
        (
            "cidr: 198.18.0.0/16, nodeSelector: global()",
            "spec.nodeSelector",
            "global() is not valid",
        ),
        (
            "cidr: 198.18.0.0/16, allowedUses: [Workload, Workload]",
            "spec.allowedUses[1]",
            "'Workload' specified more than once",
        ),
        (
            "cidr: 198.18.0.0/16, allowedUses: [Pods]",
            "spec.allowedUses[0]",
            "invalid allowed use \"Pods\": expected Workload, Tunnel or LoadBalancer",
        ),
        (
            "cidr: 198.18.0.0/16, allowedUses: [LoadBalancer, Workload]",
            "spec.allowedUses",
            "LoadBalancer cannot be combined",
        ),
        (
            "cidr: 198.18.0.0/16, allowedUses: [LoadBalancer], vxlanMode: Always",
            "spec.allowedUses",
            "cannot have IPIP or VXLAN",
        ),
        (
            "cidr: 198.18.0.0/16, allowedUses: [LoadBalancer], disableBGPExport: true",
            "spec.disableBGPExport",
            "cannot disable BGP export",
        ),
        (
            "cidr: 198.18.0.0/16, allowedUses: [LoadBalancer], nodeSelector: \"a == 'b'\"",
            "spec.nodeSelector",
            "must be all()",
        ),
        (
            "cidr: 198.18.0.0/16, allowedUses: [Tunnel], namespaceSelector: \"a == 'b'\"",
            "spec.namespaceSelector",
            "cannot have a namespaceSelector",
        ),
        (
            "cidr: 198.18.0.0/16, assignmentMode: Auto",
            "spec.assignmentMode",
            "invalid assignment mode",
        ),
        (
            "cidr: 198.18.0.0/16, ipip: {enabled: true}",
            "spec.ipip",
            "use ipipMode",
        ),
        (
            "cidr: 198.18.0.0/16, nat-outgoing: true",
            "spec.nat-outgoing",
            "use natOutgoing",
        ),
        (
            "cidr: 198.18.0.0/16, natOutgong: true",
            "spec.natOutgong",
            "unknown field `natOutgong`",
        ),
    ];
    for (spec, field, message) in cases {
        let e = error(&pool("bad", spec));
        assert_eq!(e.file, "pools.yaml", "{e}");
        assert_eq!(e.resource.as_deref(), Some("IPPool bad"), "{e}");
        assert_eq!(e.field.as_deref(), Some(*field), "{spec}: {e}");
        assert!(e.message.contains(message), "{spec}: {e}");
        assert_eq!(e.line, Some(4), "{e}");
    }
}

#[test]
fn a_pool_is_cluster_scoped() {
    let e = error(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p, namespace: ns}\nspec: {cidr: 198.18.0.0/16}\n",
    );
    assert_eq!(e.field.as_deref(), Some("metadata.namespace"));
    assert!(e.message.contains("IPPool is not namespaced"), "{e}");
    let e = error("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\n");
    assert_eq!(e.message, "missing field `spec`");
    assert!(matches!(
        parse_file("x", &pool("p", "cidr: 198.18.0.0/16")).map(|r| r[0].clone()),
        Ok(Resource::IpPool(_))
    ));
}

#[test]
fn pools_round_trip_through_a_local_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "{}---\n{}",
        pool("pool-a", "cidr: 198.18.0.0/16, natOutgoing: true"),
        pool(
            "pool-b",
            "cidr: \"2001:db8:1::/48\", vxlanMode: Always, blockSize: 120"
        )
    );
    std::fs::write(dir.path().join("pools.yaml"), &text).expect("write");
    let mut datastore = LocalDatastore::new(dir.path());
    let sync = datastore.sync();
    assert!(sync.errors.is_empty(), "{:#?}", sync.errors);
    let names: Vec<&str> = sync.snapshot.all::<IpPool>().map(IpPool::name).collect();
    assert_eq!(names, ["pool-a", "pool-b"]);
    let b = sync
        .snapshot
        .find::<IpPool>(None, "pool-b")
        .expect("pool-b");
    assert_eq!(b.spec.block_size, 120);
    assert_eq!(b.spec.vxlan_mode, VxlanMode::Always);

    // A broken edit keeps the last good pools, and says where the problem is.
    std::fs::write(
        dir.path().join("pools.yaml"),
        text.replace("198.18.0.0/16", "198.18.0.1/16"),
    )
    .expect("write");
    let sync = datastore.sync();
    assert_eq!(sync.snapshot.all::<IpPool>().count(), 2);
    let e = &sync.errors[0];
    assert_eq!(
        (e.file.as_str(), e.resource.as_deref(), e.field.as_deref()),
        ("pools.yaml", Some("IPPool pool-a"), Some("spec.cidr"))
    );
    assert!(e.message.contains("host bits are set"), "{e}");
}
