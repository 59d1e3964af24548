//! Time-windowed per-group aggregates over prior events, strictly before each row's time.
//!
//! Every row is both an event (its group, the time its value became known, the value) and a query (its
//! group, its prediction time T). For each query and each window w, the aggregates run over the events
//! of the same group with `T - w <= known_at < T`: an event known at T itself is not yet known.
//!
//! One sort of the events and of the queries by (group, time), then one sweep per window with two
//! monotone pointers: O(n log n + n * windows). The sum is compensated (Neumaier) as events enter and
//! leave the window; the max comes from a monotone deque.

use std::collections::VecDeque;

use arrow_array::{Array, Float64Array, Int64Array};
use arrow_buffer::NullBuffer;
use rayon::prelude::*;

/// The aggregates of one window, aligned with the input rows.
pub struct WindowColumns {
    pub window: i64,
    /// Events in the window; null where the row cannot ask (null group or time).
    pub count: Int64Array,
    /// Sum of the values in the window; 0 for an empty window.
    pub sum: Float64Array,
    /// Mean; null for an empty window.
    pub mean: Float64Array,
    /// Maximum; null for an empty window.
    pub max: Float64Array,
}

#[derive(Debug, PartialEq, Eq)]
pub enum WindowError {
    LengthMismatch {
        name: &'static str,
        len: usize,
        expected: usize,
    },
    NegativeWindow(i64),
}

impl std::fmt::Display for WindowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WindowError::LengthMismatch { name, len, expected } => {
                write!(f, "{name} has {len} rows, expected {expected} (the length of group)")
            }
            WindowError::NegativeWindow(w) => write!(f, "windows must be >= 0, got {w}"),
        }
    }
}

impl std::error::Error for WindowError {}

/// Aggregates over prior events for every row and every window (in the unit of the time columns).
///
/// Rows whose group, known_at or value is null (or NaN) are not events; rows whose group or `at` is
/// null get null aggregates. Input order is free: the output is aligned with the input rows.
pub fn window_aggregate(
    group: &Int64Array,
    known_at: &Int64Array,
    value: &Float64Array,
    at: &Int64Array,
    windows: &[i64],
) -> Result<Vec<WindowColumns>, WindowError> {
    let n = group.len();
    for (name, len) in [("known_at", known_at.len()), ("value", value.len()), ("at", at.len())] {
        if len != n {
            return Err(WindowError::LengthMismatch { name, len, expected: n });
        }
    }
    if let Some(&w) = windows.iter().find(|&&w| w < 0) {
        return Err(WindowError::NegativeWindow(w));
    }

    let (events, queries) = rayon::join(
        || {
            let mut events: Vec<(i64, i64, f64)> = (0..n)
                .filter(|&i| group.is_valid(i) && known_at.is_valid(i) && value.is_valid(i) && !value.value(i).is_nan())
                .map(|i| (group.value(i), known_at.value(i), value.value(i)))
                .collect();
            events.par_sort_unstable_by_key(|a| (a.0, a.1));
            events
        },
        || {
            let mut queries: Vec<(i64, i64, usize)> = (0..n)
                .filter(|&i| group.is_valid(i) && at.is_valid(i))
                .map(|i| (group.value(i), at.value(i), i))
                .collect();
            queries.par_sort_unstable();
            queries
        },
    );
    Ok(windows.par_iter().map(|&w| sweep(&events, &queries, n, w)).collect())
}

/// Neumaier's compensated running sum, which also takes values out.
#[derive(Default)]
struct CompensatedSum {
    sum: f64,
    compensation: f64,
}

impl CompensatedSum {
    fn add(&mut self, x: f64) {
        let t = self.sum + x;
        if self.sum.abs() >= x.abs() {
            self.compensation += (self.sum - t) + x;
        } else {
            self.compensation += (x - t) + self.sum;
        }
        self.sum = t;
    }

    fn value(&self) -> f64 {
        self.sum + self.compensation
    }
}

