//! The relay form: finding its fields the way the gateway does, and rewriting it byte for byte.
//!
//! Apps post `user=..&password=..&int_in=<ashrait>...` to the relay, some URL-encoded, many
//! not encoded at all. payauth removes the credentials (and any `sessionId` the app sent), adds
//! its own `sessionId`, and keeps every other byte exactly as the app sent it: `int_in` is
//! never decoded and re-encoded on the way to the gateway, only decoded into a copy to read.
//!
//! payauth's `sessionId` goes right before `int_in` (`...&sessionId=<id>&int_in=...`, the order of
//! the vendor's examples). There it always starts a field of its own, so a rewritten form splits
//! into the same fields again, whatever came before. One exception: a raw `int_in` that is not
//! the last field was ended by a relay field (`int_in=<xml>&user=..&mid=1`); with that credential
//! gone the XML would run into what follows (or its own trailing `&` would end the body), so
//! there `sessionId` goes right after `int_in` and ends the XML the same way.
//!
//! # How the gateway reads a form
//!
//! The relay decodes forms like a Java servlet container: it cuts the body at **every** `&`
//! into *pieces*; a piece's name is what comes before its first `=` (the whole piece if it has
//! none, with an empty value); names and values are percent-decoded with `+` as a space; the
//! first value of a repeated name wins. payauth must never disagree with that about which piece
//! is `user`, `password`, `sessionId` or `int_in` (the *relay fields*), so it names pieces the
//! same way, and more broadly: a piece names a relay field when its name, percent-decoded
//! (`+` as space), with leading and trailing bytes up to `0x20` removed (Java's `String.trim`),
//! is one of the four in any ASCII case (`us%65r`, `PASSWORD`, `int%5Fin`, `INT_IN`, `+int_in`
//! all count). A name holding a `%` not followed by two hex digits is refused
//! ([`FormError::BadEscape`]): servlet containers differ on it (some drop the piece, some keep
//! the `%`, some read `%u0065` as `e`). See [`relay_field`].
//!
//! # The splitting rule
//!
//! The body is cut into *segments* at field boundaries; the segments joined with `&` are always
//! the body again, byte for byte. The body's start begins a segment, and a `&` is a field
//! boundary when it is followed by
//!
//! * a piece that names a relay field (with or without `=`),
//! * a field name and `=` (a name is one or more bytes other than `&` and `=`), or
//! * another `&` or the end of the body (an empty field, as naive form builders leave).
//!
//! Every other `&` belongs to the value it appears in. That keeps `&amp;` (and `&#38;`, `&lt;`)
//! inside values, and keeps a raw password such as `p&ss` in one piece (a raw value with
//! `&name=` inside it is split there, as any form parser would).
//!
//! A **raw `int_in`** (its value starts, after optional whitespace or a byte-order mark, with
//! `<`) is XML that may contain `&` anywhere, even `&name=` inside a URL in a text node. Its
//! value therefore runs to the end of the body, or to the first `&` followed by a piece that
//! names a relay field (by the decoded, trimmed, case-blind rule above). A URL-encoded `int_in`
//! (any other first byte) follows the general rule: its own `&`s are encoded as `%26`.
//!
//! If a raw `int_in`'s XML itself contains `&user=` (or another relay field, however spelled),
//! the value is cut there, the XML is left incomplete, and the request is refused with
//! `bad_request` when the XML is read: ambiguity is refused, never guessed.
//!
//! So every piece the gateway would take for a relay field starts a segment of payauth's, and
//! payauth gives that segment the same meaning.
//!
//! # What is read
//!
//! `int_in`'s value is percent-decoded (`+` as space) into a copy before its XML is read,
//! **raw or not**: the gateway decodes every value, so a raw `%3C!--` is a comment to it, and
//! must be one to payauth too. A `%` in `int_in` not followed by two hex digits is refused
//! ([`FormError::BadEscape`]). The bytes forwarded stay exactly as the app sent them.
//!
//! # What is removed
//!
//! Segments naming `user`, `password` or `sessionId`, with the `&` that joined them. A relay
//! field named twice (under any spelling: `user` and `us%65r` are two `user`s), or no `int_in`,
//! make the form unusable ([`FormError`]). Everything else, unnamed segments included, is kept
//! in order.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// The field payauth adds.
pub const SESSION_ID_FIELD: &str = "sessionId";

/// `application/x-www-form-urlencoded` bytes that stay as they are (the WHATWG set).
const FORM_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// The longest relay field name (`sessionId`).
const LONGEST_RELAY_NAME: usize = 9;

/// How the app sent `int_in`'s value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntInEncoding {
    /// Plain XML, not URL-encoded (still percent-decoded for reading, as the gateway does).
    Raw,
    /// URL-encoded (`%3Cashrait%3E...`, `+` for space).
    UrlEncoded,
}

/// What a field is to payauth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// `user`, `password` or `sessionId`: removed.
    Credential,
    /// `int_in`: kept byte for byte, and read.
    IntIn,
    /// Anything else (unnamed segments included): kept byte for byte.
    Other,
}

/// The four fields of the relay's form that payauth acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayField {
    /// `user`: a credential.
    User,
    /// `password`: a credential.
    Password,
    /// `sessionId`: a credential (payauth adds its own).
    SessionId,
    /// `int_in`: the request XML.
    IntIn,
}

impl RelayField {
    /// All four.
    pub const ALL: [Self; 4] = [Self::User, Self::Password, Self::SessionId, Self::IntIn];

    /// The name as the vendor spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Password => "password",
            Self::SessionId => SESSION_ID_FIELD,
            Self::IntIn => "int_in",
        }
    }

    /// What payauth does with it.
    pub fn kind(self) -> FieldKind {
        match self {
            Self::IntIn => FieldKind::IntIn,
            Self::User | Self::Password | Self::SessionId => FieldKind::Credential,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The field an already decoded and trimmed name means (ASCII case-blind).
    fn matching(name: &[u8]) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| name.eq_ignore_ascii_case(f.name().as_bytes()))
    }
}

/// Why a form cannot be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// No `int_in` field.
    #[error("the form has no int_in field")]
    MissingIntIn,
    /// A relay field (`user`, `password`, `sessionId`, `int_in`) named more than once, under
    /// any spelling.
    #[error("the form has more than one {0} field")]
    Duplicate(&'static str),
    /// A `%` not followed by two hex digits in a field name or in `int_in`.
    #[error("the form has a bad percent-escape in a field name or in int_in")]
    BadEscape,
}

