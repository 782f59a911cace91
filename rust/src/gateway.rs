//! The gateway step: admit by rule, open with the inbound session, rewrite the id, seal with
//! the outbound session, and set or clear E. Every frame that does not come out is counted
//! by reason.
//!
//! **Cut-through of classic pairs.** A pair's data frame carries no freshness, so a gateway
//! that forwards only what it has verified holds it until its authenticator arrives, one frame
//! time later. With cut-through (the default) the gateway forwards the data frame at once,
//! re-encrypted under the outbound session without ever forming the plaintext:
//! `c' = c ⊕ KS_in(L, f) ⊕ KS_out(L', g)`, where `f` is the freshness value the inbound stream
//! expects next and `g` an outbound value *reserved* for it. The authenticator is forwarded
//! only when the pair verifies at exactly `f`; the outbound tag then covers `c'`, which is the
//! verified plaintext encrypted at `g`. Otherwise the whole pair is sealed anew with a fresh
//! value, and the far end, which never opens a data frame without its authenticator, replaces
//! the early data frame with the new one (PROTOCOL.md §8). No unverified plaintext leaves the
//! gateway, and every outbound keystream meets one inbound keystream only, so the early frame
//! reveals nothing the forwarded message would not.

use crate::error::{DropReason, Error, Result};
use crate::frame::{self, Frame, MAX_DATA_LEN, PAIR_MAX_PAYLOAD, SINGLE_MAX_PAYLOAD};
use crate::freshness::StreamMap;
use crate::ids::{self, Format, ENCRYPTION_FLAG, SECURE_BITS};
use crate::routing::{LinkId, RoutingTable, Rule};
use crate::session::{Sealed, Session};
use zeroize::Zeroize;

/// Batch status of a frame that came out (one or two frames on the destination bus).
pub const STATUS_FORWARDED: u8 = 0;
/// Batch status of a pair's data frame now waiting for its authenticator (it may have been
/// forwarded ahead: see cut-through).
pub const STATUS_PENDING: u8 = 1;
/// Batch status of a message admitted and opened but not sent: its destination link has no
/// session (see [`Forward::link_down`]). Not a drop (drop reasons are 2 and up, to 8).
pub const STATUS_LINK_DOWN: u8 = 9;

/// Reservations kept at once; the oldest is given up (its pair then goes whole).
const MAX_RESERVATIONS: usize = 64;
/// Logical ids the tap keeps a message of at once (only authenticated ones count).
const MAX_TAPPED: usize = 1024;

/// Messages opened on the way through, kept for the gateway's owner: the latest one of each
/// matching logical id since the owner last took them. The pack keeps its module table from
/// them, off the bridge's path.
struct Tap {
    match_id: u32,
    mask: u32,
    latest: StreamMap<Frame>,
}

/// What one step sends: frames on one destination bus.
#[derive(Clone, Copy, Debug)]
pub struct Forward {
    /// The destination bus.
    pub bus: u8,
    /// The frames to send there, in order.
    pub frames: Sealed,
    /// The message as it was opened (logical id, plaintext), for the gateway's owner: the
    /// pack controller keeps its module table from the same frames it bridges. `None` for a
    /// data frame forwarded ahead of its authenticator: nothing is verified yet.
    pub plain: Option<Frame>,
    /// The message was admitted and opened, but its destination link has no session (no one
    /// is there to receive it: the app is not connected, a module not linked again yet), so
    /// `frames` is empty. Counted as `link_down`, not as a drop: nothing was wrong with it.
    pub link_down: bool,
}

/// Counters of the gateway as a whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Frames stepped.
    pub received: u64,
    /// Messages forwarded.
    pub forwarded: u64,
    /// Pair data frames held for their authenticator (forwarded ahead or not).
    pub pending: u64,
    /// Pair data frames forwarded ahead of their authenticator (cut-through).
    pub ahead: u64,
    /// Pairs that verified after their data frame went ahead, but not at the predicted
    /// freshness (or their reservation was given up): sealed whole, anew.
    pub ahead_missed: u64,
    /// Messages admitted and opened but not sent, because their destination link has no
    /// session (see [`Forward::link_down`]). Not a drop.
    pub link_down: u64,
    /// Frames dropped, indexed by [`DropReason::index`].
    pub dropped: [u64; DropReason::ALL.len()],
}

/// An outbound freshness value set aside for one inbound pair (see cut-through above).
#[derive(Clone, Copy)]
struct Reservation {
    in_link: LinkId,
    in_id: u32,
    /// The inbound freshness value predicted for the pair.
    expected: u64,
    out_link: LinkId,
    out_id: u32,
    /// The outbound freshness value reserved for it: sealed at most once.
    freshness: u64,
    /// When it was made, in frames stepped: the oldest is given up first.
    made: u64,
}

