//! The secured frame forms, byte by byte, and the two primitives every form uses:
//! AES-128-CTR for confidentiality and a truncated AES-CMAC, SecOC style. Both are computed
//! here on the `aes` block cipher over zero-padded 64-byte buffers (see `mac.rs` for why);
//! the tests check them against the `ctr` and `cmac` crates.
//!
//! ```text
//! CTR counter block = logical id (4, BE) ‖ freshness (8, BE) ‖ 0x00000000 (block counter)
//! MAC input         = form code (1) ‖ logical id (4, BE) ‖ length (1) ‖ freshness (8, BE)
//!                     ‖ 0x0000 ‖ ciphertext
//! ```
//! The two zero bytes fill the header to one AES block, so the MAC's first block does not
//! depend on the ciphertext and the CPU can compute it alongside the CTR keystream.
//! The form code is 0 for Single, 1 for a classic pair, 3 for FD. Encrypt-then-MAC: the
//! receiver checks the tag before it decrypts anything.

// The wire format truncates on purpose: freshness values to their low bits, lengths (at most
// 64) to one byte.
#![allow(clippy::cast_possible_truncation)]

use aes::cipher::BlockEncrypt;
use aes::Block;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::error::{DropReason, Error, Result};
use crate::ids::Format;
use crate::keys::DirectionKeys;

/// Largest CAN FD payload; every [`Frame`] has room for one.
pub const MAX_DATA_LEN: usize = 64;
/// Largest plaintext of the classic single-frame form.
pub const SINGLE_MAX_PAYLOAD: usize = 3;
/// Smallest and largest plaintext of the classic pair form.
pub const PAIR_MIN_PAYLOAD: usize = 4;
/// Largest plaintext of the classic pair form: a full classic frame.
pub const PAIR_MAX_PAYLOAD: usize = 8;
/// Largest plaintext of the FD form: 64 - length byte - freshness - tag.
pub const FD_MAX_PAYLOAD: usize = MAX_DATA_LEN - 1 - FD_FRESHNESS_LEN - FD_TAG_LEN;

/// Freshness and tag bytes of each form.
pub const SINGLE_FRESHNESS_LEN: usize = 1;
/// Tag bytes of the single-frame form (32 bits).
pub const SINGLE_TAG_LEN: usize = 4;
/// Freshness bytes of the pair's authenticator frame.
pub const PAIR_FRESHNESS_LEN: usize = 2;
/// Tag bytes of the pair's authenticator frame (48 bits).
pub const PAIR_TAG_LEN: usize = 6;
/// Freshness bytes of the FD form.
pub const FD_FRESHNESS_LEN: usize = 4;
/// Tag bytes of the FD form (64 bits).
pub const FD_TAG_LEN: usize = 8;

/// The payload lengths a CAN FD frame can have.
pub const FD_LENGTHS: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64];

/// A payload length (at most 64) as the one byte a [`Frame`] stores.
pub(crate) fn len_byte(len: usize) -> u8 {
    debug_assert!(len <= MAX_DATA_LEN);
    len as u8
}

/// The smallest CAN FD payload length that holds `len` bytes.
pub fn fd_frame_len(len: usize) -> Option<usize> {
    FD_LENGTHS.iter().copied().find(|&l| l >= len)
}

/// One CAN frame crossing the frame path: a 29-bit id and up to 64 data bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The 29-bit identifier.
    pub id: u32,
    /// Number of valid bytes in `data`.
    pub len: u8,
    /// The payload, zero past `len`.
    pub data: [u8; MAX_DATA_LEN],
}

impl Frame {
    /// A frame from an id and a payload of at most 64 bytes.
    pub fn new(id: u32, payload: &[u8]) -> Result<Frame> {
        if payload.len() > MAX_DATA_LEN {
            return Err(Error::InvalidArgument(format!(
                "a CAN frame carries at most 64 bytes, got {}",
                payload.len()
            )));
        }
        let mut data = [0u8; MAX_DATA_LEN];
        data[..payload.len()].copy_from_slice(payload);
        Ok(Frame {
            id,
            len: payload.len() as u8,
            data,
        })
    }

