//! The PCI-mode signature against its baselines, measured in the same run:
//! - `hmac_from_scratch`: HMAC-SHA256 keyed per call (what a naive client does), hex-encoded;
//! - `sha256_3_blocks`: the three SHA-256 block compressions an HMAC of a 56..119-byte message
//!   needs once the pads are absorbed: the physical bound of a cold signature;
//! - `signer_cold`: payauth's signature with nothing cached (the keyed `Hmac<Sha256>` cloned,
//!   stack buffer);
//! - `signer_cached`: the owned header value for a second already signed (what most requests
//!   get), to compare with `header_value_clone_floor` (the bound: within 2x of it);
//! - `signer_cached_borrowed`: the same, lent to a closure instead of cloned;
//! - `header_value_clone_floor`: cloning (and dropping) a `HeaderValue`, the floor of handing
//!   out an owned header value at all.

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use hmac::{Hmac, Mac};
use payauth::number::{SignatureBuf, SignatureCache, Signer};
use payauth::Secret;
use sha2::Sha256;

const KEY: &str = "9B9175EF556E4DDA93303132323141303035383339";
const SECRET: &str = "7D55DBB3D691C9E0FDF341E4AB38C3C9";
const EPOCH: u64 = 1_702_565_789;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("sign");

    group.bench_function("hmac_from_scratch", |b| {
        b.iter(|| {
            let message = format!("{}_{}_{}", black_box(KEY), black_box(EPOCH), 123);
            let mut mac = Hmac::<Sha256>::new_from_slice(black_box(SECRET).as_bytes())
                .expect("any key length");
            mac.update(message.as_bytes());
            let hex: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect();
            black_box(format!("{message}_{hex}"))
        })
    });

    let blocks = [sha2::digest::generic_array::GenericArray::from([0x5au8; 64]); 3];
    group.bench_function("sha256_3_blocks", |b| {
        b.iter(|| {
            let mut state = black_box([
                0x6a09e667u32,
                0xbb67ae85,
                0x3c6ef372,
                0xa54ff53a,
                0x510e527f,
                0x9b05688c,
                0x1f83d9ab,
                0x5be0cd19,
            ]);
            sha2::compress256(&mut state, black_box(&blocks));
            black_box(state)
        })
    });

    let signer = Signer::new(&Secret::from(SECRET), 123).expect("signer");
    group.bench_function("signer_cold", |b| {
        let mut buf = SignatureBuf::new();
        b.iter(|| {
            let signed = signer
                .sign(black_box(KEY), black_box(EPOCH), &mut buf)
                .expect("sign");
            black_box(signed.len())
        })
    });

    let cache = SignatureCache::default();
    cache.header(&signer, KEY, EPOCH).expect("warm");
    group.bench_function("signer_cached", |b| {
        b.iter(|| {
            black_box(
                cache
                    .header(&signer, black_box(KEY), black_box(EPOCH))
                    .expect("cached"),
            )
        })
    });
    group.bench_function("signer_cached_borrowed", |b| {
        b.iter(|| {
            black_box(
                cache
                    .with_value(&signer, black_box(KEY), black_box(EPOCH), |v| v.len())
                    .expect("cached"),
            )
        })
    });

    // The floor of handing out an owned header value at all: one reference-count increment and,
    // when the request is done with it, one decrement.
    let value = cache.header(&signer, KEY, EPOCH).expect("warm");
    group.bench_function("header_value_clone_floor", |b| {
        b.iter(|| black_box(black_box(&value).clone()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
