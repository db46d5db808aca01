//! Calico IPAM through the CLI (`calico-loader ipam ...`), against a real etcd (Debian's
//! etcd-server on 127.0.0.1, a temporary data directory) and against the local directory:
//! assigning, releasing, borrowing, giving up empty blocks, the block limit, 50 processes
//! assigning at once, Calico's keys and JSON byte for byte, IPAMConfiguration's key, and bad
//! input.

mod support;

use std::{collections::BTreeSet, net::IpAddr};

use serde_json::Value;
use support::cli::Backend;

impl Backend {
    /// Every IPAM key, as etcd or the directory holds them.
    fn ipam_keys(&self) -> BTreeSet<String> {
        match self {
            Backend::Etcd(etcd) => etcd.keys("/calico/ipam/").into_iter().collect(),
            Backend::Local(dir) => {
                let mut keys = BTreeSet::new();
                let mut pending = vec![dir.path().join("ipam")];
                while let Some(d) = pending.pop() {
                    for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                        let path = entry.path();
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name.starts_with('.') {
                            continue;
                        }
                        if path.is_dir() {
                            pending.push(path);
                        } else {
                            let rel = path.strip_prefix(dir.path()).expect("under the dir");
                            keys.insert(format!("/calico/{}", rel.display()));
                        }
                    }
                }
                keys
            }
        }
    }

    /// The value of an IPAM key.
    fn value(&self, key: &str) -> Option<String> {
        match self {
            Backend::Etcd(etcd) => etcd.get(key),
            Backend::Local(dir) => {
                std::fs::read_to_string(dir.path().join(key.trim_start_matches("/calico/"))).ok()
            }
        }
    }

    fn json(&self, key: &str) -> Value {
        let text = self
            .value(key)
            .unwrap_or_else(|| panic!("{key} is missing"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{key}: {e}: {text}"))
    }

    fn assign(&self, node: &str, handle: &str, extra: &[&str]) -> Vec<IpAddr> {
        let mut args = vec!["ipam", "assign", "--node", node, "--handle", handle];
        args.extend(extra);
        self.ok(&args, None)
            .lines()
            .map(|l| l.parse().unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }
}

const TINY_POOL: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: tiny}
spec: {cidr: 198.18.0.0/28, blockSize: 30}
";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

/// Assign, release, the block limit, borrowing, strict affinity and empty blocks given up, on
/// a pool of four blocks of four addresses.
fn blocks_claimed_borrowed_and_released(backend: &Backend) {
    backend.ok(&["apply", "-f", "-"], Some(TINY_POOL));
    let block = |cidr: &str| format!("/calico/ipam/v2/assignment/ipv4/block/{cidr}");
    let affinity =
        |node: &str, cidr: &str| format!("/calico/ipam/v2/host/{node}/ipv4/block/{cidr}");

    // node-a: one address, from a block it claims (confirmed affinity, block affine to it).
    let a1 = backend.assign("node-a", "a1", &[]);
    assert_eq!(
        a1.len(),
        1,
        "one IPv4 address by default, none without an IPv6 pool"
    );
    let a_block = backend
        .ipam_keys()
        .into_iter()
        .find(|k| k.starts_with("/calico/ipam/v2/host/node-a/"))
        .expect("node-a has an affinity");
    let a_cidr = a_block.rsplit('/').next().expect("cidr").to_owned();
    assert_eq!(
        backend.json(&a_block),
        serde_json::json!({"state": "confirmed", "deleted": false})
    );
    let b = backend.json(&block(&a_cidr));
    assert_eq!(b["affinity"], "host:node-a");
    assert_eq!(b["attributes"][0]["handle_id"], "a1");
    assert_eq!(b["attributes"][0]["secondary"]["node"], "node-a");
    assert_eq!(
        backend.json("/calico/ipam/v2/handle/a1")["block"][a_cidr.replacen('-', "/", 1)],
        1
    );

    // Three more fill node-a's block; a fifth claims a second block.
    let a2 = backend.assign("node-a", "a2", &["--ipv4", "3"]);
    assert_eq!(a2.len(), 3);
    let a5 = backend.assign("node-a", "a5", &[]);
    let all: BTreeSet<IpAddr> = a1.iter().chain(&a2).chain(&a5).copied().collect();
    assert_eq!(all.len(), 5, "distinct addresses: {all:?}");
    let a_blocks: Vec<String> = backend
        .ipam_keys()
        .into_iter()
        .filter(|k| k.starts_with("/calico/ipam/v2/host/node-a/"))
        .collect();
    assert_eq!(a_blocks.len(), 2, "{a_blocks:?}");
    let second = a_blocks
        .iter()
        .map(|k| k.rsplit('/').next().unwrap_or_default().to_owned())
        .find(|c| *c != a_cidr)
        .expect("a second block");

    // Releasing the fifth leaves the second block empty: node-a gives it up (affinity and block
    // gone), keeping its first.
    let out = backend.ok(&["ipam", "release", "--handle", "a5"], None);
    assert_eq!(out.trim(), format!("released {}", a5[0]));
    let keys = backend.ipam_keys();
    assert!(!keys.contains(&block(&second)), "{keys:?}");
    assert!(!keys.contains(&affinity("node-a", &second)), "{keys:?}");
    assert!(!keys.contains("/calico/ipam/v2/handle/a5"), "{keys:?}");
    assert!(keys.contains(&block(&a_cidr)), "{keys:?}");

    // node-b, node-c, node-d take the other three blocks (one address each, then full).
    for node in ["node-b", "node-c", "node-d"] {
        backend.assign(node, &format!("{node}-1"), &["--ipv4", "4"]);
    }
    // node-a's block is full and no block is left: the maxBlocksPerHost limit is not the
    // reason, so it borrows... except every block is full.
    let err = backend.fails(
        &["ipam", "assign", "--node", "node-a", "--handle", "x"],
        None,
    );
    assert!(
        err.contains("assigned 0 of 1 requested IPv4 addresses"),
        "{err}"
    );
    assert!(err.contains("198.18.0.0/28"), "{err}");

    // Free one address of node-b's block: node-a borrows it (strictAffinity is false).
    let b_ips: Vec<IpAddr> = backend
        .ok(&["ipam", "release", "--handle", "node-b-1"], None)
        .lines()
        .map(|l| ip(l.trim_start_matches("released ")))
        .collect();
    assert_eq!(b_ips.len(), 4);
    // node-b keeps its (only) block, empty.
    let keys = backend.ipam_keys();
    let b_block = keys
        .iter()
        .find(|k| k.starts_with("/calico/ipam/v2/host/node-b/"))
        .expect("node-b keeps its last block")
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let borrowed = backend.assign("node-a", "borrowed", &[]);
    let b_net: ipnet::IpNet = b_block.replacen('-', "/", 1).parse().expect("cidr");
    assert!(b_net.contains(&borrowed[0]), "{borrowed:?} from {b_net}");
    let bj = backend.json(&block(&b_block));
    assert_eq!(
        bj["affinity"], "host:node-b",
        "borrowing does not move the block"
    );
    assert_eq!(bj["attributes"][0]["secondary"]["node"], "node-a");

    // With strictAffinity, node-a may not borrow.
    backend.ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {strictAffinity: true}\n",
        ),
    );
    let err = backend.fails(
        &["ipam", "assign", "--node", "node-a", "--handle", "y"],
        None,
    );
    assert!(err.contains("strictAffinity"), "{err}");

    // maxBlocksPerHost 1: node-e may claim one block only... and none is free; a new node
    // whose limit is reached says so. Release node-c's block to make room, then node-c's
    // second claim hits the limit.
    backend.ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {strictAffinity: true, maxBlocksPerHost: 1}\n",
        ),
    );
    let err = backend.fails(
        &["ipam", "assign", "--node", "node-c", "--handle", "z"],
        None,
    );
    assert!(
        err.contains("maxBlocksPerHost") && err.contains("1"),
        "{err}"
    );

    // Releasing by address; a second release of it is refused; check finds the leaks (no
    // endpoints hold the addresses) and no inconsistency between blocks and handles.
    let out = backend.ok(&["ipam", "release", "--ip", &borrowed[0].to_string()], None);
    assert!(out.contains("released"), "{out}");
    let err = backend.fails(&["ipam", "release", "--ip", &borrowed[0].to_string()], None);
    assert!(err.contains("is not assigned"), "{err}");
    // Leaks are problems: the report is on stdout, and the exit status says so.
    let out = backend.loader(&["ipam", "check"], None);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "leaks make check fail: {report}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("IPAM check found 12 problem(s)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let in_use = 4 + 4 + 4; // node-a's block, node-c's and node-d's
    assert!(
        report.contains(&format!(
            "Found {in_use} IPs that are allocated in IPAM but not actually in use."
        )),
        "{report}"
    );
    assert!(
        report.contains("Found 0 handles mentioned in blocks"),
        "{report}"
    );
    assert!(
        report.contains("Found 0 handle counts that disagree"),
        "{report}"
    );

    let show = backend.ok(&["ipam", "show", "--show-blocks"], None);
    assert!(show.contains("| GROUPING |"), "{show}");
    let pool_row = show
        .lines()
        .find(|l| l.starts_with("| IP Pool"))
        .unwrap_or_else(|| panic!("no pool row: {show}"));
    assert!(pool_row.contains("| 198.18.0.0/28 "), "{show}");
    assert!(pool_row.contains("| 16 "), "{show}");
    assert!(pool_row.contains(&format!("| {in_use} (75%) ")), "{show}");
    assert!(show.contains("| Block    |"), "{show}");
}

