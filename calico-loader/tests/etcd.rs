//! The etcd datastore and the calicoctl-style CLI, against a real etcd (Debian's etcd-server,
//! started by each test on 127.0.0.1 with a temporary data directory), and the local directory
//! for comparison (and once with TLS and client certificates made by `openssl`). The agent tests
//! run it on etcd with real traffic between workloads in the test's own namespaces.

mod support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use serde_json::Value;
use support::{cli::Backend, etcd::Etcd, topology::*};

const PREFIX: &str = "/calico/resources/v3/projectcalico.org/";

impl Backend {
    fn get_json(&self, kind: &str, name: &str, namespace: Option<&str>) -> Value {
        let mut args = vec!["get", kind, name, "-o", "json"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        serde_json::from_str(&self.ok(&args, None)).expect("get -o json prints JSON")
    }

    /// Everything stored, as text, to check that a refused write changed nothing.
    fn everything(&self) -> String {
        match self {
            Backend::Etcd(etcd) => etcd.etcdctl(&["get", "/calico", "--prefix"]),
            Backend::Local(dir) => {
                let mut files = Vec::new();
                collect(dir.path(), &mut files);
                files.sort();
                files.join("\n")
            }
        }
    }
}

fn collect(dir: &std::path::Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(format!(
                "{}: {}",
                path.display(),
                std::fs::read_to_string(&path).unwrap_or_default()
            ));
        }
    }
}

/// (kind argument, name, namespace, document, a field path and the value it should have).
struct Case {
    kind: &'static str,
    name: &'static str,
    namespace: Option<&'static str>,
    yaml: &'static str,
    etcd_key: &'static str,
}

const CASES: &[Case] = &[
    Case {
        kind: "workloadendpoint",
        name: "node1-k8s-pod1-eth0",
        namespace: Some("ns1"),
        yaml: "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: node1-k8s-pod1-eth0\n  namespace: ns1\n  labels: {app: web}\nspec:\n  node: node1\n  orchestrator: k8s\n  pod: pod1\n  endpoint: eth0\n  interfaceName: cali0123456789a\n  ipNetworks: [198.18.5.1/32]\n  profiles: [kns.ns1]\n",
        etcd_key: "workloadendpoints/ns1/node1-k8s-pod1-eth0",
    },
    Case {
        kind: "networkpolicy",
        name: "allow-web",
        namespace: Some("ns1"),
        yaml: "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: allow-web, namespace: ns1}\nspec:\n  order: 100\n  selector: app == 'web'\n  types: [Ingress]\n  ingress:\n  - {action: Allow, protocol: TCP, destination: {ports: [80]}}\n",
        etcd_key: "networkpolicies/ns1/allow-web",
    },
    Case {
        kind: "globalnetworkpolicy",
        name: "deny-db",
        namespace: None,
        yaml: "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-db}\nspec:\n  selector: app == 'db'\n  types: [Ingress]\n  ingress:\n  - {action: Deny}\n",
        etcd_key: "globalnetworkpolicies/deny-db",
    },
    Case {
        kind: "profile",
        name: "kns.ns1",
        namespace: None,
        yaml: "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: kns.ns1}\nspec:\n  ingress: [{action: Allow}]\n  egress: [{action: Allow}]\n  labelsToApply: {ns: ns1}\n",
        etcd_key: "profiles/kns.ns1",
    },
    Case {
        kind: "tier",
        name: "security",
        namespace: None,
        yaml: "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 50}\n",
        etcd_key: "tiers/security",
    },
    Case {
        kind: "ippool",
        name: "pool1",
        namespace: None,
        yaml: "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool1}\nspec: {cidr: 198.18.0.0/16}\n",
        etcd_key: "ippools/pool1",
    },
    Case {
        kind: "globalnetworkset",
        name: "blocked",
        namespace: None,
        yaml: "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: blocked, labels: {role: blocked}}\nspec: {nets: [198.19.0.0/24]}\n",
        etcd_key: "globalnetworksets/blocked",
    },
    Case {
        kind: "networkset",
        name: "partners",
        namespace: Some("ns1"),
        yaml: "apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {name: partners, namespace: ns1, labels: {role: partners}}\nspec: {nets: [198.19.1.0/24, \"2001:db8:1::/48\"]}\n",
        etcd_key: "networksets/ns1/partners",
    },
];

/// Create, get, replace, get, delete for every kind; with the etcd keys where calicoctl puts
/// them.
fn round_trip(backend: &Backend) {
    for case in CASES {
        let what = format!("{} {}", case.kind, case.name);
        backend.ok(&["create", "-f", "-"], Some(case.yaml));
        let got = backend.get_json(case.kind, case.name, case.namespace);
        assert_eq!(got["metadata"]["name"], case.name, "{what}: {got}");
        if let Some(ns) = case.namespace {
            assert_eq!(got["metadata"]["namespace"], ns, "{what}");
        }
        assert!(
            got["metadata"]["uid"].is_string(),
            "{what}: a uid is added: {got}"
        );
        assert!(
            got["metadata"]["creationTimestamp"].is_string(),
            "{what}: {got}"
        );
        let version = got["metadata"]["resourceVersion"]
            .as_str()
            .expect("resourceVersion")
            .to_owned();
        let input: serde_yaml::Value = serde_yaml::from_str(case.yaml).expect("yaml");
        let input: Value = serde_json::to_value(input).expect("json");
        assert_eq!(
            got["spec"], input["spec"],
            "{what}: the spec reads back as written"
        );
        if let Backend::Etcd(etcd) = backend {
            let key = format!("{PREFIX}{}", case.etcd_key);
            let stored = etcd.get(&key).unwrap_or_else(|| {
                panic!("{what}: no key {key}; keys: {:?}", etcd.keys("/calico"))
            });
            let stored: Value = serde_json::from_str(&stored).expect("stored JSON");
            assert!(
                stored["metadata"].get("resourceVersion").is_none(),
                "{what}: {stored}"
            );
            assert_eq!(stored["kind"], input["kind"]);
            assert_eq!(stored["apiVersion"], "projectcalico.org/v3");
        }
        // The list shows it too.
        let mut list_args = vec!["get", case.kind, "-o", "yaml"];
        if case.namespace.is_some() {
            list_args.push("-A");
        }
        assert!(
            backend.ok(&list_args, None).contains(case.name),
            "{what}: listed"
        );

        // Replace with a label added, at the version read.
        let mut changed = got.clone();
        changed["metadata"]["labels"]["changed"] = "yes".into();
        let changed_text = serde_json::to_string(&changed).expect("json");
        backend.ok(&["replace", "-f", "-"], Some(&changed_text));
        let again = backend.get_json(case.kind, case.name, case.namespace);
        assert_eq!(
            again["metadata"]["labels"]["changed"], "yes",
            "{what}: {again}"
        );
        assert_eq!(
            again["metadata"]["uid"], got["metadata"]["uid"],
            "{what}: replace keeps the uid"
        );
        assert_ne!(
            again["metadata"]["resourceVersion"],
            version.as_str(),
            "{what}: a new version"
        );
        // The version read before the replace is stale now.
        let stale = backend.fails(&["replace", "-f", "-"], Some(&changed_text));
        assert!(stale.contains("stale"), "{what}: {stale}");

        let mut delete = vec!["delete", case.kind, case.name];
        if let Some(ns) = case.namespace {
            delete.extend(["-n", ns]);
        }
        backend.ok(&delete, None);
        let mut get = vec!["get", case.kind, case.name];
        if let Some(ns) = case.namespace {
            get.extend(["-n", ns]);
        }
        let gone = backend.fails(&get, None);
        assert!(gone.contains("does not exist"), "{what}: {gone}");
    }
    assert!(
        backend.everything().trim().is_empty() || matches!(backend, Backend::Local(_)),
        "all deleted: {}",
        backend.everything()
    );
}

