//! Black-box tests of the CreditGuard layer against the CreditGuard simulator, over real HTTP
//! on 127.0.0.1, with the layer wrapped around a hyper-util client.
// `Mutex::lock` is disallowed in favour of payauth's crate-private helper; a test may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use payauth::creditguard::form::form_encode;
use payauth::creditguard::wire::PLACEHOLDER_SESSION_ID;
use payauth::creditguard::{
    CreditGuardConfig, CreditGuardCredentials, CreditGuardHandle, CreditGuardSession,
    CreditGuardSessionLayer, Scope,
};
use payauth::error::{BoxError, ERROR_HEADER};
use payauth::guard::{FileGuardStore, GuardStore};
use payauth::metrics::{render, GatewayMetrics, Metrics};
use payauth_sim::creditguard::{
    CreditGuardSim, CreditGuardSimConfig, ReceivedCall, ReceivedKind, ReceivedScope,
};
use tower::{Layer, Service, ServiceExt};

const TERMINAL: &str = "0882819014";
const USER: &str = "merchant-user";
const PASSWORD: &str = "s3cret-Passw0rd";
const CARD: &str = "4580000000000000";
const CVV: &str = "987";
const APP_PASSWORD: &str = "app-dummy-Passw0rd-XYZ";
/// "Permitted transaction" in Hebrew, ISO-8859-8: the simulator's `userMessage`.
const HEBREW: &[u8] = &[0xF2, 0xF1, 0xF7, 0xE4, b' ', 0xFA, 0xF7, 0xE9, 0xF0, 0xE4];

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn start(config: CreditGuardSimConfig) -> CreditGuardSim {
    CreditGuardSim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

fn config(sim: &CreditGuardSim) -> CreditGuardConfig {
    let mut config = CreditGuardConfig::new("cg", sim.url().parse().unwrap());
    config.terminals = vec![TERMINAL.into()];
    config
}

fn credentials() -> CreditGuardCredentials {
    CreditGuardCredentials::new(USER, PASSWORD)
}

struct Gateway<S = HttpClient> {
    service: CreditGuardSession<S>,
    handle: CreditGuardHandle,
    registry: prometheus::Registry,
}

fn gateway_with(
    config: CreditGuardConfig,
    creds: CreditGuardCredentials,
    store: Option<Arc<dyn GuardStore>>,
) -> Gateway {
    gateway_around(client(), config, creds, store)
}

fn gateway_around<S>(
    inner: S,
    config: CreditGuardConfig,
    creds: CreditGuardCredentials,
    store: Option<Arc<dyn GuardStore>>,
) -> Gateway<S> {
    let registry = prometheus::Registry::new();
    let metrics: GatewayMetrics = Metrics::new(&registry)
        .unwrap()
        .gateway(&config.gateway.name);
    let store = store.unwrap_or_else(|| Arc::new(payauth::guard::MemoryGuardStore::default()));
    let layer = CreditGuardSessionLayer::builder(config, creds)
        .guard_store(store)
        .metrics(metrics)
        .build()
        .unwrap();
    Gateway {
        service: layer.layer(inner),
        handle: layer.handle(),
        registry,
    }
}

fn gateway(sim: &CreditGuardSim) -> Gateway {
    gateway_with(config(sim), credentials(), None)
}

fn deal_xml(terminal: &str, validation: &str, transaction_type: &str) -> String {
    format!(
        "<ashrait><request><version>2000</version><language>Eng</language><dateTime/><requestId/>\
         <mayBeDuplicate>0</mayBeDuplicate><command>doDeal</command><doDeal>\
         <terminalNumber>{terminal}</terminalNumber><cardNo>{CARD}</cardNo><cardExpiration>1230</cardExpiration>\
         <cvv>{CVV}</cvv><total>100</total><transactionType>{transaction_type}</transactionType>\
         <creditType>RegularCredit</creditType><currency>ILS</currency><transactionCode>Phone</transactionCode>\
         <validation>{validation}</validation>\
         <customerData><userData1>Tom &amp; Jerry&#38;co https://shop/?a=1&amp;b=2</userData1></customerData>\
         </doDeal></request></ashrait>"
    )
}

fn deal() -> String {
    deal_xml(TERMINAL, "AutoComm", "Debit")
}

fn command_xml(command: &str) -> String {
    format!(
        "<ashrait><request><version>2000</version><language>Eng</language><command>{command}</command>\
         <{command}><terminalNumber>{TERMINAL}</terminalNumber></{command}></request></ashrait>"
    )
}

fn encode(s: &str) -> String {
    let mut out = Vec::new();
    form_encode(s.as_bytes(), &mut out);
    String::from_utf8(out).unwrap()
}

/// The app's usual raw form: credentials first, raw XML last.
fn raw_form(xml: &str) -> String {
    format!("user=app-user&password={APP_PASSWORD}&int_in={xml}")
}

fn encoded_form(xml: &str) -> String {
    format!(
        "user=app-user&password={}&int_in={}",
        encode(APP_PASSWORD),
        encode(xml)
    )
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn result(&self) -> Option<String> {
        payauth::creditguard::wire::answer_result(&self.body).map(|c| c.to_string())
    }

    fn error_code(&self) -> Option<&str> {
        self.headers.get(ERROR_HEADER).and_then(|v| v.to_str().ok())
    }
}

async fn send_to<S>(
    svc: &CreditGuardSession<S>,
    method: Method,
    uri: String,
    body: impl Into<Bytes>,
) -> Answer
where
    CreditGuardSession<S>: Service<
            Request<Full<Bytes>>,
            Response = Response<payauth::body::ResponseBody<Incoming>>,
            Error = payauth::Error,
        > + Clone,
{
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(body.into()))
        .unwrap();
    match svc.clone().oneshot(request).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            Answer {
                status: parts.status,
                headers: parts.headers,
                body: body.collect().await.unwrap().to_bytes(),
            }
        }
        Err(e) => {
            let response = e.to_response();
            let (parts, body) = response.into_parts();
            Answer {
                status: parts.status,
                headers: parts.headers,
                body: body.collect().await.unwrap().to_bytes(),
            }
        }
    }
}

