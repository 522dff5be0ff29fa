//! [`CreditGuardSessionLayer`] and [`CreditGuardSession`]: the CreditGuard middleware.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response};
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
use crate::body::ResponseBody;
use crate::error::{BoxError, Error, ErrorCode};
use crate::forward::{BoxFuture, Client, GatewayBody};
use crate::gateway::auth::{Fingerprinted, NotStarted, Started, Verdict, Words};
use crate::gateway::exchange::{exchange, Exchange};
use crate::gateway::SharedState;
use crate::gateway::{self, Core, GatewayControl, GatewaySettings, Handle, Middleware};
use crate::guard::{Fingerprint, GuardStore, MemoryGuardStore, Refusal};
use crate::metrics::{GatewayMetrics, Outcome, ReauthReason};
use crate::sync::lock;

/// Settings of one CreditGuard gateway.
#[derive(Debug, Clone)]
pub struct CreditGuardConfig {
    /// What every gateway has: name, upstream, budget (rejected `getSessionId`s, 405, in a
    /// row that lock the gateway), limits (the inspected answers are checked for 456), timeout
    /// (also the most a call waits for a session).
    pub gateway: GatewaySettings,
    /// The relay's path (default `/xpo/Relay`). Only this path is relayed.
    pub relay_path: String,
    /// Terminals the app may use; a request for any other gets 403 `terminal_not_allowed`.
    pub terminals: Vec<String>,
    /// How narrowly sessions are scoped (default [`Scope::Command`]).
    pub scope: Scope,
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
    /// Default of [`Self::relay_path`].
    pub const DEFAULT_RELAY_PATH: &'static str = "/xpo/Relay";
    /// Default of [`Self::session_fetch_concurrency`].
    pub const DEFAULT_SESSION_FETCH_CONCURRENCY: u32 = 8;
    /// Default of [`Self::session_wait`]: 10 s.
    pub const DEFAULT_SESSION_WAIT: Duration = Duration::from_secs(10);

    /// Defaults: `/xpo/Relay`, no terminals (add some), scope `command`, 8 fetches in flight,
    /// 10 s session wait, pool 2..=32 with a 30 s expiry margin, and the [`GatewaySettings`]
    /// defaults (budget 1, 1 MiB requests, 64 KiB inspected, 30 s timeout).
    pub fn new(name: impl Into<String>, upstream: http::Uri) -> Self {
        Self {
            gateway: GatewaySettings::new(name, upstream),
            relay_path: Self::DEFAULT_RELAY_PATH.into(),
            terminals: Vec::new(),
            scope: Scope::Command,
            session_fetch_concurrency: Self::DEFAULT_SESSION_FETCH_CONCURRENCY,
            session_wait: Self::DEFAULT_SESSION_WAIT,
            pool: PoolConfig::default(),
        }
    }
}

/// A CreditGuard gateway's state, shared by its layer, its middleware and its handle.
pub struct CreditGuardGateway {
    core: Core,
    config: CreditGuardConfig,
    relay_uri: http::Uri,
    terminals: Vec<TerminalNumber>,
    credentials: ArcSwap<CreditGuardCredentials>,
    pool: Mutex<Pool>,
    /// Wakes the filler when a request took a session or found none.
    demand: Arc<Notify>,
    filler_started: AtomicBool,
    /// Set by [`CreditGuardHandle::stop`]: the filler fetches nothing more.
    stopped: AtomicBool,
    /// Notified each time a `getSessionId` ends (a stop waits for the last one).
    fetch_ended: Notify,
    /// Why the last `getSessionId` failed, for requests refused during the guard's backoff.
    last_failure: Mutex<Option<Cow<'static, str>>>,
}

impl fmt::Debug for CreditGuardGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreditGuardGateway")
            .field("name", &self.core.name())
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
    shared: Arc<CreditGuardGateway>,
}

/// Control of a running CreditGuard gateway: credentials, unlock, pool status.
#[derive(Clone, Debug)]
pub struct CreditGuardHandle {
    shared: Arc<CreditGuardGateway>,
}

impl CreditGuardSessionLayer {
    /// A layer whose lockout guard lives in memory and whose metrics are not exported.
    pub fn new(
        config: CreditGuardConfig,
        credentials: CreditGuardCredentials,
    ) -> std::io::Result<Self> {
        let metrics = GatewayMetrics::unregistered(&config.gateway.name);
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
        let terminals = checked_terminals(&config)?;
        let core = Core::open(
            &config.gateway,
            config.session_fetch_concurrency,
            credentials.fingerprint(),
            store,
            metrics,
        )?;
        Self::with_core(config, credentials, terminals, core)
    }

