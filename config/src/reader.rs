//! A typed, error-collecting reader over the toml crate's spanned document
//! tree.
//!
//! # Design
//! serde's derive stops at the first unknown key or wrong type in a file and
//! its messages speak Rust ("invalid type: string, expected u8"). Walking the
//! spanned `DeTable` instead lets one pass report every problem of a file,
//! each at its own line and column, in the words of the schema. Parsing
//! itself stays the toml crate's.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::ConfigError;
use crate::model::Loc;

pub(crate) type Span = Range<usize>;

/// One file being read: its text, for turning byte offsets into lines and
/// columns, and the errors found in it.
pub(crate) struct Source<'a> {
    pub(crate) path: PathBuf,
    /// The name the object is stored under, which its `id` must equal: the
    /// file name without `.toml`, or a store key's last part.
    pub(crate) stem: String,
    /// Whether it came from a store key rather than a file.
    pub(crate) stored: bool,
    text: &'a str,
    /// The byte offset where each line starts, made once: a position is
    /// found by a binary search, so reading a file is linear in its size
    /// however many positions are asked for.
    line_starts: Vec<usize>,
    pub(crate) errors: Vec<ConfigError>,
    pub(crate) warnings: Vec<ConfigError>,
}

impl<'a> Source<'a> {
    pub(crate) fn new(path: &Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        let stem = path.file_stem().map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        Source { path: path.to_path_buf(), stem, stored: false, text, line_starts, errors: Vec::new(), warnings: Vec::new() }
    }

    /// A text from a store: `key` names it in messages, `id` is the name
    /// it is stored under.
    pub(crate) fn stored(key: &str, id: &str, text: &'a str) -> Self {
        Source { stem: id.to_owned(), stored: true, ..Source::new(Path::new(key), text) }
    }

    pub(crate) fn loc(&self, offset: usize) -> Loc {
        let offset = offset.min(self.text.len());
        // The last line that starts at or before `offset`.
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let line_start = self.line_starts[line - 1];
        let col = self.text.get(line_start..offset).map_or(0, |s| s.chars().count()) + 1;
        Loc { line: u32::try_from(line).unwrap_or(u32::MAX), col: u32::try_from(col).unwrap_or(u32::MAX) }
    }

    pub(crate) fn error_at(&mut self, loc: Loc, msg: impl Into<String>) {
        self.errors.push(ConfigError { file: self.path.clone(), line: loc.line, col: loc.col, msg: msg.into() });
    }

    pub(crate) fn error(&mut self, span: &Span, msg: impl Into<String>) {
        let loc = self.loc(span.start);
        self.error_at(loc, msg);
    }

    pub(crate) fn warn(&mut self, span: &Span, msg: impl Into<String>) {
        let loc = self.loc(span.start);
        self.warnings.push(ConfigError { file: self.path.clone(), line: loc.line, col: loc.col, msg: msg.into() });
    }

    /// Parses the whole file; syntax errors are recorded and `None` returned.
    pub(crate) fn parse(&mut self) -> Option<Spanned<DeTable<'a>>> {
        let (doc, errs) = DeTable::parse_recoverable(self.text);
        if errs.is_empty() {
            return Some(doc);
        }
        for e in errs {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim().to_string();
            self.error(&span, format!("TOML syntax: {msg}"));
        }
        None
    }
}

/// A value with where it was written.
#[derive(Clone, Debug)]
pub(crate) struct At<T> {
    pub(crate) v: T,
    pub(crate) span: Span,
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// A table of the document, read key by key.
pub(crate) struct Table<'t, 'i> {
    table: &'t DeTable<'i>,
    pub(crate) span: Span,
    /// How the table is named in messages: "host.toml", "[[ingress]] rule".
    pub(crate) what: String,
}

impl<'t, 'i> Table<'t, 'i> {
    pub(crate) fn new(table: &'t Spanned<DeTable<'i>>, what: impl Into<String>) -> Self {
        Table { table: table.get_ref(), span: table.span(), what: what.into() }
    }

    /// Reports every key not in `allowed`, suggesting the nearest allowed one.
    pub(crate) fn only_keys(&self, src: &mut Source<'_>, allowed: &[&str]) {
        for (k, _) in self.table.iter() {
            let key: &str = k.get_ref();
            if allowed.contains(&key) {
                continue;
            }
            let hint = match allowed.iter().min_by_key(|a| edit_distance(a, key)) {
                Some(best) if edit_distance(best, key) <= 2 => format!("; did you mean `{best}`?"),
                _ => format!("; expected one of: {}", allowed.join(", ")),
            };
            src.error(&k.span(), format!("unknown key `{key}` in {}{hint}", self.what));
        }
    }

    fn get(&self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.table.get(key)
    }

    /// The string at `key`, if it is one; reports nothing.
    pub(crate) fn peek_string(&self, key: &str) -> Option<String> {
        match self.get(key)?.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => None,
        }
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.get(key).is_some()
    }

    fn wrong_type(&self, src: &mut Source<'_>, key: &str, want: &str, v: &Spanned<DeValue<'_>>) {
        src.error(&v.span(), format!("`{key}` must be {want}, not {}", type_name(v.get_ref())));
    }

