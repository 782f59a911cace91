//! CAN id helpers: compose and split `base << 18 | node`, test, set and clear E.

use pyo3::prelude::*;
use pyo3::types::PyInt;

use crate::ids;

/// Compose a 29-bit id from an 11-bit base id and an 8-bit node number.
#[pyfunction]
fn compose_id(base: u32, node: u32) -> PyResult<u32> {
    Ok(ids::compose(base, node)?)
}

/// Split a 29-bit id into (base, node).
#[pyfunction]
fn split_id(can_id: u32) -> (u32, u32) {
    ids::split(can_id)
}

/// Whether E (bit 17) is set.
#[pyfunction]
fn is_encrypted(can_id: u32) -> bool {
    ids::is_encrypted(can_id)
}

/// The id with E set.
#[pyfunction]
fn set_encrypted(can_id: u32) -> u32 {
    ids::set_encrypted(can_id)
}

/// The id with E cleared.
#[pyfunction]
fn clear_encrypted(can_id: u32) -> u32 {
    ids::clear_encrypted(can_id)
}

/// The logical id: E and the two format bits cleared.
#[pyfunction]
fn logical_id(can_id: u32) -> u32 {
    ids::logical(can_id)
}

/// The secured form (0 single, 1 pair data, 2 pair authenticator, 3 FD) of an id with E set.
#[pyfunction]
fn frame_format(can_id: u32) -> u8 {
    ids::Format::of(can_id) as u8
}

pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(compose_id, m)?)?;
    m.add_function(wrap_pyfunction!(split_id, m)?)?;
    m.add_function(wrap_pyfunction!(is_encrypted, m)?)?;
    m.add_function(wrap_pyfunction!(set_encrypted, m)?)?;
    m.add_function(wrap_pyfunction!(clear_encrypted, m)?)?;
    m.add_function(wrap_pyfunction!(logical_id, m)?)?;
    m.add_function(wrap_pyfunction!(frame_format, m)?)?;
    m.add("ENCRYPTION_FLAG", ids::ENCRYPTION_FLAG)?;
    m.add("FORMAT_MASK", ids::FORMAT_MASK)?;
    m.add("SECURE_BITS", ids::SECURE_BITS)?;
    m.add("EXTENDED_ID_MASK", ids::EXTENDED_ID_MASK)?;
    Ok(())
}

/// Python int objects for the last few CAN ids returned. CPython allocates every int above
/// 256, and a 29-bit id is one; a sender reuses the same few ids, so handing back the same
/// objects saves an allocation and a free per frame.
#[derive(Default)]
pub(super) struct IdObjects {
    entries: [Option<(u32, Py<PyInt>)>; 8],
    next: usize,
}

impl IdObjects {
    /// The int object for `id`.
    pub(super) fn get<'py>(&mut self, py: Python<'py>, id: u32) -> Bound<'py, PyInt> {
        for (cached, object) in self.entries.iter().flatten() {
            if *cached == id {
                return object.bind(py).clone();
            }
        }
        let object = PyInt::new(py, id);
        self.entries[self.next] = Some((id, object.clone().unbind()));
        self.next = (self.next + 1) % self.entries.len();
        object
    }
}
