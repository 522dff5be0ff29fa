//! The sidecar's listeners: one per gateway, in front of the gateway's layer stack.
//!
//! For each request: refuse it with 503 `overloaded` when the gateway's concurrency limit is
//! reached (no unbounded queue), drop hop-by-hop headers and `Host`, point the URI at the
//! upstream (the path and query are kept as the app sent them), read the body (at most
//! `max_request_bytes`, within the request timeout; an oversized one gets 413 and is drained,
//! bounded, so that the app can read the 413), hand it to the layer, and turn payauth's errors
//! into the contract's responses (SOAP Faults on a SOAP gateway). One access line per request.

pub mod client;
pub mod reload;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::util::BoxCloneSyncService;
use tower::ServiceExt;

use crate::body::ResponseBody;
use crate::error::{BoxError, Error, ErrorCode};
use crate::metrics::{GatewayMetrics, Outcome};

/// The body of every response the sidecar sends.
pub type ProxyBody = ResponseBody<Incoming>;

/// A gateway's layer stack around its upstream client, as the listener calls it: the request
/// body is already read (bounded in size and time) by the front.
pub type GatewayService = BoxCloneSyncService<Request<Full<Bytes>>, Response<ProxyBody>, Error>;

/// How much of an oversized request body is read and discarded after its 413 is sent, so that
/// clients that write the whole body before reading (Python's http.client, Node's http) see the
/// 413 instead of a reset connection. Past either bound the connection is closed.
const DRAIN_LIMIT_BYTES: usize = 64 << 20;
/// See [`DRAIN_LIMIT_BYTES`].
const DRAIN_LIMIT_TIME: Duration = Duration::from_secs(10);

/// The limits a front enforces before a request reaches the gateway's layer.
#[derive(Debug, Clone)]
pub struct FrontLimits {
    /// Calls in flight at once; more get 503 `overloaded`.
    pub max_concurrency: usize,
    /// Largest request body; larger gets 413 `body_too_large`.
    pub max_request_bytes: usize,
    /// How long the app may take to send the request body.
    pub body_timeout: Duration,
    /// payauth's own errors as SOAP 1.1 Faults (a Number SOAP gateway) rather than JSON.
    pub soap_errors: bool,
}

pub use crate::forward::Replayed;

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// One gateway's front.
#[derive(Clone)]
pub struct Front {
    name: Arc<str>,
    upstream: Uri,
    service: GatewayService,
    limit: Arc<Semaphore>,
    limits: FrontLimits,
    metrics: GatewayMetrics,
}

/// Request ids are unique across the process's gateways.
static REQUEST_IDS: AtomicU64 = AtomicU64::new(0);

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("name", &self.name)
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl tower::Service<Request<Incoming>> for Front {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = crate::forward::BoxFuture<Result<Response<ProxyBody>, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // Load is shed per request (503 overloaded), never queued.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let front = self.clone();
        Box::pin(async move { Ok(front.handle(request).await) })
    }
}

impl Front {
    /// A front for `service` with these limits.
    pub fn new(
        name: &str,
        upstream: Uri,
        service: GatewayService,
        limits: FrontLimits,
        metrics: GatewayMetrics,
    ) -> Self {
        Self {
            name: name.into(),
            upstream,
            service,
            limit: Arc::new(Semaphore::new(limits.max_concurrency)),
            limits,
            metrics,
        }
    }

    fn error(&self, code: ErrorCode, message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
        Error::new(code, self.name.to_string(), message)
    }

    /// Reads the request body, at most `max_request_bytes` within `body_timeout`. An oversized
    /// body is drained in the background (bounded) so that the app can read its 413.
    async fn read_body(
        &self,
        headers: &http::HeaderMap,
        mut body: Incoming,
    ) -> Result<Bytes, Error> {
        let limit = self.limits.max_request_bytes;
        let too_large = || {
            self.error(
                ErrorCode::BodyTooLarge,
                format!("request body over the limit of {limit} bytes; nothing was forwarded"),
            )
        };
        if crate::body::content_length(headers).is_some_and(|len| len > limit as u64) {
            drain(body);
            return Err(too_large());
        }
        let collect = Limited::new(&mut body, limit).collect();
        match tokio::time::timeout(self.limits.body_timeout, collect).await {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.is::<LengthLimitError>() => {
                drain(body);
                Err(too_large())
            }
            Ok(Err(_)) => Err(self.error(
                ErrorCode::BadRequest,
                "the request body could not be read; nothing was forwarded",
            )),
            Err(_) => Err(self.error(
                ErrorCode::BadRequest,
                format!(
                    "the request body did not arrive within {} s; nothing was forwarded",
                    self.limits.body_timeout.as_secs_f64()
                ),
            )),
        }
    }

