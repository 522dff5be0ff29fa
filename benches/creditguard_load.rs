//! CreditGuard at production rates: an open-loop load bench of `CreditGuardSessionLayer` against
//! the CreditGuard simulator on 127.0.0.1, with 300 ms per `getSessionId` and 100 ms per deal, one
//! terminal and scope `command` (one pool key).
//!
//! The floor is measured in the same run: a deal sent straight to the simulator with a session
//! fetched beforehand (only the deal is timed). Then, for the default config
//! (`session_fetch_concurrency` 8) and for 32, and for 5, 20 and 50 deals/s, a fresh simulator and
//! layer are warmed up and a deal is started every 1/rate seconds on a fixed schedule, whatever
//! the earlier deals are doing (each in its own task), so queueing shows as latency. A deal's
//! latency runs from its scheduled start to its whole answer.
//!
//! `PAYAUTH_BENCH_SECS` sets how long each load runs (default 15 s). Every loop is bounded in
//! count and time; a deal that does not end within twice the layer's request timeout is counted
//! as hung.

// A bench is test code: a broken setup (no port, no runtime) should stop it loudly.
#![allow(clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use payauth::creditguard::form::session_field;
use payauth::creditguard::wire::{self, ResultCode, SessionAnswer};
use payauth::creditguard::{
    CreditGuardConfig, CreditGuardCredentials, CreditGuardSessionLayer, ScopeCmd, SessionScope,
    TerminalNumber,
};
use payauth::error::ERROR_HEADER;
use payauth::secret::Secret;
use payauth_sim::creditguard::{CreditGuardSim, CreditGuardSimConfig};
use tokio::time::{Instant, MissedTickBehavior};
use tower::{Layer, ServiceExt};

const TERMINAL: &str = "0882819014";
const USER: &str = "merchant-user";
const PASSWORD: &str = "s3cret-Passw0rd";
const GET_SESSION_LATENCY: Duration = Duration::from_millis(300);
const DEAL_LATENCY: Duration = Duration::from_millis(100);
const FLOOR_SAMPLES: usize = 30;
const RATES: [u32; 3] = [5, 20, 50];
const CONCURRENCIES: [u32; 2] = [8, 32];
/// How long the pool may take to hold its first sessions after `warm_up`.
const WARM_UP_LIMIT: Duration = Duration::from_secs(10);
/// Settling time after the pool first holds sessions (the credentials are proven by then).
const WARM_UP_SETTLE: Duration = Duration::from_secs(2);
/// The first seconds of a load, left out of the steady-state percentiles.
const RAMP: Duration = Duration::from_secs(3);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn load_duration() -> Duration {
    let secs = std::env::var("PAYAUTH_BENCH_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(15.0);
    // Bounded either way: at least one second, at most ten minutes per load.
    Duration::from_secs_f64(secs.clamp(1.0, 600.0))
}

async fn simulator() -> CreditGuardSim {
    let config = CreditGuardSimConfig {
        get_session_latency: GET_SESSION_LATENCY,
        deal_latency: DEAL_LATENCY,
        ..CreditGuardSimConfig::default()
    };
    CreditGuardSim::start("127.0.0.1:0".parse().expect("address"), config)
        .await
        .expect("simulator")
}

fn deal_xml() -> String {
    format!(
        "<ashrait><request><version>2000</version><language>Eng</language><dateTime/><requestId/>\
         <mayBeDuplicate>0</mayBeDuplicate><command>doDeal</command><doDeal>\
         <terminalNumber>{TERMINAL}</terminalNumber><cardNo>4580000000000000</cardNo>\
         <cardExpiration>1230</cardExpiration><cvv>987</cvv><total>100</total>\
         <transactionType>Debit</transactionType><creditType>RegularCredit</creditType>\
         <currency>ILS</currency><transactionCode>Phone</transactionCode>\
         <validation>AutoComm</validation></doDeal></request></ashrait>"
    )
}

fn form_request(uri: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(uri)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(body))
        .expect("request")
}

