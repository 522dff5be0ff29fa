//! The connections of one upstream client (one per worker thread in the sidecar): HTTP/1.1 over
//! TCP or rustls, driven with hyper's `client::conn::http1` directly, kept alive and reused.
//!
//! What it keeps to, for payments:
//!
//! - **A request is sent again only when hyper hands it back unsent.** A pooled connection that
//!   turns out closed when a request is offered to it gives the request back
//!   (`TrySendError::take_message`); only then does the request go to another connection. Once
//!   hyper has started writing it, any failure is the caller's `outcome_unknown`
//!   ([`UpstreamError::is_connect`] is false), never a retry.
//! - **A connection is reused only after its last answer was read to the end.** It goes back to
//!   the idle list when the answer's body ends ([`UpstreamBody`]); an answer dropped half read,
//!   or failed, takes its connection with it.
//! - **Idle connections are bounded**: at most [`MAX_IDLE`] per client, each for at most
//!   [`IDLE_TIMEOUT`], so that a connection a peer or a middlebox dropped in silence is not
//!   written to after a long pause.
//!
//! This is what hyper-util's legacy `Client` does too; doing it here skips what a general client
//! needs and a gateway's does not (a hash map of pools keyed by origin, hashed twice per call, a
//! task spawned per call to watch each connection back into its pool, an extension per answer):
//! `bench/vs-nginx.sh --callgrind` measures the difference.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::ServiceExt;

use crate::error::BoxError;
use crate::sync::lock;

/// Idle connections kept per client (per worker thread in the sidecar); more are closed when
/// their answer ends.
pub const MAX_IDLE: usize = 256;
/// How long a connection may stay idle and still be used.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type Sender = SendRequest<Full<Bytes>>;

/// Where a connection goes: its scheme and authority.
#[derive(Debug, Clone)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
}

/// Origins are the same when they are written the same, byte for byte: `Authority`'s own
/// comparison ignores ASCII case one byte at a time, twice per call here, while a client's
/// URIs are all made from its one configured upstream. Two spellings of one host only mean two
/// sets of connections to it.
impl PartialEq for Origin {
    fn eq(&self, other: &Self) -> bool {
        self.authority.as_str() == other.authority.as_str()
            && self.scheme.as_str() == other.scheme.as_str()
    }
}

impl Eq for Origin {}

impl Origin {
    fn of(uri: &Uri) -> Option<Self> {
        Some(Self {
            scheme: uri.scheme()?.clone(),
            authority: uri.authority()?.clone(),
        })
    }

    /// The `Host` header for it: the authority, without a port that is the scheme's default.
    fn host(&self) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
        let default_port = if self.scheme == Scheme::HTTPS {
            443
        } else {
            80
        };
        match self.authority.port_u16() {
            Some(port) if port == default_port => HeaderValue::from_str(self.authority.host()),
            _ => HeaderValue::from_str(self.authority.as_str()),
        }
    }
}

struct Idle {
    origin: Origin,
    sender: Sender,
    since: Instant,
}

#[derive(Default)]
struct Held {
    /// Oldest first: connections are pushed when they go idle and taken from anywhere, so the
    /// list stays in the order of `since` and the stale ones are a prefix.
    idle: Vec<Idle>,
    /// The `Host` header of the last origin called (a client calls one gateway).
    host: Option<(Origin, HeaderValue)>,
}

