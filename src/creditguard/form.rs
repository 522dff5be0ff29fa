//! The relay form: finding its fields without decoding it, and rewriting it byte for byte.
//!
//! Apps post `user=..&password=..&int_in=<ashrait>...` to the relay, some URL-encoded, many
//! not encoded at all. payauth removes the credentials (and any `sessionId` the app sent), adds
//! its own `sessionId`, and keeps every other byte exactly as the app sent it: `int_in` is
//! never decoded and re-encoded on the way to the gateway.
//!
//! payauth's `sessionId` goes right before `int_in` (`...&sessionId=<id>&int_in=...`, the order of
//! the vendor's examples). There it always starts a field of its own, so a rewritten form splits
//! into the same fields again, whatever came before. One exception: a raw `int_in` that is not
//! the last field was ended by a relay field (`int_in=<xml>&user=..&mid=1`); with that credential
//! gone the XML would run into what follows (or its own trailing `&` would end the body), so
//! there `sessionId` goes right after `int_in` and ends the XML the same way.
//!
//! # The splitting rule
//!
//! The body is cut into *segments* at field boundaries; the segments joined with `&` are always
//! the body again, byte for byte. A `&` is a field boundary when it is followed by
//!
//! * a field name and `=` (a name is one or more ASCII letters, digits or `_`), or
//! * another `&` or the end of the body (an empty field, as naive form builders leave).
//!
//! Every other `&` belongs to the value it appears in. That keeps `&amp;` (and `&#38;`, `&lt;`)
//! inside values, and keeps a raw password such as `p&ss` in one piece (a raw value with
//! `&name=` inside it is split there, as any form parser would).
//!
//! A **raw `int_in`** (its value starts, after optional whitespace or a byte-order mark, with
//! `<`) is XML that may contain `&` anywhere, even `&name=` inside a URL in a text node. Its
//! value therefore runs to the end of the body, or to the first `&` followed by the name of a
//! relay field (`user=`, `password=`, `sessionId=` or `int_in=`). A URL-encoded `int_in` (any
//! other first byte) follows the general rule: its own `&`s are encoded as `%26`.
//!
//! If a raw `int_in`'s XML itself contains `&user=` (or another relay field), the value is cut
//! there, the XML is left incomplete, and the request is refused with `bad_request` when the
//! XML is read: ambiguity is refused, never guessed.
//!
//! # What is removed
//!
//! Fields named `user`, `password` or `sessionId` (ASCII case-insensitive: a `Password` is a
//! credential too), with the `&` that joined them. Two `int_in` fields, or none, make the form
//! unusable ([`FormError`]). Everything else, unnamed segments included, is kept in order.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// The field payauth adds.
pub const SESSION_ID_FIELD: &str = "sessionId";

/// Fields whose `&name=` ends a raw `int_in`.
const RELAY_FIELDS: [&[u8]; 4] = [b"user", b"password", b"sessionId", b"int_in"];

/// `application/x-www-form-urlencoded` bytes that stay as they are (the WHATWG set).
const FORM_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'*')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_');

/// How the app sent `int_in`'s value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntInEncoding {
    /// Plain XML, not URL-encoded.
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

/// Why a form cannot be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    /// No `int_in` field.
    #[error("the form has no int_in field")]
    MissingIntIn,
    /// More than one `int_in` field.
    #[error("the form has more than one int_in field")]
    DuplicateIntIn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: usize,
    end: usize,
    /// Index of the `=` after the name, for named segments.
    eq: Option<usize>,
    kind: FieldKind,
}