async fn post(gw: &Gateway, sim: &CreditGuardSim, body: impl Into<Bytes>) -> Answer {
    send_to(&gw.service, Method::POST, sim.relay_url(), body).await
}

fn calls(sim: &CreditGuardSim) -> Vec<ReceivedCall> {
    sim.received()
        .into_iter()
        .filter(|c| c.kind == ReceivedKind::Call)
        .collect()
}

fn issued(sim: &CreditGuardSim) -> HashSet<String> {
    sim.received()
        .into_iter()
        .filter_map(|c| c.issued_session)
        .collect()
}

fn metrics_text(gw: &Gateway<impl Sized>) -> String {
    render(&gw.registry)
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn raw_and_encoded_forms_arrive_with_a_session_and_identical_int_in() {
    let sim = start(CreditGuardSimConfig::default()).await;
    let gw = gateway(&sim);
    let xml = deal();

    for (form, int_in) in [
        (raw_form(&xml), xml.clone()),
        (encoded_form(&xml), encode(&xml)),
    ] {
        let answer = post(&gw, &sim, form).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.result().as_deref(), Some("000"), "{}", answer.text());
        // The ISO-8859-8 answer reaches the app as the gateway sent it.
        assert!(answer.body.windows(HEBREW.len()).any(|w| w == HEBREW));

        let call = calls(&sim).pop().expect("the call reached the gateway");
        assert_eq!(call.result, "000");
        let session = call.session_id.clone().expect("a session id");
        assert!(
            issued(&sim).contains(&session),
            "the session was issued by the gateway"
        );
        assert_eq!(call.field_names, ["sessionId", "int_in"]);
        assert_eq!(
            call.int_in.as_deref(),
            Some(int_in.as_bytes()),
            "int_in byte for byte"
        );
        // The whole body: the app's form minus its credentials, plus the session.
        assert_eq!(
            call.body,
            Bytes::from(format!("sessionId={session}&int_in={int_in}"))
        );
    }
    let getsessions: Vec<_> = sim
        .received()
        .into_iter()
        .filter(|c| c.kind == ReceivedKind::GetSessionId)
        .collect();
    assert!(!getsessions.is_empty());
    for g in &getsessions {
        // payauth's own getSessionId: properly encoded, with the merchant's credentials.
        assert_eq!(g.field_names, ["user", "password", "int_in"]);
        assert!(g.body.starts_with(
            format!("user={USER}&password={PASSWORD}&int_in=%3Cashrait%3E").as_bytes()
        ));
        assert_eq!(g.result, "000");
    }
    assert!(!sim.received().iter().any(|c| c
        .body
        .windows(APP_PASSWORD.len())
        .any(|w| w == APP_PASSWORD.as_bytes())));
}

#[tokio::test]
async fn forms_with_fields_in_any_order_keep_every_other_byte() {
    let sim = start(CreditGuardSimConfig::default()).await;
    let gw = gateway(&sim);
    let xml = deal();
    // A raw int_in followed by credentials and a stale session id; an extra field first. A raw
    // int_in that is not last gets the session right after it (where a relay field ended it).
    let form = format!("mid=938&int_in={xml}\r\n&sessionId=OLD-SESSION&user=&password=");
    let answer = post(&gw, &sim, form).await;
    assert_eq!(answer.result().as_deref(), Some("000"), "{}", answer.text());
    let call = calls(&sim).pop().unwrap();
    let session = call.session_id.clone().unwrap();
    assert_ne!(session, "OLD-SESSION");
    assert_eq!(
        call.body,
        Bytes::from(format!("mid=938&int_in={xml}\r\n&sessionId={session}"))
    );
    // The usual order: the session goes before int_in.
    let form = format!("password=&mid=938&user=u&int_in={xml}");
    assert_eq!(post(&gw, &sim, form).await.result().as_deref(), Some("000"));
    let call = calls(&sim).pop().unwrap();
    let session = call.session_id.clone().unwrap();
    assert_eq!(
        call.body,
        Bytes::from(format!("mid=938&sessionId={session}&int_in={xml}"))
    );
}

