//! Markdown tables for the bench's reports (the round results and the BGP phase).

use std::fmt::Write as _;

/// A Markdown table with aligned columns; `right[i]` right-aligns column i.
pub fn render_table(header: &[String], rows: &[Vec<String>], right: &[bool]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].chars().count(), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut text = String::from("|");
        for (i, cell) in cells.iter().enumerate() {
            let pad = " ".repeat(widths[i] - cell.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                let _ = write!(text, " {pad}{cell} |");
            } else {
                let _ = write!(text, " {cell}{pad} |");
            }
        }
        text.push('\n');
        text
    };
    let mut table = line(header);
    table.push('|');
    for (i, width) in widths.iter().enumerate() {
        if right.get(i).copied().unwrap_or(false) {
            let _ = write!(table, " {}: |", "-".repeat(width - 1));
        } else {
            let _ = write!(table, " {} |", "-".repeat(*width));
        }
    }
    table.push('\n');
    for row in rows {
        table.push_str(&line(row));
    }
    table
}