/// One segment of a form, borrowed from the body.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The name, when the segment starts with `name=`.
    pub name: Option<&'a [u8]>,
    /// The value (after `=`), or the whole segment when it has no name.
    pub value: &'a [u8],
    /// The whole segment as sent.
    pub bytes: &'a [u8],
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
        let segments = split(&body);
        let mut int_in = None;
        for (i, segment) in segments.iter().enumerate() {
            if segment.kind == FieldKind::IntIn {
                if int_in.is_some() {
                    return Err(FormError::DuplicateIntIn);
                }
                int_in = Some(i);
            }
        }
        let int_in = int_in.ok_or(FormError::MissingIntIn)?;
        let encoding = match segments[int_in].eq {
            Some(eq) if starts_raw(&body[eq + 1..segments[int_in].end]) => IntInEncoding::Raw,
            _ => IntInEncoding::UrlEncoded,
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
        let start = segment.eq.map_or(segment.start, |eq| eq + 1);
        &self.body[start..segment.end]
    }

    /// How `int_in` was sent.
    pub fn int_in_encoding(&self) -> IntInEncoding {
        self.encoding
    }

    /// `int_in`'s XML, decoded if it was URL-encoded: a copy to read, never to forward.
    pub fn decoded_int_in(&self) -> Cow<'_, [u8]> {
        match self.encoding {
            IntInEncoding::Raw => Cow::Borrowed(self.int_in()),
            IntInEncoding::UrlEncoded => form_decode(self.int_in()),
        }
    }

    /// Every segment, in order.
    pub fn fields(&self) -> impl Iterator<Item = Field<'_>> + '_ {
        self.segments.iter().map(|s| {
            let bytes = &self.body[s.start..s.end];
            match s.eq {
                Some(eq) => Field {
                    name: Some(&self.body[s.start..eq]),
                    value: &self.body[eq + 1..s.end],
                    bytes,
                    kind: s.kind,
                },
                None => Field {
                    name: None,
                    value: bytes,
                    bytes,
                    kind: s.kind,
                },
            }
        })
    }

    /// The value of the first field named `name` (exact match), as sent.
    pub fn value(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|f| f.name == Some(name.as_bytes()))
            .map(|f| f.value)
    }

    /// Whether any credential field (`user`, `password`, `sessionId`) is present.
    pub fn has_credentials(&self) -> bool {
        self.segments
            .iter()
            .any(|s| s.kind == FieldKind::Credential)
    }

    /// The form to send: every non-credential segment as sent, in order, joined by `&`, with
    /// `session_field` (a whole `sessionId=...` field, see [`session_field`]) right before
    /// `int_in` (right after a raw `int_in` that is not the last field; see the module docs).
    pub fn rewrite(&self, session_field: &[u8]) -> Bytes {
        let kept = self
            .segments
            .iter()
            .filter(|s| s.kind != FieldKind::Credential);
        let session_after =
            self.encoding == IntInEncoding::Raw && self.int_in + 1 < self.segments.len();
        let len = session_field.len() + kept.clone().map(|s| 1 + s.end - s.start).sum::<usize>();
        let mut out = BytesMut::with_capacity(len);
        for (i, segment) in kept.enumerate() {
            if i > 0 {
                out.put_u8(b'&');
            }
            let is_int_in = segment.kind == FieldKind::IntIn;
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
/// hex digits stays as it is. Borrows when there is nothing to decode.
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

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// If `body[at..]` starts with `name=`, the index of the `=`.
fn name_at(body: &[u8], at: usize) -> Option<usize> {
    let rest = body.get(at..)?;
    let len = rest.iter().take_while(|b| is_name_byte(**b)).count();
    (len > 0 && rest.get(len) == Some(&b'=')).then_some(at + len)
}

fn kind_of(name: &[u8]) -> FieldKind {
    if name == b"int_in" {
        FieldKind::IntIn
    } else if [b"user".as_slice(), b"password", b"sessionId"]
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c))
    {
        FieldKind::Credential
    } else {
        FieldKind::Other
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

/// Whether the `&` at `amp` ends the current value.
fn is_boundary(body: &[u8], amp: usize, raw_int_in: bool) -> bool {
    let next = amp + 1;
    if next == body.len() {
        return true;
    }
    if raw_int_in {
        return name_at(body, next).is_some_and(|eq| {
            let name = &body[next..eq];
            RELAY_FIELDS.iter().any(|f| {
                if *f == b"int_in" {
                    name == *f
                } else {
                    name.eq_ignore_ascii_case(f)
                }
            })
        });
    }
    body[next] == b'&' || name_at(body, next).is_some()
}

fn split(body: &[u8]) -> Vec<Segment> {
    // Typical forms have three fields.
    let mut segments = Vec::with_capacity(4);
    let mut start = 0;
    loop {
        let eq = name_at(body, start);
        let kind = eq.map_or(FieldKind::Other, |eq| kind_of(&body[start..eq]));
        let value_start = eq.map_or(start, |eq| eq + 1);
        let raw_int_in = kind == FieldKind::IntIn && starts_raw(&body[value_start..]);
        let mut search = value_start;
        let end = loop {
            match memchr::memchr(b'&', &body[search..]) {
                None => break body.len(),
                Some(i) if is_boundary(body, search + i, raw_int_in) => break search + i,
                Some(i) => search += i + 1,
            }
        };
        segments.push(Segment {
            start,
            end,
            eq,
            kind,
        });
        if end == body.len() {
            return segments;
        }
        start = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const XML: &str = "<ashrait><request><command>doDeal</command><doDeal><terminalNumber>0882819014</terminalNumber><description>Tom &amp; Jerry&#38;co a=b&amp;c=d</description></doDeal></request></ashrait>";

    fn parse(body: &str) -> RelayForm {
        RelayForm::parse(Bytes::copy_from_slice(body.as_bytes())).expect("parses")
    }

    fn names(form: &RelayForm) -> Vec<String> {
        form.fields()
            .map(|f| {
                f.name
                    .map_or("<none>".into(), |n| String::from_utf8_lossy(n).into_owned())
            })
            .collect()
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
        let mut encoded = Vec::new();
        form_encode(XML.as_bytes(), &mut encoded);
        let encoded = String::from_utf8(encoded).expect("ascii");
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
        let err =
            |b: &str| RelayForm::parse(Bytes::copy_from_slice(b.as_bytes())).expect_err("refused");
        assert_eq!(err(""), FormError::MissingIntIn);
        assert_eq!(err("user=a&password=b"), FormError::MissingIntIn);
        assert_eq!(err("INT_IN=<a/>"), FormError::MissingIntIn);
        assert_eq!(
            err("int_in=%3Ca%2F%3E&int_in=%3Cb%2F%3E"),
            FormError::DuplicateIntIn
        );
        assert_eq!(err("int_in=<a/>&int_in=<b/>"), FormError::DuplicateIntIn);
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

    /// A named form field as a generator sees it.
    #[derive(Debug, Clone)]
    enum Gen {
        Credential(String, String),
        Other(String, String),
    }

    fn value() -> impl Strategy<Value = String> {
        // Encoded-looking values (no `&`) with a few raw-looking bytes.
        "[a-zA-Z0-9%+=<>/ .;#_-]{0,12}"
    }

    fn gen_field() -> impl Strategy<Value = Gen> {
        prop_oneof![
            (
                prop_oneof![
                    Just("user"),
                    Just("password"),
                    Just("sessionId"),
                    Just("PASSWORD")
                ],
                value()
            )
                .prop_map(|(n, v)| Gen::Credential(n.into(), v)),
            ("[a-z][a-z0-9_]{0,6}", value())
                .prop_filter("not a relay field", |(n, _)| {
                    !["user", "password", "sessionid", "int_in"]
                        .contains(&n.to_ascii_lowercase().as_str())
                })
                .prop_map(|(n, v)| Gen::Other(n, v)),
        ]
    }

    /// Raw XML with `&` in places a naive splitter would cut at.
    fn raw_xml() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("&amp;".to_owned()),
                Just("&#38;".to_owned()),
                Just("&amp;a=b".to_owned()),
                Just("?x=1&amp;y=2".to_owned()),
                "[a-zA-Z0-9 =;+%]{0,8}",
            ],
            0..6,
        )
        .prop_map(|parts| format!("<ashrait><d>{}</d></ashrait>", parts.concat()))
    }

    proptest! {
        /// For generated forms (raw or encoded `int_in` anywhere among credentials, other and
        /// unnamed fields), the rewrite is exactly the session field followed by every
        /// non-credential field as generated, and `int_in` comes back byte for byte.
        #[test]
        fn rewrite_keeps_every_non_credential_byte(
            lead in proptest::option::of("[a-z<>/ .;#-]{1,8}"),
            before in proptest::collection::vec(gen_field(), 0..4),
            after in proptest::collection::vec(gen_field(), 0..4),
            xml in raw_xml(),
            encode in any::<bool>(),
        ) {
            let int_in = if encode {
                let mut v = Vec::new();
                form_encode(xml.as_bytes(), &mut v);
                String::from_utf8(v).expect("ascii")
            } else {
                xml.clone()
            };
            let render = |g: &Gen| match g {
                Gen::Credential(n, v) | Gen::Other(n, v) => format!("{n}={v}"),
            };
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
            all.push(format!("int_in={int_in}"));
            all.extend(after.iter().map(render));
            let body = all.join("&");
            let mut kept: Vec<String> = lead.iter().cloned().collect();
            kept.extend(before.iter().filter(|g| !matches!(g, Gen::Credential(..))).map(render));
            let kept_after: Vec<String> = after.iter().filter(|g| !matches!(g, Gen::Credential(..))).map(render).collect();
            if encode || after.is_empty() {
                kept.push("sessionId=S".to_owned());
                kept.push(format!("int_in={int_in}"));
            } else {
                kept.push(format!("int_in={int_in}"));
                kept.push("sessionId=S".to_owned());
            }
            kept.extend(kept_after);

            let form = RelayForm::parse(Bytes::from(body.clone())).expect("generated forms parse");
            prop_assert_eq!(form.int_in(), int_in.as_bytes());
            prop_assert_eq!(&form.decoded_int_in()[..], xml.as_bytes());
            let out = form.rewrite(b"sessionId=S");
            let expected = kept.join("&");
            prop_assert_eq!(String::from_utf8_lossy(&out), expected);
        }

        /// For any bytes: the segments join back into the body, and a rewrite either is
        /// refused or re-parses to the same `int_in` and the same other fields, with no
        /// credential but payauth's. Bodies are built from fragments that matter to the rule
        /// (the fuzz target does the same on raw bytes).
        #[test]
        fn any_bytes_split_losslessly(body in proptest::collection::vec(
            prop_oneof![
                Just(b"&".to_vec()), Just(b"&&".to_vec()), Just(b"=".to_vec()), Just(b"<".to_vec()),
                Just(b"<a/>".to_vec()), Just(b"%3C".to_vec()), Just(b"+".to_vec()), Just(b" \r\n".to_vec()),
                Just(b"&user=".to_vec()), Just(b"&Password=".to_vec()), Just(b"&sessionId=".to_vec()),
                Just(b"&int_in=".to_vec()), Just(b"&int_in=<".to_vec()), Just(b"&x=".to_vec()),
                Just(b"&amp;".to_vec()), Just(b"ab".to_vec()), any::<u8>().prop_map(|b| vec![b]),
            ], 0..24).prop_map(|parts| parts.concat()),
            prefix in prop_oneof![Just(""), Just("int_in="), Just("user=x&int_in="), Just("int_in=<"),
                                  Just("junk&int_in="), Just("&int_in=<"), Just("a=<b&password=")],
        ) {
            let mut full = prefix.as_bytes().to_vec();
            full.extend_from_slice(&body);
            let segments = split(&full);
            let joined = segments.iter().map(|s| &full[s.start..s.end]).collect::<Vec<_>>().join(&b'&');
            prop_assert_eq!(&joined, &full);
            if let Ok(form) = RelayForm::parse(Bytes::from(full.clone())) {
                let out = form.rewrite(b"sessionId=S");
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
