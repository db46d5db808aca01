//! Fuzz targets (bolero) for the parsers that read what users, runtimes and BIRD hand us: the
//! selector parser, the resource parser (YAML and JSON, every kind), the CNI network
//! configuration and the rows of `birdc show protocols`.
//!
//! Under `cargo test` each target runs its committed corpus (`tests/__fuzz__/<target>/corpus`)
//! and then random inputs for about a second; `BOLERO_RANDOM_TEST_TIME_MS` or
//! `BOLERO_RANDOM_ITERATIONS` make the run longer, `BOLERO_RANDOM_SEED` replays one input (a
//! failure prints it). docs/fuzzing.md has the commands.
//!
//! Most inputs are seeds (`tests/fuzz_seeds/`, valid files) with edits applied: bytes deleted,
//! replaced or duplicated, the text cut short, tokens of the format inserted. That reaches the
//! validation behind the syntax, which random bytes alone rarely do.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use bolero::check;
use calico_loader::{
    bgp::{ProtocolStatus, SessionKind, parse_protocols},
    cni::config::{Environment, NetConf},
    datastore::{parse_documents, parse_file, selector::Selector},
};

/// How long each target runs random inputs under `cargo test` (the environment can raise it).
const SHORT_RUN: Duration = Duration::from_secs(1);

/// Counts the inputs a target ran and those its parser accepted, and checks at the end that
/// both sides were exercised.
#[derive(Default)]
struct Tally {
    inputs: AtomicUsize,
    accepted: AtomicUsize,
}

impl Tally {
    fn count(&self, accepted: bool) {
        self.inputs.fetch_add(1, Ordering::Relaxed);
        if accepted {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Prints the counts and checks that some inputs were accepted and some rejected.
    fn assert_both_sides(&self, target: &str) {
        let (inputs, accepted) = (
            self.inputs.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed),
        );
        eprintln!("{target}: {inputs} inputs, {accepted} accepted");
        assert!(
            accepted > 0 && accepted < inputs,
            "{target}: {accepted} of {inputs} inputs accepted"
        );
    }
}

/// One edit of a seed: where (a position, scaled to the text), what, and an argument.
type Edit = (u16, u8, u8);

/// Applies `edits` to `seed`, in order. Operations: delete up to 8 bytes, insert a token of
/// `tokens`, replace a byte, duplicate a span, cut the text short, insert a byte.
fn mutate(seed: &[u8], edits: &[Edit], tokens: &[&str]) -> Vec<u8> {
    let mut text = seed.to_vec();
    for &(at, op, arg) in edits {
        let at = if text.is_empty() {
            0
        } else {
            usize::from(at) % (text.len() + 1)
        };
        match op % 6 {
            0 => {
                let end = (at + usize::from(arg % 8) + 1).min(text.len());
                text.drain(at..end);
            }
            1 => {
                let token = tokens[usize::from(arg) % tokens.len()];
                text.splice(at..at, token.bytes());
            }
            2 if at < text.len() => text[at] = arg,
            3 => {
                let end = (at + usize::from(arg) + 1).min(text.len());
                let span = text[at..end].to_vec();
                text.splice(at..at, span);
            }
            4 => text.truncate(at),
            _ => text.insert(at, arg),
        }
    }
    text
}

/// The input that `choice` and `edits` make of `seeds`: the low four bits of `choice` pick a
/// seed (one value in `seeds.len() + 1` picks the empty text, which the edits fill with tokens
/// alone), the high four bits how many of the edits apply (at most seven: inputs a few edits
/// away from a valid file reach past the syntax).
fn input(seeds: &[&str], choice: u8, edits: &[Edit], tokens: &[&str]) -> Vec<u8> {
    let seed = seeds
        .get(usize::from(choice & 0x0f) % (seeds.len() + 1))
        .copied()
        .unwrap_or("");
    let count = usize::from(choice >> 4) % 8;
    mutate(seed.as_bytes(), &edits[..edits.len().min(count)], tokens)
}

mod selector {
    use super::*;