#[tokio::test]
async fn forty_eight_concurrent_deals_use_48_distinct_single_use_sessions() {
    let sim = start(CreditGuardSimConfig::default()).await;
    let gw = gateway(&sim);
    let xml = deal();
    let answers = futures_join_all((0..48).map(|i| {
        let body = if i % 2 == 0 {
            raw_form(&xml)
        } else {
            encoded_form(&xml)
        };
        let gw = &gw;
        let sim = &sim;
        async move { post(gw, sim, body).await }
    }))
    .await;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        assert_eq!(answer.result().as_deref(), Some("000"), "{}", answer.text());
    }
    let stats = sim.stats();
    assert_eq!(stats.calls_ok, 48, "{stats:?}");
    assert_eq!(stats.calls_456, 0, "{stats:?}");
    assert_eq!(stats.sessions_reused_refused, 0);
    let sessions: HashSet<_> = calls(&sim)
        .into_iter()
        .filter_map(|c| c.session_id)
        .collect();
    assert_eq!(sessions.len(), 48, "48 distinct sessions");
    assert!(sessions.is_subset(&issued(&sim)));
    let pool = gw.handle.pool_stats();
    assert!(pool.used >= 48, "{pool:?}");
    assert!(
        pool.on_demand > 0,
        "a burst beyond the pool fetches on demand: {pool:?}"
    );
}

/// `join_all` without pulling in the futures crate: polls every future until all are done.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut results: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx: &mut Context<'_>| {
        let mut done = true;
        for (slot, result) in pending.iter_mut().zip(results.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    results.into_iter().map(|r| r.unwrap()).collect()
}

#[tokio::test]
async fn scope_fields_are_sent_as_configured() {
    let scoped = |cmd: &str, v: Option<&str>, t: Option<&str>| {
        Some(ReceivedScope {
            cmd: Some(cmd.into()),
            validation: v.map(Into::into),
            transaction_type: t.map(Into::into),
        })
    };
    let cases = [
        (Scope::None, None),
        (Scope::Command, scoped("doDeal", None, None)),
        (
            Scope::Full,
            scoped("doDeal", Some("AutoComm"), Some("Debit")),
        ),
    ];
    for (scope, expected) in cases {
        let sim = start(CreditGuardSimConfig::default()).await;
        let mut config = config(&sim);
        config.scope = scope;
        let gw = gateway_with(config, credentials(), None);
        // The vendor's own example spells validation `autoComm`: compared without case.
        let answer = post(
            &gw,
            &sim,
            raw_form(&deal_xml(TERMINAL, "autoComm", "Debit")),
        )
        .await;
        assert_eq!(
            answer.result().as_deref(),
            Some("000"),
            "{scope}: {}",
            answer.text()
        );
        let call = calls(&sim).pop().unwrap();
        let used = call.session_id.unwrap();
        let get = sim
            .received()
            .into_iter()
            .find(|c| c.issued_session.as_deref() == Some(used.as_str()))
            .expect("the session's getSessionId");
        assert_eq!(get.scope, expected, "{scope}");
        assert_eq!(sim.stats().calls_scope_refused, 0);

        // Another command the gateway accepts as a scope, and one it does not.
        let refund = post(&gw, &sim, encoded_form(&command_xml("refundDeal"))).await;
        assert_eq!(
            refund.result().as_deref(),
            Some("000"),
            "{scope}: {}",
            refund.text()
        );
        let inquire = post(&gw, &sim, raw_form(&command_xml("inquireTransactions"))).await;
        assert_eq!(
            inquire.result().as_deref(),
            Some("000"),
            "{scope}: {}",
            inquire.text()
        );
        let scopes: Vec<Option<ReceivedScope>> = sim
            .received()
            .into_iter()
            .filter(|c| c.kind == ReceivedKind::GetSessionId)
            .map(|c| c.scope)
            .collect();
        match scope {
            Scope::None => assert!(scopes.iter().all(Option::is_none), "{scopes:?}"),
            _ => {
                assert!(
                    scopes.contains(&scoped("refundDeal", None, None)),
                    "{scopes:?}"
                );
                assert!(
                    scopes.contains(&None),
                    "inquireTransactions is not a scope: {scopes:?}"
                );
            }
        }
        assert_eq!(sim.stats().calls_scope_refused, 0);
    }
}

