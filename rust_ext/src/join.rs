//! As-of join index: for each left row, the right row an as-of join attaches to it.
//!
//! The kernels return row numbers into the right table (UInt32, null where nothing matches), and the
//! caller gathers whatever right columns it needs: one index serves any number of columns of any type.
//!
//! Among the right rows with the same key, the latest whose time is at or before
//! the left row's time (strictly before when `strict`), within `tolerance` when given. Right rows that
//! share the key and the chosen time are tied: the winner is the greatest by the `order_by` columns
//! (ascending, nulls greatest, NaN above every number, -0.0 equal to 0.0), and among rows equal there
//! too the last in input order. So the answer does not depend on the right table's row order except
//! among rows whose `order_by` values are all equal.

use std::cmp::Ordering;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, UInt32Array};
use arrow_buffer::NullBuffer;
use arrow_ord::ord::{DynComparator, make_comparator};
use arrow_schema::{DataType, SortOptions};
use rayon::prelude::*;

use crate::columns::{Chunks, Column, KernelError, Shared, contiguous, expect_rows, expect_type};
use crate::keys::{Grouped, joint_group_ids, rows_by_time};

/// How an as-of join matches times.
#[derive(Clone, Copy, Debug, Default)]
pub struct Asof {
    /// Only right rows strictly before the left time (else at or before).
    pub strict: bool,
    /// The right row's time must be at least `left time - tolerance` (same unit as the times).
    pub tolerance: Option<i64>,
}

/// For each left row, the right row an as-of join attaches (see the module docs); null where none.
/// Times are Int64 in one unit; keys pair up by position (strings or integers of the same type).
pub fn asof_index(
    left_keys: &[&Chunks],
    left_time: &Chunks,
    right_keys: &[&Chunks],
    right_time: &Chunks,
    order_by: &[&Chunks],
    how: Asof,
) -> Result<UInt32Array, KernelError> {
    expect_type("left_time", left_time, &DataType::Int64)?;
    expect_type("right_time", right_time, &DataType::Int64)?;
    if let Some(t) = how.tolerance.filter(|&t| t < 0) {
        return Err(KernelError::NegativeTolerance(t));
    }
    let (left, right, groups) = joint_group_ids(left_keys, right_keys)?;
    expect_rows("left_time", left_time, left.len(), "left_keys[0]")?;
    expect_rows("right_time", right_time, right.len(), "right_keys[0]")?;
    for (j, column) in order_by.iter().enumerate() {
        expect_rows(&format!("order_by[{j}]"), column, right.len(), "right_keys[0]")?;
        // the comparators are built at the first tie; a type they cannot order is refused now
        if let Some(chunk) = column.first() {
            let _ = make_comparator(chunk, chunk, SortOptions::default())
                .map_err(|e| KernelError::Arrow(format!("order_by[{j}]: {e}")))?;
        }
    }
    let sorted = rows_by_time(&Column::<Int64Type>::new(right_time), &right, groups);
    let latest = Latest::new(sorted, order_by)?;

    // Each group's asking rows by time, swept against the group's right times with one pointer: the
    // group's right rows stay in cache, where a search per row in row order would jump between groups.
    let times = Column::<Int64Type>::new(left_time);
    let asking = rows_by_time(&times, &left, groups);
    let n = left.len();
    let (mut found, mut valid) = (vec![0u32; n], vec![false; n]);
    let (found_at, valid_at) = (Shared(found.as_mut_ptr()), Shared(valid.as_mut_ptr()));
    (0..groups).into_par_iter().for_each(|g| {
        let right = latest.group(g);
        let mut k = 0; // right[..k] are at or before (strictly before) the current time
        for &(t, row) in asking.group(g) {
            while k < right.len() && (right[k].0 < t || (!how.strict && right[k].0 == t)) {
                k += 1;
            }
            let Some(&(time, winner)) = k.checked_sub(1).map(|j| &right[j]) else {
                continue;
            };
            if how.tolerance.is_none_or(|tol| t.saturating_sub(time) <= tol) {
                // SAFETY: `row` < n, and each left row is asked once, in its own group's task.
                unsafe {
                    found_at.at(row as usize).write(winner);
                    valid_at.at(row as usize).write(true);
                }
            }
        }
    });
    Ok(UInt32Array::new(found.into(), Some(NullBuffer::from(valid))))
}

