//! Aligned plain-text tables for people (scripts use `-o json`).
//!
//! Cells may hold text an edge reported (its version) or an error message:
//! each is escaped ([`tunnel::untrusted`]) so none can drive the terminal.

use std::fmt::Write;

use tunnel::untrusted::escape_owned;

/// A table built row by row and rendered with columns padded to fit.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(header: &[&str]) -> Self {
        Self { rows: vec![header.iter().map(|h| (*h).to_owned()).collect()] }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.into_iter().map(escape_owned).collect());
    }

    pub(crate) fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_the_last_is_not_padded() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec!["web".into(), "active".into()]);
        t.row(vec!["database".into(), "draining".into()]);
        assert_eq!(t.render(), "NAME      STATE\nweb       active\ndatabase  draining\n");
    }
}