#[test]
fn cli_round_trip_every_kind_on_etcd() {
    round_trip(&Backend::Etcd(Etcd::start()));
}

#[test]
fn cli_round_trip_every_kind_on_local() {
    round_trip(&Backend::Local(tempfile::tempdir().expect("temp dir")));
}

/// `create` of an existing resource and `replace` of a missing one are refused; so is a
/// `replace` at an old resourceVersion; nothing stored changes.
fn create_replace_rules(backend: &Backend) {
    let profile = "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: p1}\nspec: {ingress: [{action: Allow}]}\n";
    let missing = backend.fails(&["replace", "-f", "-"], Some(profile));
    assert!(missing.contains("Profile p1 does not exist"), "{missing}");
    assert!(
        backend.everything().trim().is_empty(),
        "nothing stored: {}",
        backend.everything()
    );
    backend.ok(&["create", "-f", "-"], Some(profile));
    let before = backend.everything();
    let exists = backend.fails(&["create", "-f", "-"], Some(profile));
    assert!(exists.contains("Profile p1 already exists"), "{exists}");
    assert_eq!(backend.everything(), before);
    // apply works either way.
    backend.ok(&["apply", "-f", "-"], Some(profile));
}

#[test]
fn create_exists_and_replace_missing_are_refused_on_etcd() {
    create_replace_rules(&Backend::Etcd(Etcd::start()));
}

#[test]
fn create_exists_and_replace_missing_are_refused_on_local() {
    create_replace_rules(&Backend::Local(tempfile::tempdir().expect("temp dir")));
}

/// A multi-document apply with one invalid document stores nothing, and the error names the
/// resource, the field and the problem.
fn apply_all_or_nothing(backend: &Backend) {
    let file = "\
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: good-one}
spec: {ingress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: broken}
spec:
  selector: app == 'web'
  ingress:
  - {action: Allow, source: {selector: \"app ==\"}}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: also-good}
spec: {order: 10}
";
    let before = backend.everything();
    let error = backend.fails(&["apply", "-f", "-"], Some(file));
    assert!(
        error.contains("GlobalNetworkPolicy broken"),
        "names the resource: {error}"
    );
    assert!(
        error.contains("spec.ingress[0].source.selector"),
        "names the field: {error}"
    );
    assert!(error.contains("nothing was stored"), "{error}");
    assert_eq!(backend.everything(), before, "nothing stored changed");

    // Fixed, the whole file goes in.
    let fixed = file.replace("\"app ==\"", "\"app == 'x'\"");
    backend.ok(&["apply", "-f", "-"], Some(&fixed));
    for (kind, name) in [
        ("profile", "good-one"),
        ("gnp", "broken"),
        ("tier", "also-good"),
    ] {
        backend.get_json(kind, name, None);
    }

    // A create of three where one exists stores none of the others.
    let more = "\
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: new-one}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: also-good}
spec: {order: 10}
";
    let before = backend.everything();
    let error = backend.fails(&["create", "-f", "-"], Some(more));
    assert!(error.contains("Tier also-good already exists"), "{error}");
    assert_eq!(backend.everything(), before);
}

#[test]
fn apply_is_all_or_nothing_on_etcd() {
    apply_all_or_nothing(&Backend::Etcd(Etcd::start()));
}

#[test]
fn apply_is_all_or_nothing_on_local() {
    apply_all_or_nothing(&Backend::Local(tempfile::tempdir().expect("temp dir")));
}

/// An IPPool through the CLI: apply, get by plural and short name (table, YAML with the pool as
/// written), and an invalid pool refused with its resource, field and problem, nothing stored.
fn ip_pools(backend: &Backend) {
    let pool = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool-a}\nspec: {cidr: 198.18.0.0/16, natOutgoing: true, vxlanMode: CrossSubnet}\n";
    backend.ok(&["apply", "-f", "-"], Some(pool));
    let table = backend.ok(&["get", "ippools"], None);
    assert!(table.lines().any(|line| line.trim() == "pool-a"), "{table}");
    let yaml = backend.ok(&["get", "ipp", "pool-a", "-o", "yaml"], None);
    let got: Value = serde_json::to_value(
        serde_yaml::from_str::<serde_yaml::Value>(&yaml).expect("get -o yaml prints YAML"),
    )
    .expect("json");
    assert_eq!(got["kind"], "IPPool", "{got}");
    assert_eq!(got["spec"]["cidr"], "198.18.0.0/16", "{got}");
    assert_eq!(got["spec"]["vxlanMode"], "CrossSubnet", "{got}");

    let before = backend.everything();
    let bad = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool-b}\nspec:\n  cidr: 198.18.0.1/16\n";
    let error = backend.fails(&["apply", "-f", "-"], Some(bad));
    assert!(
        error.contains("IPPool pool-b")
            && error.contains("spec.cidr")
            && error.contains("host bits are set"),
        "{error}"
    );
    let bad = "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool-b}\nspec:\n  cidr: 198.19.0.0/16\n  ipipMode: Always\n  vxlanMode: Always\n";
    let error = backend.fails(&["apply", "-f", "-"], Some(bad));
    assert!(
        error.contains("spec.vxlanMode") && error.contains("cannot both be enabled"),
        "{error}"
    );
    assert_eq!(backend.everything(), before, "nothing stored");
    backend.ok(&["delete", "pool", "pool-a"], None);
}

#[test]
fn ip_pools_through_the_cli_on_etcd() {
    ip_pools(&Backend::Etcd(Etcd::start()));
}

#[test]
fn ip_pools_through_the_cli_on_local() {
    ip_pools(&Backend::Local(tempfile::tempdir().expect("temp dir")));
}

