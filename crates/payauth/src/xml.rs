//! Strict XML checks shared by the readers of documents payauth decides on (SOAP requests and
//! CreditGuard's `int_in`): what a conforming parser at the gateway would refuse, or read in a
//! way of its own, payauth refuses first. quick-xml tokenises; these say what is well-formed.

use bytes::Bytes;
use quick_xml::events::BytesStart;

/// XML's white space (`S`): space, tab, carriage return, line feed.
pub(crate) fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// XML 1.0's `Char` production.
pub(crate) fn is_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML's `Name` production, with every non-ASCII byte accepted (XML allows most letters beyond
/// ASCII): enough to refuse `<>`, `< a>`, `<1a>` or `<a&foo;>`.
pub(crate) fn is_name(name: &[u8]) -> bool {
    let start = |b: u8| b.is_ascii_alphabetic() || b == b'_' || b == b':' || b >= 0x80;
    match name.split_first() {
        Some((&first, rest)) => {
            start(first)
                && rest
                    .iter()
                    .all(|&b| start(b) || b.is_ascii_digit() || b == b'-' || b == b'.')
        }
        None => false,
    }
}

/// Resolves the references in a text or attribute value, handing the text piece by piece to
/// `push`. The only references are XML's own (`&lt;` `&gt;` `&amp;` `&apos;` `&quot;` and
/// character references to characters XML allows): a document without a DTD defines no other
/// entity, and the gateway's parser would refuse one, or read it some other way. Anything else
/// is `invalid`.
pub(crate) fn resolve_references<E: Copy>(
    raw: &[u8],
    invalid: E,
    mut push: impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut rest = raw;
    while let Some(amp) = memchr::memchr(b'&', rest) {
        push(&rest[..amp])?;
        let after = &rest[amp + 1..];
        let semicolon = memchr::memchr(b';', after).ok_or(invalid)?;
        let mut utf8 = [0u8; 4];
        let resolved: &[u8] = match &after[..semicolon] {
            b"lt" => b"<",
            b"gt" => b">",
            b"amp" => b"&",
            b"apos" => b"'",
            b"quot" => b"\"",
            [b'#', b'x', hex @ ..] => char_ref(hex, 16)
                .ok_or(invalid)?
                .encode_utf8(&mut utf8)
                .as_bytes(),
            [b'#', decimal @ ..] => char_ref(decimal, 10)
                .ok_or(invalid)?
                .encode_utf8(&mut utf8)
                .as_bytes(),
            _ => return Err(invalid),
        };
        push(resolved)?;
        rest = &after[semicolon + 1..];
    }
    push(rest)
}

/// A character reference's character: digits only (no sign, at least one), and a character
/// XML allows (no NUL, no other C0 control but tab, CR and LF, no surrogate, no U+FFFE/U+FFFF).
fn char_ref(digits: &[u8], radix: u32) -> Option<char> {
    if digits.is_empty() {
        return None;
    }
    let mut code: u32 = 0;
    for &d in digits {
        let d = char::from(d).to_digit(radix)?;
        code = code.checked_mul(radix)?.checked_add(d)?;
    }
    char::from_u32(code).filter(|&c| is_char(c))
}

/// Whether a start tag is well-formed: its name and attribute names are names, attributes are
/// `name="value"` without duplicates, and their values hold no `<` and only XML's own
/// references. Attribute values are not otherwise read.
pub(crate) fn is_well_formed_start(e: &BytesStart<'_>) -> bool {
    if !is_name(e.name().as_ref()) {
        return false;
    }
    // `attributes()` checks for duplicates unless told otherwise.
    e.attributes().all(|attribute| {
        attribute.is_ok_and(|a| {
            is_name(a.key.as_ref())
                && !a.value.contains(&b'<')
                && resolve_references(&a.value, (), |_| Ok(())).is_ok()
        })
    })
}

/// A SOAP 1.1 Fault carrying payauth's error, for SOAP clients (WCF cannot read payauth's JSON
/// errors): faultcode `soap:Client` for a 4xx (`client_error`) and `soap:Server` for a 5xx,
/// faultstring the message, and `<detail><payauthError xmlns="urn:payauth"><code>..</code>
/// <gateway>..</gateway></payauthError></detail>`. Every text is XML-escaped.
pub(crate) fn soap_fault(code: &str, gateway: &str, message: &str, client_error: bool) -> Bytes {
    let faultcode = if client_error {
        "soap:Client"
    } else {
        "soap:Server"
    };
    Bytes::from(format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\
         <soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>\
         <soap:Fault><faultcode>{faultcode}</faultcode><faultstring>{}</faultstring>\
         <detail><payauthError xmlns=\"urn:payauth\"><code>{}</code><gateway>{}</gateway>\
         </payauthError></detail></soap:Fault></soap:Body></soap:Envelope>",
        xml_text(message),
        xml_text(code),
        xml_text(gateway),
    ))
}

/// `text` ready for an XML element: markup characters escaped, and characters XML cannot carry
/// at all (control characters) replaced, so the fault stays readable whatever the message holds.
fn xml_text(text: &str) -> String {
    if text.chars().all(is_char) {
        quick_xml::escape::escape(text).into_owned()
    } else {
        let clean: String = text
            .chars()
            .map(|c| if is_char(c) { c } else { '\u{FFFD}' })
            .collect();
        quick_xml::escape::escape(clean.as_str()).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(raw: &str) -> Option<String> {
        let mut out = Vec::new();
        resolve_references(raw.as_bytes(), (), |piece| {
            out.extend_from_slice(piece);
            Ok(())
        })
        .ok()?;
        String::from_utf8(out).ok()
    }

    #[test]
    fn only_xmls_own_references_resolve() {
        assert_eq!(
            resolved("a &lt;&gt;&amp;&apos;&quot; b").as_deref(),
            Some("a <>&'\" b")
        );
        assert_eq!(
            resolved("&#65;&#x42;&#x1F600;").as_deref(),
            Some("AB\u{1F600}")
        );
        for bad in [
            "&foo;",
            "&amp",
            "&#;",
            "&#x;",
            "&#1;",
            "&#xD800;",
            "&#xFFFE;",
            "&#-5;",
            "&#99999999999;",
            "&",
        ] {
            assert_eq!(resolved(bad), None, "{bad}");
        }
    }

    #[test]
    fn names() {
        for good in ["a", "soap:Envelope", "_x", "a-b.c1", "\u{5d0}"] {
            assert!(is_name(good.as_bytes()), "{good}");
        }
        for bad in ["", "1a", "-a", "a b", "a&b;", "a<b", "a=b"] {
            assert!(!is_name(bad.as_bytes()), "{bad}");
        }
    }
}
