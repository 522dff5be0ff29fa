//! The contract's Prometheus metrics: one struct of handles registered on a registry passed in.
//!
//! Metric names and labels are part of payauth's external contract (dashboards and alerts rely
//! on them). Labels only ever carry a gateway's configured name and fixed enum values, never
//! anything taken from a request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::error::ErrorCode;

/// How a request through payauth ended, the `outcome` label of `payauth_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Forwarded and answered by the gateway (whatever the gateway's answer said).
    Forwarded,
    /// Answered by payauth itself (the app's own authentication call).
    Local,
    /// Ended with one of payauth's errors.
    Error(ErrorCode),
}

impl Outcome {
    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Local => "local",
            Outcome::Error(code) => code.as_str(),
        }
    }
}

/// Result of an authentication attempt, the `result` label of `payauth_auth_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// The gateway issued a credential.
    Success,
    /// The gateway rejected the credentials.
    Rejected,
    /// Transport error or unusable answer.
    Error,
}

impl AuthResult {
    const fn as_str(self) -> &'static str {
        match self {
            AuthResult::Success => "success",
            AuthResult::Rejected => "rejected",
            AuthResult::Error => "error",
        }
    }
}

/// Why a credential was renewed, the `reason` label of `payauth_reauth_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReauthReason {
    /// Number: expired session key.
    Expired5030,
    /// Number: session key used from another IP.
    IpChanged5050,
    /// CreditGuard: session timeout.
    SessionTimeout456,
}

impl ReauthReason {
    /// The label value (the gateway's code).
    pub const fn as_str(self) -> &'static str {
        match self {
            ReauthReason::Expired5030 => "5030",
            ReauthReason::IpChanged5050 => "5050",
            ReauthReason::SessionTimeout456 => "456",
        }
    }
}

/// The buckets of `payauth_upstream_duration_seconds`.
const UPSTREAM_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The family `name` made by `make`, registered on `registry`.
fn family<M>(
    registry: &Registry,
    name: &str,
    help: &str,
    make: impl FnOnce(Opts) -> prometheus::Result<M>,
) -> prometheus::Result<M>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = make(Opts::new(name, help))?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// All of payauth's metric families.
#[derive(Debug, Clone)]
pub struct Metrics {
    calls: CallFamilies,
    credentials: CredentialFamilies,
}

/// The families about calls: requests, the gateway's answers, sessions and the shared store.
#[derive(Debug, Clone)]
struct CallFamilies {
    requests: IntCounterVec,
    upstream_duration: HistogramVec,
    replays: IntCounterVec,
    session_pool_size: IntGaugeVec,
    sessions_wasted: IntCounterVec,
    session_waits: IntCounterVec,
    clock_skew: GaugeVec,
    shared_store_up: IntGaugeVec,
    shared_store_errors: IntCounterVec,
}

/// The families about credentials: authentications, renewals, locks and keys.
#[derive(Debug, Clone)]
struct CredentialFamilies {
    auth_attempts: IntCounterVec,
    reauth: IntCounterVec,
    young_key_refusals: IntCounterVec,
    auth_locked: IntGaugeVec,
    credential_age: GaugeVec,
    token_expiry: GaugeVec,
    split_egress: IntGaugeVec,
}

