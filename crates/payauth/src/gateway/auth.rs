//! One authentication attempt against the lockout guard, the same for every gateway kind:
//!
//! 1. the guard reserves the attempt (or refuses: locked, backing off, no turn, no storage);
//! 2. the credentials are read again, and the attempt is dropped unsent if they changed since
//!    the guard chose its record;
//! 3. the request is sent and its answer read whole within the request timeout;
//! 4. the attempt is settled by what came back: a credential (success), a rejection (counts
//!    toward the lockout), a decline (an answer that is not a rejection: backoff), or nothing
//!    usable (unknown: the gateway may have counted it). Nothing sent (a connect error) counts
//!    nowhere.
//!
//! An attempt is recorded before it is sent and settled before this returns; a caller going
//! away cannot leave one half done, because the callers run it in a task of its own.

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use super::state::{Begun, Published};
use super::Core;
use crate::error::{Error, ErrorCode};
use crate::forward::{self, Client, Failure, GatewayBody};
use crate::guard::{Attempt, Fingerprint, Refusal};

/// Credentials the guard keeps a record for.
pub(crate) trait Fingerprinted: Send + Sync {
    /// Their fingerprint (which guard record applies).
    fn fingerprint(&self) -> Fingerprint;
}

/// How the gateway's answer settles the attempt.
pub(crate) enum Verdict<T> {
    /// A credential was issued.
    Issued(T),
    /// The gateway rejected the credentials (counts toward the lockout), with what it said if
    /// anything, for example a result code (`ErrCode 0`).
    Rejected(Option<String>),
    /// An answer that is not a rejection (for example "not enabled", "try later"): no lockout,
    /// but the guard backs off. The error goes to the caller.
    Declined(Error),
    /// No answer payauth can read: the gateway may have counted it.
    Unreadable,
}

/// How a gateway kind names its authentication in messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Words {
    /// What the attempt does: "authenticate", "request a session".
    pub(crate) action: &'static str,
    /// The attempt as a noun: "authentication", "the session request".
    pub(crate) attempt: &'static str,
    /// The secret an operator changes to unlock: "token", "password".
    pub(crate) secret: &'static str,
}

/// What [`Core::begin`] gave.
pub(crate) enum Started<C> {
    /// Send one authentication with these credentials, and settle the attempt.
    Attempt(Attempt, Arc<C>),
    /// A credential newer than the caller's was published meanwhile: use it.
    Adopt(Published),
}

/// Why no attempt was started.
pub(crate) enum NotStarted {
    /// The guard refused.
    Refused(Refusal),
    /// The credentials changed while the guard reserved the attempt; nothing was sent.
    Changed(Error),
}

impl Core {
    /// Reserves an attempt and reads the credentials it is for; or, when the caller holds
    /// generation `seen` and a newer credential was published, hands that over.
    pub(crate) async fn begin<C: Fingerprinted>(
        &self,
        current: &ArcSwap<C>,
        words: Words,
        seen: Option<u64>,
    ) -> Result<Started<C>, NotStarted> {
        let attempt = match self.guard.begin(seen).await.map_err(NotStarted::Refused)? {
            Begun::Attempt(attempt) => attempt,
            Begun::Adopt(published) => return Ok(Started::Adopt(published)),
        };
        let credentials = current.load_full();
        if attempt.fingerprint() != credentials.fingerprint() {
            attempt.not_sent().await;
            return Err(NotStarted::Changed(self.error(
                ErrorCode::AuthUnavailable,
                format!(
                    "the credentials changed while payauth was about to {}; retry",
                    words.action
                ),
            )));
        }
        Ok(Started::Attempt(attempt, credentials))
    }

    /// Sends `request` for `attempt`, reads the answer whole (up to `answer_limit` bytes) and
    /// settles the attempt by `judge`'s verdict on it.
    pub(crate) async fn authenticate<S, ResB, T>(
        &self,
        attempt: Attempt,
        request: Request<Full<Bytes>>,
        client: S,
        answer_limit: usize,
        words: Words,
        judge: impl FnOnce(&Bytes) -> Verdict<T>,
    ) -> Result<T, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let (credential, attempt) = self
            .authenticate_open(attempt, request, client, answer_limit, words, judge)
            .await?;
        attempt.success().await;
        self.metrics.credential_obtained();
        Ok(credential)
    }

    /// Like [`authenticate`](Self::authenticate), but a credential issued comes back with its
    /// attempt still open: the caller settles it (success) once it has published the credential,
    /// so that no other holder is admitted between the two. Every other verdict is settled here.
    pub(crate) async fn authenticate_open<S, ResB, T>(
        &self,
        attempt: Attempt,
        request: Request<Full<Bytes>>,
        client: S,
        answer_limit: usize,
        words: Words,
        judge: impl FnOnce(&Bytes) -> Verdict<T>,
    ) -> Result<(T, Attempt), Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let name = self.name();
        let answer =
            forward::call_whole(client, request, self.settings.request_timeout, answer_limit).await;
        let bytes = match answer {
            Ok((head, bytes)) => {
                self.clock.observe(&head.headers, &self.metrics);
                bytes
            }
            Err(Failure::NotSent) => {
                attempt.not_sent().await;
                return Err(self.error(
                    ErrorCode::AuthUnavailable,
                    format!("could not connect to the gateway to {}", words.action),
                ));
            }
            Err(_) => {
                // Sent, with no usable answer in time: the gateway may have counted it.
                attempt.unknown().await;
                return Err(self.error(
                    ErrorCode::AuthUnavailable,
                    format!("{} got no usable answer in time", words.attempt),
                ));
            }
        };
        match judge(&bytes) {
            Verdict::Issued(credential) => Ok((credential, attempt)),
            Verdict::Rejected(said) => {
                attempt.rejected().await;
                tracing::error!(gateway = %name, detail = said.as_deref(),
                    "the gateway rejected the credentials; not retrying");
                let detail = said.map(|said| format!(" ({said})")).unwrap_or_default();
                Err(if self.guard.is_locked() {
                    self.error(
                        ErrorCode::AuthLocked,
                        format!(
                            "the gateway rejected the credentials{detail}; nothing more is sent \
                             until the {} changes or an operator unlocks the gateway",
                            words.secret
                        ),
                    )
                } else {
                    self.error(
                        ErrorCode::AuthUnavailable,
                        format!("the gateway rejected the credentials{detail}"),
                    )
                })
            }
            Verdict::Declined(error) => {
                attempt.declined().await;
                Err(error)
            }
            Verdict::Unreadable => {
                attempt.unknown().await;
                tracing::error!(gateway = %name, "the answer to {} could not be read", words.attempt);
                Err(self.error(
                    ErrorCode::AuthUnavailable,
                    format!(
                        "the gateway's answer to {} could not be read",
                        words.attempt
                    ),
                ))
            }
        }
    }
}