/// The routing table and the sessions of every link it names.
pub struct Gateway {
    table: RoutingTable,
    sessions: Vec<Option<Session>>,
    stats: GatewayStats,
    cut_through: bool,
    /// At most one per outbound stream `(out_link, out_id)`.
    reservations: Vec<Reservation>,
    tap: Option<Tap>,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            table: RoutingTable::default(),
            sessions: Vec::new(),
            stats: GatewayStats::default(),
            cut_through: true,
            reservations: Vec::new(),
            tap: None,
        }
    }
}

impl Gateway {
    /// An empty gateway: no rules, so every frame is dropped. Cut-through is on.
    pub fn new() -> Gateway {
        Gateway::default()
    }

    /// Turn cut-through of classic pairs on (the default) or off (store and forward).
    pub fn set_cut_through(&mut self, on: bool) {
        self.cut_through = on;
        if !on {
            self.reservations.clear();
        }
    }

    /// Whether cut-through is on.
    pub fn cut_through(&self) -> bool {
        self.cut_through
    }

    /// Keep the latest message of every logical id matching `match_id` under `mask` that a
    /// session opened (plain traffic is never kept: its ids are anyone's to invent).
    pub fn set_tap(&mut self, match_id: u32, mask: u32) {
        self.tap = Some(Tap {
            match_id,
            mask,
            latest: StreamMap::default(),
        });
    }

    /// The messages the tap kept since the last call, by logical id.
    pub fn take_tapped(&mut self) -> Vec<Frame> {
        let Some(tap) = self.tap.as_mut() else {
            return Vec::new();
        };
        let mut frames: Vec<Frame> = tap.latest.drain().map(|(_, frame)| frame).collect();
        frames.sort_unstable_by_key(|frame| frame.id);
        frames
    }

    /// The routing table.
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// Append a routing rule.
    pub fn add_rule(&mut self, rule: Rule) -> Result<()> {
        self.table.push(rule)
    }

    /// Remove every routing rule.
    pub fn clear_rules(&mut self) {
        self.table.clear();
    }

    /// Install (or replace) the session of a link.
    pub fn install_session(&mut self, link: LinkId, session: Session) {
        self.forget_reservations(link);
        let index = usize::from(link);
        if self.sessions.len() <= index {
            self.sessions.resize_with(index + 1, || None);
        }
        self.sessions[index] = Some(session);
    }

    /// Remove a link's session; its traffic is then dropped as `no_session`.
    pub fn remove_session(&mut self, link: LinkId) -> Option<Session> {
        self.forget_reservations(link);
        self.sessions
            .get_mut(usize::from(link))
            .and_then(Option::take)
    }

    /// The session of a link, if one is installed.
    pub fn session(&self, link: LinkId) -> Option<&Session> {
        self.sessions
            .get(usize::from(link))
            .and_then(Option::as_ref)
    }

    /// The gateway's counters.
    pub fn stats(&self) -> GatewayStats {
        self.stats
    }

    fn session_mut(&mut self, link: LinkId) -> Result<&mut Session> {
        match self.sessions.get_mut(usize::from(link)) {
            Some(Some(session)) if !session.is_expired() => Ok(session),
            Some(Some(_)) => Err(Error::rejected(
                DropReason::NoSession,
                format!("link {link}: session torn down"),
            )),
            _ => Err(Error::rejected(
                DropReason::NoSession,
                format!("link {link}: no session"),
            )),
        }
    }

    /// Carry one frame received on `bus`. `Ok(None)` means the frame was a pair's data frame
    /// and is held for its authenticator; every error is a counted drop.
    pub fn step(&mut self, bus: u8, can_id: u32, data: &[u8]) -> Result<Option<Forward>> {
        self.stats.received += 1;
        let result = self.step_inner(bus, can_id, data);
        match &result {
            Ok(Some(forward)) if forward.plain.is_none() => {
                self.stats.pending += 1;
                self.stats.ahead += 1;
            }
            Ok(Some(forward)) if forward.link_down => self.stats.link_down += 1,
            Ok(Some(_)) => self.stats.forwarded += 1,
            Ok(None) => self.stats.pending += 1,
            Err(err) => self.stats.dropped[err.drop_reason().index()] += 1,
        }
        result
    }

