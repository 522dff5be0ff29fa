//! Black-box tests of the Number sidecar: simulator and payauth on 127.0.0.1:0, HTTP in between.

// `Mutex::lock` is disallowed in favour of payauth's crate-private helper; a test may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use payauth_sim::number::NumberSimConfig;

#[tokio::test]
async fn calls_carry_the_key_and_one_authentication_serves_them_all() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(&sim.url(), Options::default()).await;
    for _ in 0..5 {
        let reply = sale(&h.client, h.addr).await;
        assert!(
            approved(&reply, "CreditCardSale_Manual"),
            "{}",
            reply.text()
        );
    }
    let stats = sim.stats();
    assert_eq!((stats.auth_attempts, stats.calls_ok), (1, 5));
    // The app's own SessKey header was replaced by the real key.
    for call in sim.calls_seen() {
        let key = call.sess_key_header.expect("SessKey header");
        assert_ne!(key, "app-supplied-key");
        assert_eq!(key.len(), 42, "a real key, not the placeholder");
    }
    assert_eq!(
        h.metric("payauth_requests_total{gateway=\"number\",outcome=\"forwarded\"}")
            .await,
        5.0
    );
    assert_eq!(
        h.metric("payauth_auth_attempts_total{gateway=\"number\",result=\"success\"}")
            .await,
        1.0
    );
    assert_eq!(h.admin_get("/ready").await.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn the_apps_own_authenticate_is_answered_locally() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(&sim.url(), Options::default()).await;
    let reply = post(
        &h.client,
        h.addr,
        &format!("{REST}/Authenticate"),
        r#"{"AcctCode": "EP9116875", "Token": "stale"}"#,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let result = &reply.json()["AuthenticateResult"];
    assert_eq!(result["AuthSuccess"], true);
    assert_eq!(result["FunctionOk"], true);
    assert_eq!(result["SessKey"], payauth::number::wire::PLACEHOLDER_KEY);
    assert_eq!(sim.stats().auth_attempts, 0, "never forwarded");
    // A later call with the placeholder works like any other.
    let reply = sale(&h.client, h.addr).await;
    assert!(approved(&reply, "CreditCardSale_Manual"));
    assert_eq!(
        h.metric("payauth_requests_total{gateway=\"number\",outcome=\"local\"}")
            .await,
        1.0
    );
    h.stop().await;
}

#[tokio::test]
async fn an_expired_key_is_renewed_and_the_call_replayed_once() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(&sim.url(), Options::default()).await;
    assert!(approved(
        &sale(&h.client, h.addr).await,
        "CreditCardSale_Manual"
    ));
    sim.expire_keys();
    let reply = sale(&h.client, h.addr).await;
    assert!(
        approved(&reply, "CreditCardSale_Manual"),
        "{}",
        reply.text()
    );
    let stats = sim.stats();
    assert_eq!(stats.auth_attempts, 2);
    assert_eq!(stats.calls_5030, 1);
    assert_eq!(stats.calls_ok, 2);
    assert_eq!(
        h.metric("payauth_reauth_total{gateway=\"number\",reason=\"5030\"}")
            .await,
        1.0
    );
    assert_eq!(
        h.metric("payauth_replays_total{gateway=\"number\"}").await,
        1.0
    );

    sim.change_ip();
    let reply = sale(&h.client, h.addr).await;
    assert!(approved(&reply, "CreditCardSale_Manual"));
    assert_eq!(sim.stats().calls_5050, 1);
    assert_eq!(sim.stats().auth_attempts, 3);
    assert_eq!(
        h.metric("payauth_reauth_total{gateway=\"number\",reason=\"5050\"}")
            .await,
        1.0
    );
    h.stop().await;
}

#[tokio::test]
async fn a_key_refused_again_after_renewal_is_not_looped() {
    // A key lifetime of zero: every key is expired when used, so the replay is refused too.
    let sim = number_sim(NumberSimConfig {
        key_lifetime: Duration::ZERO,
        ..NumberSimConfig::default()
    })
    .await;
    let h = Harness::start(&sim.url(), Options::default()).await;
    let reply = sale(&h.client, h.addr).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the gateway's own answer is passed on"
    );
    assert_eq!(reply.json()["CreditCardSale_ManualResult"]["ErrCode"], 5030);
    let stats = sim.stats();
    assert_eq!(stats.calls, 2, "one call and exactly one replay");
    assert_eq!(stats.auth_attempts, 2, "the first key and one renewal");
    h.stop().await;
}

