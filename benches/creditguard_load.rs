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
//! First, closed loops (the field case): clients that send a deal, wait for its answer, pause
//! 20 ms and deal again, against 100 ms per `getSessionId` and 50 ms per deal, from a cold pool:
//! 3 clients with the default `session_fetch_concurrency` and 8 with 16. A closed-loop client
//! slows down when it waits, so a pool sized from the rate it serves could settle starved; the
//! table shows the share of deals after the first second that found a session ready (from
//! `payauth_session_waits_total`) and their latency against the floor's p50.
//! `PAYAUTH_BENCH_CLOSED_SECS` sets each closed loop's length (default 12 s);
//! `PAYAUTH_BENCH_ONLY=closed` runs only them.
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
    simulator_with(GET_SESSION_LATENCY, DEAL_LATENCY).await
}

async fn simulator_with(get_session: Duration, deal: Duration) -> CreditGuardSim {
    let config = CreditGuardSimConfig {
        get_session_latency: get_session,
        deal_latency: deal,
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

/// One deal through the layer: `None` when it succeeded, else what failed.
async fn deal_through<S, B>(service: S, request: Request<Full<Bytes>>) -> Option<String>
where
    S: tower::Service<Request<Full<Bytes>>, Response = http::Response<B>, Error = payauth::Error>,
    B: hyper::body::Body,
{
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
    floor_with(simulator().await).await
}

async fn floor_with(sim: CreditGuardSim) -> Vec<Duration> {
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
            let call = deal_through(service, request);
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
// The closed loop: clients that wait for each answer, then pause, then deal again

const CLOSED_GET_SESSION_LATENCY: Duration = Duration::from_millis(100);
const CLOSED_DEAL_LATENCY: Duration = Duration::from_millis(50);
const CLOSED_PAUSE: Duration = Duration::from_millis(20);
/// The first second of a closed loop is the pool's ramp, left out of the steady figures.
const CLOSED_RAMP: Duration = Duration::from_secs(1);
/// (clients, session_fetch_concurrency): the field case, and eight clients within 80% of what
/// 16 fetches bring.
const CLOSED_CASES: [(usize, u32); 2] = [(3, 8), (8, 16)];

struct ClosedRow {
    clients: usize,
    concurrency: u32,
    /// Latencies of the deals started after the ramp.
    steady: Vec<Duration>,
    deals: usize,
    failed: usize,
    waits_steady: u64,
    get_session_calls: u64,
    wasted: u64,
    elapsed: Duration,
}

async fn closed_loop(clients: usize, concurrency: u32, duration: Duration) -> ClosedRow {
    use payauth::guard::MemoryGuardStore;
    use payauth::metrics::GatewayMetrics;

    let sim = simulator_with(CLOSED_GET_SESSION_LATENCY, CLOSED_DEAL_LATENCY).await;
    let mut config = CreditGuardConfig::new("cg", sim.url().parse().expect("url"));
    config.terminals = vec![TERMINAL.into()];
    config.session_fetch_concurrency = concurrency;
    let metrics = GatewayMetrics::unregistered("cg");
    let layer =
        CreditGuardSessionLayer::builder(config, CreditGuardCredentials::new(USER, PASSWORD))
            .guard_store(std::sync::Arc::new(MemoryGuardStore::default()))
            .metrics(metrics.clone())
            .build()
            .expect("layer");
    let handle = layer.handle();
    let service = layer.layer(client());
    // No warm-up: the clients start against a cold pool, as after a deploy.
    service.warm_up();
    let relay = sim.relay_url();
    let form = Bytes::from(format!(
        "user=app-user&password=app-dummy-password&int_in={}",
        deal_xml()
    ));
    let started = Instant::now();
    let ramp_end = started + CLOSED_RAMP;
    let end = started + duration;
    let waits_at_ramp = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(ramp_end).await;
            metrics.session_waits()
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (service, relay, form) = (service.clone(), relay.clone(), form.clone());
        tasks.push(tokio::spawn(async move {
            let (mut steady, mut deals, mut failed) = (Vec::new(), 0, 0);
            // Bounded: ends at `end`, and at most 100 deals a second of it.
            let most = (duration.as_secs_f64() * 100.0) as usize;
            while Instant::now() < end && deals < most {
                let at = Instant::now();
                let call = deal_through(service.clone(), form_request(&relay, form.clone()));
                let failure = tokio::time::timeout(Duration::from_secs(30), call)
                    .await
                    .unwrap_or_else(|_| Some("hung".to_owned()));
                deals += 1;
                failed += usize::from(failure.is_some());
                if at >= ramp_end {
                    steady.push(at.elapsed());
                }
                tokio::time::sleep(CLOSED_PAUSE).await;
            }
            (steady, deals, failed)
        }));
    }
    let mut row = ClosedRow {
        clients,
        concurrency,
        steady: Vec::new(),
        deals: 0,
        failed: 0,
        waits_steady: 0,
        get_session_calls: 0,
        wasted: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (steady, deals, failed) = task.await.expect("client");
        row.steady.extend(steady);
        row.deals += deals;
        row.failed += failed;
    }
    row.elapsed = started.elapsed();
    row.waits_steady = metrics.session_waits() - waits_at_ramp.await.expect("ramp");
    row.get_session_calls = sim.stats().get_session_calls;
    row.wasted = handle.pool_stats().wasted;
    handle.stop().await;
    drop(service);
    sim.shutdown().await;
    row
}

fn closed_loop_duration() -> Duration {
    std::env::var("PAYAUTH_BENCH_CLOSED_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .map_or(Duration::from_secs(12), |s| {
            Duration::from_secs_f64(s.clamp(2.0, 600.0))
        })
}

async fn closed_loops() {
    let duration = closed_loop_duration();
    let floor = sorted(
        floor_with(simulator_with(CLOSED_GET_SESSION_LATENCY, CLOSED_DEAL_LATENCY).await).await,
    );
    let (floor50, floor99) = (percentile(&floor, 50.0), percentile(&floor, 99.0));
    println!(
        "closed loop: getSessionId {} ms, deal {} ms, {} ms pause, {} s per row; floor (direct \
         deal, session fetched beforehand) p50 {} ms, p99 {} ms\n",
        CLOSED_GET_SESSION_LATENCY.as_millis(),
        CLOSED_DEAL_LATENCY.as_millis(),
        CLOSED_PAUSE.as_millis(),
        duration.as_secs_f64(),
        ms(floor50),
        ms(floor99)
    );
    println!(
        "| clients | concurrency | load % of capacity | deals/s | ready share after {} s | \
         p50 ms | p99 ms | p50/floor p50 | p99/floor p50 | getSessionIds / deals | wasted | failed |",
        CLOSED_RAMP.as_secs()
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (clients, concurrency) in CLOSED_CASES {
        let row = closed_loop(clients, concurrency, duration).await;
        let steady = sorted(row.steady.clone());
        let rate = row.deals as f64 / row.elapsed.as_secs_f64();
        let capacity = f64::from(row.concurrency) / CLOSED_GET_SESSION_LATENCY.as_secs_f64();
        let (p50, p99) = (percentile(&steady, 50.0), percentile(&steady, 99.0));
        println!(
            "| {} | {} | {:.0}% | {:.1} | {:.2}% ({} of {} waited) | {} | {} | {:.2}× | {:.2}× | {}/{} | {} | {} |",
            row.clients,
            row.concurrency,
            100.0 * rate / capacity,
            rate,
            100.0 * (1.0 - row.waits_steady as f64 / steady.len().max(1) as f64),
            row.waits_steady,
            steady.len(),
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / floor50.as_secs_f64(),
            p99.as_secs_f64() / floor50.as_secs_f64(),
            row.get_session_calls,
            row.deals,
            row.wasted,
            row.failed,
        );
    }
    println!();
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
        closed_loops().await;
        if std::env::var("PAYAUTH_BENCH_ONLY").is_ok_and(|only| only == "closed") {
            return;
        }
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
