//! Where CreditGuard's sessions come from: the pool (a call takes a session, or waits for one
//! fetched on demand), the filler that keeps the pool at its target, and one `getSessionId`
//! against the lockout guard.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request};
use http_body_util::Full;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::layer::CreditGuardGateway;
use super::pool::{Acquire, Fresh, Lease, PoolKey, SessionToken, TICK};
use super::scope::{Scope, ScopeCmd, SessionScope};
use super::wire::{self, ResultCode, SessionAnswer};
use super::CreditGuardCredentials;
use crate::error::{Error, ErrorCode};
use crate::forward::{Client, GatewayBody};
use crate::gateway::auth::{Fingerprinted, NotStarted, Started, Verdict, Words};
use crate::guard::{Fingerprint, Refusal};
use crate::sync::lock;

/// Why a fetch failed, and whom it concerns.
/// Why a fetch failed, and whom it concerns.
struct FetchFailure {
    error: Error,
    /// Everyone waiting on the key gets the error: the cause is not per request (after an
    /// answer or a transport failure the guard refuses or backs off for everyone anyway).
    key_wide: bool,
}

impl Fingerprinted for CreditGuardCredentials {
    fn fingerprint(&self) -> Fingerprint {
        CreditGuardCredentials::fingerprint(self)
    }
}

/// How CreditGuard's `getSessionId` is named in errors.
const WORDS: Words = Words {
    action: "request a session",
    attempt: "the session request",
    secret: "password",
};

