//! [`CreditGuardSessionLayer`] and [`CreditGuardSession`]: the CreditGuard middleware.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::Full;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::form::RelayForm;
use super::int_in::{self, TerminalNumber};
use super::pool::{
    Acquire, Fresh, Lease, Pool, PoolConfig, PoolKey, PoolStats, SessionToken, TICK,
};
use super::scope::{Scope, ScopeCmd, SessionScope};
use super::wire::{self, ResultCode, SessionAnswer};
use super::CreditGuardCredentials;
use crate::body::{collect_limited, content_length, CollectError, Inspected, ResponseBody};
use crate::error::{BoxError, Error, ErrorCode};
use crate::forward::{self, BoxFuture, Client, Failure, GatewayBody, Replayed, UpstreamLatency};
use crate::guard::{AuthGuard, GuardLimits, GuardStore, MemoryGuardStore, Refusal};
use crate::metrics::{GatewayMetrics, Outcome, ReauthReason};
use crate::sync::lock;

/// Settings of one CreditGuard gateway.
#[derive(Debug, Clone)]
pub struct CreditGuardConfig {
    /// The gateway's name in metrics, logs and errors.
    pub name: String,
    /// The gateway's base URL (scheme and authority).
    pub upstream: Uri,
    /// The relay's path (default `/xpo/Relay`). Only this path is relayed.
    pub relay_path: String,
    /// Terminals the app may use; a request for any other gets 403 `terminal_not_allowed`.
    pub terminals: Vec<String>,
    /// How narrowly sessions are scoped (default [`Scope::Command`]).
    pub scope: Scope,
    /// Rejected `getSessionId`s (405) in a row that lock the gateway (1..=5, default 1).
    pub auth_failure_budget: u32,
    /// Largest request body accepted (it is buffered to be read and replayed); larger gets 413
    /// (default 1 MiB).
    pub max_request_bytes: usize,
    /// Answers up to this size are inspected for 456; larger ones stream through (default 64 KiB).
    pub inspect_limit_bytes: usize,
    /// How long to wait for an answer's head, and at most for a session (default 30 s).
    pub request_timeout: Duration,
    /// `getSessionId`s in flight at once once the credentials are proven (a `getSessionId`
    /// with exactly them succeeded and nothing was rejected or unknown since); one at a time
    /// while unproven (default 8). Worst case: a password revoked at the gateway while N are in
    /// flight gets up to N rejections before the gateway locks.
    pub session_fetch_concurrency: u32,
    /// How long a call waits for a session when its pool is empty (capped by
    /// `request_timeout`) before it gets 503 `overloaded` (default 10 s).
    pub session_wait: Duration,
    /// Bounds of the session pool.
    pub pool: PoolConfig,
}

impl CreditGuardConfig {
    /// Defaults: `/xpo/Relay`, no terminals (add some), scope `command`, budget 1, 1 MiB
    /// requests, 64 KiB inspected, 30 s timeout, pool 2..=32 with a 30 s expiry margin.
    pub fn new(name: impl Into<String>, upstream: Uri) -> Self {
        Self {
            name: name.into(),
            upstream,
            relay_path: "/xpo/Relay".into(),
            terminals: Vec::new(),
            scope: Scope::Command,
            auth_failure_budget: 1,
            max_request_bytes: 1 << 20,
            inspect_limit_bytes: 64 << 10,
            request_timeout: Duration::from_secs(30),
            session_fetch_concurrency: 8,
            session_wait: Duration::from_secs(10),
            pool: PoolConfig::default(),
        }
    }

    fn relay_uri(&self) -> Result<Uri, http::Error> {
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(self.relay_path.parse()?);
        Ok(Uri::from_parts(parts)?)
    }
}

