//! The per-request HMAC-SHA256 signature of Number's PCI mode.
//!
//! The `SessKey` header becomes `{SessKey}_{Epoch}_{UserID}_{HASH}` where `HASH` is the uppercase
//! hex HMAC-SHA256, keyed with the ASCII bytes of the 32-character hex secret (not its decoded
//! bytes), of `{SessKey}_{Epoch}_{UserID}`.
//!
//! This is on every request's path, so:
//! * the keyed `Hmac<Sha256>` state (the inner and outer pads already absorbed) is computed once
//!   per secret and cloned per signature: a signature costs the three SHA-256 block compressions
//!   a 56..119 byte message needs, plus formatting;
//! * a signature is written into a stack buffer, with no heap allocation;
//! * the value depends only on (key, epoch second, user id), so [`SignatureCache`] computes it at
//!   most once per second per key and hands out the cached header value.
//!
//! ```
//! use payauth::number::Signer;
//! use payauth::Secret;
//!
//! let signer = Signer::new(&Secret::from("7D55DBB3D691C9E0FDF341E4AB38C3C9"), 123).unwrap();
//! let mut buf = payauth::number::SignatureBuf::new();
//! let header = signer.sign("9B9175EF556E4DDA93303132323141303035383339", 1702565789, &mut buf).unwrap();
//! assert!(header.ends_with("_1BD0C45A1DCBC7F9D0730FDD6222A45E10FCC7D9E84557499B812B138D0B7149"));
//! ```

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use hmac::{Hmac, Mac};
use http::HeaderValue;
use sha2::Sha256;

use crate::secret::Secret;

/// The longest session key payauth signs. Number's keys are 42 characters.
pub const MAX_SESS_KEY_LEN: usize = 128;

/// Room for `{SessKey}_{Epoch}_{UserID}_{HASH}` with the longest key, a 20-digit epoch and a
/// 20-digit user id.
const BUF_LEN: usize = MAX_SESS_KEY_LEN + 1 + 20 + 1 + 20 + 1 + 64;

/// Every byte's two uppercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0x0f]];
        i += 1;
    }
    table
};

/// Why a signature could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The secret is empty.
    #[error("the HMAC secret is empty")]
    EmptySecret,
    /// The session key is longer than [`MAX_SESS_KEY_LEN`] or not visible ASCII.
    #[error("the session key is not a short visible-ASCII string")]
    BadKey,
}

/// A stack buffer a signature is written into.
#[derive(Clone)]
pub struct SignatureBuf {
    bytes: [u8; BUF_LEN],
}

impl SignatureBuf {
    /// An empty buffer.
    pub const fn new() -> Self {
        Self {
            bytes: [0; BUF_LEN],
        }
    }
}

impl Default for SignatureBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for SignatureBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignatureBuf(<redacted>)")
    }
}

/// Signs session keys for one secret and user id.
#[derive(Clone)]
pub struct Signer {
    /// HMAC-SHA256 keyed with the secret: cloned, never updated in place.
    keyed: Hmac<Sha256>,
    user_id: u64,
    /// `_{user_id}`, formatted once.
    suffix: ([u8; 21], usize),
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("secret", &"<redacted>")
            .field("user_id", &self.user_id)
            .finish()
    }
}

impl Signer {
    /// A signer for `secret` (its ASCII bytes are the HMAC key) and `user_id`.
    pub fn new(secret: &Secret<String>, user_id: u64) -> Result<Self, SignError> {
        let key = secret.expose().trim().as_bytes();
        if key.is_empty() {
            return Err(SignError::EmptySecret);
        }
        let mut suffix = [0u8; 21];
        suffix[0] = b'_';
        let digits = itoa::Buffer::new().format(user_id).as_bytes().to_owned();
        suffix[1..=digits.len()].copy_from_slice(&digits);
        // HMAC takes keys of any length (longer ones are hashed first), so this cannot fail.
        let keyed = Hmac::<Sha256>::new_from_slice(key).map_err(|_| SignError::EmptySecret)?;
        Ok(Self {
            keyed,
            user_id,
            suffix: (suffix, digits.len() + 1),
        })
    }