    pub(crate) fn string(&self, src: &mut Source<'_>, key: &str) -> Option<At<String>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(At { v: s.to_string(), span: v.span() }),
            _ => {
                self.wrong_type(src, key, "a string", v);
                None
            }
        }
    }

    /// A required string: its absence is reported with `missing`.
    pub(crate) fn required_string(&self, src: &mut Source<'_>, key: &str, missing: &str) -> Option<At<String>> {
        if !self.has(key) {
            src.error(&self.span, format!("missing `{key}` in {}: {missing}", self.what));
            return None;
        }
        self.string(src, key)
    }

    pub(crate) fn integer(&self, src: &mut Source<'_>, key: &str) -> Option<At<i64>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(At { v: n, span: v.span() }),
                Err(_) => {
                    src.error(&v.span(), format!("`{key}` is too large"));
                    None
                }
            },
            _ => {
                self.wrong_type(src, key, "an integer", v);
                None
            }
        }
    }

    /// An integer within `lo..=hi`; out-of-range values are reported.
    pub(crate) fn int_in(&self, src: &mut Source<'_>, key: &str, lo: i64, hi: i64) -> Option<At<i64>> {
        let at = self.integer(src, key)?;
        if at.v < lo || at.v > hi {
            src.error(&at.span, format!("`{key}` = {} is out of range: it must be {lo}..{hi}", at.v));
            return None;
        }
        Some(at)
    }

    pub(crate) fn u32_in(&self, src: &mut Source<'_>, key: &str, lo: u32, hi: u32) -> Option<u32> {
        self.int_in(src, key, lo.into(), hi.into()).and_then(|a| u32::try_from(a.v).ok())
    }

    pub(crate) fn boolean(&self, src: &mut Source<'_>, key: &str) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(src, key, "true or false", v);
                None
            }
        }
    }

    /// One of the words in `choices`.
    pub(crate) fn choice(&self, src: &mut Source<'_>, key: &str, choices: &[&str]) -> Option<At<String>> {
        let at = self.string(src, key)?;
        if choices.contains(&at.v.as_str()) {
            return Some(at);
        }
        let list: Vec<String> = choices.iter().map(|c| format!("\"{c}\"")).collect();
        src.error(&at.span, format!("`{key}` = \"{}\" is not one of {}", at.v, list.join(", ")));
        None
    }

    pub(crate) fn array(&self, src: &mut Source<'_>, key: &str) -> Option<&'t [Spanned<DeValue<'i>>]> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Array(a) => Some(a.as_ref()),
            _ => {
                self.wrong_type(src, key, "an array", v);
                None
            }
        }
    }

    /// An array of strings; non-string elements are reported and skipped.
    pub(crate) fn strings(&self, src: &mut Source<'_>, key: &str) -> Option<Vec<At<String>>> {
        let arr = self.array(src, key)?;
        let mut out = Vec::with_capacity(arr.len());
        for item in arr {
            match item.get_ref() {
                DeValue::String(s) => out.push(At { v: s.to_string(), span: item.span() }),
                other => src.error(&item.span(), format!("`{key}` must list strings, not {}", type_name(other))),
            }
        }
        Some(out)
    }

    /// An array of integers; others are reported and skipped.
    pub(crate) fn integers(&self, src: &mut Source<'_>, key: &str) -> Option<Vec<At<i64>>> {
        let arr = self.array(src, key)?;
        let mut out = Vec::with_capacity(arr.len());
        for item in arr {
            match item.get_ref() {
                DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                    Ok(n) => out.push(At { v: n, span: item.span() }),
                    Err(_) => src.error(&item.span(), format!("a value in `{key}` is too large")),
                },
                other => src.error(&item.span(), format!("`{key}` must list integers, not {}", type_name(other))),
            }
        }
        Some(out)
    }

    /// A sub-table (`[datapath]`).
    pub(crate) fn table(&self, src: &mut Source<'_>, key: &str) -> Option<Table<'t, 'i>> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Table(t) => Some(Table { table: t, span: v.span(), what: format!("[{key}]") }),
            _ => {
                self.wrong_type(src, key, "a table", v);
                None
            }
        }
    }

    /// An array of tables (`[[ingress]]`), each named `what`.
    pub(crate) fn tables(&self, src: &mut Source<'_>, key: &str, what: &str) -> Vec<Table<'t, 'i>> {
        let Some(arr) = self.array(src, key) else { return Vec::new() };
        let mut out = Vec::with_capacity(arr.len());
        for item in arr {
            match item.get_ref() {
                DeValue::Table(t) => out.push(Table { table: t, span: item.span(), what: what.to_string() }),
                other => src.error(&item.span(), format!("`{key}` must hold tables ([[{key}]]), not {}", type_name(other))),
            }
        }
        out
    }
}

/// Levenshtein distance, for "did you mean" hints on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_lines_and_columns_in_characters() {
        let text = "a = 1\nb = \"é\"\n\nc = 2";
        let src = Source::new(Path::new("x.toml"), text);
        let at = |s: &str| src.loc(text.find(s).unwrap());
        assert_eq!(at("a"), Loc { line: 1, col: 1 });
        assert_eq!(at("1"), Loc { line: 1, col: 5 });
        assert_eq!(at("\"é"), Loc { line: 2, col: 5 });
        assert_eq!(src.loc(text.find("é").unwrap() + 2), Loc { line: 2, col: 7 }, "after a two-byte character");
        assert_eq!(at("\n\nc"), Loc { line: 2, col: 8 }, "a line's newline is its last column");
        assert_eq!(at("c"), Loc { line: 4, col: 1 });
        assert_eq!(src.loc(10_000), Loc { line: 4, col: 6 }, "past the end: the end");
    }

    #[test]
    fn offsets_become_one_based_lines_and_columns() {
        let src = Source::new(Path::new("f.toml"), "a = 1\nbb = 2\n");
        assert_eq!(src.loc(0), Loc { line: 1, col: 1 });
        assert_eq!(src.loc(6), Loc { line: 2, col: 1 });
        assert_eq!(src.loc(11), Loc { line: 2, col: 6 });
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("priority", "prority"), 1);
        assert_eq!(edit_distance("ports", "port"), 1);
        assert_eq!(edit_distance("abc", "xyz"), 3);
    }
}
