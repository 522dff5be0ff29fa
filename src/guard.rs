//! The lockout guard shared by both gateways: never spend the vendor's authentication budget.
//!
//! Number locks the caller's IP after six rejected authentications in a row, and only the
//! vendor's support can lift it; CreditGuard answers 405 to bad credentials. The guard decides
//! whether an authentication may be sent at all, and it remembers, on disk, what happened.
//!
//! # The rules
//!
//! * A **rejected** authentication (the gateway answered and said no) counts toward
//!   `auth_failure_budget` (1..=5, default 1). When the rejections in a row reach the budget the
//!   gateway is **locked**: no authentication is sent again until the credentials change (a new
//!   fingerprint) or an operator unlocks it.
//! * An attempt **in flight** may still turn out rejected, so it counts against the budget while it
//!   runs: with a budget of 1, attempts are strictly one at a time.
//! * An attempt whose outcome is **unknown** (sent, then the connection broke or timed out, or the
//!   process died while it was in flight) may have been counted by the gateway. It does not lock
//!   the gateway by itself (a network blip must not stop payments), but rejected plus unknown
//!   attempts in a row never exceed [`VENDOR_CEILING`] (5, one below the vendor's lock at 6): the
//!   attempt that would break that ceiling is refused and the gateway locks instead.
//! * An attempt that **was never sent** (connection refused, DNS) counts nowhere.
//! * Transport errors back off exponentially with full jitter (1 s doubling to 60 s); requests
//!   during the backoff fail fast with `auth_unavailable`.
//! * Every attempt is recorded on disk **before** it is sent, so a crash-looping process cannot
//!   spend the budget again. If the record cannot be written, no attempt is made (fail closed).
//! * Records are keyed by a [`Fingerprint`] of the credentials, never the credentials: a new token
//!   starts fresh, and going back to a token that was rejected finds it still locked.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Error, ErrorCode};
use crate::metrics::{AuthResult, GatewayMetrics};

/// Rejected plus unknown authentications in a row never exceed this: the vendor locks at six.
pub const VENDOR_CEILING: u32 = 5;

/// The largest configurable `auth_failure_budget`.
pub const MAX_BUDGET: u32 = VENDOR_CEILING;

const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Records kept per gateway file: old fingerprints beyond this are forgotten.
const MAX_RECORDS: usize = 32;

/// A one-way fingerprint of a gateway's credentials.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    /// Fingerprints the given credential parts (for example an account code and a token).
    pub fn of(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"payauth-guard-v1");
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        Self(out)
    }

    /// The fingerprint in hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..12])
    }
}

/// What the guard remembers about one set of credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardRecord {
    /// Rejected authentications in a row.
    pub rejected: u32,
    /// Attempts sent (or in flight) since the last success whose outcome is not known.
    pub unconfirmed: u32,
    /// No authentication may be sent.
    pub locked: bool,
    /// Why the gateway is locked (no secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where guard records live. The default is [`FileGuardStore`]; a shared backend lets several
/// replicas behind one egress IP share one budget.
pub trait GuardStore: Send + Sync + fmt::Debug + 'static {
    /// The record of `fingerprint` (a default record if there is none).
    fn load(&self, gateway: &str, fingerprint: Fingerprint) -> io::Result<GuardRecord>;
    /// Durably stores the record of `fingerprint`.
    fn save(&self, gateway: &str, fingerprint: Fingerprint, record: &GuardRecord)
        -> io::Result<()>;
}

/// Guard records in memory only: for tests and library users who accept losing them on restart.
#[derive(Debug, Default)]
pub struct MemoryGuardStore {
    records: Mutex<BTreeMap<(String, Fingerprint), GuardRecord>>,
}

impl GuardStore for MemoryGuardStore {
    fn load(&self, gateway: &str, fingerprint: Fingerprint) -> io::Result<GuardRecord> {
        Ok(lock(&self.records)
            .get(&(gateway.to_owned(), fingerprint))
            .cloned()
            .unwrap_or_default())
    }

    fn save(
        &self,
        gateway: &str,
        fingerprint: Fingerprint,
        record: &GuardRecord,
    ) -> io::Result<()> {
        lock(&self.records).insert((gateway.to_owned(), fingerprint), record.clone());
        Ok(())
    }
}

