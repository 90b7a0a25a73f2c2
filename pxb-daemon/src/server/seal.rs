//! [`Sealer`]: encryption at rest of classic-mode secrets (AES-256-GCM, aws-lc-rs).
//!
//! Each ciphertext is bound to what it belongs to (org and record id as associated data), so a
//! sealed secret copied onto another record does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use pxb_core::catalog::records::Sealed;
use pxb_core::{Error, Result};

/// Seals and opens secrets with one key.
pub struct Sealer {
    key: LessSafeKey,
    key_id: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("key_id", &self.key_id).finish()
    }
}

impl Sealer {
    /// A sealer for a key given as base64 text (32 bytes once decoded).
    pub fn from_base64(text: &str) -> Result<Self> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| Error::invalid("the secrets key is not base64"))?;
        if bytes.len() != 32 {
            return Err(Error::invalid(format!(
                "the secrets key must be 32 bytes, it is {}",
                bytes.len()
            )));
        }
        let key_id = digest(&SHA256, &bytes).as_ref()[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| Error::invalid("the secrets key is not a valid AES-256 key"))?;
        Ok(Sealer {
            key: LessSafeKey::new(key),
            key_id,
        })
    }

    /// The sealer the configuration names: `PXB_SECRETS_KEY`, else the key file, else none.
    pub fn from_config(key_file: &str, env_key: Option<String>) -> Result<Option<Self>> {
        if let Some(k) = env_key.filter(|k| !k.trim().is_empty()) {
            return Self::from_base64(&k).map(Some);
        }
        if key_file.is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(key_file)
            .map_err(|e| Error::io(format!("reading the secrets key file {key_file}"), e))?;
        Self::from_base64(&text).map(Some)
    }

    /// Which key this is (a short digest, safe to store and log).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Encrypts `plain`, bound to `context`.
    pub fn seal(&self, plain: &[u8], context: &str) -> Result<Sealed> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::other("no randomness for a nonce"))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| Error::other("sealing failed"))?;
        Ok(Sealed {
            key_id: self.key_id.clone(),
            nonce: STANDARD.encode(nonce),
            ciphertext: STANDARD.encode(buf),
        })
    }

    /// Decrypts what [`Sealer::seal`] made for the same `context`; anything else is an error that
    /// says why without revealing anything.
    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<Vec<u8>> {
        if sealed.key_id != self.key_id {
            return Err(Error::precondition(format!(
                "the secret was sealed with key {}, the server has key {}",
                sealed.key_id, self.key_id
            )));
        }
        let nonce: [u8; NONCE_LEN] = STANDARD
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| Error::corrupt("the sealed secret's nonce is damaged"))?;
        let mut buf = STANDARD
            .decode(&sealed.ciphertext)
            .map_err(|_| Error::corrupt("the sealed secret is not base64"))?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| {
                Error::corrupt("the sealed secret does not decrypt (damaged, or sealed for another record)")
            })?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        STANDARD.encode([7u8; 32])
    }

    #[test]
    fn seal_and_open_round_trip_bound_to_context() {
        let s = Sealer::from_base64(&key()).expect("key");
        let sealed = s.seal(b"account-key-123", "acme/loc-1").expect("seal");
        assert!(!sealed.ciphertext.contains("account-key-123"));
        assert_eq!(s.open(&sealed, "acme/loc-1").expect("open"), b"account-key-123");
        assert!(
            s.open(&sealed, "other/loc-1").is_err(),
            "opened for another record"
        );
        let mut damaged = sealed.clone();
        damaged.ciphertext = STANDARD.encode(b"garbage-garbage-garbage");
        assert!(matches!(
            s.open(&damaged, "acme/loc-1"),
            Err(Error::Corrupt { .. })
        ));
        let other = Sealer::from_base64(&STANDARD.encode([8u8; 32])).expect("key");
        assert!(matches!(
            other.open(&sealed, "acme/loc-1"),
            Err(Error::Precondition { .. })
        ));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(Sealer::from_base64("not base64!").is_err());
        assert!(Sealer::from_base64(&STANDARD.encode([1u8; 16])).is_err());
        assert!(Sealer::from_config("", None).expect("none").is_none());
        assert!(Sealer::from_config("", Some(key())).expect("env").is_some());
    }
}