/// The relay field a form field's name means, read the way a servlet container reads it and
/// more broadly: percent-decoded with `+` as a space, bytes up to `0x20` trimmed from both ends,
/// compared without ASCII case. `Err(BadEscape)` for a `%` not followed by two hex digits.
/// Allocates nothing; names without `%`, `+` or whitespace are compared as they are.
pub fn relay_field(name: &[u8]) -> Result<Option<RelayField>, FormError> {
    if !name
        .iter()
        .any(|&b| b == b'%' || b == b'+' || is_trimmed(b))
    {
        if name.len() > LONGEST_RELAY_NAME {
            return Ok(None);
        }
        return Ok(RelayField::matching(name));
    }
    // Decode on the fly into a buffer just long enough for a relay name: `seen` counts decoded
    // bytes from the first untrimmed one, `content` ends at the last untrimmed one. Every
    // escape is checked, even past the point where the name can no longer be a relay field
    // (leading and trailing blanks may be any number of `+` or `%20`).
    let mut buf = [0u8; LONGEST_RELAY_NAME];
    let (mut seen, mut content) = (0, 0);
    let mut i = 0;
    while i < name.len() {
        let b = match name[i] {
            b'+' => b' ',
            b'%' => {
                let (Some(hi), Some(lo)) =
                    (name.get(i + 1).and_then(hex), name.get(i + 2).and_then(hex))
                else {
                    return Err(FormError::BadEscape);
                };
                i += 2;
                hi << 4 | lo
            }
            b => b,
        };
        i += 1;
        if seen == 0 && is_trimmed(b) {
            continue;
        }
        if let Some(slot) = buf.get_mut(seen) {
            *slot = b;
        }
        seen += 1;
        if !is_trimmed(b) {
            content = seen;
            if content > LONGEST_RELAY_NAME {
                // Too long for a relay name, whatever follows: only the escapes are left to check.
                if !escapes_are_valid(&name[i..]) {
                    return Err(FormError::BadEscape);
                }
                return Ok(None);
            }
        }
    }
    Ok(buf.get(..content).and_then(RelayField::matching))
}

/// Bytes trimmed from a decoded name: what Java's `String.trim` removes (ASCII whitespace and
/// the other control characters), so that a container trimming names sees no relay field that
/// payauth does not.
fn is_trimmed(b: u8) -> bool {
    b <= b' '
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: usize,
    end: usize,
    /// End of the name: the `=` after it, or the end of the piece for a relay field sent
    /// without `=`. `None` for unnamed segments.
    name_end: Option<usize>,
    /// The value: after the `=`; empty for a relay field sent without `=`; the whole segment
    /// for unnamed ones.
    value_start: usize,
    value_end: usize,
    relay: Option<RelayField>,
}

impl Segment {
    fn kind(&self) -> FieldKind {
        self.relay.map_or(FieldKind::Other, RelayField::kind)
    }
}

/// The first piece (up to the next `&`) of what starts at `start`, as a servlet names it.
#[derive(Debug, Clone, Copy)]
struct FormPiece {
    start: usize,
    /// The first `&` or `=` at or after `start`, or the end of the body.
    name_end: usize,
    /// Whether `name_end` is a `=`.
    has_eq: bool,
    relay: Option<RelayField>,
}

impl FormPiece {
    fn at(body: &[u8], start: usize) -> Result<Self, FormError> {
        let rest = &body[start..];
        let len = memchr::memchr2(b'&', b'=', rest).unwrap_or(rest.len());
        Ok(Self {
            start,
            name_end: start + len,
            has_eq: rest.get(len) == Some(&b'='),
            relay: relay_field(&rest[..len])?,
        })
    }

    /// Whether a segment starts here, after a `&` that ends a value (a raw `int_in`'s, or any
    /// other's).
    fn starts_segment(&self, body_len: usize, raw_int_in: bool) -> bool {
        if self.relay.is_some() || self.start == body_len {
            return true;
        }
        let empty_name = self.name_end == self.start;
        !raw_int_in
            && (if empty_name {
                !self.has_eq
            } else {
                self.has_eq
            })
    }
}

/// One segment of a form, borrowed from the body.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The name as sent, when the segment starts with `name=` (or is a relay field sent
    /// without `=`).
    pub name: Option<&'a [u8]>,
    /// The value as sent (after `=`; empty for a relay field sent without `=`), or the whole
    /// segment when it has no name.
    pub value: &'a [u8],
    /// The whole segment as sent.
    pub bytes: &'a [u8],
    /// The relay field it is, if any.
    pub relay: Option<RelayField>,
    /// What payauth does with it.
    pub kind: FieldKind,
}

// Values hold passwords and card data: only names and sizes are shown.
impl fmt::Debug for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Field")
            .field("name", &self.name.map(String::from_utf8_lossy))
            .field("value_len", &self.value.len())
            .field("kind", &self.kind)
            .finish()
    }
}

/// A relay form split into its fields. Holds the body; rewriting copies only what it keeps.
#[derive(Clone)]
pub struct RelayForm {
    body: Bytes,
    segments: Vec<Segment>,
    int_in: usize,
    encoding: IntInEncoding,
}

// The body holds passwords and card data: only the shape is shown.
impl fmt::Debug for RelayForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayForm")
            .field("body_len", &self.body.len())
            .field("fields", &self.segments.len())
            .field("int_in_len", &self.int_in().len())
            .field("encoding", &self.encoding)
            .finish()
    }
}

impl RelayForm {
    /// Splits a form by the rule in the module documentation.
    pub fn parse(body: Bytes) -> Result<Self, FormError> {
        let segments = split(&body)?;
        let mut seen = [false; RelayField::ALL.len()];
        let mut int_in = None;
        for (i, segment) in segments.iter().enumerate() {
            let Some(relay) = segment.relay else {
                continue;
            };
            if std::mem::replace(&mut seen[relay.index()], true) {
                return Err(FormError::Duplicate(relay.name()));
            }
            if relay == RelayField::IntIn {
                int_in = Some(i);
            }
        }
        let int_in = int_in.ok_or(FormError::MissingIntIn)?;
        let segment = &segments[int_in];
        let value = &body[segment.value_start..segment.value_end];
        if !escapes_are_valid(value) {
            return Err(FormError::BadEscape);
        }
        let encoding = if starts_raw(value) {
            IntInEncoding::Raw
        } else {
            IntInEncoding::UrlEncoded
        };
        Ok(Self {
            body,
            segments,
            int_in,
            encoding,
        })
    }

    /// The body as the app sent it.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// `int_in`'s value exactly as sent (still encoded, if it was).
    pub fn int_in(&self) -> &[u8] {
        let segment = &self.segments[self.int_in];
        &self.body[segment.value_start..segment.value_end]
    }

    /// How `int_in` was sent.
    pub fn int_in_encoding(&self) -> IntInEncoding {
        self.encoding
    }