/// What one deal came back with.
#[derive(Debug)]
struct Outcome {
    scheduled: Instant,
    latency: Duration,
    /// `None` when the deal succeeded (200, no payauth error, result 000).
    failure: Option<String>,
}

fn judge(status: StatusCode, error: Option<&str>, body: &[u8]) -> Option<String> {
    if let Some(code) = error {
        return Some(code.to_owned());
    }
    if status != StatusCode::OK {
        return Some(format!("http {}", status.as_u16()));
    }
    match wire::answer_result(body) {
        Some(ResultCode::OK) => None,
        Some(code) => Some(format!("result {code}")),
        None => Some("no result".to_owned()),
    }
}

// ---------------------------------------------------------------------------------------------
// The floor

async fn get_session(client: &HttpClient, relay: &str) -> Bytes {
    let body = wire::get_session_request(
        USER,
        &Secret::from(PASSWORD),
        &TerminalNumber::new(TERMINAL),
        &SessionScope {
            cmd: Some(ScopeCmd::DoDeal),
            ..SessionScope::UNSCOPED
        },
    );
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(form_request(relay, body)),
    )
    .await
    .expect("getSessionId in time")
    .expect("getSessionId answer");
    let bytes = answer.into_body().collect().await.expect("body").to_bytes();
    match wire::parse_get_session(&bytes) {
        SessionAnswer::Issued { id, .. } => session_field(id.expose()),
        other => panic!("the simulator refused getSessionId: {other:?}"),
    }
}

/// Deals sent straight to the simulator, each with a session fetched beforehand (untimed).
async fn floor() -> Vec<Duration> {
    let sim = simulator().await;
    let relay = sim.relay_url();
    let client = client();
    let fetches = (0..FLOOR_SAMPLES).map(|_| {
        let client = client.clone();
        let relay = relay.clone();
        tokio::spawn(async move { get_session(&client, &relay).await })
    });
    let mut sessions = Vec::with_capacity(FLOOR_SAMPLES);
    for fetch in fetches.collect::<Vec<_>>() {
        sessions.push(fetch.await.expect("fetch task"));
    }
    let xml = deal_xml();
    let mut samples = Vec::with_capacity(FLOOR_SAMPLES);
    for session in sessions {
        // The form payauth sends: the session first, then the app's raw int_in.
        let mut body = session.to_vec();
        body.extend_from_slice(b"&int_in=");
        body.extend_from_slice(xml.as_bytes());
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            client.request(form_request(&relay, Bytes::from(body))),
        )
        .await
        .expect("deal in time")
        .expect("deal answer");
        let status = answer.status();
        let bytes = answer.into_body().collect().await.expect("body").to_bytes();
        samples.push(started.elapsed());
        assert_eq!(judge(status, None, &bytes), None, "a direct deal failed");
    }
    sim.shutdown().await;
    samples
}

// ---------------------------------------------------------------------------------------------
// The load

#[derive(Debug)]
struct Row {
    concurrency: u32,
    rate: u32,
    outcomes: Vec<Outcome>,
    hung: usize,
    fetched: u64,
    wasted: u64,
    on_demand: u64,
    ready_at_end: usize,
    get_session_calls: u64,
    calls_456: u64,
    warm_up: Duration,
}

