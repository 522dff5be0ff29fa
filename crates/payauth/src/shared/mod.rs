//! The shared mode: replicas behind one egress IP share one session key per Number gateway and
//! one lockout budget per gateway, through Redis.
//!
//! [`RedisState`] implements [`CredentialState`] with four Lua scripts (`shared/scripts.rs`): every
//! reservation, settlement and publication is one atomic script where the state lives, never a
//! load-modify-save. Nothing is asked of Redis on the request path: a layer keeps its key in
//! memory and asks the store only to renew it.
//!
//! * **Fail closed for authentication.** No attempt is sent without a reservation the store
//!   confirmed; when the store cannot be reached within `op_timeout`, the attempt is refused
//!   (`Refusal::SharedStore`: 503 `auth_unavailable`) and nothing is sent.
//! * **A copy of its own.** Each replica keeps its last copy of the shared record in its state
//!   dir. A new record starts from it; a record the copy says existed but the store no longer
//!   has (restart without persistence, flush, failover) is seeded locked until an operator
//!   unlocks, since other replicas may have spent the budget since the copy was taken.
//! * **Everyone learns.** Every `key_poll` each replica looks at the record and the key
//!   ([`CredentialState::latest`]), so a lock or an unlock made through another replica, and a
//!   key a peer published, reach it without waiting for its next renewal.
//! * **Secrets.** Redis holds the session key only sealed ([`crate::number::KeySeal`]), and no
//!   secret is part of any Redis key: keys name the egress, the gateway and the credentials'
//!   fingerprint.

pub(crate) mod scripts;

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::SharedConfig;
use crate::gateway::state::{Begun, CredentialState, Ledger, Published, StateFuture};
use crate::guard::{
    transport_backoff, Attempt, AttemptOutcome, Fingerprint, GuardLimits, GuardRecord, GuardStatus,
    GuardStore, Refusal, MAX_BUDGET,
};
use crate::metrics::GatewayMetrics;
use crate::secret::Secret;
use crate::sync::lock;
use scripts::Scripts;

/// How often a reservation that must wait (an attempt of another replica in flight) asks again.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// A connection to the shared store, shared by every gateway of the process.
pub struct RedisStore {
    client: Client,
    config: SharedConfig,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    scripts: Scripts,
    /// This process, in the ids of its attempts (so a holder's leases are told apart).
    holder: String,
    attempts: AtomicU64,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("egress_id", &self.config.egress_id)
            .finish_non_exhaustive()
    }
}

/// The store could not be used.
#[derive(Debug, thiserror::Error)]
#[error("shared store: {0}")]
pub struct StoreError(String);