#[test]
fn blocks_claimed_borrowed_and_released_on_etcd() {
    blocks_claimed_borrowed_and_released(&Backend::etcd());
}

#[test]
fn blocks_claimed_borrowed_and_released_in_a_directory() {
    blocks_claimed_borrowed_and_released(&Backend::local());
}

/// 50 processes assign at once on one host: 50 distinct addresses, handles that count them,
/// nothing leaked; then 50 release at once and nothing is left but the host's block.
fn fifty_at_once(backend: &Backend) {
    backend.ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p4}\nspec: {cidr: 198.18.0.0/24}\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p6}\nspec: {cidr: \"2001:db8::/120\"}\n",
        ),
    );
    let spawn_all = |verb: &str| {
        let children: Vec<_> = (0..50)
            .map(|i| {
                let handle = format!("container-{i}");
                let args: Vec<&str> = match verb {
                    "assign" => vec!["ipam", "assign", "--node", "node1", "--handle", &handle],
                    _ => vec!["ipam", "release", "--handle", &handle],
                };
                backend.command(&args).spawn().expect("spawn")
            })
            .collect();
        children
            .into_iter()
            .map(|c| {
                let out = c.wait_with_output().expect("output");
                assert!(
                    out.status.success(),
                    "{verb} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            })
            .collect::<Vec<_>>()
    };
    let outputs = spawn_all("assign");
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for out in &outputs {
        let lines: Vec<IpAddr> = out.lines().map(ip).collect();
        assert_eq!(lines.len(), 2, "one IPv4 then one IPv6: {out}");
        assert!(lines[0].is_ipv4() && lines[1].is_ipv6(), "{out}");
        v4.insert(lines[0]);
        v6.insert(lines[1]);
    }
    assert_eq!(v4.len(), 50, "distinct IPv4 addresses");
    assert_eq!(v6.len(), 50, "distinct IPv6 addresses");
    // No endpoint holds them, so all 100 are leaks to check (which fails), but blocks and
    // handles agree.
    let out = backend.loader(&["ipam", "check"], None);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{report}");
    assert!(
        report.contains("Found 100 IPs that are allocated in IPAM but not actually in use."),
        "{report}"
    );
    assert!(
        report.contains("IPAM blocks record 100 allocations."),
        "{report}"
    );
    assert!(
        report.contains("Found 0 handles with no matching IPs (and 50 handles with matches)."),
        "{report}"
    );
    assert!(
        report.contains("Found 0 handle counts that disagree"),
        "{report}"
    );
    assert!(
        report.contains("Found 0 handles mentioned in blocks"),
        "{report}"
    );

    spawn_all("release");
    let keys = backend.ipam_keys();
    assert!(
        !keys
            .iter()
            .any(|k| k.starts_with("/calico/ipam/v2/handle/")),
        "no handle left: {keys:?}"
    );
    let report = backend.ok(&["ipam", "check"], None);
    assert!(
        report.contains("IPAM blocks record 0 allocations."),
        "{report}"
    );
    assert!(
        report.contains("Check complete; found 0 problems."),
        "{report}"
    );
}

#[test]
fn fifty_concurrent_assigns_on_etcd() {
    fifty_at_once(&Backend::etcd());
}

#[test]
fn fifty_concurrent_assigns_in_a_directory() {
    fifty_at_once(&Backend::local());
}

/// Values as libcalico-go writes them, put with etcdctl, are read and changed by the CLI; what
/// the CLI writes reads back with Calico's field names and order.
#[test]
fn keys_and_values_match_calico() {
    let backend = Backend::etcd();
    let Backend::Etcd(etcd) = &backend else {
        unreachable!()
    };
    backend.ok(&["apply", "-f", "-"], Some(TINY_POOL));
    // A block node-x owns with two addresses of handle k8s-pod-network.abc, its affinity (an
    // empty value, as older Calico wrote) and its handle, exactly as Calico stores them.
    etcd.put(
        "/calico/ipam/v2/assignment/ipv4/block/198.18.0.4-30",
        r#"{"cidr":"198.18.0.4/30","affinity":"host:node-x","allocations":[0,null,0,null],"unallocated":[1,3],"attributes":[{"handle_id":"k8s-pod-network.abc","secondary":{"namespace":"default","node":"node-x","pod":"web","timestamp":"2024-05-01 10:00:00.000000001 +0000 UTC"}}],"sequenceNumber":1714557600000000000,"sequenceNumberForAllocation":{"0":1714557599000000000,"2":1714557599000000001},"deleted":false}"#,
    );
    etcd.put("/calico/ipam/v2/host/node-x/ipv4/block/198.18.0.4-30", "");
    etcd.put(
        "/calico/ipam/v2/handle/k8s-pod-network.abc",
        r#"{"block":{"198.18.0.4/30":2},"deleted":false}"#,
    );
    etcd.put(
        "/calico/ipam/v2/config",
        r#"{"strict_affinity":false,"auto_allocate_blocks":true}"#,
    );
    let show = backend.ok(&["ipam", "show", "--show-blocks"], None);
    let block_row = show
        .lines()
        .find(|l| l.starts_with("| Block"))
        .unwrap_or_else(|| panic!("no block row: {show}"));
    assert!(
        block_row.contains("| 198.18.0.4/30 ") && block_row.contains("| 2 (50%) "),
        "{show}"
    );
    // Its two addresses have no endpoint: leaks, so check reports them and fails; but the
    // handle's counts agree with the block.
    let out = backend.loader(&["ipam", "check"], None);
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{report}");
    assert!(
        report.contains("Found 0 handle counts that disagree")
            && report.contains("Check complete; found 2 problems."),
        "{report}"
    );
    // node-x uses its block (confirmed, as an empty affinity value is).
    let got = backend.assign("node-x", "h2", &[]);
    assert_eq!(got, [ip("198.18.0.5")], "first free ordinal first");
    assert_eq!(
        etcd.get("/calico/ipam/v2/assignment/ipv4/block/198.18.0.4-30")
            .expect("block"),
        r#"{"cidr":"198.18.0.4/30","affinity":"host:node-x","allocations":[0,1,0,null],"unallocated":[3],"attributes":[{"handle_id":"k8s-pod-network.abc","secondary":{"namespace":"default","node":"node-x","pod":"web","timestamp":"2024-05-01 10:00:00.000000001 +0000 UTC"}},{"handle_id":"h2","secondary":{"node":"node-x"}}],"sequenceNumber":1714557600000000001,"sequenceNumberForAllocation":{"0":1714557599000000000,"1":1714557600000000000,"2":1714557599000000001},"deleted":false}"#
    );
    assert_eq!(
        etcd.get("/calico/ipam/v2/handle/h2").expect("handle"),
        r#"{"block":{"198.18.0.4/30":1},"deleted":false}"#
    );
    // Releasing Calico's handle frees ordinals 0 and 2 (its attribute goes, h2's is renumbered)
    // and deletes the handle.
    let out = backend.ok(
        &["ipam", "release", "--handle", "k8s-pod-network.abc"],
        None,
    );
    assert_eq!(out, "released 198.18.0.4\nreleased 198.18.0.6\n");
    assert_eq!(
        etcd.get("/calico/ipam/v2/assignment/ipv4/block/198.18.0.4-30")
            .expect("block"),
        r#"{"cidr":"198.18.0.4/30","affinity":"host:node-x","allocations":[null,0,null,null],"unallocated":[3,0,2],"attributes":[{"handle_id":"h2","secondary":{"node":"node-x"}}],"sequenceNumber":1714557600000000002,"sequenceNumberForAllocation":{"1":1714557600000000000},"deleted":false}"#
    );
    assert_eq!(etcd.get("/calico/ipam/v2/handle/k8s-pod-network.abc"), None);

    // A block claimed by the CLI: Calico's fields, in Go's order; the affinity confirmed.
    backend.assign("node-y", "h3", &[]);
    let key = etcd
        .keys("/calico/ipam/v2/host/node-y/")
        .pop()
        .expect("node-y's affinity");
    assert_eq!(
        etcd.get(&key).as_deref(),
        Some(r#"{"state":"confirmed","deleted":false}"#)
    );
    let cidr = key.rsplit('/').next().expect("cidr");
    let value = etcd
        .get(&format!("/calico/ipam/v2/assignment/ipv4/block/{cidr}"))
        .expect("block");
    let fields: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(&value)
        .map(|m| m.keys().cloned().collect())
        .expect("an object");
    let order: Vec<usize> = [
        "\"cidr\"",
        "\"affinity\"",
        "\"affinity_claim_time\"",
        "\"allocations\"",
        "\"unallocated\"",
        "\"attributes\"",
        "\"sequenceNumber\"",
        "\"sequenceNumberForAllocation\"",
        "\"deleted\"",
    ]
    .iter()
    .map(|f| {
        value
            .find(f)
            .unwrap_or_else(|| panic!("{f} missing in {value}"))
    })
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "Go's field order: {value}"
    );
    assert_eq!(fields.len(), 9, "{value}");
}

/// IPAMConfiguration lives at /calico/ipam/v2/config in libcalico-go's shape; apply, get and
/// delete work on it with the v3 shape; the name must be default.
fn ipam_configuration(backend: &Backend) {
    let config = "apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {strictAffinity: true, maxBlocksPerHost: 4}\n";
    backend.ok(&["apply", "-f", "-"], Some(config));
    assert_eq!(
        backend.value("/calico/ipam/v2/config").as_deref(),
        Some(r#"{"strict_affinity":true,"auto_allocate_blocks":true,"maxBlocksPerHost":4}"#)
    );
    let got: Value =
        serde_json::from_str(&backend.ok(&["get", "ipamconfig", "default", "-o", "json"], None))
            .expect("json");
    assert_eq!(got["kind"], "IPAMConfiguration");
    assert_eq!(got["metadata"]["name"], "default");
    assert_eq!(
        got["spec"],
        serde_json::json!({"strictAffinity": true, "autoAllocateBlocks": true, "maxBlocksPerHost": 4})
    );
    let listed = backend.ok(&["get", "ipamconfigurations"], None);
    assert!(listed.contains("default"), "{listed}");
    let err = backend.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: other}\nspec: {}\n"),
    );
    assert!(
        err.contains("metadata.name") && err.contains("\"default\""),
        "{err}"
    );
    let err = backend.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {name: default}\nspec: {maxBlocksPerHost: -1}\n"),
    );
    assert!(err.contains("spec.maxBlocksPerHost"), "{err}");
    backend.ok(&["delete", "ipamconfig", "default"], None);
    assert_eq!(backend.value("/calico/ipam/v2/config"), None);
}

