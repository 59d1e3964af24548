//! Python bindings of Fusion's feature kernels: Arrow arrays in and out through the Arrow PyCapsule
//! interface (polars Series, pyarrow arrays), no copy on the way in beyond joining chunks. The kernels
//! themselves (window.rs, hash.rs, geo.rs) are pure Rust and tested with `cargo test`.

pub mod geo;
pub mod hash;
pub mod window;

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, new_empty_array};
use arrow_schema::{DataType, Field};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3_arrow::PyArray;
use pyo3_arrow::error::PyArrowResult;
use pyo3_arrow::input::AnyArray;

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
    Ok(match chunks.len() {
        0 => new_empty_array(dtype),
        1 => chunks[0].clone(),
        _ => arrow_select::concat::concat(&chunks.iter().map(|c| c.as_ref()).collect::<Vec<&dyn Array>>())?,
    })
}

fn named(name: String, array: ArrayRef) -> PyArray {
    let field = Field::new(name, array.data_type().clone(), true);
    PyArray::new(array, Arc::new(field))
}

/// Per-group aggregates over prior events: for each row and window w, the events of the row's group
/// with `at - w <= known_at < at`. Returns, per window in order, arrays named `count_<w>`, `sum_<w>`,
/// `mean_<w>`, `max_<w>` (Int64, Float64, Float64, Float64), aligned with the input rows.
#[pyfunction]
#[pyo3(signature = (group, known_at, value, at, windows))]
fn window_aggregate(
    py: Python<'_>,
    group: AnyArray,
    known_at: AnyArray,
    value: AnyArray,
    at: AnyArray,
    windows: Vec<i64>,
) -> PyArrowResult<Vec<PyArray>> {
    let group = contiguous("group", group, &DataType::Int64)?;
    let known_at = contiguous("known_at", known_at, &DataType::Int64)?;
    let value = contiguous("value", value, &DataType::Float64)?;
    let at = contiguous("at", at, &DataType::Int64)?;
    let result = py.detach(|| {
        window::window_aggregate(
            group.as_primitive::<Int64Type>(),
            known_at.as_primitive::<Int64Type>(),
            value.as_primitive::<Float64Type>(),
            at.as_primitive::<Int64Type>(),
            &windows,
        )
    });
    let columns = result.map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(columns
        .into_iter()
        .flat_map(|c| {
            let w = c.window;
            [
                named(format!("count_{w}"), Arc::new(c.count)),
                named(format!("sum_{w}"), Arc::new(c.sum)),
                named(format!("mean_{w}"), Arc::new(c.mean)),
                named(format!("max_{w}"), Arc::new(c.max)),
            ]
        })
        .collect())
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
    use super::{cross_hash, haversine_km, window_aggregate};
}
