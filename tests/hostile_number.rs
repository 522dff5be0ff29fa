//! Black-box tests of the Number sidecar against hostile inputs: every spelling of the app's own
//! Authenticate, malformed SOAP, gateways that stall or refuse every key, clients that write a
//! huge body before reading, and a corrupt lockout record on disk.
//!
//! Most tests use the Number simulator; the ones about misbehaving gateways use a tiny hostile
//! gateway written here (see [`HostileGateway`]).

// `Mutex::lock` is disallowed in favour of payauth's crate-private helper; a test may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use payauth_sim::number::NumberSimConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Every sale through payauth in these tests must come back within this, whatever the gateway
/// does (the configured request timeouts are far below it).
const BOUND: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// A hostile Number gateway

/// How the hostile gateway answers API calls (anything but Authenticate).
#[derive(Debug, Clone, Copy)]
enum Calls {
    /// Approves every call.
    Approve,
    /// `200` with `Content-Length: 1000` and a few body bytes, then nothing, ever.
    StallAfterHead,
    /// Refuses every key as expired (5030), however new.
    RefuseEveryKey,
}

struct HostileState {
    calls_mode: Calls,
    /// While true, Authenticate answers stall after their head like [`Calls::StallAfterHead`].
    stall_auth: AtomicBool,
    /// Authenticates received.
    auths: AtomicU64,
    /// API calls received.
    calls: AtomicU64,
    /// The senders of stalled bodies, kept alive so that those bodies never end.
    stalled: Mutex<Vec<mpsc::UnboundedSender<Bytes>>>,
}

/// A REST Number gateway on 127.0.0.1:0 that answers Authenticate with a new key each time
/// (unless told to stall) and API calls as [`Calls`] says, counting both.
struct HostileGateway {
    addr: SocketAddr,
    state: Arc<HostileState>,
    accept: tokio::task::JoinHandle<()>,
}

impl HostileGateway {
    async fn start(calls_mode: Calls) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(HostileState {
            calls_mode,
            stall_auth: AtomicBool::new(false),
            auths: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            stalled: Mutex::new(Vec::new()),
        });
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        hostile_answer(Arc::clone(&state), request)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn auths(&self) -> u64 {
        self.state.auths.load(Ordering::SeqCst)
    }

    fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    fn stall_auth(&self, stall: bool) {
        self.state.stall_auth.store(stall, Ordering::SeqCst);
    }
}