#[tokio::test]
async fn sixty_four_concurrent_calls_across_one_expiry_cost_one_authentication() {
    let sim = number_sim(NumberSimConfig {
        hmac_secret: Some(HMAC_SECRET.into()),
        ..NumberSimConfig::default()
    })
    .await;
    let h = Harness::start(
        &sim.url(),
        Options {
            signing: true,
            ..Options::default()
        },
    )
    .await;
    assert!(approved(
        &sale(&h.client, h.addr).await,
        "CreditCardSale_Manual"
    ));
    sim.expire_keys();
    let before = sim.stats().auth_attempts;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let client = h.client.clone();
        let addr = h.addr;
        tasks.spawn(async move { approved(&sale(&client, addr).await, "CreditCardSale_Manual") });
    }
    let mut ok = 0;
    while let Some(result) = tasks.join_next().await {
        ok += usize::from(result.expect("task"));
    }
    let stats = sim.stats();
    assert_eq!(ok, 64, "every call succeeded");
    assert_eq!(
        stats.auth_attempts - before,
        1,
        "exactly one extra authentication"
    );
    assert_eq!(stats.bad_signatures, 0);
    assert_eq!(
        h.metric("payauth_reauth_total{gateway=\"number\",reason=\"5030\"}")
            .await,
        1.0
    );
    h.stop().await;
}

/// The open-file limit this process may use (soft), from /proc/self/limits.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_calls_on_two_workers_across_one_expiry_cost_one_authentication() {
    const CALLS: usize = 1000;
    // Each call holds a connection from the test's client, payauth's listener, payauth's pool
    // and the simulator: four descriptors in this one process.
    if let Some(limit) = open_file_limit() {
        assert!(
            limit >= 4 * CALLS as u64 + 256,
            "this test needs {} open files and the limit is {limit}: raise it (`ulimit -n`),              as scripts/test does",
            4 * CALLS + 256
        );
    }
    let sim = number_sim(NumberSimConfig {
        hmac_secret: Some(HMAC_SECRET.into()),
        ..NumberSimConfig::default()
    })
    .await;
    let h = Harness::start(
        &sim.url(),
        Options {
            signing: true,
            workers: 2,
            max_concurrency: 2 * CALLS,
            request_timeout_secs: 30.0,
            ..Options::default()
        },
    )
    .await;
    assert!(approved(
        &sale(&h.client, h.addr).await,
        "CreditCardSale_Manual"
    ));
    sim.expire_keys();
    let before = sim.stats().auth_attempts;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CALLS));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CALLS {
        let (client, addr, barrier) = (h.client.clone(), h.addr, barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let reply = sale(&client, addr).await;
            (approved(&reply, "CreditCardSale_Manual"), reply.status)
        });
    }
    let mut ok = 0;
    let mut failed = std::collections::BTreeMap::new();
    while let Some(result) = tasks.join_next().await {
        match result.expect("task") {
            (true, _) => ok += 1,
            (false, status) => *failed.entry(status.as_u16()).or_insert(0) += 1,
        }
    }
    let stats = sim.stats();
    assert_eq!(
        ok, CALLS,
        "every call succeeded; the others ended with {failed:?}"
    );
    assert_eq!(
        stats.auth_attempts - before,
        1,
        "exactly one extra authentication"
    );
    assert_eq!(stats.bad_signatures, 0);
    assert_eq!(
        h.metric("payauth_reauth_total{gateway=\"number\",reason=\"5030\"}")
            .await,
        1.0
    );
    let served = h
        .metric("payauth_requests_total{gateway=\"number\",outcome=\"forwarded\"}")
        .await;
    assert_eq!(served, (CALLS + 1) as f64);
    h.stop().await;
}

