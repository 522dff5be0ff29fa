//! [`CreditGuardSessionLayer`] and [`CreditGuardSession`]: the CreditGuard middleware, its
//! settings, its state and its handle. What a relay call must be and how the session goes into
//! it: [`super::rules`]; where sessions come from: [`super::sessions`] and [`super::pool`].

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::int_in::TerminalNumber;
use super::pool::{Pool, PoolConfig, PoolStats};
use super::scope::Scope;
use super::CreditGuardCredentials;
use crate::error::{Error, ErrorCode};
use crate::forward::{Client, GatewayBody};
use crate::gateway::{Core, GatewaySettings, LayerBuilder, Middleware, SharedState};

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
    pub(super) core: Core,
    pub(super) config: CreditGuardConfig,
    pub(super) relay_uri: http::Uri,
    pub(super) terminals: Vec<TerminalNumber>,
    pub(super) credentials: ArcSwap<CreditGuardCredentials>,
    pub(super) pool: Mutex<Pool>,
    /// Wakes the filler when a request took a session or found none.
    pub(super) demand: Arc<Notify>,
    pub(super) filler_started: AtomicBool,
    /// Set by [`CreditGuardHandle::stop`]: the filler fetches nothing more.
    pub(super) stopped: AtomicBool,
    /// Notified each time a `getSessionId` ends (a stop waits for the last one).
    pub(super) fetch_ended: Notify,
    /// Why the last `getSessionId` failed, for requests refused during the guard's backoff.
    pub(super) last_failure: Mutex<Option<Cow<'static, str>>>,
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
    /// A layer whose lockout guard lives in memory and whose metrics are not exported: the
    /// [`builder`](Self::builder)'s defaults.
    pub fn new(
        config: CreditGuardConfig,
        credentials: CreditGuardCredentials,
    ) -> std::io::Result<Self> {
        Self::builder(config, credentials).build()
    }

    /// A builder: where the credential state lives, where the metrics go.
    pub fn builder(
        config: CreditGuardConfig,
        credentials: CreditGuardCredentials,
    ) -> LayerBuilder<CreditGuardConfig, CreditGuardCredentials> {
        LayerBuilder::new(config, credentials)
    }

    /// A handle to control the gateway while it runs.
    pub fn handle(&self) -> CreditGuardHandle {
        CreditGuardHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl LayerBuilder<CreditGuardConfig, CreditGuardCredentials> {
    /// Builds the layer; the terminals and the pool's bounds are checked first.
    pub fn build(mut self) -> std::io::Result<CreditGuardSessionLayer> {
        let terminals = checked_terminals(&self.config)?;
        let fingerprint = self.credentials.fingerprint();
        let settings = self.config.gateway.clone();
        let concurrency = self.config.session_fetch_concurrency;
        let core = self.core(&settings, concurrency, fingerprint)?;
        let Self {
            config,
            credentials,
            ..
        } = self;
        let relay_uri = config.gateway.upstream_at(&config.relay_path)?;
        let pool = Pool::new(config.pool.clone(), core.metrics.clone(), Instant::now());
        Ok(CreditGuardSessionLayer {
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

impl<S> Layer<S> for CreditGuardSessionLayer {
    type Service = CreditGuardSession<S>;

    fn layer(&self, inner: S) -> CreditGuardSession<S> {
        Middleware::new(inner, Arc::clone(&self.shared))
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

impl CreditGuardGateway {
    pub(super) fn pool(&self) -> MutexGuard<'_, Pool> {
        crate::sync::lock(&self.pool)
    }

    pub(super) fn error(&self, code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Error {
        self.core.error(code, message)
    }
}
