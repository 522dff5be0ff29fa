//! A gateway's front: what stands between a listener and the gateway's layer.
//!
//! For each request, in this order:
//!
//! 1. **Request id**: the app's `x-request-id` is kept when it is 1 to 64 letters, digits, `-`
//!    or `_`; any other is replaced by payauth's own (`pa-<process>-<n>`: 48 random bits drawn at
//!    start, then a counter, both in hex, so that ids of different runs and pods do not collide),
//!    so a hostile id never reaches a log line. The id goes back on the answer (over any the
//!    gateway sent). A W3C `traceparent` is passed on to the gateway when it is well-formed (one
//!    header, version `00`, non-zero ids) and dropped otherwise, with its `tracestate`; its trace
//!    id goes into the access line.
//! 2. **Span and access log**: one `request` span per call (gateway and request id) and one
//!    `payauth::access` line, outside the span, when the answer is ready.
//! 3. **Errors become the contract's responses**, the one place this happens: JSON with
//!    `x-payauth-error`, or SOAP 1.1 Faults on a SOAP gateway. Hop-by-hop headers are dropped
//!    from answers.
//! 4. **Load shedding**: at `max_concurrency` calls in flight, more get 503 `overloaded` at
//!    once; nothing is queued. Every front a [`FrontLayer`] (or a clone of it) builds shares the
//!    one limit: the sidecar builds one per worker thread. A call that gets a slot keeps it
//!    until its answer's head is ready.
//! 5. **Preparation**: hop-by-hop headers and `Host` are dropped, the URI pointed at the
//!    upstream (path and query as the app sent them), the body read whole (at most
//!    `max_request_bytes`, within the request timeout).
//!
//! The steps are one `Service` with one future per call, not a stack of tower layers: each
//! layer would add its own boxed future, clones and extension inserts to every call, and the
//! front is on the path of every call. That is also why the request id is set here rather than
//! with tower-http's `SetRequestId`/`PropagateRequestId` (which also insert an extension per
//! call), and the limit is a semaphore taken with `try_acquire` rather than tower's `LoadShed`
//! over `ConcurrencyLimit`. The body limit is payauth's own because an oversized body must get
//! the contract's JSON 413 and be drained (bounded) so that clients that write their whole body
//! before reading see it; the span is its own rather than tower-http's `TraceLayer`, whose
//! response-body wrapper costs a little on every frame and whose failure classification would
//! log each 5xx a second time.
//!
//! [`FrontLayer`] wraps any gateway service (for example a [`crate::number::NumberAuthLayer`]
//! around a client) for a library user who serves it with hyper or axum.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderValue, Request, Response, Uri};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::util::BoxCloneService;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use crate::body::ResponseBody;
use crate::error::{BoxError, Error, ErrorCode};
use crate::forward::BoxFuture;
use crate::metrics::{GatewayMetrics, Outcome};

/// How much of an oversized request body is read and discarded after its 413 is sent, so that
/// clients that write the whole body before reading (Python's http.client, Node's http) see the
/// 413 instead of a reset connection. Past either bound the connection is closed.
const DRAIN_LIMIT_BYTES: usize = 64 << 20;
/// See [`DRAIN_LIMIT_BYTES`].
const DRAIN_LIMIT_TIME: Duration = Duration::from_secs(10);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

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

/// A gateway service a front can wrap: a gateway's layer around its client (or anything that
/// answers with payauth's body and errors), cloned per call.
pub trait Wrappable<ResB>:
    Service<
        Request<Full<Bytes>>,
        Response = Response<ResponseBody<ResB>>,
        Error = Error,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T, ResB> Wrappable<ResB> for T where
    T: Service<
            Request<Full<Bytes>>,
            Response = Response<ResponseBody<ResB>>,
            Error = Error,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// A request body a front can read: hyper's `Incoming`, or any body of the app's requests.
pub trait AppBody: Body<Data: Send, Error: Into<BoxError>> + Send + Unpin + 'static {}

impl<T> AppBody for T where T: Body<Data: Send, Error: Into<BoxError>> + Send + Unpin + 'static {}

