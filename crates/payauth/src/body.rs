//! Bounded bodies: buffering requests so they can be replayed, and looking into answers small
//! enough to inspect while streaming larger ones through untouched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;

use crate::error::BoxError;

/// Why a request body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The body is larger than the limit.
    #[error("body over the limit of {0} bytes")]
    TooLarge(usize),
    /// Reading the body failed.
    #[error("reading the body failed")]
    Read(#[source] BoxError),
}

/// Buffers a whole body of at most `limit` bytes. A declared `Content-Length` over the limit is
/// refused before reading anything. A body that arrives in one frame (the usual case) comes back
/// as that frame, without a copy.
pub async fn collect_limited<B>(
    body: B,
    limit: usize,
    content_length: Option<u64>,
) -> Result<Bytes, CollectError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    if content_length.is_some_and(|len| len > limit as u64) {
        return Err(CollectError::TooLarge(limit));
    }
    let mut body = std::pin::pin!(body);
    let mut gathered = Gathered::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CollectError::Read(e.into()))?;
        // Trailers carry nothing to forward in a buffered body.
        if let Ok(mut data) = frame.into_data() {
            if gathered.len().saturating_add(data.remaining()) > limit {
                return Err(CollectError::TooLarge(limit));
            }
            gathered.push(data.copy_to_bytes(data.remaining()));
        }
    }
    Ok(gathered.into_bytes())
}

/// Reads an app's request body for `gateway`, the one way both the front and the layers do:
/// at most `limit` bytes (a declared `Content-Length` over it is refused before anything is
/// read), within `timeout`. The error is the contract's (413 `body_too_large`, or 400
/// `bad_request` for a body that could not be read or did not arrive in time), nothing
/// forwarded. Behind the front, the layer's read takes the front's one buffered frame as it is.
pub(crate) async fn read_request<B>(
    gateway: &str,
    body: B,
    headers: &http::HeaderMap,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, crate::Error>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    // The body's own exact size (hyper's for a Content-Length body, the front's buffered one)
    // saves looking the header up.
    let declared = body.size_hint().exact().or_else(|| content_length(headers));
    let collect = collect_limited(body, limit, declared);
    let bad = |message: String| {
        crate::Error::new(
            crate::error::ErrorCode::BadRequest,
            gateway.to_owned(),
            message,
        )
    };
    match tokio::time::timeout(timeout, collect).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(CollectError::TooLarge(_))) => {
            Err(crate::Error::body_too_large(gateway.to_owned(), limit))
        }
        Ok(Err(CollectError::Read(_))) => Err(bad(
            "the request body could not be read; nothing was forwarded".to_owned(),
        )),
        Err(_) => Err(bad(format!(
            "the request body did not arrive within {} s; nothing was forwarded",
            timeout.as_secs_f64()
        ))),
    }
}

/// Data frames gathered into one `Bytes`: the first is kept as it is (no copy); only a second
/// one starts a buffer.
#[derive(Debug, Default)]
struct Gathered {
    first: Bytes,
    more: Option<BytesMut>,
}

impl Gathered {
    fn len(&self) -> usize {
        self.more.as_ref().map_or(self.first.len(), BytesMut::len)
    }

    fn push(&mut self, data: Bytes) {
        match &mut self.more {
            Some(buffer) => buffer.extend_from_slice(&data),
            None if self.first.is_empty() => self.first = data,
            None => {
                let mut buffer = BytesMut::with_capacity(self.first.len() + data.len());
                buffer.extend_from_slice(&self.first);
                buffer.extend_from_slice(&data);
                self.more = Some(buffer);
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        self.more.map_or(self.first, BytesMut::freeze)
    }
}

/// The declared `Content-Length` of a message, if any and valid.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// What [`read_bounded`] found.
#[derive(Debug)]
pub enum Inspected<B> {
    /// The whole body, small enough to inspect.
    Buffered(Bytes),
    /// Too large to inspect: what was read so far followed by the rest, streamed.
    Streaming(ResponseBody<B>),
}

/// Reads a body up to `limit` bytes. A body that ends within the limit comes back whole; a
/// larger one (or one whose declared length is larger) comes back as a stream that yields
/// exactly the original bytes.
pub async fn read_bounded<B>(
    mut body: B,
    limit: usize,
    content_length: Option<u64>,
) -> Result<Inspected<B>, BoxError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if content_length.is_some_and(|len| len > limit as u64) {
        return Ok(Inspected::Streaming(ResponseBody::stream(None, body)));
    }
    let mut gathered = Gathered::default();
    loop {
        match body.frame().await {
            None => return Ok(Inspected::Buffered(gathered.into_bytes())),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(frame)) => {
                // Trailers end the inspectable part; answers with trailers are rare and small.
                let Ok(data) = frame.into_data() else {
                    return Ok(Inspected::Buffered(gathered.into_bytes()));
                };
                gathered.push(data);
                if gathered.len() > limit {
                    return Ok(Inspected::Streaming(ResponseBody::stream(
                        Some(gathered.into_bytes()),
                        body,
                    )));
                }
            }
        }
    }
}