impl Drop for HostileGateway {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A response body fed by a channel: it ends when the sender is dropped, and never if the sender
/// is kept (what `StreamBody` over a channel does, without a stream crate).
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

fn json_answer(value: serde_json::Value) -> Response<ChannelBody> {
    let bytes = Bytes::from(value.to_string());
    let (tx, rx) = mpsc::unbounded_channel();
    let len = bytes.len();
    tx.send(bytes).expect("receiver alive");
    Response::builder()
        .header("content-type", "application/json")
        .header("content-length", len)
        .body(ChannelBody(rx))
        .expect("response")
}

/// `200`, `Content-Length: 1000`, `start` as the first bytes of the body, and then a stall that
/// lasts as long as the gateway.
fn stalled_answer(state: &HostileState, start: &'static str) -> Response<ChannelBody> {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(Bytes::from_static(start.as_bytes()))
        .expect("receiver alive");
    state.stalled.lock().expect("lock").push(tx);
    Response::builder()
        .header("content-type", "application/json")
        .header("content-length", 1000)
        .body(ChannelBody(rx))
        .expect("response")
}

async fn hostile_answer(
    state: Arc<HostileState>,
    request: Request<Incoming>,
) -> Result<Response<ChannelBody>, Infallible> {
    let is_auth = request.uri().path().ends_with("/Authenticate");
    // Read the request in full first, as a real server does.
    let _ = request.into_body().collect().await;
    if is_auth {
        let n = state.auths.fetch_add(1, Ordering::SeqCst) + 1;
        if state.stall_auth.load(Ordering::SeqCst) {
            return Ok(stalled_answer(&state, r#"{"AuthenticateResult":"#));
        }
        return Ok(json_answer(serde_json::json!({
            "AuthenticateResult": {
                "AuthSuccess": true,
                "ErrCode": 0,
                "ErrMsg": "",
                "FunctionOk": true,
                "RespMsg": "ok",
                "SessKey": format!("{n:042X}"),
            }
        })));
    }
    state.calls.fetch_add(1, Ordering::SeqCst);
    Ok(match state.calls_mode {
        Calls::Approve => json_answer(serde_json::json!({
            "CreditCardSale_ManualResult": {
                "FunctionOk": true, "ErrCode": 0, "ErrMsg": "", "RespMsg": "Approved"
            }
        })),
        Calls::StallAfterHead => stalled_answer(&state, r#"{"CreditCardSale_ManualResult":"#),
        Calls::RefuseEveryKey => json_answer(serde_json::json!({
            "CreditCardSale_ManualResult": {
                "FunctionOk": false, "ErrCode": 5030, "ErrMsg": "Expired Session Key", "RespMsg": ""
            }
        })),
    })
}

/// A sale through payauth that must come back within [`BOUND`].
async fn bounded_sale(h: &Harness) -> Reply {
    tokio::time::timeout(BOUND, sale(&h.client, h.addr))
        .await
        .expect("payauth answered within the bound")
}

// ---------------------------------------------------------------------------------------------
// REST: the app's own Authenticate, however it is spelled

const STALE_AUTH: &str = r#"{"AcctCode":"EP9116875","Token":"OLD00000000000000000000000000000"}"#;

#[tokio::test]
async fn every_spelling_of_the_rest_authenticate_is_answered_locally() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(&sim.url(), Options::default()).await;
    let variants = [
        "/APIcardProcREST/v1.0.0/Authenticate/",
        "/APIcardProcREST/v1.0.0/./Authenticate",
        "/APIcardProcREST/v1.0.0/x/../Authenticate",
        "/APIcardProcREST//v1.0.0/Authenticate",
        "/APIcardProcREST/v1.0.0/%41uthenticate",
        "/APIcardProcREST/v1.0.0/Authenticat%65",
        "/APIcardProcREST/v1.0.0/Authenticate;a=b",
        "/APIcardProcREST/v1.0.0;a=b/Authenticate",
        "/apicardprocrest/V1.0.0/AUTHENTICATE",
        "/APIcardProcREST/v1.0.0/Authenticate.",
    ];
    for path in variants {
        let reply = post(&h.client, h.addr, path, STALE_AUTH).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        let result = &reply.json()["AuthenticateResult"];
        assert!(
            result["RespMsg"]
                .as_str()
                .is_some_and(|m| m.starts_with("Answered by payauth")),
            "{path}: {}",
            reply.text()
        );
        assert_eq!(result["AuthSuccess"], true, "{path}");
    }
    // Forwarding anything needs a key, so a forwarded Authenticate would show up here too.
    let stats = sim.stats();
    assert_eq!(
        (stats.auth_attempts, stats.calls),
        (0, 0),
        "no spelling of Authenticate reached the gateway"
    );
    assert_eq!(
        h.metric("payauth_requests_total{gateway=\"number\",outcome=\"local\"}")
            .await,
        variants.len() as f64
    );

    // Business as usual afterwards: one authentication, by payauth, with its own token.
    let reply = sale(&h.client, h.addr).await;
    assert!(
        approved(&reply, "CreditCardSale_Manual"),
        "{}",
        reply.text()
    );
    let stats = sim.stats();
    assert_eq!((stats.auth_attempts, stats.auth_success), (1, 1));
    h.stop().await;
}

#[tokio::test]
async fn ambiguous_rest_paths_are_refused_and_not_forwarded() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(&sim.url(), Options::default()).await;
    for path in [
        "/APIcardProcREST/v1.0.0/Authenticate%2F",
        "/APIcardProcREST/v1.0.0/Authenticate%5C",
        "/APIcardProcREST/v1.0.0/%2541uthenticate",
        "/APIcardProcREST/v1.0.0/Authenticat%zz",
        "/APIcardProcREST/v1.0.0/Authenticate%00",
        "/APIcardProcREST/v1.0.0/Authentic%C3%A1te",
        "/APIcardProcREST/v1.0.0/CreditCardSale%2FManual",
    ] {
        let reply = post(&h.client, h.addr, path, STALE_AUTH).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            reply.text()
        );
        assert_eq!(reply.error_code().as_deref(), Some("bad_request"), "{path}");
    }
    let stats = sim.stats();
    assert_eq!(
        (stats.auth_attempts, stats.calls),
        (0, 0),
        "nothing was forwarded"
    );
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// SOAP: the app's own Authenticate, and malformed envelopes

const SOAP_AUTHENTICATE: &str =
    "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\">\
     <s:Body><Authenticate xmlns=\"http://tempuri.org/\"><acctCode>EP9116875</acctCode>\
     <token>OLD00000000000000000000000000000</token></Authenticate></s:Body></s:Envelope>";
const AUTH_ACTION: &str = "http://tempuri.org/ICardProcess/Authenticate";

fn soap_call(operation: &str, inner: &str) -> String {
    format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>\
         <{operation} xmlns=\"http://tempuri.org/\"><sessKey>app-key</sessKey>{inner}</{operation}>\
         </s:Body></s:Envelope>"
    )
}

/// POSTs a SOAP body to `path`, with `action` as SOAPAction when given.
async fn soap_at(h: &Harness, path: &str, action: Option<&str>, body: String) -> Reply {
    let mut request = Request::post(format!("http://{}{path}", h.addr))
        .header("content-type", "text/xml; charset=utf-8");
    if let Some(action) = action {
        request = request.header("SOAPAction", format!("\"{action}\""));
    }
    let request = request.body(Full::new(Bytes::from(body))).expect("request");
    send(&h.client, request).await
}

async fn soap_harness(sim_url: &str) -> Harness {
    Harness::start(
        sim_url,
        Options {
            protocol: "soap",
            ..Options::default()
        },
    )
    .await
}

fn assert_local_soap_auth(reply: &Reply, what: &str) {
    assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.text());
    let text = reply.text();
    assert!(
        text.contains("<RespMsg>Answered by payauth")
            && text.contains("<AuthSuccess>true</AuthSuccess>"),
        "{what}: {text}"
    );
}