impl RedisStore {
    /// A store from the `[shared]` settings and the password file's content, if any. Nothing
    /// is connected until the first operation.
    pub fn new(
        config: &SharedConfig,
        password: Option<Secret<String>>,
    ) -> Result<Self, StoreError> {
        let mut info = config
            .redis_url
            .as_str()
            .into_connection_info()
            .map_err(|e| StoreError(format!("redis_url: {:?}", e.kind())))?;
        let mut redis = info.redis_settings().clone();
        if let Some(user) = &config.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &password {
            redis = redis.set_password(password.expose());
        }
        info = info.set_redis_settings(redis);
        let client = match &config.ca_file {
            None => Client::open(info),
            Some(path) => {
                let root_cert = std::fs::read(path)
                    .map_err(|e| StoreError(format!("ca_file {}: {e}", path.display())))?;
                let certificates = redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                };
                Client::build_with_tls(info, certificates)
            }
        }
        .map_err(|e| StoreError(format!("{:?}", e.kind())))?;
        Ok(Self {
            client,
            config: config.clone(),
            connection: tokio::sync::Mutex::new(None),
            scripts: Scripts::new(),
            holder: format!("{:016x}", fastrand::u64(..)),
            attempts: AtomicU64::new(0),
        })
    }

    /// The egress the replicas share.
    pub fn egress_id(&self) -> &str {
        &self.config.egress_id
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.op_timeout));
        let connection = tokio::time::timeout(
            self.config.connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| StoreError("connect timed out".into()))?
        .map_err(|e| StoreError(format!("connect: {:?}", e.kind())))?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Runs `script` within `op_timeout`.
    async fn run<A: redis::ToRedisArgs>(
        &self,
        script: &redis::Script,
        keys: &[String; 3],
        args: &[A],
    ) -> Result<Answer, StoreError> {
        let mut connection = self.connection().await?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        let value = self
            .timed(invocation.invoke_async::<Value>(&mut connection))
            .await?;
        Answer::read(value)
    }

    /// Runs one operation within `op_timeout`; a failed connection is dropped for the next.
    async fn timed<T>(
        &self,
        operation: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let result = tokio::time::timeout(self.config.op_timeout, operation).await;
        let error = match result {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => StoreError(format!("{:?}", e.kind())),
            Err(_) => StoreError("operation timed out".into()),
        };
        *self.connection.lock().await = None;
        Err(error)
    }

    fn next_attempt_id(&self) -> String {
        format!(
            "{}-{}",
            self.holder,
            self.attempts.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The shared state of one gateway. `local` keeps this replica's copy of the record (the
    /// lower bound re-seeding a lost one); `lease` bounds how long an attempt of this process
    /// may stay in flight before it counts as unknown.
    pub fn state(
        self: &Arc<Self>,
        gateway: &str,
        limits: GuardLimits,
        fingerprint: Fingerprint,
        local: Arc<dyn GuardStore>,
        lease: Duration,
        metrics: GatewayMetrics,
    ) -> io::Result<Arc<RedisState>> {
        // An unreadable copy refuses the start, as the local guard's record does.
        let record = local.load(gateway, fingerprint)?;
        Ok(Arc::new_cyclic(|me| RedisState {
            me: me.clone(),
            store: Arc::clone(self),
            gateway: gateway.to_owned(),
            limits: GuardLimits {
                budget: limits.budget.clamp(1, MAX_BUDGET),
                proven_concurrency: limits.proven_concurrency.max(1),
            },
            lease,
            local,
            metrics,
            inner: Mutex::new(StoreInner {
                fingerprint,
                record,
                failures: 0,
                not_before: None,
                epoch: None,
                attempts: Vec::new(),
                abandoned: Vec::new(),
            }),
            in_flight: AtomicU32::new(0),
            settled: Notify::new(),
        }))
    }
}

/// One gateway's state in the shared store; see the [module docs](self).
pub struct RedisState {
    me: Weak<RedisState>,
    store: Arc<RedisStore>,
    gateway: String,
    limits: GuardLimits,
    lease: Duration,
    local: Arc<dyn GuardStore>,
    metrics: GatewayMetrics,
    inner: Mutex<StoreInner>,
    /// Attempts of this process in flight.
    in_flight: AtomicU32,
    settled: Notify,
}

impl fmt::Debug for RedisState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisState")
            .field("gateway", &self.gateway)
            .field("egress_id", &self.store.config.egress_id)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct StoreInner {
    fingerprint: Fingerprint,
    /// The record as last seen in the store (also kept in the local store).
    record: GuardRecord,
    /// Transport failures in a row of this process's attempts, and the backoff they set.
    failures: u32,
    not_before: Option<Instant>,
    /// The epoch of this process's latest reservation (a publish must carry it).
    epoch: Option<String>,
    /// Ids of this process's attempts in flight, by fingerprint.
    attempts: Vec<(Fingerprint, String)>,
    /// Reservations whose answer never came (the store may still have made them), with when
    /// they were given up: cancelled by the next reservations until their lease is over.
    abandoned: Vec<(Fingerprint, String, Instant)>,
}

/// A script's answer: its status, the record after it, and up to two extra values.
#[derive(Debug)]
struct Answer {
    status: String,
    record: GuardRecord,
    extra: [Vec<u8>; 2],
}

impl Answer {
    /// Reads a script's answer: exactly its status, the five record fields and two extras, each
    /// a string (or an integer). Anything else, a missing field, a count that is no number or a
    /// flag that is neither `0` nor `1`, is an error: an answer payauth cannot read is no
    /// permission to authenticate (fail closed), never a record of zero failures.
    fn read(value: Value) -> Result<Self, StoreError> {
        let malformed = |what: &str| StoreError(format!("malformed answer from the store: {what}"));
        let Value::Array(items) = value else {
            return Err(malformed("not an array"));
        };
        if items.len() != 8 {
            return Err(malformed("not 8 fields"));
        }
        let mut fields = Vec::with_capacity(8);
        for item in items {
            fields.push(match item {
                Value::BulkString(b) => b,
                Value::SimpleString(s) => s.into_bytes(),
                Value::Int(i) => i.to_string().into_bytes(),
                _ => return Err(malformed("a field that is no string")),
            });
        }
        let text = |i: usize| {
            std::str::from_utf8(&fields[i]).map_err(|_| malformed("a field that is no text"))
        };
        let number = |i: usize| {
            text(i)?
                .parse::<u32>()
                .map_err(|_| malformed("a count that is no number"))
        };
        let flag = |i: usize| match text(i)? {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(malformed("a flag that is neither 0 nor 1")),
        };
        let reason = text(5)?;
        let record = GuardRecord {
            rejected: number(1)?,
            unconfirmed: number(2)?,
            locked: flag(3)?,
            reason: (!reason.is_empty()).then(|| reason.to_owned()),
            proven: flag(4)?,
            shared: true,
        };
        let status = text(0)?.to_owned();
        if status.is_empty() {
            return Err(malformed("no status"));
        }
        let [.., first, second] =
            <[Vec<u8>; 8]>::try_from(fields).map_err(|_| malformed("not 8 fields"))?;
        Ok(Self {
            status,
            record,
            extra: [first, second],
        })
    }

    /// The key generation in the first extra value (`adopt`, `stale`, `published`, `look`).
    fn generation(&self) -> Result<u64, StoreError> {
        std::str::from_utf8(&self.extra[0])
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| StoreError("malformed answer from the store: a generation".into()))
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl RedisState {
    /// Notes what an operation of the store came to, in the metrics.
    fn observed<T>(&self, op: &str, result: Result<T, StoreError>) -> Result<T, StoreError> {
        self.metrics
            .shared_store(result.as_ref().map(|_| ()).map_err(|_| op));
        result
    }

    fn keys(&self, fingerprint: Fingerprint) -> [String; 3] {
        let base = format!("payauth:{}:{}", self.store.config.egress_id, self.gateway);
        let fp = fingerprint.to_hex();
        [
            format!("{base}:guard:{fp}"),
            format!("{base}:inflight:{fp}"),
            format!("{base}:key"),
        ]
    }

    /// Keeps the record as the store answered it, here and, when it changed, in the local
    /// store (best effort: the store is the record; the local copy is what tells a lost store).
    fn remember(&self, fingerprint: Fingerprint, record: &GuardRecord) {
        {
            let mut inner = lock(&self.inner);
            if inner.fingerprint == fingerprint {
                // A lock or an unlock made through any replica shows here.
                self.metrics.set_locked(record.locked);
                if inner.record == *record {
                    return;
                }
                inner.record = record.clone();
            }
        }
        let (local, gateway, record) = (
            Arc::clone(&self.local),
            self.gateway.clone(),
            record.clone(),
        );
        tokio::task::spawn_blocking(move || {
            if let Err(e) = local.save(&gateway, fingerprint, &record) {
                tracing::warn!(gateway = %gateway, error = %e, "cannot keep the local copy of the shared lockout record");
            }
        });
    }

    async fn reserve(&self, seen: Option<u64>) -> Result<Option<Begun>, Refusal> {
        let (fingerprint, lower_bound, abandoned) = {
            let mut inner = lock(&self.inner);
            let lease = self.lease;
            inner.abandoned.retain(|(_, _, at)| at.elapsed() < lease);
            // A cached lock is not trusted: an operator may have unlocked through another
            // replica. The store says (the reserve script refuses a locked record).
            if let Some(not_before) = inner.not_before {
                let now = Instant::now();
                if now < not_before {
                    return Err(Refusal::Backoff(not_before - now));
                }
            }
            let fingerprint = inner.fingerprint;
            let abandoned: Vec<String> = inner
                .abandoned
                .iter()
                .filter(|(f, _, _)| *f == fingerprint)
                .map(|(_, id, _)| id.clone())
                .collect();
            (fingerprint, inner.record.clone(), abandoned)
        };
        let id = self.store.next_attempt_id();
        let mut args = vec![
            seen.map_or("-1".to_owned(), |g| g.to_string()),
            self.limits.budget.to_string(),
            self.limits.proven_concurrency.to_string(),
            id.clone(),
            now_ms().to_string(),
            (self.lease.as_millis() as u64).to_string(),
            lower_bound.rejected.to_string(),
            lower_bound.unconfirmed.to_string(),
            if lower_bound.locked { "1" } else { "0" }.to_owned(),
            lower_bound.reason.clone().unwrap_or_default(),
            if lower_bound.shared { "1" } else { "0" }.to_owned(),
        ];
        args.extend(abandoned);
        let result = self
            .store
            .run(&self.store.scripts.reserve, &self.keys(fingerprint), &args)
            .await;
        let answer = self.observed("reserve", result).map_err(|e| {
            tracing::error!(gateway = %self.gateway, error = %e,
                "the shared store cannot be reached; no authentication is sent");
            lock(&self.inner)
                .abandoned
                .push((fingerprint, id.clone(), Instant::now()));
            Refusal::SharedStore
        })?;
        self.remember(fingerprint, &answer.record);
        match answer.status.as_str() {
            "adopt" => {
                let generation = self.observed("reserve", answer.generation()).map_err(|e| {
                    tracing::error!(gateway = %self.gateway, error = %e,
                        "the shared store's answer is unreadable; no authentication is sent");
                    Refusal::SharedStore
                })?;
                Ok(Some(Begun::Adopt(Published {
                    generation,
                    sealed: answer.extra[1].clone(),
                })))
            }
            "reserved" => {
                let me = self.me.upgrade().ok_or(Refusal::Storage)?;
                {
                    let mut inner = lock(&self.inner);
                    inner.epoch = Some(String::from_utf8_lossy(&answer.extra[0]).into_owned());
                    inner.attempts.push((fingerprint, id));
                }
                self.in_flight.fetch_add(1, Ordering::AcqRel);
                Ok(Some(Begun::Attempt(Attempt::new(me, fingerprint))))
            }
            "wait" => Ok(None),
            _ => Err(Refusal::Locked(
                answer.record.reason.unwrap_or_else(|| "locked".to_owned()),
            )),
        }
    }

    async fn settle_attempt(&self, fingerprint: Fingerprint, outcome: AttemptOutcome) {
        if let Some(result) = outcome.result() {
            self.metrics.auth_attempt(result);
        }
        let id = {
            let mut inner = lock(&self.inner);
            let position = inner.attempts.iter().position(|(f, _)| *f == fingerprint);
            let id = position.map(|p| inner.attempts.remove(p).1);
            match outcome {
                AttemptOutcome::Success => {
                    inner.failures = 0;
                    inner.not_before = None;
                }
                AttemptOutcome::NotSent | AttemptOutcome::Unknown => {
                    inner.failures += 1;
                    inner.not_before = Some(Instant::now() + transport_backoff(inner.failures));
                }
                AttemptOutcome::Rejected | AttemptOutcome::Withdrawn => {}
            }
            id
        };
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.settled.notify_waiters();
        let Some(id) = id else { return };
        let outcome_arg = match outcome {
            AttemptOutcome::Success => "success",
            AttemptOutcome::Rejected => "rejected",
            AttemptOutcome::NotSent | AttemptOutcome::Withdrawn => "not_sent",
            AttemptOutcome::Unknown => "unknown",
        };
        let args = [id, outcome_arg.to_owned(), self.limits.budget.to_string()];
        let result = self
            .store
            .run(&self.store.scripts.settle, &self.keys(fingerprint), &args)
            .await;
        match self.observed("settle", result) {
            Ok(answer) => {
                if answer.status == "locked_now" {
                    tracing::error!(gateway = %self.gateway, reason = answer.record.reason.as_deref().unwrap_or(""),
                        "gateway locked for every replica: no authentication will be sent until the credentials change or an operator unlocks it");
                }
                self.remember(fingerprint, &answer.record);
            }
            Err(e) => {
                // The reservation stays counted in the store (as unknown once its lease ends):
                // the safe side. A rejection is also kept locally as the lower bound.
                tracing::error!(gateway = %self.gateway, error = %e, outcome = outcome_arg,
                    "cannot settle the attempt in the shared store; it counts as unknown there");
                if outcome == AttemptOutcome::Rejected {
                    let mut record = lock(&self.inner).record.clone();
                    crate::guard::rules::settle(&mut record, 0, self.limits, outcome);
                    self.remember(fingerprint, &record);
                }
            }
        }
    }
}

impl Ledger for RedisState {
    fn gateway(&self) -> &str {
        &self.gateway
    }

    fn settle(&self, fingerprint: Fingerprint, outcome: AttemptOutcome) -> StateFuture<'_, ()> {
        Box::pin(self.settle_attempt(fingerprint, outcome))
    }

    fn abandon(&self, fingerprint: Fingerprint) {
        // Unknown: the store already counts the attempt, and will once its lease ends.
        let Some(me) = self.me.upgrade() else { return };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                me.settle_attempt(fingerprint, AttemptOutcome::Unknown)
                    .await;
            });
        }
    }
}

