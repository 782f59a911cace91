//! `Session`: per-frame and batch seal and open for one link.

use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use super::batch::{into_arrays, Frames, Inputs, DETACH_THRESHOLD};
use super::ids::IdObjects;
use super::keys::{secret_bytes, LinkKey};
use crate::batch::{self, BatchIn};
use crate::error::{DropReason, Error};
use crate::frame::Frame;
use crate::session::{self, SessionLimits};

/// One session of one link, from the local end: seals local -> peer, opens peer -> local.
#[pyclass(module = "modbatt._core")]
pub struct Session {
    /// `None` once the session has been moved into a gateway.
    pub(super) inner: Option<session::Session>,
    id_objects: IdObjects,
}

impl Session {
    fn get(&mut self) -> PyResult<&mut session::Session> {
        self.inner.as_mut().ok_or_else(|| {
            Error::InvalidArgument(
                "this session was installed in a gateway and can no longer be used directly".into(),
            )
            .into()
        })
    }
}

/// A dict of counters: `sealed`, `opened`, `failures`, and one key per drop reason.
pub(super) fn stats_dict<'py>(
    py: Python<'py>,
    stats: &session::SessionStats,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("sealed", stats.sealed)?;
    dict.set_item("opened", stats.opened)?;
    dict.set_item("failures", stats.failures)?;
    for reason in DropReason::ALL {
        dict.set_item(reason.name(), stats.dropped[reason.index()])?;
    }
    Ok(dict)
}

#[pymethods]
impl Session {
    #[new]
    #[pyo3(signature = (link_key, local_id, peer_id, local_nonce, peer_nonce, *, max_failures=session::DEFAULT_MAX_FAILURES, pair_window=session::DEFAULT_PAIR_WINDOW))]
    fn new(
        link_key: &LinkKey,
        local_id: &str,
        peer_id: &str,
        local_nonce: &Bound<'_, PyAny>,
        peer_nonce: &Bound<'_, PyAny>,
        max_failures: u32,
        pair_window: u32,
    ) -> PyResult<Self> {
        let limits = SessionLimits {
            max_failures,
            pair_window,
        };
        let inner = session::Session::new(
            &link_key.inner,
            local_id,
            peer_id,
            &secret_bytes(local_nonce)?,
            &secret_bytes(peer_nonce)?,
            limits,
        )?;
        Ok(Session {
            inner: Some(inner),
            id_objects: IdObjects::default(),
        })
    }

    /// Seal a payload for a logical id. Returns `(id, data, auth_id, auth)`: the frame to
    /// send, then the authenticator frame to send right after it, or `None, None` when the
    /// message fits one frame (up to 3 bytes on classic CAN, or CAN FD).
    ///
    /// One flat tuple, not a list of frames: the per-frame hot path pays for every Python
    /// object it returns (a nested result costs ~30 ns more per call here).
    #[pyo3(signature = (can_id, data, fd=false))]
    fn seal<'py>(
        &mut self,
        py: Python<'py>,
        can_id: u32,
        data: &[u8],
        fd: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut sealed = session::Sealed::empty();
        self.get()?.seal_into(can_id, data, fd, &mut sealed)?;
        let (first, auth) = match sealed.frames() {
            [first] => (first, None),
            [first, auth] => (first, Some(auth)),
            _ => {
                return Err(Error::InvalidArgument("a seal makes one or two frames".into()).into())
            }
        };
        let first_id = self.id_objects.get(py, first.id);
        let first_data = PyBytes::new(py, first.payload());
        let (auth_id, auth_data) = match auth {
            Some(auth) => (
                Some(self.id_objects.get(py, auth.id)),
                Some(PyBytes::new(py, auth.payload())),
            ),
            None => (None, None),
        };
        (first_id, first_data, auth_id, auth_data).into_pyobject(py)
    }

    /// Seal a message of up to 4096 bytes on `stream` (a logical id naming the channel).
    fn seal_message<'py>(
        &mut self,
        py: Python<'py>,
        stream: u32,
        data: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let sealed = self.get()?.seal_message(stream, data)?;
        Ok(PyBytes::new(py, &sealed))
    }

    /// Open a sealed message received on `stream`; raises the drop as a `FrameRejectedError`.
    fn open_message<'py>(
        &mut self,
        py: Python<'py>,
        stream: u32,
        data: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let plain = self.get()?.open_message(stream, data)?;
        Ok(PyBytes::new(py, &plain))
    }

    /// Open a received frame; returns the plaintext (its id is `logical_id(can_id)`), or
    /// None for a pair's data frame that waits for its authenticator.
    fn open<'py>(
        &mut self,
        py: Python<'py>,
        can_id: u32,
        data: &[u8],
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let mut out = Frame {
            id: 0,
            len: 0,
            data: [0; crate::frame::MAX_DATA_LEN],
        };
        let delivered = self.get()?.open_into(can_id, data, &mut out)?;
        Ok(delivered.then(|| PyBytes::new(py, out.payload())))
    }

    /// Seal a batch: ids (N), lens (N), data (N × 64) -> ids, lens, data, status (N).
    #[pyo3(signature = (ids, lens, data, fd=false))]
    fn seal_batch<'py>(
        &mut self,
        py: Python<'py>,
        ids: PyReadonlyArray1<'py, u32>,
        lens: PyReadonlyArray1<'py, u8>,
        data: PyReadonlyArray2<'py, u8>,
        fd: bool,
    ) -> PyResult<Frames<'py>> {
        let inputs = Inputs { ids, lens, data };
        let (ids, lens, data) = inputs.slices()?;
        let input = BatchIn::new(ids, lens, data)?;
        let session = self.get()?;
        let out = if input.len() >= DETACH_THRESHOLD {
            py.detach(|| batch::seal_batch(session, input, fd))
        } else {
            batch::seal_batch(session, input, fd)
        };
        Ok(into_arrays(py, out)?.1)
    }

    /// Open a batch: ids (N), lens (N), data (N × 64) -> ids, lens, data, status (N).
    fn open_batch<'py>(
        &mut self,
        py: Python<'py>,
        ids: PyReadonlyArray1<'py, u32>,
        lens: PyReadonlyArray1<'py, u8>,
        data: PyReadonlyArray2<'py, u8>,
    ) -> PyResult<Frames<'py>> {
        let inputs = Inputs { ids, lens, data };
        let (ids, lens, data) = inputs.slices()?;
        let input = BatchIn::new(ids, lens, data)?;
        let session = self.get()?;
        let out = if input.len() >= DETACH_THRESHOLD {
            py.detach(|| batch::open_batch(session, input))
        } else {
            batch::open_batch(session, input)
        };
        Ok(into_arrays(py, out)?.1)
    }

    /// The local component id.
    #[getter]
    fn local_id(&mut self) -> PyResult<String> {
        Ok(self.get()?.local_id().to_owned())
    }

    /// The peer's component id.
    #[getter]
    fn peer_id(&mut self) -> PyResult<String> {
        Ok(self.get()?.peer_id().to_owned())
    }

    /// Whether the verification-failure budget tore the session down.
    #[getter]
    fn expired(&mut self) -> PyResult<bool> {
        Ok(self.get()?.is_expired())
    }

    /// Counters: sealed, opened, failures, and one per drop reason.
    fn stats<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.get()?.stats();
        stats_dict(py, &stats)
    }

    fn __repr__(&self) -> String {
        match &self.inner {
            Some(inner) => format!("{inner:?}"),
            None => "Session(<installed in a gateway>)".into(),
        }
    }
}
