//! payauth's own errors: the contract's error codes and the responses they become.
//!
//! Every error that payauth itself produces (as opposed to an answer relayed from a gateway)
//! carries an [`ErrorCode`]. The sidecar turns it into an HTTP response with the header
//! `x-payauth-error: <code>` and the JSON body
//! `{"error": {"code": "<code>", "gateway": "<name>", "message": "<text>"}}`.
//! Messages are written by payauth, never copied from a request or a gateway answer, so they
//! cannot carry a secret or card data.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The header naming payauth's error code on every response payauth made itself.
pub const ERROR_HEADER: &str = "x-payauth-error";

/// The contract's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The gateway rejected payauth's credentials; no authentication is attempted until an
    /// operator acts (503).
    AuthLocked,
    /// No credential could be obtained right now (transport error, backoff, gateway refusal
    /// that is not a rejection) (503).
    AuthUnavailable,
    /// The gateway could not be reached; nothing was sent (502).
    UpstreamUnreachable,
    /// The request may have reached the gateway but no usable answer came back; it was not
    /// replayed (502).
    OutcomeUnknown,
    /// The gateway did not answer in time (504).
    UpstreamTimeout,
    /// The request is malformed and was not forwarded (400).
    BadRequest,
    /// The request names a terminal the config does not allow (403).
    TerminalNotAllowed,
    /// The request body is over the configured limit (413).
    BodyTooLarge,
    /// The gateway's concurrency limit is reached (503).
    Overloaded,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::AuthLocked,
        ErrorCode::AuthUnavailable,
        ErrorCode::UpstreamUnreachable,
        ErrorCode::OutcomeUnknown,
        ErrorCode::UpstreamTimeout,
        ErrorCode::BadRequest,
        ErrorCode::TerminalNotAllowed,
        ErrorCode::BodyTooLarge,
        ErrorCode::Overloaded,
    ];

    /// The code as it appears in the header, the JSON body and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AuthLocked => "auth_locked",
            ErrorCode::AuthUnavailable => "auth_unavailable",
            ErrorCode::UpstreamUnreachable => "upstream_unreachable",
            ErrorCode::OutcomeUnknown => "outcome_unknown",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TerminalNotAllowed => "terminal_not_allowed",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::Overloaded => "overloaded",
        }
    }

    /// The HTTP status of the response.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorCode::AuthLocked | ErrorCode::AuthUnavailable | ErrorCode::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::UpstreamUnreachable | ErrorCode::OutcomeUnknown => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::TerminalNotAllowed => StatusCode::FORBIDDEN,
            ErrorCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error made by payauth: a code, the gateway it concerns and a human message.
///
/// The message is always written by payauth and never contains secrets or card data.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{gateway}: {code}: {message}")]
pub struct Error {
    code: ErrorCode,
    gateway: Cow<'static, str>,
    message: Cow<'static, str>,
}

impl Error {
    /// A new error.
    pub fn new(
        code: ErrorCode,
        gateway: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            code,
            gateway: gateway.into(),
            message: message.into(),
        }
    }

    /// The contract code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The gateway's configured name.
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// The human message (no secrets).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON body of the contract.
    pub fn body(&self) -> Bytes {
        let body = serde_json::json!({
            "error": {
                "code": self.code.as_str(),
                "gateway": self.gateway,
                "message": self.message,
            }
        });
        Bytes::from(body.to_string())
    }

    /// The request body was over `limit` bytes (413): the one message for it, wherever a body
    /// is read.
    pub fn body_too_large(gateway: impl Into<Cow<'static, str>>, limit: usize) -> Self {
        Self::new(
            ErrorCode::BodyTooLarge,
            gateway,
            format!("request body over the limit of {limit} bytes; nothing was forwarded"),
        )
    }

    /// The HTTP response of the contract: status, `x-payauth-error` and the JSON body.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        self.response(false).map(Full::new)
    }

    /// The SOAP 1.1 Fault a WCF client can read, with the same status and `x-payauth-error`
    /// header as [`to_response`](Self::to_response): `faultcode` is `soap:Client` for 4xx codes
    /// and `soap:Server` for the others, `faultstring` the message, and `detail` holds
    /// `<payauthError xmlns="urn:payauth"><code>..</code><gateway>..</gateway></payauthError>`.
    pub fn to_soap_response(&self) -> Response<Full<Bytes>> {
        self.response(true).map(Full::new)
    }

    /// [`to_response`](Self::to_response), or with `soap` [`to_soap_response`]
    /// (Self::to_soap_response), with the body as its bytes.
    pub fn response(&self, soap: bool) -> Response<Bytes> {
        let (body, content_type) = if soap {
            (self.soap_fault(), "text/xml; charset=utf-8")
        } else {
            (self.body(), "application/json")
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.code.status();
        let headers = response.headers_mut();
        headers.insert(ERROR_HEADER, HeaderValue::from_static(self.code.as_str()));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        if self.code == ErrorCode::Overloaded || self.code == ErrorCode::AuthUnavailable {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }

    /// The body of [`to_soap_response`](Self::to_soap_response).
    pub fn soap_fault(&self) -> Bytes {
        crate::xml::soap_fault(
            self.code.as_str(),
            &self.gateway,
            &self.message,
            self.code.status().is_client_error(),
        )
    }
}

/// A boxed error, as tower uses.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_follows_the_contract() {
        for code in ErrorCode::ALL {
            let err = Error::new(code, "number", "something happened");
            let response = err.to_response();
            assert_eq!(response.status(), code.status());
            assert_eq!(response.headers()[ERROR_HEADER], code.as_str());
            let body: serde_json::Value = serde_json::from_slice(&err.body()).expect("valid json");
            assert_eq!(body["error"]["code"], code.as_str());
            assert_eq!(body["error"]["gateway"], "number");
            assert_eq!(body["error"]["message"], "something happened");
        }
    }

    #[test]
    fn soap_faults_are_well_formed_and_escaped() {
        for code in ErrorCode::ALL {
            let err = Error::new(code, "number-soap", "a <b> & \"c\"");
            let response = err.to_soap_response();
            assert_eq!(response.status(), code.status());
            assert_eq!(response.headers()[ERROR_HEADER], code.as_str());
            let body = err.soap_fault();
            let text = std::str::from_utf8(&body).expect("utf-8");
            assert!(text.contains("a &lt;b&gt; &amp; &quot;c&quot;"), "{text}");
            assert!(text.contains(&format!("<code>{}</code>", code.as_str())));
            let expected = if code.status().is_client_error() {
                "soap:Client"
            } else {
                "soap:Server"
            };
            assert!(text.contains(expected));
            let mut reader = quick_xml::Reader::from_reader(&body[..]);
            let mut depth = 0i32;
            loop {
                match reader.read_event().expect("well-formed") {
                    quick_xml::events::Event::Start(_) => depth += 1,
                    quick_xml::events::Event::End(_) => depth -= 1,
                    quick_xml::events::Event::Eof => break,
                    _ => {}
                }
            }
            assert_eq!(depth, 0);
        }
    }
}
