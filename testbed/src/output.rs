//! What the developer tasks print on stderr: step headers, informational lines, explanations
//! and warnings, coloured on a terminal unless `NO_COLOR` is set.

use std::{
    env,
    error::Error,
    fmt::Display,
    io::{self, IsTerminal as _},
};

fn color() -> bool {
    io::stderr().is_terminal() && env::var_os("NO_COLOR").is_none()
}

/// `text` in the SGR colour `code` when stderr is a colour terminal, else as it is.
pub fn styled(code: &str, text: impl Display) -> String {
    if color() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Prints a step header.
pub fn step(title: impl Display) {
    eprintln!("\n{}", styled("1;34", format_args!("==> {title}")));
}

/// Prints an informational line.
pub fn info(text: impl Display) {
    eprintln!("{}", styled("32", format_args!("    {text}")));
}

/// Prints an explanation (indented, dimmed).
pub fn explain(text: impl Display) {
    for line in text.to_string().lines() {
        eprintln!("{}", styled("2", format_args!("    {line}")));
    }
}

/// Prints a warning.
pub fn warn(text: impl Display) {
    eprintln!("{}", styled("1;33", format_args!("warning: {text}")));
}

/// `err` followed by its causes, `: `-separated, the way anyhow's `{:#}` shows an error.
pub fn with_causes(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_causes_lists_the_chain_as_anyhow_does() {
        let err = crate::cmd::CmdError::Spawn {
            command: "ip netns add x".into(),
            hint: String::new(),
            source: io::Error::new(io::ErrorKind::PermissionDenied, "denied"),
        };
        assert_eq!(
            with_causes(&err),
            "failed to start `ip netns add x`: denied"
        );
    }
}