impl CreditGuardGateway {
    /// A session for one call: from the pool, or from a fetch the call waits for.
    pub(super) async fn session<S, ResB>(
        self: &Arc<Self>,
        key: &PoolKey,
        client: &S,
    ) -> Result<Lease, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let step = self.pool().acquire(key, Instant::now());
        self.demand.notify_one();
        match step {
            Acquire::Ready(lease) => Ok(lease),
            Acquire::TerminalDisabled => Err(terminal_disabled(self.core.name())),
            Acquire::Wait { rx, fetch } => {
                if fetch {
                    let shared = Arc::clone(self);
                    let client = client.clone();
                    let key = key.clone();
                    tracing::debug!(gateway = %self.core.name(), terminal = %key.terminal, scope = %key.scope,
                        "pool empty; fetching a session on demand");
                    // Spawned so that a caller going away cannot abandon a getSessionId halfway.
                    tokio::spawn(async move {
                        shared.fetch(key, client).await;
                    });
                }
                self.wait(rx).await
            }
        }
    }

    async fn wait(&self, mut rx: oneshot::Receiver<Result<Lease, Error>>) -> Result<Lease, Error> {
        let bound = self
            .config
            .session_wait
            .min(self.core.settings.request_timeout);
        match tokio::time::timeout(bound, &mut rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.error(
                ErrorCode::AuthUnavailable,
                "the session fetch ended without a result",
            )),
            Err(_) => {
                // A session may have been sent at the last moment: use it rather than lose it.
                rx.close();
                if let Ok(result) = rx.try_recv() {
                    return result;
                }
                // Sessions are coming (a refusal would have said so), just not fast enough for
                // the demand: shed the call rather than queue it without end.
                Err(self.error(
                    ErrorCode::Overloaded,
                    format!(
                        "no CreditGuard session within {} ms: calls arrive faster than sessions \
                         can be fetched (raise session_fetch_concurrency?); nothing was forwarded",
                        bound.as_millis()
                    ),
                ))
            }
        }
    }

    /// One `getSessionId` for `key`, its result handed to the pool (again while a discarded,
    /// suspect session leaves a waiter unserved). Returns whether it brought a session.
    async fn fetch<S, ResB>(self: Arc<Self>, key: PoolKey, client: S) -> bool
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let brought = Arc::clone(&self).fetch_until_settled(key, client).await;
        self.fetch_ended.notify_waiters();
        brought
    }

    async fn fetch_until_settled<S, ResB>(self: Arc<Self>, key: PoolKey, client: S) -> bool
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        loop {
            let epoch = self.pool().epoch();
            let result = self.get_session(&key, client.clone(), epoch).await;
            let mut pool = self.pool();
            match result {
                Ok(fresh) => {
                    if !pool.delivered(&key, fresh, Instant::now()) {
                        return true;
                    }
                }
                Err(failure) => {
                    pool.failed(&key, failure.error, failure.key_wide);
                    return false;
                }
            }
        }
    }

    async fn get_session<S, ResB>(
        &self,
        key: &PoolKey,
        client: S,
        epoch: u64,
    ) -> Result<Fresh, FetchFailure>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let name = self.core.name();
        let one = |error: Error| FetchFailure {
            error,
            key_wide: false,
        };
        let (attempt, credentials) = match self.core.begin(&self.credentials, WORDS, None).await {
            Ok(Started::Attempt(attempt, credentials)) => (attempt, credentials),
            // Sessions are never published; nothing to adopt without a generation seen.
            Ok(Started::Adopt(_)) => {
                return Err(one(self.error(
                    ErrorCode::AuthUnavailable,
                    "no session was requested; retry",
                )))
            }
            // During a backoff, say what caused it; only requests no other fetch serves fail.
            Err(NotStarted::Refused(Refusal::Backoff(wait))) => {
                return Err(one(self.backoff_error(wait)))
            }
            Err(NotStarted::Refused(refusal @ Refusal::Locked(_))) => {
                return Err(self.key_wide(refusal.into_error(name)))
            }
            Err(NotStarted::Refused(refusal)) => return Err(one(refusal.into_error(name))),
            Err(NotStarted::Changed(error)) => return Err(one(error)),
        };
        if self.stopped.load(Ordering::Acquire) {
            // Shutting down: a fetch that waited for its turn is not sent at all, and that is
            // no failure of the gateway's (nothing counted, logged or backed off).
            attempt.withdrawn().await;
            return Err(one(self.error(
                ErrorCode::AuthUnavailable,
                "payauth is shutting down; no session was requested",
            )));
        }
        tracing::debug!(gateway = name, terminal = %key.terminal, scope = %key.scope, "requesting a session");
        let request = self.session_request(&credentials, key);
        let started = Instant::now();
        let fresh = self
            .core
            .authenticate(
                attempt,
                request,
                client,
                self.core.settings.inspect_limit_bytes,
                WORDS,
                |bytes| self.judge_session(key, bytes, started, epoch),
            )
            .await
            .map_err(|error| self.key_wide(error))?;
        let elapsed = started.elapsed();
        *lock(&self.last_failure) = None;
        self.pool().observe_latency(elapsed);
        tracing::debug!(gateway = name, terminal = %key.terminal, scope = %key.scope,
            reusable = fresh.reusable, latency_ms = elapsed.as_millis() as u64, "session obtained");
        Ok(fresh)
    }

    /// The `getSessionId` call for `key`.
    fn session_request(
        &self,
        credentials: &CreditGuardCredentials,
        key: &PoolKey,
    ) -> Request<Full<Bytes>> {
        let body = wire::get_session_request(
            &credentials.user,
            &credentials.password,
            &key.terminal,
            &key.scope,
        );
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.relay_uri.clone();
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        request
    }

    /// What a `getSessionId` answer means for the guard and the pool.
    fn judge_session(
        &self,
        key: &PoolKey,
        answer: &Bytes,
        started: Instant,
        epoch: u64,
    ) -> Verdict<Fresh> {
        let name = self.core.name();
        match wire::parse_get_session(answer) {
            SessionAnswer::Issued {
                id,
                expiration,
                reusable,
            } => Verdict::Issued(Fresh {
                token: Arc::new(SessionToken::new(id)),
                reusable,
                obtained: started,
                lifetime: expiration.unwrap_or(super::pool::DEFAULT_LIFETIME),
                epoch,
            }),
            SessionAnswer::Refused(code) if code == ResultCode::AUTH_FAILED => {
                Verdict::Rejected(Some(code.to_string()))
            }
            SessionAnswer::Refused(code) if code == ResultCode::SESSIONS_NOT_SUPPORTED => {
                // An answer, not a rejection: it does not count toward the lockout.
                self.pool().disable_terminal(&key.terminal, Instant::now());
                tracing::error!(gateway = name, terminal = %key.terminal, result = %code,
                    "the terminal is not enabled for session ids (455); ask CreditGuard to enable it");
                Verdict::Declined(terminal_disabled(name))
            }
            SessionAnswer::Refused(code) => {
                // 457 (transient) and general errors: the guard backs off (bounded, jittered).
                let what = if code == ResultCode::SESSION_GENERATION_FAILED {
                    "session id generation failed at the gateway (457); backing off"
                } else if code.is_general_error() {
                    "the gateway answered getSessionId with a general error; backing off"
                } else {
                    "the gateway refused getSessionId with an unexpected result; backing off"
                };
                tracing::warn!(gateway = name, terminal = %key.terminal, scope = %key.scope, result = %code, "{what}");
                Verdict::Declined(self.error(
                    ErrorCode::AuthUnavailable,
                    format!("no session: {what} (result {code})"),
                ))
            }
            SessionAnswer::Unreadable => Verdict::Unreadable,
        }
    }

    /// A failure every request waiting on the key gets, remembered for the guard's backoff.
    fn key_wide(&self, error: Error) -> FetchFailure {
        self.remember_failure(&error);
        FetchFailure {
            error,
            key_wide: true,
        }
    }

    fn remember_failure(&self, error: &Error) {
        *lock(&self.last_failure) = Some(Cow::Owned(error.message().to_owned()));
    }

    fn backoff_error(&self, wait: Duration) -> Error {
        let cause = lock(&self.last_failure)
            .clone()
            .unwrap_or(Cow::Borrowed("the last session request failed"));
        self.error(
            ErrorCode::AuthUnavailable,
            format!("{cause}; next session request in {} ms", wait.as_millis()),
        )
    }

    pub(super) fn start_filler<S, ResB>(self: &Arc<Self>, client: &S)
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        if self.filler_started.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.filler_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let prewarm = match self.config.scope {
            Scope::None => Some(SessionScope::UNSCOPED),
            Scope::Command => Some(SessionScope {
                cmd: Some(ScopeCmd::DoDeal),
                ..SessionScope::UNSCOPED
            }),
            // Full scopes depend on each deal's validation and transaction type.
            Scope::Full => None,
        };
        if let Some(scope) = prewarm {
            let now = Instant::now();
            let mut pool = self.pool();
            for terminal in &self.terminals {
                pool.register(
                    PoolKey {
                        terminal: terminal.clone(),
                        scope,
                    },
                    now,
                );
            }
        }
        runtime.spawn(fill(
            Arc::downgrade(self),
            client.clone(),
            Arc::clone(&self.demand),
        ));
    }
}

