//! `DataPlane`: the routed traffic of two CAN sockets carried by threads of its own, without
//! the GIL, through a `Gateway` that Python goes on configuring.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::gateway::Gateway;
use crate::dataplane::{self, PlaneBus, PlaneStats};
use crate::error::Error;

/// Two threads that carry frames between two sockets through a gateway.
///
/// `can1` and `can2` are sockets (objects with `fileno()`: a raw CAN socket bound to its
/// interface, or one end of a `socketpair(AF_UNIX, SOCK_SEQPACKET)`); the data plane works
/// on duplicates of them, so the caller may close its own. It reads them blocking, with a
/// 50 ms receive timeout (`SO_RCVTIMEO`) for its stop flag; a duplicate shares these
/// settings, so the sockets read are the plane's alone. Bus numbers are the gateway's:
/// 0 is CAN 1, 1 is CAN 2.
#[pyclass(module = "modbatt._core")]
pub struct DataPlane {
    inner: dataplane::DataPlane,
}

/// A duplicate of the descriptor of `socket`, owned here.
#[allow(unsafe_code)]
fn duplicate(socket: &Bound<'_, PyAny>) -> PyResult<OwnedFd> {
    let raw: i32 = socket.call_method0("fileno")?.extract()?;
    if raw < 0 {
        return Err(Error::InvalidArgument("the socket is closed".into()).into());
    }
    // SAFETY: `raw` is the descriptor of `socket`, which the caller holds (and so keeps open)
    // for the whole of this call; it is only borrowed to be duplicated.
    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
    borrowed
        .try_clone_to_owned()
        .map_err(|e| Error::InvalidArgument(format!("cannot duplicate socket {raw}: {e}")).into())
}

fn stats_dict<'py>(py: Python<'py>, stats: &PlaneStats) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("received", stats.received)?;
    dict.set_item("sent", stats.sent)?;
    dict.set_item("skipped", stats.skipped)?;
    dict.set_item("rx_overflow", stats.rx_overflow)?;
    dict.set_item("tx_queue_full", stats.tx_queue_full)?;
    dict.set_item("tx_failed", stats.tx_failed)?;
    dict.set_item("batches", stats.batches)?;
    Ok(dict)
}

#[pymethods]
impl DataPlane {
    /// Start carrying frames: `can_fd` says, per bus, whether frames are sent as CAN FD even
    /// when they fit a classic frame; `sealed_only`, per bus, whether only sealed frames
    /// received there are the gateway's (CAN 1: its plain frames are the control channel's);
    /// `send_via`, per bus, another socket to send on (the program's own listener's, which
    /// then does not receive what the plane sends), or None to send on the one read;
    /// `priority`, the real-time priority (`SCHED_FIFO`, 1 to 99) its threads ask for, or
    /// None for normal priority (see `realtime` for whether it was granted).
    #[new]
    #[pyo3(signature = (gateway, can1, can2, *, can_fd=(false, false), sealed_only=(true, false), send_via=(None, None), priority=None))]
    fn new(
        gateway: &Gateway,
        can1: &Bound<'_, PyAny>,
        can2: &Bound<'_, PyAny>,
        can_fd: (bool, bool),
        sealed_only: (bool, bool),
        send_via: (Option<Bound<'_, PyAny>>, Option<Bound<'_, PyAny>>),
        priority: Option<i32>,
    ) -> PyResult<Self> {
        let buses = [
            PlaneBus {
                socket: duplicate(can1)?,
                sender: send_via.0.as_ref().map(duplicate).transpose()?,
                fd_frames: can_fd.0,
                sealed_only: sealed_only.0,
            },
            PlaneBus {
                socket: duplicate(can2)?,
                sender: send_via.1.as_ref().map(duplicate).transpose()?,
                fd_frames: can_fd.1,
                sealed_only: sealed_only.1,
            },
        ];
        let plane = dataplane::DataPlane::start(Arc::clone(&gateway.inner), buses, priority)?;
        Ok(DataPlane { inner: plane })
    }

    /// Whether the threads run.
    #[getter]
    fn running(&self) -> bool {
        self.inner.running()
    }

    /// Whether the threads run at the real-time priority asked for (False when none was, or
    /// when it was not permitted: no CAP_SYS_NICE, or RLIMIT_RTPRIO below it).
    #[getter]
    fn realtime(&self) -> bool {
        self.inner.realtime()
    }

    /// Stop both threads and wait for them (within about 50 ms); stopping twice is harmless.
    fn stop(&mut self, py: Python<'_>) {
        let plane = &mut self.inner;
        py.detach(move || plane.stop());
    }

    /// Per bus (CAN 1, CAN 2): received, sent, skipped, rx_overflow, tx_queue_full,
    /// tx_failed, batches. Once stopped, the final counts (what a run lost is read after it).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.inner
            .stats()
            .iter()
            .map(|s| stats_dict(py, s))
            .collect()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) {
        self.stop(py);
    }

    fn __repr__(&self) -> String {
        format!("DataPlane(running={})", self.running())
    }
}
