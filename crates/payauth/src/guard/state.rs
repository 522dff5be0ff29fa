//! A gateway's credential state, behind one trait: the lockout record and the credentials it
//! issued, with atomic operations rather than a load-modify-save of a whole record.
//!
//! * **Reserve an attempt** ([`CredentialState::begin`]): the guard's rules decide, and the
//!   attempt is on record (durably) before it may be sent. Or, when a newer credential than the
//!   caller's was published meanwhile (by this process or, in a shared store, by a peer), that
//!   credential is handed over instead and nothing is sent.
//! * **Settle it** ([`Attempt`]'s methods): by what came back, durably for a rejection.
//! * **Publish a new credential generation** ([`CredentialState::publish`]): generations only
//!   grow.
//!
//! The layers reach the state only through this trait. [`crate::guard::AuthGuard`] is the
//! in-process implementation (its record persisted by a [`crate::guard::GuardStore`]); a store
//! shared by several replicas implements the same operations where the state lives.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::{Fingerprint, GuardRecord};
use crate::error::{Error, ErrorCode};
use crate::metrics::AuthResult;

/// The future of a state operation.
pub type StateFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A credential as published: what the gateway issued, sealed by the layer that got it (the
/// state never sees it in the clear), and its generation.
#[derive(Clone, PartialEq, Eq)]
pub struct Published {
    /// Grows with every credential published for the gateway.
    pub generation: u64,
    /// The credential as the layer sealed it (see [`crate::number::KeySeal`]).
    pub sealed: Vec<u8>,
}

impl fmt::Debug for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Published")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// What [`CredentialState::begin`] gave.
#[derive(Debug)]
pub enum Begun {
    /// Send one authentication, and settle the attempt with its outcome.
    Attempt(Attempt),
    /// A credential newer than the caller's is already published: use it, send nothing.
    Adopt(Published),
}

/// A gateway's credential state; see the [module docs](self).
pub trait CredentialState: Send + Sync + fmt::Debug + 'static {
    /// The gateway's name.
    fn gateway(&self) -> &str;

    /// Reserves one authentication attempt for the current credentials, waiting while the
    /// attempts in flight use up what the rules allow; refuses at once when locked, backing
    /// off or unable to record the attempt. When `seen` is given (the generation the caller
    /// holds) and a newer credential is published, hands that over instead.
    fn begin(&self, seen: Option<u64>) -> StateFuture<'_, Result<Begun, Refusal>>;

    /// Publishes a credential the gateway issued, sealed; returns its generation.
    fn publish(&self, sealed: Vec<u8>) -> StateFuture<'_, io::Result<u64>>;

    /// The credentials changed: from now on the record of `fingerprint` applies.
    fn change_credentials(&self, fingerprint: Fingerprint);

    /// An operator vouches for the credentials: rejections and unknown outcomes are forgotten.
    fn unlock(&self) -> StateFuture<'_, io::Result<()>>;

    /// Forgets the transport backoff (after a change that may have fixed the transport).
    fn clear_backoff(&self);

    /// Whether no authentication may be sent.
    fn is_locked(&self) -> bool;

    /// A snapshot of the record and the attempts in flight.
    fn status(&self) -> GuardStatus;

    /// Resolves once no attempt of this process is in flight (or after `limit`).
    fn wait_idle(&self, limit: Duration) -> StateFuture<'_, ()>;

    /// The newest credential published, where others may publish (a shared store); `None`
    /// where only this process does (it already holds its newest).
    fn latest(&self) -> StateFuture<'_, Option<Published>> {
        Box::pin(async { None })
    }
}

/// How a gateway's state is held: `Arc<dyn CredentialState>`.
pub type SharedState = Arc<dyn CredentialState>;

