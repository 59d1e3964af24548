//! A stable 64-bit hash of categorical crosses: the same value on every machine, run and version, for the
//! same strings, so it can key a feature, an online-feature store or a bucket across training and serving.
//!
//! Definition (version 1), over the UTF-8 bytes of the values of columns j = 0..k of a row:
//!
//! ```text
//! h = XOR over columns j, byte positions i, byte b of splitmix64(((j + 1) << 40) | (i << 8) | b)
//! cross_hash = splitmix64(h)                        (null when any value of the row is null)
//! ```
//!
//! Every (column, position, byte) draws its own pseudo-random 64-bit word (tabulation hashing with
//! splitmix64 as the table), so the order of columns and of bytes matters, and an XOR of words is a
//! reduction Polars can compute too: the pure-Polars twin in tasks/kernels.py gives identical values.
//! Positions are taken modulo 2^32 (values up to 4 GiB) and columns modulo 2^24.

use arrow_array::{Array, LargeStringArray, StringArray, StringViewArray, UInt64Array};
use arrow_buffer::NullBuffer;
use rayon::prelude::*;

/// One string column, in any of Arrow's three string layouts.
pub enum Strings<'a> {
    Utf8(&'a StringArray),
    LargeUtf8(&'a LargeStringArray),
    Utf8View(&'a StringViewArray),
}

impl Strings<'_> {
    fn len(&self) -> usize {
        match self {
            Strings::Utf8(a) => a.len(),
            Strings::LargeUtf8(a) => a.len(),
            Strings::Utf8View(a) => a.len(),
        }
    }

    fn nulls(&self) -> Option<&NullBuffer> {
        match self {
            Strings::Utf8(a) => a.nulls(),
            Strings::LargeUtf8(a) => a.nulls(),
            Strings::Utf8View(a) => a.nulls(),
        }
    }

    /// The bytes of row i (those of a null row are whatever the array holds: masked by the caller).
    fn bytes(&self, i: usize) -> &[u8] {
        match self {
            Strings::Utf8(a) => a.value(i).as_bytes(),
            Strings::LargeUtf8(a) => a.value(i).as_bytes(),
            Strings::Utf8View(a) => a.value(i).as_bytes(),
        }
    }
}

/// splitmix64's output function (Steele, Lea, Flood 2014), applied to x + the golden gamma.
#[inline]
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The hash of one row's values, in column order.
pub fn hash_values(values: &[&[u8]]) -> u64 {
    let mut h = 0u64;
    for (j, bytes) in values.iter().enumerate() {
        let column = ((j as u64 + 1) & 0xFF_FFFF) << 40;
        for (i, &b) in bytes.iter().enumerate() {
            h ^= splitmix64(column | ((i as u64 & 0xFFFF_FFFF) << 8) | u64::from(b));
        }
    }
    splitmix64(h)
}

#[derive(Debug, PartialEq, Eq)]
pub enum HashError {
    NoColumns,
    LengthMismatch { column: usize, len: usize, expected: usize },
}

impl std::fmt::Display for HashError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashError::NoColumns => write!(f, "columns: at least one column is needed"),
            HashError::LengthMismatch { column, len, expected } => {
                write!(
                    f,
                    "columns[{column}] has {len} rows, expected {expected} (the length of columns[0])"
                )
            }
        }
    }
}

impl std::error::Error for HashError {}

/// The cross hash of every row of the columns (equal lengths); null where any value is null.
pub fn cross_hash(columns: &[Strings<'_>]) -> Result<UInt64Array, HashError> {
    let first = columns.first().ok_or(HashError::NoColumns)?;
    let rows = first.len();
    if let Some((column, c)) = columns.iter().enumerate().find(|(_, c)| c.len() != rows) {
        return Err(HashError::LengthMismatch {
            column,
            len: c.len(),
            expected: rows,
        });
    }
    let nulls = columns.iter().fold(None, |acc: Option<NullBuffer>, c| {
        NullBuffer::union(acc.as_ref(), c.nulls())
    });
    let values: Vec<u64> = (0..rows)
        .into_par_iter()
        .with_min_len(4096)
        .map_init(Vec::new, |parts: &mut Vec<&[u8]>, i| {
            parts.clear();
            parts.extend(columns.iter().map(|c| c.bytes(i)));
            hash_values(parts)
        })
        .collect();
    Ok(UInt64Array::new(values.into(), nulls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // The first outputs of the reference splitmix64 generator seeded with 0 (state += gamma each step).
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0x9E37_79B9_7F4A_7C15), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn pinned_values_never_change() {
        // The definition is a contract (stored features, online keys): these values must not move.
        assert_eq!(hash_values(&[]), splitmix64(0));
        let pinned = hash_values(&[b"UA", b"EWR"]);
        assert_eq!(pinned, PINNED_UA_EWR, "{pinned:#x}");
    }

    // Computed independently (a ten-line Python transcription of the definition above).
    const PINNED_UA_EWR: u64 = 0x60a8_f246_6d35_e951;

    #[test]
    fn order_and_boundaries_matter() {
        let ab = hash_values(&[b"a", b"b"]);
        assert_ne!(ab, hash_values(&[b"b", b"a"]));
        assert_ne!(hash_values(&[b"ab", b""]), hash_values(&[b"a", b"b"]));
        assert_ne!(hash_values(&[b"ab"]), hash_values(&[b"ba"]));
        // an empty value adds no bytes, but still moves the next column's values to their own words
        assert_ne!(hash_values(&[b"", b"x"]), hash_values(&[b"x", b""]));
        assert_ne!(hash_values(&[b"", b"x"]), hash_values(&[b"x"]));
    }

    #[test]
    fn layouts_agree_and_nulls_propagate() {
        let utf8 = StringArray::from(vec![Some("JFK"), None, Some(""), Some("ä")]);
        let large = LargeStringArray::from(vec![Some("B6"), Some("AA"), Some("x"), Some("y")]);
        let view = StringViewArray::from(vec![Some("JFK"), None, Some(""), Some("ä")]);
        let a = cross_hash(&[Strings::Utf8(&utf8), Strings::LargeUtf8(&large)]).unwrap();
        let b = cross_hash(&[Strings::Utf8View(&view), Strings::LargeUtf8(&large)]).unwrap();
        assert_eq!(a, b);
        assert!(a.is_null(1) && a.is_valid(2));
        assert_eq!(a.value(0), hash_values(&[b"JFK", b"B6"]));
        assert_eq!(a.value(3), hash_values(&["ä".as_bytes(), b"y"]));
    }

    #[test]
    fn errors_name_the_column() {
        let a = StringArray::from(vec!["a", "b"]);
        let b = StringArray::from(vec!["a"]);
        assert_eq!(cross_hash(&[]), Err(HashError::NoColumns));
        let err = cross_hash(&[Strings::Utf8(&a), Strings::Utf8(&b)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "columns[1] has 1 rows, expected 2 (the length of columns[0])"
        );
    }
}
