//! Token renewal through the admin API: the Client Admin Portal's JSON POST.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::StatusCode;
use payauth_sim::number::NumberSimConfig;

const NEW_TOKEN: &str = "9F3C2B1A0E9D8C7B6A5F4E3D2C1B0A99";

fn portal_post(token: &str, expiration: &str) -> String {
    format!(
        r#"{{"Tokens": [
            {{"TokenID": 11, "AccountCode": "EP0000001", "Token": "UNRELATED", "AccountName": "Other", "ExpirationDate": "2031-01-01T00:00:00"}},
            {{"TokenID": 12, "AccountCode": "EP9116875", "Token": "{token}", "AccountName": "Main", "ExpirationDate": "{expiration}"}}
        ]}}"#
    )
}

#[tokio::test]
async fn a_posted_token_is_swapped_in_persisted_and_unlocks() {
    // The vendor rotated the token: the configured one is rejected and the gateway locks.
    let sim = number_sim(NumberSimConfig {
        token: NEW_TOKEN.into(),
        ..NumberSimConfig::default()
    })
    .await;
    let mut h = Harness::start(&sim.url(), Options::default()).await;
    assert_eq!(
        sale(&h.client, h.addr).await.error_code().as_deref(),
        Some("auth_locked")
    );

    let path = "/admin/number/number/tokens";
    let body = portal_post(NEW_TOKEN, "2027-06-30T00:00:00");
    // Wrong bearer: 401, nothing changes.
    assert_eq!(
        h.admin_post(path, Some("wrong"), &body).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.admin_post(path, None, &body).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Malformed bodies: 400, nothing changes.
    assert_eq!(
        h.admin_post(path, Some(ADMIN_TOKEN), "{not json")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    let other_account = r#"{"Tokens": [{"TokenID": 1, "AccountCode": "EP0000001", "Token": "X", "AccountName": "", "ExpirationDate": ""}]}"#;
    assert_eq!(
        h.admin_post(path, Some(ADMIN_TOKEN), other_account)
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h.admin_post("/admin/number/nope/tokens", Some(ADMIN_TOKEN), &body)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        sale(&h.client, h.addr).await.error_code().as_deref(),
        Some("auth_locked"),
        "still locked"
    );
    assert!(!h.path("state/token-number.json").exists());

    let reply = h.admin_post(path, Some(ADMIN_TOKEN), &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["unlocked"], true);
    assert_eq!(reply.json()["token_id"], "12");
    assert!(
        !reply.text().contains(NEW_TOKEN),
        "the answer does not echo the token"
    );
    assert!(approved(
        &sale(&h.client, h.addr).await,
        "CreditCardSale_Manual"
    ));
    assert_eq!(
        sim.stats().auth_attempts,
        2,
        "one rejected, one with the new token"
    );
    assert_eq!(
        h.metric("payauth_token_expiry_timestamp_seconds{gateway=\"number\"}")
            .await,
        1_814_313_600.0
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(h.path("state/token-number.json"))
            .expect("persisted")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A restart keeps the renewed token (token_file still holds the old one).
    h.restart().await;
    assert!(approved(
        &sale(&h.client, h.addr).await,
        "CreditCardSale_Manual"
    ));
    assert_eq!(
        sim.stats().auth_rejected,
        1,
        "the old token was never sent again"
    );
    assert_eq!(
        h.metric("payauth_token_expiry_timestamp_seconds{gateway=\"number\"}")
            .await,
        1_814_313_600.0
    );
    h.stop().await;
}
