//! [`NumberAuthLayer`] and [`NumberAuth`]: the Number middleware.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::Full;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::Layer;

use super::keys::{KeyInfo, KeyState};
use super::signer::Signer;
use super::wire::{self, AuthAnswer, SoapNames, SoapRequest};
use super::NumberCredentials;
use crate::body::ResponseBody;
use crate::error::{BoxError, Error, ErrorCode};
use crate::forward::{BoxFuture, Client, GatewayBody};
use crate::gateway::auth::{Fingerprinted, NotStarted, Started, Verdict, Words};
use crate::gateway::exchange::{exchange, Exchange};
use crate::gateway::state::Published;
use crate::gateway::SharedState;
use crate::gateway::{self, Core, GatewayControl, GatewaySettings, Handle, Middleware};
use crate::guard::{Fingerprint, GuardStore, MemoryGuardStore};
use crate::metrics::{GatewayMetrics, Outcome, ReauthReason};
use crate::secret::Secret;

/// Which of Number's APIs the gateway speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// JSON over HTTP; the key goes in the `SessKey` header.
    #[default]
    Rest,
    /// SOAP 1.1 (WCF); the key is the first argument of every operation.
    Soap,
}

/// Settings of one Number gateway.
#[derive(Debug, Clone)]
pub struct NumberConfig {
    /// What every gateway has: name, upstream, budget, limits, timeout.
    pub gateway: GatewaySettings,
    /// REST or SOAP.
    pub protocol: Protocol,
    /// REST: the Authenticate path. SOAP: the service path.
    pub auth_path: String,
    /// SOAP names (namespace, Authenticate action, session-key element).
    pub soap: SoapNames,
    /// A key refused (5030/5050) younger than this is a gateway anomaly: a second one in a row
    /// makes further renewals back off exponentially (1 s doubling to 5 min, jittered), calls
    /// failing fast with `auth_unavailable` meanwhile (default 30 s).
    pub renewal_min_key_age: Duration,
}

impl NumberConfig {
    /// Default of [`Self::renewal_min_key_age`]: 30 s.
    pub const DEFAULT_RENEWAL_MIN_KEY_AGE: Duration = Duration::from_secs(30);
    /// Default of [`Self::auth_path`] for REST.
    pub const DEFAULT_REST_AUTH_PATH: &'static str = "/APIcardProcREST/v1.0.0/Authenticate";

    /// REST defaults: `/APIcardProcREST/v1.0.0/Authenticate` and the [`GatewaySettings`]
    /// defaults (budget 1, 1 MiB requests, 64 KiB inspected, 30 s timeout).
    pub fn rest(name: impl Into<String>, upstream: Uri) -> Self {
        Self {
            gateway: GatewaySettings::new(name, upstream),
            protocol: Protocol::Rest,
            auth_path: Self::DEFAULT_REST_AUTH_PATH.into(),
            soap: SoapNames::default(),
            renewal_min_key_age: Self::DEFAULT_RENEWAL_MIN_KEY_AGE,
        }
    }

    /// SOAP defaults, with the service path (for example `/APIcardProcR119/CardProcAPI.svc`).
    pub fn soap(name: impl Into<String>, upstream: Uri, service_path: impl Into<String>) -> Self {
        Self {
            protocol: Protocol::Soap,
            auth_path: service_path.into(),
            ..Self::rest(name, upstream)
        }
    }
}

struct CredState {
    credentials: NumberCredentials,
    signer: Option<Signer>,
    /// Seals keys for the credential state (a shared store keeps them only sealed).
    seal: super::KeySeal,
}

type Flight = watch::Receiver<Option<Result<Arc<KeyState>, Error>>>;

/// A Number gateway's state, shared by its layer, its middleware and its handle.
pub struct NumberGateway {
    core: Core,
    config: NumberConfig,
    auth_uri: Uri,
    /// `config.auth_path` canonicalised once (none if it is refused: then it matches nothing).
    auth_path: Option<crate::path::CanonicalPath<'static>>,
    credentials: ArcSwap<CredState>,
    key: ArcSwapOption<KeyState>,
    flight: Mutex<Option<Flight>>,
    brake: Mutex<Brake>,
    /// Whether the brake has ever engaged since it was last released: lets every call skip
    /// the brake's lock while it is off (nearly always).
    brake_engaged: AtomicBool,
}

