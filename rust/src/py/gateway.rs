//! `Gateway`: the routing table, the sessions it names, and the per-frame and batch steps.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::batch::{into_arrays, Inputs, DETACH_THRESHOLD};
use super::session::{stats_dict, Session};
use crate::batch::{self, BatchIn};
use crate::error::{DropReason, Error};
use crate::gateway;
use crate::routing::{IdRewrite, LinkId, Rule};

/// The dual-bus gateway: default deny, first matching rule wins.
///
/// Shared with a data plane's threads (`DataPlane`), which step it without the GIL: every call
/// here takes its lock, held for one call only (a data plane holds it for one batch).
#[pyclass(module = "modbatt._core")]
pub struct Gateway {
    pub(crate) inner: Arc<Mutex<gateway::Gateway>>,
}

impl Gateway {
    /// The gateway, locked (a thread that panicked while holding it left it consistent:
    /// every step either completes or returns an error before changing anything).
    fn core(&self) -> MutexGuard<'_, gateway::Gateway> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type BatchResult<'py> = (
    Bound<'py, PyArray1<u8>>,
    Bound<'py, PyArray1<u32>>,
    Bound<'py, PyArray1<u8>>,
    Bound<'py, numpy::PyArray2<u8>>,
    Bound<'py, PyArray1<u8>>,
);

fn rule_dict<'py>(py: Python<'py>, rule: &Rule) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    dict.set_item("src_bus", rule.src_bus)?;
    dict.set_item("match_id", rule.match_id)?;
    dict.set_item("mask", rule.mask)?;
    dict.set_item("dst_bus", rule.dst_bus)?;
    dict.set_item("inbound", rule.inbound)?;
    dict.set_item("outbound", rule.outbound)?;
    dict.set_item("fd", rule.fd)?;
    dict.set_item("id_and", rule.rewrite.and)?;
    dict.set_item("id_or", rule.rewrite.or)?;
    dict.set_item("id_xor", rule.rewrite.xor)?;
    dict.set_item("id_set", rule.rewrite.set)?;
    Ok(dict)
}

#[pymethods]
impl Gateway {
    /// An empty gateway. `cut_through` forwards a classic pair's data frame before its
    /// authenticator arrives (re-encrypted, never decrypted); `False` holds it until the pair
    /// verifies (store and forward).
    #[new]
    #[pyo3(signature = (*, cut_through=true))]
    fn new(cut_through: bool) -> Self {
        let mut inner = gateway::Gateway::new();
        inner.set_cut_through(cut_through);
        Gateway {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    /// Whether the gateway forwards pairs' data frames ahead of their authenticators.
    #[getter]
    fn cut_through(&self) -> bool {
        self.core().cut_through()
    }

    /// Append a rule: frames from `src_bus` whose logical id matches `match_id` under `mask`
    /// go to `dst_bus`, opened with link `inbound` (or required plain), rewritten, and
    /// sealed with link `outbound` (or sent plain).
    #[pyo3(signature = (src_bus, match_id, mask, dst_bus, *, inbound=None, outbound=None, fd=false, id_and=None, id_or=0, id_xor=0, id_set=None))]
    #[allow(clippy::too_many_arguments)]
    fn add_rule(
        &mut self,
        src_bus: u8,
        match_id: u32,
        mask: u32,
        dst_bus: u8,
        inbound: Option<LinkId>,
        outbound: Option<LinkId>,
        fd: bool,
        id_and: Option<u32>,
        id_or: u32,
        id_xor: u32,
        id_set: Option<u32>,
    ) -> PyResult<()> {
        let rewrite = IdRewrite {
            and: id_and.unwrap_or(IdRewrite::default().and),
            or: id_or,
            xor: id_xor,
            set: id_set,
        };
        self.core().add_rule(Rule {
            src_bus,
            match_id,
            mask,
            dst_bus,
            rewrite,
            inbound,
            outbound,
            fd,
        })?;
        Ok(())
    }

    /// Remove every rule.
    fn clear_rules(&mut self) {
        self.core().clear_rules();
    }

    /// The rules, in match order, as dicts.
    fn rules<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.core()
            .table()
            .rules()
            .iter()
            .map(|r| rule_dict(py, r))
            .collect()
    }

    /// Move a session into the gateway as link `link` (replacing any previous one). The
    /// Python object can no longer seal or open afterwards: one owner per counter.
    fn install_session(&mut self, link: LinkId, session: &mut Session) -> PyResult<()> {
        let inner = session.inner.take().ok_or_else(|| {
            Error::InvalidArgument("this session is already installed in a gateway".into())
        })?;
        self.core().install_session(link, inner);
        Ok(())
    }

    /// Remove a link's session; returns whether there was one.
    fn remove_session(&mut self, link: LinkId) -> bool {
        self.core().remove_session(link).is_some()
    }

    /// A link's session counters (plus `expired`), or None when it has no session.
    fn session_stats<'py>(
        &self,
        py: Python<'py>,
        link: LinkId,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        match self.core().session(link) {
            None => Ok(None),
            Some(session) => {
                let dict = stats_dict(py, &session.stats())?;
                dict.set_item("expired", session.is_expired())?;
                Ok(Some(dict))
            }
        }
    }

