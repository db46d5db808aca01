//! The agent's health endpoints, read from inside the namespace it serves them in.

use std::{
    thread,
    time::{Duration, Instant},
};

use super::{
    http::get,
    topology::{Agent, Netns},
};

/// Where the tests' agents serve health: 127.0.0.1 of their host namespace.
pub const HEALTH: &str = "127.0.0.1:9099";

/// The agent's flags for health on [`HEALTH`].
pub const HEALTH_FLAGS: [&str; 5] = [
    "--health-enabled",
    "--health-host",
    "127.0.0.1",
    "--health-port",
    "9099",
];

/// Whether the agent in `ns` answers `/readiness` with 200.
pub fn ready(ns: &Netns) -> bool {
    get(ns, HEALTH, "/readiness").is_some_and(|(code, _)| code == 200)
}

/// Waits until the agent in `ns` is ready, polling every 10 ms; how long that took. Fails with
/// the agent's log after `timeout`.
pub fn wait_ready(ns: &Netns, agent: &Agent, timeout: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        agent.assert_running();
        if ready(ns) {
            return start.elapsed();
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "the agent was not ready after {timeout:?}; its log:\n{}",
        agent.log()
    );
}