/// The filler: keeps every active key at its target, with up to `session_fetch_concurrency`
/// `getSessionId`s on their way at once (the guard lets them through in parallel only once the
/// credentials are proven, and one at a time until then). Ends when the layer is gone.
/// The filler: keeps every active key at its target, with up to `session_fetch_concurrency`
/// `getSessionId`s on their way at once (the guard lets them through in parallel only once the
/// credentials are proven, and one at a time until then). Ends when the layer is gone.
async fn fill<S, ResB>(shared: Weak<CreditGuardGateway>, client: S, demand: Arc<Notify>)
where
    S: Client<ResB>,
    ResB: GatewayBody,
{
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        if strong.stopped.load(Ordering::Acquire) {
            return;
        }
        let starts = {
            let now = Instant::now();
            let locked = strong.core.guard.is_locked();
            let mut pool = strong.pool();
            pool.tick(now);
            let mut room = (strong.config.session_fetch_concurrency as usize)
                .saturating_sub(pool.stats().fetching);
            let mut starts = Vec::new();
            // A locked gateway sends nothing; pooled sessions are still served.
            if !locked {
                for (key, deficit) in pool.deficits(now) {
                    for _ in 0..deficit.min(room) {
                        pool.fetch_started(&key, now);
                        starts.push(key.clone());
                    }
                    room = room.saturating_sub(deficit);
                    if room == 0 {
                        break;
                    }
                }
            }
            starts
        };
        for key in starts {
            let shared = Arc::clone(&strong);
            let client = client.clone();
            let demand = Arc::clone(&demand);
            tokio::spawn(async move {
                if shared.fetch(key, client).await {
                    // A session came: look at the pool again at once.
                    demand.notify_one();
                }
            });
        }
        drop(strong);
        // Wait for a request, a fetch that brought a session, or the next tick; the guard
        // decides when an attempt may be sent again after a refusal.
        let _ = tokio::time::timeout(TICK, demand.notified()).await;
    }
}

pub(super) fn terminal_disabled(gateway: &str) -> Error {
    Error::new(
        ErrorCode::AuthUnavailable,
        gateway.to_owned(),
        "the gateway answered 455: this terminal is not enabled for session ids. Ask CreditGuard \
         to enable sessions for it; payauth does not request one for it again for a minute",
    )
}