/// Per group, its distinct right times ascending, and for each the winning row among those at it: the
/// group's sorted right rows with each run of equal times collapsed to its winner, in place.
struct Latest(Grouped<(i64, u32)>);

impl Latest {
    /// `sorted`: each group's right (time, row) sorted; `order_by`: the columns that break ties (read
    /// only when there is one).
    fn new(mut sorted: Grouped<(i64, u32)>, order_by: &[&Chunks]) -> Result<Self, KernelError> {
        let mut tie: Option<TieBreak> = None;
        let Grouped { items, start } = &mut sorted;
        let mut kept = 0usize; // entries [0, kept) are final; reading never falls behind writing
        let mut group_start = 0usize;
        for g in 0..start.len() - 1 {
            for i in start[g]..start[g + 1] {
                let (t, row) = items[i];
                // rows of one time come in row order: a later row wins unless order_by says otherwise
                if kept > group_start && items[kept - 1].0 == t {
                    let tie = match &mut tie {
                        Some(tie) => tie,
                        none => none.insert(TieBreak::new(order_by)?),
                    };
                    if tie.cmp(row as usize, items[kept - 1].1 as usize) != Ordering::Less {
                        items[kept - 1].1 = row;
                    }
                } else {
                    items[kept] = (t, row);
                    kept += 1;
                }
            }
            start[g] = group_start;
            group_start = kept;
        }
        if let Some(last) = start.last_mut() {
            *last = kept;
        }
        items.truncate(kept);
        Ok(Latest(sorted))
    }

    /// Group g's distinct times and the winning row at each.
    fn group(&self, g: usize) -> &[(i64, u32)] {
        self.0.group(g)
    }
}

/// The order of right rows by the `order_by` columns: ascending, nulls greatest, floats as Polars sorts
/// them (NaN above every number, -0.0 equal to 0.0).
struct TieBreak {
    columns: Vec<DynComparator>,
}

impl TieBreak {
    fn new(order_by: &[&Chunks]) -> Result<Self, KernelError> {
        let arrow = |e: arrow_schema::ArrowError| KernelError::Arrow(e.to_string());
        let columns = order_by
            .iter()
            .enumerate()
            .map(|(j, chunks)| {
                let dtype = chunks.first().map_or(DataType::Null, |c| c.data_type().clone());
                expect_type(&format!("order_by[{j}]"), chunks, &dtype)?;
                let array = contiguous(chunks, &dtype)?;
                Ok(match dtype {
                    DataType::Float64 => float_order(array, |a, i| a.as_primitive::<Float64Type>().value(i)),
                    DataType::Float32 => float_order(array, |a, i| f64::from(a.as_primitive::<Float32Type>().value(i))),
                    _ => make_comparator(
                        &array,
                        &array,
                        SortOptions {
                            descending: false,
                            nulls_first: false,
                        },
                    )
                    .map_err(arrow)?,
                })
            })
            .collect::<Result<Vec<_>, KernelError>>()?;
        Ok(TieBreak { columns })
    }

