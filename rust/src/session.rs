//! A session: one link's per-direction keys for one run of the handshake, with the freshness
//! state, the classic pair reassembly and the verification-failure budget.
//!
//! Both peers derive the same two direction keys from the link key, their component ids and
//! the two nonces they exchanged; `local → peer` seals, `peer → local` opens. Fresh nonces
//! make fresh keys, so counters restart at zero every session without ever reusing a
//! (key, counter block) pair, across reboots and key recovery alike.

use crate::error::{DropReason, Error, Result};
use crate::frame::{
    self, AheadCache, Frame, Header, FD_MAX_PAYLOAD, PAIR_MAX_PAYLOAD, SINGLE_MAX_PAYLOAD,
};
use crate::freshness::{RxWindow, TxCounters};
use crate::ids::{self, Format, ENCRYPTION_FLAG};
use crate::keys::{check_component_id, check_nonce, DirectionKeys, LinkKey};
use crate::message;

/// Verification failures a session tolerates; the one that reaches it tears the session down.
pub const DEFAULT_MAX_FAILURES: u32 = 16;
/// How many later frames of the same session a pair's data frame waits for its authenticator.
pub const DEFAULT_PAIR_WINDOW: u32 = 32;
/// Data frames waiting for their authenticator at once, per session; the oldest is dropped.
pub const MAX_PENDING_PAIRS: usize = 32;

/// Tunable limits of a session.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Verification failures before the session is torn down.
    pub max_failures: u32,
    /// How many later frames of this session a pair's data frame waits for its
    /// authenticator. Counted in frames, not time, so that the frame path needs no clock and
    /// a capture replays identically.
    pub pair_window: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_failures: DEFAULT_MAX_FAILURES,
            pair_window: DEFAULT_PAIR_WINDOW,
        }
    }
}

/// What a session has done, for the app's security report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Messages sealed.
    pub sealed: u64,
    /// Messages opened and delivered.
    pub opened: u64,
    /// Frames dropped, indexed by [`DropReason::index`].
    pub dropped: [u64; DropReason::ALL.len()],
    /// Verification failures counted against the budget.
    pub failures: u32,
}

/// The frames one seal produces: one, or two for the classic pair form.
#[derive(Clone, Copy, Debug)]
pub struct Sealed {
    frames: [Frame; 2],
    count: usize,
}

impl Sealed {
    /// The frames to send, in order.
    pub fn frames(&self) -> &[Frame] {
        &self.frames[..self.count]
    }
}

struct PendingData {
    logical_id: u32,
    ciphertext: [u8; PAIR_MAX_PAYLOAD],
    len: usize,
    /// The session's frame number when the data frame arrived.
    arrived: u64,
}

/// One session of one link, as seen from the local end.
pub struct Session {
    local_id: String,
    peer_id: String,
    link_fingerprint: String,
    tx_keys: DirectionKeys,
    rx_keys: DirectionKeys,
    tx_counters: TxCounters,
    rx_window: RxWindow,
    tx_ahead: AheadCache,
    rx_ahead: AheadCache,
    pending: Vec<PendingData>,
    limits: SessionLimits,
    stats: SessionStats,
    /// Frames handed to `open` so far: the clock of the pair window.
    frames_received: u64,
    expired: bool,
}

impl Session {
    /// Derive a session from the link key, both component ids and both 16-byte nonces.
    pub fn new(
        link: &LinkKey,
        local_id: &str,
        peer_id: &str,
        local_nonce: &[u8],
        peer_nonce: &[u8],
        limits: SessionLimits,
    ) -> Result<Session> {
        check_component_id(local_id)?;
        check_component_id(peer_id)?;
        if local_id == peer_id {
            return Err(Error::InvalidArgument(
                "a session needs two different component ids".into(),
            ));
        }
        check_nonce("local nonce", local_nonce)?;
        check_nonce("peer nonce", peer_nonce)?;
        if limits.max_failures == 0 {
            return Err(Error::InvalidArgument(
                "max_failures must be at least 1".into(),
            ));
        }
        if limits.pair_window == 0 {
            return Err(Error::InvalidArgument(
                "pair_window must be at least 1".into(),
            ));
        }
        Ok(Session {
            local_id: local_id.to_owned(),
            peer_id: peer_id.to_owned(),
            link_fingerprint: link.fingerprint().to_owned(),
            tx_keys: link.direction_keys(local_id, peer_id, local_nonce, peer_nonce)?,
            rx_keys: link.direction_keys(peer_id, local_id, peer_nonce, local_nonce)?,
            tx_counters: TxCounters::default(),
            rx_window: RxWindow::default(),
            tx_ahead: AheadCache::default(),
            rx_ahead: AheadCache::default(),
            pending: Vec::new(),
            limits,
            stats: SessionStats::default(),
            frames_received: 0,
            expired: false,
        })
    }