/// The front as one service: takes the app's requests, never fails (errors are responses).
pub type Front<ReqB, ResB> =
    BoxCloneService<Request<ReqB>, Response<ResponseBody<ResB>>, Infallible>;

/// The front as a function called by reference, shared rather than cloned per call: what the
/// sidecar's accept loop serves (a tower service is cloned for every request hyper hands it,
/// and a boxed one allocates for that). Built by [`FrontLayer::shared`].
pub type SharedFront<ReqB, ResB> = Arc<
    dyn Fn(Request<ReqB>) -> BoxFuture<Result<Response<ResponseBody<ResB>>, Infallible>>
        + Send
        + Sync,
>;

/// Builds a [`Front`] around a gateway service; see the module docs.
#[derive(Debug, Clone)]
pub struct FrontLayer {
    shared: Arc<FrontState>,
}

/// What every front built from one [`FrontLayer`] shares.
#[derive(Debug)]
struct FrontState {
    name: Arc<str>,
    upstream: Uri,
    limits: FrontLimits,
    metrics: GatewayMetrics,
    /// `max_concurrency` permits, shared by every front built from this layer.
    in_flight: Arc<tokio::sync::Semaphore>,
}

impl FrontLayer {
    /// A front for the gateway `name` at `upstream`.
    pub fn new(name: &str, upstream: Uri, limits: FrontLimits, metrics: GatewayMetrics) -> Self {
        Self {
            shared: Arc::new(FrontState {
                name: name.into(),
                upstream,
                in_flight: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrency)),
                limits,
                metrics,
            }),
        }
    }

    /// The stack around `service`.
    pub fn front<S, ReqB, ResB>(&self, service: S) -> Front<ReqB, ResB>
    where
        S: Wrappable<ResB>,
        ReqB: AppBody,
        ResB: Send + 'static,
    {
        BoxCloneService::new(tower::Layer::layer(self, service))
    }

    /// The same front as a [`SharedFront`].
    pub fn shared<S, ReqB, ResB>(&self, service: S) -> SharedFront<ReqB, ResB>
    where
        S: Wrappable<ResB> + Sync,
        ReqB: AppBody,
        ResB: Send + 'static,
    {
        let front = tower::Layer::layer(self, service);
        Arc::new(move |request| front.call_ref(request))
    }
}

/// The front's one service: the steps of the module docs in one future per call (one
/// allocation, rather than one per step). Made by [`FrontLayer`] as a `tower::Layer`, or boxed by
/// [`FrontLayer::front`].
#[derive(Debug, Clone)]
pub struct FrontService<S> {
    inner: S,
    shared: Arc<FrontState>,
}

impl<S> FrontService<S> {
    /// The gateway service it wraps.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The gateway service it wraps, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The gateway service it wraps, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S> tower::Layer<S> for FrontLayer {
    type Service = FrontService<S>;

    fn layer(&self, inner: S) -> FrontService<S> {
        FrontService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for FrontService<S>
where
    // The answer's body type named here too, so that the impl determines `ResB`.
    S: Wrappable<ResB> + Service<Request<Full<Bytes>>, Response = Response<ResponseBody<ResB>>>,
    ReqB: AppBody,
    ResB: Send + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The gateway service is driven to readiness per call (it is cloned for that).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        self.call_ref(request)
    }
}

