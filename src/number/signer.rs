//! The per-request HMAC-SHA256 signature of Number's PCI mode.
//!
//! The `SessKey` header becomes `{SessKey}_{Epoch}_{UserID}_{HASH}` where `HASH` is the uppercase
//! hex HMAC-SHA256, keyed with the ASCII bytes of the 32-character hex secret (not its decoded
//! bytes), of `{SessKey}_{Epoch}_{UserID}`.
//!
//! This is on every request's path, so:
//! * the keyed HMAC state (the inner and outer pads already absorbed) is computed once per secret
//!   and cloned per signature: a signature costs the three SHA-256 block compressions a 56..119
//!   byte message needs, plus formatting;
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
use http::HeaderValue;
use sha2::digest::generic_array::GenericArray;

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

const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// HMAC-SHA256 with the inner and outer pads already absorbed: each MAC costs only the
/// compressions of the message and of the inner digest, on top of `sha2`'s block function.
#[derive(Clone)]
struct PaddedKey {
    inner: [u32; 8],
    outer: [u32; 8],
}

impl PaddedKey {
    fn new(key: &[u8]) -> Self {
        // Keys longer than a block are hashed first (RFC 2104).
        let mut block = [0u8; 64];
        if key.len() > 64 {
            block[..32].copy_from_slice(&sha256(&[key]));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let pad = |byte: u8| {
            let mut padded = block;
            padded.iter_mut().for_each(|b| *b ^= byte);
            let mut state = SHA256_IV;
            sha2::compress256(&mut state, &[GenericArray::from(padded)]);
            state
        };
        Self {
            inner: pad(0x36),
            outer: pad(0x5c),
        }
    }

    /// The MAC of `message`.
    fn mac(&self, message: &[u8]) -> [u8; 32] {
        let mut inner = self.inner;
        absorb_final(&mut inner, message, 64);
        // The outer hash is always one block: the 32-byte inner digest, padding, and the length
        // of pad block + digest (96 bytes = 768 bits = 0x0300).
        let mut block = GenericArray::from([0u8; 64]);
        for (chunk, word) in block[..32].chunks_exact_mut(4).zip(&inner) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        block[32] = 0x80;
        block[62] = 0x03;
        let mut outer = self.outer;
        sha2::compress256(&mut outer, std::slice::from_ref(&block));
        let mut digest = [0u8; 32];
        write_state(&outer, &mut digest);
        digest
    }
}

/// Absorbs `data` into a state that has already absorbed `prefix_len` bytes (whole blocks) and
/// applies SHA-256's final padding.
fn absorb_final(state: &mut [u32; 8], data: &[u8], prefix_len: u64) {
    let full = data.len() / 64 * 64;
    for chunk in data[..full].chunks_exact(64) {
        sha2::compress256(state, &[GenericArray::clone_from_slice(chunk)]);
    }
    let tail = &data[full..];
    let mut scratch = [0u8; 128];
    scratch[..tail.len()].copy_from_slice(tail);
    scratch[tail.len()] = 0x80;
    let len = if tail.len() + 9 <= 64 { 64 } else { 128 };
    let bits = (prefix_len + data.len() as u64) * 8;
    scratch[len - 8..len].copy_from_slice(&bits.to_be_bytes());
    for block in scratch[..len].chunks_exact(64) {
        sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
    }
}

fn write_state(state: &[u32; 8], out: &mut [u8; 32]) {
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Signs session keys for one secret and user id.
#[derive(Clone)]
pub struct Signer {
    keyed: PaddedKey,
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
        Ok(Self {
            keyed: PaddedKey::new(key),
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

        let digest = self.keyed.mac(&out[..message_len]);

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
        /// The precomputed-pad HMAC equals the `hmac` crate's for any key and any message a
        /// signature can have.
        #[test]
        fn padded_key_matches_the_hmac_crate(
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..150),
            message in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            use hmac::{Hmac, Mac};
            let mut reference = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
            reference.update(&message);
            let expected: [u8; 32] = reference.finalize().into_bytes().into();
            proptest::prop_assert_eq!(PaddedKey::new(&key).mac(&message), expected);
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
