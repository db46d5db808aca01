//! Table-driven policy verdicts through `calico-loader trace --datastore`: each case writes
//! resources to a directory, and the real kernel program (through BPF_PROG_TEST_RUN, on maps of
//! its own) gives the verdict and what decided it. Needs root; without it the cases fail.

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::process::Command;

    use crate::support::topology::{loader_bin, require_root};

    /// Three endpoints in two namespaces; namespace labels come from the `kns.` profiles. The
    /// profile `web-extra` that web names is defined by the cases that want it.
    const BASE: &str = r#"
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.prod}
spec: {labelsToApply: {env: prod}}
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.dev}
spec: {labelsToApply: {env: dev}}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: web, namespace: prod, labels: {app: web}}
spec:
  node: n1
  interfaceName: caliweb
  ipNetworks: [198.18.1.1/32, "2001:db8::1:1/128"]
  profiles: [kns.prod, web-extra]
  ports: [{name: http, protocol: TCP, port: 8080}, {name: dns, protocol: UDP, port: 53}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: db, namespace: prod, labels: {app: db}}
spec:
  node: n2
  interfaceName: calidb
  ipNetworks: [198.18.1.2/32, "2001:db8::1:2/128"]
  profiles: [kns.prod]
  ports: [{name: http, protocol: TCP, port: 9090}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: client, namespace: dev, labels: {app: client}}
spec:
  node: n2
  interfaceName: caliclient
  ipNetworks: [198.18.2.1/32, "2001:db8::2:1/128"]
  profiles: [kns.dev]