    /// Valid selectors of every form.
    const SEEDS: &[&str] = &[
        "app == 'web' && tier in {'a', \"b\"}",
        "has(role) || !has(debug)",
        "!(a != 'x' || b not in {'y'}) && all()",
        "name contains 'db' && name starts with \"pg\" && name ends with '-0'",
        "global() && k8s.io/app == 'v'",
        "((((a == 'b'))))",
        "",
    ];

    const TOKENS: &[&str] = &[
        "a",
        "k8s.io/app",
        "'v'",
        "\"w\"",
        "''",
        "==",
        "!=",
        "!",
        "&&",
        "||",
        "(",
        ")",
        "{",
        "}",
        ",",
        " ",
        "\t",
        "in",
        "not in",
        "has(",
        "all()",
        "global()",
        "contains",
        "starts with",
        "ends with",
        "é",
        "\u{1F600}",
        "\\",
    ];

    /// Checks the parser's promises for one text: an error names a position inside the text
    /// and says what it found; a selector prints (its canonical form) to text that parses back
    /// to the same selector, which matches the same labels.
    pub fn check(text: &str) -> bool {
        match Selector::parse(text) {
            Ok(selector) => {
                let canonical = selector.canonical();
                let reparsed = Selector::parse(&canonical).unwrap_or_else(|e| {
                    panic!("the canonical form {canonical:?} of {text:?} does not parse: {e}")
                });
                assert_eq!(reparsed, selector, "{text:?} -> {canonical:?}");
                assert_eq!(reparsed.canonical(), canonical, "{text:?}");
                let label_sets: [BTreeMap<String, String>; 3] = [
                    BTreeMap::new(),
                    [("a", "v"), ("app", "web"), ("role", "x")]
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .into(),
                    [("a", ""), ("k8s.io/app", "v"), ("name", "pg-db-0")]
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .into(),
                ];
                for labels in &label_sets {
                    assert_eq!(
                        selector.matches(labels),
                        reparsed.matches(labels),
                        "{text:?} on {labels:?}"
                    );
                }
                true
            }
            Err(error) => {
                assert!(
                    error.position <= text.chars().count(),
                    "{text:?}: position {} is past the end",
                    error.position
                );
                assert!(!error.message.is_empty(), "{text:?}: no message");
                // The first point where the text stops being valid: the text up to it is a
                // valid selector or fails only at its end.
                let prefix: String = text.chars().take(error.position).collect();
                if let Err(e) = Selector::parse(&prefix) {
                    assert!(
                        e.position >= error.position,
                        "{text:?} fails at {}, but its prefix {prefix:?} already at {}: {e}",
                        error.position,
                        e.position
                    );
                }
                false
            }
        }
    }

    #[test]
    fn selector_parser() {
        const TARGET: &str = "selector";
        for seed in SEEDS {
            Selector::parse(seed).unwrap_or_else(|e| panic!("seed {seed:?}: {e}"));
        }
        let tally = Tally::default();
        check!()
            .with_type::<(u8, Vec<Edit>)>()
            .with_test_time(SHORT_RUN)
            .for_each(|(seed, edits)| {
                let bytes = input(SEEDS, *seed, edits, TOKENS);
                tally.count(check(&String::from_utf8_lossy(&bytes)));
            });
        tally.assert_both_sides(TARGET);
    }
}

mod resources {
    use super::*;

    const SEEDS: &[&str] = &[
        include_str!("fuzz_seeds/resources.yaml"),
        include_str!("fuzz_seeds/list.yaml"),
        include_str!("fuzz_seeds/peers.json"),
    ];

