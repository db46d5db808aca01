//! Plain HTTP against the agent's endpoints (metrics, health) from inside a namespace, and
//! reading the Prometheus text format.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use super::topology::Netns;

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

/// `GET /metrics` on `address` from inside `ns`: the body of a 200 answer. Fails the test when
/// nothing answers or the answer is not 200.
pub fn scrape(ns: &Netns, address: &str) -> String {
    let (code, body) =
        get(ns, address, "/metrics").unwrap_or_else(|| panic!("no answer on {address}"));
    assert_eq!(code, 200, "/metrics on {address}: {body}");
    body
}

/// The value of the sample `series` (a name, with its labels if it has any, as written in the
/// text format) in `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}