/// Guard records as one JSON file per gateway under the state directory, written atomically
/// (temporary file, fsync, rename).
#[derive(Debug)]
pub struct FileGuardStore {
    dir: PathBuf,
    write: Mutex<()>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct GuardFile {
    records: BTreeMap<String, GuardRecord>,
}

impl FileGuardStore {
    /// A store under `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            write: Mutex::new(()),
        })
    }

    fn path(&self, gateway: &str) -> PathBuf {
        self.dir.join(format!("guard-{gateway}.json"))
    }

    fn read(path: &Path) -> io::Result<GuardFile> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "the lockout record {} is corrupt ({e}); payauth will not guess how many \
                         authentications it holds. Check it, and delete it only if this gateway's \
                         credentials were never rejected",
                        path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(GuardFile::default()),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("cannot read the lockout record {}: {e}", path.display()),
            )),
        }
    }
}

impl GuardStore for FileGuardStore {
    fn load(&self, gateway: &str, fingerprint: Fingerprint) -> io::Result<GuardRecord> {
        let file = Self::read(&self.path(gateway))?;
        Ok(file
            .records
            .get(&fingerprint.to_hex())
            .cloned()
            .unwrap_or_default())
    }

    fn save(
        &self,
        gateway: &str,
        fingerprint: Fingerprint,
        record: &GuardRecord,
    ) -> io::Result<()> {
        let _serialised = lock(&self.write);
        let path = self.path(gateway);
        let mut file = Self::read(&path)?;
        file.records.insert(fingerprint.to_hex(), record.clone());
        // Forget the oldest clean records first; locked ones are worth keeping.
        while file.records.len() > MAX_RECORDS {
            let victim = file
                .records
                .iter()
                .find(|(_, r)| !r.locked)
                .or_else(|| file.records.iter().next())
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => file.records.remove(&k),
                None => break,
            };
        }
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        crate::config::write_atomically(&path, &bytes)
    }
}

/// Why the guard refused to let an authentication be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The gateway is locked.
    Locked(String),
    /// A transport error happened recently; the next attempt may be made after this long.
    Backoff(Duration),
    /// The guard's record could not be written, so no attempt is made.
    Storage,
}

impl Refusal {
    /// The contract error for a request that needed a credential.
    pub fn into_error(self, gateway: &str) -> Error {
        let gateway = gateway.to_owned();
        match self {
            Refusal::Locked(reason) => Error::new(
                ErrorCode::AuthLocked,
                gateway,
                format!(
                    "authentication is locked ({reason}); fix the credentials, \
                     then change the secret file or POST /admin/<gateway>/unlock"
                ),
            ),
            Refusal::Backoff(wait) => Error::new(
                ErrorCode::AuthUnavailable,
                gateway,
                format!(
                    "the last authentication failed in transport; next attempt in {} ms",
                    wait.as_millis()
                ),
            ),
            Refusal::Storage => Error::new(
                ErrorCode::AuthUnavailable,
                gateway,
                "the lockout guard cannot be persisted under the state dir; no authentication sent",
            ),
        }
    }
}

/// A snapshot of the guard's state, for `/ready` and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardStatus {
    /// The record of the current credentials.
    pub record: GuardRecord,
    /// Attempts in flight.
    pub in_flight: u32,
}

#[derive(Debug)]
struct Inner {
    fingerprint: Fingerprint,
    record: GuardRecord,
    in_flight: u32,
    transport_failures: u32,
    not_before: Option<Instant>,
}

/// The lockout guard of one gateway.
#[derive(Debug)]
pub struct AuthGuard {
    gateway: String,
    budget: u32,
    store: Arc<dyn GuardStore>,
    metrics: GatewayMetrics,
    inner: Mutex<Inner>,
    settled: Notify,
}