impl CredentialState for RedisState {
    fn gateway(&self) -> &str {
        &self.gateway
    }

    fn begin(&self, seen: Option<u64>) -> StateFuture<'_, Result<Begun, Refusal>> {
        Box::pin(async move {
            loop {
                let notified = self.settled.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(begun) = self.reserve(seen).await? {
                    return Ok(begun);
                }
                // Another attempt (of any replica) is in flight: ask again shortly.
                let _ = tokio::time::timeout(WAIT_POLL, notified).await;
            }
        })
    }

    fn publish(&self, sealed: Vec<u8>) -> StateFuture<'_, io::Result<u64>> {
        Box::pin(async move {
            let (fingerprint, epoch) = {
                let inner = lock(&self.inner);
                (inner.fingerprint, inner.epoch.clone().unwrap_or_default())
            };
            let args = [epoch.into_bytes(), sealed];
            let result = self
                .store
                .run(&self.store.scripts.publish, &self.keys(fingerprint), &args)
                .await;
            let answer = self.observed("publish", result).map_err(io::Error::other)?;
            let generation = self
                .observed("publish", answer.generation())
                .map_err(io::Error::other)?;
            if answer.status == "stale" {
                tracing::warn!(gateway = %self.gateway, generation,
                    "another replica renewed meanwhile; this key is used here but not published");
            }
            Ok(generation)
        })
    }

    fn change_credentials(&self, fingerprint: Fingerprint) {
        let record = self
            .local
            .load(&self.gateway, fingerprint)
            .unwrap_or_else(|e| {
                tracing::error!(gateway = %self.gateway, error = %e,
                    "cannot read the local copy of the lockout record; treating new credentials as locked");
                GuardRecord {
                    locked: true,
                    reason: Some("guard state unreadable".into()),
                    ..GuardRecord::default()
                }
            });
        let mut inner = lock(&self.inner);
        if inner.fingerprint == fingerprint {
            return;
        }
        inner.fingerprint = fingerprint;
        inner.record = record;
        inner.failures = 0;
        inner.not_before = None;
        drop(inner);
        self.settled.notify_waiters();
    }

    fn unlock(&self) -> StateFuture<'_, io::Result<()>> {
        Box::pin(async move {
            let fingerprint = lock(&self.inner).fingerprint;
            let result = self
                .store
                .run::<String>(&self.store.scripts.unlock, &self.keys(fingerprint), &[])
                .await;
            let answer = self.observed("unlock", result).map_err(io::Error::other)?;
            {
                let mut inner = lock(&self.inner);
                inner.failures = 0;
                inner.not_before = None;
            }
            self.remember(fingerprint, &answer.record);
            tracing::warn!(gateway = %self.gateway, "gateway unlocked by an operator, for every replica");
            self.settled.notify_waiters();
            Ok(())
        })
    }

    fn clear_backoff(&self) {
        let mut inner = lock(&self.inner);
        inner.failures = 0;
        inner.not_before = None;
    }

    fn is_locked(&self) -> bool {
        lock(&self.inner).record.locked
    }

    fn status(&self) -> GuardStatus {
        let inner = lock(&self.inner);
        GuardStatus {
            record: inner.record.clone(),
            in_flight: self.in_flight.load(Ordering::Acquire),
            backoff: crate::guard::remaining(inner.not_before),
        }
    }

    fn wait_idle(&self, limit: Duration) -> StateFuture<'_, ()> {
        Box::pin(async move {
            let idle = || self.in_flight.load(Ordering::Acquire) == 0;
            crate::sync::wait_until(&self.settled, limit, idle).await;
        })
    }

    fn latest(&self) -> StateFuture<'_, Option<Published>> {
        Box::pin(async move {
            let fingerprint = lock(&self.inner).fingerprint;
            let args = [now_ms().to_string()];
            let result = self
                .store
                .run(&self.store.scripts.look, &self.keys(fingerprint), &args)
                .await;
            let answer = self.observed("look", result).ok()?;
            if answer.status != "look" {
                return None;
            }
            self.remember(fingerprint, &answer.record);
            let generation = self.observed("look", answer.generation()).ok()?;
            let sealed = answer.extra[1].clone();
            (generation > 0 && !sealed.is_empty()).then_some(Published { generation, sealed })
        })
    }
}

