//! How `dump` and `trace` print: a table for people (the default) or JSON for programs
//! (`-o json`).

use clap::ValueEnum;

/// Output format of `dump` and `trace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Prints `rows` on stdout: as `table` renders them, or as a JSON array.
///
/// # Errors
///
/// JSON encoding failing.
pub fn print<T: serde::Serialize>(
    output: Output,
    rows: &[T],
    table: impl Fn(&[T]) -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Output::Table => print!("{}", table(rows)),
    }
    Ok(())
}