/// Where an [`Attempt`] settles: the state that reserved it.
pub trait Ledger: Send + Sync + fmt::Debug + 'static {
    /// The gateway's name, for logs.
    fn gateway(&self) -> &str;
    /// Settles the attempt reserved for `fingerprint`; the outcome is durable when this
    /// resolves (a rejection above all: no restart may send the same credentials again).
    fn settle(&self, fingerprint: Fingerprint, outcome: AttemptOutcome) -> StateFuture<'_, ()>;
    /// An attempt dropped unsettled: its outcome is unknown (it may have been sent), which is
    /// what the record already says, so nothing is written; only the bookkeeping of the
    /// attempts in flight (and the transport backoff) changes.
    fn abandon(&self, fingerprint: Fingerprint);
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
    /// The shared store could not be reached, so no attempt is made (calls go on with the key
    /// in hand until the gateway refuses it).
    SharedStore,
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
            Refusal::SharedStore => Error::new(
                ErrorCode::AuthUnavailable,
                gateway,
                "the shared store cannot be reached, so no authentication is sent; nothing was \
                 forwarded",
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
    /// How long until the next authentication may be sent after transport failures (`None`:
    /// no backoff now).
    pub backoff: Option<std::time::Duration>,
}

/// What an attempt ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The gateway issued a credential.
    Success,
    /// The gateway answered and rejected the credentials.
    Rejected,
    /// Nothing reached the gateway, or it answered with no verdict on the credentials.
    NotSent,
    /// It may have reached the gateway; no usable answer came back.
    Unknown,
    /// payauth itself did not send it after all (it is stopping): no attempt was made, so
    /// nothing is counted, logged or backed off; the reservation is only released.
    Withdrawn,
}

impl AttemptOutcome {
    /// How the attempt counts in `payauth_auth_attempts_total`; `None` for one never made.
    pub(crate) fn result(self) -> Option<AuthResult> {
        match self {
            AttemptOutcome::Success => Some(AuthResult::Success),
            AttemptOutcome::Rejected => Some(AuthResult::Rejected),
            AttemptOutcome::NotSent | AttemptOutcome::Unknown => Some(AuthResult::Error),
            AttemptOutcome::Withdrawn => None,
        }
    }
}

/// Permission to send one authentication, on disk before it is sent. Settle it with what
/// happened; dropping it unsettled counts as an unknown outcome (the request may have been
/// sent), which is what the record on disk already says.
#[derive(Debug)]
#[must_use = "an attempt must be settled with its outcome"]
pub struct Attempt {
    ledger: Arc<dyn Ledger>,
    fingerprint: Fingerprint,
    settled: bool,
}

impl Attempt {
    /// An attempt reserved in `ledger` for the credentials `fingerprint`: what a
    /// [`CredentialState::begin`] of one's own returns once the attempt is on record.
    pub fn new(ledger: Arc<dyn Ledger>, fingerprint: Fingerprint) -> Self {
        Self {
            ledger,
            fingerprint,
            settled: false,
        }
    }

    /// The fingerprint of the credentials this attempt is for.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The gateway issued a credential.
    pub async fn success(self) {
        self.finish(AttemptOutcome::Success).await;
    }

    /// The gateway answered and rejected the credentials. Persisted before this returns, so
    /// that no restart can send the same credentials again.
    pub async fn rejected(self) {
        self.finish(AttemptOutcome::Rejected).await;
    }

    /// Nothing reached the gateway (connection refused, DNS failure).
    pub async fn not_sent(self) {
        self.finish(AttemptOutcome::NotSent).await;
    }

    /// The gateway answered with an error that is no verdict on the credentials (busy, session
    /// generation failed, not enabled): it counts toward nothing, and the guard backs off.
    pub async fn declined(self) {
        self.finish(AttemptOutcome::NotSent).await;
    }

    /// The request may have reached the gateway, but no usable answer came back.
    pub async fn unknown(self) {
        self.finish(AttemptOutcome::Unknown).await;
    }

    /// payauth decided not to send it after all (it is stopping): the reservation is released
    /// with no failure counted, logged or backed off.
    pub async fn withdrawn(self) {
        self.finish(AttemptOutcome::Withdrawn).await;
    }

    /// Settles with `outcome` and waits until the record is on disk.
    pub async fn finish(mut self, outcome: AttemptOutcome) {
        self.settled = true;
        let ledger = Arc::clone(&self.ledger);
        ledger.settle(self.fingerprint, outcome).await;
    }

    /// An attempt whose reservation the ledger already undid (it could not be recorded).
    pub(super) fn disarm(mut self) {
        self.settled = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.settled = true;
            self.ledger.abandon(self.fingerprint);
        }
    }
}