#[cfg(test)]
mod answer_tests {
    //! The scripts' answers as the store sends them, and what a broken or hostile one is read as.

    use proptest::prelude::*;
    use redis::Value;

    use super::Answer;

    fn answer(fields: &[&str]) -> Value {
        Value::Array(
            fields
                .iter()
                .map(|f| Value::BulkString(f.as_bytes().to_vec()))
                .collect(),
        )
    }

    const RESERVED: [&str; 8] = ["reserved", "2", "1", "0", "1", "", "17", ""];

    #[test]
    fn a_well_formed_answer_is_read_whole() {
        let read = Answer::read(answer(&RESERVED)).expect("well formed");
        assert_eq!(read.status, "reserved");
        assert_eq!((read.record.rejected, read.record.unconfirmed), (2, 1));
        assert!(!read.record.locked && read.record.proven && read.record.shared);
        assert_eq!(read.record.reason, None);
        assert_eq!(read.generation().expect("generation"), 17);
        let locked = ["locked", "1", "0", "1", "0", "rejected", "", ""];
        let read = Answer::read(answer(&locked)).expect("well formed");
        assert!(read.record.locked);
        assert_eq!(read.record.reason.as_deref(), Some("rejected"));
        assert!(
            read.generation().is_err(),
            "no generation is no generation 0"
        );
    }

