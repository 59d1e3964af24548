//! Python bindings of Fusion's feature kernels: Arrow arrays in and out through the Arrow PyCapsule
//! interface (polars Series, pyarrow arrays). The window and as-of kernels read chunked keys, times
//! and values in place (the as-of tie-break columns are joined into one array at the first tie);
//! `haversine_km` and `cross_hash` join each input into one array first (a copy only when it has
//! several chunks). The kernels themselves (window.rs, join.rs, keys.rs, hash.rs, geo.rs, over
//! columns.rs) are pure Rust and tested with `cargo test`; the GIL is released while one runs.

pub mod columns;
pub mod geo;
pub mod hash;
pub mod join;
pub mod keys;
pub mod window;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, Field};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3_arrow::PyArray;
use pyo3_arrow::error::PyArrowResult;
use pyo3_arrow::input::AnyArray;

use crate::columns::KernelError;

/// The chunks of whatever Arrow object Python passed (a Series, an array, a chunked array).
fn chunks(input: AnyArray) -> PyResult<Vec<ArrayRef>> {
    let (chunks, _field) = input.into_chunked_array()?.into_inner();
    Ok(chunks)
}

fn chunk_lists(inputs: Vec<AnyArray>) -> PyResult<Vec<Vec<ArrayRef>>> {
    inputs.into_iter().map(chunks).collect()
}

fn refs(columns: &[Vec<ArrayRef>]) -> Vec<&[ArrayRef]> {
    columns.iter().map(|c| c.as_slice()).collect()
}

fn py_error(e: KernelError) -> PyErr {
    match e {
        KernelError::Type { .. } => PyTypeError::new_err(e.to_string()),
        _ => PyValueError::new_err(e.to_string()),
    }
}

/// One contiguous array of the expected type from whatever Arrow object Python passed.
fn contiguous(name: &str, input: AnyArray, expected: &DataType) -> PyArrowResult<ArrayRef> {
    contiguous_of(name, input, std::slice::from_ref(expected), &expected.to_string())
}

/// One contiguous array of any of the accepted types (`wanted` describes them in the error).
fn contiguous_of(name: &str, input: AnyArray, accepted: &[DataType], wanted: &str) -> PyArrowResult<ArrayRef> {
    let (chunks, field) = input.into_chunked_array()?.into_inner();
    let dtype = field.data_type();
    if !accepted.contains(dtype) {
        return Err(PyTypeError::new_err(format!("{name}: expected {wanted}, got {dtype}")).into());
    }
    Ok(columns::contiguous(&chunks, dtype).map_err(py_error)?)
}

fn named(name: String, array: ArrayRef) -> PyArray {
    let field = Field::new(name, array.data_type().clone(), true);
    PyArray::new(array, Arc::new(field))
}

/// One aggregate spec as Python passes it: (keys, known_at, value, windows, aggs).
type PySpec = (Vec<AnyArray>, AnyArray, AnyArray, Vec<i64>, Vec<String>);