/// One client's connections and how to make more.
pub(crate) struct Pool {
    connector: HttpsConnector<HttpConnector>,
    http1: http1::Builder,
    held: Mutex<Held>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &lock(&self.held).idle.len())
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub(crate) fn new(connector: HttpsConnector<HttpConnector>) -> Self {
        let mut http1 = http1::Builder::new();
        // One write(2) per request rather than writev(2) of head and body.
        http1.writev(false);
        Self {
            connector,
            http1,
            held: Mutex::new(Held::default()),
        }
    }

    /// Sends `request` (an absolute URI) on an idle connection to its origin, or a new one.
    pub(crate) async fn send(
        self: Arc<Self>,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let origin = Origin::of(request.uri()).ok_or_else(|| {
            UpstreamError::not_sent("the request's URI has no scheme and authority".into())
        })?;
        let host = self.host(&origin)?;
        request
            .headers_mut()
            .entry(http::header::HOST)
            .or_insert(host);
        let path = request.uri().path_and_query().cloned();
        *request.uri_mut() = path.map_or_else(|| Uri::from_static("/"), Uri::from);
        while let Some(mut sender) = self.take(&origin) {
            if sender.ready().await.is_err() {
                continue; // closed while idle: nothing was offered to it
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.answer(response, origin, sender)),
                Err(mut refused) => match refused.take_message() {
                    // Handed back unsent: another connection may have it.
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::sent(refused.into_error().into())),
                },
            }
        }
        let mut sender = self.connect(&origin).await?;
        match sender.try_send_request(request).await {
            Ok(response) => Ok(self.answer(response, origin, sender)),
            Err(mut refused) => {
                let unsent = refused.take_message().is_some();
                let error = refused.into_error().into();
                Err(if unsent {
                    UpstreamError::not_sent(error)
                } else {
                    UpstreamError::sent(error)
                })
            }
        }
    }

    fn host(&self, origin: &Origin) -> Result<HeaderValue, UpstreamError> {
        let mut held = lock(&self.held);
        if let Some((known, value)) = &held.host {
            if known == origin {
                return Ok(value.clone());
            }
        }
        let value = origin
            .host()
            .map_err(|e| UpstreamError::not_sent(Box::new(e)))?;
        held.host = Some((origin.clone(), value.clone()));
        Ok(value)
    }

    /// The most recently used idle connection to `origin` that is open and not too old. The
    /// stale (a prefix of the list) are dropped first; a closed one found on the way is dropped
    /// and the search goes on. Closed ones elsewhere wait for their turn or their timeout: they
    /// hold no socket, and the list is bounded.
    fn take(&self, origin: &Origin) -> Option<Sender> {
        let mut held = lock(&self.held);
        let now = Instant::now();
        let stale = held
            .idle
            .partition_point(|idle| now.saturating_duration_since(idle.since) >= IDLE_TIMEOUT);
        held.idle.drain(..stale);
        while let Some(at) = held.idle.iter().rposition(|idle| idle.origin == *origin) {
            let idle = held.idle.remove(at);
            if !idle.sender.is_closed() {
                return Some(idle.sender);
            }
        }
        None
    }

    /// A connection whose answer was read to the end, back in the idle list.
    fn put(&self, origin: Origin, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut held = lock(&self.held);
        if held.idle.len() >= MAX_IDLE {
            held.idle.remove(0);
        }
        held.idle.push(Idle {
            origin,
            sender,
            since: Instant::now(),
        });
    }

    fn answer(
        self: &Arc<Self>,
        response: Response<Incoming>,
        origin: Origin,
        sender: Sender,
    ) -> Response<UpstreamBody> {
        response.map(|inner| {
            let keep = Keep {
                pool: Arc::clone(self),
                origin,
                sender,
            };
            if inner.is_end_stream() {
                keep.back();
                UpstreamBody { inner, keep: None }
            } else {
                UpstreamBody {
                    inner,
                    keep: Some(keep),
                }
            }
        })
    }

    /// A new connection to `origin` (TCP within the connect timeout, then TLS for `https`),
    /// driven by a task of its own on the current runtime.
    async fn connect(&self, origin: &Origin) -> Result<Sender, UpstreamError> {
        let uri = Uri::builder()
            .scheme(origin.scheme.clone())
            .authority(origin.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| UpstreamError::not_sent(Box::new(e)))?;
        let io = self
            .connector
            .clone()
            .oneshot(uri)
            .await
            .map_err(UpstreamError::not_sent)?;
        let (sender, connection) = self
            .http1
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::not_sent(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// A connection lent to an answer, back in its pool when the answer ends.
struct Keep {
    pool: Arc<Pool>,
    origin: Origin,
    sender: Sender,
}

impl Keep {
    fn back(self) {
        self.pool.put(self.origin, self.sender);
    }
}

pin_project! {
    /// The body of a gateway's answer from [`crate::UpstreamClient`]: hyper's body, whose
    /// connection goes back to the client's pool when it ends (and is closed if the body is
    /// dropped before that, or fails).
    pub struct UpstreamBody {
        #[pin]
        inner: Incoming,
        keep: Option<Keep>,
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(keep) = this.keep.take() {
                    keep.back();
                }
            }
            Poll::Ready(Some(Ok(_))) => {
                if this.inner.is_end_stream() {
                    if let Some(keep) = this.keep.take() {
                        keep.back();
                    }
                }
            }
            // A failed body leaves its connection in an unknown state: closed with it.
            Poll::Ready(Some(Err(_))) => drop(this.keep.take()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why [`crate::UpstreamClient`] got no answer.
#[derive(Debug)]
pub struct UpstreamError {
    sent: bool,
    source: BoxError,
}

impl UpstreamError {
    fn not_sent(source: BoxError) -> Self {
        Self {
            sent: false,
            source,
        }
    }

    fn sent(source: BoxError) -> Self {
        Self { sent: true, source }
    }

    /// Nothing of the request reached the gateway: connecting (TCP or TLS) failed, or every
    /// connection it was offered to handed it back unsent.
    pub fn is_connect(&self) -> bool {
        !self.sent
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.sent {
            "the connection to the gateway failed"
        } else {
            "could not connect to the gateway"
        })
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The future of one call (boxed, as hyper-util's client's is).
pub type UpstreamFuture =
    Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send>>;
