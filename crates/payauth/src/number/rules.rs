//! The Number request: what a call must be, what is answered locally, and how the session key
//! goes into it (the `SessKey` header for REST, the first argument for SOAP). The driver
//! ([`crate::gateway::driver`]) runs these rules; the renewal they ask for lives in
//! [`super::keys`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Full;
use tokio::time::Instant;

use super::layer::{NumberGateway, Protocol};
use super::session_key::KeyState;
use super::wire::{self, SoapRequest};
use crate::error::{Error, ErrorCode};
use crate::forward::{Client, GatewayBody};
use crate::gateway::rules::{Local, Read, Rules};
use crate::gateway::{self, Core};
use crate::metrics::ReauthReason;

/// The REST session key header (`SessKey`; header names are case-insensitive and go out in
/// lower case). A constant: parsing the name per call would allocate.
const SESS_KEY: http::HeaderName = http::HeaderName::from_static("sesskey");

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A Number call once read: the app's request, and for SOAP the envelope's reading.
pub(crate) struct NumberCall {
    parts: http::request::Parts,
    body: Bytes,
    soap: Option<SoapRequest>,
}

impl Rules for NumberGateway {
    type Call = NumberCall;
    type Credential = Arc<KeyState>;

    fn core(&self) -> &Core {
        &self.core
    }

    fn check_head(&self, parts: &mut http::request::Parts) -> Result<Option<Local>, Error> {
        let path = crate::path::canonicalize(parts.uri.path()).map_err(|e| self.core.refuse(e))?;
        if self.config.protocol == Protocol::Rest && self.is_rest_auth(&path) {
            return Ok(Some(Local {
                what: "Authenticate",
                body: wire::local_rest_auth_answer(self.user_id()),
                content_type: "application/json",
            }));
        }
        Ok(None)
    }

    fn read(&self, parts: http::request::Parts, body: Bytes) -> Result<Read<NumberCall>, Error> {
        let soap = match self.config.protocol {
            Protocol::Rest => None,
            Protocol::Soap => {
                let request = wire::parse_soap_request(&body, &self.config.soap.session_element)
                    .map_err(|e| self.core.refuse(e))?;
                if self.is_soap_auth(&parts.headers, &request) {
                    return Ok(Read::Local(Local {
                        what: "Authenticate",
                        body: wire::local_soap_auth_answer(&self.config.soap),
                        content_type: "text/xml; charset=utf-8",
                    }));
                }
                Some(request)
            }
        };
        Ok(Read::Call(NumberCall { parts, body, soap }))
    }

    async fn acquire<'a, S, ResB>(
        self: &'a Arc<Self>,
        _call: &'a NumberCall,
        client: &'a S,
    ) -> Result<Arc<KeyState>, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let key = self.current_key(client).await?;
        // A key the gateway already refused while renewals are braked would only be refused
        // again: the call (card data included) is not sent at all.
        self.brake.check(&self.core, &key)?;
        Ok(key)
    }

    fn parts(call: &NumberCall) -> &http::request::Parts {
        &call.parts
    }

    fn outgoing(
        &self,
        call: &NumberCall,
        key: &Arc<KeyState>,
    ) -> Result<Request<Full<Bytes>>, Error> {
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
        _call: &'a NumberCall,
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
    /// Whether a REST call is the app's own Authenticate: its path, as the gateway's server
    /// routes it, is the configured auth path or ends in an `Authenticate` segment (ASCII case
    /// ignored), so no spelling of it reaches the gateway with the app's stale token.
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
}