    /// `int_in`'s XML as the gateway reads it: percent-decoded with `+` as a space, raw or not
    /// (the gateway decodes every value). A copy to read, never to forward; borrowed when there
    /// is nothing to decode.
    pub fn decoded_int_in(&self) -> Cow<'_, [u8]> {
        // `parse` refused bad escapes, so this decodes exactly as a servlet container does.
        form_decode(self.int_in())
    }

    /// Every segment, in order.
    pub fn fields(&self) -> impl Iterator<Item = Field<'_>> + '_ {
        self.segments.iter().map(|s| Field {
            name: s.name_end.map(|end| &self.body[s.start..end]),
            value: &self.body[s.value_start..s.value_end],
            bytes: &self.body[s.start..s.end],
            relay: s.relay,
            kind: s.kind(),
        })
    }

    /// The value of the first field named `name` (exact match, not decoded), as sent.
    pub fn value(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|f| f.name == Some(name.as_bytes()))
            .map(|f| f.value)
    }

    /// Whether any credential field (`user`, `password`, `sessionId`) is present.
    pub fn has_credentials(&self) -> bool {
        self.segments
            .iter()
            .any(|s| s.kind() == FieldKind::Credential)
    }

    /// The form to send: every non-credential segment as sent, in order, joined by `&`, with
    /// `session_field` (a whole `sessionId=...` field, see [`session_field`]) right before
    /// `int_in` (right after a raw `int_in` that is not the last field; see the module docs).
    pub fn rewrite(&self, session_field: &[u8]) -> Bytes {
        let kept = self
            .segments
            .iter()
            .filter(|s| s.kind() != FieldKind::Credential);
        let session_after =
            self.encoding == IntInEncoding::Raw && self.int_in + 1 < self.segments.len();
        let len = session_field.len() + kept.clone().map(|s| 1 + s.end - s.start).sum::<usize>();
        let mut out = BytesMut::with_capacity(len);
        for (i, segment) in kept.enumerate() {
            if i > 0 {
                out.put_u8(b'&');
            }
            let is_int_in = segment.relay == Some(RelayField::IntIn);
            if is_int_in && !session_after {
                out.put_slice(session_field);
                out.put_u8(b'&');
            }
            out.put_slice(&self.body[segment.start..segment.end]);
            if is_int_in && session_after {
                out.put_u8(b'&');
                out.put_slice(session_field);
            }
        }
        out.freeze()
    }
}

/// The whole `sessionId=<id>` field, the id URL-encoded.
pub fn session_field(session_id: &str) -> Bytes {
    let mut out = Vec::with_capacity(SESSION_ID_FIELD.len() + 1 + session_id.len());
    out.extend_from_slice(SESSION_ID_FIELD.as_bytes());
    out.push(b'=');
    form_encode(session_id.as_bytes(), &mut out);
    Bytes::from(out)
}

/// URL-encodes a form value (spaces as `%20`, which every decoder accepts).
pub fn form_encode(value: &[u8], out: &mut Vec<u8>) {
    for chunk in percent_encoding::percent_encode(value, FORM_VALUE) {
        out.extend_from_slice(chunk.as_bytes());
    }
}

/// Decodes a URL-encoded form value: `+` is a space, `%XX` a byte; a `%` not followed by two
/// hex digits stays as it is (forms with one in a name or in `int_in` are refused before
/// anything is decoded for a decision). Borrows when there is nothing to decode.
pub fn form_decode(value: &[u8]) -> Cow<'_, [u8]> {
    let Some(first) = memchr::memchr2(b'%', b'+', value) else {
        return Cow::Borrowed(value);
    };
    let mut out = Vec::with_capacity(value.len());
    out.extend_from_slice(&value[..first]);
    let mut i = first;
    while i < value.len() {
        match value[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (
                value.get(i + 1).and_then(hex),
                value.get(i + 2).and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            _ => {
                // Copy the run up to the next escape in one go.
                let run = memchr::memchr2(b'%', b'+', &value[i..]).unwrap_or(value.len() - i);
                out.extend_from_slice(&value[i..i + run]);
                i += run;
            }
        }
    }
    Cow::Owned(out)
}

