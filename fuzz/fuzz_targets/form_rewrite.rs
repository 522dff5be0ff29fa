//! The relay form rewrite and the `int_in` reader on arbitrary bytes: either the request is
//! refused (what payauth answers with `bad_request`), or the rewritten form keeps every
//! non-credential byte of the input, in order, with payauth's `sessionId` as its only
//! credential, and a servlet-style decoder (the gateway) reads it the same way: exactly one
//! `sessionId` (payauth's), no `user` or `password`, exactly one `int_in` (payauth's); and
//! nothing panics.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use payauth::creditguard::form::{FieldKind, RelayField, RelayForm};
use payauth::creditguard::{int_in, prepare_relay_form};

const SESSION_ID: &[u8] = b"00000000-fuzz";
const SESSION: &[u8] = b"sessionId=00000000-fuzz";

fn kept(form: &RelayForm) -> Vec<Vec<u8>> {
    form.fields()
        .filter(|f| f.kind != FieldKind::Credential)
        .map(|f| f.bytes.to_vec())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    // The reader alone never panics.
    let _ = int_in::read(data);

    let body = Bytes::copy_from_slice(data);
    let Ok(form) = RelayForm::parse(body.clone()) else {
        assert!(prepare_relay_form(body, SESSION).is_err());
        return;
    };
    pieces_start_segments(data, &form);
    let out = form.rewrite(SESSION);
    gateway_agrees(&form, &out);
    let again = RelayForm::parse(out.clone()).expect("a rewritten form parses");
    assert_eq!(again.int_in(), form.int_in(), "int_in byte for byte");
    assert_eq!(
        kept(&again),
        kept(&form),
        "every non-credential segment, in order"
    );
    let credentials: Vec<&[u8]> = again
        .fields()
        .filter(|f| f.kind == FieldKind::Credential)
        .map(|f| f.bytes)
        .collect();
    assert_eq!(
        credentials,
        [SESSION],
        "payauth's session is the only credential"
    );
    assert_eq!(again.rewrite(SESSION), out, "rewriting is idempotent");
    // The output is the input with whole segments removed and the session inserted: no byte
    // is invented or changed.
    assert_eq!(
        out.len(),
        data.len() + SESSION.len() + 1 - removed_len(&form)
    );

    if let Ok((_, prepared)) = prepare_relay_form(body, SESSION) {
        assert_eq!(prepared, out);
    }
});

/// Bytes the rewrite drops: each credential segment and one `&` with it. (With `n` segments
/// joined by `n - 1` separators, removing `r` of them and inserting one leaves the length at
/// `len + session + 1 - sum(removed + 1)`; `int_in` is always kept.)
fn removed_len(form: &RelayForm) -> usize {
    form.fields()
        .filter(|f| f.kind == FieldKind::Credential)
        .map(|f| f.bytes.len() + 1)
        .sum()
}

/// How a servlet container reads a form, written apart from payauth's splitter: every `&`
/// ends a piece, the name is what precedes the first `=` (the whole piece without one), names
/// and values are percent-decoded with `+` as a space (a bad escape kept as it is).
fn servlet(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    fn decode(s: &[u8]) -> Vec<u8> {
        let digit = |b: u8| (b as char).to_digit(16);
        let mut out = Vec::with_capacity(s.len());
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

/// The relay field a decoded name means to the servlet: trimmed as Java's `String.trim` does,
/// compared in any ASCII case.
fn servlet_field(name: &[u8]) -> Option<&'static str> {
    let start = name.iter().position(|b| *b > b' ').unwrap_or(name.len());
    let end = name
        .iter()
        .rposition(|b| *b > b' ')
        .map_or(start, |i| i + 1);
    ["user", "password", "sessionId", "int_in"]
        .into_iter()
        .find(|f| name[start..end].eq_ignore_ascii_case(f.as_bytes()))
}

fn servlet_values(view: &[(Vec<u8>, Vec<u8>)], field: &str) -> Vec<Vec<u8>> {
    view.iter()
        .filter(|(name, _)| servlet_field(name) == Some(field))
        .map(|(_, value)| value.clone())
        .collect()
}

/// The gateway reads the rewrite as payauth does: payauth's session is the only `sessionId`,
/// no `user` or `password`, and one `int_in`, payauth's (the gateway's copy stops at its first
/// raw `&`, so it is a prefix of what payauth read, and the same without one).
fn gateway_agrees(form: &RelayForm, out: &[u8]) {
    let view = servlet(out);
    assert_eq!(
        servlet_values(&view, "sessionId"),
        [SESSION_ID],
        "the gateway sees payauth's sessionId and no other"
    );
    assert!(
        servlet_values(&view, "user").is_empty() && servlet_values(&view, "password").is_empty(),
        "no credential reaches the gateway"
    );
    let int_ins = servlet_values(&view, "int_in");
    assert_eq!(int_ins.len(), 1, "the gateway sees one int_in");
    let ours = form.decoded_int_in();
    assert!(
        ours.starts_with(&int_ins[0]),
        "the gateway reads payauth's int_in"
    );
    if !form.int_in().contains(&b'&') {
        assert_eq!(
            ours[..],
            int_ins[0][..],
            "the gateway reads payauth's int_in"
        );
    }
}

/// Every piece the servlet takes for a relay field starts one of payauth's segments, and
/// payauth takes it for the same field.
fn pieces_start_segments(body: &[u8], form: &RelayForm) {
    let mut starts = Vec::new();
    let mut at = 0;
    for field in form.fields() {
        starts.push((at, field.relay));
        at += field.bytes.len() + 1;
    }
    let mut at = 0;
    for piece in body.split(|b| *b == b'&') {
        let name = servlet(piece).pop().map(|(name, _)| name);
        if let Some(field) = name.as_deref().and_then(servlet_field) {
            let relay = starts.iter().find(|(s, _)| *s == at).and_then(|(_, r)| *r);
            assert_eq!(
                relay.map(RelayField::name),
                Some(field),
                "a piece the gateway takes for {field} starts a segment payauth reads the same way"
            );
        }
        at += piece.len() + 1;
    }
}
