//! Text that came from a peer, made safe to log and to print.
//!
//! An edge id, an agent version, a go-away or refusal message: whoever is
//! on the other end of a socket chose those bytes. Written raw, a newline
//! forges a log line and an escape sequence drives the operator's
//! terminal. [`escaped`] wraps such text for `tracing` fields and
//! `format!`; [`escape`] returns it as a string for tables and screens.
//!
//! Escaped are: control characters (C0, DEL, C1), the Unicode line and
//! paragraph separators, and the bidirectional formatting characters that
//! reorder what a terminal shows. They become `\n`, `\r`, `\t` or
//! `\u{..}`; a backslash becomes `\\`, so escaped text reads back
//! unambiguously. Everything else, spaces included, is written as is.

use std::borrow::Cow;
use std::fmt::{self, Display, Write};

/// Whether `c` must not reach a log or terminal raw.
fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

fn write_escaped(out: &mut impl Write, text: &str) -> fmt::Result {
    let mut rest = text;
    while let Some(at) = rest.find(needs_escape) {
        out.write_str(&rest[..at])?;
        let c = rest[at..].chars().next().unwrap_or_default();
        match c {
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            c => write!(out, "\\u{{{:x}}}", u32::from(c))?,
        }
        rest = &rest[at + c.len_utf8()..];
    }
    out.write_str(rest)
}

/// `text` with the characters listed in the module docs escaped; borrowed
/// when there is nothing to escape.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.contains(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    let _ = write_escaped(&mut out, text);
    Cow::Owned(out)
}

/// [`escape`] for an owned string: returned as is when there is nothing to
/// escape.
pub fn escape_owned(text: String) -> String {
    match escape(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(escaped) => escaped,
    }
}

/// Displays `value` with the characters listed in the module docs escaped,
/// without allocating: `warn!(edge = %escaped(&id), ..)`.
pub fn escaped<T: Display>(value: T) -> Escaped<T> {
    Escaped(value)
}

/// See [`escaped`].
#[derive(Debug, Clone, Copy)]
pub struct Escaped<T>(T);

impl<T: Display> Display for Escaped<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Escapes what `T`'s `Display` writes, piece by piece.
        struct Escaping<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl Write for Escaping<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                write_escaped(self.0, s)
            }
        }
        write!(Escaping(f), "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed_and_unchanged() {
        for text in ["", "e1", "relay-edge 0.1.0 (linux x86_64)", "café ✓"] {
            assert!(matches!(escape(text), Cow::Borrowed(t) if t == text));
            assert_eq!(escaped(text).to_string(), text);
        }
    }

    #[test]
    fn line_breaks_escapes_and_reordering_are_escaped() {
        let cases = [
            ("a\nWARN forged line", "a\\nWARN forged line"),
            ("a\r\n\tb", "a\\r\\n\\tb"),
            ("\u{1b}[2J\u{1b}]0;owned\u{7}", "\\u{1b}[2J\\u{1b}]0;owned\\u{7}"),
            ("\u{9b}31m\u{7f}\0", "\\u{9b}31m\\u{7f}\\u{0}"),
            ("evil\u{202e}txt.exe", "evil\\u{202e}txt.exe"),
            ("x\u{2028}y", "x\\u{2028}y"),
            ("already \\n escaped", "already \\\\n escaped"),
        ];
        for (raw, want) in cases {
            assert_eq!(escape(raw), want, "{raw:?}");
            assert_eq!(escaped(raw).to_string(), want, "{raw:?}");
            assert_eq!(escape_owned(raw.to_owned()), want, "{raw:?}");
        }
    }

    #[test]
    fn escaped_text_has_no_control_character_left() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let out = escape(&all);
        assert!(!out.contains(|c: char| c != '\\' && needs_escape(c)), "{out:?}");
    }

    #[test]
    fn any_display_value_is_escaped() {
        let err = std::io::Error::other("refused\nERROR forged");
        assert_eq!(format!("{}", escaped(&err)), "refused\\nERROR forged");
    }
}
