//! Sending one call to the gateway and naming what went wrong.
//!
//! The distinction that matters for payments is whether anything may have reached the gateway:
//! a connect error means nothing was sent (`upstream_unreachable`), every other failure after the
//! request was handed to the client means the call may have been executed (`outcome_unknown`),
//! and it is never replayed.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceExt};

use crate::body::{content_length, read_bounded, Inspected};
use crate::error::{BoxError, Error, ErrorCode};

/// How the layers got an answer from the gateway (for the access log), read with
/// [`crate::body::ResponseBody::forwarded`]: whether it answers a replay (the call was sent again
/// once, after the gateway refused it unprocessed), and how long the gateway took over all
/// attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The app got the gateway's answer to a replay.
    pub replayed: bool,
    /// The time the gateway took to answer, over the call and its replay.
    pub upstream: std::time::Duration,
}

/// The future of a layer's call: boxed, one allocation per request (measured by
/// `benches/layer.rs`: the whole layer adds under 2 µs, noise next to a gateway round trip).
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

/// The HTTP client a layer wraps: a cloneable tower service that sends a buffered request and
/// answers with a response whose body is [`GatewayBody`]. `hyper_util`'s client is one.
pub trait Client<ResB>:
    Service<Request<Full<Bytes>>, Response = Response<ResB>, Future: Send, Error: Into<BoxError>>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T, ResB> Client<ResB> for T where
    T: Service<
            Request<Full<Bytes>>,
            Response = Response<ResB>,
            Future: Send,
            Error: Into<BoxError>,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The body of a gateway's answer, as the layers read and pass it on.
pub trait GatewayBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

impl<T> GatewayBody for T where
    T: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

/// How a failed call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing reached the gateway.
    NotSent,
    /// The call may have reached the gateway.
    Unknown,
    /// No answer within the timeout (the call may have reached the gateway).
    TimedOut,
}

impl Failure {
    /// The contract code for a request that failed this way.
    pub fn code(self) -> ErrorCode {
        match self {
            Failure::NotSent => ErrorCode::UpstreamUnreachable,
            Failure::Unknown => ErrorCode::OutcomeUnknown,
            Failure::TimedOut => ErrorCode::UpstreamTimeout,
        }
    }

    /// The contract error, with a message that carries no secret.
    pub fn into_error(self, gateway: &str) -> Error {
        let message = match self {
            Failure::NotSent => "could not connect to the gateway; nothing was sent",
            Failure::Unknown => {
                "the connection to the gateway failed after the call was sent; it may have been \
                 executed and was not replayed: check its outcome before retrying"
            }
            Failure::TimedOut => {
                "the gateway did not answer in time; the call may have been executed and was not \
                 replayed: check its outcome before retrying"
            }
        };
        Error::new(self.code(), gateway.to_owned(), message)
    }
}

/// Classifies a client error: only a connect error, or the gateway refusing the TLS handshake,
/// proves nothing was sent.
pub fn classify(error: &(dyn std::error::Error + 'static)) -> Failure {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(client) = e.downcast_ref::<crate::UpstreamError>() {
            if client.is_connect() {
                return Failure::NotSent;
            }
        }
        if let Some(client) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            if client.is_connect() {
                return Failure::NotSent;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) {
                return Failure::NotSent;
            }
            if io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(handshake_refused)
            {
                return Failure::NotSent;
            }
        }
        current = e.source();
    }
    Failure::Unknown
}

/// With TLS 1.3 the client's handshake is over before the gateway has checked the client
/// certificate, so a refused certificate (mTLS) arrives as an alert after the request was
/// written, not as a connect error. The gateway sends these alerts only while negotiating, before
/// it reads any application data: the request was not processed. (`decrypt_error` is what
/// rustls sends for a client certificate whose signature does not verify.)
fn handshake_refused(error: &rustls::Error) -> bool {
    use rustls::AlertDescription as A;
    matches!(
        error,
        rustls::Error::AlertReceived(
            A::HandshakeFailure
                | A::BadCertificate
                | A::UnsupportedCertificate
                | A::CertificateRevoked
                | A::CertificateExpired
                | A::CertificateUnknown
                | A::UnknownCA
                | A::AccessDenied
                | A::CertificateRequired
                | A::DecryptError
        )
    )
}

