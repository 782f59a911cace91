//! numpy arrays in and out of the batch calls.

use numpy::ndarray::Array2;
use numpy::PyUntypedArrayMethods;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;

use crate::batch::BatchOut;
use crate::error::Error;
use crate::frame::MAX_DATA_LEN;

/// Batches at least this long run with the GIL released; shorter ones are not worth the
/// thread hand-off.
pub(super) const DETACH_THRESHOLD: usize = 256;

/// Borrowed input arrays, checked to be contiguous: ids (u32), lens (u8), data (N × 64 u8).
pub(super) struct Inputs<'py> {
    pub(super) ids: PyReadonlyArray1<'py, u32>,
    pub(super) lens: PyReadonlyArray1<'py, u8>,
    pub(super) data: PyReadonlyArray2<'py, u8>,
}

impl Inputs<'_> {
    /// The three arrays as slices.
    pub(super) fn slices(&self) -> PyResult<(&[u32], &[u8], &[u8])> {
        let not_contiguous =
            |name: &str| Error::InvalidArgument(format!("{name} must be a C-contiguous array"));
        if self.data.shape()[1] != MAX_DATA_LEN {
            return Err(Error::InvalidArgument(format!(
                "data must have shape (N, {MAX_DATA_LEN}), got {:?}",
                self.data.shape()
            ))
            .into());
        }
        Ok((
            self.ids.as_slice().map_err(|_| not_contiguous("ids"))?,
            self.lens.as_slice().map_err(|_| not_contiguous("lens"))?,
            self.data.as_slice().map_err(|_| not_contiguous("data"))?,
        ))
    }
}

/// The arrays a batch call returns: ids, lens, data (M × 64), status (N).
pub(super) type Frames<'py> = (
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray1<u8>>,
    Bound<'py, PyArray2<u8>>,
    Bound<'py, PyArray1<u8>>,
);

/// Move a batch result into numpy arrays without copying the data.
pub(super) fn into_arrays<'py>(
    py: Python<'py>,
    out: BatchOut,
) -> PyResult<(Bound<'py, PyArray1<u8>>, Frames<'py>)> {
    let rows = out.ids.len();
    let data = Array2::from_shape_vec((rows, MAX_DATA_LEN), out.data)
        .map_err(|e| Error::InvalidArgument(format!("batch output shape: {e}")))?;
    Ok((
        out.bus.into_pyarray(py),
        (
            out.ids.into_pyarray(py),
            out.lens.into_pyarray(py),
            data.into_pyarray(py),
            out.status.into_pyarray(py),
        ),
    ))
}
