//! Columns as Arrow hands them over (one or more chunks of one type), and the kernels' errors.

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, ArrowPrimitiveType, PrimitiveArray, new_empty_array};
use arrow_schema::DataType;

/// One column: its chunks in order (polars exports a Series as one array per chunk).
pub type Chunks = [ArrayRef];

/// The number of rows of a column.
pub fn rows(chunks: &Chunks) -> usize {
    chunks.iter().map(|c| c.len()).sum()
}

/// Random access by row to a primitive column given as chunks, without joining them (a copy of every
/// chunked input would cost as much memory as the input). Locating a row reads a table of which chunk
/// each block of 4096 rows starts in, then steps forward over chunk ends: O(1) for chunks of any size.
pub struct Column<'a, T: ArrowPrimitiveType> {
    chunks: Vec<&'a PrimitiveArray<T>>,
    /// Chunk c holds rows `start[c]..start[c + 1]`.
    start: Vec<usize>,
    /// The chunk that holds row `b << BLOCK_BITS`.
    block: Vec<u32>,
}

const BLOCK_BITS: u32 = 12;

impl<'a, T: ArrowPrimitiveType> Column<'a, T> {
    /// The column's chunks, which must be of type T (checked by the caller with `expect_type`).
    pub fn new(chunks: &'a Chunks) -> Self {
        let chunks: Vec<&PrimitiveArray<T>> = chunks.iter().map(|c| c.as_primitive::<T>()).collect();
        let mut start = Vec::with_capacity(chunks.len() + 1);
        start.push(0);
        for c in &chunks {
            start.push(start.last().expect("a start") + c.len());
        }
        let n = *start.last().expect("a start");
        let mut block = Vec::with_capacity(n.div_ceil(1 << BLOCK_BITS));
        let mut c = 0usize;
        for b in 0..n.div_ceil(1 << BLOCK_BITS) {
            while (b << BLOCK_BITS) >= start[c + 1] {
                c += 1;
            }
            block.push(c as u32);
        }
        Column { chunks, start, block }
    }

    #[inline]
    fn locate(&self, row: usize) -> (&'a PrimitiveArray<T>, usize) {
        if let [only] = self.chunks.as_slice() {
            return (only, row);
        }
        let mut c = self.block[row >> BLOCK_BITS] as usize;
        while row >= self.start[c + 1] {
            c += 1;
        }
        (self.chunks[c], row - self.start[c])
    }

    #[inline]
    pub fn get(&self, row: usize) -> Option<T::Native> {
        let (chunk, i) = self.locate(row);
        chunk.is_valid(i).then(|| chunk.values()[i])
    }
}

/// The column as one array (no copy when it has one chunk), for random access.
pub fn contiguous(chunks: &Chunks, dtype: &DataType) -> Result<ArrayRef, KernelError> {
    Ok(match chunks {
        [] => new_empty_array(dtype),
        [one] => one.clone(),
        _ => {
            let parts: Vec<&dyn Array> = chunks.iter().map(|c| c.as_ref()).collect();
            arrow_select::concat::concat(&parts).map_err(|e| KernelError::Arrow(e.to_string()))?
        }
    })
}

/// Checks that every chunk of a column has the expected type.
pub fn expect_type(name: &str, chunks: &Chunks, expected: &DataType) -> Result<(), KernelError> {
    match chunks.iter().find(|c| c.data_type() != expected) {
        Some(c) => Err(KernelError::Type {
            name: name.to_string(),
            expected: expected.to_string(),
            got: c.data_type().to_string(),
        }),
        None => Ok(()),
    }
}

/// Checks that a column has `expected` rows (the length of the column named `of`).
pub fn expect_rows(name: &str, chunks: &Chunks, expected: usize, of: &str) -> Result<(), KernelError> {
    let len = rows(chunks);
    if len == expected {
        return Ok(());
    }
    Err(KernelError::Length {
        name: name.to_string(),
        len,
        expected,
        of: of.to_string(),
    })
}

/// What a kernel refuses, naming the argument; `Type` errors become Python's TypeError, the rest ValueError.
#[derive(Debug, PartialEq, Eq)]
pub enum KernelError {
    NoKeys,
    Type {
        name: String,
        expected: String,
        got: String,
    },
    Length {
        name: String,
        len: usize,
        expected: usize,
        of: String,
    },
    KeyTypes {
        column: usize,
        left: String,
        right: String,
    },
    KeyWidth {
        left: usize,
        right: usize,
    },
    NegativeWindow(i64),
    NegativeTolerance(i64),
    NoAggregates,
    UnknownAggregate(String),
    DuplicateAggregate(String),
    TooManyGroups,
    Arrow(String),
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use KernelError::*;
        match self {
            NoKeys => write!(f, "keys: at least one key column is needed"),
            Type { name, expected, got } => write!(f, "{name}: expected {expected}, got {got}"),
            Length {
                name,
                len,
                expected,
                of,
            } => {
                write!(f, "{name} has {len} rows, expected {expected} (the length of {of})")
            }
            KeyTypes { column, left, right } => {
                write!(f, "key column {column} is {left} on the left but {right} on the right")
            }
            KeyWidth { left, right } => write!(f, "{left} key column(s) on the left but {right} on the right"),
            NegativeWindow(w) => write!(f, "windows must be >= 0, got {w}"),
            NegativeTolerance(t) => write!(f, "tolerance must be >= 0, got {t}"),
            NoAggregates => write!(f, "aggs: at least one of count, sum, mean, max is needed"),
            UnknownAggregate(a) => write!(f, "aggs: unknown aggregate {a:?} (count, sum, mean, max)"),
            DuplicateAggregate(a) => write!(f, "aggs: {a} is asked for twice"),
            TooManyGroups => write!(f, "keys: more than 2^32 - 1 distinct groups"),
            Arrow(message) => write!(f, "{message}"),
        }
    }
}

impl std::error::Error for KernelError {}

/// A pointer to write disjoint positions of one buffer from several threads.
pub struct Shared<T>(pub *mut T);

impl<T> Shared<T> {
    /// # Safety
    /// `i` is within the buffer and no other thread reads or writes position `i` meanwhile.
    pub unsafe fn at(&self, i: usize) -> *mut T {
        unsafe { self.0.add(i) }
    }
}

// SAFETY: the writers promise disjoint positions (see `Shared::at`); T itself crosses threads.
unsafe impl<T: Send> Send for Shared<T> {}
unsafe impl<T: Send> Sync for Shared<T> {}

/// A small deterministic pseudo-random sequence (xorshift64) for the crate's tests.
#[cfg(test)]
pub fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::Int64Array;
    use arrow_array::types::Int64Type;

    use super::*;

    #[test]
    fn chunked_column_reads_like_one_array() {
        // chunks of uneven sizes, empty ones among them, across several 4096-row blocks
        let sizes = [0usize, 5000, 1, 0, 9000, 3, 4096];
        let mut next = 0i64;
        let chunks: Vec<ArrayRef> = sizes
            .iter()
            .map(|&k| {
                let values: Vec<Option<i64>> = (0..k)
                    .map(|_| {
                        next += 1;
                        (next % 7 != 0).then_some(next)
                    })
                    .collect();
                Arc::new(Int64Array::from(values)) as ArrayRef
            })
            .collect();
        let column = Column::<Int64Type>::new(&chunks);
        let whole = contiguous(&chunks, &DataType::Int64).unwrap();
        let whole = whole.as_primitive::<Int64Type>();
        for row in (0..whole.len()).rev() {
            assert_eq!(column.get(row), whole.iter().nth(row).unwrap(), "row {row}");
        }
    }
}
