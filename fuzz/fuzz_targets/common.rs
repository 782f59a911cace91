//! What the fuzz targets share: fixed keys, a pool of genuine traffic, and the operations an
//! attacker applies to it.
//!
//! Each target replays a list of [`Op`]s against a receiver. An op either delivers a genuine
//! frame from the pool (so the fuzzer reaches the paths behind a good tag), a genuine frame
//! with a change (a byte flipped, an id bit flipped, truncated or extended), or raw bytes.
//! The invariant every target checks: whatever the receiver delivers is a genuine message
//! from the pool, delivered at most once.

#![allow(dead_code)]

use _core::{Frame, LinkKey, Session, SessionLimits};
use arbitrary::Arbitrary;

pub const A: &str = "COMP-fuzz-app";
pub const B: &str = "COMP-fuzz-pack";

pub fn half(seed: u8) -> Vec<u8> {
    (0..64u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Both ends of one session: (sender, receiver).
pub fn pair(limits: SessionLimits) -> (Session, Session) {
    let link = LinkKey::derive(&half(1), A, &half(2), B, None).expect("fixed ids are valid");
    (
        Session::new(&link, A, B, &[0xA5; 16], &[0x5B; 16], limits).expect("fixed nonces"),
        Session::new(&link, B, A, &[0x5B; 16], &[0xA5; 16], limits).expect("fixed nonces"),
    )
}

/// What an attacker does with one frame of the pool (or without one).
#[derive(Arbitrary, Debug)]
pub enum Op {
    /// Deliver frame `frame` of message `message` as it was sent.
    Genuine { message: u8, frame: u8 },
    /// Deliver it with one byte xor-ed.
    FlipByte {
        message: u8,
        frame: u8,
        at: u8,
        xor: u8,
    },
    /// Deliver it with one bit of the 29-bit id flipped.
    FlipIdBit { message: u8, frame: u8, bit: u8 },
    /// Deliver its first `len` bytes.
    Truncate { message: u8, frame: u8, len: u8 },
    /// Deliver it with bytes appended (up to the 64 bytes of a CAN FD frame).
    Extend {
        message: u8,
        frame: u8,
        tail: Vec<u8>,
    },
    /// Deliver frame bytes of the attacker's own making.
    Raw { id: u32, data: Vec<u8> },
}

/// One genuine message: its logical id, plaintext and frames on the wire.
pub struct Genuine {
    pub logical_id: u32,
    pub plain: Vec<u8>,
    pub frames: Vec<Frame>,
    /// A sealed message (`seal_message`) as one blob; empty for frames.
    pub blob: Vec<u8>,
}

impl Genuine {
    /// Seal `plain` on `logical_id` with `session`: one message of the pool.
    pub fn seal(session: &mut Session, logical_id: u32, plain: Vec<u8>, fd: bool) -> Genuine {
        let sealed = session.seal(logical_id, &plain, fd).expect("pool seals");
        Genuine {
            logical_id,
            plain,
            frames: sealed.frames().to_vec(),
            blob: Vec::new(),
        }
    }
}

/// The frame an op delivers: (id, bytes).
pub fn frame_of(op: &Op, pool: &[Genuine]) -> Option<(u32, Vec<u8>)> {
    let pick = |message: u8, frame: u8| -> Option<Frame> {
        if pool.is_empty() {
            return None;
        }
        let m = &pool[usize::from(message) % pool.len()];
        Some(m.frames[usize::from(frame) % m.frames.len()])
    };
    match op {
        Op::Genuine { message, frame } => {
            pick(*message, *frame).map(|f| (f.id, f.payload().to_vec()))
        }
        Op::FlipByte {
            message,
            frame,
            at,
            xor,
        } => pick(*message, *frame).map(|f| {
            let mut data = f.payload().to_vec();
            if !data.is_empty() {
                let i = usize::from(*at) % data.len();
                data[i] ^= *xor;
            }
            (f.id, data)
        }),
        Op::FlipIdBit {
            message,
            frame,
            bit,
        } => pick(*message, *frame).map(|f| (f.id ^ (1 << (bit % 29)), f.payload().to_vec())),
        Op::Truncate {
            message,
            frame,
            len,
        } => pick(*message, *frame).map(|f| {
            let data = f.payload();
            (f.id, data[..usize::from(*len).min(data.len())].to_vec())
        }),
        Op::Extend {
            message,
            frame,
            tail,
        } => pick(*message, *frame).map(|f| {
            let mut data = f.payload().to_vec();
            data.extend(tail.iter().take(64usize.saturating_sub(data.len())));
            (f.id, data)
        }),
        Op::Raw { id, data } => Some((*id, data.iter().copied().take(64).collect())),
    }
}

/// Checks that a delivered (logical id, plaintext) is a genuine message not delivered before.
pub struct Ledger {
    delivered: Vec<bool>,
}

impl Ledger {
    pub fn new(pool: &[Genuine]) -> Ledger {
        Ledger {
            delivered: vec![false; pool.len()],
        }
    }

    pub fn deliver(&mut self, pool: &[Genuine], logical_id: u32, plain: &[u8]) {
        let found = pool.iter().enumerate().position(|(i, m)| {
            !self.delivered[i] && m.logical_id == logical_id && m.plain == plain
        });
        match found {
            Some(i) => self.delivered[i] = true,
            None => panic!(
                "delivered a message that was never sent, or twice: id 0x{logical_id:08X}, {} bytes",
                plain.len()
            ),
        }
    }
}