pin_project! {
    /// The body of an answer passed to the app: either bytes payauth has in hand or the
    /// gateway's own stream (after any bytes already read from it), optionally with a limit on
    /// how long the stream may stall between two chunks.
    ///
    /// It also says where the answer came from ([`ResponseBody::forwarded`],
    /// [`ResponseBody::answered_locally`]), for the access log: carried in the body rather than
    /// as response extensions, which cost three allocations per call.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        prefix: Option<Bytes>,
        #[pin]
        inner: Option<B>,
        idle: Option<Idle>,
        source: Source,
    }
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, Default)]
enum Source {
    /// Not said (payauth's own errors).
    #[default]
    Unsaid,
    Gateway(crate::forward::Forwarded),
    Local,
}

/// The stall limit of a streamed body: the timer is pushed back by every chunk.
#[derive(Debug)]
struct Idle {
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

/// A streamed answer stalled longer than its idle limit; the app's connection is cut rather
/// than held open.
#[derive(Debug, thiserror::Error)]
#[error("the gateway stalled for over {0:?} in the middle of an answer")]
pub struct Stalled(pub Duration);

impl<B> ResponseBody<B> {
    /// A body of bytes in hand.
    pub fn full(bytes: Bytes) -> Self {
        Self {
            prefix: (!bytes.is_empty()).then_some(bytes),
            inner: None,
            idle: None,
            source: Source::Unsaid,
        }
    }

    /// `prefix` (if any) followed by the rest of `inner`.
    pub fn stream(prefix: Option<Bytes>, inner: B) -> Self {
        Self {
            prefix: prefix.filter(|p| !p.is_empty()),
            inner: Some(inner),
            idle: None,
            source: Source::Unsaid,
        }
    }

    /// Marks the body as the gateway's answer, sent as `forwarded` says.
    pub fn from_gateway(mut self, forwarded: crate::forward::Forwarded) -> Self {
        self.source = Source::Gateway(forwarded);
        self
    }

    /// Marks the body as an answer payauth gave itself (the app's own authentication).
    pub fn from_payauth(mut self) -> Self {
        self.source = Source::Local;
        self
    }

    /// How the gateway's answer was got, if this is one.
    pub fn forwarded(&self) -> Option<crate::forward::Forwarded> {
        match self.source {
            Source::Gateway(forwarded) => Some(forwarded),
            Source::Unsaid | Source::Local => None,
        }
    }

    /// Whether payauth answered the call itself (the app's own Authenticate or `getSessionId`).
    pub fn answered_locally(&self) -> bool {
        matches!(self.source, Source::Local)
    }

    /// Fails the stream with [`Stalled`] when `inner` yields nothing for `limit`.
    pub fn with_idle_timeout(mut self, limit: Duration) -> Self {
        if self.inner.is_some() {
            self.idle = Some(Idle {
                limit,
                timer: Box::pin(tokio::time::sleep(limit)),
            });
        }
        self
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        match inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(idle) = this.idle.as_mut() {
                    let next = tokio::time::Instant::now() + idle.limit;
                    idle.timer.as_mut().reset(next);
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let Some(idle) = this.idle.as_mut() else {
                    return Poll::Pending;
                };
                if idle.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let limit = idle.limit;
                this.inner.set(None);
                Poll::Ready(Some(Err(Stalled(limit).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        match &self.inner {
            None => SizeHint::with_exact(prefix),
            Some(inner) => {
                let hint = inner.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + prefix);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + prefix);
                }
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test(start_paused = true)]
    async fn a_request_body_is_read_by_one_rule_with_one_message_per_failure() {
        let limit = 8;
        let timeout = Duration::from_secs(5);
        let mut headers = http::HeaderMap::new();
        let read = |body: Full<Bytes>, headers: http::HeaderMap| async move {
            read_request("gw", body, &headers, limit, timeout).await
        };
        // Whole and within the limit: the one frame, as it is.
        let ok = read(Full::new(Bytes::from_static(b"12345678")), headers.clone()).await;
        assert_eq!(ok.expect("read").as_ref(), b"12345678");
        // Over the limit, declared or not: 413 with the one message.
        for declared in [None, Some("9")] {
            if let Some(len) = declared {
                headers.insert(http::header::CONTENT_LENGTH, len.parse().unwrap());
            }
            let error = read(Full::new(Bytes::from_static(b"123456789")), headers.clone())
                .await
                .expect_err("too large");
            assert_eq!(error.code(), crate::error::ErrorCode::BodyTooLarge);
            assert_eq!(
                error.message(),
                crate::Error::body_too_large("gw", limit).message()
            );
        }
        // A body that never ends: 400 once the timeout passes, nothing read.
        let stalled = read_request("gw", NeverEnds, &http::HeaderMap::new(), limit, timeout)
            .await
            .expect_err("stalled");
        assert_eq!(stalled.code(), crate::error::ErrorCode::BadRequest);
        assert!(stalled.message().contains("did not arrive within 5 s"));
    }

    /// A body whose first frame never comes.
    struct NeverEnds;

    impl Body for NeverEnds {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Pending
        }
    }

    /// A body that yields the given chunks one frame at a time.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|c| Ok(Frame::data(c))))
        }
    }