#[tokio::test]
async fn a_rejected_token_locks_once_across_calls_and_restarts() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let mut h = Harness::start(
        &sim.url(),
        Options {
            token: "WRONG-TOKEN".into(),
            ..Options::default()
        },
    )
    .await;
    let reply = sale(&h.client, h.addr).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code().as_deref(), Some("auth_locked"));
    assert_eq!(reply.json()["error"]["gateway"], "number");
    for _ in 0..10 {
        let reply = sale(&h.client, h.addr).await;
        assert_eq!(reply.error_code().as_deref(), Some("auth_locked"));
    }
    assert_eq!(
        sim.stats().auth_attempts,
        1,
        "one rejected authentication, never retried"
    );
    assert_eq!(sim.stats().calls, 0, "nothing forwarded without a key");
    // payauth can still serve: readiness stays (see the opt-in test below); /status says why.
    assert_eq!(h.admin_get("/ready").await.status, StatusCode::OK);
    let status = h.admin_get("/status").await.json();
    assert_eq!(status["gateways"][0]["locked"], true, "{status}");
    assert_eq!(
        status["gateways"][0]["metrics"]["last_auth_result"],
        "rejected"
    );
    assert_eq!(
        h.metric("payauth_auth_locked{gateway=\"number\"}").await,
        1.0
    );

    h.restart().await;
    let reply = sale(&h.client, h.addr).await;
    assert_eq!(reply.error_code().as_deref(), Some("auth_locked"));
    assert_eq!(
        sim.stats().auth_attempts,
        1,
        "a restart does not spend the budget again"
    );

    // A new token file unlocks, without a restart.
    h.write_token(TOKEN);
    let mut unlocked = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if approved(&sale(&h.client, h.addr).await, "CreditCardSale_Manual") {
            unlocked = true;
            break;
        }
    }
    assert!(unlocked, "the changed token file unlocked the gateway");
    assert_eq!(sim.stats().auth_attempts, 2);
    assert_eq!(h.admin_get("/ready").await.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test]
