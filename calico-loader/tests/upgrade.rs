//! Upgrades across map layouts, between two real builds of the agent: the one under test, and
//! the test-only `next-layout` build, whose maps are one layout version ahead (routes,
//! endpoints, counters, conntrack) and whose conntrack value has one more field. `cargo xtask
//! test` builds it and names it in `CALICO_EBPF_NEXT_LAYOUT_AGENT`.
//!
//! Under a ping every 10 ms and a TCP stream, the agent is killed and the next build started on
//! its pins: it replaces the maps make-before-break, the tracked flows are carried over
//! (converted), and nothing is lost. The older build then refuses the newer maps (a
//! downgrade) while the programs keep forwarding. A new conntrack size is applied the same way.

mod support;

/// Every test here needs root (BPF, network namespaces): `cargo test -- privileged::` selects
/// them, and they fail without root.
mod privileged {
    use std::{
        net::{IpAddr, SocketAddr},
        path::PathBuf,
        process::Command,
        thread,
        time::{Duration, Instant},
    };

    use aya::maps::MapInfo;
    use calico_ebpf_common::{
        ConntrackValue,
        maps::{Conntrack, Counters, Endpoints, MapSpec},
    };

    use testbed::flows::{Pace, TcpFlow};

    use crate::support::topology::{Agent, Datastore, Topology, Workload, loader_bin, unique};

    /// The TCP stream's port.
    const STREAM_PORT: u16 = 5600;

    /// Where `cargo xtask test` puts the path of the `next-layout` build.
    const NEXT_LAYOUT_AGENT_ENV: &str = "CALICO_EBPF_NEXT_LAYOUT_AGENT";

    fn next_layout_agent() -> String {
        let path = std::env::var(NEXT_LAYOUT_AGENT_ENV).unwrap_or_else(|_| {
            panic!(
                "{NEXT_LAYOUT_AGENT_ENV} is not set: this test needs the agent built with the \
                 next map layouts; run it through `cargo xtask test`, or build it with \
                 `cargo build -p calico-loader --bin calico-loader --features next-layout \
                 --target-dir target/next-layout` and set {NEXT_LAYOUT_AGENT_ENV} to \
                 target/next-layout/debug/calico-loader"
            )
        });
        assert!(
            std::path::Path::new(&path).is_file(),
            "{NEXT_LAYOUT_AGENT_ENV}={path} does not exist"
        );
        path
    }

    /// wl1 may open anything; wl2 accepts anything but opens nothing (no egress rule), so its
    /// replies pass only as part of a tracked flow: a flow whose entry were lost would have
    /// its replies denied.
    fn write_endpoints(datastore: &Datastore, topology: &Topology) {
        datastore.write(
            "profile-responder.yaml",
            "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata: {name: responder}\n\
             spec: {ingress: [{action: Allow}]}\n",
        );
        datastore.write(
            "wl1.yaml",
            &topology.workload(1).endpoint_yaml("upgrade-node"),
        );
        datastore.write(
            "wl2.yaml",
            &topology
                .workload(2)
                .endpoint_yaml("upgrade-node")
                .replace("profiles: [test-allow-all]", "profiles: [responder]"),
        );
    }

    /// A TCP connection from one workload to another carrying 800 KiB/s until stopped,
    /// counted on both sides; its replies pass only through conntrack (`write_endpoints`).
    fn stream(from: &Workload, to: &Workload) -> TcpFlow {
        TcpFlow::start(
            &from.ns.path(),
            &to.ns.path(),
            SocketAddr::new(IpAddr::V4(to.v4), STREAM_PORT),
            Pace {
                duration: Duration::from_secs(120),
                rate: 800 << 10,
            },
        )
        .expect("start the TCP stream")
    }

    /// Stops `stream` and checks that it lost nothing: every byte arrived, no segment was
    /// sent again for being lost, no reset, no wait of a second for data.
    fn assert_stream_lost_nothing(stream: TcpFlow) {
        let report = stream.stop().expect("the TCP stream's threads");
        assert_eq!(report.error, None, "the stream ended cleanly: {report:?}");
        assert!(report.sent > 0, "the stream carried data: {report:?}");
        assert_eq!(
            report.sent, report.received,
            "every byte arrived: {report:?}"
        );
        assert_eq!(report.lost_segments(), 0, "no segment lost: {report:?}");
        assert!(
            report.longest_gap < Duration::from_secs(1),
            "the stream never stalled: {report:?}"
        );
    }

