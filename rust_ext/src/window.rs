//! Time-windowed per-group aggregates over prior events, strictly before each row's time.
//!
//! Every row is both an event (its group, the time its value became known, the value) and a query (its
//! group, its prediction time T). For each query and each window w, the aggregates run over the events
//! of the same group with `T - w <= known_at < T`: an event known at T itself is not yet known.
//!
//! Per key set, rows are put in their group by a counting sort on dense group ids (keys.rs) reading the
//! columns in row order, and each group's queries (time asked, row) and each spec's events (known_at,
//! value) are sorted by time within the group; then one sweep per window with two monotone pointers over
//! the group's events and queries, reading both in order: O(n log n + n * windows). Specs sharing their
//! key columns share the group ids and the queries. The sum is compensated (Neumaier) as events enter
//! and leave the window; the max comes from a monotone deque. Only the requested aggregates are stored.
//!
//! Tried: sorting each time column once and bucketing that order by group, so that specs sharing a
//! time column share the sort. It saved little on the flights data and was 1.5x slower at 10 M rows,
//! where reading group ids and values in time order (random rows) misses the cache on every row.

use std::collections::VecDeque;
use std::sync::Arc;

use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{ArrayRef, Float64Array};
use arrow_buffer::NullBuffer;
use arrow_schema::DataType;
use rayon::prelude::*;

use crate::columns::{Chunks, Column, KernelError, Shared, expect_rows, expect_type, rows};
use crate::keys::{Grouped, group_ids, rows_by_time, same_arrays};

/// An aggregate over the events in a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agg {
    /// Events in the window (Float64, a whole number: what a model reads); null where the row cannot
    /// ask (null key or time).
    Count,
    /// Sum of their values (Float64); 0 for an empty window.
    Sum,
    /// Mean (Float64); null for an empty window.
    Mean,
    /// Maximum (Float64); null for an empty window.
    Max,
}

impl Agg {
    pub const ALL: [Agg; 4] = [Agg::Count, Agg::Sum, Agg::Mean, Agg::Max];

    pub fn name(self) -> &'static str {
        match self {
            Agg::Count => "count",
            Agg::Sum => "sum",
            Agg::Mean => "mean",
            Agg::Max => "max",
        }
    }

    pub fn parse(name: &str) -> Result<Agg, KernelError> {
        Agg::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| KernelError::UnknownAggregate(name.to_string()))
    }
}

/// The requested aggregates of one window, in the requested order, aligned with the input rows.
pub struct WindowColumns {
    pub window: i64,
    pub columns: Vec<(Agg, ArrayRef)>,
}

/// One aggregate spec: the group keys (strings or integers), when each value became known (Int64) and
/// the value (Float64), the windows (in the unit of the times) and the aggregates to compute.
pub struct WindowSpec<'a> {
    pub keys: Vec<&'a Chunks>,
    pub known_at: &'a Chunks,
    pub value: &'a Chunks,
    pub windows: Vec<i64>,
    pub aggs: Vec<Agg>,
}

/// Aggregates over prior events for every row and every window of one spec (see `window_aggregates`).
pub fn window_aggregate(
    keys: &[&Chunks],
    known_at: &Chunks,
    value: &Chunks,
    at: &Chunks,
    windows: &[i64],
    aggs: &[Agg],
) -> Result<Vec<WindowColumns>, KernelError> {
    let spec = WindowSpec {
        keys: keys.to_vec(),
        known_at,
        value,
        windows: windows.to_vec(),
        aggs: aggs.to_vec(),
    };
    Ok(window_aggregates(&[spec], at)?.remove(0))
}