    /// The valid payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame(0x{:08X}, {:02x?})", self.id, self.payload())
    }
}

/// The form code that the MAC input starts with.
pub(crate) fn mac_code(format: Format) -> u8 {
    match format {
        Format::Single => 0,
        Format::PairData | Format::PairAuth => 1,
        Format::Fd => 3,
    }
}

/// A payload in a 64-byte buffer, zero past its length: every copy has a fixed size.
pub(crate) type Padded = [u8; MAX_DATA_LEN];

/// What identifies one secured message to the cryptography: the MAC input's header fields,
/// which also give the CTR counter blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// Form code (see [`mac_code`]).
    pub(crate) code: u8,
    /// The logical id: the stream.
    pub(crate) logical_id: u32,
    /// The full 64-bit freshness value.
    pub(crate) freshness: u64,
    /// Plaintext (= ciphertext) length, at most 51.
    pub(crate) len: usize,
}

impl Header {
    /// The MAC input's first block: form code ‖ logical id ‖ length ‖ freshness ‖ 0x0000.
    fn mac_block(&self) -> [u8; 16] {
        let mut block = [0u8; 16];
        block[0] = self.code;
        block[1..5].copy_from_slice(&self.logical_id.to_be_bytes());
        block[5] = len_byte(self.len);
        block[6..14].copy_from_slice(&self.freshness.to_be_bytes());
        block
    }

    /// CTR counter block `i`: logical id ‖ freshness ‖ i.
    fn counter_block(&self, i: u32) -> Block {
        let mut block = Block::default();
        block[..4].copy_from_slice(&self.logical_id.to_be_bytes());
        block[4..12].copy_from_slice(&self.freshness.to_be_bytes());
        block[12..].copy_from_slice(&i.to_be_bytes());
        block
    }

    /// The same message one freshness value later, if there is one.
    fn next(&self) -> Option<Header> {
        Some(Header {
            freshness: self.freshness.checked_add(1)?,
            ..*self
        })
    }
}

/// XOR `keystream` into `buf[..len]` and clear the rest: a branch-free, fixed-length loop
/// that the compiler turns into a few vector operations.
fn xor_masked(buf: &mut Padded, keystream: impl IntoIterator<Item = u8>, len: usize) {
    for (i, (byte, key)) in buf.iter_mut().zip(keystream).enumerate() {
        let keep = if i < len { 0xFF } else { 0 };
        *byte = (*byte ^ key) & keep;
    }
}

impl DirectionKeys {
    /// XOR the CTR keystream of `header`'s message into `buf[..len]`; bytes past `len` stay
    /// zero. At most 4 blocks, encrypted together so AES-NI can pipeline them.
    pub(crate) fn keystream_xor(&self, header: &Header, buf: &mut Padded) {
        let len = header.len;
        if len <= 16 {
            // Every classic frame: one block, and only the first 16 bytes can be non-zero.
            let mut block = header.counter_block(0);
            self.cipher.encrypt_block(&mut block);
            xor_masked(buf, block, len);
            return;
        }
        let mut blocks = [Block::default(); 4];
        let count = len.div_ceil(16).min(4);
        for (counter, block) in (0u32..).zip(blocks.iter_mut().take(count)) {
            *block = header.counter_block(counter);
        }
        self.cipher.encrypt_blocks(&mut blocks[..count]);
        xor_masked(buf, blocks.iter().flatten().copied(), len);
    }

    /// The full 16-byte AES-CMAC over the MAC input of one secured message.
    pub(crate) fn tag(&self, header: &Header, ct: &Padded) -> [u8; 16] {
        self.mac
            .tag_with_header(&header.mac_block(), ct, header.len)
    }

    /// Whether `tag` (truncated) matches, compared in constant time.
    pub(crate) fn verify(&self, header: &Header, ct: &Padded, tag: &[u8]) -> bool {
        let full = self.tag(header, ct);
        bool::from(full[..tag.len()].ct_eq(tag))
    }

