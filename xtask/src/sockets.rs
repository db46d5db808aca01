//! Sockets inside workload namespaces, from xtask's own threads: a thread that has entered a
//! namespace, and the TCP server start that the demo's echo and the bench's ping-pong share.

use std::{
    io,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use testbed::{netns, signals};

/// Runs `f` on a new thread that has entered network namespace `netns`:
/// sockets it creates live in that namespace.
pub fn spawn_in_netns<T, F>(netns: &str, f: F) -> thread::JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let path = netns::netns_path(netns);
    thread::spawn(move || {
        netns::enter_thread(&path)?;
        f()
    })
}

/// Waits for a thread's result; `what` names the thread if it panicked.
pub fn join<T>(handle: thread::JoinHandle<Result<T>>, what: &str) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the {what} thread panicked"))?
}

/// A TCP server's start: binds `addr`, tells `ready`, then accepts one
/// connection, polling every `poll` (so Ctrl-C is noticed) for `timeout` at
/// most. The returned stream is blocking.
pub fn accept_one(
    addr: SocketAddr,
    ready: &mpsc::Sender<()>,
    timeout: Duration,
    poll: Duration,
) -> Result<(TcpStream, SocketAddr)> {
    let listener =
        TcpListener::bind(addr).with_context(|| format!("server: cannot bind {addr}"))?;
    listener.set_nonblocking(true)?;
    let _ = ready.send(());
    let deadline = Instant::now() + timeout;
    let (stream, peer) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    bail!("server: no connection within {timeout:?}");
                }
                signals::sleep(poll)?;
            }
            Err(e) => return Err(e).context("server: accept failed"),
        }
    };
    stream.set_nonblocking(false)?;
    Ok((stream, peer))
}
