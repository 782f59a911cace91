//! `LinkKey`: key halves go in once, as bytes-like objects, and never come back out.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use zeroize::Zeroizing;

use crate::keys;

/// Copy a bytes-like object into a zeroizing buffer, so a caller holding a `bytearray` can
/// wipe its own copy and no other copy outlives this call.
pub(super) fn secret_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Zeroizing<Vec<u8>>> {
    let buffer = PyBuffer::<u8>::get(obj)?;
    Ok(Zeroizing::new(buffer.to_vec(obj.py())?))
}

/// The long-term key of one link, combined from two 64-byte device key halves.
#[pyclass(module = "modbatt._core", frozen)]
pub struct LinkKey {
    pub(super) inner: keys::LinkKey,
}

#[pymethods]
impl LinkKey {
    #[new]
    #[pyo3(signature = (half_a, id_a, half_b, id_b, dh_secret=None))]
    fn new(
        half_a: &Bound<'_, PyAny>,
        id_a: &str,
        half_b: &Bound<'_, PyAny>,
        id_b: &str,
        dh_secret: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let half_a = secret_bytes(half_a)?;
        let half_b = secret_bytes(half_b)?;
        let dh = dh_secret.map(secret_bytes).transpose()?;
        let inner =
            keys::LinkKey::derive(&half_a, id_a, &half_b, id_b, dh.as_deref().map(|v| &v[..]))?;
        Ok(LinkKey { inner })
    }

    /// A loggable 16-hex-digit name for the key.
    #[getter]
    fn fingerprint(&self) -> &str {
        self.inner.fingerprint()
    }

    /// The 16-byte value by which `src_id` proves it holds this key to `dst_id`, bound to
    /// both handshake nonces (safe to send: it reveals nothing about the key).
    fn confirmation<'py>(
        &self,
        py: Python<'py>,
        src_id: &str,
        dst_id: &str,
        src_nonce: &[u8],
        dst_nonce: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let tag = self
            .inner
            .confirmation(src_id, dst_id, src_nonce, dst_nonce)?;
        Ok(PyBytes::new(py, &tag))
    }

    /// Whether `tag` is `src_id`'s confirmation value (constant-time comparison).
    fn verify_confirmation(
        &self,
        src_id: &str,
        dst_id: &str,
        src_nonce: &[u8],
        dst_nonce: &[u8],
        tag: &[u8],
    ) -> PyResult<bool> {
        Ok(self
            .inner
            .verify_confirmation(src_id, dst_id, src_nonce, dst_nonce, tag)?)
    }

    fn __repr__(&self) -> String {
        format!("{:?}", self.inner)
    }
}