#[tokio::test]
async fn a_456_renews_the_session_and_replays_once() {
    let sim = start(CreditGuardSimConfig::default()).await;
    let gw = gateway(&sim);
    assert_eq!(
        post(&gw, &sim, raw_form(&deal())).await.result().as_deref(),
        Some("000")
    );
    wait_until("a warm pool", Duration::from_secs(5), || {
        gw.handle.pool_stats().ready >= 2
    })
    .await;

    sim.expire_sessions();
    let answer = post(&gw, &sim, raw_form(&deal())).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.result().as_deref(), Some("000"), "{}", answer.text());
    let stats = sim.stats();
    assert_eq!(stats.calls_456, 1, "{stats:?}");
    assert_eq!(stats.calls_ok, 2, "{stats:?}");
    let last_two: Vec<_> = calls(&sim).into_iter().rev().take(2).collect();
    assert_eq!(last_two[0].result, "000");
    assert_eq!(last_two[1].result, "456");
    assert_ne!(last_two[0].session_id, last_two[1].session_id);
    assert_eq!(
        last_two[0].int_in, last_two[1].int_in,
        "the replay is the same call"
    );

    let text = metrics_text(&gw);
    assert!(
        text.contains("payauth_reauth_total{gateway=\"cg\",reason=\"456\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("payauth_replays_total{gateway=\"cg\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("payauth_requests_total{gateway=\"cg\",outcome=\"forwarded\"} 2"),
        "{text}"
    );
    // The pooled sessions issued before the refused call were retired as wasted.
    assert!(gw.handle.pool_stats().wasted >= 1);
    assert!(
        text.contains("payauth_sessions_wasted_total{gateway=\"cg\"}"),
        "{text}"
    );
    assert!(
        text.contains("payauth_session_pool_size{gateway=\"cg\"}"),
        "{text}"
    );
    assert!(
        text.contains("payauth_auth_attempts_total{gateway=\"cg\",result=\"success\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn a_second_456_goes_to_the_app_without_a_loop() {
    // Sessions that die at once: every call answers 456.
    let sim = start(CreditGuardSimConfig {
        session_lifetime: Duration::ZERO,
        ..CreditGuardSimConfig::default()
    })
    .await;
    let gw = gateway(&sim);
    let answer = post(&gw, &sim, raw_form(&deal())).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.result().as_deref(), Some("456"), "{}", answer.text());
    assert_eq!(sim.stats().calls, 2, "one call and one replay");
    let text = metrics_text(&gw);
    assert!(
        text.contains("payauth_replays_total{gateway=\"cg\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn reusable_sessions_are_reused() {
    let sim = start(CreditGuardSimConfig {
        session_reuse: true,
        ..CreditGuardSimConfig::default()
    })
    .await;
    let gw = gateway(&sim);
    for _ in 0..6 {
        assert_eq!(
            post(&gw, &sim, raw_form(&deal())).await.result().as_deref(),
            Some("000")
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.calls_ok, 6);
    assert!(stats.sessions_reused >= 3, "{stats:?}");
    assert!(stats.sessions_issued <= 3, "{stats:?}");
}

#[tokio::test]
async fn a_wrong_password_locks_after_one_attempt_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(CreditGuardSimConfig::default()).await;
    let wrong = CreditGuardCredentials::new(USER, "wrong-password");
    let store = || -> Arc<dyn GuardStore> { Arc::new(FileGuardStore::new(dir.path()).unwrap()) };

    let first = gateway_with(config(&sim), wrong.clone(), Some(store()));
    let answer = post(&first, &sim, raw_form(&deal())).await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text()
    );
    assert_eq!(
        answer.error_code(),
        Some("auth_locked"),
        "{}",
        answer.text()
    );
    assert!(!answer.text().contains("wrong-password"));
    for _ in 0..3 {
        assert_eq!(
            post(&first, &sim, raw_form(&deal())).await.error_code(),
            Some("auth_locked")
        );
    }
    wait_until(
        "the rejection to lock the guard",
        Duration::from_secs(10),
        || sim.stats().get_session_rejected >= 1 && first.handle.guard().is_locked(),
    )
    .await;
    // A quiet period, kept on purpose: what is asserted is that nothing (the filler included)
    // tries to authenticate again, and only waiting a while can show that something does not
    // happen.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        sim.stats().get_session_calls,
        1,
        "exactly one authentication"
    );
    assert_eq!(sim.stats().get_session_rejected, 1);
    assert!(first.handle.guard().is_locked());
    let text = metrics_text(&first);
    assert!(
        text.contains("payauth_auth_locked{gateway=\"cg\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("payauth_auth_attempts_total{gateway=\"cg\",result=\"rejected\"} 1"),
        "{text}"
    );
    drop(first);

    // A restart with the same password finds the lock on disk and sends nothing.
    let second = gateway_with(config(&sim), wrong, Some(store()));
    assert!(second.handle.guard().is_locked());
    assert_eq!(
        post(&second, &sim, raw_form(&deal())).await.error_code(),
        Some("auth_locked")
    );
    // A quiet period, kept on purpose: nothing may be sent, and only waiting a while can show
    // that.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.stats().get_session_calls, 1);

    // The password file changes: authentication is allowed again.
    second.handle.update_credentials(credentials());
    assert!(!second.handle.guard().is_locked());
    let answer = post(&second, &sim, raw_form(&deal())).await;
    assert_eq!(answer.result().as_deref(), Some("000"), "{}", answer.text());
}

#[tokio::test]
async fn refused_requests_are_never_forwarded() {
    let sim = start(CreditGuardSimConfig::default()).await;
    let mut config = config(&sim);
    // Full scope has nothing to pre-warm, so the gateway must see nothing at all.
    config.scope = Scope::Full;
    config.gateway.max_request_bytes = 4096;
    let gw = gateway_with(config, credentials(), None);

    let foreign = post(
        &gw,
        &sim,
        raw_form(&deal_xml("0999999999", "AutoComm", "Debit")),
    )
    .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert_eq!(foreign.error_code(), Some("terminal_not_allowed"));
    assert!(
        !foreign.text().contains("0999999999"),
        "messages do not echo the request"
    );

    let broken = post(
        &gw,
        &sim,
        raw_form("<ashrait><request><command>doDeal</command><doDeal>"),
    )
    .await;
    assert_eq!(broken.status, StatusCode::BAD_REQUEST);
    assert_eq!(broken.error_code(), Some("bad_request"));
    let mismatched = post(
        &gw,
        &sim,
        raw_form(&deal().replace("</doDeal>", "</doDeel>")),
    )
    .await;
    assert_eq!(mismatched.error_code(), Some("bad_request"));
    let no_int_in = post(&gw, &sim, format!("user=a&password={APP_PASSWORD}")).await;
    assert_eq!(no_int_in.error_code(), Some("bad_request"));
    let no_terminal = post(
        &gw,
        &sim,
        raw_form(&deal().replace(&format!("<terminalNumber>{TERMINAL}</terminalNumber>"), "")),
    )
    .await;
    assert_eq!(no_terminal.error_code(), Some("bad_request"));
    let doctype = post(&gw, &sim, raw_form(&format!("<!DOCTYPE x>{}", deal()))).await;
    assert_eq!(doctype.error_code(), Some("bad_request"));

    let big = raw_form(&deal().replace(
        "<total>100</total>",
        &format!("<total>100</total><pad>{}</pad>", "x".repeat(8000)),
    ));
    let oversized = post(&gw, &sim, big).await;
    assert_eq!(oversized.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(oversized.error_code(), Some("body_too_large"));

    let soap = send_to(
        &gw.service,
        Method::POST,
        format!("{}/xpo/services/Relay", sim.url()),
        raw_form(&deal()),
    )
    .await;
    assert_eq!(soap.error_code(), Some("bad_request"));
    let get = send_to(&gw.service, Method::GET, sim.relay_url(), Bytes::new()).await;
    assert_eq!(get.error_code(), Some("bad_request"));
    let query = send_to(
        &gw.service,
        Method::POST,
        format!("{}?user=x&password=y", sim.relay_url()),
        raw_form(&deal()),
    )
    .await;
    assert_eq!(query.error_code(), Some("bad_request"));

    // A quiet period, kept on purpose: nothing may reach the gateway, and only waiting a while
    // can show that.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        sim.received().is_empty(),
        "the gateway saw nothing: {:?}",
        sim.received()
    );
    let text = metrics_text(&gw);
    assert!(
        text.contains("payauth_requests_total{gateway=\"cg\",outcome=\"bad_request\"} 8"),
        "{text}"
    );
    assert!(
        text.contains("payauth_requests_total{gateway=\"cg\",outcome=\"terminal_not_allowed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("payauth_requests_total{gateway=\"cg\",outcome=\"body_too_large\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_apps_own_get_session_id_is_answered_locally() {
    let sim = start(CreditGuardSimConfig::default()).await;
    let mut config = config(&sim);
    config.scope = Scope::Full;
    let gw = gateway_with(config, credentials(), None);
    let answer = post(&gw, &sim, raw_form(&command_xml("getSessionId"))).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.result().as_deref(), Some("000"));
    assert!(
        answer.text().contains(PLACEHOLDER_SESSION_ID),
        "{}",
        answer.text()
    );
    // A quiet period, kept on purpose: nothing may be forwarded, and only waiting a while can
    // show that.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sim.received().is_empty(), "not forwarded");

    // The app then calls with the placeholder and no credentials.
    let xml = deal();
    let answer = post(
        &gw,
        &sim,
        format!("sessionId={PLACEHOLDER_SESSION_ID}&int_in={xml}"),
    )
    .await;
    assert_eq!(answer.result().as_deref(), Some("000"), "{}", answer.text());
    let call = calls(&sim).pop().unwrap();
    let session = call.session_id.unwrap();
    assert_ne!(session, PLACEHOLDER_SESSION_ID);
    assert_eq!(
        call.body,
        Bytes::from(format!("sessionId={session}&int_in={xml}"))
    );
    assert!(
        metrics_text(&gw).contains("payauth_requests_total{gateway=\"cg\",outcome=\"local\"} 1")
    );
}

#[tokio::test]
async fn a_terminal_without_sessions_fails_clearly_and_does_not_loop() {
    let sim = start(CreditGuardSimConfig {
        session_terminals_disabled: vec![TERMINAL.into()],
        ..CreditGuardSimConfig::default()
    })
    .await;
    let gw = gateway(&sim);
    for _ in 0..3 {
        let answer = post(&gw, &sim, raw_form(&deal())).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.error_code(), Some("auth_unavailable"));
        assert!(
            answer.text().contains("455") && answer.text().contains("not enabled"),
            "{}",
            answer.text()
        );
    }
    // A quiet period, kept on purpose: the filler must not ask for sessions again (it ticks
    // several times in 1.5 s), and only waiting a while can show that.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sim.stats().get_session_calls,
        1,
        "no loop: {:?}",
        sim.stats()
    );
    assert!(
        !gw.handle.guard().is_locked(),
        "455 is not a rejected password"
    );
    assert!(calls(&sim).is_empty());
}

#[tokio::test]
async fn a_457_backs_off_then_recovers() {
    let sim = start(CreditGuardSimConfig::default()).await;
    let mut config = config(&sim);
    config.scope = Scope::Full;
    let gw = gateway_with(config, credentials(), None);
    sim.fail_next_get_session("457", 1);
    let answer = post(&gw, &sim, raw_form(&deal())).await;
    assert_eq!(
        answer.error_code(),
        Some("auth_unavailable"),
        "{}",
        answer.text()
    );
    assert!(answer.text().contains("457"), "{}", answer.text());
    assert_eq!(
        answer
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    // During the backoff nothing more is sent, and the refusal names the cause.
    let during = post(&gw, &sim, raw_form(&deal())).await;
    assert_eq!(during.error_code(), Some("auth_unavailable"));
    assert!(
        during.text().contains("457") && during.text().contains("next session request in"),
        "{}",
        during.text()
    );
    assert_eq!(sim.stats().get_session_calls, 1);
    // The backoff (jittered, at most a second) has to pass on the wall clock: wait until the
    // guard says it has, rather than assume it did after a fixed time.
    wait_until("the backoff to end", Duration::from_secs(20), || {
        gw.handle.guard().status().backoff.is_none()
    })
    .await;
    let answer = post(&gw, &sim, raw_form(&deal())).await;
    assert_eq!(answer.result().as_deref(), Some("000"), "{}", answer.text());
    assert!(!gw.handle.guard().is_locked());
    let text = metrics_text(&gw);
    assert!(
        text.contains("payauth_auth_attempts_total{gateway=\"cg\",result=\"error\"} 1"),
        "{text}"
    );
}

/// A client that fails relay calls (not getSessionId) as if the connection broke after sending.
#[derive(Clone)]
struct BreakingClient {
    inner: HttpClient,
    break_calls: Arc<AtomicU64>,
}

impl Service<Request<Full<Bytes>>> for BreakingClient {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Incoming>, BoxError>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let mut inner = self.inner.clone();
        let breaking = Arc::clone(&self.break_calls);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| -> BoxError { Box::new(e) })?
                .to_bytes();
            let is_call = bytes.starts_with(b"sessionId=");
            let request = Request::from_parts(parts, Full::new(bytes));
            if is_call && breaking.load(Ordering::SeqCst) > 0 {
                breaking.fetch_sub(1, Ordering::SeqCst);
                // The call reaches the gateway, then the answer is lost.
                let _ = inner.call(request).await;
                return Err(
                    Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)) as BoxError,
                );
            }
            inner.call(request).await.map_err(Into::into)
        })
    }
}

