//! CreditGuard at production rates: single-use sessions under a burst, the proven /
//! unproven rule for `getSessionId`s in parallel, a password revoked while fetches are in
//! flight, and starts that fail before serving.
//!
//! The simulator and payauth run on 127.0.0.1:0. Where a test needs to see `getSessionId`s
//! *while they are in flight*, a small tap sits between payauth and the simulator: it counts
//! every `getSessionId` as it arrives (the simulator counts only once it answers) and can hold
//! them until released, so "several are in flight at once" is an event the test waits for, not
//! a matter of latencies.

// `Mutex::lock` is disallowed in favour of payauth's crate-private helper; a test may panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod common;

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{send, HttpClient, Reply};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use payauth::config::Config;
use payauth::sidecar::Sidecar;
use payauth_sim::creditguard::{CreditGuardSim, CreditGuardSimConfig, ReceivedKind};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use tokio::sync::watch;
use tokio::task::JoinSet;

const PASSWORD: &str = "s3cret-Passw0rd";
const TERMINAL: &str = "0882819014";
const GATEWAY: &str = "creditguard";
/// How long a test waits for something that must happen.
const DEADLINE: Duration = Duration::from_secs(15);
/// How long a test keeps watching for something that must not happen.
const QUIET: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Deals
// ---------------------------------------------------------------------------------------------

/// A doDeal's `int_in`.
fn int_in() -> String {
    format!(
        "<ashrait><request><version>2000</version><language>Eng</language><command>doDeal</command><doDeal>\
         <terminalNumber>{TERMINAL}</terminalNumber><cardNo>4580000000000000</cardNo><cardExpiration>1230</cardExpiration>\
         <total>100</total><transactionType>Debit</transactionType><creditType>RegularCredit</creditType>\
         <currency>ILS</currency><transactionCode>Phone</transactionCode><validation>AutoComm</validation>\
         </doDeal></request></ashrait>"
    )
}

/// The relay form an app sends: dummy credentials and the URL-encoded `int_in`.
fn deal_form() -> String {
    format!(
        "user=u&password=p&int_in={}",
        utf8_percent_encode(&int_in(), NON_ALPHANUMERIC)
    )
}

/// Whether the gateway approved the deal.
fn approved(reply: &Reply) -> bool {
    reply.status == StatusCode::OK && reply.text().contains("<result>000</result>")
}

/// Whether payauth refused the deal because the gateway is locked.
fn auth_locked(reply: &Reply) -> bool {
    reply.status == StatusCode::SERVICE_UNAVAILABLE
        && reply.error_code().as_deref() == Some("auth_locked")
}

fn describe(reply: &Reply) -> String {
    format!("{} {:?} {}", reply.status, reply.error_code(), reply.text())
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `check` until it holds; panics with `what` after [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// payauth
// ---------------------------------------------------------------------------------------------

/// What differs between the tests' configs.
struct Setup<'a> {
    /// The password payauth is given.
    password: &'a str,
    /// Where payauth sends relay calls (the simulator, or a tap in front of it).
    upstream: String,
    /// `session_fetch_concurrency`, or the default when `None`.
    concurrency: Option<u32>,
    /// `scope`: `command` pre-warms the pool at start; `full` fetches on the first deal.
    scope: &'a str,
    /// The admin listener's address.
    admin: String,
}

impl Setup<'_> {
    fn new(upstream: String) -> Self {
        Self {
            password: PASSWORD,
            upstream,
            concurrency: None,
            scope: "command",
            admin: "127.0.0.1:0".into(),
        }
    }
}

/// payauth's sidecar with one CreditGuard gateway, its files in a temporary directory.
struct Payauth {
    dir: tempfile::TempDir,
    config: String,
    sidecar: Option<Sidecar>,
    base: String,
    admin: SocketAddr,
    client: HttpClient,
}