    const TOKENS: &[&str] = &[
        "\n",
        "\n---\n",
        "\n...\n",
        ": ",
        "- ",
        "  ",
        "{",
        "}",
        "[",
        "]",
        ",",
        "'",
        "\"",
        "#",
        "&a ",
        "*a",
        "<<: *a\n",
        "!!str ",
        "null",
        "~",
        "true",
        "0x1f",
        "-1",
        "65536",
        "1e400",
        "\u{feff}",
        "\t",
        "\r\n",
        "kind: ",
        "apiVersion: projectcalico.org/v3\n",
        "metadata: {name: x}\n",
        "namespace: ",
        "spec:\n",
        "items:\n",
        "List",
        "selector: ",
        "ports: [",
        "nets: [",
        "198.18.0.0/33",
        "2001:db8::/129",
        "action: ",
        "Allow",
        "Pass",
        "protocol: ",
        "TCP",
        "icmp: {type: 300}",
        "order: ",
        "NaN",
        "é",
        "\u{1F600}",
    ];

    /// Checks the parser's promises for one file: every error names the file, the document and
    /// a line within the file; whatever parses prints back (as JSON and as YAML, from the
    /// objects as written) to files that parse to the same resources.
    pub fn check(text: &str) -> bool {
        const FILE: &str = "fuzz.yaml";
        // YAML breaks lines at LF, CR LF and a lone CR, and so do editors.
        let normalised = text.replace("\r\n", "\n");
        let file_lines: Vec<&str> = normalised.split(['\n', '\r']).collect();
        let lines = file_lines.len();
        match parse_file(FILE, text) {
            Err(errors) => {
                assert!(!errors.is_empty(), "{text:?}: rejected without an error");
                for error in &errors {
                    assert_eq!(error.file, FILE, "{text:?}: {error}");
                    let (Some(document), Some(line)) = (error.document, error.line) else {
                        panic!("{text:?}: {error} has no document or line");
                    };
                    assert!(document >= 1, "{text:?}: {error}");
                    assert!(
                        (1..=lines + 1).contains(&line),
                        "{text:?}: {error}: line {line} of {lines}"
                    );
                    if let Some(column) = error.column {
                        let width = file_lines.get(line - 1).map_or(0, |l| l.chars().count());
                        assert!(
                            (1..=width + 1).contains(&column),
                            "{text:?}: {error}: column {column} of {width}"
                        );
                    }
                    assert!(!error.message.is_empty(), "{text:?}: {error}");
                }
                false
            }
            Ok(resources) => {
                let documents = parse_documents(FILE, text).unwrap_or_else(|errors| {
                    panic!("{text:?} parses, but not with the objects as written: {errors:?}")
                });
                let parsed: Vec<_> = documents.iter().map(|d| d.resource.clone()).collect();
                assert_eq!(parsed, resources, "{text:?}");
                let json: Vec<String> = documents
                    .iter()
                    .map(|d| serde_json::to_string(&d.raw).expect("JSON value"))
                    .collect();
                let json = json.join("\n---\n");
                let reparsed = parse_file(FILE, &json)
                    .unwrap_or_else(|e| panic!("{text:?} printed as {json:?} fails: {e:?}"));
                assert_eq!(reparsed, resources, "{text:?} printed as {json:?}");
                let yaml: Vec<String> = documents
                    .iter()
                    .map(|d| serde_yaml::to_string(&d.raw).expect("YAML value"))
                    .collect();
                let yaml = yaml.join("---\n");
                let reparsed = parse_file(FILE, &yaml)
                    .unwrap_or_else(|e| panic!("{text:?} printed as {yaml:?} fails: {e:?}"));
                assert_eq!(reparsed, resources, "{text:?} printed as {yaml:?}");
                true
            }
        }
    }

    /// Found by the target: YAML (and editors) break lines at a lone CR too, so an error's
    /// line may be past the file's count of LFs; it must stay within YAML's count.
    #[test]
    fn resource_error_lines_count_carriage_returns() {
        let text = "\u{fffd}A li\r A li\r\u{fffd}A li\r\ns A li\ri\r\n<<: *a\ns A li\r";
        assert!(!check(text), "rejected");
        let errors = parse_file("f.yaml", text).expect_err("not a resource");
        assert!(errors.iter().any(|e| e.line > Some(text.lines().count())));
    }

