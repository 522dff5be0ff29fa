//! Field conditions a payments team meets in production: a gateway whose clock is not ours.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use payauth_sim::number::NumberSimConfig;

/// A gateway clock 400 s ahead, 400 s behind, or in step: `payauth_clock_skew_seconds` shows
/// it (to its one-second resolution), and signatures keep carrying this host's time: the
/// simulator checks them against the host's clock with a 300 s tolerance, so a signature moved
/// to the gateway's clock would be refused.
#[tokio::test]
async fn the_gateways_clock_shows_as_skew_and_signatures_keep_ours() {
    for offset in [400i64, -400, 0] {
        let sim = number_sim(NumberSimConfig {
            hmac_secret: Some(HMAC_SECRET.into()),
            clock_offset_secs: offset,
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
        let metrics = h.admin_get("/metrics").await.text();
        assert!(
            !metrics.contains("payauth_clock_skew_seconds{"),
            "no skew is reported before an answer told it"
        );
        assert!(approved(
            &sale(&h.client, h.addr).await,
            "CreditCardSale_Manual"
        ));
        let metrics = h.admin_get("/metrics").await.text();
        let line = metrics
            .lines()
            .find(|l| l.starts_with("payauth_clock_skew_seconds{gateway=\"number\"}"))
            .unwrap_or_else(|| panic!("no skew line:\n{metrics}"));
        let skew: f64 = line.rsplit(' ').next().unwrap().parse().expect("a number");
        assert!(
            (skew - offset as f64).abs() <= 1.5,
            "offset {offset}: skew {skew}"
        );
        assert_eq!(sim.stats().bad_signatures, 0, "offset {offset}");
        h.stop().await;
        sim.shutdown().await;
    }
}