    #[test]
    fn an_answer_it_cannot_read_fails_closed() {
        // Each of these used to read as zero failures and unlocked.
        let mut missing_lock = RESERVED.map(|f| Value::BulkString(f.as_bytes().to_vec()));
        missing_lock[3] = Value::Nil;
        let broken = [
            Value::Array(missing_lock.to_vec()),
            answer(&RESERVED[..7]),
            answer(&["reserved", "x", "1", "0", "1", "", "17", ""]),
            answer(&["reserved", "2", "-1", "0", "1", "", "17", ""]),
            answer(&["reserved", "2", "1", "", "1", "", "17", ""]),
            answer(&["reserved", "2", "1", "yes", "1", "", "17", ""]),
            answer(&["reserved", "2", "1", "0", "2", "", "17", ""]),
            answer(&["reserved", "2", "1", "0", "", "", "17", ""]),
            answer(&["", "2", "1", "0", "1", "", "17", ""]),
            Value::BulkString(b"reserved".to_vec()),
            Value::Nil,
        ];
        for value in broken {
            let shown = format!("{value:?}");
            assert!(Answer::read(value).is_err(), "read as valid: {shown}");
        }
        let mut extra = RESERVED
            .map(|f| Value::BulkString(f.as_bytes().to_vec()))
            .to_vec();
        extra.push(Value::BulkString(b"more".to_vec()));
        assert!(Answer::read(Value::Array(extra)).is_err(), "a ninth field");
    }