async fn a_locked_gateway_leaves_ready_alone_unless_opted_in_and_status_holds_no_secret() {
    const WRONG: &str = "0000REVOKED0000TOKEN0000000000AB";
    let sim = number_sim(NumberSimConfig {
        hmac_secret: Some(HMAC_SECRET.into()),
        ..NumberSimConfig::default()
    })
    .await;
    for opted_in in [false, true] {
        let h = Harness::start(
            &sim.url(),
            Options {
                token: WRONG.into(),
                signing: true,
                ready_requires_unlocked: opted_in,
                ..Options::default()
            },
        )
        .await;
        assert_eq!(h.admin_get("/ready").await.status, StatusCode::OK);
        let reply = sale(&h.client, h.addr).await;
        assert_eq!(reply.error_code().as_deref(), Some("auth_locked"));
        let ready = h.admin_get("/ready").await;
        let expected = if opted_in {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        assert_eq!(
            ready.status,
            expected,
            "opted in: {opted_in}: {}",
            ready.text()
        );
        let status = h.admin_get("/status").await;
        assert_eq!(status.status, StatusCode::OK);
        let json = status.json();
        let gateway = &json["gateways"][0];
        assert_eq!(gateway["name"], "number");
        assert_eq!(gateway["kind"], "number");
        assert_eq!(gateway["locked"], true, "{json}");
        assert!(gateway["lock_reason"].is_string(), "{json}");
        assert_eq!(gateway["rejected_in_a_row"], 1);
        assert_eq!(gateway["metrics"]["auth_attempts"]["rejected"], 1);
        assert_eq!(json["ready_requires_unlocked"], opted_in);
        let text = status.text();
        for secret in [WRONG, TOKEN, HMAC_SECRET, ADMIN_TOKEN] {
            assert!(!text.contains(secret), "/status holds a secret: {text}");
        }
        h.stop().await;
    }
    // And with good credentials, the key it got is not in /status either.
    let h = Harness::start(
        &sim.url(),
        Options {
            signing: true,
            ..Options::default()
        },
    )
    .await;
    assert!(approved(
        &sale(&h.client, h.addr).await,
        "CreditCardSale_Manual"
    ));
    let text = h.admin_get("/status").await.text();
    let keys: Vec<String> = sim
        .calls_seen()
        .into_iter()
        .filter_map(|c| c.sess_key_header)
        .collect();
    assert!(!keys.is_empty());
    for key in &keys {
        let bare = key.split('_').next().unwrap_or(key);
        assert!(
            !text.contains(bare),
            "/status holds the session key: {text}"
        );
    }
    for secret in [TOKEN, HMAC_SECRET, ADMIN_TOKEN] {
        assert!(!text.contains(secret), "/status holds a secret: {text}");
    }
    assert!(text.contains("\"last_auth_result\":\"success\""), "{text}");
    h.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn metrics_describe_the_build_and_the_process() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(&sim.url(), Options::default()).await;
    let build = format!(
        "payauth_build_info{{commit=\"{}\",version=\"{}\"}}",
        payauth::COMMIT,
        payauth::VERSION
    );
    assert_eq!(h.metric(&build).await, 1.0);
    assert!(h.metric("process_resident_memory_bytes").await > 1e6);
    assert!(h.metric("process_open_fds").await >= 3.0);
    assert!(h.metric("process_start_time_seconds").await > 1.7e9);
    h.stop().await;
    sim.shutdown().await;
}

#[tokio::test]
async fn admin_unlock_needs_the_bearer_token() {
    let sim = number_sim(NumberSimConfig {
        token: "ROTATED-AT-THE-VENDOR".into(),
        ..NumberSimConfig::default()
    })
    .await;
    let h = Harness::start(&sim.url(), Options::default()).await;
    assert_eq!(
        sale(&h.client, h.addr).await.error_code().as_deref(),
        Some("auth_locked")
    );
    // The vendor's support fixes the account: the configured token works again.
    sim.set_token(TOKEN);
    assert_eq!(
        h.admin_post("/admin/number/unlock", None, "").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.admin_post("/admin/number/unlock", Some("wrong"), "")
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        sale(&h.client, h.addr).await.error_code().as_deref(),
        Some("auth_locked"),
        "still locked"
    );
    assert_eq!(
        h.admin_post("/admin/nope/unlock", Some(ADMIN_TOKEN), "")
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.admin_post("/admin/number/unlock", Some(ADMIN_TOKEN), "")
            .await
            .status,
        StatusCode::OK
    );
    assert!(approved(
        &sale(&h.client, h.addr).await,
        "CreditCardSale_Manual"
    ));
    assert_eq!(sim.stats().auth_attempts, 2);
    h.stop().await;
}

#[tokio::test]
async fn a_dropped_connection_after_sending_is_outcome_unknown_and_never_replayed() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(&sim.url(), Options::default()).await;
    assert!(approved(
        &sale(&h.client, h.addr).await,
        "CreditCardSale_Manual"
    ));
    sim.drop_next_calls(1);
    let reply = sale(&h.client, h.addr).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code().as_deref(), Some("outcome_unknown"));
    assert!(reply.json()["error"]["message"]
        .as_str()
        .expect("message")
        .contains("not replayed"));
    let stats = sim.stats();
    assert_eq!(stats.calls, 2, "the dropped call was seen exactly once");
    assert_eq!(stats.dropped, 1);
    h.stop().await;
}

