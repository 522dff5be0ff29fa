//! CreditGuard's per-request work, in bytes per second: splitting the relay form, reading
//! `int_in` (command, terminal, scope fields), choosing the scope and rewriting the form with a
//! session id. Raw and URL-encoded forms of a realistic `doDeal` (about 1 KB), and a large one
//! with customer data (about 8 KB).

// Benches are test code: a malformed fixture should stop them loudly. `criterion_group!`
// generates an undocumented public function.
#![allow(clippy::expect_used, missing_docs)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use payauth::creditguard::form::{form_encode, session_field, RelayForm};
use payauth::creditguard::{int_in, prepare_relay_form, Scope};

fn deal(extra: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ashrait>\n  <request>\n    <version>2000</version>\n\
         <language>Eng</language>\n    <dateTime/>\n    <requestId>ORD-2025-000123</requestId>\n\
         <mayBeDuplicate>0</mayBeDuplicate>\n    <command>doDeal</command>\n    <doDeal>\n\
         <terminalNumber>0882819014</terminalNumber>\n      <cardNo>4580000000000000</cardNo>\n\
         <cardExpiration>1230</cardExpiration>\n      <cvv>123</cvv>\n      <id>000000018</id>\n\
         <total>10000</total>\n      <transactionType>Debit</transactionType>\n\
         <creditType>RegularCredit</creditType>\n      <currency>ILS</currency>\n\
         <transactionCode>Phone</transactionCode>\n      <validation>AutoComm</validation>\n\
         <numberOfPayments/>\n      <user>shop-42</user>\n      <customerData>\n\
         <userData1>Tom &amp; Jerry Ltd.</userData1>\n        <userData2>https://shop.example/?o=123&amp;c=9</userData2>\n\
         {extra}\n      </customerData>\n    </doDeal>\n  </request>\n</ashrait>\n"
    )
}

fn forms(xml: &str) -> [(String, Bytes); 2] {
    let raw = format!("user=app-user&password=app-password&int_in={xml}");
    let mut encoded = b"user=app-user&password=app-password&int_in=".to_vec();
    form_encode(xml.as_bytes(), &mut encoded);
    [
        ("raw".into(), Bytes::from(raw)),
        ("encoded".into(), Bytes::from(encoded)),
    ]
}

fn bench(c: &mut Criterion) {
    let session = session_field("3e4cb361-0465-44db-9d46-bd393f0e120d");
    let padding: String = (0..60)
        .map(|i| {
            format!("<userData{i}>item {i}: widget, size M, colour blue &amp; green</userData{i}>")
        })
        .collect();
    for (size, xml) in [("1k", deal("")), ("8k", deal(&padding))] {
        let mut group = c.benchmark_group(format!("creditguard_{size}"));
        for (encoding, body) in forms(&xml) {
            group.throughput(Throughput::Bytes(body.len() as u64));
            // The whole per-request path: split, decode a copy, read int_in, scope, rewrite.
            group.bench_function(format!("prepare_{encoding}"), |b| {
                b.iter(|| {
                    let (int_in, form) =
                        prepare_relay_form(black_box(body.clone()), &session).expect("valid form");
                    black_box((Scope::Full.session_scope(&int_in), form))
                })
            });
            group.bench_function(format!("split_rewrite_{encoding}"), |b| {
                b.iter(|| {
                    let form = RelayForm::parse(black_box(body.clone())).expect("valid form");
                    black_box(form.rewrite(&session))
                })
            });
            let decoded = RelayForm::parse(body.clone())
                .expect("valid form")
                .decoded_int_in()
                .into_owned();
            group.bench_function(format!("read_int_in_{encoding}"), |b| {
                b.iter(|| black_box(int_in::read(black_box(&decoded)).expect("valid xml")))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
