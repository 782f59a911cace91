//! Batch forms of seal, open and the gateway step over flat arrays, for the numpy API:
//! `ids[N]`, `lens[N]` and `data[N × 64]` in; the frames that come out in the same layout
//! plus a status per input frame (0 forwarded, 1 pending, else a [`DropReason`] code).

use crate::error::{DropReason, Error, Result};
use crate::frame::{Frame, MAX_DATA_LEN};
use crate::gateway::{Gateway, STATUS_FORWARDED, STATUS_LINK_DOWN, STATUS_PENDING};
use crate::session::Session;

/// Frames in flat arrays, `data` holding 64 bytes per frame.
#[derive(Default, Debug)]
pub struct BatchOut {
    /// Destination bus of each output frame (the gateway fills it; seal and open leave 0).
    pub bus: Vec<u8>,
    /// Identifier of each output frame.
    pub ids: Vec<u32>,
    /// Payload length of each output frame.
    pub lens: Vec<u8>,
    /// 64 bytes per output frame, zero past its length.
    pub data: Vec<u8>,
    /// One status per input frame.
    pub status: Vec<u8>,
}

impl BatchOut {
    fn with_capacity(inputs: usize, outputs: usize) -> BatchOut {
        BatchOut {
            bus: Vec::with_capacity(outputs),
            ids: Vec::with_capacity(outputs),
            lens: Vec::with_capacity(outputs),
            data: Vec::with_capacity(outputs * MAX_DATA_LEN),
            status: Vec::with_capacity(inputs),
        }
    }

    fn push(&mut self, bus: u8, frame: &Frame) {
        self.bus.push(bus);
        self.ids.push(frame.id);
        self.lens.push(frame.len);
        self.data.extend_from_slice(&frame.data);
    }

    /// Number of output frames.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no frame came out.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Input frames in flat arrays, checked for consistent shapes.
#[derive(Clone, Copy)]
pub struct BatchIn<'a> {
    ids: &'a [u32],
    lens: &'a [u8],
    data: &'a [u8],
}

impl<'a> BatchIn<'a> {
    /// Check that `lens` has one entry per id and `data` 64 bytes per id.
    pub fn new(ids: &'a [u32], lens: &'a [u8], data: &'a [u8]) -> Result<BatchIn<'a>> {
        if lens.len() != ids.len() || data.len() != ids.len() * MAX_DATA_LEN {
            return Err(Error::InvalidArgument(format!(
                "batch shapes disagree: {} ids, {} lengths, {} data bytes (expected {})",
                ids.len(),
                lens.len(),
                data.len(),
                ids.len() * MAX_DATA_LEN
            )));
        }
        Ok(BatchIn { ids, lens, data })
    }

    /// Number of input frames.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Frame `i` as (id, payload), or `None` when its length is over 64.
    fn frame(&self, i: usize) -> Option<(u32, &'a [u8])> {
        let len = usize::from(self.lens[i]);
        let data = self.data;
        (len <= MAX_DATA_LEN).then(|| (self.ids[i], &data[i * MAX_DATA_LEN..][..len]))
    }
}

fn status_of(error: &Error) -> u8 {
    error.drop_reason() as u8
}

/// Seal every frame with `session`; the output holds one or two frames per sealed input.
pub fn seal_batch(session: &mut Session, input: BatchIn<'_>, fd: bool) -> BatchOut {
    let mut out = BatchOut::with_capacity(input.len(), 2 * input.len());
    for i in 0..input.len() {
        let status = match input.frame(i) {
            None => DropReason::Malformed as u8,
            Some((id, payload)) => match session.seal(id, payload, fd) {
                Ok(sealed) => {
                    for frame in sealed.frames() {
                        out.push(0, frame);
                    }
                    STATUS_FORWARDED
                }
                Err(err) => status_of(&err),
            },
        };
        out.status.push(status);
    }
    out
}

/// Open every frame with `session`; the output holds one frame per delivered message.
pub fn open_batch(session: &mut Session, input: BatchIn<'_>) -> BatchOut {
    let mut out = BatchOut::with_capacity(input.len(), input.len());
    for i in 0..input.len() {
        let status = match input.frame(i) {
            None => DropReason::Malformed as u8,
            Some((id, payload)) => match session.open(id, payload) {
                Ok(Some(frame)) => {
                    out.push(0, &frame);
                    STATUS_FORWARDED
                }
                Ok(None) => STATUS_PENDING,
                Err(err) => status_of(&err),
            },
        };
        out.status.push(status);
    }
    out
}

/// Step every frame (received on `buses[i]`) through the gateway.
pub fn step_batch(gateway: &mut Gateway, buses: &[u8], input: BatchIn<'_>) -> Result<BatchOut> {
    if buses.len() != input.len() {
        return Err(Error::InvalidArgument(format!(
            "batch shapes disagree: {} buses for {} frames",
            buses.len(),
            input.len()
        )));
    }
    let mut out = BatchOut::with_capacity(input.len(), 2 * input.len());
    for (i, &bus) in buses.iter().enumerate() {
        let status = match input.frame(i) {
            None => DropReason::Malformed as u8,
            Some((id, payload)) => match gateway.step(bus, id, payload) {
                Ok(Some(forward)) if forward.link_down => STATUS_LINK_DOWN,
                Ok(Some(forward)) => {
                    for frame in forward.frames.frames() {
                        out.push(forward.bus, frame);
                    }
                    STATUS_FORWARDED
                }
                Ok(None) => STATUS_PENDING,
                Err(err) => status_of(&err),
            },
        };
        out.status.push(status);
    }
    Ok(out)
}