impl CallFamilies {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gw = &["gateway"];
        Ok(Self {
            requests: family(
                registry,
                "payauth_requests_total",
                "Requests handled, by outcome.",
                |o| IntCounterVec::new(o, &["gateway", "outcome"]),
            )?,
            upstream_duration: family(
                registry,
                "payauth_upstream_duration_seconds",
                "Time from sending a call to the gateway to its answer's headers.",
                |o| {
                    HistogramVec::new(
                        HistogramOpts::from(o).buckets(UPSTREAM_BUCKETS.to_vec()),
                        gw,
                    )
                },
            )?,
            replays: family(
                registry,
                "payauth_replays_total",
                "Requests replayed once after the gateway refused them unprocessed.",
                |o| IntCounterVec::new(o, gw),
            )?,
            session_pool_size: family(
                registry,
                "payauth_session_pool_size",
                "CreditGuard sessions ready in the pool.",
                |o| IntGaugeVec::new(o, gw),
            )?,
            sessions_wasted: family(
                registry,
                "payauth_sessions_wasted_total",
                "CreditGuard sessions discarded unused before they expired.",
                |o| IntCounterVec::new(o, gw),
            )?,
            session_waits: family(
                registry,
                "payauth_session_waits_total",
                "CreditGuard calls that found no session ready and waited for a fetch.",
                |o| IntCounterVec::new(o, gw),
            )?,
            clock_skew: family(
                registry,
                "payauth_clock_skew_seconds",
                "The gateway's clock (its answers' Date) minus this host's, in seconds \
                     (about ±0.5 s); absent until an answer carried a Date.",
                |o| GaugeVec::new(o, gw),
            )?,
            shared_store_up: family(
                registry,
                "payauth_shared_store_up",
                "1 while the shared store (Redis) answered the gateway's last operation, 0 \
                     after a failure; absent without a shared store.",
                |o| IntGaugeVec::new(o, gw),
            )?,
            shared_store_errors: family(
                registry,
                "payauth_shared_store_errors_total",
                "Shared store operations that failed (unreachable, timed out), by operation.",
                |o| IntCounterVec::new(o, &["gateway", "op"]),
            )?,
        })
    }
}

impl CredentialFamilies {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gw = &["gateway"];
        Ok(Self {
            auth_attempts: family(
                registry,
                "payauth_auth_attempts_total",
                "Authentications sent to the gateway, by result.",
                |o| IntCounterVec::new(o, &["gateway", "result"]),
            )?,
            reauth: family(
                registry,
                "payauth_reauth_total",
                "Credential renewals caused by a gateway answer, by the gateway's code.",
                |o| IntCounterVec::new(o, &["gateway", "reason"]),
            )?,
            young_key_refusals: family(
                registry,
                "payauth_young_key_refusals_total",
                "Session keys the gateway refused (5030/5050) younger than \
                     renewal_min_key_age: a gateway anomaly that engages the renewal brake.",
                |o| IntCounterVec::new(o, gw),
            )?,
            auth_locked: family(
                registry,
                "payauth_auth_locked",
                "1 while the gateway is locked after a rejected authentication.",
                |o| IntGaugeVec::new(o, gw),
            )?,
            credential_age: family(
                registry,
                "payauth_credential_age_seconds",
                "Age of the credential currently in use.",
                |o| GaugeVec::new(o, gw),
            )?,
            token_expiry: family(
                registry,
                "payauth_token_expiry_timestamp_seconds",
                "When the gateway token expires (Unix seconds), where known.",
                |o| GaugeVec::new(o, gw),
            )?,
            split_egress: family(
                registry,
                "payauth_split_egress",
                "1 while the gateway's keys keep being refused 5050 moments after a 5050 \
                     renewal: one key leaving through two egress IPs.",
                |o| IntGaugeVec::new(o, gw),
            )?,
        })
    }
}

impl Metrics {
    /// Creates the metric families and registers them on `registry`.
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            calls: CallFamilies::new(registry)?,
            credentials: CredentialFamilies::new(registry)?,
        })
    }

    /// The handles of one gateway, labelled once so the hot path does no label lookup.
    pub fn gateway(&self, name: &str) -> GatewayMetrics {
        let l = &[name];
        let outcome = |o: Outcome| self.calls.requests.with_label_values(&[name, o.as_str()]);
        let attempt = |r: AuthResult| {
            self.credentials
                .auth_attempts
                .with_label_values(&[name, r.as_str()])
        };
        let reauth = |r: ReauthReason| {
            self.credentials
                .reauth
                .with_label_values(&[name, r.as_str()])
        };
        let handles = Handles {
            forwarded: outcome(Outcome::Forwarded),
            local: outcome(Outcome::Local),
            errors: self.calls.requests.clone(),
            upstream_duration: self.calls.upstream_duration.with_label_values(l),
            auth_success: attempt(AuthResult::Success),
            auth_rejected: attempt(AuthResult::Rejected),
            auth_error: attempt(AuthResult::Error),
            reauth_5030: reauth(ReauthReason::Expired5030),
            reauth_5050: reauth(ReauthReason::IpChanged5050),
            reauth_456: reauth(ReauthReason::SessionTimeout456),
            replays: self.calls.replays.with_label_values(l),
            young_key_refusals: self.credentials.young_key_refusals.with_label_values(l),
            shared_store_up: self.calls.shared_store_up.clone(),
            shared_store_errors: self.calls.shared_store_errors.clone(),
            auth_locked: self.credentials.auth_locked.with_label_values(l),
            session_pool_size: self.calls.session_pool_size.with_label_values(l),
            sessions_wasted: self.calls.sessions_wasted.with_label_values(l),
            credential_age: self.credentials.credential_age.with_label_values(l),
            token_expiry: self.credentials.token_expiry.with_label_values(l),
            clock_skew: self.calls.clock_skew.clone(),
            split_egress: self.credentials.split_egress.with_label_values(l),
            session_waits: self.calls.session_waits.with_label_values(l),
            credential_obtained_ms: AtomicU64::new(0),
            last_auth: AtomicU64::new(0),
            name: name.to_owned(),
        };
        // Families with a dynamic label are initialised so that dashboards see zeros.
        handles.auth_locked.set(0);
        handles.split_egress.set(0);
        GatewayMetrics(Arc::new(handles))
    }
}