#[tokio::test]
async fn a_slow_gateway_is_a_timeout_and_never_replayed() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(
        &sim.url(),
        Options {
            request_timeout_secs: 0.3,
            ..Options::default()
        },
    )
    .await;
    assert!(approved(
        &sale(&h.client, h.addr).await,
        "CreditCardSale_Manual"
    ));
    sim.set_latency(Duration::from_secs(2));
    let reply = sale(&h.client, h.addr).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.error_code().as_deref(), Some("upstream_timeout"));
    sim.set_latency(Duration::ZERO);
    // The simulator counts a call when it arrives; a replay would have been sent before the
    // 504 came back.
    assert_eq!(
        sim.stats().calls,
        2,
        "the timed-out call reached the gateway once and was not replayed"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_unreachable_gateway_is_reported_and_backs_off() {
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let h = Harness::start(&url, Options::default()).await;
    let reply = sale(&h.client, h.addr).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.error_code().as_deref(), Some("auth_unavailable"));
    // During the backoff no attempt is made; the guard is not locked by transport errors.
    let reply = sale(&h.client, h.addr).await;
    assert_eq!(reply.error_code().as_deref(), Some("auth_unavailable"));
    assert!(reply.json()["error"]["message"]
        .as_str()
        .expect("message")
        .contains("next attempt"));
    assert_eq!(
        h.metric("payauth_auth_locked{gateway=\"number\"}").await,
        0.0
    );
    assert_eq!(
        h.metric("payauth_auth_attempts_total{gateway=\"number\",result=\"error\"}")
            .await,
        1.0
    );
    h.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_and_are_not_forwarded() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(
        &sim.url(),
        Options {
            max_request_bytes: 1024,
            ..Options::default()
        },
    )
    .await;
    let big = format!(r#"{{"Notes": "{}"}}"#, "x".repeat(4096));
    let reply = post(
        &h.client,
        h.addr,
        &format!("{REST}/CreditCardSale_Manual"),
        &big,
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code().as_deref(), Some("body_too_large"));
    assert_eq!(sim.stats().calls, 0);
    assert_eq!(
        sim.stats().auth_attempts,
        0,
        "refused before any credential was needed"
    );
    h.stop().await;
}

fn soap_call(operation: &str, inner: &str) -> String {
    format!(
        "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>\
         <{operation} xmlns=\"http://tempuri.org/\"><sessKey>app-key</sessKey>{inner}</{operation}>\
         </s:Body></s:Envelope>"
    )
}

async fn soap(h: &Harness, operation: &str, body: String) -> Reply {
    let request = Request::post(format!("http://{}{SOAP_PATH}", h.addr))
        .header("content-type", "text/xml; charset=utf-8")
        .header(
            "SOAPAction",
            format!("\"http://tempuri.org/ICardProcess/{operation}\""),
        )
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    send(&h.client, request).await
}

#[tokio::test]
async fn soap_calls_get_the_key_in_their_first_argument_and_renew() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(
        &sim.url(),
        Options {
            protocol: "soap",
            ..Options::default()
        },
    )
    .await;
    // The app's own Authenticate is answered locally.
    let reply = soap(&h, "Authenticate", "<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><Authenticate xmlns=\"http://tempuri.org/\"><acctCode>EP9116875</acctCode><token>stale</token></Authenticate></s:Body></s:Envelope>".into()).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.text().contains("<AuthSuccess>true</AuthSuccess>"));
    assert_eq!(sim.stats().auth_attempts, 0);

    let reply = soap(
        &h,
        "CreditCardSale_Manual",
        soap_call("CreditCardSale_Manual", "<amount>1.00</amount>"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(
        reply.text().contains("<FunctionOk>true</FunctionOk>"),
        "{}",
        reply.text()
    );
    let seen = sim.calls_seen();
    let body = String::from_utf8_lossy(&seen[0].body).into_owned();
    assert!(!body.contains("app-key"));
    assert!(
        body.contains("<amount>1.00</amount>"),
        "other arguments kept"
    );

    sim.expire_keys();
    let reply = soap(
        &h,
        "CreditCardSale_Manual",
        soap_call("CreditCardSale_Manual", "<amount>2.00</amount>"),
    )
    .await;
    assert!(
        reply.text().contains("<FunctionOk>true</FunctionOk>"),
        "{}",
        reply.text()
    );
    assert_eq!(sim.stats().auth_attempts, 2);
    assert_eq!(sim.stats().calls_5030, 1);

    let reply = soap(&h, "CreditCardSale_Manual", "<not-xml".into()).await;
    assert_eq!(reply.error_code().as_deref(), Some("bad_request"));
    assert_eq!(sim.stats().calls, 3, "malformed SOAP is not forwarded");
    h.stop().await;
}

#[tokio::test]
async fn overload_is_refused_with_503_and_nothing_lost_or_duplicated() {
    let sim = number_sim(NumberSimConfig {
        latency: Duration::from_millis(300),
        ..NumberSimConfig::default()
    })
    .await;
    let h = Harness::start(
        &sim.url(),
        Options {
            max_concurrency: 4,
            ..Options::default()
        },
    )
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let client = h.client.clone();
        let addr = h.addr;
        tasks.spawn(async move { sale(&client, addr).await });
    }
    let (mut ok, mut overloaded) = (0u64, 0u64);
    while let Some(reply) = tasks.join_next().await {
        let reply = reply.expect("task");
        if approved(&reply, "CreditCardSale_Manual") {
            ok += 1;
        } else {
            assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(reply.error_code().as_deref(), Some("overloaded"));
            overloaded += 1;
        }
    }
    assert_eq!(ok + overloaded, 12);
    assert!(
        overloaded >= 1 && ok >= 1,
        "ok {ok}, overloaded {overloaded}"
    );
    assert_eq!(
        sim.stats().calls_ok,
        ok,
        "every approved call reached the gateway exactly once"
    );
    h.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_calls_finish_and_refuses_new_ones() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let mut h = Harness::start(&sim.url(), Options::default()).await;
    assert!(approved(
        &sale(&h.client, h.addr).await,
        "CreditCardSale_Manual"
    ));
    sim.set_latency(Duration::from_millis(700));
    let client = common::client();
    let addr = h.addr;
    let in_flight = tokio::spawn(async move { sale(&client, addr).await });
    // The simulator counts the call as it arrives (then waits out its latency).
    assert!(
        eventually(Duration::from_secs(5), || sim.stats().calls == 2).await,
        "the call reached the gateway"
    );
    let sidecar = h.sidecar.take().expect("running");
    sidecar.begin_shutdown();
    assert_eq!(
        h.admin_get("/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "draining"
    );
    let mut refused = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !refused && tokio::time::Instant::now() < deadline {
        // A fresh client each time: a new connection, which a closed listener refuses.
        refused = common::client()
            .request(
                Request::post(format!("http://{addr}{REST}/X"))
                    .body(Full::new(Bytes::new()))
                    .expect("request"),
            )
            .await
            .is_err();
        tokio::task::yield_now().await;
    }
    assert!(refused, "new connections are refused while draining");
    let reply = in_flight.await.expect("task");
    assert!(
        approved(&reply, "CreditCardSale_Manual"),
        "the in-flight call completed"
    );
    sidecar.shutdown().await;
}

#[tokio::test]
async fn soap_calls_carry_the_signed_key_in_pci_mode() {
    let sim = number_sim(NumberSimConfig {
        hmac_secret: Some(HMAC_SECRET.into()),
        ..NumberSimConfig::default()
    })
    .await;
    let h = Harness::start(
        &sim.url(),
        Options {
            protocol: "soap",
            signing: true,
            ..Options::default()
        },
    )
    .await;
    for amount in ["1.00", "2.00"] {
        let reply = soap(
            &h,
            "CreditCardSale_Manual",
            soap_call(
                "CreditCardSale_Manual",
                &format!("<amount>{amount}</amount>"),
            ),
        )
        .await;
        assert!(
            reply.text().contains("<FunctionOk>true</FunctionOk>"),
            "{}",
            reply.text()
        );
    }
    let stats = sim.stats();
    assert_eq!(
        (stats.calls_ok, stats.bad_signatures, stats.auth_attempts),
        (2, 0, 1)
    );
    // The element holds {SessKey}_{Epoch}_{UserID}_{HASH}.
    let sent = sim.calls_seen()[0]
        .sess_key_header
        .clone()
        .expect("session element");
    let parts: Vec<&str> = sent.split('_').collect();
    assert_eq!(parts.len(), 4, "signed form");
    assert_eq!(parts[2], "2547");
    assert_eq!(parts[3].len(), 64);
    h.stop().await;
}

#[tokio::test]
async fn request_ids_are_kept_when_plain_and_replaced_otherwise() {
    let sim = number_sim(NumberSimConfig::default()).await;
    let h = Harness::start(&sim.url(), Options::default()).await;
    let sale_with = |id: Option<&'static [u8]>| {
        let mut request = Request::post(format!("http://{}{REST}/CreditCardSale_Manual", h.addr))
            .header("content-type", "application/json");
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request
            .body(Full::new(Bytes::from(format!(
                r#"{{"Amount": 1.00, "CardNum": "{CARD}", "CVV": "123"}}"#
            ))))
            .expect("request")
    };
    let id_of = |reply: &Reply| {
        reply
            .headers
            .get("x-request-id")
            .map(|v| v.to_str().expect("ascii").to_owned())
    };

    let kept = send(&h.client, sale_with(Some(b"order-42_retry-1"))).await;
    assert!(approved(&kept, "CreditCardSale_Manual"));
    assert_eq!(id_of(&kept).as_deref(), Some("order-42_retry-1"));

    let mut generated = Vec::new();
    for hostile in [
        &b"id with spaces"[..],
        b"x\"; drop table",
        &[b'a'; 65][..],
        b"",
        b"caf\xc3\xa9",
    ] {
        let reply = send(&h.client, sale_with(Some(hostile))).await;
        assert!(approved(&reply, "CreditCardSale_Manual"));
        let id = id_of(&reply).expect("an id is always sent back");
        assert!(id.starts_with("pa-"), "{id} replaces {hostile:?}");
        generated.push(id);
    }
    let none = send(&h.client, sale_with(None)).await;
    generated.push(id_of(&none).expect("an id"));
    generated.sort();
    generated.dedup();
    assert_eq!(generated.len(), 6, "each generated id is new");
    h.stop().await;
    sim.shutdown().await;
}