impl fmt::Debug for NumberGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NumberGateway")
            .field("config", &self.config)
            .field(
                "generation",
                &self.key.load().as_ref().map(|k| k.generation),
            )
            .finish_non_exhaustive()
    }
}

/// Adds Number's session key to every request and renews it transparently.
///
/// Requests must carry absolute URIs on the gateway (as a hyper client expects). The wrapped
/// client is also used to authenticate.
#[derive(Clone, Debug)]
pub struct NumberAuthLayer {
    shared: Arc<NumberGateway>,
}

/// Control of a running Number gateway: credentials, unlock, status.
#[derive(Clone, Debug)]
pub struct NumberHandle {
    shared: Arc<NumberGateway>,
}

impl NumberAuthLayer {
    /// A layer whose lockout guard lives in memory and whose metrics are not exported.
    pub fn new(config: NumberConfig, credentials: NumberCredentials) -> std::io::Result<Self> {
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
        config: NumberConfig,
        credentials: NumberCredentials,
        store: Arc<dyn GuardStore>,
        metrics: GatewayMetrics,
    ) -> std::io::Result<Self> {
        // Number's authentications are rare and its lock at 6 is the vendor's rule: strictly one
        // at a time, always.
        let core = Core::open(
            &config.gateway,
            1,
            credentials.fingerprint(),
            store,
            metrics,
        )?;
        Self::with_core(config, credentials, core)
    }

    /// A layer on a credential state of the caller's (for example one shared by replicas):
    /// the lockout record and the session keys' generations live there. It is switched to
    /// `credentials` now.
    pub fn with_credential_state(
        config: NumberConfig,
        credentials: NumberCredentials,
        state: SharedState,
        metrics: GatewayMetrics,
    ) -> std::io::Result<Self> {
        state.change_credentials(credentials.fingerprint());
        let core = Core::new(&config.gateway, state, metrics);
        Self::with_core(config, credentials, core)
    }