struct Shared {
    config: CreditGuardConfig,
    relay_uri: Uri,
    terminals: Vec<TerminalNumber>,
    credentials: ArcSwap<CreditGuardCredentials>,
    guard: Arc<AuthGuard>,
    metrics: GatewayMetrics,
    pool: Mutex<Pool>,
    /// Wakes the filler when a request took a session or found none.
    demand: Arc<Notify>,
    filler_started: AtomicBool,
    /// Set by [`CreditGuardHandle::stop`]: the filler fetches nothing more.
    stopped: AtomicBool,
    /// Why the last `getSessionId` failed, for requests refused during the guard's backoff.
    last_failure: Mutex<Option<Cow<'static, str>>>,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.config.name)
            .field("relay_uri", &self.relay_uri)
            .field("pool", &self.pool().stats())
            .finish_non_exhaustive()
    }
}

/// Swaps CreditGuard sessions into relay calls: the app's `user`/`password` never reach the
/// gateway, a scoped session from the pool does.
///
/// Requests must carry absolute URIs on the gateway (as a hyper client expects). The wrapped
/// client is also used for `getSessionId`. The pool starts filling on the first request (or on
/// [`CreditGuardSession::warm_up`]).
#[derive(Clone, Debug)]
pub struct CreditGuardSessionLayer {
    shared: Arc<Shared>,
}

/// Control of a running CreditGuard gateway: credentials, unlock, pool status.
#[derive(Clone, Debug)]
pub struct CreditGuardHandle {
    shared: Arc<Shared>,
}

impl CreditGuardSessionLayer {
    /// A layer whose lockout guard lives in memory and whose metrics are not exported.
    pub fn new(
        config: CreditGuardConfig,
        credentials: CreditGuardCredentials,
    ) -> std::io::Result<Self> {
        let metrics = GatewayMetrics::unregistered(&config.name);
        Self::with_state(
            config,
            credentials,
            Arc::new(MemoryGuardStore::default()),
            metrics,
        )
    }

