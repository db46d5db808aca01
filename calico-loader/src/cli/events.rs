//! `calico-loader events`: dropped packets as they happen, one line (or JSON object) each, read
//! from the drop event ring buffer while this command holds the listener's lease.

use std::{
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use super::output::Output;
use crate::{
    dataplane::bpffs::{DEFAULT_PIN_PATH, PinLayout},
    events::{self, Listener, RENEW_INTERVAL, Resolver, Selection, Summary},
};

// The arguments of `events`.
#[derive(Args)]
pub struct EventsArgs {
    /// Keep listening until interrupted (Ctrl-C, SIGTERM, or the output closed); without it,
    /// listen for --duration.
    #[arg(short = 'f', long, conflicts_with = "duration")]
    pub follow: bool,
    /// Seconds to listen without --follow.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Events a second on each CPU at most; the rest are counted as rate-limited.
    #[arg(long, default_value_t = Selection::DEFAULT_RATE)]
    pub rate: u32,
    /// Events a CPU may send at once before the rate applies (default: the rate).
    #[arg(long)]
    pub burst: Option<u32>,
    /// Consider one drop in N (on each CPU); the rest are counted as sampled out.
    #[arg(long, default_value_t = 1)]
    pub sample: u32,
    #[arg(long, default_value = DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Output format: a line per event, or a JSON object per line.
    #[arg(short = 'o', long = "output", default_value = "table")]
    pub output: Output,
}

/// Prints one line; false when the output is gone (a closed pipe).
fn emit(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}").and_then(|()| out.flush()).is_ok()
}

/// `events`, on stdout; a summary of what was suppressed whenever that grows (at most once a
/// second), and at the end.
///
/// # Errors
///
/// Bad numbers, the pins missing, another listener running, or the maps unreadable.
pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let selection = Selection::new(args.rate, args.burst, args.sample)?;
    let layout = PinLayout::new(&args.pin_path);
    let context = || {
        format!(
            "reading the drop events pinned under {} (is the agent running?)",
            args.pin_path.display()
        )
    };
    let mut resolver = Resolver::open(&layout).with_context(context)?;
    let (mut listener, ring) = Listener::register(&layout, selection).with_context(context)?;
    // SAFETY: the ring buffer owns its fd and moves into the AsyncFd, which drops it last.
    let mut ring =
        unsafe { AsyncFd::register(ring) }.context("watching the drop event ring buffer")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut renew = tokio::time::interval(RENEW_INTERVAL);
    let deadline = (!args.follow).then(|| Instant::now() + Duration::from_secs(args.duration));
    let json = args.output == Output::Json;
    let say_summary = |summary: &Summary| {
        if json {
            serde_json::to_string(summary).is_ok_and(|text| emit(&text))
        } else {
            emit(&summary.line())
        }
    };
    let mut shown = 0u64;
    let mut reported_suppressed = 0u64;
    loop {
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready.context("waiting for drop events")?;
                let mut open = true;
                while let Some(item) = guard.get_inner_mut().next() {
                    let Some(event) = events::decode(&item) else { continue };
                    let record = resolver.describe(&event);
                    let text = if json {
                        serde_json::to_string(&record)?
                    } else {
                        events::line(&record)
                    };
                    if !emit(&text) {
                        open = false;
                        break;
                    }
                    shown += 1;
                    if args.count.is_some_and(|count| shown >= count) {
                        break;
                    }
                }
                guard.clear_ready();
                if !open || args.count.is_some_and(|count| shown >= count) {
                    break;
                }
            }
            _ = renew.tick() => {
                listener.renew()?;
                resolver.sync_clock();
                let summary = Summary::new(&listener.stats()?, shown);
                if summary.suppressed() > reported_suppressed {
                    reported_suppressed = summary.suppressed();
                    if !say_summary(&summary) {
                        break;
                    }
                }
            }
            () = sleep => break,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    let summary = Summary::new(&listener.stats()?, shown);
    drop(listener);
    say_summary(&summary);
    Ok(())
}
