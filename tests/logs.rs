//! A whole Number run at TRACE level: no token, HMAC secret, session key or card number may
//! appear anywhere in the log output. Its own test binary, because it installs a global subscriber.

// `Mutex::lock` is disallowed in favour of payauth's crate-private helper; a test may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use payauth_sim::number::NumberSimConfig;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn trace_logs_of_a_whole_run_hold_no_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("subscriber");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let keys = runtime.block_on(async {
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
        post(
            &h.client,
            h.addr,
            &format!("{REST}/Authenticate"),
            &format!(r#"{{"AcctCode": "EP9116875", "Token": "{TOKEN}"}}"#),
        )
        .await;
        sim.expire_keys();
        assert!(approved(
            &sale(&h.client, h.addr).await,
            "CreditCardSale_Manual"
        ));
        sim.change_ip();
        assert!(approved(
            &sale(&h.client, h.addr).await,
            "CreditCardSale_Manual"
        ));
        sim.drop_next_calls(1);
        let _ = sale(&h.client, h.addr).await;
        // A rejection too: the vendor rotates the token.
        sim.set_token("SOMETHING-ELSE");
        sim.expire_keys();
        let _ = sale(&h.client, h.addr).await;
        let _ = h
            .admin_post("/admin/number/unlock", Some("not-the-admin-token"), "")
            .await;
        let _ = h
            .admin_post("/admin/number/unlock", Some(ADMIN_TOKEN), "")
            .await;
        let _ = h.admin_get("/metrics").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let keys: Vec<String> = sim
            .calls_seen()
            .into_iter()
            .filter_map(|c| c.sess_key_header)
            .collect();
        h.stop().await;
        sim.shutdown().await;
        keys
    });
    let logs = String::from_utf8(captured.0.lock().expect("buffer").clone()).expect("utf8");
    assert!(logs.contains("authenticating"), "the run was logged at all");
    // One access line per request, with the fields operators need.
    let access: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("payauth::access"))
        .collect();
    assert!(access.len() >= 6, "{} access lines", access.len());
    for field in [
        "gateway=number",
        "method=POST",
        "status=",
        "outcome=",
        "upstream_ms=",
        "duration_ms=",
        "request_id=",
    ] {
        assert!(
            access.iter().any(|l| l.contains(field)),
            "no access line has {field}"
        );
    }
    assert!(
        access.iter().any(|l| l.contains("replayed=true")),
        "the renewed calls are marked replayed"
    );
    assert!(
        access
            .iter()
            .any(|l| l.contains("outcome=\"outcome_unknown\"")),
        "the dropped call is logged"
    );
    let login: Vec<&&str> = access
        .iter()
        .filter(|l| l.contains("/Authenticate"))
        .collect();
    assert!(!login.is_empty(), "the app's own Authenticate is logged");
    assert!(
        login.iter().all(|l| l.contains("outcome=\"local\"")),
        "the app's own Authenticate is logged as answered locally: {login:?}"
    );
    for event in [
        "authenticated",
        "renewing",
        "gateway locked",
        "unlocked by an operator",
    ] {
        assert!(logs.contains(event), "lifecycle event {event:?} missing");
    }
    // The rejection says what the gateway answered, as a plain value.
    let rejected: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("rejected the credentials; not retrying"))
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(
        rejected[0].contains("detail=\"ErrCode "),
        "the rejection's detail: {}",
        rejected[0]
    );
    assert!(
        logs.lines().count() > 50,
        "trace output captured: {} lines",
        logs.lines().count()
    );
    let mut secrets = vec![
        TOKEN.to_owned(),
        HMAC_SECRET.to_owned(),
        CARD.to_owned(),
        ADMIN_TOKEN.to_owned(),
    ];
    assert!(!keys.is_empty());
    for signed in keys {
        // The signed header and the bare session key inside it.
        let bare = signed.split('_').next().expect("key").to_owned();
        secrets.push(signed);
        secrets.push(bare);
    }
    for secret in secrets {
        assert!(
            !logs.contains(&secret),
            "a secret reached the logs: {}...",
            &secret[..6]
        );
    }
}