    proptest! {
        /// Whatever the fields, an answer is read only as exactly what it says: unlocked only
        /// for a lock flag of `0`, counts only from their decimal text.
        #[test]
        fn an_answer_is_read_as_exactly_what_it_says(
            fields in proptest::collection::vec(
                prop_oneof![
                    Just("0".to_owned()), Just("1".to_owned()), Just(String::new()),
                    "[0-9]{1,11}", ".{0,4}",
                ],
                8,
            )
        ) {
            let value = answer(&fields.iter().map(String::as_str).collect::<Vec<_>>());
            match Answer::read(value) {
                Ok(read) => {
                    prop_assert_eq!(read.record.locked, fields[3] == "1");
                    prop_assert!(fields[3] == "0" || fields[3] == "1");
                    prop_assert!(fields[4] == "0" || fields[4] == "1");
                    prop_assert_eq!(Ok(read.record.rejected), fields[1].parse::<u32>());
                    prop_assert_eq!(Ok(read.record.unconfirmed), fields[2].parse::<u32>());
                }
                Err(_) => prop_assert!(
                    fields[0].is_empty()
                        || fields[1].parse::<u32>().is_err()
                        || fields[2].parse::<u32>().is_err()
                        || !matches!(fields[3].as_str(), "0" | "1")
                        || !matches!(fields[4].as_str(), "0" | "1")
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! A model of the store's scripts (the guard's rules plus leases) driven through random
    //! interleavings of replicas, outcomes and crashes.

    use proptest::prelude::*;

    use crate::guard::rules::{self, Admit};
    use crate::guard::{AttemptOutcome, GuardLimits, GuardRecord};

    #[derive(Debug, Clone)]
    enum Op {
        /// A replica asks to authenticate.
        Reserve(usize),
        /// A replica's oldest attempt in flight ends so.
        Settle(usize, AttemptOutcome),
        /// A replica dies with its attempts in flight: they are never settled.
        Crash(usize),
        /// Time passes (ms): leases may end.
        Tick(u64),
        /// The store loses everything (a restart without persistence, a flush, a failover).
        Loss,
    }

    fn op() -> impl Strategy<Value = Op> {
        let outcome = prop_oneof![
            Just(AttemptOutcome::Success),
            Just(AttemptOutcome::Rejected),
            Just(AttemptOutcome::NotSent),
            Just(AttemptOutcome::Unknown),
            Just(AttemptOutcome::Withdrawn),
        ];
        prop_oneof![
            (0..4usize).prop_map(Op::Reserve),
            ((0..4usize), outcome).prop_map(|(r, o)| Op::Settle(r, o)),
            (0..4usize).prop_map(Op::Crash),
            (0..20_000u64).prop_map(Op::Tick),
            Just(Op::Loss),
        ]
    }

    /// The store: one record (`None`: lost), the leases of attempts in flight (replica, lease
    /// end), and each replica's copy of the record as it last saw it.
    struct Store {
        record: Option<GuardRecord>,
        leases: Vec<(usize, u64)>,
        now: u64,
        copies: [GuardRecord; 4],
    }

    const LEASE: u64 = 35_000;
    /// An attempt's own timeout: the request timeout, which the sidecar makes 5 s shorter than
    /// the lease (`sidecar::shared_state`), so a live replica always ends its attempts first.
    const ATTEMPT_TIMEOUT: u64 = LEASE - 5_000;

    impl Store {
        /// The record, seeded as the scripts seed a missing one: from the replica's copy, and
        /// locked when the copy says the shared record existed (the store lost it).
        fn record(&mut self, replica: usize) -> &mut GuardRecord {
            let copy = &self.copies[replica];
            self.record.get_or_insert_with(|| GuardRecord {
                locked: copy.locked || copy.shared,
                proven: false,
                ..copy.clone()
            })
        }

        fn expire(&mut self, replica: usize) {
            let now = self.now;
            let before = self.leases.len();
            self.leases.retain(|(_, end)| *end > now);
            if self.leases.len() < before {
                self.record(replica).proven = false;
            }
        }

        fn copy(&mut self, replica: usize) {
            let mut copy = self.record(replica).clone();
            copy.shared = true;
            self.copies[replica] = copy;
        }

        /// The reserve script (without adoption, which sends nothing).
        fn reserve(&mut self, replica: usize, limits: GuardLimits) -> bool {
            self.expire(replica);
            let in_flight = self.leases.len() as u32;
            let record = self.record(replica);
            let sent = if record.locked {
                false
            } else {
                match rules::admit(record, in_flight, limits) {
                    Admit::Send => {
                        rules::reserve(record);
                        true
                    }
                    Admit::Wait => false,
                    Admit::Lock(reason) => {
                        record.locked = true;
                        record.reason = Some(reason.to_owned());
                        false
                    }
                }
            };
            if sent {
                self.leases.push((replica, self.now + LEASE));
            }
            self.copy(replica);
            sent
        }

        /// The settle script for `replica`'s oldest attempt (its lease may be gone with a
        /// lost store: it is settled all the same, in a record seeded locked).
        fn settle(&mut self, replica: usize, outcome: AttemptOutcome, limits: GuardLimits) {
            if self.record.is_none() {
                self.record = Some(GuardRecord {
                    unconfirmed: 1,
                    locked: true,
                    ..GuardRecord::default()
                });
            }
            if let Some(at) = self.leases.iter().position(|(r, _)| *r == replica) {
                self.leases.remove(at);
            }
            let in_flight = self.leases.len() as u32;
            rules::settle(self.record(replica), in_flight, limits, outcome);
            self.copy(replica);
        }
    }

    proptest! {
        // The failing interleavings are rare (a loss between two replicas' operations): many
        // cases, at a fraction of a second.
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// However replicas interleave, crash, see their answers lost or the store lose its
        /// data, the gateway never sees more than five failed-or-unknown authentications in a
        /// row (its lock is at six), and never more than the budget of rejections. The
        /// replicas have all used the store before (their copies say so): one that starts after
        /// a loss with an empty state dir cannot tell a lost store from a new one.
        #[test]
        fn replicas_sharing_a_record_never_reach_the_vendor_lock(
            budget in 1u32..=5,
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let limits = GuardLimits::serial(budget);
            let used = GuardRecord { shared: true, ..GuardRecord::default() };
            let mut store = Store {
                record: Some(GuardRecord::default()),
                leases: Vec::new(),
                now: 0,
                copies: [used.clone(), used.clone(), used.clone(), used],
            };
            // What the gateway may have counted: failures in a row, worst case.
            let mut vendor_run = 0u32;
            let mut rejections_in_a_row = 0u32;
            let mut live = [true; 4];
            // Attempts sent and not yet answered, oldest first: the replica, and when its own
            // timeout gives up on it (a crashed replica's never end).
            let mut sent: Vec<(usize, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Reserve(r) if live[r] && store.reserve(r, limits) => {
                        sent.push((r, store.now + ATTEMPT_TIMEOUT));
                    }
                    Op::Settle(r, outcome) if live[r] => {
                        if let Some(i) = sent.iter().position(|(x, _)| *x == r) {
                            store.settle(r, outcome, limits);
                            {
                                sent.remove(i);
                                match outcome {
                                    AttemptOutcome::Success => {
                                        vendor_run = 0;
                                        rejections_in_a_row = 0;
                                    }
                                    AttemptOutcome::Rejected => {
                                        vendor_run += 1;
                                        rejections_in_a_row += 1;
                                    }
                                    AttemptOutcome::Unknown => vendor_run += 1,
                                    AttemptOutcome::NotSent | AttemptOutcome::Withdrawn => {}
                                }
                            }
                        }
                    }
                    Op::Crash(r) => {
                        live[r] = false;
                        // Its attempts in flight may have reached the gateway.
                        let lost = sent.iter().filter(|(x, _)| *x == r).count() as u32;
                        vendor_run += lost;
                        sent.retain(|(x, _)| *x != r);
                    }
                    Op::Tick(ms) => {
                        store.now += ms;
                        // A live replica gives up on an attempt at its timeout, before the
                        // attempt's lease ends, and settles it as unknown.
                        while let Some(i) = sent.iter().position(|(_, end)| *end <= store.now) {
                            let (r, _) = sent.remove(i);
                            store.settle(r, AttemptOutcome::Unknown, limits);
                            vendor_run += 1;
                        }
                    }
                    Op::Loss => {
                        store.record = None;
                        store.leases.clear();
                    }
                    _ => {}
                }
                prop_assert!(vendor_run <= 5, "{vendor_run} failures in a row reached the gateway");
                prop_assert!(rejections_in_a_row <= budget, "{rejections_in_a_row} rejections, budget {budget}");
            }
        }
    }
}
