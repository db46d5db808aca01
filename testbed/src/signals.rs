//! Ctrl-C (and other signals) noted instead of fatal: the process keeps running so its guards
//! can clean up, and [`crate::Cmd`] and [`sleep`] stop at the next occasion with
//! [`Interrupted`].

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A caught signal arrived: the task is to stop.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

extern "C" fn on_signal(_signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Catches the given signals instead of dying on them, so RAII guards can
/// clean up. Children in our process group still receive a terminal's Ctrl-C
/// themselves (and stop); the caller notices the flag at the next command or poll.
pub fn catch_signals(signals: &[libc::c_int]) {
    for &signal in signals {
        // SAFETY: the handler only performs an atomic store; the sigaction
        // struct is fully initialised (zeroed, then the fields we need).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&raw mut action.sa_mask);
            libc::sigaction(signal, &raw const action, std::ptr::null_mut());
        }
    }
}

/// Whether a caught signal arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// `Err(Interrupted)` once a caught signal arrived.
///
/// # Errors
///
/// A caught signal arrived.
pub fn check_interrupted() -> Result<(), Interrupted> {
    if interrupted() {
        return Err(Interrupted);
    }
    Ok(())
}

/// Sleeps, but returns early when interrupted.
///
/// # Errors
///
/// A caught signal arrived before or during the sleep.
pub fn sleep(duration: Duration) -> Result<(), Interrupted> {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        check_interrupted()?;
        thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
    }
    check_interrupted()
}
