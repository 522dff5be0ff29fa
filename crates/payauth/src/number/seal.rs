//! A session key sealed for a shared store: ChaCha20-Poly1305 under a key derived (HKDF-SHA256)
//! from the gateway's token, which every replica holds and the store's operators do not.
//!
//! Sealed bytes are `nonce (12) || ciphertext || tag (16)`; the gateway's name is authenticated
//! data, so a key sealed for one gateway does not open as another's. A new token derives a new
//! key: keys sealed under the old one no longer open (they belonged to the old token anyway).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret::Secret;

const SALT: &[u8] = b"payauth shared session key v1";

/// Seals and opens one gateway's session keys.
pub struct KeySeal {
    key: LessSafeKey,
    gateway: String,
}

impl std::fmt::Debug for KeySeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySeal")
            .field("gateway", &self.gateway)
            .finish_non_exhaustive()
    }
}

/// The seal could not be made or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the sealed session key could not be made or opened")]
pub struct SealError;

impl KeySeal {
    /// The seal of `gateway`'s keys under `token`.
    pub fn new(token: &Secret<String>, gateway: &str) -> Result<Self, SealError> {
        let prk = Salt::new(HKDF_SHA256, SALT).extract(token.expose().as_bytes());
        let info = [gateway.as_bytes()];
        let okm = prk
            .expand(&info, &CHACHA20_POLY1305)
            .map_err(|_| SealError)?;
        let key = UnboundKey::from(okm);
        Ok(Self {
            key: LessSafeKey::new(key),
            gateway: gateway.to_owned(),
        })
    }

    /// Seals `session_key`.
    pub fn seal(&self, session_key: &Secret<String>) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError)?;
        let mut sealed = session_key.expose().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.gateway.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| SealError)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens what [`seal`](Self::seal) made with the same token and gateway.
    pub fn open(&self, sealed: &[u8]) -> Result<Secret<String>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError)?;
        let mut buffer = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(self.gateway.as_bytes()), &mut buffer)
            .map_err(|_| SealError)?;
        let text = std::str::from_utf8(plain).map_err(|_| SealError)?;
        Ok(Secret::new(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_its_token_and_gateway() {
        let token = Secret::new("2148B239CF6846BDA5D141BF4A4CFBE8".to_owned());
        let seal = KeySeal::new(&token, "number").unwrap();
        let key = Secret::new("9B9175EF556E4DDA93303132323141303035383339".to_owned());
        let sealed = seal.seal(&key).unwrap();
        assert!(
            !sealed
                .windows(8)
                .any(|w| w == &key.expose().as_bytes()[..8]),
            "no plaintext in the sealed bytes"
        );
        assert_eq!(seal.open(&sealed).unwrap().expose(), key.expose());
        assert_ne!(seal.seal(&key).unwrap(), sealed, "a fresh nonce each time");

        let other_token = KeySeal::new(&Secret::new("OTHER".to_owned()), "number").unwrap();
        assert_eq!(other_token.open(&sealed), Err(SealError));
        let other_gateway = KeySeal::new(&token, "number-b").unwrap();
        assert_eq!(other_gateway.open(&sealed), Err(SealError));
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(seal.open(&tampered), Err(SealError));
        assert_eq!(seal.open(&sealed[..5]), Err(SealError));
        assert!(!format!("{seal:?}").contains("2148"));
    }
}