impl Payauth {
    /// Writes the files and the config; does not start anything.
    fn prepare(setup: &Setup<'_>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("password"), setup.password).expect("password");
        std::fs::write(dir.path().join("admin"), "admin-token").expect("admin");
        let concurrency = setup
            .concurrency
            .map(|n| format!("session_fetch_concurrency = {n}\n"))
            .unwrap_or_default();
        let config = format!(
            r#"
[admin]
listen = "{admin}"
token_file = "{admin_token}"
# Opted in: these tests see a lock in /ready too (the default keeps /ready 200).
ready_requires_unlocked = true
[state]
dir = "{state}"
[proxy]
secret_poll_secs = 0.05
[[gateway]]
name = "{GATEWAY}"
kind = "creditguard"
listen = "127.0.0.1:0"
upstream = "{upstream}"
user = "merchant-user"
password_file = "{password}"
terminals = ["{TERMINAL}"]
scope = "{scope}"
{concurrency}"#,
            admin = setup.admin,
            admin_token = dir.path().join("admin").display(),
            state = dir.path().join("state").display(),
            upstream = setup.upstream,
            password = dir.path().join("password").display(),
            scope = setup.scope,
        );
        Self {
            dir,
            config,
            sidecar: None,
            base: String::new(),
            admin: ([127, 0, 0, 1], 0).into(),
            client: common::client(),
        }
    }

    async fn start(setup: &Setup<'_>) -> Self {
        let mut payauth = Self::prepare(setup);
        payauth.boot().await;
        payauth
    }

    fn parse(&self) -> Config {
        Config::parse(&self.config).expect("config")
    }

    async fn boot(&mut self) {
        let sidecar = Sidecar::start(self.parse()).await.expect("start");
        self.base = format!(
            "http://{}",
            sidecar.gateway_addr(GATEWAY).expect("listener")
        );
        self.admin = sidecar.admin_addr();
        self.sidecar = Some(sidecar);
    }

    async fn shutdown(mut self) {
        if let Some(sidecar) = self.sidecar.take() {
            sidecar.shutdown().await;
        }
    }

    /// One deal, sent from a task of its own (so many can be in flight at once).
    fn spawn_deal(&self, tasks: &mut JoinSet<Reply>) {
        let client = self.client.clone();
        let url = format!("{}/xpo/Relay", self.base);
        tasks.spawn(async move {
            let request = Request::post(url)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(deal_form())))
                .expect("request");
            send(&client, request).await
        });
    }

    /// `n` deals at once; their replies once all have answered.
    async fn burst(&self, n: usize) -> Vec<Reply> {
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            self.spawn_deal(&mut tasks);
        }
        join_all(tasks).await
    }

    async fn deal(&self) -> Reply {
        self.burst(1).await.pop().expect("one reply")
    }

    async fn admin_get(&self, path: &str) -> Reply {
        let request = Request::get(format!("http://{}{path}", self.admin))
            .body(Full::new(Bytes::new()))
            .expect("request");
        send(&self.client, request).await
    }

    /// `payauth_auth_locked{gateway="creditguard"}` on /metrics.
    async fn locked_metric(&self) -> Option<i64> {
        let metrics = self.admin_get("/metrics").await.text();
        let prefix = format!("payauth_auth_locked{{gateway=\"{GATEWAY}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .map(|value| value.trim().parse().expect("a gauge value"))
    }

    fn guard_file(&self) -> PathBuf {
        self.dir
            .path()
            .join("state")
            .join(format!("guard-{GATEWAY}.json"))
    }

    /// The records of the guard file, if there is one.
    fn guard_records(&self) -> Vec<serde_json::Value> {
        match std::fs::read(self.guard_file()) {
            Ok(bytes) => {
                let file: serde_json::Value = serde_json::from_slice(&bytes).expect("guard JSON");
                file["records"]
                    .as_object()
                    .expect("records")
                    .values()
                    .cloned()
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("guard file unreadable: {e}"),
        }
    }
}

async fn join_all(mut tasks: JoinSet<Reply>) -> Vec<Reply> {
    let mut replies = Vec::new();
    while let Some(reply) = tasks.join_next().await {
        replies.push(reply.expect("deal task"));
    }
    replies
}

async fn sim() -> CreditGuardSim {
    CreditGuardSim::start(([127, 0, 0, 1], 0).into(), CreditGuardSimConfig::default())
        .await
        .expect("sim")
}

// ---------------------------------------------------------------------------------------------
// The tap: sees getSessionIds in flight, and can hold them
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy)]
struct TapCounts {
    /// `getSessionId`s that reached the tap.
    arrivals: u64,
    /// `getSessionId`s at the tap or at the simulator now (not yet answered to payauth).
    in_flight: u64,
    /// The most that were ever in flight at once.
    max_in_flight: u64,
}

