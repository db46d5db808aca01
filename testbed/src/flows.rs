//! Continuous traffic between two network namespaces, counted at both ends: what a user watches
//! while something restarts. A UDP flow of numbered datagrams at a fixed rate, a long-lived TCP
//! stream carrying data all the time, and `ping` at a short interval. Each runs on threads that
//! entered the namespaces (their sockets live there), for a set duration, and reports what was
//! sent, what arrived and the longest silence at the receiving end.
//!
//! The integration tests and `cargo xtask bench` use the same flows.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::netns::{EnterError, enter_thread};

/// Why a flow could not start, or what went wrong with its tools.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error(transparent)]
    Enter(#[from] EnterError),
    #[error("cannot {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("ping printed no summary; its output:\n{0}")]
    PingOutput(String),
    #[error("a flow's thread panicked")]
    Panicked,
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> FlowError {
    let what = what.into();
    move |source| FlowError::Io { what, source }
}

/// Runs `f` on a new thread inside the namespace `netns` and returns its result: sockets made
/// there live in that namespace, whichever thread uses them afterwards.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, FlowError> + Send + 'static,
) -> Result<T, FlowError> {
    let netns = netns.to_owned();
    thread::spawn(move || {
        enter_thread(&netns)?;
        f()
    })
    .join()
    .map_err(|_| FlowError::Panicked)?
}

fn unspecified(dst: IpAddr) -> IpAddr {
    match dst {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Asks for a receive buffer of `bytes` (beyond `rmem_max`, as root), so that a receiver the
/// scheduler holds back for a while drops nothing.
fn set_receive_buffer(fd: i32, bytes: i32) {
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt on a socket we own, with a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&raw const bytes).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// A flow's pace and length.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// How long the sender sends.
    pub duration: Duration,
    /// Datagrams a second (UDP), or bytes a second (TCP).
    pub rate: u64,
}

// ---------------------------------------------------------------------------------------------
// UDP

/// What a UDP flow counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UdpReport {
    /// Datagrams the sender handed to the kernel (each with its own sequence number).
    pub sent: u64,
    /// Distinct sequence numbers that arrived.
    pub received: u64,
    /// Datagrams that arrived twice.
    pub duplicates: u64,
    /// Sends the kernel refused (tried again, so not counted as sent).
    pub send_errors: u64,
    /// Datagrams the sender's own interface dropped although the kernel reported them sent
    /// (`UdpSndbufErrors` of the sender's namespace): on a veth, the peer's receive ring was
    /// full because the host had not drained it in time. They never left the sender.
    pub refused_by_sender_interface: u64,
    /// How long the sender took to send them (close to the duration when it kept pace).
    pub send_time: Duration,
    /// The longest time the receiver waited between two datagrams.
    pub longest_gap: Duration,
}

impl UdpReport {
    /// Datagrams that left the sender and were never received.
    pub fn lost(&self) -> u64 {
        self.sent
            .saturating_sub(self.refused_by_sender_interface)
            .saturating_sub(self.received)
    }

    /// The rate the sender achieved, in datagrams a second.
    pub fn achieved_rate(&self) -> f64 {
        self.sent as f64 / self.send_time.as_secs_f64().max(1e-9)
    }
}

/// Sequence-numbered UDP datagrams from one namespace to a socket in another, at a fixed rate.
pub struct UdpFlow {
    from: PathBuf,
    sndbuf_errors: u64,
    stop: Arc<AtomicBool>,
    sender: Option<JoinHandle<(u64, u64, Duration)>>,
    receiver: Option<JoinHandle<(Vec<u64>, u64, Duration)>>,
    receiver_done: Arc<AtomicBool>,
}

/// The datagram's first eight bytes carry its sequence number; the rest is padding, for a
/// 64-byte frame's worth of payload.
const UDP_PAYLOAD: usize = 22;
/// A datagram that carries this tag after its sequence number is one of ours.
const UDP_TAG: [u8; 4] = *b"cflw";