#[derive(Debug)]
struct Handles {
    name: String,
    forwarded: IntCounter,
    local: IntCounter,
    errors: IntCounterVec,
    upstream_duration: Histogram,
    auth_success: IntCounter,
    auth_rejected: IntCounter,
    auth_error: IntCounter,
    reauth_5030: IntCounter,
    reauth_5050: IntCounter,
    reauth_456: IntCounter,
    replays: IntCounter,
    young_key_refusals: IntCounter,
    /// Labelled on first use: a process without a shared store exports none.
    shared_store_up: IntGaugeVec,
    shared_store_errors: IntCounterVec,
    auth_locked: IntGauge,
    session_pool_size: IntGauge,
    sessions_wasted: IntCounter,
    credential_age: Gauge,
    token_expiry: Gauge,
    /// Labelled on the first answer with a `Date`: no gauge says "no skew" before one came.
    clock_skew: GaugeVec,
    split_egress: IntGauge,
    session_waits: IntCounter,
    /// Unix milliseconds when the current credential was obtained, 0 = none.
    credential_obtained_ms: AtomicU64,
    /// The last authentication attempt: Unix milliseconds × 4 + its result (1 success,
    /// 2 rejected, 3 error); 0 = none yet.
    last_auth: AtomicU64,
}

/// What `GET /status` shows of a gateway's metrics (no secrets, no label lookups).
#[derive(Debug, Clone, serde::Serialize)]
pub struct MetricsSnapshot {
    /// Age of the credential in use, in seconds, if one was obtained.
    pub credential_age_seconds: Option<f64>,
    /// When the token expires (Unix seconds), where known.
    pub token_expires_at: Option<i64>,
    /// The last authentication attempt (`success`, `rejected`, `error`), if any.
    pub last_auth_result: Option<&'static str>,
    /// When it ended (Unix milliseconds).
    pub last_auth_at_ms: Option<u64>,
    /// Authentication attempts since start, by result.
    pub auth_attempts: AuthCounts,
    /// Sessions pooled (CreditGuard).
    pub session_pool_size: i64,
    /// Requests since start: forwarded, answered locally.
    pub requests_forwarded: u64,
    /// Requests answered locally (the app's own login calls).
    pub requests_local: u64,
}

/// Authentication attempts by result.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct AuthCounts {
    /// Attempts the gateway accepted.
    pub success: u64,
    /// Attempts the gateway rejected.
    pub rejected: u64,
    /// Attempts that failed in transport or got an unusable answer.
    pub error: u64,
}

/// Registers what describes the process rather than a gateway: `payauth_build_info{version,
/// commit}` (always 1) and, on Linux, the standard `process_*` metrics (CPU seconds, resident
/// and virtual memory, open and maximum file descriptors, start time).
pub fn register_process(registry: &Registry) -> prometheus::Result<()> {
    let build = prometheus::IntGaugeVec::new(
        Opts::new(
            "payauth_build_info",
            "The running payauth: its version and the git commit it was built from (always 1).",
        ),
        &["version", "commit"],
    )?;
    build
        .with_label_values(&[crate::VERSION, crate::COMMIT])
        .set(1);
    registry.register(Box::new(build))?;
    #[cfg(target_os = "linux")]
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    Ok(())
}