    /// Encrypt `buf[..len]` in place and return the full tag of the result.
    pub(crate) fn encrypt_and_tag(
        &self,
        ahead: &mut AheadCache,
        header: &Header,
        buf: &mut Padded,
    ) -> [u8; 16] {
        if Ahead::covers(header.len) {
            let pre = ahead.take(header).unwrap_or_else(|| self.ahead(header));
            xor_masked(buf, pre.keystream, header.len);
            let tag = self.mac.finish(pre.mac_state, buf, header.len);
            // Independent of `tag`: the CPU runs these two AES blocks alongside the last one.
            ahead.prepare(self, header);
            return tag;
        }
        if header.len == 0 {
            return self.tag(header, buf);
        }
        // Two independent AES calls back to back: the CPU overlaps them.
        let state = self.mac.first_block(&header.mac_block());
        self.keystream_xor(header, buf);
        self.mac.finish(state, buf, header.len)
    }

    /// Verify the truncated `tag` over `buf[..len]` (compared in constant time) and, only
    /// if it matches, decrypt `buf` in place.
    pub(crate) fn verify_and_decrypt(
        &self,
        ahead: &mut AheadCache,
        header: &Header,
        buf: &mut Padded,
        tag: &[u8],
    ) -> bool {
        if Ahead::covers(header.len) {
            let pre = ahead.take(header).unwrap_or_else(|| self.ahead(header));
            let full = self.mac.finish(pre.mac_state, buf, header.len);
            if !bool::from(full[..tag.len()].ct_eq(tag)) {
                // Keep the work for the value still expected next on this stream.
                ahead.put(pre);
                return false;
            }
            xor_masked(buf, pre.keystream, header.len);
            ahead.prepare(self, header);
            return true;
        }
        // The keystream is computed alongside the MAC and used only once the tag verified.
        let mut plain = *buf;
        self.keystream_xor(header, &mut plain);
        if !self.verify(header, buf, tag) {
            return false;
        }
        *buf = plain;
        true
    }

    /// The AES work of one message that does not depend on its payload.
    fn ahead(&self, header: &Header) -> Ahead {
        let mut keystream = header.counter_block(0);
        let mac_state = self.mac.first_block(&header.mac_block());
        self.cipher.encrypt_block(&mut keystream);
        Ahead {
            header: *header,
            mac_state,
            keystream: keystream.into(),
        }
    }
}

/// The payload-independent AES work for one message (the MAC's header block and the CTR
/// keystream block), done for a stream's next freshness value while the current message's
/// last AES block is in flight. It applies to messages of 1 to 15 bytes (every classic frame):
/// one keystream block and one data block after the header.
#[derive(Clone, Copy)]
pub(crate) struct Ahead {
    header: Header,
    mac_state: [u8; 16],
    keystream: [u8; 16],
}

impl Ahead {
    fn covers(len: usize) -> bool {
        (1..16).contains(&len)
    }
}

/// Work done ahead for one direction of a session: a small direct-mapped table indexed by a
/// hash of the stream id. Losing an entry to another stream only costs recomputing it, so no
/// map lookups are needed on the hot path. Wiped on drop: a keystream is as secret as the
/// plaintext it will cover.
pub(crate) struct AheadCache([Option<Ahead>; AHEAD_SLOTS]);

const AHEAD_SLOTS: usize = 16;

impl Default for AheadCache {
    fn default() -> Self {
        AheadCache([None; AHEAD_SLOTS])
    }
}

fn ahead_slot(logical_id: u32) -> usize {
    // Fibonacci hashing; the top 4 bits index the 16 slots.
    (logical_id.wrapping_mul(0x9E37_79B1) >> 28) as usize
}

impl AheadCache {
    /// The work for exactly this message, if it was done ahead.
    fn take(&mut self, header: &Header) -> Option<Ahead> {
        let pre = self.0[ahead_slot(header.logical_id)]?;
        (pre.header == *header).then_some(pre)
    }

    fn put(&mut self, pre: Ahead) {
        self.0[ahead_slot(pre.header.logical_id)] = Some(pre);
    }

