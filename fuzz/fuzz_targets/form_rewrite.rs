//! The relay form rewrite and the `int_in` reader on arbitrary bytes: either the request is
//! refused (what payauth answers with `bad_request`), or the rewritten form keeps every
//! non-credential byte of the input, in order, with payauth's `sessionId` as its only
//! credential; and nothing panics.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use payauth::creditguard::form::{FieldKind, RelayForm};
use payauth::creditguard::{int_in, prepare_relay_form};

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
    let out = form.rewrite(SESSION);
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