/// One gateway's metric handles. Cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayMetrics(Arc<Handles>);

impl GatewayMetrics {
    /// Handles registered on a private registry: for library users who do not export metrics,
    /// and for tests.
    pub fn unregistered(gateway: &str) -> Self {
        // Registering fresh families on a new, empty registry cannot collide.
        #[allow(clippy::expect_used)]
        Metrics::new(&Registry::new())
            .expect("fresh registry")
            .gateway(gateway)
    }

    /// Counts a finished request.
    pub fn request(&self, outcome: Outcome) {
        match outcome {
            Outcome::Forwarded => self.0.forwarded.inc(),
            Outcome::Local => self.0.local.inc(),
            Outcome::Error(code) => self
                .0
                .errors
                .with_label_values(&[self.0.name.as_str(), code.as_str()])
                .inc(),
        }
    }

    /// Counts a finished request by how it ended and hands back its result without the outcome.
    pub fn count<R>(&self, result: Result<(R, Outcome), crate::Error>) -> Result<R, crate::Error> {
        let outcome = match &result {
            Ok((_, outcome)) => *outcome,
            Err(e) => Outcome::Error(e.code()),
        };
        self.request(outcome);
        result.map(|(response, _)| response)
    }

    /// Records the time a gateway took to answer.
    pub fn upstream_duration(&self, seconds: f64) {
        self.0.upstream_duration.observe(seconds);
    }

    /// Counts an authentication attempt.
    pub fn auth_attempt(&self, result: AuthResult) {
        let code = match result {
            AuthResult::Success => {
                self.0.auth_success.inc();
                1
            }
            AuthResult::Rejected => {
                self.0.auth_rejected.inc();
                2
            }
            AuthResult::Error => {
                self.0.auth_error.inc();
                3
            }
        };
        self.0
            .last_auth
            .store(unix_millis().saturating_mul(4) | code, Ordering::Relaxed);
    }