    /// Do the work for the stream's next value, assuming the same length and form.
    fn prepare(&mut self, keys: &DirectionKeys, header: &Header) {
        if let Some(next) = header.next() {
            self.put(keys.ahead(&next));
        }
    }
}

impl Drop for AheadCache {
    fn drop(&mut self) {
        for pre in self.0.iter_mut().flatten() {
            pre.mac_state.zeroize();
            pre.keystream.zeroize();
        }
    }
}

/// Copy a received ciphertext into a zero-padded buffer.
pub(crate) fn padded(ct: &[u8]) -> Padded {
    let mut buf = [0u8; MAX_DATA_LEN];
    buf[..ct.len()].copy_from_slice(ct);
    buf
}

/// The parts of a received single-frame or FD message.
pub(crate) struct Parsed<'a> {
    pub(crate) ciphertext: &'a [u8],
    pub(crate) freshness_low: u64,
    pub(crate) freshness_bits: u32,
    pub(crate) tag: &'a [u8],
}

fn malformed(detail: impl Into<String>) -> Error {
    Error::rejected(DropReason::Malformed, detail)
}

/// Read big-endian bytes as an integer.
fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b))
}

/// Write a single-frame form: ciphertext ‖ freshness low 8 bits ‖ tag (4).
pub(crate) fn write_single(ct: &Padded, n: usize, freshness: u64, tag: &[u8; 16], out: &mut Frame) {
    out.data = *ct;
    out.data[n] = freshness as u8;
    out.data[n + 1..n + 1 + SINGLE_TAG_LEN].copy_from_slice(&tag[..SINGLE_TAG_LEN]);
    out.len = (n + SINGLE_FRESHNESS_LEN + SINGLE_TAG_LEN) as u8;
}

/// Parse a single-frame form (5 to 8 bytes).
pub(crate) fn parse_single(data: &[u8]) -> Result<Parsed<'_>> {
    let overhead = SINGLE_FRESHNESS_LEN + SINGLE_TAG_LEN;
    if data.len() < overhead || data.len() > overhead + SINGLE_MAX_PAYLOAD {
        return Err(malformed(format!(
            "a single-frame secured message is 5 to 8 bytes, got {}",
            data.len()
        )));
    }
    let n = data.len() - overhead;
    Ok(Parsed {
        ciphertext: &data[..n],
        freshness_low: u64::from(data[n]),
        freshness_bits: 8,
        tag: &data[n + 1..],
    })
}

/// Write a pair's authenticator frame: freshness low 16 bits (BE) ‖ tag (6).
pub(crate) fn write_pair_auth(freshness: u64, tag: &[u8; 16], out: &mut Frame) {
    out.data[..2].copy_from_slice(&(freshness as u16).to_be_bytes());
    out.data[2..8].copy_from_slice(&tag[..PAIR_TAG_LEN]);
    out.len = 8;
}

/// Parse a pair's authenticator frame into (freshness low 16 bits, tag).
pub(crate) fn parse_pair_auth(data: &[u8]) -> Result<(u64, &[u8])> {
    if data.len() != PAIR_FRESHNESS_LEN + PAIR_TAG_LEN {
        return Err(malformed(format!(
            "a pair's authenticator frame is 8 bytes, got {}",
            data.len()
        )));
    }
    Ok((be(&data[..2]), &data[2..]))
}

/// Check a pair's data frame (4 to 8 bytes of ciphertext).
pub(crate) fn check_pair_data(data: &[u8]) -> Result<()> {
    if data.len() < PAIR_MIN_PAYLOAD || data.len() > PAIR_MAX_PAYLOAD {
        return Err(malformed(format!(
            "a pair's data frame is 4 to 8 bytes, got {}",
            data.len()
        )));
    }
    Ok(())
}

