//! Sending one call to the gateway and naming what went wrong.
//!
//! The distinction that matters for payments is whether anything may have reached the gateway:
//! a connect error means nothing was sent (`upstream_unreachable`), every other failure after the
//! request was handed to the client means the call may have been executed (`outcome_unknown`),
//! and it is never replayed.

use std::time::Duration;

use http::{Request, Response};
use http_body_util::Full;
use bytes::Bytes;
use tower::{Service, ServiceExt};

use crate::error::{BoxError, Error, ErrorCode};

/// Response extension set by the layers when the call was replayed once after the gateway
/// refused it unprocessed (for the access log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replayed(pub bool);

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

/// Classifies a client error: only a connect error proves nothing was sent.
pub fn classify(error: &(dyn std::error::Error + 'static)) -> Failure {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
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
        }
        current = e.source();
    }
    Failure::Unknown
}

/// Sends `request` through `client`, waiting at most `timeout` for the answer's head.
pub async fn send<S, ResB>(
    client: S,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Response<ResB>, Failure>
where
    S: Service<Request<Full<Bytes>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    match tokio::time::timeout(timeout, client.oneshot(request)).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => {
            let e: BoxError = e.into();
            Err(classify(e.as_ref()))
        }
        Err(_elapsed) => Err(Failure::TimedOut),
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
}