/// Per-group aggregates over prior events, for several specs asking at the same times: for each row,
/// spec and window w, the events of the row's group (`keys`: string or integer columns) with
/// `at - w <= known_at < at` (times Int64, values Float64). Returns per spec, per window in order and
/// per aggregate of `aggs` in order, an array named `<agg>_<w>`, all Float64 (count too: a whole
/// number), aligned with the input rows: null where the row cannot ask (a null key or `at`), mean
/// and max also where its window is empty (count and sum are 0 there).
/// Rows are bucketed by group and each group sorted by time (window.rs). Specs that pass the same key
/// columns (the same buffers) share their group ids and each group's queries; each spec's events are
/// bucketed and sorted on their own, whatever known_at column it passes.
#[pyfunction]
#[pyo3(signature = (specs, at))]
fn window_aggregates(py: Python<'_>, specs: Vec<PySpec>, at: AnyArray) -> PyResult<Vec<Vec<PyArray>>> {
    let at = chunks(at)?;
    let mut inputs = Vec::with_capacity(specs.len());
    for (keys, known_at, value, windows, aggs) in specs {
        let aggs = aggs
            .iter()
            .map(|a| window::Agg::parse(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(py_error)?;
        inputs.push((chunk_lists(keys)?, chunks(known_at)?, chunks(value)?, windows, aggs));
    }
    let specs: Vec<window::WindowSpec<'_>> = inputs
        .iter()
        .map(|(keys, known_at, value, windows, aggs)| window::WindowSpec {
            keys: refs(keys),
            known_at,
            value,
            windows: windows.clone(),
            aggs: aggs.clone(),
        })
        .collect();
    let result = py.detach(|| window::window_aggregates(&specs, &at)).map_err(py_error)?;
    Ok(result
        .into_iter()
        .map(|spec| {
            spec.into_iter()
                .flat_map(|w| {
                    let window = w.window;
                    w.columns
                        .into_iter()
                        .map(move |(agg, array)| named(format!("{}_{window}", agg.name()), array))
                })
                .collect()
        })
        .collect())
}

/// For each left row, the row number of the right row an as-of join attaches (UInt32, null where
/// none): same keys, the latest right time at or before the left time (strictly before when `strict`),
/// no older than `tolerance`; ties at one time go to the greatest by `order_by`, then the last row.
#[pyfunction]
#[pyo3(signature = (left_keys, left_time, right_keys, right_time, order_by, strict, tolerance))]
#[allow(clippy::too_many_arguments)]
fn asof_index(
    py: Python<'_>,
    left_keys: Vec<AnyArray>,
    left_time: AnyArray,
    right_keys: Vec<AnyArray>,
    right_time: AnyArray,
    order_by: Vec<AnyArray>,
    strict: bool,
    tolerance: Option<i64>,
) -> PyResult<PyArray> {
    let (left_keys, right_keys, order_by) = (
        chunk_lists(left_keys)?,
        chunk_lists(right_keys)?,
        chunk_lists(order_by)?,
    );
    let (left_time, right_time) = (chunks(left_time)?, chunks(right_time)?);
    let how = join::Asof { strict, tolerance };
    let index = py.detach(|| {
        join::asof_index(
            &refs(&left_keys),
            &left_time,
            &refs(&right_keys),
            &right_time,
            &refs(&order_by),
            how,
        )
    });
    Ok(named("index".to_string(), Arc::new(index.map_err(py_error)?)))
}

/// Great-circle distance in km between points given in degrees (Float64); null where any input is.
#[pyfunction]
#[pyo3(signature = (lat1, lon1, lat2, lon2))]
fn haversine_km(
    py: Python<'_>,
    lat1: AnyArray,
    lon1: AnyArray,
    lat2: AnyArray,
    lon2: AnyArray,
) -> PyArrowResult<PyArray> {
    let columns = [
        contiguous("lat1", lat1, &DataType::Float64)?,
        contiguous("lon1", lon1, &DataType::Float64)?,
        contiguous("lat2", lat2, &DataType::Float64)?,
        contiguous("lon2", lon2, &DataType::Float64)?,
    ];
    if let Some((i, c)) = columns.iter().enumerate().find(|(_, c)| c.len() != columns[0].len()) {
        let name = ["lat1", "lon1", "lat2", "lon2"][i];
        return Err(PyValueError::new_err(format!(
            "{name} has {} rows, expected {} (the length of lat1)",
            c.len(),
            columns[0].len()
        ))
        .into());
    }
    let p = |i: usize| columns[i].as_primitive::<Float64Type>();
    let out = py.detach(|| geo::haversine_km(p(0), p(1), p(2), p(3)));
    Ok(named("haversine_km".to_string(), Arc::new(out)))
}

/// Stable 64-bit hash of the row-wise cross of string columns (see hash.rs for the definition);
/// null where any value is null. Columns: Utf8, LargeUtf8 or Utf8View (what polars exports), equal lengths.
#[pyfunction]
#[pyo3(signature = (columns))]
fn cross_hash(py: Python<'_>, columns: Vec<AnyArray>) -> PyArrowResult<PyArray> {
    let accepted = [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];
    let arrays = columns
        .into_iter()
        .enumerate()
        .map(|(j, c)| contiguous_of(&format!("columns[{j}]"), c, &accepted, "a string array"))
        .collect::<PyArrowResult<Vec<ArrayRef>>>()?;
    let strings: Vec<hash::Strings<'_>> = arrays
        .iter()
        .map(|a| match a.data_type() {
            DataType::Utf8 => hash::Strings::Utf8(a.as_string::<i32>()),
            DataType::LargeUtf8 => hash::Strings::LargeUtf8(a.as_string::<i64>()),
            _ => hash::Strings::Utf8View(a.as_string_view()),
        })
        .collect();
    let out = py
        .detach(|| hash::cross_hash(&strings))
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(named("cross_hash".to_string(), Arc::new(out)))
}

#[pymodule]
mod rust_ext {
    #[pymodule_export]
    use super::{asof_index, cross_hash, haversine_km, window_aggregates};
}