#[test]
fn ipam_configuration_on_etcd() {
    let backend = Backend::etcd();
    ipam_configuration(&backend);
    // calicoctl's own v3 key for it is passed over by the agent's reader, not an error.
    let Backend::Etcd(etcd) = &backend else {
        unreachable!()
    };
    etcd.put(
        "/calico/resources/v3/projectcalico.org/ipamconfigurations/default",
        r#"{"kind":"IPAMConfiguration","apiVersion":"projectcalico.org/v3","metadata":{"name":"default"},"spec":{"strictAffinity":false,"autoAllocateBlocks":true}}"#,
    );
    let listed = backend.ok(&["get", "ipamconfig"], None);
    assert!(!listed.contains("default"), "{listed}");
}

#[test]
fn ipam_configuration_in_a_directory() {
    ipam_configuration(&Backend::local());
}

/// Overlapping pools, block sizes out of range, and addresses that are not addresses or are
/// outside the pools are refused with errors that say so.
#[test]
fn bad_input_is_refused_clearly() {
    let backend = Backend::local();
    backend.ok(&["apply", "-f", "-"], Some(TINY_POOL));
    let err = backend.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: big}\nspec: {cidr: 198.18.0.0/16}\n"),
    );
    assert!(
        err.contains("overlaps IPPool tiny (198.18.0.0/28)"),
        "{err}"
    );
    let err = backend.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: small}\nspec: {cidr: 198.19.0.0/16, blockSize: 19}\n"),
    );
    assert!(
        err.contains("spec.blockSize") && err.contains("between 20 and 32"),
        "{err}"
    );
    let err = backend.fails(
        &[
            "ipam",
            "assign",
            "--node",
            "n",
            "--handle",
            "h",
            "--ip",
            "198.18.0.300",
        ],
        None,
    );
    assert!(
        err.contains("invalid value '198.18.0.300' for '--ip"),
        "{err}"
    );
    let err = backend.fails(
        &[
            "ipam",
            "assign",
            "--node",
            "n",
            "--handle",
            "h",
            "--ip",
            "198.19.0.1",
        ],
        None,
    );
    assert!(
        err.contains("198.19.0.1 is not in any enabled IP pool"),
        "{err}"
    );
    let err = backend.fails(
        &[
            "ipam",
            "assign",
            "--node",
            "n",
            "--handle",
            "h",
            "--pool",
            "198.19.0.0/24",
        ],
        None,
    );
    assert!(
        err.contains("the given pool (198.19.0.0/24) does not exist"),
        "{err}"
    );
    let err = backend.fails(&["ipam", "assign", "--node", "n", "--handle", "a/b"], None);
    assert!(err.contains("invalid handle"), "{err}");
    // A requested address is assigned; twice is refused.
    assert_eq!(
        backend.assign("n", "h", &["--ip", "198.18.0.9"]),
        [ip("198.18.0.9")]
    );
    let err = backend.fails(
        &[
            "ipam",
            "assign",
            "--node",
            "m",
            "--handle",
            "h2",
            "--ip",
            "198.18.0.9",
        ],
        None,
    );
    assert!(err.contains("198.18.0.9 is already assigned"), "{err}");
    // The agent's reader does not see IPAM's files as resources.
    let listed = backend.ok(&["get", "ippools"], None);
    assert!(listed.contains("tiny"), "{listed}");
}