/// A value exactly as calicoctl (libcalico-go) stores it reads back as the resource; and what
/// the CLI stores is what calicoctl would read.
#[test]
fn calicoctl_values_read_back() {
    let etcd = Etcd::start();
    let backend = Backend::Etcd(etcd);
    let Backend::Etcd(etcd) = &backend else {
        unreachable!()
    };
    etcd.put(
        &format!("{PREFIX}globalnetworkpolicies/default.deny-db"),
        r#"{"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"default.deny-db","uid":"6a1f9ab0-3d2c-4c7e-9a53-0d6f3e7a2b11","creationTimestamp":"2024-05-01T10:00:00Z","labels":{"projectcalico.org/tier":"default"}},"spec":{"tier":"default","order":10,"ingress":[{"action":"Deny","source":{},"destination":{}}],"egress":[],"selector":"app == 'db'","types":["Ingress"]}}"#,
    );
    let got = backend.get_json("globalnetworkpolicy", "deny-db", None);
    assert_eq!(got["metadata"]["name"], "deny-db");
    assert_eq!(
        got["metadata"]["uid"],
        "6a1f9ab0-3d2c-4c7e-9a53-0d6f3e7a2b11"
    );
    assert_eq!(got["spec"]["selector"], "app == 'db'");
    let table = backend.ok(&["get", "gnp", "-o", "wide"], None);
    assert!(
        table.contains("deny-db") && table.contains("app == 'db'"),
        "{table}"
    );

    // An invalid value put behind the CLI's back is reported, not shown.
    etcd.put(&format!("{PREFIX}globalnetworkpolicies/default.bad"), r#"{"kind":"GlobalNetworkPolicy","apiVersion":"projectcalico.org/v3","metadata":{"name":"default.bad"},"spec":{"selector":"app =="}}"#);
    let out = backend.loader(&["get", "gnp"], None);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("globalnetworkpolicies/default.bad") && stderr.contains("spec.selector"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Policies in the formats of Calico 3.28 to 3.32

/// The uid every value of these tests carries.
const UID: &str = "6a1f9ab0-3d2c-4c7e-9a53-0d6f3e7a2b11";

/// A policy value as libcalico-go stores it: `metadata.name` as the key has it, then `extra`
/// metadata fields (JSON, each with a leading comma).
fn policy_value(
    kind: &str,
    stored_name: &str,
    namespace: Option<&str>,
    extra: &str,
    spec: &str,
) -> String {
    let namespace = namespace.map_or_else(String::new, |ns| format!(r#""namespace":"{ns}","#));
    format!(
        r#"{{"kind":"{kind}","apiVersion":"projectcalico.org/v3","metadata":{{"name":"{stored_name}",{namespace}"uid":"{UID}","creationTimestamp":"2024-05-01T10:00:00Z"{extra}}},"spec":{spec}}}"#
    )
}

/// The name annotation libcalico-go adds (3.29.4 on), holding `name`.
fn name_annotation(name: &str) -> String {
    format!(r#""projectcalico.org/metadata":"{{\"name\":\"{name}\"}}""#)
}

/// Calico 3.28 to 3.29.3: `default.<name>` in the key and `metadata.name`, nothing else.
fn calico_3_28(kind: &str, name: &str, namespace: Option<&str>, spec: &str) -> String {
    policy_value(kind, &format!("default.{name}"), namespace, "", spec)
}

/// Calico 3.29.4 to 3.31: the same, with the name as given in the annotation.
fn calico_3_31(kind: &str, name: &str, namespace: Option<&str>, spec: &str) -> String {
    let extra = format!(r#","annotations":{{{}}}"#, name_annotation(name));
    policy_value(kind, &format!("default.{name}"), namespace, &extra, spec)
}

/// Calico 3.32: its own name, the tier label, the annotation.
fn calico_3_32(kind: &str, name: &str, namespace: Option<&str>, spec: &str) -> String {
    let extra = format!(
        r#","labels":{{"projectcalico.org/tier":"default"}},"annotations":{{{}}}"#,
        name_annotation(name)
    );
    policy_value(kind, name, namespace, &extra, spec)
}

/// A default-tier spec that denies TCP to `app == '<app>'`, as calicoctl completes it.
fn deny_spec(app: &str) -> String {
    format!(
        r#"{{"order":10,"ingress":[{{"action":"Deny","protocol":"TCP","source":{{}},"destination":{{}}}}],"selector":"app == '{app}'","types":["Ingress"]}}"#
    )
}

/// The names `get KIND -o yaml` lists, and the list as JSON.
fn listed(backend: &Backend, args: &[&str]) -> (Vec<String>, Value) {
    let mut all = vec!["get"];
    all.extend(args);
    all.extend(["-o", "json"]);
    let list: Value = serde_json::from_str(&backend.ok(&all, None)).expect("JSON list");
    let names = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().expect("name").to_owned())
        .collect();
    (names, list)
}

/// What the CLI writes for a policy is what Calico 3.32 writes: the key and `metadata.name`
/// are the policy's own name, with the name annotation, the tier label and the defaulted
/// `types`; the staged kinds too. Shown, the annotation is not there.
#[test]
fn policies_are_stored_as_calico_3_32_stores_them() {
    let backend = Backend::Etcd(Etcd::start());
    let Backend::Etcd(etcd) = &backend else {
        unreachable!()
    };
    backend.ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 50}\n\
             ---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: deny-db}\n\
             spec:\n  selector: app == 'db'\n  ingress: [{action: Deny}]\n\
             ---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: allow-out, namespace: ns1}\n\
             spec:\n  selector: app == 'web'\n  egress: [{action: Allow}]\n\
             ---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: security.block}\n\
             spec:\n  tier: security\n  selector: all()\n  ingress: [{action: Deny}]\n  egress: [{action: Deny}]\n\
             ---\napiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\nmetadata: {name: trial}\n\
             spec:\n  selector: app == 'db'\n  ingress: [{action: Allow}]\n",
        ),
    );
    let stored = |key: &str| -> Value {
        let text = etcd
            .get(&format!("{PREFIX}{key}"))
            .unwrap_or_else(|| panic!("no key {key}; keys: {:?}", etcd.keys("/calico")));
        serde_json::from_str(&text).expect("stored JSON")
    };
    assert_eq!(
        etcd.keys(&format!("{PREFIX}globalnetworkpolicies/")),
        [
            format!("{PREFIX}globalnetworkpolicies/deny-db"),
            format!("{PREFIX}globalnetworkpolicies/security.block"),
        ]
    );
    let deny = stored("globalnetworkpolicies/deny-db");
    assert_eq!(deny["metadata"]["name"], "deny-db", "{deny}");
    assert_eq!(
        deny["metadata"]["annotations"],
        serde_json::json!({"projectcalico.org/metadata": "{\"name\":\"deny-db\"}"}),
        "{deny}"
    );
    assert_eq!(
        deny["metadata"]["labels"],
        serde_json::json!({"projectcalico.org/tier": "default"})
    );
    assert_eq!(deny["spec"]["types"], serde_json::json!(["Ingress"]));
    assert!(
        deny["metadata"]["uid"].is_string() && deny["metadata"]["creationTimestamp"].is_string()
    );
    assert!(deny["metadata"].get("resourceVersion").is_none());

    let allow = stored("networkpolicies/ns1/allow-out");
    assert_eq!(allow["metadata"]["name"], "allow-out");
    assert_eq!(allow["metadata"]["namespace"], "ns1");
    assert_eq!(
        allow["metadata"]["annotations"]["projectcalico.org/metadata"],
        "{\"name\":\"allow-out\"}"
    );
    assert_eq!(allow["spec"]["types"], serde_json::json!(["Egress"]));

    let block = stored("globalnetworkpolicies/security.block");
    assert_eq!(block["metadata"]["name"], "security.block");
    assert_eq!(
        block["metadata"]["labels"],
        serde_json::json!({"projectcalico.org/tier": "security"})
    );
    assert_eq!(
        block["spec"]["types"],
        serde_json::json!(["Ingress", "Egress"])
    );

    let trial = stored("stagedglobalnetworkpolicies/trial");
    assert_eq!(trial["metadata"]["name"], "trial");
    assert_eq!(
        trial["metadata"]["annotations"]["projectcalico.org/metadata"],
        "{\"name\":\"trial\"}"
    );

    // Read back: the user's name, no annotation, the labels as stored.
    let got = backend.get_json("gnp", "deny-db", None);
    assert_eq!(got["metadata"]["name"], "deny-db");
    assert!(got["metadata"].get("annotations").is_none(), "{got}");
    assert_eq!(
        got["metadata"]["labels"]["projectcalico.org/tier"],
        "default"
    );
    let (names, _) = listed(&backend, &["sgnp"]);
    assert_eq!(names, ["trial"]);
}

