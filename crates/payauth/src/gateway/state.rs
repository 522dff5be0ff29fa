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

use crate::guard::{Attempt, AttemptOutcome, Fingerprint, GuardStatus, Refusal};

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