"#;

    struct Case {
        name: &'static str,
        resources: &'static str,
        /// endpoint, direction, protocol, src, dst (and ICMP type, code)
        args: &'static [&'static str],
        verdict: &'static str,
        /// `kind` of the deciding rule: rule, tier-default, profile-rule, no-match.
        kind: &'static str,
        policy: Option<&'static str>,
        rule: Option<u64>,
    }

    const fn case(
        name: &'static str,
        resources: &'static str,
        args: &'static [&'static str],
        verdict: &'static str,
        kind: &'static str,
        policy: Option<&'static str>,
        rule: Option<u64>,
    ) -> Case {
        Case {
            name,
            resources,
            args,
            verdict,
            kind,
            policy,
            rule,
        }
    }

    const WEB_IN_TCP_80: &[&str] = &[
        "--endpoint",
        "prod/web",
        "--direction",
        "ingress",
        "--protocol",
        "tcp",
        "--src",
        "198.18.2.1:40000",
        "--dst",
        "198.18.1.1:80",
    ];
    const WEB_IN_UDP_80: &[&str] = &[
        "--endpoint",
        "prod/web",
        "--direction",
        "ingress",
        "--protocol",
        "udp",
        "--src",
        "198.18.2.1:40000",
        "--dst",
        "198.18.1.1:80",
    ];

    const ALLOW_TCP_80: &str = "
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: p, namespace: prod}
spec:
  selector: app == 'web'
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [80]}}]
";

    /// TCP to web's port 80 from `src`.
    const fn web_in_tcp_80_from(src: &'static str) -> [&'static str; 10] {
        [
            "--endpoint",
            "prod/web",
            "--direction",
            "ingress",
            "--protocol",
            "tcp",
            "--src",
            src,
            "--dst",
            "198.18.1.1:80",
        ]
    }
    /// From an address of the sets below, outside every endpoint.
    const FROM_198_19: &[&str] = &web_in_tcp_80_from("198.19.3.3:40000");
    const FROM_198_20: &[&str] = &web_in_tcp_80_from("198.20.1.1:40000");
    /// From an address near the client's (198.18.2.1), of no endpoint.
    const FROM_198_18_2_9: &[&str] = &web_in_tcp_80_from("198.18.2.9:40000");

    /// A GlobalNetworkSet `db-subnets`: 198.19.0.0/16, `role: db-subnets` (then `---`).
    macro_rules! db_subnets {
        () => {
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: db-subnets, labels: {role: db-subnets}}\nspec: {nets: [198.19.0.0/16]}\n---\n"
        };
    }

    /// A NetworkSet `partners` in namespace `$ns`: 198.20.0.0/16, `role: partners` (then `---`).
    macro_rules! partners_in {
        ($ns:literal) => {
            concat!(
                "apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata: {name: partners, namespace: ",
                $ns,
                ", labels: {role: partners}}\nspec: {nets: [198.20.0.0/16]}\n---\n"
            )
        };
    }

    /// A GlobalNetworkSet `dmz` holding every endpoint of [`BASE`]: 198.18.0.0/16, `zone: dmz`
    /// (then `---`).
    macro_rules! dmz {
        () => {
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata: {name: dmz, labels: {zone: dmz}}\nspec: {nets: [198.18.0.0/16]}\n---\n"
        };
    }

    const CASES: &[Case] = &[
        case(
            "no policy and no allowing profile: final deny",
            "",
            WEB_IN_TCP_80,
            "deny",
            "no-match",
            None,
            None,
        ),
        case(
            "protocol and port allow",
            ALLOW_TCP_80,
            WEB_IN_TCP_80,
            "allow",
            "rule",
            Some("NetworkPolicy:prod/p"),
            Some(0),
        ),
        case(
            "other protocol: the tier's default deny",
            ALLOW_TCP_80,
            WEB_IN_UDP_80,
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "notProtocol",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, notProtocol: UDP}]\n",
            WEB_IN_UDP_80,
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "protocol by number",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, protocol: 17}]\n",
            WEB_IN_UDP_80,
            "allow",
            "rule",
            Some("NetworkPolicy:prod/p"),
            Some(0),
        ),
        case(
            "port range, inside",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, protocol: TCP, destination: {ports: [\"60:80\"]}}]\n",
            WEB_IN_TCP_80,
            "allow",
            "rule",
            Some("NetworkPolicy:prod/p"),
            Some(0),
        ),
        case(
            "port range, outside",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, protocol: TCP, destination: {ports: [\"81:90\"]}}]\n",
            WEB_IN_TCP_80,
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "notPorts",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, protocol: TCP, destination: {notPorts: [80, 443]}}]\n",
            WEB_IN_TCP_80,
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "named port on the local endpoint",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, protocol: TCP, destination: {ports: [http]}}]\n",
            &[
                "--endpoint",
                "prod/web",
                "--direction",
                "ingress",
                "--protocol",
                "tcp",
                "--src",
                "198.18.2.1:40000",
                "--dst",
                "198.18.1.1:8080",
            ],
            "allow",
            "rule",
            Some("NetworkPolicy:prod/p"),
            Some(0),
        ),
        case(
            "named port resolves per remote endpoint (egress to db's http = 9090)",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: app == 'web'\n  types: [Egress]\n  egress: [{action: Allow, protocol: TCP, destination: {selector: app == 'db', ports: [http]}}]\n",
            &[
                "--endpoint",
                "prod/web",
                "--direction",
                "egress",
                "--protocol",
                "tcp",
                "--src",
                "198.18.1.1:40000",
                "--dst",
                "198.18.1.2:9090",
            ],
            "allow",
            "rule",
            Some("NetworkPolicy:prod/p"),
            Some(0),
        ),
        case(
            "named port of another endpoint does not apply (db has no 8080)",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: app == 'web'\n  types: [Egress]\n  egress: [{action: Allow, protocol: TCP, destination: {selector: app == 'db', ports: [http]}}]\n",
            &[
                "--endpoint",
                "prod/web",
                "--direction",
                "egress",
                "--protocol",
                "tcp",
                "--src",
                "198.18.1.1:40000",
                "--dst",
                "198.18.1.2:8080",
            ],
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "source nets",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, source: {nets: [198.18.2.0/24]}}]\n",
            WEB_IN_TCP_80,
            "allow",
            "rule",
            Some("NetworkPolicy:prod/p"),
            Some(0),
        ),
        case(
            "source notNets",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, source: {notNets: [198.18.2.0/24]}}]\n",
            WEB_IN_TCP_80,
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "a NetworkPolicy's selector sees only its own namespace",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, source: {selector: app == 'client'}}]\n",
            WEB_IN_TCP_80,
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "namespaceSelector opens other namespaces",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, source: {selector: app == 'client', namespaceSelector: env == 'dev'}}]\n",
            WEB_IN_TCP_80,
            "allow",
            "rule",
            Some("NetworkPolicy:prod/p"),
            Some(0),
        ),
        case(
            "a GlobalNetworkPolicy's selector sees every namespace",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: app == 'web'\n  ingress: [{action: Allow, source: {selector: app == 'client'}}]\n",
            WEB_IN_TCP_80,
            "allow",
            "rule",
            Some("GlobalNetworkPolicy:g"),
            Some(0),
        ),
        case(
            "notSelector",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: app == 'web'\n  ingress: [{action: Deny, source: {notSelector: app == 'db'}}, {action: Allow}]\n",
            WEB_IN_TCP_80,
            "deny",
            "rule",
            Some("GlobalNetworkPolicy:g"),
            Some(0),
        ),
        case(
            "notSelector: global() excludes every endpoint, so the client (an endpoint) is not denied",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: app == 'web'\n  ingress: [{action: Deny, source: {notSelector: global()}}, {action: Allow}]\n",
            WEB_IN_TCP_80,
            "allow",
            "rule",
            Some("GlobalNetworkPolicy:g"),
            Some(1),
        ),
        case(
            "ICMP type matches",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: all()\n  ingress: [{action: Allow, protocol: ICMP, icmp: {type: 8, code: 0}}]\n",
            &[
                "--endpoint",
                "prod/web",
                "--direction",
                "ingress",
                "--protocol",
                "icmp",
                "--src",
                "198.18.2.1",
                "--dst",
                "198.18.1.1",
                "--icmp-type",
                "8",
            ],
            "allow",
            "rule",
            Some("GlobalNetworkPolicy:g"),
            Some(0),
        ),
        case(
            "ICMP code differs",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: all()\n  ingress: [{action: Allow, protocol: ICMP, icmp: {type: 3, code: 1}}]\n",
            &[
                "--endpoint",
                "prod/web",
                "--direction",
                "ingress",
                "--protocol",
                "icmp",
                "--src",
                "198.18.2.1",
                "--dst",
                "198.18.1.1",
                "--icmp-type",
                "3",
                "--icmp-code",
                "4",
            ],
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "notICMP",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: all()\n  ingress: [{action: Allow, protocol: ICMP, notICMP: {type: 8}}]\n",
            &[
                "--endpoint",
                "prod/web",
                "--direction",
                "ingress",
                "--protocol",
                "icmp",
                "--src",
                "198.18.2.1",
                "--dst",
                "198.18.1.1",
                "--icmp-type",
                "13",
            ],
            "allow",
            "rule",
            Some("GlobalNetworkPolicy:g"),
            Some(0),
        ),
        case(
            "ICMPv6 echo",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: all()\n  ingress: [{action: Allow, protocol: ICMPv6, icmp: {type: 128}}]\n",
            &[
                "--endpoint",
                "prod/web",
                "--direction",
                "ingress",
                "--protocol",
                "icmpv6",
                "--src",
                "2001:db8::2:1",
                "--dst",
                "2001:db8::1:1",
                "--icmp-type",
                "128",
            ],
            "allow",
            "rule",
            Some("GlobalNetworkPolicy:g"),
            Some(0),
        ),
        case(
            "ipVersion 6 does not match IPv4",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: all()\n  ingress: [{action: Allow, ipVersion: 6}]\n",
            WEB_IN_TCP_80,
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "IPv6 source nets",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: all()\n  ingress: [{action: Allow, ipVersion: 6, source: {nets: [\"2001:db8::2:0/112\"]}}]\n",
            &[
                "--endpoint",
                "prod/web",
                "--direction",
                "ingress",
                "--protocol",
                "tcp",
                "--src",
                "[2001:db8::2:1]:40000",
                "--dst",
                "[2001:db8::1:1]:80",
            ],
            "allow",
            "rule",
            Some("GlobalNetworkPolicy:g"),
            Some(0),
        ),
        case(
            "source ports",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: all()\n  ingress: [{action: Deny, protocol: UDP, source: {ports: [\"39000:41000\"]}}, {action: Allow}]\n",
            WEB_IN_UDP_80,
            "deny",
            "rule",
            Some("GlobalNetworkPolicy:g"),
            Some(0),
        ),
        case(
            "order: the lower order decides first",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: a-allow}\nspec:\n  order: 20\n  selector: all()\n  ingress: [{action: Allow}]\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: b-deny}\nspec:\n  order: 10\n  selector: all()\n  ingress: [{action: Deny, protocol: TCP}]\n",
            WEB_IN_TCP_80,
            "deny",
            "rule",
            Some("GlobalNetworkPolicy:b-deny"),
            Some(0),
        ),
        case(
            "Pass goes to the next tier",
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 10}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: security.pass}\nspec:\n  tier: security\n  selector: all()\n  ingress: [{action: Pass, source: {nets: [198.18.2.0/24]}}]\n---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, protocol: TCP}]\n",
            WEB_IN_TCP_80,
            "allow",
            "rule",
            Some("NetworkPolicy:prod/p"),
            Some(0),
        ),
        case(
            "a tier without a decision applies its default action",
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 10}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: security.pass}\nspec:\n  tier: security\n  selector: all()\n  ingress: [{action: Pass, source: {nets: [198.18.3.0/24]}}]\n---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, protocol: TCP}]\n",
            WEB_IN_TCP_80,
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "a tier whose default action is Pass",
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {name: security}\nspec: {order: 10, defaultAction: Pass}\n---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: security.nothing}\nspec:\n  tier: security\n  selector: all()\n  ingress: [{action: Deny, source: {nets: [198.18.3.0/24]}}]\n---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, protocol: TCP}]\n",
            WEB_IN_TCP_80,
            "allow",
            "rule",
            Some("NetworkPolicy:prod/p"),
            Some(0),
        ),
        case(
            "Log records and goes on",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: all()\n  ingress: [{action: Log}, {action: Allow, protocol: TCP}]\n",
            WEB_IN_TCP_80,
            "allow",
            "rule",
            Some("GlobalNetworkPolicy:g"),
            Some(1),
        ),
        case(
            "profiles after the policies",
            "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: web-extra}\nspec: {ingress: [{action: Deny, protocol: UDP}, {action: Allow}]}\n",
            WEB_IN_TCP_80,
            "allow",
            "profile-rule",
            Some("Profile:web-extra"),
            Some(1),
        ),
        case(
            "a GlobalNetworkPolicy's namespaceSelector narrows where it applies",
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: all()\n  namespaceSelector: env == 'dev'\n  ingress: [{action: Allow}]\n",
            WEB_IN_TCP_80,
            "deny",
            "no-match",
            None,
            None,
        ),
        case(
            "egress destination nets",
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: app == 'web'\n  types: [Egress]\n  egress: [{action: Deny, destination: {nets: [198.18.1.0/24]}}, {action: Allow}]\n",
            &[
                "--endpoint",
                "prod/web",
                "--direction",
                "egress",
                "--protocol",
                "udp",
                "--src",
                "198.18.1.1:5000",
                "--dst",
                "198.18.1.2:53",
            ],
            "deny",
            "rule",
            Some("NetworkPolicy:prod/p"),
            Some(0),
        ),
        case(
            "a GlobalNetworkSet's nets stand for a GlobalNetworkPolicy's selector",
            concat!(
                db_subnets!(),
                "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: app == 'web'\n  ingress: [{action: Allow, source: {selector: role == 'db-subnets'}}]\n"
            ),
            FROM_198_19,
            "allow",
            "rule",
            Some("GlobalNetworkPolicy:g"),
            Some(0),
        ),
        case(
            "a NetworkPolicy's plain selector does not see a GlobalNetworkSet",
            concat!(
                db_subnets!(),
                "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, source: {selector: role == 'db-subnets'}}]\n"
            ),
            FROM_198_19,
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "namespaceSelector: global() selects a GlobalNetworkSet",
            concat!(
                db_subnets!(),
                "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, source: {namespaceSelector: global(), selector: role == 'db-subnets'}}]\n"
            ),
            FROM_198_19,
            "allow",
            "rule",
            Some("NetworkPolicy:prod/p"),
            Some(0),
        ),
        case(
            "a NetworkPolicy sees a NetworkSet of its namespace",
            concat!(
                partners_in!("prod"),
                "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, source: {selector: role == 'partners'}}]\n"
            ),
            FROM_198_20,
            "allow",
            "rule",
            Some("NetworkPolicy:prod/p"),
            Some(0),
        ),
        case(
            "a NetworkPolicy does not see a NetworkSet of another namespace",
            concat!(
                partners_in!("dev"),
                "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, source: {selector: role == 'partners'}}]\n"
            ),
            FROM_198_20,
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "namespaceSelector: global() does not select a NetworkSet",
            concat!(
                partners_in!("prod"),
                "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\nspec:\n  selector: all()\n  ingress: [{action: Allow, source: {namespaceSelector: global()}}]\n"
            ),
            FROM_198_20,
            "deny",
            "tier-default",
            None,
            None,
        ),
        case(
            "an endpoint inside a set's CIDR matches its own selector first",
            concat!(
                dmz!(),
                "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: app == 'web'\n  ingress: [{action: Allow, source: {selector: app == 'client'}}, {action: Deny, source: {selector: zone == 'dmz'}}, {action: Allow}]\n"
            ),
            WEB_IN_TCP_80,
            "allow",
            "rule",
            Some("GlobalNetworkPolicy:g"),
            Some(0),
        ),
        case(
            "an address of the set's CIDR that is no endpoint's matches the set only",
            concat!(
                dmz!(),
                "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec:\n  selector: app == 'web'\n  ingress: [{action: Allow, source: {selector: app == 'client'}}, {action: Deny, source: {selector: zone == 'dmz'}}, {action: Allow}]\n"
            ),
            FROM_198_18_2_9,
            "deny",
            "rule",
            Some("GlobalNetworkPolicy:g"),
            Some(1),
        ),
    ];

    #[test]
    fn trace_gives_calicos_verdicts() {
        require_root();
        let mut failures = Vec::new();
        for case in CASES {
            let dir = tempfile::tempdir().expect("temp dir");
            std::fs::write(dir.path().join("base.yaml"), BASE).expect("write");
            std::fs::write(dir.path().join("case.yaml"), case.resources).expect("write");
            let output = Command::new(loader_bin())
                .arg("trace")
                .arg("--datastore")
                .arg(dir.path())
                .args(case.args)
                .args(["-o", "json"])
                .output()
                .expect("run trace");
            if !output.status.success() {
                failures.push(format!(
                    "{}: trace failed: {}",
                    case.name,
                    String::from_utf8_lossy(&output.stderr)
                ));
                continue;
            }
            let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
            let got = (
                report["verdict"].as_str(),
                report["decided_by_rule"]["kind"].as_str(),
                report["policy"].as_str(),
                report["rule"].as_u64(),
            );
            let tier_default_policy = if case.kind == "tier-default" {
                report["policy"].as_str()
            } else {
                case.policy
            };
            let want = (
                Some(case.verdict),
                Some(case.kind),
                tier_default_policy,
                case.rule,
            );
            if got != want {
                failures.push(format!(
                    "{}: got {got:?}, want {want:?}\n{report:#}",
                    case.name
                ));
            }
            if case.name.starts_with("Log") && report["logged_by"]["rule"] != 0 {
                failures.push(format!(
                    "{}: the Log rule is reported: {report:#}",
                    case.name
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            CASES.len(),
            failures.join("\n")
        );
    }

    /// Runs `trace --datastore DIR` with `args`; its stdout.
    fn trace_datastore(dir: &std::path::Path, args: &[&str]) -> String {
        let output = Command::new(loader_bin())
            .args(["trace", "--datastore"])
            .arg(dir)
            .args(args)
            .output()
            .expect("run trace");
        assert!(
            output.status.success(),
            "trace failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `trace --datastore` on `BASE` with `args` and `-o FORMAT`; its stdout.
    fn trace_base(args: &[&str], format: &str) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("base.yaml"), BASE).expect("write");
        trace_datastore(dir.path(), &[args, &["-o", format]].concat())
    }

    #[test]
    fn trace_says_where_the_addresses_live() {
        require_root();
        // web lives on n1, client on n2: seen from web's node, the client is a remote workload.
        let args = [
            "--endpoint",
            "prod/web",
            "--direction",
            "ingress",
            "--protocol",
            "tcp",
            "--src",
            "198.18.2.1:40000",
            "--dst",
            "198.18.1.1:8080",
        ];
        let report: serde_json::Value =
            serde_json::from_str(&trace_base(&args, "json")).expect("JSON");
        let source = &report["source"];
        assert_eq!(
            (&source["address"], &source["route"], &source["node"]),
            (
                &"198.18.2.1".into(),
                &"remote-workload".into(),
                &"n2".into()
            ),
            "{report:#}"
        );
        let destination = &report["destination"];
        assert_eq!(
            (
                &destination["route"],
                &destination["endpoint"],
                &destination["interface"]
            ),
            (
                &"local-workload".into(),
                &"prod/web".into(),
                &"caliweb".into()
            ),
            "{report:#}"
        );
        let text = trace_base(&args, "table");
        assert!(
            text.contains("source:     198.18.2.1, remote-workload on node n2"),
            "{text}"
        );

        // An address no endpoint has: the kernel's routes decide.
        let mut args = args;
        args[7] = "198.19.9.9:40000";
        let report: serde_json::Value =
            serde_json::from_str(&trace_base(&args, "json")).expect("JSON");
        assert_eq!(report["source"]["route"], "none", "{report:#}");
        assert!(report["source"]["node"].is_null(), "{report:#}");
    }

    /// `trace --interface` with `--datastore`: a HostEndpoint's stages, in text and JSON.
    #[test]
    fn trace_explains_a_host_endpoint_from_a_datastore() {
        require_root();
        const HEP: &str = r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth0, labels: {role: edge}}
spec: {node: n1, interfaceName: eth0, expectedIPs: [198.18.9.1]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: block-bad-net}
spec:
  selector: role == 'edge'
  doNotTrack: true
  applyOnForward: true
  ingress: [{action: Deny, source: {nets: [198.19.250.0/24]}}]
"#;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("hep.yaml"), HEP).expect("write");
        let trace = |src: &str, port: &str, format: &str| {
            let dst = format!("198.18.9.1:{port}");
            trace_datastore(
                dir.path(),
                &[
                    "--interface",
                    "eth0",
                    "--direction",
                    "ingress",
                    "--protocol",
                    "tcp",
                    "--src",
                    src,
                    "--dst",
                    &dst,
                    "-o",
                    format,
                ],
            )
        };
        let text = trace("198.19.250.7:40000", "8080", "table");
        assert!(
            text.contains("host endpoint: n1-eth0 (eth0, ingress, to the host)")
                && text.contains("verdict:    deny")
                && text.contains(
                    "untracked policy tier default, GlobalNetworkPolicy:block-bad-net, rule 0 \
                     (Deny): denied (dropped in XDP)"
                ),
            "{text}"
        );
        let report: serde_json::Value =
            serde_json::from_str(&trace("198.19.250.7:40000", "22", "json")).expect("JSON");
        assert_eq!(report["verdict"], "allow", "{report:#}");
        assert_eq!(report["decided_by"], "failsafe", "{report:#}");
        assert_eq!(report["stages"][0]["stage"], "failsafe", "{report:#}");
        assert_eq!(report["destination"]["route"], "host", "{report:#}");
        // No policy but the untracked one applies to the host's own traffic: default deny.
        let report: serde_json::Value =
            serde_json::from_str(&trace("198.19.1.1:40000", "8080", "json")).expect("JSON");
        assert_eq!(report["verdict"], "deny", "{report:#}");
        let stages: Vec<&str> = report["stages"]
            .as_array()
            .expect("stages")
            .iter()
            .filter_map(|s| s["stage"].as_str())
            .collect();
        assert_eq!(
            stages,
            ["failsafe", "untracked-policy", "conntrack", "host-policy"],
            "{report:#}"
        );
    }

    /// A packet allowed on to a local workload is traced on into that workload's ingress: from
    /// another workload, and arriving through a host endpoint's interface.
    #[test]
    fn trace_follows_the_packet_on_into_a_local_workload() {
        require_root();
        const RESOURCES: &str = r#"
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: open}
spec: {ingress: [{action: Allow}], egress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: web-only}
spec:
  ingress: [{action: Allow, protocol: TCP, destination: {ports: [80]}}]
  egress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: a, namespace: t}
spec: {node: n1, interfaceName: calia, ipNetworks: [198.18.3.1/32], profiles: [open]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: b, namespace: t}
spec: {node: n1, interfaceName: calib, ipNetworks: [198.18.3.2/32], profiles: [web-only]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: n1-eth0}
spec: {node: n1, interfaceName: eth0, expectedIPs: [198.18.9.1]}
"#;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("resources.yaml"), RESOURCES).expect("write");
        let trace = |from: [&str; 4], dport: &str, format: &str| {
            let dst = format!("198.18.3.2:{dport}");
            let packet = [
                "--protocol",
                "tcp",
                "--src",
                "198.18.3.1:40000",
                "--dst",
                &dst,
                "-o",
                format,
            ];
            trace_datastore(dir.path(), &[&from[..], &packet[..]].concat())
        };
        let json = |from, dport| -> serde_json::Value {
            serde_json::from_str(&trace(from, dport, "json")).expect("JSON")
        };
        let from_a = ["--endpoint", "t/a", "--direction", "egress"];

        // a's egress allows both; b's ingress only port 80.
        let report = json(from_a, "80");
        assert_eq!(report["verdict"], "allow", "{report:#}");
        assert_eq!(report["onward"]["endpoint"], "t/b", "{report:#}");
        assert_eq!(report["onward"]["direction"], "ingress", "{report:#}");
        assert_eq!(report["onward"]["verdict"], "allow", "{report:#}");
        let report = json(from_a, "81");
        assert_eq!(report["verdict"], "allow", "{report:#}");
        assert_eq!(report["onward"]["verdict"], "deny", "{report:#}");
        // No rule of b's profile matches: the end of its profiles denies.
        assert_eq!(
            report["onward"]["decided_by_rule"]["kind"], "no-match",
            "{report:#}"
        );
        let text = trace(from_a, "81", "table");
        assert!(
            text.contains("on to the destination workload:\nendpoint:   t/b (ingress)")
                && text.contains("delivered:  no"),
            "{text}"
        );

        // Arriving through eth0: forwarded, open without applyOnForward policy, then b's
        // ingress decides.
        let through_eth0 = ["--interface", "eth0", "--direction", "ingress"];
        let report = json(through_eth0, "81");
        assert_eq!(report["verdict"], "allow", "{report:#}");
        assert_eq!(report["path"], "forward", "{report:#}");
        assert_eq!(report["onward"]["endpoint"], "t/b", "{report:#}");
        assert_eq!(report["onward"]["verdict"], "deny", "{report:#}");
        let report = json(through_eth0, "80");
        assert_eq!(report["onward"]["verdict"], "allow", "{report:#}");

        // Traced at b's own ingress, there is nothing further.
        let report = json(["--endpoint", "t/b", "--direction", "ingress"], "80");
        assert!(report["onward"].is_null(), "{report:#}");
    }
}