    fn with_core(
        config: NumberConfig,
        credentials: NumberCredentials,
        core: Core,
    ) -> std::io::Result<Self> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let auth_uri = config.gateway.upstream_at(&config.auth_path)?;
        let cred_state =
            cred_state(credentials, &config.gateway.name).map_err(|e| invalid(e.to_string()))?;
        let auth_path = crate::path::canonicalize(&config.auth_path)
            .ok()
            .map(crate::path::CanonicalPath::into_owned);
        Ok(Self {
            shared: Arc::new(NumberGateway {
                core,
                config,
                auth_uri,
                auth_path,
                credentials: ArcSwap::from_pointee(cred_state),
                key: ArcSwapOption::empty(),
                flight: Mutex::new(None),
                brake: Mutex::new(Brake::default()),
                brake_engaged: AtomicBool::new(false),
            }),
        })
    }

    /// A handle to control the gateway while it runs.
    pub fn handle(&self) -> NumberHandle {
        NumberHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

fn cred_state(
    credentials: NumberCredentials,
    gateway: &str,
) -> Result<CredState, super::SignError> {
    let signer = credentials
        .signing
        .as_ref()
        .map(|s| Signer::new(&s.secret, s.user_id))
        .transpose()?;
    let seal =
        super::KeySeal::new(&credentials.token, gateway).map_err(|_| super::SignError::BadKey)?;
    Ok(CredState {
        credentials,
        signer,
        seal,
    })
}

impl NumberHandle {
    /// Swaps in new credentials (a changed token or HMAC secret file). A new token gets its own
    /// guard record, so a gateway locked by a rejected token is unlocked by a different one. The
    /// current session key stays in use until the gateway refuses it.
    pub fn update_credentials(
        &self,
        credentials: NumberCredentials,
    ) -> Result<(), super::SignError> {
        let fingerprint = credentials.fingerprint();
        let signing_changed = {
            let current = self.shared.credentials.load();
            current.credentials.signing != credentials.signing
        };
        let state = cred_state(credentials, self.shared.core.name())?;
        self.shared.credentials.store(Arc::new(state));
        self.shared.core.guard.change_credentials(fingerprint);
        if signing_changed {
            // The key's signer is part of the key state: re-derive it with the new secret.
            if let Some(current) = self.shared.key.load_full() {
                let signer = self.shared.credentials.load().signer.clone();
                if let Ok(next) = KeyState::new(
                    current.key_clone(),
                    current.generation,
                    signer,
                    current.obtained,
                ) {
                    self.shared.key.store(Some(Arc::new(next)));
                }
            }
        }
        Ok(())
    }

    /// The gateway's lockout guard (unlock, status).
    pub fn guard(&self) -> &SharedState {
        &self.shared.core.guard
    }

    /// The gateway's name.
    pub fn name(&self) -> &str {
        self.shared.core.name()
    }

    /// Resolves once no authentication is in flight (or after `limit`), so that a process
    /// stopping records the real outcome of its last authentication rather than an unknown one.
    pub async fn wait_idle(&self, limit: Duration) {
        self.shared.core.guard.wait_idle(limit).await;
    }

    /// Takes a key a peer published, if it is newer than the one in use (shared mode: replicas
    /// learn of a new key ahead of the gateway refusing theirs). Returns whether it did.
    pub async fn refresh(&self) -> bool {
        let shared = &self.shared;
        let Some(published) = shared.core.guard.latest().await else {
            return false;
        };
        let current = shared.key.load().as_ref().map_or(0, |k| k.generation);
        if published.generation <= current {
            return false;
        }
        let creds = shared.credentials.load_full();
        let Ok(key) = creds.seal.open(&published.sealed) else {
            return false;
        };
        let Ok(state) = shared.key_state(key, published.generation, creds.signer.clone()) else {
            return false;
        };
        // Under the flight slot, so a renewal finishing meanwhile is not overwritten by an
        // older key.
        let _slot = crate::sync::lock(&shared.flight);
        if shared.key.load().as_ref().map_or(0, |k| k.generation) < published.generation {
            shared.key.store(Some(state));
            tracing::info!(gateway = %shared.core.name(), generation = published.generation,
                "using the session key a peer published");
            return true;
        }
        false
    }

    /// The current key, if any.
    pub fn key(&self) -> Option<KeyInfo> {
        self.shared.key.load().as_ref().map(|k| KeyInfo {
            generation: k.generation,
        })
    }
}

impl GatewayControl for NumberHandle {
    fn name(&self) -> &str {
        NumberHandle::name(self)
    }

    fn guard(&self) -> &SharedState {
        NumberHandle::guard(self)
    }

    fn stop(&self, limit: Duration) -> BoxFuture<()> {
        let handle = self.clone();
        Box::pin(async move { handle.wait_idle(limit).await })
    }
}

impl<S> Layer<S> for NumberAuthLayer {
    type Service = NumberAuth<S>;

    fn layer(&self, inner: S) -> NumberAuth<S> {
        Middleware {
            inner,
            kind: Arc::clone(&self.shared),
        }
    }
}

/// The Number middleware; see [`NumberAuthLayer`].
pub type NumberAuth<S> = Middleware<NumberGateway, S>;

impl gateway::sealed::Sealed for NumberGateway {}

impl Handle for NumberGateway {
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
        let result = self.call(client, request).await;
        self.core.metrics.count(result)
    }
}

/// The REST session key header (`SessKey`; header names are case-insensitive and go out in
/// lower case). A constant: parsing the name per call would allocate.
const SESS_KEY: http::HeaderName = http::HeaderName::from_static("sesskey");

/// The largest Authenticate answer read (merchant lists can be long).
const AUTH_ANSWER_LIMIT: usize = 1 << 20;

