//! An agent for the phases that build their own host namespace (taps, attach at scale,
//! restarts): started like the rounds' agent (`calico-loader run` in the host namespace, its log
//! copied to a file for the agent's own timings), stopped with SIGTERM (or killed with SIGKILL,
//! its pins left for the next agent), its pins removed on drop.

use std::{ops::ControlFlow, path::Path, time::Duration};

use anyhow::{Context, Result};
use serde_json::Value;
use testbed::{ChildGuard, Cmd, Netns, output};

use super::{
    loader::{NODE, dump_cmd},
    topology::{AgentLog, agent_pid},
};
use crate::topology::{self as shared, AttachMode, PinGuard};

/// How a phase's agent runs: its hook, whether it detaches its programs when it exits (an
/// agent of an earlier release, stopped for an upgrade, must not), and further arguments of
/// `calico-loader run`.
pub struct AgentRun<'a> {
    pub mode: AttachMode,
    pub detach_on_exit: bool,
    pub extra: &'a [&'a str],
}

pub struct PhaseAgent {
    child: ChildGuard,
    pub pid: u32,
    pub log: AgentLog,
    // Dropped after the agent: `calico-loader cleanup`, then rm -rf.
    _pins: PinGuard,
}

impl PhaseAgent {
    /// Starts the agent in `host` on `datastore` and waits until `attached` breaks on
    /// `dump endpoints -o json`.
    pub fn start(
        loader: &Path,
        host: &Netns,
        datastore: &Path,
        pin_path: &Path,
        mode: AttachMode,
        log: &Path,
        attached: impl FnMut(&[Value]) -> ControlFlow<String, String>,
    ) -> Result<Self> {
        let run = AgentRun {
            mode,
            detach_on_exit: true,
            extra: &[],
        };
        Self::start_with(loader, host, datastore, pin_path, &run, log, attached)
    }

    /// [`Self::start`] with further arguments to `calico-loader run`.
    pub fn start_with(
        loader: &Path,
        host: &Netns,
        datastore: &Path,
        pin_path: &Path,
        run: &AgentRun<'_>,
        log: &Path,
        attached: impl FnMut(&[Value]) -> ControlFlow<String, String>,
    ) -> Result<Self> {
        let (mode, extra) = (run.mode, run.extra);
        const TEE: &str = r#"log=$1; shift; exec "$@" 2> >(exec tee -i -a "$log" >&2)"#;
        let pins = PinGuard::new(loader, &host.path(), pin_path);
        output::info(format!(
            "starting the agent ({}); its log is also copied to {}",
            mode.as_str(),
            log.display()
        ));
        let child = Cmd::new("bash")
            .args(["-c", TEE, "bash"])
            .arg(log)
            .arg("nsenter")
            .arg(format!("--net={}", host.path().display()))
            .arg(loader)
            .arg("run")
            .arg("--datastore")
            .arg(datastore)
            .args(["--node", NODE, "--attach-mode", mode.as_str()])
            .args(run.detach_on_exit.then_some("--detach-on-exit"))
            .args(["--networking-backend", "none"])
            .arg("--pin-path")
            .arg(pin_path)
            .args(extra)
            .env("NO_COLOR", "1")
            .privileged()
            .spawn_prefixed("[agent]")?;
        let mut child = ChildGuard::new(format!("the agent ({})", mode.as_str()), child, true);
        shared::wait_for_attachment(
            &mut child,
            dump_cmd(loader, pin_path, "endpoints"),
            "the agent's endpoints",
            "its endpoints",
            Duration::from_millis(100),
            attached,
        )?;
        let pid =
            agent_pid(loader, pin_path).context("cannot find the agent's process id in /proc")?;
        Ok(Self {
            child,
            pid,
            log: AgentLog {
                path: log.to_owned(),
            },
            _pins: pins,
        })
    }

    /// SIGKILL, as a crash: the programs stay attached and the maps pinned. The returned guard
    /// removes the pins when it drops: keep it until the next agent on them is done.
    pub fn kill(mut self) -> PinGuard {
        match self.child.kill() {
            Some(_) => {}
            None => output::warn("the agent did not die on SIGKILL"),
        }
        self._pins
    }

    /// SIGTERM, as an operator stopping the agent for an upgrade: without `--detach-on-exit`
    /// the programs stay attached and the maps pinned. Returns how long it took to exit and
    /// the guard that removes the pins when it drops (keep it until the next agent is done).
    pub fn terminate(mut self) -> Result<(Duration, PinGuard)> {
        let started = std::time::Instant::now();
        match self.child.stop(Duration::from_secs(10)) {
            Some(status) if status.success() => Ok((started.elapsed(), self._pins)),
            Some(status) => anyhow::bail!("the agent exited with {status} on SIGTERM"),
            None => anyhow::bail!("the agent did not stop on SIGTERM"),
        }
    }

    /// SIGTERM (it detaches, `--detach-on-exit`); the pins are removed when `self` drops.
    pub fn stop(mut self) {
        match self.child.stop(Duration::from_secs(10)) {
            Some(status) if status.success() => {}
            Some(status) => output::warn(format!("the agent exited with {status} on SIGTERM")),
            None => output::warn("the agent did not stop"),
        }
    }
}
