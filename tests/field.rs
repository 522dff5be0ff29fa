//! Field conditions a payments team meets in production: a gateway whose clock is not ours, and
//! CreditGuard clients that wait for each answer before the next.

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

mod closed_loop {
    //! CreditGuard clients that wait for each answer before their next deal (closed loop): a
    //! client that waits slows down and asks less, so a pool sized from the rate it serves could
    //! settle at a starved rate. Through the sidecar, getSessionId 100 ms, deals 50 ms, each
    //! client dealing, reading the answer, pausing 20 ms.

    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;
    use payauth::config::Config;
    use payauth::sidecar::Sidecar;
    use payauth_sim::creditguard::{CreditGuardSim, CreditGuardSimConfig};

    use super::common::{self, HttpClient};

    /// Deals of each client that settle the pool's rate estimate (about a second of them).
    pub(super) const WARM: usize = 14;

    fn deal(addr: std::net::SocketAddr) -> Request<Full<Bytes>> {
        let xml = "<ashrait><request><version>2000</version><command>doDeal</command><doDeal>\
            <terminalNumber>0882819014</terminalNumber><cardNo>4580000000000000</cardNo>\
            <cardExpiration>1230</cardExpiration><total>100</total>\
            <transactionType>Debit</transactionType><creditType>RegularCredit</creditType>\
            <currency>ILS</currency><transactionCode>Phone</transactionCode>\
            <validation>AutoComm</validation></doDeal></request></ashrait>";
        Request::post(format!("http://{addr}/xpo/Relay"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(format!(
                "user=app&password=app&int_in={xml}"
            ))))
            .expect("request")
    }

    async fn waits(client: &HttpClient, admin: std::net::SocketAddr) -> u64 {
        let request = Request::get(format!("http://{admin}/metrics"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let reply = common::send(client, request).await.text();
        reply
            .lines()
            .find(|l| l.starts_with("payauth_session_waits_total{gateway=\"creditguard\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no payauth_session_waits_total:\n{reply}"))
    }

    /// `clients` closed-loop clients with `session_fetch_concurrency` = `concurrency`, each
    /// making `deals` deals after its warm-up ones. Returns (deals counted, of them those that
    /// found no session ready, getSessionIds the gateway saw in all).
    pub(super) async fn run(clients: usize, concurrency: u32, deals: usize) -> (u64, u64, u64) {
        let sim = CreditGuardSim::start(
            ([127, 0, 0, 1], 0).into(),
            CreditGuardSimConfig {
                get_session_latency: Duration::from_millis(100),
                deal_latency: Duration::from_millis(50),
                ..CreditGuardSimConfig::default()
            },
        )
        .await
        .expect("simulator");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("password"), "s3cret-Passw0rd").expect("password");
        let config = Config::parse(&format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n[proxy]\nworkers = 2\n\
             [[gateway]]\nname = \"creditguard\"\nkind = \"creditguard\"\nlisten = \"127.0.0.1:0\"\n\
             upstream = \"{}\"\nuser = \"merchant-user\"\npassword_file = \"{}\"\n\
             terminals = [\"0882819014\"]\nsession_fetch_concurrency = {concurrency}\n",
            dir.path().join("state").display(),
            sim.url(),
            dir.path().join("password").display()
        ))
        .expect("config");
        let sidecar = Sidecar::start(config).await.expect("sidecar");
        let addr = sidecar.gateway_addr("creditguard").expect("listener");
        let admin = sidecar.admin_addr();
        let client = common::client();
        // Every client ends its warm-up before the count starts, and waits for the count.
        let warmed = Arc::new(tokio::sync::Barrier::new(clients + 1));
        let counting = Arc::new(tokio::sync::Barrier::new(clients + 1));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..clients {
            let (client, warmed, counting) =
                (client.clone(), Arc::clone(&warmed), Arc::clone(&counting));
            tasks.spawn(async move {
                for n in 0..WARM + deals {
                    if n == WARM {
                        warmed.wait().await;
                        counting.wait().await;
                    }
                    let reply = tokio::time::timeout(
                        Duration::from_secs(30),
                        common::send(&client, deal(addr)),
                    )
                    .await
                    .expect("a deal within 30 s");
                    let text = reply.text();
                    assert!(text.contains("<result>000</result>"), "{text}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
        warmed.wait().await;
        let before = waits(&client, admin).await;
        counting.wait().await;
        while let Some(done) = tasks.join_next().await {
            done.expect("client");
        }
        let after = waits(&client, admin).await;
        let fetches = sim.stats().get_session_calls;
        sidecar.shutdown().await;
        sim.shutdown().await;
        ((clients * deals) as u64, after - before, fetches)
    }
}

/// The pool keeps ahead of closed-loop clients: after the first second, at least 99% of deals
/// find a session ready (counted with `payauth_session_waits_total`, not timed), at 3 clients
/// with the default `session_fetch_concurrency` (8) and at 8 clients with 16, both under 80% of
/// what the fetches can bring (concurrency / 100 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_clients_find_a_ready_session() {
    for (clients, concurrency) in [(3, 8), (8, 16)] {
        let (deals, waited, fetches) = closed_loop::run(clients, concurrency, 60).await;
        eprintln!(
            "{clients} closed-loop clients, concurrency {concurrency}: {deals} deals, \
             {waited} waited, {fetches} getSessionIds"
        );
        assert!(
            waited * 100 <= deals,
            "{waited} of {deals} deals waited for a session ({clients} clients)"
        );
        // Each deal takes one session; what is left over is the pool at the end (at most its
        // default max of 32) and the warm-up's on-demand fetches racing the filler.
        let all = (clients * (closed_loop::WARM + 60)) as u64;
        assert!(
            fetches <= all + 2 * 32,
            "{fetches} getSessionIds for {all} deals: the pool wastes"
        );
    }
}