    fn chunks(parts: &[&'static [u8]]) -> Chunks {
        Chunks(parts.iter().map(|p| Bytes::from_static(p)).collect())
    }

    #[tokio::test]
    async fn a_body_in_one_frame_is_kept_without_a_copy() {
        let frame = Bytes::from(vec![7u8; 300]);
        let body = Chunks([frame.clone()].into());
        let collected = collect_limited(body, 1000, None).await.expect("fits");
        assert_eq!(collected.as_ptr(), frame.as_ptr(), "the frame itself");
        let body = Chunks([frame.clone()].into());
        match read_bounded(body, 1000, None).await.expect("read") {
            Inspected::Buffered(b) => assert_eq!(b.as_ptr(), frame.as_ptr(), "the frame itself"),
            Inspected::Streaming(_) => panic!("should buffer"),
        }
    }

    proptest::proptest! {
        /// However a body is cut into frames (empty ones included), collecting it gives its
        /// bytes in order when they fit the limit and `TooLarge` otherwise; inspecting it gives
        /// them whole when they fit, or streams every one of them.
        #[test]
        fn frames_are_gathered_in_order_within_the_limit(
            parts in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..40), 0..8),
            limit in 0usize..200,
        ) {
            let all: Vec<u8> = parts.concat();
            let body = || Chunks(parts.iter().map(|p| Bytes::from(p.clone())).collect());
            let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let collected = rt.block_on(collect_limited(body(), limit, None));
            if all.len() <= limit {
                proptest::prop_assert_eq!(&collected.expect("fits")[..], &all[..]);
            } else {
                proptest::prop_assert!(matches!(collected, Err(CollectError::TooLarge(l)) if l == limit));
            }
            let inspected = rt.block_on(read_bounded(body(), limit, None)).expect("read");
            match inspected {
                Inspected::Buffered(b) => {
                    proptest::prop_assert!(all.len() <= limit);
                    proptest::prop_assert_eq!(&b[..], &all[..]);
                }
                Inspected::Streaming(stream) => {
                    proptest::prop_assert!(all.len() > limit);
                    let streamed = rt.block_on(stream.collect()).expect("collect").to_bytes();
                    proptest::prop_assert_eq!(&streamed[..], &all[..]);
                }
            }
        }
    }

    #[tokio::test]
    async fn small_bodies_are_buffered_and_large_ones_stream_every_byte() {
        match read_bounded(chunks(&[b"abc", b"def"]), 10, None)
            .await
            .expect("read")
        {
            Inspected::Buffered(b) => assert_eq!(&b[..], b"abcdef"),
            Inspected::Streaming(_) => panic!("should buffer"),
        }
        match read_bounded(chunks(&[b"abcdef", b"ghijkl", b"mn"]), 8, None)
            .await
            .expect("read")
        {
            Inspected::Streaming(body) => {
                let all = body.collect().await.expect("collect").to_bytes();
                assert_eq!(&all[..], b"abcdefghijklmn");
            }
            Inspected::Buffered(_) => panic!("should stream"),
        }
        let declared = Full::new(Bytes::from_static(b"0123456789"));
        assert!(matches!(
            read_bounded(declared, 4, Some(10)).await.expect("read"),
            Inspected::Streaming(_)
        ));
    }

    #[tokio::test]
    async fn collect_refuses_over_the_limit() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        assert!(matches!(
            collect_limited(body, 4, None).await,
            Err(CollectError::TooLarge(4))
        ));
        let body = Full::new(Bytes::from_static(b"0123"));
        assert!(matches!(
            collect_limited(body, 4, Some(9)).await,
            Err(CollectError::TooLarge(4))
        ));
        let body = Full::new(Bytes::from_static(b"0123"));
        assert_eq!(
            &collect_limited(body, 4, Some(4)).await.expect("fits")[..],
            b"0123"
        );
    }
}
