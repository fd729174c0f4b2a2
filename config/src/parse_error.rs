//! Turns a `toml` parse or deserialize error into a [`ConfigError`] that names
//! the key at fault.
//!
//! `toml` reports a byte span and a message such as ``unknown field `lisen` ``.
//! To name the key, the text is parsed again into a spanned document tree and
//! the smallest key or value whose span holds the error span is found; its
//! dotted path (`mappings[0].listen`) becomes the message prefix.

use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{ConfigError, Doc};

/// Locates `err` in `doc` and prefixes its message with the key path.
pub(crate) fn convert(doc: &Doc<'_>, err: &toml::de::Error) -> ConfigError {
    let message = err.message().trim_end();
    let Some(span) = err.span() else {
        return doc.error(message);
    };
    let path = locate(doc.text, span.clone()).unwrap_or_default();
    let message = if path.is_empty() { message.to_owned() } else { format!("{path}: {message}") };
    // A span of 0..0 would read as "no position"; an error at the very start
    // of the file is still at 1:1.
    let span = if span == (0..0) { 0..1 } else { span };
    doc.error_at(span, message)
}

/// The best match so far: the span length and the path it names.
type Best = Option<(usize, String)>;

/// The dotted path of the smallest node holding `span`. For a key (say an
/// unknown field) it is the path of the table holding the key, since the key
/// itself is quoted in the message.
fn locate(text: &str, span: Range<usize>) -> Option<String> {
    let root = DeTable::parse(text).ok()?;
    let mut best: Best = None;
    walk_table(root.get_ref(), &span, "", &mut best);
    best.map(|(_, path)| path)
}

fn walk_table(table: &DeTable<'_>, span: &Range<usize>, path: &str, best: &mut Best) {
    for (key, value) in table {
        if contains(&key.span(), span) {
            consider(best, &key.span(), path.to_owned());
        }
        let child = join_key(path, key.get_ref());
        walk_value(value, span, child, best);
    }
}

fn walk_value(value: &Spanned<DeValue<'_>>, span: &Range<usize>, path: String, best: &mut Best) {
    match value.get_ref() {
        DeValue::Table(table) => walk_table(table, span, &path, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_value(item, span, format!("{path}[{i}]"), best);
            }
        }
        _ => {}
    }
    if contains(&value.span(), span) {
        consider(best, &value.span(), path);
    }
}

fn consider(best: &mut Best, node: &Range<usize>, path: String) {
    let len = node.len();
    if best.as_ref().is_none_or(|(best_len, _)| len < *best_len) {
        *best = Some((len, path));
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && !outer.is_empty()
}

/// `path.key`, quoting keys that are not bare TOML keys.
fn join_key(path: &str, key: &str) -> String {
    let bare =
        !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare { key.to_owned() } else { format!("{key:?}") };
    if path.is_empty() { key } else { format!("{path}.{key}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(text: &str, needle: &str) -> Option<String> {
        let start = text.find(needle).unwrap();
        locate(text, start..start + needle.len())
    }

    #[test]
    fn finds_values_in_nested_tables_and_arrays() {
        let text = "[tunnel]\nlisten = \"x\"\n[tunnel.tls]\ncert = \"c\"\n\
                    [[mappings]]\nname = \"a\"\n[[mappings]]\nname = \"b\"\nallow = [\"1\", \"2\"]\n";
        assert_eq!(path_of(text, "\"x\"").as_deref(), Some("tunnel.listen"));
        assert_eq!(path_of(text, "\"c\"").as_deref(), Some("tunnel.tls.cert"));
        assert_eq!(path_of(text, "\"b\"").as_deref(), Some("mappings[1].name"));
        assert_eq!(path_of(text, "\"2\"").as_deref(), Some("mappings[1].allow[1]"));
    }

    #[test]
    fn a_key_names_its_table() {
        let text = "[[mappings]]\nname = \"a\"\n[[mappings]]\nlisen = \"b\"\n";
        assert_eq!(path_of(text, "lisen").as_deref(), Some("mappings[1]"));
    }

    #[test]
    fn odd_keys_are_quoted() {
        assert_eq!(join_key("a", "b.c"), "a.\"b.c\"");
        assert_eq!(join_key("", "x_y-z"), "x_y-z");
    }
}
