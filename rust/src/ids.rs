//! The 29-bit CAN identifier: `base << 18 | node`, with bits 15..=17 owned by the secure layer.
//!
//! ```text
//!  28          18 17 16 15 14        8 7      0
//! +--------------+--+-----+-----------+--------+
//! |  base (11)   |E | fmt | unused (7)|  node  |
//! +--------------+--+-----+-----------+--------+
//! ```
//!
//! E (bit 17) is the encryption flag of the seed. The two format bits (16, 15) say which
//! secured frame form a frame with E = 1 carries; they are zero on plain frames. The
//! *logical* identifier of a frame is its identifier with all three secure bits cleared: it
//! is what routing rules match, what the MAC covers and what keys a freshness stream.

use crate::error::{Error, Result};

/// Largest 29-bit identifier.
pub const EXTENDED_ID_MASK: u32 = 0x1FFF_FFFF;
/// Bit 17: the payload is secured (encrypted and authenticated).
pub const ENCRYPTION_FLAG: u32 = 1 << 17;
/// Position of the two format bits.
pub const FORMAT_SHIFT: u32 = 15;
/// Bits 16 and 15: the secured frame form (see [`Format`]).
pub const FORMAT_MASK: u32 = 0b11 << FORMAT_SHIFT;
/// Every identifier bit that the secure layer owns.
pub const SECURE_BITS: u32 = ENCRYPTION_FLAG | FORMAT_MASK;
/// Position of the 11-bit base (message) identifier.
pub const BASE_SHIFT: u32 = 18;
/// Largest base identifier.
pub const BASE_MAX: u32 = 0x7FF;
/// Bits 7..=0: the node number.
pub const NODE_MASK: u32 = 0xFF;

/// The secured frame forms, as carried in the format bits of a frame with E = 1.
///
/// The numbering also orders arbitration: among frames sharing a logical id, a pair's data
/// frame (1) wins over its authenticator frame (2), so a controller never sends them reversed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Format {
    /// Classic CAN, one frame: ciphertext (0..=3 bytes) ‖ freshness (8 bits) ‖ tag (32 bits).
    Single = 0,
    /// Classic CAN, first frame of a pair: ciphertext (4..=8 bytes).
    PairData = 1,
    /// Classic CAN, second frame of a pair: freshness (16 bits) ‖ tag (48 bits).
    PairAuth = 2,
    /// CAN FD: length ‖ ciphertext (0..=51 bytes) ‖ zero padding ‖ freshness (32 bits) ‖ tag (64 bits).
    Fd = 3,
}

impl Format {
    /// The format carried in an identifier's format bits.
    pub fn of(can_id: u32) -> Format {
        match (can_id & FORMAT_MASK) >> FORMAT_SHIFT {
            0 => Format::Single,
            1 => Format::PairData,
            2 => Format::PairAuth,
            _ => Format::Fd,
        }
    }

    /// The identifier bits that carry this format.
    pub fn bits(self) -> u32 {
        (self as u32) << FORMAT_SHIFT
    }
}

/// Check that `can_id` fits in 29 bits.
pub fn check_extended(can_id: u32) -> Result<u32> {
    if can_id > EXTENDED_ID_MASK {
        return Err(Error::InvalidArgument(format!(
            "CAN id 0x{can_id:X} does not fit in 29 bits"
        )));
    }
    Ok(can_id)
}

/// Compose `base << 18 | node`.
pub fn compose(base: u32, node: u32) -> Result<u32> {
    if base > BASE_MAX {
        return Err(Error::InvalidArgument(format!(
            "base id 0x{base:X} does not fit in 11 bits"
        )));
    }
    if node > NODE_MASK {
        return Err(Error::InvalidArgument(format!(
            "node 0x{node:X} does not fit in 8 bits"
        )));
    }
    Ok(base << BASE_SHIFT | node)
}

/// Split an identifier into (base, node).
pub fn split(can_id: u32) -> (u32, u32) {
    ((can_id >> BASE_SHIFT) & BASE_MAX, can_id & NODE_MASK)
}

/// Whether E (bit 17) is set.
pub fn is_encrypted(can_id: u32) -> bool {
    can_id & ENCRYPTION_FLAG != 0
}

/// The identifier with E set.
pub fn set_encrypted(can_id: u32) -> u32 {
    can_id | ENCRYPTION_FLAG
}

/// The identifier with E cleared (the format bits are left alone).
pub fn clear_encrypted(can_id: u32) -> u32 {
    can_id & !ENCRYPTION_FLAG
}

/// The logical identifier: E and the format bits cleared.
pub fn logical(can_id: u32) -> u32 {
    can_id & !SECURE_BITS
}

/// Check that a caller's logical identifier fits in 29 bits and leaves the secure bits clear.
pub fn check_logical(can_id: u32) -> Result<u32> {
    check_extended(can_id)?;
    if can_id & SECURE_BITS != 0 {
        return Err(Error::InvalidArgument(format!(
            "CAN id 0x{can_id:08X} sets bits 15..=17, which belong to the secure layer"
        )));
    }
    Ok(can_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_examples_split_and_compose() {
        // REFERENCE.md §2: announcement from an unregistered module, status 1 from module 5.
        assert_eq!(compose(0x500, 0xFF).unwrap(), 0x1400_00FF);
        assert_eq!(compose(0x502, 0x05).unwrap(), 0x1408_0005);
        assert_eq!(compose(0x514, 0x00).unwrap(), 0x1450_0000);
        assert_eq!(split(0x1408_0005), (0x502, 0x05));
        assert!(compose(0x800, 0).is_err());
        assert!(compose(0, 0x100).is_err());
    }

    #[test]
    fn encryption_flag_is_bit_17() {
        let id = 0x1408_0005;
        assert_eq!(set_encrypted(id), 0x140A_0005);
        assert!(is_encrypted(set_encrypted(id)));
        assert_eq!(clear_encrypted(set_encrypted(id)), id);
        assert_eq!(split(set_encrypted(id)), split(id));
    }

    #[test]
    fn format_bits_round_trip() {
        for f in [
            Format::Single,
            Format::PairData,
            Format::PairAuth,
            Format::Fd,
        ] {
            assert_eq!(Format::of(0x1408_0005 | f.bits()), f);
            assert_eq!(
                logical(0x1408_0005 | f.bits() | ENCRYPTION_FLAG),
                0x1408_0005
            );
        }
        assert!(check_logical(0x1408_8005).is_err());
        assert!(check_logical(0x2000_0000).is_err());
    }
}
