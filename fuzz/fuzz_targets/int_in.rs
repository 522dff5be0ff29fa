//! The `int_in` reader on arbitrary bytes: it never panics, and what it accepts it read from
//! the document: the command is a plain word found in it, and the terminal it reports is in the
//! document's text (as written, or with XML's references resolved).
#![no_main]

use libfuzzer_sys::fuzz_target;
use payauth::creditguard::int_in;

fuzz_target!(|data: &[u8]| {
    let Ok(read) = int_in::read(data) else {
        return;
    };
    assert!(!read.command.is_empty());
    assert!(read.command.bytes().all(|b| b.is_ascii_alphanumeric()));
    let resolved = resolve_references(data);
    assert!(
        contains(data, read.command.as_bytes()) || contains(&resolved, read.command.as_bytes()),
        "the command is in the document"
    );
    if let Some(terminal) = &read.terminal {
        let terminal = terminal.as_str().as_bytes();
        assert!(!terminal.is_empty());
        assert!(
            contains(data, terminal) || contains(&resolved, terminal),
            "the terminal is in the document's text"
        );
    }
});

/// The document with XML's own references resolved, written apart from the reader: a `&` that
/// starts no `&lt;`, `&gt;`, `&amp;`, `&apos;`, `&quot;`, `&#N;` or `&#xH;` is kept as it is.
fn resolve_references(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'&' {
            let rest = &data[i + 1..];
            // References hold letters, digits and `#` only (any number of leading zeros).
            let end = rest
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'#'));
            if let Some(end) = end.filter(|end| rest[*end] == b';') {
                let reference = &rest[..end];
                let resolved: Option<Vec<u8>> = match reference {
                    b"lt" => Some(b"<".to_vec()),
                    b"gt" => Some(b">".to_vec()),
                    b"amp" => Some(b"&".to_vec()),
                    b"apos" => Some(b"'".to_vec()),
                    b"quot" => Some(b"\"".to_vec()),
                    [b'#', b'x', hex @ ..] => code(hex, 16),
                    [b'#', decimal @ ..] => code(decimal, 10),
                    _ => None,
                };
                if let Some(resolved) = resolved {
                    out.extend_from_slice(&resolved);
                    i += end + 2;
                    continue;
                }
            }
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

fn code(digits: &[u8], radix: u32) -> Option<Vec<u8>> {
    let digits = std::str::from_utf8(digits).ok()?;
    if digits.is_empty() || !digits.bytes().all(|b| (b as char).is_digit(radix)) {
        return None;
    }
    let c = char::from_u32(u32::from_str_radix(digits, radix).ok()?)?;
    Some(c.to_string().into_bytes())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
