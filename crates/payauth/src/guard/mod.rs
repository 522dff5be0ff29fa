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

mod record;
pub mod state;
mod store;

pub use record::{rules, Fingerprint, GuardLimits, GuardRecord};
pub use state::{
    Attempt, AttemptOutcome, Begun, CredentialState, GuardStatus, Ledger, Published, Refusal,
    SharedState, StateFuture,
};
pub use store::{FileGuardStore, GuardStore, MemoryGuardStore};

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::GatewayMetrics;
use crate::sync::lock;

/// Rejected plus unknown authentications in a row never exceed this: the vendor locks at six.
pub const VENDOR_CEILING: u32 = 5;

/// The largest configurable `auth_failure_budget`.
pub const MAX_BUDGET: u32 = VENDOR_CEILING;

const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct GuardInner {
    fingerprint: Fingerprint,
    record: GuardRecord,
    in_flight: u32,
    transport_failures: u32,
    not_before: Option<Instant>,
    /// Bumped by every change to `record`; the writer knows what it has persisted.
    version: u64,
}

/// The lockout guard of one gateway; see the [module docs](self).
#[derive(Debug)]
pub struct AuthGuard {
    /// This guard, for the attempts it hands out through [`CredentialState::begin`].
    me: Weak<AuthGuard>,
    /// The generation of the newest credential published.
    generations: AtomicU64,
    gateway: String,
    limits: GuardLimits,
    store: Arc<dyn GuardStore>,
    metrics: GatewayMetrics,
    inner: Mutex<GuardInner>,
    settled: Notify,
    /// One write at a time, off the tokio workers; a write carries every change made before it
    /// started (group commit), so attempts reserved together cost one write.
    writer: tokio::sync::Mutex<Written>,
}

/// What [`AuthGuard::reserve`] decided.
enum Reserve {
    Reserved(Fingerprint, u64),
    Wait,
    Refused(Refusal),
    LockedNow(Refusal, Fingerprint, u64),
}

/// What the writer last stored.
#[derive(Debug, Default)]
struct Written {
    fingerprint: Option<Fingerprint>,
    version: u64,
}

impl AuthGuard {
    /// Opens the guard of `gateway` for the credentials `fingerprint`, loading its record.
    pub fn open(
        gateway: &str,
        limits: GuardLimits,
        fingerprint: Fingerprint,
        store: Arc<dyn GuardStore>,
        metrics: GatewayMetrics,
    ) -> io::Result<Arc<Self>> {
        let limits = GuardLimits {
            budget: limits.budget.clamp(1, MAX_BUDGET),
            proven_concurrency: limits.proven_concurrency.max(1),
        };
        let mut record = store.load(gateway, fingerprint)?;
        rules::reopen(&mut record);
        metrics.set_locked(record.locked);
        report_on_open(gateway, &record);
        Ok(Arc::new_cyclic(|me| Self {
            me: me.clone(),
            generations: AtomicU64::new(0),
            gateway: gateway.to_owned(),
            limits,
            store,
            metrics,
            inner: Mutex::new(GuardInner {
                fingerprint,
                record,
                in_flight: 0,
                transport_failures: 0,
                not_before: None,
                version: 0,
            }),
            settled: Notify::new(),
            writer: tokio::sync::Mutex::new(Written::default()),
        }))
    }

    /// The configured budget.
    pub fn budget(&self) -> u32 {
        self.limits.budget
    }

    /// Asks to send one authentication. Waits while attempts in flight use up what the rules
    /// allow; refuses at once when locked, backing off or unable to persist. The attempt is on
    /// disk when this returns.
    pub async fn begin(self: &Arc<Self>) -> Result<Attempt, Refusal> {
        loop {
            let notified = self.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_begin().await {
                Ok(Some(attempt)) => return Ok(attempt),
                Ok(None) => notified.await,
                Err(refusal) => return Err(refusal),
            }
        }
    }

