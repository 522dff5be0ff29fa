//! A stop never outlasts `[proxy] shutdown_grace_secs`: the drain and the wait for
//! authentications in flight share one deadline, and an authentication still in flight then is
//! left on record as an unknown outcome (what a SIGKILL would leave), which the log says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::process::Running;
use common::*;
use payauth::config::Config;
use payauth::sidecar::Sidecar;
use payauth_sim::number::{NumberSim, NumberSimConfig};

/// The gateway answers in 6 s, the first authentication included.
fn slow_gateway() -> NumberSimConfig {
    NumberSimConfig {
        latency: Duration::from_secs(6),
        ..NumberSimConfig::default()
    }
}

/// Ten sales at once to the gateway listener at `addr`, none of them awaited: what each got
/// (an answer's status, or the error of a connection payauth closed) is not the point.
fn ten_sales(runtime: &tokio::runtime::Handle, addr: std::net::SocketAddr) {
    let client = client();
    for _ in 0..10 {
        let request = http::Request::post(format!("http://{addr}{REST}/CreditCardSale_Manual"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"Amount": 1.00}"#,
            )))
            .expect("request");
        runtime.spawn(client.request(request));
    }
}

/// The lockout records in `state`'s guard file: (unconfirmed, locked) of each.
fn guard_records(state: &Path) -> Vec<(u64, bool)> {
    let text = std::fs::read_to_string(state.join("guard-number.json")).expect("guard record");
    let file: serde_json::Value = serde_json::from_str(&text).expect("json");
    file["records"]
        .as_object()
        .expect("records")
        .values()
        .map(|r| {
            (
                r["unconfirmed"].as_u64().expect("unconfirmed"),
                r["locked"].as_bool().expect("locked"),
            )
        })
        .collect()
}

/// The operator's case: grace 1 s, ten calls in flight behind the first authentication, which
/// the gateway answers only after 6 s; SIGTERM. payauth exits within the grace and half a second,
/// says the authentication was left unknown, and the record on disk holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_authentication_in_flight_exits_within_the_grace() {
    let sim = number_sim(slow_gateway()).await;
    let mut running = Running::start_with(&sim.url(), "shutdown_grace_secs = 1").await;
    ten_sales(&tokio::runtime::Handle::current(), running.addr);
    let in_flight = eventually(Duration::from_secs(10), || sim.stats().auth_attempts == 1).await;
    assert!(in_flight, "the first authentication reached the gateway");
    let state = running.state_dir();
    let recorded = eventually(Duration::from_secs(5), || {
        std::fs::read_to_string(state.join("guard-number.json")).is_ok()
    })
    .await;
    assert!(recorded, "the attempt is on disk before it is sent");

    let signalled = Instant::now();
    running.terminate();
    let (exited, mut lines) = tokio::task::block_in_place(|| running.wait());
    let took = signalled.elapsed();
    lines.splice(0..0, running.read());
    let log = lines.join("\n");
    assert!(exited.success(), "payauth stopped with {exited}:\n{log}");
    assert!(
        took < Duration::from_millis(1500),
        "the stop took {took:?} with a grace of 1 s:\n{log}"
    );
    assert!(
        log.contains("shutdown grace over with authentications in flight"),
        "the log says the authentication was left unknown:\n{log}"
    );
    assert!(log.contains("stopped"), "the stop is logged:\n{log}");
    assert_eq!(
        guard_records(&state),
        vec![(1, false)],
        "the record holds the attempt as unknown, not locked"
    );
    assert_eq!(sim.stats().auth_attempts, 1, "nothing sent twice");
    sim.shutdown().await;
}

/// The default grace (25 s), with the sidecar's own runtime on paused time: the stop ends at the
/// deadline, not 25 s of draining plus a wait for the authentication on top. The simulator and
/// the app's calls run on a runtime of real time (as do the sidecar's worker threads), so that
/// only the stop's own clock is paused.
#[tokio::test(start_paused = true)]
async fn with_the_default_grace_the_stop_ends_at_its_deadline() {
    let real = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let sim: NumberSim = real
        .spawn(async { number_sim(slow_gateway()).await })
        .await
        .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::write(root.join("token"), TOKEN).expect("token");
    let config = Config::parse(&format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{state}\"\n[proxy]\nworkers = 2\n\
         [[gateway]]\nname = \"number\"\nkind = \"number\"\nlisten = \"127.0.0.1:0\"\n\
         upstream = \"{upstream}\"\nprotocol = \"rest\"\naccount_code = \"EP9116875\"\n\
         token_file = \"{token}\"\nrequest_timeout_secs = 60\n",
        state = root.join("state").display(),
        upstream = sim.url(),
        token = root.join("token").display(),
    ))
    .expect("config");
    assert_eq!(config.proxy.shutdown_grace, Duration::from_secs(25));
    let sidecar = Sidecar::start(config).await.expect("sidecar starts");
    ten_sales(
        real.handle(),
        sidecar.gateway_addr("number").expect("listener"),
    );
    let (sim, in_flight) = real
        .spawn(async move {
            let in_flight =
                eventually(Duration::from_secs(10), || sim.stats().auth_attempts == 1).await;
            (sim, in_flight)
        })
        .await
        .expect("waited");
    assert!(in_flight, "the first authentication reached the gateway");

    let started = tokio::time::Instant::now();
    sidecar.shutdown().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(25) && took <= Duration::from_millis(25_500),
        "the stop took {took:?} of the sidecar's clock with the default grace of 25 s"
    );
    assert_eq!(guard_records(&root.join("state")), vec![(1, false)]);
    real.spawn(async move { sim.shutdown().await })
        .await
        .expect("simulator stops");
    real.shutdown_background();
}