#[tokio::test]
async fn a_soap_authenticate_is_answered_locally_whatever_the_path() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = soap_harness(&sim.url()).await;
    let paths = [
        format!("{SOAP_PATH}/"),
        "/APIcardProcR119/./CardProcAPI.svc".to_owned(),
        "/APIcardProcR119//CardProcAPI.svc".to_owned(),
        "/APIcardProcR119/%43ardProcAPI.svc".to_owned(),
    ];
    for path in &paths {
        let reply = soap_at(&h, path, Some(AUTH_ACTION), SOAP_AUTHENTICATE.into()).await;
        assert_local_soap_auth(&reply, path);
    }
    let stats = sim.stats();
    assert_eq!(
        (stats.auth_attempts, stats.calls),
        (0, 0),
        "no SOAP Authenticate reached the gateway"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_soap_authenticate_is_recognised_by_its_operation_or_its_soapaction() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = soap_harness(&sim.url()).await;
    // The operation says Authenticate; no SOAPAction header at all.
    let reply = soap_at(&h, SOAP_PATH, None, SOAP_AUTHENTICATE.into()).await;
    assert_local_soap_auth(&reply, "no SOAPAction");
    // The SOAPAction says Authenticate (WCF dispatches on it); the operation is named otherwise.
    let reply = soap_at(
        &h,
        SOAP_PATH,
        Some(AUTH_ACTION),
        soap_call("CreditCardSale_Manual", "<amount>1.00</amount>"),
    )
    .await;
    assert_local_soap_auth(&reply, "SOAPAction Authenticate, other operation");
    // Another namespace, same last segment.
    let reply = soap_at(
        &h,
        SOAP_PATH,
        Some("urn:other/ICardProcess/authenticate"),
        soap_call("Whatever", "<a>1</a>"),
    )
    .await;
    assert_local_soap_auth(&reply, "SOAPAction ending in /authenticate");
    let stats = sim.stats();
    assert_eq!((stats.auth_attempts, stats.calls), (0, 0));
    h.stop().await;
}

