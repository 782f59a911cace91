//! Helpers shared by the integration tests: both ends of a session on fixed keys.
#![allow(dead_code, missing_docs)]

use _core::{LinkKey, Session, SessionLimits};

pub const A: &str = "COMP-alice-1753769423";
pub const B: &str = "COMP-alice-1753769424";
pub const NONCE_A: [u8; 16] = [0xA5; 16];
pub const NONCE_B: [u8; 16] = [0x5B; 16];

pub fn half(seed: u8) -> Vec<u8> {
    (0..64u8)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn link() -> LinkKey {
    LinkKey::derive(&half(1), A, &half(2), B, None).unwrap()
}

/// (a, b): a seals A -> B and opens B -> A; b the reverse.
pub fn pair_with(limits: SessionLimits) -> (Session, Session) {
    let link = link();
    (
        Session::new(&link, A, B, &NONCE_A, &NONCE_B, limits).unwrap(),
        Session::new(&link, B, A, &NONCE_B, &NONCE_A, limits).unwrap(),
    )
}

pub fn pair() -> (Session, Session) {
    pair_with(SessionLimits::default())
}

/// Open every frame of a sealed message; returns the plaintext of the last one.
pub fn open_all(rx: &mut Session, frames: &[_core::Frame]) -> Option<Vec<u8>> {
    let mut out = None;
    for f in frames {
        out = rx
            .open(f.id, f.payload())
            .unwrap()
            .map(|p| p.payload().to_vec());
    }
    out
}
