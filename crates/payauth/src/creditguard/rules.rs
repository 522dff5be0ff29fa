//! The CreditGuard relay call: what it must be (`POST` of a form to the relay path, its
//! `int_in` naming an allowed terminal), what is answered locally (the app's own
//! `getSessionId`), and how the session goes into it (the form rewritten around a pooled
//! `sessionId`). The driver ([`crate::gateway::driver`]) runs these rules; sessions come from
//! [`super::sessions`].

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::Full;
use tokio::time::Instant;

use super::form::RelayForm;
use super::int_in;
use super::layer::CreditGuardGateway;
use super::pool::{Lease, PoolKey};
use super::wire;
use crate::error::{Error, ErrorCode};
use crate::forward::{Client, GatewayBody};
use crate::gateway::rules::{Local, Read, Rules};
use crate::gateway::{self, Core};
use crate::metrics::ReauthReason;

/// A relay call once read: the app's request (its URI already the configured relay's), its
/// form, and the pool key its `int_in` asks for.
pub(crate) struct RelayCall {
    parts: http::request::Parts,
    form: RelayForm,
    key: PoolKey,
}

impl Rules for CreditGuardGateway {
    type Call = RelayCall;
    type Credential = Lease;

    fn core(&self) -> &Core {
        &self.core
    }

    fn starting<S, ResB>(self: &Arc<Self>, client: &S)
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        self.start_filler(client);
    }

    fn check_head(&self, parts: &mut http::request::Parts) -> Result<Option<Local>, Error> {
        self.check_relay_head(parts)?;
        Ok(None)
    }

    fn read(&self, parts: http::request::Parts, body: Bytes) -> Result<Read<RelayCall>, Error> {
        let form = RelayForm::parse(body).map_err(|e| self.core.refuse(e))?;
        let int_in = int_in::read(&form.decoded_int_in()).map_err(|e| self.core.refuse(e))?;
        let Some(terminal) = int_in.terminal.clone() else {
            return Err(self.core.bad_request(
                "int_in names no terminalNumber; payauth needs it to choose a session. Nothing was forwarded",
            ));
        };
        if !self.terminals.contains(&terminal) {
            return Err(self.error(
                ErrorCode::TerminalNotAllowed,
                "the terminalNumber in int_in is not one of this gateway's terminals; nothing was forwarded",
            ));
        }
        if int_in.is_get_session_id() {
            return Ok(Read::Local(Local {
                what: "getSessionId",
                body: wire::local_get_session_answer(),
                content_type: "text/xml; charset=UTF-8",
            }));
        }
        let key = PoolKey {
            terminal,
            scope: self.config.scope.session_scope(&int_in),
        };
        Ok(Read::Call(RelayCall { parts, form, key }))
    }

    async fn acquire<'a, S, ResB>(
        self: &'a Arc<Self>,
        call: &'a RelayCall,
        client: &'a S,
    ) -> Result<Lease, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        self.session(&call.key, client).await
    }

    fn parts(call: &RelayCall) -> &http::request::Parts {
        &call.parts
    }

    fn outgoing(&self, call: &RelayCall, lease: &Lease) -> Result<Request<Full<Bytes>>, Error> {
        Ok(gateway::outgoing(
            &call.parts,
            call.form.rewrite(lease.token.field()),
        ))
    }

    fn refusal(&self, answer: &[u8]) -> Option<ReauthReason> {
        wire::is_session_timeout(answer).then_some(ReauthReason::SessionTimeout456)
    }

    async fn replacement<'a, S, ResB>(
        self: &'a Arc<Self>,
        call: &'a RelayCall,
        refused: Lease,
        reason: ReauthReason,
        sent_at: Instant,
        client: &'a S,
    ) -> Result<Lease, Error>
    where
        S: Client<ResB>,
        ResB: GatewayBody,
    {
        let retired = self.pool().retire_before(sent_at);
        let key = &call.key;
        tracing::info!(gateway = %self.core.name(), terminal = %key.terminal, scope = %key.scope,
            retired, reusable = refused.reusable,
            "gateway refused the session (456), call not processed; replaying once with a new session");
        self.core.metrics.reauth(reason);
        self.session(key, client).await
    }
}

impl CreditGuardGateway {
    /// The configured relay URI with `query`.
    fn relay_uri_with(&self, query: Option<&str>) -> Result<http::Uri, http::Error> {
        match query {
            None => Ok(self.relay_uri.clone()),
            Some(query) => {
                let mut parts = self.relay_uri.clone().into_parts();
                parts.path_and_query = Some(format!("{}?{query}", self.relay_uri.path()).parse()?);
                Ok(http::Uri::from_parts(parts)?)
            }
        }
    }

    /// Checks what the head says (path, method, content type, query) and points the request at
    /// the configured relay URI: what payauth checked is what is sent, whatever spelling of the
    /// relay path the app used.
    fn check_relay_head(&self, parts: &mut http::request::Parts) -> Result<(), Error> {
        let on_relay = crate::path::canonicalize(parts.uri.path())
            .is_ok_and(|path| path.eq_ignore_ascii_case(&self.config.relay_path));
        if !on_relay {
            return Err(self.core.bad_request(format!(
                "payauth relays only POST {}; other paths (the SOAP relay included) are not \
                 forwarded",
                self.config.relay_path
            )));
        }
        if parts.method != Method::POST {
            return Err(self.core.refuse("the relay takes a POST form"));
        }
        if !is_form(&parts.headers) {
            return Err(self.core.refuse(
                "the relay takes a form: Content-Type must be application/x-www-form-urlencoded",
            ));
        }
        if query_has_relay_fields(parts.uri.query()) {
            return Err(self
                .core
                .refuse("the relay fields belong in the POST body, not the query string"));
        }
        parts.uri = self
            .relay_uri_with(parts.uri.query())
            .map_err(|_| self.core.refuse("the query string is not valid"))?;
        Ok(())
    }
}

/// Whether the request declares exactly one Content-Type, `application/x-www-form-urlencoded`
/// (parameters such as a charset allowed): the gateway reads the fields only then, and a
/// multipart body would hide them from payauth.
fn is_form(headers: &http::HeaderMap) -> bool {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (Some(value), None) => value.to_str().is_ok_and(|v| {
            v.split(';').next().is_some_and(|t| {
                t.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        }),
        _ => false,
    }
}

/// Whether a query string carries a relay field (the gateway would read it, and a servlet
/// container puts query parameters ahead of the body's; payauth would not), under any spelling
/// (names read as [`super::form::relay_field`] reads them; a bad escape counts as one).
fn query_has_relay_fields(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            !matches!(super::form::relay_field(name.as_bytes()), Ok(None))
        })
    })
}