impl UdpFlow {
    /// Binds the receiver in `to` on `dst`'s port, then sends `pace.rate` datagrams a second to
    /// `dst` from `from` for `pace.duration`. The sender catches up in bursts when the scheduler
    /// holds it back, so the count is what the rate says unless it cannot keep up at all.
    ///
    /// # Errors
    ///
    /// A namespace cannot be entered, or a socket not made.
    pub fn start(from: &Path, to: &Path, dst: SocketAddr, pace: Pace) -> Result<Self, FlowError> {
        let listen = SocketAddr::new(unspecified(dst.ip()), dst.port());
        let receiver = in_netns(to, move || {
            let socket = UdpSocket::bind(listen).map_err(io_error(format!("bind {listen}")))?;
            set_receive_buffer(socket.as_raw_fd(), 32 << 20);
            socket
                .set_read_timeout(Some(Duration::from_millis(100)))
                .map_err(io_error("set a read timeout"))?;
            Ok(socket)
        })?;
        let bind = SocketAddr::new(unspecified(dst.ip()), 0);
        let sender = in_netns(from, move || {
            let socket = UdpSocket::bind(bind).map_err(io_error("bind the UDP sender"))?;
            socket
                .connect(dst)
                .map_err(io_error(format!("connect to {dst}")))?;
            Ok(socket)
        })?;
        let sndbuf_errors = udp_sndbuf_errors(from)?;
        let total = pace.rate.saturating_mul(pace.duration.as_millis() as u64) / 1000;
        let stop = Arc::new(AtomicBool::new(false));
        let receiver_done = Arc::new(AtomicBool::new(false));
        let receiver = {
            let done = receiver_done.clone();
            thread::spawn(move || receive_udp(&receiver, total, &done))
        };
        let sender = {
            let stop = stop.clone();
            thread::spawn(move || send_udp(&sender, total, pace.rate, &stop))
        };
        Ok(Self {
            from: from.to_owned(),
            sndbuf_errors,
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
            receiver_done,
        })
    }

    /// Waits for the sender to finish, gives the last datagrams `grace` to arrive, and returns
    /// the counts.
    ///
    /// # Errors
    ///
    /// A thread of the flow panicked.
    pub fn finish(mut self, grace: Duration) -> Result<UdpReport, FlowError> {
        let (sent, send_errors, send_time) = self
            .sender
            .take()
            .map(JoinHandle::join)
            .transpose()
            .map_err(|_| FlowError::Panicked)?
            .unwrap_or_default();
        let deadline = Instant::now() + grace;
        thread::sleep(deadline.saturating_duration_since(Instant::now()));
        self.receiver_done.store(true, Ordering::SeqCst);
        let (seen, duplicates, longest_gap) = self
            .receiver
            .take()
            .map(JoinHandle::join)
            .transpose()
            .map_err(|_| FlowError::Panicked)?
            .unwrap_or_default();
        let received = seen
            .iter()
            .map(|word| u64::from(word.count_ones()))
            .sum::<u64>();
        let refused = udp_sndbuf_errors(&self.from)?.saturating_sub(self.sndbuf_errors);
        Ok(UdpReport {
            sent,
            received,
            duplicates,
            send_errors,
            refused_by_sender_interface: refused,
            send_time,
            longest_gap,
        })
    }
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.receiver_done.store(true, Ordering::SeqCst);
        if let Some(sender) = self.sender.take() {
            let _ = sender.join();
        }
        if let Some(receiver) = self.receiver.take() {
            let _ = receiver.join();
        }
    }
}

/// `Udp: SndbufErrors` of the namespace `netns` (`/proc/net/snmp`): UDP datagrams dropped on
/// their way out although `send` said they were sent.
fn udp_sndbuf_errors(netns: &Path) -> Result<u64, FlowError> {
    let text = in_netns(netns, || {
        std::fs::read_to_string("/proc/thread-self/net/snmp")
            .map_err(io_error("read /proc/thread-self/net/snmp"))
    })?;
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|line| line.starts_with("Udp:"))
        .map(|line| line.split_whitespace().collect())
        .collect();
    let value = match rows.as_slice() {
        [names, values] => names
            .iter()
            .position(|n| *n == "SndbufErrors")
            .and_then(|at| values.get(at)?.parse().ok()),
        _ => None,
    };
    value.ok_or_else(|| FlowError::Io {
        what: "find Udp: SndbufErrors in /proc/net/snmp".into(),
        source: io::Error::from(io::ErrorKind::InvalidData),
    })
}

