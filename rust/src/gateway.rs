//! The gateway step: admit by rule, open with the inbound session, rewrite the id, seal with
//! the outbound session, and set or clear E. Every frame that does not come out is counted
//! by reason.

use crate::error::{DropReason, Error, Result};
use crate::frame::{Frame, MAX_DATA_LEN, PAIR_MAX_PAYLOAD};
use crate::ids::{self, SECURE_BITS};
use crate::routing::{LinkId, RoutingTable, Rule};
use crate::session::{Sealed, Session};

/// Batch status of a frame that came out (one or two frames on the destination bus).
pub const STATUS_FORWARDED: u8 = 0;
/// Batch status of a pair's data frame now waiting for its authenticator.
pub const STATUS_PENDING: u8 = 1;

/// What one step sends: frames on one destination bus.
#[derive(Clone, Copy, Debug)]
pub struct Forward {
    /// The destination bus.
    pub bus: u8,
    /// The frames to send there, in order.
    pub frames: Sealed,
    /// The message as it was opened (logical id, plaintext), for the gateway's owner: the
    /// pack controller keeps its module table from the same frames it bridges.
    pub plain: Frame,
}

/// Counters of the gateway as a whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Frames stepped.
    pub received: u64,
    /// Messages forwarded.
    pub forwarded: u64,
    /// Pair data frames held for their authenticator.
    pub pending: u64,
    /// Frames dropped, indexed by [`DropReason::index`].
    pub dropped: [u64; DropReason::ALL.len()],
}

/// The routing table and the sessions of every link it names.
#[derive(Default)]
pub struct Gateway {
    table: RoutingTable,
    sessions: Vec<Option<Session>>,
    stats: GatewayStats,
}

impl Gateway {
    /// An empty gateway: no rules, so every frame is dropped.
    pub fn new() -> Gateway {
        Gateway::default()
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
        let index = usize::from(link);
        if self.sessions.len() <= index {
            self.sessions.resize_with(index + 1, || None);
        }
        self.sessions[index] = Some(session);
    }

    /// Remove a link's session; its traffic is then dropped as `no_session`.
    pub fn remove_session(&mut self, link: LinkId) -> Option<Session> {
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
                Some(frame) => frame,
                None => return Ok(None),
            },
            None => {
                if can_id & SECURE_BITS != 0 {
                    return Err(Error::rejected(
                        DropReason::Malformed,
                        format!("secured frame 0x{can_id:08X} on a plain route"),
                    ));
                }
                Frame::new(can_id, data)?
            }
        };
        let out_id = rule.rewrite.apply(plain.id);
        let frames = match rule.outbound {
            Some(link) => self
                .session_mut(link)?
                .seal(out_id, plain.payload(), rule.fd)
                .map_err(|e| Error::rejected(e.drop_reason(), e.to_string()))?,
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
            plain,
        }))
    }

    /// Seal a frame of the gateway's own (a status or an alert) with a link's session.
    pub fn seal_frame(
        &mut self,
        link: LinkId,
        can_id: u32,
        payload: &[u8],
        fd: bool,
    ) -> Result<Sealed> {
        self.session_mut(link)?.seal(can_id, payload, fd)
    }

    /// Seal a message with a link's session (see `Session::seal_message`).
    pub fn seal_message(&mut self, link: LinkId, stream: u32, payload: &[u8]) -> Result<Vec<u8>> {
        self.session_mut(link)?.seal_message(stream, payload)
    }

    /// Open a message with a link's session (see `Session::open_message`).
    pub fn open_message(&mut self, link: LinkId, stream: u32, data: &[u8]) -> Result<Vec<u8>> {
        self.session_mut(link)?.open_message(stream, data)
    }
}