/// A billion-laughs document: ten levels of ten-fold entity expansion.
fn billion_laughs() -> String {
    let mut doctype = String::from("<!DOCTYPE lolz [<!ENTITY lol0 \"lol\">");
    for level in 1..10 {
        let previous = format!("&lol{};", level - 1).repeat(10);
        doctype.push_str(&format!("<!ENTITY lol{level} \"{previous}\">"));
    }
    doctype.push_str("]>");
    format!(
        "<?xml version=\"1.0\"?>{doctype}{}",
        soap_call("CreditCardSale_Manual", "<amount>&lol9;</amount>")
    )
}

#[tokio::test]
async fn malformed_soap_gets_a_soap_fault_and_is_not_forwarded() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = soap_harness(&sim.url()).await;
    let action = "http://tempuri.org/ICardProcess/CreditCardSale_Manual";
    // A well-formed call first: the simulator counts, so "unchanged" below means something.
    let reply = soap_at(
        &h,
        SOAP_PATH,
        Some(action),
        soap_call("CreditCardSale_Manual", "<amount>1.00</amount>"),
    )
    .await;
    assert!(
        reply.text().contains("<FunctionOk>true</FunctionOk>"),
        "{}",
        reply.text()
    );
    let before = sim.stats();
    assert_eq!(before.calls, 1);

    let good = soap_call("CreditCardSale_Manual", "<amount>1.00</amount>");
    let cut = good.find("</sessKey>").expect("session element") + "</sessKey>".len();
    let cases = [
        ("truncated after the session element", good[..cut].to_owned()),
        (
            "garbage after the envelope",
            format!("{good}<x>garbage</x>"),
        ),
        (
            "XXE",
            format!(
                "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>{}",
                soap_call("CreditCardSale_Manual", "<amount>&e;</amount>")
            ),
        ),
        ("billion laughs", billion_laughs()),
        (
            "undefined entity",
            soap_call("CreditCardSale_Manual", "<amount>&foo;</amount>"),
        ),
        (
            "two operations",
            "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>\
             <CreditCardSale_Manual xmlns=\"http://tempuri.org/\"><sessKey>k</sessKey><amount>1.00</amount></CreditCardSale_Manual>\
             <CreditCardRefund xmlns=\"http://tempuri.org/\"><sessKey>k</sessKey><amount>9.00</amount></CreditCardRefund>\
             </s:Body></s:Envelope>"
                .to_owned(),
        ),
    ];
    for (what, body) in cases {
        let reply = soap_at(&h, SOAP_PATH, Some(action), body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            reply.text()
        );
        assert_eq!(reply.error_code().as_deref(), Some("bad_request"), "{what}");
        let content_type = reply
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            content_type.starts_with("text/xml"),
            "{what}: {content_type}"
        );
        let text = reply.text();
        assert!(
            text.contains("<faultcode>soap:Client</faultcode>")
                && text.contains("<code>bad_request</code>"),
            "{what}: {text}"
        );
    }
    let after = sim.stats();
    assert_eq!(after.calls, before.calls, "no malformed call was forwarded");
    assert_eq!(after.auth_attempts, before.auth_attempts);
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Every read from a gateway has a deadline