/// A credential state that stands for a store shared with a peer replica: asked for an attempt
/// while the caller holds generation `g`, it hands over the key the peer published instead.
#[derive(Debug)]
struct PeerPublished {
    inner: payauth::gateway::SharedState,
    peer_key: std::sync::Mutex<String>,
    attempts: std::sync::atomic::AtomicU32,
}

impl payauth::gateway::CredentialState for PeerPublished {
    fn gateway(&self) -> &str {
        self.inner.gateway()
    }
    fn begin(
        &self,
        seen: Option<u64>,
    ) -> payauth::gateway::state::StateFuture<
        '_,
        Result<payauth::gateway::state::Begun, payauth::guard::Refusal>,
    > {
        use payauth::gateway::state::{Begun, Published};
        let key = self.peer_key.lock().expect("peer key").clone();
        if let (Some(generation), false) = (seen, key.is_empty()) {
            // The peer sealed its key under the token every replica holds.
            let seal = payauth::number::KeySeal::new(&payauth::Secret::new(TOKEN.into()), "number")
                .expect("seal");
            let sealed = seal.seal(&payauth::Secret::new(key)).expect("sealed");
            return Box::pin(async move {
                Ok(Begun::Adopt(Published {
                    generation: generation + 1,
                    sealed,
                }))
            });
        }
        self.attempts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.begin(seen)
    }
    fn publish(
        &self,
        sealed: Vec<u8>,
    ) -> payauth::gateway::state::StateFuture<'_, std::io::Result<u64>> {
        self.inner.publish(sealed)
    }
    fn change_credentials(&self, fingerprint: payauth::guard::Fingerprint) {
        self.inner.change_credentials(fingerprint);
    }
    fn unlock(&self) -> payauth::gateway::state::StateFuture<'_, std::io::Result<()>> {
        self.inner.unlock()
    }
    fn clear_backoff(&self) {
        self.inner.clear_backoff();
    }
    fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }
    fn status(&self) -> payauth::guard::GuardStatus {
        self.inner.status()
    }
    fn wait_idle(&self, limit: Duration) -> payauth::gateway::state::StateFuture<'_, ()> {
        self.inner.wait_idle(limit)
    }
}

