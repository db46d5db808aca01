//! The agent's health endpoints, read from inside the namespace it serves them in.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use super::topology::{Agent, Netns};

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

/// `GET path` on `address` from inside `ns`: the status code and the body, or `None` when
/// nothing answers.
pub fn get(ns: &Netns, address: &str, path: &str) -> Option<(u16, String)> {
    let address: SocketAddr = address.parse().expect("socket address");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    ns.enter(move || {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    })
}

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
