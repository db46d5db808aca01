//! Developer tasks for calico-ebpf, run as `cargo xtask <command>`.
//!
//! Every subcommand lives in its own module. `topology` holds what `demo` and
//! `bench` both build (workloads, the agent, pins); `paths`, `root` and
//! `sockets` the workspace's paths, becoming root, and threads inside
//! namespaces. The command runner (which echoes each command before running
//! it), the namespace guard and the other RAII guards are the `testbed` crate's,
//! shared with the integration tests.

mod bench;
mod build;
mod demo;
mod paths;
mod root;
mod run;
mod setup;
mod sockets;
mod test;
mod topology;
mod upgrade_from;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for calico-ebpf",
    after_help = "Quick start: `cargo xtask run` runs the agent on this host; \
                  `cargo xtask test` runs the tests."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install every prerequisite: Debian packages, rust-src for nightly,
    /// bpf-linker (skips whatever is already there).
    Setup,
    /// Setup, then build the agent and its eBPF programs.
    Build(build::BuildArgs),
    /// Setup, build, then run the agent on this host (as root).
    Run(run::RunArgs),
    /// Setup, then run the workspace's tests (as root).
    Test(test::TestArgs),
    /// A guided tour: throwaway namespaces, the agent, traffic, counters.
    Demo(demo::DemoArgs),
    /// Setup, release build, then benchmark the dataplane against Linux
    /// forwarding and iptables in throwaway namespaces (as root).
    Bench(bench::BenchArgs),
    /// Setup, then build the test VMs' kernel and initramfs into a cache (once).
    VmImage(vm::VmImageArgs),
    /// Internal: the bench's request/response measurement between two
    /// namespaces.
    #[command(hide = true)]
    BenchRr(bench::RrArgs),
    /// Internal: the bench's BGP cluster (convergence and scale), as root.
    #[command(hide = true)]
    BenchBgpCluster(bench::BgpClusterArgs),
    /// Internal: the bench's UDP sink, a socket that listens and never reads.
    #[command(hide = true)]
    BenchUdpSink(bench::UdpSinkArgs),
    /// Internal: the bench's live-frames generator, run inside gen's namespace.
    #[command(hide = true)]
    BenchLiveGen(bench::LiveGenArgs),
    /// Internal: the demo's TCP exchange between two namespaces.
    #[command(hide = true)]
    TcpEcho(demo::TcpEchoArgs),
}

fn main() -> ExitCode {
    // Both before any thread exists (the first one edits the environment).
    paths::ensure_cargo_bin_on_path();
    testbed::signals::catch_signals(&[libc::SIGINT]);

    let result = match Cli::parse().command {
        Command::Setup => setup::setup(),
        Command::Build(args) => build::build(&args),
        Command::Run(args) => run::run(&args),
        Command::Test(args) => test::test(&args),
        Command::Demo(args) => demo::demo(&args),
        Command::TcpEcho(args) => demo::tcp_echo(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::VmImage(args) => vm::vm_image(&args),
        Command::BenchRr(args) => bench::rr(&args),
        Command::BenchBgpCluster(args) => bench::bgp_cluster(&args),
        Command::BenchUdpSink(args) => bench::udp_sink(&args),
        Command::BenchLiveGen(args) => bench::live_gen(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // The error chain only: a backtrace of xtask itself (captured
            // when RUST_BACKTRACE is set) would not help anyone.
            eprintln!("\nerror: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_everything_after_the_separator_through() {
        let cli = Cli::try_parse_from(["xtask", "test", "--", "attach", "--", "--nocapture"])
            .expect("valid command line");
        let Command::Test(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.args, ["attach", "--", "--nocapture"]);
    }

    #[test]
    fn run_passes_agent_arguments_through() {
        let cli = Cli::try_parse_from(["xtask", "run", "--release", "--", "--attach-mode", "xdp"])
            .expect("valid command line");
        let Command::Run(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert!(args.release);
        assert_eq!(args.args, ["--attach-mode", "xdp"]);
    }

    #[test]
    fn bench_takes_quick_rounds_duration_and_json() {
        let cli = Cli::try_parse_from([
            "xtask",
            "bench",
            "--quick",
            "--rounds",
            "2",
            "--duration",
            "3",
            "--json",
            "/tmp/b.json",
        ])
        .expect("valid command line");
        let Command::Bench(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert!(args.quick);
        assert_eq!(args.rounds, Some(2));
        assert_eq!(args.duration, Some(3));
        assert_eq!(
            args.json.as_deref(),
            Some(std::path::Path::new("/tmp/b.json"))
        );
        assert!(Cli::try_parse_from(["xtask", "bench", "--rounds", "0"]).is_err());
    }

    #[test]
    fn demo_attach_mode_defaults_to_tc() {
        let cli = Cli::try_parse_from(["xtask", "demo"]).expect("valid command line");
        let Command::Demo(args) = cli.command else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(args.attach_mode, demo::AttachMode::Tc);
    }
}