#[tokio::test]
async fn a_key_published_by_a_peer_is_adopted_without_authenticating() {
    use payauth::number::{NumberAuthLayer, NumberConfig, NumberCredentials};
    use tower::{Layer, ServiceExt};

    let sim = number_sim(NumberSimConfig::default()).await;
    let credentials = NumberCredentials::new("EP9116875", TOKEN);
    let inner: payauth::gateway::SharedState = payauth::guard::AuthGuard::open(
        "number",
        payauth::guard::GuardLimits::serial(1),
        credentials.fingerprint(),
        std::sync::Arc::new(payauth::guard::MemoryGuardStore::default()),
        payauth::metrics::GatewayMetrics::unregistered("number"),
    )
    .expect("guard");
    let client = common::client();
    let state = std::sync::Arc::new(PeerPublished {
        inner,
        peer_key: std::sync::Mutex::new(String::new()),
        attempts: std::sync::atomic::AtomicU32::new(0),
    });
    let config = NumberConfig::rest("number", sim.url().parse().expect("uri"));
    let layer = NumberAuthLayer::builder(config, credentials)
        .credential_state(state.clone())
        .build()
        .expect("layer");
    let number = layer.layer(client.clone());
    let sale = || {
        Request::post(format!("{}{REST}/CreditCardSale_Manual", sim.url()))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"Amount": 1.00, "CardNum": "{CARD}", "CVV": "123"}}"#
            ))))
            .expect("request")
    };
    let first = number.clone().oneshot(sale()).await.expect("answer");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(state.attempts.load(std::sync::atomic::Ordering::SeqCst), 1);
    let authentications = sim.stats().auth_attempts;

    // The key the layer holds expires; a peer replica authenticates and publishes its key.
    sim.expire_keys();
    let peer = post(
        &client,
        sim.addr(),
        &format!("{REST}/Authenticate"),
        &format!(r#"{{"AcctCode": "EP9116875", "Token": "{TOKEN}"}}"#),
    )
    .await;
    *state.peer_key.lock().expect("peer key") = peer.json()["AuthenticateResult"]["SessKey"]
        .as_str()
        .expect("a key")
        .to_owned();
    let authentications = authentications + 1;
    let second = number.clone().oneshot(sale()).await.expect("answer");
    assert_eq!(second.status(), StatusCode::OK);
    let body = http_body_util::BodyExt::collect(second.into_body())
        .await
        .expect("body")
        .to_bytes();
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        answer["CreditCardSale_ManualResult"]["FunctionOk"], true,
        "the replay with the adopted key went through: {answer}"
    );
    assert_eq!(
        state.attempts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no new attempt was reserved"
    );
    assert_eq!(
        sim.stats().auth_attempts,
        authentications,
        "the renewal adopted the peer's key instead of authenticating"
    );
    sim.shutdown().await;
}