/// Policies exactly as Calico 3.28, 3.31 and 3.32 store them, put with etcdctl, are listed and
/// shown under the names their users gave them. One stored only in the older form is replaced
/// and deleted where it is, in its form; a new one goes in 3.32's.
#[test]
fn policies_of_every_calico_version_read_back() {
    let backend = Backend::Etcd(Etcd::start());
    let Backend::Etcd(etcd) = &backend else {
        unreachable!()
    };
    let gnp = "GlobalNetworkPolicy";
    let put = |key: &str, value: &str| etcd.put(&format!("{PREFIX}{key}"), value);
    put(
        "globalnetworkpolicies/default.v328",
        &calico_3_28(gnp, "v328", None, &deny_spec("a")),
    );
    put(
        "globalnetworkpolicies/default.v331",
        &calico_3_31(gnp, "v331", None, &deny_spec("b")),
    );
    put(
        "globalnetworkpolicies/v332",
        &calico_3_32(gnp, "v332", None, &deny_spec("c")),
    );
    // Calico 3.32, a policy its user named `default.named`: the annotation holds that name.
    put(
        "globalnetworkpolicies/default.named",
        &policy_value(
            gnp,
            "default.named",
            None,
            &format!(
                r#","labels":{{"projectcalico.org/tier":"default"}},"annotations":{{{}}}"#,
                name_annotation("default.named")
            ),
            &deny_spec("d"),
        ),
    );
    // Calico 3.31, a policy in another tier: the same in every version.
    put(
        "globalnetworkpolicies/security.block",
        &policy_value(
            gnp,
            "security.block",
            None,
            &format!(
                r#","labels":{{"projectcalico.org/tier":"security"}},"annotations":{{{}}}"#,
                name_annotation("security.block")
            ),
            r#"{"tier":"security","selector":"all()","types":["Ingress"]}"#,
        ),
    );
    put(
        "networkpolicies/ns1/default.np331",
        &calico_3_31("NetworkPolicy", "np331", Some("ns1"), &deny_spec("e")),
    );
    put(
        "stagedglobalnetworkpolicies/default.staged330",
        &calico_3_31(
            "StagedGlobalNetworkPolicy",
            "staged330",
            None,
            &deny_spec("f"),
        ),
    );

    let (names, list) = listed(&backend, &["gnp"]);
    assert_eq!(
        names,
        ["default.named", "security.block", "v328", "v331", "v332"]
    );
    for item in list["items"].as_array().expect("items") {
        assert!(item["metadata"].get("annotations").is_none(), "{item}");
        assert_eq!(item["metadata"]["uid"], UID);
    }
    let got = backend.get_json("gnp", "v331", None);
    assert_eq!(got["metadata"]["name"], "v331");
    assert_eq!(got["spec"]["selector"], "app == 'b'");
    assert_eq!(got["metadata"]["creationTimestamp"], "2024-05-01T10:00:00Z");
    assert_eq!(
        backend.get_json("gnp", "v328", None)["spec"]["selector"],
        "app == 'a'"
    );
    assert_eq!(
        backend.get_json("gnp", "default.named", None)["spec"]["selector"],
        "app == 'd'"
    );
    assert_eq!(
        backend.get_json("np", "np331", Some("ns1"))["metadata"]["name"],
        "np331"
    );
    assert_eq!(
        backend.get_json("sgnp", "staged330", None)["metadata"]["name"],
        "staged330"
    );
    // Its tiered key is not a name of its own.
    let missing = backend.fails(&["get", "gnp", "default.v331"], None);
    assert!(
        missing.contains("GlobalNetworkPolicy default.v331 does not exist"),
        "{missing}"
    );

    // `replace` of a policy stored only in the older form writes its key, in its form.
    let mut changed = got.clone();
    changed["spec"]["order"] = 20.into();
    backend.ok(&["replace", "-f", "-"], Some(&changed.to_string()));
    assert_eq!(
        etcd.get(&format!("{PREFIX}globalnetworkpolicies/v331")),
        None,
        "not moved"
    );
    let stored: Value = serde_json::from_str(
        &etcd
            .get(&format!("{PREFIX}globalnetworkpolicies/default.v331"))
            .expect("still there"),
    )
    .expect("JSON");
    assert_eq!(stored["metadata"]["name"], "default.v331", "{stored}");
    assert_eq!(
        stored["metadata"]["annotations"]["projectcalico.org/metadata"],
        "{\"name\":\"v331\"}"
    );
    assert_eq!(stored["metadata"]["uid"], UID, "kept");
    assert_eq!(stored["spec"]["order"], 20);
    assert_eq!(backend.get_json("gnp", "v331", None)["spec"]["order"], 20);
    // So does `apply`.
    let mut applied = backend.get_json("gnp", "v328", None);
    applied["spec"]["order"] = 30.into();
    backend.ok(&["apply", "-f", "-"], Some(&applied.to_string()));
    assert_eq!(
        etcd.get(&format!("{PREFIX}globalnetworkpolicies/v328")),
        None,
        "not moved"
    );
    assert_eq!(backend.get_json("gnp", "v328", None)["spec"]["order"], 30);

    // `create` finds it in either form; nothing changes.
    let before = backend.everything();
    let exists = backend.fails(&["create", "-f", "-"], Some(&changed.to_string()));
    assert!(
        exists.contains("GlobalNetworkPolicy v331 already exists"),
        "{exists}"
    );
    // A new policy named `default.v328` would take the older form's key.
    let mut taken = applied.clone();
    taken["metadata"]["name"] = "default.v328".into();
    if let Some(metadata) = taken["metadata"].as_object_mut() {
        metadata.remove("resourceVersion");
        metadata.remove("uid");
    }
    let error = backend.fails(&["apply", "-f", "-"], Some(&taken.to_string()));
    assert!(
        error.contains(&format!(
            "{PREFIX}globalnetworkpolicies/default.v328 holds GlobalNetworkPolicy v328"
        )),
        "{error}"
    );
    assert_eq!(backend.everything(), before, "nothing stored");

    // `delete` removes the older key.
    backend.ok(&["delete", "gnp", "v331"], None);
    backend.ok(&["delete", "np", "np331", "-n", "ns1"], None);
    backend.ok(&["delete", "sgnp", "staged330"], None);
    for key in [
        "globalnetworkpolicies/default.v331",
        "networkpolicies/ns1/default.np331",
        "stagedglobalnetworkpolicies/default.staged330",
    ] {
        assert_eq!(etcd.get(&format!("{PREFIX}{key}")), None, "{key} deleted");
    }
    let (names, _) = listed(&backend, &["gnp"]);
    assert_eq!(names, ["default.named", "security.block", "v328", "v332"]);

    // A new one goes in 3.32's form.
    let mut fresh = applied;
    fresh["metadata"] = serde_json::json!({"name": "fresh"});
    backend.ok(&["create", "-f", "-"], Some(&fresh.to_string()));
    assert!(
        etcd.get(&format!("{PREFIX}globalnetworkpolicies/fresh"))
            .is_some()
    );
    assert_eq!(
        etcd.get(&format!("{PREFIX}globalnetworkpolicies/default.fresh")),
        None
    );
}

