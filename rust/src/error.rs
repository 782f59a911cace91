//! The one error type of the frame path, and the reasons a frame is dropped.
//!
//! Every failure in the crate is an [`Error`]. The bindings map each variant to one class of
//! the Python hierarchy in `modbatt.errors` (see `py/errors.rs`); the gateway and the batch
//! calls report the same failures as a [`DropReason`] per frame instead.

use std::fmt;

/// Why a frame was not delivered. The numeric values are the batch APIs' status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// No routing rule admits the frame (default deny).
    NoRoute = 2,
    /// The authentication tag did not verify.
    BadTag = 3,
    /// The freshness value is not newer than the last accepted one on its stream.
    Replay = 4,
    /// A plain (E = 0) frame arrived where the link is secured.
    Downgrade = 5,
    /// The frame breaks the wire format (length, padding, reserved bits, size limits).
    Malformed = 6,
    /// One frame of a classic pair arrived without its partner, or too late.
    Unpaired = 7,
    /// The link has no session, or its session was torn down.
    NoSession = 8,
}

impl DropReason {
    /// Every reason, in status-code order.
    pub const ALL: [DropReason; 7] = [
        DropReason::NoRoute,
        DropReason::BadTag,
        DropReason::Replay,
        DropReason::Downgrade,
        DropReason::Malformed,
        DropReason::Unpaired,
        DropReason::NoSession,
    ];

    /// The reason's name, as used in counters and in Python.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoRoute => "no_route",
            DropReason::BadTag => "bad_tag",
            DropReason::Replay => "replay",
            DropReason::Downgrade => "downgrade",
            DropReason::Malformed => "malformed",
            DropReason::Unpaired => "unpaired",
            DropReason::NoSession => "no_session",
        }
    }

    /// Position in [`DropReason::ALL`], for counter arrays.
    pub fn index(self) -> usize {
        self as usize - 2
    }
}

/// Every failure of the frame path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// A caller passed a value outside its domain (an id over 29 bits, a payload too long...).
    InvalidArgument(String),
    /// Key material has the wrong length or is degenerate. Never carries key bytes.
    KeyMaterial(String),
    /// A received frame was rejected; the string says what exactly was wrong.
    Rejected(DropReason, String),
    /// The session was torn down after too many verification failures.
    SessionExpired(String),
    /// A freshness counter reached 2^64 - 1: the session must be replaced.
    CounterExhausted,
}

impl Error {
    /// A rejected frame.
    pub fn rejected(reason: DropReason, detail: impl Into<String>) -> Error {
        Error::Rejected(reason, detail.into())
    }

    /// The drop reason a gateway counts for this error.
    pub fn drop_reason(&self) -> DropReason {
        match self {
            Error::Rejected(reason, _) => *reason,
            Error::SessionExpired(_) | Error::CounterExhausted => DropReason::NoSession,
            Error::InvalidArgument(_) | Error::KeyMaterial(_) => DropReason::Malformed,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m) | Error::KeyMaterial(m) | Error::SessionExpired(m) => {
                f.write_str(m)
            }
            Error::Rejected(reason, m) => write!(f, "frame dropped ({}): {m}", reason.name()),
            Error::CounterExhausted => {
                f.write_str("freshness counter exhausted: establish a new session")
            }
        }
    }
}

impl std::error::Error for Error {}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