/// Whether every `%` in `value` starts a `%XX` escape.
fn escapes_are_valid(value: &[u8]) -> bool {
    memchr::memchr_iter(b'%', value).all(|i| {
        value.get(i + 1).and_then(hex).is_some() && value.get(i + 2).and_then(hex).is_some()
    })
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a value is raw XML: `<` first, after whitespace or a UTF-8 byte-order mark.
fn starts_raw(value: &[u8]) -> bool {
    let value = value.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(value);
    value
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .is_some_and(|b| *b == b'<')
}

fn split(body: &[u8]) -> Result<Vec<Segment>, FormError> {
    // Typical forms have three fields.
    let mut segments = Vec::with_capacity(4);
    let mut piece = FormPiece::at(body, 0)?;
    loop {
        let start = piece.start;
        let named = piece.has_eq && piece.name_end > start;
        let raw_int_in = named
            && piece.relay == Some(RelayField::IntIn)
            && starts_raw(&body[piece.name_end + 1..]);
        // The piece's name holds no `&`: the value's first boundary is after it.
        let mut search = piece.name_end;
        let (end, next) = loop {
            match memchr::memchr(b'&', &body[search..]) {
                None => break (body.len(), None),
                Some(i) => {
                    let amp = search + i;
                    let next = FormPiece::at(body, amp + 1)?;
                    if next.starts_segment(body.len(), raw_int_in) {
                        break (amp, Some(next));
                    }
                    search = amp + 1;
                }
            }
        };
        let (name_end, value_start, value_end) = if named {
            (Some(piece.name_end), piece.name_end + 1, end)
        } else if piece.relay.is_some() {
            (Some(piece.name_end), piece.name_end, piece.name_end)
        } else {
            (None, start, end)
        };
        segments.push(Segment {
            start,
            end,
            name_end,
            value_start,
            value_end,
            relay: piece.relay,
        });
        match next {
            Some(next) => piece = next,
            None => return Ok(segments),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::creditguard::int_in::{self, IntInError};
    use proptest::prelude::*;

    const XML: &str = "<ashrait><request><command>doDeal</command><doDeal><terminalNumber>0882819014</terminalNumber><description>Tom &amp; Jerry&#38;co a=b&amp;c=d</description></doDeal></request></ashrait>";
    const ALLOWED: &str = "0882819014";
    const FOREIGN: &str = "9999999999";

    fn deal(terminal: &str) -> String {
        format!("<ashrait><request><command>doDeal</command><doDeal><terminalNumber>{terminal}</terminalNumber><cardNo>4580000000000000</cardNo></doDeal></request></ashrait>")
    }

    fn encoded(s: &str) -> String {
        let mut v = Vec::new();
        form_encode(s.as_bytes(), &mut v);
        String::from_utf8(v).expect("ascii")
    }

    fn parse(body: &str) -> RelayForm {
        RelayForm::parse(Bytes::copy_from_slice(body.as_bytes())).expect("parses")
    }

    fn refused(body: &str) -> FormError {
        RelayForm::parse(Bytes::copy_from_slice(body.as_bytes())).expect_err(body)
    }

    fn names(form: &RelayForm) -> Vec<String> {
        form.fields()
            .map(|f| {
                f.name
                    .map_or("<none>".into(), |n| String::from_utf8_lossy(n).into_owned())
            })
            .collect()
    }

    /// How a servlet container reads a form, written apart from the splitter on purpose: every
    /// `&` ends a piece, the name is what precedes the first `=`, names and values are
    /// percent-decoded with `+` as a space (a bad escape is kept as it is).
    fn servlet(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        fn decode(s: &[u8]) -> Vec<u8> {
            let digit = |b: u8| (b as char).to_digit(16);
            let mut out = Vec::new();
            let mut i = 0;
            while i < s.len() {
                let escape = match (s[i], s.get(i + 1), s.get(i + 2)) {
                    (b'%', Some(&hi), Some(&lo)) => digit(hi).zip(digit(lo)),
                    _ => None,
                };
                match (s[i], escape) {
                    (b'+', _) => out.push(b' '),
                    (b'%', Some((hi, lo))) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    (b, _) => out.push(b),
                }
                i += 1;
            }
            out
        }
        body.split(|b| *b == b'&')
            .filter(|piece| !piece.is_empty())
            .map(|piece| match piece.iter().position(|b| *b == b'=') {
                Some(eq) => (decode(&piece[..eq]), decode(&piece[eq + 1..])),
                None => (decode(piece), Vec::new()),
            })
            .collect()
    }

    /// The servlet's values for `field`: names trimmed (Java's `trim`) and compared in any case.
    fn servlet_values(view: &[(Vec<u8>, Vec<u8>)], field: &str) -> Vec<Vec<u8>> {
        view.iter()
            .filter(|(name, _)| {
                let start = name.iter().position(|b| *b > b' ').unwrap_or(name.len());
                let end = name
                    .iter()
                    .rposition(|b| *b > b' ')
                    .map_or(start, |i| i + 1);
                name[start..end].eq_ignore_ascii_case(field.as_bytes())
            })
            .map(|(_, value)| value.clone())
            .collect()
    }

    /// What the gateway must see in a rewrite: payauth's session as the only `sessionId`, no
    /// `user` or `password`, one `int_in` that is payauth's (the gateway's copy stops at the
    /// value's first raw `&`, so it is a prefix of payauth's, and equal without one).
    fn gateway_agrees(form: &RelayForm, out: &[u8], session_id: &[u8]) -> Result<(), String> {
        let view = servlet(out);
        let seen = |f: &str| servlet_values(&view, f);
        if seen("sessionId") != [session_id.to_vec()] {
            return Err(format!("sessionIds {:?}", seen("sessionId")));
        }
        if !seen("user").is_empty() || !seen("password").is_empty() {
            return Err("a credential reaches the gateway".into());
        }
        let int_ins = seen("int_in");
        let [int_in] = int_ins.as_slice() else {
            return Err(format!("{} int_in fields", int_ins.len()));
        };
        let ours = form.decoded_int_in();
        if !ours.starts_with(int_in) || (!form.int_in().contains(&b'&') && ours[..] != int_in[..]) {
            return Err("the gateway reads another int_in".into());
        }
        Ok(())
    }

    /// Every piece a servlet names a relay field starts one of payauth's segments, of the
    /// same relay field.
    fn pieces_start_segments(body: &[u8], form: &RelayForm) -> Result<(), String> {
        let mut at = 0;
        for piece in body.split(|b| *b == b'&') {
            let view = servlet(piece);
            for field in RelayField::ALL {
                if servlet_values(&view, field.name()).is_empty() {
                    continue;
                }
                let segment = form.segments.iter().find(|s| s.start == at);
                if segment.and_then(|s| s.relay) != Some(field) {
                    return Err(format!(
                        "{} at {at} is not a segment of its own",
                        field.name()
                    ));
                }
            }
            at += piece.len() + 1;
        }
        Ok(())
    }

    /// The layer's decision on a form: refused (the error), or the terminal it reads, after
    /// checking the rewrite against the servlet's view.
    fn decide(body: &str) -> Result<String, String> {
        let form =
            RelayForm::parse(Bytes::copy_from_slice(body.as_bytes())).map_err(|e| e.to_string())?;
        pieces_start_segments(body.as_bytes(), &form).expect("segments");
        let int_in = int_in::read(&form.decoded_int_in()).map_err(|e| e.to_string())?;
        let out = form.rewrite(b"sessionId=S");
        gateway_agrees(&form, &out, b"S").expect("the gateway agrees");
        // What the gateway executes is what payauth read (when no raw `&` cuts the gateway's
        // copy short).
        if !form.int_in().contains(&b'&') {
            let view = servlet(&out);
            let gateway = int_in::read(&servlet_values(&view, "int_in")[0]).expect("gateway reads");
            assert_eq!(gateway, int_in);
        }
        Ok(int_in
            .terminal
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default())
    }

    #[test]
    fn raw_form_keeps_int_in_with_its_ampersands() {
        let body = format!("user=me&password=p%26ss&int_in={XML}");
        let form = parse(&body);
        assert_eq!(form.int_in_encoding(), IntInEncoding::Raw);
        assert_eq!(form.int_in(), XML.as_bytes());
        assert_eq!(
            &form.rewrite(b"sessionId=S1")[..],
            format!("sessionId=S1&int_in={XML}").as_bytes()
        );
    }

    #[test]
    fn raw_int_in_first_ends_at_a_relay_field() {
        let body = format!("int_in={XML}\r\n&user=me&password=a&b=c&mid=9");
        let form = parse(&body);
        assert_eq!(form.int_in(), format!("{XML}\r\n").as_bytes());
        // The raw password `a&b=c` splits into `password=a` and `b=c` by the general rule:
        // a raw `&` followed by `name=` is a field boundary outside int_in.
        assert_eq!(names(&form), ["int_in", "user", "password", "b", "mid"]);
        assert_eq!(
            &form.rewrite(b"sessionId=S")[..],
            format!("int_in={XML}\r\n&sessionId=S&b=c&mid=9").as_bytes()
        );
    }

    #[test]
    fn session_ends_a_raw_int_in_that_kept_fields_follow() {
        // Found by the fuzzer: without the credential between them, `mid=1` would read as XML.
        let form = parse("int_in=<a/>&user=u&mid=1");
        let out = form.rewrite(b"sessionId=S");
        assert_eq!(&out[..], b"int_in=<a/>&sessionId=S&mid=1");
        let again = RelayForm::parse(out).expect("parses");
        assert_eq!(again.int_in(), b"<a/>");
        assert_eq!(names(&again), ["int_in", "sessionId", "mid"]);
    }

    #[test]
    fn a_raw_int_in_ending_in_an_ampersand_keeps_it() {
        // Found by the fuzzer: the XML's own last `&` must not become the end of the body.
        let form = parse("int_in=<a/>&&user=u");
        assert_eq!(form.int_in(), b"<a/>&");
        let out = form.rewrite(b"sessionId=S");
        assert_eq!(&out[..], b"int_in=<a/>&&sessionId=S");
        assert_eq!(RelayForm::parse(out).expect("parses").int_in(), b"<a/>&");
    }

    #[test]
    fn encoded_form_is_decoded_only_for_reading() {
        let encoded = encoded(XML);
        let body = format!("user=&password=&sessionId=OLD&int_in={encoded}&extra=1+2");
        let form = parse(&body);
        assert_eq!(form.int_in_encoding(), IntInEncoding::UrlEncoded);
        assert_eq!(form.int_in(), encoded.as_bytes());
        assert_eq!(&form.decoded_int_in()[..], XML.as_bytes());
        assert!(form.has_credentials());
        assert_eq!(
            &form.rewrite(b"sessionId=NEW")[..],
            format!("sessionId=NEW&int_in={encoded}&extra=1+2").as_bytes()
        );
    }

    #[test]
    fn credential_names_ignore_case_and_odd_segments_are_kept() {
        let form = parse("USER=a&&Password=b&int_in=%3Cx%2F%3E&");
        assert_eq!(
            names(&form),
            ["USER", "<none>", "Password", "int_in", "<none>"]
        );
        assert_eq!(
            &form.rewrite(b"sessionId=S")[..],
            b"&sessionId=S&int_in=%3Cx%2F%3E&"
        );
        let form = parse("junk&x=1&password=p&int_in=<a/>&user=u");
        assert_eq!(
            &form.rewrite(b"sessionId=S")[..],
            b"junk&x=1&int_in=<a/>&sessionId=S"
        );
    }

    #[test]
    fn missing_or_duplicate_int_in_is_refused() {
        assert_eq!(refused(""), FormError::MissingIntIn);
        assert_eq!(refused("user=a&password=b"), FormError::MissingIntIn);
        assert_eq!(refused("int_inx=<a/>"), FormError::MissingIntIn);
        assert_eq!(
            refused("int_in=%3Ca%2F%3E&int_in=%3Cb%2F%3E"),
            FormError::Duplicate("int_in")
        );
        assert_eq!(
            refused("int_in=<a/>&int_in=<b/>"),
            FormError::Duplicate("int_in")
        );
        assert_eq!(
            FormError::Duplicate("int_in").to_string(),
            "the form has more than one int_in field"
        );
    }

    #[test]
    fn names_are_read_decoded_trimmed_and_in_any_case() {
        let field = |n: &str| relay_field(n.as_bytes()).expect("valid");
        for (name, expected) in [
            ("user", Some(RelayField::User)),
            ("us%65r", Some(RelayField::User)),
            ("%55SER", Some(RelayField::User)),
            ("+user%20%09", Some(RelayField::User)),
            ("p%61ssword", Some(RelayField::Password)),
            ("PASSWORD", Some(RelayField::Password)),
            ("session%49d", Some(RelayField::SessionId)),
            ("sessionid", Some(RelayField::SessionId)),
            ("int%5Fin", Some(RelayField::IntIn)),
            ("INT_IN", Some(RelayField::IntIn)),
            ("int_in%20", Some(RelayField::IntIn)),
            ("%00\x0bint_in\r\n", Some(RelayField::IntIn)),
            ("int in", None),
            ("int_in_", None),
            ("usr", None),
            ("", None),
            ("%20", None),
            (
                "%20%20%20%20%20%20%20%20%20%20%20user",
                Some(RelayField::User),
            ),
            (
                "user%20%20%20%20%20%20%20%20%20%20%20",
                Some(RelayField::User),
            ),
            ("xuser%20%20%20%20%20%20%20%20%20%20%20", None),
            ("sessionIdx", None),
        ] {
            assert_eq!(field(name), expected, "{name:?}");
        }
        for bad in ["us%zzer", "user%", "user%4", "%u0065", "x%G0"] {
            assert_eq!(
                relay_field(bad.as_bytes()),
                Err(FormError::BadEscape),
                "{bad}"
            );
        }
    }

    #[test]
    fn disguised_credentials_are_removed() {
        let xml = deal(ALLOWED);
        for creds in [
            "us%65r=app&p%61ssword=pw",
            "USER=app&PASSWORD=pw",
            "session%49d=x",
            "sessionid=x",
            "+user+=app&password%20=pw",
            "user&password",
            "us%65r&x=1",
        ] {
            for body in [
                format!("{creds}&int_in={xml}"),
                format!("{creds}&int_in={}", encoded(&xml)),
                format!("int_in={xml}&{creds}"),
                format!("int_in={}&{creds}", encoded(&xml)),
            ] {
                assert_eq!(decide(&body).as_deref(), Ok(ALLOWED), "{body}");
                let out = parse(&body).rewrite(b"sessionId=S");
                let out = String::from_utf8_lossy(&out);
                assert!(!out.contains("app") && !out.contains("pw"), "{out}");
            }
        }
        // A credential after a raw int_in ends it, however it is spelled.
        let form = parse(&format!("int_in={xml}&p%61ssword=pw&mid=1"));
        assert_eq!(form.int_in(), xml.as_bytes());
        assert_eq!(
            &form.rewrite(b"sessionId=S")[..],
            format!("int_in={xml}&sessionId=S&mid=1").as_bytes()
        );
    }

    #[test]
    fn a_field_named_twice_in_any_spelling_is_refused() {
        let (allowed, foreign) = (deal(ALLOWED), deal(FOREIGN));
        let (allowed_enc, foreign_enc) = (encoded(&allowed), encoded(&foreign));
        for (first, second) in [
            ("int%5Fin", "int_in"),
            ("int_in", "int%5Fin"),
            ("INT_IN", "int_in"),
            ("int_in%20", "int_in"),
            ("+int_in", "int_in"),
        ] {
            for (a, b) in [
                (&foreign, &allowed),
                (&allowed, &foreign),
                (&foreign_enc, &allowed_enc),
                (&foreign_enc, &allowed),
                (&foreign, &allowed_enc),
            ] {
                let body = format!("{first}={a}&{second}={b}");
                assert_eq!(refused(&body), FormError::Duplicate("int_in"), "{body}");
            }
        }
        for (creds, field) in [
            ("user=a&us%65r=b", "user"),
            ("Password=a&p%61ssword=b", "password"),
            ("sessionId=a&session%49d=b", "sessionId"),
            ("sessionId=a&SESSIONID", "sessionId"),
            ("user&user", "user"),
        ] {
            let body = format!("{creds}&int_in={allowed}");
            assert_eq!(refused(&body), FormError::Duplicate(field), "{body}");
            let body = format!("int_in={allowed}&{creds}");
            assert_eq!(refused(&body), FormError::Duplicate(field), "{body}");
        }
        // Unrelated names may repeat: the gateway ignores them.
        assert_eq!(
            decide(&format!("mid=1&mid=2&int_in={allowed}")).as_deref(),
            Ok(ALLOWED)
        );
    }

    #[test]
    fn int_in_in_any_case_is_int_in() {
        let xml = deal(ALLOWED);
        assert_eq!(decide(&format!("INT_IN={xml}")).as_deref(), Ok(ALLOWED));
        assert_eq!(
            decide(&format!("user=a&Int_In={}", encoded(&xml))).as_deref(),
            Ok(ALLOWED)
        );
        assert_eq!(
            decide(&format!("int_in%20={xml}&user=a")).as_deref(),
            Ok(ALLOWED)
        );
        // Sent without `=`, it is an empty int_in: nothing to read.
        assert_eq!(
            decide("int_in&mid=1"),
            Err(IntInError::Malformed.to_string())
        );
    }

    #[test]
    fn a_field_disguised_inside_a_value_is_still_a_field() {
        // `&us%65r=` used to be no field boundary at all, so it joined the previous value.
        let xml = deal(ALLOWED);
        let form = parse(&format!("mid=1&us%65r=x&int_in={xml}"));
        assert_eq!(names(&form), ["mid", "us%65r", "int_in"]);
        // And a raw int_in ends at a disguised int_in, which is then a second one.
        assert_eq!(
            refused(&format!("int_in={xml}&int%5Fin={}", deal(FOREIGN))),
            FormError::Duplicate("int_in")
        );
        // `&amp;` and `&name=` stay inside a raw int_in.
        let tricky = "<ashrait><request><command>doDeal</command><doDeal><terminalNumber>0882819014</terminalNumber><d>a&amp;b=c&amp;user</d></doDeal></request></ashrait>";
        let form = parse(&format!("user=u&int_in={tricky}"));
        assert_eq!(form.int_in(), tricky.as_bytes());
        // ... but `&user=` is a relay field to the gateway, so it ends the XML and is refused.
        assert_eq!(
            decide(&format!(
                "int_in={}",
                tricky.replace("&amp;user", "&us%65r=x")
            )),
            Err(IntInError::Malformed.to_string())
        );
    }

    #[test]
    fn bad_escapes_in_names_or_int_in_are_refused() {
        let xml = deal(ALLOWED);
        for body in [
            format!("us%zzer=a&int_in={xml}"),
            format!("%zz=a&int_in={xml}"),
            format!("mid=1&x%zz&int_in={xml}"),
            format!("int_in={xml}&%u0073essionId=x"),
            format!("int_in={}%zz", encoded(&xml)),
            format!("int_in={}", xml.replace("0882819014", "088281901%4")),
            format!("int_in={xml}%"),
            // A raw int_in is decoded too: a `%` in its text must be an escape.
            format!(
                "int_in={}",
                xml.replace("<cardNo>", "<total>50%</total><cardNo>")
            ),
        ] {
            assert_eq!(refused(&body), FormError::BadEscape, "{body}");
        }
        // Values of other fields are not payauth's to judge.
        assert_eq!(
            decide(&format!("note=50%&int_in={xml}")).as_deref(),
            Ok(ALLOWED)
        );
    }

    #[test]
    fn a_raw_int_in_is_read_decoded_like_the_gateway_reads_it() {
        // A comment only once decoded: it hides the foreign terminal from both readers.
        let hidden = deal(ALLOWED).replace(
            "<terminalNumber>",
            &format!("%3C!--<terminalNumber>{FOREIGN}</terminalNumber>--%3E<terminalNumber>"),
        );
        let form = parse(&format!("int_in={hidden}"));
        assert_eq!(form.int_in_encoding(), IntInEncoding::Raw);
        assert_eq!(form.int_in(), hidden.as_bytes());
        assert!(form.decoded_int_in().starts_with(b"<ashrait><request>"));
        assert_eq!(decide(&format!("int_in={hidden}")).as_deref(), Ok(ALLOWED));
        // A terminal only there once decoded is seen by payauth too: two terminals, refused.
        let shown = deal(ALLOWED).replace(
            "<cardNo>",
            &format!("%3CterminalNumber%3E{FOREIGN}%3C/terminalNumber%3E<cardNo>"),
        );
        assert_eq!(
            decide(&format!("user=u&int_in={shown}")),
            Err(IntInError::Ambiguous("terminalNumber").to_string())
        );
        // An encoded comment end: payauth no longer reads the foreign terminal as hidden.
        let unhidden = deal(ALLOWED).replace(
            "<cardNo>",
            &format!("<!-- --%3E<terminalNumber>{FOREIGN}</terminalNumber><!-- --><cardNo>"),
        );
        assert_eq!(
            decide(&format!("int_in={unhidden}")),
            Err(IntInError::Ambiguous("terminalNumber").to_string())
        );
        // `+` is a space to the gateway, raw or not.
        let plus = deal(&format!("+{ALLOWED}+"));
        assert_eq!(decide(&format!("int_in={plus}")).as_deref(), Ok(ALLOWED));
        assert!(parse(&format!("int_in={plus}"))
            .decoded_int_in()
            .windows(12)
            .any(|w| w == format!(" {ALLOWED} ").as_bytes()));
    }

    #[test]
    fn xml_tricks_in_the_form_are_refused() {
        let padded = format!(
            "<terminalNumber>{FOREIGN}<!--x-->{}<!--x-->{ALLOWED}</terminalNumber>",
            " ".repeat(300)
        );
        let xml = deal(ALLOWED).replace(
            &format!("<terminalNumber>{ALLOWED}</terminalNumber>"),
            &padded,
        );
        assert!(decide(&format!("int_in={xml}")).is_err());
        assert!(decide(&format!("int_in={}", encoded(&xml))).is_err());
        let long = deal(&format!("{}{ALLOWED}", " ".repeat(300)));
        assert_eq!(
            decide(&format!("int_in={long}")),
            Err(IntInError::FieldTooLong("terminalNumber").to_string())
        );
        let entity = deal(ALLOWED).replace("4580000000000000", "&foo;");
        assert_eq!(
            decide(&format!("int_in={entity}")),
            Err(IntInError::Malformed.to_string())
        );
        let attribute = deal(ALLOWED).replace("<cardNo>", "<cardNo type='&foo;'>");
        assert_eq!(
            decide(&format!("int_in={}", encoded(&attribute))),
            Err(IntInError::Malformed.to_string())
        );
    }

    #[test]
    fn decoding_is_lenient_and_session_ids_are_encoded() {
        assert_eq!(&form_decode(b"a+b%3c%3E%zz%4")[..], b"a b<>%zz%4");
        assert!(matches!(form_decode(b"plain"), Cow::Borrowed(_)));
        assert_eq!(
            &session_field("3e4cb361-0465 &=")[..],
            b"sessionId=3e4cb361-0465%20%26%3D"
        );
    }

    #[test]
    fn debug_shows_no_values() {
        let form = parse("user=me&password=hunter2&int_in=<cardNo>4580000000000000</cardNo>");
        let shown = format!("{form:?} {:?}", form.fields().collect::<Vec<_>>());
        assert!(
            !shown.contains("hunter2") && !shown.contains("4580"),
            "{shown}"
        );
    }

    #[test]
    fn the_servlet_oracle_reads_forms_as_a_servlet_does() {
        let view = servlet(b"a=1&&us%65r=x+y&b&=c&int_in=%3Ca%3E%zz");
        let pairs: Vec<(&[u8], &[u8])> = view.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        assert_eq!(
            pairs,
            [
                (&b"a"[..], &b"1"[..]),
                (b"user", b"x y"),
                (b"b", b""),
                (b"", b"c"),
                (b"int_in", b"<a>%zz"),
            ]
        );
        assert_eq!(
            servlet_values(&servlet(b" UsEr\t=1&user=2"), "user").len(),
            2
        );
    }

    /// A named form field as a generator sees it.
    #[derive(Debug, Clone)]
    enum Gen {
        Credential(String, Option<String>),
        Other(String, String),
    }

    fn render(g: &Gen) -> String {
        match g {
            Gen::Credential(n, Some(v)) | Gen::Other(n, v) => format!("{n}={v}"),
            Gen::Credential(n, None) => n.clone(),
        }
    }

    fn value() -> impl Strategy<Value = String> {
        // Encoded-looking values (no `&`) with a few raw-looking bytes.
        "[a-zA-Z0-9%+=<>/ .;#_-]{0,12}"
    }

    /// A credential's name, spelled as the gateway would still read it.
    fn credential_name() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("user"),
            Just("password"),
            Just("sessionId"),
            Just("PASSWORD"),
            Just("us%65r"),
            Just("p%61ssword"),
            Just("session%49d"),
            Just("sessionid"),
            Just("+user%20"),
            Just("%09Password"),
        ]
    }

    fn int_in_name() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            4 => Just("int_in"),
            1 => Just("INT_IN"),
            1 => Just("int%5Fin"),
            1 => Just("int_in%20"),
            1 => Just("+Int_In"),
        ]
    }

    fn other_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z][a-z0-9_]{0,6}",
            // Names the old splitter did not take for names at all.
            "[a-z.;%#!*~ -][a-z.;#!*~ -]{0,5}".prop_map(|n| n.replace('%', "%25")),
        ]
        .prop_filter("not a relay field", |n| {
            relay_field(n.as_bytes()).is_ok_and(|f| f.is_none())
        })
    }

    fn gen_field() -> impl Strategy<Value = Gen> {
        prop_oneof![
            (credential_name(), proptest::option::weighted(0.9, value()))
                .prop_map(|(n, v)| Gen::Credential(n.into(), v)),
            (other_name(), value()).prop_map(|(n, v)| Gen::Other(n, v)),
        ]
    }

    /// Raw XML with `&` in places a naive splitter would cut at, and escapes the gateway
    /// decodes even in raw XML.
    fn raw_xml() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("&amp;".to_owned()),
                Just("&#38;".to_owned()),
                Just("&amp;a=b".to_owned()),
                Just("?x=1&amp;y=2".to_owned()),
                Just("&amp;x%3Dy".to_owned()),
                Just("%41+%2b".to_owned()),
                "[a-zA-Z0-9 =;+]{0,8}",
            ],
            0..6,
        )
        .prop_map(|parts| format!("<ashrait><d>{}</d></ashrait>", parts.concat()))
    }

    /// Segments a servlet would take for unnamed: nothing with `=` (that would be a field),
    /// nothing that names a relay field.
    fn lead() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[a-z<>/ .;#-]{1,8}".prop_filter("not a relay field", |l| {
            relay_field(l.as_bytes()).is_ok_and(|f| f.is_none())
        }))
    }

    proptest! {
        /// For generated forms (raw or encoded `int_in` anywhere among credentials, other and
        /// unnamed fields, names spelled every way the gateway still reads them), the rewrite
        /// is exactly the session field followed by every non-credential field as generated,
        /// `int_in` comes back byte for byte, and the gateway reads the rewrite as payauth does.
        #[test]
        fn rewrite_keeps_every_non_credential_byte(
            lead in lead(),
            before in proptest::collection::vec(gen_field(), 0..4),
            after in proptest::collection::vec(gen_field(), 0..4),
            int_in_name in int_in_name(),
            xml in raw_xml(),
            encode in any::<bool>(),
        ) {
            let int_in = if encode { encoded(&xml) } else { xml.clone() };
            // Credentials are unique: a second one is refused (tested below).
            let mut seen = std::collections::HashSet::new();
            let unique = |g: &Gen| match g {
                Gen::Credential(n, _) => seen.insert(relay_field(n.as_bytes()).ok().flatten()),
                Gen::Other(..) => true,
            };
            let mut unique = unique;
            let before: Vec<Gen> = before.into_iter().filter(&mut unique).collect();
            let after: Vec<Gen> = after.into_iter().filter(&mut unique).collect();
            // By the rule, a segment without `name=` is only a field of its own at the start
            // of the body, and only relay fields end a raw int_in: after a raw one, the first
            // field must be a credential.
            let after: Vec<Gen> = if encode || after.first().is_none_or(|g| matches!(g, Gen::Credential(..))) {
                after
            } else {
                Vec::new()
            };
            let mut all: Vec<String> = lead.iter().cloned().collect();
            all.extend(before.iter().map(render));
            all.push(format!("{int_in_name}={int_in}"));
            all.extend(after.iter().map(render));
            let body = all.join("&");
            let mut kept: Vec<String> = lead.iter().cloned().collect();
            kept.extend(before.iter().filter(|g| !matches!(g, Gen::Credential(..))).map(render));
            let kept_after: Vec<String> = after.iter().filter(|g| !matches!(g, Gen::Credential(..))).map(render).collect();
            if encode || after.is_empty() {
                kept.push("sessionId=S".to_owned());
                kept.push(format!("{int_in_name}={int_in}"));
            } else {
                kept.push(format!("{int_in_name}={int_in}"));
                kept.push("sessionId=S".to_owned());
            }
            kept.extend(kept_after);

            let form = RelayForm::parse(Bytes::from(body.clone())).expect("generated forms parse");
            prop_assert_eq!(form.int_in(), int_in.as_bytes());
            let decoded = if encode { Cow::Borrowed(xml.as_bytes()) } else { form_decode(xml.as_bytes()) };
            prop_assert_eq!(&form.decoded_int_in()[..], &decoded[..]);
            let out = form.rewrite(b"sessionId=S");
            let expected = kept.join("&");
            prop_assert_eq!(String::from_utf8_lossy(&out), expected);
            prop_assert_eq!(pieces_start_segments(body.as_bytes(), &form), Ok(()));
            prop_assert_eq!(gateway_agrees(&form, &out, b"S"), Ok(()));
        }

        /// Forms with relay fields repeated in any spelling: payauth refuses exactly those the
        /// servlet sees a relay field twice in (or no `int_in`), and the gateway reads every
        /// form payauth accepts as payauth does.
        #[test]
        fn duplicates_are_refused_exactly_when_the_gateway_sees_them(
            fields in proptest::collection::vec(prop_oneof![
                gen_field(),
                (int_in_name(), raw_xml(), any::<bool>()).prop_map(|(n, xml, encode)| {
                    Gen::Credential(n.into(), Some(if encode { encoded(&xml) } else { xml }))
                }),
            ], 0..6),
        ) {
            let body = fields.iter().map(render).collect::<Vec<_>>().join("&");
            let view = servlet(body.as_bytes());
            let counts: Vec<usize> = RelayField::ALL.iter().map(|f| servlet_values(&view, f.name()).len()).collect();
            match RelayForm::parse(Bytes::from(body.clone())) {
                Ok(form) => {
                    prop_assert!(counts.iter().all(|c| *c <= 1) && counts[3] == 1, "{:?}", counts);
                    prop_assert_eq!(pieces_start_segments(body.as_bytes(), &form), Ok(()));
                    let out = form.rewrite(b"sessionId=S");
                    prop_assert_eq!(gateway_agrees(&form, &out, b"S"), Ok(()));
                }
                Err(FormError::Duplicate(name)) => {
                    let i = RelayField::ALL.iter().position(|f| f.name() == name).expect("a relay field");
                    prop_assert!(counts[i] > 1, "{} {:?}", name, counts);
                }
                Err(FormError::MissingIntIn) => prop_assert_eq!(counts[3], 0),
                // Generated names are valid; other fields' values may hold any `%`, and after
                // a raw int_in they are part of its value.
                Err(FormError::BadEscape) => prop_assert!(!escapes_are_valid(body.as_bytes())),
            }
        }

        /// For any bytes: the segments join back into the body, and a rewrite either is
        /// refused or re-parses to the same `int_in` and the same other fields, with no
        /// credential but payauth's, and the gateway reads it as payauth does. Bodies are built
        /// from fragments that matter to the rule (the fuzz target does the same on raw bytes).
        #[test]
        fn any_bytes_split_losslessly(body in proptest::collection::vec(
            prop_oneof![
                Just(b"&".to_vec()), Just(b"&&".to_vec()), Just(b"=".to_vec()), Just(b"<".to_vec()),
                Just(b"<a/>".to_vec()), Just(b"%3C".to_vec()), Just(b"+".to_vec()), Just(b" \r\n".to_vec()),
                Just(b"&user=".to_vec()), Just(b"&Password=".to_vec()), Just(b"&sessionId=".to_vec()),
                Just(b"&int_in=".to_vec()), Just(b"&int_in=<".to_vec()), Just(b"&x=".to_vec()),
                Just(b"&us%65r=".to_vec()), Just(b"&int%5Fin=<".to_vec()), Just(b"&INT_IN=".to_vec()),
                Just(b"&password".to_vec()), Just(b"&+user+".to_vec()), Just(b"%2".to_vec()), Just(b"%".to_vec()),
                Just(b"&amp;".to_vec()), Just(b"ab".to_vec()), any::<u8>().prop_map(|b| vec![b]),
            ], 0..24).prop_map(|parts| parts.concat()),
            prefix in prop_oneof![Just(""), Just("int_in="), Just("user=x&int_in="), Just("int_in=<"),
                                  Just("junk&int_in="), Just("&int_in=<"), Just("a=<b&password="),
                                  Just("int%5fin=<"), Just("us%65r&INT_IN=")],
        ) {
            let mut full = prefix.as_bytes().to_vec();
            full.extend_from_slice(&body);
            if let Ok(segments) = split(&full) {
                let joined = segments.iter().map(|s| &full[s.start..s.end]).collect::<Vec<_>>().join(&b'&');
                prop_assert_eq!(&joined, &full);
            }
            if let Ok(form) = RelayForm::parse(Bytes::from(full.clone())) {
                prop_assert_eq!(pieces_start_segments(&full, &form), Ok(()));
                let out = form.rewrite(b"sessionId=S");
                prop_assert_eq!(gateway_agrees(&form, &out, b"S"), Ok(()));
                let again = RelayForm::parse(out.clone()).expect("a rewrite parses");
                prop_assert_eq!(again.int_in(), form.int_in());
                let credentials: Vec<_> = again.fields().filter(|f| f.kind == FieldKind::Credential).map(|f| f.bytes.to_vec()).collect();
                prop_assert_eq!(credentials, vec![b"sessionId=S".to_vec()]);
                // Every non-credential segment survives, byte for byte and in order.
                let kept = |f: &RelayForm| f.fields().filter(|f| f.kind != FieldKind::Credential).map(|f| f.bytes.to_vec()).collect::<Vec<_>>();
                prop_assert_eq!(kept(&again), kept(&form));
                // Idempotent: rewriting the rewrite changes nothing.
                prop_assert_eq!(again.rewrite(b"sessionId=S"), out);
            }
        }
    }
}