#[tokio::test]
async fn an_answer_that_stalls_after_its_head_is_a_timeout_and_never_replayed() {
    let gateway = HostileGateway::start(Calls::StallAfterHead).await;
    let h = Harness::start(
        &gateway.url(),
        Options {
            request_timeout_secs: 1.0,
            ..Options::default()
        },
    )
    .await;
    let reply = bounded_sale(&h).await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert_eq!(reply.error_code().as_deref(), Some("upstream_timeout"));
    assert_eq!(gateway.auths(), 1);
    assert_eq!(
        gateway.calls(),
        1,
        "the stalled call was sent once, never replayed"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_stalled_authentication_times_out_and_frees_the_guard() {
    let gateway = HostileGateway::start(Calls::Approve).await;
    gateway.stall_auth(true);
    let h = Harness::start(
        &gateway.url(),
        Options {
            request_timeout_secs: 1.0,
            ..Options::default()
        },
    )
    .await;
    let reply = bounded_sale(&h).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(reply.error_code().as_deref(), Some("auth_unavailable"));
    assert_eq!(gateway.auths(), 1);
    assert_eq!(gateway.calls(), 0, "no key, no call");

    // payauth backs off a little after an authentication with an unknown outcome; after that,
    // a sale authenticates and goes through. With the default budget of 1, that is only
    // possible if the stalled attempt gave its slot back.
    gateway.stall_auth(false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reply = bounded_sale(&h).await;
        if approved(&reply, "CreditCardSale_Manual") {
            break;
        }
        assert_eq!(
            reply.error_code().as_deref(),
            Some("auth_unavailable"),
            "{}",
            reply.text()
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no sale went through after the gateway recovered: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        gateway.auths(),
        2,
        "the stalled authentication was not retried blindly"
    );
    assert_eq!(gateway.calls(), 1);
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The renewal brake

#[tokio::test]
async fn a_gateway_that_refuses_every_new_key_is_braked() {
    let gateway = HostileGateway::start(Calls::RefuseEveryKey).await;
    let h = Harness::start(&gateway.url(), Options::default()).await;
    let (mut unavailable, mut refused) = (0u64, 0u64);
    for _ in 0..100 {
        let reply = bounded_sale(&h).await;
        if reply.error_code().as_deref() == Some("auth_unavailable") {
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            unavailable += 1;
        } else {
            // Otherwise the gateway's own refusal, passed on after one renewal and replay.
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert_eq!(
                reply.json()["CreditCardSale_ManualResult"]["ErrCode"],
                5030,
                "{}",
                reply.text()
            );
            refused += 1;
        }
    }
    let auths = gateway.auths();
    // One Authenticate per key: the first sale authenticates, is refused, renews once (a young
    // refusal, the first in a row: no brake yet) and passes the second refusal on. The next sale
    // is refused with that fresh key too: the second young refusal in a row engages the brake,
    // an exponential back-off from ~1 s (1, 2, 4 s, ±20%), and sales fail fast meanwhile. The
    // 100 sales take far less than the ~5.6 s the brake allows before a sixth Authenticate.
    assert!(
        auths <= 5,
        "{auths} Authenticates for 100 sales against a gateway refusing every key"
    );
    assert!(
        unavailable >= 90,
        "{unavailable} sales failed fast, {refused} were refused by the gateway"
    );
    assert!(
        h.metric("payauth_young_key_refusals_total{gateway=\"number\"}")
            .await
            >= 2.0
    );
    // Renewals are counted when sent: every Authenticate but the first was one.
    assert_eq!(
        h.metric("payauth_reauth_total{gateway=\"number\",reason=\"5030\"}")
            .await,
        (auths - 1) as f64
    );
    // While braked, a call with the refused key is not sent at all (it carries card data to a
    // gateway known to refuse it): each key is tried by at most the call that renewed it, its
    // replay, and the call whose refusal engaged the brake.
    let calls = gateway.calls();
    assert!(
        calls <= 3 * auths,
        "{calls} API calls reached the gateway for {auths} keys during the brake"
    );
    // Keys refused as expired are an anomaly, not a key used from two IPs (that is 5050).
    assert_eq!(
        h.metric("payauth_split_egress{gateway=\"number\"}").await,
        0.0
    );
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A readable 413

const SALE_PATH: &str = "/APIcardProcREST/v1.0.0/CreditCardSale_Manual";
const HUGE: usize = 20 << 20;

/// Reads from `stream` until the answer holds `needle` or the connection ends.
async fn read_answer(stream: &mut TcpStream, needle: &str) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        if String::from_utf8_lossy(&answer).contains(needle) {
            break;
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_client_that_writes_a_whole_huge_body_before_reading_gets_a_413() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(&sim.url(), Options::default()).await;
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stream = TcpStream::connect(h.addr).await.expect("connect");
        let head = format!(
            "POST {SALE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {HUGE}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        stream
            .write_all(&vec![b'x'; HUGE])
            .await
            .expect("payauth took the whole body instead of cutting the connection");
        read_answer(&mut stream, "body_too_large").await
    })
    .await
    .expect("answered within 30 s");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    let stats = sim.stats();
    assert_eq!((stats.calls, stats.auth_attempts), (0, 0));
    h.stop().await;
}

#[tokio::test]
async fn a_client_that_writes_a_whole_huge_chunked_body_before_reading_gets_a_413() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(&sim.url(), Options::default()).await;
    let answer = tokio::time::timeout(Duration::from_secs(30), async {
        let mut stream = TcpStream::connect(h.addr).await.expect("connect");
        let head = format!(
            "POST {SALE_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        let chunk_len = 64 << 10;
        let mut chunk = format!("{chunk_len:x}\r\n").into_bytes();
        chunk.extend(std::iter::repeat_n(b'x', chunk_len));
        chunk.extend_from_slice(b"\r\n");
        for _ in 0..HUGE / chunk_len {
            stream
                .write_all(&chunk)
                .await
                .expect("payauth took the whole body instead of cutting the connection");
        }
        stream.write_all(b"0\r\n\r\n").await.expect("last chunk");
        read_answer(&mut stream, "body_too_large").await
    })
    .await
    .expect("answered within 30 s");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    let stats = sim.stats();
    assert_eq!((stats.calls, stats.auth_attempts), (0, 0));
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A corrupt lockout record

#[tokio::test]
async fn a_corrupt_lockout_record_stops_the_start_and_names_the_file() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let mut h = Harness::start(&sim.url(), Options::default()).await;
    // An authentication writes the record: its name is the one payauth really uses.
    assert!(approved(
        &sale(&h.client, h.addr).await,
        "CreditCardSale_Manual"
    ));
    h.sidecar.take().expect("running").shutdown().await;
    let state = h.dir.path().join("state");
    let record = state.join("guard-number.json");
    assert!(record.exists(), "{} was written", record.display());
    std::fs::write(&record, b"{\"records\": {\"ab\": [garbage").expect("corrupt");

    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
token_file = "{admin}"
[state]
dir = "{state}"
[[gateway]]
name = "number"
kind = "number"
listen = "127.0.0.1:0"
upstream = "{upstream}"
protocol = "rest"
account_code = "EP9116875"
token_file = "{token}"
"#,
        admin = h.path("admin-token").display(),
        state = state.display(),
        upstream = sim.url(),
        token = h.path("token").display(),
    );
    let config = payauth::config::Config::parse(&config).expect("valid config");
    match payauth::sidecar::Sidecar::start(config).await {
        Ok(sidecar) => {
            sidecar.shutdown().await;
            panic!("payauth started over a corrupt lockout record");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                message.contains(&record.display().to_string()),
                "the error names the file: {message}"
            );
        }
    }
    assert_eq!(
        sim.stats().auth_attempts,
        1,
        "nothing sent after the corruption"
    );
}
