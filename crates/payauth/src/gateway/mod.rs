//! The mechanism both gateways share: call the gateway with a credential, notice that it refused
//! the credential, get a new one once, and replay the call once.
//!
//! A gateway kind ([`crate::number`], [`crate::creditguard`]) supplies only what differs: how a
//! request is checked and read, how its credential is put into the outgoing call, what a refusal
//! looks like in an answer, and how a new credential is obtained. Everything else lives here:
//!
//! * [`GatewaySettings`]: the settings every gateway has, with their defaults in one place;
//! * `Core`: a gateway's name, guard and metrics, and the one vocabulary in which requests are
//!   refused and transport failures reported;
//! * `exchange`: the send → inspect → renew → replay loop (never more than one replay, never a
//!   replay after a transport failure);
//! * `auth`: one authentication attempt against the lockout guard (reserve, check the
//!   credentials did not change, send, settle by what came back).

pub(crate) mod auth;
mod builder;
mod driver;
pub(crate) mod exchange;
pub(crate) mod rules;
pub mod state;

pub use builder::LayerBuilder;
pub use state::{CredentialState, SharedState};

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::Full;

use crate::body::ResponseBody;
use crate::error::{BoxError, Error, ErrorCode};
use crate::forward::{self, Failure};
use crate::guard::AuthGuard;
use crate::metrics::GatewayMetrics;

/// Settings every gateway has.
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// The gateway's name in metrics, logs and errors.
    pub name: String,
    /// The gateway's base URL (scheme and authority).
    pub upstream: Uri,
    /// Rejected authentications in a row that lock the gateway (1..=5).
    pub auth_failure_budget: u32,
    /// Largest request body accepted (it is buffered so it can be read and replayed); larger
    /// gets 413.
    pub max_request_bytes: usize,
    /// Answers up to this size are inspected for a refused credential; larger ones stream
    /// through.
    pub inspect_limit_bytes: usize,
    /// How long a call may take to answer, head and body (a larger streamed answer may stall
    /// this long between chunks); also the bound on an authentication and on waiting for one.
    pub request_timeout: Duration,
}

impl GatewaySettings {
    /// Default of [`Self::auth_failure_budget`].
    pub const DEFAULT_AUTH_FAILURE_BUDGET: u32 = 1;
    /// Default of [`Self::max_request_bytes`]: 1 MiB.
    pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1 << 20;
    /// Default of [`Self::inspect_limit_bytes`]: 64 KiB.
    pub const DEFAULT_INSPECT_LIMIT_BYTES: usize = 64 << 10;
    /// Default of [`Self::request_timeout`]: 30 s.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

    /// The defaults: budget 1, 1 MiB requests, 64 KiB inspected, 30 s timeout.
    pub fn new(name: impl Into<String>, upstream: Uri) -> Self {
        Self {
            name: name.into(),
            upstream,
            auth_failure_budget: Self::DEFAULT_AUTH_FAILURE_BUDGET,
            max_request_bytes: Self::DEFAULT_MAX_REQUEST_BYTES,
            inspect_limit_bytes: Self::DEFAULT_INSPECT_LIMIT_BYTES,
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The upstream with `path` (and query) instead of its own; it must be absolute.
    pub(crate) fn upstream_at(&self, path_and_query: &str) -> std::io::Result<Uri> {
        let invalid = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .map_err(|e| invalid(format!("path {path_and_query:?}: {e}")))?,
        );
        let uri = Uri::from_parts(parts).map_err(|e| invalid(e.to_string()))?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(invalid(
                "upstream must be an absolute URL such as https://host".into(),
            ));
        }
        Ok(uri)
    }
}

/// A gateway kind: [`crate::number::NumberGateway`] or [`crate::creditguard::CreditGuardGateway`],
/// the state a [`Middleware`] drives its requests with. Sealed: a kind is implemented inside
/// payauth, in one file each (see the [module docs](self)).
pub trait Kind: Send + Sync + std::fmt::Debug + sealed::Sealed + 'static {
    /// Handles one request with `client` as the way to the gateway (counted in the metrics).
    fn handle<S, B, ResB>(
        self: Arc<Self>,
        client: S,
        request: Request<B>,
    ) -> impl std::future::Future<Output = Result<Response<ResponseBody<ResB>>, Error>> + Send
    where
        S: forward::Client<ResB>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        ResB: forward::GatewayBody;
}

impl<K: rules::Rules> Kind for K {
    fn handle<S, B, ResB>(
        self: Arc<Self>,
        client: S,
        request: Request<B>,
    ) -> impl std::future::Future<Output = Result<Response<ResponseBody<ResB>>, Error>> + Send
    where
        S: forward::Client<ResB>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
        ResB: forward::GatewayBody,
    {
        driver::drive(self, client, request)
    }
}

pub(crate) mod sealed {
    /// Keeps [`super::Kind`] to payauth's own gateway kinds.
    pub trait Sealed {}

    impl<K: super::rules::Rules> Sealed for K {}
}

/// A gateway's middleware around the client that reaches it: the one `Service` both kinds use
/// ([`crate::number::NumberAuth`], [`crate::creditguard::CreditGuardSession`]).
pub struct Middleware<K, S> {
    pub(crate) inner: S,
    pub(crate) kind: Arc<K>,
}