    /// Carry one frame received on `bus`; returns the (bus, id, data) frames to send, empty
    /// when the frame was dropped (see `stats()`) or is a pair's data frame held for its
    /// authenticator without cut-through.
    fn step<'py>(
        &mut self,
        py: Python<'py>,
        bus: u8,
        can_id: u32,
        data: &[u8],
    ) -> Vec<(u8, u32, Bound<'py, PyBytes>)> {
        match self.core().step(bus, can_id, data) {
            Ok(Some(forward)) => forward
                .frames
                .frames()
                .iter()
                .map(|f| (forward.bus, f.id, PyBytes::new(py, f.payload())))
                .collect(),
            Ok(None) | Err(_) => Vec::new(),
        }
    }

    /// Like `step`, but raises the drop as an exception of `modbatt.errors`; returns [] for
    /// a held data frame. For diagnostics and tests; the bridge uses `step`.
    fn step_checked<'py>(
        &mut self,
        py: Python<'py>,
        bus: u8,
        can_id: u32,
        data: &[u8],
    ) -> PyResult<Vec<(u8, u32, Bound<'py, PyBytes>)>> {
        Ok(match self.core().step(bus, can_id, data)? {
            Some(forward) => forward
                .frames
                .frames()
                .iter()
                .map(|f| (forward.bus, f.id, PyBytes::new(py, f.payload())))
                .collect(),
            None => Vec::new(),
        })
    }

    /// Keep the latest message of every logical id matching `match_id` under `mask` that a
    /// session opened, for `take_tapped` (plain traffic is never kept).
    fn set_tap(&mut self, match_id: u32, mask: u32) {
        self.core().set_tap(match_id, mask);
    }

    /// The (logical id, plaintext) messages the tap kept since the last call, by id.
    fn take_tapped<'py>(&mut self, py: Python<'py>) -> Vec<(u32, Bound<'py, PyBytes>)> {
        self.core()
            .take_tapped()
            .iter()
            .map(|f| (f.id, PyBytes::new(py, f.payload())))
            .collect()
    }

    /// Seal a frame of the gateway's own with link `link`'s session: the (id, data) frames.
    #[pyo3(signature = (link, can_id, data, fd=false))]
    fn seal_frame<'py>(
        &mut self,
        py: Python<'py>,
        link: LinkId,
        can_id: u32,
        data: &[u8],
        fd: bool,
    ) -> PyResult<Vec<(u32, Bound<'py, PyBytes>)>> {
        let sealed = self.core().seal_frame(link, can_id, data, fd)?;
        Ok(sealed
            .frames()
            .iter()
            .map(|f| (f.id, PyBytes::new(py, f.payload())))
            .collect())
    }

    /// Seal a message with link `link`'s session.
    fn seal_message<'py>(
        &mut self,
        py: Python<'py>,
        link: LinkId,
        stream: u32,
        data: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(
            py,
            &self.core().seal_message(link, stream, data)?,
        ))
    }

    /// Open a message with link `link`'s session.
    fn open_message<'py>(
        &mut self,
        py: Python<'py>,
        link: LinkId,
        stream: u32,
        data: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        Ok(PyBytes::new(
            py,
            &self.core().open_message(link, stream, data)?,
        ))
    }

    /// Whether link `link` has a live session.
    fn has_session(&self, link: LinkId) -> bool {
        self.core().session(link).is_some_and(|s| !s.is_expired())
    }

    /// Step a batch: buses, ids, lens (N) and data (N × 64) -> out buses, ids, lens, data
    /// (M × 64) and a status per input frame.
    fn step_batch<'py>(
        &mut self,
        py: Python<'py>,
        buses: PyReadonlyArray1<'py, u8>,
        ids: PyReadonlyArray1<'py, u32>,
        lens: PyReadonlyArray1<'py, u8>,
        data: PyReadonlyArray2<'py, u8>,
    ) -> PyResult<BatchResult<'py>> {
        let inputs = Inputs { ids, lens, data };
        let (ids, lens, data) = inputs.slices()?;
        let buses = buses
            .as_slice()
            .map_err(|_| Error::InvalidArgument("buses must be a C-contiguous array".into()))?;
        let input = BatchIn::new(ids, lens, data)?;
        let out = if input.len() >= DETACH_THRESHOLD {
            // The lock is taken and given back without the GIL: holding it while waiting for
            // the GIL again would deadlock with a thread that holds the GIL and waits for it.
            let shared = Arc::clone(&self.inner);
            py.detach(move || {
                let mut gateway = shared.lock().unwrap_or_else(PoisonError::into_inner);
                batch::step_batch(&mut gateway, buses, input)
            })?
        } else {
            batch::step_batch(&mut self.core(), buses, input)?
        };
        let (bus, (ids, lens, data, status)) = into_arrays(py, out)?;
        Ok((bus, ids, lens, data, status))
    }

    /// Counters: received, forwarded, pending, and one per drop reason.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.core().stats();
        let dict = PyDict::new(py);
        dict.set_item("received", stats.received)?;
        dict.set_item("forwarded", stats.forwarded)?;
        dict.set_item("pending", stats.pending)?;
        dict.set_item("ahead", stats.ahead)?;
        dict.set_item("ahead_missed", stats.ahead_missed)?;
        dict.set_item("link_down", stats.link_down)?;
        for reason in DropReason::ALL {
            dict.set_item(reason.name(), stats.dropped[reason.index()])?;
        }
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        let gateway = self.core(); // one lock: a second in the same statement would deadlock
        format!(
            "Gateway(rules={}, stats={:?})",
            gateway.table().rules().len(),
            gateway.stats()
        )
    }
}
