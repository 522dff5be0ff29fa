//! One session key as obtained by one authentication: the value sent with each call (plain, or
//! signed per request in PCI mode), its generation and its age.

use std::fmt;

use http::HeaderValue;

use super::signer::{SignError, SignatureCache, Signer};
use crate::secret::Secret;

/// One session key, as obtained by one authentication.
pub(crate) struct KeyState {
    key: Secret<String>,
    /// Increases with every authentication: a caller that saw an older generation than the
    /// current one replays with the current key without authenticating.
    pub(crate) generation: u64,
    /// When the gateway issued it (for the renewal brake).
    pub(crate) obtained: tokio::time::Instant,
    plain: HeaderValue,
    signer: Option<Signer>,
    signatures: SignatureCache,
}

impl fmt::Debug for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyState")
            .field("key", &self.key)
            .field("generation", &self.generation)
            .field("signed", &self.signer.is_some())
            .finish()
    }
}

/// What is public about the current key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    /// How many keys this gateway obtained before this one.
    pub generation: u64,
}

impl KeyState {
    pub(crate) fn new(
        key: Secret<String>,
        generation: u64,
        signer: Option<Signer>,
        obtained: tokio::time::Instant,
    ) -> Result<Self, SignError> {
        let mut plain = HeaderValue::from_str(key.expose()).map_err(|_| SignError::BadKey)?;
        plain.set_sensitive(true);
        if let Some(signer) = &signer {
            // Prove now, not on the first call, that the key can be signed.
            signer.sign(key.expose(), 0, &mut super::SignatureBuf::new())?;
        }
        Ok(Self {
            key,
            generation,
            obtained,
            plain,
            signer,
            signatures: SignatureCache::default(),
        })
    }

    pub(crate) fn key_clone(&self) -> Secret<String> {
        self.key.clone()
    }

    /// The value that goes where the gateway expects the session key, at `epoch`.
    pub(crate) fn value(&self, epoch: u64) -> Result<HeaderValue, SignError> {
        match &self.signer {
            None => Ok(self.plain.clone()),
            Some(signer) => self.signatures.header(signer, self.key.expose(), epoch),
        }
    }
}
