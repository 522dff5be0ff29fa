//! Where things are in a config file: byte offsets to line and column, the keys a raw type
//! accepts, and the closest known key to a misspelt one.

use std::cell::Cell;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};

/// A line and column in the config file, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The line.
    pub line: usize,
    /// The column, in characters.
    pub column: usize,
}

/// The text of a config file, with its line starts for turning spans into positions.
#[derive(Debug)]
pub(super) struct Source<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, line_starts }
    }

    /// The position of the start of `span` (toml's spans are byte ranges).
    pub(super) fn position(&self, span: Option<Range<usize>>) -> Option<Position> {
        let offset = span?.start.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line.saturating_sub(1)];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |before| before.chars().count())
            + 1;
        Some(Position { line, column })
    }
}

/// The keys a raw config type accepts, as serde itself sees them: the derive hands its field
/// list to `deserialize_struct`, so the list can never drift from the struct.
pub(super) fn keys_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let fields = Cell::new(&[][..]);
    // The probe always fails once it has seen the field list; the error is of no interest.
    let _ = T::deserialize(FieldProbe(&fields));
    fields.get()
}

struct FieldProbe<'a>(&'a Cell<&'static [&'static str]>);

impl<'de> Deserializer<'de> for FieldProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.set(fields);
        Err(de::Error::custom("fields seen"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

/// The known key closest to `key`, if it is close enough to be a typo of it.
pub(super) fn closest<'k>(key: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    let key = key.to_ascii_lowercase();
    // One edit in a short key, up to three in a long one: `pool_mni` → `pool_min`.
    let limit = (key.chars().count() / 3).clamp(1, 3);
    known
        .into_iter()
        .map(|k| (edit_distance(&key, k), k))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// neighbouring characters each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // rows[i][j] = distance between a[..i] and b[..j]; three rows are enough for the swap.
    let mut before = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        current[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(previous[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            current[j] = d;
        }
        std::mem::swap(&mut before, &mut previous);
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let source = Source::new("a = 1\n\nprix = \"é\" x\n");
        assert_eq!(
            source.position(Some(0..1)),
            Some(Position { line: 1, column: 1 })
        );
        assert_eq!(
            source.position(Some(6..6)),
            Some(Position { line: 2, column: 1 })
        );
        // `x` comes after a two-byte character: column 12, not 13.
        let x = "a = 1\n\nprix = \"é\" ".len();
        assert_eq!(
            source.position(Some(x..x + 1)),
            Some(Position {
                line: 3,
                column: 12
            })
        );
        assert_eq!(source.position(None), None);
    }

    #[test]
    fn typos_find_their_key() {
        let known = ["pool_min", "pool_max", "listen", "user", "user_id"];
        assert_eq!(closest("pool_mni", known), Some("pool_min"));
        assert_eq!(closest("Listen", known), Some("listen"));
        assert_eq!(closest("lisen", known), Some("listen"));
        assert_eq!(closest("userid", known), Some("user_id"));
        assert_eq!(closest("something", known), None);
        assert_eq!(edit_distance("ab", "ba"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn keys_come_from_the_struct() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Two {
            one: Option<u8>,
            #[serde(rename = "second")]
            two: Option<u8>,
        }
        assert_eq!(keys_of::<Two>(), ["one", "second"]);
    }
}
