//! The path canonicaliser on arbitrary UTF-8: either the path is refused (what payauth answers
//! with `bad_request`), or its canonical form is absolute, has no empty, `.` or `..` segment,
//! no segment that a server would still trim or decode, and is its own canonical form,
//! borrowed; and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payauth::path::canonicalize;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(canonical) = canonicalize(path) else {
        return;
    };
    let out = canonical.as_str();
    assert!(out.starts_with('/'), "absolute");
    if out != "/" {
        for segment in out[1..].split('/') {
            assert!(!segment.is_empty(), "no empty segment, no trailing slash");
            assert!(segment != "." && segment != "..", "dot segments resolved");
            assert!(
                !segment.ends_with(['.', ' ']),
                "trailing dots and spaces trimmed"
            );
            assert!(
                segment
                    .bytes()
                    .all(|b| matches!(b, b' '..=b'~') && !matches!(b, b'%' | b';' | b'\\')),
                "printable ASCII, decoded, without parameters"
            );
        }
    }
    assert_eq!(
        canonical.segments().collect::<Vec<_>>().join("/"),
        out[1..],
        "segments are the path"
    );
    assert_eq!(
        canonical.last_segment(),
        out.rsplit('/').next().unwrap_or("")
    );
    assert!(canonical.eq_ignore_ascii_case(out));
    assert!(canonical.starts_with_ignore_ascii_case(out));
    assert!(canonical.starts_with_ignore_ascii_case("/"));

    let again = canonicalize(out).expect("a canonical path canonicalises");
    assert_eq!(again, canonical, "idempotent");
    assert!(
        std::ptr::eq(again.as_str(), out),
        "a canonical path is borrowed, not copied"
    );
    // Without the leading slash the input is relative: refused, never guessed.
    if let Some(relative) = path.strip_prefix('/') {
        if !relative.is_empty() && !relative.starts_with('/') {
            assert!(canonicalize(relative).is_err());
        }
    }
});
