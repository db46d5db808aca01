//! What the bench tells calico-loader and reads back from it: the node and namespace of the
//! bench's WorkloadEndpoints, their names and resources, and `calico-loader dump` as JSON. The
//! topology, the policy check and the measurements all use it, so it sits below them.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;
use testbed::Cmd;

use super::Ctx;
use crate::topology::Workload;

/// The node name the agent serves, and the endpoints are on.
pub const NODE: &str = "bench";
/// The namespace of the WorkloadEndpoints.
pub const NAMESPACE: &str = "bench";

/// `NAMESPACE/NAME` of a workload's WorkloadEndpoint, as `calico-loader trace` takes it.
pub fn endpoint_key(wl: &Workload) -> String {
    format!("{NAMESPACE}/{NODE}-cni-{}-eth0", wl.name)
}

/// A workload's WorkloadEndpoint (label `app: <its name>`).
pub fn endpoint_yaml(wl: &Workload) -> String {
    wl.endpoint_yaml(NODE, NAMESPACE, &wl.name)
}

/// `calico-loader dump WHAT -o json --pin-path P` (as root; dump only opens
/// the pins, so it runs in any namespace).
pub fn dump_json(ctx: &Ctx<'_>, what: &str) -> Result<Value> {
    let out = dump_cmd(ctx.loader, ctx.pin_path, what).output()?;
    serde_json::from_str(&out)
        .with_context(|| format!("`dump {what} -o json` printed invalid JSON"))
}

pub fn dump_cmd(loader: &Path, pin_path: &Path, what: &str) -> Cmd {
    Cmd::new(loader)
        .args(["dump", what, "-o", "json", "--pin-path"])
        .arg(pin_path)
        .privileged()
}