    fn step_inner(&mut self, bus: u8, can_id: u32, data: &[u8]) -> Result<Option<Forward>> {
        if ids::check_extended(can_id).is_err() || data.len() > MAX_DATA_LEN {
            return Err(Error::rejected(
                DropReason::Malformed,
                "not a CAN frame: id over 29 bits or more than 64 data bytes",
            ));
        }
        let rule = *self.table.route(bus, can_id).ok_or_else(|| {
            Error::rejected(
                DropReason::NoRoute,
                format!("no rule admits 0x{can_id:08X} from bus {bus}"),
            )
        })?;
        let plain = match rule.inbound {
            Some(link) => match self.session_mut(link)?.open(can_id, data)? {
                Some(frame) => {
                    self.keep_tapped(&frame);
                    frame
                }
                None => return Ok(self.forward_ahead(&rule, can_id, data)),
            },
            None => {
                if can_id & ENCRYPTION_FLAG != 0 {
                    // Sealed by a link this route has no session for: a module the pack holds
                    // no keys for yet (its flash was lost, or it was paired elsewhere).
                    return Err(Error::rejected(
                        DropReason::NoSession,
                        format!("sealed frame 0x{can_id:08X} on a route without a link"),
                    ));
                }
                if can_id & SECURE_BITS != 0 {
                    return Err(Error::rejected(
                        DropReason::Malformed,
                        format!("plain frame 0x{can_id:08X} with format bits set"),
                    ));
                }
                Frame::new(can_id, data)?
            }
        };
        let out_id = rule.rewrite.apply(plain.id);
        if let Some(link) = rule.outbound {
            if self.session_mut(link).is_err() {
                // No one to seal for: the inbound side is done (opened, tapped), and nothing
                // goes out. Counted apart from drops, or an idle pack's counters would grow
                // for every module report while no app is connected.
                return Ok(Some(Forward {
                    bus: rule.dst_bus,
                    frames: Sealed::empty(),
                    plain: Some(plain),
                    link_down: true,
                }));
            }
        }
        let frames = match rule.outbound {
            Some(link) => {
                let reserved = self.claim_reservation(&rule, &plain, link, out_id);
                let mut sealed = Sealed::empty();
                self.session_mut(link)?
                    .seal_at(out_id, plain.payload(), rule.fd, reserved, &mut sealed)
                    .map_err(|e| Error::rejected(e.drop_reason(), e.to_string()))?;
                if reserved.is_some() {
                    // The data frame went ahead: only the authenticator is left to send.
                    sealed = Sealed::one(sealed.frames()[1]);
                }
                sealed
            }
            None => {
                if !rule.fd && usize::from(plain.len) > PAIR_MAX_PAYLOAD {
                    return Err(Error::rejected(
                        DropReason::Malformed,
                        format!("{} bytes do not fit a classic frame", plain.len),
                    ));
                }
                Sealed::one(Frame {
                    id: out_id,
                    ..plain
                })
            }
        };
        Ok(Some(Forward {
            bus: rule.dst_bus,
            frames,
            plain: Some(plain),
            link_down: false,
        }))
    }

    /// Cut-through of a data frame its inbound session now holds: the frame re-encrypted for
    /// the outbound stream, or `None` (it waits, as in store and forward) when the rule does
    /// not reseal a classic pair, the stream has no accepted message yet to predict from, or
    /// another inbound stream holds the outbound stream's reservation.
    fn forward_ahead(&mut self, rule: &Rule, can_id: u32, data: &[u8]) -> Option<Forward> {
        let (Some(in_link), Some(out_link)) = (rule.inbound, rule.outbound) else {
            return None;
        };
        if !self.cut_through || rule.fd || in_link == out_link {
            return None;
        }
        let in_id = ids::logical(can_id);
        let out_id = rule.rewrite.apply(in_id);
        // Only streams that already verified a message: an attacker inventing ids cannot
        // make the outbound session start counters (or reservations) for them.
        let expected = self.session_mut(in_link).ok()?.rx_expected(in_id)?;
        let freshness = self.reserve(in_link, in_id, expected, out_link, out_id)?;
        let len = data.len();
        let mut keystreams = [0u8; MAX_DATA_LEN];
        self.session(in_link)?
            .pair_keystream_xor(true, in_id, expected, len, &mut keystreams);
        self.session(out_link)?
            .pair_keystream_xor(false, out_id, freshness, len, &mut keystreams);
        let mut frame = Frame {
            id: out_id | ids::ENCRYPTION_FLAG | Format::PairData.bits(),
            len: frame::len_byte(len),
            data: [0; MAX_DATA_LEN],
        };
        for ((out, c), k) in frame.data.iter_mut().zip(data).zip(&keystreams) {
            *out = c ^ k;
        }
        keystreams.zeroize();
        Some(Forward {
            bus: rule.dst_bus,
            frames: Sealed::one(frame),
            plain: None,
            link_down: false,
        })
    }