/// Write the FD form: length ‖ ciphertext ‖ zeros ‖ freshness low 32 bits (BE) ‖ tag (8).
pub(crate) fn write_fd(ct: &Padded, n: usize, freshness: u64, tag: &[u8; 16], out: &mut Frame) {
    let total = fd_frame_len(n + 1 + FD_FRESHNESS_LEN + FD_TAG_LEN).unwrap_or(MAX_DATA_LEN);
    out.data[0] = n as u8;
    // ct is at most 51 bytes and zero past them, so this also writes the padding.
    out.data[1..].copy_from_slice(&ct[..MAX_DATA_LEN - 1]);
    let tail = total - FD_FRESHNESS_LEN - FD_TAG_LEN;
    out.data[tail..tail + 4].copy_from_slice(&(freshness as u32).to_be_bytes());
    out.data[tail + 4..total].copy_from_slice(&tag[..FD_TAG_LEN]);
    out.len = total as u8;
}

/// Parse the FD form; the length must be the smallest FD length that holds the message and
/// the padding must be zero, so every message has exactly one encoding.
pub(crate) fn parse_fd(data: &[u8]) -> Result<Parsed<'_>> {
    let overhead = 1 + FD_FRESHNESS_LEN + FD_TAG_LEN;
    if data.len() < overhead {
        return Err(malformed(format!(
            "an FD secured message is at least {overhead} bytes, got {}",
            data.len()
        )));
    }
    let n = usize::from(data[0]);
    if n > FD_MAX_PAYLOAD || fd_frame_len(n + overhead) != Some(data.len()) {
        return Err(malformed(format!(
            "an FD secured message of {n} bytes cannot be {} bytes long",
            data.len()
        )));
    }
    let tail = data.len() - FD_FRESHNESS_LEN - FD_TAG_LEN;
    if data[1 + n..tail].iter().any(|&b| b != 0) {
        return Err(malformed("FD padding is not zero"));
    }
    Ok(Parsed {
        ciphertext: &data[1..1 + n],
        freshness_low: be(&data[tail..tail + 4]),
        freshness_bits: 32,
        tag: &data[tail + 4..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use aes::cipher::{KeyInit, KeyIvInit, StreamCipher};
    use aes::Aes128Enc;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keystream_agrees_with_the_ctr_crate(
            key in any::<[u8; 16]>(),
            id in 0u32..0x2000_0000,
            freshness in any::<u64>(),
            payload in prop::collection::vec(any::<u8>(), 0..=FD_MAX_PAYLOAD),
        ) {
            let keys = DirectionKeys {
                cipher: Aes128Enc::new(&key.into()),
                mac: crate::mac::CmacKey::new(&key),
            };
            let mut ours = padded(&payload);
            let header = Header { code: 0, logical_id: id, freshness, len: payload.len() };
            keys.keystream_xor(&header, &mut ours);
            let mut iv = [0u8; 16];
            iv[..4].copy_from_slice(&id.to_be_bytes());
            iv[4..12].copy_from_slice(&freshness.to_be_bytes());
            let mut theirs = payload.clone();
            ctr::Ctr128BE::<Aes128Enc>::new(&key.into(), &iv.into()).apply_keystream(&mut theirs);
            prop_assert_eq!(&ours[..payload.len()], &theirs[..]);
            prop_assert!(ours[payload.len()..].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn fd_lengths() {
        assert_eq!(fd_frame_len(13), Some(16));
        assert_eq!(fd_frame_len(17), Some(20));
        assert_eq!(fd_frame_len(64), Some(64));
        assert_eq!(fd_frame_len(65), None);
        assert_eq!(FD_MAX_PAYLOAD, 51);
    }

    #[test]
    fn fd_rejects_non_canonical_lengths_and_padding() {
        let mut frame = Frame::new(0, &[]).unwrap();
        // 1 length byte + 2 payload bytes + 1 padding byte + 4 freshness + 8 tag = 16
        write_fd(&padded(&[1, 2]), 2, 7, &[0xAA; 16], &mut frame);
        assert_eq!(frame.len, 16);
        assert_eq!(frame.data[3], 0);
        assert!(parse_fd(frame.payload()).is_ok());
        let mut padded = frame;
        padded.data[3] = 1;
        assert!(parse_fd(padded.payload()).is_err());
        let mut long = frame;
        long.len = 20;
        assert!(parse_fd(long.payload()).is_err());
        let mut lying = frame;
        lying.data[0] = 52;
        assert!(parse_fd(lying.payload()).is_err());
    }
}
