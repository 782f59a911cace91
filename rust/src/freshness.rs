//! Freshness: a 64-bit counter per (session, direction, stream), where a stream is a logical
//! CAN id. Frames carry the counter's low bits; the receiver rebuilds the full value as the
//! smallest value not yet accepted whose low bits match, and accepts it only if the tag
//! verifies over that full value. Counters start at 0 in every session.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::error::{Error, Result};

/// A multiplicative hash for 29-bit stream ids. SipHash's flooding resistance is not needed:
/// a sender's map holds only the streams it sends on, and a receiver inserts a stream only
/// after a frame on it authenticated, so no attacker chooses the keys.
#[derive(Default)]
pub(crate) struct StreamHasher(u64);

impl Hasher for StreamHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing: the high bits (which hashbrown uses) mix every input bit.
        self.0 = (self.0 ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by stream id.
pub(crate) type StreamMap<V> = HashMap<u32, V, BuildHasherDefault<StreamHasher>>;

/// The sender's counters: the next value to use on each stream.
#[derive(Default)]
pub(crate) struct TxCounters {
    next: StreamMap<u64>,
}

impl TxCounters {
    /// Take the next freshness value on `stream`. Refuses to wrap: a repeated value would
    /// reuse a CTR keystream.
    pub(crate) fn take(&mut self, stream: u32) -> Result<u64> {
        let next = self.next.entry(stream).or_insert(0);
        let value = *next;
        *next = value.checked_add(1).ok_or(Error::CounterExhausted)?;
        Ok(value)
    }
}

/// The receiver's window: the smallest value still acceptable on each stream.
#[derive(Default)]
pub(crate) struct RxWindow {
    next_min: StreamMap<u64>,
}

impl RxWindow {
    fn floor(&self, stream: u32) -> u64 {
        self.next_min.get(&stream).copied().unwrap_or(0)
    }

    /// The value expected next on `stream`, if a value on it was ever accepted.
    pub(crate) fn expected(&self, stream: u32) -> Option<u64> {
        self.next_min.get(&stream).copied()
    }

    /// The full value a frame claims: the smallest value >= the floor with these low bits.
    pub(crate) fn candidate(&self, stream: u32, low: u64, bits: u32) -> Option<u64> {
        rebuild_forward(self.floor(stream), low, bits)
    }

    /// The most recent already-used value with these low bits, if any: what a replay of the
    /// last frame with these low bits would carry. Only tried after the candidate failed.
    pub(crate) fn replay_candidate(&self, stream: u32, low: u64, bits: u32) -> Option<u64> {
        rebuild_backward(self.floor(stream), low, bits)
    }

    /// Whether a full freshness value is newer than everything accepted on `stream`.
    pub(crate) fn is_fresh(&self, stream: u32, value: u64) -> bool {
        value >= self.floor(stream)
    }

    /// Record that `value` was accepted on `stream`: everything up to it is now stale.
    pub(crate) fn accept(&mut self, stream: u32, value: u64) {
        // value < u64::MAX: the sender never uses u64::MAX (TxCounters refuses to wrap).
        self.next_min.insert(stream, value.saturating_add(1));
    }
}

/// Smallest `v >= floor` with `v mod 2^bits == low`.
pub(crate) fn rebuild_forward(floor: u64, low: u64, bits: u32) -> Option<u64> {
    let modulus = 1u64 << bits;
    let candidate = (floor & !(modulus - 1)) | low;
    if candidate >= floor {
        Some(candidate)
    } else {
        candidate.checked_add(modulus)
    }
}

/// Largest `v < floor` with `v mod 2^bits == low`.
pub(crate) fn rebuild_backward(floor: u64, low: u64, bits: u32) -> Option<u64> {
    let modulus = 1u64 << bits;
    let candidate = (floor & !(modulus - 1)) | low;
    if candidate < floor {
        Some(candidate)
    } else {
        candidate.checked_sub(modulus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counters_start_at_zero_and_never_repeat() {
        let mut tx = TxCounters::default();
        assert_eq!(tx.take(1).unwrap(), 0);
        assert_eq!(tx.take(1).unwrap(), 1);
        assert_eq!(tx.take(2).unwrap(), 0);
        tx.next.insert(3, u64::MAX);
        assert_eq!(tx.take(3), Err(Error::CounterExhausted));
    }

    #[test]
    fn window_examples() {
        assert_eq!(rebuild_forward(0, 0, 8), Some(0));
        assert_eq!(rebuild_forward(0x1FF, 0xFF, 8), Some(0x1FF));
        assert_eq!(rebuild_forward(0x200, 0xFF, 8), Some(0x2FF));
        assert_eq!(rebuild_forward(0x2FE, 0x01, 8), Some(0x301));
        assert_eq!(rebuild_backward(0x200, 0xFF, 8), Some(0x1FF));
        assert_eq!(rebuild_backward(0, 0, 8), None);
        assert_eq!(rebuild_forward(u64::MAX, 0, 8), None);
    }

    proptest! {
        #[test]
        fn forward_is_the_smallest_match(floor in any::<u64>(), low in 0u64..256) {
            if let Some(v) = rebuild_forward(floor, low, 8) {
                prop_assert!(v >= floor);
                prop_assert_eq!(v & 0xFF, low);
                prop_assert!(v - floor < 256);
            }
            if let Some(v) = rebuild_backward(floor, low, 8) {
                prop_assert!(v < floor);
                prop_assert_eq!(v & 0xFF, low);
                prop_assert!(floor - v <= 256);
            }
        }

        #[test]
        fn any_gap_under_the_modulus_is_bridged(start in 0u64..1 << 40, gap in 0u64..65536) {
            let sent = start + gap;
            prop_assert_eq!(rebuild_forward(start, sent & 0xFFFF, 16), Some(sent));
        }
    }
}