/// The layers compose like any tower middleware (`FrontLayer` is a `tower::Layer` too), and each
/// gives back what it wraps, as tower-http's middlewares do.
#[tokio::test]
async fn the_layers_compose_with_tower_and_give_back_what_they_wrap() {
    use payauth::number::{NumberAuthLayer, NumberConfig, NumberCredentials};
    use payauth::proxy::{FrontLayer, FrontLimits};
    use tower::{ServiceBuilder, ServiceExt};

    let sim = number_sim(NumberSimConfig::default()).await;
    let number = NumberAuthLayer::new(
        NumberConfig::rest("number", sim.url().parse().expect("uri")),
        NumberCredentials::new("EP9116875", TOKEN),
    )
    .expect("layer");
    let front = FrontLayer::new(
        "number",
        sim.url().parse().expect("uri"),
        FrontLimits {
            max_concurrency: 8,
            max_request_bytes: 1 << 16,
            body_timeout: Duration::from_secs(10),
            soap_errors: false,
        },
        payauth::metrics::GatewayMetrics::unregistered("number"),
    );
    let mut stack = ServiceBuilder::new()
        .layer(front)
        .layer(number)
        .service(common::client());
    let _client: &HttpClient = stack.get_ref().get_ref();
    let _client: &mut HttpClient = stack.get_mut().get_mut();
    // The app's own path, as it sends it to payauth: the front points it at the upstream.
    let request = Request::post(format!("{REST}/CreditCardSale_Manual"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(format!(
            r#"{{"Amount": 1.00, "CardNum": "{CARD}", "CVV": "123"}}"#
        ))))
        .expect("request");
    let answer = stack.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = answer.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .expect("body")
        .to_bytes();
    let reply = Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    };
    assert!(
        approved(&reply, "CreditCardSale_Manual"),
        "{}",
        reply.text()
    );
    assert_eq!(sim.stats().auth_attempts, 1);
    let _client: HttpClient = stack.into_inner().into_inner();
    sim.shutdown().await;
}