async fn run(concurrency: u32, rate: u32, duration: Duration) -> Row {
    let sim = simulator().await;
    let mut config = CreditGuardConfig::new("cg", sim.url().parse().expect("url"));
    config.terminals = vec![TERMINAL.into()];
    config.session_fetch_concurrency = concurrency;
    let hang_limit = config.gateway.request_timeout * 2;
    let min = config.pool.min;
    let layer = CreditGuardSessionLayer::new(config, CreditGuardCredentials::new(USER, PASSWORD))
        .expect("layer");
    let handle = layer.handle();
    let service = layer.layer(client());

    let started = Instant::now();
    service.warm_up();
    while handle.pool_stats().ready < min && started.elapsed() < WARM_UP_LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(WARM_UP_SETTLE).await;
    let warm_up = started.elapsed();

    let relay = sim.relay_url();
    let form = Bytes::from(format!(
        "user=app-user&password=app-dummy-password&int_in={}",
        deal_xml()
    ));
    // Whole deals only: the count is fixed up front, so the load ends on time even if the
    // generator falls behind (Burst then starts the late ones at once).
    let count = (f64::from(rate) * duration.as_secs_f64()).round() as usize;
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(count);
    for _ in 0..count {
        let scheduled = ticks.tick().await;
        let service = service.clone();
        let request = form_request(&relay, form.clone());
        tasks.push(tokio::spawn(async move {
            let call = async {
                match service.oneshot(request).await {
                    Ok(response) => {
                        let (parts, body) = response.into_parts();
                        let error = parts
                            .headers
                            .get(ERROR_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        match body.collect().await {
                            Ok(bytes) => judge(parts.status, error.as_deref(), &bytes.to_bytes()),
                            Err(_) => Some("answer body failed".to_owned()),
                        }
                    }
                    Err(error) => Some(error.code().as_str().to_owned()),
                }
            };
            let failure = tokio::time::timeout(hang_limit, call).await.ok()?;
            Some(Outcome {
                scheduled,
                latency: scheduled.elapsed(),
                failure,
            })
        }));
    }
    let mut outcomes = Vec::with_capacity(count);
    let mut hung = 0;
    for task in tasks {
        match task.await.expect("deal task") {
            Some(outcome) => outcomes.push(outcome),
            None => hung += 1,
        }
    }
    let pool = handle.pool_stats();
    let sim_stats = sim.stats();
    handle.stop().await;
    drop(service);
    sim.shutdown().await;
    Row {
        concurrency,
        rate,
        outcomes,
        hung,
        fetched: pool.fetched,
        wasted: pool.wasted,
        on_demand: pool.on_demand,
        ready_at_end: pool.ready,
        get_session_calls: sim_stats.get_session_calls,
        calls_456: sim_stats.calls_456,
        warm_up,
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Deals slower than `slow` once the ramp is over (at most ten), with their scheduled offset.
fn stragglers(row: &Row, slow: Duration) -> Vec<String> {
    let Some(first) = row.outcomes.iter().map(|o| o.scheduled).min() else {
        return Vec::new();
    };
    row.outcomes
        .iter()
        .filter(|o| o.latency > slow && o.scheduled >= first + RAMP)
        .take(10)
        .map(|o| {
            let at = o.scheduled - first;
            format!("+{:.2} s: {} ms", at.as_secs_f64(), ms(o.latency))
        })
        .collect()
}

fn failed_count(row: &Row) -> usize {
    row.outcomes.iter().filter(|o| o.failure.is_some()).count()
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort_unstable();
    v
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let duration = load_duration();
        let floor = sorted(floor().await);
        let (floor50, floor99) = (percentile(&floor, 50.0), percentile(&floor, 99.0));
        println!(
            "floor: direct deal with a session fetched beforehand, {} samples: p50 {} ms, p99 {} ms",
            floor.len(),
            ms(floor50),
            ms(floor99)
        );
        println!(
            "load: open loop, {} s per row, getSessionId {} ms, deal {} ms, session_wait {} ms\n",
            duration.as_secs_f64(),
            GET_SESSION_LATENCY.as_millis(),
            DEAL_LATENCY.as_millis(),
            CreditGuardConfig::new("cg", "http://127.0.0.1".parse().expect("url"))
                .session_wait
                .as_millis()
        );
        let mut rows = Vec::new();
        for concurrency in CONCURRENCIES {
            for rate in RATES {
                let row = run(concurrency, rate, duration).await;
                eprintln!(
                    "done: concurrency {concurrency}, {rate}/s (warm-up {:.1} s)",
                    row.warm_up.as_secs_f64()
                );
                rows.push(row);
            }
        }
        println!(
            "| config | offered | capacity (load %) | deals | p50 ms | p99 ms | p50/floor | \
             p99/floor | p99 after {} s | max ms | failed | sessions wasted |",
            RAMP.as_secs()
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
        for row in &rows {
            let capacity = f64::from(row.concurrency) / GET_SESSION_LATENCY.as_secs_f64();
            let first = row.outcomes.iter().map(|o| o.scheduled).min();
            let all = sorted(row.outcomes.iter().map(|o| o.latency).collect());
            let steady = sorted(
                row.outcomes
                    .iter()
                    .filter(|o| first.is_some_and(|f| o.scheduled >= f + RAMP))
                    .map(|o| o.latency)
                    .collect(),
            );
            let (p50, p99) = (percentile(&all, 50.0), percentile(&all, 99.0));
            let failed = failed_count(row) + row.hung;
            let config = if row.concurrency == 8 {
                "defaults (concurrency 8)".to_owned()
            } else {
                format!("concurrency {}", row.concurrency)
            };
            let waste = if row.fetched == 0 {
                0.0
            } else {
                100.0 * row.wasted as f64 / row.fetched as f64
            };
            println!(
                "| {config} | {}/s | {:.1}/s ({:.0}%) | {} | {} | {} | {:.2}× | {:.2}× | {} | {} | {} | {:.1}% ({}/{}) |",
                row.rate,
                capacity,
                100.0 * f64::from(row.rate) / capacity,
                row.outcomes.len() + row.hung,
                ms(p50),
                ms(p99),
                p50.as_secs_f64() / floor50.as_secs_f64(),
                p99.as_secs_f64() / floor99.as_secs_f64(),
                ms(percentile(&steady, 99.0)),
                ms(all.last().copied().unwrap_or_default()),
                failed,
                waste,
                row.wasted,
                row.fetched,
            );
        }
        println!();
        let slow = floor99.mul_f64(1.5);
        for row in &rows {
            let first = row.outcomes.iter().map(|o| o.scheduled).min();
            let late: Vec<Duration> = row
                .outcomes
                .iter()
                .filter(|o| o.latency > slow)
                .filter_map(|o| first.map(|f| o.scheduled - f))
                .collect();
            if row.hung + failed_count(row) == 0 {
                let stragglers = stragglers(row, slow);
                if !stragglers.is_empty() {
                    println!(
                        "concurrency {}, {}/s: slow after the first {} s: {}",
                        row.concurrency,
                        row.rate,
                        RAMP.as_secs(),
                        stragglers.join(", ")
                    );
                }
            }
            let mut failures: BTreeMap<&str, usize> = BTreeMap::new();
            for failure in row.outcomes.iter().filter_map(|o| o.failure.as_deref()) {
                *failures.entry(failure).or_default() += 1;
            }
            let failed_latency = sorted(
                row.outcomes
                    .iter()
                    .filter(|o| o.failure.is_some())
                    .map(|o| o.latency)
                    .collect(),
            );
            println!(
                "concurrency {}, {}/s: over 1.5× floor p99 {} (last scheduled at +{:.2} s), \
                 456 replays {}, getSessionId sent {}, on demand {}, ready at end {}, hung {}, \
                 failures {:?}{}",
                row.concurrency,
                row.rate,
                late.len(),
                late.iter().max().copied().unwrap_or_default().as_secs_f64(),
                row.calls_456,
                row.get_session_calls,
                row.on_demand,
                row.ready_at_end,
                row.hung,
                failures,
                if failed_latency.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (after {}..{} ms)",
                        ms(failed_latency[0]),
                        ms(failed_latency[failed_latency.len() - 1])
                    )
                }
            );
        }
    });
}