    /// A layer on a credential state of the caller's (for example one shared by replicas): the
    /// lockout record lives there (session pools stay per layer). It is switched to
    /// `credentials` now.
    pub fn with_credential_state(
        config: CreditGuardConfig,
        credentials: CreditGuardCredentials,
        state: SharedState,
        metrics: GatewayMetrics,
    ) -> std::io::Result<Self> {
        let terminals = checked_terminals(&config)?;
        state.change_credentials(credentials.fingerprint());
        let core = Core::new(&config.gateway, state, metrics);
        Self::with_core(config, credentials, terminals, core)
    }

    fn with_core(
        config: CreditGuardConfig,
        credentials: CreditGuardCredentials,
        terminals: Vec<TerminalNumber>,
        core: Core,
    ) -> std::io::Result<Self> {
        let relay_uri = config.gateway.upstream_at(&config.relay_path)?;
        let pool = Pool::new(config.pool.clone(), core.metrics.clone(), Instant::now());
        Ok(Self {
            shared: Arc::new(CreditGuardGateway {
                core,
                config,
                relay_uri,
                terminals,
                credentials: ArcSwap::from_pointee(credentials),
                pool: Mutex::new(pool),
                demand: Arc::new(Notify::new()),
                filler_started: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                fetch_ended: Notify::new(),
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

/// The configured terminals, checked (and the pool's bounds with them).
fn checked_terminals(config: &CreditGuardConfig) -> std::io::Result<Vec<TerminalNumber>> {
    let invalid = |e: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_owned());
    let terminals: Vec<TerminalNumber> = config
        .terminals
        .iter()
        .map(|t| TerminalNumber::new(t.as_str()))
        .filter(|t| !t.as_str().is_empty())
        .collect();
    if terminals.is_empty() {
        return Err(invalid("terminals must list at least one terminal"));
    }
    if config.pool.min > config.pool.max {
        return Err(invalid("pool min is over pool max"));
    }
    Ok(terminals)
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
        self.shared.core.guard.change_credentials(fingerprint);
        let mut pool = self.shared.pool();
        if user_changed {
            pool.change_user();
        } else {
            pool.clear_disabled();
        }
        drop(pool);
        self.shared.demand.notify_one();
    }

    /// The gateway's lockout guard (unlock, status).
    pub fn guard(&self) -> &SharedState {
        &self.shared.core.guard
    }

    /// The gateway's name.
    pub fn name(&self) -> &str {
        self.shared.core.name()
    }

    /// Stops filling the pool (at shutdown) and resolves once the `getSessionId`s in flight have
    /// ended (or after 5 s), so none is left half-done when the process exits.
    pub fn stop(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stopped = self.stop_within(Duration::from_secs(5));
        async move {
            stopped.await;
        }
    }

    /// [`stop`](Self::stop), waiting at most `limit`; resolves to whether every fetch ended.
    pub fn stop_within(
        &self,
        limit: Duration,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.demand.notify_waiters();
        let shared = Arc::clone(&self.shared);
        async move {
            // Fetches waiting for their turn count too: each settles (unsent) once it has it.
            let idle = || shared.pool().stats().fetching == 0;
            crate::sync::wait_until(&shared.fetch_ended, limit, idle).await
        }
    }

    /// A snapshot of the session pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.shared.pool().stats()
    }
}

impl GatewayControl for CreditGuardHandle {
    fn name(&self) -> &str {
        CreditGuardHandle::name(self)
    }

    fn guard(&self) -> &SharedState {
        CreditGuardHandle::guard(self)
    }

    fn stop(&self, limit: Duration) -> BoxFuture<()> {
        let stopped = self.stop_within(limit);
        Box::pin(async move {
            stopped.await;
        })
    }
}

impl<S> Layer<S> for CreditGuardSessionLayer {
    type Service = CreditGuardSession<S>;

    fn layer(&self, inner: S) -> CreditGuardSession<S> {
        Middleware {
            inner,
            kind: Arc::clone(&self.shared),
        }
    }
}

/// The CreditGuard middleware; see [`CreditGuardSessionLayer`].
pub type CreditGuardSession<S> = Middleware<CreditGuardGateway, S>;

impl<S, ResB> Middleware<CreditGuardGateway, S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>> + Client<ResB>,
    ResB: GatewayBody,
{
    /// Starts filling the pool now (for every configured terminal, unscoped or scoped to
    /// `doDeal` as configured) instead of on the first request. Must be called within a tokio
    /// runtime; does nothing if the pool is already filling.
    pub fn warm_up(&self) {
        self.kind.start_filler(&self.inner);
    }
}

impl gateway::sealed::Sealed for CreditGuardGateway {}

impl Handle for CreditGuardGateway {
    async fn handle<S, B, ResB>(
        self: Arc<Self>,
        client: S,
        request: Request<B>,
    ) -> Result<Response<ResponseBody<ResB>>, Error>
    where
        S: Client<ResB>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        ResB: GatewayBody,
    {
        self.start_filler(&client);
        let result = self.call(client, request).await;
        self.core.metrics.count(result)
    }
}

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

/// A relay call once read: the app's request (its URI already the configured relay's), its
/// form, and the pool key its `int_in` asks for.
pub(crate) struct Call {
    parts: http::request::Parts,
    form: RelayForm,
    key: PoolKey,
}

impl Exchange for CreditGuardGateway {
    type Call = Call;
    type Credential = Lease;

    fn core(&self) -> &Core {
        &self.core
    }

    fn parts(call: &Call) -> &http::request::Parts {
        &call.parts
    }

    fn outgoing(&self, call: &Call, lease: &Lease) -> Result<Request<Full<Bytes>>, Error> {
        Ok(gateway::outgoing(
            &call.parts,
            call.form.rewrite(lease.token.field()),
        ))
    }

    fn refusal(&self, answer: &[u8]) -> Option<ReauthReason> {
        wire::is_session_timeout(answer).then_some(ReauthReason::SessionTimeout456)
    }

    async fn replacement<'a, S, ResB>(
        self: &'a Arc<Self>,
        call: &'a Call,
        refused: Lease,
        reason: ReauthReason,
        sent_at: Instant,
        client: &'a S,
    ) -> Result<Lease, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let retired = self.pool().retire_before(sent_at);
        let key = &call.key;
        tracing::info!(gateway = %self.core.name(), terminal = %key.terminal, scope = %key.scope,
            retired, reusable = refused.reusable,
            "gateway refused the session (456), call not processed; replaying once with a new session");
        self.core.metrics.reauth(reason);
        self.acquire(key, client).await
    }
}

impl CreditGuardGateway {
    fn pool(&self) -> MutexGuard<'_, Pool> {
        crate::sync::lock(&self.pool)
    }

