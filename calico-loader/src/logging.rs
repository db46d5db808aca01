//! The process's logs: tracing to stderr, and the filter the agent changes at run time from
//! Felix's `LogSeverityScreen`.

/// Changes the log filter, unless `RUST_LOG` set it (see [`set_log_filter`]).
type LogFilterSetter = Box<dyn Fn(&str) -> bool + Send + Sync>;
static LOG_FILTER: std::sync::OnceLock<LogFilterSetter> = std::sync::OnceLock::new();

/// Logs go to stderr (coloured on a terminal), at `RUST_LOG`'s level or `info`; without
/// `RUST_LOG`, the agent sets the level from Felix's LogSeverityScreen ([`set_log_filter`]).
pub fn init_tracing() {
    let from_env = tracing_subscriber::EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(from_env.unwrap_or_else(|| {
            tracing_subscriber::EnvFilter::new("info,netlink_packet_route=error")
        }))
        .with_filter_reloading();
    let handle = builder.reload_handle();
    builder.init();
    if !fixed {
        let _ = LOG_FILTER.set(Box::new(move |filter: &str| {
            handle
                .reload(tracing_subscriber::EnvFilter::new(filter))
                .is_ok()
        }));
    }
}

/// Sets the log filter (like `info` or `debug`); false when `RUST_LOG` fixed it, or logging was
/// not started by [`init_tracing`].
pub fn set_log_filter(filter: &str) -> bool {
    LOG_FILTER.get().is_some_and(|set| set(filter))
}
