//! The embedding example (`crates/payauth/examples/axum_number.rs`), compiled here as it is and
//! run against the Number simulator over HTTPS with a private CA: the layer around payauth's
//! `UpstreamClient`, as the README shows it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[allow(dead_code, missing_docs, unreachable_pub)]
#[path = "../crates/payauth/examples/axum_number.rs"]
mod example;

use common::*;
use payauth_sim::number::NumberSimConfig;
use payauth_sim::tls::SimCa;

#[tokio::test]
async fn the_axum_example_charges_through_https_with_a_private_ca() {
    let ca = SimCa::new("example CA").expect("ca");
    let server = ca
        .server_tls(&["localhost", "127.0.0.1"])
        .expect("server certificate");
    let sim = number_sim(NumberSimConfig {
        tls: Some(server),
        ..NumberSimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).expect("ca.pem");
    assert!(sim.url().starts_with("https://"), "{}", sim.url());

    // Without the CA the gateway's certificate is not trusted, and nothing reaches it.
    let untrusted = example::number_client(&sim.url(), TOKEN, None).expect("client");
    let app = example::app(untrusted, sim.url());
    let reply = charge(app).await;
    assert_eq!(
        reply.status,
        http::StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(sim.stats().auth_attempts, 0);

    let number = example::number_client(&sim.url(), TOKEN, Some(ca_file)).expect("client");
    let app = example::app(number, sim.url());
    for _ in 0..3 {
        let reply = charge(app.clone()).await;
        assert_eq!(reply.status, http::StatusCode::OK, "{}", reply.text());
        assert_eq!(
            reply.json()["CreditCardSale_ManualResult"]["FunctionOk"],
            true,
            "{}",
            reply.text()
        );
    }
    let stats = sim.stats();
    assert_eq!((stats.auth_success, stats.calls_ok), (1, 3), "{stats:?}");
    sim.shutdown().await;
}

/// Serves `app` on 127.0.0.1:0 and posts one charge to it.
async fn charge(app: axum::Router) -> Reply {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let reply = post(&client(), addr, "/charge", r#"{"amount": "1.00"}"#).await;
    server.abort();
    reply
}
