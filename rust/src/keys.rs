//! The key schedule: device key halves -> link key -> per-direction session keys.
//!
//! ```text
//! link key  = HKDF-SHA256(salt = "modbatt/v1 link",
//!                         ikm  = half_lo ‖ half_hi ‖ dh_secret?,
//!                         info = "modbatt/v1 link key" ‖ lp(id_lo) ‖ lp(id_hi), L = 32)
//! K(src→dst) = HKDF-SHA256(salt = "modbatt/v1 session", ikm = link key,
//!                          info = "modbatt/v1 session keys" ‖ lp(src) ‖ lp(dst)
//!                                 ‖ nonce_src ‖ nonce_dst, L = 32)
//! enc key = K[0..16], mac key = K[16..32]
//! ```
//! `lo`/`hi` order the two (component id, half) pairs by component id, bytewise, so both peers
//! feed HKDF the same bytes; `lp(x)` is x prefixed by its length in one byte. Key bytes live
//! in zeroizing buffers and never leave this module: there is no getter, and `Debug` prints a
//! fingerprint only.

use std::fmt;

use aes::cipher::KeyInit;
use aes::Aes128Enc;
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::mac::CmacKey;

/// Length of one device key half (bytes).
pub const KEY_HALF_LEN: usize = 64;
/// Length of a per-session nonce (bytes).
pub const NONCE_LEN: usize = 16;
/// Length of an X25519 shared secret (bytes).
pub const DH_SECRET_LEN: usize = 32;
/// Length of a link key (bytes).
pub const LINK_KEY_LEN: usize = 32;

const LINK_SALT: &[u8] = b"modbatt/v1 link";
const LINK_INFO: &[u8] = b"modbatt/v1 link key";
const SESSION_SALT: &[u8] = b"modbatt/v1 session";
const SESSION_INFO: &[u8] = b"modbatt/v1 session keys";
const FINGERPRINT_LABEL: &[u8] = b"modbatt/v1 fingerprint";
const CONFIRM_SALT: &[u8] = b"modbatt/v1 confirm";
const CONFIRM_INFO: &[u8] = b"modbatt/v1 key confirmation";
/// Length of a key confirmation value (bytes).
pub const CONFIRMATION_LEN: usize = 16;

/// Append `bytes` prefixed by its length in one byte.
fn push_length_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // check_component_id bounds every prefixed field to 255 bytes.
    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(bytes);
}

/// Component ids name the two ends of a link in every label.
pub fn check_component_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 255 {
        return Err(Error::InvalidArgument(format!(
            "a component id must be 1 to 255 bytes long, got {} bytes",
            id.len()
        )));
    }
    Ok(())
}

fn check_secret(name: &str, bytes: &[u8], len: usize) -> Result<()> {
    if bytes.len() != len {
        return Err(Error::KeyMaterial(format!(
            "{name} must be {len} bytes, got {}",
            bytes.len()
        )));
    }
    if bytes.iter().all(|&b| b == 0) {
        return Err(Error::KeyMaterial(format!("{name} is all zero bytes")));
    }
    Ok(())
}