/// A policy stored in both forms is one policy: the newer is listed, shown and replaced; the
/// duplicate is logged once per command; `delete` removes both.
#[test]
fn a_policy_stored_in_both_forms_is_one_policy() {
    let backend = Backend::Etcd(Etcd::start());
    let Backend::Etcd(etcd) = &backend else {
        unreachable!()
    };
    let old_key = format!("{PREFIX}globalnetworkpolicies/default.both");
    let new_key = format!("{PREFIX}globalnetworkpolicies/both");
    let old_value = calico_3_31("GlobalNetworkPolicy", "both", None, &deny_spec("old"));
    etcd.put(&old_key, &old_value);
    etcd.put(
        &new_key,
        &calico_3_32("GlobalNetworkPolicy", "both", None, &deny_spec("new")),
    );

    let out = backend.loader(&["get", "gnp", "-o", "json"], None);
    assert!(out.status.success());
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON list");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["metadata"]["name"], "both");
    assert_eq!(
        items[0]["spec"]["selector"], "app == 'new'",
        "the newer form"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("is stored twice").count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "GlobalNetworkPolicy both is stored twice: at {new_key} (Calico 3.32's form, in force) \
             and at {old_key} (Calico 3.28-3.31's form, ignored while both exist)"
        )),
        "{stderr}"
    );
    let got = backend.get_json("gnp", "both", None);
    assert_eq!(got["spec"]["selector"], "app == 'new'");

    // A replace goes to the newer key; the older is left as it was.
    let mut changed = got;
    changed["spec"]["order"] = 40.into();
    backend.ok(&["replace", "-f", "-"], Some(&changed.to_string()));
    assert_eq!(etcd.get(&old_key).as_deref(), Some(old_value.as_str()));
    assert_eq!(backend.get_json("gnp", "both", None)["spec"]["order"], 40);

    // Deleting it deletes both: the older does not come back.
    backend.ok(&["delete", "gnp", "both"], None);
    assert_eq!(
        etcd.keys(&format!("{PREFIX}globalnetworkpolicies/")),
        Vec::<String>::new()
    );
    let gone = backend.fails(&["get", "gnp", "both"], None);
    assert!(gone.contains("does not exist"), "{gone}");
}

/// The agent on etcd, with traffic between workloads: these need root (BPF, network
/// namespaces), and `cargo test -- privileged::` selects them.
mod privileged {
    use super::*;

    // ---------------------------------------------------------------------------------------------
    // The agent on etcd, with traffic

    const NODE: &str = "test-node";

    /// The value calicoctl stores for a resource: JSON of the v3 object, with uid and
    /// creationTimestamp.
    fn calicoctl_json(yaml: &str) -> String {
        let value: serde_yaml::Value = serde_yaml::from_str(yaml).expect("yaml");
        let mut value: Value = serde_json::to_value(value).expect("json");
        value["metadata"]["uid"] = "0b7c3c1e-1111-4222-8333-444455556666".into();
        value["metadata"]["creationTimestamp"] = "2024-05-01T10:00:00Z".into();
        serde_json::to_string(&value).expect("json")
    }

    /// Etcd in the host namespace, holding the allow-all profile and the workloads' endpoints
    /// (put with etcdctl, as calicoctl stores them), and the agent following it.
    fn start_on_etcd(topology: &Topology, datastore: &Datastore) -> (Etcd, Agent) {
        let etcd = Etcd::start_in(Some(&topology.host.path()));
        put_base(&etcd, topology);
        let url = etcd.client_url.clone();
        let agent = Agent::start(
            topology,
            datastore,
            NODE,
            &["--datastore-type", "etcdv3", "--etcd-endpoints", &url],
        );
        let ifnames: Vec<&str> = topology
            .workloads
            .iter()
            .map(|w| w.host_ifname.as_str())
            .collect();
        agent.wait_attached(&ifnames);
        (etcd, agent)
    }

    /// The allow-all profile, the workloads' endpoints and an endpoint of another node.
    fn put_base(etcd: &Etcd, topology: &Topology) {
        etcd.put(
        &format!("{PREFIX}profiles/{ALLOW_ALL_PROFILE}"),
        &calicoctl_json(&format!(
            "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {{name: {ALLOW_ALL_PROFILE}}}\n\
             spec: {{ingress: [{{action: Allow}}], egress: [{{action: Allow}}]}}\n"
        )),
    );
        for w in &topology.workloads {
            etcd.put(
                &format!(
                    "{PREFIX}workloadendpoints/test/{NODE}-cni-wl{}-eth0",
                    w.index
                ),
                &calicoctl_json(&w.endpoint_yaml(NODE)),
            );
        }
        // An endpoint of another node: not programmed here, but its labels still feed selectors.
        etcd.put(
        &format!("{PREFIX}workloadendpoints/test/other-node-cni-remote-eth0"),
        &calicoctl_json("apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {name: other-node-cni-remote-eth0, namespace: test, labels: {app: remote}}\nspec: {node: other-node, orchestrator: cni, workload: remote, endpoint: eth0, interfaceName: caliremote0, ipNetworks: [198.18.1.99/32]}\n"),
    );
    }

    const DENY_KEY: &str =
        "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/default.deny-wl1-to-wl2";