    /// `binary dump WHAT -o json` against `agent`'s pins (each build reads its own layouts).
    fn dump(binary: &str, agent: &Agent, what: &str) -> serde_json::Value {
        let output = Command::new(binary)
            .args(["dump", what, "-o", "json", "--pin-path"])
            .arg(&agent.pin_path)
            .output()
            .expect("run dump");
        assert!(
            output.status.success(),
            "dump {what}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("dump JSON")
    }

    /// The conntrack row of the stream (TCP to [`STREAM_PORT`]), from `binary`'s `dump conntrack`.
    fn stream_entry(binary: &str, agent: &Agent) -> serde_json::Value {
        let rows = dump(binary, agent, "conntrack");
        rows.as_array()
            .and_then(|rows| {
                rows.iter()
                    .find(|r| {
                        r["protocol"] == 6
                            && r["responder"]
                                .as_str()
                                .is_some_and(|s| s.ends_with(&format!(":{STREAM_PORT}")))
                    })
                    .cloned()
            })
            .unwrap_or_else(|| panic!("no conntrack entry for the stream in {rows}"))
    }

    /// The id of the link pinned at `path` (`bpftool link show pinned`), and its program's id.
    fn link_ids(path: &std::path::Path) -> (u64, u64) {
        let output = Command::new("bpftool")
            .args(["link", "show", "pinned"])
            .arg(path)
            .arg("-j")
            .output()
            .expect("run bpftool");
        let link: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("bpftool link show pinned {}: {e}", path.display()));
        (
            link["id"].as_u64().expect("link id"),
            link["prog_id"].as_u64().expect("program id"),
        )
    }

