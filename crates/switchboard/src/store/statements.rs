//! Text of statements that write or look up many rows at once, shared by both backends.
//! Placeholders are numbered `$N` (SQLite's `positional` hook turns them into `?`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

/// The most parameters one statement binds (SQLite allows 32,766, PostgreSQL 65,535).
pub const MAX_PARAMS: usize = 30_000;

/// How many rows of `cols` parameters fit in one statement beside `fixed` others.
pub fn rows_per_statement(cols: usize, fixed: usize) -> usize {
    ((MAX_PARAMS - fixed) / cols).max(1)
}

/// `items` in chunks of at most `max`, each a power of two long: whatever the size of a
/// batch, its statements come in a handful of shapes, each prepared once and then
/// found in the connection's statement cache.
pub fn chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        let n = rest.len().min(max);
        if n == 0 {
            return None;
        }
        let (chunk, tail) = rest.split_at(1 << n.ilog2());
        rest = tail;
        Some(chunk)
    })
}

/// `n` numbered placeholders from `$first`: `$3, $4, $5`.
pub fn placeholders(n: usize, first: usize) -> String {
    let mut s = String::with_capacity(n * 5);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "${}", first + i);
    }
    s
}

/// `rows` tuples of `cols` numbered placeholders from `$first`: `($1, $2), ($3, $4)`.
pub fn tuples(rows: usize, cols: usize, first: usize) -> String {
    let mut s = String::with_capacity(rows * (cols * 5 + 4));
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "({})", placeholders(cols, first + r * cols));
    }
    s
}

/// Statement texts, each built once. The text of a statement over many rows depends only on
/// which statement it is and how many rows it has (a power of two, see `chunks`), so numbering
/// its placeholders again for every batch is work thrown away.
#[derive(Default)]
pub struct Texts(Mutex<HashMap<TextKey, Arc<str>>>);

/// (statement, table, rows).
type TextKey = (&'static str, &'static str, usize);

impl Texts {
    /// The text of statement `what` on `table` over `rows` rows, from `build` the first time.
    /// Only for statements whose text depends on nothing else.
    pub fn get(
        &self,
        what: &'static str,
        table: &'static str,
        rows: usize,
        build: impl FnOnce() -> String,
    ) -> Arc<str> {
        let key = (what, table, rows);
        if let Some(text) = self.0.lock().expect("statement texts").get(&key) {
            return text.clone();
        }
        let text: Arc<str> = build().into();
        self.0
            .lock()
            .expect("statement texts")
            .entry(key)
            .or_insert(text)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_powers_of_two_within_the_limit_and_cover_everything() {
        let items: Vec<usize> = (0..37).collect();
        let sizes: Vec<usize> = chunks(&items, 100).map(<[_]>::len).collect();
        assert_eq!(sizes, [32, 4, 1]);
        let sizes: Vec<usize> = chunks(&items, 10).map(<[_]>::len).collect();
        assert_eq!(sizes, [8, 8, 8, 8, 4, 1]);
        let joined: Vec<usize> = chunks(&items, 10).flatten().copied().collect();
        assert_eq!(joined, items);
        assert_eq!(chunks::<u8>(&[], 10).count(), 0);
        assert!(rows_per_statement(10, 2) * 10 + 2 <= MAX_PARAMS);
    }

    #[test]
    fn each_text_is_built_once_per_statement_table_and_rows() {
        let texts = Texts::default();
        let mut built = 0;
        let mut get = |what, table, rows| {
            texts
                .get(what, table, rows, || {
                    built += 1;
                    format!("{what} {table} {}", tuples(rows, 1, 1))
                })
                .to_string()
        };
        assert_eq!(get("insert", "t", 2), "insert t ($1), ($2)");
        assert_eq!(get("insert", "t", 2), "insert t ($1), ($2)");
        assert_eq!(get("insert", "t", 1), "insert t ($1)");
        assert_eq!(get("insert", "u", 1), "insert u ($1)");
        assert_eq!(get("probe", "u", 1), "probe u ($1)");
        assert_eq!(built, 4);
    }

    #[test]
    fn placeholders_and_tuples_are_numbered_in_order() {
        assert_eq!(placeholders(3, 2), "$2, $3, $4");
        assert_eq!(tuples(2, 3, 1), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(tuples(1, 1, 5), "($5)");
    }
}