    /// Denies TCP from wl1 to wl2 (ingress of wl2), ahead of the allow-all profile.
    fn deny_policy() -> String {
        calicoctl_json(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: default.deny-wl1-to-wl2}\n\
         spec:\n  tier: default\n  order: 10\n  selector: app == 'wl2'\n  types: [Ingress]\n  ingress:\n  \
         - {action: Deny, protocol: TCP, source: {selector: app == 'wl1'}}\n  - {action: Pass}\n",
        )
    }

    fn tcp_works(topology: &Topology) -> bool {
        let (w1, w2) = (topology.workload(1), topology.workload(2));
        tcp_echo(w1, w2, IpAddr::V4(w2.v4), "hello\n").is_ok_and(|echo| echo == "hello\n")
    }

    #[test]
    fn agent_follows_keys_put_with_etcdctl() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let (etcd, agent) = start_on_etcd(&topology, &datastore);
        assert!(
            tcp_works(&topology),
            "allowed by the profile; agent log:\n{}",
            agent.log()
        );

        etcd.put(DENY_KEY, &deny_policy());
        wait_for(
            "the deny policy to take effect",
            Duration::from_secs(10),
            || !tcp_works(&topology),
        );
        // ICMP is not denied.
        let w2 = topology.workload(2);
        assert!(topology.workload(1).ping(IpAddr::V4(w2.v4)));

        etcd.del(DENY_KEY);
        wait_for("the deny policy to go", Duration::from_secs(10), || {
            tcp_works(&topology)
        });

        // The same through the CLI: `apply` stores it, the agent enforces it; `delete` lifts it.
        let policy = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: cli-deny}\n\
                  spec:\n  order: 10\n  selector: app == 'wl2'\n  types: [Ingress]\n  ingress:\n  \
                  - {action: Deny, protocol: TCP, source: {selector: app == 'wl1'}}\n  - {action: Pass}\n";
        let applied = etcd.loader(&["apply", "-f", "-"], Some(policy));
        assert!(
            applied.status.success(),
            "apply: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
        wait_for(
            "the policy applied with the CLI to take effect",
            Duration::from_secs(10),
            || !tcp_works(&topology),
        );
        let deleted = etcd.loader(&["delete", "globalnetworkpolicy", "cli-deny"], None);
        assert!(
            deleted.status.success(),
            "delete: {}",
            String::from_utf8_lossy(&deleted.stderr)
        );
        wait_for(
            "the policy deleted with the CLI to go",
            Duration::from_secs(10),
            || tcp_works(&topology),
        );

        // The remote endpoint is not programmed on this node.
        let endpoints = agent.dump("endpoints").to_string();
        assert!(
            !endpoints.contains("caliremote0") && !endpoints.contains("198.18.1.99"),
            "{endpoints}"
        );
        agent.assert_running();
    }

    /// A GlobalNetworkPolicy of wl2's ingress in Calico 3.32's form (`new_form`) or 3.28's,
    /// named `name`, with `rules` (YAML flow sequence) ahead of the allow-all profile.
    fn wl2_policy(name: &str, new_form: bool, rules: &str) -> (String, String) {
        let stored = if new_form {
            name.to_owned()
        } else {
            format!("default.{name}")
        };
        let mut value: Value = serde_json::from_str(&calicoctl_json(&format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: {stored}}}\n\
             spec:\n  order: 10\n  selector: app == 'wl2'\n  types: [Ingress]\n  ingress: {rules}\n"
        )))
        .expect("JSON");
        if new_form {
            value["metadata"]["labels"] = serde_json::json!({"projectcalico.org/tier": "default"});
            value["metadata"]["annotations"] = serde_json::json!({"projectcalico.org/metadata": format!("{{\"name\":\"{name}\"}}")});
        }
        (
            format!("{PREFIX}globalnetworkpolicies/{stored}"),
            value.to_string(),
        )
    }

    /// How often the agent reported `name` stored twice.
    fn duplicates_logged(agent: &Agent, name: &str) -> usize {
        agent
            .log()
            .matches(&format!("GlobalNetworkPolicy {name} is stored twice"))
            .count()
    }

    /// The agent sees a policy stored in Calico 3.32's form and in 3.28's as one policy: the
    /// newer form is enforced; deleting either leaves the other in force; the duplicate is
    /// logged once while it lasts, however often the agent reads its state again.
    ///
    /// A sentinel policy that denies ping to wl2 shows when the agent has applied everything
    /// put before it (etcd's events come in order), so that a change that must not change the
    /// traffic is checked after the agent has seen it.
    #[test]
    fn agent_enforces_one_policy_stored_in_two_forms() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let (etcd, agent) = start_on_etcd(&topology, &datastore);
        let (w1, w2) = (topology.workload(1), topology.workload(2));
        assert!(tcp_works(&topology), "agent log:\n{}", agent.log());
        let deny_tcp =
            "[{action: Deny, protocol: TCP, source: {selector: app == 'wl1'}}, {action: Pass}]";
        let pass = "[{action: Pass}]";
        let (sentinel_key, sentinel) = wl2_policy(
            "sentinel",
            true,
            "[{action: Deny, protocol: ICMP}, {action: Pass}]",
        );
        // Puts the sentinel, waits until ping is denied, and takes it away again.
        let applied_so_far = || {
            etcd.put(&sentinel_key, &sentinel);
            wait_for(
                "the sentinel to take effect",
                Duration::from_secs(10),
                || !w1.ping(IpAddr::V4(w2.v4)),
            );
            etcd.del(&sentinel_key);
            wait_for("the sentinel to go", Duration::from_secs(10), || {
                w1.ping(IpAddr::V4(w2.v4))
            });
        };

        // The older form alone is enforced under its name.
        let (old_key, old_deny) = wl2_policy("two-forms", false, deny_tcp);
        etcd.put(&old_key, &old_deny);
        wait_for(
            "the older form to take effect",
            Duration::from_secs(10),
            || !tcp_works(&topology),
        );
        // The newer form of the same policy wins.
        let (new_key, new_pass) = wl2_policy("two-forms", true, pass);
        etcd.put(&new_key, &new_pass);
        wait_for("the newer form to win", Duration::from_secs(10), || {
            tcp_works(&topology)
        });
        // Other changes make the agent read its state again; the duplicate is logged once.
        for i in 0..3 {
            etcd.put(
                &format!("{PREFIX}profiles/scratch"),
                &calicoctl_json(&format!("apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {{name: scratch, labels: {{n: \"{i}\"}}}}\n")),
            );
        }
        applied_so_far();
        assert!(tcp_works(&topology), "the newer form is still in force");
        assert_eq!(duplicates_logged(&agent, "two-forms"), 1, "{}", agent.log());
        assert!(
            agent.log().contains(&format!(
                "at {new_key} (Calico 3.32's form, in force) and at {old_key} (Calico \
                 3.28-3.31's form, ignored while both exist)"
            )),
            "{}",
            agent.log()
        );

        // The newer form deleted: the older is in force again.
        etcd.del(&new_key);
        wait_for(
            "the older form to be back in force",
            Duration::from_secs(10),
            || !tcp_works(&topology),
        );

        // Both again, the newer now denying and the older passing; the older deleted: the
        // newer stays in force.
        let (_, new_deny) = wl2_policy("two-forms", true, deny_tcp);
        let (_, old_pass) = wl2_policy("two-forms", false, pass);
        etcd.put(&new_key, &new_deny);
        etcd.put(&old_key, &old_pass);
        applied_so_far();
        assert!(!tcp_works(&topology), "the newer form is in force");
        assert_eq!(
            duplicates_logged(&agent, "two-forms"),
            2,
            "a new duplicate, logged once: {}",
            agent.log()
        );
        etcd.del(&old_key);
        applied_so_far();
        assert!(!tcp_works(&topology), "the newer form stays in force");
        // The policy goes only with its last form.
        etcd.del(&new_key);
        wait_for("the policy to go", Duration::from_secs(10), || {
            tcp_works(&topology)
        });
        assert_eq!(duplicates_logged(&agent, "two-forms"), 2, "{}", agent.log());
        agent.assert_running();
    }

    /// Sends UDP from wl1 to wl2 every 100 ms until stopped; counts exchanges that failed.
    struct Probe {
        stop: Arc<AtomicBool>,
        sent: Arc<AtomicU64>,
        lost: Arc<AtomicU64>,
        thread: Option<thread::JoinHandle<()>>,
    }

    impl Probe {
        fn start(topology: &Topology) -> Self {
            let stop = Arc::new(AtomicBool::new(false));
            let sent = Arc::new(AtomicU64::new(0));
            let lost = Arc::new(AtomicU64::new(0));
            // The workloads' namespaces outlive the probe: it is stopped before the topology goes.
            let w1 = topology.workload(1).ns.path();
            let w2 = topology.workload(2).ns.path();
            let dst = topology.workload(2).v4;
            let (s, n, l) = (stop.clone(), sent.clone(), lost.clone());
            let thread = thread::spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    // Each probe: a ping of one packet, wl1 -> wl2, 1 s timeout.
                    let ok = std::process::Command::new("nsenter")
                        .arg(format!("--net={}", w1.display()))
                        .args(["ping", "-c", "1", "-W", "1", &dst.to_string()])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status()
                        .is_ok_and(|st| st.success());
                    n.fetch_add(1, Ordering::SeqCst);
                    if !ok {
                        l.fetch_add(1, Ordering::SeqCst);
                    }
                    let _ = &w2;
                    thread::sleep(Duration::from_millis(100));
                }
            });
            Self {
                stop,
                sent,
                lost,
                thread: Some(thread),
            }
        }

        fn finish(mut self) -> (u64, u64) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            (
                self.sent.load(Ordering::SeqCst),
                self.lost.load(Ordering::SeqCst),
            )
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// How many times the agent listed etcd (as opposed to resuming its watch).
    fn listings(agent: &Agent) -> usize {
        agent.log().matches("etcd listed").count()
    }

    #[test]
    fn agent_survives_etcd_restart() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let (mut etcd, mut agent) = start_on_etcd(&topology, &datastore);
        assert!(tcp_works(&topology), "agent log:\n{}", agent.log());

        // etcd goes away: forwarding and enforcement go on with the last good state.
        let probe = Probe::start(&topology);
        etcd.kill();
        thread::sleep(Duration::from_secs(3));
        assert!(tcp_works(&topology), "forwarding goes on without etcd");
        agent.assert_running();
        // Back, and a change made at once, while the agent is reconnecting.
        etcd.restart();
        etcd.put(DENY_KEY, &deny_policy());
        wait_for(
            "the change made after the restart to take effect",
            Duration::from_secs(20),
            || !tcp_works(&topology),
        );
        let (sent, lost) = probe.finish();
        assert!(sent >= 20, "probes sent: {sent}");
        assert_eq!(
            lost,
            0,
            "{lost} of {sent} pings wl1 -> wl2 failed during the outage; agent log:\n{}",
            agent.log()
        );
        // The change came through the resumed watch: no second listing.
        let log = agent.log();
        assert!(log.contains("etcd watch interrupted"), "{log}");
        assert_eq!(listings(&agent), 1, "agent log:\n{log}");
        agent.assert_running();
        agent.stop();
    }

    /// Freezes a process (SIGSTOP) until the guard goes; then it continues (SIGCONT), also when
    /// the test fails.
    struct Frozen(i32);

    impl Frozen {
        fn new(pid: i32) -> Self {
            // SAFETY: a signal to our own child.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
            Self(pid)
        }
    }

    impl Drop for Frozen {
        fn drop(&mut self) {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(self.0, libc::SIGCONT) };
        }
    }

    /// After an interruption the agent resumes its watch from the last revision it saw + 1, so
    /// changes made meanwhile arrive as events and nothing is listed; when etcd has compacted that
    /// revision away, etcd refuses the resumed watch ("compacted") and the agent falls back to a
    /// full list and a new watch; when etcd's revision is behind what the agent saw (its data
    /// replaced), it lists as well.
    ///
    /// Made deterministic by freezing the agent (SIGSTOP) while etcd restarts: its watch
    /// connection breaks before the changes that follow, which it cannot see. Thawed, it finds the
    /// connection gone and resumes from its last revision, which is still there (1), compacted
    /// (2) or beyond a new, empty store's revision (3). Each time the traffic between the
    /// workloads shows the agent converged on etcd's state, and the log which way it went.
    #[test]
    fn agent_resumes_its_watch_and_lists_again_only_after_compaction() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let (mut etcd, agent) = start_on_etcd(&topology, &datastore);
        assert!(tcp_works(&topology), "agent log:\n{}", agent.log());
        assert_eq!(listings(&agent), 1, "agent log:\n{}", agent.log());
        let pid = agent.pid().expect("agent running");
        // The agent writes its Node in the background; its write (and the watch event it
        // brings back) must be over before the agent is frozen, or the revision the watch
        // resumes from is not the one this test expects.
        wait_for("the agent's Node", Duration::from_secs(20), || {
            agent.log().contains("Node created")
        });
        std::thread::sleep(Duration::from_secs(1));

        // 1. Resumed: the deny policy, put while the agent was cut off, arrives through the
        // resumed watch.
        let frozen = Frozen::new(pid);
        etcd.restart();
        let resume_from = etcd.revision() + 1;
        etcd.put(DENY_KEY, &deny_policy());
        drop(frozen);
        wait_for(
            "the change to arrive through the resumed watch",
            Duration::from_secs(20),
            || !tcp_works(&topology),
        );
        let log = agent.log();
        assert!(
            log.contains(&format!("resuming the watch from revision {resume_from}")),
            "{log}"
        );
        assert_eq!(listings(&agent), 1, "resumed without a listing:\n{log}");
        assert!(!log.contains("falling back to a full list"), "{log}");

        // 2. Compacted: cut off again, changes (the last one removes the deny policy) and a
        // compaction past them; the agent's resumed watch gets etcd's compaction error.
        let frozen = Frozen::new(pid);
        etcd.restart();
        let resume_from = etcd.revision() + 1;
        let scratch = format!("{PREFIX}profiles/scratch");
        for i in 0..5 {
            etcd.put(&scratch, &calicoctl_json(&format!("apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {{name: scratch, labels: {{n: \"{i}\"}}}}\n")));
        }
        etcd.del(DENY_KEY);
        let compacted = etcd.revision();
        assert!(compacted > resume_from, "{compacted} > {resume_from}");
        etcd.etcdctl(&["compact", &compacted.to_string()]);
        drop(frozen);
        wait_for(
            "the agent to list again after the compaction",
            Duration::from_secs(20),
            || tcp_works(&topology),
        );
        let log = agent.log();
        assert!(
        log.contains(&format!(
            "etcd watch from revision {resume_from} refused: compacted (oldest kept: {compacted}); \
             falling back to a full list and a new watch"
        )),
        "the compaction fallback is logged:\n{log}"
    );
        assert_eq!(listings(&agent), 2, "listed once more:\n{log}");

        // 3. Rewound: the deny policy again (through the watch), then etcd's data replaced by a
        // new store without it, whose revisions start again from 1.
        etcd.put(DENY_KEY, &deny_policy());
        wait_for(
            "the deny policy to take effect",
            Duration::from_secs(10),
            || !tcp_works(&topology),
        );
        let frozen = Frozen::new(pid);
        etcd.restart_empty();
        put_base(&etcd, &topology);
        drop(frozen);
        wait_for(
            "the agent to list the replaced store",
            Duration::from_secs(20),
            || tcp_works(&topology),
        );
        let log = agent.log();
        assert!(
            log.contains("its data was replaced; falling back to a full list and a new watch"),
            "{log}"
        );
        assert_eq!(listings(&agent), 3, "listed once more:\n{log}");
        agent.assert_running();
    }

    /// Sends UDP datagrams from `src` (an address of wl1's eth0) to wl2; whether one reached
    /// wl2's socket with that source. Each call uses a new source port, so a conntrack entry of
    /// an earlier call does not decide.
    fn udp_from_wl1(topology: &Topology, src: Ipv4Addr) -> bool {
        let (w1, w2) = (topology.workload(1), topology.workload(2));
        let dst = SocketAddr::from((w2.v4, 5399));
        let receiver = w2.ns.enter(move || {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5399)).expect("bind UDP receiver");
            socket
                .set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            socket
        });
        let sender = w1
            .ns
            .enter(move || UdpSocket::bind((src, 0)).expect("bind UDP sender"));
        for _ in 0..3 {
            let _ = sender.send_to(b"probe", dst);
        }
        let mut buf = [0u8; 64];
        matches!(receiver.recv_from(&mut buf), Ok((n, from)) if &buf[..n] == b"probe" && from.ip() == IpAddr::V4(src))
    }

    /// The address wl1 may send from besides its own, and that a WorkloadEndpoint of another node
    /// holds.
    const REMOTE_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 5);
    const REMOTE_KEY: &str =
        "/calico/resources/v3/projectcalico.org/workloadendpoints/test/other-node-cni-client-eth0";

    fn remote_endpoint(role: &str) -> String {
        calicoctl_json(&format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
         metadata: {{name: other-node-cni-client-eth0, namespace: test, labels: {{role: {role}}}}}\n\
         spec: {{node: other-node, orchestrator: cni, workload: client, endpoint: eth0, \
         interfaceName: caliclient0, ipNetworks: [{REMOTE_ADDRESS}/32]}}\n"
        ))
    }

    /// Endpoints of other nodes feed the selectors of this node's policy, seen with real traffic.
    ///
    /// wl2 (local) accepts UDP only from endpoints labelled `role == 'client'`, and wl1 (local)
    /// is not one. wl1 may also send from 198.18.5.5 (its `allowSpoofedSourcePrefixes`; the address
    /// is on its eth0), an address no endpoint of this node has but a WorkloadEndpoint of another
    /// node does. So UDP from wl1 to wl2 sent from 198.18.5.5 reaches wl2's socket exactly while
    /// that remote endpoint exists with `role: client`; from wl1's own address it never does.
    /// Datagrams go one way, so nothing needs a route back to 198.18.5.5. The remote endpoint is
    /// never programmed here.
    #[test]
    fn remote_endpoints_feed_local_policy_selectors() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        let (etcd, agent) = start_on_etcd(&topology, &datastore);
        let (w1, w2) = (topology.workload(1), topology.workload(2));
        assert!(w1.ping(IpAddr::V4(w2.v4)), "agent log:\n{}", agent.log());

        // wl1 may send from the remote endpoint's address; the allow-all profile lets it through.
        etcd.put(
            &format!("{PREFIX}workloadendpoints/test/{NODE}-cni-wl1-eth0"),
            &calicoctl_json(&format!(
                "{}  allowSpoofedSourcePrefixes: [{REMOTE_ADDRESS}/32]\n",
                w1.endpoint_yaml(NODE)
            )),
        );
        w1.ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{REMOTE_ADDRESS}/32"),
            "dev",
            "eth0",
        ]);
        wait_for(
            "UDP from 198.18.5.5 to pass (allowSpoofedSourcePrefixes)",
            Duration::from_secs(10),
            || udp_from_wl1(&topology, REMOTE_ADDRESS),
        );

        // wl2 accepts UDP only from clients; other protocols go on to the profile.
        etcd.put(
        &format!("{PREFIX}globalnetworkpolicies/default.clients-only"),
        &calicoctl_json(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: default.clients-only}\n\
             spec:\n  tier: default\n  order: 10\n  selector: app == 'wl2'\n  types: [Ingress]\n  ingress:\n  \
             - {action: Allow, protocol: UDP, source: {selector: role == 'client'}}\n  \
             - {action: Deny, protocol: UDP}\n  - {action: Pass}\n",
        ),
    );
        wait_for(
            "UDP from 198.18.5.5 to be denied: no client has it",
            Duration::from_secs(20),
            || !udp_from_wl1(&topology, REMOTE_ADDRESS),
        );
        assert!(!udp_from_wl1(&topology, w1.v4), "wl1 is no client");

        // The remote client appears: its address is allowed, wl1's own still is not.
        etcd.put(REMOTE_KEY, &remote_endpoint("client"));
        wait_for(
            "UDP from the remote client's address to pass",
            Duration::from_secs(20),
            || udp_from_wl1(&topology, REMOTE_ADDRESS),
        );
        assert!(!udp_from_wl1(&topology, w1.v4), "wl1 is still no client");
        assert!(tcp_works(&topology), "TCP goes on to the profile");

        // Its label changes: no longer a client.
        etcd.put(REMOTE_KEY, &remote_endpoint("server"));
        wait_for(
            "UDP from 198.18.5.5 to be denied again",
            Duration::from_secs(20),
            || !udp_from_wl1(&topology, REMOTE_ADDRESS),
        );

        // A client again, then deleted.
        etcd.put(REMOTE_KEY, &remote_endpoint("client"));
        wait_for("UDP to pass again", Duration::from_secs(20), || {
            udp_from_wl1(&topology, REMOTE_ADDRESS)
        });
        etcd.del(REMOTE_KEY);
        wait_for(
            "UDP from 198.18.5.5 to be denied once the remote endpoint is gone",
            Duration::from_secs(20),
            || !udp_from_wl1(&topology, REMOTE_ADDRESS),
        );

        // Never programmed as an endpoint of this node: only wl1 and wl2 are, and 198.18.5.5 is
        // only wl1's allowed source, no local endpoint's address. The route map knows it as the
        // other node's.
        etcd.put(REMOTE_KEY, &remote_endpoint("client"));
        wait_for("UDP to pass again", Duration::from_secs(20), || {
            udp_from_wl1(&topology, REMOTE_ADDRESS)
        });
        let endpoints = agent.dump("endpoints");
        let rows = endpoints.as_array().expect("endpoints");
        let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
        assert_eq!(
            names,
            ["test/test-node-cni-wl1-eth0", "test/test-node-cni-wl2-eth0"],
            "{endpoints}"
        );
        assert!(
            rows.iter()
                .all(|r| !r["addresses"].to_string().contains("198.18.5.5")),
            "{endpoints}"
        );
        let routes = agent.dump("routes");
        let route = routes
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["prefix"] == "198.18.5.5/32"))
            .unwrap_or_else(|| panic!("no route to the remote endpoint: {routes}"));
        assert_eq!(
            (&route["kind"], &route["node"], &route["interface"]),
            (&"remote-workload".into(), &"other-node".into(), &"".into()),
            "{routes}"
        );
        agent.assert_running();
    }
}