    /// Like [`begin`](Self::begin) but answers `Ok(None)` instead of waiting.
    pub async fn try_begin(self: &Arc<Self>) -> Result<Option<Attempt>, Refusal> {
        let (fingerprint, version) = match self.reserve() {
            Reserve::Reserved(fingerprint, version) => (fingerprint, version),
            Reserve::Wait => return Ok(None),
            Reserve::Refused(refusal) => return Err(refusal),
            Reserve::LockedNow(refusal, fingerprint, version) => {
                // Best effort: the lock is also re-derived from the record on restart.
                let _ = self.persist(fingerprint, version).await;
                return Err(refusal);
            }
        };
        let attempt = Attempt::new(Arc::clone(self) as Arc<dyn Ledger>, fingerprint);
        if self.persist(fingerprint, version).await.is_err() {
            tracing::error!(gateway = %self.gateway, "cannot persist the lockout guard; authentication not sent");
            attempt.disarm();
            let _ = self.settle(fingerprint, AttemptOutcome::NotSent);
            return Err(Refusal::Storage);
        }
        Ok(Some(attempt))
    }

    /// Applies the rules under the lock (never held across an await).
    fn reserve(&self) -> Reserve {
        let mut inner = lock(&self.inner);
        if inner.record.locked {
            return Reserve::Refused(self.locked_refusal(&inner));
        }
        if let Some(not_before) = inner.not_before {
            let now = Instant::now();
            if now < not_before {
                return Reserve::Refused(Refusal::Backoff(not_before - now));
            }
        }
        match rules::admit(&inner.record, inner.in_flight, self.limits) {
            rules::Admit::Wait => Reserve::Wait,
            rules::Admit::Lock(reason) => {
                self.lock_record(&mut inner, reason);
                Reserve::LockedNow(
                    self.locked_refusal(&inner),
                    inner.fingerprint,
                    inner.version,
                )
            }
            rules::Admit::Send => {
                rules::reserve(&mut inner.record);
                inner.in_flight += 1;
                inner.version += 1;
                Reserve::Reserved(inner.fingerprint, inner.version)
            }
        }
    }

    /// Writes the record of `fingerprint` if the store holds an older version than `version`.
    /// Runs the write on the blocking pool; concurrent callers share one write.
    async fn persist(&self, fingerprint: Fingerprint, version: u64) -> io::Result<()> {
        let mut persisted = self.writer.lock().await;
        let (record, latest) = {
            let inner = lock(&self.inner);
            if inner.fingerprint != fingerprint {
                // The credentials changed since: their record was written when it changed.
                return Ok(());
            }
            if persisted.fingerprint == Some(fingerprint) && persisted.version >= version {
                return Ok(());
            }
            (inner.record.clone(), inner.version)
        };
        let store = Arc::clone(&self.store);
        let gateway = self.gateway.clone();
        tokio::task::spawn_blocking(move || store.save(&gateway, fingerprint, &record))
            .await
            .map_err(io::Error::other)??;
        *persisted = Written {
            fingerprint: Some(fingerprint),
            version: latest,
        };
        Ok(())
    }

    /// The credentials changed: from now on the record of `fingerprint` applies. (Reads the
    /// record once, outside the guard's lock; credentials change rarely.)
    pub fn change_credentials(&self, fingerprint: Fingerprint) {
        if lock(&self.inner).fingerprint == fingerprint {
            return;
        }
        let mut record = match self.store.load(&self.gateway, fingerprint) {
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
        rules::reopen(&mut record);
        let mut inner = lock(&self.inner);
        inner.fingerprint = fingerprint;
        inner.record = record;
        inner.in_flight = 0;
        inner.transport_failures = 0;
        inner.not_before = None;
        inner.version += 1;
        self.metrics.set_locked(inner.record.locked);
        if inner.record.locked {
            tracing::warn!(gateway = %self.gateway, "new credentials were rejected before; gateway stays locked");
        } else {
            tracing::info!(gateway = %self.gateway, "credentials changed; authentication allowed again");
        }
        drop(inner);
        self.settled.notify_waiters();
    }

    /// Resolves once no attempt is in flight (or after `limit`).
    pub async fn wait_idle(&self, limit: std::time::Duration) {
        crate::sync::wait_until(&self.settled, limit, || lock(&self.inner).in_flight == 0).await;
    }

    /// An operator vouches for the credentials: forget rejections and unknown outcomes. The
    /// credentials are unproven until an attempt succeeds.
    pub async fn unlock(&self) -> io::Result<()> {
        let (fingerprint, version) = {
            let mut inner = lock(&self.inner);
            inner.record = GuardRecord {
                unconfirmed: inner.in_flight,
                ..GuardRecord::default()
            };
            inner.transport_failures = 0;
            inner.not_before = None;
            inner.version += 1;
            (inner.fingerprint, inner.version)
        };
        self.persist(fingerprint, version).await?;
        self.metrics.set_locked(false);
        tracing::warn!(gateway = %self.gateway, "gateway unlocked by an operator");
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
            backoff: remaining(inner.not_before),
        }
    }