/// A 16-hex-digit name for a secret, safe to log: a SHA-256 of a label and the secret.
fn fingerprint(secret: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(FINGERPRINT_LABEL)
        .chain_update(secret)
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The long-term key of one link (app ↔ pack, or pack ↔ module), from two device key halves.
pub struct LinkKey {
    key: Zeroizing<[u8; LINK_KEY_LEN]>,
    fingerprint: String,
}

impl LinkKey {
    /// Combine two device key halves (64 bytes each) that belong to components `id_a` and
    /// `id_b`, and optionally an X25519 shared secret from the bootstrap exchange. The order
    /// of the arguments does not matter: the halves are ordered by component id.
    pub fn derive(
        half_a: &[u8],
        id_a: &str,
        half_b: &[u8],
        id_b: &str,
        dh_secret: Option<&[u8]>,
    ) -> Result<LinkKey> {
        check_component_id(id_a)?;
        check_component_id(id_b)?;
        check_secret("device key half A", half_a, KEY_HALF_LEN)?;
        check_secret("device key half B", half_b, KEY_HALF_LEN)?;
        if id_a == id_b {
            return Err(Error::InvalidArgument(
                "a link needs two different component ids".into(),
            ));
        }
        if half_a == half_b {
            return Err(Error::KeyMaterial(
                "the two device key halves are identical".into(),
            ));
        }
        if let Some(dh) = dh_secret {
            // An all-zero X25519 output means the peer sent a low-order point.
            check_secret("X25519 shared secret", dh, DH_SECRET_LEN)?;
        }
        let ((lo_id, lo_half), (hi_id, hi_half)) = if id_a.as_bytes() < id_b.as_bytes() {
            ((id_a, half_a), (id_b, half_b))
        } else {
            ((id_b, half_b), (id_a, half_a))
        };
        let mut ikm = Zeroizing::new(Vec::with_capacity(2 * KEY_HALF_LEN + DH_SECRET_LEN));
        ikm.extend_from_slice(lo_half);
        ikm.extend_from_slice(hi_half);
        if let Some(dh) = dh_secret {
            ikm.extend_from_slice(dh);
        }
        let mut info = Vec::with_capacity(LINK_INFO.len() + 2 + lo_id.len() + hi_id.len());
        info.extend_from_slice(LINK_INFO);
        push_length_prefixed(&mut info, lo_id.as_bytes());
        push_length_prefixed(&mut info, hi_id.as_bytes());
        let mut key = Zeroizing::new([0u8; LINK_KEY_LEN]);
        Hkdf::<Sha256>::new(Some(LINK_SALT), &ikm)
            .expand(&info, key.as_mut())
            .map_err(|_| Error::KeyMaterial("HKDF output length rejected".into()))?;
        let fingerprint = fingerprint(key.as_ref());
        Ok(LinkKey { key, fingerprint })
    }

    /// A loggable name for this key (16 hex digits); reveals nothing about the key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The value by which `src` proves to `dst` that it holds this link key, bound to both
    /// nonces of the session being set up (the session handshake's "communication test"):
    ///
    /// ```text
    /// HKDF-SHA256(salt = "modbatt/v1 confirm", ikm = link key,
    ///             info = "modbatt/v1 key confirmation" ‖ lp(src) ‖ lp(dst)
    ///                    ‖ nonce_src ‖ nonce_dst, L = 16)
    /// ```
    /// A separate label from the session keys: revealing it reveals nothing about them.
    pub fn confirmation(
        &self,
        src_id: &str,
        dst_id: &str,
        src_nonce: &[u8],
        dst_nonce: &[u8],
    ) -> Result<[u8; CONFIRMATION_LEN]> {
        check_component_id(src_id)?;
        check_component_id(dst_id)?;
        check_nonce("source nonce", src_nonce)?;
        check_nonce("destination nonce", dst_nonce)?;
        let mut info = Vec::with_capacity(CONFIRM_INFO.len() + 2 + 255 * 2 + 2 * NONCE_LEN);
        info.extend_from_slice(CONFIRM_INFO);
        push_length_prefixed(&mut info, src_id.as_bytes());
        push_length_prefixed(&mut info, dst_id.as_bytes());
        info.extend_from_slice(src_nonce);
        info.extend_from_slice(dst_nonce);
        let mut out = [0u8; CONFIRMATION_LEN];
        Hkdf::<Sha256>::new(Some(CONFIRM_SALT), self.key.as_ref())
            .expand(&info, &mut out)
            .map_err(|_| Error::KeyMaterial("HKDF output length rejected".into()))?;
        Ok(out)
    }

    /// Whether `tag` is `src`'s confirmation value, compared in constant time.
    pub fn verify_confirmation(
        &self,
        src_id: &str,
        dst_id: &str,
        src_nonce: &[u8],
        dst_nonce: &[u8],
        tag: &[u8],
    ) -> Result<bool> {
        let expected = self.confirmation(src_id, dst_id, src_nonce, dst_nonce)?;
        Ok(tag.len() == CONFIRMATION_LEN && bool::from(expected.ct_eq(tag)))
    }

    /// The keys for one direction of one session: `src` seals, `dst` opens.
    pub(crate) fn direction_keys(
        &self,
        src_id: &str,
        dst_id: &str,
        src_nonce: &[u8],
        dst_nonce: &[u8],
    ) -> Result<DirectionKeys> {
        let okm = self.direction_key_bytes(src_id, dst_id, src_nonce, dst_nonce)?;
        let mut enc_key = Zeroizing::new([0u8; 16]);
        let mut mac_key = Zeroizing::new([0u8; 16]);
        enc_key.copy_from_slice(&okm[..16]);
        mac_key.copy_from_slice(&okm[16..]);
        Ok(DirectionKeys {
            cipher: Aes128Enc::new(enc_key.as_ref().into()),
            mac: CmacKey::new(&mac_key),
        })
    }

    /// enc key ‖ mac key of one direction, before expansion.
    fn direction_key_bytes(
        &self,
        src_id: &str,
        dst_id: &str,
        src_nonce: &[u8],
        dst_nonce: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>> {
        let mut info = Vec::with_capacity(SESSION_INFO.len() + 2 + 255 * 2 + 2 * NONCE_LEN);
        info.extend_from_slice(SESSION_INFO);
        push_length_prefixed(&mut info, src_id.as_bytes());
        push_length_prefixed(&mut info, dst_id.as_bytes());
        info.extend_from_slice(src_nonce);
        info.extend_from_slice(dst_nonce);
        let mut okm = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(SESSION_SALT), self.key.as_ref())
            .expand(&info, okm.as_mut())
            .map_err(|_| Error::KeyMaterial("HKDF output length rejected".into()))?;
        Ok(okm)
    }
}

impl fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkKey(<redacted>, fingerprint={})", self.fingerprint)
    }
}