    /// The local component id.
    pub fn local_id(&self) -> &str {
        &self.local_id
    }

    /// The peer's component id.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The link key's fingerprint.
    pub fn link_fingerprint(&self) -> &str {
        &self.link_fingerprint
    }

    /// Whether the failure budget tore this session down.
    pub fn is_expired(&self) -> bool {
        self.expired
    }

    /// Counters of what this session did.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    fn check_alive(&self) -> Result<()> {
        if self.expired {
            return Err(Error::SessionExpired(format!(
                "the session {} -> {} was torn down after {} verification failures",
                self.local_id, self.peer_id, self.stats.failures
            )));
        }
        Ok(())
    }

    /// Seal `payload` for the logical id `can_id` (E and the format bits clear). Classic
    /// payloads of up to 3 bytes take the single-frame form, 4 to 8 bytes the pair form;
    /// `fd` selects the FD form (up to 51 bytes).
    pub fn seal(&mut self, can_id: u32, payload: &[u8], fd: bool) -> Result<Sealed> {
        let mut sealed = Sealed::empty();
        self.seal_into(can_id, payload, fd, &mut sealed)?;
        Ok(sealed)
    }

    /// [`Session::seal`] into a caller's buffer: the per-frame binding avoids moving the
    /// 150-byte result around.
    pub fn seal_into(
        &mut self,
        can_id: u32,
        payload: &[u8],
        fd: bool,
        sealed: &mut Sealed,
    ) -> Result<()> {
        self.seal_at(can_id, payload, fd, None, sealed)
    }

    /// Seal with the freshness value `reserved` (taken earlier by [`Session::reserve`]), or
    /// the stream's next one when `None`. A reserved value must be sealed at most once: the
    /// gateway's cut-through (see `gateway.rs`) is the one caller.
    pub(crate) fn seal_at(
        &mut self,
        can_id: u32,
        payload: &[u8],
        fd: bool,
        reserved: Option<u64>,
        sealed: &mut Sealed,
    ) -> Result<()> {
        self.check_alive()?;
        let logical_id = ids::check_logical(can_id)?;
        let n = payload.len();
        let format = if fd {
            if n > FD_MAX_PAYLOAD {
                return Err(Error::InvalidArgument(format!(
                    "a secured FD frame carries at most {FD_MAX_PAYLOAD} bytes, got {n}"
                )));
            }
            Format::Fd
        } else if n <= SINGLE_MAX_PAYLOAD {
            Format::Single
        } else if n <= PAIR_MAX_PAYLOAD {
            Format::PairData
        } else {
            return Err(Error::InvalidArgument(format!(
                "a classic CAN frame carries at most 8 bytes, got {n}"
            )));
        };
        let freshness = match reserved {
            Some(value) => value,
            None => self.tx_counters.take(logical_id)?,
        };
        let mut ct = frame::padded(payload);
        let header = Header {
            code: frame::mac_code(format),
            logical_id,
            freshness,
            len: n,
        };
        let tag = self
            .tx_keys
            .encrypt_and_tag(&mut self.tx_ahead, &header, &mut ct);
        let id = logical_id | ENCRYPTION_FLAG;
        sealed.frames[0].id = id | format.bits();
        sealed.count = 1;
        match format {
            Format::Single => frame::write_single(&ct, n, freshness, &tag, &mut sealed.frames[0]),
            Format::Fd => frame::write_fd(&ct, n, freshness, &tag, &mut sealed.frames[0]),
            Format::PairData | Format::PairAuth => {
                sealed.frames[0].data = ct;
                sealed.frames[0].len = frame::len_byte(n);
                sealed.frames[1].id = id | Format::PairAuth.bits();
                frame::write_pair_auth(freshness, &tag, &mut sealed.frames[1]);
                sealed.count = 2;
            }
        }
        self.stats.sealed += 1;
        Ok(())
    }

    /// Take the next freshness value of `logical_id` for a later [`Session::seal_at`].
    pub(crate) fn reserve(&mut self, logical_id: u32) -> Result<u64> {
        self.check_alive()?;
        self.tx_counters.take(ids::check_logical(logical_id)?)
    }

    /// The freshness value the next message on `logical_id` is expected to carry, once a
    /// message on it has been accepted in this session (`None` before: nothing to predict).
    pub(crate) fn rx_expected(&self, logical_id: u32) -> Option<u64> {
        self.rx_window.expected(logical_id)
    }

    /// XOR into `buf[..len]` the CTR keystream of a classic pair of `len` bytes on
    /// `logical_id` at `freshness`: the receiving direction's (`rx`) or the sending one's.
    pub(crate) fn pair_keystream_xor(
        &self,
        rx: bool,
        logical_id: u32,
        freshness: u64,
        len: usize,
        buf: &mut frame::Padded,
    ) {
        let header = Header {
            code: frame::mac_code(Format::PairData),
            logical_id,
            freshness,
            len,
        };
        let keys = if rx { &self.rx_keys } else { &self.tx_keys };
        keys.keystream_xor(&header, buf);
    }

    /// Seal a message of up to 4096 bytes on `stream` (a logical id naming the channel, e.g.
    /// the ISO-TP id it travels on); see `message.rs` for the format.
    pub fn seal_message(&mut self, stream: u32, payload: &[u8]) -> Result<Vec<u8>> {
        self.check_alive()?;
        let stream = ids::check_logical(stream)?;
        message::check_size(payload.len())?;
        let freshness = self.tx_counters.take(stream)?;
        self.stats.sealed += 1;
        Ok(message::seal(&self.tx_keys, stream, freshness, payload))
    }

    /// Open a sealed message received on `stream`: the payload, or the reason it is dropped
    /// (a bad tag spends the failure budget, as for frames).
    pub fn open_message(&mut self, stream: u32, data: &[u8]) -> Result<Vec<u8>> {
        let result = self.open_message_inner(stream, data);
        match &result {
            Ok(_) => self.stats.opened += 1,
            Err(err) => self.stats.dropped[err.drop_reason().index()] += 1,
        }
        result
    }

    fn open_message_inner(&mut self, stream: u32, data: &[u8]) -> Result<Vec<u8>> {
        self.check_alive()?;
        let stream = ids::check_logical(stream)?;
        let freshness = message::freshness_of(data)?;
        match message::open(&self.rx_keys, stream, data) {
            Some(plain) if self.rx_window.is_fresh(stream, freshness) => {
                self.rx_window.accept(stream, freshness);
                Ok(plain)
            }
            Some(_) => Err(Error::rejected(
                DropReason::Replay,
                format!("message on stream 0x{stream:08X} replays freshness value {freshness}"),
            )),
            None => Err(self.count_failure(stream)),
        }
    }

    /// Spend one verification failure; tears the session down at the budget's end.
    fn count_failure(&mut self, logical_id: u32) -> Error {
        self.stats.failures += 1;
        if self.stats.failures >= self.limits.max_failures {
            self.expired = true;
            self.pending.clear();
        }
        Error::rejected(
            DropReason::BadTag,
            format!(
                "authentication failed for 0x{logical_id:08X} ({} of {} tolerated failures)",
                self.stats.failures, self.limits.max_failures
            ),
        )
    }

    /// Open one received frame. Returns the plaintext frame (logical id, E clear), or `None`
    /// when the frame is a pair's data frame now waiting for its authenticator.
    pub fn open(&mut self, can_id: u32, data: &[u8]) -> Result<Option<Frame>> {
        let mut out = Frame {
            id: 0,
            len: 0,
            data: [0; frame::MAX_DATA_LEN],
        };
        Ok(self.open_into(can_id, data, &mut out)?.then_some(out))
    }

    /// [`Session::open`] into a caller's frame: true when a message was delivered into `out`,
    /// false when the frame is a pair's data frame now waiting. The per-frame binding avoids
    /// moving the result around.
    pub fn open_into(&mut self, can_id: u32, data: &[u8], out: &mut Frame) -> Result<bool> {
        self.frames_received += 1;
        let result = self.open_inner(can_id, data, out);
        match &result {
            Ok(true) => self.stats.opened += 1,
            Ok(false) => {}
            Err(err) => {
                let reason = err.drop_reason();
                self.stats.dropped[reason.index()] += 1;
            }
        }
        result
    }

    fn open_inner(&mut self, can_id: u32, data: &[u8], out: &mut Frame) -> Result<bool> {
        self.check_alive()?;
        if ids::check_extended(can_id).is_err() || data.len() > frame::MAX_DATA_LEN {
            return Err(Error::rejected(
                DropReason::Malformed,
                "not a CAN frame: id over 29 bits or more than 64 data bytes",
            ));
        }
        if !ids::is_encrypted(can_id) {
            return Err(Error::rejected(
                DropReason::Downgrade,
                format!("plain frame 0x{can_id:08X} on a secured link"),
            ));
        }
        let logical_id = ids::logical(can_id);
        let format = Format::of(can_id);
        match format {
            Format::Single => {
                let parsed = frame::parse_single(data)?;
                self.verify_and_decrypt(format, logical_id, &parsed, out)?;
                Ok(true)
            }
            Format::Fd => {
                let parsed = frame::parse_fd(data)?;
                self.verify_and_decrypt(format, logical_id, &parsed, out)?;
                Ok(true)
            }
            Format::PairData => {
                frame::check_pair_data(data)?;
                self.hold_pair_data(logical_id, data);
                Ok(false)
            }
            Format::PairAuth => {
                let (freshness_low, tag) = frame::parse_pair_auth(data)?;
                let index = self
                    .pending
                    .iter()
                    .position(|p| p.logical_id == logical_id)
                    .ok_or_else(|| {
                        Error::rejected(
                            DropReason::Unpaired,
                            format!("authenticator 0x{can_id:08X} has no data frame"),
                        )
                    })?;
                let pending = &self.pending[index];
                if self.frames_received - pending.arrived > u64::from(self.limits.pair_window) {
                    self.pending.swap_remove(index);
                    return Err(Error::rejected(
                        DropReason::Unpaired,
                        format!("authenticator 0x{can_id:08X} came after the pair window"),
                    ));
                }
                let (ciphertext, len) = (pending.ciphertext, pending.len);
                let parsed = frame::Parsed {
                    ciphertext: &ciphertext[..len],
                    freshness_low,
                    freshness_bits: 16,
                    tag,
                };
                // A failed authenticator leaves the data frame waiting: a forged
                // authenticator must not be able to discard the genuine message.
                self.verify_and_decrypt(format, logical_id, &parsed, out)?;
                self.pending.swap_remove(index);
                Ok(true)
            }
        }
    }

    fn hold_pair_data(&mut self, logical_id: u32, data: &[u8]) {
        let mut held = PendingData {
            logical_id,
            ciphertext: [0; PAIR_MAX_PAYLOAD],
            len: data.len(),
            arrived: self.frames_received,
        };
        held.ciphertext[..data.len()].copy_from_slice(data);
        if let Some(slot) = self.pending.iter_mut().find(|p| p.logical_id == logical_id) {
            // The previous data frame on this id lost its authenticator.
            *slot = held;
            self.stats.dropped[DropReason::Unpaired.index()] += 1;
            return;
        }
        if self.pending.len() == MAX_PENDING_PAIRS {
            let oldest = (0..self.pending.len())
                .min_by_key(|&i| self.pending[i].arrived)
                .unwrap_or(0);
            self.pending.swap_remove(oldest);
            self.stats.dropped[DropReason::Unpaired.index()] += 1;
        }
        self.pending.push(held);
    }

    fn verify_and_decrypt(
        &mut self,
        format: Format,
        logical_id: u32,
        parsed: &frame::Parsed<'_>,
        out: &mut Frame,
    ) -> Result<()> {
        let (low, bits) = (parsed.freshness_low, parsed.freshness_bits);
        let n = parsed.ciphertext.len();
        let mut buf = frame::padded(parsed.ciphertext);
        let header_at = |freshness| Header {
            code: frame::mac_code(format),
            logical_id,
            freshness,
            len: n,
        };
        let candidate = self.rx_window.candidate(logical_id, low, bits);
        if let Some(freshness) = candidate {
            let header = header_at(freshness);
            if self
                .rx_keys
                .verify_and_decrypt(&mut self.rx_ahead, &header, &mut buf, parsed.tag)
            {
                self.rx_window.accept(logical_id, freshness);
                out.id = logical_id;
                out.len = frame::len_byte(n);
                out.data = buf;
                return Ok(());
            }
        }
        // Tell a replay (a genuine frame whose counter was already used) from a forgery.
        if let Some(old) = self.rx_window.replay_candidate(logical_id, low, bits) {
            if self.rx_keys.verify(&header_at(old), &buf, parsed.tag) {
                return Err(Error::rejected(
                    DropReason::Replay,
                    format!("frame 0x{logical_id:08X} replays freshness value {old}"),
                ));
            }
        }
        Err(self.count_failure(logical_id))
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Session(local={:?}, peer={:?}, link=<redacted, fingerprint={}>, expired={})",
            self.local_id, self.peer_id, self.link_fingerprint, self.expired
        )
    }
}

impl Sealed {
    /// Room for a seal's frames, to be filled by [`Session::seal_into`].
    pub fn empty() -> Sealed {
        let blank = Frame {
            id: 0,
            len: 0,
            data: [0; frame::MAX_DATA_LEN],
        };
        Sealed {
            frames: [blank, blank],
            count: 0,
        }
    }

    /// A single frame passed through unsealed.
    pub fn one(frame: Frame) -> Sealed {
        Sealed {
            frames: [frame, frame],
            count: 1,
        }
    }
}