    /// Packets `binary`'s `dump counters` says policy denied on `ifname`.
    fn policy_drops(binary: &str, agent: &Agent, ifname: &str) -> u64 {
        let rows = dump(binary, agent, "counters");
        let row = rows
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["interface"] == ifname))
            .unwrap_or_else(|| panic!("no counters for {ifname} in {rows}"));
        row["drops"]["policy-denied"]
            .as_u64()
            .unwrap_or_else(|| panic!("no policy-denied count in {row}"))
    }

    fn wait_for_log(agent: &Agent, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if agent.log().contains(needle) {
                return;
            }
            agent.assert_running();
            thread::sleep(Duration::from_millis(100));
        }
        panic!("the agent never logged {needle:?}; log:\n{}", agent.log());
    }

    #[test]
    fn an_upgrade_to_new_map_layouts_carries_the_flows_and_loses_nothing_tc() {
        upgrade_between_builds(&[]);
    }

    #[test]
    fn an_upgrade_to_new_map_layouts_carries_the_flows_and_loses_nothing_xdp() {
        upgrade_between_builds(&["--attach-mode", "xdp"]);
    }

    /// The agent under test, then the `next-layout` build on its pins, both with `mode_args`.
    fn upgrade_between_builds(mode_args: &[&str]) {
        let next = next_layout_agent();
        let topology = Topology::new(2);
        if mode_args.contains(&"xdp") {
            topology.prepare_for_xdp();
        }
        let datastore = Datastore::new();
        write_endpoints(&datastore, &topology);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        let pin_path = PathBuf::from("/sys/fs/bpf").join(unique("calico-upgrade-"));

        let old = Agent::start_with_pins(
            &topology,
            &datastore,
            "upgrade-node",
            pin_path.clone(),
            mode_args,
        );
        old.wait_attached(&[&wl1.host_ifname, &wl2.host_ifname]);
        assert!(
            wl1.ping(IpAddr::V4(wl2.v4)),
            "wl1 reaches wl2 before the upgrade"
        );

        let pinger = wl1.ping_every(IpAddr::V4(wl2.v4), "0.01");
        let stream = stream(wl1, wl2);
        thread::sleep(Duration::from_secs(1));
        let before = stream_entry(loader_bin(), &old);
        let conntrack = pin_path.join(Conntrack::DEF.name);
        let old_value_size = MapInfo::from_pin(&conntrack)
            .expect("conntrack pinned")
            .value_size();
        assert_eq!(
            old_value_size as usize,
            std::mem::size_of::<ConntrackValue>()
        );

        let xdp_link = pin_path.join("links").join(&wl1.host_ifname).join("xdp");
        let xdp_before = mode_args.contains(&"xdp").then(|| link_ids(&xdp_link));

        // The old agent dies; its programs keep forwarding. The next build takes over.
        old.forget();
        let upgrade_started = Instant::now();
        let run_dir = tempfile::tempdir().expect("run dir");
        let mut args = vec![
            "--datastore",
            datastore.path().to_str().expect("UTF-8 path"),
        ];
        args.extend_from_slice(mode_args);
        let new = Agent::spawn_binary(
            &next,
            &topology.host.path(),
            "upgrade-node",
            pin_path.clone(),
            run_dir.path().join("calico"),
            &args,
            &[],
        );
        wait_for_log(&new, "upgrade of the pinned maps finished");
        let took = upgrade_started.elapsed();
        let log = new.log();
        for map in [
            "cali_conntrack",
            "cali_endpoints",
            "cali_counters",
            "cali_routes_v4",
        ] {
            assert!(log.contains(map), "the upgrade names {map}; log:\n{log}");
        }

        // In XDP mode the interface's one XDP link stayed, and got the new program in place.
        if let Some((link, program)) = xdp_before {
            let (link_after, program_after) = link_ids(&xdp_link);
            assert_eq!(link_after, link, "the XDP link was updated, not replaced");
            assert_ne!(
                program_after, program,
                "the XDP link runs the new build's program"
            );
        }

        // The new conntrack map took the old one's pin, with the new layout.
        let info = MapInfo::from_pin(&conntrack).expect("conntrack pinned after the upgrade");
        assert_eq!(
            info.value_size(),
            old_value_size + 8,
            "the pinned conntrack map has the next layout"
        );
        assert!(
            !pin_path.join("upgrade").exists(),
            "nothing is left staged after the upgrade"
        );

        thread::sleep(Duration::from_secs(2));
        // The stream's entry was carried over, not created again: it is as old as the stream,
        // and its packet counts went on from where they were.
        let after = stream_entry(&next, &new);
        let age_before = before["age_seconds"].as_f64().expect("age");
        let age_after = after["age_seconds"].as_f64().expect("age");
        assert!(
            age_after >= age_before + took.as_secs_f64(),
            "the stream's entry was carried over (age {age_before} s before, {age_after} s \
             after an upgrade of {took:?})"
        );
        assert!(
            after["packets_forward"].as_u64() > before["packets_forward"].as_u64(),
            "the carried entry kept counting: {before} then {after}"
        );

        // A downgrade is refused (here while the newer agent runs), and nothing changes.
        let older = Command::new("nsenter")
            .arg(format!("--net={}", topology.host.path().display()))
            .arg(loader_bin())
            .args(["run", "--node", "upgrade-node", "--datastore"])
            .arg(datastore.path())
            .arg("--pin-path")
            .arg(&pin_path)
            .args(mode_args)
            .output()
            .expect("run the older agent");
        let stderr = String::from_utf8_lossy(&older.stderr);
        assert!(
            !older.status.success(),
            "the older agent refused the newer maps"
        );
        assert!(
            stderr.contains("downgrade") && stderr.contains("cali_"),
            "the refusal names the map and says why: {stderr}"
        );
        thread::sleep(Duration::from_secs(1));

        assert_stream_lost_nothing(stream);
        let (transmitted, replies, output) = pinger.finish();
        assert!(transmitted > 300, "the ping ran: {output}");
        assert_eq!(
            transmitted, replies,
            "no ping lost across the upgrade and the refused downgrade: {output}"
        );

        assert_eq!(
            policy_drops(&next, &new, &wl2.host_ifname),
            0,
            "no reply of wl2 was judged as a new flow (and denied) after the upgrade"
        );
        // The guards stop the newer agent and remove the pins.
    }

    #[test]
    fn new_conntrack_and_endpoint_map_sizes_are_applied_at_restart_keeping_the_flows() {
        let topology = Topology::new(2);
        let datastore = Datastore::new();
        write_endpoints(&datastore, &topology);
        let (wl1, wl2) = (topology.workload(1), topology.workload(2));
        let pin_path = PathBuf::from("/sys/fs/bpf").join(unique("calico-resize-"));

        let old =
            Agent::start_with_pins(&topology, &datastore, "upgrade-node", pin_path.clone(), &[]);
        old.wait_attached(&[&wl1.host_ifname, &wl2.host_ifname]);
        let pinger = wl1.ping_every(IpAddr::V4(wl2.v4), "0.01");
        let stream = stream(wl1, wl2);
        thread::sleep(Duration::from_secs(1));
        let before = stream_entry(loader_bin(), &old);
        let conntrack = pin_path.join(Conntrack::DEF.name);
        assert_eq!(
            MapInfo::from_pin(&conntrack)
                .expect("conntrack pinned")
                .max_entries(),
            Conntrack::DEF.max_entries
        );

        let entries = |name: &str| {
            MapInfo::from_pin(pin_path.join(name))
                .unwrap_or_else(|e| panic!("{name} pinned: {e}"))
                .max_entries()
        };
        assert_eq!(entries(Endpoints::DEF.name), Endpoints::DEF.max_entries);

        // Restarted with another BPFMapSizeConntrack and BPFMapSizeIfState: the conntrack table
        // is replaced, flows and all; the endpoint map is replaced and refilled, and the
        // counters map with it.
        old.forget();
        let new = Agent::start_with_pins(
            &topology,
            &datastore,
            "upgrade-node",
            pin_path.clone(),
            &["--conntrack-size", "65536", "--endpoint-map-size", "4096"],
        );
        wait_for_log(&new, "upgrade of the pinned maps finished");
        assert_eq!(
            MapInfo::from_pin(&conntrack)
                .expect("conntrack pinned")
                .max_entries(),
            65536,
            "the pinned table has the new size"
        );
        assert_eq!(
            entries(Endpoints::DEF.name),
            4096,
            "the endpoint map's new size"
        );
        assert_eq!(
            entries(Counters::DEF.name),
            4097,
            "the counters map's new size"
        );
        thread::sleep(Duration::from_secs(1));
        let after = stream_entry(loader_bin(), &new);
        assert!(
            after["age_seconds"].as_f64() > before["age_seconds"].as_f64()
                && after["packets_forward"].as_u64() > before["packets_forward"].as_u64(),
            "the stream's entry was carried into the new table: {before} then {after}"
        );

        assert_stream_lost_nothing(stream);
        let (transmitted, replies, output) = pinger.finish();
        assert_eq!(transmitted, replies, "no ping lost: {output}");
        assert_eq!(policy_drops(loader_bin(), &new, &wl2.host_ifname), 0);
    }
}
