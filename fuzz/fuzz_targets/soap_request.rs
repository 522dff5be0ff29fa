//! The SOAP request check on arbitrary bytes: nothing panics, and whatever is accepted can be
//! filled with a key and then reads back as the same operation with exactly that key in its
//! session element.
#![no_main]

use libfuzzer_sys::fuzz_target;
use payauth::number::wire::parse_soap_request;

const SESSION_ELEMENT: &str = "sessKey";
const KEY: &str = "KEY";

fuzz_target!(|data: &[u8]| {
    let Ok(request) = parse_soap_request(data, SESSION_ELEMENT) else {
        return;
    };
    let filled = request.fill(data, KEY);
    let again = parse_soap_request(&filled, SESSION_ELEMENT).expect("a filled request parses");
    assert_eq!(again.operation, request.operation, "the same operation");
    assert_eq!(
        again.session_content(&filled),
        Some(KEY.as_bytes()),
        "the session element holds the key"
    );
    assert_eq!(
        again.fill(&filled, KEY),
        filled,
        "filling again changes nothing"
    );

    // When the session element had content, only that content changed: what precedes and
    // follows it is the input's, byte for byte.
    if let Some(old) = request.session_content(data) {
        let prefix = common_prefix(data, &filled);
        let suffix = common_suffix(&data[prefix..], &filled[prefix..]);
        assert!(
            prefix + suffix + old.len() >= data.len(),
            "bytes outside the session element changed"
        );
    }
});

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}