/// Sends datagrams 0..total at `rate` a second: (sent, refused sends, time taken).
fn send_udp(socket: &UdpSocket, total: u64, rate: u64, stop: &AtomicBool) -> (u64, u64, Duration) {
    let start = Instant::now();
    let mut sent = 0u64;
    let mut errors = 0u64;
    let mut payload = [0u8; UDP_PAYLOAD];
    payload[8..12].copy_from_slice(&UDP_TAG);
    while sent < total && !stop.load(Ordering::SeqCst) {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            payload[..8].copy_from_slice(&sent.to_be_bytes());
            match socket.send(&payload) {
                Ok(_) => sent += 1,
                Err(_) => {
                    // A full queue (ENOBUFS) or an ICMP error reported back: try this datagram
                    // again on the next tick.
                    errors += 1;
                    break;
                }
            }
        }
        thread::sleep(Duration::from_micros(500));
    }
    (sent, errors, start.elapsed())
}

/// How long a UDP receiver told the flow is done may go on reading what is queued.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Receives until told to stop, then reads what is queued: (a bitmap of the sequence numbers
/// seen, duplicates, the longest wait between two datagrams once the first came).
fn receive_udp(socket: &UdpSocket, total: u64, done: &AtomicBool) -> (Vec<u64>, u64, Duration) {
    let mut seen = vec![0u64; total.div_ceil(64) as usize];
    let mut duplicates = 0;
    let mut longest_gap = Duration::ZERO;
    let mut last: Option<Instant> = None;
    let mut buf = [0u8; 256];
    let mut received = 0u64;
    // Once told the flow is done, what is already queued is still read (a receiver that fell
    // behind on a busy machine has not lost it): the loop ends when a read finds nothing for
    // the read timeout, or after DRAIN_LIMIT at most.
    let mut done_at: Option<Instant> = None;
    loop {
        if done_at.is_none() && done.load(Ordering::SeqCst) {
            done_at = Some(Instant::now());
        }
        if done_at.is_some_and(|at| at.elapsed() > DRAIN_LIMIT) {
            break;
        }
        let Ok(n) = socket.recv(&mut buf) else {
            if done_at.is_some() {
                break;
            }
            continue;
        };
        if n < 12 || buf[8..12] != UDP_TAG {
            continue;
        }
        let now = Instant::now();
        if let Some(last) = last
            && received < total
        {
            longest_gap = longest_gap.max(now - last);
        }
        last = Some(now);
        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
        let Some(word) = seen.get_mut((seq / 64) as usize) else {
            continue;
        };
        let bit = 1u64 << (seq % 64);
        if *word & bit != 0 {
            duplicates += 1;
        } else {
            *word |= bit;
            received += 1;
        }
    }
    (seen, duplicates, longest_gap)
}

// ---------------------------------------------------------------------------------------------
// TCP

/// What a TCP stream counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpReport {
    /// Bytes the writer wrote.
    pub sent: u64,
    /// Bytes the reader read before the end of the stream.
    pub received: u64,
    /// The longest time the reader waited between two reads.
    pub longest_gap: Duration,
    /// What went wrong on either side (a reset, a stall beyond the read timeout), if anything.
    pub error: Option<String>,
    /// Segments the writer's kernel sent again (`tcpi_total_retrans`): lost on the way, or
    /// taken for lost when their acknowledgement was late (a tail loss probe on a busy machine).
    pub retransmits: u32,
    /// Of those, the ones the receiver reported as duplicates (D-SACK): they had arrived.
    pub duplicate_retransmits: u32,
}

impl TcpReport {
    /// Retransmitted segments whose first copy never arrived: packets lost on the way.
    pub fn lost_segments(&self) -> u32 {
        self.retransmits.saturating_sub(self.duplicate_retransmits)
    }
}

/// One long-lived TCP connection carrying data continuously from one namespace to another.
pub struct TcpFlow {
    stop: Arc<AtomicBool>,
    writer: Option<JoinHandle<(u64, Option<String>, TcpStream)>>,
    reader: Option<JoinHandle<(u64, Duration, Option<String>)>>,
}

/// The most the writer hands to one `write`; it writes what its pace says is due every tick.
const TCP_CHUNK: usize = 16 << 10;
const TCP_TICK: Duration = Duration::from_millis(2);
/// A read that waits this long ends the stream as stalled.
const TCP_STALL: Duration = Duration::from_secs(5);