    /// What `GET /status` shows of these metrics.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let h = &self.0;
        let obtained = h.credential_obtained_ms.load(Ordering::Relaxed);
        let last = h.last_auth.load(Ordering::Relaxed);
        let last_auth_result = match last & 3 {
            1 => Some(AuthResult::Success.as_str()),
            2 => Some(AuthResult::Rejected.as_str()),
            3 => Some(AuthResult::Error.as_str()),
            _ => None,
        };
        MetricsSnapshot {
            credential_age_seconds: (obtained != 0)
                .then(|| unix_millis().saturating_sub(obtained) as f64 / 1000.0),
            token_expires_at: self.token_expiry(),
            last_auth_result,
            last_auth_at_ms: last_auth_result.map(|_| last / 4),
            auth_attempts: AuthCounts {
                success: h.auth_success.get(),
                rejected: h.auth_rejected.get(),
                error: h.auth_error.get(),
            },
            session_pool_size: h.session_pool_size.get(),
            requests_forwarded: h.forwarded.get(),
            requests_local: h.local.get(),
        }
    }

    /// Counts a renewal caused by a gateway answer.
    pub fn reauth(&self, reason: ReauthReason) {
        match reason {
            ReauthReason::Expired5030 => self.0.reauth_5030.inc(),
            ReauthReason::IpChanged5050 => self.0.reauth_5050.inc(),
            ReauthReason::SessionTimeout456 => self.0.reauth_456.inc(),
        }
    }

    /// The shared store answered an operation (`Ok`) or failed it (`Err`, with the operation).
    pub fn shared_store(&self, result: Result<(), &str>) {
        let up = self
            .0
            .shared_store_up
            .with_label_values(&[self.0.name.as_str()]);
        match result {
            Ok(()) => up.set(1),
            Err(op) => {
                up.set(0);
                self.0
                    .shared_store_errors
                    .with_label_values(&[self.0.name.as_str(), op])
                    .inc();
            }
        }
    }

    /// Counts a session key refused younger than the renewal brake's minimum age.
    pub fn young_key_refused(&self) {
        self.0.young_key_refusals.inc();
    }

    /// Counts a replay.
    pub fn replay(&self) {
        self.0.replays.inc();
    }

    /// Sets the locked gauge.
    pub fn set_locked(&self, locked: bool) {
        self.0.auth_locked.set(i64::from(locked));
    }

    /// Sets the number of pooled sessions.
    pub fn set_pool_size(&self, size: usize) {
        self.0
            .session_pool_size
            .set(i64::try_from(size).unwrap_or(i64::MAX));
    }

    /// Counts sessions discarded unused.
    pub fn sessions_wasted(&self, count: u64) {
        self.0.sessions_wasted.inc_by(count);
    }

    /// Notes that a new credential was obtained now.
    pub fn credential_obtained(&self) {
        self.0
            .credential_obtained_ms
            .store(unix_millis(), Ordering::Relaxed);
    }

    /// Sets the token's expiry (Unix seconds).
    pub fn set_token_expiry(&self, unix_seconds: f64) {
        self.0.token_expiry.set(unix_seconds);
    }

    /// The token's expiry (Unix seconds), if known.
    pub fn token_expiry(&self) -> Option<i64> {
        let at = self.0.token_expiry.get();
        (at > 0.0).then_some(at as i64)
    }

    /// Counts a call that found no session ready.
    pub fn session_wait(&self) {
        self.0.session_waits.inc();
    }

    /// Calls that found no session ready, since start.
    pub fn session_waits(&self) -> u64 {
        self.0.session_waits.get()
    }

    /// Sets the split-egress gauge.
    pub fn set_split_egress(&self, split: bool) {
        self.0.split_egress.set(i64::from(split));
    }

    /// Whether the gateway is marked as split egress.
    pub fn split_egress(&self) -> bool {
        self.0.split_egress.get() != 0
    }

    /// Sets the gateway's clock skew (its time minus ours, in seconds).
    pub fn set_clock_skew(&self, seconds: f64) {
        self.0
            .clock_skew
            .with_label_values(&[self.0.name.as_str()])
            .set(seconds);
    }

    /// The gateway's clock skew, once an answer told it.
    pub fn clock_skew(&self) -> Option<f64> {
        let family = prometheus::core::Collector::collect(&self.0.clock_skew);
        let metric = family.first()?.get_metric().first()?;
        Some(metric.get_gauge().get_value())
    }

    /// Updates gauges that depend on the current time; called before each scrape.
    pub fn refresh(&self) {
        let obtained = self.0.credential_obtained_ms.load(Ordering::Relaxed);
        if obtained != 0 {
            let age = unix_millis().saturating_sub(obtained) as f64 / 1000.0;
            self.0.credential_age.set(age);
        }
    }

    /// The gateway's name.
    pub fn gateway(&self) -> &str {
        &self.0.name
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail for I/O reasons; a failure would be a bug in a metric.
    if let Err(e) = prometheus::TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_are_exported() {
        let registry = Registry::new();
        let metrics = Metrics::new(&registry).expect("register");
        let gw = metrics.gateway("number");
        gw.request(Outcome::Forwarded);
        gw.request(Outcome::Error(ErrorCode::AuthLocked));
        gw.upstream_duration(0.01);
        gw.auth_attempt(AuthResult::Success);
        gw.reauth(ReauthReason::Expired5030);
        gw.replay();
        gw.set_locked(true);
        gw.set_pool_size(3);
        gw.sessions_wasted(1);
        gw.credential_obtained();
        gw.set_token_expiry(1.0);
        gw.refresh();
        let text = render(&registry);
        for name in [
            "payauth_requests_total{gateway=\"number\",outcome=\"forwarded\"} 1",
            "payauth_requests_total{gateway=\"number\",outcome=\"auth_locked\"} 1",
            "payauth_upstream_duration_seconds_bucket",
            "payauth_auth_attempts_total{gateway=\"number\",result=\"success\"} 1",
            "payauth_reauth_total{gateway=\"number\",reason=\"5030\"} 1",
            "payauth_replays_total{gateway=\"number\"} 1",
            "payauth_auth_locked{gateway=\"number\"} 1",
            "payauth_session_pool_size{gateway=\"number\"} 3",
            "payauth_sessions_wasted_total{gateway=\"number\"} 1",
            "payauth_credential_age_seconds{gateway=\"number\"}",
            "payauth_token_expiry_timestamp_seconds{gateway=\"number\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