    /// Handles one request from the app.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        let started = tokio::time::Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| {
                v.len() <= 64
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .map(str::to_owned)
            .unwrap_or_else(|| format!("pa-{:x}", REQUEST_IDS.fetch_add(1, Ordering::Relaxed)));

        let Ok(_permit) = Arc::clone(&self.limit).try_acquire_owned() else {
            let error = Error::new(
                ErrorCode::Overloaded,
                self.name.to_string(),
                "too many calls in flight to this gateway; nothing was forwarded, retry shortly",
            );
            self.metrics.request(Outcome::Error(ErrorCode::Overloaded));
            return self.finish(Err(error), &method, &path, &request_id, started);
        };
        let (mut parts, body) = request.into_parts();
        for name in HOP_BY_HOP {
            parts.headers.remove(name);
        }
        parts.headers.remove(header::HOST);
        let prepared = match self.upstream_uri(&parts.uri) {
            Ok(uri) => {
                parts.uri = uri;
                self.read_body(&parts.headers, body).await
            }
            Err(()) => Err(self.error(ErrorCode::BadRequest, "the request target is not a path")),
        };
        let body = match prepared {
            Ok(body) => body,
            Err(error) => {
                self.metrics.request(Outcome::Error(error.code()));
                return self.finish(Err(error), &method, &path, &request_id, started);
            }
        };
        let request = Request::from_parts(parts, Full::new(body));
        let result = self.service.clone().oneshot(request).await;
        self.finish(result, &method, &path, &request_id, started)
    }

    fn finish(
        &self,
        result: Result<Response<ProxyBody>, Error>,
        method: &http::Method,
        path: &str,
        request_id: &str,
        started: tokio::time::Instant,
    ) -> Response<ProxyBody> {
        let (mut response, outcome) = match result {
            Ok(mut response) => {
                for name in HOP_BY_HOP {
                    response.headers_mut().remove(name);
                }
                let local = response
                    .extensions()
                    .get::<crate::forward::AnsweredLocally>()
                    .is_some();
                (response, if local { "local" } else { "forwarded" })
            }
            Err(error) => {
                let response = if self.limits.soap_errors {
                    error.to_soap_response()
                } else {
                    error.to_response()
                };
                let (parts, body) = response.into_parts();
                let bytes = body_bytes(body);
                (
                    Response::from_parts(parts, ResponseBody::full(bytes)),
                    error.code().as_str(),
                )
            }
        };
        let replayed = response
            .extensions()
            .get::<Replayed>()
            .copied()
            .unwrap_or_default()
            .0;
        let upstream_ms = response
            .extensions()
            .get::<crate::forward::UpstreamLatency>()
            .map(|u| u.0.as_secs_f64() * 1000.0);
        if let Ok(id) = HeaderValue::from_str(request_id) {
            response.headers_mut().insert("x-request-id", id);
        }
        tracing::info!(
            target: "payauth::access",
            gateway = %self.name,
            method = %method,
            path,
            status = response.status().as_u16(),
            outcome,
            replayed,
            upstream_ms,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            request_id,
        );
        response
    }

    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, ()> {
        let path_and_query = uri.path_and_query().cloned().ok_or(())?;
        if !path_and_query.as_str().starts_with('/') {
            return Err(());
        }
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).map_err(|_| ())
    }
}

fn body_bytes(body: http_body_util::Full<Bytes>) -> Bytes {
    use http_body::Body;
    // A Full body yields its one frame immediately.
    let mut body = std::pin::pin!(body);
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    match body.as_mut().poll_frame(&mut cx) {
        std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// Reads and discards what is left of an oversized request body, within bounds, so that the
/// connection closes gently after the 413 (see [`DRAIN_LIMIT_BYTES`]).
fn drain(mut body: Incoming) {
    tokio::spawn(async move {
        let mut left = DRAIN_LIMIT_BYTES;
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT_TIME;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
            let len = frame.data_ref().map_or(0, Bytes::len);
            match left.checked_sub(len) {
                Some(rest) if rest > 0 => left = rest,
                _ => break,
            }
        }
    });
}

/// The one accept loop: serves HTTP/1.1 on `listener` with `service` (a gateway's front, the
/// admin router) until `shutdown` turns true, then lets connections finish for up to `grace`.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30))
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service.clone()));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            () = stopped(&mut shutdown) => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the remaining connections"),
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The borrow guard is dropped at once: it must not live across an await.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Binds a listener, with a clear error.
pub async fn bind(what: &str, addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("{what}: cannot listen on {addr}: {e}")))
}

/// Turns a boxed executor-agnostic builder into one for tokio (re-exported for the admin server).
pub fn executor() -> TokioExecutor {
    TokioExecutor::new()
}