impl<K, S> Middleware<K, S> {
    pub(crate) fn new(inner: S, kind: Arc<K>) -> Self {
        Self { inner, kind }
    }

    /// The client it wraps.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The client it wraps, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The client it wraps, unwrapped (the gateway's state lives on in its layer and handle).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<K, S: Clone> Clone for Middleware<K, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            kind: Arc::clone(&self.kind),
        }
    }
}

impl<K: std::fmt::Debug, S> std::fmt::Debug for Middleware<K, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Middleware")
            .field("gateway", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<K, S, B, ResB> tower::Service<Request<B>> for Middleware<K, S>
where
    K: Kind,
    S: tower::Service<Request<Full<Bytes>>, Response = Response<ResB>> + forward::Client<ResB>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    ResB: forward::GatewayBody,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Error;
    // A hand-written state machine for this flow would be far harder to keep correct.
    type Future = forward::BoxFuture<Result<Self::Response, Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        // The client's readiness is awaited per call (it is cloned for replays anyway).
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(Arc::clone(&self.kind).handle(self.inner.clone(), request))
    }
}

/// What every gateway has at run time: its settings, lockout guard and metrics, and the one
/// way its requests are refused.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) settings: GatewaySettings,
    pub(crate) guard: SharedState,
    pub(crate) metrics: GatewayMetrics,
    /// The gateway's clock against ours, from its answers.
    pub(crate) clock: crate::clock::SkewWatch,
}

impl Core {
    /// Opens the gateway's lockout guard (its record for `fingerprint` read from `store`).
    pub(crate) fn open(
        settings: &GatewaySettings,
        proven_concurrency: u32,
        fingerprint: crate::guard::Fingerprint,
        store: Arc<dyn crate::guard::GuardStore>,
        metrics: GatewayMetrics,
    ) -> std::io::Result<Self> {
        let limits = crate::guard::GuardLimits {
            budget: settings.auth_failure_budget,
            proven_concurrency,
        };
        let guard = AuthGuard::open(&settings.name, limits, fingerprint, store, metrics.clone())?;
        Ok(Self {
            settings: settings.clone(),
            guard,
            metrics,
            clock: crate::clock::SkewWatch::default(),
        })
    }

    /// A core on a credential state of the caller's.
    pub(crate) fn new(
        settings: &GatewaySettings,
        guard: SharedState,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            settings: settings.clone(),
            guard,
            metrics,
            clock: crate::clock::SkewWatch::default(),
        }
    }

    /// The gateway's name.
    pub(crate) fn name(&self) -> &str {
        &self.settings.name
    }

    /// An error of this gateway.
    pub(crate) fn error(&self, code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Error {
        Error::new(code, self.settings.name.clone(), message)
    }

    /// A request refused before anything was sent: `message` says why (the caller adds
    /// "nothing was forwarded" where the gateway's rules are explained).
    pub(crate) fn bad_request(&self, message: impl Into<Cow<'static, str>>) -> Error {
        self.error(ErrorCode::BadRequest, message)
    }

    /// A request refused for what `problem` says, nothing forwarded.
    pub(crate) fn refuse(&self, problem: impl std::fmt::Display) -> Error {
        self.bad_request(format!("{problem}; nothing was forwarded"))
    }

    /// Reads the app's request body, bounded by `max_request_bytes` and the request timeout
    /// (it is kept to be read and replayed).
    pub(crate) async fn read_body<B>(
        &self,
        parts: &http::request::Parts,
        body: B,
    ) -> Result<Bytes, Error>
    where
        B: Body + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let settings = &self.settings;
        crate::body::read_request(
            &settings.name,
            body,
            &parts.headers,
            settings.max_request_bytes,
            settings.request_timeout,
        )
        .await
    }

    /// A call that failed in transport: logged, never replayed, mapped to its error.
    pub(crate) fn failed(
        &self,
        failure: Failure,
        parts: &http::request::Parts,
        replayed: bool,
    ) -> Error {
        tracing::warn!(gateway = %self.settings.name, method = %parts.method,
            path = parts.uri.path(), failure = ?failure, replayed,
            "call to the gateway failed; not replayed");
        failure.into_error(&self.settings.name)
    }
}

/// The outgoing call: the app's method, URI and headers (minus its framing, which the new body
/// sets) with `body`.
pub(crate) fn outgoing(parts: &http::request::Parts, body: Bytes) -> Request<Full<Bytes>> {
    // A copy of the map as it is (no header hashed again), less the framing. Removing the
    // Content-Length a call with a body has leaves room for the header a kind adds (Number's
    // SessKey) without growing the copy.
    let mut headers = parts.headers.clone();
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.headers_mut() = headers;
    request
}

/// An answer payauth gives itself (the app's own authentication, which must never reach the
/// gateway with the app's stale credentials).
pub(crate) fn local_answer<ResB>(
    body: Bytes,
    content_type: &'static str,
) -> Response<ResponseBody<ResB>> {
    let mut response = Response::new(ResponseBody::full(body).from_payauth());
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