    /// A layer with a persistent guard store and exported metrics.
    pub fn with_state(
        config: CreditGuardConfig,
        credentials: CreditGuardCredentials,
        store: Arc<dyn GuardStore>,
        metrics: GatewayMetrics,
    ) -> std::io::Result<Self> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let relay_uri = config
            .relay_uri()
            .map_err(|e| invalid(format!("relay path: {e}")))?;
        if relay_uri.scheme().is_none() || relay_uri.authority().is_none() {
            return Err(invalid(
                "upstream must be an absolute URL such as https://host".into(),
            ));
        }
        let terminals: Vec<TerminalNumber> = config
            .terminals
            .iter()
            .map(|t| TerminalNumber::new(t.as_str()))
            .filter(|t| !t.as_str().is_empty())
            .collect();
        if terminals.is_empty() {
            return Err(invalid("terminals must list at least one terminal".into()));
        }
        if config.pool.min > config.pool.max {
            return Err(invalid("pool min is over pool max".into()));
        }
        let guard = AuthGuard::open(
            &config.name,
            GuardLimits {
                budget: config.auth_failure_budget,
                proven_concurrency: config.session_fetch_concurrency,
            },
            credentials.fingerprint(),
            store,
            metrics.clone(),
        )?;
        let pool = Pool::new(config.pool.clone(), metrics.clone(), Instant::now());
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                relay_uri,
                terminals,
                credentials: ArcSwap::from_pointee(credentials),
                guard,
                metrics,
                pool: Mutex::new(pool),
                demand: Arc::new(Notify::new()),
                filler_started: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                last_failure: Mutex::new(None),
            }),
        })
    }

    /// A handle to control the gateway while it runs.
    pub fn handle(&self) -> CreditGuardHandle {
        CreditGuardHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl CreditGuardHandle {
    /// Swaps in new credentials (the password file changed). The guard switches to their
    /// record, so a gateway locked by a rejected password is unlocked by a different one, and
    /// going back to the rejected one finds it locked.
    ///
    /// Pooled sessions stay in use when only the password changed: the gateway issued them
    /// and decides how long they are good for (a refusal, 456, retires them). When the user
    /// changed, they belong to the other user and are discarded (counted as wasted), and so
    /// are sessions still being fetched for the old user.
    pub fn update_credentials(&self, credentials: CreditGuardCredentials) {
        let fingerprint = credentials.fingerprint();
        let user_changed = self.shared.credentials.load().user != credentials.user;
        self.shared.credentials.store(Arc::new(credentials));
        self.shared.guard.change_credentials(fingerprint);
        let mut pool = self.shared.pool();
        if user_changed {
            pool.change_user();
        } else {
            pool.clear_disabled();
        }
        drop(pool);
        self.shared.demand.notify_one();
    }

    /// Stops filling the pool (at shutdown) and resolves once the `getSessionId`s in flight have
    /// ended (or after 5 s), so none is left half-done when the process exits.
    pub fn stop(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.demand.notify_waiters();
        let shared = Arc::clone(&self.shared);
        async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            while shared.pool().stats().fetching > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// The gateway's lockout guard (unlock, status).
    pub fn guard(&self) -> &Arc<AuthGuard> {
        &self.shared.guard
    }

    /// A snapshot of the session pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.shared.pool().stats()
    }

    /// The gateway's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }
}

impl<S> Layer<S> for CreditGuardSessionLayer {
    type Service = CreditGuardSession<S>;

    fn layer(&self, inner: S) -> CreditGuardSession<S> {
        CreditGuardSession {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The CreditGuard middleware; see [`CreditGuardSessionLayer`].
#[derive(Clone, Debug)]
pub struct CreditGuardSession<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, ResB> CreditGuardSession<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>> + Client<ResB>,
    ResB: GatewayBody,
{
    /// Starts filling the pool now (for every configured terminal, unscoped or scoped to
    /// `doDeal` as configured) instead of on the first request. Must be called within a tokio
    /// runtime; does nothing if the pool is already filling.
    pub fn warm_up(&self) {
        self.shared.start_filler(&self.inner);
    }
}

impl<S, B, ResB> Service<Request<B>> for CreditGuardSession<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>> + Client<ResB>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResB: GatewayBody,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Error;
    type Future = BoxFuture<Result<Self::Response, Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // The client's readiness is awaited per call (it is cloned for replays anyway).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        let client = self.inner.clone();
        Box::pin(async move {
            shared.start_filler(&client);
            let result = shared.handle(client, request).await;
            shared.metrics.count(result)
        })
    }
}

/// Why a fetch failed, and whom it concerns.
struct FetchFailure {
    error: Error,
    /// Everyone waiting on the key gets the error: the cause is not per request (after an
    /// answer or a transport failure the guard refuses or backs off for everyone anyway).
    key_wide: bool,
}

impl Shared {
    fn pool(&self) -> MutexGuard<'_, Pool> {
        crate::sync::lock(&self.pool)
    }

    fn error(&self, code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(code, self.config.name.clone(), message)
    }

    /// The configured relay URI with `query`.
    fn relay_uri_with(&self, query: Option<&str>) -> Result<Uri, http::Error> {
        match query {
            None => Ok(self.relay_uri.clone()),
            Some(query) => {
                let mut parts = self.relay_uri.clone().into_parts();
                parts.path_and_query = Some(format!("{}?{query}", self.relay_uri.path()).parse()?);
                Ok(Uri::from_parts(parts)?)
            }
        }
    }

    fn bad_request(&self, message: impl Into<Cow<'static, str>>) -> Error {
        self.error(ErrorCode::BadRequest, message)
    }

    async fn handle<S, B, ResB>(
        self: &Arc<Self>,
        client: S,
        request: Request<B>,
    ) -> Result<(Response<ResponseBody<ResB>>, Outcome), Error>
    where
        S: Client<ResB>,
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
        ResB: GatewayBody,
    {
        let (mut parts, body) = request.into_parts();
        let on_relay = crate::path::canonicalize(parts.uri.path())
            .is_ok_and(|path| path.eq_ignore_ascii_case(&self.config.relay_path));
        if !on_relay {
            return Err(self.bad_request(format!(
                "payauth relays only POST {}; other paths (the SOAP relay included) are not \
                 forwarded",
                self.config.relay_path
            )));
        }
        if parts.method != Method::POST {
            return Err(self.bad_request("the relay takes a POST form; nothing was forwarded"));
        }
        if !is_form(&parts.headers) {
            return Err(self.bad_request(
                "the relay takes a form: Content-Type must be application/x-www-form-urlencoded; \
                 nothing was forwarded",
            ));
        }
        if query_has_relay_fields(parts.uri.query()) {
            return Err(self.bad_request(
                "the relay fields belong in the POST body, not the query string; nothing was forwarded",
            ));
        }
        // The gateway gets the relay path exactly as configured, whatever spelling of it the app
        // used: what payauth checked is what is sent.
        parts.uri = self.relay_uri_with(parts.uri.query()).map_err(|_| {
            self.bad_request("the query string is not valid; nothing was forwarded")
        })?;
        let limit = self.config.max_request_bytes;
        let body = collect_limited(body, limit, content_length(&parts.headers))
            .await
            .map_err(|e| match e {
                CollectError::TooLarge(limit) => self.error(
                    ErrorCode::BodyTooLarge,
                    format!("request body over the limit of {limit} bytes; nothing was forwarded"),
                ),
                CollectError::Read(_) => {
                    self.bad_request("the request body could not be read; nothing was forwarded")
                }
            })?;
        let form = RelayForm::parse(body)
            .map_err(|e| self.bad_request(format!("{e}; nothing was forwarded")))?;
        let int_in = int_in::read(&form.decoded_int_in())
            .map_err(|e| self.bad_request(format!("{e}; nothing was forwarded")))?;
        let Some(terminal) = int_in.terminal.clone() else {
            return Err(self.bad_request(
                "int_in names no terminalNumber; payauth needs it to choose a session. Nothing was forwarded",
            ));
        };
        if !self.terminals.contains(&terminal) {
            return Err(self.error(
                ErrorCode::TerminalNotAllowed,
                "the terminalNumber in int_in is not one of this gateway's terminals; nothing was forwarded",
            ));
        }
        if int_in.is_get_session_id() {
            tracing::debug!(gateway = %self.config.name, "answering the app's own getSessionId locally");
            return Ok((
                local_answer(wire::local_get_session_answer()),
                Outcome::Local,
            ));
        }
        let key = PoolKey {
            terminal,
            scope: self.config.scope.session_scope(&int_in),
        };

        let mut lease = self.acquire(&key, &client).await?;
        let mut replayed = false;
        let mut upstream = Duration::ZERO;
        let answer = |head, body, replayed, upstream| {
            let mut response = Response::from_parts(head, body);
            response.extensions_mut().insert(Replayed(replayed));
            response.extensions_mut().insert(UpstreamLatency(upstream));
            Ok((response, Outcome::Forwarded))
        };
        loop {
            let outgoing = outgoing(&parts, &form, &lease);
            let sent_at = Instant::now();
            let (head, inspected) = forward::call(
                client.clone(),
                outgoing,
                self.config.request_timeout,
                self.config.inspect_limit_bytes,
            )
            .await
            .map_err(|failure| self.failed(failure, replayed))?;
            upstream += sent_at.elapsed();
            self.metrics
                .upstream_duration(sent_at.elapsed().as_secs_f64());
            let bytes = match inspected {
                Inspected::Streaming(body) => return answer(head, body, replayed, upstream),
                Inspected::Buffered(bytes) => bytes,
            };
            if !wire::is_session_timeout(&bytes) {
                return answer(head, ResponseBody::full(bytes), replayed, upstream);
            }
            if replayed {
                // A second refusal goes to the app as the gateway sent it: never loop.
                tracing::warn!(gateway = %self.config.name, terminal = %key.terminal, scope = %key.scope,
                    "gateway refused a second session (456); passing its answer to the app");
                return answer(head, ResponseBody::full(bytes), replayed, upstream);
            }
            let retired = self.pool().retire_before(sent_at);
            tracing::info!(gateway = %self.config.name, terminal = %key.terminal, scope = %key.scope,
                retired, reusable = lease.reusable,
                "gateway refused the session (456), call not processed; replaying once with a new session");
            self.metrics.reauth(ReauthReason::SessionTimeout456);
            lease = self.acquire(&key, &client).await?;
            self.metrics.replay();
            replayed = true;
        }
    }

    fn failed(&self, failure: Failure, replayed: bool) -> Error {
        tracing::warn!(gateway = %self.config.name, failure = ?failure, replayed,
            "relay call failed; not replayed");
        failure.into_error(&self.config.name)
    }

    /// A session for one call: from the pool, or from a fetch the call waits for.
    async fn acquire<S, ResB>(self: &Arc<Self>, key: &PoolKey, client: &S) -> Result<Lease, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let step = self.pool().acquire(key, Instant::now());
        self.demand.notify_one();
        match step {
            Acquire::Ready(lease) => Ok(lease),
            Acquire::TerminalDisabled => Err(terminal_disabled(&self.config.name)),
            Acquire::Wait { rx, fetch } => {
                if fetch {
                    let shared = Arc::clone(self);
                    let client = client.clone();
                    let key = key.clone();
                    tracing::debug!(gateway = %self.config.name, terminal = %key.terminal, scope = %key.scope,
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
        let bound = self.config.session_wait.min(self.config.request_timeout);
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
        let name = self.config.name.as_str();
        let one = |error: Error| FetchFailure {
            error,
            key_wide: false,
        };
        let all = |error: Error| {
            self.remember_failure(&error);
            FetchFailure {
                error,
                key_wide: true,
            }
        };
        let attempt = self.guard.begin().await.map_err(|refusal| match refusal {
            // During a backoff, say what caused it; only requests no other fetch serves fail.
            Refusal::Backoff(wait) => one(self.backoff_error(wait)),
            Refusal::Locked(_) => all(refusal.into_error(name)),
            Refusal::Storage => one(refusal.into_error(name)),
        })?;
        if self.stopped.load(Ordering::Acquire) {
            // Shutting down: a fetch that waited for its turn is not sent at all.
            attempt.not_sent().await;
            return Err(one(self.error(
                ErrorCode::AuthUnavailable,
                "payauth is shutting down; no session was requested",
            )));
        }
        let credentials = self.credentials.load_full();
        if attempt.fingerprint() != credentials.fingerprint() {
            // The credentials changed between the two loads; nothing was sent.
            attempt.not_sent().await;
            return Err(one(self.error(
                ErrorCode::AuthUnavailable,
                "the credentials changed while a session was being requested; retry",
            )));
        }
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
        tracing::debug!(gateway = name, terminal = %key.terminal, scope = %key.scope, "requesting a session");
        let started = Instant::now();
        let answer = forward::call_whole(
            client,
            request,
            self.config.request_timeout,
            self.config.inspect_limit_bytes,
        )
        .await;
        let bytes = match answer {
            Ok((_, bytes)) => bytes,
            Err(Failure::NotSent) => {
                attempt.not_sent().await;
                return Err(all(self.error(
                    ErrorCode::AuthUnavailable,
                    "could not connect to the gateway to request a session",
                )));
            }
            Err(_) => {
                // Sent, with no usable answer in time: the gateway may have counted it.
                attempt.unknown().await;
                return Err(all(self.error(
                    ErrorCode::AuthUnavailable,
                    "the session request got no usable answer in time",
                )));
            }
        };
        let elapsed = started.elapsed();
        match wire::parse_get_session(&bytes) {
            SessionAnswer::Issued {
                id,
                expiration,
                reusable,
            } => {
                attempt.success().await;
                *lock(&self.last_failure) = None;
                self.metrics.credential_obtained();
                self.pool().observe_latency(elapsed);
                tracing::debug!(gateway = name, terminal = %key.terminal, scope = %key.scope, reusable,
                    latency_ms = elapsed.as_millis() as u64, "session obtained");
                Ok(Fresh {
                    token: Arc::new(SessionToken::new(id)),
                    reusable,
                    obtained: started,
                    lifetime: expiration.unwrap_or(super::pool::DEFAULT_LIFETIME),
                    epoch,
                })
            }
            SessionAnswer::Refused(code) if code == ResultCode::AUTH_FAILED => {
                attempt.rejected().await;
                tracing::error!(gateway = name, result = %code,
                    "the gateway rejected the credentials (405); not retrying");
                Err(all(if self.guard.is_locked() {
                    self.error(
                        ErrorCode::AuthLocked,
                        "the gateway rejected the credentials (405); no session is requested until \
                         the password changes or an operator unlocks the gateway",
                    )
                } else {
                    self.error(
                        ErrorCode::AuthUnavailable,
                        "the gateway rejected the credentials (405)",
                    )
                }))
            }
            SessionAnswer::Refused(code) if code == ResultCode::SESSIONS_NOT_SUPPORTED => {
                // An answer, not a rejection: it does not count toward the lockout.
                attempt.declined().await;
                self.pool().disable_terminal(&key.terminal, Instant::now());
                tracing::error!(gateway = name, terminal = %key.terminal, result = %code,
                    "the terminal is not enabled for session ids (455); ask CreditGuard to enable it");
                Err(all(terminal_disabled(name)))
            }
            SessionAnswer::Refused(code) => {
                // 457 (transient) and general errors: the guard backs off (bounded, jittered).
                attempt.declined().await;
                let what = if code == ResultCode::SESSION_GENERATION_FAILED {
                    "session id generation failed at the gateway (457); backing off"
                } else if code.is_general_error() {
                    "the gateway answered getSessionId with a general error; backing off"
                } else {
                    "the gateway refused getSessionId with an unexpected result; backing off"
                };
                tracing::warn!(gateway = name, terminal = %key.terminal, scope = %key.scope, result = %code, "{what}");
                Err(all(self.error(
                    ErrorCode::AuthUnavailable,
                    format!("no session: {what} (result {code})"),
                )))
            }
            SessionAnswer::Unreadable => {
                attempt.unknown().await;
                tracing::error!(gateway = name, "the getSessionId answer could not be read");
                Err(all(self.error(
                    ErrorCode::AuthUnavailable,
                    "the gateway's getSessionId answer could not be read",
                )))
            }
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

    fn start_filler<S, ResB>(self: &Arc<Self>, client: &S)
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
async fn fill<S, ResB>(shared: Weak<Shared>, client: S, demand: Arc<Notify>)
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
            let locked = strong.guard.is_locked();
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

fn terminal_disabled(gateway: &str) -> Error {
    Error::new(
        ErrorCode::AuthUnavailable,
        gateway.to_owned(),
        "the gateway answered 455: this terminal is not enabled for session ids. Ask CreditGuard \
         to enable sessions for it; payauth does not request one for it again for a minute",
    )
}

/// Whether the request declares exactly one Content-Type, `application/x-www-form-urlencoded`
/// (parameters such as a charset allowed): the gateway reads the fields only then, and a
/// multipart body would hide them from payauth.
fn is_form(headers: &http::HeaderMap) -> bool {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (Some(value), None) => value.to_str().is_ok_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        }),
        _ => false,
    }
}

/// Whether a query string carries a relay field (the gateway would read it, and a servlet
/// container puts query parameters ahead of the body's; payauth would not), under any spelling
/// (names read as [`super::form::relay_field`] reads them; a bad escape counts as one).
fn query_has_relay_fields(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            !matches!(super::form::relay_field(name.as_bytes()), Ok(None))
        })
    })
}

fn outgoing(parts: &http::request::Parts, form: &RelayForm, lease: &Lease) -> Request<Full<Bytes>> {
    let mut headers = parts.headers.clone();
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    let mut request = Request::new(Full::new(form.rewrite(lease.token.field())));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.headers_mut() = headers;
    request
}

fn local_answer<ResB>(body: Bytes) -> Response<ResponseBody<ResB>> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = StatusCode::OK;
    response.extensions_mut().insert(forward::AnsweredLocally);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/xml; charset=UTF-8"),
    );
    response
}