    fn locked_refusal(&self, inner: &GuardInner) -> Refusal {
        Refusal::Locked(
            inner
                .record
                .reason
                .clone()
                .unwrap_or_else(|| "rejected".into()),
        )
    }

    /// Applies `outcome` in memory; returns what to persist, if anything.
    fn settle(&self, fingerprint: Fingerprint, outcome: AttemptOutcome) -> Option<u64> {
        if let Some(result) = outcome.result() {
            self.metrics.auth_attempt(result);
        }
        let mut inner = lock(&self.inner);
        if inner.fingerprint != fingerprint {
            drop(inner);
            self.settle_stale(fingerprint, outcome);
            self.settled.notify_waiters();
            return None;
        }
        inner.in_flight = inner.in_flight.saturating_sub(1);
        let in_flight = inner.in_flight;
        if let Some(reason) = rules::settle(&mut inner.record, in_flight, self.limits, outcome) {
            self.announce_lock(&reason);
        }
        match outcome {
            AttemptOutcome::Success => {
                inner.transport_failures = 0;
                inner.not_before = None;
            }
            AttemptOutcome::NotSent | AttemptOutcome::Unknown => self.back_off(&mut inner),
            AttemptOutcome::Rejected | AttemptOutcome::Withdrawn => {}
        }
        inner.version += 1;
        let version = inner.version;
        drop(inner);
        self.settled.notify_waiters();
        Some(version)
    }

    /// An attempt made with credentials that have since been replaced still updates their
    /// record, by the same rules (nothing of theirs is in flight any more).
    fn settle_stale(&self, fingerprint: Fingerprint, outcome: AttemptOutcome) {
        let Ok(mut record) = self.store.load(&self.gateway, fingerprint) else {
            return;
        };
        rules::settle(&mut record, 0, self.limits, outcome);
        let _ = self.store.save(&self.gateway, fingerprint, &record);
    }

    fn lock_record(&self, inner: &mut GuardInner, reason: &str) {
        inner.record.locked = true;
        inner.record.reason = Some(reason.to_owned());
        inner.version += 1;
        self.announce_lock(reason);
    }

    fn announce_lock(&self, reason: &str) {
        self.metrics.set_locked(true);
        tracing::error!(
            gateway = %self.gateway,
            reason,
            "gateway locked: no authentication will be sent until the credentials change or an operator unlocks it"
        );
    }

    fn back_off(&self, inner: &mut GuardInner) {
        inner.transport_failures += 1;
        let wait = transport_backoff(inner.transport_failures);
        inner.not_before = Some(Instant::now() + wait);
        tracing::warn!(gateway = %self.gateway, failures = inner.transport_failures,
            backoff_ms = wait.as_millis() as u64, "authentication failed in transport; backing off");
    }
}

/// What is left of a backoff that ends at `not_before`, if any.
pub(crate) fn remaining(not_before: Option<Instant>) -> Option<Duration> {
    not_before
        .map(|at| at.saturating_duration_since(Instant::now()))
        .filter(|left| !left.is_zero())
}

/// How long to wait before the next attempt after `failures` transport failures in a row: 1 s
/// doubling to 60 s, with full jitter between half and all of the step.
pub(crate) fn transport_backoff(failures: u32) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Says at start what an earlier run left in the record, and what to do about it.
fn report_on_open(gateway: &str, record: &GuardRecord) {
    if record.locked {
        tracing::warn!(
            gateway,
            reason = record.reason.as_deref().unwrap_or(""),
            rejected = record.rejected,
            unknown = record.unconfirmed,
            "gateway starts locked. If it was locked by rejected authentications, fix the \
             credentials (a new secret file unlocks); if by unknown outcomes (no rejection), \
             check the gateway is reachable, then POST /admin/<gateway>/unlock"
        );
    } else if record.rejected > 0 || record.unconfirmed > 0 {
        tracing::warn!(
            gateway,
            rejected = record.rejected,
            unknown = record.unconfirmed,
            "an earlier run left rejected or unknown-outcome authentications on record; they \
             count toward the lockout until an authentication succeeds"
        );
    }
}

