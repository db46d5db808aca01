//! Another IPAM plugin (`ipam.type` other than `calico-ipam`, like `host-local`), run as the
//! spec has a plugin delegate: the executable of that name in `CNI_PATH`, with this call's
//! environment (`CNI_COMMAND` set to the delegated command) and the same configuration on
//! stdin. Its addresses are used as /32 and /128, as Calico's plugin does.

use std::{
    io::Write as _,
    net::IpAddr,
    path::PathBuf,
    process::{Command, Stdio},
};

use ipnet::IpNet;

use super::{
    config::Environment,
    error::{CniError, code},
    result::result_addresses,
};

/// Whether `ipam_type` is this plugin's own IPAM (an empty type means Calico's).
pub fn is_calico_ipam(ipam_type: &str) -> bool {
    matches!(ipam_type, "" | "calico-ipam")
}

/// The executable `plugin` in `CNI_PATH`.
fn find(plugin: &str, env: &dyn Environment) -> Result<PathBuf, CniError> {
    let path = env.var("CNI_PATH").unwrap_or_default();
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::config(format!(
                "ipam.type {plugin:?}: no such plugin in CNI_PATH ({path:?})"
            ))
        })
}

/// Runs the IPAM plugin `plugin` with `CNI_COMMAND=command` and `stdin`; its output.
///
/// # Errors
///
/// Not found, not runnable, or its own error (code and message passed on).
pub fn run(
    plugin: &str,
    command: &str,
    stdin: &[u8],
    env: &dyn Environment,
) -> Result<String, CniError> {
    let executable = find(plugin, env)?;
    let mut child = Command::new(&executable)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CniError::internal(format!("running {}: {e}", executable.display())))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin)
            .map_err(|e| CniError::new(code::IO, format!("writing to {plugin}: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| CniError::internal(format!("running {}: {e}", executable.display())))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        return Ok(text);
    }
    let error: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let code = error["code"]
        .as_u64()
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(code::INTERNAL);
    let msg = error["msg"].as_str().unwrap_or(text.trim());
    Err(CniError::new(
        code,
        format!("IPAM plugin {plugin} ({command}): {msg}"),
    ))
}

/// The addresses of an IPAM plugin's ADD result.
///
/// # Errors
///
/// Not a result, or no address in it.
pub fn addresses(plugin: &str, output: &str) -> Result<Vec<IpAddr>, CniError> {
    let result: serde_json::Value = serde_json::from_str(output).map_err(|e| {
        CniError::internal(format!("IPAM plugin {plugin} printed no JSON result: {e}"))
    })?;
    let addresses: Vec<IpAddr> = result_addresses(&result)
        .iter()
        .filter_map(|a| a.parse::<IpNet>().ok().map(|n| n.addr()))
        .collect();
    if addresses.is_empty() {
        return Err(CniError::internal(format!(
            "IPAM plugin {plugin} returned no IP addresses: {output}"
        )));
    }
    Ok(addresses)
}
