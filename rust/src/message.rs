//! Sealed messages: payloads of up to 4096 bytes (control messages carried over ISO-TP),
//! sealed with the same session keys and freshness counters as frames.
//!
//! ```text
//! message   = 0x04 ‖ freshness (8, BE) ‖ ciphertext (n) ‖ tag (16)
//! MAC input = 0x04 ‖ stream (4, BE) ‖ n (2, BE) ‖ freshness (8, BE) ‖ 0x00 ‖ ciphertext
//! CTR block i = stream (4) ‖ freshness (8) ‖ i (4)
//! ```
//! The stream is a logical CAN id naming the channel; it shares its freshness counter with
//! frames on the same logical id, so no (key, counter block) pair repeats. The freshness is
//! carried whole (ISO-TP delivers in order) and the full 16-byte CMAC is sent.

use aes::cipher::BlockEncrypt;
use aes::Block;
use subtle::ConstantTimeEq;

use crate::error::{DropReason, Error, Result};
use crate::keys::DirectionKeys;

/// Largest payload of a sealed message.
pub const MESSAGE_MAX: usize = 4096;
/// The form code of a sealed message (first byte of the message and of its MAC input).
pub const MESSAGE_CODE: u8 = 4;
/// Bytes a sealed message adds to its payload: form code, freshness, tag.
pub const MESSAGE_OVERHEAD: usize = 1 + 8 + 16;

fn header(stream: u32, len: usize, freshness: u64) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[0] = MESSAGE_CODE;
    block[1..5].copy_from_slice(&stream.to_be_bytes());
    // MESSAGE_MAX fits in 16 bits; checked by the callers.
    block[5..7].copy_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    block[7..15].copy_from_slice(&freshness.to_be_bytes());
    block
}

fn keystream_xor(keys: &DirectionKeys, stream: u32, freshness: u64, buf: &mut [u8]) {
    for (i, chunk) in (0u32..).zip(buf.chunks_mut(16)) {
        let mut block = Block::default();
        block[..4].copy_from_slice(&stream.to_be_bytes());
        block[4..12].copy_from_slice(&freshness.to_be_bytes());
        block[12..].copy_from_slice(&i.to_be_bytes());
        keys.cipher.encrypt_block(&mut block);
        chunk.iter_mut().zip(block).for_each(|(b, k)| *b ^= k);
    }
}

fn tag(keys: &DirectionKeys, stream: u32, freshness: u64, ct: &[u8]) -> [u8; 16] {
    // CmacKey::finish reads whole blocks: pad the ciphertext with zeros to a multiple of 16.
    let mut body = vec![0u8; ct.len().div_ceil(16).max(1) * 16 + 16];
    body[..ct.len()].copy_from_slice(ct);
    let head = header(stream, ct.len(), freshness);
    keys.mac.tag_with_header_slice(&head, &body, ct.len())
}

/// Check a payload's size for sealing.
pub(crate) fn check_size(len: usize) -> Result<()> {
    if len > MESSAGE_MAX {
        return Err(Error::InvalidArgument(format!(
            "a sealed message carries at most {MESSAGE_MAX} bytes, got {len}"
        )));
    }
    Ok(())
}

/// Seal `payload` on `stream` with freshness value `freshness`.
pub(crate) fn seal(keys: &DirectionKeys, stream: u32, freshness: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + MESSAGE_OVERHEAD);
    out.push(MESSAGE_CODE);
    out.extend_from_slice(&freshness.to_be_bytes());
    out.extend_from_slice(payload);
    keystream_xor(keys, stream, freshness, &mut out[9..]);
    let full = tag(keys, stream, freshness, &out[9..]);
    out.extend_from_slice(&full);
    out
}

/// The freshness value a message claims, after checking its framing.
pub(crate) fn freshness_of(data: &[u8]) -> Result<u64> {
    if data.len() < MESSAGE_OVERHEAD || data.len() > MESSAGE_MAX + MESSAGE_OVERHEAD {
        return Err(Error::rejected(
            DropReason::Malformed,
            format!(
                "a sealed message is 25 to {} bytes, got {}",
                MESSAGE_MAX + 25,
                data.len()
            ),
        ));
    }
    if data[0] != MESSAGE_CODE {
        return Err(Error::rejected(
            DropReason::Malformed,
            "not a sealed message (form code)",
        ));
    }
    let mut fresh = [0u8; 8];
    fresh.copy_from_slice(&data[1..9]);
    Ok(u64::from_be_bytes(fresh))
}

/// Whether the tag verifies (constant time); the plaintext if it does.
pub(crate) fn open(keys: &DirectionKeys, stream: u32, data: &[u8]) -> Option<Vec<u8>> {
    let freshness = freshness_of(data).ok()?;
    let (ct, received) = data[9..].split_at(data.len() - 9 - 16);
    let expected = tag(keys, stream, freshness, ct);
    if !bool::from(expected.ct_eq(received)) {
        return None;
    }
    let mut plain = ct.to_vec();
    keystream_xor(keys, stream, freshness, &mut plain);
    Some(plain)
}