/// The expanded keys of one direction: AES-128 for CTR, AES-CMAC for the tag. Both wipe
/// themselves on drop (the `aes` crate's `zeroize` feature, and `CmacKey`'s `Drop`).
#[derive(Clone)]
pub(crate) struct DirectionKeys {
    pub(crate) cipher: Aes128Enc,
    pub(crate) mac: CmacKey,
}

/// Check a per-session nonce.
pub fn check_nonce(name: &str, nonce: &[u8]) -> Result<()> {
    check_secret(name, nonce, NONCE_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn half(seed: u8) -> Vec<u8> {
        (0..64u8)
            .map(|i| i.wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn order_of_arguments_does_not_matter() {
        let a = LinkKey::derive(&half(1), "COMP-a", &half(2), "COMP-b", None).unwrap();
        let b = LinkKey::derive(&half(2), "COMP-b", &half(1), "COMP-a", None).unwrap();
        assert_eq!(a.key.as_ref(), b.key.as_ref());
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = LinkKey::derive(&half(1), "COMP-a", &half(2), "COMP-b", None).unwrap();
        let others = [
            LinkKey::derive(&half(3), "COMP-a", &half(2), "COMP-b", None).unwrap(),
            LinkKey::derive(&half(1), "COMP-c", &half(2), "COMP-b", None).unwrap(),
            // swapping which component owns which half is a different link
            LinkKey::derive(&half(2), "COMP-a", &half(1), "COMP-b", None).unwrap(),
            LinkKey::derive(&half(1), "COMP-a", &half(2), "COMP-b", Some(&[9u8; 32])).unwrap(),
        ];
        for other in &others {
            assert_ne!(base.key.as_ref(), other.key.as_ref());
        }
    }

    #[test]
    fn bad_material_is_refused_without_echoing_it() {
        let short = [0x5Au8; 63];
        let err = LinkKey::derive(&short, "a", &half(2), "b", None).unwrap_err();
        assert!(matches!(err, Error::KeyMaterial(_)));
        assert!(!err.to_string().contains("5a") && !err.to_string().contains("90"));
        assert!(LinkKey::derive(&[0u8; 64], "a", &half(2), "b", None).is_err());
        assert!(LinkKey::derive(&half(1), "a", &half(1), "b", None).is_err());
        assert!(LinkKey::derive(&half(1), "a", &half(2), "a", None).is_err());
        assert!(LinkKey::derive(&half(1), "a", &half(2), "b", Some(&[0u8; 32])).is_err());
        assert!(LinkKey::derive(&half(1), "", &half(2), "b", None).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        let key = LinkKey::derive(&half(1), "a", &half(2), "b", None).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("redacted"));
        let hex_key: String = key.key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!shown.contains(&hex_key[..8]));
    }

    /// The link keys and direction keys of the shared known-answer vectors.
    #[test]
    fn known_answer_vectors() {
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/vectors/frame_path.json")).unwrap();
        let unhex = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
        let text = |v: &serde_json::Value| v.as_str().unwrap().to_owned();
        let mut links = std::collections::HashMap::new();
        for (name, link) in vectors["links"].as_object().unwrap() {
            let dh = link["dh_secret"].as_str().map(|h| hex::decode(h).unwrap());
            let key = LinkKey::derive(
                &unhex(&link["half_a"]),
                &text(&link["id_a"]),
                &unhex(&link["half_b"]),
                &text(&link["id_b"]),
                dh.as_deref(),
            )
            .unwrap();
            assert_eq!(
                hex::encode(key.key.as_ref()),
                text(&link["link_key"]),
                "{name}"
            );
            links.insert(name.clone(), key);
        }
        for frame in vectors["frames"].as_array().unwrap() {
            let okm = links[&text(&frame["link"])]
                .direction_key_bytes(
                    &text(&frame["sender"]),
                    &text(&frame["receiver"]),
                    &unhex(&frame["sender_nonce"]),
                    &unhex(&frame["receiver_nonce"]),
                )
                .unwrap();
            assert_eq!(hex::encode(&okm[..16]), text(&frame["enc_key"]));
            assert_eq!(hex::encode(&okm[16..]), text(&frame["mac_key"]));
        }
    }

    #[test]
    fn hkdf_matches_rfc5869_case_1() {
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let mut okm = [0u8; 42];
        Hkdf::<Sha256>::new(Some(&salt), &ikm)
            .expand(&info, &mut okm)
            .unwrap();
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }
}