struct TapState {
    upstream: String,
    client: HttpClient,
    counts: Mutex<TapCounts>,
    /// While true, `getSessionId`s wait at the tap.
    hold: watch::Sender<bool>,
}

/// A forwarding proxy in front of the simulator. A `getSessionId` is in flight from the moment
/// it arrives until its answer leaves for payauth, a window inside payauth's own attempt, so
/// what the tap sees in flight at once payauth had in flight at once.
struct Tap {
    addr: SocketAddr,
    state: Arc<TapState>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("tap bind");
        let addr = listener.local_addr().expect("tap addr");
        let state = Arc::new(TapState {
            upstream,
            client: common::client(),
            counts: Mutex::new(TapCounts::default()),
            hold: watch::channel(false).0,
        });
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = service_fn(move |req| tap_handle(Arc::clone(&state), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn counts(&self) -> TapCounts {
        *self.state.counts.lock().unwrap()
    }

    fn hold(&self) {
        self.state.hold.send_replace(true);
    }

    fn release(&self) {
        self.state.hold.send_replace(false);
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.release();
        self.task.abort();
    }
}

async fn tap_handle(
    state: Arc<TapState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let get_session = body.windows(12).any(|w| w == b"getSessionId");
    if get_session {
        {
            let mut counts = state.counts.lock().unwrap();
            counts.arrivals += 1;
            counts.in_flight += 1;
            counts.max_in_flight = counts.max_in_flight.max(counts.in_flight);
        }
        let mut hold = state.hold.subscribe();
        let _ = hold.wait_for(|held| !*held).await;
    }
    let mut forward = Request::post(format!(
        "{}{}",
        state.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    ));
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        forward = forward.header(header::CONTENT_TYPE, content_type);
    }
    let forward = forward.body(Full::new(body)).expect("forward request");
    let answer = match state.client.request(forward).await {
        Ok(response) => {
            let (head, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut answer = Response::new(Full::new(body));
            *answer.status_mut() = head.status;
            if let Some(content_type) = head.headers.get(header::CONTENT_TYPE) {
                answer
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type.clone());
            }
            answer
        }
        Err(_) => {
            let mut answer = Response::new(Full::new(Bytes::from_static(b"tap: upstream failed")));
            *answer.status_mut() = StatusCode::BAD_GATEWAY;
            answer
        }
    };
    if get_session {
        state.counts.lock().unwrap().in_flight -= 1;
    }
    Ok(answer)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_deals_succeed_each_with_its_own_single_use_session() {
    let sim = sim().await;
    let payauth = Payauth::start(&Setup::new(sim.url())).await;

    let replies = payauth.burst(200).await;
    let refused: Vec<String> = replies
        .iter()
        .filter(|r| !approved(r))
        .map(describe)
        .collect();
    assert!(
        refused.is_empty(),
        "{} of 200 deals not approved, e.g. {:?}",
        refused.len(),
        refused.first()
    );

    let received = sim.received();
    let issued: HashSet<String> = received
        .iter()
        .filter_map(|r| r.issued_session.clone())
        .collect();
    let calls: Vec<_> = received
        .iter()
        .filter(|r| r.kind == ReceivedKind::Call)
        .collect();
    assert_eq!(calls.len(), 200, "one relay call per deal, no replays");
    let used: HashSet<String> = calls
        .iter()
        .map(|c| c.session_id.clone().expect("every call carries a session"))
        .collect();
    assert_eq!(used.len(), 200, "200 distinct sessions");
    assert!(
        used.is_subset(&issued),
        "every session used was issued by the gateway"
    );
    assert!(calls.iter().all(|c| c.result == "000"));
    let stats = sim.stats();
    assert_eq!(stats.sessions_reused_refused, 0, "no session used twice");
    assert_eq!(stats.calls_456, 0);
    assert_eq!(stats.calls_ok, 200);
    payauth.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_password_is_probed_by_exactly_one_get_session_id_and_locks() {
    let sim = sim().await;
    // The simulator wants PASSWORD; payauth has another: unproven credentials.
    let payauth = Payauth::start(&Setup {
        password: "wrong-password",
        ..Setup::new(sim.url())
    })
    .await;

    for reply in payauth.burst(8).await {
        assert!(auth_locked(&reply), "{}", describe(&reply));
    }
    assert_eq!(payauth.locked_metric().await, Some(1));
    // More deals while locked, concurrently and over a while: still nothing is sent.
    let quiet_until = tokio::time::Instant::now() + QUIET;
    while tokio::time::Instant::now() < quiet_until {
        for reply in payauth.burst(4).await {
            assert!(auth_locked(&reply), "{}", describe(&reply));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = sim.stats();
    assert_eq!(stats.get_session_calls, 1, "exactly one getSessionId sent");
    assert_eq!(stats.get_session_rejected, 1);
    assert_eq!(stats.calls, 0, "no deal reached the gateway");
    assert_eq!(
        payauth.admin_get("/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    payauth.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_revoked_with_fetches_in_flight_costs_at_most_the_concurrency_in_rejections() {
    const CONCURRENCY: u64 = 4;
    let sim = sim().await;
    let tap = Tap::start(sim.url()).await;
    let payauth = Payauth::start(&Setup {
        concurrency: Some(CONCURRENCY as u32),
        ..Setup::new(tap.url())
    })
    .await;

    // Prove the credentials.
    let first = payauth.deal().await;
    assert!(approved(&first), "{}", describe(&first));
    assert_eq!(sim.stats().get_session_rejected, 0);

    // A burst that empties the pool; its getSessionIds wait at the tap until payauth has as many
    // in flight as it may.
    tap.hold();
    let mut burst = JoinSet::new();
    for _ in 0..40 {
        payauth.spawn_deal(&mut burst);
    }
    eventually("the concurrency's worth of getSessionIds in flight", || {
        let in_flight = tap.counts().in_flight;
        async move { in_flight >= CONCURRENCY }
    })
    .await;

    // The password is revoked at the gateway while they are in flight.
    sim.set_password("other");
    tap.release();
    let watched = &payauth;
    eventually("the gateway locked", || async move {
        watched.locked_metric().await == Some(1)
    })
    .await;
    eventually("the getSessionIds in flight answered", || {
        let in_flight = tap.counts().in_flight;
        async move { in_flight == 0 }
    })
    .await;
    for reply in join_all(burst).await {
        assert!(
            approved(&reply) || auth_locked(&reply),
            "{}",
            describe(&reply)
        );
    }

    let rejected = sim.stats().get_session_rejected;
    assert!(rejected >= 1, "the revoked password was rejected");
    assert!(
        rejected <= CONCURRENCY,
        "{rejected} rejections reached the gateway, more than session_fetch_concurrency {CONCURRENCY}"
    );
    assert!(
        tap.counts().max_in_flight <= CONCURRENCY,
        "{:?}",
        tap.counts()
    );

    // Locked: no new getSessionId starts, however many deals come.
    let arrivals = tap.counts().arrivals;
    let sent = sim.stats().get_session_calls;
    let quiet_until = tokio::time::Instant::now() + QUIET;
    while tokio::time::Instant::now() < quiet_until {
        for reply in payauth.burst(4).await {
            assert!(
                approved(&reply) || auth_locked(&reply),
                "{}",
                describe(&reply)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        tap.counts().arrivals,
        arrivals,
        "no getSessionId after the lock"
    );
    assert_eq!(sim.stats().get_session_calls, sent);
    assert_eq!(sim.stats().get_session_rejected, rejected);
    assert_eq!(payauth.locked_metric().await, Some(1));
    assert_eq!(
        payauth.admin_get("/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    payauth.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_starts_failing_on_a_taken_admin_port_send_nothing_and_leave_the_gateway_unlocked() {
    let sim = sim().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = taken.local_addr().expect("addr").to_string();
    // Scope `command` pre-warms the pool: a start that fetched before binding would show.
    let mut payauth = Payauth::prepare(&Setup {
        admin: admin.clone(),
        ..Setup::new(sim.url())
    });

    for attempt in 1..=6 {
        let error = Sidecar::start(payauth.parse())
            .await
            .expect_err("the admin port is taken");
        assert!(
            error.to_string().contains(&admin),
            "start {attempt}: the error names {admin}: {error}"
        );
    }
    // Anything a failed start set off would reach the gateway soon; give it the chance.
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        sim.stats().get_session_calls,
        0,
        "no getSessionId from failed starts"
    );
    assert!(sim.received().is_empty());
    for record in payauth.guard_records() {
        assert_eq!(record["locked"], false, "{record}");
        assert_eq!(record["unconfirmed"], 0, "nothing left unsettled: {record}");
        assert_eq!(record["rejected"], 0, "{record}");
    }

    drop(taken);
    payauth.boot().await;
    assert_eq!(payauth.admin.to_string(), admin);
    let reply = payauth.deal().await;
    assert!(approved(&reply), "{}", describe(&reply));
    assert_eq!(payauth.locked_metric().await, Some(0));
    assert_eq!(payauth.admin_get("/ready").await.status, StatusCode::OK);
    for record in payauth.guard_records() {
        assert_eq!(record["locked"], false, "{record}");
    }
    assert_eq!(sim.stats().get_session_rejected, 0);
    payauth.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proven_credentials_fetch_sessions_in_parallel_and_unproven_ones_one_at_a_time() {
    const CONCURRENCY: u64 = 8;
    let sim = sim().await;
    let tap = Tap::start(sim.url()).await;
    // Scope `full` fetches nothing before the first deal.
    let payauth = Payauth::start(&Setup {
        concurrency: Some(CONCURRENCY as u32),
        scope: "full",
        ..Setup::new(tap.url())
    })
    .await;

    // Unproven: a burst of first deals, and only one getSessionId goes out while it is held.
    tap.hold();
    let mut burst = JoinSet::new();
    for _ in 0..8 {
        payauth.spawn_deal(&mut burst);
    }
    eventually("the first getSessionId", || {
        let arrivals = tap.counts().arrivals;
        async move { arrivals >= 1 }
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        tap.counts().arrivals,
        1,
        "unproven credentials probe alone: {:?}",
        tap.counts()
    );
    tap.release();
    for reply in join_all(burst).await {
        assert!(approved(&reply), "{}", describe(&reply));
    }

    // Proven: a burst that outruns the pool has several getSessionIds in flight at once.
    tap.hold();
    let mut burst = JoinSet::new();
    for _ in 0..24 {
        payauth.spawn_deal(&mut burst);
    }
    eventually("more than one getSessionId in flight", || {
        let in_flight = tap.counts().in_flight;
        async move { in_flight >= 2 }
    })
    .await;
    tap.release();
    for reply in join_all(burst).await {
        assert!(approved(&reply), "{}", describe(&reply));
    }
    assert!(
        tap.counts().max_in_flight <= CONCURRENCY,
        "{:?}",
        tap.counts()
    );
    let stats = sim.stats();
    assert_eq!(stats.get_session_rejected, 0);
    assert_eq!(stats.sessions_reused_refused, 0);
    payauth.shutdown().await;
}