    #[test]
    fn resource_parser() {
        const TARGET: &str = "resources";
        for seed in SEEDS {
            parse_file("seed", seed).unwrap_or_else(|e| panic!("seed {seed:?}: {e:?}"));
        }
        let tally = Tally::default();
        check!()
            .with_type::<(u8, Vec<Edit>)>()
            .with_test_time(SHORT_RUN)
            .for_each(|(seed, edits)| {
                let bytes = input(SEEDS, *seed, edits, TOKENS);
                tally.count(check(&String::from_utf8_lossy(&bytes)));
            });
        tally.assert_both_sides(TARGET);
    }
}

mod cni_config {
    use super::*;

    const SEEDS: &[&str] = &[
        include_str!("fuzz_seeds/cni-calico.json"),
        include_str!("fuzz_seeds/cni-local.json"),
    ];

    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\\",
        "\\u0000",
        "null",
        "true",
        "false",
        "0",
        "-1",
        "1e3",
        "4294967296",
        "\"1.1.0\"",
        "\"0.4.0\"",
        "\"9.9.9\"",
        "\"cniVersion\"",
        "\"name\"",
        "\"type\"",
        "\"mtu\"",
        "\"ipam\"",
        "\"assign_ipv4\"",
        "\"assign_ipv6\"",
        "\"etcdv3\"",
        "\"kubernetes\"",
        "\"datastore_type\"",
        "\"etcd_endpoints\"",
        "\"prevResult\"",
        "\"policy\"",
        "\"ipv4_pools\"",
        "\"TRUE\"",
        " ",
        "\n",
        "é",
    ];

    /// No calicoctl variables: every setting comes from the configuration.
    struct NoEnv;

    impl Environment for NoEnv {
        fn var(&self, _name: &str) -> Option<String> {
            None
        }
    }

    /// Checks the parser's promises for one configuration: an error has the spec's code for
    /// what is wrong (1 version, 6 not JSON, 7 an invalid field), a JSON syntax error says
    /// where, an invalid field is named; a configuration that parses, printed again as JSON,
    /// parses to the same settings.
    pub fn check(bytes: &[u8]) -> bool {
        match NetConf::parse(bytes, &NoEnv) {
            Err(error) => {
                assert!(
                    matches!(error.code, 1 | 6 | 7),
                    "{bytes:?}: code {} ({})",
                    error.code,
                    error.msg
                );
                let json = serde_json::from_slice::<serde_json::Value>(bytes);
                match error.code {
                    6 if json.is_err() => assert!(
                        error.msg.contains(" line ") && error.msg.contains(" column "),
                        "{bytes:?}: a syntax error without its place: {}",
                        error.msg
                    ),
                    6 => assert!(
                        json.is_ok_and(|v| !v.is_object()),
                        "{bytes:?}: {}",
                        error.msg
                    ),
                    7 => assert!(
                        error.msg.starts_with("invalid network configuration: ")
                            && error.msg.len() > "invalid network configuration: ".len(),
                        "{bytes:?}: {}",
                        error.msg
                    ),
                    _ => assert!(error.msg.contains("cniVersion"), "{}", error.msg),
                }
                false
            }
            Ok(conf) => {
                let value: serde_json::Value =
                    serde_json::from_slice(bytes).expect("it parsed, so it is JSON");
                let printed = serde_json::to_vec_pretty(&value).expect("JSON");
                let mut again = NetConf::parse(&printed, &NoEnv).unwrap_or_else(|e| {
                    panic!("{bytes:?} printed as {printed:?} fails: {}", e.msg)
                });
                again.raw.clone_from(&conf.raw);
                assert_eq!(again, conf, "{bytes:?}");
                true
            }
        }
    }

    #[test]
    fn cni_config_parser() {
        const TARGET: &str = "cni_config";
        for seed in SEEDS {
            NetConf::parse(seed.as_bytes(), &NoEnv)
                .unwrap_or_else(|e| panic!("seed {seed:?}: {}", e.msg));
        }
        let tally = Tally::default();
        check!()
            .with_type::<(u8, Vec<Edit>)>()
            .with_test_time(SHORT_RUN)
            .for_each(|(seed, edits)| {
                tally.count(check(&input(SEEDS, *seed, edits, TOKENS)));
            });
        tally.assert_both_sides(TARGET);
    }
}