/// The CLI over TLS, as calicoctl is set up for it: etcd on `https://127.0.0.1` with
/// certificates made by `openssl` for the test, requiring client certificates
/// (`--client-cert-auth`); `ETCD_CA_CERT_FILE`, `ETCD_CERT_FILE`, `ETCD_KEY_FILE`. Every kind
/// round-trips; without the client certificate, or without the CA, the CLI fails and says why.
#[test]
fn cli_over_tls_with_client_certificates() {
    let backend = Backend::Etcd(Etcd::start_tls());
    let Backend::Etcd(etcd) = &backend else {
        unreachable!()
    };
    assert!(etcd.client_url.starts_with("https://127.0.0.1:"));
    round_trip(&backend);

    let profile = "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: over-tls}\nspec: {ingress: [{action: Allow}]}\n";
    backend.ok(&["apply", "-f", "-"], Some(profile));
    assert_eq!(
        backend.get_json("profile", "over-tls", None)["metadata"]["name"],
        "over-tls"
    );
    assert!(etcd.get(&format!("{PREFIX}profiles/over-tls")).is_some());

    let fails = |what: &str, adjust: &dyn Fn(&mut std::process::Command)| -> String {
        let out = etcd.loader_with(&["get", "profile", "over-tls"], None, adjust);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "{what}: should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains(&etcd.client_url),
            "{what}: names the endpoint: {stderr}"
        );
        stderr
    };
    let no_client_cert = fails(
        "without a client certificate",
        &|c: &mut std::process::Command| {
            c.env_remove("ETCD_CERT_FILE").env_remove("ETCD_KEY_FILE");
        },
    );
    assert!(
        no_client_cert.contains("etcd closed the TLS connection")
            && no_client_cert.contains("set ETCD_CERT_FILE and ETCD_KEY_FILE"),
        "says a client certificate may be missing: {no_client_cert}"
    );
    let no_ca = fails("without the CA", &|c: &mut std::process::Command| {
        c.env_remove("ETCD_CA_CERT_FILE");
    });
    assert!(
        no_ca.contains("invalid peer certificate: UnknownIssuer")
            && no_ca.contains("set ETCD_CA_CERT_FILE"),
        "says etcd's certificate is not trusted: {no_ca}"
    );
    // A certificate without its key is refused before connecting.
    let out = etcd.loader_with(&["get", "profile"], None, |c| {
        c.env_remove("ETCD_KEY_FILE");
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ETCD_CERT_FILE and ETCD_KEY_FILE go together"),
        "{stderr}"
    );
}