impl TcpFlow {
    /// Listens in `to` on `dst`'s port, connects from `from`, and writes `pace.rate` bytes a
    /// second for `pace.duration`; the reader reads until the writer closes.
    ///
    /// # Errors
    ///
    /// A namespace cannot be entered, or the connection not made.
    pub fn start(from: &Path, to: &Path, dst: SocketAddr, pace: Pace) -> Result<Self, FlowError> {
        let listen = SocketAddr::new(unspecified(dst.ip()), dst.port());
        let listener = in_netns(to, move || {
            TcpListener::bind(listen).map_err(io_error(format!("listen on {listen}")))
        })?;
        let client = in_netns(from, move || {
            TcpStream::connect_timeout(&dst, Duration::from_secs(5))
                .map_err(io_error(format!("connect to {dst}")))
        })?;
        let (server, _) = listener
            .accept()
            .map_err(io_error("accept the connection"))?;
        server
            .set_read_timeout(Some(TCP_STALL))
            .map_err(io_error("set a read timeout"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = thread::spawn(move || read_stream(server));
        let writer = {
            let stop = stop.clone();
            thread::spawn(move || write_stream(client, pace, &stop))
        };
        Ok(Self {
            stop,
            writer: Some(writer),
            reader: Some(reader),
        })
    }

    /// Waits for the writer to finish and the reader to reach the end of the stream.
    ///
    /// # Errors
    ///
    /// A thread of the flow panicked, or the flow was already finished.
    pub fn finish(mut self) -> Result<TcpReport, FlowError> {
        let writer = self.writer.take().map(JoinHandle::join);
        let (sent, write_error, stream) = writer
            .ok_or(FlowError::Panicked)?
            .map_err(|_| FlowError::Panicked)?;
        let (received, longest_gap, read_error) = self
            .reader
            .take()
            .map(JoinHandle::join)
            .transpose()
            .map_err(|_| FlowError::Panicked)?
            .unwrap_or_default();
        // Read once the reader has everything: every segment is acknowledged by then, and the
        // duplicates among the retransmissions reported.
        let (retransmits, duplicate_retransmits) = retransmits(&stream);
        let error = match (write_error, read_error) {
            (None, None) => None,
            (Some(w), None) => Some(format!("writer: {w}")),
            (None, Some(r)) => Some(format!("reader: {r}")),
            (Some(w), Some(r)) => Some(format!("writer: {w}; reader: {r}")),
        };
        Ok(TcpReport {
            sent,
            received,
            longest_gap,
            error,
            retransmits,
            duplicate_retransmits,
        })
    }
}

impl TcpFlow {
    /// Stops writing now (before the pace's duration ran out), then [`TcpFlow::finish`]es:
    /// for a stream that must last exactly as long as something else does.
    ///
    /// # Errors
    ///
    /// As [`TcpFlow::finish`].
    pub fn stop(self) -> Result<TcpReport, FlowError> {
        self.stop.store(true, Ordering::SeqCst);
        self.finish()
    }
}

impl Drop for TcpFlow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Writes at the pace, then closes its side: (bytes written, the error that stopped it, the
/// stream, for its statistics).
fn write_stream(
    mut stream: TcpStream,
    pace: Pace,
    stop: &AtomicBool,
) -> (u64, Option<String>, TcpStream) {
    let chunk = [0x5au8; TCP_CHUNK];
    let start = Instant::now();
    let mut sent = 0u64;
    let mut error = None;
    while start.elapsed() < pace.duration && !stop.load(Ordering::SeqCst) {
        let due = (start.elapsed().as_secs_f64() * pace.rate as f64) as u64;
        while sent < due {
            let len = usize::try_from(due - sent)
                .unwrap_or(TCP_CHUNK)
                .min(TCP_CHUNK);
            match stream.write(&chunk[..len]) {
                Ok(n) => sent += n as u64,
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        if error.is_some() {
            break;
        }
        thread::sleep(TCP_TICK);
    }
    if let Err(e) = stream.shutdown(std::net::Shutdown::Write)
        && error.is_none()
    {
        error = Some(format!("closing: {e}"));
    }
    (sent, error, stream)
}

/// Reads until the end of the stream: (bytes, longest wait between reads, the error that ended
/// it early).
fn read_stream(mut stream: TcpStream) -> (u64, Duration, Option<String>) {
    let mut buf = vec![0u8; 256 << 10];
    let mut received = 0u64;
    let mut longest_gap = Duration::ZERO;
    let mut last = Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (received, longest_gap, None),
            Ok(n) => {
                let now = Instant::now();
                longest_gap = longest_gap.max(now - last);
                last = now;
                received += n as u64;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return (
                    received,
                    longest_gap.max(last.elapsed()),
                    Some(format!("no data for {TCP_STALL:?}: stalled")),
                );
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (received, longest_gap, Some(e.to_string())),
        }
    }
}

/// The connection's retransmitted segments so far (`tcpi_total_retrans`), and how many of those
/// the receiver reported as duplicates (`tcpi_dsack_dups`): sent again although they had
/// arrived.
fn retransmits(stream: &TcpStream) -> (u32, u32) {
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, a valid out pointer and its length.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return (0, 0);
    }
    // A kernel older than 4.19 fills less and leaves the count of duplicates at zero.
    (info.tcpi_total_retrans, info.tcpi_dsack_dups)
}

// ---------------------------------------------------------------------------------------------
// ping

/// What a ping counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PingReport {
    pub transmitted: u64,
    pub received: u64,
}

impl PingReport {
    pub fn lost(&self) -> u64 {
        self.transmitted.saturating_sub(self.received)
    }
}

/// `ping -c COUNT -i INTERVAL` from a namespace: it sends a fixed count, and waits for the last
/// replies before it exits, so every request it counts had its chance.
pub struct PingFlow {
    child: Option<Child>,
    dst: IpAddr,
}

impl PingFlow {
    /// Pings `dst` from `from` every `interval`, `count` times (an interval under 200 ms needs
    /// root).
    ///
    /// # Errors
    ///
    /// `nsenter` or `ping` cannot be started.
    pub fn start(
        from: &Path,
        dst: IpAddr,
        interval: Duration,
        count: u64,
    ) -> Result<Self, FlowError> {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", from.display()))
            .args(["ping", "-n", "-q", "-W", "1", "-c"])
            .arg(count.to_string())
            .arg("-i")
            .arg(format!("{:.3}", interval.as_secs_f64()))
            .arg(dst.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_error("start ping"))?;
        Ok(Self {
            child: Some(child),
            dst,
        })
    }

    /// Waits for ping to finish and reads its summary.
    ///
    /// # Errors
    ///
    /// ping printed no summary (it could not run).
    pub fn finish(mut self) -> Result<PingReport, FlowError> {
        let Some(child) = self.child.take() else {
            return Ok(PingReport::default());
        };
        let output = child
            .wait_with_output()
            .map_err(io_error(format!("wait for ping {}", self.dst)))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        parse_ping_summary(&text).ok_or(FlowError::PingOutput(text))
    }
}

impl Drop for PingFlow {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `N packets transmitted, M received, ...` from ping's output.
pub fn parse_ping_summary(text: &str) -> Option<PingReport> {
    let summary = text.lines().find(|l| l.contains("packets transmitted"))?;
    let words: Vec<&str> = summary
        .split([' ', ','])
        .filter(|w| !w.is_empty())
        .collect();
    let before = |word: &str| -> Option<u64> {
        let at = words.iter().position(|w| *w == word)?;
        words.get(at.checked_sub(1)?)?.parse().ok()
    };
    Some(PingReport {
        transmitted: before("packets")?,
        received: before("received")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summaries_read() {
        let text = "PING 198.18.0.12 (198.18.0.12) 56(84) bytes of data.\n\n--- 198.18.0.12 ping statistics ---\n1000 packets transmitted, 998 received, 0.2% packet loss, time 10012ms\nrtt min/avg/max/mdev = 0.030/0.061/1.123/0.040 ms\n";
        assert_eq!(
            parse_ping_summary(text),
            Some(PingReport {
                transmitted: 1000,
                received: 998
            })
        );
        let errors = "--- x ping statistics ---\n5 packets transmitted, 0 received, +5 errors, 100% packet loss, time 4ms\n";
        assert_eq!(
            parse_ping_summary(errors),
            Some(PingReport {
                transmitted: 5,
                received: 0
            })
        );
        assert_eq!(parse_ping_summary("ping: unknown host"), None);
    }
}