    fn cmp(&self, a: usize, b: usize) -> Ordering {
        self.columns
            .iter()
            .map(|c| c(a, b))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

fn float_order(array: ArrayRef, value: fn(&ArrayRef, usize) -> f64) -> DynComparator {
    Box::new(move |a, b| match (array.is_valid(a), array.is_valid(b)) {
        (false, false) => Ordering::Equal,
        (false, true) => Ordering::Greater,
        (true, false) => Ordering::Less,
        (true, true) => {
            let (x, y) = (value(&array, a), value(&array, b));
            match (x.is_nan(), y.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => x.partial_cmp(&y).expect("numbers compare"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Float64Array, Int64Array, StringArray};

    use super::*;

    fn col(a: impl Array + 'static) -> Vec<ArrayRef> {
        vec![Arc::new(a)]
    }

    fn ints(v: Vec<Option<i64>>) -> Vec<ArrayRef> {
        col(Int64Array::from(v))
    }

    fn list(a: &UInt32Array) -> Vec<Option<u32>> {
        a.iter().collect()
    }

    #[test]
    fn latest_at_or_before_within_tolerance() {
        let right_key = col(StringArray::from(vec!["x", "x", "y"]));
        let right_time = ints(vec![Some(0), Some(20), Some(50)]);
        let left_key = col(StringArray::from(vec![
            Some("x"),
            Some("x"),
            Some("y"),
            Some("x"),
            None,
            Some("z"),
        ]));
        let left_time = ints(vec![Some(10), Some(20), Some(30), Some(90), Some(20), Some(20)]);
        let exact = Asof {
            strict: false,
            tolerance: Some(40),
        };
        let out = asof_index(&[&left_key], &left_time, &[&right_key], &right_time, &[], exact).unwrap();
        // 10 -> row 0; 20 -> row 1 (exact); y at 30 sees nothing yet; 90 is past the tolerance; null key; no z
        assert_eq!(list(&out), vec![Some(0), Some(1), None, None, None, None]);
        let strict = Asof {
            strict: true,
            tolerance: None,
        };
        let out = asof_index(&[&left_key], &left_time, &[&right_key], &right_time, &[], strict).unwrap();
        assert_eq!(list(&out), vec![Some(0), Some(0), None, Some(1), None, None]);
    }

    #[test]
    fn ties_go_to_the_greatest_by_order_by_then_the_last_row() {
        let key = ints(vec![Some(1); 5]);
        let time = ints(vec![Some(5), Some(5), Some(5), Some(5), Some(7)]);
        let left_key = ints(vec![Some(1)]);
        let at = ints(vec![Some(6)]);
        let values = col(Float64Array::from(vec![
            Some(3.0),
            Some(f64::NAN),
            Some(-1.0),
            Some(2.0),
            Some(0.0),
        ]));
        let pick = |order_by: &[&Chunks]| {
            list(&asof_index(&[&left_key], &at, &[&key], &time, order_by, Asof::default()).unwrap())
        };
        assert_eq!(pick(&[]), vec![Some(3)]); // no order: the last row at time 5
        assert_eq!(pick(&[&values]), vec![Some(1)]); // NaN is above every number
        let with_null = col(Float64Array::from(vec![
            Some(3.0),
            None,
            Some(9.0),
            Some(2.0),
            Some(0.0),
        ]));
        assert_eq!(pick(&[&with_null]), vec![Some(1)]); // null is greatest
        let zeros = col(Float64Array::from(vec![
            Some(0.0),
            Some(-0.0),
            Some(-0.0),
            Some(0.0),
            Some(1.0),
        ]));
        assert_eq!(pick(&[&zeros]), vec![Some(3)]); // -0.0 == 0.0: the last of them
        let strings = col(StringArray::from(vec!["b", "a", "c", "c", "z"]));
        let second = col(Float64Array::from(vec![3.0, 0.0, 5.0, 2.0, 0.0]));
        assert_eq!(pick(&[&strings, &second]), vec![Some(2)]); // "c" twice, then 5.0 beats the later 2.0
    }

    #[test]
    fn errors_name_the_input() {
        let k = ints(vec![Some(1), Some(2)]);
        let f = col(Float64Array::from(vec![1.0, 2.0]));
        let err = |r: Result<UInt32Array, KernelError>| r.unwrap_err().to_string();
        assert_eq!(
            err(asof_index(&[&k], &f, &[&k], &k, &[], Asof::default())),
            "left_time: expected Int64, got Float64"
        );
        let short = ints(vec![Some(1)]);
        assert_eq!(
            err(asof_index(&[&k], &short, &[&k], &k, &[], Asof::default())),
            "left_time has 1 rows, expected 2 (the length of left_keys[0])"
        );
        assert_eq!(
            err(asof_index(&[&k], &k, &[&k], &k, &[&short], Asof::default())),
            "order_by[0] has 1 rows, expected 2 (the length of right_keys[0])"
        );
        let negative = Asof {
            strict: false,
            tolerance: Some(-1),
        };
        assert_eq!(
            err(asof_index(&[&k], &k, &[&k], &k, &[], negative)),
            "tolerance must be >= 0, got -1"
        );
        assert_eq!(
            err(asof_index(&[&f], &k, &[&k], &k, &[], Asof::default())),
            "left_keys[0]: expected a string or integer array, got Float64"
        );
    }
}