    fn error(&self, code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Error {
        self.core.error(code, message)
    }

    /// The configured relay URI with `query`.
    fn relay_uri_with(&self, query: Option<&str>) -> Result<http::Uri, http::Error> {
        match query {
            None => Ok(self.relay_uri.clone()),
            Some(query) => {
                let mut parts = self.relay_uri.clone().into_parts();
                parts.path_and_query = Some(format!("{}?{query}", self.relay_uri.path()).parse()?);
                Ok(http::Uri::from_parts(parts)?)
            }
        }
    }

    async fn call<S, B, ResB>(
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
        self.check_head(&mut parts)?;
        let body = self.core.read_body(&parts, body).await?;
        let form = RelayForm::parse(body).map_err(|e| self.core.refuse(e))?;
        let int_in = int_in::read(&form.decoded_int_in()).map_err(|e| self.core.refuse(e))?;
        let Some(terminal) = int_in.terminal.clone() else {
            return Err(self.core.bad_request(
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
            tracing::debug!(gateway = %self.core.name(), "answering the app's own getSessionId locally");
            return Ok((
                gateway::local_answer(wire::local_get_session_answer(), "text/xml; charset=UTF-8"),
                Outcome::Local,
            ));
        }
        let key = PoolKey {
            terminal,
            scope: self.config.scope.session_scope(&int_in),
        };
        let lease = self.acquire(&key, &client).await?;
        exchange(self, &Call { parts, form, key }, lease, client).await
    }

    /// Checks what the head says (path, method, content type, query) and points the request at
    /// the configured relay URI: what payauth checked is what is sent, whatever spelling of the
    /// relay path the app used.
    fn check_head(&self, parts: &mut http::request::Parts) -> Result<(), Error> {
        let on_relay = crate::path::canonicalize(parts.uri.path())
            .is_ok_and(|path| path.eq_ignore_ascii_case(&self.config.relay_path));
        if !on_relay {
            return Err(self.core.bad_request(format!(
                "payauth relays only POST {}; other paths (the SOAP relay included) are not \
                 forwarded",
                self.config.relay_path
            )));
        }
        if parts.method != Method::POST {
            return Err(self.core.refuse("the relay takes a POST form"));
        }
        if !is_form(&parts.headers) {
            return Err(self.core.refuse(
                "the relay takes a form: Content-Type must be application/x-www-form-urlencoded",
            ));
        }
        if query_has_relay_fields(parts.uri.query()) {
            return Err(self
                .core
                .refuse("the relay fields belong in the POST body, not the query string"));
        }
        parts.uri = self
            .relay_uri_with(parts.uri.query())
            .map_err(|_| self.core.refuse("the query string is not valid"))?;
        Ok(())
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