mod bird_status {
    use super::*;

    const SEEDS: &[&str] = &[include_str!("fuzz_seeds/bird-protocols.txt")];

    const TOKENS: &[&str] = &[
        "\n",
        " ",
        "  ",
        "\t",
        "BIRD ",
        "Name ",
        "Mesh_198_18_0_2",
        "Global_x",
        "Node_y",
        "BGP",
        "---",
        "up",
        "start",
        "down",
        "02:53:01.002",
        "2026-12-07",
        "Established",
        "Active",
        "Socket: Connection refused",
        "\r",
        "é",
    ];

    /// One generated row: name, state, since (a time, or a date and a time) and info words.
    type Row = (u8, u8, Option<u8>, u8, Vec<u8>);

    const NAMES: &[&str] = &[
        "device1",
        "kernel4",
        "Mesh_198_18_0_2",
        "Global_198_18_0_254_port_1790",
        "Node_2001_db8__9",
        "Mesh_",
        "bgp1",
    ];
    const STATES: &[&str] = &["up", "start", "down", "flush"];
    const INFO_WORDS: &[&str] = &[
        "Established",
        "Active",
        "Connect",
        "Socket:",
        "Connection",
        "refused",
        "Idle",
        "12:00",
        "2026-01-01",
        "OpenSent",
    ];

    /// The rows as `birdc show protocols` prints them.
    fn print(rows: &[ProtocolStatus]) -> String {
        let mut out = String::from(
            "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\n",
        );
        for row in rows {
            out.push_str(&format!(
                "{:<10} {:<10} {:<10} {:<6} {:<13} {}\n",
                row.name, "BGP", "---", row.state, row.since, row.info
            ));
        }
        out
    }

    fn row((name, state, since, time, info): &Row) -> ProtocolStatus {
        let name = NAMES[usize::from(*name) % NAMES.len()].to_owned();
        let time = format!(
            "{:02}:{:02}:{:02}.{:03}",
            time % 24,
            time % 60,
            time / 5,
            time
        );
        ProtocolStatus {
            kind: SessionKind::of_protocol(&name),
            name,
            state: STATES[usize::from(*state) % STATES.len()].to_owned(),
            since: match since {
                Some(day) => format!("2026-12-{:02} {time}", day % 28 + 1),
                None => time,
            },
            info: info
                .iter()
                .map(|w| INFO_WORDS[usize::from(*w) % INFO_WORDS.len()])
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// Checks the parser on any text: every row it finds has a name and a state without white
    /// space, and a session kind that agrees with the name.
    pub fn check(text: &str) -> bool {
        let rows = parse_protocols(text);
        for row in &rows {
            for field in [&row.name, &row.state] {
                assert!(
                    !field.is_empty() && !field.contains(char::is_whitespace),
                    "{text:?}: {row:?}"
                );
            }
            assert_eq!(row.kind, SessionKind::of_protocol(&row.name), "{text:?}");
        }
        !rows.is_empty()
    }

    #[test]
    fn bird_status_parser() {
        const TARGET: &str = "bird_status";
        assert_eq!(parse_protocols(SEEDS[0]).len(), 6, "the seed's rows");
        let tally = Tally::default();
        check!()
            .with_type::<(Vec<Row>, u8, Vec<Edit>)>()
            .with_test_time(SHORT_RUN)
            .for_each(|(rows, seed, edits)| {
                // Rows BIRD could print come back as they were.
                let rows: Vec<ProtocolStatus> = rows.iter().take(16).map(row).collect();
                let text = print(&rows);
                assert_eq!(parse_protocols(&text), rows, "{text}");
                // Anything else is read without a panic, into well-formed rows.
                let bytes = input(SEEDS, *seed, edits, TOKENS);
                tally.count(check(&String::from_utf8_lossy(&bytes)));
            });
        tally.assert_both_sides(TARGET);
    }
}
