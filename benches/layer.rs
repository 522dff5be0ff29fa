//! What `NumberAuthLayer` adds to a call, measured around an in-memory client (no network) so
//! that only payauth's own work shows: the baseline calls the same client directly.
//! Both sides pay the same request building and body collection. `front_number_rest_signed` adds
//! the sidecar's front around the signed layer.

#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

// Its unit tests are compiled here too (benches build with cfg(test)) but not run.
#[allow(unused_imports, dead_code)]
#[path = "../src/log_fields.rs"]
mod log_fields;

use std::alloc::System;
use std::convert::Infallible;
use std::hint::black_box;

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use payauth::metrics::Metrics;
use payauth::number::{NumberAuthLayer, NumberConfig, NumberCredentials};
use payauth::proxy::{FrontLayer, FrontLimits};
use tower::{service_fn, Layer, Service, ServiceExt};

const AUTH: &[u8] = br#"{"AuthenticateResult": {"AuthSuccess": true, "ErrCode": 0, "ErrMsg": "", "FunctionOk": true, "SessKey": "9B9175EF556E4DDA93303132323141303035383339", "ThisUser": {"ID": 123}}}"#;
const ANSWER: &[u8] = br#"{"CreditCardSale_ManualResult": {"FunctionOk": true, "ErrCode": 0, "ErrMsg": "", "RespMsg": "Approved", "TxID": 1000001}}"#;
const CALL: &[u8] =
    br#"{"Amount": "1.00", "CardNum": "4111111111111111", "ExpMonth": "12", "ExpYear": "30"}"#;

/// The system allocator, counting allocations: each bench first prints how many one call makes
/// (allocation count is what a busy machine's caches pay for, more than a warm microbench shows).
#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations (and reallocations) per call as last measured, by bench: a run that finds more
/// than [`ALLOCATION_SLACK`] above its figure fails (the bench run is the guard). Lower a figure
/// when a change saves allocations.
const ALLOCATION_BUDGET: [(&str, f64); 5] = [
    ("direct", 5.0),
    ("number_rest", 8.0),
    ("number_rest_signed", 8.0),
    ("front_number_rest_signed", 12.0),
    ("front_number_rest_signed_logged", 14.0),
];
const ALLOCATION_SLACK: f64 = 2.0;

/// Allocations (and reallocations) per run of `f`, averaged over 100 runs; fails the run when
/// they exceed the bench's budget by more than the slack.
fn allocations_per_call(name: &str, mut f: impl FnMut()) {
    f();
    let region = Region::new(ALLOCATOR);
    for _ in 0..100 {
        f();
    }
    let change = region.change();
    let per_call = (change.allocations + change.reallocations) as f64 / 100.0;
    println!("layer/{name}: {per_call:.1} allocations per call");
    let budget = ALLOCATION_BUDGET
        .iter()
        .find(|(bench, _)| *bench == name)
        .map(|(_, budget)| *budget)
        .expect("every bench has an allocation budget");
    assert!(
        per_call <= budget + ALLOCATION_SLACK,
        "layer/{name}: {per_call:.1} allocations per call, over its budget of {budget} by more \
         than {ALLOCATION_SLACK}"
    );
}

/// One call through `service` (a clone of it, as hyper makes per request), its answer read.
/// The first call (an authentication) is not measured; then the allocations per call are
/// printed and the call is benched.
fn measure<S, B>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    service: &S,
    make_request: impl Fn() -> Request<Full<Bytes>>,
) where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let call = || {
        rt.block_on(async {
            let response = service
                .clone()
                .oneshot(make_request())
                .await
                .expect("answer");
            black_box(
                response
                    .into_body()
                    .collect()
                    .await
                    .expect("body")
                    .to_bytes(),
            )
        })
    };
    call();
    allocations_per_call(name, || {
        call();
    });
    group.bench_function(name, |b| b.iter(call));
}

fn request() -> Request<Full<Bytes>> {
    Request::post("http://gateway.test/APIcardProcREST/v1.0.0/CreditCardSale_Manual")
        .header("content-type", JSON)
        .header("content-length", CALL_LENGTH)
        .body(Full::new(Bytes::from_static(CALL)))
        .expect("request")
}

/// Header values as hyper hands them over: slices of the bytes it read, so that a clone is a
/// reference count (a value built from a `&str` owns a `Vec`, and its first clone allocates).
/// The headers of the call as an app sends them (a POST with a body says its length).
const JSON: http::HeaderValue = http::HeaderValue::from_static("application/json");
const CALL_LENGTH: http::HeaderValue = http::HeaderValue::from_static("84");

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let gateway = service_fn(|request: Request<Full<Bytes>>| async move {
        let body = if request.uri().path().ends_with("/Authenticate") {
            AUTH
        } else {
            ANSWER
        };
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(body))))
    });
    let mut group = c.benchmark_group("layer");
    measure(&mut group, &rt, "direct", &gateway, request);
    for (name, credentials) in [
        (
            "number_rest",
            NumberCredentials::new("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8"),
        ),
        (
            "number_rest_signed",
            NumberCredentials::new("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8")
                .with_signing("7D55DBB3D691C9E0FDF341E4AB38C3C9", 123),
        ),
    ] {
        let layer = NumberAuthLayer::new(
            NumberConfig::rest("number", "http://gateway.test".parse().expect("uri")),
            credentials,
        )
        .expect("layer");
        measure(&mut group, &rt, name, &layer.layer(gateway), request);
    }
    // The sidecar's whole in-process path: the front (request id, span and access line, error
    // responses, load shedding, body read) around the signed Number layer, served as the
    // sidecar serves it (`FrontLayer::shared`). No log subscriber
    // is installed, so the access line is not formatted: bench/vs-nginx.sh measures that.
    let layer = NumberAuthLayer::new(
        NumberConfig::rest("number", "http://gateway.test".parse().expect("uri")),
        NumberCredentials::new("EP9116875", "2148B239CF6846BDA5D141BF4A4CFBE8")
            .with_signing("7D55DBB3D691C9E0FDF341E4AB38C3C9", 123),
    )
    .expect("layer");
    let registry = prometheus::Registry::new();
    let metrics = Metrics::new(&registry).expect("metrics").gateway("number");
    let front = FrontLayer::new(
        "number",
        "http://gateway.test".parse().expect("uri"),
        FrontLimits {
            max_concurrency: 256,
            max_request_bytes: 1 << 20,
            body_timeout: std::time::Duration::from_secs(30),
            soap_errors: false,
        },
        metrics,
    )
    .shared(layer.layer(gateway));
    // As the sidecar serves it: the shared front called by reference.
    let front = service_fn(move |request| front(request));
    let app_request = || {
        Request::post("/APIcardProcREST/v1.0.0/CreditCardSale_Manual")
            .header("content-type", JSON)
            .header("content-length", CALL_LENGTH)
            .body(Full::new(Bytes::from_static(CALL)))
            .expect("request")
    };
    measure(
        &mut group,
        &rt,
        "front_number_rest_signed",
        &front,
        app_request,
    );
    // The same with the sidecar's text log format at its default level, written to nowhere:
    // the request span and the access line formatted, without the write to stderr.
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::sink)
        .with_ansi(false)
        .fmt_fields(log_fields::PlainFields)
        .event_format(log_fields::PlainFormat::new(log_fields::UtcTime))
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        measure(
            &mut group,
            &rt,
            "front_number_rest_signed_logged",
            &front,
            app_request,
        );
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