impl Ledger for AuthGuard {
    fn gateway(&self) -> &str {
        &self.gateway
    }

    fn settle(&self, fingerprint: Fingerprint, outcome: AttemptOutcome) -> StateFuture<'_, ()> {
        Box::pin(async move {
            if let Some(version) = AuthGuard::settle(self, fingerprint, outcome) {
                if let Err(e) = self.persist(fingerprint, version).await {
                    tracing::error!(gateway = %self.gateway, error = %e, "cannot persist the lockout guard");
                }
            }
        })
    }

    fn abandon(&self, fingerprint: Fingerprint) {
        // The record on disk already counts this attempt as unconfirmed: an unknown outcome
        // needs no write, only the in-memory bookkeeping (and the backoff).
        let _ = AuthGuard::settle(self, fingerprint, AttemptOutcome::Unknown);
    }
}

impl CredentialState for AuthGuard {
    fn gateway(&self) -> &str {
        &self.gateway
    }

    fn begin(&self, _seen: Option<u64>) -> StateFuture<'_, Result<Begun, Refusal>> {
        // In one process, a newer key is handed over by the layer's single flight before it
        // asks for an attempt: there is never one to adopt here.
        Box::pin(async move {
            let me = self.me.upgrade().ok_or(Refusal::Storage)?;
            me.begin().await.map(Begun::Attempt)
        })
    }

    fn publish(&self, _sealed: Vec<u8>) -> StateFuture<'_, io::Result<u64>> {
        // The credential itself stays with the layer that uses it; only its generation is kept.
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        Box::pin(async move { Ok(generation) })
    }

    fn change_credentials(&self, fingerprint: Fingerprint) {
        AuthGuard::change_credentials(self, fingerprint);
    }

    fn unlock(&self) -> StateFuture<'_, io::Result<()>> {
        Box::pin(AuthGuard::unlock(self))
    }

    fn clear_backoff(&self) {
        AuthGuard::clear_backoff(self);
    }

    fn is_locked(&self) -> bool {
        AuthGuard::is_locked(self)
    }

    fn status(&self) -> GuardStatus {
        AuthGuard::status(self)
    }

    fn wait_idle(&self, limit: std::time::Duration) -> StateFuture<'_, ()> {
        Box::pin(AuthGuard::wait_idle(self, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn guard(budget: u32, store: Arc<dyn GuardStore>) -> Arc<AuthGuard> {
        AuthGuard::open(
            "gw",
            GuardLimits::serial(budget),
            Fingerprint::of(&[b"acct", b"token"]),
            store,
            GatewayMetrics::unregistered("gw"),
        )
        .expect("open")
    }

    #[tokio::test]
    async fn one_rejection_locks_with_the_default_budget() {
        let g = guard(1, Arc::new(MemoryGuardStore::default()));
        g.begin().await.expect("first attempt").rejected().await;
        assert!(matches!(g.try_begin().await, Err(Refusal::Locked(_))));
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
            .rejected()
            .await;
        let reopened = guard(1, Arc::new(FileGuardStore::new(dir.path()).expect("store")));
        assert!(reopened.is_locked());
        reopened.change_credentials(Fingerprint::of(&[b"acct", b"new-token"]));
        assert!(!reopened.is_locked());
        // Going back to the rejected token finds it locked again.
        reopened.change_credentials(Fingerprint::of(&[b"acct", b"token"]));
        assert!(reopened.is_locked());
        reopened.unlock().await.expect("unlock");
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
        g.begin().await.expect("attempt").not_sent().await;
        assert!(matches!(g.try_begin().await, Err(Refusal::Backoff(_))));
        tokio::time::sleep(Duration::from_secs(2)).await;
        g.begin().await.expect("after backoff").success().await;
        assert_eq!(
            g.status().record,
            GuardRecord {
                proven: true,
                ..GuardRecord::default()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_withdrawn_attempt_is_released_without_a_failure() {
        let metrics = GatewayMetrics::unregistered("gw");
        let g = AuthGuard::open(
            "gw",
            GuardLimits::serial(1),
            Fingerprint::of(&[b"acct", b"token"]),
            Arc::new(MemoryGuardStore::default()),
            metrics.clone(),
        )
        .expect("open");
        g.begin().await.expect("attempt").withdrawn().await;
        let status = g.status();
        assert_eq!(status.record, GuardRecord::default(), "nothing counted");
        assert_eq!((status.in_flight, status.backoff), (0, None), "no backoff");
        let counts = metrics.snapshot().auth_attempts;
        assert_eq!((counts.success, counts.rejected, counts.error), (0, 0, 0));
        assert!(
            matches!(g.try_begin().await, Ok(Some(_))),
            "the next one goes at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn clearing_the_backoff_allows_an_attempt_at_once() {
        let g = guard(1, Arc::new(MemoryGuardStore::default()));
        g.begin().await.expect("attempt").not_sent().await;
        assert!(matches!(g.try_begin().await, Err(Refusal::Backoff(_))));
        g.clear_backoff();
        assert!(matches!(g.try_begin().await, Ok(Some(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_outcomes_lock_before_the_vendor_ceiling() {
        let g = guard(1, Arc::new(MemoryGuardStore::default()));
        for _ in 0..VENDOR_CEILING {
            g.begin().await.expect("attempt").unknown().await;
            tokio::time::sleep(BACKOFF_MAX).await;
        }
        assert!(matches!(g.try_begin().await, Err(Refusal::Locked(_))));
    }

    fn guard_with(limits: GuardLimits, store: Arc<dyn GuardStore>) -> Arc<AuthGuard> {
        AuthGuard::open(
            "gw",
            limits,
            Fingerprint::of(&[b"acct", b"token"]),
            store,
            GatewayMetrics::unregistered("gw"),
        )
        .expect("open")
    }

    #[tokio::test]
    async fn proven_credentials_fetch_in_parallel_and_a_rejection_stops_new_ones() {
        let limits = GuardLimits {
            budget: 1,
            proven_concurrency: 4,
        };
        let g = guard_with(limits, Arc::new(MemoryGuardStore::default()));
        // Unproven: one at a time.
        let first = g.try_begin().await.expect("allowed").expect("first");
        assert!(g.try_begin().await.expect("no refusal").is_none());
        first.success().await;
        // Proven: up to four at once.
        let mut flying = Vec::new();
        for _ in 0..4 {
            flying.push(g.try_begin().await.expect("allowed").expect("proven"));
        }
        assert!(g.try_begin().await.expect("no refusal").is_none());
        // The first rejection stops new attempts at once, and the rest count as what they are.
        flying.pop().expect("one").rejected().await;
        assert!(g.is_locked());
        assert!(matches!(g.try_begin().await, Err(Refusal::Locked(_))));
        for attempt in flying {
            attempt.rejected().await;
        }
        assert_eq!(g.status().record.rejected, 4);
    }

    #[tokio::test]
    async fn an_unknown_outcome_makes_proven_credentials_unproven() {
        let limits = GuardLimits {
            budget: 2,
            proven_concurrency: 4,
        };
        let g = guard_with(limits, Arc::new(MemoryGuardStore::default()));
        g.begin().await.expect("first").success().await;
        let a = g.try_begin().await.expect("allowed").expect("a");
        let b = g.try_begin().await.expect("allowed").expect("b");
        drop(a); // a crash-like unknown outcome
        assert!(!g.status().record.proven);
        assert!(
            !matches!(g.try_begin().await, Ok(Some(_))),
            "no new attempt beside b"
        );
        b.not_sent().await;
        assert!(!g.status().record.proven);
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// Ask for one attempt.
        Begin,
        /// Settle the attempt at this index (modulo the attempts in flight) with an outcome (0
        /// success, 1 rejected, 2 not sent, 3 unknown, 4 crash: forgotten without settling).
        Settle(usize, u8),
        Restart,
        Wait,
        Unlock,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            5 => Just(Step::Begin),
            5 => (0usize..8, 0u8..5).prop_map(|(i, o)| Step::Settle(i, o)),
            1 => Just(Step::Restart),
            2 => Just(Step::Wait),
            1 => Just(Step::Unlock),
        ]
    }

    proptest! {
        /// For any interleaving of attempts, outcomes, crashes, restarts and unlocks:
        /// * while the credentials are unproven, attempts go strictly one at a time;
        /// * the rejections in a row the gateway sees never exceed the budget, or the proven
        ///   concurrency (the documented worst case of a password revoked while that many
        ///   attempts are in flight), whichever is larger;
        /// * rejected-or-unknown attempts in a row never exceed the vendor ceiling, or the proven
        ///   concurrency, whichever is larger.
        /// Unlocks are operator actions and start a new run.
        #[test]
        fn the_budget_holds_proven_or_not(
            budget in 1u32..=5,
            concurrency in 1u32..=8,
            steps in proptest::collection::vec(step(), 1..60),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("rt");
            rt.block_on(async {
                let limits = GuardLimits { budget, proven_concurrency: concurrency };
                let store: Arc<dyn GuardStore> = Arc::new(MemoryGuardStore::default());
                let mut g = guard_with(limits, Arc::clone(&store));
                let mut flying: Vec<Attempt> = Vec::new();
                // What the gateway counts: failures since the last success.
                let mut rejected_in_row = 0u32;
                let mut failed_or_unknown_in_row = 0u32;
                for step in steps {
                    match step {
                        Step::Begin => {
                            let proven = g.status().record.proven;
                            let in_flight = g.status().in_flight;
                            if let Ok(Some(a)) = g.try_begin().await {
                                prop_assert!(proven || in_flight == 0, "an unproven attempt ran beside {in_flight} others");
                                prop_assert!(in_flight < concurrency.max(1));
                                flying.push(a);
                            }
                        }
                        Step::Settle(i, o) => {
                            if flying.is_empty() {
                                continue;
                            }
                            let a = flying.remove(i % flying.len());
                            match o {
                                0 => { rejected_in_row = 0; failed_or_unknown_in_row = 0; a.success().await }
                                1 => { rejected_in_row += 1; failed_or_unknown_in_row += 1; a.rejected().await }
                                2 => a.not_sent().await,
                                // Unknown and crash: assume the worst, the gateway rejected it.
                                3 => { failed_or_unknown_in_row += 1; a.unknown().await }
                                _ => { failed_or_unknown_in_row += 1; std::mem::forget(a) }
                            }
                            prop_assert!(rejected_in_row <= budget.max(concurrency), "{rejected_in_row} rejections in a row, budget {budget}, concurrency {concurrency}");
                            prop_assert!(failed_or_unknown_in_row <= VENDOR_CEILING.max(concurrency));
                        }
                        Step::Restart => {
                            // A crash: what is in flight is never settled.
                            failed_or_unknown_in_row += flying.len() as u32;
                            for a in flying.drain(..) {
                                std::mem::forget(a);
                            }
                            g = guard_with(limits, Arc::clone(&store));
                        }
                        Step::Wait => tokio::time::sleep(BACKOFF_MAX).await,
                        Step::Unlock => {
                            // Attempts still in flight are counted when they settle.
                            g.unlock().await.expect("unlock");
                            rejected_in_row = 0;
                            failed_or_unknown_in_row = 0;
                        }
                    }
                }
                Ok(())
            })?;
        }
    }

    #[test]
    fn the_rules_are_pure_and_lock_at_the_budget() {
        let limits = GuardLimits::serial(2);
        let mut record = GuardRecord::default();
        assert_eq!(rules::admit(&record, 0, limits), rules::Admit::Send);
        rules::reserve(&mut record);
        assert_eq!(rules::admit(&record, 1, limits), rules::Admit::Wait);
        assert_eq!(
            rules::settle(&mut record, 0, limits, AttemptOutcome::Rejected),
            None
        );
        rules::reserve(&mut record);
        assert!(rules::settle(&mut record, 0, limits, AttemptOutcome::Rejected).is_some());
        assert!(record.locked);
        // A crash leaves attempts unconfirmed; reopening makes the credentials unproven.
        let mut record = GuardRecord {
            proven: true,
            unconfirmed: 1,
            ..GuardRecord::default()
        };
        rules::reopen(&mut record);
        assert!(!record.proven);
        assert_eq!(rules::unknown(&record, 0), 1);
    }
}