#[tokio::test]
async fn after_bytes_were_sent_nothing_is_replayed() {
    let sim = start(CreditGuardSimConfig::default()).await;
    let breaking = BreakingClient {
        inner: client(),
        break_calls: Arc::new(AtomicU64::new(1)),
    };
    let gw = gateway_around(breaking, config(&sim), credentials(), None);
    let answer = send_to(
        &gw.service,
        Method::POST,
        sim.relay_url(),
        raw_form(&deal()),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        answer.error_code(),
        Some("outcome_unknown"),
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(sim.stats().calls, 1, "sent once, never replayed");

    // A gateway slower than the timeout: 504, and no replay either.
    let mut config = config(&sim);
    config.gateway.request_timeout = Duration::from_millis(300);
    let gw = gateway_with(config, credentials(), None);
    assert_eq!(
        post(&gw, &sim, raw_form(&deal())).await.result().as_deref(),
        Some("000")
    );
    sim.set_latency(Duration::ZERO, Duration::from_secs(1));
    let answer = post(&gw, &sim, raw_form(&deal())).await;
    assert_eq!(answer.error_code(), Some("upstream_timeout"));
    // A quiet period, kept on purpose: longer than the simulated 1 s latency, so that a replay
    // sent after the timeout would have been judged and counted; only waiting can show that none
    // was sent.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The simulator judges a call after its latency, so the abandoned one may not be counted;
    // what matters is that it was not sent again.
    assert!(sim.stats().calls <= 3, "{:?}", sim.stats());
    let text = metrics_text(&gw);
    assert!(
        text.contains("payauth_replays_total{gateway=\"cg\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("payauth_requests_total{gateway=\"cg\",outcome=\"upstream_timeout\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_costs_one_round_trip() {
    let sim = start(CreditGuardSimConfig {
        get_session_latency: Duration::from_millis(100),
        deal_latency: Duration::from_millis(50),
        ..CreditGuardSimConfig::default()
    })
    .await;
    let gw = gateway(&sim);
    // Warm-up: enough traffic for the pool to learn the rate, then time to fill.
    for _ in 0..4 {
        let round = futures_join_all((0..6).map(|_| post(&gw, &sim, raw_form(&deal())))).await;
        assert!(round.iter().all(|a| a.result().as_deref() == Some("000")));
    }
    wait_until("a warm pool", Duration::from_secs(20), || {
        gw.handle.pool_stats().ready >= 12
    })
    .await;

    let before = gw.handle.pool_stats();
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let answer = post(&gw, &sim, raw_form(&deal())).await;
        times.push(started.elapsed());
        assert_eq!(answer.result().as_deref(), Some("000"));
    }
    times.sort();
    let median = times[times.len() / 2];

    // The floor: the same deal sent straight to the simulator with a session fetched beforehand
    // (one round trip, no proxy), and what an app without payauth pays: getSessionId + deal.
    let direct = client();
    let send_direct = |body: String| {
        let request = Request::post(sim.relay_url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let direct = direct.clone();
        async move {
            direct
                .request(request)
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
        }
    };
    let get_session = "user=merchant-user&password=s3cret-Passw0rd&int_in=<ashrait><request><version>2000</version>\
        <command>getSessionId</command><getSessionId><terminalNumber>0882819014</terminalNumber></getSessionId>\
        </request></ashrait>";
    let (mut floor, mut naive) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let started = Instant::now();
        let answer =
            String::from_utf8_lossy(&send_direct(get_session.to_owned()).await).into_owned();
        let id = answer
            .split("<sessionId>")
            .nth(1)
            .and_then(|r| r.split("</sessionId>").next())
            .unwrap()
            .to_owned();
        let deal_started = Instant::now();
        let answer = send_direct(format!("sessionId={id}&int_in={}", deal())).await;
        floor.push(deal_started.elapsed());
        naive.push(started.elapsed());
        assert!(String::from_utf8_lossy(&answer).contains("<result>000</result>"));
    }
    floor.sort();
    naive.sort();
    let (floor, naive) = (floor[10], naive[10]);
    eprintln!(
        "warm pool: median {median:?} (min {:?}, max {:?}); direct deal {floor:?}: ratio {:.2}; \
         getSessionId + deal without payauth {naive:?}: ratio {:.2}; pool {:?}",
        times[0],
        times[19],
        median.as_secs_f64() / floor.as_secs_f64(),
        median.as_secs_f64() / naive.as_secs_f64(),
        gw.handle.pool_stats()
    );
    // The figures above are printed, not asserted (they belong to benchmarks); what is asserted
    // is the structure: no deal waited for a getSessionId, so each cost one round trip.
    let after = gw.handle.pool_stats();
    assert_eq!(
        after.on_demand, before.on_demand,
        "every deal found a session ready: {before:?} -> {after:?}"
    );
    assert!(after.used >= before.used + 20, "{before:?} -> {after:?}");
}

/// A writer into a shared buffer, for capturing every log line.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_secret_or_card_data_reaches_a_log_even_at_trace() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    // A current-thread runtime: every task runs on this thread and sees this subscriber.
    let _default = tracing::subscriber::set_default(subscriber);

    let sim = start(CreditGuardSimConfig::default()).await;
    let gw = gateway(&sim);
    let xml = deal();
    assert_eq!(
        post(&gw, &sim, raw_form(&xml)).await.result().as_deref(),
        Some("000")
    );
    assert_eq!(
        post(&gw, &sim, encoded_form(&xml))
            .await
            .result()
            .as_deref(),
        Some("000")
    );
    sim.expire_sessions();
    assert_eq!(
        post(&gw, &sim, raw_form(&xml)).await.result().as_deref(),
        Some("000")
    );
    post(
        &gw,
        &sim,
        raw_form(&deal_xml("0999999999", "AutoComm", "Debit")),
    )
    .await;
    post(&gw, &sim, raw_form(&xml.replace("</doDeal>", ""))).await;
    post(&gw, &sim, raw_form(&command_xml("getSessionId"))).await;
    // A rejected password too.
    let wrong = gateway_with(
        config(&sim),
        CreditGuardCredentials::new(USER, "wr0ng-Passw0rd-QQ"),
        None,
    );
    post(&wrong, &sim, raw_form(&xml)).await;
    // Let the background work (pool top-ups, the rejected fetch and those refused after it)
    // settle, so that its log lines are in the capture too.
    let logged = || String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    wait_until(
        "the background fetches to settle",
        Duration::from_secs(20),
        || {
            let log = logged();
            log.contains("requesting a session")
                && log.contains("456")
                && gw.handle.pool_stats().fetching == 0
                && gw.handle.guard().status().in_flight == 0
                && wrong.handle.pool_stats().fetching == 0
                && wrong.handle.guard().status().in_flight == 0
        },
    )
    .await;

    let log = logged();
    assert!(
        log.contains("requesting a session"),
        "the capture works: {log}"
    );
    assert!(log.contains("456"), "the renewal is logged: {log}");
    let mut secrets: Vec<String> = vec![
        CARD.into(),
        PASSWORD.into(),
        APP_PASSWORD.into(),
        "wr0ng-Passw0rd-QQ".into(),
        format!("<cvv>{CVV}"),
        "cardExpiration>1230".into(),
    ];
    secrets.extend(issued(&sim));
    assert!(secrets.len() > 6);
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{secret} leaked into the log:\n{log}"
        );
    }
    // Debug output of everything a user might print.
    let shown = format!(
        "{:?} {:?} {:?} {:?} {:?}",
        gw.service,
        gw.handle,
        credentials(),
        sim.received(),
        gw.handle.pool_stats()
    );
    for secret in &secrets {
        assert!(
            !shown.contains(secret.as_str()),
            "{secret} leaked into Debug output"
        );
    }
}