impl AuthGuard {
    /// Opens the guard of `gateway` for the credentials `fingerprint`, loading its record.
    pub fn open(
        gateway: &str,
        budget: u32,
        fingerprint: Fingerprint,
        store: Arc<dyn GuardStore>,
        metrics: GatewayMetrics,
    ) -> io::Result<Arc<Self>> {
        let budget = budget.clamp(1, MAX_BUDGET);
        let record = store.load(gateway, fingerprint)?;
        metrics.set_locked(record.locked);
        if record.locked {
            tracing::warn!(
                gateway,
                reason = record.reason.as_deref().unwrap_or(""),
                "gateway starts locked: a previous run recorded a rejected authentication"
            );
        }
        Ok(Arc::new(Self {
            gateway: gateway.to_owned(),
            budget,
            store,
            metrics,
            inner: Mutex::new(Inner {
                fingerprint,
                record,
                in_flight: 0,
                transport_failures: 0,
                not_before: None,
            }),
            settled: Notify::new(),
        }))
    }

    /// The configured budget.
    pub fn budget(&self) -> u32 {
        self.budget
    }

    /// Asks to send one authentication. Waits while other attempts in flight use up what the
    /// budget allows; refuses at once when locked, backing off or unable to persist.
    pub async fn begin(self: &Arc<Self>) -> Result<Attempt, Refusal> {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_begin() {
                Ok(Some(attempt)) => return Ok(attempt),
                Ok(None) => notified.await,
                Err(refusal) => return Err(refusal),
            }
        }
    }

    /// Like [`begin`](Self::begin) but answers `Ok(None)` instead of waiting.
    pub fn try_begin(self: &Arc<Self>) -> Result<Option<Attempt>, Refusal> {
        let mut inner = lock(&self.inner);
        if inner.record.locked {
            return Err(Refusal::Locked(
                inner
                    .record
                    .reason
                    .clone()
                    .unwrap_or_else(|| "rejected".into()),
            ));
        }
        if let Some(not_before) = inner.not_before {
            let now = Instant::now();
            if now < not_before {
                return Err(Refusal::Backoff(not_before - now));
            }
        }
        if inner.record.rejected + inner.in_flight >= self.budget {
            return Ok(None);
        }
        if inner.record.rejected + inner.record.unconfirmed >= VENDOR_CEILING {
            // Only reachable through unknown outcomes: lock rather than risk the sixth.
            self.lock_record(&mut inner, "too many authentications with unknown outcome");
            self.persist(&inner);
            return Err(Refusal::Locked(
                inner.record.reason.clone().unwrap_or_default(),
            ));
        }
        inner.record.unconfirmed += 1;
        if self
            .store
            .save(&self.gateway, inner.fingerprint, &inner.record)
            .is_err()
        {
            inner.record.unconfirmed -= 1;
            tracing::error!(gateway = %self.gateway, "cannot persist the lockout guard; authentication not sent");
            return Err(Refusal::Storage);
        }
        inner.in_flight += 1;
        Ok(Some(Attempt {
            guard: Arc::clone(self),
            fingerprint: inner.fingerprint,
            settled: false,
        }))
    }

    /// The credentials changed: from now on the record of `fingerprint` applies.
    pub fn change_credentials(&self, fingerprint: Fingerprint) {
        let mut inner = lock(&self.inner);
        if inner.fingerprint == fingerprint {
            return;
        }
        let record = match self.store.load(&self.gateway, fingerprint) {
            Ok(record) => record,
            Err(e) => {
                tracing::error!(gateway = %self.gateway, error = %e, "cannot read the lockout guard; treating new credentials as locked");
                GuardRecord {
                    locked: true,
                    reason: Some("guard state unreadable".into()),
                    ..GuardRecord::default()
                }
            }
        };
        inner.fingerprint = fingerprint;
        inner.record = record;
        inner.in_flight = 0;
        inner.transport_failures = 0;
        inner.not_before = None;
        self.metrics.set_locked(inner.record.locked);
        if inner.record.locked {
            tracing::warn!(gateway = %self.gateway, "new credentials were rejected before; gateway stays locked");
        } else {
            tracing::info!(gateway = %self.gateway, "credentials changed; authentication allowed again");
        }
        drop(inner);
        self.settled.notify_waiters();
    }

    /// An operator vouches for the credentials: forget rejections and unknown outcomes.
    pub fn unlock(&self) -> io::Result<()> {
        let mut inner = lock(&self.inner);
        let record = GuardRecord {
            unconfirmed: inner.in_flight,
            ..GuardRecord::default()
        };
        self.store.save(&self.gateway, inner.fingerprint, &record)?;
        inner.record = record;
        inner.transport_failures = 0;
        inner.not_before = None;
        self.metrics.set_locked(false);
        tracing::warn!(gateway = %self.gateway, "gateway unlocked by an operator");
        drop(inner);
        self.settled.notify_waiters();
        Ok(())
    }

    /// Forgets the transport backoff (after a change that may have fixed the transport, such as
    /// new certificate files). Rejections and unknown outcomes stay counted.
    pub fn clear_backoff(&self) {
        let mut inner = lock(&self.inner);
        inner.transport_failures = 0;
        inner.not_before = None;
        drop(inner);
        self.settled.notify_waiters();
    }

    /// Whether no authentication may be sent.
    pub fn is_locked(&self) -> bool {
        lock(&self.inner).record.locked
    }

    /// A snapshot of the state.
    pub fn status(&self) -> GuardStatus {
        let inner = lock(&self.inner);
        GuardStatus {
            record: inner.record.clone(),
            in_flight: inner.in_flight,
        }
    }

    fn settle(&self, fingerprint: Fingerprint, outcome: AttemptOutcome) {
        let mut inner = lock(&self.inner);
        if inner.fingerprint != fingerprint {
            drop(inner);
            self.settle_stale(fingerprint, outcome);
            self.settled.notify_waiters();
            return;
        }
        inner.in_flight = inner.in_flight.saturating_sub(1);
        match outcome {
            AttemptOutcome::Success => {
                self.metrics.auth_attempt(AuthResult::Success);
                inner.record = GuardRecord {
                    unconfirmed: inner.in_flight,
                    ..GuardRecord::default()
                };
                inner.transport_failures = 0;
                inner.not_before = None;
            }
            AttemptOutcome::Rejected => {
                self.metrics.auth_attempt(AuthResult::Rejected);
                inner.record.unconfirmed = inner.record.unconfirmed.saturating_sub(1);
                inner.record.rejected += 1;
                if inner.record.rejected >= self.budget {
                    let reason = format!(
                        "{} rejected authentication(s) in a row, budget {}",
                        inner.record.rejected, self.budget
                    );
                    self.lock_record(&mut inner, &reason);
                }
            }
            AttemptOutcome::NotSent => {
                self.metrics.auth_attempt(AuthResult::Error);
                inner.record.unconfirmed = inner.record.unconfirmed.saturating_sub(1);
                self.back_off(&mut inner);
            }
            AttemptOutcome::Unknown => {
                self.metrics.auth_attempt(AuthResult::Error);
                self.back_off(&mut inner);
            }
        }
        self.persist(&inner);
        drop(inner);
        self.settled.notify_waiters();
    }

    /// An attempt made with credentials that have since been replaced still updates their record.
    fn settle_stale(&self, fingerprint: Fingerprint, outcome: AttemptOutcome) {
        let Ok(mut record) = self.store.load(&self.gateway, fingerprint) else {
            return;
        };
        match outcome {
            AttemptOutcome::Success => record = GuardRecord::default(),
            AttemptOutcome::Rejected => {
                record.unconfirmed = record.unconfirmed.saturating_sub(1);
                record.rejected += 1;
                if record.rejected >= self.budget {
                    record.locked = true;
                    record.reason = Some("rejected".into());
                }
            }
            AttemptOutcome::NotSent => {
                record.unconfirmed = record.unconfirmed.saturating_sub(1);
            }
            AttemptOutcome::Unknown => {}
        }
        let _ = self.store.save(&self.gateway, fingerprint, &record);
    }

    fn lock_record(&self, inner: &mut Inner, reason: &str) {
        inner.record.locked = true;
        inner.record.reason = Some(reason.to_owned());
        self.metrics.set_locked(true);
        tracing::error!(
            gateway = %self.gateway,
            reason,
            "gateway locked: no authentication will be sent until the credentials change or an operator unlocks it"
        );
    }

    fn back_off(&self, inner: &mut Inner) {
        inner.transport_failures += 1;
        let exp = BACKOFF_BASE
            .saturating_mul(1u32 << (inner.transport_failures - 1).min(16))
            .min(BACKOFF_MAX);
        // Full jitter between half and all of the exponential step.
        let half = exp / 2;
        let jitter = half.mul_f64(fastrand::f64());
        let wait = half + jitter;
        inner.not_before = Some(Instant::now() + wait);
        tracing::warn!(gateway = %self.gateway, failures = inner.transport_failures,
            backoff_ms = wait.as_millis() as u64, "authentication failed in transport; backing off");
    }

    fn persist(&self, inner: &Inner) {
        if let Err(e) = self
            .store
            .save(&self.gateway, inner.fingerprint, &inner.record)
        {
            tracing::error!(gateway = %self.gateway, error = %e, "cannot persist the lockout guard");
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttemptOutcome {
    Success,
    Rejected,
    NotSent,
    Unknown,
}

/// Permission to send one authentication. Settle it with what happened; dropping it unsettled
/// counts as an unknown outcome (the request may have been sent).
#[derive(Debug)]
#[must_use = "an attempt must be settled with its outcome"]
pub struct Attempt {
    guard: Arc<AuthGuard>,
    fingerprint: Fingerprint,
    settled: bool,
}

impl Attempt {
    /// The fingerprint of the credentials this attempt is for.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The gateway issued a credential.
    pub fn success(mut self) {
        self.finish(AttemptOutcome::Success);
    }

    /// The gateway answered and rejected the credentials.
    pub fn rejected(mut self) {
        self.finish(AttemptOutcome::Rejected);
    }

    /// Nothing reached the gateway (connection refused, DNS failure).
    pub fn not_sent(mut self) {
        self.finish(AttemptOutcome::NotSent);
    }

    /// The gateway answered with an error that is no verdict on the credentials (busy, session
    /// generation failed, not enabled): it counts toward nothing, and the guard backs off.
    pub fn declined(mut self) {
        self.finish(AttemptOutcome::NotSent);
    }

    /// The request may have reached the gateway, but no usable answer came back.
    pub fn unknown(mut self) {
        self.finish(AttemptOutcome::Unknown);
    }

    fn finish(&mut self, outcome: AttemptOutcome) {
        if !self.settled {
            self.settled = true;
            self.guard.settle(self.fingerprint, outcome);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.finish(AttemptOutcome::Unknown);
    }
}

/// Locks a std mutex, recovering from poisoning: the guard's data stays consistent because every
/// update is a plain assignment.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn guard(budget: u32, store: Arc<dyn GuardStore>) -> Arc<AuthGuard> {
        AuthGuard::open(
            "gw",
            budget,
            Fingerprint::of(&[b"acct", b"token"]),
            store,
            GatewayMetrics::unregistered("gw"),
        )
        .expect("open")
    }

    #[tokio::test]
    async fn one_rejection_locks_with_the_default_budget() {
        let g = guard(1, Arc::new(MemoryGuardStore::default()));
        g.begin().await.expect("first attempt").rejected();
        assert!(matches!(g.try_begin(), Err(Refusal::Locked(_))));
        assert!(g.is_locked());
    }

    #[tokio::test]
    async fn lock_survives_a_restart_and_new_credentials_unlock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn GuardStore> = Arc::new(FileGuardStore::new(dir.path()).expect("store"));
        guard(1, Arc::clone(&store))
            .begin()
            .await
            .expect("attempt")
            .rejected();
        let reopened = guard(1, Arc::new(FileGuardStore::new(dir.path()).expect("store")));
        assert!(reopened.is_locked());
        reopened.change_credentials(Fingerprint::of(&[b"acct", b"new-token"]));
        assert!(!reopened.is_locked());
        // Going back to the rejected token finds it locked again.
        reopened.change_credentials(Fingerprint::of(&[b"acct", b"token"]));
        assert!(reopened.is_locked());
        reopened.unlock().expect("unlock");
        assert!(!reopened.is_locked());
    }

    #[tokio::test]
    async fn a_crash_in_flight_counts_as_unknown() {
        let store: Arc<dyn GuardStore> = Arc::new(MemoryGuardStore::default());
        let g = guard(1, Arc::clone(&store));
        let attempt = g.begin().await.expect("attempt");
        // Simulate a crash: the record on "disk" already counts the attempt.
        std::mem::forget(attempt);
        let reopened = guard(1, store);
        assert_eq!(reopened.status().record.unconfirmed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn transport_errors_back_off_and_then_allow() {
        let g = guard(1, Arc::new(MemoryGuardStore::default()));
        g.begin().await.expect("attempt").not_sent();
        assert!(matches!(g.try_begin(), Err(Refusal::Backoff(_))));
        tokio::time::sleep(Duration::from_secs(2)).await;
        g.begin().await.expect("after backoff").success();
        assert_eq!(g.status().record, GuardRecord::default());
    }

    #[tokio::test(start_paused = true)]
    async fn clearing_the_backoff_allows_an_attempt_at_once() {
        let g = guard(1, Arc::new(MemoryGuardStore::default()));
        g.begin().await.expect("attempt").not_sent();
        assert!(matches!(g.try_begin(), Err(Refusal::Backoff(_))));
        g.clear_backoff();
        assert!(matches!(g.try_begin(), Ok(Some(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_outcomes_lock_before_the_vendor_ceiling() {
        let g = guard(1, Arc::new(MemoryGuardStore::default()));
        for _ in 0..VENDOR_CEILING {
            g.begin().await.expect("attempt").unknown();
            tokio::time::sleep(BACKOFF_MAX).await;
        }
        assert!(matches!(g.try_begin(), Err(Refusal::Locked(_))));
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Start `n` concurrent attempts, which end with these outcomes (0 success, 1 rejected,
        /// 2 not sent, 3 unknown, 4 crash).
        Burst(Vec<u8>),
        Restart,
        Wait,
        Unlock,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            6 => proptest::collection::vec(0u8..5, 1..6).prop_map(Step::Burst),
            1 => Just(Step::Restart),
            2 => Just(Step::Wait),
            1 => Just(Step::Unlock),
        ]
    }

    proptest! {
        /// For any sequence of outcomes, restarts and concurrent attempts, the rejections in a row
        /// the gateway sees never exceed the budget, and rejected-or-unknown attempts in a row never
        /// exceed the vendor ceiling. Unlocks are operator actions and start a new run.
        #[test]
        fn budget_is_never_exceeded(budget in 1u32..=5, steps in proptest::collection::vec(step(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("rt");
            rt.block_on(async {
                let store: Arc<dyn GuardStore> = Arc::new(MemoryGuardStore::default());
                let mut g = guard(budget, Arc::clone(&store));
                // What the gateway counts: rejections since the last success.
                let mut rejected_in_row = 0u32;
                let mut failed_or_unknown_in_row = 0u32;
                for step in steps {
                    match step {
                        Step::Burst(outcomes) => {
                            let mut attempts = Vec::new();
                            for o in outcomes {
                                if let Ok(Some(a)) = g.try_begin() {
                                    attempts.push((a, o));
                                }
                            }
                            for (a, o) in attempts {
                                match o {
                                    0 => { rejected_in_row = 0; failed_or_unknown_in_row = 0; a.success() }
                                    1 => { rejected_in_row += 1; failed_or_unknown_in_row += 1; a.rejected() }
                                    2 => a.not_sent(),
                                    // Unknown and crash: assume the worst, the gateway rejected it.
                                    3 => { failed_or_unknown_in_row += 1; a.unknown() }
                                    _ => { failed_or_unknown_in_row += 1; std::mem::forget(a) }
                                }
                                prop_assert!(rejected_in_row <= budget, "{rejected_in_row} rejections in a row > budget {budget}");
                                prop_assert!(failed_or_unknown_in_row <= VENDOR_CEILING);
                            }
                        }
                        Step::Restart => g = guard(budget, Arc::clone(&store)),
                        Step::Wait => tokio::time::sleep(BACKOFF_MAX).await,
                        Step::Unlock => {
                            g.unlock().expect("unlock");
                            rejected_in_row = 0;
                            failed_or_unknown_in_row = 0;
                        }
                    }
                }
                Ok(())
            })?;
        }
    }
}