impl<S> FrontService<S> {
    /// A call: needs only `&self` (the gateway service is cloned for it).
    fn call_ref<ReqB, ResB>(
        &self,
        mut request: Request<ReqB>,
    ) -> BoxFuture<Result<Response<ResponseBody<ResB>>, Infallible>>
    where
        S: Wrappable<ResB>,
        ReqB: AppBody,
        ResB: Send + 'static,
    {
        let started = tokio::time::Instant::now();
        // 1. Request id and trace context.
        let headers = request.headers_mut();
        let (kept_id, traceparent) = drop_unusable_ids(headers);
        let request_id = match kept_id {
            Some(id) => id,
            None => {
                let id = next_request_id();
                headers.insert(REQUEST_ID, id.clone());
                id
            }
        };
        // Reference-counted clones: the texts are formatted only into the access line.
        let method = request.method().clone();
        let uri = request.uri().clone();
        // 4. A slot, taken now and held until the answer's head is ready; none left: 503.
        let slot = Arc::clone(&self.shared.in_flight).try_acquire_owned();
        let shared = Arc::clone(&self.shared);
        let inner = self.inner.clone();
        // 2. The span gives the lines logged during the call their gateway and request id; the
        // access line has its own fields and is logged after it.
        let span = tracing::info_span!("request", gateway = %shared.name,
            request_id = request_id.to_str().unwrap_or(""));
        Box::pin(async move {
            let result = async {
                let _slot = slot.map_err(|_| {
                    shared.refused(
                        ErrorCode::Overloaded,
                        "too many calls in flight to this gateway; nothing was forwarded, retry \
                         shortly",
                    )
                })?;
                // 5. Preparation.
                let request = shared.prepare(request).await?;
                inner.oneshot(request).await
            }
            .instrument(span)
            .await;
            // 3. Errors become the contract's responses.
            let (mut response, outcome) = match result {
                Ok(mut response) => {
                    remove_hop_by_hop(response.headers_mut());
                    let local = response.body().answered_locally();
                    (response, if local { "local" } else { "forwarded" })
                }
                Err(error) => {
                    let outcome = error.code().as_str();
                    (shared.error_response(&error), outcome)
                }
            };
            // The id goes back on every answer, over any the gateway may have sent.
            response
                .headers_mut()
                .insert(REQUEST_ID, request_id.clone());
            shared.access_line(
                &Served {
                    method: &method,
                    uri: &uri,
                    started,
                    request_id: &request_id,
                    traceparent: traceparent.as_ref(),
                },
                &response,
                outcome,
            );
            Ok(response)
        })
    }
}

/// A duration in milliseconds to the microsecond, as the access line gives its times (the text
/// format writes such numbers without core's float formatting).
fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

/// What the access line says of a call besides its answer.
struct Served<'a> {
    method: &'a http::Method,
    uri: &'a Uri,
    started: tokio::time::Instant,
    request_id: &'a HeaderValue,
    traceparent: Option<&'a HeaderValue>,
}

impl FrontState {
    /// The call's access line (`payauth::access`): one per call, after its answer's head.
    fn access_line<B>(
        &self,
        call: &Served<'_>,
        response: &Response<ResponseBody<B>>,
        outcome: &str,
    ) {
        let forwarded = response.body().forwarded();
        let replayed = forwarded.is_some_and(|f| f.replayed);
        let upstream_ms = forwarded.map(|f| millis(f.upstream));
        tracing::info!(
            target: "payauth::access",
            gateway = %self.name,
            method = %call.method,
            path = call.uri.path(),
            status = response.status().as_u16(),
            outcome,
            replayed,
            upstream_ms,
            duration_ms = millis(call.started.elapsed()),
            request_id = call.request_id.to_str().unwrap_or(""),
            trace_id = call.traceparent.and_then(trace_id),
        );
    }