    /// The user id that goes into every signature.
    pub fn user_id(&self) -> u64 {
        self.user_id
    }

    /// Writes the signed header value for `sess_key` at `epoch` into `buf` and returns it.
    pub fn sign<'b>(
        &self,
        sess_key: &str,
        epoch: u64,
        buf: &'b mut SignatureBuf,
    ) -> Result<&'b str, SignError> {
        let key = sess_key.as_bytes();
        if key.is_empty() || key.len() > MAX_SESS_KEY_LEN || !key.iter().all(u8::is_ascii_graphic) {
            return Err(SignError::BadKey);
        }
        let out = &mut buf.bytes;
        let mut len = 0;
        let mut push = |bytes: &[u8], len: &mut usize| {
            out[*len..*len + bytes.len()].copy_from_slice(bytes);
            *len += bytes.len();
        };
        push(key, &mut len);
        push(b"_", &mut len);
        push(itoa::Buffer::new().format(epoch).as_bytes(), &mut len);
        push(&self.suffix.0[..self.suffix.1], &mut len);
        let message_len = len;

        let mut mac = self.keyed.clone();
        mac.update(&out[..message_len]);
        let digest = mac.finalize().into_bytes();

        out[message_len] = b'_';
        let hex = &mut out[message_len + 1..message_len + 1 + 64];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(digest) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
        let total = message_len + 1 + 64;
        // Every byte written is visible ASCII: the key was checked, the rest is digits, '_' and hex.
        std::str::from_utf8(&out[..total]).map_err(|_| SignError::BadKey)
    }
}

/// The signed header value of one session key, computed at most once per second.
///
/// The value of the current second lives in one shared slot; each thread also keeps the last
/// value it handed out, so a hit costs a thread-local read and a comparison, without touching
/// memory other threads write.
pub struct SignatureCache {
    id: u64,
    slot: ArcSwapOption<(u64, HeaderValue)>,
}

static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// (cache id, epoch, value) of the last signature this thread handed out.
    static LAST: RefCell<Option<(u64, u64, HeaderValue)>> = const { RefCell::new(None) };
}

impl Default for SignatureCache {
    fn default() -> Self {
        Self {
            id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
            slot: ArcSwapOption::empty(),
        }
    }
}

impl fmt::Debug for SignatureCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignatureCache(<redacted>)")
    }
}

impl SignatureCache {
    /// Calls `f` with the header value for `epoch`, computing it only if this second was not
    /// signed yet. Borrowing avoids even the reference-count traffic of an owned value.
    pub fn with_value<R>(
        &self,
        signer: &Signer,
        sess_key: &str,
        epoch: u64,
        f: impl FnOnce(&HeaderValue) -> R,
    ) -> Result<R, SignError> {
        let mut f = Some(f);
        let hit = LAST.with(|last| {
            let last = last.borrow();
            match last.as_ref() {
                Some((id, at, value)) if *id == self.id && *at == epoch => {
                    f.take().map(|f| f(value))
                }
                _ => None,
            }
        });
        if let Some(result) = hit {
            return Ok(result);
        }
        let value = self.shared(signer, sess_key, epoch)?;
        let result = f.take().map(|f| f(&value));
        LAST.with(|last| *last.borrow_mut() = Some((self.id, epoch, value)));
        result.ok_or(SignError::BadKey)
    }

    /// The header value for `epoch`, owned (what a request's header map takes).
    pub fn header(
        &self,
        signer: &Signer,
        sess_key: &str,
        epoch: u64,
    ) -> Result<HeaderValue, SignError> {
        // The hit path written out rather than through `with_value`: most requests take it, and
        // without the closure plumbing it costs little more than the clone itself (benches/sign.rs).
        let hit = LAST.with_borrow(|last| match last {
            Some((id, at, value)) if *id == self.id && *at == epoch => Some(value.clone()),
            _ => None,
        });
        match hit {
            Some(value) => Ok(value),
            None => self.header_miss(signer, sess_key, epoch),
        }
    }