fn sweep(events: &[(i64, i64, f64)], queries: &[(i64, i64, usize)], n: usize, window: i64) -> WindowColumns {
    // Plain values plus two validity masks (1 byte a row), not Option<f64> (16 bytes a row).
    let mut count = vec![0i64; n];
    let mut sum = vec![0f64; n];
    let mut mean = vec![0f64; n];
    let mut max = vec![0f64; n];
    let mut asked = vec![false; n]; // count and sum valid
    let mut seen = vec![false; n]; // mean and max valid: a non-empty window

    let (mut lo, mut hi) = (0usize, 0usize);
    let mut total = CompensatedSum::default();
    let mut maxima: VecDeque<usize> = VecDeque::new(); // indices into events, values decreasing
    let mut current: Option<i64> = None;
    for &(g, t, row) in queries {
        if current != Some(g) {
            while hi < events.len() && events[hi].0 < g {
                hi += 1;
            }
            lo = hi;
            total = CompensatedSum::default();
            maxima.clear();
            current = Some(g);
        }
        while hi < events.len() && events[hi].0 == g && events[hi].1 < t {
            let v = events[hi].2;
            total.add(v);
            while maxima.back().is_some_and(|&j| events[j].2 <= v) {
                maxima.pop_back();
            }
            maxima.push_back(hi);
            hi += 1;
        }
        let lower = t.saturating_sub(window);
        while lo < hi && events[lo].1 < lower {
            total.add(-events[lo].2);
            if maxima.front() == Some(&lo) {
                maxima.pop_front();
            }
            lo += 1;
        }
        let k = hi - lo;
        if k == 0 {
            total = CompensatedSum::default(); // no drift carried into the next non-empty window
        }
        asked[row] = true;
        count[row] = k as i64;
        if let Some(&top) = maxima.front() {
            seen[row] = true;
            sum[row] = total.value();
            mean[row] = total.value() / k as f64;
            max[row] = events[top].2;
        }
    }
    let (asked, seen) = (NullBuffer::from(asked), NullBuffer::from(seen));
    WindowColumns {
        window,
        count: Int64Array::new(count.into(), Some(asked.clone())),
        sum: Float64Array::new(sum.into(), Some(asked)),
        mean: Float64Array::new(mean.into(), Some(seen.clone())),
        max: Float64Array::new(max.into(), Some(seen)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        group: Vec<Option<i64>>,
        known: Vec<Option<i64>>,
        value: Vec<Option<f64>>,
        at: Vec<Option<i64>>,
        w: i64,
    ) -> WindowColumns {
        let mut out = window_aggregate(
            &Int64Array::from(group),
            &Int64Array::from(known),
            &Float64Array::from(value),
            &Int64Array::from(at),
            &[w],
        )
        .unwrap();
        out.remove(0)
    }

    /// Reference: for each row, scan every other row.
    fn brute(group: &[i64], known: &[i64], value: &[f64], at: &[i64], w: i64) -> Vec<(i64, f64, Option<f64>)> {
        (0..group.len())
            .map(|q| {
                let inside: Vec<f64> = (0..group.len())
                    .filter(|&e| group[e] == group[q] && known[e] < at[q] && known[e] >= at[q] - w)
                    .map(|e| value[e])
                    .collect();
                let max = inside.iter().copied().reduce(f64::max);
                (inside.len() as i64, inside.iter().sum(), max)
            })
            .collect()
    }

    #[test]
    fn strictly_before_and_within_the_window() {
        // one group, events at 0, 10, 20, 30 with values 1..4; each row asks at its own time + 5
        let out = run(
            vec![Some(1); 4],
            vec![Some(0), Some(10), Some(20), Some(30)],
            vec![Some(1.0), Some(2.0), Some(3.0), Some(4.0)],
            vec![Some(5), Some(15), Some(25), Some(35)],
            20,
        );
        // at 35, window [15, 35): events at 20 and 30
        assert_eq!(out.count.values().to_vec(), vec![1, 2, 2, 2]);
        assert_eq!(out.sum.value(3), 7.0);
        assert_eq!(out.max.value(3), 4.0);
        assert_eq!(out.mean.value(0), 1.0);
    }

    #[test]
    fn an_event_known_exactly_at_t_is_not_yet_known() {
        let out = run(
            vec![Some(1), Some(1)],
            vec![Some(10), Some(10)],
            vec![Some(1.0), Some(9.0)],
            vec![Some(10), Some(11)],
            100,
        );
        assert_eq!(out.count.value(0), 0);
        assert!(out.mean.is_null(0) && out.max.is_null(0));
        assert_eq!(out.sum.value(0), 0.0);
        assert_eq!(out.count.value(1), 2);
        assert_eq!(out.max.value(1), 9.0);
    }

    #[test]
    fn groups_do_not_mix_and_order_is_free() {
        let out = run(
            vec![Some(2), Some(1), Some(2), Some(1)],
            vec![Some(3), Some(1), Some(1), Some(0)],
            vec![Some(5.0), Some(7.0), Some(6.0), Some(8.0)],
            vec![Some(4), Some(2), Some(2), Some(1)],
            10,
        );
        assert_eq!(out.count.values().to_vec(), vec![2, 2, 1, 1]);
        assert_eq!(out.max.value(0), 6.0); // group 2 before 4: values 6 (t=1) and 5 (t=3)
        assert_eq!(out.sum.value(1), 15.0); // group 1 before 2: the events at 0 and 1
        assert_eq!(out.sum.value(2), 6.0); // group 2 before 2: the event at 1 only
    }

    #[test]
    fn nulls_and_nan_are_not_events_and_null_keys_do_not_ask() {
        let out = run(
            vec![Some(1), Some(1), None, Some(1)],
            vec![Some(0), None, Some(0), Some(1)],
            vec![Some(1.0), Some(2.0), Some(3.0), Some(f64::NAN)],
            vec![Some(5), Some(5), Some(5), None],
            10,
        );
        assert_eq!(out.count.value(0), 1);
        assert!(out.count.is_null(2) && out.count.is_null(3));
        assert_eq!(out.sum.value(1), 1.0);
    }

    #[test]
    fn empty_input_and_zero_window() {
        let out = run(vec![], vec![], vec![], vec![], 5);
        assert_eq!(out.count.len(), 0);
        let out = run(
            vec![Some(1), Some(1)],
            vec![Some(0), Some(1)],
            vec![Some(1.0), Some(2.0)],
            vec![Some(1), Some(2)],
            0,
        );
        assert_eq!(out.count.values().to_vec(), vec![0, 0]);
    }

    #[test]
    fn errors_name_the_input() {
        let err = window_aggregate(
            &Int64Array::from(vec![1, 2]),
            &Int64Array::from(vec![1]),
            &Float64Array::from(vec![1.0, 2.0]),
            &Int64Array::from(vec![1, 2]),
            &[1],
        )
        .err()
        .unwrap();
        assert_eq!(err.to_string(), "known_at has 1 rows, expected 2 (the length of group)");
        let err = window_aggregate(
            &Int64Array::from(vec![1]),
            &Int64Array::from(vec![1]),
            &Float64Array::from(vec![1.0]),
            &Int64Array::from(vec![1]),
            &[5, -1],
        )
        .err()
        .unwrap();
        assert_eq!(err, WindowError::NegativeWindow(-1));
    }

    #[test]
    fn matches_a_brute_force_scan_with_duplicate_times() {
        // a small deterministic pseudo-random frame (xorshift), many equal timestamps
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let n = 400;
        let group: Vec<i64> = (0..n).map(|_| (next() % 5) as i64).collect();
        let known: Vec<i64> = (0..n).map(|_| (next() % 60) as i64).collect();
        let value: Vec<f64> = (0..n).map(|_| (next() % 1000) as f64 / 10.0 - 50.0).collect();
        let at: Vec<i64> = known.iter().map(|k| k + (next() % 3) as i64).collect();
        for w in [0, 1, 7, 30, 1000] {
            let out = run(
                group.iter().map(|&g| Some(g)).collect(),
                known.iter().map(|&k| Some(k)).collect(),
                value.iter().map(|&v| Some(v)).collect(),
                at.iter().map(|&t| Some(t)).collect(),
                w,
            );
            for (row, (count, sum, max)) in brute(&group, &known, &value, &at, w).into_iter().enumerate() {
                assert_eq!(out.count.value(row), count, "count, row {row}, window {w}");
                assert!((out.sum.value(row) - sum).abs() < 1e-9, "sum, row {row}, window {w}");
                assert_eq!(
                    out.max.is_valid(row).then(|| out.max.value(row)),
                    max,
                    "max, row {row}, window {w}"
                );
            }
        }
    }
}