    /// A call refused by the front itself (counted in the metrics); nothing was forwarded.
    fn refused(
        &self,
        code: ErrorCode,
        message: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Error {
        self.metrics.request(Outcome::Error(code));
        self.error(code, message)
    }

    fn error(&self, code: ErrorCode, message: impl Into<std::borrow::Cow<'static, str>>) -> Error {
        Error::new(code, self.name.to_string(), message)
    }

    /// The contract's answer to `error`: JSON, or a SOAP 1.1 Fault on a SOAP gateway.
    fn error_response<ResB>(&self, error: &Error) -> Response<ResponseBody<ResB>> {
        error
            .response(self.limits.soap_errors)
            .map(ResponseBody::full)
    }

    /// Drops hop-by-hop headers and `Host`, points the URI at the upstream and reads the body.
    async fn prepare<B: AppBody>(
        &self,
        request: Request<B>,
    ) -> Result<Request<Full<Bytes>>, Error> {
        let (mut parts, body) = request.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        let prepared = match upstream_uri(&self.upstream, &parts.uri) {
            Some(uri) => {
                parts.uri = uri;
                self.read_body(&parts.headers, body).await
            }
            None => Err(self.error(ErrorCode::BadRequest, "the request target is not a path")),
        };
        let body = prepared.inspect_err(|error| {
            self.metrics.request(Outcome::Error(error.code()));
        })?;
        Ok(Request::from_parts(parts, Full::new(body)))
    }
}

// --- Request id -----------------------------------------------------------------------------

/// Request ids are unique across the process's gateways: a counter, taken by each thread
/// [`ID_BLOCK`] at a time so that the workers do not share a cache line per call...
static REQUEST_IDS: AtomicU64 = AtomicU64::new(0);
const ID_BLOCK: u64 = 1024;
/// ...after 48 random bits drawn once per process, so that runs and pods do not collide:
/// `pa-<12 hex digits>-`.
static ID_PREFIX: std::sync::OnceLock<[u8; 16]> = std::sync::OnceLock::new();

thread_local! {
    /// The next id of this thread's block, and the end of the block.
    static NEXT_ID: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// `pa-<12 hex digits of the process>-<counter in hex>`.
fn next_request_id() -> HeaderValue {
    let prefix = ID_PREFIX.get_or_init(|| {
        // Not a secret, only distinct: the clock mixed with a per-thread random seed.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let process = (fastrand::u64(..) ^ nanos.rotate_left(17)) & 0xffff_ffff_ffff;
        let mut prefix = *b"pa-000000000000-";
        write_hex(&mut prefix[3..15], process);
        prefix
    });
    let n = NEXT_ID.with(|next| {
        let (mut n, mut end) = next.get();
        if n == end {
            n = REQUEST_IDS.fetch_add(ID_BLOCK, Ordering::Relaxed);
            end = n + ID_BLOCK;
        }
        next.set((n + 1, end));
        n
    });
    // Formatted on the stack, then owned by the header value: the call's one allocation for its
    // id. (A value copied from a slice would allocate again on its first clone, to share it.)
    let mut id = RequestId {
        bytes: [0; 32],
        len: 16 + hex_digits(n),
    };
    id.bytes[..16].copy_from_slice(prefix);
    write_hex(&mut id.bytes[16..id.len], n);
    HeaderValue::from_maybe_shared(Bytes::from_owner(id))
        .unwrap_or(HeaderValue::from_static("pa-0"))
}

/// A request id's text, owned by the `Bytes` of its header value.
struct RequestId {
    bytes: [u8; 32],
    len: usize,
}

impl AsRef<[u8]> for RequestId {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// How many hex digits `n` takes, without leading zeros (1 for 0).
fn hex_digits(n: u64) -> usize {
    (64 - n.leading_zeros() as usize).div_ceil(4).max(1)
}

/// The low `out.len()` hex digits of `n`, lower case, zero-padded, into `out`.
fn write_hex(out: &mut [u8], mut n: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
    }
}

/// Whether the app's request id may be kept: 1 to 64 letters, digits, `-` or `_`.
fn usable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`, lower case, ids not
/// all zeros), if the value is one.
fn trace_id(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zeros = |s: &str| s.bytes().all(|b| b == b'0');
    match parts.as_slice() {
        ["00", trace, parent, flags]
            if hex(trace, 32)
                && hex(parent, 16)
                && hex(flags, 2)
                && !zeros(trace)
                && !zeros(parent) =>
        {
            Some(trace)
        }
        _ => None,
    }
}

/// Drops an `x-request-id` or a `traceparent` that is not one well-formed value (and, with a
/// dropped `traceparent`, its `tracestate`, as W3C Trace Context asks); returns the kept ones.
/// A header that is not there costs one look-up.
fn drop_unusable_ids(headers: &mut http::HeaderMap) -> (Option<HeaderValue>, Option<HeaderValue>) {
    let mut kept = [None, None];
    for (slot, (name, usable)) in kept.iter_mut().zip([
        (&REQUEST_ID, usable_request_id as fn(&HeaderValue) -> bool),
        (&TRACEPARENT, |v: &HeaderValue| trace_id(v).is_some()),
    ]) {
        let mut values = headers.get_all(name).iter();
        let drop = match (values.next(), values.next()) {
            (None, _) => false,
            (Some(value), None) if usable(value) => {
                *slot = Some(value.clone());
                false
            }
            _ => true,
        };
        if drop {
            headers.remove(name);
            if *name == TRACEPARENT {
                headers.remove(TRACESTATE);
            }
        }
    }
    let [request_id, traceparent] = kept;
    (request_id, traceparent)
}

/// Drops the hop-by-hop headers: the fixed ones, and those the `Connection` header names
/// (RFC 9110 §7.6.1). One pass over the names present finds which are there (most messages have
/// none, and a gateway's answer often only `Connection: keep-alive`), and only those are removed:
/// a hashed removal per name that is not there would cost more than the pass.
fn remove_hop_by_hop(headers: &mut http::HeaderMap) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(at) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present |= 1 << at;
        }
    }
    if present == 0 {
        return;
    }
    // Collected first: the names are read from a header about to be removed. A token that is
    // no header name (`close`, blanks, junk), a fixed one (removed below if there) or a header
    // that is not there names nothing more to remove.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| {
            !HOP_BY_HOP
                .iter()
                .any(|hop| hop.as_str().eq_ignore_ascii_case(token))
        })
        .filter(|token| {
            headers
                .keys()
                .any(|name| name.as_str().eq_ignore_ascii_case(token))
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for (at, name) in HOP_BY_HOP.into_iter().enumerate() {
        if present & (1 << at) != 0 {
            headers.remove(name);
        }
    }
}

// --- Preparation ----------------------------------------------------------------------------

fn upstream_uri(upstream: &Uri, uri: &Uri) -> Option<Uri> {
    let path_and_query = uri.path_and_query().cloned()?;
    if !path_and_query.as_str().starts_with('/') {
        return None;
    }
    let mut parts = upstream.clone().into_parts();
    parts.path_and_query = Some(path_and_query);
    Uri::from_parts(parts).ok()
}

impl FrontState {
    /// Reads the request body, at most `max_request_bytes` within `body_timeout`. An oversized
    /// body is drained in the background (bounded) so that the app can read its 413.
    async fn read_body<B: AppBody>(
        &self,
        headers: &http::HeaderMap,
        mut body: B,
    ) -> Result<Bytes, Error> {
        let read = crate::body::read_request(
            &self.name,
            &mut body,
            headers,
            self.limits.max_request_bytes,
            self.limits.body_timeout,
        )
        .await;
        if read
            .as_ref()
            .is_err_and(|e| e.code() == ErrorCode::BodyTooLarge)
        {
            drain(body);
        }
        read
    }
}

/// Reads and discards what is left of an oversized request body, within bounds, so that the
/// connection closes gently after the 413 (see [`DRAIN_LIMIT_BYTES`]).
fn drain<B: AppBody>(mut body: B) {
    use bytes::Buf;
    tokio::spawn(async move {
        let mut left = DRAIN_LIMIT_BYTES;
        let deadline = tokio::time::Instant::now() + DRAIN_LIMIT_TIME;
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
            let len = frame.data_ref().map_or(0, |d| d.remaining());
            match left.checked_sub(len) {
                Some(rest) if rest > 0 => left = rest,
                _ => break,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    /// RFC 9110 §7.6.1 read plainly: every fixed hop-by-hop header goes, and every header a
    /// `Connection` token names.
    fn hop_by_hop_removed_plainly(headers: &mut http::HeaderMap) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named.into_iter().chain(HOP_BY_HOP) {
            headers.remove(name);
        }
    }

    proptest::proptest! {
        #[test]
        fn hop_by_hop_removal_is_the_plain_rule(
            present in proptest::collection::vec(0usize..12, 0..10),
            connections in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        (0usize..12).prop_map(|i| NAMES[i].to_owned()),
                        (0usize..12).prop_map(|i| format!(" {} ", NAMES[i].to_ascii_uppercase())),
                        proptest::strategy::Just("close".to_owned()),
                        "[ -~]{0,8}",
                    ],
                    0..4,
                ),
                0..3,
            ),
        ) {
            let mut headers = http::HeaderMap::new();
            for i in present {
                headers.append(HeaderName::from_static(NAMES[i]), HeaderValue::from_static("v"));
            }
            for tokens in connections {
                if let Ok(value) = HeaderValue::from_str(&tokens.join(",")) {
                    headers.append(header::CONNECTION, value);
                }
            }
            let mut expected = headers.clone();
            hop_by_hop_removed_plainly(&mut expected);
            remove_hop_by_hop(&mut headers);
            proptest::prop_assert_eq!(headers, expected);
        }
    }

    /// The fixed hop-by-hop names and some of the app's, lower case.
    const NAMES: [&str; 12] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "x-app",
        "x-secret",
        "content-type",
        "close",
    ];

    proptest::proptest! {
        #[test]
        fn ids_are_written_as_format_writes_hex(n: u64, shift in 0u32..64) {
            for n in [n, n >> shift, 0, u64::MAX] {
                let mut out = [0u8; 16];
                let digits = hex_digits(n);
                write_hex(&mut out[..digits], n);
                let expected = format!("{n:x}");
                proptest::prop_assert_eq!(&out[..digits], expected.as_bytes());
                let mut padded = [0u8; 12];
                write_hex(&mut padded, n & 0xffff_ffff_ffff);
                let expected = format!("{:012x}", n & 0xffff_ffff_ffff);
                proptest::prop_assert_eq!(&padded[..], expected.as_bytes());
            }
        }
    }

    #[test]
    fn ids_of_several_threads_are_distinct() {
        let ids: Vec<Vec<HeaderValue>> = (0..4)
            .map(|_| std::thread::spawn(|| (0..3000).map(|_| next_request_id()).collect()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("a thread"))
            .collect();
        let all: std::collections::HashSet<_> = ids.iter().flatten().collect();
        assert_eq!(all.len(), 4 * 3000);
    }

    #[test]
    fn payauth_request_ids_are_plain_and_distinct() {
        let (a, b) = (next_request_id(), next_request_id());
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert!(usable_request_id(id), "{id:?}");
            let text = id.to_str().unwrap();
            let mut parts = text.split('-');
            assert_eq!(parts.next(), Some("pa"));
            assert_eq!(parts.next().map(str::len), Some(12), "{text}");
        }
    }

    /// A front around a gateway service that answers every call "ok" with `headers`, with
    /// room for `max_concurrency` calls.
    fn front_of(
        headers: http::HeaderMap,
        max_concurrency: usize,
    ) -> Front<Full<Bytes>, Full<Bytes>> {
        let registry = prometheus::Registry::new();
        let metrics = crate::metrics::Metrics::new(&registry)
            .expect("metrics")
            .gateway("g");
        let limits = FrontLimits {
            max_concurrency,
            max_request_bytes: 1024,
            body_timeout: Duration::from_secs(5),
            soap_errors: false,
        };
        let service = tower::service_fn(move |_: Request<Full<Bytes>>| {
            let mut response = Response::new(ResponseBody::full(Bytes::from_static(b"ok")));
            *response.headers_mut() = headers.clone();
            std::future::ready(Ok::<_, Error>(response))
        });
        FrontLayer::new(
            "g",
            Uri::from_static("http://gateway.test"),
            limits,
            metrics,
        )
        .front(service)
    }

    #[tokio::test]
    async fn every_answer_carries_the_calls_request_id_over_any_the_gateway_sent() {
        let mut answer = http::HeaderMap::new();
        answer.insert(REQUEST_ID, HeaderValue::from_static("gateway-id"));
        answer.insert(header::CONNECTION, HeaderValue::from_static("close"));
        let call = |id: Option<&'static str>| {
            let mut request = Request::post("/pay")
                .body(Full::new(Bytes::from_static(b"{}")))
                .expect("request");
            if let Some(id) = id {
                request
                    .headers_mut()
                    .insert(REQUEST_ID, HeaderValue::from_static(id));
            }
            request
        };
        let front = front_of(answer, 8);
        let response = front.clone().oneshot(call(Some("app-1"))).await.unwrap();
        assert_eq!(response.headers()[REQUEST_ID], "app-1");
        assert!(
            !response.headers().contains_key(header::CONNECTION),
            "hop-by-hop dropped"
        );
        let response = front.clone().oneshot(call(Some("bad id"))).await.unwrap();
        let ours = response.headers()[REQUEST_ID].to_str().unwrap().to_owned();
        assert!(ours.starts_with("pa-"), "{ours}");
        // payauth's own errors carry it too.
        let response = front_of(http::HeaderMap::new(), 0)
            .oneshot(call(Some("app-2")))
            .await
            .unwrap();
        assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["x-payauth-error"], "overloaded");
        assert_eq!(response.headers()[REQUEST_ID], "app-2");
    }

    #[tokio::test]
    async fn hop_by_hop_headers_are_dropped_both_ways_and_the_others_kept() {
        let registry = prometheus::Registry::new();
        let metrics = crate::metrics::Metrics::new(&registry)
            .expect("metrics")
            .gateway("g");
        let limits = FrontLimits {
            max_concurrency: 8,
            max_request_bytes: 1024,
            body_timeout: Duration::from_secs(5),
            soap_errors: false,
        };
        let with_all = |mut headers: http::HeaderMap| {
            for name in HOP_BY_HOP {
                headers.insert(name, HeaderValue::from_static("x"));
            }
            headers.insert("x-app", HeaderValue::from_static("kept"));
            headers
        };
        let seen = Arc::new(std::sync::Mutex::new(None));
        let seen_by_gateway = Arc::clone(&seen);
        let service = tower::service_fn(move |request: Request<Full<Bytes>>| {
            #[allow(clippy::disallowed_methods)] // a test's own lock
            let mut seen = seen_by_gateway.lock().expect("seen");
            *seen = Some(request.headers().clone());
            let mut response: Response<ResponseBody<Full<Bytes>>> =
                Response::new(ResponseBody::full(Bytes::from_static(b"ok")));
            *response.headers_mut() = with_all(http::HeaderMap::new());
            std::future::ready(Ok::<_, Error>(response))
        });
        let front: Front<Full<Bytes>, Full<Bytes>> = FrontLayer::new(
            "g",
            Uri::from_static("http://gateway.test"),
            limits.clone(),
            metrics,
        )
        .front(service);
        // One or all of them, with other headers around.
        for only in [None, Some(0), Some(7)] {
            let mut request = Request::post("/pay")
                .body(Full::new(Bytes::from_static(b"{}")))
                .expect("request");
            *request.headers_mut() = match only {
                None => with_all(http::HeaderMap::new()),
                Some(i) => {
                    let mut headers = http::HeaderMap::new();
                    headers.insert(HOP_BY_HOP[i].clone(), HeaderValue::from_static("x"));
                    headers.insert("x-app", HeaderValue::from_static("kept"));
                    headers
                }
            };
            request
                .headers_mut()
                .insert(header::HOST, HeaderValue::from_static("payauth"));
            let response = front.clone().oneshot(request).await.unwrap();
            #[allow(clippy::disallowed_methods)] // a test's own lock
            let sent = seen.lock().expect("seen").take().expect("a call");
            for (what, headers) in [("sent", &sent), ("answered", response.headers())] {
                for name in HOP_BY_HOP.iter().chain([&header::HOST]) {
                    assert!(!headers.contains_key(name), "{name} {what}: {headers:?}");
                }
                assert_eq!(headers["x-app"], "kept", "{what}");
            }
        }
        // Headers the Connection header names are hop-by-hop too, both ways (RFC 9110 §7.6.1),
        // in any case and spacing, over several Connection lines; junk tokens name nothing.
        let named = |mut headers: http::HeaderMap| {
            headers.append(
                header::CONNECTION,
                HeaderValue::from_static("X-Hop-One , close"),
            );
            headers.append(
                header::CONNECTION,
                HeaderValue::from_static(",x-hop-two,, bad name"),
            );
            headers.insert("x-hop-one", HeaderValue::from_static("1"));
            headers.insert("x-hop-two", HeaderValue::from_static("2"));
            headers.insert("x-app", HeaderValue::from_static("kept"));
            headers
        };
        let service = tower::service_fn(move |request: Request<Full<Bytes>>| {
            let sent_hops = ["x-hop-one", "x-hop-two", "connection"]
                .iter()
                .filter(|name| request.headers().contains_key(**name))
                .count();
            let kept = request.headers().contains_key("x-app");
            let mut response: Response<ResponseBody<Full<Bytes>>> = Response::new(
                ResponseBody::full(Bytes::from(format!("{sent_hops} {kept}"))),
            );
            *response.headers_mut() = named(http::HeaderMap::new());
            std::future::ready(Ok::<_, Error>(response))
        });
        let front: Front<Full<Bytes>, Full<Bytes>> = FrontLayer::new(
            "g",
            Uri::from_static("http://gateway.test"),
            limits,
            crate::metrics::Metrics::new(&prometheus::Registry::new())
                .expect("metrics")
                .gateway("g"),
        )
        .front(service);
        let mut request = Request::post("/pay")
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request");
        *request.headers_mut() = named(http::HeaderMap::new());
        let response = front.oneshot(request).await.unwrap();
        for name in ["x-hop-one", "x-hop-two", "connection"] {
            assert!(!response.headers().contains_key(name), "{name} answered");
        }
        assert_eq!(response.headers()["x-app"], "kept");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            b"0 true",
            "none of them sent, the app's own kept"
        );
    }

    #[test]
    fn only_plain_request_ids_are_kept() {
        for ok in ["abc", "A-1_b", &"x".repeat(64)] {
            assert!(
                usable_request_id(&HeaderValue::from_str(ok).unwrap()),
                "{ok}"
            );
        }
        for bad in ["", "a b", "a\tb", "é", &"x".repeat(65), "id;drop"] {
            let value = HeaderValue::from_bytes(bad.as_bytes()).unwrap();
            assert!(!usable_request_id(&value), "{bad:?}");
        }
        let mut headers = http::HeaderMap::new();
        headers.append(REQUEST_ID, HeaderValue::from_static("one"));
        headers.append(REQUEST_ID, HeaderValue::from_static("two"));
        assert_eq!(drop_unusable_ids(&mut headers), (None, None));
        assert!(
            headers.get(REQUEST_ID).is_none(),
            "two ids: neither is trusted"
        );
    }

    proptest::proptest! {
        /// Whatever the app sends, a trace id is only ever 32 lower-case hex digits taken from
        /// a `00-<32>-<16>-<2>` value, and nothing panics.
        #[test]
        fn trace_ids_come_only_from_well_formed_values(text in "[ -~]{0,70}", hexes in "[0-9a-f]{50}") {
            if let Ok(value) = HeaderValue::from_str(&text) {
                if let Some(id) = trace_id(&value) {
                    proptest::prop_assert_eq!(id.len(), 32);
                    proptest::prop_assert!(text.starts_with("00-") && text.len() == 55);
                    proptest::prop_assert_eq!(&text[3..35], id);
                }
            }
            let built = format!("00-{}-{}-{}", &hexes[..32], &hexes[32..48], &hexes[48..]);
            let value = HeaderValue::from_str(&built).unwrap();
            let zero = hexes[..32].bytes().all(|b| b == b'0') || hexes[32..48].bytes().all(|b| b == b'0');
            proptest::prop_assert_eq!(trace_id(&value).is_some(), !zero);
        }
    }

    #[test]
    fn only_well_formed_traceparents_are_kept() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id(&HeaderValue::from_static(good)),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
        ] {
            assert_eq!(trace_id(&HeaderValue::from_static(bad)), None, "{bad:?}");
        }
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(good));
        headers.insert(REQUEST_ID, HeaderValue::from_static("app-7"));
        assert_eq!(
            drop_unusable_ids(&mut headers),
            (
                Some(HeaderValue::from_static("app-7")),
                Some(HeaderValue::from_static(good))
            )
        );
        assert!(headers.contains_key(TRACEPARENT));
        assert!(headers.contains_key(REQUEST_ID));
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static("00-zz-yy-01"));
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        assert_eq!(drop_unusable_ids(&mut headers), (None, None));
        assert!(!headers.contains_key(TRACEPARENT));
        assert!(!headers.contains_key(TRACESTATE));
        // A tracestate alone is not touched: only a dropped traceparent takes it along.
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACESTATE, HeaderValue::from_static("vendor=1"));
        assert_eq!(drop_unusable_ids(&mut headers), (None, None));
        assert!(headers.contains_key(TRACESTATE));
    }
}