    /// Kept out of line so that the hit path stays a small function.
    #[cold]
    #[inline(never)]
    fn header_miss(
        &self,
        signer: &Signer,
        sess_key: &str,
        epoch: u64,
    ) -> Result<HeaderValue, SignError> {
        self.with_value(signer, sess_key, epoch, HeaderValue::clone)
    }

    fn shared(
        &self,
        signer: &Signer,
        sess_key: &str,
        epoch: u64,
    ) -> Result<HeaderValue, SignError> {
        if let Some(cached) = self.slot.load().as_ref() {
            if cached.0 == epoch {
                return Ok(cached.1.clone());
            }
        }
        let mut buf = SignatureBuf::new();
        let signed = signer.sign(sess_key, epoch, &mut buf)?;
        let mut value = HeaderValue::from_str(signed).map_err(|_| SignError::BadKey)?;
        value.set_sensitive(true);
        // Two requests racing at a second boundary store the same value: harmless.
        self.slot.store(Some(Arc::new((epoch, value.clone()))));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "9B9175EF556E4DDA93303132323141303035383339";
    const SECRET: &str = "7D55DBB3D691C9E0FDF341E4AB38C3C9";
    const EXPECTED: &str = "9B9175EF556E4DDA93303132323141303035383339_1702565789_123_1BD0C45A1DCBC7F9D0730FDD6222A45E10FCC7D9E84557499B812B138D0B7149";

    #[test]
    fn vendor_test_vector() {
        let signer = Signer::new(&Secret::from(SECRET), 123).expect("signer");
        let mut buf = SignatureBuf::new();
        assert_eq!(
            signer.sign(KEY, 1_702_565_789, &mut buf).expect("sign"),
            EXPECTED
        );
    }

    #[test]
    fn cache_hands_out_the_same_second_and_recomputes_the_next() {
        let signer = Signer::new(&Secret::from(SECRET), 123).expect("signer");
        let cache = SignatureCache::default();
        let first = cache.header(&signer, KEY, 1_702_565_789).expect("sign");
        assert_eq!(first.to_str().expect("ascii"), EXPECTED);
        assert!(first.is_sensitive());
        let again = cache.header(&signer, KEY, 1_702_565_789).expect("sign");
        assert_eq!(again, first);
        let next = cache.header(&signer, KEY, 1_702_565_790).expect("sign");
        assert_ne!(next, first);
        assert!(next.to_str().expect("ascii").contains("_1702565790_123_"));
    }

    #[test]
    fn debug_shows_no_secret() {
        let signer = Signer::new(&Secret::from(SECRET), 123).expect("signer");
        assert!(!format!("{signer:?}").contains(SECRET));
    }

    proptest::proptest! {
        /// For any secret, key, epoch and user id, the header is `{message}_{HASH}` with `HASH`
        /// the uppercase hex of an HMAC keyed afresh: the cloned keyed state and the stack buffer
        /// change nothing.
        #[test]
        fn signature_is_the_message_and_its_hmac(
            secret in "[0-9A-F]{1,100}",
            sess_key in "[!-~]{1,128}",
            epoch in proptest::prelude::any::<u64>(),
            user_id in proptest::prelude::any::<u64>(),
        ) {
            let signer = Signer::new(&Secret::from(secret.as_str()), user_id).expect("signer");
            let mut buf = SignatureBuf::new();
            let signed = signer.sign(&sess_key, epoch, &mut buf).expect("sign");
            let message = format!("{sess_key}_{epoch}_{user_id}");
            let mut reference = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
            reference.update(message.as_bytes());
            let hash: String = reference
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect();
            proptest::prop_assert_eq!(signed, format!("{message}_{hash}"));
        }
    }

    #[test]
    fn refuses_bad_keys() {
        let signer = Signer::new(&Secret::from(SECRET), 1).expect("signer");
        let mut buf = SignatureBuf::new();
        assert_eq!(signer.sign("", 1, &mut buf), Err(SignError::BadKey));
        assert_eq!(signer.sign("a b", 1, &mut buf), Err(SignError::BadKey));
        assert_eq!(
            signer.sign(&"A".repeat(200), 1, &mut buf),
            Err(SignError::BadKey)
        );
        assert!(Signer::new(&Secret::from(""), 1).is_err());
    }
}