    /// The outbound value reserved for the pair `(in_link, in_id)` expected at `expected`:
    /// the same one for every data frame of that pair (so an outbound keystream only ever
    /// meets one inbound keystream), a new one once the stream has moved on.
    fn reserve(
        &mut self,
        in_link: LinkId,
        in_id: u32,
        expected: u64,
        out_link: LinkId,
        out_id: u32,
    ) -> Option<u64> {
        let made = self.stats.received;
        let slot = self
            .reservations
            .iter()
            .position(|r| r.out_link == out_link && r.out_id == out_id);
        if let Some(index) = slot {
            let r = &mut self.reservations[index];
            if (r.in_link, r.in_id) != (in_link, in_id) {
                // Another stream is being carried onto this one: it keeps the reservation,
                // so alternating data frames cannot burn outbound counters.
                return None;
            }
            if r.expected == expected {
                return Some(r.freshness);
            }
            self.reservations.swap_remove(index);
        } else if self.reservations.len() == MAX_RESERVATIONS {
            let oldest = (0..self.reservations.len())
                .min_by_key(|&i| self.reservations[i].made)
                .unwrap_or(0);
            self.reservations.swap_remove(oldest);
        }
        let freshness = self.session_mut(out_link).ok()?.reserve(out_id).ok()?;
        self.reservations.push(Reservation {
            in_link,
            in_id,
            expected,
            out_link,
            out_id,
            freshness,
            made,
        });
        Some(freshness)
    }

    /// Before sealing on `(out_link, out_id)`: take the reservation when it was made for this
    /// very message (it verified at the predicted freshness), and give any other one up, since
    /// the seal moves the outbound stream past it.
    fn claim_reservation(
        &mut self,
        rule: &Rule,
        plain: &Frame,
        out_link: LinkId,
        out_id: u32,
    ) -> Option<u64> {
        let index = self
            .reservations
            .iter()
            .position(|r| r.out_link == out_link && r.out_id == out_id)?;
        let r = self.reservations.swap_remove(index);
        let in_link = rule.inbound?;
        let ours = (r.in_link, r.in_id) == (in_link, plain.id);
        // The pair just verified, so its inbound stream now expects the value after it.
        let verified_at = self
            .session(in_link)
            .and_then(|s| s.rx_expected(plain.id))
            .and_then(|next| next.checked_sub(1));
        if ours
            && !rule.fd
            && verified_at == Some(r.expected)
            && usize::from(plain.len) > SINGLE_MAX_PAYLOAD
        {
            return Some(r.freshness);
        }
        if ours {
            self.stats.ahead_missed += 1;
        }
        None
    }

    fn keep_tapped(&mut self, frame: &Frame) {
        if let Some(tap) = self.tap.as_mut() {
            let room = tap.latest.len() < MAX_TAPPED || tap.latest.contains_key(&frame.id);
            if frame.id & tap.mask == tap.match_id & tap.mask && room {
                tap.latest.insert(frame.id, *frame);
            }
        }
    }

    /// Give up every reservation that involves `link` (its session is being replaced).
    fn forget_reservations(&mut self, link: LinkId) {
        self.reservations
            .retain(|r| r.in_link != link && r.out_link != link);
    }

    /// Give up the reservation of an outbound stream the gateway seals on by itself.
    fn release_stream(&mut self, link: LinkId, logical_id: u32) {
        self.reservations
            .retain(|r| (r.out_link, r.out_id) != (link, logical_id));
    }

    /// Seal a frame of the gateway's own (a status or an alert) with a link's session.
    pub fn seal_frame(
        &mut self,
        link: LinkId,
        can_id: u32,
        payload: &[u8],
        fd: bool,
    ) -> Result<Sealed> {
        self.release_stream(link, ids::logical(can_id));
        self.session_mut(link)?.seal(can_id, payload, fd)
    }

    /// Seal a message with a link's session (see `Session::seal_message`).
    pub fn seal_message(&mut self, link: LinkId, stream: u32, payload: &[u8]) -> Result<Vec<u8>> {
        self.release_stream(link, stream);
        self.session_mut(link)?.seal_message(stream, payload)
    }

    /// Open a message with a link's session (see `Session::open_message`).
    pub fn open_message(&mut self, link: LinkId, stream: u32, data: &[u8]) -> Result<Vec<u8>> {
        self.session_mut(link)?.open_message(stream, data)
    }
}