#[tokio::test]
async fn a_call_waits_for_a_session_at_most_session_wait_then_is_shed() {
    let sim = start(CreditGuardSimConfig::default()).await;
    // Sessions come far slower than the call may wait.
    sim.set_latency(Duration::from_secs(3), Duration::ZERO);
    let mut config = config(&sim);
    config.session_wait = Duration::from_millis(300);
    let gw = gateway_with(config, credentials(), None);
    let answer = tokio::time::timeout(Duration::from_secs(10), post(&gw, &sim, raw_form(&deal())))
        .await
        .expect("the wait is bounded");
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.error_code(), Some("overloaded"), "{}", answer.text());
    assert!(
        answer.text().contains("session_fetch_concurrency"),
        "{}",
        answer.text()
    );
    assert!(calls(&sim).is_empty(), "nothing was forwarded");
}

/// Stopping while the filler's `getSessionId`s wait for their turn (the guard lets one through
/// at a time until the credentials are proven) sends none of them and counts none as a failure:
/// no backoff, no `result="error"` attempt, nothing left reserved.
#[tokio::test]
async fn stopping_withdraws_the_fetches_still_waiting_without_a_failure() {
    let sim = start(CreditGuardSimConfig {
        get_session_latency: Duration::from_millis(400),
        ..CreditGuardSimConfig::default()
    })
    .await;
    let gw = gateway(&sim);
    gw.service.warm_up();
    wait_until("a getSessionId in flight", Duration::from_secs(5), || {
        gw.handle.guard().status().in_flight > 0
    })
    .await;
    let waiting = gw.handle.pool_stats().fetching;
    assert!(
        waiting >= 2,
        "{waiting} fetches started: one sent, the rest waiting"
    );
    gw.handle.stop().await;
    let status = gw.handle.guard().status();
    assert_eq!(status.in_flight, 0);
    assert_eq!(status.record.unconfirmed, 0, "nothing left reserved");
    assert_eq!(
        status.backoff, None,
        "a withdrawn fetch is no transport failure"
    );
    let text = metrics_text(&gw);
    let errors = text
        .lines()
        .filter(|l| l.starts_with("payauth_auth_attempts_total") && l.contains("result=\"error\""))
        .filter(|l| !l.ends_with(" 0"))
        .count();
    assert_eq!(errors, 0, "no attempt counted as an error:\n{text}");
    let sent = calls(&sim)
        .iter()
        .filter(|c| c.kind == ReceivedKind::GetSessionId)
        .count();
    assert!(
        sent < waiting,
        "{sent} of {waiting} fetches reached the gateway"
    );
}