/// Sends `request` through `client` and reads the answer within `timeout`: the head, then the
/// body up to `inspect_limit` bytes. A larger answer comes back streaming, and may then stall for
/// at most `timeout` between two chunks (its total time is not bounded: a large answer that keeps
/// coming is not cut off).
///
/// A stall after the request was handed to the client is [`Failure::TimedOut`]: the call may
/// have been executed.
pub async fn call<S, ResB>(
    client: S,
    request: Request<Full<Bytes>>,
    timeout: Duration,
    inspect_limit: usize,
) -> Result<(http::response::Parts, Inspected<ResB>), Failure>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Unpin,
    ResB::Error: Into<BoxError>,
{
    let exchange = async {
        let response = client.oneshot(request).await.map_err(|e| {
            let e: BoxError = e.into();
            let failure = classify(e.as_ref());
            // The cause (connection refused, a certificate from an unknown issuer, ...) is what
            // an operator needs. Client errors carry no request data.
            tracing::warn!(error = %Causes(e.as_ref()), ?failure, "upstream call failed");
            failure
        })?;
        let (head, body) = response.into_parts();
        let declared = body
            .size_hint()
            .exact()
            .or_else(|| content_length(&head.headers));
        let body = read_bounded(body, inspect_limit, declared)
            .await
            .map_err(|e| {
                tracing::warn!(error = %Causes(e.as_ref()), "the gateway's answer was cut off");
                Failure::Unknown
            })?;
        Ok((head, body))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((head, Inspected::Streaming(body)))) => {
            Ok((head, Inspected::Streaming(body.with_idle_timeout(timeout))))
        }
        Ok(result) => result,
        Err(_elapsed) => Err(Failure::TimedOut),
    }
}

/// Like [`call`], for answers payauth must read whole (authentications): an answer over `limit`
/// bytes is a failure with an unknown outcome.
pub async fn call_whole<S, ResB>(
    client: S,
    request: Request<Full<Bytes>>,
    timeout: Duration,
    limit: usize,
) -> Result<(http::response::Parts, Bytes), Failure>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Unpin,
    ResB::Error: Into<BoxError>,
{
    match call(client, request, timeout, limit).await? {
        (head, Inspected::Buffered(bytes)) => Ok((head, bytes)),
        (_, Inspected::Streaming(_)) => {
            tracing::warn!(limit, "the gateway's answer is larger than payauth reads");
            Err(Failure::Unknown)
        }
    }
}

/// An error and its sources, joined with ": " (repeated texts once).
struct Causes<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut last = String::new();
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(self.0);
        while let Some(e) = current {
            let text = e.to_string();
            if !last.contains(&text) {
                if !last.is_empty() {
                    f.write_str(": ")?;
                }
                f.write_str(&text)?;
                last = text;
            }
            current = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connections_were_not_sent() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused), Failure::NotSent);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify(&reset), Failure::Unknown);
    }

    #[test]
    fn a_refused_client_certificate_was_not_sent() {
        let alert = |a| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(a),
            )
        };
        assert_eq!(
            classify(&alert(rustls::AlertDescription::CertificateRequired)),
            Failure::NotSent
        );
        assert_eq!(
            classify(&alert(rustls::AlertDescription::UnknownCA)),
            Failure::NotSent
        );
        assert_eq!(
            classify(&alert(rustls::AlertDescription::DecryptError)),
            Failure::NotSent
        );
        // Other alerts can come after the request was read.
        assert_eq!(
            classify(&alert(rustls::AlertDescription::CloseNotify)),
            Failure::Unknown
        );
        assert_eq!(
            classify(&alert(rustls::AlertDescription::InternalError)),
            Failure::Unknown
        );
    }
}