/// The renewal brake's wait after the `n`th young refusal past the first: 1 s doubling to 5 min,
/// ±20% so that replicas do not renew in step.
fn brake_backoff(n: u32) -> Duration {
    let base =
        Duration::from_secs(1u64 << n.saturating_sub(1).min(9)).min(Duration::from_secs(300));
    base.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Young 5050 refusals in a row that mark a gateway as split egress: one key used from two
/// egress IPs, each renewal invalidating the other's key (see [`NumberGateway::brake`]).
pub(crate) const SPLIT_EGRESS_STREAK: u32 = 3;

/// Consecutive refusals of young keys; see [`NumberGateway::brake`].
#[derive(Debug, Default)]
struct Brake {
    /// Young refusals in a row, all for `reason`.
    streak: u32,
    reason: Option<ReauthReason>,
    /// The newest generation already counted: each key counts once.
    counted: u64,
    until: Option<Instant>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Fingerprinted for CredState {
    fn fingerprint(&self) -> Fingerprint {
        self.credentials.fingerprint()
    }
}

/// A Number call once read: the app's request, and for SOAP the envelope's reading.
pub(crate) struct Call {
    parts: http::request::Parts,
    body: Bytes,
    soap: Option<SoapRequest>,
}

/// How Number's authentication is named in errors.
const WORDS: Words = Words {
    action: "authenticate",
    attempt: "authentication",
    secret: "token",
};

impl Exchange for NumberGateway {
    type Call = Call;
    type Credential = Arc<KeyState>;

    fn core(&self) -> &Core {
        &self.core
    }

    fn parts(call: &Call) -> &http::request::Parts {
        &call.parts
    }

    fn outgoing(&self, call: &Call, key: &Arc<KeyState>) -> Result<Request<Full<Bytes>>, Error> {
        let value = key.value(unix_now()).map_err(|_| {
            self.core.error(
                ErrorCode::AuthUnavailable,
                "the session key cannot be signed",
            )
        })?;
        let mut request = match &call.soap {
            None => gateway::outgoing(&call.parts, call.body.clone()),
            Some(soap) => {
                let text = value.to_str().map_err(|_| {
                    self.core
                        .error(ErrorCode::AuthUnavailable, "the session key is not text")
                })?;
                gateway::outgoing(&call.parts, soap.fill(&call.body, text))
            }
        };
        let headers = request.headers_mut();
        match call.soap {
            None => headers.insert(SESS_KEY, value),
            Some(_) => headers.remove(SESS_KEY),
        };
        Ok(request)
    }

    fn refusal(&self, answer: &[u8]) -> Option<ReauthReason> {
        match self.config.protocol {
            Protocol::Rest => wire::rest_renewal(answer),
            Protocol::Soap => wire::soap_renewal(answer),
        }
    }

    async fn replacement<'a, S, ResB>(
        self: &'a Arc<Self>,
        _call: &'a Call,
        refused: Arc<KeyState>,
        reason: ReauthReason,
        _sent_at: Instant,
        client: &'a S,
    ) -> Result<Arc<KeyState>, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        tracing::debug!(gateway = %self.core.name(), reason = reason.as_str(), generation = refused.generation,
            "gateway refused the session key; renewing and replaying once");
        self.renew(Some((&refused, reason)), client).await
    }
}

