//! AES-CMAC (RFC 4493) for the frame path's short messages: a 16-byte header and at most 64 bytes.
//!
//! The `cmac` crate computes the same function; its streaming machinery and its
//! variable-length copies cost ~40 ns per frame here, more than the two AES blocks
//! themselves, and it cannot start the header block before the ciphertext exists. This
//! module keeps only the one-shot case over zero-padded buffers, so every copy has a fixed
//! size, and the tests check it against the `cmac` crate on random inputs and against the
//! RFC 4493 vectors.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::Aes128Enc;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// An AES-CMAC key: the expanded cipher and the two subkeys. Zeroized on drop (the `aes`
/// crate wipes the key schedule; the subkeys are wiped here).
#[derive(Clone)]
pub(crate) struct CmacKey {
    cipher: Aes128Enc,
    k1: [u8; 16],
    k2: [u8; 16],
}

/// Multiply by x in GF(2^128) (RFC 4493 §2.3).
fn dbl(block: [u8; 16]) -> [u8; 16] {
    let value = u128::from_be_bytes(block);
    let carry = if value >> 127 == 1 { 0x87 } else { 0 };
    ((value << 1) ^ carry).to_be_bytes()
}

fn xor_into(state: &mut [u8; 16], block: &[u8; 16]) {
    state.iter_mut().zip(block).for_each(|(s, b)| *s ^= b);
}

impl CmacKey {
    /// Expand a 16-byte key.
    pub(crate) fn new(key: &[u8; 16]) -> CmacKey {
        let cipher = Aes128Enc::new(key.into());
        let mut l = [0u8; 16].into();
        cipher.encrypt_block(&mut l);
        let mut l: [u8; 16] = l.into();
        let k1 = dbl(l);
        let k2 = dbl(k1);
        l.zeroize();
        CmacKey { cipher, k1, k2 }
    }

    /// The first CMAC block of a message that starts with `header` and goes on past it.
    /// It does not depend on the rest of the message, so a caller can start it before the
    /// rest exists (the ciphertext, while CTR computes it) and let the CPU overlap the two.
    pub(crate) fn first_block(&self, header: &[u8; 16]) -> [u8; 16] {
        let mut state = *header;
        self.encrypt(&mut state);
        state
    }

    /// Finish a CMAC: absorb `body[..len]` into `state` (the chaining value after the blocks
    /// before it) and return the tag. `body` is zero past `len` and at least one block longer
    /// than the last full block, so every block is read with a fixed-size copy.
    pub(crate) fn finish(&self, mut state: [u8; 16], body: &[u8], len: usize) -> [u8; 16] {
        debug_assert!(body.len() % 16 == 0 && len <= body.len());
        debug_assert!(body[len..].iter().all(|&b| b == 0));
        if len < 16 {
            // Every classic frame: one padded block, no loop.
            let mut last = [0u8; 16];
            last.copy_from_slice(&body[..16]);
            last[len] = 0x80;
            xor_into(&mut last, &self.k2);
            xor_into(&mut state, &last);
            self.encrypt(&mut state);
            return state;
        }
        let block_at = |i: usize| -> [u8; 16] {
            let mut block = [0u8; 16];
            block.copy_from_slice(&body[i * 16..i * 16 + 16]);
            block
        };
        // Every block but the last is processed plainly; the last is padded and masked.
        let full_blocks = len.saturating_sub(1) / 16;
        for i in 0..full_blocks {
            xor_into(&mut state, &block_at(i));
            self.encrypt(&mut state);
        }
        let mut last = block_at(full_blocks);
        let rest = len - full_blocks * 16;
        if rest == 16 {
            xor_into(&mut last, &self.k1);
        } else {
            last[rest] = 0x80;
            xor_into(&mut last, &self.k2);
        }
        xor_into(&mut state, &last);
        self.encrypt(&mut state);
        state
    }

    /// The tag of `header ‖ body[..len]`: one full header block, then up to 64 bytes.
    pub(crate) fn tag_with_header(
        &self,
        header: &[u8; 16],
        body: &[u8; 64],
        len: usize,
    ) -> [u8; 16] {
        if len == 0 {
            // The header alone is one complete last block.
            return self.finish([0; 16], header, 16);
        }
        self.finish(self.first_block(header), body, len)
    }

    /// The tag of `header ‖ body[..len]` for any length: `body` is zero past `len` and at
    /// least one block longer than its last full block (sealed messages).
    pub(crate) fn tag_with_header_slice(
        &self,
        header: &[u8; 16],
        body: &[u8],
        len: usize,
    ) -> [u8; 16] {
        if len == 0 {
            return self.finish([0; 16], header, 16);
        }
        self.finish(self.first_block(header), body, len)
    }

    /// The tag of any message of at most 80 bytes.
    #[cfg(test)]
    pub(crate) fn tag(&self, message: &[u8]) -> [u8; 16] {
        let mut buffer = [0u8; 96];
        buffer[..message.len()].copy_from_slice(message);
        self.finish([0; 16], &buffer, message.len())
    }

    fn encrypt(&self, state: &mut [u8; 16]) {
        let mut block = (*state).into();
        self.cipher.encrypt_block(&mut block);
        *state = block.into();
    }
}

impl Drop for CmacKey {
    fn drop(&mut self) {
        self.k1.zeroize();
        self.k2.zeroize();
    }
}

impl ZeroizeOnDrop for CmacKey {}

#[cfg(test)]
mod tests {
    use super::*;
    use cmac::{Cmac, Mac};
    use proptest::prelude::*;

    #[test]
    fn rfc4493_vectors() {
        let key: [u8; 16] = hex::decode("2b7e151628aed2a6abf7158809cf4f3c")
            .unwrap()
            .try_into()
            .unwrap();
        let msg = hex::decode(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51\
             30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
        )
        .unwrap();
        let mac = CmacKey::new(&key);
        assert_eq!(hex::encode(mac.k1), "fbeed618357133667c85e08f7236a8de");
        assert_eq!(hex::encode(mac.k2), "f7ddac306ae266ccf90bc11ee46d513b");
        for (len, expected) in [
            (0, "bb1d6929e95937287fa37d129b756746"),
            (16, "070a16b46b4d4144f79bdd9dd04a287c"),
            (40, "dfa66747de9ae63030ca32611497c827"),
            (64, "51f0bebf7e3b9d92fc49741779363cfe"),
        ] {
            assert_eq!(hex::encode(mac.tag(&msg[..len])), expected, "length {len}");
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_cmac_crate(key in any::<[u8; 16]>(), msg in prop::collection::vec(any::<u8>(), 0..=80)) {
            let mut reference = <Cmac<Aes128Enc> as KeyInit>::new_from_slice(&key).unwrap();
            reference.update(&msg);
            let expected: [u8; 16] = reference.finalize().into_bytes().into();
            prop_assert_eq!(CmacKey::new(&key).tag(&msg), expected);
        }
    }
}