/// Aggregates over prior events for every row, per spec and window, all asking at `at` (Int64).
///
/// Row i is an event of each spec (its keys, known_at[i], value[i]) and a query (its keys, at[i]).
/// Rows with a null key, known_at or value (or a NaN value) are not events; rows with a null key or
/// `at` get null aggregates. Input order is free: the output is aligned with the input rows.
///
/// Specs that share key columns (the same buffers) share the work on them: the group ids and the
/// queries, each group's rows sorted by `at`, are computed once per key set.
pub fn window_aggregates(specs: &[WindowSpec<'_>], at: &Chunks) -> Result<Vec<Vec<WindowColumns>>, KernelError> {
    let n = rows(at);
    expect_type("at", at, &DataType::Int64)?;
    for (i, spec) in specs.iter().enumerate() {
        let name = |arg: &str| {
            if specs.len() == 1 {
                arg.to_string()
            } else {
                format!("specs[{i}].{arg}")
            }
        };
        expect_type(&name("known_at"), spec.known_at, &DataType::Int64)?;
        expect_type(&name("value"), spec.value, &DataType::Float64)?;
        let of = "at";
        for (j, keys) in spec.keys.iter().enumerate() {
            expect_rows(&name(&format!("keys[{j}]")), keys, n, of)?;
        }
        expect_rows(&name("known_at"), spec.known_at, n, of)?;
        expect_rows(&name("value"), spec.value, n, of)?;
        if let Some(&w) = spec.windows.iter().find(|&&w| w < 0) {
            return Err(KernelError::NegativeWindow(w));
        }
        if spec.aggs.is_empty() {
            return Err(KernelError::NoAggregates);
        }
        let aggs = &spec.aggs;
        if let Some(a) = aggs
            .iter()
            .enumerate()
            .find_map(|(i, a)| aggs[..i].contains(a).then_some(a))
        {
            return Err(KernelError::DuplicateAggregate(a.name().to_string()));
        }
    }

    // Each distinct key set once (distinct = other buffers): specs passing the same key columns share
    // its group ids and each group's queries. known_at columns are not de-duplicated: each spec's events
    // are bucketed and sorted on their own, and dropped before the next spec's are built.
    let key_sets = distinct(specs.iter().map(|s| s.keys.as_slice()), |a, b| {
        a.len() == b.len() && a.iter().zip(*b).all(|(x, y)| same_arrays(x, y))
    });
    // Every key set's group ids up front, in parallel (4 bytes a row each). Then one key set at a time,
    // one spec at a time, one window at a time, each step parallel inside (bucketing by row ranges, sorts
    // and sweeps by group): only one key set's queries and one spec's events are alive at once, and every
    // large buffer is allocated on this thread. (glibc keeps each thread's heap at its high-water mark:
    // buffers freed in a worker's heap cannot serve the next allocation made in another.)
    let ids = key_sets
        .unique
        .par_iter()
        .map(|keys| group_ids(keys))
        .collect::<Result<Vec<_>, _>>()?;
    let at = Column::<Int64Type>::new(at);
    let mut out: Vec<Vec<WindowColumns>> = specs.iter().map(|_| Vec::new()).collect();
    for (set, (ids, groups)) in ids.iter().enumerate() {
        let groups = *groups;
        let queries = rows_by_time(&at, ids, groups);
        for (i, spec) in specs.iter().enumerate().filter(|&(i, _)| key_sets.of[i] == set) {
            // the spec's events: each group's (known_at, value) by time; a null or NaN value is no event
            let known_at = Column::<Int64Type>::new(spec.known_at);
            let value = Column::<Float64Type>::new(spec.value);
            let event = |row: usize| match (known_at.get(row), value.get(row)) {
                (Some(t), Some(v)) if !v.is_nan() => Some((t, v)),
                _ => None,
            };
            let events = Grouped::new(ids, groups, event, |a: &(i64, f64), b| a.0.cmp(&b.0));
            let input = SweepInput {
                queries: &queries,
                events: &events,
            };
            out[i] = spec.windows.iter().map(|&w| sweep(&input, n, w, &spec.aggs)).collect();
        }
    }
    Ok(out)
}

/// The distinct items of a list (by `same`) and, for each item, the index of its distinct one.
struct Distinct<T> {
    unique: Vec<T>,
    of: Vec<usize>,
}

fn distinct<T: Copy>(items: impl Iterator<Item = T>, same: impl Fn(&T, &T) -> bool) -> Distinct<T> {
    let mut d = Distinct {
        unique: Vec::new(),
        of: Vec::new(),
    };
    for item in items {
        let index = d.unique.iter().position(|u| same(u, &item)).unwrap_or_else(|| {
            d.unique.push(item);
            d.unique.len() - 1
        });
        d.of.push(index);
    }
    d
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

struct SweepInput<'a> {
    /// Each group's (time asked, row), by time.
    queries: &'a Grouped<(i64, u32)>,
    /// Each group's events (known_at, value), by time.
    events: &'a Grouped<(i64, f64)>,
}

/// Where a window's sweep writes: the requested aggregates and the two validity masks, by row.
struct Writers {
    count: Option<Shared<f64>>,
    sum: Option<Shared<f64>>,
    mean: Option<Shared<f64>>,
    max: Option<Shared<f64>>,
    asked: Shared<bool>,
    seen: Shared<bool>,
}

fn writer(values: &mut [f64]) -> Option<Shared<f64>> {
    (!values.is_empty()).then_some(Shared(values.as_mut_ptr()))
}

fn sweep(input: &SweepInput<'_>, n: usize, window: i64, aggs: &[Agg]) -> WindowColumns {
    // Plain values plus validity masks (1 byte a row), not Option<f64> (16 bytes a row); only what is asked.
    let wants = |a: Agg| aggs.contains(&a);
    let mut count = if wants(Agg::Count) { vec![0f64; n] } else { Vec::new() };
    let mut sum = if wants(Agg::Sum) { vec![0f64; n] } else { Vec::new() };
    let mut mean = if wants(Agg::Mean) { vec![0f64; n] } else { Vec::new() };
    let mut max = if wants(Agg::Max) { vec![0f64; n] } else { Vec::new() };
    let mut asked = vec![false; n]; // count and sum valid
    let mut seen = vec![false; n]; // mean and max valid: a non-empty window
    let out = Writers {
        count: writer(&mut count),
        sum: writer(&mut sum),
        mean: writer(&mut mean),
        max: writer(&mut max),
        asked: Shared(asked.as_mut_ptr()),
        seen: Shared(seen.as_mut_ptr()),
    };
    // Groups are independent: swept in parallel, each writing only its own rows.
    (0..input.queries.groups())
        .into_par_iter()
        .for_each_init(VecDeque::new, |maxima, g| sweep_group(input, g, window, &out, maxima));
    let (asked, seen) = (NullBuffer::from(asked), NullBuffer::from(seen));
    let columns = aggs
        .iter()
        .map(|&a| {
            let array: ArrayRef = match a {
                Agg::Count => Arc::new(Float64Array::new(
                    std::mem::take(&mut count).into(),
                    Some(asked.clone()),
                )),
                Agg::Sum => Arc::new(Float64Array::new(std::mem::take(&mut sum).into(), Some(asked.clone()))),
                Agg::Mean => Arc::new(Float64Array::new(std::mem::take(&mut mean).into(), Some(seen.clone()))),
                Agg::Max => Arc::new(Float64Array::new(std::mem::take(&mut max).into(), Some(seen.clone()))),
            };
            (a, array)
        })
        .collect();
    WindowColumns { window, columns }
}

/// One group's queries against its events: two monotone pointers bound the events in [T - window, T).
fn sweep_group(input: &SweepInput<'_>, g: usize, window: i64, out: &Writers, maxima: &mut VecDeque<(usize, f64)>) {
    let events = input.events.group(g);
    let (mut lo, mut hi) = (0usize, 0usize);
    let mut total = CompensatedSum::default();
    maxima.clear(); // (position in the group's events, value), values decreasing
    for &(t, row) in input.queries.group(g) {
        while hi < events.len() && events[hi].0 < t {
            let v = events[hi].1;
            total.add(v);
            if out.max.is_some() {
                while maxima.back().is_some_and(|&(_, m)| m <= v) {
                    maxima.pop_back();
                }
                maxima.push_back((hi, v));
            }
            hi += 1;
        }
        let lower = t.saturating_sub(window);
        while lo < hi && events[lo].0 < lower {
            total.add(-events[lo].1);
            if maxima.front().is_some_and(|&(j, _)| j == lo) {
                maxima.pop_front();
            }
            lo += 1;
        }
        let k = hi - lo;
        if k == 0 {
            total = CompensatedSum::default(); // no drift carried into the next non-empty window
        }
        let row = row as usize;
        let write = |to: &Option<Shared<f64>>, value: f64| {
            if let Some(to) = to {
                // SAFETY: `row` < n (a row of the input) and it is asked once, by this group's query:
                // no other group's task writes it.
                unsafe { to.at(row).write(value) }
            }
        };
        // SAFETY: as above, for the masks.
        unsafe { out.asked.at(row).write(true) };
        write(&out.count, k as f64);
        if k > 0 {
            unsafe { out.seen.at(row).write(true) };
            write(&out.sum, total.value());
            write(&out.mean, total.value() / k as f64);
            if let Some(&(_, top)) = maxima.front() {
                write(&out.max, top);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::cast::AsArray;
    use arrow_array::{Array, Int64Array};

    use super::*;

    /// One window's count, sum, mean and max.
    struct Out {
        count: Float64Array,
        sum: Float64Array,
        mean: Float64Array,
        max: Float64Array,
    }

    fn col(a: impl Array + 'static) -> Vec<ArrayRef> {
        vec![Arc::new(a)]
    }

    fn run(
        group: Vec<Option<i64>>,
        known: Vec<Option<i64>>,
        value: Vec<Option<f64>>,
        at: Vec<Option<i64>>,
        w: i64,
    ) -> Out {
        let group = col(Int64Array::from(group));
        let out = window_aggregate(
            &[&group],
            &col(Int64Array::from(known)),
            &col(Float64Array::from(value)),
            &col(Int64Array::from(at)),
            &[w],
            &Agg::ALL,
        )
        .unwrap()
        .remove(0);
        let c = |i: usize| out.columns[i].1.clone();
        Out {
            count: c(0).as_primitive::<Float64Type>().clone(),
            sum: c(1).as_primitive::<Float64Type>().clone(),
            mean: c(2).as_primitive::<Float64Type>().clone(),
            max: c(3).as_primitive::<Float64Type>().clone(),
        }
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
        assert_eq!(out.count.values().to_vec(), vec![1.0, 2.0, 2.0, 2.0]);
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
        assert_eq!(out.count.value(0), 0.0);
        assert!(out.mean.is_null(0) && out.max.is_null(0));
        assert_eq!(out.sum.value(0), 0.0);
        assert_eq!(out.count.value(1), 2.0);
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
        assert_eq!(out.count.values().to_vec(), vec![2.0, 2.0, 1.0, 1.0]);
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
        assert_eq!(out.count.value(0), 1.0);
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
        assert_eq!(out.count.values().to_vec(), vec![0.0, 0.0]);
    }

    #[test]
    fn errors_name_the_input() {
        let ints = col(Int64Array::from(vec![1, 2]));
        let floats = col(Float64Array::from(vec![1.0, 2.0]));
        let call = |known: &Chunks, value: &Chunks, windows: &[i64], aggs: &[Agg]| {
            window_aggregate(&[&ints], known, value, &ints, windows, aggs)
                .err()
                .unwrap()
                .to_string()
        };
        let one = col(Int64Array::from(vec![1]));
        assert_eq!(
            call(&one, &floats, &[1], &Agg::ALL),
            "known_at has 1 rows, expected 2 (the length of at)"
        );
        assert_eq!(
            call(&ints, &ints, &[1], &Agg::ALL),
            "value: expected Float64, got Int64"
        );
        assert_eq!(
            call(&ints, &floats, &[5, -1], &Agg::ALL),
            "windows must be >= 0, got -1"
        );
        assert_eq!(
            call(&ints, &floats, &[5], &[]),
            "aggs: at least one of count, sum, mean, max is needed"
        );
        assert_eq!(
            call(&ints, &floats, &[5], &[Agg::Max, Agg::Max]),
            "aggs: max is asked for twice"
        );
        assert_eq!(
            Agg::parse("median").unwrap_err().to_string(),
            "aggs: unknown aggregate \"median\" (count, sum, mean, max)"
        );
    }

    #[test]
    fn only_the_requested_aggregates_in_their_order() {
        let g = col(Int64Array::from(vec![1, 1, 1]));
        let t = col(Int64Array::from(vec![0, 1, 2]));
        let v = col(Float64Array::from(vec![4.0, 2.0, 6.0]));
        let out = window_aggregate(&[&g], &t, &v, &t, &[10], &[Agg::Max, Agg::Mean])
            .unwrap()
            .remove(0);
        let names: Vec<Agg> = out.columns.iter().map(|(a, _)| *a).collect();
        assert_eq!(names, vec![Agg::Max, Agg::Mean]);
        let column = |i: usize| -> Vec<Option<f64>> { out.columns[i].1.as_primitive::<Float64Type>().iter().collect() };
        assert_eq!(column(0), vec![None, Some(4.0), Some(4.0)]);
        assert_eq!(column(1), vec![None, Some(4.0), Some(3.0)]);
    }

    #[test]
    fn specs_sharing_columns_give_what_each_gives_alone() {
        let mut next = crate::columns::xorshift(0x2545_F491_4F6C_DD1D);
        let n = 3000;
        let a = col(Int64Array::from(
            (0..n).map(|_| (next() % 7) as i64).collect::<Vec<_>>(),
        ));
        let b = col(arrow_array::StringArray::from(
            (0..n)
                .map(|_| ["x", "y", "z"][(next() % 3) as usize])
                .collect::<Vec<_>>(),
        ));
        let known = col(Int64Array::from(
            (0..n).map(|_| (next() % 500) as i64).collect::<Vec<_>>(),
        ));
        let other = col(Int64Array::from(
            (0..n).map(|_| (next() % 500) as i64).collect::<Vec<_>>(),
        ));
        let value = col(Float64Array::from(
            (0..n).map(|_| (next() % 100) as f64).collect::<Vec<_>>(),
        ));
        let at = col(Int64Array::from(
            (0..n).map(|_| (next() % 600) as i64).collect::<Vec<_>>(),
        ));
        let spec = |keys: Vec<&'static str>, known_at: &'static str, windows: Vec<i64>, aggs: Vec<Agg>| {
            (keys, known_at, windows, aggs)
        };
        let plans = [
            spec(vec!["a"], "known", vec![10, 50], vec![Agg::Mean, Agg::Count]),
            spec(vec!["a"], "known", vec![30], vec![Agg::Max]),
            spec(vec!["a"], "other", vec![30], vec![Agg::Sum]),
            spec(vec!["a", "b"], "known", vec![100], Agg::ALL.to_vec()),
            spec(vec!["b"], "other", vec![0, 20], vec![Agg::Count, Agg::Max]),
        ];
        let column = |name: &str| -> &Chunks {
            match name {
                "a" => &a,
                "b" => &b,
                "known" => &known,
                _ => &other,
            }
        };
        let specs: Vec<WindowSpec<'_>> = plans
            .iter()
            .map(|(keys, known_at, windows, aggs)| WindowSpec {
                keys: keys.iter().map(|k| column(k)).collect(),
                known_at: column(known_at),
                value: &value,
                windows: windows.clone(),
                aggs: aggs.clone(),
            })
            .collect();
        let together = window_aggregates(&specs, &at).unwrap();
        for (spec, shared) in specs.iter().zip(&together) {
            let alone =
                window_aggregate(&spec.keys, spec.known_at, spec.value, &at, &spec.windows, &spec.aggs).unwrap();
            assert_eq!(shared.len(), alone.len());
            for (x, y) in shared.iter().zip(&alone) {
                assert_eq!(x.window, y.window);
                for ((a1, c1), (a2, c2)) in x.columns.iter().zip(&y.columns) {
                    assert_eq!((a1, c1.to_data()), (a2, c2.to_data()));
                }
            }
        }
    }

    #[test]
    fn string_and_composite_keys_across_chunks() {
        let a: Vec<ArrayRef> = vec![
            Arc::new(arrow_array::StringViewArray::from(vec!["x", "y"])),
            Arc::new(arrow_array::StringViewArray::from(vec![Some("x"), None, Some("x")])),
        ];
        let b = col(Int64Array::from(vec![1, 1, 1, 1, 2]));
        let t = col(Int64Array::from(vec![0, 1, 2, 3, 4]));
        let v = col(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0, 5.0]));
        let at = col(Int64Array::from(vec![10, 10, 10, 10, 10]));
        let out = window_aggregate(&[&a, &b], &t, &v, &at, &[100], &[Agg::Count])
            .unwrap()
            .remove(0);
        // (x,1) (y,1) (x,1) (null,1) (x,2): the two (x,1) rows see each other, (x,2) only itself
        let count: Vec<Option<f64>> = out.columns[0].1.as_primitive::<Float64Type>().iter().collect();
        assert_eq!(count, vec![Some(2.0), Some(1.0), Some(2.0), None, Some(1.0)]);
    }

    #[test]
    fn matches_a_brute_force_scan_with_duplicate_times() {
        // a small deterministic pseudo-random frame (xorshift), many equal timestamps
        let mut next = crate::columns::xorshift(0x9E37_79B9_7F4A_7C15);
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
                assert_eq!(out.count.value(row), count as f64, "count, row {row}, window {w}");
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