impl NumberGateway {
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
        let (parts, body) = request.into_parts();
        let path = crate::path::canonicalize(parts.uri.path()).map_err(|e| self.core.refuse(e))?;
        if self.config.protocol == Protocol::Rest && self.is_rest_auth(&path) {
            return Ok(self.local_auth_answer(
                wire::local_rest_auth_answer(self.user_id()),
                "application/json",
            ));
        }
        let body = self.core.read_body(&parts, body).await?;
        let soap = match self.config.protocol {
            Protocol::Rest => None,
            Protocol::Soap => {
                let request = wire::parse_soap_request(&body, &self.config.soap.session_element)
                    .map_err(|e| self.core.refuse(e))?;
                if self.is_soap_auth(&parts.headers, &request) {
                    return Ok(self.local_auth_answer(
                        wire::local_soap_auth_answer(&self.config.soap),
                        "text/xml; charset=utf-8",
                    ));
                }
                Some(request)
            }
        };
        let key = self.current_key(&client).await?;
        // A key the gateway already refused while renewals are braked would only be refused
        // again: the call (card data included) is not sent at all.
        self.check_brake(&key)?;
        exchange(self, &Call { parts, body, soap }, key, client).await
    }

    fn local_auth_answer<ResB>(
        &self,
        body: Bytes,
        content_type: &'static str,
    ) -> (Response<ResponseBody<ResB>>, Outcome) {
        tracing::debug!(gateway = %self.core.name(), "answering the app's own Authenticate locally");
        (gateway::local_answer(body, content_type), Outcome::Local)
    }

    /// Whether a REST call is the app's own Authenticate: its path, as the gateway's server
    /// routes it, is the configured auth path or ends in an `Authenticate` segment (ASCII case
    /// ignored), so no spelling of it reaches the gateway with the app's stale token.
    fn is_rest_auth(&self, path: &crate::path::CanonicalPath<'_>) -> bool {
        self.auth_path
            .as_ref()
            .is_some_and(|auth| path.as_str().eq_ignore_ascii_case(auth.as_str()))
            || path.last_segment().eq_ignore_ascii_case("Authenticate")
    }

    /// Whether a SOAP call is the app's own Authenticate, whatever path it was sent to: the
    /// operation is named `Authenticate`, or an action (the SOAPAction header, or SOAP 1.2's
    /// `action` parameter of the Content-Type) is the configured one or ends in `/Authenticate`
    /// (ASCII case ignored: WCF dispatches on the action).
    fn is_soap_auth(&self, headers: &http::HeaderMap, request: &SoapRequest) -> bool {
        let soap_actions = headers
            .get_all("soapaction")
            .iter()
            .filter_map(|v| v.to_str().ok());
        let content_type_actions = headers
            .get_all(header::CONTENT_TYPE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|param| {
                let (name, value) = param.split_once('=')?;
                name.trim().eq_ignore_ascii_case("action").then_some(value)
            });
        let is_auth_action = |action: &str| {
            let action = action.trim().trim_matches('"').trim();
            action.eq_ignore_ascii_case(&self.config.soap.auth_action)
                || action
                    .rsplit('/')
                    .next()
                    .is_some_and(|op| op.eq_ignore_ascii_case("Authenticate"))
        };
        request.operation.eq_ignore_ascii_case("Authenticate")
            || soap_actions.chain(content_type_actions).any(is_auth_action)
    }

    fn user_id(&self) -> Option<u64> {
        self.credentials
            .load()
            .credentials
            .signing
            .as_ref()
            .map(|s| s.user_id)
    }

    async fn current_key<S, ResB>(self: &Arc<Self>, client: &S) -> Result<Arc<KeyState>, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        if let Some(key) = self.key.load_full() {
            return Ok(key);
        }
        self.renew(None, client).await
    }

    /// Gets a key newer than `stale` (any key when `None`): joins the authentication in flight
    /// or starts one. However many callers arrive, one authentication is sent per stale key, and
    /// all of them share its result, failure included. A renewal is counted under the gateway's
    /// reason once the guard lets it be sent. Waiting is bounded by the request timeout.
    async fn renew<S, ResB>(
        self: &Arc<Self>,
        stale: Option<(&KeyState, ReauthReason)>,
        client: &S,
    ) -> Result<Arc<KeyState>, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let mut flight = {
            let mut slot = crate::sync::lock(&self.flight);
            if let Some(key) = self.key.load_full() {
                if stale.is_none_or(|(refused, _)| key.generation > refused.generation) {
                    return Ok(key);
                }
            }
            if let Some((refused, reason)) = stale {
                self.brake(refused, reason)?;
            }
            match slot.as_ref() {
                Some(flight) => flight.clone(),
                None => {
                    if let Some((refused, reason)) = stale {
                        tracing::info!(gateway = %self.core.name(), reason = reason.as_str(),
                            generation = refused.generation, "gateway refused the session key; renewing");
                    }
                    let reason = stale.map(|(_, reason)| reason);
                    let (tx, rx) = watch::channel(None);
                    *slot = Some(rx.clone());
                    let shared = Arc::clone(self);
                    let client = client.clone();
                    // Spawned so that a caller going away cannot abandon an attempt halfway.
                    tokio::spawn(async move {
                        let result = shared.authenticate(client, reason).await;
                        let mut slot = crate::sync::lock(&shared.flight);
                        if let Ok(key) = &result {
                            shared.key.store(Some(Arc::clone(key)));
                        }
                        *slot = None;
                        drop(slot);
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        let waited = tokio::time::timeout(
            self.core.settings.request_timeout,
            flight.wait_for(Option::is_some),
        )
        .await;
        match waited {
            Ok(Ok(outcome)) => match outcome.as_ref() {
                Some(result) => result.clone(),
                None => Err(self.core.error(ErrorCode::AuthUnavailable, "the authentication task failed")),
            },
            Ok(Err(_)) => Err(self.core.error(ErrorCode::AuthUnavailable, "the authentication task failed")),
            Err(_) => Err(self.core.error(
                ErrorCode::AuthUnavailable,
                "no session key could be obtained within the request timeout; nothing was forwarded",
            )),
        }
    }

    /// The renewal brake. A key refused younger than `renewal_min_key_age` is a gateway anomaly
    /// (the gateway refuses keys it has just issued: a vendor fault, a clock problem with signed
    /// keys); from the second such refusal in a row for the same reason, renewals back off
    /// exponentially and calls fail fast instead of sending one authentication each. Each key
    /// counts once.
    fn brake(&self, refused: &KeyState, reason: ReauthReason) -> Result<(), Error> {
        let now = tokio::time::Instant::now();
        let mut brake = crate::sync::lock(&self.brake);
        if refused.generation > brake.counted {
            brake.counted = refused.generation;
            let age = now.saturating_duration_since(refused.obtained);
            if age < self.config.renewal_min_key_age {
                // The same refusal again: an expiry then an IP change is two events, not a loop.
                brake.streak = if brake.reason == Some(reason) {
                    brake.streak + 1
                } else {
                    1
                };
                brake.reason = Some(reason);
                self.core.metrics.young_key_refused();
                let backoff = (brake.streak >= 2).then(|| brake_backoff(brake.streak - 1));
                brake.until = backoff.map(|b| now + b);
                if brake.until.is_some() {
                    self.brake_engaged.store(true, Ordering::Release);
                }
                tracing::warn!(gateway = %self.core.name(), reason = reason.as_str(),
                    key_age_ms = age.as_millis() as u64, streak = brake.streak,
                    backoff_ms = backoff.map(|b| b.as_millis() as u64),
                    "gateway anomaly: the gateway refused a session key it issued moments ago");
                if reason == ReauthReason::IpChanged5050
                    && brake.streak >= SPLIT_EGRESS_STREAK
                    && !self.core.metrics.split_egress()
                {
                    self.core.metrics.set_split_egress(true);
                    tracing::warn!(gateway = %self.core.name(), streak = brake.streak,
                        "split egress: this gateway's session keys keep being refused 5050 moments \
                         after a 5050 renewal, so one key is used from two egress IPs (replicas \
                         sharing a key behind different NAT addresses, or a NAT that alternates). \
                         Renewals are braked; give each egress IP its own token (and egress_id)");
                }
            } else {
                self.brake_engaged.store(false, Ordering::Release);
                self.clear_split_egress();
                *brake = Brake {
                    counted: refused.generation,
                    ..Brake::default()
                };
            }
        }
        match brake.until {
            Some(until) if now < until => Err(self.braked(until - now)),
            _ => Ok(()),
        }
    }

    /// Refuses a call during the renewal brake when its key is one the gateway refused.
    fn check_brake(&self, key: &KeyState) -> Result<(), Error> {
        if !self.brake_engaged.load(Ordering::Acquire) {
            return Ok(());
        }
        let brake = crate::sync::lock(&self.brake);
        if key.generation > brake.counted
            && key.obtained.elapsed() >= self.config.renewal_min_key_age
        {
            // A key newer than every refused one has lived past the brake's age: no split.
            self.clear_split_egress();
        }
        match brake.until {
            Some(until) if key.generation <= brake.counted => {
                let now = tokio::time::Instant::now();
                if now < until {
                    return Err(self.braked(until - now));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn clear_split_egress(&self) {
        if self.core.metrics.split_egress() {
            self.core.metrics.set_split_egress(false);
            tracing::info!(gateway = %self.core.name(), "split egress over: a renewed key lasted");
        }
    }

    fn braked(&self, wait: Duration) -> Error {
        self.core.error(
            ErrorCode::AuthUnavailable,
            format!(
                "the gateway keeps refusing session keys it has just issued ({}); renewals back \
                 off, the next one in {} ms; nothing was forwarded",
                if self.core.metrics.split_egress() {
                    "split egress: one key used from two egress IPs"
                } else {
                    "a gateway anomaly"
                },
                wait.as_millis()
            ),
        )
    }

    async fn authenticate<S, ResB>(
        self: &Arc<Self>,
        client: S,
        reason: Option<ReauthReason>,
    ) -> Result<Arc<KeyState>, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        // Without a key yet (a start, a scale-out), any key published is newer: generation 0.
        let seen = self.key.load().as_ref().map_or(0, |k| k.generation);
        self.authenticate_seen(client, reason, Some(seen)).await
    }

    /// Authenticates, or adopts a key newer than `seen` published meanwhile.
    async fn authenticate_seen<S, ResB>(
        self: &Arc<Self>,
        client: S,
        reason: Option<ReauthReason>,
        seen: Option<u64>,
    ) -> Result<Arc<KeyState>, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let (attempt, creds) = match self.core.begin(&self.credentials, WORDS, seen).await {
            Ok(Started::Attempt(attempt, creds)) => (attempt, creds),
            Ok(Started::Adopt(published)) => return self.adopt(published, client, reason).await,
            Err(NotStarted::Refused(refusal)) => return Err(refusal.into_error(self.core.name())),
            Err(NotStarted::Changed(error)) => return Err(error),
        };
        if let Some(reason) = reason {
            self.core.metrics.reauth(reason);
        }
        tracing::info!(gateway = %self.core.name(), "authenticating");
        let request = self.auth_request(&creds.credentials);
        let protocol = self.config.protocol;
        let (key, attempt) = self
            .core
            .authenticate_open(
                attempt,
                request,
                client,
                AUTH_ANSWER_LIMIT,
                WORDS,
                |bytes| {
                    let answer = match protocol {
                        Protocol::Rest => wire::parse_rest_auth(bytes),
                        Protocol::Soap => wire::parse_soap_auth(bytes),
                    };
                    match answer {
                        AuthAnswer::Success { key, .. } => Verdict::Issued(key),
                        AuthAnswer::Rejected { err_code } => {
                            Verdict::Rejected(err_code.map(|c| format!("ErrCode {c}")))
                        }
                        AuthAnswer::Unreadable => Verdict::Unreadable,
                    }
                },
            )
            .await?;
        // Published before the attempt is settled: no other holder is admitted in between, so
        // none authenticates again for a key it could adopt.
        let published = match creds.seal.seal(&key) {
            Ok(sealed) => self
                .core
                .guard
                .publish(sealed)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        attempt.success().await;
        self.core.metrics.credential_obtained();
        // The key is good either way: a key that could not be published is used here (under
        // the next generation this replica knows of) rather than thrown away, which would cost
        // another authentication.
        let generation = published.unwrap_or_else(|e| {
            tracing::warn!(gateway = %self.core.name(), error = %e,
                "cannot publish the new session key; using it here only");
            self.key.load().as_ref().map_or(0, |k| k.generation) + 1
        });
        let state = self.key_state(key, generation, creds.signer.clone())?;
        tracing::info!(gateway = %self.core.name(), generation, "authenticated");
        Ok(state)
    }

    /// Takes a key published meanwhile (by a peer sharing the store) instead of authenticating.
    /// A key that does not open with these credentials (a peer on another token) is not used:
    /// an attempt is reserved instead.
    async fn adopt<S, ResB>(
        self: &Arc<Self>,
        published: Published,
        client: S,
        reason: Option<ReauthReason>,
    ) -> Result<Arc<KeyState>, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let creds = self.credentials.load_full();
        match creds.seal.open(&published.sealed) {
            Ok(key) => {
                tracing::info!(gateway = %self.core.name(), generation = published.generation,
                    "using the session key published meanwhile; not authenticating");
                self.key_state(key, published.generation, creds.signer.clone())
            }
            Err(_) => {
                tracing::warn!(gateway = %self.core.name(), generation = published.generation,
                    "the published session key does not open with these credentials; authenticating");
                Box::pin(self.authenticate_seen(client, reason, None)).await
            }
        }
    }

    /// A key ready for use; an error when the gateway issued one payauth cannot use (not
    /// retried blindly: the authentication itself succeeded).
    fn key_state(
        &self,
        key: Secret<String>,
        generation: u64,
        signer: Option<Signer>,
    ) -> Result<Arc<KeyState>, Error> {
        KeyState::new(key, generation, signer, Instant::now())
            .map(Arc::new)
            .map_err(|_| {
                self.core.error(
                    ErrorCode::AuthUnavailable,
                    "the gateway issued a session key payauth cannot use",
                )
            })
    }

    /// The Authenticate call for `credentials`.
    fn auth_request(&self, credentials: &NumberCredentials) -> Request<Full<Bytes>> {
        let (body, content_type, accept) = match self.config.protocol {
            Protocol::Rest => (
                wire::rest_auth_body(&credentials.account_code, &credentials.token),
                "application/json",
                "application/json",
            ),
            Protocol::Soap => (
                wire::soap_auth_body(
                    &self.config.soap,
                    &credentials.account_code,
                    &credentials.token,
                ),
                "text/xml; charset=utf-8",
                "text/xml",
            ),
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.auth_uri.clone();
        let headers = request.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
        if self.config.protocol == Protocol::Soap {
            if let Ok(action) =
                HeaderValue::from_str(&format!("\"{}\"", self.config.soap.auth_action))
            {
                headers.insert("SOAPAction", action);
            }
        }
        request
    }
}
